//! What Incus holds of a compose project, for the commands that run without its compose file
//! (`-p NAME ps|logs|down|stop|start|restart`) and for `ls`.
//!
//! Instances carry `user.incus-compose.project`, `service` and `slot`; the Incus project
//! incus-compose created carries `user.incus-compose.project` and, after an `up`, the compose
//! files it was run with ([`LABEL_CONFIG_FILES`]). What only the file knows (`depends_on`
//! order, `stop_grace_period`) comes from [`service_order`], the one place that answers it for
//! a project known by name.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use ic_core::keys::{LABEL_CONFIG_FILES, LABEL_PROJECT, LABEL_SERVICE};
use ic_core::plan::dependency_levels;
use ic_incus::Client;

/// The order in which a command stops and starts services, and their stop timeouts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceOrder {
    /// Service -> `depends_on` level (0 first when starting; highest first when stopping).
    pub levels: BTreeMap<String, usize>,
    /// Service -> seconds to wait for a clean stop (`stop_grace_period`); missing: 10.
    pub stop_timeouts: BTreeMap<String, i64>,
}

impl ServiceOrder {
    /// From the compose file: `depends_on` levels and `stop_grace_period`.
    pub fn from_project(project: &ic_compose::Project) -> ServiceOrder {
        ServiceOrder {
            levels: dependency_levels(project),
            stop_timeouts: project
                .services
                .iter()
                .filter_map(|(n, s)| {
                    s.stop_grace_period
                        .map(|d| (n.clone(), d.as_std().as_secs() as i64))
                })
                .collect(),
        }
    }
}

/// The services of compose project `compose` that have instances in Incus project
/// `incus_project` (none when the project does not exist).
pub async fn deployed_services(
    base: &Client,
    incus_project: &str,
    compose: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let instances = match base.with_project(incus_project).instances().await {
        Ok(list) => list,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot list instances of Incus project {incus_project}")
            });
        }
    };
    Ok(instances
        .iter()
        .filter(|i| super::is_ours(&i.config, compose))
        .filter_map(|i| i.config.get(LABEL_SERVICE).cloned())
        .collect())
}

/// Start/stop order and stop timeouts of compose project `compose`, known by name only (no
/// compose file): what Incus holds. Incus keeps neither `depends_on` nor `stop_grace_period`
/// in instance config: they come from the newest revision kept in the project's config
/// (`engine::revisions`); a project deployed before revisions existed has every service on
/// one level (stopped and started together) with the default timeout of 10 s (`-t` overrides
/// it).
pub async fn service_order(
    base: &Client,
    incus_project: &str,
    compose: &str,
) -> anyhow::Result<ServiceOrder> {
    let services = deployed_services(base, incus_project, compose).await?;
    // The newest revision kept in Incus knows depends_on and stop_grace_period.
    let revs = super::revisions::read(base, incus_project, compose).await?;
    if let Some(rev) = revs.last() {
        let mut levels: BTreeMap<String, usize> = BTreeMap::new();
        // Services are stored in name order: iterate until every level is known.
        let mut todo: Vec<&String> = rev.services.keys().collect();
        while !todo.is_empty() {
            let before = todo.len();
            todo.retain(|name| {
                let deps = &rev.services[*name].depends_on;
                if deps
                    .iter()
                    .all(|d| levels.contains_key(d) || !rev.services.contains_key(d))
                {
                    let level = deps
                        .iter()
                        .filter_map(|d| levels.get(d))
                        .map(|l| l + 1)
                        .max();
                    levels.insert((*name).clone(), level.unwrap_or(0));
                    false
                } else {
                    true
                }
            });
            if todo.len() == before {
                break;
            }
        }
        for s in &services {
            levels.entry(s.clone()).or_insert(0);
        }
        return Ok(ServiceOrder {
            levels,
            stop_timeouts: rev
                .services
                .iter()
                .map(|(n, s)| (n.clone(), s.stop_timeout))
                .collect(),
        });
    }
    Ok(ServiceOrder {
        levels: services.into_iter().map(|s| (s, 0)).collect(),
        stop_timeouts: BTreeMap::new(),
    })
}

/// One compose project as `ls` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    pub name: String,
    /// `running(2), exited(1)`: instance states (Docker's words) with their counts.
    pub status: String,
    /// The compose files of its last `up`, comma separated, when Incus holds them.
    pub config_files: String,
    pub incus_project: String,
    /// Instances Incus cannot read now (on an offline member), as `member: name`; their state
    /// is not in `status`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreached: Vec<String>,
}

/// Docker's word for an Incus instance status.
fn docker_state(status: &str) -> String {
    match status.to_ascii_lowercase().as_str() {
        "running" => "running".into(),
        "stopped" => "exited".into(),
        "frozen" => "paused".into(),
        other => other.to_string(),
    }
}

/// `running(2), exited(1)`: counts per state, states in name order (as docker compose).
pub fn combined_status<'a>(states: impl IntoIterator<Item = &'a str>) -> String {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in states {
        *count.entry(docker_state(s)).or_default() += 1;
    }
    count
        .iter()
        .map(|(s, n)| format!("{s}({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every compose project with instances on the server, in any Incus project (only those
/// with a running instance unless `all`), by name; the config files come from the Incus
/// project's record when incus-compose created that project.
pub async fn list_projects(base: &Client, all: bool) -> anyhow::Result<Vec<Listed>> {
    let instances = base
        .instances_all_projects()
        .await
        .context("cannot list instances")?;
    let projects = base
        .projects()
        .await
        .context("cannot list Incus projects")?;
    // (compose, incus project) -> instance statuses.
    let mut found: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    // Instances on offline members (listed without their labels): counted for the compose
    // project the Incus project was made for.
    let mut unreached: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for i in &instances {
        let project = if i.project.is_empty() {
            "default"
        } else {
            i.project.as_str()
        };
        if i.is_stand_in()
            && let Some(compose) = projects
                .iter()
                .find(|p| p.name == project)
                .and_then(|p| p.config.get(LABEL_PROJECT))
        {
            unreached
                .entry((compose.clone(), project.to_string()))
                .or_default()
                .push(format!("{}: {}", i.location, i.name));
            found
                .entry((compose.clone(), project.to_string()))
                .or_default();
            continue;
        }
        if let Some(compose) = i.config.get(LABEL_PROJECT) {
            let project = if i.project.is_empty() {
                "default".to_string()
            } else {
                i.project.clone()
            };
            found
                .entry((compose.clone(), project))
                .or_default()
                .push(i.status.clone());
        }
    }
    let mut out = Vec::new();
    for ((compose, incus_project), states) in found {
        let unreached = unreached
            .remove(&(compose.clone(), incus_project.clone()))
            .unwrap_or_default();
        if !all && unreached.is_empty() && !states.iter().any(|s| s.eq_ignore_ascii_case("running"))
        {
            continue;
        }
        let shown: Vec<&str> = states
            .iter()
            .map(String::as_str)
            .filter(|s| all || s.eq_ignore_ascii_case("running"))
            .collect();
        let config_files = projects
            .iter()
            .find(|p| p.name == incus_project && super::is_ours(&p.config, &compose))
            .and_then(|p| p.config.get(LABEL_CONFIG_FILES))
            .map(|f| f.lines().collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        out.push(Listed {
            name: compose,
            status: combined_status(shown),
            config_files,
            incus_project,
            unreached,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_states_in_dockers_words_and_name_order() {
        assert_eq!(
            combined_status(["Running", "Stopped", "Running", "Frozen"]),
            "exited(1), paused(1), running(2)"
        );
        assert_eq!(combined_status(["Running"]), "running(1)");
        assert_eq!(combined_status(["Error"]), "error(1)");
        assert_eq!(combined_status(Vec::<&str>::new()), "");
    }
}
