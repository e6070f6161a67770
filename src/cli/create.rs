//! `incus-compose create [SERVICE...]`: create the project's instances without starting them;
//! `up --no-start` (the same planner and executor).

use clap::Args;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Recreate instances even if their configuration did not change
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// Keep existing instances even if their configuration changed
    #[arg(long)]
    pub no_recreate: bool,
    /// Remove instances of services that are no longer in the compose file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Number of replicas of a service (overrides `deploy.replicas`; repeatable)
    #[arg(long, value_name = "SERVICE=N")]
    pub scale: Vec<String>,
    /// Pull images before creating: always, missing or never
    #[arg(long, value_name = "POLICY", value_parser = ["always", "missing", "never"])]
    pub pull: Option<String>,
    /// Print the actions and the placement, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Services to create (and what they depend on); default: all
    pub services: Vec<String>,
}

/// The `up` arguments `create` stands for (`up --no-start` and its flags): `cli::run` hands
/// them to `up`.
pub fn up_argv(args: &CreateArgs) -> Vec<String> {
    let mut argv = vec!["--no-start".to_string()];
    for (on, flag) in [
        (args.force_recreate, "--force-recreate"),
        (args.no_recreate, "--no-recreate"),
        (args.remove_orphans, "--remove-orphans"),
        (args.dry_run, "--dry-run"),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    for s in &args.scale {
        argv.push(format!("--scale={s}"));
    }
    if let Some(p) = &args.pull {
        argv.push(format!("--pull={p}"));
    }
    argv.push("--".into());
    argv.extend(args.services.iter().cloned());
    argv
}
