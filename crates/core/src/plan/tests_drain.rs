//! Planner tests for `node drain`: replicas leave the drained member start-first under the
//! slot's other name, nothing is dropped, and what cannot move stays, with the reason.

use std::collections::{BTreeMap, BTreeSet};

use ic_compose::Project;
use proptest::prelude::*;

use super::drain::{DrainSteps, drain_steps, rebalance_evictions, rebalance_steps};
use super::tests_watch::{facts, load};
use super::*;
use crate::keys::{LABEL_REPLACES, LABEL_SERVICE, LABEL_SLOT};
use crate::schedule::Member;

fn plan_of(p: &Project, obs: &Observed, drain: &[&str]) -> Plan {
    let o = PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let d = desired(p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
    let opts = DiffOptions {
        drain: drain.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    diff(&d, obs, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn global_services(p: &Project) -> BTreeSet<String> {
    let o = PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let d = desired(p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
    d.services
        .iter()
        .filter(|t| matches!(t.spec.mode, crate::schedule::Mode::Global))
        .map(|t| t.service.clone())
        .collect()
}

fn steps(p: &Project, obs: &Observed, member: &str) -> DrainSteps {
    drain_steps(
        &plan_of(p, obs, &[member]),
        obs,
        member,
        &global_services(p),
    )
}

fn apply_actions<'a>(obs: &mut Observed, actions: impl IntoIterator<Item = &'a Action>) {
    for a in actions {
        match a {
            Action::CreateNetwork { name, config, .. } => obs.networks.push(ObservedNetwork {
                name: name.clone(),
                managed: true,
                config: config.clone(),
                status: "Created".into(),
            }),
            Action::CreateProject { config, .. } => {
                obs.project_exists = true;
                obs.project_config = config.clone();
            }
            Action::Create(p) => obs.instances.push(ObservedInstance {
                name: p.name.clone(),
                location: p.member.clone(),
                running: true,
                config: p.config.clone(),
            }),
            Action::Remove { name, .. } => obs.instances.retain(|i| &i.name != name),
            _ => {}
        }
    }
}

fn deployed(p: &Project, n: usize) -> Observed {
    let mut obs = Observed {
        clustered: true,
        members: (1..=n).map(|i| Member::new(format!("node{i}"))).collect(),
        ..Default::default()
    };
    let plan = plan_of(p, &obs, &[]);
    apply_actions(&mut obs, plan.actions());
    obs
}

/// Runs a drain as the engine does: prepare, creates, then removals.
fn run(s: &DrainSteps, obs: &Observed, during: impl Fn(&Observed)) -> Observed {
    let mut obs = obs.clone();
    apply_actions(&mut obs, &s.prepare);
    for m in &s.moves {
        apply_actions(&mut obs, [&Action::Create(Box::new(m.create.clone()))]);
        during(&obs);
    }
    for m in &s.moves {
        apply_actions(&mut obs, [&m.retire]);
        during(&obs);
    }
    apply_actions(&mut obs, &s.global_removals);
    obs
}

fn on(obs: &Observed, member: &str) -> Vec<String> {
    obs.instances
        .iter()
        .filter(|i| i.location == member)
        .map(|i| i.name.clone())
        .collect()
}

/// Running replicas per slot of `service`.
fn per_slot(obs: &Observed, service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for i in &obs.instances {
        if i.running
            && i.label(LABEL_SERVICE) == Some(service)
            && let Some(s) = i.label(LABEL_SLOT)
        {
            *out.entry(s.to_string()).or_insert(0) += 1;
        }
    }
    out
}

fn web(n: u32, extra: &str) -> Project {
    load(&format!(
        "name: shop\nservices:\n  web:\n    image: busybox\n    deploy:\n      replicas: {n}\n{extra}"
    ))
}

#[test]
fn a_drain_recreates_each_replica_elsewhere_under_its_other_name_before_removing_it() {
    let p = web(6, "");
    let obs = deployed(&p, 3);
    let leaving = on(&obs, "node2");
    assert_eq!(leaving.len(), 2);
    let s = steps(&p, &obs, "node2");
    assert!(s.other.is_empty(), "{:?}", s.other);
    assert!(s.stuck.is_empty() && s.global_removals.is_empty());
    assert_eq!(s.moves.len(), 2);
    for m in &s.moves {
        assert!(leaving.contains(&m.old));
        assert_eq!(m.create.name, format!("{}-b", m.old));
        assert_ne!(m.create.member, "node2");
        assert_eq!(m.create.config.get(LABEL_REPLACES), Some(&m.old));
        assert_eq!(m.create.reason, "member node2 drained");
        assert!(
            matches!(&m.retire, Action::Remove { name, member, .. } if name == &m.old && member == "node2")
        );
    }
    // The spread holds: 3 and 3 on the two members left.
    let after = run(&s, &obs, |_| {});
    assert!(on(&after, "node2").is_empty());
    assert_eq!(on(&after, "node1").len(), 3);
    assert_eq!(on(&after, "node3").len(), 3);
    // Converged: draining again, or planning with node2 marked manual, changes nothing.
    assert!(plan_of(&p, &after, &["node2"]).is_empty());
    let mut marked = after.clone();
    marked
        .members
        .iter_mut()
        .filter(|m| m.name == "node2")
        .for_each(|m| m.manual = true);
    assert!(plan_of(&p, &marked, &[]).is_empty());
}

#[test]
fn a_replica_that_no_other_member_can_take_stays_and_is_reported_with_the_reasons() {
    let p = web(
        2,
        "      placement:\n        constraints: [node.hostname == node2]\n",
    );
    let obs = deployed(&p, 3);
    assert_eq!(on(&obs, "node2").len(), 2);
    let plan = plan_of(&p, &obs, &["node2"]);
    assert!(plan.is_empty(), "{:?}", plan.actions().collect::<Vec<_>>());
    let s = steps(&p, &obs, "node2");
    assert!(s.moves.is_empty());
    assert_eq!(s.stuck.len(), 2, "{s:?}");
    for st in &s.stuck {
        assert!(
            st.reason
                .contains("node1: node.hostname == node2 not satisfied"),
            "{}",
            st.reason
        );
        assert!(!st.reason.contains("node2:"), "{}", st.reason);
    }
}

#[test]
fn only_what_fits_moves_when_max_replicas_per_node_limits_the_other_members() {
    let p = web(3, "      placement:\n        max_replicas_per_node: 1\n");
    let obs = deployed(&p, 3);
    let s = steps(&p, &obs, "node2");
    assert!(s.moves.is_empty());
    assert_eq!(s.stuck.len(), 1);
    assert!(
        s.stuck[0]
            .reason
            .contains("max_replicas_per_node (1) reached"),
        "{}",
        s.stuck[0].reason
    );
    // A fourth member: it goes there.
    let mut obs4 = obs.clone();
    obs4.members.push(Member::new("node4"));
    let s = steps(&p, &obs4, "node2");
    assert_eq!(s.moves.len(), 1);
    assert_eq!(s.moves[0].create.member, "node4");
}

#[test]
fn a_global_service_loses_its_replica_on_the_drained_member_last_and_nothing_else() {
    let p = load(
        "name: shop\nservices:\n  hh:\n    image: busybox\n    deploy: {mode: global}\n  web:\n    image: busybox\n    deploy: {replicas: 3}\n",
    );
    let obs = deployed(&p, 3);
    let s = steps(&p, &obs, "node2");
    assert_eq!(s.moves.len(), 1, "{s:?}");
    assert_eq!(s.global_removals.len(), 1);
    assert!(
        matches!(&s.global_removals[0], Action::Remove { name, .. } if name == "hh-node2"),
        "{:?}",
        s.global_removals
    );
    assert!(s.other.is_empty(), "{:?}", s.other);
}

#[test]
fn a_drain_leaves_other_pending_work_to_up_and_touches_no_other_member() {
    // 4 declared, 3 exist (one was removed by hand): the missing one is `up`'s business.
    let p = web(4, "");
    let mut obs = deployed(&p, 3);
    let gone = on(&obs, "node1")[0].clone();
    obs.instances.retain(|i| i.name != gone);
    let s = steps(&p, &obs, "node2");
    assert_eq!(s.other.len(), 1, "{:?}", s.other);
    assert!(s.other[0].starts_with("create "), "{:?}", s.other);
    assert!(s.moves.iter().all(|m| m.create.member != "node2"));
}

#[test]
fn a_replica_already_under_its_other_name_moves_back_to_its_first_name() {
    let p = web(3, "");
    let obs = deployed(&p, 3);
    let first = run(&steps(&p, &obs, "node2"), &obs, |_| {});
    let moved: Vec<String> = first
        .instances
        .iter()
        .filter(|i| i.name.ends_with("-b"))
        .map(|i| i.location.clone())
        .collect();
    assert_eq!(moved.len(), 1);
    let s = steps(&p, &first, &moved[0]);
    let back: Vec<(&str, &str)> = s
        .moves
        .iter()
        .filter(|m| m.old.ends_with("-b"))
        .map(|m| (m.old.as_str(), m.create.name.as_str()))
        .collect();
    assert_eq!(back.len(), 1, "{:?}", s.moves);
    assert_eq!(format!("{}-b", back[0].1), back[0].0);
}

#[test]
fn replicas_an_evacuation_stopped_are_recreated_elsewhere_and_those_incus_moved_stay() {
    let p = web(6, "");
    let mut obs = deployed(&p, 3);
    for m in &mut obs.members {
        if m.name == "node2" {
            m.evacuated = true;
        }
    }
    // Stopped in place (`incus cluster evacuate --action stop`).
    let mut stopped = obs.clone();
    for i in &mut stopped.instances {
        if i.location == "node2" {
            i.running = false;
        }
    }
    let plan = plan_of(&p, &stopped, &[]);
    let created: Vec<&InstancePlan> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Create(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2);
    assert!(
        created
            .iter()
            .all(|c| c.member != "node2" && c.reason == "member node2 evacuated")
    );
    let mut after = stopped.clone();
    apply_actions(&mut after, plan.actions());
    assert!(on(&after, "node2").is_empty());
    assert_eq!(per_slot(&after, "web").len(), 6);
    // Moved by Incus (same names, on other members): nothing to do.
    let mut moved = obs.clone();
    for (k, i) in moved.instances.iter_mut().enumerate() {
        if i.location == "node2" {
            i.location = if k % 2 == 0 { "node1" } else { "node3" }.into();
        }
    }
    assert!(plan_of(&p, &moved, &[]).is_empty());
}

#[test]
fn a_drain_run_again_after_an_interruption_removes_the_replicas_already_replaced() {
    let p = web(6, "");
    let obs = deployed(&p, 3);
    let s = steps(&p, &obs, "node2");
    // Killed after the replacements were made, before the old replicas went.
    let mut half = obs.clone();
    for m in &s.moves {
        apply_actions(&mut half, [&Action::Create(Box::new(m.create.clone()))]);
    }
    let again = steps(&p, &half, "node2");
    assert!(
        again.moves.is_empty() && again.other.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.surplus.len(), 2, "{again:?}");
    let mut done = half.clone();
    apply_actions(&mut done, &again.surplus);
    assert!(on(&done, "node2").is_empty());
    assert_eq!(per_slot(&done, "web").len(), 6);
}

fn rebalance(p: &Project, obs: &Observed) -> (BTreeSet<String>, DrainSteps) {
    let o = PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let d = desired(p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
    let evict = rebalance_evictions(&d, obs);
    let opts = DiffOptions {
        evict: evict.clone(),
        ..Default::default()
    };
    let plan = diff(&d, obs, &opts).unwrap_or_else(|e| panic!("{e}"));
    let steps = rebalance_steps(&plan, obs, &evict);
    (evict, steps)
}

#[test]
fn a_rebalance_after_a_restore_moves_replicas_back_start_first_until_the_spread_is_even() {
    let p = web(6, "");
    let obs = deployed(&p, 3);
    let drained = run(&steps(&p, &obs, "node2"), &obs, |_| {});
    assert!(on(&drained, "node2").is_empty());
    let (evict, s) = rebalance(&p, &drained);
    assert_eq!(evict.len(), 2, "{evict:?}");
    assert!(s.other.is_empty(), "{:?}", s.other);
    assert_eq!(s.moves.len(), 2);
    for m in &s.moves {
        assert_eq!(m.create.member, "node2");
        assert!(evict.contains(&m.old));
        assert!(
            m.create.reason.starts_with("rebalanced from node"),
            "{}",
            m.create.reason
        );
    }
    let after = run(&s, &drained, |o| assert_eq!(per_slot(o, "web").len(), 6));
    for n in ["node1", "node2", "node3"] {
        assert_eq!(on(&after, n).len(), 2, "{n}: {:?}", on(&after, n));
    }
    assert!(plan_of(&p, &after, &[]).is_empty());
    let (evict, s) = rebalance(&p, &after);
    assert!(evict.is_empty() && s.is_empty(), "{evict:?}");
}

#[test]
fn a_rebalance_moves_nothing_onto_a_member_the_constraints_exclude_nor_from_an_even_spread() {
    // Only node1 and node3 qualify: 2 and 2 is already the spread from scratch.
    let p = web(
        4,
        "      placement:\n        constraints: [node.hostname != node2]\n",
    );
    let obs = deployed(&p, 3);
    assert!(on(&obs, "node2").is_empty());
    let (evict, s) = rebalance(&p, &obs);
    assert!(evict.is_empty() && s.is_empty(), "{evict:?} {s:?}");
    // Unconstrained and even: nothing either.
    let p = web(6, "");
    let obs = deployed(&p, 3);
    let (evict, s) = rebalance(&p, &obs);
    assert!(evict.is_empty() && s.is_empty(), "{evict:?} {s:?}");
}

proptest! {
    /// Whatever the count, members and drained member: at every step of a drain each slot has
    /// a running replica, and at the end exactly the declared count runs, none on the
    /// drained member.
    #[test]
    fn a_drain_never_leaves_a_slot_without_a_running_replica(
        replicas in 1u32..10,
        n in 2usize..5,
        drained in 1usize..5,
    ) {
        let drained = format!("node{}", 1 + (drained - 1) % n);
        let p = web(replicas, "");
        let obs = deployed(&p, n);
        let s = steps(&p, &obs, &drained);
        prop_assert!(s.stuck.is_empty() && s.other.is_empty());
        let after = run(&s, &obs, |o| {
            let slots = per_slot(o, "web");
            assert_eq!(slots.len(), replicas as usize, "{slots:?}");
        });
        prop_assert_eq!(after.instances.len(), replicas as usize);
        prop_assert!(on(&after, &drained).is_empty());
        prop_assert!(per_slot(&after, "web").values().all(|&c| c == 1));
    }
}
