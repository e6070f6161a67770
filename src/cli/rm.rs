//! `incus-compose rm [-f] [-s] [-v] [SERVICE...]`: remove the project's stopped replicas (and
//! stopped one-off instances of `run`), as `docker compose rm` removes stopped containers.
//!
//! - `-s` stops the running ones first (each service's `stop_grace_period`, then a kill).
//! - `-v` also removes their anonymous volumes (the custom volumes incus-compose made for one
//!   instance, labelled `user.incus-compose.anonymous`); named volumes stay (`down -v`).
//! - On a terminal it lists what goes and asks `Are you sure? [y/N]` unless `-f`; without a
//!   terminal on stdin it does not ask.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use ic_incus::Instance;

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::select;
use ic_core::keys::LABEL_SERVICE;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Do not ask for confirmation (`-f` after `rm` means --force, as in docker compose)
    #[arg(long)]
    pub force: bool,
    /// Stop the replicas first if they run
    #[arg(short = 's', long)]
    pub stop: bool,
    /// Also remove their anonymous volumes
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Services whose replicas go (default: all)
    pub services: Vec<String>,
}

/// The stop timeout of a service's replicas: `stop_grace_period`, else 10 s.
pub(super) fn stop_timeout(ctx: &Context, instance: &Instance) -> i64 {
    instance
        .config
        .get(LABEL_SERVICE)
        .and_then(|s| ctx.project.services.get(s))
        .and_then(|s| s.stop_grace_period)
        .map_or(10, |d| d.as_std().as_secs() as i64)
}

fn confirm(names: &[String]) -> anyhow::Result<bool> {
    print!("Going to remove {}\nAre you sure? [y/N] ", names.join(", "));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn run(global: &GlobalArgs, args: &RmArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    block_on(async {
        let mut list = select::instances(&ctx, &args.services, true).await?;
        if !args.stop {
            list.retain(|i| i.status.eq_ignore_ascii_case("stopped"));
        }
        if list.is_empty() {
            println!("No stopped replicas");
            return Ok(ExitCode::SUCCESS);
        }
        let names: Vec<String> = list.iter().map(|i| i.name.clone()).collect();
        if !args.force && std::io::stdin().is_terminal() && !confirm(&names)? {
            println!("Nothing removed");
            return Ok(ExitCode::SUCCESS);
        }
        let client = select::client(&ctx);
        let compose = ctx.project.name.clone();
        let code = select::each(&list, |i| {
            let client = client.clone();
            let compose = compose.clone();
            let timeout = stop_timeout(&ctx, &i);
            async move {
                super::shared::remove_instance(&client, &i, &compose, timeout, args.volumes)
                    .await?;
                Ok(Some(format!("[-] {} removed", i.name)))
            }
        })
        .await;
        Ok(code)
    })?
}
