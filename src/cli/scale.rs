//! `incus-compose scale`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ScaleArgs {}

pub fn run(_global: &GlobalArgs, _args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`scale` is not implemented yet")
}
