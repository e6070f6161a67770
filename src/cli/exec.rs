//! `incus-compose exec`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ExecArgs {}

pub fn run(_global: &GlobalArgs, _args: &ExecArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`exec` is not implemented yet")
}
