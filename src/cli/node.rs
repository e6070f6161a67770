//! `incus-compose node`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct NodeArgs {}

pub fn run(_global: &GlobalArgs, _args: &NodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`node` is not implemented yet")
}
