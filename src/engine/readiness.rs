//! Readiness: the one module through which every wait for a replica's health goes (issue 18).
//!
//! - [`probe`] runs a service's healthcheck once inside an instance through the Incus exec
//!   API (no sidecar, no daemon, no local state), bounded by its timeout and its output read
//!   bounded (the container decides what it prints);
//! - [`Probing`] is one replica's probing as Docker does it: the first probe one
//!   `start_interval` (within the start period) or `interval` after the replica's start, each
//!   next one that long after the previous, failures within the start period not counted
//!   (the counting itself is `ic_core::health::Tracker`, pure).
//!
//! Its users, each with its own loop around the same [`Probing`]: the health gate of
//! `depends_on` conditions and `up --wait` (`health::Gate`), the rollout's new replicas
//! (`rollout::observe`, and so the moves of `node drain` and `node restore --rebalance`,
//! which are start-first rollouts), and `watch`'s probe loop (`restart_policy` on an
//! unhealthy replica). `ps` shows one probe of each replica (`health::snapshot`).
//!
//! The time an instance last started is Incus's `last_used_at` (set on every start), so a
//! `start_period` survives a restart of incus-compose itself ([`started_at`]).

use std::time::Duration;

use ic_core::health::{Check, Health, Tracker};
use ic_incus::{Client, ExecRequest};
use tokio::time::Instant;

/// How often a probe is tried when Incus cannot run it (not when the check fails).
const EXEC_ATTEMPTS: usize = 3;
/// How much of a probe's output is kept (its end, like Docker keeps its last 4 KiB).
const OUTPUT_KEEP: usize = 400;
/// The most bytes of a probe's stdout and of its stderr read (the container decides how
/// much it prints; the rest is left unread and the probe's output says so).
pub const OUTPUT_READ_LIMIT: usize = 64 << 10;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub ok: bool,
    /// What happened: `exit 1: <output>`, `timed out after 2 s`, or the exec error.
    pub output: String,
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    if s.len() <= OUTPUT_KEEP {
        return s.to_string();
    }
    let mut start = s.len() - OUTPUT_KEEP;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// Runs `check` once in `instance`, bounded by its timeout. A command still running at the
/// timeout is a failure; its exec session is closed (Incus does not kill it). When Incus
/// could not run the command at all (e.g. an exec websocket reset), that is not the check's
/// verdict: it is tried again, up to [`EXEC_ATTEMPTS`] times within the timeout.
pub async fn probe(client: &Client, instance: &str, check: &Check) -> Probe {
    let req = ExecRequest::new(check.argv.iter().cloned());
    let deadline = Instant::now() + check.timeout;
    let timed_out = || Probe {
        ok: false,
        output: format!("timed out after {} s", check.timeout.as_secs_f64()),
    };
    let mut error = None;
    for _ in 0..EXEC_ATTEMPTS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(
            left,
            client.exec_output_bounded(instance, &req, OUTPUT_READ_LIMIT),
        )
        .await
        {
            Err(_) => return timed_out(),
            Ok(Err(e)) => {
                error = Some(e);
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
            Ok(Ok(out)) => {
                let mut text = tail(&out.stdout);
                let err = tail(&out.stderr);
                if !err.is_empty() {
                    if !text.is_empty() {
                        text.push_str(" | ");
                    }
                    text.push_str(&err);
                }
                if out.truncated {
                    text.push_str(&format!(
                        " (output cut: only its first {OUTPUT_READ_LIMIT} bytes were read)"
                    ));
                }
                return Probe {
                    ok: out.exit_code == 0,
                    output: if text.is_empty() {
                        format!("exit {} (no output)", out.exit_code)
                    } else {
                        format!("exit {}: {text}", out.exit_code)
                    },
                };
            }
        }
    }
    match error {
        Some(e) => Probe {
            ok: false,
            output: format!("could not run the check: {e}"),
        },
        None => timed_out(),
    }
}

/// Time since an instance last started, from Incus's `last_used_at` (RFC 3339). Zero when
/// it cannot be read, or lies in the future (clock skew).
pub fn since_start(last_used_at: &str) -> Duration {
    let Ok(at) =
        time::OffsetDateTime::parse(last_used_at, &time::format_description::well_known::Rfc3339)
    else {
        return Duration::ZERO;
    };
    let elapsed = time::OffsetDateTime::now_utc() - at;
    Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
}

/// When an instance last started, from its `last_used_at` (now when it cannot be read).
pub fn started_at(last_used_at: &str) -> Instant {
    let now = Instant::now();
    now.checked_sub(since_start(last_used_at)).unwrap_or(now)
}

/// One replica's probing (see the module documentation).
#[derive(Debug, Clone)]
pub struct Probing {
    check: Check,
    tracker: Tracker,
    started: Instant,
    next: Instant,
    last: Option<Probe>,
}

impl Probing {
    /// The probing of a replica that started at `started` ([`started_at`]): its first probe
    /// is due one `start_interval` (or, without a start period, one `interval`) after it.
    pub fn new(check: Check, started: Instant) -> Probing {
        let tracker = Tracker::new(check.clone());
        Probing {
            next: started + tracker.next_delay(Duration::ZERO),
            check,
            tracker,
            started,
            last: None,
        }
    }

    pub fn status(&self) -> Health {
        self.tracker.status()
    }

    /// Consecutive failures counted.
    pub fn failing_streak(&self) -> u32 {
        self.tracker.failing_streak()
    }

    /// When the next probe is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// The last probe's result.
    pub fn last(&self) -> Option<&Probe> {
        self.last.as_ref()
    }

    /// The last probe's output for a message (`last probe: ...`, or `not probed yet`).
    pub fn last_text(&self) -> String {
        match &self.last {
            Some(p) => format!("last probe: {}", p.output),
            None => "not probed yet".to_string(),
        }
    }

    /// Probes `name` once if the probe is due (else does nothing and returns `None`),
    /// counts the result and schedules the next probe. Returns the status after it.
    pub async fn poll(&mut self, client: &Client, name: &str) -> Option<Health> {
        if Instant::now() < self.next {
            return None;
        }
        let p = probe(client, name, &self.check).await;
        Some(self.record(p, Instant::now()))
    }

    /// Counts a probe that finished at `at` and schedules the next one.
    fn record(&mut self, p: Probe, at: Instant) -> Health {
        let since = at.saturating_duration_since(self.started);
        let status = self.tracker.record(since, p.ok);
        self.next = at + self.tracker.next_delay(since);
        self.last = Some(p);
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_start_reads_incus_timestamps_and_is_zero_when_it_cannot() {
        let five_ago = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
        let text = five_ago
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
        let d = since_start(&text);
        assert!(
            d >= Duration::from_secs(5) && d < Duration::from_secs(60),
            "{d:?}"
        );
        // Incus's form: nanoseconds and a Z.
        assert!(since_start("2020-01-02T03:04:05.123456789Z") > Duration::from_secs(86400));
        assert!(since_start("0001-01-01T00:00:00Z") > Duration::ZERO);
        assert_eq!(since_start("not a time"), Duration::ZERO);
        assert_eq!(since_start("2999-01-01T00:00:00Z"), Duration::ZERO);
    }

    #[test]
    fn probe_output_keeps_the_end_of_long_output() {
        assert_eq!(tail(b"  ok\n"), "ok");
        let long = "é".repeat(OUTPUT_KEEP);
        let t = tail(long.as_bytes());
        assert!(t.starts_with("..."));
        assert!(t.len() <= OUTPUT_KEEP + 3);
        assert!(t.ends_with('é'));
    }

    fn check(interval: u64, start_period: u64, start_interval: u64, retries: u32) -> Check {
        Check {
            argv: vec!["true".into()],
            interval: Duration::from_secs(interval),
            timeout: Duration::from_secs(1),
            start_period: Duration::from_secs(start_period),
            start_interval: Duration::from_secs(start_interval),
            retries,
        }
    }

    fn result(ok: bool) -> Probe {
        Probe {
            ok,
            output: if ok { "exit 0" } else { "exit 1" }.into(),
        }
    }

    #[test]
    fn probing_is_due_as_docker_probes_and_counts_failures_only_after_the_start_period() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        // Within a start period of 10 s the first probe is due one start_interval (1 s) after
        // the start; failures there are not counted, and the next is 1 s later.
        let mut p = Probing::new(check(30, 10, 1, 2), t0);
        assert_eq!(p.due(), s(1));
        assert_eq!(p.last_text(), "not probed yet");
        assert_eq!(p.record(result(false), s(1)), Health::Starting);
        assert_eq!(p.failing_streak(), 0);
        assert_eq!(p.due(), s(2));
        // After the start period, each failure counts and the next is one interval later.
        assert_eq!(p.record(result(false), s(11)), Health::Starting);
        assert_eq!(p.due(), s(41));
        assert_eq!(p.record(result(false), s(41)), Health::Unhealthy);
        assert_eq!(p.last_text(), "last probe: exit 1");
        // One success makes it healthy again.
        assert_eq!(p.record(result(true), s(71)), Health::Healthy);
        assert_eq!(p.failing_streak(), 0);
        // Without a start period, the first probe is one interval after the start.
        let p = Probing::new(check(5, 0, 1, 3), t0);
        assert_eq!(p.due(), s(5));
        // A replica that started long ago is due at once.
        let long_ago = started_at("2020-01-02T03:04:05Z");
        assert!(Probing::new(check(5, 0, 1, 3), long_ago).due() <= Instant::now());
    }
}
