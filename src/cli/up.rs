//! `incus-compose up`: converge Incus to the compose file. Observe, plan (pure), execute.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Args;
use ic_compose::model::PullPolicy;
use ic_core::plan::placement::PendingReplica;
use ic_core::plan::{DiffOptions, Plan, PlanOptions};

use super::GlobalArgs;
use super::project::{Context, block_on};
use crate::engine::{self, converge, health};

/// Exit status of `up` when everything else was done but some replicas are pending: no member
/// can take them now (each is listed with every member's reason).
pub const EXIT_PENDING: u8 = 3;

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when every replica is placed (and running); 3 when everything else was done but some replicas are pending, because no member can take them now (each is printed with every member's reason; `ps` shows them too); 1 on any other error."
)]
pub struct UpArgs {
    /// Run in the background (always the case for now: `up` returns once everything runs)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print the actions and the placement, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Recreate instances even if their configuration did not change
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// Keep existing instances even if their configuration changed
    #[arg(long)]
    pub no_recreate: bool,
    /// Remove instances of services that are no longer in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Create instances without starting them
    #[arg(long)]
    pub no_start: bool,
    /// Number of replicas of a service (overrides `deploy.replicas`; repeatable)
    #[arg(long, value_name = "SERVICE=N")]
    pub scale: Vec<String>,
    /// How many Incus operations run at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Wait until every service runs, and is healthy when it has a healthcheck (fails if
    /// one does not)
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the longest wait in seconds, for depends_on conditions and --wait
    /// together (default: no limit besides the healthchecks' own retries)
    #[arg(long, value_name = "SECONDS", requires = "wait")]
    pub wait_timeout: Option<u64>,
    /// Pull images before starting, for every service: always, missing or never (default:
    /// each service's `pull_policy`, `missing` when unset). OCI images only; local Incus
    /// aliases are never pulled
    #[arg(long, value_name = "POLICY", value_parser = parse_pull)]
    pub pull: Option<PullPolicy>,
    /// Services to bring up (and what they depend on); default: all
    pub services: Vec<String>,
}

fn parse_pull(text: &str) -> Result<PullPolicy, String> {
    match PullPolicy::parse(text) {
        Some(PullPolicy::Build) => Err("build: Incus cannot build images".into()),
        Some(p) => Ok(p),
        None => Err("use always, missing or never".into()),
    }
}

fn parse_scale(items: &[String]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (svc, n) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("--scale {item:?}: expected SERVICE=N"))?;
        let n: u32 = n
            .parse()
            .map_err(|_| anyhow!("--scale {item:?}: {n:?} is not a number of replicas"))?;
        out.insert(svc.to_string(), n);
    }
    Ok(out)
}

/// `up`'s checks beyond loading (`ic_compose::validate::before_up`: what `config` prints but
/// a deployment refuses), before any change; errors printed as loading errors are.
pub fn refuse_undeployable(project: &ic_compose::Project) -> anyhow::Result<()> {
    if let Err(errors) = ic_compose::validate::before_up(project) {
        for d in errors.iter() {
            eprintln!("error: {d}");
        }
        anyhow::bail!(
            "{} error{} in the compose configuration: nothing was changed",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `up` arguments parsed from `argv` (so that `up`'s own defaults apply to every flag).
pub(super) fn up_args(argv: &[String]) -> anyhow::Result<UpArgs> {
    #[derive(clap::Parser)]
    struct Up {
        #[command(flatten)]
        up: UpArgs,
    }
    let parsed = <Up as clap::Parser>::try_parse_from(
        std::iter::once("up".to_string()).chain(argv.iter().cloned()),
    )?;
    Ok(parsed.up)
}

pub fn run(global: &GlobalArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let ctx = Context::new(global)?;
    refuse_undeployable(&ctx.project)?;
    let opts = PlanOptions {
        incus_project: Some(ctx.incus_project.clone()),
        scale: parse_scale(&args.scale)?,
        services: args.services.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let diff = DiffOptions {
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        remove_orphans: args.remove_orphans,
        no_start: args.no_start,
        ..Default::default()
    };
    let mut pending: Vec<PendingReplica> = Vec::new();
    let code = block_on(async {
        // Read-only first (issue 22): observe and plan without the lock and without writing.
        // A converged project (nothing to change, nothing to pull, no revision to complete,
        // the compose files recorded) is done then: no lock, no write, a fixed number of
        // requests. Otherwise the project lock (engine::lock, held until this block ends) is
        // taken and everything is observed and planned again under it.
        let first = prepare(&ctx, &opts, &diff, args, false).await;
        if args.dry_run {
            let p = first?;
            for l in &p.lines {
                println!("{l}");
            }
            for w in p.warnings.iter().chain(&p.plan.warnings) {
                eprintln!("warning: {w}");
            }
            pending.clone_from(&p.plan.pending);
            super::shared::print_plan(&p.plan, &ctx.project.name);
            return Ok::<ExitCode, anyhow::Error>(ExitCode::SUCCESS);
        }
        let gate = health::Gate::new(
            ctx.base.with_project(&ctx.incus_project),
            &ctx.project,
            args.wait_timeout.map(Duration::from_secs),
        )?;
        if let Ok(p) = &first
            && converged(&ctx, p)
        {
            for w in p.warnings.iter().chain(&p.plan.warnings) {
                eprintln!("warning: {w}");
            }
            pending.clone_from(&p.plan.pending);
            say_nothing_to_change(&ctx, &p.plan);
            return Ok(wait_for_services(&gate, &p.plan, args, started).await);
        }
        let _lock = ctx.lock_for_up().await?;
        let Prepared {
            obs,
            desired,
            plan,
            pulled,
            keep,
            lines,
            warnings,
        } = prepare(&ctx, &opts, &diff, args, true).await?;
        for l in &lines {
            println!("{l}");
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        pending.clone_from(&plan.pending);
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        let empty = plan.is_empty();
        if empty {
            say_nothing_to_change(&ctx, &plan);
        }
        // The one converge path (engine::converge): the revision recorded, the plan executed
        // under the lock with the readiness gate, the revision finished; with nothing to
        // change, an update whose run was interrupted after its last action is complete now.
        let done = converge::converge(
            &ctx.base,
            &ctx.incus_project,
            &ctx.project.name,
            obs,
            converge::Source::File(Box::new(desired)),
            &converge::Options {
                diff: diff.clone(),
                ..Default::default()
            },
            &converge::Policy {
                lock: _lock.as_ref(),
                record: Some("up".into()),
                keep: engine::revisions::keep(Some(&ctx.project)),
                parallel: args.parallel,
                gate: Some(&gate),
            },
        )
        .await;
        let done = match done {
            Ok(done) => done,
            // Nothing was to change: finishing the revision is a courtesy, not the run.
            Err(e) if empty => {
                eprintln!("warning: {e:#}");
                ctx.record_pulls(&pulled, &keep).await;
                return Ok(wait_for_services(&gate, &plan, args, started).await);
            }
            Err(e) => return Err(e),
        };
        if empty {
            if let Some((n, result)) = done.revision {
                println!("revision {n}: {result}");
            }
            ctx.record_pulls(&pulled, &keep).await;
            return Ok(wait_for_services(&gate, &plan, args, started).await);
        }
        let plan = done.plan;
        let outcome = done.outcome.unwrap_or_default();
        if let Some((number, result)) = done.revision {
            println!("revision {number}: {result}");
        }
        ctx.record_pulls(&pulled, &keep).await;
        let secs = started.elapsed().as_secs_f64();
        if outcome.ok() {
            println!(
                "up: {} change(s) done, {} instance(s) unchanged, in {secs:.1} s",
                outcome.done,
                plan.unchanged.len()
            );
            Ok(wait_for_services(&gate, &plan, args, started).await)
        } else {
            report_rollouts(&outcome.rollouts);
            outcome.report_failures("up", Some(started.elapsed()));
            Ok(ExitCode::FAILURE)
        }
    })??;
    Ok(report_pending(&pending, code))
}

/// What [`prepare`] found and planned.
struct Prepared {
    obs: engine::Observation,
    desired: ic_core::plan::Desired,
    plan: Plan,
    /// Images pulled (`image key -> fingerprint`), to record.
    pulled: BTreeMap<String, String>,
    /// The image keys of the project, for the pull records.
    keep: std::collections::BTreeSet<String>,
    /// What the pulls did (or, read-only, would do), for the user.
    lines: Vec<String>,
    /// Warnings of the image preparation.
    warnings: Vec<String>,
}

/// Observe and plan the compose file. `locked`: under the project lock, with the members'
/// links probed again and the images pulled as the pull policies ask; else read-only (no
/// pull: [`Prepared::lines`] say what would be pulled).
async fn prepare(
    ctx: &Context,
    opts: &PlanOptions,
    diff: &DiffOptions,
    args: &UpArgs,
    locked: bool,
) -> anyhow::Result<Prepared> {
    let mut obs = if locked {
        engine::observe_fresh(&ctx.base, &ctx.incus_project).await?
    } else {
        engine::observe_planning(
            &ctx.base,
            &ctx.incus_project,
            ic_core::plan::storage::needs_facts(&ctx.project),
        )
        .await?
    };
    let mut pulled = BTreeMap::new();
    let mut lines = Vec::new();
    let keep = engine::project_image_keys(&ctx.project, &obs.facts);
    // OCI images: pulled by pull_policy before anything changes, and the image each
    // reference names now recorded for the plan (engine::oci).
    if obs.facts.oci {
        let services = match ic_core::plan::selected_services(&ctx.project, opts) {
            Ok(s) => s,
            Err(e) => bail!("{e}"),
        };
        let prepared = engine::prepare_images(
            &ctx.base,
            &ctx.project,
            &services,
            &mut obs,
            args.pull,
            !locked,
        )
        .await?;
        lines = prepared.lines;
        pulled = prepared.pulled;
    }
    // OCI images: the entrypoint of those whose services set only `command` (engine::oci).
    let warnings = engine::read_image_processes(&ctx.project, &mut obs.facts, &obs.remotes).await;
    let desired = match ic_core::plan::desired(&ctx.project, &obs.facts, opts) {
        Ok(d) => d,
        Err(e) => bail!("{e}"),
    };
    let plan = match ic_core::plan::check_platforms(&ctx.project, &desired, &obs.observed)
        .and_then(|()| ic_core::plan::diff(&desired, &obs.observed, diff))
    {
        Ok(p) => p,
        Err(e) => bail!("{e}"),
    };
    Ok(Prepared {
        obs,
        desired,
        plan,
        pulled,
        keep,
        lines,
        warnings,
    })
}

/// Whether a read-only [`prepare`] found nothing for `up` to do or write: no action, no
/// image to pull, no revision to complete, and the compose files recorded (in a project
/// incus-compose created; nothing is written to another).
fn converged(ctx: &Context, p: &Prepared) -> bool {
    let config = &p.obs.observed.project_config;
    let ours = engine::is_ours(config, &ctx.project.name);
    let files = ctx.project.files.join("\n");
    p.plan.is_empty()
        && p.lines.is_empty()
        && p.obs.observed.project_exists
        && (!ours
            || ctx.project.files.is_empty()
            || config.get(ic_core::keys::LABEL_CONFIG_FILES) == Some(&files))
        && engine::names::missing(&p.desired, &p.obs).is_empty()
        && !engine::revisions::would_complete(
            config,
            &ctx.project.name,
            engine::revisions::services_of(&p.desired),
        )
}

fn say_nothing_to_change(ctx: &Context, plan: &Plan) {
    println!(
        "Nothing to change: {} instance(s) of compose project {} are up to date in Incus project {}",
        plan.unchanged.len(),
        ctx.project.name,
        plan.incus_project
    );
}

/// What a failed rolling update left, and what to do (after an automatic rollback `up`
/// exits non-zero too, unlike Swarm: the file's change did not take).
fn report_rollouts(outcomes: &[engine::rollout::Outcome]) {
    use engine::rollout::Ending;
    for o in outcomes {
        let failed = o
            .failed
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match o.ending {
            Ending::Completed if o.failed.is_empty() => {}
            Ending::Completed => eprintln!(
                "up: the update of service {} went on past {failed} (failure_action continue or within max_failure_ratio; {} replica(s) replaced); the failed ones are stopped or still run the previous version: run `up` again to replace them (once their member is back, when it went offline)",
                o.service, o.replaced
            ),
            Ending::Paused => eprintln!(
                "up: the update of service {} is paused after {failed} failed ({} replica(s) replaced, the others still run the previous version); fix the compose file and run `up` again to go on",
                o.service, o.replaced
            ),
            Ending::RolledBack => eprintln!(
                "up: the update of service {} failed ({failed}) and was rolled back: every replica runs the previous version again",
                o.service
            ),
            Ending::RollbackPaused => eprintln!(
                "up: the update of service {} failed ({failed}) and its rollback failed too: it is paused half way; check the replicas (`ps`) and run `up` again",
                o.service
            ),
        }
    }
}

/// Print the pending replicas (each with every member's reason); exit status
/// [`EXIT_PENDING`] when there are some and nothing else failed.
fn report_pending(pending: &[PendingReplica], code: ExitCode) -> ExitCode {
    if pending.is_empty() {
        return code;
    }
    println!(
        "Pending: {} replica(s) cannot be placed on any member now:",
        pending.len()
    );
    for p in pending {
        let state = if p.exists {
            ", its instance is on a member that cannot run it"
        } else {
            ""
        };
        println!("  {} (service {}{state}):", p.name, p.service);
        for line in p.reason.to_string().lines() {
            println!("    {line}");
        }
    }
    if code != ExitCode::SUCCESS {
        return code;
    }
    eprintln!(
        "up: {} replica(s) pending (exit status {EXIT_PENDING}); a later `up` places them once a member can take them",
        pending.len()
    );
    ExitCode::from(EXIT_PENDING)
}

/// `--wait`: every service of the plan running, and healthy when it has a healthcheck.
async fn wait_for_services(
    gate: &health::Gate,
    plan: &Plan,
    args: &UpArgs,
    started: Instant,
) -> ExitCode {
    if !args.wait || args.no_start {
        return ExitCode::SUCCESS;
    }
    let mut services: Vec<String> = plan.placement.iter().map(|(_, _, s)| s.clone()).collect();
    services.sort();
    services.dedup();
    println!(
        "[~] waiting for {} to run (and be healthy)",
        services.join(", ")
    );
    let failed = gate.wait_all(&services).await;
    if failed.is_empty() {
        println!(
            "up --wait: every service is running (healthy where checked), after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "up --wait failed: {} service(s) not running or not healthy (after {:.1} s):",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for (object, e) in failed {
        eprintln!("  {object}: {e}");
    }
    ExitCode::FAILURE
}
