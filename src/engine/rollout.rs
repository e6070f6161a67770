//! Rolling updates, the I/O part: drives `ic_core::rollout::step` for one service. It
//! observes the replicas this update made (Incus state; the healthcheck through exec), asks
//! the step function what to do, acts, and asks again. Nothing is decided here.
//!
//! How replicas are replaced (the README's "Rolling updates"):
//! - `stop-first`: the old replica is stopped (within its `stop_grace_period`), renamed
//!   `<name>-old` when the new one takes its name, and labelled retired; then the new one is
//!   created and started.
//! - `start-first`: the new replica is created beside the old one under the slot's other name
//!   (`web-1` <-> `web-1-b`); the old one is stopped and retired once the new one runs
//!   (healthy, with a healthcheck). On a spanning bridge the old one serves on until the
//!   service's update is over: it is marked `replaced-by` when its replacement is ready, then
//!   one write of the records names the new replicas (a write restarts the bridge's tunnels
//!   on every member, so it is done once, while every slot has a replica serving), and only
//!   then are the marked ones retired (see [`settle_marked`]).
//! - Retired replicas are kept, stopped, until the service's update completes, then removed;
//!   a rollback removes the new replicas and starts the retired ones again under their names.
//!   Nothing is pulled or re-created for a rollback, and their anonymous volumes are theirs.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::join_all;
use ic_core::health::{Health, Tracker};
use ic_core::plan::{
    Action, InstancePlan, LABEL_PROJECT, LABEL_REPLACED_BY, LABEL_RETIRED, LABEL_SERVICE,
    RolloutSpec,
};
use ic_core::rollout::{self, Config, NewReplica, Progress as Batches, State};
use tokio::time::Instant;

use super::execute::{Target, create, remove, start, stop};
use super::health::probe;
use super::progress::Progress;

/// On a retired replica: the fixed NIC addresses it gave up (JSON device -> address).
const RETIRED_ADDRESSES: &str = "user.incus-compose.retired-addresses";

/// How often a rollout looks again while it waits.
const POLL: Duration = Duration::from_millis(500);

/// How a service's update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every replica replaced and watched.
    Completed,
    /// Too many new replicas failed: the rest still runs the old spec.
    Paused,
    /// Too many failed: every replaced replica runs the old spec again.
    RolledBack,
    /// The rollback itself failed too many times: paused half way.
    RollbackPaused,
}

/// The outcome of one service's update.
#[derive(Debug)]
pub struct Outcome {
    pub service: String,
    pub ending: Ending,
    /// Replicas replaced (kept new) and restored.
    pub replaced: usize,
    /// Each failed replica (instance name) with its reason.
    pub failed: Vec<(String, String)>,
}

/// One slot being rolled.
struct SlotRun {
    plan: InstancePlan,
    dirty: bool,
    /// When the new replica was created (rollout clock), and what creating it gave.
    created_at: Option<Duration>,
    create_error: Option<String>,
    started_at: Option<Duration>,
    tracker: Option<Tracker>,
    /// When its healthcheck may run next (rollout clock).
    next_probe: Duration,
    /// The old replica: retired (stopped, labelled) yet, and under which name now.
    old_retired_as: Option<String>,
    /// start-first on a spanning bridge: the old replica is marked replaced and still runs.
    old_marked: bool,
}

impl SlotRun {
    fn old_name(&self) -> &str {
        self.plan.old_name.as_deref().unwrap_or(&self.plan.name)
    }
}

/// Rolls `plans` (the service's replicas to replace) with `spec`.
pub async fn run_service(
    t: &Target,
    service: &str,
    spec: &RolloutSpec,
    plans: Vec<InstancePlan>,
    progress: &Progress,
) -> Outcome {
    let clock = Instant::now();
    let mut slots: Vec<SlotRun> = plans
        .into_iter()
        .map(|plan| SlotRun {
            plan,
            dirty: true,
            created_at: None,
            create_error: None,
            started_at: None,
            tracker: None,
            next_probe: Duration::ZERO,
            old_retired_as: None,
            old_marked: false,
        })
        .collect();
    let cfg = &spec.update;
    let total = slots.len();
    progress.line(&format!(
        "[~] {service}: rolling update of {total} replica(s), {} at a time, {}, delay {} s, monitor {} s, on failure {}",
        if cfg.parallelism == 0 {
            "all".to_string()
        } else {
            cfg.parallelism.to_string()
        },
        if cfg.start_first {
            "start-first"
        } else {
            "stop-first"
        },
        cfg.delay.as_secs_f64(),
        cfg.monitor.as_secs_f64(),
        cfg.failure_action
    ));
    let deadline = rollout::deadline(cfg, spec.check.as_ref());
    let result = drive(
        t, service, spec, cfg, deadline, &mut slots, clock, progress, false,
    )
    .await;
    if !matches!(result, Err((rollout::Action::Rollback, _))) {
        settle_marked(t, &mut slots, progress).await;
    }
    match result {
        Ok(()) => {
            // Done: the retired replicas go, those an interrupted run left included.
            let mut retired: Vec<String> = slots
                .iter()
                .filter_map(|s| s.old_retired_as.clone())
                .collect();
            let compose = slots.first().and_then(|s| s.plan.config.get(LABEL_PROJECT));
            if let Ok(all) = t.project.instances().await {
                for i in all {
                    if i.config.get(LABEL_SERVICE).map(String::as_str) == Some(service)
                        && i.config.get(LABEL_PROJECT) == compose
                        && i.config.contains_key(LABEL_RETIRED)
                        && !retired.contains(&i.name)
                    {
                        retired.push(i.name);
                    }
                }
            }
            for old in &retired {
                if let Err(e) = remove(t, old, 0).await {
                    progress.line(&format!("[!] {old}: removing the retired replica: {e:#}"));
                }
            }
            progress.line(&format!(
                "[+] {service}: update completed ({total} replaced)"
            ));
            Outcome {
                service: service.to_string(),
                ending: Ending::Completed,
                replaced: total,
                failed: Vec::new(),
            }
        }
        Err((rollout::Action::Rollback, failed)) => {
            let failed = named(&slots, failed);
            progress.line(&format!(
                "[<] {service}: update failed ({}); rolling back",
                describe(&failed)
            ));
            let rb = &spec.rollback;
            // Every slot touched by the update is rolled back; untouched ones stay as they are.
            let mut back: Vec<SlotRun> = slots
                .into_iter()
                .filter(|s| s.created_at.is_some() || s.create_error.is_some())
                .map(|s| SlotRun {
                    dirty: true,
                    created_at: None,
                    create_error: None,
                    started_at: None,
                    tracker: None,
                    next_probe: Duration::ZERO,
                    ..s
                })
                .collect();
            let n = back.len();
            let rdeadline = rollout::deadline(rb, spec.check.as_ref());
            match drive(
                t, service, spec, rb, rdeadline, &mut back, clock, progress, true,
            )
            .await
            {
                Ok(()) => {
                    progress.line(&format!(
                        "[<] {service}: rolled back ({n} replica(s) restored)"
                    ));
                    Outcome {
                        service: service.to_string(),
                        ending: Ending::RolledBack,
                        replaced: n,
                        failed,
                    }
                }
                Err((_, more)) => {
                    settle_marked(t, &mut back, progress).await;
                    let mut failed = failed;
                    failed.extend(named(&back, more));
                    Outcome {
                        service: service.to_string(),
                        ending: Ending::RollbackPaused,
                        replaced: 0,
                        failed,
                    }
                }
            }
        }
        Err((_, failed)) => Outcome {
            service: service.to_string(),
            ending: Ending::Paused,
            replaced: slots.iter().filter(|s| !s.dirty).count(),
            failed: named(&slots, failed),
        },
    }
}

fn describe(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Slot keys -> instance names.
fn named(slots: &[SlotRun], failed: Vec<(String, String)>) -> Vec<(String, String)> {
    failed
        .into_iter()
        .map(|(key, why)| {
            let name = slots
                .iter()
                .find(|s| s.plan.slot == key)
                .map(|s| s.plan.name.clone())
                .unwrap_or(key);
            (name, why)
        })
        .collect()
}

/// The step loop. `back`: a rollback (replacing = restoring the retired replica).
/// `Err((action, failed slots))` when the step function stops it.
#[allow(clippy::too_many_arguments)]
async fn drive(
    t: &Target,
    service: &str,
    spec: &RolloutSpec,
    cfg: &Config,
    deadline: Duration,
    slots: &mut [SlotRun],
    clock: Instant,
    progress: &Progress,
    back: bool,
) -> Result<(), (rollout::Action, Vec<(String, String)>)> {
    let mut batches = Batches::default();
    let mut in_flight = false;
    let mut batch_no = 0;
    loop {
        observe(t, spec, slots, clock).await;
        let now = clock.elapsed();
        let views: Vec<rollout::Slot> = slots.iter().map(view).collect();
        // A batch is ready once none of its replicas is pending.
        let pending = views.iter().any(|v| {
            v.new.as_ref().is_some_and(|r| {
                matches!(
                    rollout::judge(r, cfg, deadline, now),
                    rollout::Verdict::Pending { .. }
                )
            })
        });
        if in_flight && !pending {
            in_flight = false;
            batches.batch_ready_at = Some(now);
        }
        // start-first: an old replica is retired once its replacement runs (healthy).
        if cfg.start_first && !back {
            retire_replaced(t, cfg, deadline, slots, now, progress).await;
        }
        match rollout::step(cfg, &views, &batches, deadline, now) {
            rollout::Step::Replace(keys) => {
                batch_no += 1;
                progress.line(&format!(
                    "[~] {service}: {} batch {batch_no}: {}",
                    if back { "rollback" } else { "update" },
                    keys.iter()
                        .filter_map(|k| slots.iter().find(|s| &s.plan.slot == k))
                        .map(|s| s.old_name().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let work = slots
                    .iter_mut()
                    .filter(|s| keys.contains(&s.plan.slot))
                    .map(|s| async {
                        s.dirty = false;
                        s.created_at = Some(clock.elapsed());
                        let r = if back {
                            restore(t, s).await
                        } else {
                            replace(t, cfg, s).await
                        };
                        match r {
                            Ok(line) => progress.line(&line),
                            Err(e) => {
                                progress.line(&format!("[!] {} failed: {e:#}", s.plan.name));
                                s.create_error = Some(format!("{e:#}"));
                            }
                        }
                    });
                join_all(work).await;
                in_flight = true;
                batches.batch_ready_at = None;
            }
            rollout::Step::Wait { until } => {
                let wait = until.saturating_sub(clock.elapsed()).min(POLL);
                tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
            }
            rollout::Step::Stop { action, failed } => {
                for (key, why) in &failed {
                    if let Some(s) = slots.iter().find(|s| &s.plan.slot == key) {
                        progress.line(&format!("[!] {} failed: {why}", s.plan.name));
                    }
                }
                return Err((action, failed));
            }
            rollout::Step::Done => return Ok(()),
        }
    }
}

fn view(s: &SlotRun) -> rollout::Slot {
    rollout::Slot {
        key: s.plan.slot.clone(),
        dirty: s.dirty,
        new: s.created_at.map(|created_at| NewReplica {
            created_at,
            started_at: s.started_at,
            state: match (&s.create_error, s.started_at, &s.tracker) {
                (Some(e), _, _) => State::Failed(e.clone()),
                (None, None, _) => State::Starting,
                (None, Some(_), tracker) => State::Running {
                    health: tracker.as_ref().map(Tracker::status),
                },
            },
        }),
    }
}

/// Looks at every new replica: running or stopped (a stop after it ran is a failure), and
/// its healthcheck when it has one.
async fn observe(t: &Target, spec: &RolloutSpec, slots: &mut [SlotRun], clock: Instant) {
    let work = slots
        .iter_mut()
        .filter(|s| s.created_at.is_some() && s.create_error.is_none())
        .map(|s| async {
            let name = s.plan.name.clone();
            let status = match super::execute::state(t, &name).await {
                Ok(st) => st.status,
                Err(e) if e.is_not_found() => "Gone".into(),
                // A member that does not answer: judged by the deadline.
                Err(_) => return,
            };
            if status.eq_ignore_ascii_case("running") {
                if s.started_at.is_none() {
                    s.started_at = Some(clock.elapsed());
                }
                if let Some(check) = &spec.check {
                    let tracker = s.tracker.get_or_insert_with(|| Tracker::new(check.clone()));
                    // Probed as Docker does: every start_interval within the start period,
                    // then every interval, until it is healthy.
                    if tracker.status() != Health::Healthy && clock.elapsed() >= s.next_probe {
                        let since = clock.elapsed() - s.started_at.unwrap_or_default();
                        let p = probe(&t.project, &name, check).await;
                        tracker.record(since, p.ok);
                        s.next_probe = clock.elapsed() + tracker.next_delay(since);
                    }
                }
            } else if status.eq_ignore_ascii_case("stopped") || status == "Gone" {
                // Its process exited (or it went away) after the start.
                s.create_error = Some(format!("{} after its start", status.to_lowercase()));
            }
        });
    join_all(work).await;
}

/// Replaces one replica (see the module documentation).
async fn replace(t: &Target, cfg: &Config, s: &mut SlotRun) -> anyhow::Result<String> {
    let old = s.old_name().to_string();
    if !cfg.start_first {
        stop(t, &old, s.plan.stop_timeout).await?;
        let (as_name, released) = retire(t, &old, &s.plan).await?;
        s.old_retired_as = Some(as_name);
        // Same address and same MAC on each fixed-address NIC.
        for (dev, r) in released {
            if let (Some(d), Some(mac)) = (s.plan.devices.get_mut(&dev), r.hwaddr)
                && d.get("ipv4.address") == Some(&r.ipv4)
            {
                d.insert("hwaddr".into(), mac);
            }
        }
    }
    create(t, &s.plan).await?;
    if old == s.plan.name {
        return Ok(format!(
            "[~] {old} recreated on {} ({})",
            s.plan.member, s.plan.reason
        ));
    }
    Ok(format!(
        "[~] {old} replaced by {} on {} ({})",
        s.plan.name, s.plan.member, s.plan.reason
    ))
}

/// Stops and labels the old replica of every start-first slot whose new replica is ready.
async fn retire_replaced(
    t: &Target,
    cfg: &Config,
    deadline: Duration,
    slots: &mut [SlotRun],
    now: Duration,
    progress: &Progress,
) {
    for s in slots.iter_mut() {
        if s.old_retired_as.is_some() {
            continue;
        }
        let v = view(s);
        let Some(r) = &v.new else { continue };
        if !matches!(
            rollout::judge(r, cfg, deadline, now),
            rollout::Verdict::Ready { .. } | rollout::Verdict::Settled
        ) {
            continue;
        }
        let old = s.old_name().to_string();
        if s.old_marked {
            continue;
        }
        if defers_records(t, &s.plan) {
            match mark(t, &old, Some(&s.plan.name)).await {
                Ok(()) => {
                    progress.line(&format!(
                        "[~] {} serves the slot of {old}, which serves on until the records name it",
                        s.plan.name
                    ));
                    s.old_marked = true;
                }
                Err(e) => progress.line(&format!("[!] {old}: marking it replaced: {e:#}")),
            }
            continue;
        }
        retire_old(t, s, progress).await;
    }
}

/// Stops the old replica of a start-first slot and retires it.
async fn retire_old(t: &Target, s: &mut SlotRun, progress: &Progress) {
    let old = s.old_name().to_string();
    let result = async {
        stop(t, &old, s.plan.stop_timeout).await?;
        retire(t, &old, &s.plan).await.map(|(n, _)| n)
    }
    .await;
    match result {
        Ok(as_name) => {
            progress.line(&format!(
                "[-] {old} stopped, {} serves its slot",
                s.plan.name
            ));
            s.old_retired_as = Some(as_name);
            s.old_marked = false;
        }
        Err(e) => progress.line(&format!("[!] {old}: retiring it failed: {e:#}")),
    }
}

/// Whether the old replica of a start-first slot serves on until the records of its spanning
/// bridges name the new one: when the replica is on a spanning bridge (a fixed NIC address)
/// and the records can be planned here (`Target::desired`).
fn defers_records(t: &Target, plan: &InstancePlan) -> bool {
    t.desired.is_some()
        && plan.devices.values().any(|d| {
            d.get("type").map(String::as_str) == Some("nic") && d.contains_key("ipv4.address")
        })
}

/// Sets (`Some(new)`) or removes the `replaced-by` mark of instance `old`.
async fn mark(t: &Target, old: &str, by: Option<&str>) -> anyhow::Result<()> {
    let mut put = t.project.instance(old).await?.writable();
    match by {
        Some(new) => put.config.insert(LABEL_REPLACED_BY.into(), new.to_string()),
        None => put.config.remove(LABEL_REPLACED_BY),
    };
    t.project.update_instance(old, &put).await?.wait().await?;
    Ok(())
}

/// The end of a start-first update on a spanning bridge: one write of the records (planned
/// again on a fresh observation: the marked old replicas have none, the new ones have
/// theirs), then the marked old replicas are stopped and retired. A failed write is a
/// warning: the old replicas are retired all the same, and the next `up` writes the records.
async fn settle_marked(t: &Target, slots: &mut [SlotRun], progress: &Progress) {
    if !slots.iter().any(|s| s.old_marked) {
        return;
    }
    if let Err(e) = write_records(t, progress).await {
        progress.line(&format!(
            "[!] DNS records not updated after the update ({e:#}); the next `up` writes them"
        ));
    }
    for s in slots.iter_mut().filter(|s| s.old_marked) {
        retire_old(t, s, progress).await;
    }
}

/// Plans the project again on a fresh observation and runs only its record writes.
pub(super) async fn write_records(t: &Target, progress: &Progress) -> anyhow::Result<()> {
    let Some(desired) = &t.desired else {
        return Ok(());
    };
    let incus_project = t.project.project().unwrap_or("default").to_string();
    let obs = super::observe(&t.base, &incus_project, false).await?;
    let plan = ic_core::plan::diff(desired, &obs.observed, &Default::default())?;
    for a in plan
        .actions()
        .filter(|a| matches!(a, Action::UpdateNetwork { .. }))
    {
        let line = super::execute::run(t, a).await?;
        progress.line(&line);
    }
    Ok(())
}

/// Labels the stopped instance `old` retired; renames it `<old>-old` when the new replica
/// (`plan`) takes its name. Returns its name now. A leftover retired instance of that name
/// (of this project) is removed first.
async fn retire(
    t: &Target,
    old: &str,
    plan: &InstancePlan,
) -> anyhow::Result<(String, BTreeMap<String, Released>)> {
    let mut name = old.to_string();
    if old == plan.name {
        name = format!("{old}-old");
        if let Ok(i) = t.project.instance(&name).await {
            if !i.config.contains_key(LABEL_RETIRED)
                || i.config.get(LABEL_PROJECT) != plan.config.get(LABEL_PROJECT)
            {
                anyhow::bail!(
                    "cannot retire {old}: an instance named {name} exists and is not a retired replica of this project; rename or remove it"
                );
            }
            remove(t, &name, 0).await?;
        }
        rename_stopped(t, old, &name).await?;
    }
    // Labelled retired, and its NICs' fixed addresses (spanning networks) and MAC addresses
    // handed to the replica that takes its slot (Incus allows one NIC per address on a bridge,
    // and the same MAC spares the other instances a stale ARP entry for up to a minute). They
    // are kept in a key so that a rollback gives them back.
    let mut put = t.project.instance(&name).await?.writable();
    put.config.insert(LABEL_RETIRED.into(), old.to_string());
    let mut released: BTreeMap<String, Released> = BTreeMap::new();
    for (dev, d) in put.devices.iter_mut() {
        if d.get("type").map(String::as_str) != Some("nic") {
            continue;
        }
        let Some(ipv4) = d.remove("ipv4.address") else {
            continue;
        };
        let volatile = format!("volatile.{dev}.hwaddr");
        let hwaddr = d
            .remove("hwaddr")
            .or_else(|| put.config.get(&volatile).cloned());
        // A device `hwaddr` wins over the volatile one (Incus's MAC conflict check reads it
        // first): the retired NIC takes a fresh MAC while it is stopped.
        if hwaddr.is_some() {
            d.insert("hwaddr".into(), fresh_mac());
        }
        released.insert(dev.clone(), Released { ipv4, hwaddr });
    }
    if !released.is_empty() {
        put.config.insert(
            RETIRED_ADDRESSES.into(),
            serde_json::to_string(&released).unwrap_or_default(),
        );
    }
    t.project.update_instance(&name, &put).await?.wait().await?;
    Ok((name, released))
}

/// A random MAC in Incus's range (`10:66:6a`), for a retired replica's NIC.
fn fresh_mac() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let b = h.finish().to_le_bytes();
    format!("10:66:6a:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// What a retired replica gave up on one NIC.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Released {
    ipv4: String,
    hwaddr: Option<String>,
}

/// Renames a stopped instance. Incus refuses while it still reports the instance running
/// (a clean stop that timed out goes on in the background): then it is killed, and the
/// rename tried again.
async fn rename_stopped(t: &Target, from: &str, to: &str) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let r = async { t.project.rename_instance(from, to).await?.wait().await }.await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 3 && e.incus_message().is_some_and(|m| m.contains("running")) => {
                attempt += 1;
                super::execute::force_stop(t, from).await?;
            }
            Err(e) => return Err(e).with_context(|| format!("renaming {from} to {to}")),
        }
    }
}

/// Rollback of one slot: the new replica goes, the retired one comes back under its name.
async fn restore(t: &Target, s: &mut SlotRun) -> anyhow::Result<String> {
    let old = s.old_name().to_string();
    let new = s.plan.name.clone();
    if new != old || s.old_retired_as.is_some() {
        remove(t, &new, s.plan.stop_timeout).await?;
    }
    if s.old_marked {
        mark(t, &old, None).await?;
        s.old_marked = false;
    }
    if let Some(retired) = s.old_retired_as.take() {
        if retired != old {
            rename_stopped(t, &retired, &old).await?;
        }
        let mut put = t.project.instance(&old).await?.writable();
        put.config.remove(LABEL_RETIRED);
        if let Some(json) = put.config.remove(RETIRED_ADDRESSES) {
            let released: BTreeMap<String, Released> =
                serde_json::from_str(&json).unwrap_or_default();
            for (dev, r) in released {
                if let Some(d) = put.devices.get_mut(&dev) {
                    d.insert("ipv4.address".into(), r.ipv4);
                    if let Some(mac) = r.hwaddr {
                        d.insert("hwaddr".into(), mac);
                    }
                }
            }
        }
        t.project.update_instance(&old, &put).await?.wait().await?;
    }
    start(t, &old).await?;
    // From here on the slot's replica is the old one again.
    s.plan.name = old.clone();
    Ok(format!("[<] {old} restored (was {new})"))
}
