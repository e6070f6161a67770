//! `incus-compose ps`: the project's instances, where they run and their ports.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use ic_core::plan::{LABEL_SERVICE, LABEL_SLOT};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{health, observe};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also show stopped instances, and the one-off instances of `run`
    #[arg(short, long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only these services
    pub services: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    service: String,
    slot: String,
    member: String,
    state: String,
    /// `healthy`, `unhealthy`, `starting` (one probe now, see `engine::health`), or null
    /// without a healthcheck (or when not running).
    health: Option<String>,
    /// What the probe printed (exit code and output), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    health_output: Option<String>,
    /// Incus `last_used_at`: used for the start period.
    #[serde(skip)]
    last_used_at: String,
    ports: Vec<String>,
    /// For state `pending` (a replica no member can take now): every member with its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pending_reason: Option<Vec<String>>,
    /// `updating`, `paused` or `rolled back` while the newest revision that changed the
    /// service did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    update: Option<String>,
}

pub fn run(global: &GlobalArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    block_on(async {
        let obs = observe(&ctx.base, &ctx.incus_project, false).await?;
        let mut rows = Vec::new();
        let mut updates = BTreeMap::new();
        if obs.observed.project_exists {
            let instances = ctx
                .base
                .with_project(&ctx.incus_project)
                .instances()
                .await
                .context("cannot list instances")?;
            for i in instances {
                if !crate::engine::is_ours(&i.config, &ctx.project.name) {
                    continue;
                }
                let service = i.config.get(LABEL_SERVICE).cloned().unwrap_or_default();
                if !args.services.is_empty() && !args.services.contains(&service) {
                    continue;
                }
                // Paused (frozen) replicas are listed as running ones are; one-off instances of
                // `run` only with -a.
                let paused = i.status.eq_ignore_ascii_case("frozen");
                let oneoff = ic_core::plan::is_oneoff(&i.config);
                if !args.all && ((!i.is_running() && !paused) || oneoff) {
                    continue;
                }
                let ports = i
                    .devices
                    .values()
                    .filter(|d| d.get("type").map(String::as_str) == Some("proxy"))
                    .filter_map(|d| {
                        let listen = d.get("listen")?;
                        let connect = d.get("connect")?;
                        let (proto, rest) = listen.split_once(':')?;
                        let target = connect.rsplit(':').next()?;
                        Some(format!("{rest}->{target}/{proto}"))
                    })
                    .collect();
                // Left stopped by `watch`: its restart_policy budget was spent.
                let gave_up = !i.is_running()
                    && i.config
                        .get(ic_core::watch::restart::LABEL_GAVE_UP)
                        .is_some_and(|g| !g.is_empty());
                rows.push(Row {
                    slot: i.config.get(LABEL_SLOT).cloned().unwrap_or_default(),
                    name: i.name,
                    service,
                    member: i.location,
                    state: if paused { "paused".into() } else { i.status },
                    health: None,
                    health_output: None,
                    last_used_at: i.last_used_at,
                    ports,
                    pending_reason: None,
                    update: None,
                });
                if i.config.contains_key(ic_core::plan::LABEL_RETIRED)
                    && let Some(r) = rows.last_mut()
                {
                    r.state = "Retired".into();
                }
                if gave_up && let Some(r) = rows.last_mut() {
                    r.state = format!("{} (restart budget spent)", r.state);
                }
            }
            add_health(&ctx, &mut rows).await?;
            updates = service_updates(&ctx).await;
            for r in &mut rows {
                r.update = updates.get(&r.service).cloned();
            }
            // By name (no compose file), the declared replicas are not known: no pending rows.
            if !ctx.by_name {
                add_pending(&ctx, &obs.observed, args, &mut rows)?;
            }
        }
        rows.sort_by(|a, b| {
            (
                a.service.as_str(),
                a.slot.parse::<u64>().ok(),
                a.slot.as_str(),
            )
                .cmp(&(
                    b.service.as_str(),
                    b.slot.parse::<u64>().ok(),
                    b.slot.as_str(),
                ))
        });
        match args.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Format::Table => {
                print_table(&rows);
                print_pending_reasons(&rows);
                for (service, state) in &updates {
                    println!("service {service}: update {state} (see `incus-compose history`)");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}

/// Services whose newest revision did not complete: `updating`, `paused`, `rolled back`.
async fn service_updates(ctx: &Context) -> BTreeMap<String, String> {
    use ic_core::revision::{Outcome, changed};
    let Ok(revs) =
        crate::engine::revisions::read(&ctx.base, &ctx.incus_project, &ctx.project.name).await
    else {
        return BTreeMap::new();
    };
    let Some(last) = revs.last() else {
        return BTreeMap::new();
    };
    let state = match last.outcome {
        Outcome::InProgress => "updating",
        Outcome::Paused => "paused",
        Outcome::RolledBack => "rolled back",
        Outcome::Completed | Outcome::Failed => return BTreeMap::new(),
    };
    let before = revs.len().checked_sub(2).and_then(|i| revs.get(i));
    changed(before, last)
        .into_iter()
        .map(|s| (s, state.to_string()))
        .collect()
}

/// Rows (state `pending`) for the replicas the scheduler cannot place now, found by running
/// the planner's scheduler on the compose file and what Incus holds.
fn add_pending(
    ctx: &Context,
    observed: &ic_core::plan::Observed,
    args: &PsArgs,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let opts = ic_core::plan::PlanOptions {
        incus_project: Some(ctx.incus_project.clone()),
        ..Default::default()
    };
    let pending = ic_core::plan::placement::pending_replicas(&ctx.project, observed, &opts)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for p in pending {
        // A replica stranded on an offline member already has its own row.
        if p.exists || (!args.services.is_empty() && !args.services.contains(&p.service)) {
            continue;
        }
        rows.push(Row {
            name: p.name,
            service: p.service,
            slot: p.slot,
            member: String::new(),
            state: "pending".into(),
            health: None,
            health_output: None,
            last_used_at: String::new(),
            ports: Vec::new(),
            pending_reason: Some(p.reason.members().iter().map(|r| r.to_string()).collect()),
            update: None,
        });
    }
    Ok(())
}

/// Below the table: why each pending replica is pending, member by member.
fn print_pending_reasons(rows: &[Row]) {
    for r in rows {
        if let Some(reasons) = &r.pending_reason {
            println!("{} is pending: no member can take it:", r.name);
            for line in reasons {
                println!("  {line}");
            }
        }
    }
}

/// Probes each running instance whose service has a healthcheck once (in parallel).
async fn add_health(ctx: &Context, rows: &mut [Row]) -> anyhow::Result<()> {
    let checks = health::checks(&ctx.project)?;
    let running: Vec<(String, String, String)> = rows
        .iter()
        .filter(|r| r.state.eq_ignore_ascii_case("running"))
        .map(|r| (r.name.clone(), r.service.clone(), r.last_used_at.clone()))
        .collect();
    let client = ctx.base.with_project(&ctx.incus_project);
    let mut found = health::snapshot(&client, &running, &checks).await;
    for r in rows.iter_mut() {
        if let Some(s) = found.remove(&r.name) {
            r.health = Some(s.health.to_string());
            r.health_output = Some(s.output);
        }
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    let header = ["NAME", "SERVICE", "MEMBER", "STATE", "HEALTH", "PORTS"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.service.clone(),
                if r.member.is_empty() {
                    "-".into()
                } else {
                    r.member.clone()
                },
                r.state.clone(),
                r.health.clone().unwrap_or_else(|| "-".into()),
                r.ports.join(", "),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            if i == 5 {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]);
    }
}
