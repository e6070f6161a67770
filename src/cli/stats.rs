//! `incus-compose stats [--no-stream] [--format table|json] [SERVICE...]`: CPU, memory,
//! network and processes of each running replica, from Incus's instance state.
//!
//! CPU % is the CPU time used between two reads one second apart, per 100 % of one CPU (as
//! docker prints it). Memory is the instance's usage and limit (`limits.memory`, else what
//! Incus reports as its total). Network is the sum over its interfaces except `lo`. Without
//! `--no-stream` it reads again every second, redrawing on a terminal, until interrupted.
//! `--format json` prints one JSON object per replica and line, as `docker compose stats`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ic_core::plan::is_oneoff;

use crate::engine::reach::Reached;
use ic_incus::Instance;

use super::GlobalArgs;
use super::project::{Context, block_on};
use ic_core::keys::LABEL_SERVICE;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one reading and exit
    #[arg(long)]
    pub no_stream: bool,
    /// Also list stopped replicas
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only these services
    pub services: Vec<String>,
}

/// One replica's reading.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    service: String,
    member: String,
    #[serde(rename = "CPUPerc")]
    cpu_perc: String,
    mem_usage: String,
    mem_perc: String,
    #[serde(rename = "NetIO")]
    net_io: String,
    #[serde(rename = "PIDs")]
    pids: String,
    /// The same, as numbers.
    #[serde(rename = "cpu_percent")]
    cpu_percent: f64,
    #[serde(rename = "memory_bytes")]
    memory_bytes: i64,
    #[serde(rename = "memory_limit_bytes")]
    memory_limit_bytes: i64,
    #[serde(rename = "net_rx_bytes")]
    net_rx_bytes: i64,
    #[serde(rename = "net_tx_bytes")]
    net_tx_bytes: i64,
    #[serde(rename = "processes")]
    processes: i64,
}

/// `1.5GiB`-style sizes, as docker prints them.
fn human(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", units[u])
    } else {
        format!("{v:.2}{}", units[u])
    }
}

/// Decimal sizes (`kB`, `MB`) for network traffic, as docker prints them.
fn human_decimal(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes.max(0) as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", units[u])
    } else {
        format!("{v:.3}{}", units[u])
    }
}

/// `limits.memory` (`512MiB`, `1GB`, `50%` is left out) in bytes.
fn memory_limit(config: &BTreeMap<String, String>) -> Option<i64> {
    let text = config.get("limits.memory")?.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as i64)
}

fn row(i: &Instance, cpu_before: Option<i64>, elapsed: Duration) -> Row {
    let state = i.state.clone().unwrap_or_default();
    let cpu_percent = match cpu_before {
        Some(before) if elapsed.as_nanos() > 0 && state.cpu.usage >= before => {
            (state.cpu.usage - before) as f64 / elapsed.as_nanos() as f64 * 100.0
        }
        _ => 0.0,
    };
    let limit = memory_limit(&i.expanded_config).unwrap_or(state.memory.total);
    let (mut rx, mut tx) = (0, 0);
    for (name, n) in state.network.iter().flatten() {
        if name != "lo" {
            rx += n.counters.bytes_received;
            tx += n.counters.bytes_sent;
        }
    }
    let mem_perc = if limit > 0 {
        state.memory.usage as f64 / limit as f64 * 100.0
    } else {
        0.0
    };
    Row {
        name: i.name.clone(),
        service: i.config.get(LABEL_SERVICE).cloned().unwrap_or_default(),
        member: i.location.clone(),
        cpu_perc: format!("{cpu_percent:.2}%"),
        mem_usage: format!(
            "{} / {}",
            human(state.memory.usage),
            if limit > 0 { human(limit) } else { "-".into() }
        ),
        mem_perc: format!("{mem_perc:.2}%"),
        net_io: format!("{} / {}", human_decimal(rx), human_decimal(tx)),
        pids: state.processes.max(0).to_string(),
        cpu_percent: (cpu_percent * 100.0).round() / 100.0,
        memory_bytes: state.memory.usage,
        memory_limit_bytes: limit,
        net_rx_bytes: rx,
        net_tx_bytes: tx,
        processes: state.processes.max(0),
    }
}

/// The project's replicas (of `services`), with their state; those on members that cannot be
/// asked apart (see `engine::reach`).
async fn read(ctx: &Context, args: &StatsArgs) -> anyhow::Result<(Vec<Instance>, Reached)> {
    let mut reached = super::select::reach(ctx, &args.services, true).await?;
    let mut list = std::mem::take(&mut reached.instances);
    list.retain(|i| !is_oneoff(&i.config) && (args.all || i.is_running()));
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((list, reached))
}

fn print(rows: &[Row], format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        for r in rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    let header = [
        "NAME",
        "SERVICE",
        "MEMBER",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "PIDS",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.service.clone(),
                r.member.clone(),
                r.cpu_perc.clone(),
                r.mem_usage.clone(),
                r.mem_perc.clone(),
                r.net_io.clone(),
                r.pids.clone(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |c: Vec<&str>| {
        let s: Vec<String> = c
            .iter()
            .enumerate()
            .map(|(k, v)| format!("{v:<w$}", w = width[k]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.to_vec());
    for c in &cells {
        line(c.iter().map(String::as_str).collect());
    }
    Ok(())
}

pub fn run(global: &GlobalArgs, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    super::select::check_services(&ctx, &args.services)?;
    let redraw = !args.no_stream && args.format == Format::Table && std::io::stdout().is_terminal();
    block_on(async {
        let mut before: BTreeMap<String, i64> = BTreeMap::new();
        let mut at = Instant::now();
        let (first, _) = read(&ctx, args).await?;
        let mut warned = Vec::new();
        for i in first {
            before.insert(i.name.clone(), i.state.map_or(0, |s| s.cpu.usage));
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (list, reached) = read(&ctx, args).await?;
            // Warned once, and again when the replicas not reached change (below the table
            // each time it is redrawn).
            let warn = redraw || reached.unreached != warned;
            warned = reached.unreached.clone();
            let elapsed = at.elapsed();
            at = Instant::now();
            let rows: Vec<Row> = list
                .iter()
                .map(|i| row(i, before.get(&i.name).copied(), elapsed))
                .collect();
            before = list
                .iter()
                .map(|i| (i.name.clone(), i.state.as_ref().map_or(0, |s| s.cpu.usage)))
                .collect();
            if redraw {
                // Clear the screen and go home, as docker stats redraws.
                print!("\x1b[2J\x1b[H");
            }
            print(&rows, args.format)?;
            if warn {
                reached.warn();
            }
            if args.no_stream {
                // Replicas not reached: exit status 1 after the others, as `docker service
                // logs` ends an incomplete stream.
                return Ok(if warned.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_docker_prints_them() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(3 * 1024 * 1024 / 2), "1.50MiB");
        assert_eq!(human_decimal(1500), "1.500kB");
        let cfg = |v: &str| BTreeMap::from([("limits.memory".to_string(), v.to_string())]);
        assert_eq!(memory_limit(&cfg("512MiB")), Some(512 * 1024 * 1024));
        assert_eq!(memory_limit(&cfg("1GB")), Some(1_000_000_000));
        assert_eq!(memory_limit(&cfg("50%")), None);
        assert_eq!(memory_limit(&BTreeMap::new()), None);
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        let mut i = Instance {
            name: "web-1".into(),
            ..Default::default()
        };
        let mut state = ic_incus::InstanceState::default();
        state.cpu.usage = 1_500_000_000;
        state.memory.usage = 1024;
        state.memory.total = 4096;
        i.state = Some(state);
        let r = row(&i, Some(1_000_000_000), Duration::from_secs(1));
        assert_eq!(r.cpu_perc, "50.00%");
        assert_eq!(r.mem_perc, "25.00%");
    }
}
