//! What the per-replica commands (`kill`, `pause`, `unpause`, `rm`, `wait`, `stats`, `port`,
//! `cp`) share: the services named on the command line, checked against the compose file;
//! the project's replicas of them; one Incus call per replica, in parallel, each reported.

use std::future::Future;
use std::process::ExitCode;

use anyhow::bail;
use ic_core::plan::is_oneoff;
use ic_incus::{Client, Instance};

use super::project::Context;

/// Fails naming the first of `services` that is not in the compose file.
pub(super) fn check_services(ctx: &Context, services: &[String]) -> anyhow::Result<()> {
    for s in services {
        if !ctx.project.services.contains_key(s) {
            let known: Vec<&str> = ctx.project.services.keys().map(String::as_str).collect();
            bail!(
                "no service {s:?} in compose project {} (services: {})",
                ctx.project.name,
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// The client of the project's Incus project.
pub(super) fn client(ctx: &Context) -> Client {
    ctx.base.with_project(&ctx.incus_project)
}

/// The project's instances of `services` (all when empty), in service then replica order;
/// one-off instances of `run` only with `oneoffs`.
pub(super) async fn instances(
    ctx: &Context,
    services: &[String],
    oneoffs: bool,
) -> anyhow::Result<Vec<Instance>> {
    check_services(ctx, services)?;
    let mut list =
        super::shared::project_instances(&client(ctx), &ctx.project.name, services).await?;
    list.retain(|i| oneoffs || !is_oneoff(&i.config));
    Ok(list)
}

/// Runs `action` on every instance at once; prints each success line (`Ok(Some(line))`) and
/// each failure, naming the instance. Failure when any failed.
pub(super) async fn each<F, Fut>(instances: &[Instance], action: F) -> ExitCode
where
    F: Fn(Instance) -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let results = futures_util::future::join_all(instances.iter().map(|i| action(i.clone()))).await;
    let mut failed = false;
    for (i, r) in instances.iter().zip(results) {
        match r {
            Ok(Some(line)) => println!("{line}"),
            Ok(None) => {}
            Err(e) => {
                failed = true;
                eprintln!("error: {}: {e:#}", i.name);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The project's instances of `services` (all when empty) that Incus can reach now, and those
/// on members it cannot (see `engine::reach`); `full`: with their runtime state.
pub(super) async fn reach(
    ctx: &Context,
    services: &[String],
    full: bool,
) -> anyhow::Result<crate::engine::reach::Reached> {
    let container_names: Vec<(String, String)> = ctx
        .project
        .services
        .iter()
        .filter_map(|(name, s)| Some((s.container_name.clone()?, name.clone())))
        .collect();
    crate::engine::reach::project_instances(
        &client(ctx),
        &ctx.project.name,
        services,
        &container_names,
        full,
    )
    .await
}
