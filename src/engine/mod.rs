//! The I/O shell around the pure planner: connect to Incus, [`observe`] what it holds,
//! [`execute`] a plan's actions with bounded parallelism. Nothing here decides anything:
//! decisions are made in `ic_core::plan` and `ic_core::schedule`.

pub mod converge;
pub mod deployed;
pub mod drain;
mod execute;
pub mod health;
pub mod ingress;
pub mod lock;
pub mod member;
pub mod names;
mod observe;
mod oci;
pub mod progress;
pub mod reach;
pub mod readiness;
pub mod revisions;
pub mod rollout;
mod spanning;
pub mod timefmt;
pub mod watch;

pub use execute::{Target, execute, execute_gated};
pub use lock::{Lease, LockGuard, LockOptions};
pub use observe::{Observation, is_ours, observe, observe_fresh, observe_planning};
pub use oci::{prepare_images, project_image_keys, pull_image, read_image_processes, record_pulls};
pub use progress::lines_to_stderr;

use anyhow::Context;
use ic_incus::Client;

/// A new digest key for a project (`ic_core::keys::DIGEST_KEY`): 32 bytes of the kernel's
/// random source.
pub fn random_key() -> anyhow::Result<ic_core::plan::DigestKey> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a digest key")?;
    Ok(ic_core::plan::DigestKey(bytes.to_vec().into()))
}

/// A client for the remote `remote` (None: the incus CLI's default remote).
pub fn connect(remote: Option<&str>) -> anyhow::Result<Client> {
    Client::from_cli_config(remote).with_context(|| {
        format!(
            "cannot set up an Incus client for remote {}",
            remote.unwrap_or("(default)")
        )
    })
}
