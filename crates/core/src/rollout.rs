//! Rolling updates, swarmkit's updater turned inside out: a pure step function. Given a
//! service's `update_config` (or `rollback_config`), what is observed of each slot being
//! rolled, and the current time as an input, [`step`] answers what to do next: replace these
//! slots now, wait until a time, stop on failure (pause or roll back), or done. The engine
//! observes, asks, acts and asks again, so an interrupted rollout resumes from what Incus
//! shows, and every rule here is tested without a daemon and without sleeping.
//!
//! Rules (Docker Swarm's, with its documented defaults):
//! - Only *dirty* slots (whose replica runs another spec) are replaced, `parallelism` at a
//!   time (0 = all at once), one batch after another: a batch starts once every replica of
//!   the one before is running (healthy, when the service has a healthcheck) or has failed,
//!   and `delay` has passed since.
//! - A new replica *fails* when it cannot be created or started, stops, is unhealthy, or is
//!   still not running (healthy) at its deadline ([`deadline`]). A replica that has run
//!   (healthy) for `monitor` since its start is *settled*: what happens to it later is the
//!   restart policy's business, not the rollout's.
//! - Failures count only replicas this rollout made. The failure action triggers when
//!   `failures / rolled slots > max_failure_ratio`; `continue` goes on.
//! - After the last batch, the rollout watches until every new replica is settled and at
//!   least `max(monitor, delay)` has passed since the last batch was ready (Swarm once
//!   skipped this watch when `delay >= monitor`: moby/moby#37972).
//! - A run that resumes an interrupted rollout replaces only what is still dirty (never a
//!   slot twice) and keeps `delay` after the last batch of the run before ([`resume_at`], from
//!   the [`Pace`] the engine keeps in Incus).
//! - Start-first with fixed host ports: each new replica starts on another member free of
//!   the ports ([`port_moves`]); one with none left is replaced stop-first.

use std::time::Duration;

use ic_compose::model::{FailureAction, UpdateConfig, UpdateOrder};

use crate::health::{Check, Health};

/// `update_config` / `rollback_config` with Swarm's defaults filled in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Replicas replaced per batch; 0 = all at once.
    pub parallelism: usize,
    pub delay: Duration,
    pub start_first: bool,
    pub failure_action: Action,
    pub monitor: Duration,
    pub max_failure_ratio: f64,
}

/// What to do when too many new replicas fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Continue,
    Rollback,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Pause => "pause",
            Action::Continue => "continue",
            Action::Rollback => "rollback",
        })
    }
}

/// Swarm's default `monitor`.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Config {
        Config {
            parallelism: 1,
            delay: Duration::ZERO,
            start_first: false,
            failure_action: Action::Pause,
            monitor: DEFAULT_MONITOR,
            max_failure_ratio: 0.0,
        }
    }
}

impl Config {
    /// `update_config` (None: every default).
    pub fn update(u: Option<&UpdateConfig>) -> Config {
        let d = Config::default();
        let Some(u) = u else { return d };
        Config {
            parallelism: u
                .parallelism
                .map(|p| usize::try_from(p).unwrap_or(usize::MAX))
                .unwrap_or(d.parallelism),
            delay: u.delay.map(|x| x.0).unwrap_or(d.delay),
            start_first: u.order == Some(UpdateOrder::StartFirst),
            failure_action: match u.failure_action {
                Some(FailureAction::Continue) => Action::Continue,
                Some(FailureAction::Rollback) => Action::Rollback,
                Some(FailureAction::Pause) | None => Action::Pause,
            },
            monitor: u.monitor.map(|x| x.0).unwrap_or(d.monitor),
            max_failure_ratio: u.max_failure_ratio.unwrap_or(d.max_failure_ratio),
        }
    }

    /// `rollback_config`: the same fields, but a failing rollback never rolls back (it
    /// pauses).
    pub fn rollback(u: Option<&UpdateConfig>) -> Config {
        let mut c = Config::update(u);
        if c.failure_action == Action::Rollback {
            c.failure_action = Action::Pause;
        }
        c
    }
}

/// How long a new replica may take to run (and become healthy) before it counts as failed:
/// without a healthcheck [`START_DEADLINE`] plus `monitor`; with one, its
/// `start_period + interval * retries + timeout` (at least [`START_DEADLINE`]) plus `monitor`.
pub fn deadline(cfg: &Config, check: Option<&Check>) -> Duration {
    let judge = match check {
        None => START_DEADLINE,
        // Saturating: absurd values (read back from a revision) must not overflow.
        Some(c) => c
            .start_period
            .saturating_add(c.interval.saturating_mul(c.retries))
            .saturating_add(c.timeout)
            .max(START_DEADLINE),
    };
    judge.saturating_add(cfg.monitor)
}

/// How long a new replica may take to run when the service has no healthcheck (creating
/// and starting a container, an image pull included, are bounded by this).
pub const START_DEADLINE: Duration = Duration::from_secs(120);

/// A warning when `monitor` is shorter than the healthcheck needs to judge a replica
/// unhealthy (`interval * retries`): failures after the monitor window go unnoticed.
pub fn monitor_warning(service: &str, cfg: &Config, check: Option<&Check>) -> Option<String> {
    let c = check?;
    let needs = c.interval.saturating_mul(c.retries);
    (cfg.monitor < needs).then(|| {
        format!(
            "service {service:?}: update_config.monitor ({} s) is shorter than its healthcheck needs to call a replica unhealthy (interval x retries = {} s); a replica that turns unhealthy later is not counted as a failed update",
            cfg.monitor.as_secs_f64(),
            needs.as_secs_f64()
        )
    })
}

/// What is observed of a replica this rollout made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Being created or started, not running yet.
    Starting,
    /// Running; `health` is `None` without a healthcheck.
    Running { health: Option<Health> },
    /// Stopped (its process exited), or gone.
    Stopped,
    /// Creating or starting it failed.
    Failed(String),
}

/// A new replica: when it was made (or last started) and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReplica {
    /// When it was created, on the caller's clock.
    pub created_at: Duration,
    /// When it last started (Incus `last_used_at`), when known.
    pub started_at: Option<Duration>,
    pub state: State,
}

/// One slot of the service being rolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Slot key, as the engine names it (e.g. `3`, or a member for global services).
    pub key: String,
    /// Its replica still runs the old spec (not replaced yet).
    pub dirty: bool,
    /// The replica this rollout made for it, if any.
    pub new: Option<NewReplica>,
}

/// The judgement of a new replica at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not running (healthy) yet, deadline not passed.
    Pending {
        until: Duration,
    },
    /// Running (healthy), but not yet for `monitor`.
    Ready {
        settles_at: Duration,
    },
    /// Ran (healthy) for `monitor`: done with.
    Settled,
    Failed(String),
}

/// Judges a new replica at `now` (see the module documentation).
/// start-first: whether the old replica of a slot may stop, given its new replica: only once
/// the new one runs (healthy, with a healthcheck), so that a service never runs fewer than its
/// declared replicas.
pub fn may_retire_old(r: &NewReplica, cfg: &Config, deadline: Duration, now: Duration) -> bool {
    matches!(
        judge(r, cfg, deadline, now),
        Verdict::Ready { .. } | Verdict::Settled
    )
}

pub fn judge(r: &NewReplica, cfg: &Config, deadline: Duration, now: Duration) -> Verdict {
    let due = r.created_at + deadline;
    let late = |what: &str| {
        Verdict::Failed(format!(
            "not {what} {} s after it was created",
            deadline.as_secs()
        ))
    };
    match &r.state {
        State::Failed(why) => Verdict::Failed(why.clone()),
        State::Stopped => Verdict::Failed("stopped after its start".into()),
        State::Running {
            health: Some(Health::Unhealthy),
        } => Verdict::Failed("unhealthy".into()),
        State::Running {
            health: None | Some(Health::Healthy),
        } => {
            let settles_at = r.started_at.unwrap_or(r.created_at) + cfg.monitor;
            if now >= settles_at {
                Verdict::Settled
            } else {
                Verdict::Ready { settles_at }
            }
        }
        State::Running {
            health: Some(Health::Starting),
        } if now >= due => late("healthy"),
        State::Starting if now >= due => late("running"),
        State::Running { .. } | State::Starting => Verdict::Pending { until: due },
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Replace these slots now (one batch).
    Replace(Vec<String>),
    /// Nothing to do before this time (or before something observed changes).
    Wait { until: Duration },
    /// Too many new replicas failed: apply `action` (pause or rollback). Each failed slot
    /// with its reason.
    Stop {
        action: Action,
        failed: Vec<(String, String)>,
    },
    /// Every dirty slot replaced and every new replica settled.
    Done,
}

/// What the engine remembers between steps (everything else is observed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// When the last batch became ready (all its replicas running, healthy, or failed).
    pub batch_ready_at: Option<Duration>,
    /// No batch starts before this time: a rollout that resumes what an interrupted run left
    /// keeps `delay` after that run's last batch (see [`resume_at`]).
    pub not_before: Option<Duration>,
}

/// What a rollout keeps in Incus about its last batch, so that a later run that resumes it
/// keeps the pace: wall-clock times in milliseconds since the Unix epoch (the core has no
/// clock: the engine reads it and stores this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Pace {
    /// When the last batch started.
    pub started_at: Option<u64>,
    /// When it became ready (every replica running, healthy, or failed); `None` while it was
    /// in flight (the run stopped during it).
    pub ready_at: Option<u64>,
}

/// For a rollout that resumes an interrupted one, whose last batch is `pace`: the time on
/// the new run's clock (which starts at wall-clock `now_ms`) before which no batch starts,
/// or `None` when nothing holds it back.
/// - The last batch was ready at `r`: `r + delay`.
/// - It was in flight (started at `s`, the run stopped during it): it became ready at the
///   latest when its replicas were judged, `s + deadline`, and at the earliest now; so the
///   next batch waits `delay` after the earlier of the two.
///
/// Never more than `delay` from now (another machine's clock may be ahead).
pub fn resume_at(
    pace: &Pace,
    delay: Duration,
    deadline: Duration,
    now_ms: u64,
) -> Option<Duration> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let ready = match (pace.ready_at, pace.started_at) {
        (Some(r), _) => r,
        (None, Some(s)) => s.saturating_add(ms(deadline)).min(now_ms),
        (None, None) => return None,
    };
    let until = ready.saturating_add(ms(delay));
    (until > now_ms).then(|| Duration::from_millis(until - now_ms).min(delay))
}

/// The slots whose new replica has failed at `now`, each with its reason: after
/// [`Step::Done`], those `continue` (or `max_failure_ratio`) let the rollout go past.
pub fn failures(
    cfg: &Config,
    slots: &[Slot],
    deadline: Duration,
    now: Duration,
) -> Vec<(String, String)> {
    slots
        .iter()
        .filter_map(|s| match judge(s.new.as_ref()?, cfg, deadline, now) {
            Verdict::Failed(why) => Some((s.key.clone(), why)),
            _ => None,
        })
        .collect()
}

/// The next step of a rollout (see the module documentation). `deadline` is the
/// [`deadline`] of the service's replicas.
pub fn step(
    cfg: &Config,
    slots: &[Slot],
    progress: &Progress,
    deadline: Duration,
    now: Duration,
) -> Step {
    let rolled = slots.iter().filter(|s| s.dirty || s.new.is_some()).count();
    let mut failed = Vec::new();
    let mut pending_until: Option<Duration> = None;
    let mut settles_at: Option<Duration> = None;
    for s in slots {
        let Some(r) = &s.new else { continue };
        match judge(r, cfg, deadline, now) {
            Verdict::Failed(why) => failed.push((s.key.clone(), why)),
            Verdict::Pending { until } => {
                pending_until = Some(pending_until.map_or(until, |p| p.min(until)));
            }
            Verdict::Ready { settles_at: t } => {
                settles_at = Some(settles_at.map_or(t, |p| p.max(t)));
            }
            Verdict::Settled => {}
        }
    }
    if !failed.is_empty()
        && cfg.failure_action != Action::Continue
        && failed.len() as f64 / rolled.max(1) as f64 > cfg.max_failure_ratio
    {
        return Step::Stop {
            action: cfg.failure_action,
            failed,
        };
    }
    // The batch in flight must be ready (or failed) before anything else happens.
    if let Some(until) = pending_until {
        return Step::Wait { until };
    }
    let dirty: Vec<&Slot> = slots
        .iter()
        .filter(|s| s.dirty && s.new.is_none())
        .collect();
    let ready_at = progress.batch_ready_at;
    if !dirty.is_empty() {
        if let Some(at) = progress.not_before
            && now < at
        {
            return Step::Wait { until: at };
        }
        if let Some(at) = ready_at
            && now < at + cfg.delay
        {
            return Step::Wait {
                until: at + cfg.delay,
            };
        }
        let n = if cfg.parallelism == 0 {
            dirty.len()
        } else {
            cfg.parallelism.min(dirty.len())
        };
        return Step::Replace(dirty[..n].iter().map(|s| s.key.clone()).collect());
    }
    // Last batch done: watch one more period.
    let watch_until = ready_at.map(|at| at + cfg.monitor.max(cfg.delay));
    let until = match (settles_at, watch_until) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    match until {
        Some(t) if now < t => Step::Wait { until: t },
        _ => Step::Done,
    }
}

/// Start-first with fixed host ports: a new replica cannot bind the port beside the old one
/// on its member, so it starts on another eligible member. `slots` are the replicas to
/// replace (slot key, member of the old replica) in the order the rollout replaces them,
/// `parallelism` at a time (0 = all at once); `spare` the members that can take one more
/// replica of the service (see `schedule::Placement::spare`), best first; `same_group` says
/// whether a member may take the place of another (the same values of the spread
/// preferences, so the spread stays as placed).
///
/// Each slot of a batch takes the first spare member of its group; the member its old
/// replica leaves becomes spare once the batch is done (the old replica is stopped then), so
/// 2 replicas over 3 members both move. A slot with no spare member left gets `None`: it is
/// replaced stop-first on its own member. The answer is one entry per slot, in order.
pub fn port_moves(
    slots: &[(String, String)],
    parallelism: usize,
    spare: &[String],
    same_group: impl Fn(&str, &str) -> bool,
) -> Vec<Option<String>> {
    let mut free: Vec<String> = spare.to_vec();
    let size = if parallelism == 0 {
        slots.len().max(1)
    } else {
        parallelism
    };
    let mut out = Vec::with_capacity(slots.len());
    for batch in slots.chunks(size) {
        let mut left = Vec::new();
        for (_, old) in batch {
            match free.iter().position(|m| same_group(m, old)) {
                Some(k) => {
                    out.push(Some(free.remove(k)));
                    left.push(old.clone());
                }
                None => out.push(None),
            }
        }
        free.extend(left);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg(parallelism: usize) -> Config {
        Config {
            parallelism,
            ..Config::default()
        }
    }

    fn dirty(key: &str) -> Slot {
        Slot {
            key: key.into(),
            dirty: true,
            new: None,
        }
    }

    fn replaced(key: &str, created: u64, state: State) -> Slot {
        Slot {
            key: key.into(),
            dirty: false,
            new: Some(NewReplica {
                created_at: S * created as u32,
                started_at: Some(S * created as u32),
                state,
            }),
        }
    }

    const RUNNING: State = State::Running { health: None };

    #[test]
    fn the_first_batch_replaces_parallelism_dirty_slots() {
        let slots = [dirty("1"), dirty("2"), dirty("3")];
        let s = step(
            &cfg(2),
            &slots,
            &Progress::default(),
            60 * S,
            Duration::ZERO,
        );
        assert_eq!(s, Step::Replace(vec!["1".into(), "2".into()]));
    }

    #[test]
    fn parallelism_zero_replaces_everything_at_once() {
        let slots = [dirty("1"), dirty("2"), dirty("3")];
        let s = step(
            &cfg(0),
            &slots,
            &Progress::default(),
            60 * S,
            Duration::ZERO,
        );
        assert_eq!(s, Step::Replace(vec!["1".into(), "2".into(), "3".into()]));
    }

    #[test]
    fn the_next_batch_waits_for_the_one_in_flight() {
        let slots = [replaced("1", 0, State::Starting), dirty("2")];
        let s = step(&cfg(1), &slots, &Progress::default(), 60 * S, S * 3);
        assert_eq!(s, Step::Wait { until: 60 * S });
    }

    #[test]
    fn the_next_batch_waits_for_the_delay_after_the_last_was_ready() {
        let c = Config {
            delay: 10 * S,
            ..cfg(1)
        };
        let slots = [replaced("1", 0, RUNNING), dirty("2")];
        let p = Progress {
            batch_ready_at: Some(2 * S),
            ..Default::default()
        };
        assert_eq!(
            step(&c, &slots, &p, 60 * S, 5 * S),
            Step::Wait { until: 12 * S }
        );
        assert_eq!(
            step(&c, &slots, &p, 60 * S, 12 * S),
            Step::Replace(vec!["2".into()])
        );
    }

    #[test]
    fn a_resumed_rollout_keeps_the_delay_after_the_last_batch_of_the_run_before() {
        let c = Config {
            delay: 10 * S,
            ..cfg(1)
        };
        let now_ms = 1_000_000;
        // The last batch was ready 4 s ago: 6 s more.
        let pace = Pace {
            started_at: Some(now_ms - 9_000),
            ready_at: Some(now_ms - 4_000),
        };
        let at = resume_at(&pace, c.delay, 60 * S, now_ms);
        assert_eq!(at, Some(6 * S));
        // Slot 1 was replaced by the run before: only 2 and 3 are dirty, and the first batch
        // of this run waits until then.
        let slots = [
            Slot {
                key: "1".into(),
                dirty: false,
                new: None,
            },
            dirty("2"),
            dirty("3"),
        ];
        let p = Progress {
            batch_ready_at: None,
            not_before: at,
        };
        assert_eq!(step(&c, &slots, &p, 60 * S, S), Step::Wait { until: 6 * S });
        assert_eq!(
            step(&c, &slots, &p, 60 * S, 6 * S),
            Step::Replace(vec!["2".into()])
        );
        // Long ago, or never: nothing to wait for.
        let old = Pace {
            started_at: Some(1),
            ready_at: Some(2),
        };
        assert_eq!(resume_at(&old, c.delay, 60 * S, now_ms), None);
        assert_eq!(resume_at(&Pace::default(), c.delay, 60 * S, now_ms), None);
    }

    #[test]
    fn a_batch_in_flight_when_the_run_stopped_counts_as_ready_now_or_at_its_deadline() {
        let now_ms = 1_000_000;
        let in_flight = |started: u64| Pace {
            started_at: Some(started),
            ready_at: None,
        };
        // Started 2 s ago: it may become ready any moment; the whole delay from now.
        assert_eq!(
            resume_at(&in_flight(now_ms - 2_000), 10 * S, 60 * S, now_ms),
            Some(10 * S)
        );
        // Started 65 s ago with a 60 s deadline: judged 5 s ago.
        assert_eq!(
            resume_at(&in_flight(now_ms - 65_000), 10 * S, 60 * S, now_ms),
            Some(5 * S)
        );
        // A clock ahead never makes it wait more than the delay.
        let ahead = Pace {
            started_at: Some(now_ms + 50_000),
            ready_at: Some(now_ms + 60_000),
        };
        assert_eq!(resume_at(&ahead, 10 * S, 60 * S, now_ms), Some(10 * S));
    }

    #[test]
    fn a_replica_that_stops_fails_the_update_and_pauses_by_default() {
        let slots = [replaced("1", 0, State::Stopped), dirty("2"), dirty("3")];
        let s = step(&cfg(1), &slots, &Progress::default(), 60 * S, S * 2);
        assert_eq!(
            s,
            Step::Stop {
                action: Action::Pause,
                failed: vec![("1".into(), "stopped after its start".into())]
            }
        );
    }

    #[test]
    fn failures_within_the_ratio_go_on() {
        let c = Config {
            max_failure_ratio: 0.5,
            ..cfg(1)
        };
        let slots = [
            replaced("1", 0, State::Failed("image".into())),
            dirty("2"),
            dirty("3"),
        ];
        assert_eq!(
            step(&c, &slots, &Progress::default(), 60 * S, S),
            Step::Replace(vec!["2".into()])
        );
    }

    #[test]
    fn continue_ignores_failures() {
        let c = Config {
            failure_action: Action::Continue,
            ..cfg(1)
        };
        let slots = [replaced("1", 0, State::Stopped), dirty("2")];
        assert_eq!(
            step(&c, &slots, &Progress::default(), 60 * S, S),
            Step::Replace(vec!["2".into()])
        );
    }

    fn moves(slots: &[(&str, &str)], parallelism: usize, spare: &[&str]) -> Vec<Option<String>> {
        let slots: Vec<(String, String)> = slots
            .iter()
            .map(|(k, m)| (k.to_string(), m.to_string()))
            .collect();
        let spare: Vec<String> = spare.iter().map(|m| m.to_string()).collect();
        port_moves(&slots, parallelism, &spare, |_, _| true)
    }

    #[test]
    fn with_one_spare_member_two_replicas_move_one_after_the_other() {
        // web-1 on node1 goes to node3; node1, left by web-1, takes web-2.
        assert_eq!(
            moves(&[("1", "node1"), ("2", "node2")], 1, &["node3"]),
            [Some("node3".to_string()), Some("node1".to_string())]
        );
    }

    #[test]
    fn a_batch_larger_than_the_spare_members_replaces_the_rest_stop_first() {
        assert_eq!(
            moves(
                &[("1", "node1"), ("2", "node2"), ("3", "node4")],
                2,
                &["node3"]
            ),
            [Some("node3".to_string()), None, Some("node1".to_string())]
        );
        // No spare member at all: every replica stop-first where it is.
        assert_eq!(
            moves(&[("1", "node1"), ("2", "node2")], 1, &[]),
            [None, None]
        );
    }

    #[test]
    fn a_replica_moves_only_within_its_spread_group() {
        let dc = |m: &str| if m == "a1" || m == "a2" { "a" } else { "b" };
        let slots = [
            ("1".to_string(), "a1".to_string()),
            ("2".to_string(), "b1".to_string()),
        ];
        let spare = ["a2".to_string()];
        assert_eq!(
            port_moves(&slots, 1, &spare, |x, y| dc(x) == dc(y)),
            [Some("a2".to_string()), None]
        );
    }

    #[test]
    fn a_rollout_that_went_past_failures_names_them_when_done() {
        let c = Config {
            failure_action: Action::Continue,
            ..cfg(1)
        };
        let slots = [
            replaced("1", 0, State::Failed("member node3 is offline".into())),
            replaced("2", 0, RUNNING),
        ];
        let p = Progress {
            batch_ready_at: Some(S),
            ..Default::default()
        };
        assert_eq!(step(&c, &slots, &p, 60 * S, 10 * S), Step::Done);
        assert_eq!(
            failures(&c, &slots, 60 * S, 10 * S),
            [("1".to_string(), "member node3 is offline".to_string())]
        );
    }

    #[test]
    fn a_replica_never_running_fails_at_its_deadline() {
        let slots = [replaced("1", 0, State::Starting)];
        assert_eq!(
            step(&cfg(1), &slots, &Progress::default(), 30 * S, 29 * S),
            Step::Wait { until: 30 * S }
        );
        assert!(matches!(
            step(&cfg(1), &slots, &Progress::default(), 30 * S, 30 * S),
            Step::Stop { .. }
        ));
    }

    #[test]
    fn a_running_replica_not_yet_healthy_is_pending_not_ready() {
        let slots = [
            replaced(
                "1",
                0,
                State::Running {
                    health: Some(Health::Starting),
                },
            ),
            dirty("2"),
        ];
        assert_eq!(
            step(&cfg(1), &slots, &Progress::default(), 30 * S, S),
            Step::Wait { until: 30 * S }
        );
        let unhealthy = [replaced(
            "1",
            0,
            State::Running {
                health: Some(Health::Unhealthy),
            },
        )];
        assert!(matches!(
            step(&cfg(1), &unhealthy, &Progress::default(), 30 * S, S),
            Step::Stop { .. }
        ));
    }

    #[test]
    fn after_the_last_batch_the_rollout_watches_one_more_monitor_period() {
        let slots = [replaced("1", 0, RUNNING), replaced("2", 4, RUNNING)];
        let p = Progress {
            batch_ready_at: Some(5 * S),
            ..Default::default()
        };
        // Replica 2 started at 4 s settles at 9 s; the watch lasts until 5 + 5 = 10 s.
        assert_eq!(
            step(&cfg(1), &slots, &p, 60 * S, 6 * S),
            Step::Wait { until: 10 * S }
        );
        assert_eq!(step(&cfg(1), &slots, &p, 60 * S, 10 * S), Step::Done);
    }

    #[test]
    fn the_final_watch_is_longer_when_the_delay_exceeds_the_monitor() {
        let c = Config {
            delay: 20 * S,
            ..cfg(1)
        };
        let slots = [replaced("1", 0, RUNNING)];
        let p = Progress {
            batch_ready_at: Some(S),
            ..Default::default()
        };
        assert_eq!(
            step(&c, &slots, &p, 60 * S, 10 * S),
            Step::Wait { until: 21 * S }
        );
    }

    #[test]
    fn a_rollback_config_never_rolls_back() {
        let u = UpdateConfig {
            failure_action: Some(FailureAction::Rollback),
            ..Default::default()
        };
        assert_eq!(Config::rollback(Some(&u)).failure_action, Action::Pause);
        assert_eq!(Config::update(Some(&u)).failure_action, Action::Rollback);
    }

    #[test]
    fn defaults_are_swarms() {
        let c = Config::update(None);
        assert_eq!(c.parallelism, 1);
        assert_eq!(c.delay, Duration::ZERO);
        assert!(!c.start_first);
        assert_eq!(c.failure_action, Action::Pause);
        assert_eq!(c.monitor, 5 * S);
        assert_eq!(c.max_failure_ratio, 0.0);
    }

    #[test]
    fn a_short_monitor_is_warned_about() {
        let check = Check {
            argv: vec!["true".into()],
            interval: 10 * S,
            timeout: S,
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: S,
        };
        assert!(monitor_warning("web", &Config::default(), Some(&check)).is_some());
        assert!(monitor_warning("web", &Config::default(), None).is_none());
        assert_eq!(
            deadline(&Config::default(), Some(&check)),
            START_DEADLINE + 5 * S
        );
    }

    /// A simulated rollout: the engine's loop with an instantaneous, scripted world. Each
    /// replaced slot's new replica becomes running after `start` seconds, and fails instead
    /// when its slot is in `bad`.
    fn simulate(
        c: &Config,
        n: usize,
        bad: &[usize],
        start: u64,
    ) -> (Step, Vec<Vec<String>>, usize) {
        simulate_watching(c, n, bad, start, &mut |_, _| {})
    }

    /// [`simulate`], calling `watch` with the slots and the time at every tick.
    fn simulate_watching(
        c: &Config,
        n: usize,
        bad: &[usize],
        start: u64,
        watch: &mut dyn FnMut(&[Slot], Duration),
    ) -> (Step, Vec<Vec<String>>, usize) {
        let mut slots: Vec<Slot> = (0..n).map(|i| dirty(&i.to_string())).collect();
        let mut progress = Progress::default();
        let mut now = Duration::ZERO;
        let mut batches = Vec::new();
        let mut max_down = 0;
        for _ in 0..10_000 {
            // The world: new replicas start `start` s after creation.
            for (i, s) in slots.iter_mut().enumerate() {
                if let Some(r) = &mut s.new
                    && r.state == State::Starting
                    && now >= r.created_at + S * start as u32
                {
                    r.state = if bad.contains(&i) {
                        State::Stopped
                    } else {
                        RUNNING
                    };
                    r.started_at = Some(now);
                }
            }
            watch(&slots, now);
            // Stop-first: a slot is down while its new replica is not running.
            let down = slots
                .iter()
                .filter(|s| s.new.as_ref().is_some_and(|r| r.state == State::Starting))
                .count();
            max_down = max_down.max(down);
            let in_flight = slots
                .iter()
                .any(|s| s.new.as_ref().is_some_and(|r| r.state == State::Starting));
            if !in_flight && progress.batch_ready_at.is_none() && !batches.is_empty() {
                progress.batch_ready_at = Some(now);
            }
            match step(c, &slots, &progress, 60 * S, now) {
                Step::Replace(keys) => {
                    for k in &keys {
                        let s = slots.iter_mut().find(|s| &s.key == k).unwrap();
                        assert!(s.dirty, "slot {k} replaced twice");
                        s.dirty = false;
                        s.new = Some(NewReplica {
                            created_at: now,
                            started_at: None,
                            state: State::Starting,
                        });
                    }
                    progress.batch_ready_at = None;
                    batches.push(keys);
                }
                Step::Wait { until } => {
                    assert!(until > now, "wait until {until:?} at {now:?}");
                    now = until.min(now + S);
                }
                done => return (done, batches, max_down),
            }
        }
        panic!("the rollout did not end");
    }

    /// A simulated start-first rollout: [`simulate`], where each old replica stops once
    /// [`may_retire_old`] says so. Returns how it ended and the fewest replicas that ran at
    /// one moment.
    fn simulate_start_first(c: &Config, n: usize, bad: &[usize], start: u64) -> (Step, usize) {
        let mut old_running = vec![true; n];
        let mut fewest = n;
        let (end, _, _) = simulate_watching(c, n, bad, start, &mut |slots, now| {
            for (i, s) in slots.iter().enumerate() {
                if let Some(r) = &s.new
                    && may_retire_old(r, c, 60 * S, now)
                {
                    old_running[i] = false;
                }
            }
            let running = slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    usize::from(old_running[i])
                        + usize::from(s.new.as_ref().is_some_and(|r| r.state == RUNNING))
                })
                .sum::<usize>();
            fewest = fewest.min(running);
        });
        (end, fewest)
    }

    proptest! {
        #[test]
        fn start_first_never_runs_fewer_than_the_declared_replicas(
            n in 1usize..10,
            parallelism in 0usize..4,
            delay in 0u64..3,
            monitor in 0u64..6,
            start in 0u64..4,
            bad in proptest::collection::vec(0usize..10, 0..4),
            action in prop_oneof![Just(Action::Pause), Just(Action::Continue), Just(Action::Rollback)],
        ) {
            let c = Config {
                parallelism,
                delay: S * delay as u32,
                monitor: S * monitor as u32,
                max_failure_ratio: 0.0,
                failure_action: action,
                start_first: true,
            };
            let (_, fewest) = simulate_start_first(&c, n, &bad, start);
            prop_assert!(fewest >= n, "only {fewest} of {n} ran at one moment");
        }
    }

    #[test]
    fn a_healthy_rollout_replaces_every_slot_once_in_batches() {
        let (end, batches, _) = simulate(&cfg(2), 5, &[], 2);
        assert_eq!(end, Step::Done);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    }

    #[test]
    fn a_bad_image_stops_after_the_first_batch() {
        let c = Config {
            failure_action: Action::Rollback,
            ..cfg(1)
        };
        let (end, batches, _) = simulate(&c, 4, &[0, 1, 2, 3], 1);
        assert_eq!(batches.len(), 1);
        assert!(matches!(
            end,
            Step::Stop {
                action: Action::Rollback,
                ..
            }
        ));
    }

    /// A rollout run by the engine's loop in a scripted world (as [`simulate`]), stopped after
    /// `steps` steps (killed) or at its end. Returns the end step (None: killed), the batches
    /// with their times, and when the last batch started and became ready.
    #[allow(clippy::type_complexity)]
    fn run_for(
        c: &Config,
        slots: &mut [Slot],
        progress: &mut Progress,
        start: u64,
        steps: usize,
    ) -> (
        Option<Step>,
        Vec<(Duration, Vec<String>)>,
        Option<Duration>,
        Option<Duration>,
    ) {
        let mut now = Duration::ZERO;
        let mut batches = Vec::new();
        let (mut started, mut ready) = (None, None);
        for _ in 0..steps {
            for s in slots.iter_mut() {
                if let Some(r) = &mut s.new
                    && r.state == State::Starting
                    && now >= r.created_at + S * start as u32
                {
                    r.state = RUNNING;
                    r.started_at = Some(now);
                }
            }
            let in_flight = slots
                .iter()
                .any(|s| s.new.as_ref().is_some_and(|r| r.state == State::Starting));
            if !in_flight && progress.batch_ready_at.is_none() && started.is_some() {
                progress.batch_ready_at = Some(now);
                ready = Some(now);
            }
            match step(c, slots, progress, 60 * S, now) {
                Step::Replace(keys) => {
                    for k in &keys {
                        let s = slots.iter_mut().find(|s| &s.key == k).unwrap();
                        s.dirty = false;
                        s.new = Some(NewReplica {
                            created_at: now,
                            started_at: None,
                            state: State::Starting,
                        });
                    }
                    progress.batch_ready_at = None;
                    started = Some(now);
                    ready = None;
                    batches.push((now, keys));
                }
                Step::Wait { until } => now = until.min(now + S),
                done => return (Some(done), batches, started, ready),
            }
        }
        (None, batches, started, ready)
    }

    proptest! {
        /// A rollout killed after any number of steps and resumed by a new run (which sees
        /// only the slots still dirty, and the pace stored in Incus) never replaces a slot
        /// twice, replaces them all, and starts its first batch no sooner than `delay` after
        /// the last batch of the run before was ready (or could have been). Where the rollout
        /// has more than one batch, the kill falls between its first batch and its last (at
        /// `at` of the way): 51% of the cases are killed mid-rollout, after a batch and with
        /// slots left (22% with the former kill after 0-29 steps); the others have one batch
        /// in all (parallelism 0, or no more slots than it) and are killed anywhere.
        #[test]
        fn a_resumed_rollout_never_replaces_a_slot_twice_and_keeps_the_delay(
            n in 1usize..8,
            parallelism in 0usize..3,
            delay in 0u64..6,
            start in 0u64..4,
            at in 0.0f64..1.0,
        ) {
            let c = Config { parallelism, delay: S * delay as u32, ..cfg(1) };
            let fresh = || -> Vec<Slot> { (0..n).map(|i| dirty(&i.to_string())).collect() };
            // The step counts at which the first batch has begun and at which every slot has.
            let probe = |k: usize| {
                let mut s = fresh();
                let (end, b, _, _) = run_for(&c, &mut s, &mut Progress::default(), start, k);
                (end.is_some(), !b.is_empty(), s.iter().all(|s| !s.dirty))
            };
            let total = (1..10_000).find(|&k| probe(k).0).unwrap_or(10_000);
            let first_batch = (0..total).find(|&k| probe(k).1).unwrap_or(0);
            let all_begun = (0..total).find(|&k| probe(k).2).unwrap_or(total);
            let steps = if all_begun > first_batch + 1 {
                first_batch + ((all_begun - first_batch) as f64 * at) as usize
            } else {
                (total as f64 * at) as usize
            };
            let mut slots = fresh();
            let mut progress = Progress::default();
            let (end, first, started, ready) = run_for(&c, &mut slots, &mut progress, start, steps);
            if end.is_some() {
                return Ok(());
            }
            // Killed now, at `killed` on the first run's clock; wall clock = that + 1e6 ms.
            let killed = S * steps as u32; // an upper bound of the first run's clock
            let killed = killed.max(first.last().map(|b| b.0).unwrap_or_default());
            let wall = |d: Duration| 1_000_000 + d.as_millis() as u64;
            let pace = Pace { started_at: started.map(wall), ready_at: ready.map(wall) };
            let mut rest: Vec<Slot> = slots.iter().filter(|s| s.dirty).map(|s| dirty(&s.key)).collect();
            let mut resumed = Progress {
                not_before: resume_at(&pace, c.delay, 60 * S, wall(killed)),
                ..Progress::default()
            };
            let (end, second, _, _) = run_for(&c, &mut rest, &mut resumed, start, 10_000);
            prop_assert_eq!(end, Some(Step::Done));
            let mut seen = std::collections::BTreeSet::new();
            for (_, keys) in first.iter().chain(&second) {
                for k in keys {
                    prop_assert!(seen.insert(k.clone()), "slot {} replaced twice", k);
                }
            }
            prop_assert_eq!(seen.len(), n);
            if let (Some((t, _)), Some(s)) = (second.first(), started) {
                let ready_by = ready.unwrap_or_else(|| killed.min(s + 60 * S));
                prop_assert!(killed + *t >= ready_by + c.delay,
                    "resumed batch at {:?} after the kill, the last one ready at {:?}, delay {:?}",
                    t, ready_by, c.delay);
            }
        }
    }

    proptest! {
        /// Port moves never put two replicas of the service on one member at any moment: a
        /// member gets a new replica only while no replica (old or new) of the service runs
        /// there, and each replica is placed once.
        #[test]
        fn port_moves_never_put_two_replicas_on_one_member(
            n in 1usize..8,
            extra in 0usize..4,
            parallelism in 0usize..4,
        ) {
            let slots: Vec<(String, String)> =
                (0..n).map(|i| (i.to_string(), format!("m{i}"))).collect();
            let spare: Vec<String> = (n..n + extra).map(|i| format!("m{i}")).collect();
            let to = port_moves(&slots, parallelism, &spare, |_, _| true);
            prop_assert_eq!(to.len(), n);
            // Members bound now: every old replica's.
            let mut bound: std::collections::BTreeSet<String> =
                slots.iter().map(|(_, m)| m.clone()).collect();
            let size = if parallelism == 0 { n } else { parallelism };
            for (b, batch) in slots.chunks(size).enumerate() {
                let mut retired = Vec::new();
                for (k, (_, old)) in batch.iter().enumerate() {
                    if let Some(m) = &to[b * size + k] {
                        prop_assert!(bound.insert(m.clone()), "{m} bound twice");
                        retired.push(old.clone());
                    }
                }
                for old in retired {
                    bound.remove(&old);
                }
            }
            if extra > 0 {
                prop_assert!(to.iter().take(size.min(extra)).all(Option::is_some));
            }
        }
    }

    proptest! {
        #[test]
        fn never_more_than_parallelism_down_and_never_a_slot_twice(
            n in 1usize..12,
            parallelism in 0usize..5,
            delay in 0u64..4,
            monitor in 0u64..8,
            start in 0u64..5,
            bad in proptest::collection::vec(0usize..12, 0..4),
            ratio in 0.0f64..1.0,
            action in prop_oneof![Just(Action::Pause), Just(Action::Continue), Just(Action::Rollback)],
        ) {
            let c = Config {
                parallelism,
                delay: S * delay as u32,
                monitor: S * monitor as u32,
                max_failure_ratio: ratio,
                failure_action: action,
                start_first: false,
            };
            let (end, batches, max_down) = simulate(&c, n, &bad, start);
            let limit = if parallelism == 0 { n } else { parallelism };
            prop_assert!(max_down <= limit, "{max_down} down at once, parallelism {parallelism}");
            let mut seen = std::collections::BTreeSet::new();
            for b in &batches {
                prop_assert!(b.len() <= limit);
                for k in b { prop_assert!(seen.insert(k.clone()), "slot {k} replaced twice"); }
            }
            let bad_in: std::collections::BTreeSet<usize> = bad.iter().copied().filter(|b| *b < n).collect();
            match end {
                Step::Done => {
                    prop_assert_eq!(seen.len(), n);
                    if action != Action::Continue {
                        prop_assert!(bad_in.len() as f64 / n as f64 <= ratio);
                    }
                }
                Step::Stop { action: a, failed } => {
                    prop_assert_eq!(a, action);
                    prop_assert!(!failed.is_empty());
                    prop_assert!(failed.len() as f64 / n as f64 > ratio);
                }
                other => prop_assert!(false, "ended with {other:?}"),
            }
        }
    }
}
