//! `incus-compose rollback [SERVICE...] [--to REVISION] [--volumes]`: deploy an earlier
//! revision kept in Incus (default: the completed one before the one deployed now), as a
//! rolling update with each service's `rollback_config`. Works without the compose file
//! (`-p NAME`) unless a service has secrets or configs (their contents are not kept in Incus:
//! they are read from the compose file's sources and must not have changed).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use ic_core::plan::PlanOptions;
use ic_core::revision;

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, converge, observe};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The revision to go back to (see `history`; default: the completed revision before the
    /// one deployed now)
    #[arg(long, value_name = "REVISION")]
    pub to: Option<u64>,
    /// Also restore the named volumes of the rolled-back services from the snapshots taken
    /// before the update that followed that revision (their replicas are stopped first)
    #[arg(long)]
    pub volumes: bool,
    /// Print the actions, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Services to roll back (default: all of the revision's)
    pub services: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let ctx = Context::new_or_by_name(global)?;
    block_on(async {
        // Read-only first (issue 22): planned without the lock; the lock is taken, and the
        // project read and planned again under it, only when there is something to do.
        let mut _lock = None;
        let mut read_only = !args.dry_run;
        loop {
            let compose = ctx.project.name.clone();
            let revs = engine::revisions::read(&ctx.base, &ctx.incus_project, &compose).await?;
            let target = match revision::rollback_target(&revs, args.to) {
                Ok(t) => t,
                Err(e) => bail!("rollback of compose project {compose}: {e}"),
            };
            if revs.is_empty() {
                bail!(
                    "compose project {compose} has no revision in Incus project {}",
                    ctx.incus_project
                );
            }
            for s in &args.services {
                if !target.services.contains_key(s) {
                    bail!(
                        "revision {} has no service {s:?} (it has: {})",
                        target.number,
                        target
                            .services
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            let obs = if read_only || args.dry_run {
                observe(&ctx.base, &ctx.incus_project, true).await?
            } else {
                engine::observe_fresh(&ctx.base, &ctx.incus_project).await?
            };
            // The compose file at hand, when there is one: the current contents of secrets
            // (without it they are read back from running replicas: engine::converge).
            let current = if ctx.by_name {
                None
            } else {
                let opts = PlanOptions {
                    incus_project: Some(ctx.incus_project.clone()),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                };
                ic_core::plan::desired(&ctx.project, &obs.facts, &opts).ok()
            };
            let source = || converge::Source::Revisions {
                target: target.number,
                only: args.services.clone(),
                current: current.as_ref(),
            };
            let keep = engine::revisions::keep(if ctx.by_name {
                None
            } else {
                Some(&ctx.project)
            });
            let policy = converge::Policy {
                lock: _lock.as_ref(),
                record: Some(format!("rollback to {}", target.number)),
                keep,
                parallel: args.parallel,
                gate: None,
            };
            // First the plan alone (printed; the volumes to restore follow from it).
            let planned = converge::converge(
                &ctx.base,
                &ctx.incus_project,
                &compose,
                obs,
                source(),
                &converge::Options {
                    dry_run: true,
                    ..Default::default()
                },
                &policy,
            )
            .await?;
            let plan = planned.plan;
            if read_only && (args.volumes || !plan.is_empty() || planned.unfinished) {
                _lock = ctx.lock().await?;
                read_only = false;
                continue;
            }
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "Rolling back compose project {compose} to revision {} (created {})",
                target.number,
                engine::timefmt::ago_rfc3339(&target.time, time::OffsetDateTime::now_utc())
            );
            if args.dry_run {
                super::shared::print_plan(&plan, &compose);
                return Ok(ExitCode::SUCCESS);
            }
            if args.volumes {
                let t = ctx.target(&planned.obs);
                let restored = engine::revisions::restore_volumes(
                    &t,
                    &planned.desired,
                    &revs,
                    target.number,
                    &plan,
                )
                .await?;
                for line in restored {
                    println!("{line}");
                }
            }
            if plan.is_empty() {
                println!(
                    "Nothing to change: the replicas already run revision {}",
                    target.number
                );
                return Ok(ExitCode::SUCCESS);
            }
            // Then the run, planned again from what Incus holds now (under the lock).
            let obs = observe(&ctx.base, &ctx.incus_project, true).await?;
            let done = converge::converge(
                &ctx.base,
                &ctx.incus_project,
                &compose,
                obs,
                source(),
                &converge::Options::default(),
                &policy,
            )
            .await?;
            if let Some((number, result)) = done.revision {
                println!("revision {number}: {result}");
            }
            let outcome = done.outcome.unwrap_or_default();
            return if outcome.ok() {
                println!(
                    "rollback: revision {} deployed again in {:.1} s",
                    target.number,
                    started.elapsed().as_secs_f64()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                outcome.report_failures("rollback", Some(started.elapsed()));
                Ok(ExitCode::FAILURE)
            };
        }
    })?
}
