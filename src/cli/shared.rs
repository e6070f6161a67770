//! What several commands share (so that command files do not import each other).

use std::collections::BTreeMap;

use super::GlobalArgs;
use anyhow::{Context as _, anyhow, bail};
use ic_core::keys::{LABEL_ANONYMOUS, LABEL_PROJECT, LABEL_SERVICE, LABEL_SLOT};
use ic_core::plan::Plan;
use ic_incus::{Client, Instance};

/// Print a plan: stages of actions, then the placement member by member.
pub fn print_plan(plan: &Plan, compose: &str) {
    println!(
        "Plan for compose project {compose} in Incus project {}:",
        plan.incus_project
    );
    if plan.is_empty() {
        println!("  nothing to change");
    }
    for stage in &plan.stages {
        println!("  {}:", stage.title);
        for a in &stage.actions {
            println!("    {a}");
        }
    }
    if !plan.unchanged.is_empty() {
        println!("  unchanged: {}", plan.unchanged.join(", "));
    }
    let mut by_member: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (member, name, service) in &plan.placement {
        by_member
            .entry(member)
            .or_default()
            .push(format!("{name} ({service})"));
    }
    if !by_member.is_empty() {
        println!("Placement:");
        for (member, items) in by_member {
            println!("  {member}: {}", items.join(", "));
        }
    }
}

/// Pick replica `index` of `service` among the project's instances (`exec`'s and `cp`'s `--index`).
pub(super) fn pick_replica<'a>(
    instances: &'a [Instance],
    service: &str,
    index: usize,
    global: bool,
) -> anyhow::Result<&'a Instance> {
    let mut replicas: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.config.get(LABEL_SERVICE).map(String::as_str) == Some(service))
        .filter(|i| !ic_core::plan::is_oneoff(&i.config))
        .collect();
    if replicas.is_empty() {
        bail!(
            "service {service:?} has no instances; start it with `incus-compose up -d {service}`"
        );
    }
    replicas.sort_by(|a, b| a.config.get(LABEL_SLOT).cmp(&b.config.get(LABEL_SLOT)));
    let found = if global {
        index.checked_sub(1).and_then(|i| replicas.get(i)).copied()
    } else {
        replicas
            .iter()
            .find(|i| {
                i.config
                    .get(LABEL_SLOT)
                    .and_then(|s| s.parse::<usize>().ok())
                    == Some(index)
            })
            .copied()
    };
    found.ok_or_else(|| {
        let have: Vec<String> = replicas
            .iter()
            .enumerate()
            .map(|(n, i)| {
                let slot = if global {
                    (n + 1).to_string()
                } else {
                    i.config.get(LABEL_SLOT).cloned().unwrap_or_default()
                };
                format!("{slot} ({})", i.name)
            })
            .collect();
        anyhow!(
            "service {service:?} has no replica with index {index}; its replicas: {}",
            have.join(", ")
        )
    })
}

/// The instances of compose project `compose` (only those of `services` unless empty), in
/// service, then replica order. A missing Incus project means no instances.
pub(super) async fn project_instances(
    client: &Client,
    compose: &str,
    services: &[String],
) -> anyhow::Result<Vec<Instance>> {
    let instances = match client.instances().await {
        Ok(list) => list,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e).context("cannot list instances"),
    };
    Ok(crate::engine::reach::ours_in_order(
        instances, compose, services,
    ))
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
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        options.stdin = Some(text);
    }
    Ok(options)
}

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
/// Output format of the listing commands (`ps`, `ls`, `history`).
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Whether `e` is an instance Incus cannot read from its member.
pub(super) fn unreadable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ic_incus::Error>(),
            Some(ic_incus::Error::Unreadable { .. })
        )
    })
}

/// Global options that take a value (their value is not the subcommand).
pub(super) const GLOBAL_VALUE_OPTIONS: [&str; 9] = [
    "-f",
    "--file",
    "-p",
    "--project-name",
    "--project-directory",
    "--env-file",
    "--profile",
    "--remote",
    "--incus-project",
];

/// Removes `instance` (stopping it first: `timeout` seconds for a clean stop, then a kill),
/// and with `volumes` its anonymous volumes (only those labelled as ours).
pub(super) async fn remove_instance(
    client: &Client,
    instance: &Instance,
    compose: &str,
    timeout: i64,
    volumes: bool,
) -> anyhow::Result<()> {
    let state = client.instance_state(&instance.name).await?;
    if !state.status.eq_ignore_ascii_case("stopped") {
        if state.status.eq_ignore_ascii_case("frozen") {
            client
                .change_instance_state(
                    &instance.name,
                    &ic_incus::InstanceStatePut::new("unfreeze", -1, false),
                )
                .await?
                .wait()
                .await?;
        }
        if client
            .stop_instance(&instance.name, timeout, false)
            .await
            .is_err()
        {
            client.stop_instance(&instance.name, -1, true).await?;
        }
    }
    client
        .delete_instance(&instance.name)
        .await?
        .wait()
        .await
        .with_context(|| format!("removing {}", instance.name))?;
    if !volumes {
        return Ok(());
    }
    let target = (!instance.location.is_empty() && instance.location != "none")
        .then_some(instance.location.as_str());
    for d in instance.devices.values() {
        let (Some("disk"), Some(pool), Some(source)) = (
            d.get("type").map(String::as_str),
            d.get("pool"),
            d.get("source"),
        ) else {
            continue;
        };
        let v = match client.storage_volume(pool, "custom", source, target).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e).with_context(|| format!("looking up volume {source}")),
        };
        let ours = v.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
            && v.config.contains_key(LABEL_ANONYMOUS);
        if ours {
            client
                .delete_storage_volume(pool, "custom", source, target)
                .await
                .with_context(|| format!("removing anonymous volume {source}"))?;
        }
    }
    Ok(())
}
