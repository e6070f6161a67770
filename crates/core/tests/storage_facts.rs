//! A run may skip reading the storage facts (`plan::storage::needs_facts`): for every compose
//! file of the corpus (`../shared/corpus`) that does not need them, the desired state is the
//! same whatever the pools are, and a file that mounts a volume does need them.

use ic_compose::corpus::dir as corpus;
use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::{LoadOptions, load};
use ic_core::plan::{PlanOptions, ServerFacts, desired, storage};

fn facts(default: &str, pools: &[(&str, &str)]) -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["busybox".to_string()].into(),
        storage_pool: default.into(),
        pools: pools
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect(),
        ..ServerFacts::default()
    }
}

#[test]
fn without_volumes_the_desired_state_does_not_depend_on_the_pools() {
    let files = ic_compose::corpus::files(&corpus());
    let opts = PlanOptions {
        version: "0.1.0".into(),
        ..PlanOptions::default()
    };
    let (mut without, mut with) = (0, 0);
    for f in &files {
        let mut project = match load(&LoadOptions {
            files: vec![PathBuf::from(f.file_name().expect("file name"))],
            working_dir: f.parent().expect("a directory").to_path_buf(),
            environment: BTreeMap::from([
                ("DOMAIN".to_string(), "example.org".to_string()),
                ("ADMIN_USER".into(), "admin".into()),
                ("HASHED_PASSWORD".into(), "$$apr1$$hash".into()),
            ]),
            interpolate: true,
            ..LoadOptions::default()
        }) {
            Ok(p) => p,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        // The images are not what this is about: one every facts below know.
        for s in project.services.values_mut() {
            s.image = Some("busybox".into());
            s.build = None;
        }
        if storage::needs_facts(&project) {
            with +=
                usize::from(desired(&project, &facts("local", &[("local", "dir")]), &opts).is_ok());
            continue;
        }
        if desired(&project, &facts("", &[]), &opts).is_ok() {
            without += 1;
        }
        // None read, against pools of every kind the choice tells apart.
        let none = desired(&project, &facts("", &[]), &opts);
        for full in [
            facts("local", &[("local", "dir")]),
            facts("local", &[("local", "dir"), ("remote", "ceph")]),
            facts("remote", &[("local", "zfs"), ("remote", "ceph")]),
            facts("local", &[("local", "btrfs"), ("files", "cephfs")]),
        ] {
            let full = desired(&project, &full, &opts);
            match (&none, &full) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.services, b.services, "{}", f.display());
                    assert_eq!(a.networks, b.networks, "{}", f.display());
                    assert_eq!(a.volumes, b.volumes, "{}", f.display());
                    assert_eq!(a.warnings, b.warnings, "{}", f.display());
                }
                // A file this planner refuses (names that collide...) is refused alike.
                (a, b) => assert_eq!(
                    a.as_ref().err(),
                    b.as_ref().err(),
                    "{}: planning differs",
                    f.display()
                ),
            }
        }
    }
    assert!(
        without >= 10 && with >= 10,
        "the corpus has files of both kinds that plan: {without} without volumes, {with} with"
    );
}
