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

use anyhow::Context as _;
use clap::Args;
use ic_core::plan::{LABEL_PROJECT, LABEL_SERVICE};
use ic_incus::{Client, Instance};

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::select;

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

/// Removes `instance` (stopping it first: `timeout` seconds for a clean stop, then a kill),
/// and with `volumes` its anonymous volumes (only those labelled as ours).
pub(super) async fn remove_instance(
    client: &Client,
    instance: &Instance,
    compose: &str,
    timeout: i64,
    volumes: bool,
) -> anyhow::Result<()> {
    let state = client.instance_state(&instance.name).await?;
    if !state.status.eq_ignore_ascii_case("stopped") {
        if state.status.eq_ignore_ascii_case("frozen") {
            client
                .change_instance_state(
                    &instance.name,
                    &ic_incus::InstanceStatePut::new("unfreeze", -1, false),
                )
                .await?
                .wait()
                .await?;
        }
        if client
            .stop_instance(&instance.name, timeout, false)
            .await
            .is_err()
        {
            client.stop_instance(&instance.name, -1, true).await?;
        }
    }
    client
        .delete_instance(&instance.name)
        .await?
        .wait()
        .await
        .with_context(|| format!("removing {}", instance.name))?;
    if !volumes {
        return Ok(());
    }
    let target = (!instance.location.is_empty() && instance.location != "none")
        .then_some(instance.location.as_str());
    for d in instance.devices.values() {
        let (Some("disk"), Some(pool), Some(source)) = (
            d.get("type").map(String::as_str),
            d.get("pool"),
            d.get("source"),
        ) else {
            continue;
        };
        let v = match client.storage_volume(pool, "custom", source, target).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e).with_context(|| format!("looking up volume {source}")),
        };
        let ours = v.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
            && v.config.contains_key("user.incus-compose.anonymous");
        if ours {
            client
                .delete_storage_volume(pool, "custom", source, target)
                .await
                .with_context(|| format!("removing anonymous volume {source}"))?;
        }
    }
    Ok(())
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
                remove_instance(&client, &i, &compose, timeout, args.volumes).await?;
                Ok(Some(format!("[-] {} removed", i.name)))
            }
        })
        .await;
        Ok(code)
    })?
}
