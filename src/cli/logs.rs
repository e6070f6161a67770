//! `incus-compose logs`: what each replica's first process printed (the Incus console log),
//! one line at a time, prefixed with the replica name.
//!
//! Incus 6.0 hands out a running container's console ring buffer and clears it, so each call
//! shows what was printed since the previous read (by `logs` or `incus console --show-log`);
//! `--follow` is not supported yet.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ic_core::plan::{LABEL_SERVICE, LABEL_SLOT};

use super::GlobalArgs;
use super::project::{Context, block_on};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only the last N lines of each replica
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Print lines without the `name | ` prefix
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Services to show (default: all)
    pub services: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    block_on(async {
        let client = ctx.base.with_project(&ctx.incus_project);
        let mut instances = match client.instances().await {
            Ok(list) => list,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e).context("cannot list instances"),
        };
        instances.retain(|i| {
            crate::engine::is_ours(&i.config, &ctx.project.name)
                && (args.services.is_empty()
                    || i.config
                        .get(LABEL_SERVICE)
                        .is_some_and(|s| args.services.contains(s)))
        });
        instances.sort_by_key(|i| {
            (
                i.config.get(LABEL_SERVICE).cloned(),
                i.config.get(LABEL_SLOT).and_then(|s| s.parse::<u64>().ok()),
                i.name.clone(),
            )
        });
        let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(0);
        for i in &instances {
            let log = client
                .instance_console_log(&i.name)
                .await
                .with_context(|| format!("cannot read the console log of {}", i.name))?;
            let lines: Vec<&str> = log.lines().collect();
            let from = args
                .tail
                .map(|n| lines.len().saturating_sub(n))
                .unwrap_or(0);
            for line in &lines[from..] {
                let line = line.trim_end_matches('\r');
                if args.no_log_prefix {
                    println!("{line}");
                } else {
                    println!("{:<width$} | {line}", i.name);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}
