//! `incus-compose config`: load, validate and print the canonical project as
//! `docker compose config` (v2) prints it (`ic_compose::output`).

use std::io::Write;
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
    /// Print the names of the volumes services use, one per line
    #[arg(long)]
    pub volumes: bool,
    /// Print the names of the networks services use, one per line
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

pub fn run(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let options = super::shared::load_options(global, !args.no_interpolate)?;
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
    let text = render(&project, args)?;
    match &args.output {
        Some(path) => std::fs::write(path, text)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What `config` prints for a loaded project.
pub fn render(project: &ic_compose::Project, args: &ConfigArgs) -> anyhow::Result<String> {
    let lines = |items: Vec<String>| items.into_iter().map(|s| s + "\n").collect::<String>();
    Ok(if args.services {
        // Dependencies first, as docker compose v2 lists them (it breaks ties at random; we
        // by name).
        lines(
            project
                .services_in_dependency_order()
                .into_iter()
                .map(str::to_string)
                .collect(),
        )
    } else if args.volumes {
        // The volumes some service uses, as docker compose v2 lists them (and prints them).
        let used = ic_compose::output::used(project);
        lines(
            project
                .volumes
                .keys()
                .filter(|v| used.volumes.contains(v.as_str()))
                .cloned()
                .collect(),
        )
    } else if args.networks {
        let used = ic_compose::output::used(project);
        lines(
            project
                .networks
                .keys()
                .filter(|n| used.networks.contains(n.as_str()))
                .cloned()
                .collect(),
        )
    } else if args.list_profiles {
        lines(project.all_profiles.clone())
    } else if args.images {
        lines(
            project
                .services_in_dependency_order()
                .into_iter()
                .map(|name| {
                    project.services[name]
                        .image
                        .clone()
                        .unwrap_or_else(|| format!("{}-{name}", project.name))
                })
                .collect(),
        )
    } else {
        match args.format {
            Format::Yaml => ic_compose::output::to_yaml_output(project, args.no_interpolate),
            Format::Json => ic_compose::output::to_json_string(project, args.no_interpolate),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn args() -> ConfigArgs {
        ConfigArgs {
            format: Format::Yaml,
            services: false,
            volumes: false,
            networks: false,
            list_profiles: false,
            images: false,
            quiet: false,
            no_interpolate: false,
            output: None,
        }
    }

    fn compose_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("corpus directory")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if p.is_dir() {
                compose_files(&p, out);
            } else if (name.contains("compose") || name == "docker-stack.yml")
                && (name.ends_with(".yml") || name.ends_with(".yaml"))
            {
                out.push(p);
            }
        }
    }

    /// `--services` and `--images` list dependencies first (as docker compose v2 does), ties by
    /// name; `--volumes` and `--networks` only what a service uses (what `config` prints).
    #[test]
    fn listings_follow_dependencies_and_leave_out_unused_resources() {
        let fs = ic_compose::MemFs::default().with(
            "/p/compose.yaml",
            "services:\n  web:\n    image: w\n    depends_on: [db]\n    volumes: [data:/d]\n  \
             db:\n    image: d\n    networks: [back]\n  adm:\n    image: a\n    depends_on: [web]\n\
             volumes:\n  data: {}\n  spare: {}\nnetworks:\n  back: {}\n  idle: {}\n",
        );
        let options = ic_compose::LoadOptions {
            working_dir: PathBuf::from("/p"),
            ..ic_compose::LoadOptions::default()
        };
        let project = ic_compose::load_with(&options, &fs).expect("loads");
        let list = |a: ConfigArgs| render(&project, &a).expect("renders");
        let services = list(ConfigArgs {
            services: true,
            ..args()
        });
        assert_eq!(services, "db\nweb\nadm\n");
        let images = list(ConfigArgs {
            images: true,
            ..args()
        });
        assert_eq!(images, "d\nw\na\n");
        let volumes = list(ConfigArgs {
            volumes: true,
            ..args()
        });
        assert_eq!(volumes, "data\n");
        let networks = list(ConfigArgs {
            networks: true,
            ..args()
        });
        assert_eq!(networks, "back\ndefault\n");
    }

    /// `incus-compose -f FILE config` (YAML and JSON) from the file's own directory, for every
    /// compose file of the corpus; the required variables of the swarmprom Traefik file are set.
    #[test]
    fn config_renders_every_corpus_file_from_its_own_directory() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
        let mut files = Vec::new();
        compose_files(&corpus, &mut files);
        assert!(
            files.len() >= 45,
            "corpus has {} compose files",
            files.len()
        );
        for f in files {
            let dir = f.parent().expect("directory").to_path_buf();
            let global = GlobalArgs {
                files: vec![PathBuf::from(f.file_name().expect("name"))],
                ..GlobalArgs::default()
            };
            let mut options = crate::cli::shared::load_options(&global, true).expect("options");
            options.working_dir = dir;
            for (k, v) in [
                ("DOMAIN", "example.org"),
                ("ADMIN_USER", "admin"),
                ("HASHED_PASSWORD", "x"),
            ] {
                options.environment.insert(k.into(), v.into());
            }
            options
                .environment
                .retain(|k, _| !k.starts_with("COMPOSE_"));
            let project =
                ic_compose::load(&options).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let yaml = render(&project, &args()).expect("yaml");
            assert!(yaml.starts_with("name: "), "{}", f.display());
            let json = render(
                &project,
                &ConfigArgs {
                    format: Format::Json,
                    ..args()
                },
            )
            .expect("json");
            let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            assert_eq!(
                v["services"].as_object().map(|m| m.len()),
                Some(project.services.len())
            );
            let services = render(
                &project,
                &ConfigArgs {
                    services: true,
                    ..args()
                },
            )
            .expect("services");
            assert_eq!(services.lines().count(), project.services.len());
        }
    }
}
