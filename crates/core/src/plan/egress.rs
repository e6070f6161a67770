//! The way out of the networks incus-compose makes, and `internal: true` as a rule.
//!
//! **Egress by default**: like Docker's bridge, every network masquerades (`ipv4.nat=true`):
//! on a cluster each member's bridge (a spanning bridge's gateway is local on every member)
//! NATs its own replicas' outbound traffic, so the replies come back to the member that sent
//! it. Turned off per network with `x-incus: {egress: false}` (or Docker's
//! `driver_opts: {com.docker.network.bridge.enable_ip_masquerade: "false"}`, or
//! `driver_opts: {incus.egress: "false"}`): no NAT, the traffic is still routed (as Docker does).
//!
//! **`internal: true`** is enforced by an Incus network ACL, not by a missing route: the
//! network's default egress action is `reject` and its own ACL ([`internal_acl_name`]) allows
//! only its own subnet ([`internal_acl_destination`]), so its instances reach each other (on
//! every member) and nothing else: not the outside, not the members' addresses, not other
//! networks, even with a route added by root in the container. DHCP still gives no router.
//!
//! **Isolation of plain bridges** (single server, or `x-incus.network: bridge`): they carry the
//! project's ACL as spanning bridges do ([`super::span::acl_name`]: ingress rejected), so one
//! project's instances cannot reach another's by address through the routing between bridges.

use std::collections::BTreeMap;

use ic_compose::model::Network;

use super::Subnet;

/// Docker's bridge option that turns masquerading off.
pub const DOCKER_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";

/// Whether compose network `key` NATs its outbound traffic (see the module documentation):
/// never for `internal` ones; an unreadable setting is an error naming it.
pub fn egress(key: &str, net: &Network) -> Result<bool, String> {
    if net.internal {
        return Ok(false);
    }
    let from_ext = net
        .extensions
        .get("x-incus")
        .and_then(|x| x.get("egress"))
        .map(|v| match v {
            serde_json::Value::Bool(b) => Ok(*b),
            serde_json::Value::String(s) => parse_bool(s).ok_or(()),
            _ => Err(()),
        })
        .map(|r| r.map_err(|()| format!("network {key:?}: x-incus.egress must be true or false")));
    if let Some(r) = from_ext {
        return r;
    }
    for opt in ["incus.egress", DOCKER_MASQUERADE] {
        if let Some(v) = net.driver_opts.get(opt) {
            return parse_bool(v).ok_or_else(|| {
                format!(
                    "network {key:?}: driver_opts.{opt} must be \"true\" or \"false\", got {v:?}"
                )
            });
        }
    }
    Ok(true)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// The keys that isolate a (non-internal) plain bridge as spanning bridges are: the project's
/// ACL `project_acl`, ingress rejected, egress allowed.
pub fn isolation_keys(project_acl: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("security.acls".to_string(), project_acl.to_string()),
        (
            "security.acls.default.egress.action".to_string(),
            "allow".to_string(),
        ),
        (
            "security.acls.default.ingress.action".to_string(),
            "reject".to_string(),
        ),
    ])
}

/// The network ACL of an `internal` network (Incus name `network`): one egress rule allowing
/// its own subnet.
pub fn internal_acl_name(network: &str) -> String {
    format!("{network}-internal")
}

/// The config keys an `internal` network (Incus name `network`) adds to carry its rule:
/// `security.acls` (the project's ACL `project_acl` when given, then its own) and a default
/// egress action `reject`. Ingress: the project ACL's (reject) when given, else `reject`.
pub fn internal_keys(network: &str, project_acl: Option<&str>) -> BTreeMap<String, String> {
    let acls = match project_acl {
        Some(p) => format!("{p},{}", internal_acl_name(network)),
        None => internal_acl_name(network),
    };
    BTreeMap::from([
        ("security.acls".to_string(), acls),
        (
            "security.acls.default.egress.action".to_string(),
            "reject".to_string(),
        ),
        (
            "security.acls.default.ingress.action".to_string(),
            "reject".to_string(),
        ),
    ])
}

/// The destination the internal ACL `acl` of network `network` allows (its subnet, from the
/// network's `ipv4.address`), or None when `acl` is not that network's internal ACL.
pub fn internal_acl_destination(
    acl: &str,
    network: &str,
    config: &BTreeMap<String, String>,
) -> Option<String> {
    if acl != internal_acl_name(network) {
        return None;
    }
    let address = config.get("ipv4.address")?;
    let (gateway, prefix) = address.split_once('/')?;
    let subnet = Subnet::parse(address, Some(gateway)).ok()?;
    let (first, _) = subnet.hosts();
    Some(format!(
        "{}/{prefix}",
        std::net::Ipv4Addr::from(first.saturating_sub(1))
    ))
}

/// UDP ports of VXLAN (Linux's default, which Incus's tunnels use, and IANA's): a container
/// that sends VXLAN to its member (any of its addresses, the gateway too) could inject frames
/// into any network's segment.
pub const VXLAN_PORTS: &str = "8472,4789";

/// One rule of an incus-compose network ACL (see [`project_acl_rules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// `allow`, `reject` or `drop`.
    pub action: &'static str,
    /// Destination addresses (empty: any).
    pub destination: String,
    /// `udp`, `tcp` or empty (any).
    pub protocol: &'static str,
    /// Destination ports (with a protocol).
    pub destination_port: String,
    pub description: &'static str,
}

/// Whether `acl` is the project ACL of an Incus project (`incus-compose-<project>`, see
/// [`super::span::acl_name`]).
pub fn is_project_acl(acl: &str, network: &str) -> bool {
    acl.starts_with("incus-compose-") && acl != internal_acl_name(network)
}

/// The egress rules of the project ACL: the underlay is out of reach of the containers: the
/// members' cluster addresses (`member_addresses`) and VXLAN to any address (Incus applies a
/// bridge's ACL to traffic into the member too, the gateway included). Everything else is left
/// to the default actions (egress allowed, ingress rejected).
pub fn project_acl_rules(member_addresses: &[String]) -> Vec<AclRule> {
    let mut out = vec![AclRule {
        action: "reject",
        destination: String::new(),
        protocol: "udp",
        destination_port: VXLAN_PORTS.to_string(),
        description: "incus-compose: no VXLAN from containers (the members' tunnels)",
    }];
    let mut members: Vec<&String> = member_addresses.iter().filter(|a| !a.is_empty()).collect();
    members.sort();
    members.dedup();
    if !members.is_empty() {
        out.push(AclRule {
            action: "reject",
            destination: members
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
            protocol: "",
            destination_port: String::new(),
            description: "incus-compose: the cluster members' addresses are out of reach",
        });
    }
    out
}

/// The host part of a member's API URL (`https://100.64.1.11:8443` -> `100.64.1.11`), when it
/// is an IPv4 address.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', ':']).next()?;
    host.parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|a| a.to_string())
}

/// The ACL names in a `security.acls` value.
pub fn acl_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_project_acl_keeps_the_underlay_out_of_reach() {
        let rules = project_acl_rules(&[
            "100.64.1.12".into(),
            "100.64.1.11".into(),
            "100.64.1.11".into(),
        ]);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            (
                rules[0].action,
                rules[0].protocol,
                rules[0].destination_port.as_str()
            ),
            ("reject", "udp", "8472,4789")
        );
        assert!(rules[0].destination.is_empty(), "VXLAN to any address");
        assert_eq!(rules[1].destination, "100.64.1.11,100.64.1.12");
        assert_eq!(project_acl_rules(&[]).len(), 1);
        assert_eq!(
            url_host("https://100.64.1.11:8443").as_deref(),
            Some("100.64.1.11")
        );
        assert_eq!(url_host("https://[fd00::1]:8443"), None);
        assert!(is_project_acl("incus-compose-p", "ic1-back"));
        assert!(!is_project_acl("ic1-back-internal", "ic1-back"));
    }

    fn net(ext: Option<serde_json::Value>, opts: &[(&str, &str)], internal: bool) -> Network {
        let mut n = Network {
            internal,
            ..Default::default()
        };
        if let Some(v) = ext {
            n.extensions.insert("x-incus".into(), v);
        }
        for (k, v) in opts {
            n.driver_opts.insert(k.to_string(), v.to_string());
        }
        n
    }

    #[test]
    fn networks_nat_by_default_and_can_turn_it_off() {
        assert_eq!(egress("n", &net(None, &[], false)), Ok(true));
        assert_eq!(egress("n", &net(None, &[], true)), Ok(false), "internal");
        let off = serde_json::json!({"egress": false});
        assert_eq!(egress("n", &net(Some(off), &[], false)), Ok(false));
        assert_eq!(
            egress("n", &net(None, &[(DOCKER_MASQUERADE, "false")], false)),
            Ok(false)
        );
        assert_eq!(
            egress("n", &net(None, &[("incus.egress", "false")], false)),
            Ok(false)
        );
        let on = serde_json::json!({"egress": true});
        assert_eq!(
            egress("n", &net(Some(on), &[(DOCKER_MASQUERADE, "false")], false)),
            Ok(true),
            "x-incus wins"
        );
        let e = egress(
            "back",
            &net(Some(serde_json::json!({"egress": 3})), &[], false),
        )
        .unwrap_err();
        assert!(
            e.contains("\"back\"") && e.contains("x-incus.egress"),
            "{e}"
        );
        let e = egress("back", &net(None, &[(DOCKER_MASQUERADE, "maybe")], false)).unwrap_err();
        assert!(e.contains(DOCKER_MASQUERADE) && e.contains("maybe"), "{e}");
    }

    #[test]
    fn an_internal_network_allows_only_its_own_subnet() {
        let keys = internal_keys("ic1-back", Some("incus-compose-p"));
        assert_eq!(keys["security.acls"], "incus-compose-p,ic1-back-internal");
        assert_eq!(keys["security.acls.default.egress.action"], "reject");
        assert_eq!(
            internal_keys("ic1-back", None)["security.acls"],
            "ic1-back-internal"
        );
        let config = BTreeMap::from([("ipv4.address".to_string(), "100.100.7.1/24".to_string())]);
        assert_eq!(
            internal_acl_destination("ic1-back-internal", "ic1-back", &config).as_deref(),
            Some("100.100.7.0/24")
        );
        let config = BTreeMap::from([("ipv4.address".to_string(), "10.5.0.254/16".to_string())]);
        assert_eq!(
            internal_acl_destination("ic1-back-internal", "ic1-back", &config).as_deref(),
            Some("10.5.0.0/16")
        );
        assert_eq!(
            internal_acl_destination("incus-compose-p", "ic1-back", &config),
            None
        );
        assert_eq!(
            acl_list("a, b,,c"),
            vec!["a".to_string(), "b".into(), "c".into()]
        );
    }
}
