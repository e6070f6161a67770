//! Progress of `execute`: on a terminal, one spinner per Incus operation in flight (what it
//! does: "create web-1 (web, image testapp/v1) on node2"), replaced by its result line when it
//! ends; otherwise (pipes, CI, tests) only the result lines, one per object, as they finish.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Result lines go to stderr instead of stdout (set once by `run`, whose stdout is the
/// command's).
static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Result lines start with the time (`watch`, a log), set once by `watch`.
static STAMPED: AtomicBool = AtomicBool::new(false);

/// From now on, result lines go to stderr.
pub fn lines_to_stderr() {
    TO_STDERR.store(true, Ordering::Relaxed);
}

/// From now on, result lines start with the time to the second (none when they go to the
/// systemd journal, which stamps them itself), as `watch`'s own lines.
pub fn stamp_lines() {
    STAMPED.store(true, Ordering::Relaxed);
}

/// `line`, with the time in front after [`stamp_lines`].
fn stamped(line: &str) -> std::borrow::Cow<'_, str> {
    if !STAMPED.load(Ordering::Relaxed) {
        return line.into();
    }
    let prefix = if TO_STDERR.load(Ordering::Relaxed) {
        super::timefmt::stderr_line_prefix()
    } else {
        super::timefmt::line_prefix()
    };
    format!("{prefix}{line}").into()
}

/// A line about progress: stdout, or stderr after [`lines_to_stderr`].
pub fn say(line: &str) {
    let line = stamped(line);
    if TO_STDERR.load(Ordering::Relaxed) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Where result lines and spinners go. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    bars: Option<MultiProgress>,
    /// One bar per service whose rolling update runs (terminal only).
    rollouts: Arc<Mutex<BTreeMap<String, Rollout>>>,
}

/// A service's rolling update on a terminal: replicas updated of N, batch k of n, the wait.
struct Rollout {
    bar: ProgressBar,
    batches: usize,
    batch: usize,
}

impl Progress {
    /// Spinners when both stdout and stderr are terminals, plain lines otherwise.
    pub fn new() -> Progress {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Progress {
            bars: tty.then(MultiProgress::new),
            rollouts: Arc::default(),
        }
    }

    /// A spinner for an operation that starts now (none without a terminal).
    pub fn start(&self, what: String) -> Option<ProgressBar> {
        let bars = self.bars.as_ref()?;
        let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let pb = bars.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_message(what),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        Some(pb)
    }

    /// A result line, printed above the spinners still running.
    pub fn line(&self, line: &str) {
        let line = &*stamped(line);
        match &self.bars {
            Some(bars) if bars.println(line).is_ok() => {}
            _ if TO_STDERR.load(Ordering::Relaxed) => eprintln!("{line}"),
            _ => println!("{line}"),
        }
    }

    /// The operation behind `pb` ended: its spinner goes away.
    pub fn done(pb: Option<ProgressBar>) {
        if let Some(pb) = pb {
            pb.finish_and_clear();
        }
    }
}

/// Per-service rolling update progress (as docker's `--detach=false` shows it): on a terminal a
/// bar per service — `web  [=====>    ] 2/4 updated · batch 2 of 4 · monitor 3 s` — and
/// nothing more otherwise (the rollout's own lines say it plainly).
impl Progress {
    /// `service`'s rolling update of `total` replicas, `parallelism` at a time (0: all) begins.
    pub fn rollout_started(&self, service: &str, total: usize, parallelism: usize) {
        let Some(bars) = &self.bars else { return };
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:24.cyan/blue}] {pos}/{len} updated · {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = bars.add(
            ProgressBar::new(total as u64)
                .with_style(style)
                .with_prefix(service.to_string())
                .with_message("starting"),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        let batches = rollout_batches(total, parallelism);
        if let Ok(mut r) = self.rollouts.lock() {
            r.insert(
                service.to_string(),
                Rollout {
                    bar,
                    batches,
                    batch: 0,
                },
            );
        }
    }

    /// Batch `k` of `service`'s update (or rollback) starts.
    pub fn batch_started(&self, service: &str, k: usize) {
        self.with_rollout(service, |r| {
            r.batch = k;
            let msg = format!("batch {k} of {} · replacing", r.batches.max(k));
            r.bar.set_message(msg);
        });
    }

    /// `service`'s rollout waits `left` for `what` (`health`: its new replicas to run
    /// healthy; `delay`: between batches; `monitor`: watching the last batch).
    pub fn rollout_wait(&self, service: &str, what: &str, left: Duration) {
        self.with_rollout(service, |r| {
            let msg = format!(
                "batch {} of {} · {what} {} s",
                r.batch,
                r.batches.max(r.batch),
                left.as_secs_f64().ceil()
            );
            r.bar.set_message(msg);
        });
    }

    /// A replica of `service` was replaced.
    pub fn replica_done(&self, service: &str) {
        self.with_rollout(service, |r| r.bar.inc(1));
    }

    /// `service`'s rollout ended: its bar goes (its result line says how it ended).
    pub fn rollout_ended(&self, service: &str) {
        let gone = self
            .rollouts
            .lock()
            .ok()
            .and_then(|mut r| r.remove(service));
        if let Some(r) = gone {
            r.bar.finish_and_clear();
        }
    }

    fn with_rollout(&self, service: &str, f: impl FnOnce(&mut Rollout)) {
        if let Ok(mut r) = self.rollouts.lock()
            && let Some(r) = r.get_mut(service)
        {
            f(r);
        }
    }
}

/// How many batches a rolling update of `total` replicas takes, `parallelism` at a time (0:
/// all at once).
pub fn rollout_batches(total: usize, parallelism: usize) -> usize {
    if parallelism == 0 || total == 0 {
        1
    } else {
        total.div_ceil(parallelism)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_count_replicas_over_parallelism() {
        assert_eq!(rollout_batches(4, 1), 4);
        assert_eq!(rollout_batches(5, 2), 3);
        assert_eq!(rollout_batches(3, 0), 1);
        assert_eq!(rollout_batches(0, 2), 1);
    }

    #[test]
    fn without_a_terminal_the_rollout_calls_draw_nothing() {
        let p = Progress {
            bars: None,
            rollouts: Arc::default(),
        };
        p.rollout_started("web", 3, 1);
        p.batch_started("web", 1);
        p.rollout_wait("web", "delay", Duration::from_secs(2));
        p.replica_done("web");
        p.rollout_ended("web");
        assert!(p.rollouts.lock().unwrap().is_empty());
    }
}
