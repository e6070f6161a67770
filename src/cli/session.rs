//! Running a command in an instance (`exec`, and `run` in its one-off instance), through the
//! Incus exec API: with a terminal on both stdin and stdout (and no `-T`) the local terminal
//! goes to raw mode (restored on exit, error or panic) and its size follows SIGWINCH; else
//! stdin is forwarded as it comes and stdout and stderr stay separate. SIGINT, SIGTERM and
//! SIGHUP go to the command; users and groups are numbers or names looked up in the
//! instance's `/etc/passwd` and `/etc/group`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use ic_incus::{Client, ExecIo, ExecRequest};
use rustix::termios::{self, OptionalActions, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// `KEY=VAL`, or `KEY` alone to pass the local value (skipped when unset, like docker).
pub(super) fn parse_env(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some(("", _)) => bail!("-e {item:?}: the variable name is empty"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(item) {
                    out.insert(item.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// One entry of a passwd-style file: (name, id, primary gid, home).
fn find_entry<'a>(
    file: &'a str,
    key: &str,
) -> Option<(&'a str, u32, Option<u32>, Option<&'a str>)> {
    file.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let id = f.get(2)?.parse().ok()?;
        if f[0] == key || f.get(2) == Some(&key) {
            Some((
                f[0],
                id,
                f.get(3).and_then(|g| g.parse().ok()),
                f.get(5).copied(),
            ))
        } else {
            None
        }
    })
}

/// The user and group to run as, and HOME/USER for a user found in `/etc/passwd`.
async fn resolve_user(
    client: &Client,
    instance: &str,
    spec: &str,
) -> anyhow::Result<(u32, Option<u32>, BTreeMap<String, String>)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    let needs_passwd = numeric(user).is_none() || group.is_none();
    let passwd = if needs_passwd {
        client
            .pull_file(instance, "/etc/passwd")
            .await
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    } else {
        None
    };
    let entry = passwd.as_deref().and_then(|p| find_entry(p, user));
    let uid = match (numeric(user), entry) {
        (Some(uid), _) => uid,
        (None, Some((_, uid, _, _))) => uid,
        (None, None) => {
            bail!("-u {spec:?}: no user {user:?} in {instance}'s /etc/passwd; give a numeric uid")
        }
    };
    let gid = match group {
        None => entry.and_then(|(_, _, g, _)| g),
        Some(g) => match numeric(g) {
            Some(gid) => Some(gid),
            None => {
                let groups = client
                    .pull_file(instance, "/etc/group")
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                match find_entry(&groups, g) {
                    Some((_, gid, _, _)) => Some(gid),
                    None => bail!(
                        "-u {spec:?}: no group {g:?} in {instance}'s /etc/group; give a numeric gid"
                    ),
                }
            }
        },
    };
    let mut env = BTreeMap::new();
    if let Some((name, _, _, home)) = entry {
        env.insert("USER".to_string(), name.to_string());
        if let Some(home) = home.filter(|h| !h.is_empty()) {
            env.insert("HOME".to_string(), home.to_string());
        }
    }
    Ok((uid, gid, env))
}

/// The local terminal in raw mode; the previous mode comes back when dropped (also when
/// unwinding from a panic).
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// The local terminal's size (columns, rows), from stdout.
fn window_size() -> Option<(u32, u32)> {
    let ws = termios::tcgetwinsize(std::io::stdout().as_fd()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// Read stdin on a thread of its own (a blocking read cannot be cancelled; the thread ends
/// with the process) and hand the chunks over; the channel closes at end of input.
fn stdin_channel() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Forward SIGINT, SIGTERM and SIGHUP to the command.
fn signal_channel() -> anyhow::Result<mpsc::Receiver<i32>> {
    let (tx, rx) = mpsc::channel(8);
    crate::engine::lock::signals_handled_elsewhere();
    for (kind, number) in [
        (SignalKind::interrupt(), 2),
        (SignalKind::terminate(), 15),
        (SignalKind::hangup(), 1),
    ] {
        let mut s = signal(kind).context("cannot install a signal handler")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(number).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// Terminal sizes on every SIGWINCH.
fn resize_channel() -> anyhow::Result<mpsc::Receiver<(u32, u32)>> {
    let (tx, rx) = mpsc::channel(8);
    let mut s = signal(SignalKind::window_change()).context("cannot watch window size changes")?;
    tokio::spawn(async move {
        while s.recv().await.is_some() {
            if let Some(size) = window_size()
                && tx.send(size).await.is_err()
            {
                break;
            }
        }
    });
    Ok(rx)
}

/// Map a command's exit code to ours (exit statuses are one byte).
pub(super) fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

/// A command to run in an instance (`exec`, and `run` in its one-off instance).
pub(super) struct Session<'a> {
    pub command: &'a [String],
    pub environment: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// uid[:gid] or name[:group]
    pub user: Option<String>,
    /// Give it a terminal (the caller checked that stdin and stdout are terminals).
    pub tty: bool,
    /// Start it and return at once (exit code 0).
    pub detach: bool,
}

/// Run `s.command` in `instance` (see the module docs); its exit code.
pub(super) async fn exec_in(
    client: &Client,
    instance: &str,
    s: Session<'_>,
) -> anyhow::Result<i32> {
    let Session {
        command,
        mut environment,
        workdir,
        user,
        tty,
        detach,
    } = s;
    let mut req = ExecRequest::new(command.iter().cloned());
    if let Some(spec) = &user {
        let (uid, gid, user_env) = resolve_user(client, instance, spec).await?;
        req.user = Some(uid);
        req.group = gid;
        for (k, v) in user_env {
            environment.entry(k).or_insert(v);
        }
    }
    if let Some(dir) = workdir {
        req.cwd = dir;
    }
    if detach {
        req.environment = environment;
        client
            .exec_detached(instance, &req)
            .await
            .with_context(|| format!("cannot start {command:?} in {instance}"))?;
        return Ok(0);
    }
    if tty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string());
        environment.entry("TERM".to_string()).or_insert(term);
        req.interactive = true;
        if let Some((w, h)) = window_size() {
            req.width = Some(w);
            req.height = Some(h);
        }
    }
    req.environment = environment;
    let mut io = ExecIo::output(tokio::io::stdout(), tokio::io::stderr());
    io.stdin = Some(stdin_channel());
    // Signals to incus-compose go to the command (so a SIGTERM ends the session normally
    // and the terminal mode is restored); with a terminal, Ctrl-C is just a key.
    io.signals = Some(signal_channel()?);
    let _raw = if tty {
        io.resize = Some(resize_channel()?);
        Some(RawMode::enable()?)
    } else {
        None
    };
    client
        .exec_stream(instance, &req, io)
        .await
        .with_context(|| format!("cannot run {command:?} in {instance}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_takes_pairs_and_local_values() {
        let env = parse_env(&["A=1".into(), "B=x=y".into(), "PATH".into()]).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "x=y");
        assert_eq!(env["PATH"], std::env::var("PATH").unwrap());
        assert!(parse_env(&["=1".into()]).is_err());
    }

    #[test]
    fn passwd_entries_are_found_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n";
        assert_eq!(
            find_entry(passwd, "www"),
            Some(("www", 33, Some(34), Some("/var/www")))
        );
        assert_eq!(find_entry(passwd, "33").map(|e| e.0), Some("www"));
        assert_eq!(find_entry(passwd, "nobody"), None);
    }

    #[test]
    fn exit_codes_pass_through_as_one_byte() {
        assert_eq!(exit_code(7), ExitCode::from(7));
        assert_eq!(exit_code(0), ExitCode::SUCCESS);
        assert_eq!(exit_code(130), ExitCode::from(130));
    }
}
