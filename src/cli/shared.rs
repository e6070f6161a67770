//! What several commands share (so that command files do not import each other).

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};
use ic_core::plan::{LABEL_SERVICE, LABEL_SLOT, Plan};
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
