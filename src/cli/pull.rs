//! `incus-compose pull`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct PullArgs {}

pub fn run(_global: &GlobalArgs, _args: &PullArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`pull` is not implemented yet")
}
