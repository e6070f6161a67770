//! What the lifecycle commands share: load the compose project (the same loader options as
//! `config`), or find it by name in Incus (`-p NAME` without a compose file), name its Incus
//! project, connect, take the project lock, observe, run async code.

use std::future::Future;
use std::sync::Mutex;

use anyhow::{Context as _, anyhow};
use ic_compose::Project;
use ic_core::plan::{PlanOptions, incus_project_name};
use ic_incus::Client;

use super::GlobalArgs;
use crate::engine::deployed::ServiceOrder;
use crate::engine::{self, Lease, LockGuard, LockOptions, Observation, Target};
use ic_core::keys::{LABEL_CONFIG_FILES, LABEL_PROJECT};

/// Load the compose project the global flags describe; errors are printed like `config`
/// prints them, warnings too.
pub fn load_project(global: &GlobalArgs) -> anyhow::Result<Project> {
    let options = super::shared::load_options(global, true)?;
    match ic_compose::load(&options) {
        Ok(p) if p.hostile.is_empty() => Ok(p),
        // Values that would reach Incus or LXC config and change its meaning (see
        // `ic_compose::hostile`): refused for every service, before anything changes.
        Ok(p) => {
            for d in &p.hostile {
                eprintln!("error: {d}");
            }
            Err(anyhow!(
                "{} unsafe value{} in the compose configuration; nothing was changed",
                p.hostile.len(),
                if p.hostile.len() == 1 { "" } else { "s" }
            ))
        }
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

/// Run a future on a fresh multi-threaded runtime; project locks dropped on the way out (an
/// error path) are released before it returns.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let out = rt.block_on(f);
    rt.block_on(engine::lock::finish_releases());
    Ok(out)
}

/// The compose project name when a command runs by name only: `-p NAME` (or
/// `COMPOSE_PROJECT_NAME`), no `-f`, no `COMPOSE_FILE`, and no compose file in the project
/// directory or its parents (as `docker compose -p NAME down` from anywhere).
fn by_name_only(global: &GlobalArgs) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("COMPOSE_FILE").is_ok_and(|v| !v.is_empty());
    let Some(name) = global.project_name.as_deref() else {
        return Ok(None);
    };
    if !global.files.is_empty() || from_env {
        return Ok(None);
    }
    let dir = match &global.project_directory {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    if ic_compose::loader::discover(&dir, &ic_compose::RealFs).is_some() {
        return Ok(None);
    }
    let normal = ic_compose::normalize_project_name(name);
    if normal.is_empty() {
        anyhow::bail!(
            "project name {name:?} has no letter or digit: use lowercase letters, digits, - and _"
        );
    }
    Ok(Some(normal))
}

/// What [`Context::try_lock`] found.
enum Locked {
    Held(LockGuard),
    /// The Incus project does not exist.
    Missing,
    /// It exists but incus-compose did not create it for this compose project.
    NotOurs,
}

/// The loaded project (or the one found by name), its Incus project name and a client.
pub struct Context {
    /// The compose project. Run by name ([`Context::by_name`]): its name and its deployed
    /// services (with nothing else known of them).
    pub project: Project,
    pub incus_project: String,
    pub base: Client,
    /// No compose file: the project is what Incus holds (`-p NAME`).
    pub by_name: bool,
    /// `--no-wait-lock`.
    no_wait_lock: bool,
    /// The project lock this run holds (see [`Context::lock`]); actions check it.
    lease: Mutex<Option<Lease>>,
}

impl Context {
    /// The project of the compose file (an error without one).
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
            by_name: false,
            no_wait_lock: global.no_wait_lock,
            lease: Mutex::new(None),
        })
    }

    /// The project of the compose file, or, when there is none and `-p NAME` names the project,
    /// the project as deployed in Incus (Incus project NAME unless `--incus-project`): for
    /// `ps`, `logs`, `down`, `stop`, `start`, `restart` (and `rollback`, `history`).
    pub fn new_or_by_name(global: &GlobalArgs) -> anyhow::Result<Context> {
        let Some(name) = by_name_only(global)? else {
            return Context::new(global);
        };
        let incus_project = global.incus_project.clone().unwrap_or_else(|| name.clone());
        let base = engine::connect(global.remote.as_deref())?;
        let services = block_on(engine::deployed::deployed_services(
            &base,
            &incus_project,
            &name,
        ))??;
        let project = Project {
            name,
            services: services
                .into_iter()
                .map(|s| (s, ic_compose::model::Service::default()))
                .collect(),
            ..Default::default()
        };
        Ok(Context {
            project,
            incus_project,
            base,
            by_name: true,
            no_wait_lock: global.no_wait_lock,
            lease: Mutex::new(None),
        })
    }

    /// An error unless every name in `services` is a service of the project.
    pub fn check_services(&self, services: &[String]) -> anyhow::Result<()> {
        for s in services {
            if !self.project.services.contains_key(s) {
                if self.by_name {
                    anyhow::bail!(
                        "no service {s:?} deployed in compose project {} (Incus project {})",
                        self.project.name,
                        self.incus_project
                    );
                }
                anyhow::bail!("no service {s:?} in compose project {}", self.project.name);
            }
        }
        Ok(())
    }

    /// `depends_on` levels and stop timeouts: from the compose file, or, by name, what
    /// Incus holds (`engine::deployed::service_order`).
    pub async fn service_order(&self) -> anyhow::Result<ServiceOrder> {
        if self.by_name {
            engine::deployed::service_order(&self.base, &self.incus_project, &self.project.name)
                .await
        } else {
            Ok(ServiceOrder::from_project(&self.project))
        }
    }

    /// Takes the project lock for a command that changes the project (`up`, `down`,
    /// `scale`, `rollback`, `watch`): waits for another holder (saying so once) unless
    /// `--no-wait-lock`. `None`, with nothing locked, when the Incus project does not exist
    /// or incus-compose did not create it for this compose project (said on stderr: a project
    /// incus-compose did not create is never written to). While held, [`Context::target`]
    /// gives the executor its [`Lease`], so actions stop if the lock is lost. The lock is
    /// released when the guard is released or dropped (at the latest when [`block_on`]
    /// returns), on Ctrl-C, or at its expiry if the process dies.
    pub async fn lock(&self) -> anyhow::Result<Option<LockGuard>> {
        match self.try_lock().await? {
            Locked::Held(g) => Ok(Some(g)),
            Locked::Missing | Locked::NotOurs => Ok(None),
        }
    }

    async fn try_lock(&self) -> anyhow::Result<Locked> {
        let project = match self.base.get_project(&self.incus_project).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => return Ok(Locked::Missing),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read Incus project {}", self.incus_project));
            }
        };
        if !engine::is_ours(&project.config, &self.project.name) {
            eprintln!(
                "note: Incus project {} was not created by incus-compose for compose project {}: no project lock is taken, so concurrent runs are not serialised",
                self.incus_project, self.project.name
            );
            return Ok(Locked::NotOurs);
        }
        let opts = LockOptions::from_env(!self.no_wait_lock)?;
        let Some(guard) = engine::lock::acquire(&self.base, &self.incus_project, &opts).await?
        else {
            return Ok(Locked::Missing);
        };
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard.lease());
        Ok(Locked::Held(guard))
    }

    /// [`Context::lock`] for `up`: the Incus project is created first when missing (with the
    /// config the plan's `CreateProject` gives it), so that a first `up` is serialised too; if
    /// this run created it and then changes nothing (bad input found by the plan), the release
    /// removes it again. Once locked, the compose files are recorded in the project (for `ls`).
    pub async fn lock_for_up(&self) -> anyhow::Result<Option<LockGuard>> {
        // A project removed while this run waited for its lock (a `down`, or a first `up` that
        // failed) is created again.
        let mut attempts = 0;
        let guard = loop {
            attempts += 1;
            let created = self.ensure_incus_project().await?;
            match self.try_lock().await? {
                Locked::Held(g) => {
                    if created {
                        g.created_project();
                    }
                    break Some(g);
                }
                Locked::NotOurs => break None,
                Locked::Missing if attempts < 5 => continue,
                Locked::Missing => anyhow::bail!(
                    "Incus project {} keeps disappearing while this run waits for its lock",
                    self.incus_project
                ),
            }
        };
        if guard.is_some() {
            // One write (each costs a round trip and the read-back's settle time): the
            // project's digest key, made once (a project made before keys gets it here: its
            // secrets' and configs' replicas are replaced once, their spec hash changing), and
            // the compose files this run read.
            let written = match engine::random_key() {
                Ok(fresh) => {
                    engine::lock::edit_project_config(&self.base, &self.incus_project, |config| {
                        self.add_run_keys(config, &fresh)
                    })
                    .await
                    .map_err(anyhow::Error::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                eprintln!(
                    "warning: cannot write the digest key and the compose files' record of Incus project {}: {e}",
                    self.incus_project
                );
            }
        }
        Ok(guard)
    }

    /// Puts into an Incus project's `config` what a locked run keeps there: the digest key
    /// (`key`, when the project has no valid one) and the compose files this run read (when
    /// it read any). Whether anything changed.
    fn add_run_keys(
        &self,
        config: &mut std::collections::BTreeMap<String, String>,
        key: &ic_core::plan::DigestKey,
    ) -> bool {
        let mut changed = false;
        if config
            .get(ic_core::keys::DIGEST_KEY)
            .is_none_or(|k| ic_core::plan::DigestKey::from_hex(k).is_none())
        {
            config.insert(ic_core::keys::DIGEST_KEY.to_string(), key.to_hex());
            changed = true;
        }
        let files = self.project.files.join("\n");
        if !self.project.files.is_empty() && config.get(LABEL_CONFIG_FILES) != Some(&files) {
            config.insert(LABEL_CONFIG_FILES.to_string(), files);
            changed = true;
        }
        changed
    }

    /// Creates the Incus project when it does not exist (another run creating it at the same
    /// time is fine when the result is ours); whether this run created it.
    async fn ensure_incus_project(&self) -> anyhow::Result<bool> {
        match self.base.get_project(&self.incus_project).await {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read Incus project {}", self.incus_project));
            }
        }
        // Made with its digest key and the compose files' record: nothing to write for them
        // once it is locked (see `lock_for_up`).
        let mut config = ic_core::plan::incus_project_config(&self.project.name);
        if let Ok(key) = engine::random_key() {
            self.add_run_keys(&mut config, &key);
        }
        let req = ic_incus::ProjectsPost {
            name: self.incus_project.clone(),
            description: "incus-compose project".into(),
            config,
        };
        match self.base.create_project(&req).await {
            Ok(()) => {
                crate::engine::progress::say(&format!(
                    "[+] Incus project {} created",
                    self.incus_project
                ));
                Ok(true)
            }
            Err(e) => match self.base.get_project(&self.incus_project).await {
                Ok(p) if p.config.get(LABEL_PROJECT) == Some(&self.project.name) => Ok(false),
                _ => {
                    Err(e).with_context(|| format!("creating Incus project {}", self.incus_project))
                }
            },
        }
    }

    /// Where actions go, given an observation.
    pub fn target(&self, obs: &Observation) -> Target {
        let fence = self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Target::new(&self.base, &self.incus_project, obs, fence, None)
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
