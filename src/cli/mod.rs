//! Command-line interface: one file per command. Flags mirror `docker compose`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod config;
mod cp;
mod create;
mod down;
mod events;
mod exec;
mod history;
mod images;
mod kill;
mod logs;
mod ls;
mod node;
mod pause;
mod port;
mod power;
mod project;
mod ps;
mod pull;
mod rm;
mod rollback;
mod run;
mod scale;
mod select;
mod session;
mod shared;
mod stats;
mod top;
mod up;
mod version;
mod wait;
mod watch;

/// Run compose files on Incus, on one server or across a cluster.
#[derive(Debug, Parser)]
#[command(name = "incus-compose", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, with the environment variables docker compose users know.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// Compose configuration files (repeatable; `-` reads standard input)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Project name
    #[arg(
        short = 'p',
        long = "project-name",
        global = true,
        env = "COMPOSE_PROJECT_NAME"
    )]
    pub project_name: Option<String>,
    /// Working directory of the project (default: the directory of the first compose file)
    #[arg(long, global = true, value_name = "DIR")]
    pub project_directory: Option<PathBuf>,
    /// Environment files (repeatable; default: `.env` in the project directory)
    #[arg(long = "env-file", global = true, value_name = "PATH")]
    pub env_files: Vec<PathBuf>,
    /// Profiles to enable (repeatable; also COMPOSE_PROFILES, comma separated)
    #[arg(long = "profile", global = true, value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Incus remote to use (default: the incus CLI's default remote)
    #[arg(long, global = true, env = "INCUS_COMPOSE_REMOTE")]
    pub remote: Option<String>,
    /// Incus project to deploy into (default: one named after the compose project)
    #[arg(long, global = true, env = "INCUS_COMPOSE_INCUS_PROJECT")]
    pub incus_project: Option<String>,
    /// Refuse at once, instead of waiting, when another run holds the project lock (`up`,
    /// `down`, `scale`)
    #[arg(long, global = true, env = "INCUS_COMPOSE_NO_WAIT_LOCK")]
    pub no_wait_lock: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, resolve and render the compose file in canonical form
    Config(config::ConfigArgs),
    /// Create and start the project's instances
    Up(up::UpArgs),
    /// Stop and remove the project's instances and networks (volumes only with -v)
    Down(down::DownArgs),
    /// List the project's instances
    Ps(ps::PsArgs),
    /// List the compose projects deployed on the server
    Ls(ls::LsArgs),
    /// List the revisions of the project kept in Incus
    History(history::HistoryArgs),
    /// Deploy an earlier revision again, as a rolling update
    Rollback(rollback::RollbackArgs),
    /// Show instance output (the console log of each replica)
    Logs(logs::LogsArgs),
    /// Run a command in a running instance
    Exec(exec::ExecArgs),
    /// Start existing instances
    Start(power::StartArgs),
    /// Stop running instances
    Stop(power::StopArgs),
    /// Restart instances
    Restart(power::StopArgs),
    /// Set the number of replicas of services
    Scale(scale::ScaleArgs),
    /// List the images used by the project's instances
    Images(images::ImagesArgs),
    /// Pull service images
    Pull(pull::PullArgs),
    /// Cluster members: list them, label them
    Node(node::NodeArgs),
    /// Keep projects converged to their deployed revision as members join and fail
    Watch(watch::WatchArgs),
    /// Show the processes running in each instance
    Top(top::TopArgs),
    /// Copy files and directories between a replica and the local filesystem
    Cp(cp::CpArgs),
    /// Create the instances without starting them (`up --no-start`)
    Create(create::CreateArgs),
    /// Send a signal to the main process of the replicas (default SIGKILL: forced stop)
    Kill(kill::KillArgs),
    /// Pause (freeze) the running replicas
    Pause(pause::PauseArgs),
    /// Unpause (unfreeze) the paused replicas
    Unpause(pause::PauseArgs),
    /// Remove stopped replicas and one-off instances
    Rm(rm::RmArgs),
    /// Run a one-off command in a new instance of a service
    Run(run::RunArgs),
    /// Print the address a replica's port is published on
    Port(port::PortArgs),
    /// Block until the replicas of services stop; print and return their exit status
    Wait(wait::WaitArgs),
    /// CPU, memory, network and processes of each replica
    Stats(stats::StatsArgs),
    /// The project's instance lifecycle events, live
    Events(events::EventsArgs),
    /// Show the incus-compose version and the Incus server's
    Version(version::VersionArgs),
    /// Generate shell completions
    Completion {
        /// The shell to generate completions for
        shell: clap_complete::Shell,
    },
}

/// Diagnostics on stderr, off unless `INCUS_COMPOSE_LOG` asks (`info`, `debug` for every Incus
/// request, or any `tracing` filter such as `ic_incus=debug`).
fn init_log() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("INCUS_COMPOSE_LOG") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn main() -> ExitCode {
    // `logs -f` means --follow (docker compose), not the global --file.
    let cli = Cli::parse_from(run::rewrite_publish(logs::rewrite_follow(
        std::env::args_os(),
    )));
    init_log();
    let result = match cli.command {
        Command::Config(args) => config::run(&cli.global, &args),
        Command::Up(args) => up::run(&cli.global, &args),
        Command::Down(args) => down::run(&cli.global, &args),
        Command::Ps(args) => ps::run(&cli.global, &args),
        Command::Ls(args) => ls::run(&cli.global, &args),
        Command::History(args) => history::run(&cli.global, &args),
        Command::Rollback(args) => rollback::run(&cli.global, &args),
        Command::Logs(args) => logs::run(&cli.global, &args),
        Command::Start(args) => power::start(&cli.global, &args),
        Command::Stop(args) => power::stop(&cli.global, &args),
        Command::Restart(args) => power::restart(&cli.global, &args),
        Command::Exec(args) => exec::run(&cli.global, &args),
        Command::Scale(args) => scale::run(&cli.global, &args),
        Command::Images(args) => images::run(&cli.global, &args),
        Command::Pull(args) => pull::run(&cli.global, &args),
        Command::Node(args) => node::run(&cli.global, &args),
        Command::Top(args) => top::run(&cli.global, &args),
        Command::Watch(args) => watch::run(&cli.global, &args),
        Command::Cp(args) => cp::run(&cli.global, &args),
        Command::Create(args) => {
            up::up_args(&create::up_argv(&args)).and_then(|a| up::run(&cli.global, &a))
        }
        Command::Kill(args) => kill::run(&cli.global, &args),
        Command::Pause(args) => pause::pause(&cli.global, &args),
        Command::Unpause(args) => pause::unpause(&cli.global, &args),
        Command::Rm(args) => rm::run(&cli.global, &args),
        Command::Run(args) => run::run(&cli.global, &args),
        Command::Port(args) => port::run(&cli.global, &args),
        Command::Wait(args) => wait::run(&cli.global, &args),
        Command::Stats(args) => stats::run(&cli.global, &args),
        Command::Events(args) => events::run(&cli.global, &args),
        Command::Version(args) => version::run(&cli.global, &args),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "incus-compose", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    };
    print_requests_sent();
    code
}

/// With `INCUS_COMPOSE_COUNT_REQUESTS=1`: the number of requests this run sent to Incus, on
/// stderr (`incus requests: 12 (GET 12)`), for `scripts/bench-up`.
fn print_requests_sent() {
    if std::env::var_os("INCUS_COMPOSE_COUNT_REQUESTS").is_none_or(|v| v.is_empty() || v == "0") {
        return;
    }
    let sent = ic_incus::requests_sent();
    let total: u64 = sent.iter().map(|(_, n)| n).sum();
    let by: Vec<String> = sent.iter().map(|(m, n)| format!("{m} {n}")).collect();
    eprintln!("incus requests: {total} ({})", by.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_help_cover_every_docker_compose_everyday_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "incus-compose",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        let help = Cli::command().render_help().to_string();
        for cmd in [
            "run", "cp", "kill", "pause", "unpause", "rm", "create", "port", "events", "stats",
            "wait", "version",
        ] {
            assert!(
                script.contains(&format!("incus__compose,{cmd})")),
                "{cmd} completes"
            );
            assert!(help.contains(&format!("\n  {cmd} ")), "{cmd} in --help");
        }
        // `run`'s own flags complete too.
        assert!(script.contains("--service-ports"));
    }
}
