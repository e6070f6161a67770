//! `incus-compose ps`: the project's instances, where they run and their ports.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use ic_core::plan::{LABEL_SERVICE, LABEL_SLOT};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::observe;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also show stopped instances
    #[arg(short, long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only these services
    pub services: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    name: String,
    service: String,
    slot: String,
    member: String,
    state: String,
    ports: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    block_on(async {
        let obs = observe(&ctx.base, &ctx.incus_project, false).await?;
        let mut rows = Vec::new();
        if obs.observed.project_exists {
            let instances = ctx
                .base
                .with_project(&ctx.incus_project)
                .instances()
                .await
                .context("cannot list instances")?;
            for i in instances {
                if !crate::engine::is_ours(&i.config, &ctx.project.name) {
                    continue;
                }
                let service = i.config.get(LABEL_SERVICE).cloned().unwrap_or_default();
                if !args.services.is_empty() && !args.services.contains(&service) {
                    continue;
                }
                if !args.all && !i.is_running() {
                    continue;
                }
                let ports = i
                    .devices
                    .values()
                    .filter(|d| d.get("type").map(String::as_str) == Some("proxy"))
                    .filter_map(|d| {
                        let listen = d.get("listen")?;
                        let connect = d.get("connect")?;
                        let (proto, rest) = listen.split_once(':')?;
                        let target = connect.rsplit(':').next()?;
                        Some(format!("{rest}->{target}/{proto}"))
                    })
                    .collect();
                rows.push(Row {
                    slot: i.config.get(LABEL_SLOT).cloned().unwrap_or_default(),
                    name: i.name,
                    service,
                    member: i.location,
                    state: i.status,
                    ports,
                });
            }
        }
        rows.sort_by(|a, b| {
            (
                a.service.as_str(),
                a.slot.parse::<u64>().ok(),
                a.slot.as_str(),
            )
                .cmp(&(
                    b.service.as_str(),
                    b.slot.parse::<u64>().ok(),
                    b.slot.as_str(),
                ))
        });
        match args.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Format::Table => print_table(&rows),
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn print_table(rows: &[Row]) {
    let header = ["NAME", "SERVICE", "MEMBER", "STATE", "PORTS"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.service.clone(),
                r.member.clone(),
                r.state.clone(),
                r.ports.join(", "),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: [&str; 5]| {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            if i == 4 {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }
}
