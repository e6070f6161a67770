//! Planner tests of networks spanning a cluster (see `span.rs`, `addresses.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ic_compose::{LoadOptions, MemFs, Project, load_with};

use super::*;
use crate::keys::{CREATING_NETWORK_PREFIX, LABEL_NETWORK, LABEL_PROJECT, LABEL_REPLACED_BY};
use crate::schedule::Member;

fn load(text: &str) -> Project {
    let o = LoadOptions {
        files: vec![PathBuf::from("/proj/compose.yaml")],
        working_dir: PathBuf::from("/proj"),
        interpolate: true,
        ..LoadOptions::default()
    };
    let fs = MemFs::default().with("/proj/compose.yaml", text);
    load_with(&o, &fs).unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

fn facts() -> ServerFacts {
    ServerFacts {
        version: "6.0.4".into(),
        image_aliases: ["testapp/v1".to_string()].into(),
        storage_pool: "data".into(),
        network: span::NetworkFacts {
            clustered: true,
            member_links: ["node1", "node2", "node3"]
                .iter()
                .map(|m| (m.to_string(), ("eth0".to_string(), 1500)))
                .collect(),
            version: "6.0.4".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn cluster() -> Observed {
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

fn opts(scale: &[(&str, u32)]) -> PlanOptions {
    PlanOptions {
        version: "0.1.0".into(),
        scale: scale.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        ..Default::default()
    }
}

const STACK: &str = r#"
name: shop
services:
  db:
    image: testapp/v1
    networks: [back]
  app:
    image: testapp/v1
    deploy: {replicas: 3}
    networks:
      back: {aliases: [api]}
  web:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [front, back]
networks:
  front: {x-incus: {names: dnsmasq}}
  back: {x-incus: {names: dnsmasq}}
"#;

/// What Incus would hold after `plan`.
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
            Action::UpdateNetwork { name, set } => {
                for n in out.networks.iter_mut().filter(|n| &n.name == name) {
                    n.config.extend(set.clone());
                }
            }
            Action::Create(p) | Action::Recreate(p) => {
                out.instances.retain(|i| i.name != p.name);
                out.instances.push(ObservedInstance {
                    name: p.name.clone(),
                    location: p.member.clone(),
                    running: true,
                    config: p.config.clone(),
                });
            }
            Action::Remove { name, .. } => out.instances.retain(|i| &i.name != name),
            _ => {}
        }
    }
    out
}

fn network_creations(plan: &Plan) -> BTreeMap<String, BTreeMap<String, String>> {
    plan.actions()
        .filter_map(|a| match a {
            Action::CreateNetwork { name, config, .. } => Some((name.clone(), config.clone())),
            _ => None,
        })
        .collect()
}

/// (instance, network bridge) -> NIC address of every created replica.
fn addresses(plan: &Plan) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for a in plan.actions() {
        let (Action::Create(p) | Action::Recreate(p)) = a else {
            continue;
        };
        for d in p.devices.values() {
            if d.get("type").map(String::as_str) == Some("nic") {
                out.insert(
                    (p.name.clone(), d["network"].clone()),
                    d.get("ipv4.address").cloned().unwrap_or_default(),
                );
            }
        }
    }
    out
}

fn records(text: &str, name: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("host-record="))
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(',').collect();
            (parts[0] == name).then(|| parts[2].to_string())
        })
        .collect()
}

#[test]
fn each_network_spans_the_members_through_its_own_vxlan_tunnel() {
    let plan = plan_up(
        &load(STACK),
        &facts(),
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let nets = network_creations(&plan);
    assert_eq!(nets.len(), 2);
    let mut vnis = BTreeSet::new();
    for (name, c) in &nets {
        assert!(
            name.len() <= 13,
            "{name}: room for the `-v` tunnel interface"
        );
        assert_eq!(c["tunnel.v.protocol"], "vxlan");
        assert_eq!(c["tunnel.v.id"], c[crate::keys::LABEL_VNI]);
        assert_eq!(c["tunnel.v.interface"], "eth0");
        assert_eq!(c["bridge.mtu"], "1450");
        assert_eq!(c["security.acls"], "incus-compose-shop");
        assert!(c["raw.dnsmasq"].starts_with("dhcp-ignore=tag:!known\n"));
        vnis.insert(c["tunnel.v.id"].clone());
    }
    assert_eq!(vnis.len(), 2, "one VNI per network");
    assert!(plan.actions().any(|a| matches!(
        a,
        Action::CreateNetwork { kind, .. } if kind == "bridge"
    )));
}

#[test]
fn every_replica_gets_an_address_no_other_replica_has_and_services_resolve_to_all_replicas() {
    let plan = plan_up(
        &load(STACK),
        &facts(),
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let nets = network_creations(&plan);
    let back = naming::span_network_name("shop", "back");
    let addrs = addresses(&plan);
    let on_back: Vec<&String> = addrs
        .iter()
        .filter(|((_, n), _)| n == &back)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(on_back.len(), 7, "db, 3 app, 3 web");
    let unique: BTreeSet<&&String> = on_back.iter().collect();
    assert_eq!(unique.len(), 7, "{on_back:?}");
    let gateway = nets[&back]["ipv4.address"]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(!on_back.iter().any(|a| **a == gateway));
    // Each replica records its address, so a recreation keeps it.
    for a in plan.actions() {
        if let Action::Create(p) = a
            && p.service != "db"
        {
            assert!(
                p.config.contains_key(&span::address_label("back")),
                "{}",
                p.name
            );
        }
    }
    let dns = &nets[&back]["raw.dnsmasq"];
    let app: BTreeSet<String> = ["app-1", "app-2", "app-3"]
        .iter()
        .map(|n| addrs[&(n.to_string(), back.clone())].clone())
        .collect();
    assert_eq!(records(dns, "app"), app);
    assert_eq!(records(dns, "api"), app, "aliases too");
    assert_eq!(records(dns, "app-2").len(), 1);
    assert_eq!(records(dns, "db").len(), 1);
    let front = naming::span_network_name("shop", "front");
    assert!(
        records(&nets[&front]["raw.dnsmasq"], "db").is_empty(),
        "db is not on front"
    );
    assert_eq!(records(&nets[&front]["raw.dnsmasq"], "web").len(), 3);
}

#[test]
fn records_are_written_once_per_up_and_only_when_they_change() {
    let p = load(STACK);
    let first = plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap();
    let obs = apply(&first, &cluster());
    let again = plan_up(&p, &facts(), &obs, &opts(&[]), &Default::default()).unwrap();
    assert!(again.is_empty(), "{:?}", again.stages);

    let scaled = plan_up(
        &p,
        &facts(),
        &obs,
        &opts(&[("app", 5)]),
        &Default::default(),
    )
    .unwrap();
    let updates: Vec<&Action> = scaled
        .actions()
        .filter(|a| matches!(a, Action::UpdateNetwork { .. }))
        .collect();
    assert_eq!(updates.len(), 1, "one update of the back network");
    let Action::UpdateNetwork { set, .. } = updates[0] else {
        unreachable!()
    };
    let five = records(&set["raw.dnsmasq"], "app");
    assert_eq!(five.len(), 5);
    let old = records(
        &obs.networks
            .iter()
            .find(|n| n.name == naming::span_network_name("shop", "back"))
            .unwrap()
            .config["raw.dnsmasq"],
        "app",
    );
    assert!(
        old.is_subset(&five),
        "existing replicas keep their addresses"
    );
    let obs5 = apply(&scaled, &obs);
    let all: Vec<&String> = obs5
        .instances
        .iter()
        .filter_map(|i| i.config.get(&span::address_label("back")))
        .collect();
    let unique: BTreeSet<&&String> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "no address handed out twice");

    let down = plan_up(
        &p,
        &facts(),
        &obs5,
        &opts(&[("app", 2)]),
        &Default::default(),
    )
    .unwrap();
    let Some(Action::UpdateNetwork { set, .. }) = down
        .actions()
        .find(|a| matches!(a, Action::UpdateNetwork { .. }))
    else {
        panic!("scaling down updates the records")
    };
    assert_eq!(records(&set["raw.dnsmasq"], "app").len(), 2);
    let obs2 = apply(&down, &obs5);
    assert!(
        plan_up(
            &p,
            &facts(),
            &obs2,
            &opts(&[("app", 2)]),
            &Default::default()
        )
        .unwrap()
        .is_empty()
    );
}

/// By default a spanning bridge's names come from the member resolvers: its `raw.dnsmasq`
/// only forwards to them, is written once with the network, and no scaling writes it again.
#[test]
fn by_default_a_spanning_bridge_forwards_its_names_and_scaling_writes_no_network() {
    let p = load(&STACK.replace("{x-incus: {names: dnsmasq}}", "{}"));
    let first = plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap();
    let nets = network_creations(&first);
    for key in ["front", "back"] {
        let raw = &nets[&naming::span_network_name("shop", key)]["raw.dnsmasq"];
        let port = dns::resolver_port(key);
        let address = dns::resolver_address("shop");
        assert!(
            raw.contains(&format!("server=//{address}#{port}")),
            "{key}: {raw}"
        );
        assert!(!raw.contains("host-record"), "{key}: {raw}");
    }
    let obs = apply(&first, &cluster());
    for n in [5, 1] {
        let scaled = plan_up(
            &p,
            &facts(),
            &obs,
            &opts(&[("app", n)]),
            &Default::default(),
        )
        .unwrap();
        assert!(
            !scaled
                .actions()
                .any(|a| matches!(a, Action::UpdateNetwork { .. })),
            "app scaled to {n}: {:?}",
            scaled.stages
        );
        assert!(!scaled.is_empty());
    }
}

#[test]
fn a_vni_held_by_any_network_is_never_given_again() {
    let mut obs = cluster();
    let name = naming::span_network_name("shop", "back");
    let first = span::allocate_vni(&name, &BTreeSet::new()).unwrap();
    obs.networks.push(ObservedNetwork {
        name: "someone-else".into(),
        managed: true,
        config: BTreeMap::from([("tunnel.x.id".to_string(), first.to_string())]),
        status: "Created".into(),
    });
    let plan = plan_up(
        &load(STACK),
        &facts(),
        &obs,
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let nets = network_creations(&plan);
    assert_ne!(nets[&name]["tunnel.v.id"], first.to_string());
}

#[test]
fn a_single_server_keeps_plain_bridges() {
    let mut f = facts();
    f.network = span::NetworkFacts::default();
    let mut obs = cluster();
    obs.members.truncate(1);
    obs.clustered = false;
    let plan = plan_up(&load(STACK), &f, &obs, &opts(&[]), &Default::default()).unwrap();
    let names: BTreeSet<String> = network_creations(&plan).into_keys().collect();
    let plain: BTreeSet<String> = ["front", "back"]
        .iter()
        .map(|k| naming::network_name("shop", k))
        .collect();
    assert_eq!(names, plain);
    for (_, c) in network_creations(&plan) {
        assert!(!c.keys().any(|k| k.starts_with("tunnel.")));
        // The project's isolation, as on a cluster.
        assert_eq!(c["security.acls"], "incus-compose-shop");
        assert_eq!(c["security.acls.default.ingress.action"], "reject");
    }
    assert!(addresses(&plan).values().all(String::is_empty));
}

#[test]
fn internal_networks_have_no_outbound_route_and_external_ones_are_used_as_they_are() {
    let text = r#"
name: shop
services:
  db:
    image: testapp/v1
    networks: [back, lan]
networks:
  back: {internal: true}
  lan: {external: true, name: mylan}
"#;
    let mut obs = cluster();
    obs.networks.push(ObservedNetwork {
        name: "mylan".into(),
        managed: true,
        status: "Created".into(),
        ..Default::default()
    });
    let plan = plan_up(&load(text), &facts(), &obs, &opts(&[]), &Default::default()).unwrap();
    let nets = network_creations(&plan);
    assert_eq!(nets.len(), 1);
    let back = &nets[&naming::span_network_name("shop", "back")];
    assert!(
        back["raw.dnsmasq"].contains("\ndhcp-option=3\n"),
        "internal: DHCP gives no router"
    );
    assert!(
        !back.contains_key("ipv4.routing"),
        "bridged traffic must pass"
    );
    let a = addresses(&plan);
    assert_eq!(
        a[&("db-1".to_string(), "mylan".to_string())],
        "",
        "external: untouched"
    );
}

#[test]
fn an_ovn_network_masquerades_through_the_uplink_and_an_internal_one_has_no_uplink() {
    let mut f = facts();
    f.network.ovn_uplink = Some("UPLINK".into());
    let stack = STACK.replace(
        "  front: {x-incus: {names: dnsmasq}}",
        "  front: {internal: true}",
    );
    let plan = plan_up(
        &load(&stack),
        &f,
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let mut seen = BTreeMap::new();
    for a in plan.actions() {
        if let Action::CreateNetwork { config, .. } = a {
            seen.insert(
                config[LABEL_NETWORK].clone(),
                (
                    config["network"].clone(),
                    config.get("ipv4.nat").cloned().unwrap_or_default(),
                ),
            );
        }
    }
    assert_eq!(seen["back"], ("UPLINK".to_string(), "true".to_string()));
    assert_eq!(seen["front"], ("none".to_string(), "false".to_string()));
    // OVN answers AAAA for the internal network's instances itself (it has no name server).
    let front = plan
        .actions()
        .find_map(|a| match a {
            Action::CreateNetwork { config, .. } if config[LABEL_NETWORK] == "front" => {
                Some(config.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(front["ipv6.address"], "auto");
}

#[test]
fn ovn_is_planned_when_the_cluster_has_an_uplink() {
    let mut f = facts();
    f.network.ovn_uplink = Some("UPLINK".into());
    let plan = plan_up(
        &load(STACK),
        &f,
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    for a in plan.actions() {
        if let Action::CreateNetwork { kind, config, .. } = a {
            assert_eq!(kind, "ovn");
            assert_eq!(config["network"], "UPLINK");
            assert!(
                !config
                    .keys()
                    .any(|k| k.starts_with("tunnel.") || k == "raw.dnsmasq")
            );
        }
    }
    assert!(plan.warnings.iter().any(|w| w.contains("OVN")));
    let forced = STACK.replace(
        "  back: {x-incus: {names: dnsmasq}}",
        "  back: {x-incus: {network: span, names: dnsmasq}}",
    );
    let plan = plan_up(
        &load(&forced),
        &f,
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let kinds: BTreeSet<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::CreateNetwork { kind, config, .. } => {
                Some(format!("{kind}:{}", config.contains_key("tunnel.v.id")))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["bridge:true".into(), "ovn:false".into()])
    );
}

#[test]
fn explicit_ipv4_addresses_are_kept_and_never_given_to_another_replica() {
    let text = r#"
name: shop
services:
  db:
    image: testapp/v1
    networks:
      back: {ipv4_address: 172.28.0.2}
  app:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [back]
networks:
  back:
    ipam: {config: [{subnet: 172.28.0.0/24}]}
"#;
    let plan = plan_up(
        &load(text),
        &facts(),
        &cluster(),
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let a = addresses(&plan);
    let back = naming::span_network_name("shop", "back");
    assert_eq!(a[&("db-1".to_string(), back.clone())], "172.28.0.2");
    let apps: BTreeSet<Ipv4Addr> = (1..=3)
        .map(|i| a[&(format!("app-{i}"), back.clone())].parse().unwrap())
        .collect();
    assert_eq!(apps.len(), 3);
    assert!(!apps.contains(&Ipv4Addr::new(172, 28, 0, 2)));
    assert!(!apps.contains(&Ipv4Addr::new(172, 28, 0, 1)), "gateway");
}

#[test]
fn a_member_that_joined_later_gets_its_tunnel_interface_before_the_records_change() {
    let mut f = facts();
    f.network.member_specific_tunnels = true;
    f.network.version = "7.0.2".into();
    let p = load(STACK);
    let first = plan_up(&p, &f, &cluster(), &opts(&[]), &Default::default()).unwrap();
    for a in first.actions() {
        if let Action::CreateNetwork {
            config,
            member_config,
            ..
        } = a
        {
            assert!(
                !config.contains_key("tunnel.v.interface"),
                "member-specific only"
            );
            assert_eq!(member_config.len(), 3);
        }
    }
    let obs = apply(&first, &cluster());
    // node4 joins: Incus made the networks there, without a tunnel interface.
    let mut obs4 = obs.clone();
    obs4.members.push(Member::new("node4"));
    f.network
        .member_links
        .insert("node4".into(), ("eth0".into(), 1500));
    let back = naming::span_network_name("shop", "back");
    f.network
        .tunnel_unset
        .insert(back.clone(), BTreeSet::from(["node4".to_string()]));
    f.network
        .unavailable
        .insert(back.clone(), BTreeSet::from(["node4".to_string()]));
    let plan = plan_up(&p, &f, &obs4, &opts(&[]), &Default::default()).unwrap();
    let titles: Vec<&str> = plan.stages.iter().map(|s| s.title.as_str()).collect();
    assert_eq!(titles[0], "network members", "{titles:?}");
    assert_eq!(
        plan.stages[0].actions,
        vec![Action::UpdateNetworkMember {
            name: back.clone(),
            member: "node4".into(),
            set: BTreeMap::from([("tunnel.v.interface".to_string(), "eth0".to_string())]),
        }]
    );
    let w = plan
        .warnings
        .iter()
        .find(|w| w.contains("unavailable on node4"))
        .expect("a warning names the member");
    assert!(
        w.contains("7.0.2") && w.contains("restart incusd on node4"),
        "{w}"
    );
}

#[test]
fn an_up_of_some_services_keeps_the_records_of_the_others() {
    let p = load(STACK);
    let first = plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap();
    let obs = apply(&first, &cluster());
    let mut only_db = opts(&[]);
    only_db.services = vec!["db".into()];
    let plan = plan_up(&p, &facts(), &obs, &only_db, &Default::default()).unwrap();
    assert!(plan.is_empty(), "{:?}", plan.stages);
    // Scaling app alone: web's and db's records stay, app gets a fourth.
    let mut app4 = opts(&[("app", 4)]);
    app4.services = vec!["app".into()];
    let plan = plan_up(&p, &facts(), &obs, &app4, &Default::default()).unwrap();
    let Some(Action::UpdateNetwork { set, .. }) = plan
        .actions()
        .find(|a| matches!(a, Action::UpdateNetwork { .. }))
    else {
        panic!("app's records change")
    };
    let text = &set["raw.dnsmasq"];
    assert_eq!(records(text, "app").len(), 4);
    assert_eq!(records(text, "web").len(), 3);
    assert_eq!(records(text, "db").len(), 1);
}

#[test]
fn a_creation_left_pending_on_the_members_is_finished_with_a_subnet_and_a_vni() {
    let mut obs = cluster();
    let back = naming::span_network_name("shop", "back");
    // What Incus shows of a network whose global step never ran: no config, no labels.
    obs.networks.push(ObservedNetwork {
        name: back.clone(),
        managed: true,
        config: BTreeMap::new(),
        status: "Pending".into(),
    });
    // The project recorded that it was creating it (see `Observed::claims_network`).
    obs.project_config
        .insert(LABEL_PROJECT.into(), "shop".into());
    obs.project_config
        .insert(format!("{CREATING_NETWORK_PREFIX}{back}"), "shop".into());
    let plan = plan_up(
        &load(STACK),
        &facts(),
        &obs,
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let nets = network_creations(&plan);
    let c = &nets[&back];
    assert!(c.contains_key("ipv4.address"));
    assert_eq!(c["tunnel.v.id"], c[crate::keys::LABEL_VNI]);
    assert_eq!(c[LABEL_PROJECT], "shop");
    // A pending network the project did not record creating is not ours.
    obs.project_config.clear();
    assert!(matches!(
        plan_up(
            &load(STACK),
            &facts(),
            &obs,
            &opts(&[]),
            &Default::default()
        ),
        Err(PlanError::NotOurs { .. })
    ));
}

/// A start-first update on a spanning bridge writes no records at its start (a write restarts
/// the tunnels on every member): the old replicas keep their records while the new ones start.
/// Once the old ones are marked replaced, one write names the new replicas only.
#[test]
fn a_start_first_update_writes_records_once_after_the_new_replicas_run() {
    let v1 = "name: shop\nservices:\n  app:\n    image: testapp/v1\n    deploy: {replicas: 2, update_config: {order: start-first}}\n    networks: [back]\nnetworks:\n  back: {x-incus: {names: dnsmasq}}\n";
    let v2 = v1.replace("testapp/v1", "testapp/v2");
    let mut f = facts();
    f.image_aliases.insert("testapp/v2".into());
    let first = plan_up(&load(v1), &f, &cluster(), &opts(&[]), &Default::default()).unwrap();
    let obs = apply(&first, &cluster());
    let net = naming::span_network_name("shop", "back");
    let dnsmasq = |o: &Observed| {
        o.networks.iter().find(|n| n.name == net).unwrap().config["raw.dnsmasq"].clone()
    };
    let before = records(&dnsmasq(&obs), "app");

    let update = plan_up(&load(&v2), &f, &obs, &opts(&[]), &Default::default()).unwrap();
    assert!(
        !update
            .actions()
            .any(|a| matches!(a, Action::UpdateNetwork { .. })),
        "no record write at the start: {:?}",
        update.stages
    );
    let new: Vec<String> = update
        .actions()
        .filter_map(|a| match a {
            Action::Recreate(p) => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(new, ["app-1-b", "app-2-b"]);

    // The new replicas run beside the old ones, which the engine marks replaced.
    let mut during = apply(&update, &obs);
    for (old, new) in [("app-1", "app-1-b"), ("app-2", "app-2-b")] {
        let i = during.instances.iter_mut().find(|i| i.name == old).unwrap();
        i.config.insert(LABEL_REPLACED_BY.into(), new.into());
    }
    let after = plan_up(&load(&v2), &f, &during, &opts(&[]), &Default::default()).unwrap();
    let writes: Vec<&BTreeMap<String, String>> = after
        .actions()
        .filter_map(|a| match a {
            Action::UpdateNetwork { set, .. } => Some(set),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "{:?}", after.stages);
    let now = records(&writes[0]["raw.dnsmasq"], "app");
    assert_eq!(now.len(), 2, "{}", writes[0]["raw.dnsmasq"]);
    assert!(
        now.is_disjoint(&before),
        "only the new replicas: {now:?} {before:?}"
    );
    assert!(writes[0]["raw.dnsmasq"].contains("host-record=app-1-b,"));
    assert!(!writes[0]["raw.dnsmasq"].contains("host-record=app-1,"));
    // The marked old replicas are the ones removed (each slot keeps its new replica).
    let removed: BTreeSet<String> = after
        .actions()
        .filter_map(|a| match a {
            Action::Remove { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["app-1", "app-2"].map(String::from).into());
    // Then nothing more to do: the replicas under the slots' other names keep their records.
    let settled = apply(&after, &during);
    let again = plan_up(&load(&v2), &f, &settled, &opts(&[]), &Default::default()).unwrap();
    assert!(again.is_empty(), "{:?}", again.stages);
}

/// A replica stranded on an offline member is replaced under the slot's other name: the
/// replacement gets its own address on the spanning bridge and the records name it.
#[test]
fn a_replacement_for_a_replica_on_an_offline_member_gets_an_address_and_records() {
    let text = "name: shop\nservices:\n  app:\n    image: testapp/v1\n    deploy: {replicas: 3}\n    networks: [back]\nnetworks:\n  back: {x-incus: {names: dnsmasq}}\n";
    let p = load(text);
    let first = plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap();
    let mut obs = apply(&first, &cluster());
    let on3 = obs
        .instances
        .iter()
        .find(|i| i.location == "node3")
        .map(|i| i.name.clone())
        .unwrap();
    for m in &mut obs.members {
        if m.name == "node3" {
            m.online = false;
        }
    }
    let plan = plan_up(&p, &facts(), &obs, &opts(&[]), &Default::default()).unwrap();
    let replacement = plan
        .actions()
        .find_map(|a| match a {
            Action::Create(p) => Some(p.clone()),
            _ => None,
        })
        .expect("a replacement");
    assert_eq!(replacement.name, format!("{on3}-b"));
    let net = naming::span_network_name("shop", "back");
    let address = addresses(&plan)
        .get(&(replacement.name.clone(), net.clone()))
        .cloned()
        .unwrap_or_default();
    assert!(!address.is_empty(), "the replacement has no address");
    let Some(Action::UpdateNetwork { set, .. }) = plan
        .actions()
        .find(|a| matches!(a, Action::UpdateNetwork { .. }))
    else {
        panic!("the records name the replacement: {:?}", plan.stages)
    };
    assert!(
        set["raw.dnsmasq"].contains(&format!("host-record={on3}-b,{on3}-b.incus,{address}")),
        "{}",
        set["raw.dnsmasq"]
    );
    assert!(records(&set["raw.dnsmasq"], "app").contains(&address));
}

#[test]
fn networks_nat_unless_turned_off_and_internal_ones_are_closed_by_an_acl_kept_up_to_date() {
    let text = r#"
name: shop
services:
  db:
    image: testapp/v1
    networks: [back, front, quiet]
networks:
  back: {internal: true}
  front: {}
  quiet: {x-incus: {egress: false}}
"#;
    let obs = cluster();
    let plan = plan_up(&load(text), &facts(), &obs, &opts(&[]), &Default::default()).unwrap();
    let nets = network_creations(&plan);
    let back_name = naming::span_network_name("shop", "back");
    let back = &nets[&back_name];
    let front = &nets[&naming::span_network_name("shop", "front")];
    let quiet = &nets[&naming::span_network_name("shop", "quiet")];
    assert_eq!(front["ipv4.nat"], "true", "egress by default");
    assert_eq!(quiet["ipv4.nat"], "false", "x-incus.egress: false");
    assert_eq!(back["ipv4.nat"], "false");
    assert_eq!(
        back["security.acls"],
        format!("incus-compose-shop,{back_name}-internal")
    );
    assert_eq!(back["security.acls.default.egress.action"], "reject");
    assert_eq!(front["security.acls.default.egress.action"], "allow");
    // The ACL allows the network's own subnet only.
    assert_eq!(
        egress::internal_acl_destination(&format!("{back_name}-internal"), &back_name, back)
            .map(|d| d.ends_with(".0/24")),
        Some(true)
    );

    // A network made before egress existed (no NAT) gets it on the next `up`, once.
    let mut before = apply(&plan, &obs);
    for n in &mut before.networks {
        n.config.insert("ipv4.nat".into(), "false".into());
    }
    let again = plan_up(
        &load(text),
        &facts(),
        &before,
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    let sets: Vec<(String, BTreeMap<String, String>)> = again
        .actions()
        .filter_map(|a| match a {
            Action::UpdateNetwork { name, set } => Some((name.clone(), set.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        sets,
        vec![(
            naming::span_network_name("shop", "front"),
            BTreeMap::from([("ipv4.nat".to_string(), "true".to_string())])
        )]
    );
    let after = apply(&again, &before);
    let third = plan_up(
        &load(text),
        &facts(),
        &after,
        &opts(&[]),
        &Default::default(),
    )
    .unwrap();
    assert!(
        !third
            .actions()
            .any(|a| matches!(a, Action::UpdateNetwork { .. })),
        "a second up writes nothing"
    );
}

#[test]
fn ingress_ports_on_a_spanning_bridge_go_to_the_forwarders_and_host_ports_stay_on_the_replicas() {
    let p = load(
        r#"
name: shop
services:
  web:
    image: testapp/v1
    deploy: {replicas: 2}
    ports: ["8080:80", {target: 81, published: 8081, mode: host}, "127.0.0.1:8082:82"]
"#,
    );
    let d = desired(&p, &facts(), &opts(&[])).unwrap();
    let web = &d.services[0];
    assert_eq!(
        web.config
            .get(ingress::LABEL_INGRESS_PORTS)
            .map(String::as_str),
        Some("tcp:0.0.0.0:8080>80")
    );
    assert!(!web.devices.contains_key("port-tcp-8080"));
    assert_eq!(web.devices["port-tcp-8081"]["listen"], "tcp:0.0.0.0:8081");
    // Only the host-mode port binds a replica's member (placement, start-first moves).
    let ports: Vec<u16> = web.spec.fixed_host_ports.iter().map(|h| h.port).collect();
    assert_eq!(ports, [8081, 8082]);
    assert!(
        web.devices.contains_key("port-tcp-8082"),
        "a host address stays on the replica"
    );
    // A single server: the replicas publish every port themselves.
    let mut single = facts();
    single.network.clustered = false;
    let d = desired(&p, &single, &opts(&[])).unwrap();
    assert!(d.services[0].devices.contains_key("port-tcp-8080"));
    assert!(
        !d.services[0]
            .config
            .contains_key(ingress::LABEL_INGRESS_PORTS)
    );
}

#[test]
fn a_drained_replica_keeps_its_address_until_it_goes_and_its_replacement_gets_another() {
    let text = "name: shop\nservices:\n  app:\n    image: testapp/v1\n    deploy: {replicas: 3}\n    networks: [back]\nnetworks:\n  back: {}\n";
    let p = load(text);
    let first = plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap();
    let obs = apply(&first, &cluster());
    let label = span::address_label("back");
    let held: BTreeMap<String, String> = obs
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.config[&label].clone()))
        .collect();
    let on2 = obs
        .instances
        .iter()
        .find(|i| i.location == "node2")
        .map(|i| i.name.clone())
        .unwrap();
    let drain = DiffOptions {
        drain: ["node2".to_string()].into(),
        ..Default::default()
    };
    let plan = plan_up(&p, &facts(), &obs, &opts(&[]), &drain).unwrap();
    let net = naming::span_network_name("shop", "back");
    let replacement = format!("{on2}-b");
    let address = addresses(&plan)
        .get(&(replacement.clone(), net))
        .cloned()
        .unwrap_or_else(|| panic!("no creation of {replacement}: {:?}", plan.stages));
    // The drained replica runs until its replacement is ready: the replacement never gets
    // its address (nor any other replica's).
    assert!(
        !held.values().any(|a| *a == address),
        "{replacement} got {address}, held by {held:?}"
    );
}

#[test]
fn ps_finds_no_pending_replica_where_the_planner_placed_two_beside_an_ingress_port() {
    // The demo's `node drain node3`: its replica's replacement goes beside another one (an
    // ingress port binds the forwarders, not the replicas), and `ps` must agree that every
    // slot is placed (it listed one as pending, "host port 8080 already used").
    let text = "name: demo\nservices:\n  web:\n    image: testapp/v1\n    ports: [\"8080:80\"]\n    deploy: {replicas: 3}\n";
    let p = load(text);
    let deployed = apply(
        &plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap(),
        &cluster(),
    );
    let mut draining = deployed.clone();
    draining.members[2].draining = true;
    let drain = DiffOptions {
        drain: ["node3".to_string()].into(),
        ..Default::default()
    };
    let plan = plan_up(&p, &facts(), &draining, &opts(&[]), &drain).unwrap();
    assert!(plan.pending.is_empty(), "{:?}", plan.pending);
    let mut after = apply(&plan, &draining);
    after.members[2].draining = false;
    after.members[2].manual = true;
    let web: Vec<&str> = after
        .instances
        .iter()
        .filter(|i| i.label(crate::keys::LABEL_SERVICE) == Some("web"))
        .map(|i| i.location.as_str())
        .collect();
    assert_eq!(web.len(), 3, "{web:?}");
    assert!(!web.contains(&"node3"), "{web:?}");
    let ps = placement::pending_replicas(&p, &after, &facts().network, &opts(&[])).unwrap();
    assert_eq!(
        ps,
        Vec::new(),
        "ps lists a replica the planner placed as pending"
    );

    // With `mode: host` the port binds the replica's member: the third slot has no member.
    let host = load(&text.replace(
        "[\"8080:80\"]",
        "[{target: 80, published: 8080, mode: host}]",
    ));
    let ps = placement::pending_replicas(&host, &after, &facts().network, &opts(&[])).unwrap();
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert!(
        ps[0]
            .reason
            .to_string()
            .contains("host port 8080 already used"),
        "{}",
        ps[0].reason
    );
}

#[test]
fn a_replica_drained_back_under_its_first_name_gets_an_address() {
    // Drained from node2 to node3 (web-1 -> web-1-b), then from node3 back to node2 (web-1-b
    // -> web-1): each replacement has its address on the spanning bridge.
    let text = "name: shop\nservices:\n  web:\n    image: testapp/v1\n    ports: [\"8080:80\"]\n    deploy:\n      replicas: 1\n      placement: {constraints: [\"node.hostname != node1\"]}\n";
    let p = load(text);
    let mut obs = apply(
        &plan_up(&p, &facts(), &cluster(), &opts(&[]), &Default::default()).unwrap(),
        &cluster(),
    );
    let net = naming::span_network_name("shop", "default");
    for (member, other) in [("node2", "node3"), ("node3", "node2"), ("node2", "node3")] {
        let at: Vec<_> = obs
            .instances
            .iter()
            .filter(|i| i.location == member)
            .map(|i| i.name.clone())
            .collect();
        assert_eq!(at.len(), 1, "{member}: {at:?}");
        let mut draining = obs.clone();
        for m in &mut draining.members {
            m.draining = m.name == member;
        }
        let drain = DiffOptions {
            drain: [member.to_string()].into(),
            ..Default::default()
        };
        let plan = plan_up(&p, &facts(), &draining, &opts(&[]), &drain).unwrap();
        let made: Vec<_> = addresses(&plan).into_iter().collect();
        assert_eq!(made.len(), 1, "{made:?}");
        let ((name, network), address) = &made[0];
        assert_eq!(network, &net);
        assert!(!address.is_empty(), "{name} on {other}: no address");
        obs = apply(&plan, &draining);
        for m in &mut obs.members {
            m.draining = false;
        }
    }
}
