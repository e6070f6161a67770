//! `incus-compose history`: the revisions of a project kept in Incus (number, time, what made
//! it, the services it changed, how its rollout ended). Works without the compose file
//! (`-p NAME`).

use std::process::ExitCode;

use clap::Args;
use ic_core::revision;

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = super::ps::Format::Table)]
    pub format: super::ps::Format,
}

pub fn run(global: &GlobalArgs, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    let revs = block_on(engine::revisions::read(
        &ctx.base,
        &ctx.incus_project,
        &ctx.project.name,
    ))??;
    let deployed = revision::deployed(&revs).map(|r| r.number);
    let rows: Vec<serde_json::Value> = revs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let before = i.checked_sub(1).and_then(|j| revs.get(j));
            serde_json::json!({
                "revision": r.number,
                "time": r.time,
                "version": r.version,
                "cause": r.cause,
                "services_changed": revision::changed(before, r),
                "outcome": r.outcome.to_string(),
                "deployed": Some(r.number) == deployed,
            })
        })
        .collect();
    if matches!(args.format, super::ps::Format::Json) {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    if revs.is_empty() {
        println!(
            "No revision of compose project {} is kept in Incus project {}",
            ctx.project.name, ctx.incus_project
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<10} {:<22} {:<16} {:<30} OUTCOME",
        "REVISION", "CREATED", "CAUSE", "SERVICES CHANGED"
    );
    for row in &rows {
        let number = format!(
            "{}{}",
            row["revision"],
            if row["deployed"] == true { " *" } else { "" }
        );
        let changed: Vec<&str> = row["services_changed"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<10} {:<22} {:<16} {:<30} {}",
            number,
            row["time"].as_str().unwrap_or(""),
            row["cause"].as_str().unwrap_or(""),
            if changed.is_empty() {
                "-".to_string()
            } else {
                changed.join(", ")
            },
            row["outcome"].as_str().unwrap_or("")
        );
    }
    println!("* the revision deployed now (the newest whose rollout completed)");
    Ok(ExitCode::SUCCESS)
}
