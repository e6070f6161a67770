//! Published ports on every member (Swarm's routing mesh, `ports: mode: ingress`).
//!
//! On a cluster, an `ingress` port of a service on a spanning bridge is not a proxy device of
//! its replicas: the replicas carry it in [`LABEL_INGRESS_PORTS`] instead, and every online
//! member gets one small **forwarder** instance of the project ([`LABEL_INGRESS`]: its
//! member) holding one Incus `proxy` device per port (`nat=false`, so Incus's forkproxy
//! accepts on the member and connects from inside the forwarder). The forwarder has its own
//! address on the spanning bridge (the highest free ones of the subnet; replicas take the
//! lowest), set by LXC (`lxc.net.N.ipv4.address`), so it needs no DHCP client: it reaches
//! every replica of the service over the bridge, on any member, and their replies come back
//! to it on the same layer-2 segment. Each port connects to a running replica on the same
//! member when there is one, else to one on another member (spread by member). `mode: host`
//! ports stay proxy devices of the replicas (they answer where a replica runs).
//!
//! Kernel-level forwarding (Incus network forwards) cannot reach a replica on another member:
//! every member's bridge has the same gateway address, so the replica's reply goes to its
//! own member, which has no record of the translation.
//!
//! Pure: the engine (`engine::ingress`) observes, calls [`forwarders`] and applies the result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ic_compose::Project;
use ic_compose::model::{PortMode, Service};

use super::span::NetworkFacts;
use super::{Devices, Subnet};
use crate::schedule::HostPort;

pub use crate::keys::{LABEL_INGRESS, LABEL_INGRESS_KEY, LABEL_INGRESS_PORTS};

/// Whether an instance's config marks it as a forwarder.
pub fn is_forwarder(config: &BTreeMap<String, String>) -> bool {
    config.contains_key(LABEL_INGRESS)
}

/// The addresses a forwarder holds on Incus network `network` (from its [`LABEL_INGRESS_KEY`]).
pub fn key_addresses(i: &super::ObservedInstance, network: &str) -> Vec<Ipv4Addr> {
    parse_key(i.label(LABEL_INGRESS_KEY).unwrap_or_default())
        .into_iter()
        .filter(|(n, _)| n == network)
        .map(|(_, a)| a)
        .collect()
}

/// `net=ip/prefix,...` (see [`Forwarder::key`]) -> (network, address).
pub fn parse_key(key: &str) -> Vec<(String, Ipv4Addr)> {
    key.split(',')
        .filter_map(|e| e.split_once('='))
        .filter_map(|(n, a)| {
            let ip = a.split('/').next()?.parse().ok()?;
            Some((n.to_string(), ip))
        })
        .collect()
}

/// The forwarder of a member.
pub fn forwarder_name(member: &str) -> String {
    let mut n: String = format!("ic-ingress-{member}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

/// One published port (or range): `listen` as a proxy device takes it
/// (`tcp:0.0.0.0:8080`, `udp:[::]:53-54`), `target` the port (or range) in the replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub listen: String,
    pub target: String,
}

impl Entry {
    fn proto(&self) -> &str {
        self.listen.split(':').next().unwrap_or("tcp")
    }
    fn port(&self) -> &str {
        self.listen.rsplit(':').next().unwrap_or("")
    }
}

/// `listen>target` entries joined by `,`.
pub fn encode(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}>{}", e.listen, e.target))
        .collect::<Vec<_>>()
        .join(",")
}

/// See [`encode`]; malformed entries are left out.
pub fn decode(s: &str) -> Vec<Entry> {
    s.split(',')
        .filter_map(|e| e.split_once('>'))
        .filter(|(l, t)| !l.is_empty() && !t.is_empty())
        .map(|(l, t)| Entry {
            listen: l.to_string(),
            target: t.to_string(),
        })
        .collect()
}

/// Whether port `p` goes through the forwarders (given that its service's do): `mode:
/// ingress` on every address. One bound to a given host address (`127.0.0.1:8080:80`) names
/// an address of one machine, so it stays where the replica runs, as `mode: host`.
fn meshed(p: &ic_compose::model::Port) -> bool {
    p.mode == PortMode::Ingress
        && p.host_ip
            .as_deref()
            .is_none_or(|h| matches!(h, "0.0.0.0" | "::" | "[::]"))
}

/// A replica's ingress ports (its [`LABEL_INGRESS_PORTS`]) as the proxy devices it would have
/// without the forwarders, for what lists published ports (`ps`, `port`).
pub fn as_proxies(config: &BTreeMap<String, String>) -> Devices {
    decode(
        config
            .get(LABEL_INGRESS_PORTS)
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .into_iter()
    .map(|e| {
        (
            format!("port-{}-{}", e.proto(), e.port()),
            BTreeMap::from([
                ("type".to_string(), "proxy".to_string()),
                ("listen".to_string(), e.listen.clone()),
                (
                    "connect".to_string(),
                    format!("{}:127.0.0.1:{}", e.proto(), e.target),
                ),
            ]),
        )
    })
    .collect()
}

/// Takes the proxy devices of `service`'s ingress ports out of `devices` (made by
/// [`super::mapping::ports`]) and returns them as the [`LABEL_INGRESS_PORTS`] value (`None`
/// when it has none).
pub fn take_ingress(service: &Service, devices: &mut Devices) -> Option<String> {
    let mut entries = Vec::new();
    for p in &service.ports {
        let Some(published) = p.published else {
            continue;
        };
        if !meshed(p) {
            continue;
        }
        let name = format!("port-{}-{published}", p.protocol.to_ascii_lowercase());
        let Some(d) = devices.remove(&name) else {
            continue;
        };
        let (Some(listen), Some(connect)) = (d.get("listen"), d.get("connect")) else {
            continue;
        };
        entries.push(Entry {
            listen: listen.clone(),
            target: connect.rsplit(':').next().unwrap_or_default().to_string(),
        });
    }
    (!entries.is_empty()).then(|| encode(&entries))
}

/// Whether `service`'s ingress ports go through the members' forwarders: on a cluster, when it
/// joins a spanning bridge this project makes. The same rule `desired` applies to the NICs it
/// gives a replica, for what sees only the compose file (`ps`'s pending replicas).
pub fn meshed_service(project: &Project, service: &Service, facts: &NetworkFacts) -> bool {
    facts.clustered
        && service.network_mode.as_deref() != Some("none")
        && service.networks.keys().any(|key| {
            project.networks.get(key).is_some_and(|n| {
                !n.external && super::span::choose(key, n, facts) == Ok(super::span::Kind::Span)
            })
        })
}

/// The host ports a replica of `service` binds itself: all published ports, or, when its
/// ingress ports go through the forwarders (`mesh`), its `mode: host` ones only.
pub fn replica_host_ports(service: &Service, mesh: bool) -> Vec<HostPort> {
    let mut out = Vec::new();
    for p in &service.ports {
        if mesh && meshed(p) {
            continue;
        }
        if let Some(r) = p.published {
            for port in r.start..=r.end {
                out.push(HostPort {
                    port,
                    udp: p.protocol.eq_ignore_ascii_case("udp"),
                });
            }
        }
    }
    out
}

/// A replica as the forwarders see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub name: String,
    pub service: String,
    pub member: String,
    pub running: bool,
    /// Its [`LABEL_INGRESS_PORTS`], decoded.
    pub ports: Vec<Entry>,
    /// Its addresses: Incus network -> address.
    pub addresses: BTreeMap<String, Ipv4Addr>,
}

/// A forwarder that exists: member -> (network -> address).
pub type Existing = BTreeMap<String, BTreeMap<String, Ipv4Addr>>;

/// The addresses each member's forwarder sends to now (its proxies' `connect`): member ->
/// addresses.
pub type Current = BTreeMap<String, BTreeSet<Ipv4Addr>>;

/// [`Current`] of a forwarder's devices.
pub fn connected(devices: &Devices) -> BTreeSet<Ipv4Addr> {
    devices
        .values()
        .filter(|d| d.get("type").map(String::as_str) == Some("proxy"))
        .filter_map(|d| {
            let connect = d.get("connect")?;
            let (_, rest) = connect.split_once(':')?;
            rest.rsplit_once(':')?.0.parse().ok()
        })
        .collect()
}

/// What one member's forwarder holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarder {
    pub name: String,
    pub member: String,
    /// (Incus network, address, prefix), in NIC order (`eth0`, `eth1`, ...).
    pub nics: Vec<(String, Ipv4Addr, u8)>,
    /// The proxy devices.
    pub ports: Devices,
    /// The replica each port reaches: device -> replica (for messages).
    pub targets: BTreeMap<String, String>,
}

/// The forwarders' neighbour (ARP) timings per NIC (see [`Forwarder::raw_lxc`]).
const NEIGHBOUR_TIMINGS: [(&str, u32); 3] = [
    ("base_reachable_time_ms", 2000),
    ("delay_first_probe_time", 1),
    ("retrans_time_ms", 500),
];

impl Forwarder {
    /// Its NIC devices.
    pub fn nic_devices(&self) -> Devices {
        self.nics
            .iter()
            .enumerate()
            .map(|(i, (net, ip, _))| {
                (
                    format!("eth{i}"),
                    BTreeMap::from([
                        ("type".to_string(), "nic".to_string()),
                        ("network".to_string(), net.clone()),
                        ("name".to_string(), format!("eth{i}")),
                        ("ipv4.address".to_string(), ip.to_string()),
                    ]),
                )
            })
            .collect()
    }

    /// `raw.lxc` lines giving each NIC its address without DHCP, and neighbour timings that
    /// notice a moved replica within seconds: a replica that moves keeps its address but gets
    /// a new MAC, and with the kernel's defaults the forwarder keeps sending to the old one
    /// while its entry is "reachable" (15-45 s) and then for 5 s more before asking again.
    /// With these, an entry is confirmed again after 1-3 s, and a stale one is asked again
    /// after 1 s (three unicast tries 0.5 s apart, then a broadcast): at most about 5 s.
    pub fn raw_lxc(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, (_, ip, prefix)) in self.nics.iter().enumerate() {
            lines.push(format!("lxc.net.{i}.ipv4.address = {ip}/{prefix}"));
            for (key, value) in NEIGHBOUR_TIMINGS {
                lines.push(format!("lxc.sysctl.net.ipv4.neigh.eth{i}.{key} = {value}"));
            }
        }
        lines
    }

    /// [`LABEL_INGRESS_KEY`]: its networks and addresses.
    pub fn key(&self) -> String {
        self.nics
            .iter()
            .map(|(n, ip, p)| format!("{n}={ip}/{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The forwarders the project needs: one per member of `members` (online, in a stable order)
/// when some replica has ingress ports and an address on a network of `subnets` (the
/// project's spanning bridges), none otherwise. `existing`: the forwarders there are, whose
/// addresses are kept when still free. Each port goes to the running replica it goes to now
/// (`current`), else to the member's own, else to one of the others: a forwarder whose
/// target still runs is not changed (a change restarts its proxy, which drops the
/// connections in flight).
pub fn forwarders(
    members: &[String],
    replicas: &[Replica],
    subnets: &BTreeMap<String, Subnet>,
    existing: &Existing,
    current: &Current,
) -> Vec<Forwarder> {
    // Per service: its ports (from its replicas, first listed wins per listen address) and
    // the network its forwarders reach it on (the first, by name, its replicas have an
    // address on).
    let mut ports: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    let mut net_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen_listen: BTreeSet<&str> = BTreeSet::new();
    let mut sorted: Vec<&Replica> = replicas.iter().collect();
    sorted.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    for r in &sorted {
        if r.ports.is_empty() {
            continue;
        }
        let Some(net) = r.addresses.keys().find(|n| subnets.contains_key(*n)) else {
            continue;
        };
        let net = net_of.entry(r.service.as_str()).or_insert(net.as_str());
        if !r.addresses.contains_key(*net) {
            continue;
        }
        for e in &r.ports {
            if seen_listen.insert(&e.listen) {
                ports.entry(&r.service).or_default().push(e);
            }
        }
    }
    if ports.is_empty() {
        return Vec::new();
    }
    let nets: BTreeSet<&str> = net_of.values().copied().collect();
    // Addresses: replicas' are taken; a forwarder keeps its own when still free, else gets
    // the highest free one.
    let mut taken: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for r in replicas {
        for (n, a) in &r.addresses {
            taken.entry(n.as_str()).or_default().insert(*a);
        }
    }
    let mut address: BTreeMap<(&str, &str), Ipv4Addr> = BTreeMap::new();
    for m in members {
        for n in &nets {
            let subnet = subnets[*n];
            let kept = existing
                .get(m)
                .and_then(|a| a.get(*n))
                .filter(|a| subnet.contains(**a) && **a != subnet.gateway);
            if let Some(a) = kept
                && taken.entry(n).or_default().insert(*a)
            {
                address.insert((m.as_str(), n), *a);
            }
        }
    }
    for m in members {
        for n in &nets {
            if address.contains_key(&(m.as_str(), *n)) {
                continue;
            }
            let subnet = subnets[*n];
            let (first, last) = subnet.hosts();
            let t = taken.entry(n).or_default();
            let free = (first..=last)
                .rev()
                .map(Ipv4Addr::from)
                .find(|a| *a != subnet.gateway && !t.contains(a));
            if let Some(a) = free {
                t.insert(a);
                address.insert((m.as_str(), n), a);
            }
        }
    }
    let mut out = Vec::new();
    for (k, m) in members.iter().enumerate() {
        let nics: Vec<(String, Ipv4Addr, u8)> = nets
            .iter()
            .filter_map(|n| {
                address
                    .get(&(m.as_str(), *n))
                    .map(|a| (n.to_string(), *a, subnets[*n].prefix))
            })
            .collect();
        let mut devices = Devices::new();
        let mut targets = BTreeMap::new();
        for (service, entries) in &ports {
            let net = net_of[service];
            if !nics.iter().any(|(n, _, _)| n == net) {
                continue;
            }
            let mut running: Vec<&Replica> = sorted
                .iter()
                .copied()
                .filter(|r| &r.service == service && r.running && r.addresses.contains_key(net))
                .collect();
            running.sort_by(|a, b| a.name.cmp(&b.name));
            let kept = running.iter().find(|r| {
                current
                    .get(m)
                    .is_some_and(|now| now.contains(&r.addresses[net]))
            });
            let local = running.iter().find(|r| &r.member == m);
            let Some(target) = kept
                .or(local)
                .or_else(|| running.get(k % running.len().max(1)))
            else {
                continue;
            };
            let ip = target.addresses[net];
            for e in entries {
                let name = format!("port-{}-{}", e.proto(), e.port());
                devices.insert(
                    name.clone(),
                    BTreeMap::from([
                        ("type".to_string(), "proxy".to_string()),
                        ("listen".to_string(), e.listen.clone()),
                        (
                            "connect".to_string(),
                            format!("{}:{ip}:{}", e.proto(), e.target),
                        ),
                    ]),
                );
                targets.insert(name, target.name.clone());
            }
        }
        out.push(Forwarder {
            name: forwarder_name(m),
            member: m.clone(),
            nics,
            ports: devices,
            targets,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str, member: &str, running: bool, ip: &str) -> Replica {
        Replica {
            name: name.into(),
            service: "web".into(),
            member: member.into(),
            running,
            ports: decode("tcp:0.0.0.0:8091>80"),
            addresses: BTreeMap::from([("icnet".to_string(), ip.parse().unwrap())]),
        }
    }

    fn subnets() -> BTreeMap<String, Subnet> {
        BTreeMap::from([(
            "icnet".to_string(),
            Subnet::parse("100.100.3.0/24", None).unwrap(),
        )])
    }

    fn members() -> Vec<String> {
        vec!["node1".into(), "node2".into(), "node3".into()]
    }

    #[test]
    fn every_member_forwards_to_a_running_replica_preferring_its_own() {
        let r = vec![
            replica("web-1", "node1", true, "100.100.3.2"),
            replica("web-2", "node2", false, "100.100.3.3"),
        ];
        let f = forwarders(
            &members(),
            &r,
            &subnets(),
            &Existing::new(),
            &Current::new(),
        );
        assert_eq!(f.len(), 3);
        for fw in &f {
            let d = &fw.ports["port-tcp-8091"];
            assert_eq!(d["listen"], "tcp:0.0.0.0:8091");
            assert_eq!(d["connect"], "tcp:100.100.3.2:80", "{}", fw.member);
        }
        // Highest free addresses, one per member, none a replica's.
        let ips: Vec<_> = f.iter().map(|f| f.nics[0].1.to_string()).collect();
        assert_eq!(ips, ["100.100.3.254", "100.100.3.253", "100.100.3.252"]);
        assert_eq!(
            f[0].raw_lxc(),
            [
                "lxc.net.0.ipv4.address = 100.100.3.254/24",
                "lxc.sysctl.net.ipv4.neigh.eth0.base_reachable_time_ms = 2000",
                "lxc.sysctl.net.ipv4.neigh.eth0.delay_first_probe_time = 1",
                "lxc.sysctl.net.ipv4.neigh.eth0.retrans_time_ms = 500",
            ]
        );
    }

    #[test]
    fn addresses_are_kept_and_no_ports_means_no_forwarders() {
        let r = vec![replica("web-1", "node2", true, "100.100.3.2")];
        let existing = Existing::from([(
            "node3".to_string(),
            BTreeMap::from([("icnet".to_string(), "100.100.3.254".parse().unwrap())]),
        )]);
        let f = forwarders(&members(), &r, &subnets(), &existing, &Current::new());
        assert_eq!(f[2].nics[0].1.to_string(), "100.100.3.254");
        assert_eq!(f[0].nics[0].1.to_string(), "100.100.3.253");
        let mut none = r.clone();
        none[0].ports.clear();
        assert!(forwarders(&members(), &none, &subnets(), &existing, &Current::new()).is_empty());
    }

    #[test]
    fn a_forwarder_keeps_a_target_that_still_runs_and_leaves_one_that_does_not() {
        let r = vec![
            replica("web-1", "node1", true, "100.100.3.2"),
            replica("web-2", "node2", true, "100.100.3.3"),
            replica("web-3", "node3", true, "100.100.3.4"),
        ];
        let target = |f: &[Forwarder], m: usize| f[m].ports["port-tcp-8091"]["connect"].clone();
        let first = forwarders(
            &members(),
            &r,
            &subnets(),
            &Existing::new(),
            &Current::new(),
        );
        for (m, ip) in [(0, "2"), (1, "3"), (2, "4")] {
            assert_eq!(
                target(&first, m),
                format!("tcp:100.100.3.{ip}:80"),
                "its own"
            );
        }
        let now: Current = first
            .iter()
            .map(|f| (f.member.clone(), connected(&f.ports)))
            .collect();
        assert_eq!(
            now["node1"],
            BTreeSet::from(["100.100.3.2".parse().unwrap()])
        );
        // web-3 leaves: node3's forwarder goes elsewhere, the others stay as they are.
        let mut leaving = r.clone();
        leaving[2].running = false;
        let next = forwarders(&members(), &leaving, &subnets(), &Existing::new(), &now);
        assert_eq!(target(&next, 0), target(&first, 0));
        assert_eq!(target(&next, 1), target(&first, 1));
        assert_ne!(target(&next, 2), target(&first, 2));
        // web-3 back: node3's forwarder keeps the target it went to (no restart).
        let now: Current = next
            .iter()
            .map(|f| (f.member.clone(), connected(&f.ports)))
            .collect();
        let back = forwarders(&members(), &r, &subnets(), &Existing::new(), &now);
        assert_eq!(target(&back, 2), target(&next, 2));
    }

    #[test]
    fn entries_round_trip() {
        let e = decode("tcp:0.0.0.0:8091>80,udp:[::]:53-54>53-54");
        assert_eq!(e.len(), 2);
        assert_eq!(encode(&e), "tcp:0.0.0.0:8091>80,udp:[::]:53-54>53-54");
        assert_eq!(e[1].port(), "53-54");
        assert_eq!(forwarder_name("node_1"), "ic-ingress-node-1");
    }
}
