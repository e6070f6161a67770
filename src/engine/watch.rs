//! `watch`: keep compose projects converged to their deployed revision (the newest completed
//! one kept in Incus), with the same pure plan as `up` (`revision::desired_from` + `diff`),
//! executed by the same executor.
//!
//! - **Who acts**: per project, the process holding the project's watch lease
//!   (`lock::WATCH_KEY`, renewed every ttl/3) is the one that acts; others stand by and take
//!   it over once it expires (their next tick after the holder died). While acting, the
//!   project lock (`lock::LOCK_KEY`) is taken as `up` takes it, so `up`, `down`, `scale` and
//!   `watch` never act at once, and every action is fenced by that lease.
//! - **When**: every tick (`--interval`), the member list is read (Incus emits nothing when a
//!   member goes offline); a reconcile runs when it changed, when a lifecycle event arrived
//!   (instance stopped/shutdown/restarted, cluster member added/removed/evacuated/restored),
//!   when a grace period ended, after an event stream reconnect, after a failed or deferred
//!   action, and every [`RESYNC`] at the latest.
//! - **Offline members**: see `ic_core::watch` (grace) and `plan::DiffOptions::grace`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ic_core::plan::{Action, DiffOptions, LABEL_PROJECT};
use ic_core::revision;
use ic_incus::{Client, EventFilter};

use super::lock::{self, LockGuard, LockOptions};
use super::{Target, observe};

/// A full resync at least this often.
pub const RESYNC: Duration = Duration::from_secs(60);

/// What `watch` was asked.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// `(compose project, Incus project)`; `None`: every compose project on the server.
    pub project: Option<(String, String)>,
    pub once: bool,
    pub json: bool,
    pub interval: Duration,
    /// Grace period of offline members (None: from `cluster.offline_threshold`).
    pub grace: Option<u64>,
    pub parallel: usize,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The log: one line per action (text or JSON lines) on stdout.
struct Log {
    json: bool,
}

impl Log {
    fn event(&self, project: &str, kind: &str, object: &str, message: &str, error: Option<&str>) {
        if self.json {
            let v = serde_json::json!({
                "time": rfc3339_now(),
                "project": project,
                "event": kind,
                "object": object,
                "message": message,
                "error": error,
            });
            println!("{v}");
        } else {
            match error {
                Some(e) => println!("{} [{project}] {message}: FAILED: {e}", rfc3339_now()),
                None => println!("{} [{project}] {message}", rfc3339_now()),
            }
        }
    }
}

/// The line for an action: what was done, where, and why.
fn describe(a: &Action, global_services: &BTreeSet<String>, joined: &BTreeSet<String>) -> String {
    match a {
        Action::Create(p) => {
            let why = if p.reason != "new" {
                p.reason.clone()
            } else if global_services.contains(&p.service) {
                if joined.contains(&p.member) {
                    format!("global service, member {} joined", p.member)
                } else {
                    format!("global service, member {} had no replica", p.member)
                }
            } else {
                format!("replica {} of {} was missing", p.slot, p.service)
            };
            format!("{} created on {}: {why}", p.name, p.member)
        }
        Action::Remove {
            name,
            member,
            reason,
            ..
        } => format!("{name} removed on {member}: {reason}"),
        Action::Start { name, .. } => format!("{name} started: it was not running"),
        other => format!("{other}"),
    }
}

/// One project watched.
struct Watched {
    compose: String,
    incus_project: String,
    /// The watch lease, while this process is the project's watcher.
    leader: Option<LockGuard>,
    /// Said that another process watches it.
    said_standby: bool,
    /// Warnings of the last reconcile (said once until they change).
    warnings: Vec<String>,
    /// The last reconcile left something to do (a failure, a deferred removal).
    retry: bool,
    /// Stopped replicas left stopped (said once).
    left_stopped: BTreeSet<String>,
}

/// Runs `watch` until interrupted (or once).
pub async fn run(base: &Client, o: &WatchOptions) -> anyhow::Result<bool> {
    let log = Log { json: o.json };
    let info = base
        .server()
        .await
        .context("cannot read the Incus server's information")?;
    let clustered = info.is_clustered();
    let threshold = info
        .config
        .get("cluster.offline_threshold")
        .and_then(|v| match v {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64(),
            _ => None,
        })
        .unwrap_or(ic_core::watch::DEFAULT_OFFLINE_THRESHOLD);
    let grace = o
        .grace
        .unwrap_or_else(|| ic_core::watch::default_grace(threshold));
    let mut watched: BTreeMap<(String, String), Watched> = BTreeMap::new();
    let mut offline_since: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_members: Option<Vec<(String, String)>> = None;
    let mut known_members: Option<BTreeSet<String>> = None;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    if !o.once {
        tokio::spawn(follow_events(base.clone(), tx));
    }
    let mut last_full = Instant::now();
    let mut first = true;
    let mut all_ok = true;
    let mut woken: Option<String> = None;
    let mut last_round = now_secs();
    loop {
        // Why this round reconciles (empty: it does not).
        let mut why: Vec<String> = Vec::new();
        if first {
            why.push("start".into());
        }
        if let Some(m) = woken.take() {
            why.push(m);
        }
        while let Ok(m) = rx.try_recv() {
            if !why.contains(&m) {
                why.push(m);
            }
        }
        let members: Vec<(String, String)> = if clustered {
            match base.cluster_members().await {
                Ok(ms) => ms
                    .iter()
                    .map(|m| (m.server_name.clone(), m.status.clone()))
                    .collect(),
                Err(e) => {
                    log.event(
                        "-",
                        "error",
                        "members",
                        &format!("cannot list members: {e}"),
                        None,
                    );
                    last_members.clone().unwrap_or_default()
                }
            }
        } else {
            Vec::new()
        };
        let now = now_secs();
        // Grace periods running at the last round: one that ended since is a reason to act.
        let before_grace = ic_core::watch::within_grace(&offline_since, last_round, grace);
        let seen: Vec<(String, bool)> = members
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.eq_ignore_ascii_case("online") || s.eq_ignore_ascii_case("evacuated"),
                )
            })
            .collect();
        ic_core::watch::track_offline(&mut offline_since, &seen, now);
        let in_grace = ic_core::watch::within_grace(&offline_since, now, grace);
        if before_grace
            .iter()
            .any(|m| !in_grace.contains(m) && offline_since.contains_key(m))
        {
            why.push("a member's grace period ended".into());
        }
        let names: BTreeSet<String> = members.iter().map(|(n, _)| n.clone()).collect();
        let joined: BTreeSet<String> = match &known_members {
            Some(k) => names.difference(k).cloned().collect(),
            None => BTreeSet::new(),
        };
        if last_members.as_ref().is_some_and(|l| l != &members) {
            for (n, s) in &members {
                let was = last_members
                    .as_ref()
                    .and_then(|l| l.iter().find(|(m, _)| m == n))
                    .map(|(_, s)| s.clone());
                if was.as_deref() != Some(s.as_str()) {
                    log.event(
                        "-",
                        "member",
                        n,
                        &format!("member {n} is {}", s.to_lowercase()),
                        None,
                    );
                }
            }
            why.push("members changed".into());
        }
        last_members = Some(members.clone());
        last_round = now;
        known_members = Some(names);
        if last_full.elapsed() >= RESYNC {
            why.push("periodic resync".into());
        }
        let projects = match &o.project {
            Some(p) => vec![p.clone()],
            None => match super::deployed::list_projects(base, true).await {
                Ok(l) => l.into_iter().map(|p| (p.name, p.incus_project)).collect(),
                Err(e) => {
                    log.event("-", "error", "projects", &format!("{e:#}"), None);
                    Vec::new()
                }
            },
        };
        for key in &projects {
            let w = watched.entry(key.clone()).or_insert_with(|| Watched {
                compose: key.0.clone(),
                incus_project: key.1.clone(),
                leader: None,
                said_standby: false,
                warnings: Vec::new(),
                retry: false,
                left_stopped: BTreeSet::new(),
            });
            let held = w.leader.as_ref().is_some_and(|g| g.lease().is_held());
            if !why.is_empty() || w.retry || !held {
                let grace_set = in_grace.clone();
                match reconcile(base, w, &grace_set, &joined, o, &log).await {
                    Ok(ok) => all_ok &= ok,
                    Err(e) => {
                        all_ok = false;
                        w.retry = true;
                        log.event(&w.compose, "error", &w.compose, &format!("{e:#}"), None);
                    }
                }
            }
        }
        if !why.is_empty() {
            last_full = Instant::now();
        }
        first = false;
        if o.once {
            return Ok(all_ok);
        }
        // Sleep a tick, waking early on an event.
        let wake =
            if let Some(end) = ic_core::watch::next_grace_end(&offline_since, now_secs(), grace) {
                o.interval
                    .min(Duration::from_secs(end.saturating_sub(now_secs()).max(1)))
            } else {
                o.interval
            };
        tokio::select! {
            m = rx.recv() => {
                if let Some(m) = m {
                    // Let a burst of events settle into one reconcile.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    woken = Some(m);
                }
            }
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Follows Incus's lifecycle events, sending a reason for each that may need a reconcile;
/// reconnects (after a pause) when the stream ends, and asks for a full resync then, since
/// Incus replays nothing.
async fn follow_events(base: Client, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    let filter = EventFilter {
        types: vec!["lifecycle".into()],
        all_projects: true,
    };
    let mut connected_before = false;
    loop {
        match base.events(&filter).await {
            Ok(mut stream) => {
                if connected_before && tx.send("event stream reconnected".into()).is_err() {
                    return;
                }
                connected_before = true;
                while let Some(ev) = stream.next_event().await {
                    let Ok(ev) = ev else { break };
                    let Some(l) = ev.lifecycle() else { continue };
                    let relevant = matches!(
                        l.action.as_str(),
                        "instance-stopped"
                            | "instance-shutdown"
                            | "instance-restarted"
                            | "instance-deleted"
                            | "cluster-member-added"
                            | "cluster-member-removed"
                            | "cluster-member-renamed"
                            | "cluster-member-updated"
                            | "cluster-member-evacuated"
                            | "cluster-member-restored"
                    );
                    if relevant
                        && tx
                            .send(format!("{} {}", l.action, l.object_name()))
                            .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => tracing::info!("event stream: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One reconcile of one project: take (or keep) its watch lease, plan against the deployed
/// revision, and, when there is something to do, take the project lock and act. `Ok(false)`
/// when an action failed.
async fn reconcile(
    base: &Client,
    w: &mut Watched,
    grace: &BTreeSet<String>,
    joined: &BTreeSet<String>,
    o: &WatchOptions,
    log: &Log,
) -> anyhow::Result<bool> {
    let project = match base.get_project(&w.incus_project).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Ok(true),
        Err(e) => return Err(e).context(format!("cannot read Incus project {}", w.incus_project)),
    };
    if project.config.get(LABEL_PROJECT) != Some(&w.compose) {
        if !w.said_standby {
            log.event(&w.compose, "skip", &w.incus_project, &format!("Incus project {} was not created by incus-compose for this compose project: not watched", w.incus_project), None);
            w.said_standby = true;
        }
        return Ok(true);
    }
    let held = w.leader.as_ref().is_some_and(|g| g.lease().is_held());
    if !held {
        if w.leader.take().is_some() {
            log.event(
                &w.compose,
                "lease",
                &w.incus_project,
                "lost the watch lease: another watch acts on this project now",
                None,
            );
        }
        let opts = LockOptions {
            wait: false,
            key: lock::WATCH_KEY,
            ..LockOptions::from_env(false)?
        };
        match lock::acquire(base, &w.incus_project, &opts).await {
            // The project was removed meanwhile (`down`).
            Ok(None) => return Ok(true),
            Ok(Some(g)) => {
                log.event(
                    &w.compose,
                    "lease",
                    &w.incus_project,
                    "watching: this process holds the watch lease",
                    None,
                );
                w.leader = Some(g);
                w.said_standby = false;
            }
            Err(e) => {
                if !w.said_standby {
                    log.event(
                        &w.compose,
                        "standby",
                        &w.incus_project,
                        &format!(
                            "standing by: another watch acts on it ({})",
                            format!("{e:#}").replace("; not waiting (--no-wait-lock)", "")
                        ),
                        None,
                    );
                    w.said_standby = true;
                }
                return Ok(true);
            }
        }
    }
    let (plan, obs, d) = match plan_once(base, w, grace, log).await? {
        Some(x) => x,
        None => return Ok(true),
    };
    if plan.is_empty() {
        w.retry = !plan.warnings.is_empty() && plan.warnings.iter().any(|x| x.contains("offline"));
        return Ok(true);
    }
    let _ = (obs, d);
    // Act: under the project lock (waits for an `up` or `down` under way), then plan again
    // from what is there now.
    let opts = LockOptions::from_env(true)?;
    let Some(guard) = lock::acquire(base, &w.incus_project, &opts).await? else {
        return Ok(true);
    };
    let Some((plan, obs, d)) = plan_once(base, w, grace, log).await? else {
        return Ok(true);
    };
    if plan.is_empty() {
        return Ok(true);
    }
    if let Some(l) = &w.leader {
        l.lease().fence()?;
    }
    let global: BTreeSet<String> = d
        .services
        .iter()
        .filter(|t| matches!(t.spec.mode, ic_core::schedule::Mode::Global))
        .map(|t| t.service.clone())
        .collect();
    let t = Target {
        base: base.clone(),
        project: base.with_project(&w.incus_project),
        networks: base.with_project(&obs.network_project),
        clustered: obs.observed.clustered,
        members: obs
            .observed
            .members
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        remotes: obs.remotes.clone(),
        fence: Some(guard.lease()),
        revision: None,
        desired: Some(std::sync::Arc::new(d.clone())),
    };
    let outcome = super::execute_gated(&t, &plan, o.parallel, None).await;
    drop(guard);
    for a in plan.actions() {
        let object = a.object();
        let failed = outcome
            .failed
            .iter()
            .find(|(obj, _)| obj == &object || obj.contains(&object))
            .map(|(_, e)| e.as_str());
        log.event(
            &w.compose,
            "action",
            &object,
            &describe(a, &global, joined),
            failed,
        );
    }
    w.retry = !outcome.ok();
    Ok(outcome.ok())
}

/// The secret and config files of the deployed services (their contents are not kept in
/// Incus), read back from a running replica of each service on an online member, and kept
/// only when they have the sha256 the revision recorded. A service none can be read for
/// is left out: planning names it (`revision::RevisionError::Secret`).
async fn read_back_files(
    base: &Client,
    w: &Watched,
    deployed: &revision::Revision,
    obs: &ic_core::plan::Observed,
) -> BTreeMap<String, Vec<ic_core::plan::PushFile>> {
    let project = base.with_project(&w.incus_project);
    let mut out = BTreeMap::new();
    for (service, wanted) in revision::files_to_read_back(deployed) {
        let replicas = obs.instances.iter().filter(|i| {
            i.running
                && i.label(LABEL_PROJECT) == Some(w.compose.as_str())
                && i.label(ic_core::plan::LABEL_SERVICE) == Some(service.as_str())
                && obs.members.iter().any(|m| m.name == i.location && m.online)
        });
        for i in replicas {
            let mut files = Vec::new();
            for f in &wanted {
                match project.pull_file(&i.name, &f.path).await {
                    Ok(content) => match revision::read_back_file(f, content) {
                        Some(file) => files.push(file),
                        None => break,
                    },
                    Err(_) => break,
                }
            }
            if files.len() == wanted.len() {
                out.insert(service.clone(), files);
                break;
            }
        }
    }
    out
}

/// Observe, read the deployed revision, plan. `None` when the project has no completed
/// revision (nothing to converge to: said once).
async fn plan_once(
    base: &Client,
    w: &mut Watched,
    grace: &BTreeSet<String>,
    log: &Log,
) -> anyhow::Result<
    Option<(
        ic_core::plan::Plan,
        super::Observation,
        ic_core::plan::Desired,
    )>,
> {
    let revs = super::revisions::read(base, &w.incus_project, &w.compose).await?;
    let Some(deployed) = revision::deployed(&revs) else {
        return Ok(None);
    };
    let obs = observe(base, &w.incus_project, true).await?;
    let read_back = read_back_files(base, w, deployed, &obs.observed).await;
    let d = revision::deployed_desired(&w.compose, &w.incus_project, deployed, &read_back)
        .map_err(|e| anyhow::anyhow!("revision {}: {e}", deployed.number))?;
    let opts = DiffOptions {
        grace: grace.clone(),
        ..Default::default()
    };
    let mut plan =
        ic_core::plan::diff(&d, &obs.observed, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stopped = ic_core::watch::keep_stopped(&mut plan, &d);
    for name in &stopped {
        if !w.left_stopped.contains(name) {
            log.event(
                &w.compose,
                "left-stopped",
                name,
                &format!("{name} is stopped and left so: its service has no restart policy (restart: no, or restart_policy condition none)"),
                None,
            );
        }
    }
    w.left_stopped = stopped.into_iter().collect();
    if plan.warnings != w.warnings {
        for x in &plan.warnings {
            if !w.warnings.contains(x) {
                log.event(
                    &w.compose,
                    "warning",
                    &w.compose,
                    &format!("warning: {x}"),
                    None,
                );
            }
        }
        w.warnings = plan.warnings.clone();
    }
    Ok(Some((plan, obs, d)))
}
