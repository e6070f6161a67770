//! The I/O shell around the pure planner: connect to Incus, [`observe`] what it holds,
//! [`execute`] a plan's actions with bounded parallelism. Nothing here decides anything:
//! decisions are made in `ic_core::plan` and `ic_core::schedule`.

pub mod deployed;
mod execute;
pub mod health;
pub mod lock;
mod observe;
mod oci;
pub mod progress;
pub mod revisions;
pub mod rollout;
mod spanning;
pub mod watch;

pub use execute::{Target, execute, execute_gated};
pub use lock::{Lease, LockGuard, LockOptions};
pub use observe::{Observation, is_ours, observe};
pub use oci::{prepare_images, project_image_keys, pull_image, read_image_processes, record_pulls};
pub use progress::lines_to_stderr;

use anyhow::Context;
use ic_incus::Client;

/// A client for the remote `remote` (None: the incus CLI's default remote).
pub fn connect(remote: Option<&str>) -> anyhow::Result<Client> {
    Client::from_cli_config(remote).with_context(|| {
        format!(
            "cannot set up an Incus client for remote {}",
            remote.unwrap_or("(default)")
        )
    })
}

/// After rolling updates: the DNS records of spanning networks follow the replicas that run
/// now (a start-first update or a rollback changed which instance serves a slot). Plans again
/// on a fresh observation and runs only its network record updates; a failure is a warning.
pub async fn refresh_records(
    target: &Target,
    desired: &ic_core::plan::Desired,
    incus_project: &str,
) {
    let obs = match observe(&target.base, incus_project, false).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("warning: DNS records not refreshed after the update: {e:#}");
            return;
        }
    };
    let plan = match ic_core::plan::diff(desired, &obs.observed, &Default::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warning: DNS records not refreshed after the update: {e}");
            return;
        }
    };
    let actions: Vec<ic_core::plan::Action> = plan
        .actions()
        .filter(|a| matches!(a, ic_core::plan::Action::UpdateNetwork { .. }))
        .cloned()
        .collect();
    if actions.is_empty() {
        return;
    }
    let records = ic_core::plan::Plan {
        stages: vec![ic_core::plan::Stage {
            title: "network records".into(),
            actions,
        }],
        ..plan
    };
    let outcome = execute(target, &records, 4).await;
    if !outcome.ok() {
        outcome.report_failures("refreshing DNS records", None);
    }
}
