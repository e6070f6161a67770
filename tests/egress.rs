//! The way out of compose networks on the real test cluster (`crates/core/src/plan/egress.rs`):
//! every replica reaches a host outside the cluster through its own member (NAT on the member's
//! gateway), `x-incus: {egress: false}` turns that off, and `internal: true` is a rule (an Incus
//! network ACL) that holds even when root in the container adds a default route.
//!
//! "Outside" is a network namespace this test makes, attached to the harness's host bridge
//! (`ictbr0`, or `ic7br0` on the 7.0 line) with an address of the members' own link
//! (100.64.1.2xx / 100.64.2.2xx), running busybox httpd. Nothing leaves 100.64.0.0/10.
//!
//! Start the test cluster and load its environment first (`scripts/test-cluster up && set -a &&
//! . .test-cluster/env && set +a`); without a 3-member cluster every test fails and says so.

mod common;

use std::process::{Command, Output};

use common::{Fixture, SETUP_HINT, cluster_client};

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A plain host on the members' own link, outside the cluster: a network namespace attached
/// to the harness bridge, running busybox httpd (`-f -vv`: it logs each client's address).
/// Removed when dropped.
struct Outside {
    ns: String,
    address: String,
    log: std::path::PathBuf,
    _www: tempfile::TempDir,
    httpd: std::process::Child,
}

impl Outside {
    fn start() -> Outside {
        Outside::start_as(0)
    }

    /// Host `k` (0 or 1) of this process: its own namespace, interface and address.
    fn start_as(k: u32) -> Outside {
        let seven = std::env::var("INCUS_COMPOSE_TEST_INCUS_LINE").is_ok_and(|l| l == "7.0");
        let (bridge, net) = if seven { ("ic7br0", 2) } else { ("ictbr0", 1) };
        let id = std::process::id() % 50;
        let ns = format!("icegress{}-{k}", std::process::id());
        let host_if = format!("iceg{id}h{k}");
        let address = format!("100.64.{net}.{}", 200 - 50 * k + id);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run("ip", &["netns", "add", &ns]);
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        run("ip", &["link", "set", &host_if, "master", bridge, "up"]);
        let cidr = format!("{address}/24");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", "eth0", "up"],
            vec!["addr", "add", &cidr, "dev", "eth0"],
        ] {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend(args);
            run("ip", &a);
        }
        let www = tempfile::tempdir().expect("temp dir");
        std::fs::write(www.path().join("index.html"), "outside").expect("write page");
        let log = www.path().join("httpd.log");
        let httpd = Command::new("ip")
            .args([
                "netns", "exec", &ns, "busybox", "httpd", "-f", "-vv", "-p", "80", "-h",
            ])
            .arg(www.path())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start busybox httpd");
        std::thread::sleep(std::time::Duration::from_millis(300));
        Outside {
            ns,
            address,
            log,
            _www: www,
            httpd,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// What httpd logged (client addresses).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.httpd.kill();
        let _ = self.httpd.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The cluster address (without port) of member `member`, from the harness environment.
fn member_address(member: &str) -> String {
    let var = format!("INCUS_COMPOSE_TEST_{}_ADDRESS", member.to_uppercase());
    let a = std::env::var(&var).unwrap_or_else(|_| panic!("{var} unset: {SETUP_HINT}"));
    a.split(':').next().unwrap_or("").to_string()
}

#[test]
fn every_replica_reaches_a_host_outside_through_its_own_member_and_internal_or_egress_false_ones_do_not()
 {
    let c = cluster_client();
    let out = Outside::start();
    let f = Fixture::with_client(c, "out");
    f.write(
        r#"
name: {name}
services:
  a:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [na]
  c:
    image: testapp/v1
    deploy: {replicas: 3}
    networks: [ni]
  q:
    image: testapp/v1
    networks: [nq]
networks:
  na: {}
  ni: {internal: true}
  nq: {x-incus: {egress: false}}
"#,
    );
    f.ok(&["up", "-d"]);
    let inst = f.instances();
    let members: std::collections::BTreeSet<&String> = ["a-1", "a-2", "a-3"]
        .iter()
        .map(|n| &inst[*n].location)
        .collect();
    assert_eq!(members.len(), 3, "one replica of a per member");

    // Every replica, one per member, fetches the page, seen by the outside host as coming
    // from its own member's address (NAT on that member's gateway).
    for i in 1..=3 {
        let before = out.log().len();
        assert_eq!(
            f.fetch("a", i, &out.url()).as_deref(),
            Some("outside"),
            "a-{i} -> {}",
            out.url()
        );
        let member = &inst[&format!("a-{i}")].location;
        let logged = out.log()[before..].to_string();
        assert!(
            logged.contains(&member_address(member)),
            "a-{i} on {member}: the outside host saw {logged:?}, not {member}'s address"
        );
    }

    // The underlay is out of reach: no replica connects to any member's API address (an HTTP
    // request to the HTTPS port would get an answer, 400, were it let through).
    for i in 1..=3 {
        for m in ["node1", "node2", "node3"] {
            let addr = member_address(m);
            let (_, said) = f.sh(
                "a",
                i,
                &format!("timeout 5 wget -q -O- http://{addr}:8443/ 2>&1; true"),
            );
            assert!(
                !said.contains("HTTP"),
                "a-{i} reached {m}'s API at {addr}:8443: {said:?}"
            );
        }
    }

    // internal: a rule, not a missing route: root in the container adds the route back and
    // still gets nowhere, while the replicas reach each other across members.
    let nets = f.networks();
    let ni = nets
        .iter()
        .find(|n| {
            n.config
                .get("user.incus-compose.network")
                .map(String::as_str)
                == Some("ni")
        })
        .expect("network ni");
    assert_eq!(
        ni.config
            .get("security.acls.default.egress.action")
            .map(String::as_str),
        Some("reject")
    );
    let gateway = ni.config["ipv4.address"]
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    for i in 1..=3 {
        for j in 1..=3 {
            assert_eq!(
                f.fetch("c", i, &format!("http://c-{j}/")).as_deref(),
                Some("v1"),
                "c-{i} -> c-{j} (internal, across members)"
            );
        }
        let _ = f.sh(
            "c",
            i,
            &format!("ip route add default via {gateway} 2>/dev/null; true"),
        );
        let (_, routes) = f.sh("c", i, "ip route");
        assert!(
            routes.contains("default"),
            "c-{i}: root could add a route: {routes}"
        );
        assert!(
            !f.reaches("c", i, &out.url()),
            "c-{i} (internal) reached the outside host"
        );
    }
    // egress: false: no NAT, so no answer comes back.
    assert!(
        !f.reaches("q", 1, &out.url()),
        "q-1 (egress: false) reached the outside host"
    );
}

/// `tests/tools/udp-send.rs` built static (std only) into `dir`, to be pushed into containers.
fn udp_send(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("udp-send");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/udp-send.rs");
    let built = Command::new(&rustc)
        .args([
            "--edition",
            "2024",
            "-C",
            "opt-level=s",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "panic=abort",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("run {rustc}: {e}"));
    assert!(
        built.status.success(),
        "building {}: {}",
        src.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A VXLAN datagram (VNI `vni`) carrying a broadcast ARP request from `mac`/`from` for `to`:
/// a host that owns `to` and receives it learns `from` -> `mac` in its ARP table.
fn crafted_vxlan(
    vni: u32,
    mac: [u8; 6],
    from: std::net::Ipv4Addr,
    to: std::net::Ipv4Addr,
) -> String {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&vni.to_be_bytes()[1..]);
    p.push(0);
    // Ethernet: broadcast, from `mac`, ARP.
    p.extend_from_slice(&[0xff; 6]);
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[0x08, 0x06]);
    // ARP request: Ethernet/IPv4, sender mac/from, target ?/to.
    p.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&mac);
    p.extend_from_slice(&from.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&to.octets());
    // Padded to Ethernet's 60 bytes.
    p.resize(8 + 60, 0);
    hex(&p)
}

#[test]
fn a_container_with_root_cannot_inject_frames_into_another_network_by_crafted_vxlan() {
    let c = cluster_client();
    let tools = tempfile::tempdir().expect("temp dir");
    let sender = udp_send(tools.path());
    let outside = Outside::start_as(1);
    let f = Fixture::with_client(c, "vx");
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
networks:
  na: {}
  nb: {}
"#,
    );
    f.ok(&["up", "-d"]);
    let inst = f.instances();
    // The victim: b-1, on its member; nb's VNI.
    let victim = &inst["b-1"];
    let member = victim.location.clone();
    let to: std::net::Ipv4Addr = victim
        .config
        .get("user.incus-compose.ipv4.nb")
        .expect("b-1's address label")
        .parse()
        .expect("an IPv4 address");
    let mut from = to.octets();
    from[3] = 250;
    let from = std::net::Ipv4Addr::from(from);
    let vni: u32 = f
        .networks()
        .iter()
        .find(|n| {
            n.config
                .get("user.incus-compose.network")
                .map(String::as_str)
                == Some("nb")
        })
        .and_then(|n| n.config.get("tunnel.v.id"))
        .expect("nb's tunnel.v.id")
        .parse()
        .expect("a VNI");
    let learned = |mac: &str| {
        let (code, arp) = f.sh("b", 1, "cat /proc/net/arp");
        assert_eq!(code, 0, "cat /proc/net/arp in b-1: {arp}");
        arp.to_lowercase().contains(mac)
    };
    let wait_learned = |mac: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if learned(mac) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        learned(mac)
    };
    let pid = std::process::id().to_be_bytes();

    // Positive control: the same datagram from a host on the members' link reaches b-1 (the
    // frame and the port are right; the underlay itself takes VXLAN from its own link).
    let control_mac = [0x02, 0x1c, pid[0], pid[1], pid[2], pid[3]];
    let control_text = hex(&control_mac);
    let control = crafted_vxlan(vni, control_mac, from, to);
    let sent = run(
        "ip",
        &[
            "netns",
            "exec",
            &outside.ns,
            sender.to_str().expect("path"),
            &format!("{}:8472", member_address(&member)),
            &control,
        ],
    );
    eprintln!("control: {}", String::from_utf8_lossy(&sent.stdout));
    let colon = |h: &str| {
        h.as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(":")
    };
    assert!(
        wait_learned(&colon(&control_text)),
        "positive control: a crafted VXLAN datagram from the members' link to {member}:8472 (VNI {vni}) did not reach b-1"
    );

    // From root in every replica of a, on every member: to b-1's member, to every member, and to
    // its own gateway, on both VXLAN ports. Nothing reaches b-1.
    let attack_mac = [0x02, 0x1d, pid[0], pid[1], pid[2], pid[3]];
    let attack = crafted_vxlan(vni, attack_mac, from, to);
    let gateway = |i: u32| {
        let (_, route) = f.sh("a", i, "ip route show default");
        route
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    for i in 1..=3 {
        let name = format!("a-{i}");
        let pushed = run(
            "incus",
            &[
                "file",
                "push",
                "--project",
                &f.name,
                "--mode",
                "0755",
                sender.to_str().expect("path"),
                &format!("{name}/udp-send"),
            ],
        );
        assert!(pushed.status.success());
        let mut targets: Vec<String> = ["node1", "node2", "node3"]
            .iter()
            .map(|m| member_address(m))
            .collect();
        let gw = gateway(i);
        assert!(!gw.is_empty(), "{name} has no default gateway");
        targets.push(gw);
        for t in &targets {
            for port in ["8472", "4789"] {
                let (code, said) = f.sh("a", i, &format!("/udp-send {t}:{port} {attack}"));
                assert!(
                    code == 0 && (said.contains("sent") || said.contains("error")),
                    "udp-send in {name} did not run (exit {code}): {said:?}"
                );
            }
        }
    }
    assert!(
        !wait_learned(&colon(&hex(&attack_mac))),
        "a crafted VXLAN datagram from a replica of a (network na) reached b-1 (network nb)"
    );
    eprintln!(
        "crafted VXLAN (VNI {vni}): from the members' link it reached b-1 on {member}; from a's replicas (to every member, their gateways, ports 8472 and 4789) it did not"
    );
}
