//! `incus-compose top`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct TopArgs {}

pub fn run(_global: &GlobalArgs, _args: &TopArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`top` is not implemented yet")
}
