//! `incus-compose node`: the cluster members placement constraints are checked against.
//!
//! `node ls` lists the members (on a standalone server: the server itself) with status, roles,
//! architecture, failure domain, `user.*` labels (what `node.labels.<k>` constraints and
//! `spread: node.labels.<k>` preferences read) and, when a compose file is found, the replicas
//! of that compose project on each member. `node label <member> k=v ... --remove k` sets and
//! removes labels: member config `user.<k>` on a cluster, server config `user.<k>` on a
//! standalone server. Each change is a read-modify-write guarded by the object's ETag
//! (`If-Match`), retried when someone else changed it in between, then read back (see
//! [`Check`]), so concurrent edits of other keys are not lost.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use ic_compose::Project;
use ic_core::plan::{PlanOptions, incus_project_name};
use ic_incus::{Client, Request};

use super::GlobalArgs;
use super::project::block_on;
use crate::engine::{self, observe};

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the members with status, roles, labels and this project's replicas on each
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Set or remove labels (`user.<key>` config) of a member
    Label(LabelArgs),
    /// Move the member's replicas of every compose project to other members (start-first),
    /// then mark it so nothing new is placed there
    Drain(DrainArgs),
    /// Undo `node drain`'s mark: the member takes new replicas again (nothing moves back)
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The cluster member to drain
    pub member: String,
    /// Print the moves without changing anything
    #[arg(long)]
    pub dry_run: bool,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The cluster member `node drain` marked
    pub member: String,
    /// Then move replicas (start-first) from members holding more than their share to those
    /// holding less, so that each service spreads as it would from scratch (every compose
    /// project, or `-p NAME`'s)
    #[arg(long)]
    pub rebalance: bool,
    /// How many Incus operations run at once (with --rebalance)
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// The member (on a standalone server: the server's name)
    pub member: String,
    /// Labels to set, as KEY=VALUE (KEY without the `user.` prefix)
    #[arg(value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Labels to remove (repeatable)
    #[arg(long = "remove", value_name = "KEY")]
    pub remove: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &NodeArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        NodeCommand::Ls(a) => ls(global, a),
        NodeCommand::Label(a) => label(global, a),
        NodeCommand::Drain(a) => drain(global, a),
        NodeCommand::Restore(a) => restore(global, a),
    }
}

/// `node drain MEMBER`: every compose project (or `-p NAME`'s); no compose file needed.
/// Exit 1 when a replica could not move (it stays, named with the reason) or an action failed.
fn drain(global: &GlobalArgs, args: &DrainArgs) -> anyhow::Result<ExitCode> {
    let base = engine::connect(global.remote.as_deref())?;
    engine::progress::lines_to_stderr();
    let o = engine::drain::DrainOptions {
        member: args.member.clone(),
        project: global.project_name.clone(),
        dry_run: args.dry_run,
        parallel: args.parallel,
        no_wait_lock: global.no_wait_lock,
    };
    let ok = block_on(engine::drain::drain(&base, &o))??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn restore(global: &GlobalArgs, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let base = engine::connect(global.remote.as_deref())?;
    let message = block_on(engine::drain::restore(&base, &args.member, args.rebalance))??;
    println!("{message}");
    if !args.rebalance {
        return Ok(ExitCode::SUCCESS);
    }
    engine::progress::lines_to_stderr();
    let o = engine::drain::DrainOptions {
        member: args.member.clone(),
        project: global.project_name.clone(),
        dry_run: false,
        parallel: args.parallel,
        no_wait_lock: global.no_wait_lock,
    };
    let ok = block_on(engine::drain::rebalance(&base, &o))??;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    status: String,
    message: String,
    roles: Vec<String>,
    architecture: String,
    failure_domain: String,
    /// `scheduler.instance=manual`: keeps its replicas, gets no new ones.
    manual: bool,
    /// Marked by `node drain` (until `node restore`).
    drained: bool,
    labels: BTreeMap<String, String>,
    /// Replicas of the compose project per service; absent without a compose file.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<BTreeMap<String, u32>>,
}

/// The compose project, when there is one: `Ok(None)` only when no compose file was named
/// and none is found (the member list works without one); any other load error fails.
fn try_project(global: &GlobalArgs) -> anyhow::Result<Option<Project>> {
    let options = super::shared::load_options(global, true)?;
    match ic_compose::load(&options) {
        Ok(p) => Ok(Some(p)),
        Err(errors)
            if errors.len() == 1
                && errors
                    .iter()
                    .all(|d| d.message.starts_with("no compose file found")) =>
        {
            Ok(None)
        }
        Err(errors) => {
            for d in errors.iter() {
                eprintln!("error: {d}");
            }
            Err(anyhow!(
                "{} error{} in the compose configuration",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ))
        }
    }
}

fn ls(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let project = try_project(global)?;
    let base = engine::connect(global.remote.as_deref())?;
    let incus_project = match &project {
        Some(p) => incus_project_name(
            p,
            &PlanOptions {
                incus_project: global.incus_project.clone(),
                ..Default::default()
            },
        ),
        None => global
            .incus_project
            .clone()
            .unwrap_or_else(|| "default".into()),
    };
    let rows = block_on(async {
        // A member that stopped answering but that Incus does not list as offline yet
        // (`cluster.offline_threshold`) makes its instances unreadable: wait for Incus to list
        // it offline (then they are counted by name), up to a minute.
        let started = std::time::Instant::now();
        let mut warned = false;
        let obs = loop {
            match observe(&base, &incus_project, false).await {
                Ok(obs) => break obs,
                Err(e) if started.elapsed().as_secs() < 60 && super::shared::unreadable(&e) => {
                    if !std::mem::replace(&mut warned, true) {
                        eprintln!(
                            "warning: {:#}; waiting for Incus to list the member offline",
                            e.root_cause()
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let mut replicas: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
        if let Some(p) = &project {
            // Replicas on an offline member are listed without their labels: counted by
            // their name when the Incus project is this compose project's.
            let ours_project = obs.observed.project_config.get(LABEL_PROJECT) == Some(&p.name);
            for i in &obs.observed.instances {
                let stand_in = i.config.is_empty() && ours_project;
                if i.config.get(LABEL_PROJECT) != Some(&p.name) && !stand_in {
                    continue;
                }
                let service = if stand_in {
                    let (service, _) = engine::reach::service_of_name(&i.name, &[]);
                    let Some(service) = service else { continue };
                    service
                } else {
                    i.config.get(LABEL_SERVICE).cloned().unwrap_or_default()
                };
                *replicas
                    .entry(i.location.as_str())
                    .or_default()
                    .entry(service)
                    .or_default() += 1;
            }
        }
        let mut drained = std::collections::BTreeSet::new();
        let raw: BTreeMap<String, (String, String)> = if obs.observed.clustered {
            base.cluster_members()
                .await
                .context("cannot list cluster members")?
                .into_iter()
                .map(|m| {
                    if m.config.contains_key(ic_core::keys::DRAINED_KEY) {
                        drained.insert(m.server_name.clone());
                    }
                    (m.server_name, (m.status, m.message))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut rows: Vec<Row> = obs
            .observed
            .members
            .iter()
            .map(|m| {
                let (status, message) = raw.get(&m.name).cloned().unwrap_or_else(|| {
                    let s = if m.evacuated {
                        "Evacuated"
                    } else if m.online {
                        "Online"
                    } else {
                        "Offline"
                    };
                    (s.to_string(), String::new())
                });
                Row {
                    name: m.name.clone(),
                    status,
                    message,
                    roles: m.roles.clone(),
                    architecture: m.architecture.clone(),
                    failure_domain: m.failure_domain.clone(),
                    manual: m.manual,
                    drained: drained.contains(&m.name),
                    labels: m.labels.clone(),
                    replicas: project
                        .as_ref()
                        .map(|_| replicas.get(m.name.as_str()).cloned().unwrap_or_default()),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        anyhow::Ok(rows)
    })??;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print_table(&rows, project.as_ref().map(|p| p.name.as_str())),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(rows: &[Row], compose: Option<&str>) {
    let mut header = vec![
        "NAME".to_string(),
        "STATUS".into(),
        "ROLES".into(),
        "ARCH".into(),
        "FAILURE DOMAIN".into(),
        "LABELS".into(),
    ];
    if let Some(c) = compose {
        header.push(format!("REPLICAS ({c})"));
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut status = r.status.to_uppercase();
            if r.drained {
                status.push_str(" (drained)");
            } else if r.manual {
                status.push_str(" (manual)");
            }
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut c = vec![
                r.name.clone(),
                status,
                if r.roles.is_empty() {
                    "-".into()
                } else {
                    r.roles.join(",")
                },
                r.architecture.clone(),
                r.failure_domain.clone(),
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ];
            if let Some(reps) = &r.replicas {
                let total: u32 = reps.values().sum();
                let detail: Vec<String> = reps.iter().map(|(s, n)| format!("{s}={n}")).collect();
                c.push(if total == 0 {
                    "0".into()
                } else {
                    format!("{total} ({})", detail.join(","))
                });
            }
            c
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(String::len).collect();
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            s.push_str(&format!("{v:<w$}   ", w = width[i]));
        }
        println!("{}", s.trim_end());
    };
    line(&header);
    for c in &cells {
        line(c);
    }
}

/// A label key as `node.labels.<key>` reads it: letters, digits, `.`, `_`, `-`.
fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() {
        bail!("empty label key");
    }
    if let Some(bare) = key.strip_prefix("user.") {
        bail!(
            "label key {key:?}: give it without the `user.` prefix (it is added: `{bare}` is stored as `{key}`)"
        );
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        bail!(
            "label key {key:?}: character {c:?} is not allowed (use letters, digits, `.`, `_`, `-`)"
        );
    }
    Ok(())
}

/// The changes asked for: key -> new value (`None`: remove).
fn changes(args: &LabelArgs) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for item in &args.set {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            anyhow!("{item:?}: expected KEY=VALUE (to remove a label: --remove KEY)")
        })?;
        check_key(k)?;
        if v.is_empty() {
            bail!("{item:?}: empty value; to remove the label use --remove {k}");
        }
        if out.insert(k.to_string(), Some(v.to_string())).is_some() {
            bail!("label {k:?} given twice");
        }
    }
    for k in &args.remove {
        check_key(k)?;
        if out.insert(k.clone(), None).is_some() {
            bail!("label {k:?} is both set and removed");
        }
    }
    if out.is_empty() {
        bail!("nothing to do: give KEY=VALUE labels to set and/or --remove KEY");
    }
    Ok(out)
}

/// Apply `changes` to a config map; returns whether anything changed.
fn apply<V>(
    config: &mut BTreeMap<String, V>,
    changes: &BTreeMap<String, Option<String>>,
    value: impl Fn(&str) -> V,
) -> bool
where
    V: PartialEq,
{
    let mut changed = false;
    for (k, v) in changes {
        let key = format!("user.{k}");
        match v {
            Some(v) => {
                let new = value(v);
                if config.get(&key) != Some(&new) {
                    config.insert(key, new);
                    changed = true;
                }
            }
            None => changed |= config.remove(&key).is_some(),
        }
    }
    changed
}

use crate::engine::member::{ATTEMPTS, Check};
use ic_core::keys::{LABEL_PROJECT, LABEL_SERVICE};

fn label(global: &GlobalArgs, args: &LabelArgs) -> anyhow::Result<ExitCode> {
    let changes = changes(args)?;
    let base = engine::connect(global.remote.as_deref())?;
    let labels = block_on(async {
        let info = base
            .server()
            .await
            .context("cannot read the Incus server's information")?;
        if info.is_clustered() {
            label_member(&base, &args.member, &changes).await
        } else {
            let name = &info.environment.server_name;
            if &args.member != name {
                bail!(
                    "this Incus server is not clustered: its only member is itself, {name:?}; run `incus-compose node label {name} ...`"
                );
            }
            label_server(&base, &changes).await
        }
    })??;
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{}: labels {}",
        args.member,
        if shown.is_empty() {
            "(none)".to_string()
        } else {
            shown.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn user_labels<V: AsRef<str>>(config: &BTreeMap<String, V>) -> BTreeMap<String, String> {
    config
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("user.")?.to_string(), v.as_ref().to_string())))
        .collect()
}

async fn label_member(
    base: &Client,
    member: &str,
    changes: &BTreeMap<String, Option<String>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let config =
        engine::member::edit_member(base, member, |c| apply(c, changes, str::to_string)).await?;
    Ok(user_labels(&config))
}

/// `PUT /1.0` body.
#[derive(serde::Serialize)]
struct ServerPut {
    config: BTreeMap<String, serde_json::Value>,
}

async fn label_server(
    base: &Client,
    changes: &BTreeMap<String, Option<String>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let shown = |config: &BTreeMap<String, serde_json::Value>| {
        user_labels(
            &config
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        )
    };
    let mut check = Check::default();
    for _ in 0..ATTEMPTS {
        let (info, etag): (ic_incus::ServerInfo, _) = base
            .send_with_etag(Request::get("/1.0"))
            .await
            .context("cannot read the server configuration")?;
        let mut config = info.config;
        let needed = apply(&mut config, changes, |v| {
            serde_json::Value::String(v.into())
        });
        if check.done(needed).await {
            return Ok(shown(&config));
        }
        if !needed {
            continue;
        }
        let req = Request::put("/1.0")
            .if_match(etag)
            .json(&ServerPut {
                config: config.clone(),
            })
            .context("cannot encode the server configuration")?;
        match base.send_unit(req).await {
            Ok(()) => check.wrote(),
            Err(e) if e.status() == Some(412) => continue,
            Err(e) => return Err(e).context("cannot update the server configuration"),
        }
    }
    bail!("the server configuration kept changing under us ({ATTEMPTS} attempts); try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(set: &[&str], remove: &[&str]) -> LabelArgs {
        LabelArgs {
            member: "node1".into(),
            set: set.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn label_arguments_become_user_keys_and_other_config_stays() {
        let c = changes(&args(&["storage=ssd", "zone=a"], &["rack"])).unwrap();
        let mut config = BTreeMap::from([
            ("scheduler.instance".to_string(), "all".to_string()),
            ("user.rack".into(), "r1".into()),
            ("user.zone".into(), "b".into()),
        ]);
        assert!(apply(&mut config, &c, str::to_string));
        assert_eq!(
            config,
            BTreeMap::from([
                ("scheduler.instance".to_string(), "all".to_string()),
                ("user.storage".into(), "ssd".into()),
                ("user.zone".into(), "a".into()),
            ])
        );
        assert!(
            !apply(&mut config, &c, str::to_string),
            "applying twice changes nothing"
        );
    }

    #[test]
    fn bad_label_arguments_are_refused_with_a_hint() {
        let err =
            |set: &[&str], remove: &[&str]| changes(&args(set, remove)).unwrap_err().to_string();
        assert!(err(&["storage"], &[]).contains("expected KEY=VALUE"));
        assert!(err(&["storage="], &[]).contains("--remove storage"));
        assert!(err(&["user.storage=ssd"], &[]).contains("without the `user.` prefix"));
        assert!(err(&["a b=c"], &[]).contains("not allowed"));
        assert!(err(&["zone=a"], &["zone"]).contains("both set and removed"));
        assert!(err(&[], &[]).contains("nothing to do"));
    }
}
