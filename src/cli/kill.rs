//! `incus-compose kill [-s SIGNAL] [SERVICE...]`: send a signal to the main process (PID 1) of
//! every running replica.
//!
//! - SIGKILL (the default, as docker compose) is Incus's forced stop: the replica is killed and
//!   stops, as a `docker kill`ed container does (a forced stop is not a failure, so Incus does
//!   not restart it).
//! - Any other signal is sent from inside the instance (`kill -N 1` through exec). As with
//!   docker, the kernel delivers it to PID 1 only when that process handles it.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Args;
use ic_incus::{ExecRequest, InstanceStatePut};

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::select;

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send: a name (KILL, SIGKILL) or a number
    #[arg(short = 's', long, default_value = "SIGKILL")]
    pub signal: String,
    /// Services whose replicas get the signal (default: all)
    pub services: Vec<String>,
}

/// Linux signal names and numbers (x86-64 and arm64 agree on these).
const SIGNALS: [(&str, u8); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// `KILL`, `SIGKILL`, `sigkill` or `9` -> ("SIGKILL", 9).
pub(super) fn parse_signal(text: &str) -> anyhow::Result<(String, u8)> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u8>() {
        return SIGNALS
            .iter()
            .find(|(_, k)| *k == n)
            .map(|(name, k)| (format!("SIG{name}"), *k))
            .ok_or_else(|| anyhow!("-s {text:?}: no such signal number (1 to 31)"));
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, k)| (format!("SIG{n}"), *k))
        .ok_or_else(|| anyhow!("-s {text:?}: not a signal name (e.g. SIGTERM, HUP, 9)"))
}

pub fn run(global: &GlobalArgs, args: &KillArgs) -> anyhow::Result<ExitCode> {
    let (name, number) = parse_signal(&args.signal)?;
    let ctx = Context::new(global)?;
    block_on(async {
        let mut list = select::instances(&ctx, &args.services, false).await?;
        list.retain(|i| i.is_running());
        if list.is_empty() {
            println!("No running replicas to kill");
            return Ok(ExitCode::SUCCESS);
        }
        let client = select::client(&ctx);
        let code = select::each(&list, |i| {
            let client = client.clone();
            let name = name.clone();
            async move {
                if number == 9 {
                    client
                        .change_instance_state(&i.name, &InstanceStatePut::new("stop", -1, true))
                        .await?
                        .wait()
                        .await?;
                } else {
                    let req =
                        ExecRequest::new(["kill".to_string(), format!("-{number}"), "1".into()]);
                    let out = client.exec_output(&i.name, &req, &[]).await?;
                    // 128+N: `kill` itself was killed, the signal having made PID 1 shut the
                    // instance down (busybox init powers off on SIGUSR2): delivered.
                    if out.exit_code != 0 && out.exit_code < 128 {
                        bail!(
                            "`kill -{number} 1` failed (exit code {}): {}",
                            out.exit_code,
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
                Ok(Some(format!("[.] {} killed ({name})", i.name)))
            }
        })
        .await;
        Ok(code)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_read_by_name_with_or_without_sig_and_by_number() {
        assert_eq!(parse_signal("KILL").unwrap(), ("SIGKILL".into(), 9));
        assert_eq!(parse_signal("sigterm").unwrap(), ("SIGTERM".into(), 15));
        assert_eq!(parse_signal("1").unwrap(), ("SIGHUP".into(), 1));
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("64").is_err());
    }
}
