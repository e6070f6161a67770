//! Compose networks that span a cluster: every replica reaches every service by name from
//! any member.
//!
//! **Which Incus network** ([`choose`]): on a single server a plain bridge (as before). On a
//! cluster an `ovn` network when the cluster has an OVN uplink ([`NetworkFacts::ovn_uplink`]),
//! else a *spanning bridge*. `x-incus: {network: bridge|span|ovn}` on the compose network (or
//! `driver_opts: {incus.network: ...}`) forces the choice. OVN cannot run on the test harness (no
//! Open vSwitch): the OVN choice is planned and unit-tested only.
//!
//! **The spanning bridge**: one Incus bridge, created on every member, whose members' bridges
//! are joined into one layer-2 segment by a VXLAN tunnel named [`TUNNEL`]
//! (`tunnel.v.protocol=vxlan`, multicast group [`GROUP`] with TTL 1, so the multicast never
//! leaves the members' own link; a VNI per compose network allocated here ([`allocate_vni`]),
//! never one any network holds, and recorded in [`LABEL_VNI`]). The tunnel's host interface is
//! `<network>-v`, so the network name has at most 13 characters
//! ([`super::naming::span_network_name`]); `bridge.mtu` is the members' link MTU minus
//! [`VXLAN_OVERHEAD`].
//!
//! **Addresses**: each member's bridge has the same gateway address (and, Incus deriving the
//! bridge MAC from the network name, the same MAC), so the gateway is local on every member:
//! outbound traffic and DNS go to the instance's own member. Each member's dnsmasq knows only its
//! own instances, so it must not hand out leases to the others: incus-compose gives every replica
//! its NIC address (`addresses::assign`, NIC `ipv4.address`, recorded in the instance key
//! [`address_label`]) and dnsmasq answers only known clients (`dhcp-ignore=tag:!known`).
//!
//! **DNS** ([`raw_dnsmasq`]): replica names, service names and `aliases` are `host-record`s in
//! `raw.dnsmasq`, so every member's dnsmasq answers them; a service name has one record per
//! replica (dnsmasq answers with all of them). A change of a bridge's config restarts its dnsmasq
//! and its tunnels on every member, so the records are written at most once per `up`/`scale`,
//! and only when they change.
//!
//! **Isolation**: bridges of one member route to each other, so every spanning bridge carries
//! the project's network ACL ([`acl_name`], no rules) with ingress rejected and egress allowed:
//! an instance reaches its own networks' instances (bridged traffic is not filtered) and the
//! outside, not instances of another network (routed traffic). Outbound traffic is NATed by
//! each member's gateway, and `internal: true` is an ACL rule (see [`super::egress`]); DHCP
//! also gives an internal network no router.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ic_compose::model::Network;
use sha2::{Digest, Sha256};

use super::Subnet;
use crate::keys::{LABEL_KIND, LABEL_VNI};

/// The tunnel's name in `tunnel.<name>.*` keys; its host interface is `<network>-v`.
pub const TUNNEL: &str = "v";
/// Multicast group of every spanning bridge's tunnel (administratively scoped; TTL 1).
pub const GROUP: &str = "239.255.73.1";
/// Bytes VXLAN adds to each frame (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Highest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Longest Linux interface name.
const IFNAMSIZ: usize = 15;

/// The instance config key holding a replica's address on compose network `key`.
pub fn address_label(key: &str) -> String {
    format!("{}{key}", crate::keys::ADDRESS_PREFIX)
}

/// The network ACL of an Incus project's spanning bridges.
pub fn acl_name(incus_project: &str) -> String {
    format!("incus-compose-{incus_project}")
}

/// The host interface of a bridge's tunnel.
pub fn tunnel_interface(network: &str) -> String {
    format!("{network}-{TUNNEL}")
}

/// What the server tells about its networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkFacts {
    /// A cluster (otherwise a single server: plain bridges).
    pub clustered: bool,
    /// A network usable as an OVN uplink (an existing `ovn` network's `network`, or a physical
    /// network or bridge with `ovn.*` keys), when the server has an OVN northbound connection.
    pub ovn_uplink: Option<String>,
    /// The interface each member reaches the others through (the one holding its cluster
    /// address), when known: member -> (interface, MTU).
    pub member_links: BTreeMap<String, (String, u32)>,
    /// `tunnel.*.interface` is set per member (Incus 6.0.5+ / 6.15+, which take it no other
    /// way).
    pub member_specific_tunnels: bool,
    /// Spanning bridges of this project (by Incus name) and the members where their tunnel
    /// has no interface yet (members that joined after the bridge was made): `up` sets it.
    pub tunnel_unset: BTreeMap<String, BTreeSet<String>>,
    /// Spanning bridges of this project (by Incus name) that Incus reports unavailable on
    /// some members (a member that joined could not start the tunnel).
    pub unavailable: BTreeMap<String, BTreeSet<String>>,
    /// Incus version, for messages.
    pub version: String,
}

/// The Incus network a compose network becomes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A plain bridge: each member's is its own segment (a single server).
    #[default]
    Bridge,
    /// A bridge joined over the members by a VXLAN tunnel.
    Span,
    /// An OVN network on `uplink`.
    Ovn { uplink: String },
}

/// The user's forced choice (`x-incus: {network: ...}` or `driver_opts: {incus.network: ...}`).
fn forced(net: &Network) -> Option<String> {
    net.extensions
        .get("x-incus")
        .and_then(|x| x.get("network"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| net.driver_opts.get("incus.network").cloned())
}

/// The kind of Incus network compose network `key` becomes (see the module documentation).
pub fn choose(key: &str, net: &Network, facts: &NetworkFacts) -> Result<Kind, String> {
    match forced(net).as_deref() {
        None => Ok(match (&facts.ovn_uplink, facts.clustered) {
            (_, false) => Kind::Bridge,
            (Some(u), true) => Kind::Ovn { uplink: u.clone() },
            (None, true) => Kind::Span,
        }),
        Some("bridge") => Ok(Kind::Bridge),
        Some("span") if facts.clustered => Ok(Kind::Span),
        // A single server has nothing to span.
        Some("span") => Ok(Kind::Bridge),
        Some("ovn") => match &facts.ovn_uplink {
            Some(u) => Ok(Kind::Ovn { uplink: u.clone() }),
            None => Err(format!(
                "network {key:?} asks for OVN (x-incus.network: ovn), but this Incus server (version {}) has no OVN uplink (no `ovn` network and no uplink network with `ovn.*` keys, or no `network.ovn.northbound_connection`); set up OVN, or remove the setting to use a bridge spanning the members",
                if facts.version.is_empty() {
                    "unknown"
                } else {
                    &facts.version
                }
            )),
        },
        Some(other) => Err(format!(
            "network {key:?}: x-incus.network {other:?} is not one of bridge, span, ovn"
        )),
    }
}

/// The config keys of a spanning bridge `name` with VNI `vni` (without `ipv4.address` and
/// `raw.dnsmasq`), and the per-member keys (empty when one value fits every member).
#[allow(clippy::type_complexity)]
pub fn span_config(
    key: &str,
    name: &str,
    vni: u32,
    acl: &str,
    facts: &NetworkFacts,
) -> Result<
    (
        BTreeMap<String, String>,
        BTreeMap<String, BTreeMap<String, String>>,
    ),
    String,
> {
    let ifname = tunnel_interface(name);
    if ifname.len() > IFNAMSIZ {
        return Err(format!(
            "network {key:?}: the tunnel interface {ifname:?} would be longer than {IFNAMSIZ} characters"
        ));
    }
    let t = |k: &str| format!("tunnel.{TUNNEL}.{k}");
    let mut config = BTreeMap::from([
        (t("protocol"), "vxlan".to_string()),
        (t("group"), GROUP.to_string()),
        (t("id"), vni.to_string()),
        (t("ttl"), "1".to_string()),
        (LABEL_VNI.to_string(), vni.to_string()),
        (LABEL_KIND.to_string(), "span".to_string()),
        ("security.acls".to_string(), acl.to_string()),
        (
            "security.acls.default.egress.action".to_string(),
            "allow".to_string(),
        ),
        (
            "security.acls.default.ingress.action".to_string(),
            "reject".to_string(),
        ),
    ]);
    // `internal: true` is in [`raw_dnsmasq`]: `ipv4.routing=false` would also reject the bridged
    // traffic between members where the kernel passes bridged frames through the firewall
    // (br_netfilter), as on the test harness.
    let mtu = facts
        .member_links
        .values()
        .map(|(_, m)| *m)
        .min()
        .unwrap_or(1500);
    config.insert(
        "bridge.mtu".into(),
        mtu.saturating_sub(VXLAN_OVERHEAD).to_string(),
    );
    let interfaces: BTreeSet<&String> = facts.member_links.values().map(|(i, _)| i).collect();
    let mut per_member = BTreeMap::new();
    if interfaces.is_empty() {
        return Err(format!(
            "network {key:?}: cannot tell which interface the cluster members reach each other through (no interface holds a member's cluster address); the VXLAN tunnel needs one"
        ));
    }
    if facts.member_specific_tunnels {
        // Incus 6.0.5+ / 6.15+ (so 7.0) takes `tunnel.*.interface` per member only.
        for (member, (i, _)) in &facts.member_links {
            per_member.insert(
                member.clone(),
                BTreeMap::from([(t("interface"), i.clone())]),
            );
        }
    } else if interfaces.len() == 1 {
        if let Some(i) = interfaces.first() {
            config.insert(t("interface"), i.to_string());
        }
    } else {
        let list: Vec<String> = facts
            .member_links
            .iter()
            .map(|(m, (i, _))| format!("{m}: {i}"))
            .collect();
        return Err(format!(
            "network {key:?}: the members reach each other through different interfaces ({}), and Incus {} sets `tunnel.*.interface` for the whole cluster only; upgrade to Incus 6.0.5+ (LTS) or 6.15+ (member-specific tunnel interfaces), or give the members' cluster links one name",
            list.join(", "),
            if facts.version.is_empty() {
                "unknown"
            } else {
                &facts.version
            }
        ));
    }
    Ok((config, per_member))
}

/// The warning for a spanning bridge Incus reports unavailable on `members`: on Incus lines
/// with member-specific tunnel interfaces, a member that joins after the bridge was made cannot
/// start its tunnel (Incus asks for the interface at join time, `member_config`), and Incus
/// starts a network that failed only when the member's daemon starts.
pub fn unavailable_warning(
    key: &str,
    name: &str,
    members: &BTreeSet<String>,
    facts: &NetworkFacts,
) -> String {
    let list: Vec<&str> = members.iter().map(String::as_str).collect();
    let interfaces: Vec<String> = members
        .iter()
        .filter_map(|m| facts.member_links.get(m).map(|(i, _)| format!("{m}: {i}")))
        .collect();
    format!(
        "network {key:?} ({name}) is unavailable on {}: a member that joined after the network was made could not start its VXLAN tunnel (Incus {} sets `tunnel.{TUNNEL}.interface` per member only, and the join gave none). incus-compose sets it ({}); Incus starts the network there only when that member's daemon starts: restart incusd on {} and run `up` again (or, when joining members, give `member_config` for `tunnel.{TUNNEL}.interface` of network {name}, as `incus admin init` asks). Replicas placed there fail until then",
        list.join(", "),
        if facts.version.is_empty() {
            "unknown"
        } else {
            &facts.version
        },
        if interfaces.is_empty() {
            "when its link is known".to_string()
        } else {
            interfaces.join(", ")
        },
        list.join(", ")
    )
}

/// The VNIs networks hold: every `tunnel.*.id` and [`LABEL_VNI`] value.
pub fn used_vnis<'a>(configs: impl Iterator<Item = &'a BTreeMap<String, String>>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for c in configs {
        for (k, v) in c {
            let is_vni = k == LABEL_VNI || (k.starts_with("tunnel.") && k.ends_with(".id"));
            if let (true, Ok(n)) = (is_vni, v.parse::<u32>()) {
                out.insert(n);
            }
        }
    }
    out
}

/// A VNI for network `name` that no network holds: probing from a start derived from the
/// name, so a network gets the same VNI again as long as it is free.
pub fn allocate_vni(name: &str, used: &BTreeSet<u32>) -> Option<u32> {
    let digest = Sha256::digest(name.as_bytes());
    let start = u32::from_be_bytes([0, digest[0], digest[1], digest[2]]) % MAX_VNI;
    (0..MAX_VNI)
        .map(|i| (start + i) % MAX_VNI + 1)
        .find(|v| !used.contains(v))
}

/// Addresses of `subnet` for `wanted` replicas (in order) that are not taken: the gateway,
/// the network and broadcast addresses, and `taken` are never given.
pub fn allocate_addresses(
    subnet: &Subnet,
    taken: &BTreeSet<Ipv4Addr>,
    wanted: usize,
) -> Result<Vec<Ipv4Addr>, usize> {
    let (first, last) = subnet.hosts();
    let mut out = Vec::with_capacity(wanted);
    let mut a = first;
    while out.len() < wanted && a <= last {
        let ip = Ipv4Addr::from(a);
        if ip != subnet.gateway && !taken.contains(&ip) {
            out.push(ip);
        }
        a += 1;
    }
    if out.len() < wanted {
        return Err(out.len());
    }
    Ok(out)
}

/// One DNS name of a spanning bridge: replica names and service names (with aliases).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    pub name: String,
    pub address: Ipv4Addr,
}

/// The `raw.dnsmasq` text of a spanning bridge: DHCP answered only to known instances (and,
/// for an `internal` network, without a router: instances get no default route, so no
/// outbound traffic, while the members' bridges still carry their traffic), then one
/// `host-record` per name and address (sorted, duplicates left out).
pub fn raw_dnsmasq(records: &[Record], internal: bool) -> String {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut out = String::from("dhcp-ignore=tag:!known\n");
    if internal {
        out.push_str("dhcp-option=3\n");
    }
    for r in sorted {
        out.push_str(&format!(
            "host-record={},{}.{},{}\n",
            r.name,
            r.name,
            super::dns::DOMAIN,
            r.address
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(links: &[(&str, &str, u32)]) -> NetworkFacts {
        NetworkFacts {
            clustered: true,
            member_links: links
                .iter()
                .map(|(m, i, mtu)| (m.to_string(), (i.to_string(), *mtu)))
                .collect(),
            version: "6.0.4".into(),
            ..Default::default()
        }
    }

    fn net(yaml_ext: Option<&str>) -> Network {
        let mut n = Network::default();
        if let Some(v) = yaml_ext {
            n.extensions
                .insert("x-incus".into(), serde_json::json!({ "network": v }));
        }
        n
    }

    #[test]
    fn a_cluster_without_ovn_gets_a_spanning_bridge_and_a_single_server_a_plain_one() {
        let f = facts(&[("node1", "eth0", 1500)]);
        assert_eq!(choose("default", &net(None), &f), Ok(Kind::Span));
        let single = NetworkFacts::default();
        assert_eq!(choose("default", &net(None), &single), Ok(Kind::Bridge));
        assert_eq!(
            choose("default", &net(Some("span")), &single),
            Ok(Kind::Bridge)
        );
    }

    #[test]
    fn ovn_is_chosen_when_the_cluster_has_an_uplink_and_can_be_forced_either_way() {
        let mut f = facts(&[("node1", "eth0", 1500)]);
        f.ovn_uplink = Some("UPLINK".into());
        let ovn = Kind::Ovn {
            uplink: "UPLINK".into(),
        };
        assert_eq!(choose("default", &net(None), &f), Ok(ovn.clone()));
        assert_eq!(choose("default", &net(Some("span")), &f), Ok(Kind::Span));
        assert_eq!(
            choose("default", &net(Some("bridge")), &f),
            Ok(Kind::Bridge)
        );
        let mut by_opts = Network::default();
        by_opts
            .driver_opts
            .insert("incus.network".into(), "span".into());
        assert_eq!(choose("default", &by_opts, &f), Ok(Kind::Span));
        f.ovn_uplink = None;
        let e = choose("back", &net(Some("ovn")), &f).unwrap_err();
        assert!(
            e.contains("\"back\"") && e.contains("6.0.4") && e.contains("no OVN uplink"),
            "{e}"
        );
        assert!(choose("back", &net(Some("vxlan")), &f).is_err());
    }

    #[test]
    fn the_tunnel_uses_multicast_with_ttl_one_and_lowers_the_mtu_by_the_vxlan_overhead() {
        let f = facts(&[("node1", "eth0", 1500), ("node2", "eth0", 9000)]);
        let (c, per_member) = span_config("default", "ic12345-defau", 77, "acl", &f).unwrap();
        assert_eq!(c["tunnel.v.protocol"], "vxlan");
        assert_eq!(c["tunnel.v.group"], GROUP);
        assert!(GROUP.starts_with("239."), "administratively scoped");
        assert_eq!(c["tunnel.v.ttl"], "1");
        assert_eq!(c["tunnel.v.id"], "77");
        assert_eq!(c[LABEL_VNI], "77");
        assert_eq!(c["tunnel.v.interface"], "eth0");
        assert_eq!(c["bridge.mtu"], "1450", "smallest link MTU minus 50");
        assert_eq!(c["security.acls"], "acl");
        assert_eq!(c["security.acls.default.ingress.action"], "reject");
        assert_eq!(c["security.acls.default.egress.action"], "allow");
        assert!(!c.contains_key("ipv4.routing"));
        assert!(per_member.is_empty());
    }

    #[test]
    fn different_member_interfaces_need_member_specific_tunnel_keys_or_fail_naming_the_version() {
        let mut f = facts(&[("node1", "eth0", 1500), ("node2", "ens3", 1500)]);
        let e = span_config("default", "ic12345-defau", 7, "acl", &f).unwrap_err();
        assert!(e.contains("node1: eth0, node2: ens3"), "{e}");
        assert!(e.contains("6.0.4") && e.contains("6.0.5"), "{e}");
        f.member_specific_tunnels = true;
        let (c, per_member) = span_config("default", "ic12345-defau", 7, "acl", &f).unwrap();
        assert!(!c.contains_key("tunnel.v.interface"));
        assert_eq!(per_member["node2"]["tunnel.v.interface"], "ens3");
        assert_eq!(per_member["node1"]["tunnel.v.interface"], "eth0");
        assert!(
            span_config("default", "ic12345-defau", 7, "acl", &facts(&[])).is_err(),
            "no known link"
        );
    }

    #[test]
    fn member_specific_tunnel_interfaces_are_set_per_member_even_when_they_are_all_alike() {
        let mut f = facts(&[("node1", "eth0", 1500), ("node2", "eth0", 1500)]);
        f.member_specific_tunnels = true;
        let (c, per_member) = span_config("default", "ic12345-defau", 7, "acl", &f).unwrap();
        assert!(!c.contains_key("tunnel.v.interface"));
        assert_eq!(per_member.len(), 2);
        assert_eq!(per_member["node1"]["tunnel.v.interface"], "eth0");
    }

    #[test]
    fn the_tunnel_interface_name_must_fit_in_fifteen_characters() {
        let f = facts(&[("node1", "eth0", 1500)]);
        assert_eq!(tunnel_interface("ic12345-defau"), "ic12345-defau-v");
        assert!(span_config("d", "ic12345-defau", 1, "a", &f).is_ok());
        let e = span_config("d", "ic12345-default", 1, "a", &f).unwrap_err();
        assert!(e.contains("ic12345-default-v"), "{e}");
    }

    #[test]
    fn vnis_are_stable_and_never_one_a_network_holds() {
        let none = BTreeSet::new();
        let a = allocate_vni("ic12345-front", &none).unwrap();
        assert_eq!(Some(a), allocate_vni("ic12345-front", &none));
        assert!((1..=MAX_VNI).contains(&a));
        let held = BTreeSet::from([a]);
        let b = allocate_vni("ic12345-front", &held).unwrap();
        assert_ne!(a, b);
        let configs = [
            BTreeMap::from([("tunnel.t1.id".to_string(), "42".to_string())]),
            BTreeMap::from([(LABEL_VNI.to_string(), "43".to_string())]),
            BTreeMap::from([("ipv4.address".to_string(), "10.0.0.1/24".to_string())]),
        ];
        assert_eq!(used_vnis(configs.iter()), BTreeSet::from([42, 43]));
    }

    proptest::proptest! {
        /// The name's own VNI and a run after it are held in 49 of 50 cases (the probing is
        /// what is tested), plus VNIs held anywhere.
        #[test]
        fn allocated_vnis_avoid_every_held_one(
            name in "[a-z0-9-]{1,13}",
            run in 0u32..50,
            elsewhere in proptest::collection::btree_set(1u32..=MAX_VNI, 0..50),
        ) {
            let own = allocate_vni(&name, &BTreeSet::new()).unwrap();
            let mut held = elsewhere;
            held.extend((0..run).map(|i| (own - 1 + i) % MAX_VNI + 1));
            let v = allocate_vni(&name, &held).unwrap();
            proptest::prop_assert!(!held.contains(&v));
            proptest::prop_assert!((1..=MAX_VNI).contains(&v));
            // The first free one after the held run: probing goes on from the name's own VNI.
            let first_free = (0..MAX_VNI)
                .map(|i| (own - 1 + i) % MAX_VNI + 1)
                .find(|c| !held.contains(c))
                .unwrap();
            proptest::prop_assert_eq!(v, first_free);
        }

        /// Up to the whole subnet taken and up to more addresses wanted than it has: about a
        /// third of the cases exhaust it.
        #[test]
        fn allocated_addresses_are_unique_inside_the_subnet_and_never_the_gateway(
            taken in proptest::collection::btree_set(0u8..=255, 0..256),
            wanted in 0usize..260,
        ) {
            let s = Subnet::parse("100.100.9.0/24", None).unwrap();
            let taken: BTreeSet<Ipv4Addr> = taken.into_iter().map(|o| Ipv4Addr::new(100, 100, 9, o)).collect();
            // Hosts .1-.254 without the gateway and the taken ones.
            let free = (1u8..=254)
                .map(|o| Ipv4Addr::new(100, 100, 9, o))
                .filter(|a| *a != s.gateway && !taken.contains(a))
                .count();
            let got = match allocate_addresses(&s, &taken, wanted) {
                Ok(got) => got,
                Err(left) => {
                    proptest::prop_assert!(wanted > free, "refused {wanted} with {free} free");
                    proptest::prop_assert_eq!(left, free);
                    return Ok(());
                }
            };
            proptest::prop_assert!(wanted <= free);
            let unique: BTreeSet<_> = got.iter().collect();
            proptest::prop_assert_eq!(unique.len(), wanted);
            for a in &got {
                proptest::prop_assert!(!taken.contains(a));
                proptest::prop_assert!(*a != s.gateway);
                let o = a.octets();
                proptest::prop_assert!(o[0] == 100 && o[1] == 100 && o[2] == 9 && o[3] != 0 && o[3] != 255);
            }
        }
    }

    #[test]
    fn a_full_subnet_says_how_many_addresses_were_left() {
        let s = Subnet::parse("10.0.0.0/30", None).unwrap();
        // hosts .1 (gateway) and .2
        assert_eq!(
            allocate_addresses(&s, &BTreeSet::new(), 1).unwrap(),
            vec![Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(allocate_addresses(&s, &BTreeSet::new(), 2), Err(1));
    }

    #[test]
    fn service_names_get_one_record_per_replica_and_dhcp_answers_known_instances_only() {
        let r = |n: &str, a: [u8; 4]| Record {
            name: n.into(),
            address: Ipv4Addr::from(a),
        };
        let text = raw_dnsmasq(
            &[
                r("app", [10, 0, 0, 3]),
                r("app-2", [10, 0, 0, 3]),
                r("app", [10, 0, 0, 2]),
                r("app-1", [10, 0, 0, 2]),
                r("app", [10, 0, 0, 2]),
            ],
            false,
        );
        assert_eq!(
            text,
            "dhcp-ignore=tag:!known\n\
             host-record=app,app.incus,10.0.0.2\n\
             host-record=app,app.incus,10.0.0.3\n\
             host-record=app-1,app-1.incus,10.0.0.2\n\
             host-record=app-2,app-2.incus,10.0.0.3\n"
        );
        let internal = raw_dnsmasq(&[r("db", [10, 0, 0, 2])], true);
        assert_eq!(
            internal, "dhcp-ignore=tag:!known\ndhcp-option=3\nhost-record=db,db.incus,10.0.0.2\n",
            "no router: no default route"
        );
    }
}
