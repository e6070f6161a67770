//! `incus-compose config`: load, validate and print the canonical project, like
//! `docker compose config`.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::GlobalArgs;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Print the service names, one per line
    #[arg(long)]
    pub services: bool,
    /// Print the volume names, one per line
    #[arg(long)]
    pub volumes: bool,
    /// Print the network names, one per line
    #[arg(long)]
    pub networks: bool,
    /// Print the profile names, one per line
    #[arg(long = "profiles", id = "list_profiles")]
    pub list_profiles: bool,
    /// Print the image names, one per line
    #[arg(long)]
    pub images: bool,
    /// Only validate the configuration, print nothing
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't interpolate environment variables
    #[arg(long)]
    pub no_interpolate: bool,
    /// Write the output to this file instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// The loader options the global flags describe, for the current process.
pub fn load_options(
    global: &GlobalArgs,
    interpolate: bool,
) -> anyhow::Result<ic_compose::LoadOptions> {
    let mut options = ic_compose::LoadOptions::from_process();
    options.files = global.files.clone();
    options.project_name = global.project_name.clone();
    options.project_directory = global.project_directory.clone();
    options.env_files = global.env_files.clone();
    options.profiles = global.profiles.clone();
    options.interpolate = interpolate;
    if options.files.iter().any(|f| f.as_os_str() == "-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        options.stdin = Some(text);
    }
    Ok(options)
}

pub fn run(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let options = load_options(global, !args.no_interpolate)?;
    let project = match ic_compose::load(&options) {
        Ok(p) => p,
        Err(errors) => {
            for d in errors.iter() {
                eprintln!("error: {d}");
            }
            eprintln!(
                "{} error{} in the compose configuration",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &project.warnings {
        eprintln!("warning: {w}");
    }
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let lines = |items: Vec<String>| items.into_iter().map(|s| s + "\n").collect::<String>();
    let text = if args.services {
        lines(project.services.keys().cloned().collect())
    } else if args.volumes {
        lines(project.volumes.keys().cloned().collect())
    } else if args.networks {
        lines(project.networks.keys().cloned().collect())
    } else if args.list_profiles {
        lines(project.all_profiles.clone())
    } else if args.images {
        lines(
            project
                .services
                .iter()
                .map(|(name, s)| {
                    s.image
                        .clone()
                        .unwrap_or_else(|| format!("{}-{name}", project.name))
                })
                .collect(),
        )
    } else {
        match args.format {
            Format::Yaml => ic_compose::output::to_yaml_string(&project),
            Format::Json => {
                serde_json::to_string_pretty(&ic_compose::output::to_json(&project))? + "\n"
            }
        }
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}
