//! `incus-compose version`: this program's version and, when it answers, the Incus server's.

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::GlobalArgs;
use super::project::block_on;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only incus-compose's version number
    #[arg(long)]
    pub short: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Pretty)]
    pub format: Format,
}

/// What the server says about itself, or why it could not be asked.
#[derive(Debug, serde::Serialize)]
struct Server {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clustered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn run(global: &GlobalArgs, args: &VersionArgs) -> anyhow::Result<ExitCode> {
    let version = env!("CARGO_PKG_VERSION");
    if args.short {
        println!("{version}");
        return Ok(ExitCode::SUCCESS);
    }
    // The server is asked, never required: `version` works without Incus.
    let server = match crate::engine::connect(global.remote.as_deref()) {
        Err(e) => Server::failed(format!("{e:#}")),
        Ok(client) => match block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), client.server()).await
        })? {
            Ok(Ok(info)) => Server {
                version: Some(info.environment.server_version.clone()),
                api_version: Some(info.api_version.clone()),
                clustered: Some(info.environment.server_clustered),
                error: None,
            },
            Ok(Err(e)) => Server::failed(format!("{:#}", anyhow::Error::from(e))),
            Err(_) => Server::failed("no answer within 5 s".into()),
        },
    };
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "version": version,
                "incus": server,
            }))?
        ),
        Format::Pretty => {
            println!("incus-compose version {version}");
            match (&server.version, &server.error) {
                (Some(v), _) => println!(
                    "Incus server version {v} (API {}{})",
                    server.api_version.as_deref().unwrap_or("?"),
                    if server.clustered == Some(true) {
                        ", clustered"
                    } else {
                        ""
                    }
                ),
                (None, Some(e)) => println!("Incus server: not reachable ({e})"),
                (None, None) => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl Server {
    fn failed(error: String) -> Server {
        Server {
            version: None,
            api_version: None,
            clustered: None,
            error: Some(error),
        }
    }
}
