//! Property tests of the scheduler over random clusters, services and existing replicas.
//!
//! Properties (each checked by its own test below):
//! - Safety: an assigned member exists, is online, not evacuated and satisfies every
//!   constraint; a new replica never lands on a `scheduler.instance=manual` member; no member
//!   holds more than `max_replicas_per_node`; a fixed host port is used at most once per member
//!   by new replicas; no member's CPU or memory goes below zero by new replicas.
//! - Spread: in the tree of preference values built from the eligible members (online, not
//!   evacuated, constraints satisfied; the leaves are members), for any two siblings A and B at
//!   any level, if A holds more than one replica more than B, then every member of B is listed
//!   in the placement's rejections (it cannot take one more) — or, when replicas already
//!   existed, A received no new replica in this run (existing replicas are never moved to even
//!   things out).
//! - Idempotence: applying the result (assigned replicas exist, removed ones are gone,
//!   resources and instance counts updated) and scheduling again changes nothing: same slots,
//!   same members, every replica unchanged, no removals.
//! - No churn: an existing replica on an eligible member, within max_replicas_per_node and the
//!   host-port limit, stays where it is unless the service is scaled down.
//! - Determinism: shuffling the input members does not change the result.

use std::collections::{BTreeMap, BTreeSet};

use ic_compose::model::placement::{Constraint, ConstraintKey, SpreadOver, SpreadPreference};
use ic_core::schedule::{
    ExistingReplica, HostPort, Member, Mode, Outcome, Placement, Schedule, ServiceSpec, SlotKey,
    schedule,
};
use proptest::prelude::*;

const NAMES: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];

fn member() -> impl Strategy<Value = Member> {
    (
        (
            prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
            prop::option::of(prop::sample::select(vec!["x", "y"])),
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.3),
        ),
        (
            prop::sample::select(vec!["x86_64", "aarch64"]),
            prop::option::of(0u64..8).prop_map(|c| c.map(|c| c * 500)),
            prop::option::of(0u64..6).prop_map(|m| m.map(|m| m << 28)),
            0u32..5,
        ),
    )
        .prop_map(
            |((zone, rack, online, evacuated, manual, db), (arch, cpu, mem, instances))| {
                let mut m = Member::new("");
                if let Some(z) = zone {
                    m.labels.insert("zone".into(), z.into());
                }
                if let Some(r) = rack {
                    m.labels.insert("rack".into(), r.into());
                }
                m.online = online;
                m.evacuated = evacuated;
                m.manual = manual;
                if db {
                    m.roles.push("database".into());
                }
                m.architecture = arch.into();
                m.free_millicpus = cpu;
                m.free_memory = mem;
                m.instances = instances;
                m
            },
        )
}

fn members() -> impl Strategy<Value = Vec<Member>> {
    prop::collection::vec(member(), 1..=NAMES.len()).prop_map(|ms| {
        ms.into_iter()
            .zip(NAMES)
            .map(|(mut m, n)| {
                m.name = n.into();
                m
            })
            .collect()
    })
}

const CONSTRAINTS: [&str; 8] = [
    "node.labels.zone == a",
    "node.labels.zone != b",
    "node.labels.rack == x",
    "engine.labels.rack != y",
    "node.role == worker",
    "node.role != worker",
    "node.platform.arch == x86_64",
    "node.hostname != m1",
];
const PREFERENCES: [&str; 3] = ["node.labels.zone", "node.labels.rack", "node.hostname"];

fn service(name: &'static str) -> impl Strategy<Value = ServiceSpec> {
    (
        prop::option::of(0u32..14),
        prop::collection::vec(prop::sample::select(CONSTRAINTS.to_vec()), 0..=2),
        prop::collection::vec(prop::sample::select(PREFERENCES.to_vec()), 0..=2),
        prop::option::of(0u32..4),
        prop::option::of(1u64..4).prop_map(|c| c.map(|c| c * 500)),
        prop::option::of(1u64..3).prop_map(|m| m.map(|m| m << 28)),
        prop::option::of(prop::sample::select(vec![80u16, 443])),
    )
        .prop_map(
            move |(replicas, constraints, preferences, max, cpu, mem, port)| ServiceSpec {
                name: name.into(),
                mode: match replicas {
                    Some(replicas) => Mode::Replicated { replicas },
                    None => Mode::Global,
                },
                constraints: constraints.iter().map(|c| c.parse().unwrap()).collect(),
                preferences: preferences.iter().map(|p| p.parse().unwrap()).collect(),
                max_replicas_per_node: max,
                reservation_millicpus: cpu,
                reservation_memory: mem,
                fixed_host_ports: port.into_iter().map(HostPort::tcp).collect(),
            },
        )
}

fn services() -> impl Strategy<Value = Vec<ServiceSpec>> {
    (1usize..=3, service("s0"), service("s1"), service("s2"))
        .prop_map(|(n, a, b, c)| vec![a, b, c].into_iter().take(n).collect())
}

/// Random existing replicas, including ones on members that left ("gone"), duplicates and
/// slots of the other mode.
fn existing() -> impl Strategy<Value = Vec<(usize, Option<u32>, usize)>> {
    prop::collection::vec(
        (
            0usize..3,
            prop::option::weighted(0.7, 1u32..10),
            0usize..=NAMES.len(),
        ),
        0..12,
    )
}

/// Well-formed existing replicas: numbered slots 1, 2, ... per service, each on a member (or
/// one that left, "gone"). With [`replicated_services`], 45% of the cases have a replica that
/// must stay (6.6% with [`existing`], whose duplicates and member slots make most cases moot).
fn numbered_existing() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0usize..3, 0usize..=NAMES.len()), 1..10)
}

/// [`services`], every one replicated (global ones get 4 replicas), with at least 3 replicas.
fn replicated_services() -> impl Strategy<Value = Vec<ServiceSpec>> {
    services().prop_map(|mut all| {
        for s in &mut all {
            s.mode = match s.mode {
                Mode::Replicated { replicas } => Mode::Replicated {
                    replicas: replicas.max(3),
                },
                Mode::Global => Mode::Replicated { replicas: 4 },
            };
        }
        all
    })
}

fn make_numbered(raw: &[(usize, usize)], services: &[ServiceSpec]) -> Vec<ExistingReplica> {
    let mut next: BTreeMap<usize, u32> = BTreeMap::new();
    raw.iter()
        .filter(|(s, _)| *s < services.len())
        .map(|&(s, m)| {
            let n = next.entry(s).or_insert(0);
            *n += 1;
            ExistingReplica {
                service: services[s].name.clone(),
                slot: SlotKey::Replica(*n),
                member: name(m),
            }
        })
        .collect()
}

fn name(i: usize) -> String {
    NAMES.get(i).map_or("gone".to_string(), |n| n.to_string())
}

fn make_existing(
    raw: &[(usize, Option<u32>, usize)],
    services: &[ServiceSpec],
) -> Vec<ExistingReplica> {
    raw.iter()
        .filter(|(s, _, _)| *s < services.len())
        .map(|&(s, slot, m)| ExistingReplica {
            service: services[s].name.clone(),
            slot: match slot {
                Some(n) => SlotKey::Replica(n),
                // Global replicas mostly live on their own member.
                None => SlotKey::Member(name(m)),
            },
            member: name(m),
        })
        .collect()
}

/// The test's own view of a member's value for a constraint key.
fn value<'a>(m: &'a Member, key: &ConstraintKey) -> Option<&'a str> {
    match key {
        ConstraintKey::NodeId | ConstraintKey::NodeHostname => Some(&m.name),
        ConstraintKey::NodeRole => Some(if m.roles.iter().any(|r| r == "database") {
            "manager"
        } else {
            "worker"
        }),
        ConstraintKey::PlatformOs => Some("linux"),
        ConstraintKey::PlatformArch => Some(&m.architecture),
        ConstraintKey::NodeLabel(k) | ConstraintKey::EngineLabel(k) => {
            m.labels.get(k).map(String::as_str)
        }
    }
}

fn satisfies(m: &Member, c: &Constraint) -> bool {
    c.matches(value(m, &c.key))
}

fn eligible(m: &Member, spec: &ServiceSpec) -> bool {
    m.online && !m.evacuated && spec.constraints.iter().all(|c| satisfies(m, c))
}

fn group_of(m: &Member, p: &SpreadPreference) -> Option<String> {
    match &p.over {
        SpreadOver::Member => Some(m.name.clone()),
        SpreadOver::Label(k) => m.labels.get(k).cloned(),
        SpreadOver::Attribute(k) => value(m, k).map(str::to_string),
    }
}

fn find<'a>(ms: &'a [Member], name: &str) -> Option<&'a Member> {
    ms.iter().find(|m| m.name == name)
}

/// Applies a schedule: the members' resources and instance counts afterwards, and the
/// replicas that exist afterwards. Returns `None` if some member would go below zero.
fn apply(
    ms: &[Member],
    services: &[ServiceSpec],
    existing: &[ExistingReplica],
    s: &Schedule,
) -> (Vec<Member>, Vec<ExistingReplica>, Vec<String>) {
    let mut after: BTreeMap<String, (i128, i128, i64)> = ms
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                (
                    m.free_millicpus.map_or(i128::MAX / 4, i128::from),
                    m.free_memory.map_or(i128::MAX / 4, i128::from),
                    i64::from(m.instances),
                ),
            )
        })
        .collect();
    let mut delta = |member: &str, spec: &ServiceSpec, sign: i128| {
        if let Some(e) = after.get_mut(member) {
            e.0 -= sign * i128::from(spec.reservation_millicpus.unwrap_or(0));
            e.1 -= sign * i128::from(spec.reservation_memory.unwrap_or(0));
            e.2 += sign as i64;
        }
    };
    let mut out = Vec::new();
    for (p, spec) in s.placements.iter().zip(services) {
        for slot in &p.slots {
            match (&slot.outcome, &slot.previous) {
                (Outcome::Assigned(m), prev) => {
                    if prev.as_deref() != Some(m) {
                        delta(m, spec, 1);
                        if let Some(prev) = prev {
                            delta(prev, spec, -1);
                        }
                    }
                    out.push(ExistingReplica {
                        service: p.service.clone(),
                        slot: slot.key.clone(),
                        member: m.to_string(),
                    });
                }
                (Outcome::Pending(_), Some(prev)) => out.push(ExistingReplica {
                    service: p.service.clone(),
                    slot: slot.key.clone(),
                    member: prev.to_string(),
                }),
                (Outcome::Pending(_), None) => {}
            }
        }
        for r in &p.removals {
            delta(&r.member, spec, -1);
        }
    }
    // Replicas of services not scheduled stay as they are.
    out.extend(
        existing
            .iter()
            .filter(|e| !services.iter().any(|s| s.name == e.service))
            .cloned(),
    );
    let mut negative = Vec::new();
    let members = ms
        .iter()
        .map(|m| {
            let (cpu, mem, inst) = after[&m.name];
            if m.free_millicpus.is_some() && cpu < 0 || m.free_memory.is_some() && mem < 0 {
                negative.push(m.name.clone());
            }
            Member {
                free_millicpus: m.free_millicpus.map(|_| cpu.max(0) as u64),
                free_memory: m.free_memory.map(|_| mem.max(0) as u64),
                instances: inst.max(0) as u32,
                ..m.clone()
            }
        })
        .collect();
    (members, out, negative)
}

/// Checks the spread property for one replicated service. `fresh`: members that received a
/// new replica in this run (for runs with existing replicas).
fn check_spread(
    ms: &[Member],
    spec: &ServiceSpec,
    p: &Placement,
    existing: &[ExistingReplica],
) -> Result<(), TestCaseError> {
    let per = p.per_member();
    let rejected: BTreeSet<&str> = p
        .rejections
        .members()
        .iter()
        .map(|r| r.member.as_str())
        .collect();
    let had: BTreeSet<(&SlotKey, &str)> = existing
        .iter()
        .filter(|e| e.service == spec.name)
        .map(|e| (&e.slot, e.member.as_str()))
        .collect();
    let received_new: BTreeSet<&str> = p
        .assigned()
        .filter(|(k, m)| !had.contains(&(*k, *m)))
        .map(|(_, m)| m)
        .collect();
    let eligible: Vec<&Member> = ms.iter().filter(|m| eligible(m, spec)).collect();
    // Path of each eligible member: its group at every level, then its name.
    let paths: Vec<(Vec<Option<String>>, &Member)> = eligible
        .iter()
        .map(|m| {
            let mut path: Vec<Option<String>> =
                spec.preferences.iter().map(|pr| group_of(m, pr)).collect();
            path.push(Some(m.name.clone()));
            (path, *m)
        })
        .collect();
    for level in 0..=spec.preferences.len() {
        // node (path prefix of length level+1) -> (count, all members rejected, got new)
        let mut nodes: BTreeMap<&[Option<String>], (u32, bool, bool)> = BTreeMap::new();
        for (path, m) in &paths {
            let e = nodes.entry(&path[..=level]).or_insert((0, true, false));
            e.0 += per.get(m.name.as_str()).copied().unwrap_or(0);
            e.1 &= rejected.contains(m.name.as_str());
            e.2 |= received_new.contains(m.name.as_str());
        }
        for (a, (ca, _, new_a)) in &nodes {
            for (b, (cb, full_b, _)) in &nodes {
                let siblings = a[..level] == b[..level];
                if siblings && *ca > cb + 1 && *new_a {
                    prop_assert!(
                        *full_b,
                        "service {}: level {level}: {a:?} has {ca}, sibling {b:?} has {cb} \
                         but is not full; placement {p:#?}",
                        spec.name
                    );
                }
            }
        }
    }
    Ok(())
}

fn check_safety(
    ms: &[Member],
    services: &[ServiceSpec],
    existing: &[ExistingReplica],
    s: &Schedule,
) -> Result<(), TestCaseError> {
    let mut ports: BTreeMap<(&str, HostPort), (u32, bool)> = BTreeMap::new();
    for (p, spec) in s.placements.iter().zip(services) {
        prop_assert_eq!(&p.service, &spec.name);
        for slot in &p.slots {
            let Some(m) = slot.member() else { continue };
            let member = find(ms, m);
            prop_assert!(member.is_some(), "assigned to unknown member {}", m);
            let member = member.unwrap();
            prop_assert!(
                eligible(member, spec),
                "{} not eligible for {}",
                m,
                spec.name
            );
            let new = slot.previous.as_deref() != Some(m);
            prop_assert!(
                !(new && member.manual),
                "new replica on manual member {}",
                m
            );
            for port in &spec.fixed_host_ports {
                let e = ports.entry((m, *port)).or_insert((0, false));
                e.0 += 1;
                e.1 |= new;
            }
        }
        if let Some(max) = spec.max_replicas_per_node.filter(|&n| n > 0) {
            for (m, c) in p.per_member() {
                prop_assert!(c <= max, "{} holds {} > {} of {}", m, c, max, spec.name);
            }
        }
        if let Mode::Replicated { replicas } = spec.mode {
            prop_assert_eq!(p.slots.len(), replicas as usize);
        }
    }
    for ((m, port), (count, new)) in ports {
        prop_assert!(
            !new || count == 1,
            "port {} used {} times on {}",
            port,
            count,
            m
        );
    }
    let (_, _, negative) = apply(ms, services, existing, s);
    prop_assert!(negative.is_empty(), "overcommitted: {:?}", negative);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn constraints_limits_and_resources_are_never_violated(
        ms in members(), services in services(), raw in existing()
    ) {
        let existing = make_existing(&raw, &services);
        let s = schedule(&ms, &services, &existing).unwrap();
        check_safety(&ms, &services, &existing, &s)?;
    }

    #[test]
    fn fresh_placements_are_within_one_of_even_at_every_level(
        ms in members(), services in services()
    ) {
        let s = schedule(&ms, &services, &[]).unwrap();
        for (p, spec) in s.placements.iter().zip(&services) {
            if matches!(spec.mode, Mode::Replicated { .. }) {
                check_spread(&ms, spec, p, &[])?;
            }
        }
    }

    #[test]
    fn new_replicas_never_make_the_spread_less_even_than_needed(
        ms in members(), services in services(), raw in existing()
    ) {
        let existing = make_existing(&raw, &services);
        let s = schedule(&ms, &services, &existing).unwrap();
        for (p, spec) in s.placements.iter().zip(&services) {
            if matches!(spec.mode, Mode::Replicated { .. }) {
                check_spread(&ms, spec, p, &existing)?;
            }
        }
    }

    #[test]
    fn scaling_down_an_even_placement_keeps_it_even_and_keeps_survivors(
        ms in members(), service in service("s0"), shrink in prop::collection::vec(0u32..14, 1)
    ) {
        // One service: with several, scaling one down frees room that makes the others'
        // (unmoved) replicas look uneven, which is allowed.
        let services = vec![service];
        let first = schedule(&ms, &services, &[]).unwrap();
        let (ms2, existing2, _) = apply(&ms, &services, &[], &first);
        let smaller: Vec<ServiceSpec> = services
            .iter()
            .zip(&shrink)
            .map(|(s, &by)| match s.mode {
                Mode::Replicated { replicas } => ServiceSpec {
                    mode: Mode::Replicated { replicas: replicas.saturating_sub(by) },
                    ..s.clone()
                },
                Mode::Global => s.clone(),
            })
            .collect();
        let second = schedule(&ms2, &smaller, &existing2).unwrap();
        for (p, spec) in second.placements.iter().zip(&smaller) {
            if let Mode::Replicated { .. } = spec.mode {
                // Strict: every replica counts as placed in this run.
                check_spread(&ms2, spec, p, &[])?;
                // Survivors stay. (Slots pending before may be placed now: scaling one
                // service down can free room for another.)
                for slot in &p.slots {
                    if slot.previous.is_some() {
                        prop_assert!(slot.is_unchanged(), "{:?} moved while scaling down", slot);
                    }
                }
            }
        }
    }

    #[test]
    fn rerunning_on_its_own_output_changes_nothing(
        ms in members(), services in services(), raw in existing()
    ) {
        let existing = make_existing(&raw, &services);
        let first = schedule(&ms, &services, &existing).unwrap();
        let (ms2, existing2, _) = apply(&ms, &services, &existing, &first);
        let second = schedule(&ms2, &services, &existing2).unwrap();
        for (a, b) in first.placements.iter().zip(&second.placements) {
            prop_assert!(b.removals.is_empty(), "second run removes {:?}", b.removals);
            let keys_a: Vec<(&SlotKey, Option<&str>)> =
                a.slots.iter().map(|s| (&s.key, s.member())).collect();
            let keys_b: Vec<(&SlotKey, Option<&str>)> =
                b.slots.iter().map(|s| (&s.key, s.member())).collect();
            prop_assert_eq!(keys_a, keys_b, "service {}", &a.service);
            for slot in &b.slots {
                if slot.member().is_some() {
                    prop_assert!(slot.is_unchanged(), "{:?} changed on re-run", slot);
                }
            }
        }
    }

    #[test]
    fn existing_replicas_on_eligible_members_stay(
        ms in members(), services in replicated_services(), raw in numbered_existing()
    ) {
        let existing = make_numbered(&raw, &services);
        let s = schedule(&ms, &services, &existing).unwrap();
        for (p, spec) in s.placements.iter().zip(&services) {
            let Mode::Replicated { replicas } = spec.mode else { continue };
            let mine: Vec<&ExistingReplica> =
                existing.iter().filter(|e| e.service == spec.name).collect();
            // Only well-formed states: numbered, unique slots.
            let slots: BTreeSet<&SlotKey> = mine.iter().map(|e| &e.slot).collect();
            if slots.len() != mine.len()
                || mine.iter().any(|e| matches!(e.slot, SlotKey::Member(_)))
            {
                continue;
            }
            let mut limit = spec.max_replicas_per_node.filter(|&n| n > 0).unwrap_or(u32::MAX);
            if !spec.fixed_host_ports.is_empty() {
                limit = limit.min(1);
            }
            let mut per: BTreeMap<&str, u32> = BTreeMap::new();
            let mut staying = Vec::new();
            for e in &mine {
                if find(&ms, &e.member).is_some_and(|m| eligible(m, spec)) {
                    *per.entry(e.member.as_str()).or_insert(0) += 1;
                    staying.push(*e);
                }
            }
            if per.values().any(|&c| c > limit) || staying.len() > replicas as usize {
                continue;
            }
            for e in staying {
                let slot = p.slots.iter().find(|s| s.key == e.slot);
                prop_assert!(
                    slot.is_some_and(|s| s.is_unchanged() && s.member() == Some(&e.member)),
                    "{:?} did not stay: {:?}", e, slot
                );
            }
        }
    }

    #[test]
    fn member_input_order_does_not_matter(
        ms in members(), services in services(), raw in existing(), seed in any::<u64>()
    ) {
        let existing = make_existing(&raw, &services);
        let a = schedule(&ms, &services, &existing).unwrap();
        let mut shuffled = ms.clone();
        // A deterministic shuffle from the seed.
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) >> 33) as usize
                % (i + 1);
            shuffled.swap(i, j);
        }
        let b = schedule(&shuffled, &services, &existing).unwrap();
        prop_assert_eq!(a, b);
    }
}
