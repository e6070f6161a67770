//! Planner tests of updates: what is replaced, what is changed in place, names in
//! `start-first` updates, retired instances.

use super::tests::{apply, cluster, up};
use super::*;
use crate::keys::{LABEL_HASH, LABEL_RETIRED};

const WEB: &str = r#"
name: shop
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 3
      resources: {limits: {memory: 64M}}
"#;

fn recreates(plan: &Plan) -> Vec<(Option<String>, String)> {
    let mut out: Vec<_> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Recreate(p) => Some((p.old_name.clone(), p.name.clone())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn deployed(text: &str) -> Observed {
    apply(
        &up(text, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    )
}

#[test]
fn a_limits_only_change_is_applied_in_place_without_a_restart() {
    let obs = deployed(WEB);
    let plan = up(
        &WEB.replace("memory: 64M", "memory: 128M"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    let updates: Vec<_> = plan
        .actions()
        .map(|a| match a {
            Action::UpdateInPlace { name, set, .. } => (name.clone(), set.clone()),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(updates.len(), 3);
    for (_, set) in &updates {
        assert_eq!(
            set.get("limits.memory").map(String::as_str),
            Some("134217728")
        );
        assert!(set.contains_key(LABEL_HASH));
    }
    assert!(plan.rollouts.is_empty());
    // Applied, the next plan has nothing to do.
    let after = apply(&plan, &obs);
    assert!(
        up(
            &WEB.replace("memory: 64M", "memory: 128M"),
            &after,
            &DiffOptions::default()
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn a_changed_restart_policy_is_applied_in_place_and_a_new_one_too() {
    let with = |p: &str| {
        WEB.replace(
            "      resources:",
            &format!("      restart_policy: {p}\n      resources:"),
        )
    };
    let key = crate::keys::LABEL_RESTART_POLICY;
    for (before, after, want) in [
        (
            WEB.to_string(),
            with("{condition: on-failure, max_attempts: 2}"),
            "condition=on-failure delay=0 max_attempts=2 window=0",
        ),
        (
            with("{condition: on-failure, max_attempts: 2}"),
            with("{condition: on-failure, max_attempts: 3, window: 1m}"),
            "condition=on-failure delay=0 max_attempts=3 window=60",
        ),
    ] {
        let obs = deployed(&before);
        let plan = up(&after, &obs, &DiffOptions::default()).unwrap();
        let mut n = 0;
        for a in plan.actions() {
            match a {
                Action::UpdateInPlace { set, .. } => {
                    assert_eq!(set.get(key).map(String::as_str), Some(want));
                    n += 1;
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(n, 3);
    }
}

#[test]
fn removing_a_limit_in_place_clears_its_key() {
    let obs = deployed(WEB);
    let plan = up(
        &WEB.replace("      resources: {limits: {memory: 64M}}\n", ""),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(plan.actions().all(|a| matches!(
        a,
        Action::UpdateInPlace { set, .. } if set.get("limits.memory").map(String::as_str) == Some("")
    )));
}

#[test]
fn an_image_change_replaces_each_replica_under_its_own_name_in_stop_first() {
    let obs = deployed(WEB);
    let plan = up(
        &WEB.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(
        recreates(&plan),
        [
            (Some("web-1".into()), "web-1".into()),
            (Some("web-2".into()), "web-2".into()),
            (Some("web-3".into()), "web-3".into())
        ]
    );
    assert!(!plan.rollouts["web"].update.start_first);
}

#[test]
fn start_first_takes_the_slots_other_name_and_alternates_back() {
    let text = WEB.replace(
        "      resources:",
        "      update_config: {order: start-first}\n      resources:",
    );
    let obs = deployed(&text);
    let v2 = text.replace("testapp/v1", "testapp/v2");
    let plan = up(&v2, &obs, &DiffOptions::default()).unwrap();
    assert_eq!(
        recreates(&plan),
        [
            (Some("web-1".into()), "web-1-b".into()),
            (Some("web-2".into()), "web-2-b".into()),
            (Some("web-3".into()), "web-3-b".into())
        ]
    );
    // After it, the -b names are the replicas in place: nothing to do.
    let after = apply(&plan, &obs);
    assert!(up(&v2, &after, &DiffOptions::default()).unwrap().is_empty());
    // The next update goes back to the usual names.
    let back = up(&text, &after, &DiffOptions::default()).unwrap();
    assert_eq!(
        recreates(&back),
        [
            (Some("web-1-b".into()), "web-1".into()),
            (Some("web-2-b".into()), "web-2".into()),
            (Some("web-3-b".into()), "web-3".into())
        ]
    );
}

#[test]
fn retired_instances_are_not_replicas_and_go_once_nothing_is_left_to_replace() {
    let mut obs = deployed(WEB);
    let mut retired = obs.instances[0].clone();
    retired.name = "web-1-old".into();
    retired.running = false;
    retired.config.insert(LABEL_RETIRED.into(), "web-1".into());
    obs.instances.push(retired);
    // Same file: the retired one is removed, no replica is added or replaced.
    let plan = up(WEB, &obs, &DiffOptions::default()).unwrap();
    let actions: Vec<String> = plan.actions().map(|a| a.to_string()).collect();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(actions[0].starts_with("remove web-1-old"), "{actions:?}");
    // While the service is being updated, it is kept for a rollback.
    let plan = up(
        &WEB.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(
        plan.actions()
            .all(|a| !matches!(a, Action::Remove { name, .. } if name == "web-1-old"))
    );
}

#[test]
fn a_container_name_service_updates_stop_first_and_says_so() {
    let text = r#"
name: shop
services:
  db:
    image: testapp/v1
    container_name: thedb
    deploy: {update_config: {order: start-first}}
"#;
    let obs = deployed(text);
    let plan = up(
        &text.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(recreates(&plan), [(Some("thedb".into()), "thedb".into())]);
    assert!(plan.warnings.iter().any(|w| w.contains("stop-first")));
}

/// (old name, new name, old member, new member) of each replacement, in rollout order.
fn moves(plan: &Plan) -> Vec<(String, String, String, String)> {
    plan.actions()
        .filter_map(|a| match a {
            Action::Recreate(p) => Some((
                p.old_name.clone().unwrap_or_default(),
                p.name.clone(),
                p.old_member.clone().unwrap_or_default(),
                p.member.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn member_of(obs: &Observed, name: &str) -> String {
    obs.instances
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.location.clone())
        .unwrap_or_default()
}

const PORTED: &str = r#"
name: shop
services:
  web:
    image: testapp/v1
    ports: ["8080:80"]
    deploy: {replicas: 2, update_config: {order: start-first}}
"#;

#[test]
fn start_first_with_a_published_port_starts_each_new_replica_on_a_member_free_of_the_port() {
    let obs = deployed(PORTED);
    let on = |n: &str| member_of(&obs, n);
    let (m1, m2) = (on("web-1"), on("web-2"));
    let free = ["node1", "node2", "node3"]
        .into_iter()
        .find(|m| *m != m1 && *m != m2)
        .unwrap()
        .to_string();
    let plan = up(
        &PORTED.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    // web-1 starts on the free member; web-2 on the member web-1 left.
    assert_eq!(
        moves(&plan),
        [
            ("web-1".into(), "web-1-b".into(), m1.clone(), free.clone()),
            ("web-2".into(), "web-2-b".into(), m2.clone(), m1.clone()),
        ]
    );
    let spec = &plan.rollouts["web"];
    assert!(spec.update.start_first);
    assert!(spec.stop_first_slots.is_empty());
    assert!(
        !plan.warnings.iter().any(|w| w.contains("stop-first")),
        "{:?}",
        plan.warnings
    );
    // The placement names the new replicas where they start, and once applied the next plan
    // keeps them there.
    assert!(
        plan.placement
            .contains(&(free.clone(), "web-1-b".into(), "web".into()))
    );
    let after = apply(&plan, &obs);
    assert!(
        up(
            &PORTED.replace("testapp/v1", "testapp/v2"),
            &after,
            &DiffOptions::default()
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn start_first_with_a_published_port_and_no_free_member_falls_back_to_stop_first_and_says_so() {
    let text = PORTED.replace("replicas: 2", "replicas: 3");
    let obs = deployed(&text);
    let plan = up(
        &text.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    // Every member holds one: each replica is replaced where it is, stop-first.
    for (_, _, old, new) in moves(&plan) {
        assert_eq!(old, new);
    }
    assert_eq!(
        plan.rollouts["web"].stop_first_slots,
        ["1", "2", "3"].map(String::from).into()
    );
    assert_eq!(
        plan.warnings
            .iter()
            .filter(|w| w.contains("replaced stop-first") && w.contains("8080"))
            .count(),
        3,
        "{:?}",
        plan.warnings
    );
}

#[test]
fn start_first_with_a_published_port_stays_within_the_constraints() {
    let text = PORTED.replace(
        "deploy: {",
        "deploy: {placement: {constraints: [node.hostname != node3]}, ",
    );
    let obs = deployed(&text);
    let plan = up(
        &text.replace("testapp/v1", "testapp/v2"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(moves(&plan).iter().all(|(_, _, _, new)| new != "node3"));
    assert_eq!(plan.rollouts["web"].stop_first_slots.len(), 2);
}
