//! `incus-compose wait SERVICE...`: block until every replica of the services has stopped,
//! as `docker compose wait` blocks until their containers exit. Exit status: the first
//! replica's exit status when Incus knows it (a system container's PID 1 exit status is not
//! reported: 0 for a stop, 1 when Incus reports the instance in error).
//! `--down-project` stops the whole project once the first of them stopped.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::select;

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Stop the project's other replicas once the first one waited for stopped
    #[arg(long)]
    pub down_project: bool,
    /// The services to wait for
    #[arg(required = true)]
    pub services: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &WaitArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    block_on(async {
        let list = select::instances(&ctx, &args.services, false).await?;
        if list.is_empty() {
            anyhow::bail!(
                "no replicas of {} to wait for; start them with `incus-compose up -d`",
                args.services.join(", ")
            );
        }
        let client = select::client(&ctx);
        let mut code = None;
        let mut left: Vec<String> = list.iter().map(|i| i.name.clone()).collect();
        // A replica counts as stopped once two reads half a second apart say so: while its
        // init exits, Incus 6.0 on a cluster can report it stopped, then running again for a
        // moment.
        let mut stopped_once: std::collections::BTreeSet<String> = Default::default();
        // Incus answers a state read during a stop with an error now and then ("Invalid
        // PID"): only errors that last fail the wait.
        let mut errors = 0;
        while !left.is_empty() {
            let mut still = Vec::new();
            for name in left {
                // The instance, not its state: reading the state of an instance whose init just
                // exited fails now and then on Incus 7.0 ("Invalid PID -1").
                match client.instance(&name).await {
                    Ok(s) if s.status.eq_ignore_ascii_case("stopped") => {
                        if stopped_once.insert(name.clone()) {
                            still.push(name);
                        } else {
                            code.get_or_insert(0u8);
                        }
                    }
                    Ok(s) if s.status.eq_ignore_ascii_case("error") => {
                        code.get_or_insert(1u8);
                    }
                    // Removed meanwhile: gone as a stop.
                    Err(e) if e.is_not_found() => {
                        code.get_or_insert(0u8);
                    }
                    Ok(_) => {
                        stopped_once.remove(&name);
                        still.push(name);
                    }
                    Err(e) => {
                        errors += 1;
                        if errors > 20 {
                            return Err(e.into());
                        }
                        still.push(name);
                    }
                }
            }
            if args.down_project && code.is_some() {
                break;
            }
            left = still;
            if !left.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if args.down_project {
            let all = select::instances(&ctx, &[], false).await?;
            let running: Vec<_> = all.into_iter().filter(|i| i.is_running()).collect();
            select::each(&running, |i| {
                let client = client.clone();
                async move {
                    client.stop_instance(&i.name, 10, false).await?;
                    Ok(Some(format!("[.] {} stopped", i.name)))
                }
            })
            .await;
        }
        let code = code.unwrap_or(0);
        println!("{code}");
        Ok(ExitCode::from(code))
    })?
}
