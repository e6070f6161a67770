//! `watch`: keep compose projects converged to their deployed revision (the newest completed
//! one kept in Incus), with the same pure plan as `up` (`revision::desired_from` + `diff`),
//! executed by the same executor.
//!
//! - **Who acts**: per project, the process holding the project's watch lease
//!   (`ic_core::keys::WATCH_KEY`, renewed every ttl/3) is the one that acts; others stand by and take
//!   it over once it expires (their next tick after the holder died). While acting, the
//!   project lock (`ic_core::keys::LOCK_KEY`) is taken as `up` takes it, so `up`, `down`, `scale` and
//!   `watch` never act at once, and every action is fenced by that lease.
//! - **When**: every tick (`--interval`), the member list is read (Incus emits nothing when a
//!   member goes offline); a reconcile runs when it changed, when a lifecycle event arrived
//!   (instance stopped/shutdown/restarted, cluster member added/removed/evacuated/restored),
//!   when a grace period ended, after an event stream reconnect, after a failed or deferred
//!   action, and every [`RESYNC`] at the latest.
//! - **Offline members**: see `ic_core::watch` (grace) and `plan::DiffOptions::grace`.
//! - **restart_policy**: [`restart_policy`] (the rules in `ic_core::watch::restart`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ic_core::plan::{Action, DiffOptions};
use ic_incus::{Client, EventFilter};

use super::lock::{self, LockGuard, LockOptions};
use super::readiness::{Probing, started_at};
use super::{Target, observe};
use ic_core::keys::LABEL_PROJECT;

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
                Some(e) => println!(
                    "{}[{project}] {message}: FAILED: {e}",
                    super::timefmt::line_prefix()
                ),
                None => println!("{}[{project}] {message}", super::timefmt::line_prefix()),
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
    /// `restart_policy` counting (see [`restart_policy`]).
    restarts: Restarts,
    /// Secret and config contents read back for a revision (see [`read_back_files`]): they
    /// cannot change within one, so they are read once per revision.
    read_back: super::converge::ReadBack,
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
    let exits = Exits::default();
    if !o.once {
        tokio::spawn(follow_events(base.clone(), tx, exits.clone()));
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
                restarts: Restarts::default(),
                read_back: None,
            });
            let held = w.leader.as_ref().is_some_and(|g| g.lease().is_held());
            w.restarts.take_exits(&exits, &w.incus_project, held);
            if !why.is_empty() || w.retry || !held || w.restarts.is_due(now_secs()) {
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
        exits.forget_others(&projects);
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
        let wake = restarts_wake(&watched, wake);
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
async fn follow_events(base: Client, tx: tokio::sync::mpsc::UnboundedSender<String>, exits: Exits) {
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
                    exits.note(&ev.project, &l);
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
    // The service names follow what runs at once (engine::names), before the plan.
    super::names::refresh(base, &w.incus_project).await;
    let held = w.leader.as_ref().is_some_and(|g| g.lease().is_held());
    if !held {
        w.restarts.prober = None;
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
            key: ic_core::keys::WATCH_KEY,
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
    // The service names follow what runs (engine::names): a replica that stopped leaves them
    // at the reconcile its lifecycle event starts.
    let names = Target::new(base, &w.incus_project, &obs, None, Some(&d));
    ensure_names(&names, w, log).await;
    let restarts_ok = restart_policy(base, w, &obs, &d, o.once, log).await;
    if plan.is_empty() {
        w.retry = !plan.warnings.is_empty() && plan.warnings.iter().any(|x| x.contains("offline"));
        // Published ports follow restarted replicas and members that joined.
        forward_ports(base, w, &obs, None, log).await;
        return Ok(restarts_ok);
    }
    let _ = (obs, d);
    // Act: under the project lock (waits for an `up` or `down` under way), then plan again
    // from what is there now.
    // Never waits for another run's lock: `watch --all` goes on with the other projects.
    let opts = LockOptions::from_env(false)?;
    let guard = match lock::try_acquire(base, &w.incus_project, &opts).await? {
        lock::TryLock::Held(g) => g,
        lock::TryLock::Missing => return Ok(true),
        lock::TryLock::Busy(held) => {
            let why = format!("locked by {}: acting on it in a later round", held.holder);
            log.event(&w.compose, "busy", &w.incus_project, &why, None);
            w.retry = true;
            return Ok(true);
        }
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
    let t = Target::new(base, &w.incus_project, &obs, Some(guard.lease()), Some(&d));
    let outcome = super::execute_gated(&t, &plan, o.parallel, None).await;
    // The names follow what runs now (a replica this round started joins them at once, not
    // at the next event), as converge does after its plan.
    ensure_names(&t, w, log).await;
    forward_ports(base, w, &obs, Some(guard.lease()), log).await;
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
    Ok(outcome.ok() && restarts_ok)
}

/// The forwarders of published ports (`engine::ingress`) brought in line with the replicas;
/// each change logged as an action, a failure as one that failed (the next round tries again).
async fn forward_ports(
    base: &Client,
    w: &Watched,
    obs: &super::Observation,
    lease: Option<super::Lease>,
    log: &Log,
) {
    let lease = lease.or_else(|| w.leader.as_ref().map(|g| g.lease()));
    let t = Target::new(base, &w.incus_project, obs, lease, None);
    match super::ingress::reconcile(&t, &w.compose, &BTreeSet::new(), false).await {
        Ok(lines) => {
            for l in lines {
                let (object, message) = l.split_once(' ').unwrap_or((l.as_str(), ""));
                log.event(&w.compose, "action", object, message, None);
            }
        }
        Err(e) => log.event(
            &w.compose,
            "action",
            "published ports",
            "forwarders not updated",
            Some(&format!("{e:#}")),
        ),
    }
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
    let obs = observe(base, &w.incus_project, true).await?;
    let Some(state) = super::converge::deployed_state(
        base,
        &w.incus_project,
        &w.compose,
        &obs,
        &mut w.read_back,
        None,
    )
    .await?
    else {
        return Ok(None);
    };
    let d = state.desired;
    let opts = DiffOptions {
        grace: grace.clone(),
        ..Default::default()
    };
    let mut plan =
        ic_core::plan::diff(&d, &obs.observed, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    // A service whose newest revision did not complete (an `up` under way or interrupted,
    // a paused or failed update) is left as it is: converging it to the deployed revision
    // would undo that run's work (the next `up` finishes it). Said once, as a warning.
    super::converge::leave_alone(&mut plan, &state.unsettled.keys().cloned().collect());
    for (service, why) in &state.unsettled {
        plan.warnings.push(format!(
            "service {service} is not watched for now: {why}; it is left as it is until an `up` or `rollback` of it completes"
        ));
    }
    // Replicas with a restart policy are started by `restart_policy` (counted, after delay).
    ic_core::watch::take_policy_starts(&mut plan, &d);
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

// ---- restart_policy (see `ic_core::watch::restart`) ----

/// An instance exit seen in Incus's events: `(Incus project, instance, unix seconds, Incus
/// restarted it)`. Only exits Incus saw by itself (no requestor) count: an `incus restart`
/// or `incus stop` someone asked for is not a failure.
type Exit = (String, String, u64, bool);

/// Exits seen by the event follower, taken by each project's round.
#[derive(Clone, Default)]
struct Exits(std::sync::Arc<std::sync::Mutex<Vec<Exit>>>);

impl Exits {
    /// Notes an `instance-restarted` (Incus's `boot.autorestart`) or `instance-shutdown`
    /// (the init exited and Incus did not restart it) without a requestor.
    fn note(&self, project: &str, l: &ic_incus::LifecycleEvent) {
        let restarted = match l.action.as_str() {
            "instance-restarted" => true,
            "instance-shutdown" => false,
            _ => return,
        };
        if !l.requestor.is_null() {
            return;
        }
        let project = if l.project.is_empty() {
            project
        } else {
            &l.project
        };
        if let Ok(mut v) = self.0.lock() {
            v.push((project.to_string(), l.object_name(), now_secs(), restarted));
            // Nobody takes them (no project watched): keep the newest only.
            let n = v.len();
            if n > 10_000 {
                v.drain(..n - 10_000);
            }
        }
    }
}

impl Exits {
    /// Drops the exits of Incus projects not watched.
    fn forget_others(&self, watched: &[(String, String)]) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|(p, ..)| watched.iter().any(|(_, ip)| ip == p));
        }
    }
}

/// A stopped replica to start: (name, service, keys to write, log lines).
type StoppedStart = (String, String, BTreeMap<String, String>, Vec<String>);

/// An unhealthy replica: (name, service, what to do, keys to write, log lines).
type RunningAction = (
    String,
    String,
    ic_core::watch::restart::Unhealthy,
    BTreeMap<String, String>,
    Vec<String>,
);

/// One project's `restart_policy` state in this process.
#[derive(Default)]
struct Restarts {
    /// Exits seen since the last round (instance, unix seconds, Incus restarted it).
    exits: Vec<(String, u64, bool)>,
    /// Since when each stopped replica is stopped (its exit, or when first seen stopped).
    stopped_since: BTreeMap<String, u64>,
    /// Replicas said to be left stopped (said once).
    said: BTreeSet<String>,
    /// When a round is due (a delay ends, a restart ages out of its window).
    due: Option<u64>,
    /// The healthcheck prober of this project, while this process acts on it.
    prober: Option<Prober>,
}

impl Restarts {
    /// Takes this project's exits out of `all` (kept only while this process acts on it).
    fn take_exits(&mut self, all: &Exits, incus_project: &str, held: bool) {
        let Ok(mut v) = all.0.lock() else { return };
        let mut rest = Vec::new();
        for (p, name, at, restarted) in v.drain(..) {
            if p == incus_project {
                if held {
                    self.exits.push((name, at, restarted));
                }
            } else {
                rest.push((p, name, at, restarted));
            }
        }
        *v = rest;
    }

    /// A round is due: a delay ended, a restart aged out, or the prober found a replica
    /// unhealthy.
    fn is_due(&self, now: u64) -> bool {
        self.due.is_some_and(|d| d <= now)
            || self
                .prober
                .as_ref()
                .is_some_and(|p| p.verdicts.lock().map(|v| !v.is_empty()).unwrap_or(false))
    }
}

/// `wake`, or sooner when a project's restart round is due; at most 2 s while a prober
/// runs (its verdicts are acted on at the next wake).
fn restarts_wake(watched: &BTreeMap<(String, String), Watched>, wake: Duration) -> Duration {
    let now = now_secs();
    let probing = watched.values().any(|w| w.restarts.prober.is_some());
    let wake = if probing {
        wake.min(Duration::from_secs(2))
    } else {
        wake
    };
    watched
        .values()
        .filter_map(|w| w.restarts.due)
        .map(|d| Duration::from_secs(d.saturating_sub(now).max(1)))
        .fold(wake, Duration::min)
}

/// `restart_policy` with `watch` running: for each replica of a service with a stored
/// policy (`ic_core::watch::restart`), counts Incus's restarts, turns `boot.autorestart`
/// off when the budget is spent and on when it is back, starts a stopped replica after
/// `delay` (counted, under the project lock; `--once` does not wait for it) or leaves it
/// stopped and says so once. Writes
/// are fenced by the watch lease. `false` when something failed (tried again next round).
async fn restart_policy(
    base: &Client,
    w: &mut Watched,
    obs: &super::Observation,
    d: &ic_core::plan::Desired,
    once: bool,
    log: &Log,
) -> bool {
    use ic_core::watch::restart::{self as rp, Stopped};
    let now = now_secs();
    let exits = std::mem::take(&mut w.restarts.exits);
    let client = base.with_project(&w.incus_project);
    let unhealthy = probe_unhealthy(base, w, d);
    // Unhealthy running replicas: (name, what to do, keys to write, log lines).
    let mut running_actions: Vec<RunningAction> = Vec::new();
    let mut ok = true;
    let mut due: Option<u64> = None;
    let mut starts: Vec<StoppedStart> = Vec::new();
    let mut stopped_now = BTreeSet::new();
    for t in &d.services {
        // A service without a stored policy: only its unhealthy replicas are handled here,
        // restarted without a limit when it restarts (`restart: always`...); without a
        // restart policy they are reported and left running, as docker compose leaves them.
        let (p, stored) = match rp::policy_of(&t.config) {
            Some(p) => (p, true),
            None if ic_core::watch::restarts(&t.config) => {
                (rp::RestartPolicy::unlimited(true), false)
            }
            None => {
                for i in &obs.observed.instances {
                    if i.running
                        && i.label(ic_core::keys::LABEL_SERVICE) == Some(t.service.as_str())
                        && let Some(why) = unhealthy.get(&i.name)
                    {
                        log.event(
                            &w.compose,
                            "unhealthy",
                            &i.name,
                            &format!("{why}: left running, its service has no restart policy"),
                            None,
                        );
                    }
                }
                continue;
            }
        };
        for i in &obs.observed.instances {
            if i.config.is_empty()
                || i.label(ic_core::keys::LABEL_SERVICE) != Some(t.service.as_str())
                || i.label(ic_core::keys::LABEL_RETIRED)
                    .is_some_and(|r| !r.is_empty())
                || !(stored || i.running && unhealthy.contains_key(&i.name))
            {
                continue;
            }
            let mine: Vec<&(String, u64, bool)> =
                exits.iter().filter(|(n, _, _)| n == &i.name).collect();
            let stopped_since = if i.running {
                w.restarts.stopped_since.remove(&i.name);
                None
            } else {
                stopped_now.insert(i.name.clone());
                let at = mine
                    .iter()
                    .filter(|(_, _, restarted)| !restarted)
                    .map(|(_, at, _)| *at)
                    .max()
                    // `--once` cannot wait for a delay: it takes the stop as long past.
                    .unwrap_or(if once { 0 } else { now });
                Some(*w.restarts.stopped_since.entry(i.name.clone()).or_insert(at))
            };
            let r = rp::Replica {
                name: i.name.clone(),
                running: i.running,
                config: i.config.clone(),
                incus_restarts: mine
                    .iter()
                    .filter(|(_, _, restarted)| *restarted)
                    .map(|(_, at, _)| *at)
                    .collect(),
                stopped_since,
                exit_seen: mine.iter().any(|(_, _, restarted)| !restarted),
                unhealthy: i.running && unhealthy.contains_key(&i.name),
            };
            let a = rp::assess(&p, &r, now);
            if let Some(u) = a.unhealthy {
                let mut lines = vec![unhealthy.get(&i.name).cloned().unwrap_or_default()];
                lines.extend(a.log);
                running_actions.push((i.name.clone(), t.service.clone(), u, a.set, lines));
                continue;
            }
            if let Some(x) = a.due {
                due = Some(due.map_or(x, |d| d.min(x)));
            }
            if let Some(Stopped::Start) = a.stopped {
                starts.push((i.name.clone(), t.service.clone(), a.set, a.log));
                continue;
            }
            for line in &a.log {
                log.event(&w.compose, "restart", &i.name, line, None);
            }
            if let Some(Stopped::Leave(m)) = &a.stopped
                && w.restarts.said.insert(i.name.clone())
            {
                log.event(&w.compose, "left-stopped", &i.name, m, None);
            }
            if !a.set.is_empty()
                && let Err(e) = set_keys(&client, w, &i.name, &a.set).await
            {
                ok = false;
                log.event(
                    &w.compose,
                    "error",
                    &i.name,
                    &format!("{}: cannot update its restart count", i.name),
                    Some(&format!("{e:#}")),
                );
            }
        }
    }
    w.restarts.said.retain(|n| stopped_now.contains(n));
    w.restarts
        .stopped_since
        .retain(|n, _| stopped_now.contains(n));
    if !ok {
        due = Some(now + 2);
    }
    w.restarts.due = due;
    if starts.is_empty() && running_actions.is_empty() {
        return ok;
    }
    // Starting is an action: under the project lock, as `up` acts.
    let guard = match LockOptions::from_env(false) {
        Ok(opts) => lock::try_acquire(base, &w.incus_project, &opts).await,
        Err(e) => Err(e),
    };
    let guard = match guard {
        Ok(lock::TryLock::Held(g)) => g,
        Ok(lock::TryLock::Missing) => return ok,
        // Another run acts on the project: the starts wait for a later round.
        Ok(lock::TryLock::Busy(_)) => {
            w.restarts.due = Some(now + 2);
            return ok;
        }
        Err(e) => {
            log.event(&w.compose, "error", &w.compose, &format!("{e:#}"), None);
            w.restarts.due = Some(now + 2);
            return false;
        }
    };
    // Every start, restart and stop is a plan of actions run by the one executor (the stop
    // passes its stop step: the replica leaves its service names first; a start joins them).
    let target = Target::new(base, &w.incus_project, obs, Some(guard.lease()), Some(d));
    for (name, service, set, lines) in starts {
        for line in &lines {
            log.event(&w.compose, "restart", &name, line, None);
        }
        let history = set
            .get(ic_core::keys::LABEL_RESTARTS)
            .map(|h| rp::parse_history(h).len())
            .unwrap_or(0);
        let plan = restart_plan(
            &w.incus_project,
            &name,
            &service,
            set,
            &[Action::Start {
                name: name.clone(),
                service: service.clone(),
            }],
        );
        let started = run_restart_plan(&target, w, &plan).await;
        let message = format!("{name} started: it was stopped (restart {history}, restart_policy)");
        match started {
            Ok(()) => {
                w.restarts.stopped_since.remove(&name);
                log.event(&w.compose, "action", &name, &message, None);
            }
            Err(e) => {
                ok = false;
                w.restarts.due = Some(now + 2);
                log.event(
                    &w.compose,
                    "action",
                    &name,
                    &message,
                    Some(&format!("{e:#}")),
                );
            }
        }
    }
    for (name, service, what, set, lines) in running_actions {
        for line in lines.iter().filter(|l| !l.is_empty()) {
            log.event(&w.compose, "unhealthy", &name, line, None);
        }
        // As `docker stop`: 10 s to stop cleanly, then forced.
        let stop = Action::Stop {
            name: name.clone(),
            service: service.clone(),
            timeout: 10,
        };
        let start = Action::Start {
            name: name.clone(),
            service: service.clone(),
        };
        let steps = match what {
            rp::Unhealthy::Restart => vec![stop, start],
            rp::Unhealthy::Stop(_) => vec![stop],
        };
        let plan = restart_plan(&w.incus_project, &name, &service, set, &steps);
        let done = run_restart_plan(&target, w, &plan).await;
        let (kind, message) = match &what {
            rp::Unhealthy::Restart => (
                "action",
                format!("{name} restarted: it was unhealthy (restart_policy)"),
            ),
            rp::Unhealthy::Stop(m) => {
                w.restarts.said.insert(name.clone());
                ("left-stopped", m.clone())
            }
        };
        match done {
            Ok(()) => log.event(&w.compose, kind, &name, &message, None),
            Err(e) => {
                ok = false;
                w.restarts.due = Some(now + 2);
                log.event(&w.compose, kind, &name, &message, Some(&format!("{e:#}")));
            }
        }
    }
    drop(guard);
    ok
}

/// The plan `restart_policy` runs for one replica: its restart records written (a stage of
/// its own, so a failed write stops what follows), then `steps` (stop, start) one stage each.
fn restart_plan(
    incus_project: &str,
    name: &str,
    service: &str,
    set: BTreeMap<String, String>,
    steps: &[Action],
) -> ic_core::plan::Plan {
    let mut stages = Vec::new();
    if !set.is_empty() {
        stages.push(ic_core::plan::Stage {
            title: "restart records".into(),
            actions: vec![Action::UpdateInPlace {
                name: name.to_string(),
                service: service.to_string(),
                set,
            }],
        });
    }
    stages.extend(steps.iter().map(|a| ic_core::plan::Stage {
        title: "restart_policy".into(),
        actions: vec![a.clone()],
    }));
    ic_core::plan::Plan::of(incus_project, stages)
}

/// Runs a [`restart_plan`] through the one executor, fenced by the watch's own lease too:
/// what failed, as one error.
async fn run_restart_plan(
    target: &Target,
    w: &Watched,
    plan: &ic_core::plan::Plan,
) -> anyhow::Result<()> {
    if let Some(l) = &w.leader {
        l.lease().fence()?;
    }
    let outcome = super::execute(target, plan, 1).await;
    if outcome.ok() {
        return Ok(());
    }
    let why: Vec<String> = outcome
        .failed
        .iter()
        .map(|(obj, why)| format!("{obj}: {why}"))
        .collect();
    anyhow::bail!("{}", why.join("; "))
}

/// Runs (or stops) the project's healthcheck prober for the services of `d` with a
/// healthcheck, and takes its verdicts: unhealthy replica -> the log line.
fn probe_unhealthy(
    base: &Client,
    w: &mut Watched,
    d: &ic_core::plan::Desired,
) -> BTreeMap<String, String> {
    let checks: BTreeMap<String, ic_core::health::Check> = d
        .services
        .iter()
        .filter_map(|t| t.rollout.check.clone().map(|c| (t.service.clone(), c)))
        .collect();
    if checks.is_empty() {
        w.restarts.prober = None;
        return BTreeMap::new();
    }
    let prober = w
        .restarts
        .prober
        .get_or_insert_with(|| Prober::spawn(base, &w.incus_project));
    if let Ok(mut c) = prober.checks.lock() {
        *c = checks;
    }
    prober
        .verdicts
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default()
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// A task that runs the healthchecks of one project's running replicas, each at its
/// `interval` (`start_interval` within `start_period`), counting Docker's way
/// (`ic_core::health::Tracker`), and reports a replica once when it turns unhealthy (again
/// after it restarted or passed a probe). An unhealthy replica leaves its service names at
/// once and comes back when a probe passes (`names::set_health`). Its cost: one instance
/// list every [`PROBER_LIST`], one exec per probe, at most [`PROBER_PARALLEL`] at once.
/// Stopped when dropped.
struct Prober {
    checks: Shared<BTreeMap<String, ic_core::health::Check>>,
    verdicts: Shared<BTreeMap<String, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// How often the prober lists the project's instances.
const PROBER_LIST: Duration = Duration::from_secs(5);
/// Probes at once.
const PROBER_PARALLEL: usize = 8;

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    fn spawn(base: &Client, incus_project: &str) -> Prober {
        let checks: Shared<BTreeMap<String, ic_core::health::Check>> = Default::default();
        let verdicts: Shared<BTreeMap<String, String>> = Default::default();
        let task = tokio::spawn(probe_loop(
            base.clone(),
            incus_project.to_string(),
            checks.clone(),
            verdicts.clone(),
        ));
        Prober {
            checks,
            verdicts,
            task,
        }
    }
}

/// One replica's probing (`engine::readiness`) since its start (`last_used_at`), and whether
/// it is reported unhealthy (since its last passing probe in that start).
struct Probed {
    started: String,
    probing: Probing,
    reported: bool,
}

async fn probe_loop(
    base: Client,
    incus_project: String,
    checks: Shared<BTreeMap<String, ic_core::health::Check>>,
    verdicts: Shared<BTreeMap<String, String>>,
) {
    use ic_core::health::Health;
    let client = base.with_project(&incus_project);
    let mut probed: BTreeMap<String, Probed> = BTreeMap::new();
    // (name, service, last_used_at) of running replicas, listed every PROBER_LIST.
    let mut running: Vec<(String, String, String)> = Vec::new();
    let mut listed: Option<Instant> = None;
    loop {
        let checks = checks.lock().map(|c| c.clone()).unwrap_or_default();
        if listed.is_none_or(|t| t.elapsed() >= PROBER_LIST) {
            listed = Some(Instant::now());
            if let Ok(all) = client.instances().await {
                running = all
                    .into_iter()
                    .filter(|i| {
                        i.is_running() && !i.config.contains_key(ic_core::keys::LABEL_RETIRED)
                    })
                    .filter_map(|i| {
                        let s = i.config.get(ic_core::keys::LABEL_SERVICE)?.clone();
                        checks
                            .contains_key(&s)
                            .then_some((i.name, s, i.last_used_at))
                    })
                    .collect();
            }
        }
        probed.retain(|n, _| running.iter().any(|(m, ..)| m == n));
        for (name, service, started) in &running {
            let Some(check) = checks.get(service) else {
                continue;
            };
            let fresh = || Probed {
                started: started.clone(),
                probing: Probing::new(check.clone(), started_at(started)),
                reported: false,
            };
            let p = probed.entry(name.clone()).or_insert_with(fresh);
            if &p.started != started {
                *p = fresh();
            }
        }
        // The probes due, at most PROBER_PARALLEL at once (an unhealthy replica is probed on:
        // a passing probe brings it back into its names).
        let now = tokio::time::Instant::now();
        let due = probed
            .iter_mut()
            .filter(|(_, p)| p.probing.due() <= now)
            .take(PROBER_PARALLEL)
            .map(|(name, p)| {
                let client = &client;
                async move {
                    let status = p.probing.poll(client, name).await;
                    (name, p, status)
                }
            });
        let mut health = Vec::new();
        for (name, p, status) in futures_util::future::join_all(due).await {
            if status == Some(Health::Healthy) && p.reported {
                p.reported = false;
                health.push((name.clone(), p.started.clone(), true));
            }
            if status == Some(Health::Unhealthy) && !p.reported {
                p.reported = true;
                health.push((name.clone(), p.started.clone(), false));
                if let Ok(mut v) = verdicts.lock() {
                    v.insert(
                        name.clone(),
                        format!(
                            "{name} is unhealthy: {} failed healthchecks in a row ({})",
                            p.probing.failing_streak(),
                            p.probing
                                .last()
                                .map(|r| r.output.as_str())
                                .unwrap_or_default()
                        ),
                    );
                }
            }
        }
        for (name, started, healthy) in health {
            super::names::set_health(&base, &incus_project, &name, &started, healthy).await;
        }
        let next = probed
            .values()
            .map(|p| {
                p.probing
                    .due()
                    .saturating_duration_since(tokio::time::Instant::now())
            })
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(200), Duration::from_secs(1));
        tokio::time::sleep(next).await;
    }
}

/// Writes restart-policy keys on a replica (fenced by the watch lease).
async fn set_keys(
    client: &Client,
    w: &Watched,
    name: &str,
    set: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if let Some(l) = &w.leader {
        l.lease().fence()?;
    }
    client
        .patch_instance(name, &serde_json::json!({ "config": set }))
        .await
        .with_context(|| format!("cannot update {name}"))
}

/// The member resolvers of the names brought in line with what runs (`engine::names`); a
/// failure is logged (the next round tries again).
async fn ensure_names(t: &Target, w: &Watched, log: &Log) {
    if let Err(e) = super::names::ensure(t, &w.compose).await {
        log.event(
            &w.compose,
            "names",
            "resolvers",
            "not updated",
            Some(&format!("{e:#}")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles_and_actions(p: &ic_core::plan::Plan) -> Vec<(String, Vec<String>)> {
        p.stages
            .iter()
            .map(|s| {
                (
                    s.title.clone(),
                    s.actions
                        .iter()
                        .map(|a| match a {
                            Action::UpdateInPlace { name, set, .. } => {
                                format!("update {name} {}", set.len())
                            }
                            Action::Stop { name, timeout, .. } => format!("stop {name} {timeout}"),
                            Action::Start { name, .. } => format!("start {name}"),
                            other => format!("{other:?}"),
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_restart_plan_writes_the_records_first_then_each_step_alone() {
        let set = BTreeMap::from([(
            ic_core::keys::LABEL_RESTARTS.to_string(),
            "1700000000".to_string(),
        )]);
        let steps = [
            Action::Stop {
                name: "web-1".into(),
                service: "web".into(),
                timeout: 10,
            },
            Action::Start {
                name: "web-1".into(),
                service: "web".into(),
            },
        ];
        let p = restart_plan("p", "web-1", "web", set, &steps);
        assert_eq!(p.incus_project, "p");
        assert_eq!(
            titles_and_actions(&p),
            vec![
                (
                    "restart records".to_string(),
                    vec!["update web-1 1".to_string()]
                ),
                (
                    "restart_policy".to_string(),
                    vec!["stop web-1 10".to_string()]
                ),
                (
                    "restart_policy".to_string(),
                    vec!["start web-1".to_string()]
                ),
            ]
        );
        // Nothing to record: no write, only the steps.
        let p = restart_plan("p", "web-1", "web", BTreeMap::new(), &steps[1..]);
        assert_eq!(
            titles_and_actions(&p),
            vec![(
                "restart_policy".to_string(),
                vec!["start web-1".to_string()]
            )]
        );
    }
}
