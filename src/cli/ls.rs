//! `incus-compose ls`: the compose projects deployed on the server, as `docker compose ls`
//! prints them (NAME, STATUS such as `running(3)`, CONFIG FILES), found by the
//! `user.incus-compose.project` label of instances in every Incus project.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use super::project::block_on;
use crate::engine;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Also show projects whose instances are all stopped
    #[arg(short, long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = super::ps::Format::Table)]
    pub format: super::ps::Format,
    /// Only the project names
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let base = engine::connect(global.remote.as_deref())?;
    let listed = block_on(engine::deployed::list_projects(&base, args.all))??;
    if args.quiet {
        for p in &listed {
            println!("{}", p.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        super::ps::Format::Json => println!("{}", serde_json::to_string_pretty(&listed)?),
        super::ps::Format::Table => {
            let rows: Vec<[String; 3]> = listed
                .iter()
                .map(|p| {
                    let files = if p.config_files.is_empty() {
                        format!("(Incus project {})", p.incus_project)
                    } else {
                        p.config_files.clone()
                    };
                    [p.name.clone(), p.status.clone(), files]
                })
                .collect();
            let header = ["NAME", "STATUS", "CONFIG FILES"];
            let w0 = rows
                .iter()
                .map(|r| r[0].len())
                .chain([header[0].len()])
                .max();
            let w1 = rows
                .iter()
                .map(|r| r[1].len())
                .chain([header[1].len()])
                .max();
            let (w0, w1) = (w0.unwrap_or(0), w1.unwrap_or(0));
            println!("{:<w0$}   {:<w1$}   {}", header[0], header[1], header[2]);
            for r in &rows {
                println!("{:<w0$}   {:<w1$}   {}", r[0], r[1], r[2]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
