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
    #[arg(long, value_enum, default_value_t = super::shared::Format::Table)]
    pub format: super::shared::Format,
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
    if matches!(args.format, super::shared::Format::Json) {
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
    print!("{}", table(&rows, time::OffsetDateTime::now_utc()));
    println!("* the revision deployed now (the newest whose rollout completed)");
    Ok(ExitCode::SUCCESS)
}

/// The human table of `rows` (as `--format json` prints them), times relative to `now`
/// ("2 minutes ago", as docker prints them; the exact time is in `--format json`).
fn table(rows: &[serde_json::Value], now: time::OffsetDateTime) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let number = format!(
                "{}{}",
                row["revision"],
                if row["deployed"] == true { " *" } else { "" }
            );
            let changed: Vec<&str> = row["services_changed"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let time = row["time"].as_str().unwrap_or("");
            vec![
                number,
                crate::engine::timefmt::ago_rfc3339(time, now),
                row["cause"].as_str().unwrap_or("").to_string(),
                if changed.is_empty() {
                    "-".to_string()
                } else {
                    changed.join(", ")
                },
                row["outcome"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    ic_core::display::table(
        &[
            "REVISION",
            "CREATED",
            "CAUSE",
            "SERVICES CHANGED",
            "OUTCOME",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_table_reads_aligned_with_relative_times() {
        let row = |n: u64, time: &str, cause: &str, changed: &[&str], outcome: &str, dep: bool| {
            serde_json::json!({
                "revision": n,
                "time": time,
                "version": "0.1.0",
                "cause": cause,
                "services_changed": changed,
                "outcome": outcome,
                "deployed": dep,
            })
        };
        let rows = [
            row(
                1,
                "2026-12-06T15:02:11.350681175Z",
                "up",
                &["db", "web"],
                "completed",
                false,
            ),
            row(
                2,
                "2026-12-06T17:29:27.350681175Z",
                "up",
                &["web"],
                "rolled back",
                false,
            ),
            row(
                3,
                "2026-12-06T17:31:40Z",
                "rollback to 1",
                &[],
                "completed",
                true,
            ),
            row(4, "not a time", "up", &["worker"], "in progress", false),
        ];
        let now = time::OffsetDateTime::parse(
            "2026-12-06T17:32:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            table(&rows, now),
            "\
REVISION   CREATED          CAUSE           SERVICES CHANGED   OUTCOME
1          2 hours ago      up              db, web            completed
2          2 minutes ago    up              web                rolled back
3 *        20 seconds ago   rollback to 1   -                  completed
4          not a time       up              worker             in progress
"
        );
    }
}
