//! `incus-compose exec SERVICE COMMAND [ARGS...]`: run a command in one replica of a service,
//! through the Incus exec API.
//!
//! - With a terminal on both stdin and stdout (and no `-T`), the command gets a terminal:
//!   the local terminal goes to raw mode (restored on exit, error or panic), its size is
//!   sent at start and again on every SIGWINCH, and every key goes to the command.
//! - Otherwise stdin is forwarded as it comes (end of input closes the command's stdin) and
//!   stdout and stderr stay separate.
//! - SIGINT, SIGTERM and SIGHUP sent to incus-compose are forwarded to the command.
//! - The command's exit code is incus-compose's exit code.
//! - `--index N` picks replica N (the `web-N` instance). A global service has one replica per
//!   member, named after the member: `--index N` is the N-th of them in member name order.
//! - The service's `user:` and `working_dir:` apply unless `-u`/`-w` say otherwise; users and
//!   groups are numbers, or names looked up in the instance's `/etc/passwd` and `/etc/group`.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use ic_compose::model::DeployMode;

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::session::{Session, exec_in, exit_code, parse_env};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Start the command and return at once (its output is discarded)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Do not allocate a terminal (the default when stdin or stdout is not a terminal)
    #[arg(short = 'T', long = "no-TTY", visible_alias = "no-tty")]
    pub no_tty: bool,
    /// Keep stdin open (always the case; accepted for docker compose compatibility)
    #[arg(short = 'i', long, hide = true)]
    pub interactive: bool,
    /// Set an environment variable (KEY=VAL, or KEY to pass the local value; repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory of the command
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user: uid[:gid] or name[:group]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Which replica: N for `SERVICE-N`; for a global service the N-th replica in member
    /// name order
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub index: usize,
    /// The service
    pub service: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    let Some(service) = ctx.project.services.get(&args.service) else {
        let known: Vec<&str> = ctx.project.services.keys().map(String::as_str).collect();
        bail!(
            "no service {:?} in compose project {} (services: {})",
            args.service,
            ctx.project.name,
            known.join(", ")
        );
    };
    let is_global = service
        .deploy
        .as_ref()
        .is_some_and(|d| d.mode == DeployMode::Global);
    let tty = !args.no_tty
        && !args.detach
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let environment = parse_env(&args.env)?;
    let workdir = args.workdir.clone().or_else(|| service.working_dir.clone());
    let user = args.user.clone().or_else(|| service.user.clone());
    let client = ctx.base.with_project(&ctx.incus_project);

    let code = block_on(async {
        let instances = super::shared::project_instances(&client, &ctx.project.name, &[]).await?;
        let instance =
            super::shared::pick_replica(&instances, &args.service, args.index, is_global)?;
        if instance.status.eq_ignore_ascii_case("frozen") {
            bail!(
                "{} is paused; resume it with `incus-compose unpause {}`",
                instance.name,
                args.service
            );
        }
        if !instance.is_running() {
            bail!(
                "{} is not running ({}); start it with `incus-compose start {}`",
                instance.name,
                instance.status,
                args.service
            );
        }
        let session = Session {
            command: &args.command,
            environment,
            workdir,
            user,
            tty,
            detach: args.detach,
        };
        exec_in(&client, &instance.name, session).await
    })??;
    Ok(exit_code(code))
}

#[cfg(test)]
mod tests {
    use crate::cli::shared::pick_replica;
    use ic_core::keys::{LABEL_SERVICE, LABEL_SLOT};
    use ic_incus::Instance;

    fn inst(name: &str, service: &str, slot: &str) -> Instance {
        let mut i = Instance {
            name: name.into(),
            ..Default::default()
        };
        i.config.insert(LABEL_SERVICE.into(), service.into());
        i.config.insert(LABEL_SLOT.into(), slot.into());
        i
    }

    #[test]
    fn index_picks_the_replica_with_that_slot_not_the_nth_listed() {
        let all = vec![
            inst("web-3", "web", "3"),
            inst("web-1", "web", "1"),
            inst("db-2", "db", "2"),
        ];
        assert_eq!(pick_replica(&all, "web", 3, false).unwrap().name, "web-3");
        assert_eq!(pick_replica(&all, "web", 1, false).unwrap().name, "web-1");
        let err = pick_replica(&all, "web", 2, false).unwrap_err().to_string();
        assert!(err.contains("1 (web-1), 3 (web-3)"), "{err}");
    }

    #[test]
    fn index_of_a_global_service_counts_members_in_name_order() {
        let all = vec![
            inst("agent-node2", "agent", "node2"),
            inst("agent-node1", "agent", "node1"),
        ];
        assert_eq!(
            pick_replica(&all, "agent", 1, true).unwrap().name,
            "agent-node1"
        );
        assert_eq!(
            pick_replica(&all, "agent", 2, true).unwrap().name,
            "agent-node2"
        );
        assert!(pick_replica(&all, "agent", 3, true).is_err());
        assert!(pick_replica(&all, "agent", 0, true).is_err());
    }
}
