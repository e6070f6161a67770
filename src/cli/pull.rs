//! `incus-compose pull [SERVICES]`: get the services' images onto the Incus server ahead of `up`.
//!
//! Per service, by how its `image:` resolves (the same resolution `up` uses):
//! - a local alias or fingerprint: already in the server's image store (a missing one is an
//!   error naming the service, as for `up`);
//! - `remote:alias` of the incus CLI's remotes, or a Docker/OCI reference (Incus >= 6.3): the
//!   server pulls it into the default project's image store (`POST /1.0/images`, mode `pull`),
//!   so the next `up` creates from the cached image.
//!
//! `pull_policy: build` services are refused (Incus cannot build), `never` ones skipped; services without `image`
//! are skipped with a note. Pulls run concurrently; a failure names the service and the image
//! and makes the exit status non-zero unless `--ignore-pull-failures`.

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Args;
use ic_compose::model::PullPolicy;
use ic_core::plan::{ImageSource, oci, oci::project_registry, resolve_image_in};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, observe};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Only print errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Pull what can be pulled and exit 0 even when some pulls fail
    #[arg(long)]
    pub ignore_pull_failures: bool,
    /// Services whose images to pull (default: all)
    pub services: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    for s in &args.services {
        if !ctx.project.services.contains_key(s) {
            return Err(anyhow!("no such service: {s}"));
        }
    }
    block_on(async {
        let obs = observe(&ctx.base, &ctx.incus_project, true).await?;
        let target = ctx.target(&obs);
        let registry = project_registry(&ctx.project, &obs.facts.oci_remotes);
        let mut failures: Vec<String> = Vec::new();
        let mut pulls = Vec::new();
        for (name, service) in &ctx.project.services {
            if !args.services.is_empty() && !args.services.contains(name) {
                continue;
            }
            match PullPolicy::of(service.pull_policy.as_deref()) {
                PullPolicy::Build => {
                    failures.push(format!(
                        "service {name:?}: pull_policy build: Incus cannot build images; build it elsewhere and import or push it"
                    ));
                    continue;
                }
                PullPolicy::Never => {
                    if !args.quiet {
                        println!("[.] {name}: pull_policy never, not pulled");
                    }
                    continue;
                }
                _ => {}
            }
            let Some(image) = service.image.as_deref() else {
                if !args.quiet {
                    println!("[.] {name}: no image to pull");
                }
                continue;
            };
            let source = match resolve_image_in(name, image, &obs.facts, registry.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            let key = source.to_string();
            let (server, protocol, alias) = match &source {
                ImageSource::Local(alias) => {
                    if !args.quiet {
                        println!("[=] {name}: {alias} is in the server's image store");
                    }
                    continue;
                }
                ImageSource::Remote { remote, alias } => match target.remotes.get(remote) {
                    Some((addr, protocol)) => (addr.clone(), protocol.clone(), alias.clone()),
                    None => {
                        failures.push(format!(
                            "service {name:?}: image {image}: unknown remote {remote:?} (see `incus remote list`)"
                        ));
                        continue;
                    }
                },
                ImageSource::Oci { server, alias, .. } => {
                    (server.clone(), "oci".to_string(), alias.clone())
                }
            };
            let name = name.clone();
            let image = image.to_string();
            let before = obs.facts.image_targets.get(&key).cloned();
            let (base, remotes) = (&ctx.base, &obs.remotes);
            pulls.push(async move {
                let result = engine::pull_image(base, &server, &protocol, &alias, remotes).await;
                // What an OCI reference names now (recorded below): `up` recreates replicas made
                // from another image.
                let record = (protocol == "oci").then_some(key);
                (name, image, before, record, result)
            });
        }
        let mut pulled = std::collections::BTreeMap::new();
        for (name, image, before, record, result) in futures_util::future::join_all(pulls).await {
            if let (Some(key), Ok(Some(f))) = (record, &result) {
                pulled.insert(key, f.clone());
            }
            match result {
                Ok(now) if !args.quiet => {
                    let what = match (before, now) {
                        (Some(b), Some(n)) if b == n => " (unchanged)".to_string(),
                        (Some(b), Some(n)) => format!(
                            " (new image: {} -> {}; `up` recreates its replicas)",
                            oci::short(&b),
                            oci::short(&n)
                        ),
                        _ => String::new(),
                    };
                    println!("[+] {name}: pulled {image}{what}");
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("service {name:?}: cannot pull {image}: {e:#}")),
            }
        }
        // The next `up` knows what each reference names now (see engine::record_pulls).
        let keep = engine::project_image_keys(&ctx.project, &obs.facts);
        ctx.record_pulls(&pulled, &keep).await;
        for f in &failures {
            eprintln!("error: {f}");
        }
        if failures.is_empty() || args.ignore_pull_failures {
            Ok(ExitCode::SUCCESS)
        } else {
            Ok(ExitCode::FAILURE)
        }
    })?
}
