//! `incus-compose watch [-p NAME | --all] [--once] [--format json] [--interval SECS]
//! [--grace SECS]`: keep compose projects converged to their deployed revision as members
//! join, fail and come back, and as replicas stop (see `engine::watch`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Every compose project on the server (instead of the compose file's or `-p NAME`)
    #[arg(long)]
    pub all: bool,
    /// One reconcile, then exit (for cron and tests); exit status 1 when an action failed
    #[arg(long)]
    pub once: bool,
    /// Log format: `text` (one line per action) or `json` (one JSON object per line)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Seconds between two reads of the member list (Incus emits no event when a member
    /// goes offline)
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// Seconds a member may be offline before its replicas are re-created elsewhere
    /// (default: a little over the server's `cluster.offline_threshold`)
    #[arg(long, value_name = "SECS")]
    pub grace: Option<u64>,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
}

pub fn run(global: &GlobalArgs, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let (base, project) = if args.all {
        (engine::connect(global.remote.as_deref())?, None)
    } else {
        let ctx = Context::new_or_by_name(global)?;
        let p = (ctx.project.name.clone(), ctx.incus_project.clone());
        (ctx.base, Some(p))
    };
    engine::progress::lines_to_stderr();
    engine::progress::stamp_lines();
    let o = engine::watch::WatchOptions {
        project,
        once: args.once,
        json: args.format == "json",
        interval: Duration::from_secs(args.interval),
        grace: args.grace,
        parallel: args.parallel,
    };
    let ok = block_on(engine::watch::run(&base, &o))??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
