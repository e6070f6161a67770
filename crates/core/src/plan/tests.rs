//! Planner tests: compose text in, actions out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, Project, load_with};

use super::*;
use crate::keys::{
    CREATING_NETWORK_PREFIX, LABEL_HASH, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE, LABEL_SLOT,
};
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

fn facts() -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        digest_key: None,
        oci: false,
        image_aliases: ["testapp/v1", "testapp/v2", "busybox"]
            .map(String::from)
            .into(),
        image_fingerprints: vec!["acaa58b890cb0123456789".into()],
        remotes: ["images".to_string()].into(),
        oci_remotes: BTreeMap::new(),
        oci_images: BTreeMap::new(),
        image_targets: BTreeMap::from([
            ("testapp/v1".into(), "a1".repeat(32)),
            ("testapp/v2".into(), "a2".repeat(32)),
            ("busybox".into(), "bb".repeat(32)),
        ]),
        storage_pool: "data".into(),
        pools: BTreeMap::from([("data".into(), "dir".into())]),
        network: Default::default(),
    }
}

fn opts() -> PlanOptions {
    PlanOptions {
        version: "0.1.0".into(),
        ..Default::default()
    }
}

pub(super) fn cluster() -> Observed {
    Observed {
        project_exists: true,
        members: vec![
            Member::new("node1"),
            Member::new("node2"),
            Member::new("node3"),
        ],
        clustered: true,
        ..Default::default()
    }
}

const APP: &str = r#"
name: shop
services:
  web:
    image: testapp/v1
    environment: {MODE: prod}
    ports: ["8080:80"]
    depends_on: [db]
    deploy: {replicas: 3}
  db:
    image: busybox
    volumes: [data:/var/lib/db]
volumes:
  data: {}
"#;

/// What Incus would hold after executing `plan` on `obs`.
pub(super) fn apply(plan: &Plan, obs: &Observed) -> Observed {
    let mut out = obs.clone();
    out.project_exists = true;
    for a in plan.actions() {
        match a {
            Action::CreateNetwork { name, config, .. } => out.networks.push(ObservedNetwork {
                name: name.clone(),
                managed: true,
                config: config.clone(),
                status: "Created".into(),
            }),
            Action::CreateVolume {
                pool,
                name,
                member,
                config,
            } => out.volumes.push(ObservedVolume {
                pool: pool.clone(),
                name: name.clone(),
                location: member.clone(),
                config: config.clone(),
            }),
            Action::Create(p) | Action::Recreate(p) => {
                out.instances
                    .retain(|i| i.name != p.name && Some(&i.name) != p.old_name.as_ref());
                let mut config = p.config.clone();
                // Incus records the image it made the instance from.
                if let Some(f) = &p.image_fingerprint {
                    config.insert("volatile.base_image".into(), f.clone());
                }
                out.instances.push(ObservedInstance {
                    name: p.name.clone(),
                    location: p.member.clone(),
                    running: p.start,
                    config,
                });
            }
            Action::Remove { name, .. } => out.instances.retain(|i| &i.name != name),
            Action::UpdateInPlace { name, set, .. } => {
                for i in out.instances.iter_mut().filter(|i| &i.name == name) {
                    for (k, v) in set {
                        if v.is_empty() {
                            i.config.remove(k);
                        } else {
                            i.config.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Action::Start { name, .. } => {
                for i in &mut out.instances {
                    if &i.name == name {
                        i.running = true;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn up(text: &str, obs: &Observed, d: &DiffOptions) -> Result<Plan, PlanError> {
    plan_up(&load(text), &facts(), obs, &opts(), d)
}

fn creates(plan: &Plan) -> Vec<(String, String)> {
    plan.actions()
        .filter_map(|a| match a {
            Action::Create(p) => Some((p.name.clone(), p.member.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn first_up_creates_network_volume_and_replicas_spread_in_dependency_order() {
    let plan = up(APP, &cluster(), &DiffOptions::default()).unwrap();
    let titles: Vec<&str> = plan.stages.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(
        titles,
        ["networks", "volumes", "services db", "services web"]
    );
    let mut web: Vec<_> = creates(&plan)
        .into_iter()
        .filter(|(n, _)| n.starts_with("web-"))
        .collect();
    web.sort();
    let members: std::collections::BTreeSet<_> = web.iter().map(|(_, m)| m.clone()).collect();
    assert_eq!(
        web.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(members.len(), 3, "one replica per member: {web:?}");
    let Some(Action::Create(p)) = plan.actions().find(|a| a.object() == "web-1") else {
        panic!("no web-1");
    };
    assert_eq!(p.config[LABEL_PROJECT], "shop");
    assert_eq!(p.config[LABEL_SERVICE], "web");
    assert_eq!(p.config[LABEL_SLOT], "1");
    assert_eq!(p.config["environment.MODE"], "prod");
    assert_eq!(p.config[LABEL_HASH].len(), 64);
    assert_eq!(p.devices["eth0"]["type"], "nic");
    assert!(p.devices["eth0"]["network"].starts_with("ic"));
    // The db volume lives where db-1 runs.
    let db_member = creates(&plan)
        .into_iter()
        .find(|(n, _)| n == "db-1")
        .unwrap()
        .1;
    assert!(plan.actions().any(|a| matches!(a, Action::CreateVolume { name, member, .. } if name == "shop_data" && *member == db_member)));
}

#[test]
fn a_missing_project_is_created_sharing_images_and_profiles() {
    let mut obs = cluster();
    obs.project_exists = false;
    let plan = up(APP, &obs, &DiffOptions::default()).unwrap();
    let Some(Action::CreateProject { name, config }) = plan.actions().next() else {
        panic!("first action is not the project");
    };
    assert_eq!(name, "shop");
    assert_eq!(config["features.images"], "false");
    assert_eq!(config["features.profiles"], "false");
}

#[test]
fn a_second_up_without_changes_does_nothing() {
    let obs = cluster();
    let first = up(APP, &obs, &DiffOptions::default()).unwrap();
    let after = apply(&first, &obs);
    let second = up(APP, &after, &DiffOptions::default()).unwrap();
    assert!(second.is_empty(), "{:#?}", second.stages);
    assert_eq!(second.unchanged, ["db-1", "web-1", "web-2", "web-3"]);
}

#[test]
fn changing_one_services_environment_recreates_only_that_service() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let changed = APP.replace("MODE: prod", "MODE: test");
    let plan = up(&changed, &obs, &DiffOptions::default()).unwrap();
    let mut recreated: Vec<String> = plan
        .actions()
        .map(|a| match a {
            Action::Recreate(p) => p.name.clone(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    recreated.sort();
    assert_eq!(recreated, ["web-1", "web-2", "web-3"]);
    let no = up(
        &changed,
        &obs,
        &DiffOptions {
            no_recreate: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(no.is_empty());
}

#[test]
fn an_image_reference_that_names_another_image_now_recreates_only_its_replicas() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    assert!(
        obs.instances
            .iter()
            .all(|i| i.config.contains_key("volatile.base_image")),
        "{obs:?}"
    );
    // The alias web's image names moved to another image (re-imported, pulled again).
    let mut moved = facts();
    moved
        .image_targets
        .insert("testapp/v1".into(), "c3".repeat(32));
    let plan = plan_up(&load(APP), &moved, &obs, &opts(), &DiffOptions::default()).unwrap();
    let mut recreated: Vec<(String, String)> = plan
        .actions()
        .map(|a| match a {
            Action::Recreate(p) => (p.name.clone(), p.reason.clone()),
            other => panic!("unexpected {other}"),
        })
        .collect();
    recreated.sort();
    let names: Vec<&str> = recreated.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2", "web-3"]);
    assert_eq!(
        recreated[0].1,
        "image testapp/v1 changed (a1a1a1a1a1a1 -> c3c3c3c3c3c3)"
    );
    // Every replica is made from the image the reference names now, by fingerprint.
    assert!(plan.actions().all(|a| match a {
        Action::Recreate(p) => p.image_fingerprint.as_deref() == Some("c3".repeat(32).as_str()),
        _ => false,
    }));
    // Recreated, the next plan is empty; --no-recreate keeps the old ones.
    assert!(
        plan_up(
            &load(APP),
            &moved,
            &apply(&plan, &obs),
            &opts(),
            &DiffOptions::default()
        )
        .unwrap()
        .is_empty()
    );
    let no = DiffOptions {
        no_recreate: true,
        ..Default::default()
    };
    assert!(
        plan_up(&load(APP), &moved, &obs, &opts(), &no)
            .unwrap()
            .is_empty()
    );
    // An image the server knows nothing about now (removed from the store) recreates nothing.
    let mut unknown = facts();
    unknown.image_targets.remove("testapp/v1");
    assert!(
        plan_up(&load(APP), &unknown, &obs, &opts(), &DiffOptions::default())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn force_recreate_recreates_unchanged_replicas() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let plan = up(
        APP,
        &obs,
        &DiffOptions {
            force_recreate: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        plan.actions()
            .filter(|a| matches!(a, Action::Recreate(_)))
            .count(),
        4
    );
}

#[test]
fn scaling_down_removes_surplus_replicas_and_scaling_up_adds() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let mut o = opts();
    o.scale.insert("web".into(), 1);
    let plan = plan_up(&load(APP), &facts(), &obs, &o, &DiffOptions::default()).unwrap();
    let mut removed: Vec<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Remove { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    removed.sort();
    assert_eq!(removed, ["web-2", "web-3"]);
    assert_eq!(plan.actions().count(), 2);
    o.scale.insert("web".into(), 5);
    // A fixed host port allows one replica per member: two stay pending, with the reason.
    let plan = plan_up(&load(APP), &facts(), &obs, &o, &DiffOptions::default()).unwrap();
    assert!(plan.is_empty());
    let pending: Vec<&str> = plan.pending.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pending, ["web-4", "web-5"]);
    assert_eq!(
        plan.pending[0].reason.to_string(),
        "node1: host port 8080 already used by another replica\n\
         node2: host port 8080 already used by another replica\n\
         node3: host port 8080 already used by another replica"
    );
    let no_port = APP.replace(r#"ports: ["8080:80"]"#, "");
    let obs = apply(
        &up(&no_port, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let plan = plan_up(&load(&no_port), &facts(), &obs, &o, &DiffOptions::default()).unwrap();
    let mut new: Vec<String> = creates(&plan).into_iter().map(|(n, _)| n).collect();
    new.sort();
    assert_eq!(new, ["web-4", "web-5"]);
}

#[test]
fn stopped_replicas_are_started_unless_no_start() {
    let mut obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    obs.instances
        .iter_mut()
        .find(|i| i.name == "web-2")
        .unwrap()
        .running = false;
    let plan = up(APP, &obs, &DiffOptions::default()).unwrap();
    assert_eq!(
        plan.actions().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["start web-2"]
    );
    assert!(
        up(
            APP,
            &obs,
            &DiffOptions {
                no_start: true,
                ..Default::default()
            }
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn orphans_are_removed_only_with_remove_orphans() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let without_db = r#"
name: shop
services:
  web:
    image: testapp/v1
    environment: {MODE: prod}
    ports: ["8080:80"]
    deploy: {replicas: 3}
"#;
    let plan = up(without_db, &obs, &DiffOptions::default()).unwrap();
    assert!(plan.actions().all(|a| !matches!(a, Action::Remove { .. })));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("orphan instance db-1")),
        "{:?}",
        plan.warnings
    );
    let plan = up(
        without_db,
        &obs,
        &DiffOptions {
            remove_orphans: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        plan.actions()
            .any(|a| matches!(a, Action::Remove { name, .. } if name == "db-1"))
    );
}

#[test]
fn a_hand_made_instance_with_a_desired_name_fails_the_plan_and_names_it() {
    let mut obs = cluster();
    obs.instances.push(ObservedInstance {
        name: "web-1".into(),
        location: "node1".into(),
        running: true,
        config: BTreeMap::new(),
    });
    let err = up(APP, &obs, &DiffOptions::default()).unwrap_err();
    assert!(
        matches!(&err, PlanError::NotOurs { kind: "instance", name, .. } if name == "web-1"),
        "{err}"
    );
    assert!(err.to_string().contains("never touches it"), "{err}");
    // Also with --remove-orphans and --force-recreate: never touched.
    let err = up(
        APP,
        &obs,
        &DiffOptions {
            remove_orphans: true,
            force_recreate: true,
            ..Default::default()
        },
    );
    assert!(err.is_err());
}

#[test]
fn another_compose_projects_instance_is_not_ours() {
    let mut obs = cluster();
    obs.instances.push(ObservedInstance {
        name: "db-1".into(),
        location: "node1".into(),
        running: true,
        config: BTreeMap::from([(LABEL_PROJECT.to_string(), "blog".to_string())]),
    });
    let err = up(APP, &obs, &DiffOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("compose project \"blog\""),
        "{err}"
    );
}

#[test]
fn networks_and_volumes_without_our_labels_are_refused() {
    let d = desired(&load(APP), &facts(), &opts()).unwrap();
    let mut obs = cluster();
    obs.networks.push(ObservedNetwork {
        name: d.networks[0].name.clone(),
        managed: true,
        config: BTreeMap::new(),
        status: "Created".into(),
    });
    assert!(matches!(
        up(APP, &obs, &DiffOptions::default()),
        Err(PlanError::NotOurs {
            kind: "network",
            ..
        })
    ));
    let mut obs = cluster();
    obs.volumes.push(ObservedVolume {
        pool: "data".into(),
        name: "shop_data".into(),
        location: "node2".into(),
        config: BTreeMap::new(),
    });
    assert!(matches!(
        up(APP, &obs, &DiffOptions::default()),
        Err(PlanError::NotOurs { kind: "volume", .. })
    ));
}

#[test]
fn the_hash_is_stable_and_ignores_replica_count_but_not_config() {
    let a = desired(&load(APP), &facts(), &opts()).unwrap();
    let b = desired(&load(APP), &facts(), &opts()).unwrap();
    let hash = |d: &Desired, s: &str| {
        d.services
            .iter()
            .find(|t| t.service == s)
            .unwrap()
            .hash
            .clone()
    };
    assert_eq!(hash(&a, "web"), hash(&b, "web"));
    let scaled = desired(
        &load(&APP.replace("replicas: 3", "replicas: 7")),
        &facts(),
        &opts(),
    )
    .unwrap();
    assert_eq!(hash(&a, "web"), hash(&scaled, "web"));
    let newer = PlanOptions {
        version: "9.9.9".into(),
        ..opts()
    };
    assert_eq!(
        hash(&a, "web"),
        hash(&desired(&load(APP), &facts(), &newer).unwrap(), "web")
    );
    let v2 = desired(
        &load(&APP.replace("testapp/v1", "testapp/v2")),
        &facts(),
        &opts(),
    )
    .unwrap();
    assert_ne!(hash(&a, "web"), hash(&v2, "web"));
    assert_eq!(hash(&a, "db"), hash(&v2, "db"));
}

#[test]
fn unknown_images_fail_naming_service_image_and_version() {
    let err = up(
        &APP.replace("testapp/v1", "nginx:1.25"),
        &cluster(),
        &DiffOptions::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    for part in [
        "\"web\"",
        "\"nginx:1.25\"",
        "6.0.4",
        "instance_oci",
        "incus image import",
    ] {
        assert!(text.contains(part), "{part} missing in: {text}");
    }
    let remote = resolve_image("web", "images:alpine/3.20", &facts()).unwrap();
    assert_eq!(
        remote,
        ImageSource::Remote {
            remote: "images".into(),
            alias: "alpine/3.20".into()
        }
    );
    assert_eq!(
        resolve_image("web", "acaa58b890cb", &facts()).unwrap(),
        ImageSource::Local("acaa58b890cb".into())
    );
}

#[test]
fn service_names_that_collide_after_mapping_are_rejected() {
    let text = "name: p\nservices:\n  my_app: {image: busybox}\n  my.app: {image: busybox}\n";
    let err = desired(&load(text), &facts(), &opts()).unwrap_err();
    assert!(
        matches!(err, PlanError::NameCollision { ref incus, .. } if incus == "my-app"),
        "{err}"
    );
}

#[test]
fn container_name_replaces_the_replica_name() {
    let text = "name: p\nservices:\n  db: {image: busybox, container_name: main_db}\n";
    let plan = up(text, &cluster(), &DiffOptions::default()).unwrap();
    assert_eq!(creates(&plan)[0].0, "main-db");
}

#[test]
fn commands_become_the_init_process_through_a_script() {
    let text = "name: p\nservices:\n  job: {image: busybox, entrypoint: [sh, -c], command: [\"echo 'hi' && sleep 1\"]}\n";
    let d = desired(&load(text), &facts(), &opts()).unwrap();
    let t = &d.services[0];
    assert_eq!(
        t.config["raw.lxc"],
        format!("lxc.init.cmd = /bin/sh {COMMAND_PATH}\nlxc.signal.halt = SIGTERM")
    );
    assert!(
        t.command
            .as_deref()
            .unwrap()
            .contains("exec 'sh' '-c' 'echo '\\''hi'\\'' && sleep 1'"),
        "{:?}",
        t.command
    );
}

#[test]
fn selected_services_bring_their_dependencies() {
    let o = PlanOptions {
        services: vec!["web".into()],
        ..opts()
    };
    let d = desired(&load(APP), &facts(), &o).unwrap();
    assert_eq!(
        d.services
            .iter()
            .map(|t| t.service.as_str())
            .collect::<Vec<_>>(),
        ["db", "web"]
    );
    let o = PlanOptions {
        services: vec!["db".into()],
        ..opts()
    };
    let d = desired(&load(APP), &facts(), &o).unwrap();
    assert_eq!(d.services.len(), 1);
    let o = PlanOptions {
        services: vec!["nope".into()],
        ..opts()
    };
    assert!(matches!(
        desired(&load(APP), &facts(), &o),
        Err(PlanError::UnknownService(_))
    ));
}

#[test]
fn down_removes_ours_dependents_first_and_volumes_only_when_asked() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let mut obs = obs;
    obs.instances.push(ObservedInstance {
        name: "hand-made".into(),
        location: "node1".into(),
        running: true,
        config: BTreeMap::new(),
    });
    let levels = dependency_levels(&load(APP));
    let plan = plan_down(
        "shop",
        "shop",
        &levels,
        &BTreeMap::new(),
        &obs,
        &DownOptions::default(),
    );
    let text: Vec<String> = plan.actions().map(|a| a.object()).collect();
    assert_eq!(
        &text[..3].iter().filter(|t| t.starts_with("web-")).count(),
        &3,
        "{text:?}"
    );
    assert_eq!(text[3], "db-1");
    assert!(!text.contains(&"hand-made".to_string()));
    assert!(
        plan.actions()
            .any(|a| matches!(a, Action::RemoveNetwork { .. }))
    );
    assert!(
        !plan
            .actions()
            .any(|a| matches!(a, Action::RemoveVolume { .. }))
    );
    let plan = plan_down(
        "shop",
        "shop",
        &levels,
        &BTreeMap::new(),
        &obs,
        &DownOptions {
            volumes: true,
            ..Default::default()
        },
    );
    assert!(
        plan.actions()
            .any(|a| matches!(a, Action::RemoveVolume { name, .. } if name == "shop_data"))
    );
    assert!(
        !plan
            .actions()
            .any(|a| matches!(a, Action::RemoveProject { .. })),
        "a hand-made instance keeps the project"
    );
}

#[test]
fn stop_goes_dependents_first_and_start_dependencies_first() {
    let obs = apply(
        &up(APP, &cluster(), &DiffOptions::default()).unwrap(),
        &cluster(),
    );
    let levels = dependency_levels(&load(APP));
    let stop = plan_power(Power::Stop, "shop", "shop", &levels, 5, &obs, &[]);
    let order: Vec<String> = stop.actions().map(|a| a.object()).collect();
    assert_eq!(order.last().map(String::as_str), Some("db-1"), "{order:?}");
    assert_eq!(order.len(), 4);
    let mut stopped = obs.clone();
    for i in &mut stopped.instances {
        i.running = false;
    }
    let start = plan_power(
        Power::Start,
        "shop",
        "shop",
        &levels,
        5,
        &stopped,
        &["db".to_string()],
    );
    assert_eq!(
        start.actions().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["start db-1"]
    );
    assert!(
        plan_power(Power::Start, "shop", "shop", &levels, 5, &obs, &[]).is_empty(),
        "all running"
    );
    let restart = plan_power(Power::Restart, "shop", "shop", &levels, 5, &obs, &[]);
    assert_eq!(restart.actions().count(), 8);
}

#[test]
fn a_network_left_errored_by_a_failed_up_is_finished_with_its_subnet() {
    let first = up(APP, &cluster(), &DiffOptions::default()).unwrap();
    let mut obs = apply(&first, &cluster());
    for n in &mut obs.networks {
        n.status = "Errored".into();
        n.config
            .insert("ipv4.address".into(), "100.100.7.1/24".into());
    }
    let again = up(APP, &obs, &DiffOptions::default()).unwrap();
    let finished: Vec<&Action> = again
        .actions()
        .filter(|a| matches!(a, Action::CreateNetwork { .. }))
        .collect();
    assert_eq!(finished.len(), obs.networks.len(), "{again:?}");
    for a in finished {
        let Action::CreateNetwork { config, .. } = a else {
            unreachable!()
        };
        assert_eq!(config["ipv4.address"], "100.100.7.1/24");
    }
    for n in &mut obs.networks {
        n.status = "Created".into();
    }
    let settled = up(APP, &obs, &DiffOptions::default()).unwrap();
    assert!(
        !settled
            .actions()
            .any(|a| matches!(a, Action::CreateNetwork { .. })),
        "{settled:?}"
    );
}

#[test]
fn a_network_left_pending_by_a_killed_up_is_finished_when_the_project_recorded_it() {
    let first = up(APP, &cluster(), &DiffOptions::default()).unwrap();
    let created = apply(&first, &cluster());
    // Killed during the per-member steps: the networks exist, pending, without any config.
    let mut obs = created.clone();
    for n in &mut obs.networks {
        n.status = "Pending".into();
        n.config.clear();
    }
    // Without the project's record, a labelless network is someone else's.
    let err = up(APP, &obs, &DiffOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("was not made by incus-compose"),
        "{err}"
    );
    obs.project_config
        .insert(LABEL_PROJECT.to_string(), "shop".into());
    for n in &created.networks {
        obs.project_config.insert(
            format!("{CREATING_NETWORK_PREFIX}{}", n.name),
            "shop".into(),
        );
    }
    let again = up(APP, &obs, &DiffOptions::default()).unwrap();
    let finished: Vec<(String, String)> = again
        .actions()
        .filter_map(|a| match a {
            Action::CreateNetwork { name, config, .. } => {
                Some((name.clone(), config["ipv4.address"].clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), obs.networks.len(), "{again:?}");
    // Each gets a subnet of its own, none taken by another network.
    let mut subnets: Vec<&String> = finished.iter().map(|(_, s)| s).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), finished.len(), "{finished:?}");
    // `down` removes them too (they would be orphans once the project is gone).
    let levels = dependency_levels(&load(APP));
    let down = plan_down(
        "shop",
        "shop",
        &levels,
        &BTreeMap::new(),
        &obs,
        &DownOptions::default(),
    );
    let removed = down
        .actions()
        .filter(|a| matches!(a, Action::RemoveNetwork { .. }))
        .count();
    assert_eq!(removed, obs.networks.len(), "{down:?}");
    // A record naming another compose project claims nothing.
    for v in obs.project_config.values_mut() {
        if !v.is_empty() {
            *v = "other".into();
        }
    }
    obs.project_config
        .insert(LABEL_PROJECT.to_string(), "shop".into());
    assert!(up(APP, &obs, &DiffOptions::default()).is_err());
}

#[test]
fn one_off_instances_of_run_are_never_replicas_but_down_removes_them() {
    let obs = cluster();
    let first = up(APP, &obs, &DiffOptions::default()).unwrap();
    let mut after = apply(&first, &obs);
    let web1 = after
        .instances
        .iter()
        .find(|i| i.name == "web-1")
        .cloned()
        .unwrap();
    let mut config = web1.config.clone();
    config.remove(LABEL_SLOT);
    config.insert(LABEL_ONEOFF.into(), "true".into());
    after.instances.push(ObservedInstance {
        name: "web-run-abc123".into(),
        location: "node1".into(),
        running: false,
        config,
    });
    // Not counted, started, moved or removed by up, even with --remove-orphans.
    let second = up(
        APP,
        &after,
        &DiffOptions {
            remove_orphans: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(second.is_empty(), "{:#?}", second.stages);
    assert_eq!(second.unchanged, ["db-1", "web-1", "web-2", "web-3"]);
    // start/stop/restart leave it alone.
    let levels = dependency_levels(&load(APP));
    let start = plan_power(Power::Start, "shop", "shop", &levels, 10, &after, &[]);
    assert!(start.actions().all(|a| a.object() != "web-run-abc123"));
    // down removes it with the replicas.
    let down = plan_down(
        "shop",
        "shop",
        &levels,
        &BTreeMap::new(),
        &after,
        &DownOptions::default(),
    );
    assert!(down.actions().any(|a| a.object() == "web-run-abc123"));
    // A one-off holding a replica's name is a collision, not that replica.
    let mut taken = after.clone();
    taken.instances.retain(|i| i.name != "web-3");
    for i in &mut taken.instances {
        if i.name == "web-run-abc123" {
            i.name = "web-3".into();
        }
    }
    assert!(matches!(
        up(APP, &taken, &DiffOptions::default()),
        Err(PlanError::NameCollision { .. })
    ));
}

/// After `down` (which keeps anonymous volumes) the next `up` puts each slot back on the member
/// that holds its volume, not wherever the spread would: on a local pool the data is there.
#[test]
fn slots_without_replicas_go_back_to_the_member_of_their_anonymous_volume() {
    const ANON: &str = r#"
name: shop
services:
  db:
    image: busybox
    volumes: [/data]
    deploy: {replicas: 3}
"#;
    let spread = creates(&up(ANON, &cluster(), &DiffOptions::default()).unwrap());
    assert_eq!(
        spread,
        [
            ("db-1".to_string(), "node1".to_string()),
            ("db-2".into(), "node2".into()),
            ("db-3".into(), "node3".into())
        ],
        "with no volume, the usual spread"
    );
    let mut obs = cluster();
    for (slot, member) in [("1", "node3"), ("2", "node1"), ("3", "node2")] {
        obs.volumes.push(ObservedVolume {
            pool: "data".into(),
            name: format!("db-{slot}_anon-data"),
            location: member.into(),
            config: BTreeMap::from([
                (crate::keys::LABEL_PROJECT.to_string(), "shop".to_string()),
                (crate::keys::LABEL_SERVICE.to_string(), "db".to_string()),
                (crate::keys::LABEL_SLOT.to_string(), slot.to_string()),
                (
                    crate::keys::LABEL_ANONYMOUS.to_string(),
                    "/data".to_string(),
                ),
            ]),
        });
    }
    let plan = up(ANON, &obs, &DiffOptions::default()).unwrap();
    assert_eq!(
        creates(&plan),
        [
            ("db-1".to_string(), "node3".to_string()),
            ("db-2".into(), "node1".into()),
            ("db-3".into(), "node2".into())
        ]
    );
    // A member that cannot take its slot now: the slot goes elsewhere (a warning-free move).
    obs.members[2].online = false;
    let plan = up(ANON, &obs, &DiffOptions::default()).unwrap();
    let moved = creates(&plan);
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(moved.iter().all(|(_, m)| m != "node3"), "{moved:?}");
    assert!(
        moved.contains(&("db-2".into(), "node1".into())),
        "{moved:?}"
    );
    // Another compose project's volumes change nothing.
    let mut other = obs.clone();
    other.members[2].online = true;
    for v in &mut other.volumes {
        v.config
            .insert(crate::keys::LABEL_PROJECT.into(), "other".into());
    }
    assert_eq!(
        creates(&up(ANON, &other, &DiffOptions::default()).unwrap()),
        spread
    );
}

#[test]
fn an_ipam_subnet_another_network_holds_is_refused_before_anything_is_made() {
    let with_subnet = |subnet: &str| {
        format!(
            "name: shop\nservices:\n  web:\n    image: testapp/v1\nnetworks:\n  default:\n    ipam: {{config: [{{subnet: {subnet}}}]}}\n"
        )
    };
    let other = |address: &str, project: Option<&str>| ObservedNetwork {
        name: "icothers-defau".into(),
        managed: true,
        config: project
            .map(|p| (LABEL_PROJECT.to_string(), p.to_string()))
            .into_iter()
            .chain([("ipv4.address".to_string(), address.to_string())])
            .collect(),
        status: "Created".into(),
    };
    // The same /22 (what two copies of a benchmark's file did), a /24 inside it, one around.
    for (ours, theirs) in [
        ("100.110.0.0/22", "100.110.0.1/22"),
        ("100.110.2.0/24", "100.110.0.1/22"),
        ("10.0.0.0/8", "10.20.30.1/24"),
    ] {
        let mut obs = cluster();
        obs.networks.push(other(theirs, Some("bench")));
        let err = up(&with_subnet(ours), &obs, &DiffOptions::default()).unwrap_err();
        let PlanError::SubnetTaken { .. } = &err else {
            panic!("{ours} against {theirs}: {err:?}");
        };
        let text = err.to_string();
        assert!(
            text.contains(&format!("ipam subnet {}", ours.replace(".0/", ".1/")))
                && text.contains("icothers-defau")
                && text.contains(theirs)
                && text.contains("of compose project bench")
                && text.contains("networks.default.ipam.config"),
            "{text}"
        );
    }
    // Next to it, or another network's `none`: planned.
    let mut obs = cluster();
    obs.networks.push(other("100.110.4.1/22", None));
    obs.networks.push(ObservedNetwork {
        name: "plain".into(),
        ..other("none", None)
    });
    let plan = up(
        &with_subnet("100.110.0.0/22"),
        &obs,
        &DiffOptions::default(),
    )
    .unwrap();
    assert!(
        plan.actions()
            .any(|a| matches!(a, Action::CreateNetwork { config, .. } if config["ipv4.address"] == "100.110.0.1/22")),
        "{plan:?}"
    );
}
