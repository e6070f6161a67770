//! `incus-compose rollback [SERVICE...] [--to REVISION] [--volumes]`: deploy an earlier
//! revision kept in Incus (default: the completed one before the one deployed now), as a
//! rolling update with each service's `rollback_config`. Works without the compose file
//! (`-p NAME`) unless a service has secrets or configs (their contents are not kept in Incus:
//! they are read from the compose file's sources and must not have changed).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use ic_core::plan::{DiffOptions, PlanOptions};
use ic_core::revision;

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, observe};

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
        let _lock = if args.dry_run {
            None
        } else {
            ctx.lock().await?
        };
        let compose = ctx.project.name.clone();
        let revs = engine::revisions::read(&ctx.base, &ctx.incus_project, &compose).await?;
        let target = match revision::rollback_target(&revs, args.to) {
            Ok(t) => t,
            Err(e) => bail!("rollback of compose project {compose}: {e}"),
        };
        let Some(deployed) = revision::deployed(&revs).or(revs.last()) else {
            bail!(
                "compose project {compose} has no revision in Incus project {}",
                ctx.incus_project
            );
        };
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
        let obs = observe(&ctx.base, &ctx.incus_project, true).await?;
        // The compose file at hand, when there is one: the current contents of secrets.
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
        let d = match revision::desired_from(
            &compose,
            &ctx.incus_project,
            target,
            deployed,
            &args.services,
            current.as_ref(),
        ) {
            Ok(d) => d,
            Err(e) => bail!("{e} (nothing was changed)"),
        };
        let plan = match ic_core::plan::diff(&d, &obs.observed, &DiffOptions::default()) {
            Ok(p) => p,
            Err(e) => bail!("{e}"),
        };
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "Rolling back compose project {compose} to revision {} (created {})",
            target.number,
            engine::timefmt::ago_rfc3339(&target.time, time::OffsetDateTime::now_utc())
        );
        if args.dry_run {
            super::up::print_plan(&plan, &compose);
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = ctx.target(&obs);
        if args.volumes {
            let restored =
                engine::revisions::restore_volumes(&t, &d, &revs, target.number, &plan).await?;
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
        let recorder = engine::revisions::begin(
            &ctx.base,
            &ctx.incus_project,
            &compose,
            engine::revisions::services_of(&d),
            ic_core::revision::networks_of(&d),
            &format!("rollback to {}", target.number),
            engine::revisions::keep(if ctx.by_name {
                None
            } else {
                Some(&ctx.project)
            }),
        )
        .await?;
        t.revision = recorder.as_ref().map(|r| r.revision.number);
        t.desired = Some(std::sync::Arc::new(d.clone()));
        let outcome = engine::execute_gated(&t, &plan, args.parallel, None).await;
        if let Some(r) = recorder {
            let number = r.revision.number;
            let result = engine::revisions::outcome_of(&outcome);
            r.finish(result).await;
            println!("revision {number}: {result}");
        }
        if outcome.ok() {
            println!(
                "rollback: revision {} deployed again in {:.1} s",
                target.number,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        } else {
            outcome.report_failures("rollback", Some(started.elapsed()));
            Ok(ExitCode::FAILURE)
        }
    })?
}
