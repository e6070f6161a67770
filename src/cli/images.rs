//! `incus-compose images`.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;

#[derive(Debug, Args)]
pub struct ImagesArgs {}

pub fn run(_global: &GlobalArgs, _args: &ImagesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`images` is not implemented yet")
}
