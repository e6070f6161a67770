//! Service names and network aliases in DNS.
//!
//! Every bridge incus-compose makes runs Incus's dnsmasq, which already answers for the
//! instances on it (`web-1`, `web-1.incus`). For the names compose users reach each other by —
//! the service name and the `aliases` of the service on that network — the bridge gets
//! `raw.dnsmasq` CNAME records pointing at the service's first replica (`db` -> `db-1`, or the
//! `container_name`). On one server that is what docker compose resolves. `mode: global`
//! services have no fixed first replica and get no record (their instances' own names resolve).
//! Networks spanning a cluster get `host-record`s for every replica instead
//! ([`names_by_network`], see [`super::span`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ic_compose::model::{DeployMode, Network, Project};
use sha2::{Digest, Sha256};

use super::naming;

/// The domain Incus's dnsmasq serves instance names under (bridge `dns.domain` default).
pub(crate) const DOMAIN: &str = "incus";

/// For each compose network key: `(name, target instance)` pairs, sorted and deduplicated.
pub fn service_names(project: &Project) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, service) in &project.services {
        if service.network_mode.is_some() {
            continue;
        }
        if matches!(
            service.deploy.as_ref().map(|d| d.mode),
            Some(DeployMode::Global | DeployMode::GlobalJob)
        ) {
            continue;
        }
        let target = match &service.container_name {
            Some(c) => naming::map_compose_name(c),
            None => naming::instance_name(&naming::map_compose_name(name), "1"),
        };
        for (key, opts) in &service.networks {
            let mut names = vec![name.clone()];
            if let Some(o) = opts {
                names.extend(o.aliases.iter().cloned());
            }
            let entry = out.entry(key.clone()).or_default();
            for n in names {
                // A target outside the DNS charset (a hostile `container_name` the loader's
                // checks missed) would break or extend the dnsmasq line: never written.
                if is_dns_name(&n) && n != target && is_dns_name(&target) {
                    entry.push((n, target.clone()));
                }
            }
        }
    }
    for pairs in out.values_mut() {
        pairs.sort();
        // dnsmasq allows one CNAME per name: the first service (in name order) keeps it.
        pairs.dedup_by(|b, a| a.0 == b.0);
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// For each compose network key: `(name, service)` pairs, the service names and `aliases` of
/// every service on it (global ones included), sorted; used by spanning bridges, whose records
/// give a name every replica's address (see [`super::span`]).
pub fn names_by_network(project: &Project) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, service) in &project.services {
        if service.network_mode.as_deref() == Some("none") {
            continue;
        }
        for (key, opts) in &service.networks {
            let entry = out.entry(key.clone()).or_default();
            let aliases = opts.iter().flat_map(|o| o.aliases.iter());
            for n in std::iter::once(name).chain(aliases) {
                if is_dns_name(n) {
                    entry.push((n.clone(), name.clone()));
                }
            }
        }
    }
    for pairs in out.values_mut() {
        pairs.sort();
        pairs.dedup();
    }
    out
}

/// The `raw.dnsmasq` text for a network's pairs: `cname=db,db.incus,db-1` per line.
pub fn raw_dnsmasq(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(n, t)| format!("cname={n},{n}.{DOMAIN},{t}\n"))
        .collect()
}

/// A name dnsmasq can serve: DNS labels of letters, digits and `-`, not starting or ending
/// with `-` (compose allows `_` in service names; those keep resolving through their instances).
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

// Member resolvers (the default on a spanning bridge, `x-incus: {names: resolver}`;
// `src/engine/names.rs`):
// every member runs a resolver container of the project, reached by its routed NIC at the
// same address on every member ([`resolver_address`]), so the bridge's dnsmasq (its config
// the same on every member) forwards names to the member's own resolver, one port per network
// ([`resolver_port`]). The forwarding is written once, with the network; the records are a
// file pushed into each resolver ([`resolver_hosts`]): a change restarts nothing and needs no
// member but the resolver's own.

/// Whether compose network `key`, a spanning bridge, serves its names from the member
/// resolvers (`x-incus: {names: resolver}`, the default) or from records in the bridge's
/// `raw.dnsmasq` (`x-incus: {names: dnsmasq}`: every record change restarts dnsmasq and the
/// tunnels on every member and needs every member online).
pub fn wants_resolver(key: &str, net: &Network) -> Result<bool, String> {
    match net.extensions.get("x-incus").and_then(|x| x.get("names")) {
        None => Ok(true),
        Some(v) => match v.as_str() {
            Some("resolver") => Ok(true),
            Some("dnsmasq") => Ok(false),
            _ => Err(format!(
                "network {key:?}: x-incus.names must be \"resolver\" or \"dnsmasq\", got {v}"
            )),
        },
    }
}

/// The address of Incus project `incus_project`'s resolver on every member: a /32 in
/// 100.127.0.0/16 derived from the project's name (a host route to the resolver's routed NIC,
/// the same on every member).
pub fn resolver_address(incus_project: &str) -> Ipv4Addr {
    let h = Sha256::digest(incus_project.as_bytes());
    Ipv4Addr::new(100, 127, h[0], 1 + h[1] % 254)
}

/// The resolver port of compose network `key` (one table per network).
pub fn resolver_port(key: &str) -> u16 {
    let h = Sha256::digest(key.as_bytes());
    20000 + (u16::from_be_bytes([h[0], h[1]]) % 40000)
}

/// The `raw.dnsmasq` of a spanning bridge whose names the resolvers serve: DHCP only for
/// known instances (and no router when `internal`), `.incus` and unqualified names not known
/// locally forwarded to the member's resolver. Never changes once written.
pub fn resolver_dnsmasq(internal: bool, address: Ipv4Addr, port: u16) -> String {
    let mut out = String::from("dhcp-ignore=tag:!known\n");
    if internal {
        out.push_str("dhcp-option=3\n");
    }
    out.push_str(&format!(
        "server=/{DOMAIN}/{address}#{port}\nserver=//{address}#{port}\n"
    ));
    out
}

/// A replica as the resolvers see it: its instance name, service and address on each network
/// (by compose key).
#[derive(Debug, Clone)]
pub struct NamedReplica {
    pub name: String,
    pub service: String,
    pub addresses: BTreeMap<String, Ipv4Addr>,
}

/// A resolver network: compose key, port, its `(name, service)` pairs.
pub type ResolverNet = (String, u16, Vec<(String, String)>);

/// The resolvers' file: for each resolver network (key, port, its `(name, service)` pairs),
/// a line per replica on it, naming the replica and its service's names (each plain and under
/// [`DOMAIN`]), then the end line the resolver waits for. `serving`: replicas in their
/// names (the others keep their own name only).
pub fn resolver_hosts(
    networks: &[ResolverNet],
    replicas: &[NamedReplica],
    serving: &dyn Fn(&NamedReplica) -> bool,
) -> String {
    let mut lines = Vec::new();
    for (key, port, names) in networks {
        for r in replicas {
            let Some(a) = r.addresses.get(key) else {
                continue;
            };
            let mut all = vec![r.name.clone()];
            if serving(r) {
                all.extend(
                    names
                        .iter()
                        .filter(|(_, s)| *s == r.service)
                        .map(|(n, _)| n.clone()),
                );
            }
            let words: Vec<String> = all
                .iter()
                .filter(|n| is_dns_name(n))
                .flat_map(|n| [n.clone(), format!("{n}.{DOMAIN}")])
                .collect();
            if !words.is_empty() {
                lines.push(format!("{port} {a} {}", words.join(" ")));
            }
        }
    }
    lines.sort();
    lines.push("# end".into());
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Project {
        let o = ic_compose::LoadOptions {
            files: vec!["/p/compose.yaml".into()],
            working_dir: "/p".into(),
            interpolate: true,
            ..Default::default()
        };
        let fs = ic_compose::MemFs::default().with("/p/compose.yaml", text);
        ic_compose::load_with(&o, &fs).unwrap_or_else(|e| panic!("load failed:\n{e}"))
    }

    #[test]
    fn service_names_and_aliases_point_at_the_first_replica_on_each_network() {
        let p = load(
            r#"
name: shop
services:
  web:
    image: testapp/v1
    deploy: {replicas: 3}
    networks:
      front: {aliases: [www, shop.example]}
      back: {}
  db:
    image: busybox
    container_name: the_db
    networks: [back]
  agent:
    image: busybox
    deploy: {mode: global}
    networks: [back]
  solo:
    image: busybox
    network_mode: none
networks:
  front: {}
  back: {}
"#,
        );
        let names = service_names(&p);
        assert_eq!(
            names["front"],
            vec![
                ("shop.example".to_string(), "web-1".to_string()),
                ("web".into(), "web-1".into()),
                ("www".into(), "web-1".into()),
            ]
        );
        assert_eq!(
            names["back"],
            vec![
                ("db".to_string(), "the-db".to_string()),
                ("web".into(), "web-1".into()),
            ]
        );
        assert_eq!(
            raw_dnsmasq(&names["back"]),
            "cname=db,db.incus,the-db\ncname=web,web.incus,web-1\n"
        );
    }

    #[test]
    fn names_dnsmasq_cannot_serve_are_left_out() {
        assert!(is_dns_name("db"));
        assert!(is_dns_name("shop.example"));
        assert!(!is_dns_name("my_db"));
        assert!(!is_dns_name("-db"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn the_resolver_file_names_each_replica_and_gives_service_names_only_to_serving_ones() {
        let nets = vec![
            (
                "front".to_string(),
                30000,
                vec![
                    ("web".to_string(), "web".to_string()),
                    ("www".into(), "web".into()),
                ],
            ),
            (
                "back".to_string(),
                21000,
                vec![("db".to_string(), "db".to_string())],
            ),
        ];
        let r = |name: &str, service: &str, nets: &[(&str, [u8; 4])]| NamedReplica {
            name: name.into(),
            service: service.into(),
            addresses: nets
                .iter()
                .map(|(k, a)| (k.to_string(), Ipv4Addr::from(*a)))
                .collect(),
        };
        let replicas = vec![
            r("web-1", "web", &[("front", [10, 0, 0, 2])]),
            r("web-2", "web", &[("front", [10, 0, 0, 3])]),
            r("db-1", "db", &[("back", [10, 1, 0, 2])]),
        ];
        let p = 30000;
        let text = resolver_hosts(&nets, &replicas, &|x| x.name != "web-2");
        assert_eq!(
            text,
            format!(
                "21000 10.1.0.2 db-1 db-1.incus db db.incus\n\
                 {p} 10.0.0.2 web-1 web-1.incus web web.incus www www.incus\n\
                 {p} 10.0.0.3 web-2 web-2.incus\n# end\n"
            )
        );
        assert_eq!(
            resolver_dnsmasq(true, Ipv4Addr::new(100, 127, 1, 2), 21000),
            "dhcp-ignore=tag:!known\ndhcp-option=3\nserver=/incus/100.127.1.2#21000\nserver=//100.127.1.2#21000\n"
        );
        let a = resolver_address("shop");
        assert_eq!(a, resolver_address("shop"));
        assert_eq!(a.octets()[..2], [100, 127]);
        assert!(a.octets()[3] != 0 && a.octets()[3] != 255);
        assert!((20000..60000).contains(&resolver_port("front")));
    }
}
