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
