//! Pending replicas: slots the scheduler could not give a member, with every member's reason.
//! [`super::diff`] reports them in [`super::Plan::pending`]; [`pending_replicas`] finds them
//! for `ps` from the compose file and observed state alone (no image or network checks), by
//! running the same scheduler on the same input.

use ic_compose::Project;

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

/// The pending replicas of the (selected) services of `project`, given what Incus holds.
pub fn pending_replicas(
    project: &Project,
    obs: &Observed,
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
        specs.push(scheduler_spec(service, name, replicas));
        names.push((base, container));
    }
    let existing = existing_replicas(obs, &project.name, &specs);
    let sched = schedule::schedule(&obs.members, &specs, &existing)
        .map_err(|e| PlanError::Schedule(e.to_string()))?;
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
