//! Pending replicas: slots the scheduler could not give a member, with every member's reason.
//! [`super::diff`] reports them in [`super::Plan::pending`]; [`pending_replicas`] finds them
//! for `ps` from the compose file and observed state alone (no image or network checks), by
//! running the same scheduler on the same input.

use ic_compose::Project;

use super::span::NetworkFacts;
use super::{
    Observed, PlanError, PlanOptions, bad_name, naming, scheduler_spec, selected_services,
};
use crate::keys::{LABEL_SERVICE, LABEL_SLOT};
use crate::schedule::{self, ExistingReplica, Mode, Outcome, PendingReason, ServiceSpec, SlotKey};

/// A replica slot no member can take now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReplica {
    pub service: String,
    /// The instance name it will have.
    pub name: String,
    /// Replica number, or member name for global services.
    pub slot: String,
    /// Whether an instance of the slot exists (on a member that is offline or evacuated).
    pub exists: bool,
    /// Every member that cannot take it, with the reason.
    pub reason: PendingReason,
}

/// The slot key an instance's [`LABEL_SLOT`] names, for a service of `mode`.
pub(super) fn slot_key(mode: Mode, slot: &str) -> Option<SlotKey> {
    match mode {
        Mode::Global => Some(SlotKey::Member(slot.to_string())),
        Mode::Replicated { .. } => slot.parse().ok().map(SlotKey::Replica),
    }
}

/// The existing replicas of compose project `compose` among `obs.instances`, for the
/// services in `specs`.
pub(super) fn existing_replicas(
    obs: &Observed,
    compose: &str,
    specs: &[ServiceSpec],
) -> Vec<ExistingReplica> {
    obs.instances
        .iter()
        .filter(|i| i.label(crate::keys::LABEL_PROJECT) == Some(compose))
        .filter_map(|i| {
            let service = i.label(LABEL_SERVICE)?;
            let spec = specs.iter().find(|s| s.name == service)?;
            Some(ExistingReplica {
                service: service.to_string(),
                slot: slot_key(spec.mode, i.label(LABEL_SLOT)?)?,
                member: i.location.clone(),
            })
        })
        .collect()
}

/// Where the anonymous volumes of compose project `compose` live: `(service, slot, member)` for
/// each one on a member of `obs` (a volume of a shared pool has no member). A slot without a
/// replica whose volume is on a member goes back to that member when the member can take it
/// (after `down` and `up`, say): its data stays with it, as Docker keeps a container's
/// anonymous volumes. The callers give these to the scheduler as existing replicas, then
/// forget that they were (a new replica is created there).
pub(super) fn volume_homes<'a>(
    obs: &'a Observed,
    compose: &str,
) -> Vec<(&'a str, &'a str, &'a str)> {
    obs.volumes
        .iter()
        .filter(|v| {
            v.config.contains_key(crate::keys::LABEL_ANONYMOUS)
                && v.config.get(crate::keys::LABEL_PROJECT).map(String::as_str) == Some(compose)
                && obs.members.iter().any(|m| m.name == v.location)
        })
        .filter_map(|v| {
            Some((
                v.config.get(LABEL_SERVICE)?.as_str(),
                v.config.get(LABEL_SLOT)?.as_str(),
                v.location.as_str(),
            ))
        })
        .collect()
}

/// Adds to `existing` a replica on its volume's member ([`volume_homes`]) for each slot that
/// has none; returns those slots.
pub(super) fn add_volume_homes(
    obs: &Observed,
    compose: &str,
    existing: &mut Vec<ExistingReplica>,
    key_of: impl Fn(&str, &str) -> Option<SlotKey>,
) -> std::collections::BTreeSet<(String, SlotKey)> {
    let mut added = std::collections::BTreeSet::new();
    for (service, slot, member) in volume_homes(obs, compose) {
        let Some(key) = key_of(service, slot) else {
            continue;
        };
        if existing
            .iter()
            .any(|e| e.service == service && e.slot == key)
        {
            continue;
        }
        existing.push(ExistingReplica {
            service: service.to_string(),
            slot: key.clone(),
            member: member.to_string(),
        });
        added.insert((service.to_string(), key));
    }
    added
}

/// Forgets the replicas [`add_volume_homes`] made up: their slots are new ones.
pub(super) fn forget_volume_homes(
    sched: &mut schedule::Schedule,
    added: &std::collections::BTreeSet<(String, SlotKey)>,
) {
    for p in &mut sched.placements {
        for slot in &mut p.slots {
            if added.contains(&(p.service.clone(), slot.key.clone())) {
                slot.previous = None;
            }
        }
    }
}

/// The pending replicas of the (selected) services of `project`, given what Incus holds and
/// the server's network facts (whether ingress ports bind a replica's member).
pub fn pending_replicas(
    project: &Project,
    obs: &Observed,
    facts: &NetworkFacts,
    opts: &PlanOptions,
) -> Result<Vec<PendingReplica>, PlanError> {
    let selected = selected_services(project, opts)?;
    let mut specs = Vec::new();
    let mut names = Vec::new();
    for name in project.services_in_dependency_order() {
        let Some(service) = project.services.get(name) else {
            continue;
        };
        if !selected.contains(name) {
            continue;
        }
        let mut replicas = service.replicas();
        if let (Some(_), Some(n)) = (replicas, opts.scale.get(name)) {
            replicas = Some(u64::from(*n));
        }
        let base = naming::incus_name(name).map_err(|p| bad_name("service", name, p))?;
        let container = match &service.container_name {
            Some(c) => Some(naming::incus_name(c).map_err(|p| bad_name("container_name", c, p))?),
            None => None,
        };
        let mut spec = scheduler_spec(service, name, replicas);
        spec.fixed_host_ports = super::ingress::replica_host_ports(
            service,
            super::ingress::meshed_service(project, service, facts),
        );
        specs.push(spec);
        names.push((base, container));
    }
    let mut existing = existing_replicas(obs, &project.name, &specs);
    let homes = add_volume_homes(obs, &project.name, &mut existing, |service, slot| {
        let spec = specs.iter().find(|s| s.name == service)?;
        slot_key(spec.mode, slot)
    });
    let mut sched = schedule::schedule(&obs.members, &specs, &existing)
        .map_err(|e| PlanError::Schedule(e.to_string()))?;
    forget_volume_homes(&mut sched, &homes);
    let mut out = Vec::new();
    for (p, (base, container)) in sched.placements.iter().zip(&names) {
        for slot in &p.slots {
            let Outcome::Pending(reason) = &slot.outcome else {
                continue;
            };
            let slot_text = slot.key.to_string();
            out.push(PendingReplica {
                service: p.service.clone(),
                name: container
                    .clone()
                    .unwrap_or_else(|| naming::instance_name(base, &slot_text)),
                slot: slot_text,
                exists: slot.previous.is_some(),
                reason: reason.clone(),
            });
        }
    }
    Ok(out)
}
