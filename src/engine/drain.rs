//! `node drain` and `node restore`, the I/O part. What moves is decided by the pure planner
//! (`plan::diff` with `DiffOptions::drain`, then `plan::drain::drain_steps`); this module
//! marks the member, takes each compose project's lock, runs the steps start-first (create the
//! replacements, wait until they run and are healthy, then remove the old replicas, global
//! services' replicas last), and reports what could not move.
//!
//! The mark: `scheduler.instance=manual` (neither Incus nor incus-compose places anything new
//! there; what runs there stays) plus [`DRAINED_KEY`], which records that `node drain` set it
//! and what `scheduler.instance` was before, so `node restore` undoes only that. Not Incus's
//! evacuation (`incus cluster evacuate`): that stops or moves *every* instance on the member,
//! incus-compose's or not, and incus-compose never touches instances it did not create.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ic_core::plan::drain::{DrainSteps, drain_steps, rebalance_evictions, rebalance_steps};
use ic_core::plan::{Action, Desired, DiffOptions, Plan, RolloutSpec, Stage};
use ic_core::rollout;
use ic_incus::Client;

use super::execute::Target;
use super::lock::{self, LockOptions};
use super::progress::Progress;
use super::{is_ours, observe};
use ic_core::keys::{DRAINED_KEY, LABEL_PROJECT};

const SCHEDULER_KEY: &str = "scheduler.instance";

/// What `node drain` was asked.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub member: String,
    /// Only this compose project (`-p NAME`).
    pub project: Option<String>,
    pub dry_run: bool,
    pub parallel: usize,
    /// `--no-wait-lock`: fail a project whose lock another run holds instead of waiting.
    pub no_wait_lock: bool,
}

/// Marks a member config as drained: `scheduler.instance=manual` and [`DRAINED_KEY`]
/// recording the previous value. Idempotent; returns whether it changed anything.
pub fn mark(config: &mut BTreeMap<String, String>, now: &str) -> bool {
    if config.contains_key(DRAINED_KEY) {
        if config.get(SCHEDULER_KEY).map(String::as_str) == Some("manual") {
            return false;
        }
        // Someone set it back by hand since: set it again, keep the first record.
        config.insert(SCHEDULER_KEY.into(), "manual".into());
        return true;
    }
    let mut record = serde_json::Map::new();
    record.insert("since".into(), now.into());
    if let Some(previous) = config.get(SCHEDULER_KEY) {
        record.insert(SCHEDULER_KEY.into(), previous.clone().into());
    }
    config.insert(
        DRAINED_KEY.into(),
        serde_json::Value::Object(record).to_string(),
    );
    config.insert(SCHEDULER_KEY.into(), "manual".into());
    true
}

/// Undoes [`mark`]: removes [`DRAINED_KEY`] and puts `scheduler.instance` back as it was
/// before the drain (when it still is `manual`: a value someone set since is theirs).
/// Returns whether it changed anything.
pub fn unmark(config: &mut BTreeMap<String, String>) -> bool {
    let Some(record) = config.remove(DRAINED_KEY) else {
        return false;
    };
    let previous = serde_json::from_str::<serde_json::Value>(&record)
        .ok()
        .and_then(|v| v.get(SCHEDULER_KEY)?.as_str().map(str::to_string));
    if config.get(SCHEDULER_KEY).map(String::as_str) == Some("manual") {
        match previous {
            Some(p) => {
                config.insert(SCHEDULER_KEY.into(), p);
            }
            None => {
                config.remove(SCHEDULER_KEY);
            }
        }
    }
    true
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Totals over the projects of one drain.
#[derive(Default)]
struct Totals {
    moved: usize,
    global_removed: usize,
    stuck: usize,
    failed: usize,
}

/// Drains `o.member`; `Ok(true)` when every replica left it.
pub async fn drain(base: &Client, o: &DrainOptions) -> anyhow::Result<bool> {
    let member = o.member.as_str();
    let info = base
        .server()
        .await
        .context("cannot read the Incus server's information")?;
    if !info.is_clustered() {
        bail!(
            "this Incus server is not clustered: there is no other member to move {member:?}'s replicas to"
        );
    }
    let members = base
        .cluster_members()
        .await
        .context("cannot list cluster members")?;
    let Some(m) = members.iter().find(|m| m.server_name == member) else {
        let names: Vec<&str> = members.iter().map(|m| m.server_name.as_str()).collect();
        bail!(
            "no cluster member {member:?} (members: {}); see `incus-compose node ls`",
            names.join(", ")
        );
    };
    if !m.is_online() && !m.status.eq_ignore_ascii_case("evacuated") {
        bail!(
            "cluster member {member} is {}: a drain needs it online (its replicas are stopped once their replacements run); `incus-compose watch` re-creates the replicas of an offline member elsewhere after its grace period",
            m.status.to_lowercase()
        );
    }
    let progress = Progress::new();
    if o.dry_run {
        println!(
            "would mark {member} scheduler.instance=manual (and {DRAINED_KEY}): nothing new is placed there"
        );
    } else {
        let now = rfc3339_now();
        super::member::edit_member(base, member, |c| mark(c, &now)).await?;
        progress.line(&format!(
            "[~] {member} marked scheduler.instance=manual: nothing new is placed there (`incus-compose node restore {member}` undoes it)"
        ));
    }
    let mut projects = super::deployed::list_projects(base, true).await?;
    if let Some(p) = &o.project {
        projects.retain(|l| &l.name == p);
        if projects.is_empty() {
            progress.line(&format!(
                "[i] no compose project {p:?} on this server (see `incus-compose ls -a`)"
            ));
        }
    }
    let mut totals = Totals::default();
    for p in &projects {
        if let Err(e) =
            drain_project(base, &p.name, &p.incus_project, o, &progress, &mut totals).await
        {
            totals.failed += 1;
            progress.line(&format!("[!] project {}: {e:#}", p.name));
        }
    }
    let summary = format!(
        "{member}: {} replica(s) moved, {} global service replica(s) removed, {} left on it, {} failure(s)",
        totals.moved, totals.global_removed, totals.stuck, totals.failed
    );
    if o.dry_run {
        println!("(dry run) {summary}");
    } else {
        progress.line(&format!(
            "[{}] {summary}",
            if totals.stuck + totals.failed == 0 {
                "✔"
            } else {
                "!"
            }
        ));
    }
    Ok(totals.stuck + totals.failed == 0)
}

/// Whether compose project `compose` has an instance on `member`.
fn has_instances_on(obs: &super::Observation, compose: &str, member: &str) -> bool {
    obs.observed
        .instances
        .iter()
        .any(|i| i.location == member && is_ours(&i.config, compose))
}

/// Plans the drain of `member` for one project from its deployed revision.
async fn plan_drain(
    base: &Client,
    compose: &str,
    incus_project: &str,
    member: &str,
) -> anyhow::Result<(DrainSteps, super::Observation, ic_core::plan::Desired)> {
    let obs = observe(base, incus_project, true).await?;
    // The deployed revision, secret and config contents read back from running replicas
    // (as `watch` reads them: they are not kept in Incus).
    let Some(state) =
        super::converge::deployed_state(base, incus_project, compose, &obs, &mut None, None)
            .await?
    else {
        bail!(
            "it has no completed revision in Incus project {incus_project}, so the replicas to keep are not known: run `incus-compose up` for it first; its replicas on {member} are left"
        );
    };
    let d = state.desired;
    let opts = DiffOptions {
        drain: BTreeSet::from([member.to_string()]),
        ..Default::default()
    };
    let plan = ic_core::plan::diff(&d, &obs.observed, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let global: BTreeSet<String> = d
        .services
        .iter()
        .filter(|t| matches!(t.spec.mode, ic_core::schedule::Mode::Global))
        .map(|t| t.service.clone())
        .collect();
    let steps = drain_steps(&plan, &obs.observed, member, &global);
    Ok((steps, obs, d))
}

fn describe_steps(steps: &DrainSteps, member: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in &steps.moves {
        out.push(format!(
            "move {} ({member}) -> {} on {}",
            m.old, m.create.name, m.create.member
        ));
    }
    for r in &steps.global_removals {
        if let Action::Remove { name, service, .. } = r {
            out.push(format!(
                "remove {name} on {member} (global service {service}: one replica per eligible member, none to keep elsewhere)"
            ));
        }
    }
    for r in &steps.surplus {
        if let Action::Remove { name, reason, .. } = r {
            out.push(format!("remove {name} on {member} ({reason})"));
        }
    }
    for s in &steps.stuck {
        out.push(format!("keep {} on {member}: {}", s.name, s.reason));
    }
    out
}

async fn drain_project(
    base: &Client,
    compose: &str,
    incus_project: &str,
    o: &DrainOptions,
    progress: &Progress,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let member = o.member.as_str();
    let first = observe(base, incus_project, false).await?;
    if !has_instances_on(&first, compose, member) {
        return Ok(());
    }
    if first
        .observed
        .project_config
        .get(LABEL_PROJECT)
        .map(String::as_str)
        != Some(compose)
    {
        let names: Vec<&str> = first
            .observed
            .instances
            .iter()
            .filter(|i| i.location == member && is_ours(&i.config, compose))
            .map(|i| i.name.as_str())
            .collect();
        totals.stuck += names.len();
        bail!(
            "Incus project {incus_project} was not created by incus-compose for it (no deployed revision, no lock): its replicas on {member} are left: {}",
            names.join(", ")
        );
    }
    if o.dry_run {
        let (steps, _, _) = plan_drain(base, compose, incus_project, member).await?;
        println!("project {compose} (Incus project {incus_project}):");
        for l in describe_steps(&steps, member) {
            println!("  {l}");
        }
        if !steps.other.is_empty() {
            println!(
                "  ({} other change(s) pending, not part of the drain: `incus-compose -p {compose} up` or `watch` makes them)",
                steps.other.len()
            );
        }
        totals.moved += steps.moves.len() + steps.surplus.len();
        totals.global_removed += steps.global_removals.len();
        totals.stuck += steps.stuck.len();
        return Ok(());
    }
    let Some(guard) = lock::acquire(
        base,
        incus_project,
        &LockOptions::from_env(!o.no_wait_lock)?,
    )
    .await?
    else {
        return Ok(());
    };
    // Planned again under the lock, from what is there now.
    let (steps, obs, d) = plan_drain(base, compose, incus_project, member).await?;
    progress.line(&format!(
        "[~] project {compose}: {} replica(s) to move off {member}, {} global service replica(s) to remove, {} staying",
        steps.moves.len() + steps.surplus.len(),
        steps.global_removals.len(),
        steps.stuck.len()
    ));
    for s in &steps.stuck {
        progress.line(&format!("[!] {} stays on {member}: {}", s.name, s.reason));
    }
    totals.stuck += steps.stuck.len();
    if !steps.other.is_empty() {
        progress.line(&format!(
            "[i] project {compose}: {} other change(s) pending, not part of the drain (`up` or `watch` makes them): {}",
            steps.other.len(),
            steps.other.join("; ")
        ));
    }
    run_steps(
        base,
        incus_project,
        &steps,
        &obs,
        &d,
        &guard,
        o.parallel,
        progress,
        totals,
    )
    .await;
    drop(guard);
    // Local data stays where it is.
    let left: Vec<String> = obs
        .observed
        .volumes
        .iter()
        .filter(|v| v.location == member && is_ours(&v.config, compose))
        .map(|v| format!("{} (pool {})", v.name, v.pool))
        .collect();
    if !left.is_empty() && !d.shared_storage {
        progress.line(&format!(
            "[!] warning: project {compose}: volumes stay on {member} (local storage; a drain copies no data): {}; the moved replicas use their own volume on their new member",
            left.join(", ")
        ));
    }
    Ok(())
}

/// The rollout of the moved slots of one service: start-first, `parallel` replicas per batch,
/// no delay and no monitor; a replacement that does not become ready fails its slot only (the
/// others go on: `continue`, any ratio), and its old replica keeps the slot. Its healthcheck
/// (when the service has one) is the readiness a replacement must reach.
fn move_spec(d: &Desired, service: &str, parallel: usize) -> RolloutSpec {
    let update = rollout::Config {
        parallelism: parallel.max(1),
        delay: Duration::ZERO,
        start_first: true,
        failure_action: rollout::Action::Continue,
        monitor: Duration::ZERO,
        max_failure_ratio: 1.0,
    };
    RolloutSpec {
        rollback: update.clone(),
        update,
        check: d
            .services
            .iter()
            .find(|t| t.service == service)
            .and_then(|t| t.rollout.check.clone()),
        // A move changes no data: nothing to snapshot.
        snapshot_volumes: Vec::new(),
        stop_first_slots: BTreeSet::new(),
    }
}

/// Runs drain steps under the project lock `guard`: the moves are start-first rollouts of the
/// moved slots through the one rollout executor (`engine::rollout`, via `execute`): each
/// replacement created beside the replica it replaces, the old one stopped and retired once
/// the replacement runs (healthy), retired replicas removed when the service's rollout ends.
/// Then replacements that did not become ready go again (their old replica keeps the slot),
/// with the surplus replicas, then global services' replicas. Counts into `totals`.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    base: &Client,
    incus_project: &str,
    steps: &DrainSteps,
    obs: &super::Observation,
    d: &Desired,
    guard: &super::LockGuard,
    parallel: usize,
    progress: &Progress,
    totals: &mut Totals,
) {
    // The records of spanning networks are planned again from `d` (see below).
    let t = Target::new(base, incus_project, obs, Some(guard.lease()), Some(d));
    let run = |stages: Vec<Stage>, rollouts: BTreeMap<String, RolloutSpec>| Plan {
        rollouts,
        ..Plan::of(incus_project, stages)
    };
    // 1. The volumes the replacements need. The records of spanning networks are written
    // once, while every slot has a replica serving (a write restarts the tunnels on every
    // member): by the rollout when it retires replicas it marked, else below.
    let (records, prepare): (Vec<Action>, Vec<Action>) = steps
        .prepare
        .iter()
        .cloned()
        .partition(|a| matches!(a, Action::UpdateNetwork { .. }));
    // 2. The moves: each a slot replaced start-first on its new member.
    let mut rollouts = BTreeMap::new();
    let mut moves = Vec::new();
    for m in &steps.moves {
        let mut p = m.create.clone();
        p.old_name = Some(m.old.clone());
        if let Action::Remove { member, .. } = &m.retire {
            p.old_member = Some(member.clone());
        }
        rollouts
            .entry(p.service.clone())
            .or_insert_with(|| move_spec(d, &p.service, parallel));
        moves.push(Action::Recreate(Box::new(p)));
    }
    let plan = run(
        vec![
            Stage {
                title: "prepare".into(),
                actions: prepare,
            },
            Stage {
                title: "moves".into(),
                actions: moves,
            },
        ],
        rollouts,
    );
    // Published ports (the members' forwarders) leave each replica before it stops
    // (`execute::before_stop`) and follow the replacements once the moves are over (below).
    let compose = d.compose_project.as_str();
    let outcome = super::execute(&t, &plan, parallel).await;
    // Moves that did not happen: their replacement (when made) goes again, the old replica
    // keeps the slot (two replicas of one slot would have the next `up` keep the replacement).
    let mut undo = Vec::new();
    let mut moved = 0;
    for m in &steps.moves {
        let failed = outcome
            .failed
            .iter()
            .chain(outcome.rollouts.iter().flat_map(|r| r.failed.iter()))
            .find(|(obj, _)| obj == &m.create.name || obj == &m.old || obj == &m.create.service);
        let not_run = outcome.skipped > 0
            || !outcome
                .rollouts
                .iter()
                .any(|r| r.service == m.create.service);
        let why = match (failed, not_run) {
            (Some((_, why)), _) => why.clone(),
            (None, true) => "its creation did not run".to_string(),
            (None, false) => {
                moved += 1;
                continue;
            }
        };
        totals.failed += 1;
        let at = match &m.retire {
            Action::Remove { member, .. } => member.as_str(),
            _ => "its member",
        };
        progress.line(&format!(
            "[!] {} (replacing {}) is not ready: {why}; {} stays on {at}",
            m.create.name, m.old, m.old
        ));
        undo.push(Action::Remove {
            name: m.create.name.clone(),
            service: m.create.service.clone(),
            member: m.create.member.clone(),
            timeout: m.create.stop_timeout,
            reason: format!("not ready to replace {}", m.old),
        });
    }
    // Undone replacements may not exist (their creation failed): only those that do go.
    let mut exists = Vec::new();
    for a in &undo {
        exists.push(
            matches!(a, Action::Remove { name, .. } if t.project.instance(name).await.is_ok()),
        );
    }
    let mut exists = exists.into_iter();
    undo.retain(|_| exists.next().unwrap_or(false));
    // 3. Undone replacements and surplus replicas, then 4. global services' replicas, last.
    let removals = run(
        vec![
            Stage {
                title: "replaced".into(),
                actions: undo.iter().chain(&steps.surplus).cloned().collect(),
            },
            Stage {
                title: "global".into(),
                actions: steps.global_removals.clone(),
            },
        ],
        BTreeMap::new(),
    );
    let outcome2 = super::execute(&t, &removals, parallel).await;
    // The records name the replacements (planned again now), when the rollout did not write
    // them already.
    if !records.is_empty()
        && let Err(e) = super::rollout::write_records(&t, progress).await
    {
        progress.line(&format!(
            "[!] DNS records not updated after the drain ({e:#}); the next `up` writes them"
        ));
    }
    // The member resolvers name what runs now (the stopped replicas leave even their own
    // names); a push that changes nothing is not sent.
    if let Err(e) = super::names::publish(&t).await {
        progress.line(&format!(
            "[!] service names not updated after the drain ({e:#})"
        ));
    }
    super::converge::forward_ports(&t, compose, &BTreeSet::new(), false).await;
    totals.failed += outcome2.failed.len();
    totals.moved += moved
        + steps
            .surplus
            .iter()
            .filter(|a| !outcome2.failed.iter().any(|(obj, _)| obj == &a.object()))
            .count();
    totals.global_removed += steps
        .global_removals
        .iter()
        .filter(|a| !outcome2.failed.iter().any(|(obj, _)| obj == &a.object()))
        .count();
    if outcome2.skipped > 0 {
        totals.failed += outcome2.skipped;
    }
}

/// Undoes `node drain`'s mark on `member`: the message to print.
pub async fn restore(base: &Client, member: &str, rebalance: bool) -> anyhow::Result<String> {
    let (m, _) = base
        .cluster_member_with_etag(member)
        .await
        .with_context(|| format!("cannot read cluster member {member:?}"))?;
    if !m.config.contains_key(DRAINED_KEY) {
        let manual = m.config.get(SCHEDULER_KEY).map(String::as_str) == Some("manual");
        return Ok(if manual {
            format!(
                "{member} was not drained by incus-compose: nothing changed; its scheduler.instance=manual was set by someone else (`incus cluster set {member} scheduler.instance=all` lifts it)"
            )
        } else {
            format!("{member} was not drained: nothing changed")
        });
    }
    let config = super::member::edit_member(base, member, unmark).await?;
    let now = config
        .get(SCHEDULER_KEY)
        .map_or("all (the default)".to_string(), Clone::clone);
    Ok(if rebalance {
        format!("{member} restored: scheduler.instance is {now} again")
    } else {
        format!(
            "{member} restored: scheduler.instance is {now} again; nothing moves back by itself (new replicas, `up`, `scale` and `watch` place replicas there again; `--rebalance` moves replicas back)"
        )
    })
}

/// `node restore --rebalance`: in every compose project (or `o.project`), replicas move
/// start-first, as a drain moves them, from members holding more than their share to those
/// holding less (the spread the scheduler gives from scratch), under each project's lock.
/// `Ok(true)` when every move succeeded.
pub async fn rebalance(base: &Client, o: &DrainOptions) -> anyhow::Result<bool> {
    let progress = Progress::new();
    let mut projects = super::deployed::list_projects(base, true).await?;
    if let Some(p) = &o.project {
        projects.retain(|l| &l.name == p);
    }
    let mut totals = Totals::default();
    for p in &projects {
        if let Err(e) =
            rebalance_project(base, &p.name, &p.incus_project, o, &progress, &mut totals).await
        {
            totals.failed += 1;
            progress.line(&format!("[!] project {}: {e:#}", p.name));
        }
    }
    progress.line(&format!(
        "[{}] rebalance: {} replica(s) moved, {} failure(s)",
        if totals.failed == 0 { "✔" } else { "!" },
        totals.moved,
        totals.failed
    ));
    Ok(totals.failed == 0)
}

async fn rebalance_project(
    base: &Client,
    compose: &str,
    incus_project: &str,
    o: &DrainOptions,
    progress: &Progress,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    match base.get_project(incus_project).await {
        Ok(p) if p.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose) => {}
        // Not made by incus-compose: no revision, no lock; left as it is.
        Ok(_) => return Ok(()),
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e).context(format!("cannot read Incus project {incus_project}")),
    }
    let Some(guard) = lock::acquire(
        base,
        incus_project,
        &LockOptions::from_env(!o.no_wait_lock)?,
    )
    .await?
    else {
        return Ok(());
    };
    let obs = observe(base, incus_project, true).await?;
    let Some(state) =
        super::converge::deployed_state(base, incus_project, compose, &obs, &mut None, None)
            .await?
    else {
        return Ok(());
    };
    let d = state.desired;
    let evict = rebalance_evictions(&d, &obs.observed);
    if evict.is_empty() {
        return Ok(());
    }
    let opts = DiffOptions {
        evict: evict.clone(),
        ..Default::default()
    };
    let plan = ic_core::plan::diff(&d, &obs.observed, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = rebalance_steps(&plan, &obs.observed, &evict);
    if steps.moves.is_empty() {
        return Ok(());
    }
    progress.line(&format!(
        "[~] project {compose}: {} replica(s) to move for an even spread",
        steps.moves.len()
    ));
    run_steps(
        base,
        incus_project,
        &steps,
        &obs,
        &d,
        &guard,
        o.parallel,
        progress,
        totals,
    )
    .await;
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn drain_marks_the_member_manual_and_restore_puts_back_exactly_what_was_there() {
        let mut c = config(&[("user.zone", "a")]);
        assert!(mark(&mut c, "2026-12-03T20:00:00Z"));
        assert_eq!(c.get(SCHEDULER_KEY).map(String::as_str), Some("manual"));
        assert!(c.contains_key(DRAINED_KEY));
        assert!(!mark(&mut c, "later"), "marking twice changes nothing");
        assert!(unmark(&mut c));
        assert_eq!(c, config(&[("user.zone", "a")]));
        assert!(!unmark(&mut c), "restoring twice changes nothing");
    }

    #[test]
    fn restore_keeps_a_scheduler_value_set_before_the_drain_or_changed_since() {
        let mut c = config(&[(SCHEDULER_KEY, "group")]);
        mark(&mut c, "t");
        unmark(&mut c);
        assert_eq!(c, config(&[(SCHEDULER_KEY, "group")]));
        // Set by hand to `all` during the drain: that is the operator's, kept.
        let mut c = config(&[]);
        mark(&mut c, "t");
        c.insert(SCHEDULER_KEY.into(), "all".into());
        unmark(&mut c);
        assert_eq!(c, config(&[(SCHEDULER_KEY, "all")]));
        // Already manual before the drain: still manual after the restore.
        let mut c = config(&[(SCHEDULER_KEY, "manual")]);
        mark(&mut c, "t");
        unmark(&mut c);
        assert_eq!(c, config(&[(SCHEDULER_KEY, "manual")]));
    }

    #[test]
    fn a_member_that_was_not_drained_is_not_restored() {
        let mut c = config(&[(SCHEDULER_KEY, "manual")]);
        assert!(!unmark(&mut c));
        assert_eq!(c, config(&[(SCHEDULER_KEY, "manual")]));
    }
}
