//! What decides how compose networks span a cluster (see `ic_core::plan::span`): whether the
//! cluster has OVN, which interface each member reaches the others through, and whether
//! tunnel interfaces may be set per member.

use std::collections::BTreeMap;

use ic_core::keys::LABEL_PROJECT;
use ic_core::plan::span::{self, NetworkFacts};
use ic_incus::{Client, ClusterMember, Network, ServerInfo};

/// The Incus project config key recording the members' cluster links as last probed, JSON
pub use ic_core::keys::LINKS_KEY;

/// Where [`network_facts`] takes the members' links from.
pub struct Links<'a> {
    /// The Incus project's record of them ([`LINKS_KEY`]).
    pub recorded: Option<&'a str>,
    /// Probe them whatever the record says.
    pub probe: bool,
}

/// The recorded links, when they name exactly `online` members.
fn recorded_links(
    recorded: Option<&str>,
    online: &[&ClusterMember],
) -> Option<BTreeMap<String, (String, u32)>> {
    let links: BTreeMap<String, (String, u32)> = serde_json::from_str(recorded?).ok()?;
    let same =
        links.len() == online.len() && online.iter().all(|m| links.contains_key(&m.server_name));
    same.then_some(links)
}

/// The network facts of a server, and the links to record ([`LINKS_KEY`]) when they were
/// probed and differ from the record. `probe_links`: also find each member's cluster link
/// (from the record when it names exactly the online members and `links.probe` is false,
/// else a few requests per member; only `up` and `scale` need them).
/// `compose`: the compose project whose spanning bridges are checked for members that joined
/// after them (their tunnel has no interface there yet): only when the links are probed (the
/// record is written only when no such member was found, for the same members).
pub async fn network_facts(
    base: &Client,
    info: &ServerInfo,
    members: &[ClusterMember],
    networks: &[Network],
    probe_links: bool,
    compose: &str,
    links: Links<'_>,
) -> (NetworkFacts, Option<String>) {
    let mut facts = NetworkFacts {
        clustered: info.is_clustered(),
        ovn_uplink: ovn_uplink(info, networks),
        member_links: BTreeMap::new(),
        member_specific_tunnels: member_specific_tunnels(info.server_version()),
        tunnel_unset: BTreeMap::new(),
        unavailable: BTreeMap::new(),
        version: info.server_version().to_string(),
    };
    if !(facts.clustered && probe_links) {
        return (facts, None);
    }
    let online: Vec<&ClusterMember> = members.iter().filter(|m| m.is_online()).collect();
    if !links.probe
        && let Some(recorded) = recorded_links(links.recorded, &online)
    {
        facts.member_links = recorded;
        return (facts, None);
    }
    for m in members.iter().filter(|m| m.is_online()) {
        if let Some(link) = member_link(base, m, networks).await {
            facts.member_links.insert(m.server_name.clone(), link);
        }
    }
    if facts.member_specific_tunnels {
        let interface = format!("tunnel.{}.interface", span::TUNNEL);
        let ours = networks.iter().filter(|n| {
            n.config.contains_key(ic_core::keys::LABEL_VNI)
                && n.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
        });
        for n in ours {
            for m in members.iter().filter(|m| m.is_online()) {
                let Ok(on) = base.network(&n.name, Some(&m.server_name)).await else {
                    continue;
                };
                if on.status.eq_ignore_ascii_case("unavailable") {
                    facts
                        .unavailable
                        .entry(n.name.clone())
                        .or_default()
                        .insert(m.server_name.clone());
                }
                if on.config.get(&interface).is_none_or(String::is_empty) {
                    facts
                        .tunnel_unset
                        .entry(n.name.clone())
                        .or_default()
                        .insert(m.server_name.clone());
                }
            }
        }
    }
    let settled = facts.tunnel_unset.is_empty()
        && facts.unavailable.is_empty()
        && facts.member_links.len() == online.len();
    let value = serde_json::to_string(&facts.member_links).ok();
    let record = value.filter(|v| settled && links.recorded != Some(v.as_str()));
    (facts, record)
}

/// An OVN uplink, when the server is set up for OVN: the uplink of an existing `ovn` network,
/// else a managed `physical` network, provided `network.ovn.northbound_connection` is set.
fn ovn_uplink(info: &ServerInfo, networks: &[Network]) -> Option<String> {
    let northbound = info
        .config
        .get("network.ovn.northbound_connection")
        .and_then(|v| v.as_str())
        .is_some_and(|s| !s.is_empty());
    let existing = networks
        .iter()
        .filter(|n| n.kind == "ovn")
        .find_map(|n| n.config.get("network").cloned());
    let physical = networks
        .iter()
        .find(|n| n.managed && n.kind == "physical")
        .map(|n| n.name.clone());
    if existing.is_some() {
        return existing;
    }
    physical.filter(|_| northbound)
}

/// Whether `tunnel.*.interface` may be set per member: Incus 6.0.5+ on the 6.0 line, 6.15+
/// after it (so 7.0).
fn member_specific_tunnels(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    match (major, minor) {
        (6, 0) => patch >= 5,
        (6, m) => m >= 15,
        (m, _) => m > 6,
    }
}

/// The interface holding member `m`'s cluster address, and its MTU.
async fn member_link(
    base: &Client,
    m: &ClusterMember,
    managed: &[Network],
) -> Option<(String, u32)> {
    let host = m
        .url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())?;
    let names = base.network_names_on(&m.server_name).await.ok()?;
    let candidates = names
        .iter()
        .filter(|n| n.as_str() != "lo" && !managed.iter().any(|x| x.managed && &x.name == *n));
    for name in candidates {
        let Ok(state) = base.network_state(name, Some(&m.server_name)).await else {
            continue;
        };
        if state.addresses.iter().any(|a| a.address == host) {
            return Some((name.clone(), if state.mtu == 0 { 1500 } else { state.mtu }));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specific_tunnel_interfaces_start_with_incus_6_0_5_and_6_15() {
        assert!(!member_specific_tunnels("6.0.4"));
        assert!(member_specific_tunnels("6.0.5"));
        assert!(!member_specific_tunnels("6.14"));
        assert!(member_specific_tunnels("6.15"));
        assert!(member_specific_tunnels("7.0.2"));
    }

    #[test]
    fn ovn_is_detected_from_an_ovn_network_or_a_physical_uplink_with_a_northbound_connection() {
        let net = |name: &str, kind: &str, config: &[(&str, &str)]| Network {
            name: name.into(),
            kind: kind.into(),
            managed: true,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let mut info = ServerInfo::default();
        assert_eq!(ovn_uplink(&info, &[net("incusbr0", "bridge", &[])]), None);
        let ovn = net("o1", "ovn", &[("network", "UPLINK")]);
        assert_eq!(ovn_uplink(&info, &[ovn]), Some("UPLINK".into()));
        let phys = net("UPLINK", "physical", &[]);
        assert_eq!(ovn_uplink(&info, std::slice::from_ref(&phys)), None);
        info.config.insert(
            "network.ovn.northbound_connection".into(),
            serde_json::json!("tcp:10.0.0.1:6641"),
        );
        assert_eq!(ovn_uplink(&info, &[phys]), Some("UPLINK".into()));
    }
}
