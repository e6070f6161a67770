//! Execute: run a plan's stages in order, the actions of a stage in parallel (at most
//! `parallel` at once), printing one line per finished action. A failed stage stops the
//! stages after it (they may depend on it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::progress::Progress;
use anyhow::{Context, anyhow};
use ic_core::plan::{
    Action, AnonymousVolume, COMMAND_PATH, ImageSource, InstancePlan, Plan, PushFile, egress,
    mapping,
};
use ic_incus::{
    Client, FileOptions, InstanceSource, InstancesPost, NetworkPut, NetworksPost, ProjectsPost,
    StorageVolumesPost,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::health::Gate;
use ic_core::keys::{
    CREATING_NETWORK_PREFIX, LABEL_PROJECT, LABEL_SERVICE, LABEL_SLOT, LABEL_VERSION,
};

/// How long a started instance may take to report `Running`.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a failed kill waits for a stop already under way.
const STOP_SETTLE: Duration = Duration::from_secs(30);

/// How often a transient failure is retried.
const RETRIES: u64 = 3;

/// Failures a busy server gives that a later attempt may not: internal errors and timeouts.
fn transient(e: &ic_incus::Error) -> bool {
    // "already exists" (HTTP 500 on Incus 6.0) never goes away by retrying.
    if e.is_already_exists() {
        return false;
    }
    // An operation that ended unread: the next attempt finds out what it did (a start finds
    // the instance running, a creation finds it made).
    if e.is_vanished_operation() {
        return true;
    }
    match e {
        ic_incus::Error::Operation { .. } => true,
        ic_incus::Error::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Where and how to act.
#[derive(Clone)]
pub struct Target {
    /// Client without a project (global objects).
    pub base: Client,
    /// Client in the Incus project.
    pub project: Client,
    /// Client in the project that holds networks.
    pub networks: Client,
    pub clustered: bool,
    /// Cluster member names (for networks created on every member).
    pub members: Vec<String>,
    /// Image remotes: name -> (address, protocol).
    pub remotes: BTreeMap<String, (String, String)>,
    /// The project lock this run holds, if any: checked before every stage and action, so a
    /// run that lost it stops acting (see `engine::lock`).
    pub fence: Option<super::lock::Lease>,
    /// The revision being deployed, when one is recorded (names volume snapshots).
    pub revision: Option<u64>,
    /// What is deployed, when the caller planned it: start-first updates on spanning bridges
    /// plan their record writes again from it (see `rollout::settle_marked`).
    pub desired: Option<std::sync::Arc<ic_core::plan::Desired>>,
}

impl Target {
    /// Where actions for Incus project `incus_project` go, given an observation of it and the
    /// lease that fences them (no revision; `desired` when the caller planned from one).
    pub fn new(
        base: &Client,
        incus_project: &str,
        obs: &super::Observation,
        fence: Option<super::lock::Lease>,
        desired: Option<&ic_core::plan::Desired>,
    ) -> Target {
        Target {
            base: base.clone(),
            project: base.with_project(incus_project),
            networks: base.with_project(&obs.network_project),
            clustered: obs.observed.clustered,
            members: obs
                .observed
                .members
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            remotes: obs.remotes.clone(),
            fence,
            revision: None,
            desired: desired.map(|d| std::sync::Arc::new(d.clone())),
        }
    }
}

/// What happened.
#[derive(Debug, Default)]
pub struct Outcome {
    pub done: usize,
    pub failed: Vec<(String, String)>,
    /// Actions not run because an earlier stage failed.
    pub skipped: usize,
    /// The rolling updates of services, in the order they ran.
    pub rollouts: Vec<super::rollout::Outcome>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Prints what failed, for a command that did not fully succeed:
    /// `up failed: 1 action(s) failed, 3 done, 2 not attempted (after 4.1 s):` and one line each.
    pub fn report_failures(&self, command: &str, elapsed: Option<std::time::Duration>) {
        let after = elapsed
            .map(|d| format!(" (after {:.1} s)", d.as_secs_f64()))
            .unwrap_or_default();
        eprintln!(
            "{command} failed: {} action(s) failed, {} done, {} not attempted{after}:",
            self.failed.len(),
            self.done,
            self.skipped
        );
        for (object, e) in &self.failed {
            eprintln!("  {object}: {e}");
        }
    }
}

/// Runs `plan` against `target`.
pub async fn execute(target: &Target, plan: &Plan, parallel: usize) -> Outcome {
    execute_gated(target, plan, parallel, None).await
}

/// Runs `plan` against `target`; before a stage that starts services, `gate` waits for
/// their `depends_on` conditions (a required one that fails stops the plan there).
pub async fn execute_gated(
    target: &Target,
    plan: &Plan,
    parallel: usize,
    gate: Option<&Gate>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let progress = Progress::new();
    // OCI images: name their registries in the incus CLI's configuration (see engine::oci).
    match super::oci::ensure_remotes(plan) {
        Ok(lines) => lines.iter().for_each(|l| progress.line(l)),
        Err(e) => progress.line(&format!("[!] warning: {e:#}")),
    }
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    // Replicas of completed rolling updates that failed (`failure_action: continue`): they do
    // not stop the stages after (the update went on as configured), but the run fails.
    let mut went_past: Vec<(String, String)> = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate() {
        if let Some(lease) = &target.fence
            && let Err(e) = lease.fence()
        {
            progress.line(&format!("[!] {e:#}"));
            outcome.failed.push(("lock".into(), format!("{e:#}")));
            outcome.skipped = plan.stages[i..].iter().map(|s| s.actions.len()).sum();
            break;
        }
        if let Some(gate) = gate
            && let Err(failed) = gate.before_stage(stage).await
        {
            for (object, e) in &failed {
                progress.line(&format!("[!] {object} failed: {e}"));
            }
            outcome.failed.extend(failed);
            outcome.skipped = plan.stages[i..].iter().map(|s| s.actions.len()).sum();
            break;
        }
        let mut recreates: BTreeMap<String, Vec<InstancePlan>> = BTreeMap::new();
        let mut set = JoinSet::new();
        for action in stage.actions.clone() {
            // Replacements of a service roll (engine::rollout), after the stage's other actions.
            if let Action::Recreate(p) = &action
                && plan.rollouts.contains_key(&p.service)
            {
                recreates
                    .entry(p.service.clone())
                    .or_default()
                    .push((**p).clone());
                continue;
            }
            let t = target.clone();
            let sem = sem.clone();
            let progress = progress.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let object = action.object();
                if let Some(lease) = &t.fence
                    && let Err(e) = lease.fence()
                {
                    return (object, Err(e));
                }
                let spinner = progress.start(action.to_string());
                let result = run(&t, &action).await;
                Progress::done(spinner);
                (object, result)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((_, Ok(line))) => {
                    outcome.done += 1;
                    progress.line(&line);
                }
                Ok((object, Err(e))) => {
                    progress.line(&format!("[!] {object} failed: {e:#}"));
                    outcome.failed.push((object, format!("{e:#}")));
                }
                Err(e) => outcome.failed.push(("(task)".into(), e.to_string())),
            }
        }
        // Rolling updates of this stage's services, once its other actions are done (a
        // dependency's rollout finishes before its dependents roll: they are in later stages).
        if outcome.ok() {
            for (service, plans) in recreates {
                let Some(spec) = plan.rollouts.get(&service) else {
                    continue;
                };
                // Data safety: the named volumes it mounts are snapshotted first.
                match super::revisions::snapshot_volumes(target, spec).await {
                    Ok(lines) => lines.iter().for_each(|l| progress.line(l)),
                    Err(e) => {
                        progress.line(&format!("[!] {service}: {e:#}"));
                        outcome.failed.push((service.clone(), format!("{e:#}")));
                        continue;
                    }
                }
                let r = super::rollout::run_service(target, &service, spec, plans, &progress).await;
                if r.ending == super::rollout::Ending::Completed {
                    outcome.done += r.replaced;
                    went_past.extend(r.failed.iter().cloned());
                } else {
                    for (name, why) in &r.failed {
                        outcome.failed.push((name.clone(), why.clone()));
                    }
                }
                outcome.rollouts.push(r);
            }
        }
        if !outcome.ok() {
            outcome.skipped = plan.stages[i + 1..].iter().map(|s| s.actions.len()).sum();
            break;
        }
    }
    outcome.failed.extend(went_past);
    outcome
}

fn target_of<'a>(t: &Target, member: &'a str) -> Option<&'a str> {
    t.clustered.then_some(member)
}

/// Every ACL network `name` lists in `security.acls` of `network_config` (see
/// [`ensure_acl`]).
async fn ensure_acls(
    t: &Target,
    name: &str,
    network_config: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if let Some(acls) = network_config.get("security.acls") {
        for acl in egress::acl_list(acls) {
            ensure_acl(t, &acl, name, network_config).await?;
        }
    }
    Ok(())
}

/// Removes the ACLs of ours a `security.acls` value lists once nothing uses them.
async fn remove_acls_if_unused(t: &Target, acls: &str) -> anyhow::Result<()> {
    for acl in egress::acl_list(acls) {
        remove_acl_if_unused(t, &acl).await?;
    }
    Ok(())
}

/// A network ACL of network `network`, created when missing: the project's (the bridges'
/// default actions isolate them, see `ic_core::plan::span`; its rules keep the underlay out of
/// reach, see `ic_core::plan::egress::project_acl_rules`), or an `internal` network's own (one
/// egress rule allowing its subnet), whose rules are set again when they differ. An ACL of that name that is not ours stops the creation.
async fn ensure_acl(
    t: &Target,
    acl: &str,
    network: &str,
    network_config: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let project = network_config
        .get(LABEL_PROJECT)
        .cloned()
        .unwrap_or_default();
    let egress_rules: Vec<ic_incus::NetworkAclRule> =
        match egress::internal_acl_destination(acl, network, network_config) {
            Some(destination) => vec![ic_incus::NetworkAclRule {
                action: "allow".into(),
                destination,
                description: "incus-compose: an internal network reaches its own subnet only"
                    .into(),
                state: "enabled".into(),
                ..Default::default()
            }],
            None if egress::is_project_acl(acl, network) => {
                // The underlay: every member's cluster address (members that join later are
                // added by the next `up`).
                let members: Vec<String> = if t.clustered {
                    t.base
                        .cluster_members()
                        .await
                        .context(
                            "listing the cluster members (their addresses go in the network ACL)",
                        )?
                        .iter()
                        .filter_map(|m| egress::url_host(&m.url))
                        .collect()
                } else {
                    Vec::new()
                };
                egress::project_acl_rules(&members)
                    .into_iter()
                    .map(|r| ic_incus::NetworkAclRule {
                        action: r.action.into(),
                        destination: r.destination,
                        protocol: r.protocol.into(),
                        destination_port: r.destination_port,
                        description: r.description.into(),
                        state: "enabled".into(),
                        ..Default::default()
                    })
                    .collect()
            }
            None => Vec::new(),
        };
    let ours = |a: &ic_incus::NetworkAcl| a.config.get(LABEL_PROJECT) == Some(&project);
    match t.networks.network_acl(acl).await {
        Ok(a) if ours(&a) => {
            if a.egress != egress_rules {
                let mut put = a.clone();
                put.egress = egress_rules;
                t.networks
                    .update_network_acl(&put)
                    .await
                    .with_context(|| format!("setting the rules of network ACL {acl}"))?;
            }
            return Ok(());
        }
        Ok(_) => {
            return Err(anyhow!(
                "network ACL {acl:?} exists and was not made by incus-compose for compose project {project:?}; incus-compose never touches it: remove or rename it"
            ));
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e).with_context(|| format!("reading network ACL {acl}")),
    }
    let req = ic_incus::NetworkAcl {
        name: acl.to_string(),
        description: "incus-compose: isolates the project's networks".into(),
        config: BTreeMap::from([(LABEL_PROJECT.to_string(), project.clone())]),
        egress: egress_rules,
        ingress: Vec::new(),
        used_by: Vec::new(),
    };
    match t.networks.create_network_acl(&req).await {
        Ok(()) => Ok(()),
        // Another network of the project created it at the same time.
        Err(_) if t.networks.network_acl(acl).await.is_ok_and(|a| ours(&a)) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating network ACL {acl}")),
    }
}

/// Removes an ACL of ours once nothing uses it (networks removed at the same time may still
/// be listed for a moment: wait for them, a few seconds at most).
async fn remove_acl_if_unused(t: &Target, acl: &str) -> anyhow::Result<()> {
    for _ in 0..10 {
        let Ok(a) = t.networks.network_acl(acl).await else {
            return Ok(());
        };
        if !a.config.contains_key(LABEL_PROJECT) {
            return Ok(());
        }
        if a.used_by.is_empty() {
            return match t.networks.delete_network_acl(acl).await {
                Ok(()) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing network ACL {acl}")),
            };
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Network `name`, which a creation found existing, when it carries the labels of `config`
/// (its compose project and network): made by a run that was killed after sending the same
/// creation. `Some(true)`: the server finished it (`Created`); `Some(false)`: it did not
/// (after waiting up to 5 s for it). `None`: not ours.
async fn left_by_a_killed_run(
    t: &Target,
    name: &str,
    config: &BTreeMap<String, String>,
) -> Option<bool> {
    let labels = |c: &BTreeMap<String, String>| {
        (
            c.get(ic_core::keys::LABEL_PROJECT).cloned(),
            c.get(ic_core::keys::LABEL_NETWORK).cloned(),
        )
    };
    labels(config).0.as_ref()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = t.networks.network(name, None).await.ok()?;
        if labels(&n.config) != labels(config) {
            return None;
        }
        if n.status.eq_ignore_ascii_case("created") {
            return Some(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Some(false);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(super) async fn run(t: &Target, action: &Action) -> anyhow::Result<String> {
    match action {
        Action::CreateProject { name, config } => {
            t.base
                .create_project(&ProjectsPost {
                    name: name.clone(),
                    description: "incus-compose project".into(),
                    config: config.clone(),
                })
                .await?;
            Ok(format!("[+] Incus project {name} created"))
        }
        Action::CreateNetwork {
            name,
            kind,
            config,
            member_config,
        } => {
            ensure_acls(t, name, config).await?;
            let req = NetworksPost {
                name: name.clone(),
                kind: kind.clone(),
                description: "incus-compose network".into(),
                config: config.clone(),
            };
            // OVN networks have no member-specific config: one global creation.
            let members = if t.clustered && kind != "ovn" {
                t.members.clone()
            } else {
                Vec::new()
            };
            // A cluster network is made in several requests; until its global step it has no
            // config, so no labels: the Incus project records that we are making it, so that
            // the next `up` finishes (or `down` removes) what a killed run left pending.
            if t.clustered {
                mark_creating_network(t, name, true).await?;
            }
            // Incus 6.0 fails a bridge creation now and then while another bridge is being
            // removed ("Failed to delete bridge children interfaces"): try again, finishing
            // what the failed attempt left.
            let mut attempt = 0;
            loop {
                match t
                    .networks
                    .create_network_everywhere(&req, &members, member_config)
                    .await
                {
                    Ok(()) => break,
                    Err(e) if attempt < RETRIES && transient(&e) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    // On a single server a network is made in one request. A run killed
                    // while the server was making it leaves it `Pending` (Incus 6.0 stops there
                    // when the client goes away), or finished if the server got that far: the
                    // next run may not have seen it. One with our labels (this compose project
                    // and network) is that one: kept once `Created`, else removed and made
                    // again (nothing can use a network that was never started). Any other is
                    // not ours and stays an error.
                    Err(e) if e.status() == Some(409) && members.is_empty() => {
                        match left_by_a_killed_run(t, name, config).await {
                            Some(true) => break,
                            Some(false) if attempt < RETRIES => {
                                attempt += 1;
                                t.networks.delete_network(name).await.with_context(|| {
                                    format!(
                                        "removing network {name}, left unfinished by a killed run"
                                    )
                                })?;
                            }
                            _ => return Err(e).with_context(|| format!("creating network {name}")),
                        }
                    }
                    Err(e) => {
                        // An ACL made for this network alone would be left behind: the failed
                        // network may not carry our labels, so `down` would not find it.
                        if let Some(acls) = config.get("security.acls") {
                            let _ = remove_acls_if_unused(t, acls).await;
                        }
                        return Err(e).with_context(|| format!("creating network {name}"));
                    }
                }
            }
            if t.clustered {
                mark_creating_network(t, name, false).await?;
            }
            Ok(format!(
                "[+] network {name} created ({}{})",
                config.get("ipv4.address").map(String::as_str).unwrap_or(""),
                match config.get(ic_core::keys::LABEL_VNI) {
                    Some(vni) => format!(", spanning the members, VXLAN VNI {vni}"),
                    None => String::new(),
                }
            ))
        }
        Action::CreateVolume {
            pool,
            name,
            member,
            config,
        } => {
            let mut req = StorageVolumesPost::custom(name.clone());
            req.config = config.clone();
            t.project
                .create_storage_volume(pool, &req, target_of(t, member))
                .await?;
            Ok(format!("[+] volume {name} created on {member}"))
        }
        Action::Create(p) => {
            create(t, p).await?;
            Ok(format!(
                "[+] {} created on {}{}",
                p.name,
                p.member,
                if p.start { " and started" } else { "" }
            ))
        }
        Action::UpdateInPlace { name, set, .. } => {
            let current = t.project.instance(name).await?;
            let mut put = current.writable();
            for (k, v) in set {
                if v.is_empty() {
                    put.config.remove(k);
                } else {
                    put.config.insert(k.clone(), v.clone());
                }
            }
            t.project.update_instance(name, &put).await?.wait().await?;
            let keys: Vec<&str> = set
                .keys()
                .filter(|k| !k.starts_with(ic_core::keys::OURS_PREFIX))
                .map(String::as_str)
                .collect();
            Ok(if keys.is_empty() {
                format!("[~] {name}: its records updated")
            } else {
                format!(
                    "[~] {name} updated in place, without a restart ({})",
                    keys.join(", ")
                )
            })
        }
        Action::Recreate(p) => {
            remove(t, p.old_name.as_deref().unwrap_or(&p.name), p.stop_timeout).await?;
            create(t, p).await?;
            Ok(format!(
                "[~] {} recreated on {} ({})",
                p.name, p.member, p.reason
            ))
        }
        Action::Start { name, .. } => {
            start(t, name).await?;
            wait_started(t, name).await?;
            // Back in its service names (it may have left them before a stop of this run).
            after_ready(t, name).await?;
            Ok(format!("[+] {name} started"))
        }
        Action::Stop { name, timeout, .. } => {
            stop(t, name, *timeout).await?;
            Ok(format!("[.] {name} stopped"))
        }
        Action::Remove {
            name,
            member,
            timeout,
            reason,
            ..
        } => {
            remove(t, name, *timeout).await?;
            Ok(format!("[-] {name} removed from {member} ({reason})"))
        }
        Action::UpdateNetwork { name, set } => {
            let current = t.networks.network(name, None).await?;
            let mut config = current.config.clone();
            for (k, v) in set {
                if v.is_empty() {
                    config.remove(k);
                } else {
                    config.insert(k.clone(), v.clone());
                }
            }
            // ACLs it now lists exist first; ACLs it no longer lists go once unused.
            ensure_acls(t, name, &config).await?;
            let dropped: Vec<String> = current
                .config
                .get("security.acls")
                .map(|a| egress::acl_list(a))
                .unwrap_or_default()
                .into_iter()
                .filter(|a| {
                    !config
                        .get("security.acls")
                        .is_some_and(|now| egress::acl_list(now).contains(a))
                })
                .collect();
            let put = NetworkPut {
                description: current.description.clone(),
                config,
            };
            t.networks.update_network(name, &put, None).await?;
            for acl in dropped {
                remove_acl_if_unused(t, &acl).await?;
            }
            Ok(format!(
                "[~] network {name} updated ({})",
                set.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        Action::UpdateNetworkMember { name, member, set } => {
            let current = t.networks.network(name, Some(member)).await?;
            let mut config = current.config.clone();
            config.extend(set.clone());
            let put = NetworkPut {
                description: String::new(),
                config,
            };
            t.networks
                .update_network(name, &put, Some(member))
                .await
                .with_context(|| format!("updating network {name} on {member}"))?;
            Ok(format!(
                "[~] network {name} updated on {member} ({})",
                set.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        Action::RemoveNetwork { name } => {
            let acl = t
                .networks
                .network(name, None)
                .await
                .ok()
                .and_then(|n| n.config.get("security.acls").cloned());
            // Right after its last instance went away, Incus 6.0 can fail a bridge removal
            // while it still cleans up that instance's veth ("Failed to delete bridge children
            // interfaces ... does not exist"): try again.
            let mut attempt = 0;
            loop {
                match t.networks.delete_network(name).await {
                    Ok(()) => break,
                    Err(e) if e.is_not_found() => break,
                    Err(e) if attempt < RETRIES && transient(&e) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    Err(e) => return Err(e).with_context(|| format!("removing network {name}")),
                }
            }
            if let Some(acls) = acl {
                remove_acls_if_unused(t, &acls).await?;
            }
            Ok(format!("[-] network {name} removed"))
        }
        Action::RemoveVolume { pool, name, member } => {
            t.project
                .delete_storage_volume(pool, "custom", name, target_of(t, member))
                .await?;
            Ok(format!("[-] volume {name} removed from {member}"))
        }
        Action::RemoveProject { name } => {
            t.base.delete_project(name).await?;
            Ok(format!("[-] Incus project {name} removed"))
        }
    }
}

/// Sets (`creating`) or removes the Incus project's record that incus-compose is creating
/// network `name` (`ic_core::keys::CREATING_NETWORK_PREFIX`, value: the compose project).
async fn mark_creating_network(t: &Target, name: &str, creating: bool) -> anyhow::Result<()> {
    let Some(project) = t.project.project() else {
        return Ok(());
    };
    let key = format!("{CREATING_NETWORK_PREFIX}{name}");
    super::lock::edit_project_config(&t.base, project, |config| {
        let Some(compose) = config.get(LABEL_PROJECT).cloned() else {
            // Not a project incus-compose created: nothing is written to it.
            return false;
        };
        if creating {
            if config.get(&key) == Some(&compose) {
                return false;
            }
            config.insert(key.clone(), compose);
            true
        } else {
            config.remove(&key).is_some()
        }
    })
    .await
    .with_context(|| format!("recording network {name} in Incus project {project}"))?;
    Ok(())
}

fn source(
    t: &Target,
    image: &ImageSource,
    fingerprint: Option<&str>,
) -> anyhow::Result<InstanceSource> {
    // The image the reference names now (see `ServerFacts::image_targets`): every replica gets
    // the same one, and an OCI image already pulled costs the registry nothing.
    if let (Some(f), ImageSource::Local(_) | ImageSource::Oci { .. }) = (fingerprint, image) {
        return Ok(InstanceSource::image_fingerprint(f.to_string()));
    }
    Ok(match image {
        ImageSource::Local(a) => {
            if a.len() >= 12 && a.chars().all(|c| c.is_ascii_hexdigit()) {
                InstanceSource::image_fingerprint(a.clone())
            } else {
                InstanceSource::image_alias(a.clone())
            }
        }
        ImageSource::Oci { server, alias, .. } => InstanceSource {
            kind: "image".into(),
            alias: alias.clone(),
            server: super::oci::credentialed(server, &t.remotes),
            protocol: "oci".into(),
            ..Default::default()
        },
        ImageSource::Remote { remote, alias } => {
            let (addr, protocol) = t
                .remotes
                .get(remote)
                .ok_or_else(|| anyhow!("unknown image remote {remote:?}"))?;
            InstanceSource {
                kind: "image".into(),
                alias: alias.clone(),
                server: addr.clone(),
                protocol: protocol.clone(),
                ..Default::default()
            }
        }
    })
}

pub(super) async fn create(t: &Target, p: &InstancePlan) -> anyhow::Result<()> {
    fenced(t).with_context(|| format!("{} is not created", p.name))?;
    let mut devices = p.devices.clone();
    for a in &p.anonymous_volumes {
        let volume = ensure_anonymous_volume(t, p, a).await?;
        let mut d = BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("pool".to_string(), a.pool.clone()),
            ("source".to_string(), volume),
            ("path".to_string(), a.target.clone()),
        ]);
        if a.read_only {
            d.insert("readonly".into(), "true".into());
        }
        devices.insert(a.device.clone(), d);
    }
    // Files go in before the first start: Incus starts it only when there are none.
    let prepare = p.command.is_some() || !p.files.is_empty();
    // Creation is atomic from the planner's view: such an instance gets its spec hash last,
    // once its files are in and it started, so one a crash left half made is never kept over
    // a replica that runs (`plan::diff`'s keeper), and is made again.
    let mut config = p.config.clone();
    let hash_last = if prepare {
        config.remove(ic_core::keys::LABEL_HASH)
    } else {
        None
    };
    let req = InstancesPost {
        name: p.name.clone(),
        kind: "container".into(),
        source: source(t, &p.image, p.image_fingerprint.as_deref())?,
        config,
        devices,
        profiles: None,
        ephemeral: false,
        description: format!("incus-compose service {}", p.service),
        start: p.start && !prepare,
    };
    let mut attempt = 0;
    loop {
        let result = async {
            t.project
                .create_instance(&req, target_of(t, &p.member))
                .await?
                .wait()
                .await
        }
        .await;
        match result {
            Ok(_) => break,
            // What an earlier attempt, or this one, made unseen: the instance says. Either the
            // operation ended but Incus forgot it before its result was read (seen with 3 of
            // 300 creations on a loaded cluster), or a retry finds the name taken because an
            // attempt whose error we saw went on and made it (seen once in 300: "UNIQUE
            // constraint failed"). One this request made carries every label of it (a failed
            // creation removes it) and is adopted; anything else is left alone.
            Err(e) if e.is_vanished_operation() || (attempt > 0 && e.is_already_exists()) => {
                match t.project.instance(&p.name).await {
                    Ok(i) if made_by(&req.config, &i.config) => {
                        if req.start && !i.is_running() {
                            adopt(t, &p.name).await?;
                        }
                        break;
                    }
                    Err(n)
                        if n.is_not_found() && e.is_vanished_operation() && attempt < RETRIES =>
                    {
                        attempt += 1;
                    }
                    _ => {
                        return Err(e)
                            .with_context(|| format!("creating {} on {}", p.name, p.member));
                    }
                }
            }
            Err(e) if attempt < RETRIES && transient(&e) => {
                attempt += 1;
                // A half-made instance may be left behind: removed only when this request made
                // it (it carries every label of the request); anything else is never touched.
                match t.project.instance(&p.name).await {
                    Ok(i) if made_by(&req.config, &i.config) => {
                        let _ = remove(t, &p.name, 0).await;
                    }
                    Ok(_) => {
                        return Err(e).with_context(|| {
                            format!(
                                "creating {} on {}: an instance of that name that incus-compose did not make appeared meanwhile; it is left alone (rename or remove it)",
                                p.name, p.member
                            )
                        });
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {} on {}", p.name, p.member));
            }
        }
    }
    let owners = image_owners(t, &p.name, &p.files).await;
    for f in &p.files {
        let mut f = f.clone();
        if f.user.is_some() || f.group.is_some() {
            let (uid, gid, warnings) =
                mapping::resolve_owner(&f, owners.0.as_deref(), owners.1.as_deref());
            for w in warnings {
                eprintln!("warning: {}: {w}", p.name);
            }
            (f.uid, f.gid) = (uid, gid);
        }
        push(t, &p.name, &f).await?;
    }
    if let Some(script) = &p.command {
        let dir = COMMAND_PATH.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
        make_dirs(t, &p.name, dir).await?;
        let file_opts = FileOptions {
            uid: 0,
            gid: 0,
            mode: 0o755,
            append: false,
        };
        t.project
            .push_file(
                &p.name,
                COMMAND_PATH,
                script.clone().into_bytes(),
                &file_opts,
            )
            .await
            .with_context(|| format!("writing the command script into {}", p.name))?;
    }
    if prepare && p.start {
        start(t, &p.name).await?;
        wait_started(t, &p.name).await?;
    }
    // Created and started in one request (`start: true`): Incus ends that operation once the
    // start did, so there is nothing to wait for (one state request per replica less).
    if let Some(hash) = hash_last {
        fenced(t).with_context(|| format!("{} is not marked prepared", p.name))?;
        let patch = serde_json::json!({ "config": { ic_core::keys::LABEL_HASH: hash } });
        t.project
            .patch_instance(&p.name, &patch)
            .await
            .with_context(|| format!("marking {} prepared (its spec hash)", p.name))?;
    }
    Ok(())
}

/// Starts an instance an earlier attempt of this creation made (and that request would have
/// started), once that attempt's operation ended: Incus refuses a start while it runs, so
/// the start is tried again each second for up to [`ADOPT_TIMEOUT`].
async fn adopt(t: &Target, name: &str) -> anyhow::Result<()> {
    fenced(t).with_context(|| format!("{name} is not started"))?;
    let deadline = tokio::time::Instant::now() + ADOPT_TIMEOUT;
    loop {
        match t.project.start_instance(name).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.incus_message()
                    .is_some_and(|m| m.contains("already running")) =>
            {
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("starting {name}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// How long [`adopt`] tries to start an instance an earlier attempt is still making.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether an instance with config `found` is the one a create request with config `sent`
/// made: it carries every `user.incus-compose.*` label of the request, with the same values.
fn made_by(sent: &BTreeMap<String, String>, found: &BTreeMap<String, String>) -> bool {
    let labels: Vec<_> = sent
        .iter()
        .filter(|(k, _)| k.starts_with(ic_core::keys::OURS_PREFIX))
        .collect();
    !labels.is_empty() && labels.iter().all(|(k, v)| found.get(*k) == Some(*v))
}

/// After a successful start: until the instance runs. `Stopped` also counts: its PID 1
/// (a one-shot `command`) already ran and exited; `depends_on` conditions and `up --wait`
/// judge that, not the start.
async fn wait_started(t: &Target, name: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let status = state(t, name).await?.status;
        if status.eq_ignore_ascii_case("running") || status.eq_ignore_ascii_case("stopped") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "instance {name} is still {status} {} s after its start, expected Running",
                START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `dir` and its missing parents (root, 0755); existing ones are left as they are.
async fn make_dirs(t: &Target, instance: &str, dir: &str) -> anyhow::Result<()> {
    let opts = FileOptions {
        uid: 0,
        gid: 0,
        mode: 0o755,
        append: false,
    };
    let mut path = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        path.push('/');
        path.push_str(part);
        t.project
            .create_directory(instance, &path, &opts)
            .await
            .or_else(|e| {
                // Already there: fine.
                if e.status() == Some(409)
                    || e.incus_message().is_some_and(|m| m.contains("exists"))
                {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .with_context(|| format!("creating directory {path} in {instance}"))?;
    }
    Ok(())
}

/// The most bytes of the image's `/etc/passwd` or `/etc/group` read to resolve owner names
/// (the image is not trusted: a link to a device must not exhaust memory).
const OWNER_TABLE_LIMIT: usize = 1 << 20;

/// `/etc/passwd` and `/etc/group` of a new instance's root filesystem, when one of `files`
/// has an owner name to resolve (`PushFile::user`/`group`); `None` where unreadable.
async fn image_owners(
    t: &Target,
    instance: &str,
    files: &[PushFile],
) -> (Option<String>, Option<String>) {
    if !files.iter().any(|f| f.user.is_some() || f.group.is_some()) {
        return (None, None);
    }
    let read = |path: &'static str| async move {
        match t
            .project
            .pull_file_bounded(instance, path, OWNER_TABLE_LIMIT)
            .await
        {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => {
                eprintln!(
                    "warning: {instance}: cannot read {path} of its image to find file owners: {e}"
                );
                None
            }
        }
    };
    (read("/etc/passwd").await, read("/etc/group").await)
}

/// Writes one planned file (or directory) into a stopped instance. Errors name the path,
/// never the content.
async fn push(t: &Target, instance: &str, f: &PushFile) -> anyhow::Result<()> {
    let parent = f.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    make_dirs(t, instance, parent).await?;
    let opts = FileOptions {
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
        append: false,
    };
    match &f.content {
        None => make_dirs(t, instance, &f.path).await,
        Some(content) => t
            .project
            .push_file(instance, &f.path, content.clone(), &opts)
            .await
            .with_context(|| format!("writing {} into {instance}", f.path)),
    }
}

/// The custom volume of an anonymous volume: created (labelled as ours) when missing on the
/// member; an existing one that is not ours is refused.
async fn ensure_anonymous_volume(
    t: &Target,
    p: &InstancePlan,
    a: &AnonymousVolume,
) -> anyhow::Result<String> {
    let name = a.volume_name(&p.name);
    let on = if a.shared {
        None
    } else {
        target_of(t, &p.member)
    };
    let compose = p.config.get(LABEL_PROJECT).cloned().unwrap_or_default();
    match t.project.storage_volume(&a.pool, "custom", &name, on).await {
        Ok(v) => {
            if v.config.get(LABEL_PROJECT) != Some(&compose) {
                anyhow::bail!(
                    "volume {name} (anonymous volume {} of {}) already exists and was not made by incus-compose for compose project {compose:?}; rename or remove it",
                    a.target,
                    p.name
                );
            }
            return Ok(name);
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e).with_context(|| format!("looking up volume {name}")),
    }
    let mut req = StorageVolumesPost::custom(name.clone());
    req.description = format!("incus-compose anonymous volume {} of {}", a.target, p.name);
    for key in [LABEL_PROJECT, LABEL_SERVICE, LABEL_SLOT, LABEL_VERSION] {
        if let Some(v) = p.config.get(key) {
            req.config.insert(key.to_string(), v.clone());
        }
    }
    req.config
        .insert(ic_core::keys::LABEL_ANONYMOUS.into(), a.target.clone());
    t.project
        .create_storage_volume(&a.pool, &req, on)
        .await
        .with_context(|| format!("creating anonymous volume {name} on {}", p.member))?;
    Ok(name)
}

/// Start, retrying transient failures (a busy member can time out in its start hook).
pub(super) async fn start(t: &Target, name: &str) -> anyhow::Result<()> {
    fenced(t).with_context(|| format!("{name} is not started"))?;
    let mut attempt = 0;
    loop {
        match t.project.start_instance(name).await {
            Ok(()) => return Ok(()),
            // An earlier attempt that timed out on our side went on and started it.
            Err(e)
                if attempt > 0
                    && e.incus_message()
                        .is_some_and(|m| m.contains("already running")) =>
            {
                return Ok(());
            }
            Err(e) if attempt < RETRIES && transient(&e) => {
                attempt += 1;
                if !is_stopped(t, name).await? {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("starting {name}")),
        }
    }
}

/// The instance's state. Incus 6.0 answers HTTP 500 ("Invalid PID") now and then while a
/// container's init has just exited: such answers are asked again for up to ~3 s.
pub(super) async fn state(t: &Target, name: &str) -> ic_incus::Result<ic_incus::InstanceState> {
    let mut attempt = 0;
    loop {
        match t.project.instance_state(name).await {
            Err(e) if attempt < 10 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// Whether the instance is stopped (or gone).
async fn is_stopped(t: &Target, name: &str) -> ic_incus::Result<bool> {
    match state(t, name).await {
        Ok(s) => {
            Ok(!s.status.eq_ignore_ascii_case("running")
                && !s.status.eq_ignore_ascii_case("frozen"))
        }
        Err(e) if e.is_not_found() => Ok(true),
        Err(e) => Err(e),
    }
}

/// The one step every replica stop, retire or removal of every executor (the plan's actions,
/// the rollout, drain and watch moves) passes through, before anything is stopped: the
/// lease is checked (a run that lost its lock stops acting here), the members' forwarders of
/// published ports send to another replica of its service (`engine::ingress::leave`), and the
/// replica leaves its service names: on networks whose names the member resolvers serve (`engine::names`) it is
/// taken out of every resolver, then keeps running [`super::names::LEAVE_SETTLE`] so that a
/// client that resolved it just before gets its answer; its stop (and `stop_grace_period`)
/// begins after that. Records in `raw.dnsmasq` are written as before (once per stage,
/// `rollout::write_records`).
pub(super) async fn before_stop(t: &Target, name: &str) -> anyhow::Result<()> {
    fenced(t).with_context(|| format!("{name} is not stopped"))?;
    // Boxed: forwarders are themselves stopped through here (a cycle of async calls).
    Box::pin(super::ingress::leave(t, name)).await;
    if super::names::leave(t, name).await {
        tokio::time::sleep(super::names::LEAVE_SETTLE).await;
    }
    Ok(())
}

/// The one step where a replica of every executor is declared ready: it runs (healthy, when
/// it has a healthcheck), so the replica it replaces may go. It joins its service names on the
/// member resolvers (`engine::names`) and forwarders left without a replica send to it
/// (`engine::ingress::join`); records in `raw.dnsmasq` are written as before
/// (`rollout::write_records` once per stage).
pub(super) async fn after_ready(t: &Target, name: &str) -> anyhow::Result<()> {
    fenced(t).with_context(|| format!("{name} is ready, but"))?;
    super::names::join(t, name).await;
    super::ingress::join(t, name).await;
    Ok(())
}

/// Fails when the run lost its project lock (see `engine::lock`): checked before every
/// mutating step of every executor.
pub(super) fn fenced(t: &Target) -> anyhow::Result<()> {
    match &t.fence {
        Some(lease) => lease.fence(),
        None => Ok(()),
    }
}

/// Stop cleanly within `timeout` seconds, else kill. A stopped instance is left as it is.
/// Passes [`before_stop`] first.
pub(super) async fn stop(t: &Target, name: &str, timeout: i64) -> anyhow::Result<()> {
    before_stop(t, name).await?;
    if is_stopped(t, name).await? {
        return Ok(());
    }
    // Incus 6.0 has been seen to end a clean stop's operation while the instance still ran
    // (two stops at once): it counts only once Incus reports it stopped.
    if timeout > 0
        && t.project.stop_instance(name, timeout, false).await.is_ok()
        && t.project
            .wait_instance_status(name, "Stopped", Duration::from_secs(5))
            .await
            .is_ok()
    {
        return Ok(());
    }
    if let Err(e) = t.project.stop_instance(name, -1, true).await {
        // The clean stop may still be finishing (Incus then refuses a second stop): give it
        // time to end before calling this a failure.
        let stopped = t
            .project
            .wait_instance_status(name, "Stopped", STOP_SETTLE)
            .await;
        match stopped {
            Ok(_) => {}
            Err(w) if w.is_not_found() => {}
            Err(_) => return Err(e).with_context(|| format!("stopping {name}")),
        }
        return Ok(());
    }
    match t
        .project
        .wait_instance_status(name, "Stopped", STOP_SETTLE)
        .await
    {
        Ok(_) => Ok(()),
        Err(w) if w.is_not_found() => Ok(()),
        Err(w) => Err(w).with_context(|| format!("stopping {name}")),
    }
}

/// Kills the instance and waits until Incus reports it stopped (passes [`before_stop`]).
pub(super) async fn force_stop(t: &Target, name: &str) -> anyhow::Result<()> {
    before_stop(t, name).await?;
    match t.project.stop_instance(name, -1, true).await {
        Err(e) if e.is_not_found() => Ok(()),
        _ => match t
            .project
            .wait_instance_status(name, "Stopped", STOP_SETTLE)
            .await
        {
            Ok(_) => Ok(()),
            Err(w) if w.is_not_found() => Ok(()),
            Err(w) => Err(w).with_context(|| format!("stopping {name}")),
        },
    }
}

pub(super) async fn remove(t: &Target, name: &str, timeout: i64) -> anyhow::Result<()> {
    stop(t, name, timeout).await?;
    let mut attempt = 0;
    loop {
        let result = async { t.project.delete_instance(name).await?.wait().await }.await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            // A stop that Incus reported done while the instance still ran (seen right after
            // a clean stop), or a busy server: stop it for good and try again.
            Err(e)
                if attempt < RETRIES
                    && (transient(&e)
                        || e.incus_message().is_some_and(|m| m.contains("is running"))) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                force_stop(t, name).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod create_tests {
    use super::*;

    fn api(status: u16, message: &str) -> ic_incus::Error {
        ic_incus::Error::Api {
            request: ic_incus::RequestLabel {
                method: "POST".into(),
                path: "/1.0/instances?project=p".into(),
            },
            status,
            message: message.into(),
        }
    }

    #[test]
    fn already_exists_is_not_transient_even_as_http_500() {
        assert!(!transient(&api(
            500,
            "Failed creating instance record: Instance \"web-1\" already exists"
        )));
        assert!(!transient(&api(409, "Instance \"web-1\" already exists")));
        assert!(transient(&api(500, "database is locked")));
    }

    #[test]
    fn only_an_instance_with_every_label_of_the_request_counts_as_made_by_it() {
        let sent = BTreeMap::from([
            ("user.incus-compose.project".to_string(), "shop".to_string()),
            ("user.incus-compose.service".to_string(), "web".to_string()),
            ("user.incus-compose.hash".to_string(), "abc".to_string()),
            ("limits.cpu".to_string(), "1".to_string()),
        ]);
        let mut found = sent.clone();
        found.insert("volatile.base_image".into(), "f00".into());
        assert!(made_by(&sent, &found));
        // Made by hand: no labels.
        assert!(!made_by(&sent, &BTreeMap::new()));
        // Of another compose project, or another version of the service.
        let mut other = found.clone();
        other.insert("user.incus-compose.project".into(), "other".into());
        assert!(!made_by(&sent, &other));
        let mut older = found.clone();
        older.insert("user.incus-compose.hash".into(), "old".into());
        assert!(!made_by(&sent, &older));
        // A request without labels can claim nothing.
        assert!(!made_by(&BTreeMap::new(), &found));
    }
}
