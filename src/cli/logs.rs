//! `incus-compose logs`: what each replica's first process printed (its console), one line at
//! a time, prefixed with the replica name (`web-1  | line`).
//!
//! - Without `-f`: the console log of each replica. Incus 6.0 hands out a running container's
//!   console ring buffer and clears it, so each call shows what was printed since the previous
//!   read (by `logs` or `incus console --show-log`); a stopped container's log is its last
//!   run's output and is not cleared.
//! - With `-f`: every running replica's console is attached at once (the console websocket,
//!   `POST /1.0/instances/NAME/console`), then its backlog is read as above and printed, then
//!   new output as it comes; what the backlog and the live stream both hold is printed once.
//!   A replica whose console closes (it stopped) ends its stream; `logs -f` returns when all
//!   have ended, or on Ctrl-C/SIGTERM (after detaching cleanly). Incus lets one client at a
//!   time attach to a console: while `incus console` or another `logs -f` holds it, that
//!   replica is not followed (a warning says so).
//! - `-t`: Incus keeps no timestamps for console output; the timestamp is when incus-compose
//!   received the line (for the backlog: when it was read).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ic_incus::{Client, ConsoleSession, Instance};
use time::format_description::well_known::Rfc3339;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::GlobalArgs;
use super::project::{Context, block_on};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following new output (also `-f` after `logs`)
    #[arg(long)]
    pub follow: bool,
    /// Only the last N lines of each replica (of its backlog, with -f)
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Prefix every line with the time incus-compose received it (RFC 3339, UTC)
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Print lines without the `name | ` prefix
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Services to show (default: all)
    pub services: Vec<String>,
}

/// `-f` is the global `--file`; after `logs` it means `--follow`, and after `rm` `--force`,
/// as with docker compose (`incus-compose -f x.yaml logs -f`). Rewrite `-f` (also inside
/// `-tf`) after those subcommands, up to `--`, before clap sees the arguments.
pub fn rewrite_follow<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut args = args.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    let mut in_logs = false;
    let mut long = "--follow";
    let mut found_subcommand = false;
    let mut skip_value = false;
    for arg in args {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if !found_subcommand {
            if skip_value {
                skip_value = false;
            } else if super::shared::GLOBAL_VALUE_OPTIONS.contains(&text) {
                skip_value = true;
            } else if !text.starts_with('-') {
                found_subcommand = true;
                in_logs = text == "logs" || text == "rm";
                if text == "rm" {
                    long = "--force";
                }
            }
            out.push(arg);
            continue;
        }
        if in_logs && text == "--" {
            in_logs = false;
        }
        let short_cluster = text.len() > 1
            && text.starts_with('-')
            && !text.starts_with("--")
            && text[1..].chars().all(|c| c.is_ascii_alphabetic());
        if in_logs && short_cluster && text.contains('f') {
            out.push(long.into());
            let rest: String = text[1..].chars().filter(|&c| c != 'f').collect();
            if !rest.is_empty() {
                out.push(format!("-{rest}").into());
            }
        } else {
            out.push(arg);
        }
    }
    out
}

/// How lines are printed.
#[derive(Debug, Clone)]
struct Format {
    width: usize,
    prefix: bool,
    timestamps: bool,
}

impl Format {
    /// Print one line; false once stdout is gone (e.g. `| head`), so callers stop.
    fn print(&self, name: &str, line: &str) -> bool {
        let mut s = String::new();
        if self.prefix {
            s.push_str(&format!("{name:<width$} | ", width = self.width));
        }
        if self.timestamps {
            let now = time::OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default();
            s.push_str(&now);
            s.push(' ');
        }
        s.push_str(line);
        s.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(s.as_bytes())
            .and_then(|_| out.flush())
            .is_ok()
    }
}

/// Console bytes as text without carriage returns (the console is a terminal: `\r\n`).
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\r', "")
}

/// The last `tail` lines of `text` (all when `None`).
fn last_lines(text: &str, tail: Option<usize>) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let from = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    lines[from..].to_vec()
}

/// How many leading bytes of `live` are already the end of `backlog` (both cleaned): the
/// longest suffix of `backlog` that is a prefix of `live`.
fn overlap(backlog: &str, live: &str) -> usize {
    let max = backlog.len().min(live.len());
    (1..=max)
        .rev()
        .find(|&k| {
            backlog.is_char_boundary(backlog.len() - k)
                && live.is_char_boundary(k)
                && backlog[backlog.len() - k..] == live[..k]
        })
        .unwrap_or(0)
}

/// Splits a byte stream into lines; keeps an unfinished line for later.
#[derive(Default)]
struct Lines {
    partial: String,
}

impl Lines {
    fn push(&mut self, text: &str) -> Vec<String> {
        self.partial.push_str(text);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            out.push(line.trim_end_matches('\n').to_string());
        }
        out
    }

    fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Print the backlog of one instance (non-follow mode, or a stopped instance).
async fn print_backlog(
    client: &Client,
    inst: &Instance,
    tail: Option<usize>,
    fmt: &Format,
) -> anyhow::Result<bool> {
    if tail == Some(0) {
        return Ok(true);
    }
    let log = client
        .instance_console_log(&inst.name)
        .await
        .with_context(|| format!("cannot read the console log of {}", inst.name))?;
    let text = clean(log.as_bytes());
    for line in last_lines(&text, tail) {
        if !fmt.print(&inst.name, line) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How long to keep deduplicating live output against the backlog after reading it (live
/// output may lag behind the ring buffer a little).
const SETTLE: Duration = Duration::from_millis(300);

/// Follow one running instance until its console closes or `stop` fires.
async fn follow_one(
    client: &Client,
    inst: &Instance,
    tail: Option<usize>,
    fmt: &Format,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut session: ConsoleSession = match client.console_attach(&inst.name, 500, 50).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "warning: cannot follow {} (its console may be attached elsewhere, e.g. by `incus console`): {e}",
                inst.name
            );
            print_backlog(client, inst, tail, fmt).await?;
            return Ok(());
        }
    };
    let mut lines = Lines::default();
    // Backlog, while collecting what the live stream delivers meanwhile.
    let mut early = String::new();
    let mut closed = false;
    let backlog = if tail == Some(0) {
        String::new()
    } else {
        let get = client.instance_console_log(&inst.name);
        tokio::pin!(get);
        loop {
            tokio::select! {
                log = &mut get => break clean(
                    log.with_context(|| format!("cannot read the console log of {}", inst.name))?
                        .as_bytes(),
                ),
                chunk = session.next_output(), if !closed => match chunk? {
                    Some(c) => early.push_str(&clean(&c)),
                    None => closed = true,
                },
            }
        }
    };
    if !backlog.is_empty() {
        let settle = tokio::time::sleep(SETTLE);
        tokio::pin!(settle);
        while !closed {
            tokio::select! {
                _ = &mut settle => break,
                chunk = session.next_output() => match chunk? {
                    Some(c) => early.push_str(&clean(&c)),
                    None => closed = true,
                },
            }
        }
        let skip = overlap(&backlog, &early);
        early.drain(..skip);
        // The backlog's unfinished last line continues in the live stream.
        let mut complete = lines.push(&backlog);
        let from = tail.map(|n| complete.len().saturating_sub(n)).unwrap_or(0);
        complete.drain(..from);
        for line in complete {
            if !fmt.print(&inst.name, &line) {
                session.close().await;
                return Ok(());
            }
        }
    }
    for line in lines.push(&early) {
        if !fmt.print(&inst.name, &line) {
            session.close().await;
            return Ok(());
        }
    }
    while !closed {
        tokio::select! {
            _ = stop.changed() => break,
            chunk = session.next_output() => match chunk? {
                Some(c) => {
                    for line in lines.push(&clean(&c)) {
                        if !fmt.print(&inst.name, &line) {
                            session.close().await;
                            return Ok(());
                        }
                    }
                }
                None => closed = true,
            },
        }
    }
    if let Some(rest) = lines.finish() {
        fmt.print(&inst.name, &rest);
    }
    session.close().await;
    Ok(())
}

pub fn run(global: &GlobalArgs, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new_or_by_name(global)?;
    ctx.check_services(&args.services)?;
    block_on(async {
        let client = ctx.base.with_project(&ctx.incus_project);
        let reached = super::select::reach(&ctx, &args.services, false).await?;
        reached.warn();
        // Replicas not reached: exit status 1 once the others are printed, as `docker service
        // logs` ends an incomplete log stream.
        let partial = !reached.unreached.is_empty();
        let instances = reached.instances;
        let fmt = Format {
            width: instances.iter().map(|i| i.name.len()).max().unwrap_or(0),
            prefix: !args.no_log_prefix,
            timestamps: args.timestamps,
        };
        if !args.follow {
            for i in &instances {
                if !print_backlog(&client, i, args.tail, &fmt).await? {
                    break;
                }
            }
            return Ok(if partial {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        // Stopped replicas: their log once. Running ones: followed together.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for i in instances {
            if !i.is_running() {
                print_backlog(&client, &i, args.tail, &fmt).await?;
                continue;
            }
            let (client, fmt, stop, tail) =
                (client.clone(), fmt.clone(), stop_rx.clone(), args.tail);
            tasks.spawn(async move {
                let r = follow_one(&client, &i, tail, &fmt, stop).await;
                (i.name, r)
            });
        }
        crate::engine::lock::signals_handled_elsewhere();
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch Ctrl-C")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut failed = false;
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some(Ok((_, Ok(())))) => {}
                    Some(Ok((name, Err(e)))) => {
                        eprintln!("error: following {name}: {e:#}");
                        failed = true;
                    }
                    Some(Err(e)) => {
                        eprintln!("error: a follower stopped: {e}");
                        failed = true;
                    }
                },
                _ = interrupt.recv() => { let _ = stop_tx.send(true); }
                _ = terminate.recv() => { let _ = stop_tx.send(true); }
            }
        }
        Ok(if failed || partial {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rewrite_follow(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn dash_f_after_logs_means_follow_and_before_it_means_file() {
        assert_eq!(
            rewrite(&["ic", "-f", "logs", "logs", "-f", "web"]),
            ["ic", "-f", "logs", "logs", "--follow", "web"]
        );
        assert_eq!(
            rewrite(&["ic", "logs", "-tf", "-n", "5"]),
            ["ic", "logs", "--follow", "-t", "-n", "5"]
        );
        assert_eq!(rewrite(&["ic", "up", "-f"]), ["ic", "up", "-f"]);
        assert_eq!(
            rewrite(&["ic", "-f", "c.yaml", "rm", "-sf"]),
            ["ic", "-f", "c.yaml", "rm", "--force", "-s"]
        );
        assert_eq!(
            rewrite(&["ic", "logs", "--", "-f"]),
            ["ic", "logs", "--", "-f"]
        );
    }

    #[test]
    fn overlap_finds_the_backlog_end_at_the_start_of_live_output() {
        assert_eq!(overlap("a\nb\nc\n", "b\nc\nd\n"), 4);
        assert_eq!(overlap("a\nb\n", "c\n"), 0);
        assert_eq!(overlap("", "c\n"), 0);
        assert_eq!(overlap("tick-1\ntick-2\n", "tick-2\n"), 7);
    }

    #[test]
    fn lines_are_cut_at_newlines_and_keep_the_unfinished_rest() {
        let mut l = Lines::default();
        assert_eq!(l.push("one\ntw"), vec!["one"]);
        assert_eq!(l.push("o\nthree"), vec!["two"]);
        assert_eq!(l.finish().as_deref(), Some("three"));
        assert_eq!(l.finish(), None);
    }

    #[test]
    fn console_text_loses_carriage_returns() {
        assert_eq!(clean(b"tick-1\r\r\r\ntick-2\r\n"), "tick-1\ntick-2\n");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", Some(2)), vec!["b", "c"]);
        assert_eq!(last_lines("a\nb\nc\n", None), vec!["a", "b", "c"]);
        assert!(last_lines("a\n", Some(0)).is_empty());
    }
}
