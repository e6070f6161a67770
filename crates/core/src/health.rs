//! Healthchecks, the pure part: a compose `healthcheck` as a [`Check`] (the argv to run in
//! the instance and its timings, with Docker's defaults) and the [`Tracker`] that turns probe
//! results into a health status the way Docker counts them. No I/O, no clock: times are
//! durations since the instance last started, given by the caller.
//!
//! Docker's rules, kept here:
//! - a probe is a command; exit code 0 is a success, anything else (or running past
//!   `timeout`) a failure;
//! - the status starts as [`Health::Starting`]; one success makes it [`Health::Healthy`];
//!   `retries` consecutive failures make it [`Health::Unhealthy`]; a later success makes it
//!   healthy again;
//! - while the status is still `Starting` and the instance started less than `start_period`
//!   ago, failures are not counted, and probes run every `start_interval` instead of every
//!   `interval`.

use std::time::Duration;

use ic_compose::model::Healthcheck;

/// Docker's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Docker's default `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Docker's default `retries`.
pub const DEFAULT_RETRIES: u32 = 3;
/// Docker's default `start_interval`.
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);

/// A healthcheck that cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error(
        "service {service:?}: healthcheck.test {form} has no command; write e.g. test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1/\"] or a shell command string"
    )]
    EmptyTest { service: String, form: String },
    #[error(
        "service {service:?}: healthcheck.test must start with NONE, CMD or CMD-SHELL, not {first:?}"
    )]
    BadForm { service: String, first: String },
}

/// A runnable healthcheck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Program and arguments, run through Incus exec (`CMD-SHELL x` is `/bin/sh -c x`).
    pub argv: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that make the instance unhealthy (at least 1).
    pub retries: u32,
    pub start_period: Duration,
    pub start_interval: Duration,
}

fn nonzero(d: Option<ic_compose::model::Duration>, default: Duration) -> Duration {
    match d {
        Some(d) if !d.0.is_zero() => d.0,
        _ => default,
    }
}

/// The check a service's `healthcheck` describes; `None` when there is none to run:
/// no `healthcheck`, `disable: true`, `test: ["NONE"]`, or no `test` (an image's own
/// HEALTHCHECK does not exist for Incus images).
pub fn check_of(service: &str, h: Option<&Healthcheck>) -> Result<Option<Check>, HealthError> {
    let Some(h) = h else { return Ok(None) };
    if h.disable {
        return Ok(None);
    }
    let Some((form, rest)) = h.test.split_first() else {
        return Ok(None);
    };
    let empty = || HealthError::EmptyTest {
        service: service.to_string(),
        form: form.clone(),
    };
    let argv = match form.as_str() {
        "NONE" => return Ok(None),
        "CMD" => {
            if rest.first().is_none_or(|p| p.is_empty()) {
                return Err(empty());
            }
            rest.to_vec()
        }
        "CMD-SHELL" => {
            let script = rest.join(" ");
            if script.trim().is_empty() {
                return Err(empty());
            }
            vec!["/bin/sh".into(), "-c".into(), script]
        }
        other => {
            return Err(HealthError::BadForm {
                service: service.to_string(),
                first: other.to_string(),
            });
        }
    };
    Ok(Some(Check {
        argv,
        interval: nonzero(h.interval, DEFAULT_INTERVAL),
        timeout: nonzero(h.timeout, DEFAULT_TIMEOUT),
        retries: h
            .retries
            .map(|r| u32::try_from(r).unwrap_or(u32::MAX).max(1))
            .unwrap_or(DEFAULT_RETRIES),
        start_period: h.start_period.map(|d| d.0).unwrap_or_default(),
        start_interval: nonzero(h.start_interval, DEFAULT_START_INTERVAL),
    }))
}

/// Health of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The status after a single probe, with no history (what `ps` shows): healthy on success;
/// on failure `starting` while within `start_period` of the instance's start, else
/// `unhealthy`.
pub fn single_probe_status(check: &Check, since_start: Duration, ok: bool) -> Health {
    if ok {
        Health::Healthy
    } else if since_start < check.start_period {
        Health::Starting
    } else {
        Health::Unhealthy
    }
}

/// Docker's health state machine for one instance, fed with probe results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    check: Check,
    status: Health,
    failing_streak: u32,
}

impl Tracker {
    pub fn new(check: Check) -> Tracker {
        Tracker {
            check,
            status: Health::Starting,
            failing_streak: 0,
        }
    }

    pub fn status(&self) -> Health {
        self.status
    }

    /// Consecutive failures counted so far.
    pub fn failing_streak(&self) -> u32 {
        self.failing_streak
    }

    fn in_start_period(&self, since_start: Duration) -> bool {
        self.status == Health::Starting && since_start < self.check.start_period
    }

    /// Records a probe that finished `since_start` after the instance started.
    pub fn record(&mut self, since_start: Duration, ok: bool) -> Health {
        if ok {
            self.failing_streak = 0;
            self.status = Health::Healthy;
        } else if !self.in_start_period(since_start) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= self.check.retries {
                self.status = Health::Unhealthy;
            }
        }
        self.status
    }

    /// How long to wait before the next probe, `since_start` after the instance started:
    /// `start_interval` within the start period (while still starting), else `interval`.
    pub fn next_delay(&self, since_start: Duration) -> Duration {
        if self.in_start_period(since_start) {
            self.check.start_interval
        } else {
            self.check.interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_compose::model::Duration as D;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn hc(test: &[&str]) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn check(retries: u32, start_period: u64) -> Check {
        Check {
            argv: vec!["true".into()],
            interval: secs(10),
            timeout: secs(2),
            retries,
            start_period: secs(start_period),
            start_interval: secs(1),
        }
    }

    #[test]
    fn cmd_form_runs_its_words_as_argv() {
        let c = check_of(
            "web",
            Some(&hc(&["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"])),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.argv, ["wget", "-q", "-O-", "http://127.0.0.1/"]);
    }

    #[test]
    fn cmd_shell_form_and_string_form_run_through_sh() {
        // The loader turns a string into ["CMD-SHELL", string].
        let c = check_of("web", Some(&hc(&["CMD-SHELL", "test -f /x && echo ok"])))
            .unwrap()
            .unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "test -f /x && echo ok"]);
    }

    #[test]
    fn none_disable_and_missing_test_mean_no_check() {
        assert_eq!(check_of("a", None), Ok(None));
        assert_eq!(check_of("a", Some(&hc(&["NONE"]))), Ok(None));
        assert_eq!(check_of("a", Some(&hc(&[]))), Ok(None));
        let mut h = hc(&["CMD", "true"]);
        h.disable = true;
        assert_eq!(check_of("a", Some(&h)), Ok(None));
    }

    #[test]
    fn empty_or_unknown_forms_are_errors_naming_the_service() {
        let e = check_of("db", Some(&hc(&["CMD"]))).unwrap_err();
        assert!(e.to_string().contains("\"db\""), "{e}");
        assert!(check_of("db", Some(&hc(&["CMD-SHELL", "  "]))).is_err());
        let e = check_of("db", Some(&hc(&["RUN", "x"]))).unwrap_err();
        assert!(e.to_string().contains("RUN"), "{e}");
    }

    #[test]
    fn defaults_are_dockers_and_zero_durations_take_the_default() {
        let c = check_of("a", Some(&hc(&["CMD", "true"]))).unwrap().unwrap();
        assert_eq!(c.interval, secs(30));
        assert_eq!(c.timeout, secs(30));
        assert_eq!(c.retries, 3);
        assert_eq!(c.start_period, Duration::ZERO);
        assert_eq!(c.start_interval, secs(5));
        let mut h = hc(&["CMD", "true"]);
        h.interval = Some(D(Duration::ZERO));
        h.timeout = Some(D(secs(3)));
        h.retries = Some(0);
        h.start_period = Some(D(secs(20)));
        h.start_interval = Some(D(secs(2)));
        let c = check_of("a", Some(&h)).unwrap().unwrap();
        assert_eq!(
            (
                c.interval,
                c.timeout,
                c.retries,
                c.start_period,
                c.start_interval
            ),
            (secs(30), secs(3), 1, secs(20), secs(2))
        );
    }

    #[test]
    fn retries_consecutive_failures_make_it_unhealthy() {
        let mut t = Tracker::new(check(3, 0));
        assert_eq!(t.status(), Health::Starting);
        assert_eq!(t.record(secs(1), false), Health::Starting);
        assert_eq!(t.record(secs(2), false), Health::Starting);
        assert_eq!(t.record(secs(3), false), Health::Unhealthy);
        assert_eq!(t.failing_streak(), 3);
    }

    #[test]
    fn a_success_resets_the_streak_and_makes_it_healthy() {
        let mut t = Tracker::new(check(2, 0));
        t.record(secs(1), false);
        assert_eq!(t.record(secs(2), true), Health::Healthy);
        assert_eq!(t.failing_streak(), 0);
        assert_eq!(t.record(secs(3), false), Health::Healthy);
        assert_eq!(t.record(secs(4), false), Health::Unhealthy);
        assert_eq!(t.record(secs(5), true), Health::Healthy);
    }

    #[test]
    fn failures_within_start_period_do_not_count() {
        let mut t = Tracker::new(check(1, 10));
        for s in 0..10 {
            assert_eq!(t.record(secs(s), false), Health::Starting, "at {s}s");
        }
        assert_eq!(t.failing_streak(), 0);
        assert_eq!(t.record(secs(10), false), Health::Unhealthy);
    }

    #[test]
    fn start_period_ends_at_the_first_success() {
        let mut t = Tracker::new(check(1, 60));
        assert_eq!(t.record(secs(1), true), Health::Healthy);
        // Now failures count even though 60 s have not passed.
        assert_eq!(t.record(secs(2), false), Health::Unhealthy);
    }

    #[test]
    fn probes_run_every_start_interval_during_start_period_then_every_interval() {
        let mut t = Tracker::new(check(3, 10));
        assert_eq!(t.next_delay(secs(0)), secs(1));
        assert_eq!(t.next_delay(secs(9)), secs(1));
        assert_eq!(t.next_delay(secs(10)), secs(10));
        t.record(secs(2), true);
        assert_eq!(t.next_delay(secs(3)), secs(10));
    }

    #[test]
    fn a_single_probe_shows_starting_only_within_start_period() {
        let c = check(3, 10);
        assert_eq!(single_probe_status(&c, secs(1), true), Health::Healthy);
        assert_eq!(single_probe_status(&c, secs(1), false), Health::Starting);
        assert_eq!(single_probe_status(&c, secs(10), false), Health::Unhealthy);
    }
}
