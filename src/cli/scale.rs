//! `incus-compose scale SERVICE=N ...`: set the number of replicas of some services, like
//! `up --scale` restricted to them.
//!
//! - Only the count changes: missing replicas are created (and started), surplus ones removed
//!   (the scheduler's scale-down order), stopped ones started. Existing replicas are never
//!   recreated, even if the compose file changed since (`up` does that).
//! - As `docker service scale`: from the deployed revision's specs (`engine::converge`,
//!   `Source::Deployed`), recorded as a new revision so that `watch` keeps the count; from the
//!   compose file only when nothing of these services is deployed yet.
//! - Services the scaled ones depend on are created or started if need be, never recreated;
//!   with `--no-deps` they are not touched at all. No other service is touched.
//! - Global services cannot be scaled (one replica per member).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail};
use clap::Args;
use ic_compose::model::DeployMode;
use ic_core::plan::{DiffOptions, PlanOptions};

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::shared::print_plan;
use crate::engine::{self, converge, observe};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Do not create or start the services the scaled ones depend on
    #[arg(long)]
    pub no_deps: bool,
    /// Print the actions, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Services and their number of replicas
    #[arg(required = true, value_name = "SERVICE=N")]
    pub scale: Vec<String>,
}

fn parse_scale(items: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (svc, n) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("{item:?}: expected SERVICE=N"))?;
        let n: u32 = n
            .parse()
            .map_err(|_| anyhow!("{item:?}: {n:?} is not a number of replicas"))?;
        if out.insert(svc.to_string(), n).is_some() {
            bail!("service {svc:?} is named twice");
        }
    }
    Ok(out)
}

pub fn run(global: &GlobalArgs, args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let ctx = Context::new(global)?;
    let scale = parse_scale(&args.scale)?;
    for name in scale.keys() {
        let Some(svc) = ctx.project.services.get(name) else {
            bail!(
                "no service {name:?} in compose project {}",
                ctx.project.name
            );
        };
        if svc
            .deploy
            .as_ref()
            .is_some_and(|d| d.mode == DeployMode::Global)
        {
            bail!("service {name:?} is global (one replica per member): it cannot be scaled");
        }
    }
    let scaled: BTreeSet<String> = scale.keys().cloned().collect();
    let cause = format!("scale {}", args.scale.join(" "));
    let diff = DiffOptions {
        no_recreate: true,
        ..Default::default()
    };
    block_on(async {
        // Read-only first (issue 22): planned without the lock; the lock is taken, and the
        // project observed and planned again under it, only when there is something to do.
        let mut _lock = None;
        let mut read_only = !args.dry_run;
        loop {
            let obs = if read_only || args.dry_run {
                observe(&ctx.base, &ctx.incus_project, true).await?
            } else {
                engine::observe_fresh(&ctx.base, &ctx.incus_project).await?
            };
            // The file's services (the scaled ones and what they depend on), for a project never
            // deployed and for secret and config contents no running replica has.
            let opts = PlanOptions {
                incus_project: Some(ctx.incus_project.clone()),
                services: scaled.iter().cloned().collect(),
                scale: scale.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let file = match ic_core::plan::desired(&ctx.project, &obs.facts, &opts).and_then(|d| {
                ic_core::plan::check_platforms(&ctx.project, &d, &obs.observed).map(|()| d)
            }) {
                Ok(d) => d,
                Err(e) => bail!("{e}"),
            };
            // As `docker service scale`: only the replica counts of the deployed specs change
            // (recorded as a revision, so `watch` keeps them); the file's specs only when the
            // project has no deployed revision of these services yet.
            let revs = engine::revisions::read(&ctx.base, &ctx.incus_project, &ctx.project.name)
                .await
                .unwrap_or_default();
            let from_deployed = ic_core::revision::deployed(&revs)
                .is_some_and(|d| scaled.iter().all(|s| d.services.contains_key(s)));
            let source = if from_deployed {
                converge::Source::Deployed {
                    scale: scale.clone(),
                    fallback: Some(&file),
                }
            } else {
                converge::Source::File(Box::new(file.clone()))
            };
            let done = converge::converge(
                &ctx.base,
                &ctx.incus_project,
                &ctx.project.name,
                obs,
                source,
                &converge::Options {
                    diff: diff.clone(),
                    only: Some(scaled.clone()),
                    with_deps: !args.no_deps,
                    dry_run: args.dry_run || read_only,
                },
                &converge::Policy {
                    lock: _lock.as_ref(),
                    record: Some(cause.clone()),
                    keep: engine::revisions::keep(Some(&ctx.project)),
                    parallel: args.parallel,
                    gate: None,
                },
            )
            .await?;
            let plan = &done.plan;
            if read_only && (!plan.is_empty() || done.unfinished) {
                _lock = ctx.lock().await?;
                read_only = false;
                continue;
            }
            for w in &plan.warnings {
                eprintln!("warning: {w}");
            }
            if args.dry_run {
                print_plan(plan, &ctx.project.name);
                return Ok(ExitCode::SUCCESS);
            }
            let Some(outcome) = done.outcome else {
                println!("Nothing to change: the services already have these numbers of replicas");
                return Ok(ExitCode::SUCCESS);
            };
            if let Some((number, result)) = done.revision {
                println!("revision {number}: {result}");
            }
            if outcome.ok() {
                println!(
                    "scale: {} change(s) done in {:.1} s",
                    outcome.done,
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            outcome.report_failures("scale", Some(started.elapsed()));
            return Ok(ExitCode::FAILURE);
        }
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::converge::restrict;
    use ic_core::plan::{Action, Plan, Stage};

    fn plan(actions: Vec<Action>) -> Plan {
        Plan {
            incus_project: "p".into(),
            stages: vec![Stage {
                title: "t".into(),
                actions,
            }],
            unchanged: vec![],
            placement: vec![],
            pending: vec![],
            rollouts: Default::default(),
            warnings: vec![],
        }
    }

    fn start(name: &str, service: &str) -> Action {
        Action::Start {
            name: name.into(),
            service: service.into(),
        }
    }

    fn remove(name: &str, service: &str) -> Action {
        Action::Remove {
            name: name.into(),
            service: service.into(),
            member: "m".into(),
            timeout: 1,
            reason: "r".into(),
        }
    }

    #[test]
    fn scale_parses_service_counts_and_refuses_junk() {
        let s = parse_scale(&["web=3".into(), "db=0".into()]).unwrap();
        assert_eq!(s["web"], 3);
        assert_eq!(s["db"], 0);
        assert!(parse_scale(&["web".into()]).is_err());
        assert!(parse_scale(&["web=x".into()]).is_err());
        assert!(parse_scale(&["web=1".into(), "web=2".into()]).is_err());
    }

    #[test]
    fn restrict_keeps_dependencies_unless_no_deps_and_never_removes_others() {
        let scaled = BTreeSet::from(["web".to_string()]);
        let p = plan(vec![
            start("web-2", "web"),
            start("db-1", "db"),
            remove("web-3", "web"),
            remove("old-1", "old"),
            Action::RemoveNetwork { name: "n".into() },
        ]);
        let with_deps = BTreeSet::from(["web".to_string(), "db".to_string()]);
        let kept = restrict(p.clone(), &scaled, &with_deps);
        let names: Vec<String> = kept.actions().map(Action::object).collect();
        assert_eq!(names, ["web-2", "db-1", "web-3"]);
        let kept = restrict(p, &scaled, &scaled);
        let names: Vec<String> = kept.actions().map(Action::object).collect();
        assert_eq!(names, ["web-2", "web-3"]);
    }
}
