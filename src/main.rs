//! incus-compose: run compose files on Incus servers and clusters.

mod cli;
mod engine;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
