//! Observe: everything the planner needs to know about the server and the project.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use ic_core::keys::LABEL_PROJECT;
use ic_core::plan::{Observed, ObservedInstance, ObservedNetwork, ObservedVolume, ServerFacts};
use ic_core::schedule::Member;
use ic_incus::{Client, Request, api_path, extensions};

/// What [`observe`] found.
pub struct Observation {
    pub facts: ServerFacts,
    pub observed: Observed,
    /// The Incus project that holds the networks (`default` unless the project has
    /// `features.networks=true`).
    pub network_project: String,
    /// Image remotes of the incus CLI configuration: name -> (address, protocol).
    pub remotes: BTreeMap<String, (String, String)>,
    /// OCI images in the image store: the newest copy per image key
    /// (`ic_core::plan::oci::image_key`), for pull policies.
    pub oci_cached: BTreeMap<String, crate::engine::oci::CachedImage>,
    /// The members' cluster links this observation probed, as the Incus project should
    /// record them ([`super::spanning::LINKS_KEY`]) when that differs from what it holds;
    /// `None`: nothing to record (not probed, or the record is up to date).
    pub links_to_record: Option<String>,
    /// The project's member resolvers of the service names (`engine::names`): their members,
    /// those running or on a member that does not answer (stand-ins).
    pub resolvers_up: BTreeSet<String>,
}

fn member_of(m: &ic_incus::ClusterMember, instances: u32) -> Member {
    Member {
        name: m.server_name.clone(),
        online: m.is_online() || m.status.eq_ignore_ascii_case("evacuated"),
        evacuated: m.status.eq_ignore_ascii_case("evacuated"),
        manual: m.config.get("scheduler.instance").map(String::as_str) == Some("manual"),
        draining: false,
        roles: m.roles.clone(),
        architecture: m.architecture.clone(),
        failure_domain: m.failure_domain.clone(),
        labels: m.labels(),
        free_millicpus: None,
        free_memory: None,
        instances,
    }
}

/// A standalone server as the one member constraints are checked against: its name, its
/// architecture, its `user.*` server config as labels, role `manager`.
pub fn standalone_member(info: &ic_incus::ServerInfo) -> Member {
    let mut m = Member::standalone(info.environment.server_name.clone());
    m.architecture = info.environment.kernel_architecture.clone();
    m.labels = server_labels(info);
    m
}

/// The `user.*` keys of a standalone server's config, without the prefix.
pub fn server_labels(info: &ic_incus::ServerInfo) -> BTreeMap<String, String> {
    info.config
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("user.")?;
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((k.to_string(), v))
        })
        .collect()
}

/// How long [`observe`] reads the cluster members again while the member answering lists
/// itself as offline (see [`stale_view`]).
const STALE_MEMBERS_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

/// Whether Incus's member list is stale: the member that `answering` names (the one serving
/// the request) lists itself as offline. A member that answers is not offline; its heartbeat
/// records have not been refreshed yet. Incus 7.0 here listed every member offline for a while
/// right after a test in which one member refused another's connections (the cause is not
/// known), and Incus 6.0 did after a member left.
/// Incus refuses to create instances on members it lists as offline, so placing on that view
/// would fail.
fn stale_view(members: &[ic_incus::ClusterMember], answering: &str) -> bool {
    members
        .iter()
        .any(|m| m.server_name == answering && m.status.eq_ignore_ascii_case("offline"))
}

/// The cluster members. With `settle`, a stale list (see
/// [`stale_view`]) is read again each second for up to [`STALE_MEMBERS_WAIT`], saying so once.
/// After that, the last list is used as it is.
async fn current_members(
    base: &Client,
    answering: &str,
    settle: bool,
) -> anyhow::Result<Vec<ic_incus::ClusterMember>> {
    let deadline = std::time::Instant::now() + STALE_MEMBERS_WAIT;
    let mut said = false;
    loop {
        let members = base
            .cluster_members()
            .await
            .context("cannot list cluster members")?;
        if !settle || !stale_view(&members, answering) || std::time::Instant::now() >= deadline {
            return Ok(members);
        }
        if !said {
            eprintln!(
                "Incus lists {answering}, the member answering, as offline: its heartbeat records are stale; reading the members again for up to {} s",
                STALE_MEMBERS_WAIT.as_secs()
            );
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Observe the server and Incus project `incus_project`. `need_images`: also list images and
/// the storage pool, find the members' cluster links (spanning networks), and wait for a stale
/// member list to be refreshed (`up` and `scale`, which place replicas; `pull` asks for images
/// and so waits too, which costs it nothing unless the list is stale).
///
/// The members' links come from the record the Incus project keeps of them
/// ([`super::spanning::LINKS_KEY`]) when it covers exactly the online members; else they are
/// probed (a few requests per member). [`observe_fresh`] always probes. So the requests an
/// observation makes do not grow with the number of instances or (once recorded) members.
pub async fn observe(
    base: &Client,
    incus_project: &str,
    need_images: bool,
) -> anyhow::Result<Observation> {
    observe_with(base, incus_project, need_images, false, true).await
}

/// [`observe`] for `up`'s read-only plan: with `storage` false, the storage facts (the
/// `default` profile's root pool, the pools, the project's volumes) are not read, for a
/// project whose plan does not depend on them (`ic_core::plan::storage::needs_facts`): three
/// requests fewer, each answered with a `used_by` list that grows with the instances. The
/// plan under the lock observes everything again.
pub async fn observe_planning(
    base: &Client,
    incus_project: &str,
    storage: bool,
) -> anyhow::Result<Observation> {
    observe_with(base, incus_project, true, false, storage).await
}

/// [`observe`] with the members' cluster links probed whatever the Incus project records
/// (what a run planning under the lock uses before it changes anything).
pub async fn observe_fresh(base: &Client, incus_project: &str) -> anyhow::Result<Observation> {
    observe_with(base, incus_project, true, true, true).await
}

async fn observe_with(
    base: &Client,
    incus_project: &str,
    need_images: bool,
    probe: bool,
    storage: bool,
) -> anyhow::Result<Observation> {
    // Independent reads run at once: the server and the project, then everything else that
    // does not depend on another answer (one round trip each instead of one after another).
    let (info, project) = tokio::join!(base.server(), base.get_project(incus_project));
    let info = info.context("cannot read the Incus server's information")?;
    let clustered = info.is_clustered();
    let project = match project {
        Ok(p) => Some(p),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e).context(format!("cannot read Incus project {incus_project:?}")),
    };
    let pc = base.with_project(incus_project);
    let feature = |key: &str| {
        project
            .as_ref()
            .and_then(|p| p.config.get(key))
            .map(String::as_str)
    };
    let network_project = if feature("features.networks") == Some("true") {
        incus_project.to_string()
    } else {
        "default".to_string()
    };
    let image_project = if feature("features.images") == Some("true") {
        incus_project
    } else {
        "default"
    };
    // One instance list: every project's (members' instance counts), the project's taken
    // from it.
    let (all, cluster_members, incus_networks, storage_pool, pools, images) = tokio::join!(
        async {
            if clustered {
                base.instances_all_projects()
                    .await
                    .context("cannot list instances")
            } else {
                Ok(Vec::new())
            }
        },
        async {
            if clustered {
                current_members(base, &info.environment.server_name, need_images).await
            } else {
                Ok(Vec::new())
            }
        },
        async {
            base.with_project(&network_project)
                .networks()
                .await
                .context("cannot list networks")
        },
        async {
            if storage {
                default_pool(base).await
            } else {
                Ok(String::new())
            }
        },
        async {
            if storage {
                base.storage_pools()
                    .await
                    .context("cannot list storage pools")
            } else {
                Ok(Vec::new())
            }
        },
        async {
            if need_images {
                base.with_project(image_project)
                    .images()
                    .await
                    .context("cannot list images")
                    .map(Some)
            } else {
                Ok(None)
            }
        },
    );
    let (all, cluster_members, incus_networks, storage_pool, pools, images) = (
        all?,
        cluster_members?,
        incus_networks?,
        storage_pool?,
        pools?,
        images?,
    );
    let members: Vec<Member> = if clustered {
        let mut count: BTreeMap<&str, u32> = BTreeMap::new();
        for i in &all {
            *count.entry(i.location.as_str()).or_default() += 1;
        }
        cluster_members
            .iter()
            .map(|m| member_of(m, count.get(m.server_name.as_str()).copied().unwrap_or(0)))
            .collect()
    } else {
        vec![standalone_member(&info)]
    };
    let standalone_name = info.environment.server_name.clone();
    let (network_facts, links_to_record) = super::spanning::network_facts(
        base,
        &info,
        &cluster_members,
        &incus_networks,
        need_images,
        project
            .as_ref()
            .and_then(|p| p.config.get(LABEL_PROJECT))
            .map_or(incus_project, String::as_str),
        super::spanning::Links {
            recorded: project
                .as_ref()
                .and_then(|p| p.config.get(super::spanning::LINKS_KEY))
                .map(String::as_str),
            probe,
        },
    )
    .await;
    let networks = incus_networks
        .into_iter()
        .map(|n| ObservedNetwork {
            name: n.name,
            managed: n.managed,
            config: n.config,
            status: n.status,
        })
        .collect();

    let mut instances = Vec::new();
    let mut resolvers_up = BTreeSet::new();
    let mut volumes = Vec::new();
    if project.is_some() {
        // Instances on offline members are listed as stand-ins (no configuration): kept so,
        // the planner recognises them by name (`plan::diff`).
        let offline: Vec<String> = members
            .iter()
            .filter(|m: &&Member| !m.online)
            .map(|m| m.name.clone())
            .collect();
        let listed = if clustered {
            pc.instances_in(&all, &offline).await
        } else {
            pc.instances_with_offline(&offline).await
        };
        instances = listed
            .with_context(|| format!("cannot list instances of Incus project {incus_project:?}"))?
            .into_iter()
            // The member resolvers are no replicas (see `engine::names`).
            .filter(|i| {
                let resolver = super::names::is_resolver(&i.name, &i.config);
                if resolver && (i.is_running() || i.is_stand_in()) {
                    resolvers_up.insert(i.location.clone());
                }
                !resolver
            })
            .map(|i| ObservedInstance {
                running: i.is_running(),
                name: i.name,
                location: if clustered {
                    i.location
                } else {
                    standalone_name.clone()
                },
                config: i.config,
            })
            .collect();
        let listed =
            futures_util::future::join_all(pools.iter().map(|pool| pc.storage_volumes(&pool.name)))
                .await;
        for (pool, vols) in pools.iter().zip(listed) {
            let shared = ic_core::plan::storage::is_shared_driver(&pool.driver);
            let vols =
                vols.with_context(|| format!("cannot list volumes of pool {:?}", pool.name))?;
            volumes.extend(vols.into_iter().filter(|v| v.kind == "custom").map(|v| {
                ObservedVolume {
                    pool: pool.name.clone(),
                    name: v.name,
                    // One volume for the whole cluster: no member.
                    location: if clustered && shared {
                        String::new()
                    } else if clustered && !v.location.is_empty() && v.location != "none" {
                        v.location
                    } else {
                        standalone_name.clone()
                    },
                    config: v.config,
                }
            }));
        }
    }

    let mut facts = ServerFacts {
        version: info.server_version().to_string(),
        digest_key: project
            .as_ref()
            .and_then(|p| p.config.get(ic_core::keys::DIGEST_KEY))
            .and_then(|k| ic_core::plan::DigestKey::from_hex(k)),
        oci: info.has_extension(extensions::INSTANCE_OCI),
        storage_pool,
        pools: pools
            .iter()
            .map(|p| (p.name.clone(), p.driver.clone()))
            .collect(),
        network: network_facts,
        ..Default::default()
    };
    let mut remotes = BTreeMap::new();
    let mut oci_cached = BTreeMap::new();
    if let Some(images) = images {
        let mut aliases = BTreeSet::new();
        for img in &images {
            facts.image_fingerprints.push(img.fingerprint.clone());
            for a in &img.aliases {
                aliases.insert(a.name.clone());
                facts
                    .image_targets
                    .insert(a.name.clone(), img.fingerprint.clone());
            }
        }
        let no_config = BTreeMap::new();
        let project_config = project.as_ref().map_or(&no_config, |p| &p.config);
        oci_cached = crate::engine::oci::cached_oci(&images, project_config);
        for (key, c) in &oci_cached {
            facts
                .image_targets
                .insert(key.clone(), c.fingerprint.clone());
        }
        facts.image_aliases = aliases;
        if let Ok(cfg) = ic_incus::config::LoadedConfig::load(&ic_incus::config::ProcessEnv) {
            for (name, r) in cfg.config.remotes {
                if name != "local" {
                    if r.protocol == "oci" {
                        facts.oci_remotes.insert(name.clone(), r.addr.clone());
                    }
                    remotes.insert(name.clone(), (r.addr.clone(), r.protocol.clone()));
                    facts.remotes.insert(name);
                }
            }
        }
    }
    Ok(Observation {
        facts,
        observed: Observed {
            project_exists: project.is_some(),
            project_config: project.map(|p| p.config).unwrap_or_default(),
            members,
            clustered,
            instances,
            networks,
            volumes,
        },
        network_project,
        remotes,
        oci_cached,
        links_to_record,
        resolvers_up,
    })
}

/// The pool of the `default` profile's root disk (the pool named volumes go to).
async fn default_pool(base: &Client) -> anyhow::Result<String> {
    let profile: serde_json::Value = base
        .with_project("default")
        .send(Request::get(api_path(&["profiles", "default"])))
        .await
        .context("cannot read the default profile")?;
    let from_profile = profile
        .get("devices")
        .and_then(|d| d.as_object())
        .and_then(|devices| {
            devices.values().find_map(|d| {
                (d.get("type")?.as_str()? == "disk" && d.get("path")?.as_str()? == "/")
                    .then(|| d.get("pool")?.as_str().map(str::to_string))
                    .flatten()
            })
        });
    match from_profile {
        Some(p) => Ok(p),
        None => {
            let pools = base
                .storage_pools()
                .await
                .context("cannot list storage pools")?;
            pools.into_iter().next().map(|p| p.name).ok_or_else(|| {
                anyhow::anyhow!(
                    "the Incus server has no storage pool; create one (`incus storage create`)"
                )
            })
        }
    }
}

/// Whether an object carries compose project `compose`'s label.
pub fn is_ours(config: &BTreeMap<String, String>, compose: &str) -> bool {
    config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_compose::model::placement::Constraint;

    #[test]
    fn a_member_list_is_stale_when_the_member_answering_lists_itself_offline() {
        let member = |name: &str, status: &str| ic_incus::ClusterMember {
            server_name: name.into(),
            status: status.into(),
            ..Default::default()
        };
        let all_offline = [member("node1", "Offline"), member("node2", "Offline")];
        assert!(stale_view(&all_offline, "node1"));
        assert!(stale_view(&all_offline, "node2"));
        // Another member offline is news, not staleness.
        let one_offline = [member("node1", "Online"), member("node2", "Offline")];
        assert!(!stale_view(&one_offline, "node1"));
        // Evacuated or blocked members answer and are listed as they are.
        assert!(!stale_view(&[member("node1", "Evacuated")], "node1"));
        assert!(!stale_view(&[member("node1", "Blocked")], "node1"));
        // A member that is not in the list says nothing.
        assert!(!stale_view(&all_offline, "node3"));
    }

    #[test]
    fn a_standalone_server_is_one_member_with_its_user_config_as_labels() {
        let info: ic_incus::ServerInfo = serde_json::from_value(serde_json::json!({
            "config": {"user.storage": "ssd", "user.zone": "a", "user.weight": 3,
                       "core.https_address": "[::]:8443"},
            "environment": {"server_name": "laptop", "server_clustered": false,
                            "kernel_architecture": "x86_64"}
        }))
        .unwrap();
        let m = standalone_member(&info);
        assert_eq!(m.name, "laptop");
        assert!(m.online && !m.evacuated && !m.manual);
        assert_eq!(
            m.labels,
            BTreeMap::from([
                ("storage".to_string(), "ssd".to_string()),
                ("weight".into(), "3".into()),
                ("zone".into(), "a".into()),
            ])
        );
        let holds = |c: &str| m.satisfies(&c.parse::<Constraint>().unwrap());
        assert!(holds("node.labels.storage == ssd"));
        assert!(holds("engine.labels.zone == a"));
        assert!(holds("node.hostname == laptop"));
        assert!(holds("node.role == manager"));
        assert!(holds("node.platform.arch == amd64"));
        assert!(!holds("node.labels.storage == hdd"));
        assert!(holds("node.labels.rack != r1"));
    }
}
