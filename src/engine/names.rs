//! Member resolvers: the service names of spanning bridges with `x-incus: {names: resolver}`
//! (see `ic_core::plan::dns::resolver_dnsmasq`), kept without writing any network.
//!
//! Every member runs one resolver container of the Incus project (`ic--names-<member>`,
//! labelled [`LABEL_RESOLVER`], not a replica: the planner never sees it): an empty container
//! (`source: none`) whose init is `ic-resolver` (`src/resolver/ic-resolver.rs`, built static by
//! `build.rs` and pushed here), reached through a routed NIC at the project's resolver address,
//! the same on every member, so each bridge's dnsmasq forwards to its own member's resolver.
//! The records are one file pushed into every resolver through the Incus file API
//! ([`publish`]): no network config changes, nothing restarts, and a member that is down only
//! misses its own copy (it gets the current one with the next push after it is back).
//!
//! A replica is in its service names while it runs, unless it is leaving: [`leave`] (from
//! `execute::before_stop`, before any replica is stopped) takes it out of every resolver and
//! [`join`] (from `execute::after_ready`) puts it back. Under `watch`, a replica its
//! healthcheck prober finds unhealthy leaves too, until a probe passes again or it restarts
//! ([`set_health`]). Who is leaving or unhealthy is this process's knowledge; once stopped,
//! a replica is out by its state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ic_core::keys::{LABEL_NETWORK, LABEL_PROJECT, LABEL_RETIRED, LABEL_SERVICE};
use ic_core::plan::dns::{self, NamedReplica};
use ic_core::plan::span;
use ic_incus::{FileOptions, InstanceSource, InstancesPost};

use super::execute::Target;

pub use ic_core::keys::LABEL_RESOLVER;
/// Resolver containers are named this, then the member.
const PREFIX: &str = "ic--names-";
/// The resolver binary.
static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ic-resolver"));
/// How long a replica that left its names keeps running before its stop begins: a client that
/// resolved it just before gets its answer.
pub const LEAVE_SETTLE: Duration = Duration::from_millis(1000);
/// A push to a resolver that takes longer is given up (its member is in trouble).
const PUSH_LIMIT: Duration = Duration::from_secs(10);
/// Making a resolver that takes longer is given up (tried again by the next run).
const MAKE_LIMIT: Duration = Duration::from_secs(60);

/// One resolver network: compose key, port, its `(name, service)` pairs.
type Net = dns::ResolverNet;

/// Per Incus project: its resolver networks as last planned; replicas leaving; replicas
/// found unhealthy by `watch`'s prober, with the start (`last_used_at`) they were found
/// unhealthy in; the file last pushed to each resolver.
#[derive(Default)]
struct Known {
    nets: BTreeMap<String, Vec<Net>>,
    leaving: BTreeSet<(String, String)>,
    unhealthy: BTreeMap<(String, String), String>,
    pushed: BTreeMap<(String, String), String>,
}

static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(Mutex::default);

/// One publication at a time in this process (each reads what runs and who leaves, then
/// pushes): a push never lands after a later one, so a replica that left is never named
/// again by a file read before it left (`ensure` runs beside the executor's steps).
static PUBLISHING: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(Default::default);

fn known() -> std::sync::MutexGuard<'static, Known> {
    KNOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether instance `name` (with `config`, empty for a stand-in) is a resolver container.
pub fn is_resolver(name: &str, config: &BTreeMap<String, String>) -> bool {
    config.contains_key(LABEL_RESOLVER) || name.starts_with(PREFIX)
}

/// The resolver networks of what `t` deploys (remembered for the calls that have no plan),
/// else as remembered, else read from Incus (names: the service names only).
async fn networks(t: &Target) -> Vec<Net> {
    let project = t.project.project().unwrap_or("default").to_string();
    if let Some(d) = &t.desired {
        let nets: Vec<Net> = d
            .networks
            .iter()
            .filter(|n| n.resolver && !n.external)
            .map(|n| (n.key.clone(), dns::resolver_port(&n.key), n.names.clone()))
            .collect();
        known().nets.insert(project, nets.clone());
        return nets;
    }
    if let Some(n) = known().nets.get(&project) {
        return n.clone();
    }
    let address = dns::resolver_address(&project);
    let Ok(all) = t.networks.networks().await else {
        return Vec::new();
    };
    let forwarded = format!("server=//{address}#");
    let nets: Vec<Net> = all
        .iter()
        .filter(|n| {
            n.config
                .get("raw.dnsmasq")
                .is_some_and(|r| r.contains(&forwarded))
        })
        .filter_map(|n| n.config.get(LABEL_NETWORK).cloned())
        .map(|key| (key.clone(), dns::resolver_port(&key), Vec::new()))
        .collect();
    known().nets.insert(project, nets.clone());
    nets
}

/// The resolvers' file now (`instances`: the project's, as just listed): running replicas,
/// each in its service names unless leaving.
fn hosts_file(t: &Target, nets: &[Net], instances: &[ic_incus::Instance]) -> String {
    let project = t.project.project().unwrap_or("default").to_string();
    let leaving: BTreeSet<String> = {
        let mut k = known();
        // One that left and has stopped (or is gone) is out by its state: forgotten, so that a
        // replica made again under its name (a watch move, a stop-first slot) is named again.
        k.leaving.retain(|(p, n)| {
            *p != project || instances.iter().any(|i| &i.name == n && i.is_running())
        });
        // Unhealthy in a start that is over (it restarted, stopped or is gone): out of the set.
        k.unhealthy.retain(|(p, n), started| {
            *p != project
                || instances
                    .iter()
                    .any(|i| &i.name == n && i.is_running() && &i.last_used_at == started)
        });
        k.leaving
            .iter()
            .chain(k.unhealthy.keys())
            .filter(|(p, _)| *p == project)
            .map(|(_, n)| n.clone())
            .collect()
    };
    let mut nets = nets.to_vec();
    let mut replicas = Vec::new();
    for i in instances {
        let Some(service) = i.config.get(LABEL_SERVICE) else {
            continue;
        };
        if !i.config.contains_key(LABEL_PROJECT) || is_resolver(&i.name, &i.config) {
            continue;
        }
        if !i.is_running() || i.config.contains_key(LABEL_RETIRED) {
            continue;
        }
        let addresses: BTreeMap<String, Ipv4Addr> = nets
            .iter()
            .filter_map(|(key, _, _)| {
                let a = i.config.get(&span::address_label(key))?.parse().ok()?;
                Some((key.clone(), a))
            })
            .collect();
        // Read from Incus without a plan: each service's own name at least.
        for (key, _, names) in &mut nets {
            if addresses.contains_key(key) && !names.iter().any(|(_, s)| s == service) {
                names.push((service.clone(), service.clone()));
            }
        }
        replicas.push(NamedReplica {
            name: i.name.clone(),
            service: service.clone(),
            addresses,
        });
    }
    let serving = |r: &NamedReplica| !leaving.contains(&r.name);
    dns::resolver_hosts(&nets, &replicas, &serving)
}

/// Pushes the current file into every resolver that runs (those whose copy differs). A
/// resolver that cannot be reached (its member is down) is reported and skipped; instances
/// on a member that does not answer are read as Incus lists them (not running), so a change
/// needs no member but the resolvers' own. Returns how
/// many resolvers run.
pub async fn publish(t: &Target) -> anyhow::Result<usize> {
    let nets = networks(t).await;
    if nets.is_empty() {
        return Ok(0);
    }
    let project = t.project.project().unwrap_or("default").to_string();
    let _one = PUBLISHING.lock().await;
    // One listing gives both the replicas to name and the resolvers to push to.
    let instances = t.project.instances_partial(false).await?;
    let text = hosts_file(t, &nets, &instances);
    let resolvers: Vec<String> = instances
        .iter()
        .filter(|i| i.config.contains_key(LABEL_RESOLVER) && i.is_running())
        .map(|i| i.name.clone())
        .collect();
    let pushes = resolvers.iter().filter_map(|r| {
        let key = (project.clone(), r.clone());
        if known().pushed.get(&key) == Some(&text) {
            return None;
        }
        let text = text.clone();
        Some(async move {
            let plain = FileOptions::default();
            let push = t
                .project
                .push_file(r, "/hosts", text.clone().into_bytes(), &plain);
            let done = match tokio::time::timeout(PUSH_LIMIT, push).await {
                Ok(d) => d.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer in {PUSH_LIMIT:?}")),
            };
            match done {
                Ok(()) => {
                    known().pushed.insert(key, text);
                }
                Err(e) => {
                    known().pushed.remove(&key);
                    eprintln!("warning: service names not updated on resolver {r}: {e}");
                }
            }
        })
    });
    futures_util::future::join_all(pushes).await;
    Ok(resolvers.len())
}

/// Takes replica `name` out of its service names (every resolver); true when it was serving
/// on a resolver network (the caller then lets [`LEAVE_SETTLE`] pass before stopping it).
pub async fn leave(t: &Target, name: &str) -> bool {
    let nets = networks(t).await;
    if nets.is_empty() {
        return false;
    }
    let project = t.project.project().unwrap_or("default").to_string();
    known().leaving.insert((project, name.to_string()));
    // Only a running replica with an address on a resolver network was in a name.
    let named = t.project.instance(name).await.is_ok_and(|i| {
        i.is_running()
            && nets
                .iter()
                .any(|(key, _, _)| i.config.contains_key(&span::address_label(key)))
    });
    if !named {
        return false;
    }
    match publish(t).await {
        Ok(n) => n > 0,
        Err(e) => {
            eprintln!("warning: {name} not taken out of its service names: {e:#}");
            false
        }
    }
}

/// Puts replica `name` back in its service names.
pub async fn join(t: &Target, name: &str) {
    let project = t.project.project().unwrap_or("default").to_string();
    known().leaving.remove(&(project, name.to_string()));
    if let Err(e) = publish(t).await {
        eprintln!("warning: {name} not added to its service names: {e:#}");
    }
}

/// `watch`'s healthcheck prober found replica `name` (in its start `started`, its
/// `last_used_at`) unhealthy, or healthy again: it leaves its service names until it is
/// healthy again or restarts (a new start is named again once ready, as any). Publishes the
/// change at once when this process knows the project's resolver networks.
pub async fn set_health(
    base: &ic_incus::Client,
    incus_project: &str,
    name: &str,
    started: &str,
    healthy: bool,
) {
    let key = (incus_project.to_string(), name.to_string());
    let changed = {
        let mut k = known();
        if healthy {
            k.unhealthy.remove(&key).is_some()
        } else {
            k.unhealthy.insert(key, started.to_string()).as_deref() != Some(started)
        }
    };
    if changed {
        refresh(base, incus_project).await;
    }
}

/// Pushes what runs now for Incus project `incus_project`, without observing it first (watch,
/// at each event, before it plans): only when this process already knows its resolver
/// networks (from an earlier plan).
pub async fn refresh(base: &ic_incus::Client, incus_project: &str) {
    let known_nets = known()
        .nets
        .get(incus_project)
        .is_some_and(|n| !n.is_empty());
    if !known_nets {
        return;
    }
    let t = Target {
        base: base.clone(),
        project: base.with_project(incus_project),
        networks: base.with_project("default"),
        clustered: true,
        members: Vec::new(),
        remotes: BTreeMap::new(),
        fence: None,
        revision: None,
        desired: None,
    };
    if let Err(e) = publish(&t).await {
        eprintln!("warning: service names not updated: {e:#}");
    }
}

/// The online members (not evacuated) of a cluster that run no resolver of the project while
/// what `d` deploys has a resolver network: a converged `up` is not converged then (it takes
/// the lock and [`ensure`] makes them, e.g. on a member that joined).
pub fn missing(d: &ic_core::plan::Desired, obs: &super::Observation) -> Vec<String> {
    if !obs.observed.clustered || !d.networks.iter().any(|n| n.resolver && !n.external) {
        return Vec::new();
    }
    obs.observed
        .members
        .iter()
        .filter(|m| m.online && !m.evacuated && !obs.resolvers_up.contains(&m.name))
        .map(|m| m.name.clone())
        .collect()
}

/// Makes sure every online member runs the project's resolver (when what `t` deploys has a
/// resolver network), then publishes the names.
pub async fn ensure(t: &Target, compose: &str) -> anyhow::Result<()> {
    let nets = networks(t).await;
    if nets.is_empty() {
        return Ok(());
    }
    let project = t.project.project().unwrap_or("default").to_string();
    let address = dns::resolver_address(&project);
    let have = t.project.instances_partial(false).await?;
    let members: Vec<Option<String>> = if t.clustered {
        t.members.iter().cloned().map(Some).collect()
    } else {
        vec![None]
    };
    // Every member's resolver at once.
    let makes = members.into_iter().filter_map(|member| {
        let name = format!("{PREFIX}{}", member.as_deref().unwrap_or("local"));
        let name: String = name.chars().take(63).collect::<String>();
        let name = name.trim_end_matches('-').to_string();
        let existing = have.iter().find(|i| i.name == name);
        // Running, or on a member that does not answer (it gets the names once it is back).
        if existing.is_some_and(|i| i.is_running() || i.is_stand_in()) {
            return None;
        }
        let exists = existing.is_some();
        Some(async move {
            let made = tokio::time::timeout(
                MAKE_LIMIT,
                make(t, &name, member.as_deref(), compose, address, exists),
            )
            .await;
            match made {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: resolver {name} not running: {e:#}"),
                Err(_) => {
                    eprintln!("warning: resolver {name} not running: no answer in {MAKE_LIMIT:?}")
                }
            }
        })
    });
    futures_util::future::join_all(makes).await;
    known().pushed.retain(|(p, _), _| *p != project);
    publish(t).await.map(|_| ())
}

async fn make(
    t: &Target,
    name: &str,
    member: Option<&str>,
    compose: &str,
    address: Ipv4Addr,
    exists: bool,
) -> anyhow::Result<()> {
    use anyhow::Context;
    if !exists {
        let req = InstancesPost {
            name: name.to_string(),
            kind: "container".into(),
            source: InstanceSource {
                kind: "none".into(),
                ..Default::default()
            },
            config: BTreeMap::from([
                (LABEL_RESOLVER.to_string(), compose.to_string()),
                ("raw.lxc".into(), "lxc.init.cmd = /ic-resolver".into()),
                ("boot.autostart".into(), "true".into()),
                ("limits.memory".into(), "32MiB".into()),
                // Never migrated by an evacuation: two resolvers with one routed address on a
                // member would clash; the member's own comes back with it.
                ("cluster.evacuate".into(), "stop".into()),
            ]),
            devices: BTreeMap::from([(
                "eth0".to_string(),
                BTreeMap::from([
                    ("type".to_string(), "nic".to_string()),
                    ("nictype".into(), "routed".into()),
                    ("ipv4.address".into(), address.to_string()),
                ]),
            )]),
            ..Default::default()
        };
        async { t.project.create_instance(&req, member).await?.wait().await }
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    let exe = FileOptions {
        mode: 0o755,
        ..Default::default()
    };
    t.project
        .push_file(name, "/ic-resolver", BINARY.to_vec(), &exe)
        .await
        .with_context(|| format!("pushing ic-resolver into {name}"))?;
    t.project
        .push_file(name, "/hosts", b"# end\n".to_vec(), &FileOptions::default())
        .await?;
    t.project
        .start_instance(name)
        .await
        .with_context(|| format!("starting {name}"))?;
    Ok(())
}

/// Removes the project's resolvers (`down`, beside the removal of its replicas): a stopped or
/// missing one is fine. From the start, no replica of the project leaves its names first in
/// this process (the whole project goes: nothing to push, no settle).
pub async fn remove_all(t: &Target) -> anyhow::Result<()> {
    let project = t.project.project().unwrap_or("default").to_string();
    known().nets.insert(project.clone(), Vec::new());
    let all = t.project.instances_partial(false).await?;
    let removals = all
        .iter()
        .filter(|i| i.config.contains_key(LABEL_RESOLVER))
        .map(|i| async move {
            let _ = t.project.stop_instance(&i.name, -1, true).await;
            let _ = t
                .project
                .wait_instance_status(&i.name, "Stopped", Duration::from_secs(10))
                .await;
            match t.project.delete_instance(&i.name).await {
                Ok(op) => op.wait().await.map(|_| ()),
                Err(_) => Ok(()),
            }
        });
    for r in futures_util::future::join_all(removals).await {
        r?;
    }
    let mut k = known();
    k.pushed.retain(|(p, _), _| *p != project);
    k.nets.remove(&project);
    Ok(())
}

#[cfg(test)]
#[allow(dead_code, clippy::all)]
#[path = "../resolver/ic-resolver.rs"]
mod resolver_source;
