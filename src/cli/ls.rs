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
    #[arg(long, value_enum, default_value_t = super::shared::Format::Table)]
    pub format: super::shared::Format,
    /// Only the project names
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(global: &GlobalArgs, args: &LsArgs) -> anyhow::Result<ExitCode> {
    let base = engine::connect(global.remote.as_deref())?;
    let listed = block_on(engine::deployed::list_projects(&base, args.all))??;
    // Instances on members that cannot be asked: one warning per member, naming them.
    // Up to 5 names per project, else their number.
    let mut unreached: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for p in &listed {
        let mut on: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for u in &p.unreached {
            if let Some((member, name)) = u.split_once(": ") {
                on.entry(member).or_default().push(name);
            }
        }
        for (member, names) in on {
            let what = if names.len() > 5 {
                format!("{} instances", names.len())
            } else {
                names.join(", ")
            };
            unreached
                .entry(member)
                .or_default()
                .push(format!("{what} of {}", p.name));
        }
    }
    for (member, names) in &unreached {
        eprintln!(
            "warning: cluster member {member} is offline or does not answer: {} not reached; the status is for the other instances",
            names.join("; ")
        );
    }
    if args.quiet {
        for p in &listed {
            println!("{}", p.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        super::shared::Format::Json => println!("{}", serde_json::to_string_pretty(&listed)?),
        super::shared::Format::Table => {
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
            let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
            print!(
                "{}",
                ic_core::display::table(&["NAME", "STATUS", "CONFIG FILES"], &rows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
