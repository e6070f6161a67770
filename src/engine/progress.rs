//! Progress of `execute`: on a terminal, one spinner per Incus operation in flight (what it
//! does: "create web-1 (web, image testapp/v1) on node2"), replaced by its result line when it
//! ends; otherwise (pipes, CI, tests) only the result lines, one per object, as they finish.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Result lines go to stderr instead of stdout (set once by `run`, whose stdout is the
/// command's).
static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// From now on, result lines go to stderr.
pub fn lines_to_stderr() {
    TO_STDERR.store(true, Ordering::Relaxed);
}

/// A line about progress: stdout, or stderr after [`lines_to_stderr`].
pub fn say(line: &str) {
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
}

impl Progress {
    /// Spinners when both stdout and stderr are terminals, plain lines otherwise.
    pub fn new() -> Progress {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Progress {
            bars: tty.then(MultiProgress::new),
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

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}
