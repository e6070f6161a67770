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
use ic_core::health::Health;
use ic_core::plan::{Action, InstancePlan, RolloutSpec};
use ic_core::rollout::{self, Config, NewReplica, Pace, Progress as Batches, State};
use tokio::time::Instant;

use super::execute::{Target, create, remove, start, stop};
use super::progress::Progress;
use super::readiness::Probing;
use ic_core::keys::{
    LABEL_PROJECT, LABEL_REPLACED_BY, LABEL_RETIRED, LABEL_SERVICE, PACE_PREFIX, RETIRED_ADDRESSES,
};

/// How often a rollout looks again while it waits.
const POLL: Duration = Duration::from_millis(500);

/// Where a service's rollout keeps its pace: in an Incus project incus-compose created (one
/// named with `--incus-project` that exists already is never written to).
struct PaceStore {
    base: ic_incus::Client,
    project: String,
    key: String,
}

/// Wall-clock milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

impl PaceStore {
    /// The store of `service`'s rollout and the pace a run before left there.
    async fn open(t: &Target, service: &str, compose: &str) -> (Option<PaceStore>, Pace) {
        let Some(project) = t.project.project() else {
            return (None, Pace::default());
        };
        let Ok(p) = t.base.get_project(project).await else {
            return (None, Pace::default());
        };
        if !super::observe::is_ours(&p.config, compose) {
            return (None, Pace::default());
        }
        let key = format!("{PACE_PREFIX}{service}");
        let pace = p
            .config
            .get(&key)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let store = PaceStore {
            base: t.base.clone(),
            project: project.to_string(),
            key,
        };
        (Some(store), pace)
    }

    /// Records `pace` (None: removes it); a failure is a warning.
    async fn write(&self, pace: Option<&Pace>, progress: &Progress) {
        let value = pace.and_then(|p| serde_json::to_string(p).ok());
        let r =
            super::lock::edit_project_config(&self.base, &self.project, |config| match &value {
                Some(v) => config.insert(self.key.clone(), v.clone()).as_ref() != Some(v),
                None => config.remove(&self.key).is_some(),
            })
            .await;
        if let Err(e) = r {
            progress.line(&format!(
                "[!] warning: cannot record the rollout's pace in Incus project {}: {e}",
                self.project
            ));
        }
    }
}

/// How long removing a retired replica may take once the update completed.
const REMOVE_DEADLINE: Duration = Duration::from_secs(60);

/// How long stopping and retiring an old replica may take.
const RETIRE_DEADLINE: Duration = Duration::from_secs(120);

/// How long a member has to answer before it counts as not answering.
const MEMBER_ANSWER: Duration = Duration::from_secs(5);

/// Why `member` cannot be asked (`member node3 is offline`, `member node3 does not answer`),
/// or None when it answers (or the server is not a cluster).
async fn member_down(t: &Target, member: &str) -> Option<String> {
    if !t.clustered || member.is_empty() {
        return None;
    }
    if let Ok(Ok(m)) = tokio::time::timeout(MEMBER_ANSWER, t.base.cluster_member(member)).await
        && !m.is_online()
    {
        return Some(format!("member {member} is {}", m.status.to_lowercase()));
    }
    // A member that just came back answers "Server isn't ready yet" for a moment: asked
    // again every half second, it counts as not answering after MEMBER_ANSWER.
    let give_up = tokio::time::Instant::now() + MEMBER_ANSWER;
    let asked = async {
        loop {
            match t.base.server_on(member).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    };
    match tokio::time::timeout(MEMBER_ANSWER + Duration::from_secs(1), asked).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("member {member} does not answer ({e})")),
        Err(_) => Some(format!(
            "member {member} does not answer within {} s",
            MEMBER_ANSWER.as_secs()
        )),
    }
}

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
    /// Each failed replica (instance name) with its reason; with [`Ending::Completed`], those
    /// `failure_action: continue` (or `max_failure_ratio`) let the update go past.
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
    /// Its healthcheck's probing (`engine::readiness`), from when it was first seen running.
    probing: Option<Probing>,
    /// The old replica: retired (stopped, labelled) yet, and under which name now.
    old_retired_as: Option<String>,
    /// start-first on a spanning bridge: the old replica is marked replaced and still runs.
    old_marked: bool,
    /// The new replica passed `execute::after_ready`.
    declared_ready: bool,
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
            probing: None,
            old_retired_as: None,
            old_marked: false,
            declared_ready: false,
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
    progress.rollout_started(service, total, cfg.parallelism);
    let deadline = rollout::deadline(cfg, spec.check.as_ref());
    // A run that resumes an interrupted update keeps `delay` after its last batch.
    let compose = slots
        .first()
        .and_then(|s| s.plan.config.get(LABEL_PROJECT))
        .cloned()
        .unwrap_or_default();
    let (store, pace) = PaceStore::open(t, service, &compose).await;
    let resume = rollout::resume_at(&pace, cfg.delay, deadline, wall_ms());
    if let Some(wait) = resume {
        progress.line(&format!(
            "[~] {service}: resuming an interrupted update: the next batch starts in {:.1} s (delay {} s after the last batch)",
            wait.as_secs_f64(),
            cfg.delay.as_secs_f64()
        ));
    }
    let run = Run {
        resume,
        store: store.as_ref(),
    };
    let result = drive(
        t, service, spec, cfg, deadline, &mut slots, clock, progress, false, &run,
    )
    .await;
    if !matches!(result, Err((rollout::Action::Rollback, _))) {
        settle_marked(t, &mut slots, progress).await;
    }
    // The pace matters only to a run that resumes this update: gone once it ended (kept
    // when paused).
    if let Some(store) = &store
        && !matches!(&result, Err((rollout::Action::Pause, _)))
    {
        store.write(None, progress).await;
    }
    match result {
        Ok(failed) => {
            // Done: the retired replicas go, those an interrupted run left included; not those
            // whose replacement failed (a later `up` replaces them, or `rollback` restores them).
            let failed_keys: Vec<&String> = failed.iter().map(|(k, _)| k).collect();
            let mut retired: Vec<String> = slots
                .iter()
                .filter(|s| !failed_keys.contains(&&s.plan.slot))
                .filter_map(|s| s.old_retired_as.clone())
                .collect();
            let keep: Vec<String> = slots
                .iter()
                .filter(|s| failed_keys.contains(&&s.plan.slot))
                .filter_map(|s| s.old_retired_as.clone())
                .collect();
            let compose = slots.first().and_then(|s| s.plan.config.get(LABEL_PROJECT));
            if let Ok(all) = t.project.instances().await {
                for i in all {
                    if i.config.get(LABEL_SERVICE).map(String::as_str) == Some(service)
                        && i.config.get(LABEL_PROJECT) == compose
                        && i.config.contains_key(LABEL_RETIRED)
                        && !retired.contains(&i.name)
                        && !keep.contains(&i.name)
                    {
                        retired.push(i.name);
                    }
                }
            }
            for old in &retired {
                // A replica on a member that went offline is not waited on: a later `up`
                // removes it.
                match tokio::time::timeout(REMOVE_DEADLINE, remove(t, old, 0)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        progress.line(&format!("[!] {old}: removing the retired replica: {e:#}"))
                    }
                    Err(_) => progress.line(&format!(
                        "[!] {old}: removing the retired replica took over {} s; a later `up` removes it",
                        REMOVE_DEADLINE.as_secs()
                    )),
                }
            }
            let failed = named(&slots, failed);
            let replaced = total - failed.len();
            if failed.is_empty() {
                progress.line(&format!(
                    "[+] {service}: update completed ({total} replaced)"
                ));
            } else {
                progress.line(&format!(
                    "[!] {service}: update completed with {} failed replica(s) (failure_action {}, max_failure_ratio {}): {}",
                    failed.len(),
                    cfg.failure_action,
                    cfg.max_failure_ratio,
                    describe(&failed)
                ));
            }
            Outcome {
                service: service.to_string(),
                ending: Ending::Completed,
                replaced,
                failed,
            }
        }
        Err((rollout::Action::Rollback, failed)) => {
            let failed = named(&slots, failed);
            progress.line(&format!(
                "[<] {service}: update failed ({}); rolling back",
                describe(&failed)
            ));
            let rb = &spec.rollback;
            // Every slot touched by the update is rolled back, the last replaced first (a
            // start-first replica with a host port may have started on the member an earlier
            // one left); untouched ones stay as they are.
            slots.reverse();
            let mut back: Vec<SlotRun> = slots
                .into_iter()
                .filter(|s| s.created_at.is_some() || s.create_error.is_some())
                .map(|s| SlotRun {
                    dirty: true,
                    created_at: None,
                    create_error: None,
                    started_at: None,
                    probing: None,
                    ..s
                })
                .collect();
            let n = back.len();
            progress.rollout_started(service, n, rb.parallelism);
            let rdeadline = rollout::deadline(rb, spec.check.as_ref());
            let run = Run {
                resume: None,
                store: None,
            };
            match drive(
                t, service, spec, rb, rdeadline, &mut back, clock, progress, true, &run,
            )
            .await
            {
                Ok(more) => {
                    progress.line(&format!(
                        "[<] {service}: rolled back ({} replica(s) restored)",
                        n - more.len()
                    ));
                    let mut failed = failed;
                    failed.extend(named(&back, more));
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

/// What a forward rollout resumes from and where it records its pace.
struct Run<'a> {
    /// No batch before this time (see `rollout::resume_at`).
    resume: Option<Duration>,
    store: Option<&'a PaceStore>,
}

/// The step loop. `back`: a rollback (replacing = restoring the retired replica).
/// `Ok(failed slots)` when done (those `continue` went past), `Err((action, failed slots))`
/// when the step function stops it.
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
    run: &Run<'_>,
) -> Result<Vec<(String, String)>, (rollout::Action, Vec<(String, String)>)> {
    let mut batches = Batches {
        not_before: run.resume,
        ..Batches::default()
    };
    let mut pace = Pace::default();
    let mut in_flight = false;
    let mut batch_no = 0;
    loop {
        observe(t, spec, slots, clock).await;
        let now = clock.elapsed();
        // The one step where a new replica is declared ready (`execute::after_ready`).
        for s in slots.iter_mut().filter(|s| !s.declared_ready) {
            let ready = view(s).new.is_some_and(|r| {
                matches!(
                    rollout::judge(&r, cfg, deadline, now),
                    rollout::Verdict::Ready { .. } | rollout::Verdict::Settled
                )
            });
            if ready {
                s.declared_ready = true;
                if let Err(e) = super::execute::after_ready(t, &s.plan.name).await {
                    progress.line(&format!("[!] {e:#}"));
                    s.create_error = Some(format!("{e:#}"));
                }
            }
        }
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
            if let Some(store) = run.store {
                pace.ready_at = Some(wall_ms());
                store.write(Some(&pace), progress).await;
            }
        }
        // start-first: an old replica is retired once its replacement runs (healthy).
        if cfg.start_first && !back {
            retire_replaced(t, cfg, deadline, slots, now, progress).await;
        }
        match rollout::step(cfg, &views, &batches, deadline, now) {
            rollout::Step::Replace(keys) => {
                batch_no += 1;
                if let Some(store) = run.store {
                    pace = Pace {
                        started_at: Some(wall_ms()),
                        ready_at: None,
                    };
                    store.write(Some(&pace), progress).await;
                }
                // start-first with a host port, on the member an earlier replica was to leave:
                // while that one still runs (its replacement failed), stop-first where it is.
                let blocked: Vec<String> = keys
                    .iter()
                    .filter_map(|k| slots.iter().find(|s| &s.plan.slot == k))
                    .filter(|s| {
                        cfg.start_first
                            && !back
                            && moved(s)
                            && slots.iter().any(|o| {
                                o.plan.slot != s.plan.slot
                                    && o.plan.old_member.as_deref() == Some(s.plan.member.as_str())
                                    && o.old_retired_as.is_none()
                            })
                    })
                    .map(|s| s.plan.slot.clone())
                    .collect();
                progress.batch_started(service, batch_no);
                progress.line(&format!(
                    "[~] {service}: {} batch {batch_no}: {}",
                    if back { "rollback" } else { "update" },
                    keys.iter()
                        .filter_map(|k| slots.iter().find(|s| &s.plan.slot == k))
                        .map(|s| s.old_name().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if back {
                    // The batch's new replicas go first, then the old ones start: one may
                    // bind a host port on the member another new one held.
                    let work = slots
                        .iter()
                        .filter(|s| keys.contains(&s.plan.slot))
                        .map(|s| async move { (s.plan.slot.clone(), remove_new(t, s).await) });
                    for (slot, r) in join_all(work).await {
                        if let Err(e) = r
                            && let Some(s) = slots.iter_mut().find(|s| s.plan.slot == slot)
                        {
                            progress.line(&format!("[!] {} failed: {e:#}", s.plan.name));
                            s.dirty = false;
                            s.created_at = Some(clock.elapsed());
                            s.create_error = Some(format!("{e:#}"));
                        }
                    }
                }
                let work = slots
                    .iter_mut()
                    .filter(|s| keys.contains(&s.plan.slot) && s.create_error.is_none())
                    .map(|s| async {
                        let start_first = cfg.start_first
                            && !spec.stop_first_slots.contains(&s.plan.slot)
                            && !blocked.contains(&s.plan.slot);
                        if blocked.contains(&s.plan.slot)
                            && let Some(own) = s.plan.old_member.clone()
                        {
                            progress.line(&format!(
                                "[!] {}: {} still runs the replica it was to replace (its update failed), so it is replaced stop-first on {own}",
                                s.old_name(),
                                s.plan.member
                            ));
                            s.plan.member = own;
                        } else if cfg.start_first && !start_first && !back {
                            progress.line(&format!(
                                "[~] {}: replaced stop-first: its host port cannot be bound twice on {}",
                                s.old_name(),
                                s.plan.member
                            ));
                        }
                        s.dirty = false;
                        s.created_at = Some(clock.elapsed());
                        // Nothing is waited on past the replica's deadline (a member that
                        // stopped answering half way).
                        let work = async {
                            if back {
                                restore(t, s).await
                            } else {
                                replace(t, start_first, s).await
                            }
                        };
                        let r = match tokio::time::timeout(deadline, work).await {
                            Ok(r) => r,
                            Err(_) => Err(anyhow::anyhow!(
                                "not done {} s after it began",
                                deadline.as_secs()
                            )),
                        };
                        match r {
                            Ok(line) => {
                                progress.replica_done(service);
                                progress.line(&line)
                            }
                            Err(e) => {
                                let e = format!("{e:#}");
                                let e = match member_down(t, &s.plan.member).await {
                                    Some(why) if !e.starts_with("member ") => format!("{why}: {e}"),
                                    _ => e,
                                };
                                progress.line(&format!("[!] {} failed: {e}", s.plan.name));
                                s.create_error = Some(e);
                            }
                        }
                    });
                join_all(work).await;
                in_flight = true;
                batches.batch_ready_at = None;
            }
            rollout::Step::Wait { until } => {
                let what = if pending {
                    "health"
                } else if views.iter().any(|v| v.dirty && v.new.is_none()) {
                    "delay"
                } else {
                    "monitor"
                };
                progress.rollout_wait(service, what, until.saturating_sub(clock.elapsed()));
                let wait = until.saturating_sub(clock.elapsed()).min(POLL);
                tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
            }
            rollout::Step::Stop { action, failed } => {
                for (key, why) in &failed {
                    if let Some(s) = slots.iter().find(|s| &s.plan.slot == key) {
                        progress.line(&format!("[!] {} failed: {why}", s.plan.name));
                    }
                }
                progress.rollout_ended(service);
                return Err((action, failed));
            }
            rollout::Step::Done => {
                progress.rollout_ended(service);
                return Ok(rollout::failures(cfg, &views, deadline, now));
            }
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
            state: match (&s.create_error, s.started_at, &s.probing) {
                (Some(e), _, _) => State::Failed(e.clone()),
                (None, None, _) => State::Starting,
                (None, Some(_), probing) => State::Running {
                    health: probing.as_ref().map(Probing::status),
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
                Err(e) => {
                    // A member that went offline: its replica counts as failed. Another
                    // error: judged by the deadline.
                    if let Some(why) = member_down(t, &s.plan.member).await {
                        s.create_error = Some(format!("{why}: {e}"));
                    }
                    return;
                }
            };
            if status.eq_ignore_ascii_case("running") {
                if s.started_at.is_none() {
                    s.started_at = Some(clock.elapsed());
                }
                if let Some(check) = &spec.check {
                    // Probed as Docker does (engine::readiness), from when it was first seen
                    // running (`started_at`, set just above), until it is healthy.
                    let started = clock + s.started_at.unwrap_or_default();
                    let probing = s
                        .probing
                        .get_or_insert_with(|| Probing::new(check.clone(), started));
                    if probing.status() != Health::Healthy {
                        probing.poll(&t.project, &name).await;
                    }
                }
            } else if status.eq_ignore_ascii_case("stopped") || status == "Gone" {
                // Its process exited (or it went away) after the start.
                s.create_error = Some(format!("{} after its start", status.to_lowercase()));
            }
        });
    join_all(work).await;
}

/// Whether the slot's new replica starts on another member than the old one (start-first
/// with a host port, see `ic_core::rollout::port_moves`).
fn moved(s: &SlotRun) -> bool {
    s.plan
        .old_member
        .as_deref()
        .is_some_and(|m| m != s.plan.member)
}

/// Replaces one replica (see the module documentation).
async fn replace(t: &Target, start_first: bool, s: &mut SlotRun) -> anyhow::Result<String> {
    let old = s.old_name().to_string();
    // A member that went offline fails its replica at once (a stop there would wait for
    // Incus's own timeouts first).
    let old_member = s.plan.old_member.clone().unwrap_or_default();
    for m in [old_member.as_str(), s.plan.member.as_str()] {
        if let Some(why) = member_down(t, m).await {
            anyhow::bail!("{why}");
        }
    }
    if !start_first {
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
    // Members a moved start-first replica (host ports) starts on.
    let port_targets: Vec<String> = slots
        .iter()
        .filter(|o| moved(o))
        .map(|o| o.plan.member.clone())
        .collect();
    for s in slots.iter_mut() {
        if s.old_retired_as.is_some() {
            continue;
        }
        let v = view(s);
        let Some(r) = &v.new else { continue };
        if !rollout::may_retire_old(r, cfg, deadline, now) {
            continue;
        }
        let old = s.old_name().to_string();
        if s.old_marked {
            continue;
        }
        // start-first with a host port: a later batch starts a replica on this member, so the
        // old one stops now (it would hold the port until the records are written).
        let frees_port = s
            .plan
            .old_member
            .as_ref()
            .is_some_and(|m| port_targets.contains(m));
        if defers_records(t, &s.plan) && !frees_port {
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
    };
    // Not waited on past a replica's deadline (a member that went offline).
    let result = match tokio::time::timeout(RETIRE_DEADLINE, result).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "not done within {} s",
            RETIRE_DEADLINE.as_secs()
        )),
    };
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
    super::execute::fenced(t)?;
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

/// Plans the project again on a fresh observation and runs only its record writes; the member
/// resolvers get what runs now.
pub(super) async fn write_records(t: &Target, progress: &Progress) -> anyhow::Result<()> {
    super::names::publish(t).await?;
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
    super::execute::before_stop(t, old).await?;
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
    super::execute::fenced(t)?;
    let mut attempt = 0;
    loop {
        let r = async { t.project.rename_instance(from, to).await?.wait().await }.await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 3 && e.incus_message().is_some_and(|m| m.contains("running")) => {
                attempt += 1;
                super::execute::force_stop(t, from).await?;
            }
            // Incus rewrites the static DHCP leases of every bridge on the member after a
            // rename, and fails when one of them (any project's) is being made or removed at
            // that moment ("open .../dnsmasq.hosts: no such file or directory"; seen once in
            // CI with other test projects coming and going): judged by what Incus holds, then
            // tried again.
            Err(e)
                if attempt < 3
                    && e.incus_message()
                        .is_some_and(|m| m.contains("dnsmasq.hosts")) =>
            {
                attempt += 1;
                let gone = matches!(t.project.instance(from).await, Err(ref e) if e.is_not_found());
                if gone && t.project.instance(to).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("renaming {from} to {to}")),
        }
    }
}

/// Rollback of one slot, first part: the new replica goes.
async fn remove_new(t: &Target, s: &SlotRun) -> anyhow::Result<()> {
    let work = async {
        if s.plan.name != s.old_name() || s.old_retired_as.is_some() {
            remove(t, &s.plan.name, s.plan.stop_timeout).await?;
        }
        Ok(())
    };
    match tokio::time::timeout(REMOVE_DEADLINE, work).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "removing {} took over {} s",
            s.plan.name,
            REMOVE_DEADLINE.as_secs()
        )),
    }
}

/// Rollback of one slot, second part (after [`remove_new`]): the retired replica comes back
/// under its name.
async fn restore(t: &Target, s: &mut SlotRun) -> anyhow::Result<String> {
    super::execute::fenced(t)?;
    let old = s.old_name().to_string();
    let new = s.plan.name.clone();
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
