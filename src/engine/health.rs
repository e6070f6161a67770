//! Health, the I/O part: show one probe's result in `ps`, and wait for `depends_on`
//! conditions and `up --wait` (the health gate).
//!
//! What is decided here is only what to wait for; probing a replica (when, and how its
//! results count) is `engine::readiness`, the one module the gate, the rollout and `watch`
//! share; how probe results become a status is `ic_core::health` (Docker's rules).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use ic_compose::Project;
use ic_compose::model::DependencyCondition;
use ic_core::health::{Check, Health, HealthError, check_of, single_probe_status};
use ic_core::keys::{LABEL_PROJECT, LABEL_SERVICE};
use ic_core::plan::{Action, Stage};
use ic_incus::{Client, Instance};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::readiness::{Probing, probe, since_start, started_at};

/// How many probes `ps` runs at once.
const PROBE_PARALLEL: usize = 16;
/// How often a wait polls an instance's state (running/stopped).
const POLL: Duration = Duration::from_millis(500);

/// The checks of a project's services (services without one are absent).
pub fn checks(project: &Project) -> Result<BTreeMap<String, Check>, HealthError> {
    let mut out = BTreeMap::new();
    for (name, s) in &project.services {
        if let Some(c) = check_of(name, s.healthcheck.as_ref())? {
            out.insert(name.clone(), c);
        }
    }
    Ok(out)
}

/// What `ps` shows for one instance.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub health: Health,
    pub output: String,
}

/// Probes every running instance whose service has a check, once, in parallel (at most
/// [`PROBE_PARALLEL`] at once, each bounded by its check's timeout).
pub async fn snapshot(
    client: &Client,
    instances: &[(String, String, String)],
    checks: &BTreeMap<String, Check>,
) -> BTreeMap<String, Snapshot> {
    let sem = Arc::new(Semaphore::new(PROBE_PARALLEL));
    let probes = instances.iter().filter_map(|(name, service, last_used)| {
        let check = checks.get(service)?.clone();
        let sem = sem.clone();
        Some(async move {
            let _permit = sem.acquire_owned().await;
            let p = probe(client, name, &check).await;
            let health = single_probe_status(&check, since_start(last_used), p.ok);
            (
                name.clone(),
                Snapshot {
                    health,
                    output: p.output,
                },
            )
        })
    });
    join_all(probes).await.into_iter().collect()
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: DependencyCondition,
    pub required: bool,
}

/// (what is awaited, what was reached, what was not reached).
fn condition_text(c: &DependencyCondition) -> (&'static str, &'static str, &'static str) {
    match c {
        DependencyCondition::ServiceStarted => ("to start", "started", "did not start"),
        DependencyCondition::ServiceHealthy => {
            ("to be healthy", "healthy", "did not become healthy")
        }
        DependencyCondition::ServiceCompletedSuccessfully => {
            ("to complete (stop)", "completed", "did not complete")
        }
    }
}

/// Waits for `depends_on` conditions before a stage starts its services, and for every
/// service at the end of `up --wait`.
pub struct Gate {
    client: Client,
    compose: String,
    checks: BTreeMap<String, Check>,
    deps: BTreeMap<String, Vec<Dependency>>,
    deadline: Option<Instant>,
}

impl Gate {
    /// `client` is in the project's Incus project. `timeout` bounds every wait of this gate
    /// together (`--wait-timeout`).
    pub fn new(
        client: Client,
        project: &Project,
        timeout: Option<Duration>,
    ) -> Result<Gate, HealthError> {
        let deps = project
            .services
            .iter()
            .map(|(name, s)| {
                let list = s
                    .depends_on
                    .iter()
                    .filter(|(d, _)| project.services.contains_key(*d))
                    .map(|(d, dep)| Dependency {
                        service: d.clone(),
                        condition: dep.condition,
                        required: dep.required,
                    })
                    .collect();
                (name.clone(), list)
            })
            .collect();
        Ok(Gate {
            client,
            compose: project.name.clone(),
            checks: checks(project)?,
            deps,
            deadline: timeout.map(|t| Instant::now() + t),
        })
    }

    /// The instances of `service`, from Incus.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, String> {
        let all = self
            .client
            .instances()
            .await
            .map_err(|e| format!("cannot list instances: {e}"))?;
        Ok(all
            .into_iter()
            .filter(|i| {
                i.config.get(LABEL_PROJECT).map(String::as_str) == Some(self.compose.as_str())
                    && i.config.get(LABEL_SERVICE).map(String::as_str) == Some(service)
                    && !ic_core::plan::is_oneoff(&i.config)
            })
            .collect())
    }

    fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits before `stage` starts services: for every dependency of the services it starts,
    /// the dependency's condition. Err: (object, message) per failed required dependency;
    /// an optional one (`required: false`) that fails is a warning.
    pub async fn before_stage(&self, stage: &Stage) -> Result<(), Vec<(String, String)>> {
        let mut starting: BTreeMap<&str, ()> = BTreeMap::new();
        for a in &stage.actions {
            match a {
                Action::Create(p) | Action::Recreate(p) if p.start => {
                    starting.insert(&p.service, ());
                }
                Action::Start { service, .. } => {
                    starting.insert(service, ());
                }
                _ => {}
            }
        }
        // Dependency -> (condition, required, needed by).
        let mut wanted: BTreeMap<(String, u8), (DependencyCondition, bool, Vec<&str>)> =
            BTreeMap::new();
        for s in starting.keys() {
            for d in self.deps.get(*s).into_iter().flatten() {
                let rank = match d.condition {
                    DependencyCondition::ServiceStarted => 0,
                    DependencyCondition::ServiceHealthy => 1,
                    DependencyCondition::ServiceCompletedSuccessfully => 2,
                };
                let e = wanted
                    .entry((d.service.clone(), rank))
                    .or_insert_with(|| (d.condition, false, Vec::new()));
                e.1 |= d.required;
                e.2.push(s);
            }
        }
        let waits = wanted
            .iter()
            .map(|((dep, _), (cond, required, by))| async move {
                super::progress::say(&format!(
                    "[~] waiting for {dep} {} (needed by {})",
                    condition_text(cond).0,
                    by.join(", ")
                ));
                let r = self.wait_condition(dep, cond).await;
                (dep, cond, *required, by, r)
            });
        let mut failed = Vec::new();
        for (dep, cond, required, by, r) in join_all(waits).await {
            match r {
                Ok(()) => super::progress::say(&format!("[+] {dep} {}", condition_text(cond).1)),
                Err(e) if !required => eprintln!(
                    "warning: optional dependency {dep} of {} (required: false) {}: {e}; starting anyway",
                    by.join(", "),
                    condition_text(cond).2
                ),
                Err(e) => failed.push((
                    format!("service {dep}"),
                    format!(
                        "dependency of {} {}: {e}; {} not started",
                        by.join(", "),
                        condition_text(cond).2,
                        by.join(", ")
                    ),
                )),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Waits until every replica of `service` meets `cond`.
    pub async fn wait_condition(
        &self,
        service: &str,
        cond: &DependencyCondition,
    ) -> Result<(), String> {
        let instances = self.instances(service).await?;
        if instances.is_empty() {
            return Err(format!("service {service} has no instance"));
        }
        let check = match cond {
            DependencyCondition::ServiceHealthy => {
                Some(self.checks.get(service).ok_or_else(|| {
                    format!(
                        "service {service} has no healthcheck (condition service_healthy needs one)"
                    )
                })?)
            }
            _ => None,
        };
        let waits = instances.iter().map(|i| async move {
            match (cond, check) {
                (DependencyCondition::ServiceHealthy, Some(c)) => self.wait_healthy(i, c).await,
                (DependencyCondition::ServiceCompletedSuccessfully, _) => {
                    self.wait_stopped(&i.name).await
                }
                _ => self.wait_running(&i.name, false).await,
            }
        });
        let errors: Vec<String> = join_all(waits)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// `up --wait`: every replica of `services` running, and healthy when its service has
    /// a check. A replica whose service others wait on with `service_completed_successfully`
    /// may also have stopped (it ran to completion).
    pub async fn wait_all(&self, services: &[String]) -> Vec<(String, String)> {
        let completes = |svc: &str| {
            self.deps.values().flatten().any(|d| {
                d.service == svc && d.condition == DependencyCondition::ServiceCompletedSuccessfully
            })
        };
        let waits = services.iter().map(|s| async move {
            let r = async {
                let instances = self.instances(s).await?;
                if instances.is_empty() {
                    return Err(format!("service {s} has no instance"));
                }
                let one_shot = completes(s);
                let waits = instances.iter().map(|i| async move {
                    match self.checks.get(s.as_str()) {
                        Some(c) if !one_shot => self.wait_healthy(i, c).await,
                        _ => self.wait_running(&i.name, one_shot).await,
                    }
                });
                let errors: Vec<String> = join_all(waits)
                    .await
                    .into_iter()
                    .filter_map(Result::err)
                    .collect();
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            }
            .await;
            (s.clone(), r)
        });
        join_all(waits)
            .await
            .into_iter()
            .filter_map(|(s, r)| r.err().map(|e| (format!("service {s}"), e)))
            .collect()
    }

    /// The instance's status, from `GET /1.0/instances/{name}` (its `/state` reads the
    /// init PID and fails with HTTP 500 while a container stops). Transient server errors are
    /// retried a few times.
    async fn status(&self, name: &str) -> Result<String, String> {
        Ok(self.status_and_start(name).await?.0)
    }

    /// Status and `last_used_at` (when it last started; the epoch if it never started).
    async fn status_and_start(&self, name: &str) -> Result<(String, String), String> {
        let mut attempt = 0;
        loop {
            match self.client.instance(name).await {
                Ok(i) => return Ok((i.status, i.last_used_at)),
                Err(e) if attempt < 5 && e.status().is_some_and(|s| s >= 500) => {
                    attempt += 1;
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(format!("cannot read instance {name}: {e}")),
            }
        }
    }

    fn timeout_error(&self, what: &str) -> String {
        format!("timed out (--wait-timeout) waiting for {what}")
    }

    /// Until `name` runs (or, with `stopped_ok`, has stopped after running).
    async fn wait_running(&self, name: &str, stopped_ok: bool) -> Result<(), String> {
        loop {
            let status = self.status(name).await?;
            if status.eq_ignore_ascii_case("running")
                || (stopped_ok && status.eq_ignore_ascii_case("stopped"))
            {
                return Ok(());
            }
            if status.eq_ignore_ascii_case("stopped") || status.eq_ignore_ascii_case("error") {
                return Err(format!("instance {name} is {status}, not running"));
            }
            if self.timed_out() {
                return Err(self.timeout_error(&format!("instance {name} to run ({status})")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Until `name` has stopped: its command ran to completion. Incus 6.0 does not record
    /// the exit status of a container's init, so any stop counts as a successful completion.
    async fn wait_stopped(&self, name: &str) -> Result<(), String> {
        loop {
            let (status, last_used_at) = self.status_and_start(name).await?;
            // Stopped before it ever started (its start is still on the way: Incus can
            // answer the start before the container runs) is not a completion.
            let started = !last_used_at.is_empty()
                && !last_used_at.starts_with("1970-")
                && !last_used_at.starts_with("0001-");
            if status.eq_ignore_ascii_case("stopped") && started {
                // A container that is still starting (its pre-start hook has set last_used_at,
                // its init does not run yet) can read as Stopped too: it has completed only if
                // it is still Stopped, with the same start time, a moment later.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (again, again_used) = self.status_and_start(name).await?;
                if again.eq_ignore_ascii_case("stopped") && again_used == last_used_at {
                    return Ok(());
                }
                continue;
            }
            if status.eq_ignore_ascii_case("error") {
                return Err(format!("instance {name} is in state Error"));
            }
            if self.timed_out() {
                return Err(self.timeout_error(&format!("instance {name} to complete")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Probes `i` as Docker would (`readiness::Probing`: the first probe one interval after
    /// the start, failures within the start period not counted) until it is healthy or
    /// unhealthy.
    async fn wait_healthy(&self, i: &Instance, check: &Check) -> Result<(), String> {
        let name = &i.name;
        let mut probing = Probing::new(check.clone(), started_at(&i.last_used_at));
        loop {
            let status = self.status(name).await?;
            if !status.eq_ignore_ascii_case("running") {
                return Err(format!(
                    "instance {name} is {status}, not running ({})",
                    probing.last_text()
                ));
            }
            while Instant::now() < probing.due() {
                if self.timed_out() {
                    return Err(self.timeout_error(&format!(
                        "instance {name} to be healthy ({})",
                        probing.last_text()
                    )));
                }
                let left = probing.due() - Instant::now();
                tokio::time::sleep(left.min(POLL)).await;
            }
            match probing.poll(&self.client, name).await {
                Some(Health::Healthy) => return Ok(()),
                Some(Health::Unhealthy) => {
                    return Err(format!(
                        "instance {name} is unhealthy after {} failed probe(s) of `{}` ({})",
                        probing.failing_streak(),
                        check.argv.join(" "),
                        probing.last_text()
                    ));
                }
                Some(Health::Starting) | None => {}
            }
            if self.timed_out() {
                return Err(self.timeout_error(&format!(
                    "instance {name} to be healthy ({})",
                    probing.last_text()
                )));
            }
        }
    }
}
