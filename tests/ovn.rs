//! Compose networks on a cluster with OVN (the harness's OVN line: `scripts/test-cluster up --ovn
//! --members 3`, Open vSwitch on its userspace datapath, Geneve between members; see
//! `scripts/lib/ovn.sh`). incus-compose plans an `ovn` network on the uplink for every compose network
//! (`crates/core/src/plan/span.rs`); these tests check what a user gets from it on real Incus 7.0 and OVN:
//! replicas on different members reach each other (by address and by instance name, which OVN's own DNS
//! answers), reach a host outside the cluster through the OVN router (NAT on the uplink) unless the network
//! is `internal`, and one project's instances cannot reach another's.
//!
//! Load the OVN line's environment first: `set -a && . .test-cluster/env-7.0-ovn && set +a`, then
//! `cargo test --test ovn`. Without it (no OVN uplink, or not 3 members) every test fails and says so.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Fixture, block_on, cluster_client, take_turn, wait_until};
use ic_incus::Client;

/// A client for the OVN line; fails unless the server is a cluster with OVN (the OVN line's
/// environment names it).
fn client() -> Client {
    let c = cluster_client();
    assert_eq!(
        std::env::var("INCUS_COMPOSE_TEST_OVN").as_deref(),
        Ok("1"),
        "these tests need the OVN line's environment: `set -a && . .test-cluster/env-7.0-ovn && set +a`"
    );
    c
}

/// `sh -c SCRIPT` in replica `index` of `service`: (exit code, stdout).
fn sh(f: &Fixture, service: &str, index: u32, script: &str) -> (i32, String) {
    let idx = index.to_string();
    let out = f.run(&["exec", "-T", "--index", &idx, service, "sh", "-c", script]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An HTTP server on the harness host's bridge address (outside the cluster: the members' own link),
/// answering `body`; stopped when dropped.
struct HostServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl HostServer {
    fn start(body: &str, port: u16) -> HostServer {
        let host = std::env::var("INCUS_COMPOSE_TEST_NODE1_ADDRESS")
            .expect("INCUS_COMPOSE_TEST_NODE1_ADDRESS")
            .split(':')
            .next()
            .unwrap_or_default()
            .rsplit_once('.')
            .map(|(net, _)| format!("{net}.1"))
            .expect("member address");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("index.html"), body).expect("write page");
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("{host}:{port}"), "-h"])
            .arg(dir.path())
            .spawn()
            .expect("busybox httpd on the host (busybox-static)");
        std::thread::sleep(std::time::Duration::from_millis(300));
        HostServer {
            child,
            _dir: dir,
            url: format!("http://{host}:{port}/"),
        }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `check` for up to `secs` seconds (DHCP leases and OVN flows take a moment after `up`).
fn eventually(secs: u64, check: impl FnMut() -> bool) -> bool {
    wait_until(std::time::Duration::from_secs(secs), check)
}

fn fetch(f: &Fixture, service: &str, index: u32, url: &str) -> Option<String> {
    let (code, out) = sh(
        f,
        service,
        index,
        &format!("timeout 5 wget -O- {url} 2>/dev/null"),
    );
    (code == 0).then(|| out.trim().to_string())
}

#[test]
fn replicas_on_three_members_reach_each_other_over_ovn_by_instance_name() {
    let _turn = take_turn();
    let c = client();
    let p = Fixture::new("mesh").compose(
        "name: {name}\nservices:\n  web:\n    image: testapp/v1\n    networks: [back]\n    deploy: {replicas: 3}\nnetworks:\n  back: {}\n",
    );
    p.ok(&["up", "-d"]);
    let replicas = p.running("web");
    let members: BTreeSet<&str> = replicas.values().map(String::as_str).collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    assert_eq!(members.len(), 3, "one replica per member: {replicas:?}");
    // The network incus-compose made is an OVN network on the uplink.
    let nets = block_on(c.networks()).expect("networks");
    let ovn: Vec<_> = nets
        .iter()
        .filter(|n| {
            n.config.get("user.incus-compose.project") == Some(&p.name)
                && n.config
                    .get("user.incus-compose.network")
                    .map(String::as_str)
                    == Some("back")
        })
        .collect();
    assert_eq!(ovn.len(), 1, "one network for the project: {nets:?}");
    assert_eq!(ovn[0].kind, "ovn", "{:?}", ovn[0]);
    assert_eq!(
        ovn[0].config.get("network").map(String::as_str),
        Some("UPLINK"),
        "{:?}",
        ovn[0]
    );
    // Every replica fetches every other replica's page by its instance name, across members.
    for from in 1..=3 {
        for to in 1..=3 {
            let url = format!("http://web-{to}/");
            assert!(
                eventually(60, || fetch(&p, "web", from, &url).as_deref() == Some("v1")),
                "web-{from} does not reach web-{to} by name over OVN"
            );
        }
    }
}

#[test]
fn replicas_on_ovn_reach_a_host_outside_the_cluster_unless_the_network_is_internal() {
    let _turn = take_turn();
    let _c = client();
    let server = HostServer::start("from-the-host", 18093);
    let p = Fixture::new("egress").compose(
        "name: {name}\nservices:\n  out:\n    image: testapp/v1\n    networks: [open]\n    deploy: {replicas: 3}\n  shut:\n    image: testapp/v1\n    networks: [closed]\n    deploy: {replicas: 3}\nnetworks:\n  open: {}\n  closed: {internal: true}\n",
    );
    p.ok(&["up", "-d"]);
    for i in 1..=3 {
        assert!(
            eventually(60, || fetch(&p, "out", i, &server.url).as_deref()
                == Some("from-the-host")),
            "out-{i} does not reach {} through the OVN router",
            server.url
        );
    }
    // The positive control above passed on the same host and port: an internal network gets no way out.
    for i in 1..=3 {
        // Its own replicas still answer (the container and its network work)...
        assert!(
            eventually(60, || fetch(&p, "shut", i, &format!("http://shut-{i}/"))
                .as_deref()
                == Some("v1")),
            "shut-{i} does not answer on its own network"
        );
        // ...but nothing outside.
        assert_eq!(
            fetch(&p, "shut", i, &server.url),
            None,
            "shut-{i} on an internal network reached {}",
            server.url
        );
    }
}

#[test]
fn one_projects_instances_cannot_reach_anothers_on_ovn() {
    let _turn = take_turn();
    let _c = client();
    let yaml = "name: {name}\nservices:\n  app:\n    image: testapp/v1\n    networks: [net]\n    deploy: {replicas: 2}\nnetworks:\n  net: {}\n";
    let a = Fixture::new("isoa").compose(yaml);
    let b = Fixture::new("isob").compose(yaml);
    a.ok(&["up", "-d"]);
    b.ok(&["up", "-d"]);
    // A replica's own address on eth0, read inside it.
    let addr_of = |p: &Fixture, index: u32| -> String {
        let (code, out) = sh(p, "app", index, "ip -4 -o addr show dev eth0");
        assert_eq!(code, 0, "ip addr in {}/app-{index}", p.name);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("{}/app-{index} has no address: {out}", p.name))
            .to_string()
    };
    assert!(
        eventually(60, || fetch(&b, "app", 1, "http://app-2/").as_deref()
            == Some("v1")),
        "positive control: b's replicas reach each other"
    );
    let b2 = addr_of(&b, 2);
    // Positive control on the path: a's replica reaches its own sibling by address.
    let a2 = addr_of(&a, 2);
    assert!(
        eventually(60, || fetch(&a, "app", 1, &format!("http://{a2}/"))
            .as_deref()
            == Some("v1")),
        "a's replicas do not reach each other by address"
    );
    assert_eq!(
        fetch(&a, "app", 1, &format!("http://{b2}/")),
        None,
        "project {} reached project {}'s instance at {b2}",
        a.name,
        b.name
    );
}
