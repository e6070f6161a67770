//! `node drain`: which of a plan's actions move a member's replicas away, in the order the
//! engine runs them. The plan comes from [`super::diff`] with [`super::DiffOptions::drain`]
//! naming the member; [`drain_steps`] keeps what the drain needs and sets the rest aside (a
//! drain changes nothing else: `up` or `watch` do that).
//!
//! Order (start-first, so a service never runs fewer replicas than it declares):
//! 1. [`DrainSteps::prepare`]: volumes the replacements need on their members, network
//!    records;
//! 2. [`DrainSteps::moves`]: each replacement created and started beside the replica it
//!    replaces (the slot's other name), then the engine waits until it runs (healthy when it
//!    has a healthcheck);
//! 3. the replaced replicas removed ([`Move::retire`]), only those whose replacement runs,
//!    with [`DrainSteps::surplus`];
//! 4. [`DrainSteps::global_removals`] last: a global service's replica on the member (a global
//!    service has one replica per eligible member, none to keep elsewhere).

use std::collections::BTreeSet;

use super::placement::PendingReplica;
use super::{Action, Desired, InstancePlan, Observed, Plan};
use crate::keys::{LABEL_PROJECT, LABEL_REPLACES, LABEL_RETIRED, LABEL_SERVICE, LABEL_SLOT};
use crate::schedule::Rejection;

/// One replica leaving the member.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The replica on the drained member.
    pub old: String,
    /// Its replacement (`Action::Create`), on another member.
    pub create: InstancePlan,
    /// Removes `old` (`Action::Remove`), once the replacement runs.
    pub retire: Action,
}

/// A replica that stays on the drained member: no other member can take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stuck {
    /// The instance on the member.
    pub name: String,
    pub service: String,
    /// Why: every other member's reason, or why it cannot run beside a replacement.
    pub reason: String,
}

/// A drain of one member in one compose project, in the order it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainSteps {
    pub prepare: Vec<Action>,
    pub moves: Vec<Move>,
    pub global_removals: Vec<Action>,
    /// Replicas on the member whose slot another replica serves (a drain interrupted after
    /// it created their replacements): removed with the replaced ones.
    pub surplus: Vec<Action>,
    pub stuck: Vec<Stuck>,
    /// Other changes the plan holds (not part of the drain, left to `up` or `watch`).
    pub other: Vec<String>,
}

impl DrainSteps {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
            && self.global_removals.is_empty()
            && self.surplus.is_empty()
            && self.stuck.is_empty()
    }
}

/// The drain of `member` out of `plan` (see the module documentation); `global` names the
/// services in `mode: global`.
pub fn drain_steps(
    plan: &Plan,
    obs: &Observed,
    member: &str,
    global: &BTreeSet<String>,
) -> DrainSteps {
    let mut out = steps_leaving(
        plan,
        obs,
        |name, at| at == member && !name.is_empty(),
        global,
    );
    for p in &plan.pending {
        if let Some(s) = stuck(p, obs, member) {
            out.stuck.push(s);
        }
    }
    out
}

/// The moves of a rebalance ([`super::DiffOptions::evict`]) out of `plan`: the evicted
/// replicas, start-first, as a drain moves them.
pub fn rebalance_steps(plan: &Plan, obs: &Observed, evict: &BTreeSet<String>) -> DrainSteps {
    steps_leaving(plan, obs, |name, _| evict.contains(name), &BTreeSet::new())
}

/// Drain steps for the instances `leaving(name, member)` selects.
fn steps_leaving(
    plan: &Plan,
    obs: &Observed,
    leaving: impl Fn(&str, &str) -> bool,
    global: &BTreeSet<String>,
) -> DrainSteps {
    let mut out = DrainSteps::default();
    let location = |name: &str| {
        obs.instances
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.location.as_str())
    };
    // Replacements of leaving replicas, by the name they replace.
    let replaces = |p: &InstancePlan| -> Option<String> {
        let old = p.config.get(LABEL_REPLACES)?;
        let at = location(old)?;
        (p.member != at && leaving(old, at)).then(|| old.clone())
    };
    let mut removes: Vec<&Action> = Vec::new();
    for a in plan.actions() {
        match a {
            Action::Create(p) if replaces(p).is_some() => {}
            Action::Remove {
                name, member: m, ..
            } if leaving(name, m) => removes.push(a),
            Action::UpdateNetwork { .. }
            | Action::UpdateNetworkMember { .. }
            | Action::CreateVolume { .. } => out.prepare.push(a.clone()),
            other => out.other.push(other.to_string()),
        }
    }
    for a in plan.actions() {
        let Action::Create(p) = a else { continue };
        let Some(old) = replaces(p) else { continue };
        let retire = removes
            .iter()
            .find(|r| matches!(r, Action::Remove { name, .. } if *name == old));
        match retire {
            Some(r) => out.moves.push(Move {
                old,
                create: (**p).clone(),
                retire: (*r).clone(),
            }),
            None => out.other.push(a.to_string()),
        }
    }
    for r in removes {
        let Action::Remove {
            name,
            service,
            reason,
            ..
        } = r
        else {
            continue;
        };
        if out.moves.iter().any(|m| &m.old == name) {
            continue;
        }
        if reason.starts_with("surplus:") {
            out.surplus.push(r.clone());
        } else if global.contains(service) {
            out.global_removals.push(r.clone());
        } else {
            out.other.push(r.to_string());
        }
    }
    out
}

/// `node restore --rebalance`: the replicas to move so that each replicated service of the
/// compose project spreads as it would from scratch (what the scheduler gives with no replica
/// placed yet), taken from the members holding more than that, highest slot first. Nothing
/// when the spread is already that (or better than it: a member under its share is never
/// emptied further).
pub fn rebalance_evictions(d: &Desired, obs: &Observed) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let members: Vec<_> = obs
        .members
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m.instances = 0;
            m
        })
        .collect();
    for t in &d.services {
        if !matches!(t.spec.mode, crate::schedule::Mode::Replicated { .. }) {
            continue;
        }
        let Ok(sched) = crate::schedule::schedule(&members, std::slice::from_ref(&t.spec), &[])
        else {
            continue;
        };
        let Some(p) = sched.get(&t.service) else {
            continue;
        };
        let target = p.per_member();
        // The service's replicas per member, highest slot first.
        let mut held: std::collections::BTreeMap<&str, Vec<(u32, &str)>> = Default::default();
        for i in &obs.instances {
            if i.label(LABEL_PROJECT) != Some(d.compose_project.as_str())
                || i.label(LABEL_SERVICE) != Some(t.service.as_str())
                || i.label(LABEL_RETIRED).is_some()
            {
                continue;
            }
            let slot = i
                .label(LABEL_SLOT)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            held.entry(i.location.as_str())
                .or_default()
                .push((slot, i.name.as_str()));
        }
        for (m, mut replicas) in held {
            let want = target.get(m).copied().unwrap_or(0) as usize;
            replicas.sort_by(|a, b| b.cmp(a));
            let extra = replicas.len().saturating_sub(want);
            out.extend(replicas.into_iter().take(extra).map(|(_, n)| n.to_string()));
        }
    }
    out
}

/// A pending replica that exists on the drained member and stays there.
fn stuck(p: &PendingReplica, obs: &Observed, member: &str) -> Option<Stuck> {
    if !p.exists {
        return None;
    }
    let i = obs.instances.iter().find(|i| {
        i.location == member
            && i.label(LABEL_SERVICE) == Some(p.service.as_str())
            && i.label(LABEL_SLOT) == Some(p.slot.as_str())
    })?;
    let reason = if p.reason.members().is_empty() {
        // See `diff::slot_action`: a replica without an other name.
        "its container_name gives it a single name, so no replacement can run beside it (move it with `up` after changing the placement, or stop-first by hand)".to_string()
    } else if p.reason.for_member(member) == Some(&Rejection::Draining) {
        let others: Vec<String> = p
            .reason
            .members()
            .iter()
            .filter(|r| r.member != member)
            .map(|r| r.to_string())
            .collect();
        if others.is_empty() {
            "no other cluster member".to_string()
        } else {
            format!("no other member can take it: {}", others.join("; "))
        }
    } else {
        return None;
    };
    Some(Stuck {
        name: i.name.clone(),
        service: p.service.clone(),
        reason,
    })
}
