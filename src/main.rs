//! incus-compose: run compose files on Incus servers and clusters.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
