//! `incus-compose ps`: the project's instances, where they run and their ports.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::shared::Format;
use crate::engine::{health, observe};
use ic_core::keys::{LABEL_HASH, LABEL_SERVICE, LABEL_SLOT};

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

#[derive(Debug, Clone, serde::Serialize)]
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
    /// The revision the replica runs (the newest kept whose spec of its service has the
    /// replica's hash); null when none kept has it.
    revision: Option<u64>,
    /// On a member that cannot be asked (state unknown).
    #[serde(skip)]
    unreached: bool,
}

pub fn run(global: &GlobalArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    block_on(async {
        // What the scheduler sees, for the pending replicas. A member that stopped answering
        // and that Incus does not list as offline yet fails it: then no pending rows (the
        // replicas reached are listed all the same).
        // Both at once: each waits a few seconds for such a member.
        let (obs, reached) = tokio::join!(
            observe(&ctx.base, &ctx.incus_project, false),
            super::select::reach(&ctx, &args.services, false)
        );
        let obs = match obs {
            Ok(obs) => Some(obs),
            Err(e) if super::shared::unreadable(&e) => None,
            Err(e) => return Err(e),
        };
        let reached = reached?;
        let mut rows = Vec::new();
        let mut updates = BTreeMap::new();
        let mut unreached = Vec::new();
        if obs.as_ref().is_none_or(|o| o.observed.project_exists) {
            let revisions =
                crate::engine::revisions::read(&ctx.base, &ctx.incus_project, &ctx.project.name)
                    .await
                    .unwrap_or_default();
            unreached = reached.warnings();
            for i in reached.instances {
                if !crate::engine::is_ours(&i.config, &ctx.project.name) {
                    continue;
                }
                let service = i.config.get(LABEL_SERVICE).cloned().unwrap_or_default();
                let service_label = service.clone();
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
                let ingress = ic_core::plan::ingress::as_proxies(&i.config);
                let ports = i
                    .devices
                    .values()
                    .chain(ingress.values())
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
                        .get(ic_core::keys::LABEL_GAVE_UP)
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
                    revision: i.config.get(LABEL_HASH).and_then(|h| {
                        ic_core::revision::running_revision(&revisions, &service_label, h)
                    }),
                    unreached: false,
                });
                if i.config.contains_key(ic_core::keys::LABEL_RETIRED)
                    && let Some(r) = rows.last_mut()
                {
                    r.state = "Retired".into();
                }
                if gave_up && let Some(r) = rows.last_mut() {
                    r.state = format!("{} (restart budget spent)", r.state);
                }
            }
            // Replicas on a member that cannot be asked: listed, state unknown (as `docker
            // service ps` lists the tasks of a node that is down), with a warning.
            for u in &reached.unreached {
                rows.push(Row {
                    name: u.name.clone(),
                    service: u.service.clone().unwrap_or_default(),
                    slot: u.slot.clone().unwrap_or_default(),
                    member: u.member.clone(),
                    state: "unknown (member offline)".into(),
                    health: None,
                    health_output: None,
                    last_used_at: String::new(),
                    ports: Vec::new(),
                    pending_reason: None,
                    update: None,
                    revision: None,
                    unreached: true,
                });
            }
            add_health(&ctx, &mut rows).await?;
            updates = service_updates(&revisions);
            for r in &mut rows {
                r.update = updates.get(&r.service).cloned();
            }
            // By name (no compose file), the declared replicas are not known: no pending rows.
            if !ctx.by_name
                && let Some(obs) = &obs
            {
                add_pending(&ctx, obs, args, &mut rows)?;
                // A replica on an offline member has its row already (state unknown).
                rows.retain(|r| {
                    r.pending_reason.is_none()
                        || !reached.unreached.iter().any(|u| u.name == r.name)
                });
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
        for w in &unreached {
            eprintln!("warning: {w}");
        }
        match args.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Format::Table => {
                print!("{}", table(&rows));
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
fn service_updates(revs: &[ic_core::revision::Revision]) -> BTreeMap<String, String> {
    use ic_core::revision::{Outcome, changed};
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
    obs: &crate::engine::Observation,
    args: &PsArgs,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let opts = ic_core::plan::PlanOptions {
        incus_project: Some(ctx.incus_project.clone()),
        ..Default::default()
    };
    let pending = ic_core::plan::placement::pending_replicas(
        &ctx.project,
        &obs.observed,
        &obs.facts.network,
        &opts,
    )
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
            revision: None,
            unreached: false,
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

/// The table: NAME, SERVICE, MEMBER, STATE, HEALTH, PORTS, and REVISION after STATE when
/// the replicas of a service run different revisions (during or after an update that did not
/// complete).
fn table(rows: &[Row]) -> String {
    let mut by_service: BTreeMap<&str, std::collections::BTreeSet<Option<u64>>> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.pending_reason.is_none() && !r.member.is_empty() && !r.unreached)
    {
        by_service.entry(&r.service).or_default().insert(r.revision);
    }
    let revisions = by_service.values().any(|s| s.len() > 1);
    let mut header = vec!["NAME", "SERVICE", "MEMBER", "STATE"];
    if revisions {
        header.push("REVISION");
    }
    header.extend(["HEALTH", "PORTS"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.name.clone(),
                r.service.clone(),
                if r.member.is_empty() {
                    "-".into()
                } else {
                    r.member.clone()
                },
                r.state.clone(),
            ];
            if revisions {
                c.push(r.revision.map_or_else(|| "-".into(), |n| n.to_string()));
            }
            c.push(r.health.clone().unwrap_or_else(|| "-".into()));
            c.push(r.ports.join(", "));
            c
        })
        .collect();
    ic_core::display::table(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, member: &str, state: &str, revision: Option<u64>) -> Row {
        Row {
            name: name.into(),
            service: name.split('-').next().unwrap_or_default().into(),
            slot: String::new(),
            member: member.into(),
            state: state.into(),
            health: None,
            health_output: None,
            last_used_at: String::new(),
            ports: Vec::new(),
            pending_reason: None,
            update: None,
            revision,
            unreached: state.starts_with("unknown"),
        }
    }

    #[test]
    fn the_revision_column_shows_when_replicas_of_a_service_differ() {
        let same = [
            row("web-1", "node1", "Running", Some(2)),
            row("web-2", "node2", "Running", Some(2)),
        ];
        assert_eq!(
            table(&same),
            "NAME    SERVICE   MEMBER   STATE     HEALTH   PORTS\n\
             web-1   web       node1    Running   -\n\
             web-2   web       node2    Running   -\n"
        );
        let mixed = [
            row("web-1", "node1", "Running", Some(2)),
            row("web-2", "node2", "Running", Some(1)),
            row("web-3", "node3", "unknown (member offline)", None),
        ];
        // A replica not reached does not make a difference by itself.
        assert!(!table(&[mixed[0].clone(), mixed[2].clone()]).contains("REVISION"));
        assert_eq!(
            table(&mixed),
            "NAME    SERVICE   MEMBER   STATE                      REVISION   HEALTH   PORTS\n\
             web-1   web       node1    Running                    2          -\n\
             web-2   web       node2    Running                    1          -\n\
             web-3   web       node3    unknown (member offline)   -          -\n"
        );
    }
}
