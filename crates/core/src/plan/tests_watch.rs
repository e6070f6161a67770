//! Planner tests for members that fail, come back and join (what `watch` relies on):
//! replicas stranded on an offline member are re-created elsewhere under the slot's other
//! name, their removal waits for the member, and the surplus goes when it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, Project, load_with};
use proptest::prelude::*;

use super::*;
use crate::keys::{LABEL_PROJECT, LABEL_REPLACES, LABEL_SLOT};
use crate::schedule::Member;

pub(super) fn load(text: &str) -> Project {
    let o = LoadOptions {
        files: vec![PathBuf::from("/proj/compose.yaml")],
        working_dir: PathBuf::from("/proj"),
        environment: BTreeMap::new(),
        interpolate: true,
        ..LoadOptions::default()
    };
    let fs = MemFs::default().with("/proj/compose.yaml", text);
    load_with(&o, &fs).unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

pub(super) fn facts() -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["busybox".to_string()].into(),
        storage_pool: "local".into(),
        pools: [("local".to_string(), "dir".to_string())].into(),
        ..Default::default()
    }
}

fn members(n: usize) -> Vec<Member> {
    (1..=n).map(|i| Member::new(format!("node{i}"))).collect()
}

fn replicated(n: u32) -> Project {
    load(&format!(
        "name: shop\nservices:\n  web:\n    image: busybox\n    deploy:\n      replicas: {n}\n"
    ))
}

fn plan_of(p: &Project, obs: &Observed, grace: &[&str]) -> Plan {
    let o = PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let d = desired(p, &facts(), &o).unwrap_or_else(|e| panic!("{e}"));
    let opts = DiffOptions {
        grace: grace.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    diff(&d, obs, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Observed state after `plan` ran (creates and removes; networks exist).
fn apply(plan: &Plan, obs: &Observed) -> Observed {
    let mut out = obs.clone();
    for a in plan.actions() {
        match a {
            Action::CreateNetwork { name, config, .. } => out.networks.push(ObservedNetwork {
                name: name.clone(),
                managed: true,
                config: config.clone(),
                status: "Created".into(),
            }),
            Action::CreateProject { config, .. } => {
                out.project_exists = true;
                out.project_config = config.clone();
            }
            Action::Create(p) => out.instances.push(ObservedInstance {
                name: p.name.clone(),
                location: p.member.clone(),
                running: true,
                config: p.config.clone(),
            }),
            Action::Remove { name, .. } => out.instances.retain(|i| &i.name != name),
            _ => {}
        }
    }
    out
}

fn deployed(p: &Project, n: usize) -> Observed {
    let obs = Observed {
        clustered: true,
        members: members(n),
        ..Default::default()
    };
    apply(&plan_of(p, &obs, &[]), &obs)
}

fn set_online(obs: &mut Observed, member: &str, online: bool) {
    for m in &mut obs.members {
        if m.name == member {
            m.online = online;
        }
    }
}

/// Replicas on online members, per slot.
fn serving(obs: &Observed) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &obs.instances {
        let online = obs.members.iter().any(|m| m.name == i.location && m.online);
        if online && let Some(slot) = i.label(LABEL_SLOT) {
            out.entry(slot.to_string())
                .or_default()
                .push(i.name.clone());
        }
    }
    out
}

fn removals(plan: &Plan) -> Vec<(String, String)> {
    plan.actions()
        .filter_map(|a| match a {
            Action::Remove { name, member, .. } => Some((name.clone(), member.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn replicas_stranded_on_an_offline_member_are_recreated_elsewhere_under_their_other_name() {
    let p = replicated(6);
    let mut obs = deployed(&p, 3);
    let stranded: BTreeSet<String> = obs
        .instances
        .iter()
        .filter(|i| i.location == "node3")
        .map(|i| i.name.clone())
        .collect();
    assert_eq!(stranded.len(), 2);
    set_online(&mut obs, "node3", false);
    let plan = plan_of(&p, &obs, &[]);
    assert!(removals(&plan).is_empty(), "{:?}", removals(&plan));
    let created: Vec<&InstancePlan> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Create(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2);
    for c in &created {
        assert_ne!(c.member, "node3");
        let old = c.config.get(LABEL_REPLACES).expect("replaces label");
        assert!(stranded.contains(old));
        assert_eq!(c.name, format!("{old}-b"));
        assert_eq!(c.reason, "member node3 offline");
    }
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("node3, which is offline")),
        "{:?}",
        plan.warnings
    );
    // Converged: nothing more to do while node3 stays offline; 6 serve.
    let after = apply(&plan, &obs);
    assert!(plan_of(&p, &after, &[]).is_empty());
    assert_eq!(serving(&after).len(), 6);
}

#[test]
fn when_the_member_returns_its_stranded_replicas_are_removed_and_the_replacements_kept() {
    let p = replicated(6);
    let mut obs = deployed(&p, 3);
    set_online(&mut obs, "node3", false);
    let mut obs = apply(&plan_of(&p, &obs, &[]), &obs);
    set_online(&mut obs, "node3", true);
    let plan = plan_of(&p, &obs, &[]);
    let gone = removals(&plan);
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(gone.iter().all(|(n, m)| m == "node3" && !n.ends_with("-b")));
    assert!(plan.actions().all(|a| matches!(a, Action::Remove { .. })));
    let after = apply(&plan, &obs);
    assert_eq!(after.instances.len(), 6);
    assert!(plan_of(&p, &after, &[]).is_empty());
}

#[test]
fn a_replacement_a_crash_left_unprepared_never_displaces_the_running_replica_it_replaces() {
    let p = replicated(6);
    let mut obs = deployed(&p, 3);
    set_online(&mut obs, "node3", false);
    let mut obs = apply(&plan_of(&p, &obs, &[]), &obs);
    set_online(&mut obs, "node3", true);
    // The replacements were killed half way: created, files not pushed, never started, so
    // their hash (written last) is not there yet.
    for i in obs.instances.iter_mut().filter(|i| i.name.ends_with("-b")) {
        i.running = false;
        i.config.remove(crate::keys::LABEL_HASH);
    }
    let plan = plan_of(&p, &obs, &[]);
    let gone = removals(&plan);
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(
        gone.iter().all(|(n, _)| n.ends_with("-b")),
        "the running originals stay, the unprepared replacements go: {gone:?}"
    );
    let after = apply(&plan, &obs);
    assert_eq!(after.instances.len(), 6);
    assert!(after.instances.iter().all(|i| i.running));
}

#[test]
fn within_the_grace_period_replicas_on_an_offline_member_are_left_alone() {
    let p = replicated(6);
    let mut obs = deployed(&p, 3);
    for i in &mut obs.instances {
        if i.location == "node3" {
            i.running = false;
        }
    }
    set_online(&mut obs, "node3", false);
    let plan = plan_of(&p, &obs, &["node3"]);
    assert!(plan.is_empty(), "{:?}", plan.actions().collect::<Vec<_>>());
}

#[test]
fn a_member_that_joins_gets_the_global_service_and_nothing_else_changes() {
    let p = load(
        "name: shop\nservices:\n  hh:\n    image: busybox\n    deploy: {mode: global}\n  web:\n    image: busybox\n    deploy: {replicas: 3}\n",
    );
    let mut obs = deployed(&p, 3);
    obs.members.push(Member::new("node4"));
    let plan = plan_of(&p, &obs, &[]);
    let actions: Vec<String> = plan.actions().map(|a| a.to_string()).collect();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        actions[0].starts_with("create hh-node4 (hh,") && actions[0].ends_with("on node4"),
        "{actions:?}"
    );
}

proptest! {
    /// Whatever the count and whichever member fails: after one plan, every slot is served
    /// on a live member, nothing is removed from the offline member, and a second plan is
    /// empty; once the member is back, one plan leaves exactly one replica per slot.
    #[test]
    fn a_failed_member_never_leaves_a_slot_unserved_nor_a_slot_doubled_after_it_returns(
        replicas in 1u32..10,
        n in 2usize..5,
        failed in 1usize..5,
    ) {
        let failed = format!("node{}", 1 + (failed - 1) % n);
        let p = replicated(replicas);
        let mut obs = deployed(&p, n);
        set_online(&mut obs, &failed, false);
        let plan = plan_of(&p, &obs, &[]);
        prop_assert!(removals(&plan).iter().all(|(_, m)| m != &failed));
        let obs = apply(&plan, &obs);
        let s = serving(&obs);
        prop_assert_eq!(s.len(), replicas as usize);
        prop_assert!(s.values().all(|v| v.len() == 1));
        prop_assert!(plan_of(&p, &obs, &[]).is_empty());
        let mut back = obs.clone();
        set_online(&mut back, &failed, true);
        let back = apply(&plan_of(&p, &back, &[]), &back);
        let s = serving(&back);
        prop_assert_eq!(back.instances.len(), replicas as usize);
        prop_assert_eq!(s.len(), replicas as usize);
        prop_assert!(plan_of(&p, &back, &[]).is_empty());
    }
}

#[test]
fn replicas_listed_without_configuration_on_an_offline_member_are_recognised_by_name() {
    let p = replicated(6);
    let mut obs = deployed(&p, 3);
    obs.project_config
        .insert(LABEL_PROJECT.to_string(), "shop".to_string());
    // What Incus lists for instances of a member it cannot reach: no configuration.
    for i in &mut obs.instances {
        if i.location == "node3" {
            i.config.clear();
            i.running = false;
        }
    }
    set_online(&mut obs, "node3", false);
    let plan = plan_of(&p, &obs, &[]);
    assert!(removals(&plan).is_empty());
    let created: Vec<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Create(p) => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(created.iter().all(|n| n.ends_with("-b")), "{created:?}");
    let after = apply(&plan, &obs);
    assert!(plan_of(&p, &after, &[]).is_empty());
    // Within the grace period, they are left alone.
    assert!(plan_of(&p, &obs, &["node3"]).is_empty());
}

#[test]
fn a_replacement_for_a_replica_with_local_volumes_names_the_data_left_on_the_offline_member() {
    let p = load(
        "name: shop\nservices:\n  db:\n    image: busybox\n    volumes: [data:/var/lib/db]\n    deploy:\n      replicas: 3\nvolumes:\n  data: {}\n",
    );
    let mut obs = deployed(&p, 3);
    let on3 = obs
        .instances
        .iter()
        .find(|i| i.location == "node3")
        .map(|i| i.name.clone())
        .expect("a replica on node3");
    set_online(&mut obs, "node3", false);
    let plan = plan_of(&p, &obs, &[]);
    let w: Vec<&String> = plan
        .warnings
        .iter()
        .filter(|w| w.contains("without its data"))
        .collect();
    assert_eq!(w.len(), 1, "{:?}", plan.warnings);
    assert!(w[0].contains(&format!("replaces {on3} on ")), "{}", w[0]);
    assert!(w[0].contains("local to node3"), "{}", w[0]);
    // A service without volumes gets no such warning.
    let mut plain = deployed(&replicated(3), 3);
    set_online(&mut plain, "node3", false);
    let plan = plan_of(&replicated(3), &plain, &[]);
    assert!(
        !plan.warnings.iter().any(|w| w.contains("without its data")),
        "{:?}",
        plan.warnings
    );
}
