//! The checks `up` runs before it changes anything, beyond loading: what docker compose's
//! `config` accepts (and prints) but a deployment refuses, as Swarm and the engine refuse it
//! only when they deploy. Each keeps its file, line and column from loading
//! (`Project::up_errors`): a placement constraint without `==` / `!=` (`node=foo`), a
//! relative container path (`volume1`, `db:data`).
//!
//! Loading stays as permissive as docker compose; `config` prints these files as v2 does.

use crate::error::LoadErrors;
use crate::model::Project;

/// Refuses what the enabled services cannot be deployed with; every problem, sorted by
/// position.
pub fn before_up(project: &Project) -> Result<(), LoadErrors> {
    let mut list: Vec<_> = project
        .up_errors
        .iter()
        .filter(|d| {
            // Only the enabled services: a profile left out is not deployed.
            let service = d
                .path
                .strip_prefix("services.")
                .and_then(|r| r.split('.').next());
            service.is_none_or(|s| project.services.contains_key(s))
        })
        .cloned()
        .collect();
    if list.is_empty() {
        return Ok(());
    }
    list.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    Err(LoadErrors(list))
}
