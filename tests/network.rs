//! Compose networks spanning the real test cluster (VXLAN bridges, see
//! `crates/core/src/plan/span.rs`): every replica reaches every service by name from any
//! member, service names resolve to all replicas, scaling updates the records, networks and
//! projects are isolated, `down` leaves no bridge or tunnel interface on any member.
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test network`. Without a reachable Incus cluster of 3 members every test fails
//! and says so. Every test uses compose projects of its own (`nw-<tag>-<pid>-<n>`) and removes
//! them (`down -v`) even when it fails. Interfaces are read inside the members' network
//! namespaces (`nsenter -t <holder pid> -n ip link`, holder pids in the harness's `run/`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use common::*;
use ic_incus::Client;

impl Fixture {
    /// Whether `nslookup NAME` in a replica says the name does not exist (NXDOMAIN); fails
    /// the test when the lookup got no answer at all (an exec or DNS server failure is no
    /// negative answer).
    fn nxdomain(&self, service: &str, index: u32, name: &str) -> bool {
        for attempt in 0..6 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            let out = self.sh(service, index, &format!("nslookup {name}")).1;
            if out.contains("can't find") {
                return true;
            }
            if out.contains("Name:") {
                return false;
            }
        }
        panic!("nslookup {name} in {service}-{index} got no answer");
    }

    /// The addresses `nslookup NAME` answers in a replica (asked again, a few times, while the
    /// server gives neither answers nor NXDOMAIN).
    fn resolve(&self, service: &str, index: u32, name: &str) -> BTreeSet<String> {
        let mut out = String::new();
        for attempt in 0..6 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            out = self.sh(service, index, &format!("nslookup {name}")).1;
            if out.contains("Name:") || out.contains("can't find") {
                break;
            }
        }
        // The server's own `Address:` line comes before the first `Name:`.
        out.split_once("Name:")
            .map(|(_, answers)| answers)
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.strip_prefix("Address:"))
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// The address incus-compose gave each replica of `service` on compose network `key`.
    fn addresses(&self, service: &str, key: &str) -> BTreeMap<String, String> {
        self.instances()
            .into_values()
            .filter(|i| {
                i.config
                    .get("user.incus-compose.service")
                    .map(String::as_str)
                    == Some(service)
            })
            .filter_map(|i| {
                let a = i
                    .config
                    .get(&format!("user.incus-compose.ipv4.{key}"))?
                    .clone();
                Some((i.name, a))
            })
            .collect()
    }
}

/// The interface names in member `member`'s network namespace.
fn links_on(member: &str) -> BTreeSet<String> {
    let state = std::env::var("INCUS_COMPOSE_TEST_STATE")
        .unwrap_or_else(|_| panic!("INCUS_COMPOSE_TEST_STATE unset: {SETUP_HINT}"));
    let pidfile = PathBuf::from(state)
        .join("run")
        .join(format!("{member}.holder.pid"));
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", pidfile.display()));
    let out = Command::new("nsenter")
        .args(["-t", pid.trim(), "-n", "ip", "-o", "link"])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter into {member}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// DHCP leases of bridge `network` on each member (its dnsmasq's lease file under the
/// member's `INCUS_DIR`): member -> (instance name, address).
fn leases(members: &[String], network: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for m in members {
        let var = format!("INCUS_COMPOSE_TEST_{}_DIR", m.to_uppercase());
        let dir = std::env::var(&var).unwrap_or_else(|_| panic!("{var} unset: {SETUP_HINT}"));
        let file = PathBuf::from(dir)
            .join("networks")
            .join(network)
            .join("dnsmasq.leases");
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // `<expiry> <mac> <address> <name> <client id>`
        let rows = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4).then(|| (f[3].to_string(), f[2].to_string()))
            })
            .collect();
        out.insert(m.clone(), rows);
    }
    out
}

/// Interfaces named after `networks` (bridges and their `-v` tunnels) on any member.
fn leftovers(c: &Client, networks: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in member_names(c) {
        for l in links_on(&m) {
            if networks.iter().any(|n| l == *n || l == format!("{n}-v")) {
                out.push(format!("{m}: {l}"));
            }
        }
    }
    out
}

const STACK: &str = r#"
name: {name}
services:
  db:
    image: testapp/v1
    networks: [back]
  app:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [back]
  web:
    image: testapp/v1
    deploy: {replicas: 3}
    networks:
      back: {priority: 10}
      front: {}
networks:
  front: {}
  back: {}
"#;

#[test]
fn every_replica_reaches_every_service_by_name_from_any_member_and_down_leaves_no_tunnel() {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert!(all.len() >= 3, "expected the 3-member test cluster");
    let f = Fixture::new("stack");
    f.write(STACK);
    f.ok(&["up", "-d"]);

    // Spread over the members, on networks that span them.
    let inst = f.instances();
    for service in ["app", "web"] {
        let on: BTreeSet<&String> = inst
            .values()
            .filter(|i| {
                i.config
                    .get("user.incus-compose.service")
                    .map(String::as_str)
                    == Some(service)
            })
            .map(|i| &i.location)
            .collect();
        assert_eq!(on.len(), 3, "{service} on {on:?}");
    }
    let nets = f.networks();
    assert_eq!(nets.len(), 2);
    let vnis: BTreeSet<&String> = nets
        .iter()
        .map(|n| {
            assert_eq!(
                n.config.get("tunnel.v.protocol").map(String::as_str),
                Some("vxlan")
            );
            assert_eq!(n.config.get("tunnel.v.ttl").map(String::as_str), Some("1"));
            &n.config["user.incus-compose.vni"]
        })
        .collect();
    assert_eq!(vnis.len(), 2, "one VNI per network");
    let names: Vec<String> = nets.iter().map(|n| n.name.clone()).collect();
    for m in &all {
        let links = links_on(m);
        for n in &names {
            assert!(links.contains(n), "{m} has no bridge {n}: {links:?}");
            assert!(
                links.contains(&format!("{n}-v")),
                "{m} has no tunnel {n}-v: {links:?}"
            );
        }
    }

    // Every web replica (one per member) fetches from db and app by service name.
    for i in 1..=3 {
        assert_eq!(
            f.fetch("web", i, "http://db/").as_deref(),
            Some("v1"),
            "web-{i} -> db"
        );
        assert_eq!(
            f.fetch("web", i, "http://app/").as_deref(),
            Some("v1"),
            "web-{i} -> app"
        );
        for j in 1..=3 {
            assert_eq!(
                f.fetch("web", i, &format!("http://app-{j}/")).as_deref(),
                Some("v1"),
                "web-{i} -> app-{j}"
            );
        }
        assert_eq!(
            f.fetch("app", i, "http://db/").as_deref(),
            Some("v1"),
            "app-{i} -> db"
        );
    }
    // `app` resolves to all 3 replica addresses from every member.
    let app: BTreeSet<String> = f.addresses("app", "back").into_values().collect();
    assert_eq!(app.len(), 3, "{app:?}");
    for i in 1..=3 {
        assert_eq!(f.resolve("web", i, "app"), app, "from web-{i}");
    }
    // One lease per instance, from its own member's dnsmasq, with the address incus-compose
    // chose; no address handed out twice.
    let back = nets
        .iter()
        .find(|n| {
            n.config
                .get("user.incus-compose.network")
                .map(String::as_str)
                == Some("back")
        })
        .map(|n| n.name.clone())
        .expect("the back network");
    let inst = f.instances();
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (member, rows) in leases(&all, &back) {
        for (name, addr) in rows {
            let Some(i) = inst.get(&name) else { continue };
            assert_eq!(i.location, member, "{name} leased by {member}'s dnsmasq");
            assert_eq!(
                i.config.get("user.incus-compose.ipv4.back"),
                Some(&addr),
                "{name}"
            );
            assert!(
                seen.insert(name.clone(), (member.clone(), addr)).is_none(),
                "{name} leased twice"
            );
        }
    }
    let addrs: BTreeSet<&String> = seen.values().map(|(_, a)| a).collect();
    assert_eq!(addrs.len(), seen.len(), "an address leased twice: {seen:?}");
    assert_eq!(seen.len(), 7, "db, 3 app and 3 web leased: {seen:?}");

    // A second `up` changes nothing (the records are not written again).
    let again = f.ok(&["up", "-d"]);
    assert!(again.contains("Nothing to change"), "{again}");

    // Scaling app to 5: the new replicas resolve and answer from every member. The names
    // are the member resolvers' (the default): no network is written, nothing restarts.
    let out = f.ok(&["scale", "app=5"]);
    assert_eq!(
        out.matches("network").count(),
        0,
        "no network update: {out}"
    );
    let app5: BTreeSet<String> = f.addresses("app", "back").into_values().collect();
    assert_eq!(app5.len(), 5, "{app5:?}");
    assert!(
        app.is_subset(&app5),
        "existing replicas keep their addresses"
    );
    for i in 1..=3 {
        assert_eq!(f.resolve("web", i, "app"), app5, "from web-{i}");
        for j in 4..=5 {
            assert_eq!(
                f.fetch("web", i, &format!("http://app-{j}/")).as_deref(),
                Some("v1"),
                "web-{i} -> app-{j}"
            );
        }
    }
    // And down to 2: the removed ones are gone from DNS.
    f.ok(&["scale", "app=2"]);
    let app2: BTreeSet<String> = f.addresses("app", "back").into_values().collect();
    assert_eq!(app2.len(), 2);
    for i in 1..=3 {
        assert_eq!(f.resolve("web", i, "app"), app2, "from web-{i}");
    }

    // `down` leaves no bridge, tunnel interface or ACL on any member.
    f.ok(&["down"]);
    assert!(f.networks().is_empty());
    assert_eq!(leftovers(&c, &names), Vec::<String>::new());
    let acl = block_on(c.network_acl(&format!("incus-compose-{}", f.name)));
    assert!(
        acl.is_err_and(|e| e.is_not_found()),
        "the project's ACL is removed"
    );

    // A second cycle starts from nothing stale.
    f.ok(&["up", "-d"]);
    for i in 1..=3 {
        assert_eq!(
            f.fetch("web", i, "http://db/").as_deref(),
            Some("v1"),
            "web-{i} -> db"
        );
    }
    let names2: Vec<String> = f.networks().iter().map(|n| n.name.clone()).collect();
    f.ok(&["down"]);
    assert_eq!(leftovers(&c, &names2), Vec::<String>::new());
}

#[test]
fn networks_are_isolated_from_each_other_and_from_other_projects_and_internal_ones_have_no_way_out()
{
    let _turn = take_turn();
    cluster_client();
    let f = Fixture::new("iso");
    f.write(
        r#"
name: {name}
services:
  a:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [na]
  b:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [nb]
  c:
    image: testapp/v1
    deploy: {replicas: 2}
    networks: [ni]
networks:
  na: {}
  nb: {}
  ni: {internal: true}
"#,
    );
    f.ok(&["up", "-d"]);
    // An internal network: its replicas reach each other across members, but have no route
    // out of it.
    for i in 1..=2 {
        for j in 1..=2 {
            assert_eq!(
                f.fetch("c", i, &format!("http://c-{j}/")).as_deref(),
                Some("v1"),
                "c-{i} -> c-{j}"
            );
        }
        // (The positive control: the route table was read, it has the network's own route.)
        let (code, routes) = f.sh("c", i, "ip route");
        assert!(code == 0 && routes.contains("dev eth0"), "c-{i}: {routes}");
        assert!(!routes.contains("default"), "c-{i}: {routes}");
        let (code, routes) = f.sh("a", i, "ip route");
        assert!(code == 0, "a-{i}: {routes}");
        assert!(routes.contains("default"), "a-{i} (not internal): {routes}");
    }
    let other = Fixture::new("iso2");
    other.write(
        r#"
name: {name}
services:
  a:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [na]
networks:
  na: {}
"#,
    );
    other.ok(&["up", "-d"]);

    let a: Vec<String> = f.addresses("a", "na").into_values().collect();
    let b: Vec<String> = f.addresses("b", "nb").into_values().collect();
    let x: Vec<String> = other.addresses("a", "na").into_values().collect();
    assert_eq!((a.len(), b.len(), x.len()), (3, 3, 3));
    for i in 1..=3 {
        // Its own network: every replica, on every member, by address and by name.
        for addr in &a {
            assert_eq!(
                f.fetch("a", i, &format!("http://{addr}/")).as_deref(),
                Some("v1")
            );
        }
        assert_eq!(f.resolve("a", i, "a").len(), 3);
        // Network B of the same project: not by address, not by name.
        for addr in &b {
            assert!(
                !f.reaches("a", i, &format!("http://{addr}/")),
                "a-{i} reached b at {addr}"
            );
        }
        assert!(f.nxdomain("a", i, "b"), "b resolves on network na");
        // The other project: not either way.
        for addr in &x {
            assert!(
                !f.reaches("a", i, &format!("http://{addr}/")),
                "a-{i} reached the other project at {addr}"
            );
        }
        for addr in &a {
            assert!(
                !other.reaches("a", i, &format!("http://{addr}/")),
                "the other project reached {addr}"
            );
        }
    }
}

#[test]
fn a_member_that_joins_later_gets_the_tunnel_and_its_global_replica_reaches_db_and_is_reached_by_name()
 {
    let _turn = take_turn();
    let c = cluster_client();
    // Declared before the fixture: the fixture's `down` runs first, then the member leaves.
    let extra;
    let f = Fixture::new("join");
    f.write(
        r#"
name: {name}
services:
  db:
    image: testapp/v1
    networks: [back]
  agent:
    image: testapp/v1
    deploy: {mode: global}
    networks: [back]
networks:
  back: {}
"#,
    );
    f.ok(&["up", "-d"]);
    assert_eq!(f.addresses("agent", "back").len(), 3);
    extra = ExtraMember::add(&c);
    let first = f.run(&["up", "-d"]);
    if !first.status.success() {
        // Incus 7.0 (member-specific tunnel interfaces): the joining member could not start the
        // tunnel; `up` set its interface and says to restart that member's daemon. On 6.0 the
        // first up must succeed.
        assert_eq!(
            std::env::var("INCUS_COMPOSE_TEST_INCUS_LINE").as_deref(),
            Ok("7.0"),
            "the first up after the join failed on Incus 6.0"
        );
        let err = String::from_utf8_lossy(&first.stderr);
        assert!(
            err.contains("unavailable on node4") && err.contains("restart incusd on node4"),
            "{err}"
        );
        let k = extra.name.trim_start_matches("node").to_string();
        Killed::kill(&k).revive();
        // The revived member takes a moment before the others forward requests to it again.
        let start = std::time::Instant::now();
        let mut done = false;
        while !done && start.elapsed() < std::time::Duration::from_secs(60) {
            let online = block_on(c.cluster_member(&extra.name)).is_ok_and(|m| m.is_online());
            done = online && f.run(&["up", "-d"]).status.success();
            if !done {
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
        }
        assert!(
            done,
            "up did not succeed within a minute of restarting {}",
            extra.name
        );
    }
    let agents = f.addresses("agent", "back");
    assert_eq!(agents.len(), 4, "{agents:?}");
    let new = format!("agent-{}", extra.name);
    let on = f.instances()[&new].location.clone();
    assert_eq!(on, extra.name);
    // `--index 4`: the 4th global replica in member-name order, the one on node4.
    assert_eq!(
        f.fetch("agent", 4, "http://db/").as_deref(),
        Some("v1"),
        "{new} -> db"
    );
    assert_eq!(
        f.fetch("db", 1, &format!("http://{new}/")).as_deref(),
        Some("v1"),
        "db -> {new}"
    );
    let all: BTreeSet<String> = agents.into_values().collect();
    assert_eq!(f.resolve("db", 1, "agent"), all);
    assert_eq!(f.resolve("agent", 4, "agent"), all);
    drop(f);
    drop(extra);
}
