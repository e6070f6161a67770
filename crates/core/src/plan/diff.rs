//! Desired + observed -> ordered actions (see the parent module documentation).

use std::collections::{BTreeMap, BTreeSet};

use ic_compose::Project;

use super::oci::short;
use super::placement::PendingReplica;
use super::storage::SHARED_DRIVERS;
use super::{
    Action, AnonymousVolume, Desired, InstancePlan, InstanceTemplate, Observed, ObservedInstance,
    Plan, PlanError, Stage, addresses, allocate_subnet, live_key, mapping, span,
};
use crate::keys::{
    LABEL_HASH, LABEL_PROJECT, LABEL_REPLACES, LABEL_RETIRED, LABEL_SERVICE, LABEL_SLOT,
    LABEL_STATIC_HASH, LABEL_VERSION,
};
use crate::schedule::{self, ExistingReplica, Mode, Outcome, SlotKey};

/// `up` flags that change the diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Recreate every replica even when its spec did not change.
    pub force_recreate: bool,
    /// Never recreate a replica whose spec changed.
    pub no_recreate: bool,
    /// Remove replicas of services that are no longer in the compose file.
    pub remove_orphans: bool,
    /// Create without starting; do not start stopped replicas.
    pub no_start: bool,
    /// Offline members still within their grace period (`watch --grace`): their replicas
    /// stay where they are, counted and left alone, and nothing new is placed there. Replicas
    /// on other offline members are re-created elsewhere under the slot's other name (the
    /// stranded instance keeps its name in Incus's database), and their removal is deferred
    /// until the member is back.
    pub grace: BTreeSet<String>,
    /// Members being drained (`node drain`): their replicas are re-created on other members
    /// under the slot's other name (`web-3` <-> `web-3-b`, labelled
    /// `user.incus-compose.replaces`), and the old ones removed; a replica that no member can
    /// take stays (pending). Global services' replicas there are removed. The engine runs the
    /// creations, waits until they run (healthy), then the removals.
    pub drain: BTreeSet<String>,
    /// Replicas (instance names) to move elsewhere as a drain moves them (`node restore
    /// --rebalance`, see `plan::drain::rebalance_evictions`): the scheduler places their slots
    /// again as if their member were gone.
    pub evict: BTreeSet<String>,
}

/// `down` flags.
#[derive(Debug, Clone, Default)]
pub struct DownOptions {
    /// Also remove the project's named volumes.
    pub volumes: bool,
    /// Also remove replicas of services no longer in the compose file.
    pub remove_orphans: bool,
    /// Seconds to wait for a clean stop (None: each service's `stop_grace_period`, else 10).
    pub timeout: Option<i64>,
}

/// Dependency level of every service: 0 without `depends_on`, else one more than the deepest
/// dependency.
/// Network config keys `up` updates on an existing network of ours (the service-name DNS
/// records change with the services; the rest of a network is fixed at creation).
const NETWORK_KEYS_KEPT_UP_TO_DATE: &[&str] = &["raw.dnsmasq"];
/// Keys kept up to date on every network of ours, whatever its kind (egress and the rules of
/// `internal`, see `egress.rs`): a network made by an older version gets them on the next `up`.
const NETWORK_RULE_KEYS: &[&str] = &[
    "ipv4.nat",
    "security.acls",
    "security.acls.default.egress.action",
    "security.acls.default.ingress.action",
];

pub fn dependency_levels(project: &Project) -> BTreeMap<String, usize> {
    let mut levels: BTreeMap<String, usize> = BTreeMap::new();
    for name in project.services_in_dependency_order() {
        let level = project.services[name]
            .depends_on
            .keys()
            .filter_map(|d| levels.get(d))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        levels.insert(name.to_string(), level);
    }
    levels
}

/// The Incus key that records the image an instance was made from.
const BASE_IMAGE: &str = "volatile.base_image";

fn is_ours(config: &BTreeMap<String, String>, compose: &str) -> bool {
    config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
}

fn owner_hint(config: &BTreeMap<String, String>) -> String {
    match config.get(LABEL_PROJECT) {
        Some(p) => format!(" (it belongs to compose project {p:?})"),
        None => String::new(),
    }
}

fn slot_key(template: &InstanceTemplate, slot: &str) -> Option<SlotKey> {
    match template.spec.mode {
        Mode::Global => Some(SlotKey::Member(slot.to_string())),
        Mode::Replicated { .. } => slot.parse().ok().map(SlotKey::Replica),
    }
}

/// The actions that take `observed` to `desired`: one function per kind of object
/// ([`project_actions`], [`network_actions`], [`replica_actions`], [`check_names`],
/// [`volume_actions`]), then [`order_stages`].
pub fn diff(d: &Desired, obs: &Observed, o: &DiffOptions) -> Result<Plan, PlanError> {
    let mut warnings = d.warnings.clone();
    let project_stage = project_actions(d, obs);
    let mut network_stage = network_actions(d, obs)?;
    // Members' own keys first (a member that joined needs its tunnel before DNS updates).
    let (member_stage, rest): (Vec<Action>, Vec<Action>) = network_stage
        .into_iter()
        .partition(|a| matches!(a, Action::UpdateNetworkMember { .. }));
    network_stage = rest;
    let mut replicas = replica_actions(d, obs, o, &mut warnings)?;
    addresses::assign(
        d,
        obs,
        &replicas.placement,
        &replicas.removed,
        &mut replicas.service_actions,
        &mut network_stage,
    )?;
    check_names(d, obs, &replicas)?;
    let volume_stage = volume_actions(d, obs, &replicas.volume_needs)?;
    let Replicas {
        removals,
        mut service_actions,
        mut unchanged,
        mut placement,
        pending,
        stop_first,
        ..
    } = replicas;
    let stages = order_stages(
        d,
        vec![
            ("project", project_stage),
            ("network members", member_stage),
            ("networks", network_stage),
            ("volumes", volume_stage),
            ("removals", removals),
        ],
        &mut service_actions,
    );
    placement.sort();
    unchanged.sort();
    let rollouts = d
        .services
        .iter()
        .filter(|t| {
            stages
                .iter()
                .flat_map(|s| &s.actions)
                .any(|a| matches!(a, Action::Recreate(p) if p.service == t.service))
        })
        .map(|t| {
            let mut spec = t.rollout.clone();
            if let Some(slots) = stop_first.get(&t.service) {
                spec.stop_first_slots = slots.clone();
            }
            (t.service.clone(), spec)
        })
        .collect();
    Ok(Plan {
        incus_project: d.incus_project.clone(),
        stages,
        unchanged,
        placement,
        pending,
        rollouts,
        warnings,
    })
}

fn not_ours(
    d: &Desired,
    kind: &'static str,
    name: &str,
    config: &BTreeMap<String, String>,
) -> PlanError {
    PlanError::NotOurs {
        kind,
        name: name.to_string(),
        project: d.incus_project.clone(),
        compose: d.compose_project.clone(),
        owner: owner_hint(config),
    }
}

/// The Incus project, when it does not exist yet.
fn project_actions(d: &Desired, obs: &Observed) -> Vec<Action> {
    if obs.project_exists {
        return Vec::new();
    }
    vec![Action::CreateProject {
        name: d.incus_project.clone(),
        config: incus_project_config(&d.compose_project),
    }]
}

/// The config of the Incus project incus-compose creates for compose project `compose`
/// (also used by `up` to create it before taking the project lock).
pub fn incus_project_config(compose: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("features.images".to_string(), "false".to_string()),
        ("features.profiles".to_string(), "false".to_string()),
        ("features.networks".to_string(), "false".to_string()),
        ("features.storage.volumes".to_string(), "true".to_string()),
        (LABEL_PROJECT.to_string(), compose.to_string()),
    ])
}

/// A subnet the compose file gives a network to create must not overlap another network's:
/// Incus would fail the creation part way (dnsmasq cannot listen on an address a bridge
/// already holds; seen with Incus 6.0 on a cluster, which then left the tunnel's interface on
/// a member and failed every later creation of that network with "File exists"). Docker
/// refuses it alike ("Pool overlaps with other one on this address space").
fn subnet_free(
    net: &super::DesiredNetwork,
    subnet: &super::Subnet,
    obs: &Observed,
) -> Result<(), PlanError> {
    for n in obs.networks.iter().filter(|n| n.name != net.name) {
        let Some(address) = n.config.get("ipv4.address") else {
            continue;
        };
        let Some(theirs) = super::Subnet::from_address(address) else {
            continue;
        };
        if theirs.overlaps(subnet) {
            return Err(PlanError::SubnetTaken {
                network: net.key.clone(),
                subnet: subnet.bridge_address(),
                other: n.name.clone(),
                address: address.clone(),
                owner: n
                    .config
                    .get(LABEL_PROJECT)
                    .map(|p| format!(", of compose project {p}"))
                    .unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// Networks: missing ones created (with a free subnet when none is given), unfinished ones
/// finished, the keys kept up to date updated; external ones must exist.
fn network_actions(d: &Desired, obs: &Observed) -> Result<Vec<Action>, PlanError> {
    let compose = d.compose_project.as_str();
    let mut actions = Vec::new();
    let mut used_subnets: Vec<String> = obs
        .networks
        .iter()
        .filter_map(|n| n.config.get("ipv4.address").cloned())
        .collect();
    let mut used_vnis = span::used_vnis(obs.networks.iter().map(|n| &n.config));
    for net in &d.networks {
        let existing = obs.networks.iter().find(|n| n.name == net.name);
        match (existing, net.external) {
            (Some(_), true) => {}
            (None, true) => {
                return Err(PlanError::ExternalMissing {
                    kind: "network",
                    name: net.name.clone(),
                });
            }
            // An earlier `up` failed (or was killed) half way through a cluster-wide creation
            // (the project records each network it starts creating: `claims_network`): finish
            // it with the configuration (subnet, VNI) it was started with; one left pending
            // before its global step has none yet.
            (Some(n), false) if obs.claims_network(n, compose) && n.unfinished() => {
                let mut config = net.config.clone();
                for k in ["ipv4.address", crate::keys::LABEL_VNI, "tunnel.v.id"] {
                    if let Some(a) = n.config.get(k) {
                        config.insert(k.into(), a.clone());
                    }
                }
                if !config.contains_key("ipv4.address") {
                    let subnet = match net.subnet {
                        Some(s) => s,
                        None => allocate_subnet(&net.name, &used_subnets)
                            .ok_or_else(|| PlanError::NoFreeSubnet(net.key.clone()))?,
                    };
                    used_subnets.push(subnet.bridge_address());
                    config.insert("ipv4.address".into(), subnet.bridge_address());
                }
                if net.kind == span::Kind::Span && !config.contains_key(crate::keys::LABEL_VNI) {
                    let vni = span::allocate_vni(&net.name, &used_vnis)
                        .ok_or_else(|| PlanError::NoFreeVni(net.key.clone()))?;
                    used_vnis.insert(vni);
                    config.insert(format!("tunnel.{}.id", span::TUNNEL), vni.to_string());
                    config.insert(crate::keys::LABEL_VNI.into(), vni.to_string());
                }
                actions.push(Action::CreateNetwork {
                    name: net.name.clone(),
                    kind: incus_type(&net.kind).into(),
                    config,
                    member_config: net.member_config.clone(),
                });
            }
            (Some(n), false) if is_ours(&n.config, compose) => {
                // Keys incus-compose keeps up to date on an existing network.
                let mut set = BTreeMap::new();
                // A spanning bridge's records are written by `addresses::assign`.
                let kept: &[&str] = if net.kind == span::Kind::Bridge {
                    NETWORK_KEYS_KEPT_UP_TO_DATE
                } else {
                    &[]
                };
                for key in kept.iter().chain(NETWORK_RULE_KEYS) {
                    let want = net.config.get(*key).map(String::as_str).unwrap_or("");
                    let have = n.config.get(*key).map(String::as_str).unwrap_or("");
                    if want != have {
                        set.insert(key.to_string(), want.to_string());
                    }
                }
                if !set.is_empty() {
                    actions.push(Action::UpdateNetwork {
                        name: net.name.clone(),
                        set,
                    });
                }
                // Members that joined after a spanning bridge was made: its tunnel there.
                for m in &net.fill_members {
                    if let Some(set) = net.member_config.get(m) {
                        actions.push(Action::UpdateNetworkMember {
                            name: net.name.clone(),
                            member: m.clone(),
                            set: set.clone(),
                        });
                    }
                }
            }
            (Some(n), false) => return Err(not_ours(d, "network", &n.name, &n.config)),
            (None, false) => {
                if let Some(s) = net.subnet {
                    subnet_free(net, &s, obs)?;
                }
                let subnet = match net.subnet {
                    Some(s) => s,
                    None => allocate_subnet(&net.name, &used_subnets)
                        .ok_or_else(|| PlanError::NoFreeSubnet(net.key.clone()))?,
                };
                used_subnets.push(subnet.bridge_address());
                let mut config = net.config.clone();
                config.insert("ipv4.address".into(), subnet.bridge_address());
                if net.kind == span::Kind::Span {
                    let vni = span::allocate_vni(&net.name, &used_vnis)
                        .ok_or_else(|| PlanError::NoFreeVni(net.key.clone()))?;
                    used_vnis.insert(vni);
                    config.insert(format!("tunnel.{}.id", span::TUNNEL), vni.to_string());
                    config.insert(crate::keys::LABEL_VNI.into(), vni.to_string());
                }
                actions.push(Action::CreateNetwork {
                    name: net.name.clone(),
                    kind: incus_type(&net.kind).into(),
                    config,
                    member_config: net.member_config.clone(),
                });
            }
        }
    }
    Ok(actions)
}

/// The Incus network type of a kind.
fn incus_type(kind: &span::Kind) -> &'static str {
    match kind {
        span::Kind::Ovn { .. } => "ovn",
        span::Kind::Bridge | span::Kind::Span => "bridge",
    }
}

/// What [`replica_actions`] decides.
struct Replicas {
    /// Removals (scale down, moves, renames, orphans), before any service stage.
    removals: Vec<Action>,
    /// Names removed by `removals`.
    removed: BTreeSet<String>,
    /// Creates, recreates and starts per service.
    service_actions: BTreeMap<String, Vec<Action>>,
    /// (volume, member) pairs that replicas need ("" = the shared pool).
    volume_needs: BTreeSet<(String, String)>,
    /// Every desired instance name -> its service.
    claimed: BTreeMap<String, String>,
    unchanged: Vec<String>,
    placement: Vec<(String, String, String)>,
    pending: Vec<PendingReplica>,
    /// Members that are offline now (Incus cannot stop or delete what they hold).
    offline: BTreeSet<String>,
    /// Removals deferred because the instance's member is offline: (name, member, reason).
    deferred: Vec<(String, String, String)>,
    /// Per service: the slots of a start-first update replaced stop-first (host ports).
    stop_first: BTreeMap<String, BTreeSet<String>>,
    /// Warnings about local data a replacement leaves on an offline member.
    left_behind: Vec<String>,
    /// Members being drained ([`DiffOptions::drain`]).
    draining: BTreeSet<String>,
    /// Replicas being moved by a rebalance ([`DiffOptions::evict`]).
    evict: BTreeSet<String>,
    /// Members Incus lists as evacuated (for the reasons given).
    evacuated: BTreeSet<String>,
}

impl Replicas {
    /// Removes `i`, or, when its member is offline, defers that (reported as a warning): Incus
    /// cannot delete it until the member is back, and one stranded instance must not fail
    /// the whole plan.
    fn remove(&mut self, i: &ObservedInstance, timeout: i64, reason: String) {
        if self.offline.contains(&i.location) {
            if !self.deferred.iter().any(|(n, _, _)| n == &i.name) {
                self.deferred
                    .push((i.name.clone(), i.location.clone(), reason));
            }
            return;
        }
        if self.removed.insert(i.name.clone()) {
            self.removals.push(Action::Remove {
                name: i.name.clone(),
                service: i.label(LABEL_SERVICE).unwrap_or_default().to_string(),
                member: i.location.clone(),
                timeout,
                reason,
            });
        }
    }
}

/// The project's observed replicas by (service, slot), and as the scheduler sees them; and
/// the surplus: when a slot has several replicas (a replacement made while a member was
/// offline, and the stranded one back with its member), the one [`keeper_rank`] ranks first
/// is the slot's, the others are returned to be removed.
#[allow(clippy::type_complexity)]
fn observed_replicas<'a>(
    d: &Desired,
    ours: &[&'a ObservedInstance],
    offline: &BTreeSet<String>,
) -> (
    Vec<ExistingReplica>,
    BTreeMap<(String, SlotKey), &'a ObservedInstance>,
    Vec<(&'a ObservedInstance, String)>,
) {
    let template_of: BTreeMap<&str, &InstanceTemplate> =
        d.services.iter().map(|t| (t.service.as_str(), t)).collect();
    let mut by_slot: BTreeMap<(String, SlotKey), &'a ObservedInstance> = BTreeMap::new();
    let mut surplus = Vec::new();
    for i in ours {
        if i.label(LABEL_RETIRED).is_some() {
            continue;
        }
        let (Some(service), Some(slot)) = (i.label(LABEL_SERVICE), i.label(LABEL_SLOT)) else {
            continue;
        };
        let Some(t) = template_of.get(service) else {
            continue;
        };
        let Some(key) = slot_key(t, slot) else {
            continue;
        };
        match by_slot.entry((service.to_string(), key)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(*i);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let other = *o.get();
                let (keep, drop) =
                    if keeper_rank(i, other, t, offline) > keeper_rank(other, i, t, offline) {
                        (*i, other)
                    } else {
                        (other, *i)
                    };
                o.insert(keep);
                surplus.push((drop, format!("surplus: {} serves its slot", keep.name)));
            }
        }
    }
    let existing = by_slot
        .iter()
        .map(|((service, key), i)| ExistingReplica {
            service: service.clone(),
            slot: key.clone(),
            member: i.location.clone(),
        })
        .collect();
    (existing, by_slot, surplus)
}

/// Instances on offline members that Incus lists without their configuration (it cannot ask
/// their member), in an Incus project incus-compose made for this compose project, recognised
/// by name as replicas of the desired services: a name that is the instance name (or the
/// other name) of a slot — for a global service, the slot of the member it is on. They get
/// the project, service and slot labels (no hash: they are never kept over a replica that
/// runs).
fn stand_ins(d: &Desired, obs: &Observed, offline: &BTreeSet<String>) -> Vec<ObservedInstance> {
    let compose = d.compose_project.as_str();
    if obs.project_config.get(LABEL_PROJECT).map(String::as_str) != Some(compose) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for i in &obs.instances {
        if !i.config.is_empty() || !offline.contains(&i.location) {
            continue;
        }
        let named = |t: &InstanceTemplate, slot: &str| {
            t.instance_name(slot) == i.name || t.alternate_name(slot).as_ref() == Some(&i.name)
        };
        let found = d.services.iter().find_map(|t| {
            let slot = match t.spec.mode {
                Mode::Global => i.location.clone(),
                Mode::Replicated { .. } if t.container_name.is_some() => "1".to_string(),
                Mode::Replicated { .. } => {
                    let base = i
                        .name
                        .strip_suffix(super::ALTERNATE_SUFFIX)
                        .unwrap_or(&i.name);
                    let n: u32 = base.rsplit_once('-')?.1.parse().ok()?;
                    n.to_string()
                }
            };
            named(t, &slot).then(|| (t.service.clone(), slot))
        });
        if let Some((service, slot)) = found {
            let mut config = BTreeMap::new();
            config.insert(LABEL_PROJECT.to_string(), compose.to_string());
            config.insert(LABEL_SERVICE.to_string(), service);
            config.insert(LABEL_SLOT.to_string(), slot);
            out.push(ObservedInstance {
                name: i.name.clone(),
                location: i.location.clone(),
                running: false,
                config,
            });
        }
    }
    out
}

/// Which of two replicas of one slot stays (the greater): one on an online member, not marked
/// replaced; then a prepared one that runs (made from the current spec: its hash, written last
/// once its files are in and it started, matches); then a running one (a running replica is
/// never given up for one that does not run: the surplus goes only once its keeper runs);
/// then the replacement made while the other's member was offline; then one made from the
/// current spec; then the name that sorts first.
fn keeper_rank(
    i: &ObservedInstance,
    other: &ObservedInstance,
    t: &InstanceTemplate,
    offline: &BTreeSet<String>,
) -> (
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    std::cmp::Reverse<String>,
) {
    let prepared = i.label(LABEL_HASH) == Some(t.hash.as_str());
    (
        !offline.contains(&i.location),
        i.label(crate::keys::LABEL_REPLACED_BY).is_none(),
        prepared && i.running,
        i.running,
        i.label(LABEL_REPLACES) == Some(other.name.as_str()),
        prepared,
        std::cmp::Reverse(i.name.clone()),
    )
}

/// Replicas: schedule, then per slot create, recreate, start or keep; removals for scale
/// down, moves and (with `--remove-orphans`) orphans; pending slots with their reasons.
fn replica_actions(
    d: &Desired,
    obs: &Observed,
    o: &DiffOptions,
    warnings: &mut Vec<String>,
) -> Result<Replicas, PlanError> {
    let compose = d.compose_project.as_str();
    let offline: BTreeSet<String> = obs
        .members
        .iter()
        .filter(|m| !m.online)
        .map(|m| m.name.clone())
        .collect();
    let recognised = stand_ins(d, obs, &offline);
    let ours: Vec<&ObservedInstance> = obs
        .instances
        .iter()
        .filter(|i| is_ours(&i.config, compose) && !super::ingress::is_forwarder(&i.config))
        .chain(recognised.iter())
        .collect();
    let (mut existing, by_slot, surplus) = observed_replicas(d, &ours, &offline);
    // Evicted replicas: placed again as if their member were gone (they stay until moved).
    for e in &mut existing {
        if by_slot
            .get(&(e.service.clone(), e.slot.clone()))
            .is_some_and(|i| o.evict.contains(&i.name))
        {
            e.member.clear();
        }
    }
    // Slots without a replica go back to the member of their anonymous volumes.
    let homes = super::placement::add_volume_homes(obs, compose, &mut existing, |service, slot| {
        let t = d.services.iter().find(|t| t.service == service)?;
        slot_key(t, slot)
    });
    let specs: Vec<_> = d.services.iter().map(|t| t.spec.clone()).collect();
    // Members within their grace period keep their replicas but take no new ones.
    let members: Vec<schedule::Member> = obs
        .members
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if !m.online && o.grace.contains(&m.name) {
                m.online = true;
                m.manual = true;
            }
            m.draining |= o.drain.contains(&m.name);
            m
        })
        .collect();
    let mut sched = schedule::schedule(&members, &specs, &existing)
        .map_err(|e| PlanError::Schedule(e.to_string()))?;
    super::placement::forget_volume_homes(&mut sched, &homes);
    let mut r = Replicas {
        removals: Vec::new(),
        removed: BTreeSet::new(),
        service_actions: BTreeMap::new(),
        volume_needs: BTreeSet::new(),
        claimed: BTreeMap::new(),
        unchanged: Vec::new(),
        placement: Vec::new(),
        pending: Vec::new(),
        offline,
        deferred: Vec::new(),
        stop_first: BTreeMap::new(),
        left_behind: Vec::new(),
        draining: o.drain.clone(),
        evict: o.evict.clone(),
        evacuated: obs
            .members
            .iter()
            .filter(|m| m.evacuated)
            .map(|m| m.name.clone())
            .collect(),
    };
    orphans(d, &ours, o, &mut r, warnings);
    for (i, why) in surplus {
        let timeout = d
            .services
            .iter()
            .find(|t| Some(t.service.as_str()) == i.label(LABEL_SERVICE))
            .map_or(10, |t| t.stop_timeout);
        r.remove(i, timeout, why);
    }
    let template_of: BTreeMap<&str, &InstanceTemplate> =
        d.services.iter().map(|t| (t.service.as_str(), t)).collect();
    for p in &sched.placements {
        let Some(t) = template_of.get(p.service.as_str()) else {
            continue;
        };
        if let Some(u) = p.unsatisfiable() {
            return Err(PlanError::Unschedulable {
                service: p.service.clone(),
                reason: u.to_string(),
            });
        }
        for rm in &p.removals {
            if let Some(i) = by_slot.get(&(p.service.clone(), rm.key.clone())) {
                r.remove(i, t.stop_timeout, rm.reason.to_string());
            }
        }
        for slot in p.pending() {
            let Outcome::Pending(reason) = &slot.outcome else {
                continue;
            };
            let slot_text = slot.key.to_string();
            r.pending.push(PendingReplica {
                service: p.service.clone(),
                name: t.instance_name(&slot_text),
                slot: slot_text,
                exists: slot.previous.is_some(),
                reason: reason.clone(),
            });
        }
        let per_member = p.per_member();
        if !t.volumes.is_empty() && !d.shared_storage && per_member.len() > 1 {
            warnings.push(format!(
                "service {:?} mounts named volumes and its replicas run on {} members ({}), but no storage pool is shared by the members: each replica has its own local copy of the data, and its instances cannot move when a member fails. Use a shared pool ({}) with `x-incus: {{pool: NAME}}`, or run one replica",
                p.service,
                per_member.len(),
                per_member.keys().copied().collect::<Vec<_>>().join(", "),
                SHARED_DRIVERS.join(", ")
            ));
        }
        for slot in &p.slots {
            let Outcome::Assigned(member) = &slot.outcome else {
                continue;
            };
            let current = by_slot.get(&(p.service.clone(), slot.key.clone())).copied();
            slot_action(d, t, &slot.key.to_string(), member, current, o, &mut r)?;
        }
        if t.rollout.update.start_first && !t.spec.fixed_host_ports.is_empty() {
            port_moves(d, t, p, &members, &mut r, warnings);
        }
    }
    retired(d, &ours, &mut r);
    warnings.append(&mut r.left_behind);
    for (name, member, why) in &r.deferred {
        warnings.push(format!(
            "{name} is on member {member}, which is offline: its removal ({why}) waits until the member is back"
        ));
    }
    Ok(r)
}

/// Start-first with fixed host ports (`rollout::port_moves`): each replaced replica's new
/// instance starts on another eligible member where none of the ports is bound (one of the
/// placement's spare members, or one an earlier batch left), in the same spread group; a
/// replica with no such member left is replaced stop-first where it is, with a warning. A
/// service whose volumes (named or anonymous) are local to each member never moves (its data would not).
fn port_moves(
    d: &Desired,
    t: &InstanceTemplate,
    p: &schedule::Placement,
    members: &[schedule::Member],
    r: &mut Replicas,
    warnings: &mut Vec<String>,
) {
    let Some(actions) = r.service_actions.get_mut(&t.service) else {
        return;
    };
    let recreates: Vec<(usize, String, String)> = actions
        .iter()
        .enumerate()
        .filter_map(|(k, a)| match a {
            Action::Recreate(p) => Some((k, p.slot.clone(), p.member.clone())),
            _ => None,
        })
        .collect();
    if recreates.is_empty() {
        return;
    }
    // Named volumes and anonymous ones (which follow the slot) on a pool local to each member.
    let local_data = (!t.volumes.is_empty() || t.anonymous_volumes.iter().any(|a| !a.shared))
        && !d.shared_storage;
    let spare: Vec<String> = if local_data {
        Vec::new()
    } else {
        p.spare.iter().map(|m| m.to_string()).collect()
    };
    let member = |name: &str| members.iter().find(|m| m.name == name);
    // Spread groups: the values of the preferences that group members (those that name the
    // member itself are satisfied by any member, one replica each).
    let same_group = |a: &str, b: &str| {
        let (Some(a), Some(b)) = (member(a), member(b)) else {
            return false;
        };
        t.spec.preferences.iter().all(|pref| {
            let va = a.spread_value(&pref.over);
            va == Some(a.name.as_str()) || va == b.spread_value(&pref.over)
        })
    };
    let slots: Vec<(String, String)> = recreates
        .iter()
        .map(|(_, slot, m)| (slot.clone(), m.clone()))
        .collect();
    let to = crate::rollout::port_moves(&slots, t.rollout.update.parallelism, &spare, same_group);
    let ports = t
        .spec
        .fixed_host_ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    for ((k, slot, old), to) in recreates.iter().zip(to) {
        let Action::Recreate(plan) = &mut actions[*k] else {
            continue;
        };
        match to {
            Some(to) => {
                plan.member = to.clone();
                plan.reason = format!(
                    "{}; started on {to}, as host port {ports} cannot be bound twice on {old}",
                    plan.reason
                );
                if let Some(e) = r
                    .placement
                    .iter_mut()
                    .find(|(_, n, s)| n == &plan.name && s == &t.service)
                {
                    e.0 = to;
                }
            }
            None => {
                r.stop_first
                    .entry(t.service.clone())
                    .or_default()
                    .insert(slot.clone());
                warnings.push(format!(
                    "service {:?}: {} is replaced stop-first: it publishes host port {ports}, which its new replica cannot bind beside the old one on {old}, and {}",
                    t.service,
                    plan.old_name.as_deref().unwrap_or(&plan.name),
                    if local_data {
                        "its volumes are local to each member (its data cannot move)"
                    } else {
                        "no other eligible member is free of that port"
                    }
                ));
            }
        }
    }
}

/// Instances a rolling update retired: kept while their service is being updated (for a
/// rollback), removed once it has nothing left to replace.
fn retired(d: &Desired, ours: &[&ObservedInstance], r: &mut Replicas) {
    for i in ours {
        let (Some(service), Some(_)) = (i.label(LABEL_SERVICE), i.label(LABEL_RETIRED)) else {
            continue;
        };
        let Some(t) = d.services.iter().find(|t| t.service == service) else {
            continue;
        };
        let rolling = r
            .service_actions
            .get(service)
            .is_some_and(|a| a.iter().any(|a| matches!(a, Action::Recreate(_))));
        if !rolling {
            r.remove(
                i,
                t.stop_timeout,
                "retired by an update that completed".into(),
            );
        }
    }
}

/// Replicas of services that left the file: removed with `--remove-orphans`, else named in
/// a warning.
fn orphans(
    d: &Desired,
    ours: &[&ObservedInstance],
    o: &DiffOptions,
    r: &mut Replicas,
    warnings: &mut Vec<String>,
) {
    for i in ours {
        let service = i.label(LABEL_SERVICE).unwrap_or_default();
        if d.all_services.contains(service) {
            continue;
        }
        if o.remove_orphans {
            r.remove(
                i,
                10,
                format!("orphan: service {service:?} is not in the compose file"),
            );
        } else {
            warnings.push(format!(
                "found orphan instance {} (service {service:?} is not in the compose file); `up --remove-orphans` removes it",
                i.name
            ));
        }
    }
}

/// One assigned slot: create it, recreate it (spec or image changed, moved, renamed),
/// start it, or keep it.
fn slot_action(
    d: &Desired,
    t: &InstanceTemplate,
    slot_text: &str,
    member: &str,
    current: Option<&ObservedInstance>,
    o: &DiffOptions,
    r: &mut Replicas,
) -> Result<(), PlanError> {
    let name = t.instance_name(slot_text);
    if let Some(other) = r.claimed.insert(name.clone(), t.service.clone()) {
        return Err(PlanError::NameCollision {
            first: format!("a replica of service {other:?}"),
            second: format!("a replica of service {:?}", t.service),
            incus: name,
        });
    }
    r.placement
        .push((member.to_string(), name.clone(), t.service.clone()));
    for v in &t.volumes {
        // A shared pool holds one volume for the whole cluster (created without a target).
        let on = if d.shared_storage { "" } else { member };
        r.volume_needs.insert((v.clone(), on.to_string()));
    }
    let mut config = t.config.clone();
    config.insert(LABEL_SLOT.into(), slot_text.to_string());
    let plan = |reason: &str, old_member: Option<String>| InstancePlan {
        name: name.clone(),
        service: t.service.clone(),
        slot: slot_text.to_string(),
        member: member.to_string(),
        old_member,
        image: t.image.clone(),
        image_fingerprint: t.image_fingerprint.clone(),
        template_image: t.image.to_string(),
        config: config.clone(),
        devices: t.devices.clone(),
        command: t.command.clone(),
        start: !o.no_start,
        stop_timeout: t.stop_timeout,
        reason: reason.to_string(),
        old_name: None,
        files: t.files.clone(),
        // Named after the slot's first name: the slot's replacement (under either name)
        // mounts the same volume.
        anonymous_volumes: t
            .anonymous_volumes
            .iter()
            .map(|a| AnonymousVolume {
                volume: Some(mapping::anonymous_volume_name(&name, &a.target)),
                ..a.clone()
            })
            .collect(),
    };
    let alternate = t.alternate_name(slot_text);
    let stranded = current.is_some_and(|i| r.offline.contains(&i.location));
    // Leaving a member being drained: start-first, beside the old one (removed after).
    let evicted = current.is_some_and(|i| r.evict.contains(&i.name) && i.location != member);
    let drained = evicted
        || current.is_some_and(|i| r.draining.contains(&i.location) && i.location != member);
    let actions = r.service_actions.entry(t.service.clone()).or_default();
    let mut recreated = false;
    match current {
        None => actions.push(Action::Create(Box::new(plan("new", None)))),
        // Kept on an offline member (within its grace period): left alone.
        Some(i) if stranded && i.location == member => r.unchanged.push(i.name.clone()),
        // Stranded on an offline member: a replacement elsewhere, under the slot's other
        // name (the stranded one keeps its name in Incus until its member is back). Drained:
        // the same, so that both run at once for a while.
        Some(i) if stranded || drained => {
            let why = if evicted {
                format!("rebalanced from {}", i.location)
            } else if drained {
                format!("member {} drained", i.location)
            } else {
                format!("member {} offline", i.location)
            };
            let other = if i.name == name {
                alternate.clone()
            } else {
                Some(name.clone())
            };
            match other {
                Some(other) => {
                    let mut p = plan(&why, None);
                    p.name = other.clone();
                    p.config.insert(LABEL_REPLACES.into(), i.name.clone());
                    // The replacement is the one placed (its address and DNS records on a
                    // spanning network).
                    if let Some(last) = r.placement.last_mut() {
                        last.1 = other.clone();
                    }
                    // Local volumes cannot follow: their data stays on the offline member
                    // (a drain names the volumes it leaves itself: `engine::drain`).
                    if stranded && !t.volumes.is_empty() && !d.shared_storage {
                        r.left_behind.push(format!(
                            "{} replaces {} on {member} without its data: volume(s) {} are local to {}, which is offline; their data there stays there (the new replica uses {member}'s copy)",
                            other,
                            i.name,
                            t.volumes.join(", "),
                            i.location
                        ));
                    }
                    r.claimed.insert(other, t.service.clone());
                    actions.push(Action::Create(Box::new(p)));
                    r.remove(i, t.stop_timeout, format!("replaced: {why}"));
                }
                None => r.pending.push(PendingReplica {
                    service: t.service.clone(),
                    name: i.name.clone(),
                    slot: slot_text.to_string(),
                    exists: true,
                    reason: schedule::PendingReason(Vec::new().into()),
                }),
            }
        }
        Some(i)
            if (i.name != name && Some(&i.name) != alternate.as_ref()) || i.location != member =>
        {
            let why = if i.name != name {
                format!("renamed from {}", i.name)
            } else if r.evacuated.contains(&i.location) {
                // Stopped there by `incus cluster evacuate` (one Incus moved is elsewhere).
                format!("member {} evacuated", i.location)
            } else {
                format!("moved from {}", i.location)
            };
            actions.push(Action::Create(Box::new(plan(&why, None))));
            r.remove(i, t.stop_timeout, why);
        }
        Some(i) => match recreate_reason(t, i, o) {
            Some(_) if in_place(t, i, o) => actions.push(Action::UpdateInPlace {
                name: i.name.clone(),
                service: t.service.clone(),
                set: live_changes(t, i),
            }),
            Some(why) => {
                let mut p = plan(&why, Some(i.location.clone()));
                p.old_name = Some(i.name.clone());
                // start-first: the new replica takes the slot's other name, beside the old.
                if t.rollout.update.start_first
                    && let Some(alt) = &alternate
                {
                    p.name = if &i.name == alt {
                        name.clone()
                    } else {
                        alt.clone()
                    };
                }
                if p.name != name {
                    r.claimed.insert(p.name.clone(), t.service.clone());
                }
                // The new replica is the one placed (its own address and DNS record on a
                // spanning network), also when it takes the slot's usual name back.
                if let Some(last) = r.placement.last_mut() {
                    last.1 = p.name.clone();
                }
                recreated = true;
                actions.push(Action::Recreate(Box::new(p)));
            }
            None if !i.running && !o.no_start => actions.push(Action::Start {
                name: i.name.clone(),
                service: t.service.clone(),
            }),
            None => r.unchanged.push(i.name.clone()),
        },
    }
    // A replica kept under the slot's other name (after a start-first update) is placed
    // under that name: its records name it, with its address. Not one a drain replaces
    // (its replacement, under the slot's first name, is the one placed).
    if let Some(i) = current
        && Some(&i.name) == alternate.as_ref()
        && !stranded
        && !drained
        && !recreated
        && let Some(last) = r.placement.iter_mut().rev().find(|p| p.1 == name)
    {
        last.1 = i.name.clone();
    }
    Ok(())
}

/// Whether a replica whose spec changed can take the change in place: only [`live_key`]s
/// differ (same static hash), it runs, and no `--force-recreate`.
fn in_place(t: &InstanceTemplate, i: &ObservedInstance, o: &DiffOptions) -> bool {
    !o.force_recreate
        && i.running
        && i.label(LABEL_HASH).is_some()
        && i.label(LABEL_HASH) != Some(t.hash.as_str())
        && i.label(LABEL_STATIC_HASH) == Some(t.static_hash.as_str())
}

/// The config keys to set for an in-place update (an empty value removes a key), with the
/// new hash labels.
fn live_changes(t: &InstanceTemplate, i: &ObservedInstance) -> BTreeMap<String, String> {
    let mut set = BTreeMap::new();
    let keys: BTreeSet<&String> = t
        .config
        .keys()
        .chain(i.config.keys())
        .filter(|k| live_key(k))
        .collect();
    for k in keys {
        let want = t.config.get(k).map(String::as_str).unwrap_or("");
        if i.config.get(k).map(String::as_str).unwrap_or("") != want {
            set.insert(k.clone(), want.to_string());
        }
    }
    for k in [LABEL_HASH, LABEL_VERSION] {
        if let Some(v) = t.config.get(k) {
            set.insert(k.to_string(), v.clone());
        }
    }
    set
}

/// Why a replica in place must be recreated: its spec changed, its image reference names
/// another image now (a tag moved and was pulled, an alias re-pointed: as `docker compose up`
/// does), or `--force-recreate`. `None` with `--no-recreate`.
fn recreate_reason(t: &InstanceTemplate, i: &ObservedInstance, o: &DiffOptions) -> Option<String> {
    // No hash at all: its creation was cut short (the hash is written last, once its files are
    // in and it started). Never finished, so never kept, also under `--no-recreate` (`scale`).
    if i.label(LABEL_HASH).is_none() {
        return Some("its creation was interrupted".to_string());
    }
    if o.no_recreate {
        return None;
    }
    if i.label(LABEL_HASH) != Some(t.hash.as_str()) {
        return Some("configuration changed".to_string());
    }
    if let (Some(want), Some(have)) = (&t.image_fingerprint, i.label(BASE_IMAGE))
        && !have.is_empty()
        && want != have
    {
        return Some(format!(
            "image {} changed ({} -> {})",
            t.image,
            short(have),
            short(want)
        ));
    }
    o.force_recreate.then(|| "--force-recreate".to_string())
}

/// Desired names taken by objects that are not ours (or ours, of another service, and
/// staying) fail the plan before any change.
fn check_names(d: &Desired, obs: &Observed, r: &Replicas) -> Result<(), PlanError> {
    let compose = d.compose_project.as_str();
    for (name, service) in &r.claimed {
        let Some(i) = obs.instances.iter().find(|i| &i.name == name) else {
            continue;
        };
        // Listed without its configuration, on an offline member: see `stand_ins`.
        let stand_in = i.config.is_empty()
            && obs
                .members
                .iter()
                .any(|m| m.name == i.location && !m.online);
        if stand_in {
            continue;
        }
        if !is_ours(&i.config, compose) {
            return Err(not_ours(d, "instance", name, &i.config));
        }
        let same = i.label(LABEL_SERVICE) == Some(service.as_str()) && !super::is_oneoff(&i.config);
        if !same && !r.removed.contains(name) {
            return Err(PlanError::NameCollision {
                first: format!(
                    "existing instance {name} of service {:?}",
                    i.label(LABEL_SERVICE).unwrap_or("?")
                ),
                second: format!("a replica of service {service:?}"),
                incus: name.clone(),
            });
        }
    }
    Ok(())
}

/// Named volumes, per member that runs a replica using them ("" = the shared pool).
fn volume_actions(
    d: &Desired,
    obs: &Observed,
    needs: &BTreeSet<(String, String)>,
) -> Result<Vec<Action>, PlanError> {
    let compose = d.compose_project.as_str();
    let mut actions = Vec::new();
    for (name, member) in needs {
        let Some(v) = d.volumes.iter().find(|v| &v.name == name) else {
            continue;
        };
        let same_name: Vec<_> = obs.volumes.iter().filter(|o| &o.name == name).collect();
        if let Some(other) = same_name.iter().find(|o| !is_ours(&o.config, compose)) {
            return Err(not_ours(d, "volume", &other.name, &other.config));
        }
        if !same_name.iter().any(|o| &o.location == member) {
            actions.push(Action::CreateVolume {
                pool: v.pool.clone(),
                name: name.clone(),
                member: member.clone(),
                config: v.config.clone(),
            });
        }
    }
    Ok(actions)
}

/// The fixed stages first, then one stage per `depends_on` level of services; empty stages
/// are left out.
fn order_stages(
    d: &Desired,
    fixed: Vec<(&str, Vec<Action>)>,
    service_actions: &mut BTreeMap<String, Vec<Action>>,
) -> Vec<Stage> {
    let mut stages: Vec<Stage> = fixed
        .into_iter()
        .map(|(title, actions)| Stage {
            title: title.into(),
            actions,
        })
        .collect();
    let mut levels: BTreeMap<usize, Vec<&InstanceTemplate>> = BTreeMap::new();
    let mut level_of: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &d.services {
        let l = t
            .depends_on
            .iter()
            .filter_map(|x| level_of.get(x.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level_of.insert(&t.service, l);
        levels.entry(l).or_default().push(t);
    }
    for ts in levels.values() {
        let names: Vec<&str> = ts.iter().map(|t| t.service.as_str()).collect();
        let mut actions = Vec::new();
        for t in ts {
            actions.extend(service_actions.remove(&t.service).unwrap_or_default());
        }
        stages.push(Stage {
            title: format!("services {}", names.join(", ")),
            actions,
        });
    }
    stages.retain(|s| !s.actions.is_empty());
    stages
}

/// The actions of `down`: remove the project's instances (dependents first), then its
/// networks, then (with `volumes`) its volumes, then the Incus project if incus-compose made
/// it and nothing else is left in it. Objects of other projects, or without labels, stay.
pub fn plan_down(
    compose: &str,
    incus_project: &str,
    levels: &BTreeMap<String, usize>,
    stop_timeouts: &BTreeMap<String, i64>,
    obs: &Observed,
    o: &DownOptions,
) -> Plan {
    let mut warnings = Vec::new();
    let mut by_level: BTreeMap<usize, Vec<Action>> = BTreeMap::new();
    let mut kept_instances = 0usize;
    for i in &obs.instances {
        if !is_ours(&i.config, compose) {
            kept_instances += 1;
            continue;
        }
        let service = i.label(LABEL_SERVICE).unwrap_or_default().to_string();
        let level = match levels.get(&service) {
            Some(l) => *l,
            // Forwarders of published ports (see `ingress`) go first.
            None if super::ingress::is_forwarder(&i.config) => usize::MAX,
            None if o.remove_orphans => 0,
            None => {
                warnings.push(format!(
                    "found orphan instance {} (service {service:?} is not in the compose file); `down --remove-orphans` removes it",
                    i.name
                ));
                kept_instances += 1;
                continue;
            }
        };
        let timeout = o
            .timeout
            .or_else(|| stop_timeouts.get(&service).copied())
            .unwrap_or(10);
        by_level.entry(level).or_default().push(Action::Remove {
            name: i.name.clone(),
            service,
            member: i.location.clone(),
            timeout,
            reason: "down".into(),
        });
    }
    let mut stages: Vec<Stage> = by_level
        .into_iter()
        .rev()
        .map(|(l, actions)| Stage {
            title: if l == usize::MAX {
                "remove the forwarders of published ports".to_string()
            } else {
                format!("remove dependency level {l}")
            },
            actions,
        })
        .collect();
    let networks: Vec<Action> = obs
        .networks
        .iter()
        .filter(|n| obs.claims_network(n, compose))
        .map(|n| Action::RemoveNetwork {
            name: n.name.clone(),
        })
        .collect();
    stages.push(Stage {
        title: "networks".into(),
        actions: networks,
    });
    let ours_volumes: Vec<_> = obs
        .volumes
        .iter()
        .filter(|v| is_ours(&v.config, compose))
        .collect();
    let kept_volumes = obs.volumes.len() - if o.volumes { ours_volumes.len() } else { 0 };
    if o.volumes {
        stages.push(Stage {
            title: "volumes".into(),
            actions: ours_volumes
                .iter()
                .map(|v| Action::RemoveVolume {
                    pool: v.pool.clone(),
                    name: v.name.clone(),
                    member: v.location.clone(),
                })
                .collect(),
        });
    }
    if obs.project_exists
        && is_ours(&obs.project_config, compose)
        && kept_instances == 0
        && kept_volumes == 0
        && incus_project != "default"
    {
        stages.push(Stage {
            title: "project".into(),
            actions: vec![Action::RemoveProject {
                name: incus_project.to_string(),
            }],
        });
    }
    stages.retain(|s| !s.actions.is_empty());
    Plan {
        warnings,
        ..Plan::of(incus_project, stages)
    }
}

/// `start`, `stop` or `restart` of existing replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    Stop,
    Restart,
}

/// The actions of `start`/`stop`/`restart` on the project's replicas (of `services`, or all
/// when empty): stops go dependents first, starts dependencies first; a restart stops
/// everything selected, then starts it again. Replicas already in the wanted state are left.
pub fn plan_power(
    power: Power,
    compose: &str,
    incus_project: &str,
    levels: &BTreeMap<String, usize>,
    timeout: i64,
    obs: &Observed,
    services: &[String],
) -> Plan {
    let selected: Vec<&ObservedInstance> = obs
        .instances
        .iter()
        .filter(|i| is_ours(&i.config, compose) && !super::is_oneoff(&i.config))
        .filter(|i| {
            services.is_empty()
                || i.label(LABEL_SERVICE)
                    .is_some_and(|s| services.iter().any(|x| x == s))
        })
        .collect();
    let level = |i: &ObservedInstance| {
        i.label(LABEL_SERVICE)
            .and_then(|s| levels.get(s))
            .copied()
            .unwrap_or(0)
    };
    let mut stages = Vec::new();
    if matches!(power, Power::Stop | Power::Restart) {
        let mut by_level: BTreeMap<usize, Vec<Action>> = BTreeMap::new();
        for i in selected.iter().filter(|i| i.running) {
            by_level.entry(level(i)).or_default().push(Action::Stop {
                name: i.name.clone(),
                service: i.label(LABEL_SERVICE).unwrap_or_default().to_string(),
                timeout,
            });
        }
        for (l, actions) in by_level.into_iter().rev() {
            stages.push(Stage {
                title: format!("stop dependency level {l}"),
                actions,
            });
        }
    }
    if matches!(power, Power::Start | Power::Restart) {
        let mut by_level: BTreeMap<usize, Vec<Action>> = BTreeMap::new();
        for i in selected
            .iter()
            .filter(|i| power == Power::Restart || !i.running)
        {
            by_level.entry(level(i)).or_default().push(Action::Start {
                name: i.name.clone(),
                service: i.label(LABEL_SERVICE).unwrap_or_default().to_string(),
            });
        }
        for (l, actions) in by_level {
            stages.push(Stage {
                title: format!("start dependency level {l}"),
                actions,
            });
        }
    }
    Plan::of(incus_project, stages)
}
