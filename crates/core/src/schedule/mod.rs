//! The scheduler: decides on which cluster member every replica of every service runs.
//!
//! A pure, deterministic function of observed state ([`schedule`]): cluster [`Member`]s, the
//! [`ExistingReplica`]s, and each service's [`ServiceSpec`]. It returns, per service, one
//! [`SlotDecision`] per replica slot (a member, or pending with every member's reason) and the
//! existing replicas to remove. The semantics follow Docker Swarm's scheduler (swarmkit
//! `manager/scheduler`), adapted to Incus:
//!
//! **Eligibility.** A member can hold a replica when it is online, not evacuated, and satisfies
//! every constraint. Constraint keys: `node.id` and `node.hostname` are the member name;
//! `node.role` is `manager` for members with the `database` (or `database-leader`) role and
//! `worker` for the others; `node.platform.os` is `linux`; `node.platform.arch` is the member's
//! architecture (Docker's names `amd64`, `arm64`, `arm`, `386` match Incus' `x86_64`,
//! `aarch64`, `armv7l`, `i686`); `node.labels.<k>` and `engine.labels.<k>` are both the member
//! config key `user.<k>`. A missing label compares as the empty string, so `!=` matches it.
//! Values compare case-insensitively. A standalone server is one member (its name, its
//! `user.*` server config as labels, role `manager`), so the same file works there.
//!
//! **Capacity.** A new replica also needs: the member not `scheduler.instance=manual` (such a
//! member keeps its replicas but gets no new ones, like Swarm's `pause`); fewer than
//! `max_replicas_per_node` replicas of the service on it (0 or absent = no limit); none of the
//! service's fixed host ports in use there by any replica (so at most one replica per member);
//! `reservations.cpus` / `reservations.memory` not above what the member has left (unknown free
//! resources do not limit). Resources and instance counts taken by one service are seen by the
//! services after it (input order).
//!
//! **Spreading.** Eligible members form a tree: level `i` groups them by the value of spread
//! preference `i` (`node.labels.<k>`: members without the label form one group of their own;
//! `node.hostname`, `node.id`, `instanceId`: one group per member), the leaves are members.
//! Each replica walks down from the root taking, at every level, the child with the fewest
//! replicas of the service that can still take one (groups: then value order; members: then
//! fewest instances in total, then name order). This is water-filling: at every level, sibling
//! counts end within one of each other unless the smaller sibling is full (every member in it
//! rejects one more), which is how Swarm splits replicas over its tree of preferences. Cost:
//! O(replicas · depth · log(branching)).
//!
//! **Stability.** Existing replicas stay where they are while their member is still eligible
//! (no churn; `max_replicas_per_node` and host ports are re-checked: the lowest slots stay),
//! and are never moved just to even out the spread. Replicas on members that are gone or no
//! longer eligible move, keeping their slot number; if no member can take one, it is removed
//! and a pending slot takes the lowest unused number. Scaling down removes such displaced
//! replicas first, then walks the same tree from the child with the most replicas (ties: the
//! one holding the highest slot) and removes that member's highest slot; survivors keep their
//! place and slot number. New slots take the lowest unused numbers, so `replicas: N` on an
//! empty cluster gives slots `1..=N`. Removals (of all services) free their resources before
//! any placement, so re-running on the result changes nothing.
//!
//! **Draining** (`node drain`). A member being drained is not eligible: its replicas move like
//! those of an ineligible member, except that one no other member can take stays where it is,
//! as a pending slot that keeps its `previous` member (never removed: a drain does not lower a
//! service's count). A global service's replica there is removed (its slot is that member).
//!
//! **Global mode.** One slot per eligible member, keyed by member name; `deploy.placement`
//! preferences do not apply. A slot whose member lacks room is pending with that member's
//! reason; a replica on an offline or evacuated member stays (pending) rather than being
//! removed; one running on another member than its own (moved there by an evacuation) moves
//! back; replicas whose member left or no longer satisfies the constraints are removed.
//! `scheduler.instance=manual` members keep their replica but get no new slot.

mod reason;
mod tree;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use ic_compose::model::placement::{
    Constraint, ConstraintKey, ConstraintOp, SpreadOver, SpreadPreference,
};

pub use reason::{MemberRejection, PendingReason, Rejection, RemovalReason, Unsatisfiable};
use tree::Tree;

/// One cluster member (or the standalone server), as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Incus member name; `node.id` and `node.hostname` both match it.
    pub name: String,
    /// Status `Online`.
    pub online: bool,
    /// Status `Evacuated`.
    pub evacuated: bool,
    /// Config `scheduler.instance=manual`.
    pub manual: bool,
    /// Being drained (`incus-compose node drain`): its replicas move to other members; one
    /// that no other member can take stays where it is (pending, with the reasons).
    pub draining: bool,
    /// Incus roles (`database`, `database-leader`, ...); see [`Member::is_manager`].
    pub roles: Vec<String>,
    /// Incus architecture name (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// Incus failure domain. Carried for display; no constraint key reads it.
    pub failure_domain: String,
    /// `user.*` config keys without the `user.` prefix.
    pub labels: BTreeMap<String, String>,
    /// CPU left, in thousandths of a CPU; `None` = unknown (does not limit).
    pub free_millicpus: Option<u64>,
    /// Memory left, in bytes; `None` = unknown (does not limit).
    pub free_memory: Option<u64>,
    /// Instances on the member now (all projects, including the existing replicas).
    pub instances: u32,
}

impl Member {
    /// An online, schedulable `x86_64` worker without labels or known resource limits.
    pub fn new(name: impl Into<String>) -> Member {
        Member {
            name: name.into(),
            online: true,
            evacuated: false,
            manual: false,
            draining: false,
            roles: Vec::new(),
            architecture: "x86_64".into(),
            failure_domain: "default".into(),
            labels: BTreeMap::new(),
            free_millicpus: None,
            free_memory: None,
            instances: 0,
        }
    }

    /// A standalone (unclustered) server: one member, and a manager since it holds the database.
    pub fn standalone(name: impl Into<String>) -> Member {
        Member {
            roles: vec!["database".into()],
            ..Member::new(name)
        }
    }

    /// Adds the label `key` (member config `user.<key>`).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Member {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// `node.role == manager`: the member has the `database` or `database-leader` role.
    pub fn is_manager(&self) -> bool {
        self.roles
            .iter()
            .any(|r| r == "database" || r == "database-leader")
    }

    /// The member's value for a constraint key (`None`: no such label).
    pub fn value_of(&self, key: &ConstraintKey) -> Option<&str> {
        match key {
            ConstraintKey::NodeId | ConstraintKey::NodeHostname => Some(&self.name),
            ConstraintKey::NodeRole => Some(if self.is_manager() {
                "manager"
            } else {
                "worker"
            }),
            ConstraintKey::PlatformOs => Some("linux"),
            ConstraintKey::PlatformArch => Some(&self.architecture),
            ConstraintKey::NodeLabel(k) | ConstraintKey::EngineLabel(k) => {
                self.labels.get(k).map(String::as_str)
            }
        }
    }

    /// Whether the member satisfies a placement constraint.
    pub fn satisfies(&self, c: &Constraint) -> bool {
        if c.key == ConstraintKey::PlatformArch {
            let equal = canonical_arch(&self.architecture) == canonical_arch(&c.value);
            return match c.op {
                ConstraintOp::Eq => equal,
                ConstraintOp::Ne => !equal,
            };
        }
        c.matches(self.value_of(&c.key))
    }

    /// The member's group for a spread preference (`None`: it lacks the label).
    pub fn spread_value(&self, over: &SpreadOver) -> Option<&str> {
        match over {
            SpreadOver::Member => Some(&self.name),
            SpreadOver::Label(k) => self.labels.get(k).map(String::as_str),
            SpreadOver::Attribute(key) => self.value_of(key),
        }
    }
}

/// Incus and Docker name architectures differently; compare them under one name.
fn canonical_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "amd64" | "x86-64" => "x86_64".into(),
        "arm64" => "aarch64".into(),
        "arm" | "armhf" | "armv7" => "armv7l".into(),
        "386" | "i386" => "i686".into(),
        _ => lower,
    }
}

/// A fixed host port a service publishes (`ports: - "8080:80"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub port: u16,
    pub udp: bool,
}

impl HostPort {
    pub fn tcp(port: u16) -> HostPort {
        HostPort { port, udp: false }
    }
    pub fn udp(port: u16) -> HostPort {
        HostPort { port, udp: true }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.udp {
            write!(f, "{}/udp", self.port)
        } else {
            write!(f, "{}", self.port)
        }
    }
}

/// `deploy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replicated { replicas: u32 },
    Global,
}

/// What the scheduler needs of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: Mode,
    pub constraints: Vec<Constraint>,
    pub preferences: Vec<SpreadPreference>,
    /// `deploy.placement.max_replicas_per_node`; `None` or `Some(0)` = no limit (as in Swarm).
    pub max_replicas_per_node: Option<u32>,
    /// `deploy.resources.reservations.cpus`, in thousandths of a CPU.
    pub reservation_millicpus: Option<u64>,
    /// `deploy.resources.reservations.memory`, in bytes.
    pub reservation_memory: Option<u64>,
    /// Published ports with a fixed host port.
    pub fixed_host_ports: Vec<HostPort>,
}

impl ServiceSpec {
    /// A replicated service without placement rules.
    pub fn replicated(name: impl Into<String>, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            mode: Mode::Replicated { replicas },
            constraints: Vec::new(),
            preferences: Vec::new(),
            max_replicas_per_node: None,
            reservation_millicpus: None,
            reservation_memory: None,
            fixed_host_ports: Vec::new(),
        }
    }

    /// A global service without placement rules.
    pub fn global(name: impl Into<String>) -> ServiceSpec {
        ServiceSpec {
            mode: Mode::Global,
            ..ServiceSpec::replicated(name, 0)
        }
    }

    fn max_per_member(&self) -> Option<u32> {
        self.max_replicas_per_node.filter(|&n| n > 0)
    }
}

/// Which replica a slot is: a number for replicated services (`<service>-<n>`), a member name
/// for global ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKey {
    Replica(u32),
    Member(String),
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotKey::Replica(n) => write!(f, "{n}"),
            SlotKey::Member(m) => f.write_str(m),
        }
    }
}

/// A replica that exists now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingReplica {
    pub service: String,
    pub slot: SlotKey,
    /// The member it is on now.
    pub member: String,
}

/// A member name in the output; shared, since 100,000 slots may name the same few members.
pub type MemberName = Arc<str>;

/// Where a slot goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Assigned(MemberName),
    Pending(PendingReason),
}

/// The decision for one replica slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDecision {
    pub key: SlotKey,
    /// Where the slot's replica is now, if it exists and is kept (in place or moved).
    pub previous: Option<MemberName>,
    pub outcome: Outcome,
}

impl SlotDecision {
    pub fn member(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Assigned(m) => Some(m),
            Outcome::Pending(_) => None,
        }
    }

    /// An existing replica that stays where it is.
    pub fn is_unchanged(&self) -> bool {
        self.previous.is_some() && self.previous.as_deref() == self.member()
    }
}

/// An existing replica to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub key: SlotKey,
    pub member: String,
    pub reason: RemovalReason,
}

/// The decisions for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub service: String,
    pub mode: Mode,
    /// In slot order.
    pub slots: Vec<SlotDecision>,
    /// In slot order.
    pub removals: Vec<Removal>,
    /// Every member that cannot take (another) replica of the service, with the reason, in
    /// name order; for global services, every member without an assigned slot. The reason of
    /// the pending slots of a replicated service.
    pub rejections: PendingReason,
    /// For a replicated service with fixed host ports: the members that could take one more
    /// replica of it once every service is placed (eligible, room left, none of its host
    /// ports bound there), fewest instances first, then name order. Where a start-first
    /// update can start a new replica beside the old ones (see `rollout::port_moves`).
    /// Empty for other services.
    pub spare: Vec<MemberName>,
}

impl Placement {
    /// (slot, member) of every assigned slot.
    pub fn assigned(&self) -> impl Iterator<Item = (&SlotKey, &str)> {
        self.slots
            .iter()
            .filter_map(|s| s.member().map(|m| (&s.key, m)))
    }

    pub fn pending(&self) -> impl Iterator<Item = &SlotDecision> {
        self.slots
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Pending(_)))
    }

    /// Assigned replicas per member.
    pub fn per_member(&self) -> BTreeMap<&str, u32> {
        let mut out = BTreeMap::new();
        for (_, m) in self.assigned() {
            *out.entry(m).or_insert(0) += 1;
        }
        out
    }

    /// The error to show when the service wants replicas but none can be placed.
    pub fn unsatisfiable(&self) -> Option<Unsatisfiable> {
        let wanted = match self.mode {
            Mode::Replicated { replicas } => replicas > 0,
            Mode::Global => true,
        };
        // A replica kept on a member being drained still serves: not an error.
        let kept_draining = self.slots.iter().any(|s| match (&s.outcome, &s.previous) {
            (Outcome::Pending(r), Some(m)) => r.for_member(m) == Some(&Rejection::Draining),
            _ => false,
        });
        if !wanted || kept_draining || self.assigned().next().is_some() {
            return None;
        }
        Some(Unsatisfiable {
            service: self.service.clone(),
            reasons: self.rejections.clone(),
        })
    }
}

/// The decisions for all services, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub placements: Vec<Placement>,
}

impl Schedule {
    pub fn get(&self, service: &str) -> Option<&Placement> {
        self.placements.iter().find(|p| p.service == service)
    }
}

/// Input the scheduler cannot decide on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cluster member {0:?} is listed twice; member names must be unique")]
    DuplicateMember(String),
    #[error("service {0:?} is listed twice; service names must be unique")]
    DuplicateService(String),
}

/// Schedules every service, in input order. See the module documentation for the rules.
pub fn schedule(
    members: &[Member],
    services: &[ServiceSpec],
    existing: &[ExistingReplica],
) -> Result<Schedule, ScheduleError> {
    let mut state = State::new(members)?;
    let mut seen = BTreeSet::new();
    for s in services {
        if !seen.insert(s.name.as_str()) {
            return Err(ScheduleError::DuplicateService(s.name.clone()));
        }
    }
    let by_name: HashMap<&str, &ServiceSpec> =
        services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut existing_of: HashMap<&str, Vec<&ExistingReplica>> = HashMap::new();
    for e in existing {
        if let Some(spec) = by_name.get(e.service.as_str()) {
            if let Some(&m) = state.index.get(e.member.as_str()) {
                state.take_ports(m, spec);
            }
            existing_of.entry(e.service.as_str()).or_default().push(e);
        }
    }
    // Phase 1: what stays, what goes; free what goes.
    let mut work: Vec<Work<'_>> = services
        .iter()
        .map(|spec| {
            let existing = existing_of.remove(spec.name.as_str()).unwrap_or_default();
            match spec.mode {
                Mode::Replicated { replicas } => {
                    Work::Replicated(Replicated::prepare(&mut state, spec, replicas, existing))
                }
                Mode::Global => Work::Global(Global::prepare(&mut state, spec, existing)),
            }
        })
        .collect();
    // Phase 2: place.
    let mut placements: Vec<Placement> = work
        .iter_mut()
        .map(|w| match w {
            Work::Replicated(r) => r.place(&mut state),
            Work::Global(g) => g.place(&mut state),
        })
        .collect();
    // Spare members of services with fixed host ports, with everything placed.
    for (p, spec) in placements.iter_mut().zip(services) {
        if spec.fixed_host_ports.is_empty() || spec.mode == Mode::Global {
            continue;
        }
        let per_member = p.per_member();
        let mut spare: Vec<usize> = (0..state.members.len())
            .filter(|&m| {
                let count = per_member
                    .get(state.members[m].name.as_str())
                    .copied()
                    .unwrap_or(0);
                state.static_rejection(m, spec).is_none() && state.capacity(m, spec, count).is_ok()
            })
            .collect();
        spare.sort_by_key(|&m| (state.instances[m], m));
        p.spare = spare.into_iter().map(|m| state.names[m].clone()).collect();
    }
    Ok(Schedule { placements })
}

/// Mutable per-member accounting during one run.
struct State<'a> {
    /// Sorted by name.
    members: Vec<&'a Member>,
    names: Vec<MemberName>,
    index: HashMap<&'a str, usize>,
    free_cpu: Vec<Option<u64>>,
    free_mem: Vec<Option<u64>>,
    instances: Vec<u64>,
    ports: Vec<BTreeMap<HostPort, u32>>,
}

impl<'a> State<'a> {
    fn new(members: &'a [Member]) -> Result<State<'a>, ScheduleError> {
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(ScheduleError::DuplicateMember(w[0].name.clone()));
        }
        Ok(State {
            index: sorted
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.as_str(), i))
                .collect(),
            free_cpu: sorted.iter().map(|m| m.free_millicpus).collect(),
            free_mem: sorted.iter().map(|m| m.free_memory).collect(),
            instances: sorted.iter().map(|m| u64::from(m.instances)).collect(),
            ports: vec![BTreeMap::new(); sorted.len()],
            names: sorted
                .iter()
                .map(|m| MemberName::from(m.name.as_str()))
                .collect(),
            members: sorted,
        })
    }

    fn take_ports(&mut self, m: usize, spec: &ServiceSpec) {
        for p in &spec.fixed_host_ports {
            *self.ports[m].entry(*p).or_insert(0) += 1;
        }
    }

    /// A replica of `spec` leaves member `m`.
    fn release(&mut self, m: usize, spec: &ServiceSpec) {
        if let (Some(free), Some(r)) = (&mut self.free_cpu[m], spec.reservation_millicpus) {
            *free = free.saturating_add(r);
        }
        if let (Some(free), Some(r)) = (&mut self.free_mem[m], spec.reservation_memory) {
            *free = free.saturating_add(r);
        }
        self.instances[m] = self.instances[m].saturating_sub(1);
        for p in &spec.fixed_host_ports {
            if let Some(c) = self.ports[m].get_mut(p) {
                *c -= 1;
                if *c == 0 {
                    self.ports[m].remove(p);
                }
            }
        }
    }

    /// A new replica of `spec` lands on member `m` (instances are counted by the caller).
    fn consume(&mut self, m: usize, spec: &ServiceSpec) {
        if let (Some(free), Some(r)) = (&mut self.free_cpu[m], spec.reservation_millicpus) {
            *free = free.saturating_sub(r);
        }
        if let (Some(free), Some(r)) = (&mut self.free_mem[m], spec.reservation_memory) {
            *free = free.saturating_sub(r);
        }
        self.take_ports(m, spec);
    }

    /// Why member `m` can never hold a replica of `spec` right now, if so.
    fn static_rejection(&self, m: usize, spec: &ServiceSpec) -> Option<Rejection> {
        let member = self.members[m];
        if !member.online {
            return Some(Rejection::Offline);
        }
        if member.evacuated {
            return Some(Rejection::Evacuated);
        }
        if member.draining {
            return Some(Rejection::Draining);
        }
        spec.constraints
            .iter()
            .find(|c| !member.satisfies(c))
            .map(|c| Rejection::Constraint(c.clone()))
    }

    /// How many more new replicas of `spec` member `m` can take, holding `count` of them now
    /// (`u64::MAX`: no limit), or why none.
    fn capacity(&self, m: usize, spec: &ServiceSpec, count: u32) -> Result<u64, Rejection> {
        if self.members[m].manual {
            return Err(Rejection::Manual);
        }
        let mut cap = u64::MAX;
        if let Some(max) = spec.max_per_member() {
            if count >= max {
                return Err(Rejection::MaxReplicas(max));
            }
            cap = u64::from(max - count);
        }
        if let Some(p) = spec
            .fixed_host_ports
            .iter()
            .find(|p| self.ports[m].contains_key(p))
        {
            return Err(Rejection::HostPort(*p));
        }
        if !spec.fixed_host_ports.is_empty() {
            cap = cap.min(1);
        }
        if let (Some(free), Some(needed)) = (self.free_cpu[m], spec.reservation_millicpus)
            && needed > 0
        {
            if free < needed {
                return Err(Rejection::Cpu { needed, free });
            }
            cap = cap.min(free / needed);
        }
        if let (Some(free), Some(needed)) = (self.free_mem[m], spec.reservation_memory)
            && needed > 0
        {
            if free < needed {
                return Err(Rejection::Memory { needed, free });
            }
            cap = cap.min(free / needed);
        }
        Ok(cap)
    }
}

enum Work<'a> {
    Replicated(Replicated<'a>),
    Global(Global<'a>),
}

/// A replica that must leave its member: moved if possible, else removed.
struct Displaced {
    slot: u32,
    index: Option<usize>,
    member: String,
    reason: RemovalReason,
}

struct Replicated<'a> {
    spec: &'a ServiceSpec,
    replicas: u32,
    static_rejections: Vec<Option<Rejection>>,
    tree: Tree,
    /// Slot -> member index of the replicas that stay.
    kept: BTreeMap<u32, usize>,
    /// To be moved (lowest slots first).
    movers: Vec<Displaced>,
    removals: Vec<Removal>,
}

impl<'a> Replicated<'a> {
    fn prepare(
        state: &mut State<'_>,
        spec: &'a ServiceSpec,
        replicas: u32,
        existing: Vec<&ExistingReplica>,
    ) -> Replicated<'a> {
        let n = state.members.len();
        let static_rejections: Vec<Option<Rejection>> =
            (0..n).map(|m| state.static_rejection(m, spec)).collect();
        let tree = Tree::build(
            n,
            (0..n).filter(|&m| static_rejections[m].is_none()).map(|m| {
                let member = state.members[m];
                let path = spec
                    .preferences
                    .iter()
                    .map(|p| member.spread_value(&p.over))
                    .collect();
                (m, path)
            }),
        );
        let mut this = Replicated {
            spec,
            replicas,
            static_rejections,
            tree,
            kept: BTreeMap::new(),
            movers: Vec::new(),
            removals: Vec::new(),
        };
        // Per slot, a replica on an eligible member wins over duplicates.
        let mut existing: Vec<(Option<usize>, bool, &ExistingReplica)> = existing
            .into_iter()
            .map(|e| {
                let index = state.index.get(e.member.as_str()).copied();
                let ineligible = index.is_none_or(|m| this.static_rejections[m].is_some());
                (index, ineligible, e)
            })
            .collect();
        existing.sort_by(|a, b| (&a.2.slot, a.1, &a.2.member).cmp(&(&b.2.slot, b.1, &b.2.member)));
        let mut seen = BTreeSet::new();
        let mut displaced: Vec<Displaced> = Vec::new();
        let mut candidates: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (index, _, e) in existing {
            let slot = match e.slot {
                SlotKey::Replica(s) if seen.insert(s) => s,
                SlotKey::Replica(_) | SlotKey::Member(_) => {
                    let reason = if matches!(e.slot, SlotKey::Member(_)) {
                        RemovalReason::ModeChanged
                    } else {
                        RemovalReason::Duplicate
                    };
                    if let Some(m) = index {
                        state.release(m, spec);
                    }
                    this.removals.push(Removal {
                        key: e.slot.clone(),
                        member: e.member.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let reason = match index {
                None => RemovalReason::MemberGone,
                Some(m) => match &this.static_rejections[m] {
                    Some(r) => RemovalReason::NotEligible(r.clone()),
                    None => {
                        candidates.entry(m).or_default().push(slot);
                        continue;
                    }
                },
            };
            displaced.push(Displaced {
                slot,
                index,
                member: e.member.clone(),
                reason,
            });
        }
        // max_replicas_per_node and fixed host ports may have changed: the lowest slots stay.
        let max = spec.max_per_member();
        for (m, slots) in candidates {
            for (i, slot) in slots.into_iter().enumerate() {
                let reason = match (max, spec.fixed_host_ports.first()) {
                    (_, Some(p)) if i >= 1 => Some(Rejection::HostPort(*p)),
                    (Some(max), _) if i as u64 >= u64::from(max) => {
                        Some(Rejection::MaxReplicas(max))
                    }
                    _ => None,
                };
                match reason {
                    None => {
                        this.tree.add_existing(m);
                        this.kept.insert(slot, m);
                    }
                    Some(r) => displaced.push(Displaced {
                        slot,
                        index: Some(m),
                        member: state.members[m].name.clone(),
                        reason: RemovalReason::NotEligible(r),
                    }),
                }
            }
        }
        displaced.sort_by_key(|d| d.slot);
        let kept = this.tree.total();
        if kept > replicas {
            let holders: Vec<(u32, usize)> = this.kept.iter().map(|(&s, &m)| (s, m)).collect();
            for (m, slot) in this.tree.scale_down(kept - replicas, holders) {
                this.kept.remove(&slot);
                state.release(m, spec);
                this.removals.push(Removal {
                    key: SlotKey::Replica(slot),
                    member: state.members[m].name.clone(),
                    reason: RemovalReason::ScaledDown,
                });
            }
        }
        // Displaced replicas leave their member whether they move or go.
        let need = replicas.saturating_sub(this.tree.total()) as usize;
        for (i, d) in displaced.into_iter().enumerate() {
            if let Some(m) = d.index {
                state.release(m, spec);
            }
            if i < need {
                this.movers.push(d);
            } else {
                this.removals.push(Removal {
                    key: SlotKey::Replica(d.slot),
                    member: d.member,
                    reason: d.reason,
                });
            }
        }
        this
    }

    fn place(&mut self, state: &mut State<'_>) -> Placement {
        let spec = self.spec;
        let n = state.members.len();
        let need = self.replicas.saturating_sub(self.tree.total());
        let caps: Vec<u64> = (0..n)
            .map(|m| {
                if self.tree.contains(m) {
                    state
                        .capacity(m, spec, self.tree.count_on(m))
                        .map_or(0, |c| c.min(u64::from(need)))
                } else {
                    0
                }
            })
            .collect();
        self.tree.prepare(|m| caps[m], &state.instances);

        let mut slots: Vec<SlotDecision> = Vec::with_capacity(self.kept.len() + need as usize);
        slots.extend(self.kept.iter().map(|(&slot, &m)| SlotDecision {
            key: SlotKey::Replica(slot),
            previous: Some(state.names[m].clone()),
            outcome: Outcome::Assigned(state.names[m].clone()),
        }));
        let mut used: Vec<u32> = self.kept.keys().copied().collect();
        let mut exhausted = false;
        let mut moved = 0u32;
        let mut stuck: Vec<(u32, MemberName)> = Vec::new();
        for d in std::mem::take(&mut self.movers) {
            let placed = if exhausted {
                None
            } else {
                self.tree.place_one(&mut state.instances)
            };
            match placed {
                Some(m) => {
                    state.consume(m, spec);
                    used.push(d.slot);
                    moved += 1;
                    slots.push(SlotDecision {
                        key: SlotKey::Replica(d.slot),
                        previous: Some(MemberName::from(d.member)),
                        outcome: Outcome::Assigned(state.names[m].clone()),
                    });
                }
                // A replica on a member being drained stays there until another member can
                // take it: a drain never lowers a service's count.
                None if d.reason == RemovalReason::NotEligible(Rejection::Draining) => {
                    exhausted = true;
                    used.push(d.slot);
                    stuck.push((d.slot, MemberName::from(d.member)));
                }
                None => {
                    exhausted = true;
                    self.removals.push(Removal {
                        key: SlotKey::Replica(d.slot),
                        member: d.member,
                        reason: d.reason,
                    });
                }
            }
        }
        // New slots: the lowest numbers not in use, in increasing order.
        used.sort_unstable();
        let mut used = used.into_iter().peekable();
        let mut next = 0u32;
        let mut pending = Vec::new();
        for _ in moved..need {
            next = next.saturating_add(1);
            while let Some(&u) = used.peek() {
                if u < next {
                    used.next();
                } else if u == next {
                    used.next();
                    next = next.saturating_add(1);
                } else {
                    break;
                }
            }
            let slot = next;
            let placed = if exhausted {
                None
            } else {
                self.tree.place_one(&mut state.instances)
            };
            match placed {
                Some(m) => {
                    state.consume(m, spec);
                    slots.push(SlotDecision {
                        key: SlotKey::Replica(slot),
                        previous: None,
                        outcome: Outcome::Assigned(state.names[m].clone()),
                    });
                }
                None => {
                    exhausted = true;
                    pending.push(slot);
                }
            }
        }
        let rejections: Vec<MemberRejection> = (0..n)
            .filter_map(|m| {
                let reason = match &self.static_rejections[m] {
                    Some(r) => r.clone(),
                    None => state.capacity(m, spec, self.tree.count_on(m)).err()?,
                };
                Some(MemberRejection {
                    member: state.members[m].name.clone(),
                    reason,
                })
            })
            .collect();
        let rejections = PendingReason(Arc::from(rejections));
        slots.extend(pending.into_iter().map(|slot| SlotDecision {
            key: SlotKey::Replica(slot),
            previous: None,
            outcome: Outcome::Pending(rejections.clone()),
        }));
        slots.extend(stuck.into_iter().map(|(slot, member)| SlotDecision {
            key: SlotKey::Replica(slot),
            previous: Some(member),
            outcome: Outcome::Pending(rejections.clone()),
        }));
        slots.sort_by(|a, b| a.key.cmp(&b.key));
        let mut removals = std::mem::take(&mut self.removals);
        removals.sort_by(|a, b| (&a.key, &a.member).cmp(&(&b.key, &b.member)));
        Placement {
            service: spec.name.clone(),
            mode: spec.mode,
            slots,
            removals,
            rejections,
            spare: Vec::new(),
        }
    }
}

struct Global<'a> {
    spec: &'a ServiceSpec,
    static_rejections: Vec<Option<Rejection>>,
    /// Members whose replica stays where it is.
    kept: BTreeSet<usize>,
    /// Members that are offline or evacuated: their replica stays, pending, at `.0`.
    stranded: BTreeMap<usize, (MemberName, Rejection)>,
    /// Members whose replica runs elsewhere (`.1`) and must come back.
    movers: BTreeMap<usize, String>,
    removals: Vec<Removal>,
}

impl<'a> Global<'a> {
    fn prepare(
        state: &mut State<'_>,
        spec: &'a ServiceSpec,
        mut existing: Vec<&ExistingReplica>,
    ) -> Global<'a> {
        let n = state.members.len();
        let mut this = Global {
            spec,
            static_rejections: (0..n).map(|m| state.static_rejection(m, spec)).collect(),
            kept: BTreeSet::new(),
            stranded: BTreeMap::new(),
            movers: BTreeMap::new(),
            removals: Vec::new(),
        };
        // Per slot, the replica on the slot's own member wins over duplicates.
        let at_home = |e: &ExistingReplica| matches!(&e.slot, SlotKey::Member(x) if *x == e.member);
        existing.sort_by(|a, b| {
            (&a.slot, !at_home(a), &a.member).cmp(&(&b.slot, !at_home(b), &b.member))
        });
        let mut seen = BTreeSet::new();
        for e in existing {
            let actual = state.index.get(e.member.as_str()).copied();
            let reason = match &e.slot {
                SlotKey::Replica(_) => RemovalReason::ModeChanged,
                SlotKey::Member(x) if !seen.insert(x.as_str()) => RemovalReason::Duplicate,
                SlotKey::Member(x) => match state.index.get(x.as_str()).copied() {
                    None => RemovalReason::MemberGone,
                    Some(home) => match &this.static_rejections[home] {
                        Some(r @ (Rejection::Offline | Rejection::Evacuated)) => {
                            this.stranded
                                .insert(home, (MemberName::from(e.member.as_str()), r.clone()));
                            continue;
                        }
                        Some(r) => RemovalReason::NotEligible(r.clone()),
                        None if actual == Some(home) => {
                            this.kept.insert(home);
                            continue;
                        }
                        None => {
                            if let Some(m) = actual {
                                state.release(m, spec);
                            }
                            this.movers.insert(home, e.member.clone());
                            continue;
                        }
                    },
                },
            };
            if let Some(m) = actual {
                state.release(m, spec);
            }
            this.removals.push(Removal {
                key: e.slot.clone(),
                member: e.member.clone(),
                reason,
            });
        }
        this
    }

    fn place(&mut self, state: &mut State<'_>) -> Placement {
        let spec = self.spec;
        let mut slots = Vec::new();
        let mut rejections = Vec::new();
        for m in 0..state.members.len() {
            let name = state.names[m].clone();
            let key = SlotKey::Member(name.to_string());
            if self.kept.contains(&m) {
                slots.push(SlotDecision {
                    key,
                    previous: Some(name.clone()),
                    outcome: Outcome::Assigned(name),
                });
                continue;
            }
            let reason = if let Some((previous, r)) = self.stranded.remove(&m) {
                slots.push(SlotDecision {
                    key,
                    previous: Some(previous),
                    outcome: Outcome::Pending(single(&name, &r)),
                });
                r
            } else if let Some(r) = &self.static_rejections[m] {
                r.clone()
            } else {
                let previous = self.movers.remove(&m).map(MemberName::from);
                match state.capacity(m, spec, 0) {
                    Ok(_) => {
                        state.consume(m, spec);
                        state.instances[m] += 1;
                        slots.push(SlotDecision {
                            key,
                            previous,
                            outcome: Outcome::Assigned(name),
                        });
                        continue;
                    }
                    Err(r) => {
                        if let Some(previous) = previous {
                            self.removals.push(Removal {
                                key: key.clone(),
                                member: previous.to_string(),
                                reason: RemovalReason::NotEligible(r.clone()),
                            });
                        }
                        // Manual members are skipped, not waited for.
                        if r != Rejection::Manual {
                            slots.push(SlotDecision {
                                key,
                                previous: None,
                                outcome: Outcome::Pending(single(&name, &r)),
                            });
                        }
                        r
                    }
                }
            };
            rejections.push(MemberRejection {
                member: name.to_string(),
                reason,
            });
        }
        let mut removals = std::mem::take(&mut self.removals);
        removals.sort_by(|a, b| (&a.key, &a.member).cmp(&(&b.key, &b.member)));
        Placement {
            service: spec.name.clone(),
            mode: spec.mode,
            slots,
            removals,
            rejections: PendingReason(Arc::from(rejections)),
            spare: Vec::new(),
        }
    }
}

fn single(member: &str, reason: &Rejection) -> PendingReason {
    PendingReason(Arc::from(vec![MemberRejection {
        member: member.to_string(),
        reason: reason.clone(),
    }]))
}
