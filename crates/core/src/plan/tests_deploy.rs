//! Planner tests for `deploy:` on a cluster: pending replicas, unsatisfiable placement,
//! shared storage, a standalone server's labels.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, Project, load_with};

use super::*;
use crate::schedule::Member;

fn load(text: &str) -> Project {
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

fn facts(pools: &[(&str, &str)]) -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["busybox".to_string()].into(),
        storage_pool: "local".into(),
        pools: pools
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn opts() -> PlanOptions {
    PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    }
}

fn observed(members: Vec<Member>) -> Observed {
    Observed {
        project_exists: true,
        clustered: members.len() > 1,
        members,
        ..Default::default()
    }
}

fn three() -> Observed {
    observed(vec![
        Member::new("node1"),
        Member::new("node2"),
        Member::new("node3"),
    ])
}

/// Observed state after creating every replica `plan` creates.
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
            Action::Create(p) => out.instances.push(ObservedInstance {
                name: p.name.clone(),
                location: p.member.clone(),
                running: true,
                config: p.config.clone(),
            }),
            _ => {}
        }
    }
    out
}

fn created(plan: &Plan) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Create(p) => Some((p.name.clone(), p.member.clone())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

const FOUR_ON_THREE: &str = r#"
name: shop
services:
  web:
    image: busybox
    deploy:
      replicas: 4
      placement: {max_replicas_per_node: 1}
"#;

#[test]
fn replicas_beyond_max_per_node_are_created_elsewhere_and_the_rest_is_pending_with_reasons() {
    let project = load(FOUR_ON_THREE);
    let plan = plan_up(
        &project,
        &facts(&[]),
        &three(),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(
        created(&plan),
        [
            ("web-1".to_string(), "node1".to_string()),
            ("web-2".into(), "node2".into()),
            ("web-3".into(), "node3".into())
        ]
    );
    assert_eq!(plan.pending.len(), 1);
    let p = &plan.pending[0];
    assert_eq!(
        (p.name.as_str(), p.slot.as_str(), p.exists),
        ("web-4", "4", false)
    );
    assert_eq!(
        p.reason.to_string(),
        "node1: max_replicas_per_node (1) reached\n\
         node2: max_replicas_per_node (1) reached\n\
         node3: max_replicas_per_node (1) reached"
    );

    // `ps` finds the same pending replica from the compose file and what exists.
    let after = apply(&plan, &three());
    let ps = placement::pending_replicas(&project, &after, &facts(&[]).network, &opts()).unwrap();
    assert_eq!(ps, plan.pending);
    // And a second `up` creates nothing but still reports it.
    let again = plan_up(
        &project,
        &facts(&[]),
        &after,
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(again.is_empty());
    assert_eq!(again.pending, plan.pending);
}

#[test]
fn nothing_is_pending_when_every_replica_fits() {
    let project = load(&FOUR_ON_THREE.replace("replicas: 4", "replicas: 3"));
    let plan = plan_up(
        &project,
        &facts(&[]),
        &three(),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(plan.pending.is_empty());
    let after = apply(&plan, &three());
    assert!(
        placement::pending_replicas(&project, &after, &facts(&[]).network, &opts())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn an_unsatisfiable_constraint_fails_the_plan_listing_every_member_once() {
    let text = r#"
name: shop
services:
  db:
    image: busybox
    deploy:
      replicas: 2
      placement: {constraints: [node.labels.storage == ssd]}
"#;
    let mut obs = three();
    obs.members[0] = Member::new("node1").with_label("storage", "hdd");
    let err = plan_up(
        &load(text),
        &facts(&[]),
        &obs,
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service `db` cannot be placed on any cluster member:\n  \
         node1: node.labels.storage == ssd not satisfied\n  \
         node2: node.labels.storage == ssd not satisfied\n  \
         node3: node.labels.storage == ssd not satisfied\n\
         Relax its deploy.placement constraints, max_replicas_per_node or resource reservations, \
         or change the members (e.g. `incus cluster set <member> user.<label>=<value>`)"
    );
}

#[test]
fn a_standalone_server_is_checked_against_its_own_name_and_labels() {
    let text = r#"
name: shop
services:
  db:
    image: busybox
    deploy:
      placement:
        constraints: [node.labels.storage == ssd, node.hostname == laptop, node.role == manager]
"#;
    let server = Member::standalone("laptop").with_label("storage", "ssd");
    let plan = plan_up(
        &load(text),
        &facts(&[]),
        &observed(vec![server]),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert_eq!(created(&plan), [("db-1".to_string(), "laptop".to_string())]);
    let unlabelled = Member::standalone("laptop");
    let err = plan_up(
        &load(text),
        &facts(&[]),
        &observed(vec![unlabelled]),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("laptop: node.labels.storage == ssd not satisfied"),
        "{err}"
    );
}

const WITH_VOLUME: &str = r#"
name: shop
services:
  db:
    image: busybox
    volumes: [data:/var/lib/db]
    deploy: {replicas: 3}
  web:
    image: busybox
    deploy: {replicas: 3}
volumes:
  data: {}
"#;

fn warnings_about(plan: &Plan, service: &str) -> Vec<String> {
    plan.warnings
        .iter()
        .filter(|w| w.contains(&format!("service {service:?} mounts named volumes")))
        .cloned()
        .collect()
}

#[test]
fn replicas_with_volumes_on_several_members_without_shared_storage_warn_once() {
    let plan = plan_up(
        &load(WITH_VOLUME),
        &facts(&[("local", "dir")]),
        &three(),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    let w = warnings_about(&plan, "db");
    assert_eq!(w.len(), 1, "{:?}", plan.warnings);
    assert!(w[0].contains("3 members (node1, node2, node3)"), "{}", w[0]);
    assert!(w[0].contains("ceph, cephfs, lvmcluster, linstor, truenas"));
    assert!(warnings_about(&plan, "web").is_empty());
    // One local volume per member, no root disk device.
    let volumes: Vec<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::CreateVolume { pool, member, .. } => Some(format!("{pool}@{member}")),
            _ => None,
        })
        .collect();
    assert_eq!(volumes, ["local@node1", "local@node2", "local@node3"]);
    assert!(plan.actions().all(|a| match a {
        Action::Create(p) => !p.devices.contains_key("root"),
        _ => true,
    }));

    // One replica: no warning.
    let one = WITH_VOLUME.replacen("replicas: 3", "replicas: 1", 1);
    let plan = plan_up(
        &load(&one),
        &facts(&[("local", "dir")]),
        &three(),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(
        warnings_about(&plan, "db").is_empty(),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn a_shared_pool_takes_the_volumes_and_root_disks_of_services_with_volumes() {
    let plan = plan_up(
        &load(WITH_VOLUME),
        &facts(&[("local", "zfs"), ("remote", "ceph"), ("files", "cephfs")]),
        &three(),
        &opts(),
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(
        warnings_about(&plan, "db").is_empty(),
        "{:?}",
        plan.warnings
    );
    let volumes: Vec<(String, String)> = plan
        .actions()
        .filter_map(|a| match a {
            Action::CreateVolume { pool, member, .. } => Some((pool.clone(), member.clone())),
            _ => None,
        })
        .collect();
    // One volume for the whole cluster, created without a target.
    assert_eq!(volumes, [("remote".to_string(), String::new())]);
    for a in plan.actions() {
        if let Action::Create(p) = a {
            let root = p.devices.get("root").map(|d| d["pool"].as_str());
            match p.service.as_str() {
                "db" => {
                    assert_eq!(root, Some("remote"));
                    assert_eq!(p.devices["mount0"]["pool"], "remote");
                }
                _ => assert_eq!(
                    root, None,
                    "stateless services keep the profile's root disk"
                ),
            }
        }
    }
}

#[test]
fn only_a_cephfs_pool_takes_the_volumes_but_not_root_disks() {
    let choice = storage::choose(
        &load(WITH_VOLUME),
        &facts(&[("local", "dir"), ("files", "cephfs")]),
    )
    .unwrap();
    assert_eq!(
        choice,
        storage::StorageChoice {
            volume_pool: "files".into(),
            shared: true,
            root_pool: None,
            root_for_all: false,
        }
    );
}

#[test]
fn a_shared_default_pool_needs_no_root_device() {
    let choice = storage::choose(
        &load(WITH_VOLUME),
        &facts(&[("local", "lvmcluster"), ("other", "ceph")]),
    )
    .unwrap();
    assert_eq!(choice.volume_pool, "local");
    assert!(choice.shared);
    assert_eq!(choice.root_device(true), None);
}

#[test]
fn x_incus_pool_overrides_the_shared_pool_for_everything() {
    let text = format!("{WITH_VOLUME}x-incus: {{pool: fast}}\n");
    let f = facts(&[("local", "dir"), ("fast", "zfs"), ("remote", "ceph")]);
    let plan = plan_up(&load(&text), &f, &three(), &opts(), &DiffOptions::default()).unwrap();
    for a in plan.actions() {
        match a {
            Action::Create(p) => assert_eq!(p.devices["root"]["pool"], "fast", "{}", p.name),
            Action::CreateVolume { pool, .. } => assert_eq!(pool, "fast"),
            _ => {}
        }
    }
    // A local pool chosen by hand still warns.
    assert_eq!(warnings_about(&plan, "db").len(), 1, "{:?}", plan.warnings);

    let text = format!("{WITH_VOLUME}x-incus: {{pool: nope}}\n");
    let err = plan_up(&load(&text), &f, &three(), &opts(), &DiffOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "x-incus.pool: storage pool \"nope\" does not exist (pools: fast, local, remote); create it or name another"
    );
}
