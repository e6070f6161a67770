//! `incus-compose pause` / `unpause [SERVICE...]`: freeze and thaw the running replicas (Incus
//! `freeze` / `unfreeze`: every process stops being scheduled, nothing is stopped). `ps` shows
//! a frozen replica as `paused`; `exec` into it fails and says to unpause.

use std::process::ExitCode;

use clap::Args;
use ic_incus::InstanceStatePut;

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::select;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Services to pause or unpause (default: all)
    pub services: Vec<String>,
}

pub fn pause(global: &GlobalArgs, args: &PauseArgs) -> anyhow::Result<ExitCode> {
    run(global, args, true)
}

pub fn unpause(global: &GlobalArgs, args: &PauseArgs) -> anyhow::Result<ExitCode> {
    run(global, args, false)
}

fn run(global: &GlobalArgs, args: &PauseArgs, freeze: bool) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    let (from, action, done) = if freeze {
        ("running", "freeze", "paused")
    } else {
        ("frozen", "unfreeze", "unpaused")
    };
    block_on(async {
        let mut list = select::instances(&ctx, &args.services, false).await?;
        list.retain(|i| i.status.eq_ignore_ascii_case(from));
        if list.is_empty() {
            println!(
                "No {} replicas to {}",
                if freeze { "running" } else { "paused" },
                if freeze { "pause" } else { "unpause" }
            );
            return Ok(ExitCode::SUCCESS);
        }
        let client = select::client(&ctx);
        let code = select::each(&list, |i| {
            let client = client.clone();
            async move {
                client
                    .change_instance_state(&i.name, &InstanceStatePut::new(action, -1, false))
                    .await?
                    .wait()
                    .await?;
                Ok(Some(format!("[.] {} {done}", i.name)))
            }
        })
        .await;
        Ok(code)
    })?
}
