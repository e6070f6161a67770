//! Read-only commands (`ps`, `logs`, `stats`, `top`, `images`, `port`...) answer for the
//! replicas they can reach when a cluster member is offline, and warn once per member, naming
//! it and the replicas not reached, instead of failing as a whole (as `docker service logs`
//! did, moby#37336).
//!
//! Incus lists an instance on an offline member as a stand-in: its name and member, status
//! `Error`, no configuration (so no labels). A stand-in in the Incus project incus-compose made
//! for this compose project (its `user.incus-compose.project` key) is taken as one of its
//! replicas, its service read from its name (`web-3`, `web-3-b`: `web`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use ic_core::keys::{LABEL_PROJECT, LABEL_SERVICE, LABEL_SLOT};
use ic_core::plan::ALTERNATE_SUFFIX;
use ic_incus::{Client, Instance};

/// A replica on a member that cannot be asked now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unreached {
    pub name: String,
    pub member: String,
    /// Its service (from its name), `None` when the name does not say.
    pub service: Option<String>,
    /// Its slot (from its name).
    pub slot: Option<String>,
}

/// The project's instances, split: those Incus answered for, and those it could not reach.
#[derive(Debug, Default)]
pub struct Reached {
    pub instances: Vec<Instance>,
    pub unreached: Vec<Unreached>,
}

impl Reached {
    /// One warning per member not reached, naming the replicas it holds:
    /// `cluster member node3 is offline: web-3 not reached (the answer is for the other
    /// replicas)`.
    pub fn warnings(&self) -> Vec<String> {
        let mut by_member: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for u in &self.unreached {
            by_member.entry(&u.member).or_default().push(&u.name);
        }
        by_member
            .into_iter()
            .map(|(member, names)| {
                format!(
                    "cluster member {member} is offline or does not answer: {} not reached; the answer is for the other replicas",
                    names.join(", ")
                )
            })
            .collect()
    }

    /// Prints [`Reached::warnings`] on stderr.
    pub fn warn(&self) {
        for w in self.warnings() {
            eprintln!("warning: {w}");
        }
    }
}

/// The service and slot a replica's name says: `web-3` and `web-3-b` are slot 3 of `web`;
/// `services` (when given) are the names the service may have, e.g. its `container_name`
/// first: (container_name, service).
pub fn service_of_name(
    name: &str,
    container_names: &[(String, String)],
) -> (Option<String>, Option<String>) {
    if let Some((_, service)) = container_names.iter().find(|(c, _)| c == name) {
        return (Some(service.clone()), Some("1".into()));
    }
    let base = name.strip_suffix(ALTERNATE_SUFFIX).unwrap_or(name);
    match base.rsplit_once('-') {
        Some((service, n)) if !service.is_empty() && n.parse::<u64>().is_ok() => {
            (Some(service.to_string()), Some(n.to_string()))
        }
        _ => (None, None),
    }
}

/// The instances of compose project `compose` in Incus project `client`'s project (of
/// `services` unless empty), in service then replica order, with those on members that cannot
/// be asked apart. `container_names`: (container_name, service) of the compose file's services
/// that set one. A missing Incus project means no instances.
pub async fn project_instances(
    client: &Client,
    compose: &str,
    services: &[String],
    container_names: &[(String, String)],
    full: bool,
) -> anyhow::Result<Reached> {
    let list = match client.instances_partial(full).await {
        Ok(list) => list,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e).context("cannot list instances"),
    };
    let (stand_ins, instances): (Vec<Instance>, Vec<Instance>) =
        list.into_iter().partition(Instance::is_stand_in);
    let instances = ours_in_order(instances, compose, services);
    let mut unreached = Vec::new();
    if !stand_ins.is_empty() && ours_project(client, compose).await {
        for s in stand_ins {
            let (service, slot) = service_of_name(&s.name, container_names);
            if !services.is_empty() && !service.as_ref().is_some_and(|x| services.contains(x)) {
                continue;
            }
            unreached.push(Unreached {
                name: s.name,
                member: s.location,
                service,
                slot,
            });
        }
    }
    Ok(Reached {
        instances,
        unreached,
    })
}

/// Whether `client`'s Incus project was made by incus-compose for compose project `compose`.
async fn ours_project(client: &Client, compose: &str) -> bool {
    let Some(name) = client.project() else {
        return false;
    };
    match client.get_project(name).await {
        Ok(p) => p.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose),
        Err(_) => false,
    }
}

/// The instances of compose project `compose` (only those of `services` unless empty), in
/// service, then replica order.
pub fn ours_in_order(
    mut instances: Vec<Instance>,
    compose: &str,
    services: &[String],
) -> Vec<Instance> {
    instances.retain(|i| {
        crate::engine::is_ours(&i.config, compose)
            && !ic_core::plan::ingress::is_forwarder(&i.config)
            && (services.is_empty()
                || i.config
                    .get(LABEL_SERVICE)
                    .is_some_and(|s| services.contains(s)))
    });
    instances.sort_by_key(|i| {
        (
            i.config.get(LABEL_SERVICE).cloned(),
            i.config.get(LABEL_SLOT).and_then(|s| s.parse::<u64>().ok()),
            i.config.get(LABEL_SLOT).cloned(),
            i.name.clone(),
        )
    });
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_name_says_its_service_and_slot() {
        let none: &[(String, String)] = &[];
        assert_eq!(
            service_of_name("web-3", none),
            (Some("web".into()), Some("3".into()))
        );
        assert_eq!(
            service_of_name("my-api-12-b", none),
            (Some("my-api".into()), Some("12".into()))
        );
        assert_eq!(service_of_name("solo", none), (None, None));
        let named = [("pg".to_string(), "db".to_string())];
        assert_eq!(
            service_of_name("pg", &named),
            (Some("db".into()), Some("1".into()))
        );
    }

    #[test]
    fn one_warning_per_member_names_it_and_its_replicas() {
        let u = |name: &str, member: &str| Unreached {
            name: name.into(),
            member: member.into(),
            service: Some("web".into()),
            slot: None,
        };
        let r = Reached {
            instances: Vec::new(),
            unreached: vec![u("web-3", "node3"), u("db-1", "node3"), u("web-5", "node4")],
        };
        let w = r.warnings();
        assert_eq!(w.len(), 2);
        assert!(
            w[0].starts_with("cluster member node3 is offline"),
            "{}",
            w[0]
        );
        assert!(w[0].contains("web-3, db-1 not reached"), "{}", w[0]);
        assert!(w[1].contains("node4") && w[1].contains("web-5"), "{}", w[1]);
    }
}
