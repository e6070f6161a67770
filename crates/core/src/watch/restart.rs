//! `restart_policy` with `watch` running: the pure rules, without I/O or a clock (times are
//! unix seconds passed in).
//!
//! `up` stores a service's policy on each replica ([`LABEL_RESTART_POLICY`], see
//! [`RestartPolicy::encode`]) when it declares what Incus's `boot.autorestart` cannot do
//! (`delay`, `max_attempts`, `window`). `watch` keeps each replica's restarts (Incus's own
//! auto-restarts, seen as `instance-restarted` lifecycle events without a requestor, and the
//! starts `watch` does) on the replica ([`LABEL_RESTARTS`], unix seconds), so another `watch`
//! that takes over keeps the count. When a replica has used `max_attempts` restarts within
//! `window`, `watch` turns its `boot.autorestart` off so that its next exit leaves it
//! stopped; a replica that then stops is left stopped, marked ([`LABEL_GAVE_UP`]) and
//! reported once; the budget comes back (`boot.autorestart` on again) as attempts age out of
//! the window, and a replica left stopped that someone starts again starts with a fresh
//! budget.

use std::collections::BTreeMap;

use ic_compose::model::RestartCondition;

use crate::keys::{LABEL_GAVE_UP, LABEL_RESTART_POLICY, LABEL_RESTARTS};

/// At most this many restarts are kept (a policy without `max_attempts` or `window`).
const KEEP: usize = 20;

/// Seconds a stopped replica whose `boot.autorestart` is on is left to Incus before `watch`
/// starts it itself: Incus's own restart of an exit may be under way (on a loaded server it
/// came 2-3 s after the exit, once `watch` had started the replica, and both counted: a budget
/// of 2 spent on one restart).
pub const AUTORESTART_WAIT: u64 = 5;

/// Swarm's `restart_policy`, in whole seconds (`delay` and `window` rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Seconds between the exit and the start `watch` does.
    pub delay: u64,
    /// Restarts allowed within `window` (0: no limit, as in Swarm).
    pub max_attempts: u64,
    /// Seconds over which restarts are counted (0: since the replica was created).
    pub window: u64,
}

fn secs(d: &std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn condition_name(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::None => "none",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Any => "any",
    }
}

impl RestartPolicy {
    /// The policy of a compose `deploy.restart_policy` (or `restart: on-failure:N`), when it
    /// declares something `boot.autorestart` cannot do (`delay`, `max_attempts`, `window`)
    /// for a service that restarts; `None` otherwise (Incus's boot keys do all of it, and
    /// `condition: none` is never restarted).
    pub fn from_compose(p: &ic_compose::model::RestartPolicy) -> Option<RestartPolicy> {
        if p.condition == RestartCondition::None
            || (p.delay.is_none() && p.max_attempts.is_none() && p.window.is_none())
        {
            return None;
        }
        Some(RestartPolicy {
            condition: p.condition,
            delay: p.delay.as_ref().map(|d| secs(&d.0)).unwrap_or(0),
            max_attempts: p.max_attempts.unwrap_or(0),
            window: p.window.as_ref().map(|d| secs(&d.0)).unwrap_or(0),
        })
    }

    /// The policy of a service without a stored one: restarts (`condition: any`) when
    /// Incus restarts it, without a limit, else never (`condition: none`).
    pub fn unlimited(restarts: bool) -> RestartPolicy {
        RestartPolicy {
            condition: if restarts {
                RestartCondition::Any
            } else {
                RestartCondition::None
            },
            delay: 0,
            max_attempts: 0,
            window: 0,
        }
    }

    /// `condition=on-failure delay=5 max_attempts=2 window=60`.
    pub fn encode(&self) -> String {
        format!(
            "condition={} delay={} max_attempts={} window={}",
            condition_name(self.condition),
            self.delay,
            self.max_attempts,
            self.window
        )
    }

    /// The inverse of [`RestartPolicy::encode`]; `None` for anything else.
    pub fn decode(s: &str) -> Option<RestartPolicy> {
        let mut p = RestartPolicy {
            condition: RestartCondition::Any,
            delay: 0,
            max_attempts: 0,
            window: 0,
        };
        let mut condition = false;
        for word in s.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            match k {
                "condition" => {
                    p.condition = match v {
                        "none" => RestartCondition::None,
                        "on-failure" => RestartCondition::OnFailure,
                        "any" => RestartCondition::Any,
                        _ => return None,
                    };
                    condition = true;
                }
                "delay" => p.delay = v.parse().ok()?,
                "max_attempts" => p.max_attempts = v.parse().ok()?,
                "window" => p.window = v.parse().ok()?,
                _ => return None,
            }
        }
        condition.then_some(p)
    }

    /// Whether the restarts in `history` count at `now`.
    fn counts(&self, t: u64, now: u64) -> bool {
        self.window == 0 || now < t.saturating_add(self.window)
    }

    /// The restarts of `history` that count at `now`.
    pub fn used(&self, history: &[u64], now: u64) -> usize {
        history.iter().filter(|&&t| self.counts(t, now)).count()
    }

    /// Whether `max_attempts` restarts were used within the window at `now`.
    pub fn spent(&self, history: &[u64], now: u64) -> bool {
        self.max_attempts > 0 && self.used(history, now) as u64 >= self.max_attempts
    }

    /// Whether Incus should restart the replica on its own (`boot.autorestart`) at `now`.
    pub fn autorestart(&self, history: &[u64], now: u64) -> bool {
        self.condition != RestartCondition::None && !self.spent(history, now)
    }

    /// `history` without the restarts that no longer count, and at most what is needed.
    pub fn prune(&self, history: &[u64], now: u64) -> Vec<u64> {
        let mut kept: Vec<u64> = history
            .iter()
            .copied()
            .filter(|&t| self.counts(t, now))
            .collect();
        kept.sort_unstable();
        let keep = if self.max_attempts > 0 {
            (self.max_attempts as usize).saturating_add(1).min(KEEP)
        } else {
            KEEP
        };
        if kept.len() > keep {
            kept.drain(..kept.len() - keep);
        }
        kept
    }

    /// When the oldest counted restart ages out of the window (the budget grows then), if
    /// that matters (a spent budget with a window).
    pub fn next_change(&self, history: &[u64], now: u64) -> Option<u64> {
        if self.window == 0 || !self.spent(history, now) {
            return None;
        }
        history
            .iter()
            .filter(|&&t| self.counts(t, now))
            .map(|&t| t.saturating_add(self.window))
            .min()
    }

    /// The log line (and [`LABEL_GAVE_UP`] value) of a replica left stopped.
    pub fn gave_up_message(&self, name: &str, history: &[u64], now: u64) -> String {
        let n = self.used(history, now);
        let times = if n == 1 { "time" } else { "times" };
        let within = if self.window == 0 {
            String::new()
        } else {
            format!(" within {} s", self.window)
        };
        format!(
            "{name} left stopped: restarted {n} {times}{within} (restart_policy.max_attempts {})",
            self.max_attempts
        )
    }
}

/// The policy stored in a replica's or template's config.
pub fn policy_of(config: &BTreeMap<String, String>) -> Option<RestartPolicy> {
    config
        .get(LABEL_RESTART_POLICY)
        .and_then(|s| RestartPolicy::decode(s))
}

/// Parses [`LABEL_RESTARTS`] (unparsable entries are dropped).
pub fn parse_history(s: &str) -> Vec<u64> {
    let mut v: Vec<u64> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
    v.sort_unstable();
    v
}

/// The value of [`LABEL_RESTARTS`].
pub fn format_history(h: &[u64]) -> String {
    h.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// What `watch` knows of one replica with a [`RestartPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    pub running: bool,
    /// Its config as Incus has it (the keys below are read from it).
    pub config: BTreeMap<String, String>,
    /// Incus's auto-restarts of it seen (as events) since the last round, unix seconds.
    pub incus_restarts: Vec<u64>,
    /// Since when this `watch` has seen it stopped (its exit, as near as `watch` knows).
    pub stopped_since: Option<u64>,
    /// Incus said its init exited and it did not restart it (an `instance-shutdown` without a
    /// requestor): no restart of Incus's own is to come.
    pub exit_seen: bool,
    /// Running, and its healthcheck failed `retries` times in a row (after `start_period`).
    pub unhealthy: bool,
}

/// What to do with a running replica that is unhealthy (as Swarm does: the task is shut
/// down and the restart policy decides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// Restart it now (counted).
    Restart,
    /// Stop it and leave it stopped: why (the log line).
    Stop(String),
}

/// What to do with a stopped replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Start it now (counted: [`Assessment::set`] holds the new history).
    Start,
    /// Start it at this time (`delay`), if still stopped then.
    StartAt(u64),
    /// Leave it stopped: why (the log line, said once).
    Leave(String),
}

/// The decisions for one replica at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Config keys to write on the replica (an empty value clears a label).
    pub set: BTreeMap<String, String>,
    /// For a stopped replica, what to do.
    pub stopped: Option<Stopped>,
    /// For an unhealthy running replica, what to do.
    pub unhealthy: Option<Unhealthy>,
    /// Log lines (Incus's restarts counted, the budget spent or back).
    pub log: Vec<String>,
    /// When to look at it again (a delay ends, a restart ages out).
    pub due: Option<u64>,
}

fn get<'a>(c: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    c.get(k).map(String::as_str).unwrap_or("")
}

/// The rules: counts Incus's restarts, turns `boot.autorestart` off when the budget is spent
/// and on again when it comes back, and decides about a stopped replica: started (after
/// `delay`, counted) while the budget lasts, left stopped (said once, marked) when it is
/// spent; a replica left stopped stays so until someone starts it, which clears the
/// history (a fresh budget, as a re-created task has in Swarm).
pub fn assess(p: &RestartPolicy, r: &Replica, now: u64) -> Assessment {
    let c = &r.config;
    let before = parse_history(get(c, LABEL_RESTARTS));
    let gave_up = get(c, LABEL_GAVE_UP);
    let mut log = Vec::new();
    let mut history = before.clone();
    let mut stopped = None;
    if r.running && !gave_up.is_empty() {
        // Started by someone since it was left stopped: a fresh budget.
        history.clear();
        log.push(format!(
            "{} runs again (started from outside): its restart count starts over",
            r.name
        ));
    }
    for &t in &r.incus_restarts {
        history.push(t);
        history.sort_unstable();
        log.push(format!(
            "{} exited and Incus restarted it: restart {} (restart_policy: {})",
            r.name,
            p.used(&history, now),
            budget(p)
        ));
    }
    let mut gave_up_now = if r.running { "" } else { gave_up }.to_string();
    let mut due = None;
    let mut unhealthy = None;
    if r.running && r.unhealthy {
        if p.condition == RestartCondition::None {
            unhealthy = Some(Unhealthy::Stop(format!(
                "{} is unhealthy: stopped and left so (restart_policy condition none)",
                r.name
            )));
        } else if p.spent(&history, now) {
            let m = p.gave_up_message(&r.name, &history, now);
            gave_up_now = m.clone();
            unhealthy = Some(Unhealthy::Stop(m));
        } else {
            history.push(now);
            unhealthy = Some(Unhealthy::Restart);
        }
    }
    if !r.running {
        if p.condition == RestartCondition::None {
            stopped = Some(Stopped::Leave(format!(
                "{} is stopped and left so: restart_policy condition none",
                r.name
            )));
        } else if !gave_up.is_empty() {
            stopped = Some(Stopped::Leave(gave_up.to_string()));
        } else if p.spent(&history, now) {
            let m = p.gave_up_message(&r.name, &history, now);
            gave_up_now = m.clone();
            stopped = Some(Stopped::Leave(m));
        } else {
            let since = r.stopped_since.unwrap_or(now);
            let incus_may_restart = get(c, "boot.autorestart") == "true" && !r.exit_seen;
            let wait = if incus_may_restart {
                p.delay.max(AUTORESTART_WAIT)
            } else {
                p.delay
            };
            let at = since.saturating_add(wait);
            if now >= at {
                history.push(now);
                stopped = Some(Stopped::Start);
            } else {
                due = Some(at);
                stopped = Some(Stopped::StartAt(at));
            }
        }
    }
    let history = p.prune(&history, now);
    let mut set = BTreeMap::new();
    if history != before {
        set.insert(LABEL_RESTARTS.to_string(), format_history(&history));
    }
    if gave_up_now != gave_up {
        set.insert(LABEL_GAVE_UP.to_string(), gave_up_now);
    }
    let want = if p.autorestart(&history, now) && !matches!(unhealthy, Some(Unhealthy::Stop(_))) {
        "true"
    } else {
        "false"
    };
    let have = if get(c, "boot.autorestart") == "true" {
        "true"
    } else {
        "false"
    };
    if want != have && p.condition != RestartCondition::None {
        set.insert("boot.autorestart".to_string(), want.to_string());
        if r.running && unhealthy.is_none() {
            log.push(if want == "false" {
                format!(
                    "{}: restart budget spent ({}): Incus no longer restarts it, its next exit leaves it stopped",
                    r.name,
                    budget(p)
                )
            } else {
                format!("{}: restart budget back ({})", r.name, budget(p))
            });
        }
    }
    if let Some(t) = p.next_change(&history, now) {
        due = Some(due.map_or(t, |d: u64| d.min(t)));
    }
    Assessment {
        set,
        stopped,
        unhealthy,
        log,
        due,
    }
}

/// `max_attempts 2 within 60 s`, for the log.
fn budget(p: &RestartPolicy) -> String {
    let max = if p.max_attempts == 0 {
        "no max_attempts".to_string()
    } else {
        format!("max_attempts {}", p.max_attempts)
    };
    if p.window == 0 {
        max
    } else {
        format!("{max} within {} s", p.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max: u64, window: u64, delay: u64) -> RestartPolicy {
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay,
            max_attempts: max,
            window,
        }
    }

    fn replica(running: bool, config: &[(&str, &str)]) -> Replica {
        Replica {
            name: "web-1".into(),
            running,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            incus_restarts: Vec::new(),
            stopped_since: None,
            exit_seen: true,
            unhealthy: false,
        }
    }

    #[test]
    fn a_stopped_replica_incus_may_still_restart_is_left_to_incus_for_a_few_seconds() {
        // Seen stopped by polling, no exit event yet, autorestart on: Incus's restart may be
        // under way, so watch does not start it (and count it) at once.
        let p = policy(2, 60, 0);
        let mut r = replica(false, &[("boot.autorestart", "true")]);
        r.exit_seen = false;
        r.stopped_since = Some(100);
        let a = assess(&p, &r, 100);
        assert_eq!(a.stopped, Some(Stopped::StartAt(100 + AUTORESTART_WAIT)));
        assert!(a.set.is_empty(), "nothing counted: {a:?}");
        // Still stopped after the wait: Incus did not restart it, watch does.
        let a = assess(&p, &r, 100 + AUTORESTART_WAIT);
        assert_eq!(a.stopped, Some(Stopped::Start));
        // Incus said it exited and did not restart it: at once.
        r.exit_seen = true;
        assert_eq!(assess(&p, &r, 100).stopped, Some(Stopped::Start));
        // Autorestart off (budget spent elsewhere, or never on): nothing to wait for.
        let mut off = replica(false, &[("boot.autorestart", "false")]);
        off.exit_seen = false;
        off.stopped_since = Some(100);
        assert_eq!(
            assess(&policy(3, 60, 0), &off, 100).stopped,
            Some(Stopped::Start)
        );
    }

    #[test]
    fn a_policy_is_stored_only_when_it_declares_what_boot_keys_cannot_do_and_reads_back() {
        let mut p = ic_compose::model::RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay: None,
            max_attempts: None,
            window: None,
        };
        assert_eq!(RestartPolicy::from_compose(&p), None);
        p.max_attempts = Some(2);
        p.condition = RestartCondition::None;
        assert_eq!(RestartPolicy::from_compose(&p), None);
        p.condition = RestartCondition::OnFailure;
        p.window = Some("60s".parse().unwrap());
        p.delay = Some("1500ms".parse().unwrap());
        let r = RestartPolicy::from_compose(&p).unwrap();
        assert_eq!(
            r,
            RestartPolicy {
                delay: 2,
                ..policy(2, 60, 0)
            }
        );
        assert_eq!(
            r.encode(),
            "condition=on-failure delay=2 max_attempts=2 window=60"
        );
        assert_eq!(RestartPolicy::decode(&r.encode()), Some(r));
        assert_eq!(RestartPolicy::decode("delay=2"), None);
        assert_eq!(RestartPolicy::decode("condition=sometimes"), None);
    }

    #[test]
    fn incus_restarts_are_counted_and_the_second_turns_autorestart_off() {
        let p = policy(2, 60, 0);
        let mut r = replica(true, &[("boot.autorestart", "true")]);
        r.incus_restarts = vec![100];
        let a = assess(&p, &r, 100);
        assert_eq!(a.set[LABEL_RESTARTS], "100");
        assert!(!a.set.contains_key("boot.autorestart"));
        assert_eq!(a.stopped, None);
        r.config.insert(LABEL_RESTARTS.into(), "100".into());
        r.incus_restarts = vec![104];
        let a = assess(&p, &r, 104);
        assert_eq!(a.set[LABEL_RESTARTS], "100,104");
        assert_eq!(a.set["boot.autorestart"], "false");
        assert!(a.log.iter().any(|l| l.contains("budget spent")), "{a:?}");
        assert_eq!(a.due, Some(160));
    }

    #[test]
    fn a_replica_stopped_with_its_budget_spent_is_left_stopped_marked_and_said_once() {
        let p = policy(2, 60, 0);
        let r = replica(
            false,
            &[("boot.autorestart", "false"), (LABEL_RESTARTS, "100,104")],
        );
        let a = assess(&p, &r, 108);
        let msg =
            "web-1 left stopped: restarted 2 times within 60 s (restart_policy.max_attempts 2)";
        assert_eq!(a.stopped, Some(Stopped::Leave(msg.into())));
        assert_eq!(a.set[LABEL_GAVE_UP], msg);
        // Later, even when the restarts aged out, it stays stopped (as Swarm leaves the task).
        let mut r = r;
        r.config.insert(LABEL_GAVE_UP.into(), msg.into());
        let a = assess(&p, &r, 400);
        assert_eq!(a.stopped, Some(Stopped::Leave(msg.into())));
        assert!(!a.set.contains_key(LABEL_GAVE_UP));
    }

    #[test]
    fn a_replica_left_stopped_and_started_from_outside_gets_a_fresh_budget() {
        let p = policy(2, 60, 0);
        let r = replica(
            true,
            &[
                ("boot.autorestart", "false"),
                (LABEL_RESTARTS, "100,104"),
                (LABEL_GAVE_UP, "web-1 left stopped: ..."),
            ],
        );
        let a = assess(&p, &r, 110);
        assert_eq!(a.set[LABEL_RESTARTS], "");
        assert_eq!(a.set[LABEL_GAVE_UP], "");
        assert_eq!(a.set["boot.autorestart"], "true");
    }

    #[test]
    fn a_stopped_replica_within_budget_starts_after_the_delay_and_the_start_counts() {
        let p = policy(3, 60, 5);
        let mut r = replica(false, &[("boot.autorestart", "true")]);
        r.stopped_since = Some(100);
        let a = assess(&p, &r, 102);
        assert_eq!(a.stopped, Some(Stopped::StartAt(105)));
        assert_eq!(a.due, Some(105));
        assert!(a.set.is_empty());
        let a = assess(&p, &r, 105);
        assert_eq!(a.stopped, Some(Stopped::Start));
        assert_eq!(a.set[LABEL_RESTARTS], "105");
    }

    #[test]
    fn condition_none_is_never_started_and_its_boot_keys_are_left_alone() {
        let p = RestartPolicy {
            condition: RestartCondition::None,
            ..policy(2, 60, 0)
        };
        let a = assess(&p, &replica(false, &[]), 100);
        assert!(matches!(a.stopped, Some(Stopped::Leave(_))));
        assert!(a.set.is_empty());
    }

    #[test]
    fn the_budget_comes_back_when_restarts_age_out_of_the_window() {
        let p = policy(2, 60, 0);
        let r = replica(
            true,
            &[("boot.autorestart", "false"), (LABEL_RESTARTS, "100,104")],
        );
        assert!(assess(&p, &r, 159).set.is_empty());
        let a = assess(&p, &r, 160);
        assert_eq!(a.set["boot.autorestart"], "true");
        assert_eq!(a.set[LABEL_RESTARTS], "104");
    }

    #[test]
    fn without_max_attempts_there_is_no_limit_and_history_stays_bounded() {
        let p = policy(0, 0, 0);
        let mut r = replica(true, &[("boot.autorestart", "true")]);
        r.incus_restarts = (0..50).collect();
        let a = assess(&p, &r, 50);
        assert!(!a.set.contains_key("boot.autorestart"));
        assert_eq!(parse_history(&a.set[LABEL_RESTARTS]).len(), KEEP);
    }

    #[test]
    fn starts_of_replicas_with_a_stored_policy_are_taken_out_of_the_plan_for_watch() {
        use crate::plan::DiffOptions;
        let text = "name: shop\nservices:\n  web:\n    image: busybox\n    deploy: {restart_policy: {condition: on-failure, max_attempts: 2}}\n  api:\n    image: busybox\n    restart: always\n";
        let (d, obs) = crate::watch::tests::deployed_stopped(text);
        let web = d.services.iter().find(|t| t.service == "web").unwrap();
        assert_eq!(policy_of(&web.config), Some(policy(2, 0, 0)));
        let mut plan = crate::plan::diff(&d, &obs, &DiffOptions::default()).unwrap();
        assert_eq!(crate::watch::take_policy_starts(&mut plan, &d), ["web-1"]);
        let left: Vec<String> = plan.actions().map(|a| a.to_string()).collect();
        assert_eq!(left, ["start api-1"]);
    }

    #[test]
    fn an_unhealthy_replica_is_restarted_within_the_budget_then_stopped_and_left_so() {
        let p = policy(2, 60, 0);
        let mut r = replica(true, &[("boot.autorestart", "true")]);
        r.unhealthy = true;
        let a = assess(&p, &r, 100);
        assert_eq!(a.unhealthy, Some(Unhealthy::Restart));
        assert_eq!(a.set[LABEL_RESTARTS], "100");
        r.config.insert(LABEL_RESTARTS.into(), "100".into());
        let a = assess(&p, &r, 110);
        assert_eq!(a.unhealthy, Some(Unhealthy::Restart));
        assert_eq!(a.set["boot.autorestart"], "false");
        r.config.extend(a.set);
        let a = assess(&p, &r, 120);
        let msg =
            "web-1 left stopped: restarted 2 times within 60 s (restart_policy.max_attempts 2)";
        assert_eq!(a.unhealthy, Some(Unhealthy::Stop(msg.into())));
        assert_eq!(a.set[LABEL_GAVE_UP], msg);
        // Stopped so, it is left stopped.
        r.config.extend(a.set);
        r.running = false;
        r.unhealthy = false;
        assert_eq!(
            assess(&p, &r, 130).stopped,
            Some(Stopped::Leave(msg.into()))
        );
    }

    #[test]
    fn an_unhealthy_replica_of_a_service_that_never_restarts_is_stopped() {
        let p = RestartPolicy {
            condition: RestartCondition::None,
            ..policy(0, 0, 0)
        };
        let mut r = replica(true, &[]);
        r.unhealthy = true;
        assert!(matches!(
            assess(&p, &r, 100).unhealthy,
            Some(Unhealthy::Stop(_))
        ));
    }

    proptest! {
        /// Whatever happens to a replica (it exits and Incus restarts it while
        /// `boot.autorestart` is on, it exits and stays stopped, it turns unhealthy), the
        /// restarts (Incus's, `watch`'s starts and restarts) never exceed `max_attempts`
        /// within any window, provided `watch` sees each restart before the next exit.
        #[test]
        fn never_more_than_max_attempts_restarts_within_any_window(
            max in 1u64..5,
            window in 1u64..120,
            delay in 0u64..10,
            gaps in proptest::collection::vec(0u64..40, 1..40),
            kinds in proptest::collection::vec(0u8..3, 40),
        ) {
            let p = policy(max, window, delay);
            let mut r = replica(true, &[("boot.autorestart", "true")]);
            let mut now = 1000;
            let mut restarts: Vec<u64> = Vec::new();
            for (i, gap) in gaps.iter().enumerate() {
                now += gap;
                if !r.running {
                    // watch looks again (a tick) until it starts it or leaves it.
                    let a = assess(&p, &r, now);
                    r.config.extend(a.set);
                    match a.stopped {
                        Some(Stopped::Start) => { r.running = true; r.stopped_since = None; restarts.push(now); }
                        Some(Stopped::StartAt(t)) => prop_assert!(t > now),
                        Some(Stopped::Leave(_)) => {}
                        None => prop_assert!(false, "a stopped replica needs a decision"),
                    }
                    continue;
                }
                let autorestart = r.config.get("boot.autorestart").map(String::as_str) == Some("true");
                match kinds[i] {
                    // It exits and Incus restarts it.
                    0 if autorestart => {
                        r.incus_restarts = vec![now];
                        restarts.push(now);
                    }
                    // It turns unhealthy.
                    2 => r.unhealthy = true,
                    // It exits and stays stopped.
                    _ => {
                        r.running = false;
                        r.stopped_since = Some(now);
                    }
                }
                let a = assess(&p, &r, now);
                r.incus_restarts.clear();
                r.unhealthy = false;
                r.config.extend(a.set);
                match a.unhealthy {
                    Some(Unhealthy::Restart) => restarts.push(now),
                    Some(Unhealthy::Stop(_)) => { r.running = false; r.stopped_since = Some(now); }
                    None => {}
                }
                if let Some(Stopped::Start) = a.stopped {
                    r.running = true;
                    r.stopped_since = None;
                    restarts.push(now);
                }
            }
            for &t in &restarts {
                let n = restarts.iter().filter(|&&u| u >= t && u < t + window).count() as u64;
                prop_assert!(n <= max, "{n} restarts within {window} s from {t}: {restarts:?}");
            }
        }
    }
}
