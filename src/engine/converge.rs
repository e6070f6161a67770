//! The one converge path: every command that changes a project (`up`, `scale`, `rollback`,
//! `watch`, `node drain`, `node restore --rebalance`) differs only in where its desired state
//! comes from ([`Source`]) and a few options; the policy around the pure planner is here, in
//! one place: take the lock, observe and plan again under it, record the revision, execute
//! with one parallelism and one readiness gate, finish the revision.
//!
//! - [`Source::File`]: the compose file (`up`);
//! - [`Source::Revisions`]: a revision pair (`rollback`: the target's specs, the deployed
//!   one's `rollback_config`);
//! - [`Source::Deployed`]: the deployed revision, with secret and config contents read back
//!   from running replicas ([`deployed_state`]: `watch`, `node drain`, `--rebalance`, and
//!   `scale`, which changes only the replica counts of the deployed specs, as
//!   `docker service scale` does, and records that as a revision).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail};
use ic_core::plan::{Action, Desired, DiffOptions, Observed, Plan, PushFile};
use ic_core::revision::{self, Outcome as RevisionOutcome, StoredFile};
use ic_core::schedule::Mode;
use ic_incus::Client;

use super::lock::LockGuard;
use super::{Observation, Target, health};
use ic_core::keys::LABEL_PROJECT;

/// Secret and config contents read back for one revision: `(revision, service -> files)`.
/// Kept by a caller that converges repeatedly (`watch`): the contents cannot change within
/// one revision.
pub type ReadBack = Option<(u64, BTreeMap<String, Vec<PushFile>>)>;

/// The most bytes of a secret or config read back from a replica (its container may have
/// replaced the file by a huge one, or a link to a device): 4 MiB, eight times Docker's
/// 500 KiB secret limit.
pub const READ_BACK_LIMIT: usize = 4 << 20;

/// The secret and config files of the deployed services (their contents are not kept in
/// Incus), read back from a running replica of each service on an online member, and kept
/// only when they have the digest the revision recorded. A service none can be read for
/// is left out: planning names it (`revision::RevisionError::Secret`).
pub async fn read_back_files(
    base: &Client,
    incus_project: &str,
    compose: &str,
    wanted: BTreeMap<String, Vec<StoredFile>>,
    obs: &Observed,
    key: Option<&ic_core::plan::DigestKey>,
) -> BTreeMap<String, Vec<PushFile>> {
    let project = base.with_project(incus_project);
    let mut out = BTreeMap::new();
    for (service, wanted) in wanted {
        let replicas = obs.instances.iter().filter(|i| {
            i.running
                && i.label(LABEL_PROJECT) == Some(compose)
                && i.label(ic_core::keys::LABEL_SERVICE) == Some(service.as_str())
                && obs.members.iter().any(|m| m.name == i.location && m.online)
        });
        for i in replicas {
            let mut files = Vec::new();
            for f in &wanted {
                // Bounded: the container controls the file (see READ_BACK_LIMIT).
                match project
                    .pull_file_bounded(&i.name, &f.path, READ_BACK_LIMIT)
                    .await
                {
                    Ok(content) => match revision::read_back_file(f, content, key) {
                        Some(file) => files.push(file),
                        None => break,
                    },
                    Err(e @ ic_incus::Error::TooLarge { .. }) => {
                        eprintln!(
                            "warning: {}:{} is larger than the {READ_BACK_LIMIT} bytes a secret or config may have: not read back from this replica (its content is not what was deployed): {e}",
                            i.name, f.path
                        );
                        break;
                    }
                    Err(_) => break,
                }
            }
            if files.len() == wanted.len() {
                out.insert(service.clone(), files);
                break;
            }
        }
    }
    out
}

/// The deployed revision of a project as a desired state.
pub struct DeployedState {
    /// Its services as `up` deployed them, secret and config contents read back.
    pub desired: Desired,
    /// Services whose newest revision is newer than the deployed one and not completed (in
    /// progress, paused, failed): what the newest revision says of them is
    /// not known to be right, and a converge to the deployed one would undo a run under way
    /// or one a user must look at. Name -> why. `watch` leaves them alone and says so.
    pub unsettled: BTreeMap<String, String>,
}

/// The deployed revision of `compose` as a desired state (`None`: no revision completed).
///
/// Secret and config contents come from running replicas (`read_back`, refreshed when it is
/// for another revision or lacks a service), else from `fallback` (the compose file at hand:
/// used only where it has the sha256 the revision recorded).
pub async fn deployed_state(
    base: &Client,
    incus_project: &str,
    compose: &str,
    obs: &Observation,
    read_back: &mut ReadBack,
    fallback: Option<&Desired>,
) -> anyhow::Result<Option<DeployedState>> {
    let revs = super::revisions::read(base, incus_project, compose).await?;
    let Some(deployed) = revision::deployed(&revs) else {
        return Ok(None);
    };
    let wanted = revision::files_to_read_back(deployed);
    let fresh = read_back.as_ref().is_some_and(|(n, files)| {
        *n == deployed.number && wanted.keys().all(|service| files.contains_key(service))
    });
    if !fresh {
        let files = read_back_files(
            base,
            incus_project,
            compose,
            wanted.clone(),
            &obs.observed,
            obs.facts.digest_key.as_ref(),
        )
        .await;
        *read_back = Some((deployed.number, files));
    }
    let mut files = read_back
        .as_ref()
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    if let Some(d) = fallback {
        for service in wanted.keys() {
            if !files.contains_key(service)
                && let Some(t) = d.services.iter().find(|t| &t.service == service)
            {
                files.insert(service.clone(), t.files.clone());
            }
        }
    }
    let desired = revision::deployed_desired(compose, incus_project, deployed, &files)
        .map_err(|e| anyhow!("revision {}: {e}", deployed.number))?;
    Ok(Some(DeployedState {
        unsettled: revision::watch_holds(&revs),
        desired,
    }))
}

/// The services a run records in a revision: those of `desired`, only those of
/// `options.only` when it is set (the others keep their stored form).
fn recorded_services(
    desired: &Desired,
    options: &Options,
) -> BTreeMap<String, revision::StoredService> {
    let mut services = super::revisions::services_of(desired);
    if let Some(only) = &options.only {
        services.retain(|s, _| only.contains(s));
    }
    services
}

/// Drops the actions of `plan` on the instances of `services` (they are left as they are).
pub fn leave_alone(plan: &mut Plan, services: &BTreeSet<String>) {
    if services.is_empty() {
        return;
    }
    for stage in &mut plan.stages {
        stage
            .actions
            .retain(|a| action_service(a).is_none_or(|s| !services.contains(s)));
    }
    plan.stages.retain(|s| !s.actions.is_empty());
    plan.rollouts.retain(|s, _| !services.contains(s));
}

/// The service an instance action is about (`None` for projects, networks, volumes).
pub fn action_service(a: &Action) -> Option<&str> {
    match a {
        Action::Create(p) | Action::Recreate(p) => Some(&p.service),
        Action::Start { service, .. }
        | Action::Stop { service, .. }
        | Action::Remove { service, .. } => Some(service),
        _ => None,
    }
}

/// Sets the replica count of the replicated services named in `scale` (`scale`: what
/// `docker service scale` changes). A global service is refused.
pub fn set_replicas(d: &mut Desired, scale: &BTreeMap<String, u32>) -> anyhow::Result<()> {
    for (name, n) in scale {
        let Some(t) = d.services.iter_mut().find(|t| &t.service == name) else {
            bail!("the deployed revision has no service {name:?}");
        };
        if matches!(t.spec.mode, Mode::Global) {
            bail!("service {name:?} is global (one replica per member): it cannot be scaled");
        }
        t.spec.mode = Mode::Replicated { replicas: *n };
    }
    Ok(())
}

/// Where a run's desired state comes from.
pub enum Source<'a> {
    /// A desired state planned from the compose file (`up`), with the checks of the file.
    File(Box<Desired>),
    /// A revision pair (`rollback`): the services of `target` (only `only` when not empty)
    /// rolling with the deployed revision's `rollback_config`; secret and config contents
    /// from `current` (the compose file at hand), else read back from running replicas.
    Revisions {
        target: u64,
        only: Vec<String>,
        current: Option<&'a Desired>,
    },
    /// The deployed revision with its contents read back; `scale` changes replica counts;
    /// `fallback` gives contents no running replica has.
    Deployed {
        scale: BTreeMap<String, u32>,
        fallback: Option<&'a Desired>,
    },
}

/// What a run may touch and how it plans.
#[derive(Default)]
pub struct Options {
    pub diff: DiffOptions,
    /// Keep only actions on these services' instances (and the objects they need); removals
    /// only of these services' replicas. `None`: everything.
    pub only: Option<BTreeSet<String>>,
    /// With `only`: actions on their dependencies too.
    pub with_deps: bool,
    pub dry_run: bool,
}

/// The policy of a run: the lock it holds, whether and how it records a revision, its
/// parallelism and readiness gate.
pub struct Policy<'a> {
    /// The project lock, held by the caller (taken before observing: the plan is made under
    /// it). `None` for a dry run, or in an Incus project incus-compose did not create (no
    /// lock is taken there; `up` says so).
    pub lock: Option<&'a LockGuard>,
    /// The cause a new revision records (`up`, `scale web=5`, `rollback to 3`); `None`: no
    /// revision is recorded.
    pub record: Option<String>,
    /// How many revisions are kept.
    pub keep: usize,
    pub parallel: usize,
    pub gate: Option<&'a health::Gate>,
}

/// What a run did.
pub struct Converged {
    pub plan: Plan,
    pub desired: Desired,
    pub obs: Observation,
    /// `None` for a dry run or an empty plan.
    pub outcome: Option<super::execute::Outcome>,
    /// The revision recorded and how it ended.
    pub revision: Option<(u64, RevisionOutcome)>,
    /// A dry run with nothing to change found an unfinished newest revision that a real run
    /// would complete (a run killed after its last action): the caller's read-only pass must
    /// then take the lock and run for real.
    pub unfinished: bool,
}

/// Plans `source` against what Incus holds now, and (unless a dry run) executes the plan
/// under `policy`.
pub async fn converge(
    base: &Client,
    incus_project: &str,
    compose: &str,
    obs: Observation,
    source: Source<'_>,
    options: &Options,
    policy: &Policy<'_>,
) -> anyhow::Result<Converged> {
    let desired = match source {
        Source::File(d) => *d,
        Source::Revisions {
            target,
            only,
            current,
        } => {
            let revs = super::revisions::read(base, incus_project, compose).await?;
            let Some(to) = revs.iter().find(|r| r.number == target) else {
                bail!("no revision {target} is kept");
            };
            let Some(deployed) = revision::deployed(&revs).or(revs.last()) else {
                bail!("compose project {compose} has no revision in Incus project {incus_project}");
            };
            let mut current = current.cloned();
            if current.is_none() {
                // No compose file: the contents of the target's files, read back where a
                // running replica has the same ones.
                let wanted = revision::files_to_read_back(to);
                let files = read_back_files(
                    base,
                    incus_project,
                    compose,
                    wanted,
                    &obs.observed,
                    obs.facts.digest_key.as_ref(),
                )
                .await;
                current = revision::deployed_desired(compose, incus_project, to, &files).ok();
            }
            revision::desired_from(
                compose,
                incus_project,
                to,
                deployed,
                &only,
                current.as_ref(),
            )
            .map_err(|e| anyhow!("{e} (nothing was changed)"))?
        }
        Source::Deployed { scale, fallback } => {
            let mut read_back = None;
            let Some(state) =
                deployed_state(base, incus_project, compose, &obs, &mut read_back, fallback)
                    .await?
            else {
                bail!(
                    "compose project {compose} has no completed revision in Incus project {incus_project}"
                );
            };
            let mut d = state.desired;
            set_replicas(&mut d, &scale)?;
            d
        }
    };
    let mut plan =
        ic_core::plan::diff(&desired, &obs.observed, &options.diff).map_err(|e| anyhow!("{e}"))?;
    if let Some(only) = &options.only {
        let touched = if options.with_deps {
            with_dependencies(&desired, only)
        } else {
            only.clone()
        };
        plan = restrict(plan, only, &touched);
    }
    if options.dry_run || plan.is_empty() {
        // Nothing to change: an update whose run was interrupted after its last action (or
        // that failed, and the cluster converged since) is complete now, whichever command
        // finds it so (`up`, `scale`, `rollback`).
        let mut revision = None;
        let unfinished = options.dry_run
            && plan.is_empty()
            && super::revisions::would_complete(
                &obs.observed.project_config,
                compose,
                recorded_services(&desired, options),
            );
        if !options.dry_run
            && let Some(cause) = &policy.record
            && let Some(n) = super::revisions::complete_if_converged(
                base,
                incus_project,
                compose,
                recorded_services(&desired, options),
                revision::networks_of(&desired),
                cause,
                policy.keep,
            )
            .await?
        {
            revision = Some((n, RevisionOutcome::Completed));
        }
        if !options.dry_run {
            // Published ports on every member follow the replicas (and members that joined).
            let lease = policy.lock.map(LockGuard::lease);
            // A member without the project's resolver (it joined, one was deleted) gets one.
            if !super::names::missing(&desired, &obs).is_empty() {
                let t = Target::new(base, incus_project, &obs, lease.clone(), Some(&desired));
                if let Err(e) = super::names::ensure(&t, compose).await {
                    eprintln!("warning: service names: {e:#}");
                }
            }
            let target = Target::new(base, incus_project, &obs, lease, None);
            forward_ports(&target, compose, &BTreeSet::new(), false).await;
        }
        return Ok(Converged {
            plan,
            desired,
            obs,
            outcome: None,
            revision,
            unfinished,
        });
    }
    // No lock in an Incus project incus-compose did not create (none is taken there, and
    // nothing is written to it for one): the steps then fence on nothing.
    let lease = policy.lock.map(LockGuard::lease);
    // A new revision when the services' specs changed (engine::revisions); a run that
    // changes only some services records only those (the others keep their stored form).
    let recorder = match &policy.record {
        Some(cause) => {
            super::revisions::begin(
                base,
                incus_project,
                compose,
                recorded_services(&desired, options),
                revision::networks_of(&desired),
                cause,
                policy.keep,
            )
            .await?
        }
        None => None,
    };
    let mut target = Target::new(base, incus_project, &obs, lease, Some(&desired));
    target.revision = recorder.as_ref().map(|r| r.revision.number);
    // Published ports first leave the replicas the plan stops or removes (a rolling update's
    // replicas are followed once it is over), then follow the new ones.
    let leaving: BTreeSet<String> = plan
        .stages
        .iter()
        .flat_map(|s| &s.actions)
        .filter_map(|a| match a {
            Action::Remove { name, .. } | Action::Stop { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    if !leaving.is_empty() {
        forward_ports(&target, compose, &leaving, true).await;
    }
    // The member resolvers of the names (engine::names) made beside the plan's first steps
    // (a replica that leaves before they run has no name to leave), and once the plan ran
    // (new members, the names of what runs now).
    let resolvers = async {
        if obs.observed.project_exists
            && let Err(e) = super::names::ensure(&target, compose).await
        {
            eprintln!("warning: service names: {e:#}");
        }
    };
    let (outcome, ()) = tokio::join!(
        super::execute_gated(&target, &plan, policy.parallel, policy.gate),
        resolvers
    );
    if let Err(e) = super::names::ensure(&target, compose).await {
        eprintln!("warning: service names: {e:#}");
    }
    forward_ports(&target, compose, &BTreeSet::new(), false).await;
    let mut recorded = None;
    // The members' links this run probed, recorded with the revision's outcome (one write),
    // or by themselves when no revision is recorded; only under the lock.
    let links = obs
        .links_to_record
        .clone()
        .filter(|_| policy.lock.is_some())
        .map(|v| (super::spanning::LINKS_KEY.to_string(), v));
    let mut recorder = recorder;
    if let (Some(r), Some((k, v))) = (recorder.as_mut(), &links) {
        r.extra.insert(k.clone(), v.clone());
    } else if let Some((k, v)) = &links {
        let written = super::lock::edit_project_config(base, incus_project, |config| {
            if config.get(k) == Some(v) || !super::is_ours(config, compose) {
                return false;
            }
            config.insert(k.clone(), v.clone());
            true
        })
        .await;
        if let Err(e) = written {
            eprintln!(
                "warning: cannot record the members' links in Incus project {incus_project}: {e}"
            );
        }
    }
    if let Some(r) = recorder {
        let number = r.revision.number;
        let result = super::revisions::outcome_of(&outcome);
        r.finish(result).await;
        recorded = Some((number, result));
        // Volume snapshots of revisions no longer kept go.
        if let Ok(revs) = super::revisions::read(base, incus_project, compose).await {
            super::revisions::prune_snapshots(&target, &desired, &revs).await;
        }
    }
    Ok(Converged {
        plan,
        desired,
        obs,
        outcome: Some(outcome),
        revision: recorded,
        unfinished: false,
    })
}

/// The forwarders of published ports (`engine::ingress`), after the replicas changed: each
/// change on a line of stderr, as the executor's; a failure is a warning (the replicas are up,
/// the next `up` or `watch` tries again).
pub(super) async fn forward_ports(
    target: &Target,
    compose: &str,
    leaving: &BTreeSet<String>,
    pre: bool,
) {
    match super::ingress::reconcile(target, compose, leaving, pre).await {
        Ok(lines) => {
            for l in lines {
                eprintln!("[+] {l}");
            }
        }
        Err(e) => eprintln!("warning: published ports: {e:#}"),
    }
}

/// `only` and the services they depend on, directly or not.
pub fn with_dependencies(d: &Desired, only: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = only.clone();
    loop {
        let more: Vec<String> = d
            .services
            .iter()
            .filter(|t| out.contains(&t.service))
            .flat_map(|t| t.depends_on.iter().cloned())
            .filter(|s| !out.contains(s))
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

/// Keep what a run restricted to `only` may do: instance actions on `touched` (those
/// services and, usually, their dependencies), the projects, networks and volumes they need,
/// and the DNS records of spanning networks (which list every replica). Never removals of
/// anything but replicas of `only`.
pub fn restrict(mut plan: Plan, only: &BTreeSet<String>, touched: &BTreeSet<String>) -> Plan {
    for stage in &mut plan.stages {
        stage.actions.retain(|a| match (a, action_service(a)) {
            (Action::Remove { service, .. }, _) => only.contains(service),
            (_, Some(service)) => touched.contains(service),
            (
                Action::RemoveNetwork { .. }
                | Action::RemoveVolume { .. }
                | Action::RemoveProject { .. },
                None,
            ) => false,
            (_, None) => true,
        });
    }
    plan.stages.retain(|s| !s.actions.is_empty());
    plan.rollouts.retain(|s, _| touched.contains(s));
    plan
}
