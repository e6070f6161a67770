//! `incus-compose down`: remove the project's instances and networks (volumes with `-v`).
//! Objects without the project's labels are never touched.

use std::process::ExitCode;

use clap::Args;
use ic_core::plan::{DownOptions, plan_down};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, observe};

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also remove the named volumes of the project
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Also remove instances of services no longer in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Seconds to wait for a clean stop before killing (default: each service's stop_grace_period, else 10)
    #[arg(short = 't', long)]
    pub timeout: Option<i64>,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
}

pub fn run(global: &GlobalArgs, args: &DownArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    let opts = DownOptions {
        volumes: args.volumes,
        remove_orphans: args.remove_orphans,
        timeout: args.timeout,
    };
    block_on(async {
        // The project lock (engine::lock), held until this block ends.
        let _lock = ctx.lock().await?;
        let order = ctx.service_order().await?;
        let obs = observe(&ctx.base, &ctx.incus_project, false).await?;
        if !obs.observed.project_exists {
            println!(
                "Nothing to remove: Incus project {} does not exist",
                ctx.incus_project
            );
            return Ok(ExitCode::SUCCESS);
        }
        let plan = plan_down(
            &ctx.project.name,
            &ctx.incus_project,
            &order.levels,
            &order.stop_timeouts,
            &obs.observed,
            &opts,
        );
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        if plan.is_empty() {
            println!("Nothing to remove for compose project {}", ctx.project.name);
            return Ok(ExitCode::SUCCESS);
        }
        let target = ctx.target(&obs);
        // The member resolvers of the service names (no replicas) go beside the replicas;
        // the Incus project, which must be empty, after both.
        let (last, body): (Vec<_>, Vec<_>) = plan.stages.iter().cloned().partition(|s| {
            s.actions
                .iter()
                .all(|a| matches!(a, ic_core::plan::Action::RemoveProject { .. }))
        });
        let body = ic_core::plan::Plan {
            stages: body,
            ..plan.clone()
        };
        let (outcome, resolvers) = tokio::join!(
            engine::execute(&target, &body, args.parallel),
            engine::names::remove_all(&target)
        );
        if let Err(e) = resolvers {
            eprintln!("warning: removing the service name resolvers: {e:#}");
        }
        if !outcome.ok() {
            outcome.report_failures("down", None);
            return Ok(ExitCode::FAILURE);
        }
        let last = ic_core::plan::Plan {
            stages: last,
            ..plan.clone()
        };
        let outcome = engine::execute(&target, &last, args.parallel).await;
        if outcome.ok() {
            Ok(ExitCode::SUCCESS)
        } else {
            outcome.report_failures("down", None);
            Ok(ExitCode::FAILURE)
        }
    })?
}
