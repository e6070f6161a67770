//! Revisions, the I/O part: read them from and write them to the Incus project's config
//! (`ic_core::revision` decides what they hold), and snapshot named volumes before a
//! service that mounts them is replaced.

use std::collections::BTreeMap;

use anyhow::Context as _;
use ic_compose::Project;
use ic_core::plan::Desired;
use ic_core::revision::{self, Outcome, Revision, StoredService};
use ic_incus::Client;

use super::lock::edit_project_config;
use ic_core::keys::LABEL_SERVICE;

/// The revisions kept in Incus project `incus_project` of compose project `compose`, oldest
/// first (none when the project does not exist or is not ours). Unreadable entries are
/// warned about.
pub async fn read(
    base: &Client,
    incus_project: &str,
    compose: &str,
) -> anyhow::Result<Vec<Revision>> {
    let project = match base.get_project(incus_project).await {
        Ok(p) => p,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read Incus project {incus_project}"));
        }
    };
    if !super::is_ours(&project.config, compose) {
        return Ok(Vec::new());
    }
    let (revs, bad) = revision::read(&project.config);
    for b in bad {
        eprintln!("warning: unreadable revision in Incus project {incus_project}: {b}");
    }
    Ok(revs)
}

/// How many revisions a project keeps: `x-incus: {revisions: N}`, else 10.
pub fn keep(project: Option<&Project>) -> usize {
    project
        .and_then(|p| p.extensions.get("x-incus"))
        .and_then(|x| x.get("revisions"))
        .and_then(|n| n.as_u64())
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX).max(1))
        .unwrap_or(revision::DEFAULT_KEEP)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The revision a run is deploying, recorded in Incus before it acts.
pub struct Recorder {
    base: Client,
    incus_project: String,
    keep: usize,
    pub revision: Revision,
    /// Other keys of the Incus project's config the next write of the revision sets too
    /// (one write per run: `engine::converge` records the members' links with the outcome).
    pub extra: BTreeMap<String, String>,
}

/// Records that `services` are being deployed (by `cause`): a new revision when they differ
/// from the newest one; the newest one reopened (`in progress` again) when they equal it and
/// its rollout did not complete; `None` otherwise (nothing to record). Services of `services_base` not in `services` keep
/// their stored form (an `up SERVICE` changes only what it names).
pub async fn begin(
    base: &Client,
    incus_project: &str,
    compose: &str,
    services: BTreeMap<String, StoredService>,
    networks: Vec<revision::StoredNetwork>,
    cause: &str,
    keep: usize,
) -> anyhow::Result<Option<Recorder>> {
    // Only in an Incus project incus-compose created for this compose project: one made by
    // hand (`--incus-project`) is never written to.
    match base.get_project(incus_project).await {
        Ok(p) if super::is_ours(&p.config, compose) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read Incus project {incus_project}"));
        }
    }
    let revs = read(base, incus_project, compose).await?;
    // The same services as the newest revision, whose rollout did not complete (an update
    // interrupted, failed or paused): this run goes on with it and records how it ends.
    let Some(rev) = next_revision(&revs, services, networks, cause, Outcome::InProgress) else {
        return Ok(None);
    };
    Recorder::written(base, incus_project, keep, rev)
        .await
        .map(Some)
}

/// What deploying `services` records after `revs`, with `outcome`: the newest revision
/// reopened when it has the same services and its rollout did not complete, a new one when
/// they differ from it (services it has and `services` does not name keep their stored
/// form), `None` when the newest one completed with them.
fn next_revision(
    revs: &[Revision],
    services: BTreeMap<String, StoredService>,
    networks: Vec<revision::StoredNetwork>,
    cause: &str,
    outcome: Outcome,
) -> Option<Revision> {
    let mut all = revs.last().map(|r| r.services.clone()).unwrap_or_default();
    all.extend(services);
    if let Some(open) = revision::to_reopen(revs, &all) {
        return Some(Revision {
            outcome,
            ..open.clone()
        });
    }
    revision::is_new(revs, &all).then(|| Revision {
        number: revs.last().map_or(1, |r| r.number + 1),
        time: now_rfc3339(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        outcome,
        cause: cause.to_string(),
        services: all,
        networks,
    })
}

/// After a run found nothing to change: when the newest revision has the services deployed
/// (`services`, as [`begin`] takes them) and its rollout did not complete (the run that made it
/// was interrupted after its last action, or failed and the cluster converged since), it is
/// recorded `completed`; when the services differ from the newest revision's in what moves
/// no replica (a placement constraint the replicas still meet, `update_config`, a
/// reservation...), they are a new revision, `completed` at once (by `cause`). Returns its
/// number then.
pub async fn complete_if_converged(
    base: &Client,
    incus_project: &str,
    compose: &str,
    services: BTreeMap<String, StoredService>,
    networks: Vec<revision::StoredNetwork>,
    cause: &str,
    keep: usize,
) -> anyhow::Result<Option<u64>> {
    let revs = read(base, incus_project, compose).await?;
    let Some(rev) = next_revision(&revs, services, networks, cause, Outcome::Completed) else {
        return Ok(None);
    };
    let rec = Recorder::written(base, incus_project, keep, rev).await?;
    Ok(Some(rec.revision.number))
}

/// Whether [`complete_if_converged`] would write anything, judged from the Incus project's
/// config as observed (no request): its newest revision has `services` and did not complete,
/// or `services` differ from it.
pub fn would_complete(
    config: &BTreeMap<String, String>,
    compose: &str,
    services: BTreeMap<String, StoredService>,
) -> bool {
    if !super::is_ours(config, compose) {
        return false;
    }
    let (revs, _) = revision::read(config);
    next_revision(&revs, services, Vec::new(), "", Outcome::Completed).is_some()
}

impl Recorder {
    /// A recorder of `revision`, written to the Incus project's config.
    async fn written(
        base: &Client,
        incus_project: &str,
        keep: usize,
        revision: Revision,
    ) -> anyhow::Result<Recorder> {
        let rec = Recorder {
            base: base.clone(),
            incus_project: incus_project.to_string(),
            keep,
            revision,
            extra: BTreeMap::new(),
        };
        rec.write().await?;
        Ok(rec)
    }

    async fn write(&self) -> anyhow::Result<()> {
        let rev = &self.revision;
        edit_project_config(&self.base, &self.incus_project, |config| {
            let mut next = revision::with_revision(config, rev, self.keep);
            next.extend(self.extra.clone());
            let changed = &next != config;
            *config = next;
            changed
        })
        .await
        .with_context(|| {
            format!(
                "cannot record revision {} in Incus project {}",
                rev.number, self.incus_project
            )
        })?;
        Ok(())
    }

    /// Records how the rollout ended (a failure to record is a warning).
    pub async fn finish(mut self, outcome: Outcome) {
        self.revision.outcome = outcome;
        if let Err(e) = self.write().await {
            eprintln!("warning: {e:#}");
        }
    }
}

/// The outcome of a run from what `execute` reports.
pub fn outcome_of(outcome: &super::execute::Outcome) -> Outcome {
    use super::rollout::Ending;
    if outcome.ok() {
        return Outcome::Completed;
    }
    // Only replicas that completed updates went past (`failure_action: continue`): the
    // rollout completed as configured.
    let went_past = |f: &(String, String)| {
        outcome
            .rollouts
            .iter()
            .any(|r| r.ending == Ending::Completed && r.failed.contains(f))
    };
    if outcome.failed.iter().all(went_past) {
        return Outcome::Completed;
    }
    let endings: Vec<&Ending> = outcome.rollouts.iter().map(|r| &r.ending).collect();
    if endings.contains(&&Ending::RolledBack) {
        Outcome::RolledBack
    } else if endings
        .iter()
        .any(|e| matches!(e, Ending::Paused | Ending::RollbackPaused))
    {
        Outcome::Paused
    } else {
        Outcome::Failed
    }
}

/// The stored services of `d`.
pub fn services_of(d: &Desired) -> BTreeMap<String, StoredService> {
    revision::services_of(d)
}

/// The snapshot a revision's update takes of a named volume before it replaces replicas:
/// the data as it was before revision `n`.
pub fn snapshot_name(n: u64) -> String {
    format!("incus-compose-rev-{n}")
}

/// The copies of custom volume `name` in `pool`: their members (`None` on a standalone
/// server or for a shared pool's single copy).
async fn volume_copies(
    t: &super::Target,
    pool: &str,
    name: &str,
) -> anyhow::Result<Vec<Option<String>>> {
    let all = t
        .project
        .storage_volumes(pool)
        .await
        .with_context(|| format!("cannot list the volumes of pool {pool}"))?;
    Ok(all
        .into_iter()
        .filter(|v| v.kind == "custom" && v.name == name)
        .map(|v| {
            (t.clustered && !v.location.is_empty() && v.location != "none").then_some(v.location)
        })
        .collect())
}

/// Before a service's replicas are replaced: a snapshot of each named volume it mounts (every
/// copy), named after the revision. One that exists already (a resumed update) is kept.
pub async fn snapshot_volumes(
    t: &super::Target,
    spec: &ic_core::plan::RolloutSpec,
) -> anyhow::Result<Vec<String>> {
    let Some(n) = t.revision else {
        return Ok(Vec::new());
    };
    let snap = snapshot_name(n);
    let mut lines = Vec::new();
    for (pool, name) in &spec.snapshot_volumes {
        for on in volume_copies(t, pool, name).await? {
            let have = t
                .project
                .volume_snapshots(pool, name, on.as_deref())
                .await
                .unwrap_or_default();
            if have.contains(&snap) {
                continue;
            }
            t.project
                .create_volume_snapshot(pool, name, &snap, on.as_deref())
                .await
                .with_context(|| format!("snapshotting volume {name} before the update"))?;
            lines.push(format!(
                "[+] volume {name}{} snapshotted as {snap}",
                on.map(|m| format!(" on {m}")).unwrap_or_default()
            ));
        }
    }
    Ok(lines)
}

/// `rollback --volumes`: the named volumes of the services being rolled back are restored
/// from the snapshot the first update after revision `target` took (the data as it was under
/// `target`), after the replicas that use them are stopped; replicas the plan does not
/// replace are started again afterwards.
pub async fn restore_volumes(
    t: &super::Target,
    d: &Desired,
    revs: &[Revision],
    target: u64,
    plan: &ic_core::plan::Plan,
) -> anyhow::Result<Vec<String>> {
    use ic_core::plan::Action;
    let later: Vec<u64> = revs
        .iter()
        .map(|r| r.number)
        .filter(|n| *n > target)
        .collect();
    let mut lines = Vec::new();
    let mut to_restore = Vec::new();
    for tpl in &d.services {
        for (pool, name) in &tpl.rollout.snapshot_volumes {
            for on in volume_copies(t, pool, name).await? {
                let have = t
                    .project
                    .volume_snapshots(pool, name, on.as_deref())
                    .await
                    .unwrap_or_default();
                let Some(n) = later.iter().find(|n| have.contains(&snapshot_name(**n))) else {
                    anyhow::bail!(
                        "volume {name}: no snapshot taken after revision {target} is kept (it has: {}); nothing was changed",
                        if have.is_empty() {
                            "none".to_string()
                        } else {
                            have.join(", ")
                        }
                    );
                };
                to_restore.push((tpl.service.clone(), pool.clone(), name.clone(), on, *n));
            }
        }
    }
    if to_restore.is_empty() {
        return Ok(lines);
    }
    // Stop every replica of the services that mount them.
    let services: std::collections::BTreeSet<&String> =
        to_restore.iter().map(|(s, ..)| s).collect();
    let instances = t.project.instances().await?;
    let mut stopped = Vec::new();
    for i in &instances {
        let Some(s) = i.config.get(LABEL_SERVICE) else {
            continue;
        };
        if services.contains(s) && i.is_running() {
            super::execute::stop(t, &i.name, 10).await?;
            stopped.push(i.name.clone());
            lines.push(format!("[.] {} stopped for the volume restore", i.name));
        }
    }
    for (_, pool, name, on, n) in &to_restore {
        let snap = snapshot_name(*n);
        t.project
            .restore_volume_snapshot(pool, name, &snap, on.as_deref())
            .await
            .with_context(|| format!("restoring volume {name} from {snap}"))?;
        lines.push(format!(
            "[<] volume {name}{} restored from {snap}",
            on.as_ref().map(|m| format!(" on {m}")).unwrap_or_default()
        ));
    }
    // Replicas the rollback will not replace are started again now.
    let replaced: std::collections::BTreeSet<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::Recreate(p) => p.old_name.clone(),
            _ => None,
        })
        .collect();
    for name in stopped.iter().filter(|n| !replaced.contains(*n)) {
        super::execute::start(t, name).await?;
        lines.push(format!("[+] {name} started"));
    }
    Ok(lines)
}

/// Snapshots of revisions no longer kept are removed (a failure is a warning).
pub async fn prune_snapshots(t: &super::Target, d: &Desired, revs: &[Revision]) {
    let kept: std::collections::BTreeSet<String> =
        revs.iter().map(|r| snapshot_name(r.number)).collect();
    for tpl in &d.services {
        for (pool, name) in &tpl.rollout.snapshot_volumes {
            let Ok(copies) = volume_copies(t, pool, name).await else {
                continue;
            };
            for on in copies {
                let have = t
                    .project
                    .volume_snapshots(pool, name, on.as_deref())
                    .await
                    .unwrap_or_default();
                for s in have {
                    if s.starts_with("incus-compose-rev-") && !kept.contains(&s) {
                        if let Err(e) = t
                            .project
                            .delete_volume_snapshot(pool, name, &s, on.as_deref())
                            .await
                        {
                            eprintln!("warning: removing old snapshot {s} of volume {name}: {e}");
                        }
                    }
                }
            }
        }
    }
}
