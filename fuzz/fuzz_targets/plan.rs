//! Arbitrary bytes as a compose file, loaded then planned (`up` on a single server and on a
//! three-member cluster): any file that loads with nothing `up` refuses
//! (`Project::hostile`) plans without a panic, and no planned config value, device property
//! or label carries a control character (`raw.lxc` and `raw.dnsmasq` lines are checked one by
//! one: no line break can add a directive).

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, load_with};
use ic_core::plan::{Action, DiffOptions, Observed, PlanOptions, ServerFacts, plan_up};
use ic_core::schedule::Member;
use libfuzzer_sys::fuzz_target;

fn facts() -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["busybox", "testapp/v1"].map(String::from).into(),
        remotes: ["images".to_string()].into(),
        storage_pool: "data".into(),
        pools: BTreeMap::from([("data".into(), "dir".into())]),
        ..ServerFacts::default()
    }
}

fn check_map(what: &str, map: &BTreeMap<String, String>) {
    for (k, v) in map {
        assert!(!k.contains(char::is_control), "{what}: key {k:?}");
        let lines: Vec<&str> = if k == "raw.lxc" || k == "raw.dnsmasq" {
            v.split('\n').collect()
        } else {
            vec![v.as_str()]
        };
        for line in lines {
            assert!(
                !line.contains(char::is_control),
                "{what}: {k} = {v:?} carries a control character"
            );
            if k == "raw.lxc" && !line.is_empty() {
                assert!(line.starts_with("lxc."), "{what}: raw.lxc line {line:?}");
            }
            if k == "raw.dnsmasq" && !line.is_empty() {
                assert!(
                    ["cname=", "host-record=", "dhcp-ignore=", "dhcp-option="]
                        .iter()
                        .any(|p| line.starts_with(p))
                        && !line.contains([' ', '#', '/']),
                    "{what}: raw.dnsmasq line {line:?}"
                );
            }
        }
    }
}

fn check(action: &Action) {
    match action {
        Action::CreateProject { config, .. }
        | Action::CreateNetwork { config, .. }
        | Action::CreateVolume { config, .. } => check_map("create", config),
        Action::UpdateNetwork { set, .. }
        | Action::UpdateNetworkMember { set, .. }
        | Action::UpdateInPlace { set, .. } => check_map("update", set),
        Action::Create(p) | Action::Recreate(p) => {
            assert!(!p.name.contains(char::is_control), "instance {:?}", p.name);
            check_map(&p.name, &p.config);
            for (d, props) in &p.devices {
                assert!(!d.contains(char::is_control), "device {d:?}");
                check_map(&format!("{} device {d}", p.name), props);
            }
        }
        _ => {}
    }
    if let Action::CreateNetwork { member_config, .. } = action {
        for (m, c) in member_config {
            check_map(m, c);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let fs = MemFs::default()
        .with("/p/compose.yaml", text)
        .with("/p/s.txt", "secret\n")
        .with("/p/.env", "A=1\n");
    let options = LoadOptions {
        files: vec![PathBuf::from("/p/compose.yaml")],
        working_dir: PathBuf::from("/p"),
        environment: BTreeMap::from([("HOME".to_string(), "/home/f".to_string())]),
        interpolate: true,
        ..LoadOptions::default()
    };
    let Ok(project) = load_with(&options, &fs) else { return };
    if !project.hostile.is_empty() {
        return;
    }
    let opts = PlanOptions {
        version: "0.1.0".into(),
        ..PlanOptions::default()
    };
    let single = Observed {
        members: vec![Member::new("node1")],
        ..Observed::default()
    };
    let cluster = Observed {
        members: vec![Member::new("node1"), Member::new("node2"), Member::new("node3")],
        clustered: true,
        ..Observed::default()
    };
    for observed in [single, cluster] {
        if let Ok(plan) = plan_up(&project, &facts(), &observed, &opts, &DiffOptions::default()) {
            plan.actions().for_each(check);
        }
    }
});
