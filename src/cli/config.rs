//! `incus-compose config`: print the canonical project.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ConfigArgs {}

pub fn run(_global: &GlobalArgs, _args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`config` is not implemented yet")
}
