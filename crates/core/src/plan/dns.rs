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

use ic_compose::model::{DeployMode, Project};

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
}
