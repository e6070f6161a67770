//! What the lifecycle commands share: load the compose project (the same loader options as
//! `config`), name its Incus project, connect, observe, run async code.

use std::future::Future;

use anyhow::{Context as _, anyhow};
use ic_compose::Project;
use ic_core::plan::{PlanOptions, incus_project_name};
use ic_incus::Client;

use super::GlobalArgs;
use crate::engine::{self, Observation, Target};

/// Load the compose project the global flags describe; errors are printed like `config`
/// prints them, warnings too.
pub fn load_project(global: &GlobalArgs) -> anyhow::Result<Project> {
    let options = super::config::load_options(global, true)?;
    match ic_compose::load(&options) {
        Ok(p) => Ok(p),
        Err(errors) => {
            for d in errors.iter() {
                eprintln!("error: {d}");
            }
            Err(anyhow!(
                "{} error{} in the compose configuration",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ))
        }
    }
}

/// Run a future on a fresh multi-threaded runtime.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

/// The loaded project, its Incus project name and a client.
pub struct Context {
    pub project: Project,
    pub incus_project: String,
    pub base: Client,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> anyhow::Result<Context> {
        let project = load_project(global)?;
        let opts = PlanOptions {
            incus_project: global.incus_project.clone(),
            ..Default::default()
        };
        let incus_project = incus_project_name(&project, &opts);
        let base = engine::connect(global.remote.as_deref())?;
        Ok(Context {
            project,
            incus_project,
            base,
        })
    }

    /// Where actions go, given an observation.
    pub fn target(&self, obs: &Observation) -> Target {
        Target {
            base: self.base.clone(),
            project: self.base.with_project(&self.incus_project),
            networks: self.base.with_project(&obs.network_project),
            clustered: obs.observed.clustered,
            members: obs
                .observed
                .members
                .iter()
                .map(|m| m.name.clone())
                .collect(),
            remotes: obs.remotes.clone(),
        }
    }

    /// Records in the Incus project what the pulls found (`engine::record_pulls`), so that the
    /// next `up` knows what each reference named; a failure is only a warning.
    pub async fn record_pulls(
        &self,
        pulled: &std::collections::BTreeMap<String, String>,
        keep: &std::collections::BTreeSet<String>,
    ) {
        if let Some(w) = crate::engine::record_pulls(
            &self.base,
            &self.incus_project,
            &self.project.name,
            pulled,
            keep,
        )
        .await
        {
            eprintln!("warning: {w}");
        }
    }
}
