//! `incus-compose start`, `stop`, `restart`: change the state of existing replicas, in
//! dependency order (stops dependents first, starts dependencies first).

use std::process::ExitCode;

use clap::Args;
use ic_core::plan::{Power, plan_power};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, observe};

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Services to start (default: all)
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait for a clean stop before killing
    #[arg(short = 't', long, default_value_t = 10)]
    pub timeout: i64,
    /// Services to stop (default: all)
    pub services: Vec<String>,
}

pub fn start(global: &GlobalArgs, args: &StartArgs) -> anyhow::Result<ExitCode> {
    run(global, Power::Start, 10, &args.services)
}

pub fn stop(global: &GlobalArgs, args: &StopArgs) -> anyhow::Result<ExitCode> {
    run(global, Power::Stop, args.timeout, &args.services)
}

pub fn restart(global: &GlobalArgs, args: &StopArgs) -> anyhow::Result<ExitCode> {
    run(global, Power::Restart, args.timeout, &args.services)
}

fn run(
    global: &GlobalArgs,
    power: Power,
    timeout: i64,
    services: &[String],
) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    ctx.check_services(services)?;
    block_on(async {
        // Starts (dependencies first) and stops act under the project lock, as `up` acts,
        // planned from what Incus holds once it is taken.
        let _lock = ctx.lock().await?;
        let order = ctx.service_order().await?;
        let obs = observe(&ctx.base, &ctx.incus_project, false).await?;
        let plan = plan_power(
            power,
            &ctx.project.name,
            &ctx.incus_project,
            &order.levels,
            timeout,
            &obs.observed,
            services,
        );
        if plan.is_empty() {
            println!("Nothing to do");
            return Ok(ExitCode::SUCCESS);
        }
        // Dependencies first, and a dependent starts only once their `depends_on` conditions
        // hold (healthy, completed), as `up` does.
        let gate = match power {
            Power::Stop => None,
            Power::Start | Power::Restart => Some(engine::health::Gate::new(
                ctx.base.with_project(&ctx.incus_project),
                &ctx.project,
                None,
            )?),
        };
        let outcome = engine::execute_gated(&ctx.target(&obs), &plan, 8, gate.as_ref()).await;
        if outcome.ok() {
            Ok(ExitCode::SUCCESS)
        } else {
            let command = match power {
                Power::Start => "start",
                Power::Stop => "stop",
                Power::Restart => "restart",
            };
            outcome.report_failures(command, None);
            Ok(ExitCode::FAILURE)
        }
    })?
}
