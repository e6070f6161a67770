//! `incus-compose top [SERVICES]`: the processes of each running replica, listed by `ps`
//! inside it (Incus has no process list API).
//!
//! Tries `ps -o pid,ppid,user,stat,vsz,rss,args` (busybox and procps both know these), then
//! plain `ps`, then a shell loop over `/proc` (PID and command line); if none works, says so
//! for that replica and goes on. Stopped replicas are skipped. All replicas are asked at once.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ic_incus::{Client, ExecRequest};

use super::GlobalArgs;
use super::project::{Context, block_on};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Services to show (default: all)
    pub services: Vec<String>,
}

/// Without `ps`: PID and command line of every process, from `/proc`.
const PROC_SCRIPT: &str = r#"echo "PID   COMMAND"; for d in /proc/[0-9]*; do p=${d#/proc/}; c=$(tr '\0' ' ' < $d/cmdline 2>/dev/null); [ -n "$c" ] || c="[$(cat $d/comm 2>/dev/null)]"; printf '%5s %s\n' "$p" "$c"; done"#;

/// The attempts, in order.
fn attempts() -> [Vec<&'static str>; 3] {
    [
        vec!["ps", "-o", "pid,ppid,user,stat,vsz,rss,args"],
        vec!["ps"],
        vec!["sh", "-c", PROC_SCRIPT],
    ]
}

/// The process table of one instance, or why there is none (`true`: Incus failed, not just
/// the programs inside).
async fn processes(client: &Client, name: &str) -> Result<String, (bool, String)> {
    let mut last = String::new();
    for cmd in attempts() {
        match client.exec_output(name, &ExecRequest::new(cmd), &[]).await {
            Ok(out) if out.exit_code == 0 => {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            Ok(out) => {
                last = format!(
                    "`{}` exited with {}: {}",
                    cmd_name(&out.stderr),
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            // The exec call itself failed: no point trying another program.
            Err(e) => return Err((true, format!("cannot run ps: {e}"))),
        }
    }
    Err((false, format!("no process list: {last}")))
}

fn cmd_name(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .split(':')
        .next()
        .unwrap_or("ps")
        .trim()
        .to_string()
}

pub fn run(global: &GlobalArgs, args: &TopArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    for s in &args.services {
        if !ctx.project.services.contains_key(s) {
            anyhow::bail!("no service {s:?} in compose project {}", ctx.project.name);
        }
    }
    block_on(async {
        let client = ctx.base.with_project(&ctx.incus_project);
        let reached = super::select::reach(&ctx, &args.services, false).await?;
        reached.warn();
        let instances = reached.instances;
        let mut tasks = tokio::task::JoinSet::new();
        let running: Vec<String> = instances
            .iter()
            .filter(|i| i.is_running())
            .map(|i| i.name.clone())
            .collect();
        for (n, name) in running.iter().enumerate() {
            let (client, name) = (client.clone(), name.clone());
            tasks.spawn(async move { (n, processes(&client, &name).await) });
        }
        let mut results: Vec<Option<Result<String, (bool, String)>>> = vec![None; running.len()];
        while let Some(done) = tasks.join_next().await {
            let (n, r) = done?;
            results[n] = Some(r);
        }
        let mut failed = false;
        let mut text = String::new();
        for (name, r) in running.iter().zip(results) {
            text.push_str(name);
            text.push('\n');
            match r {
                Some(Ok(table)) => text.push_str(&table),
                Some(Err((fatal, why))) => {
                    failed |= fatal;
                    text.push_str(&format!("({why})\n"));
                }
                None => {
                    failed = true;
                    text.push_str("(no answer)\n");
                }
            }
            text.push('\n');
        }
        // A closed stdout (`| head`) is not an error worth a panic.
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
        // Replicas not reached: exit status 1 after the others, as `docker service logs`.
        Ok(if failed || !reached.unreached.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })?
}
