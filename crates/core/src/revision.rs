//! Revisions: what each `up` (or `rollback`) that changed a project's services deployed,
//! kept in Incus (the Incus project's config, one `user.incus-compose.revision.<N>` key each,
//! JSON), so that any machine can list them (`history`) and roll back to one (`rollback`)
//! without the compose file. Pure: the engine reads and writes the keys.
//!
//! A revision holds, per service, everything needed to recreate its replicas: the instance
//! template (image, config, devices, files, command, placement rules, update and rollback
//! config, healthcheck). Secret and config *contents* are never stored: only their sha256.
//! Rolling back to a revision re-reads them from the compose file's current sources and
//! refuses, naming the secret, when the content changed since (or the file is not there).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::Check;
use crate::keys::REVISION_PREFIX;
use crate::plan::{
    AnonymousVolume, Desired, Devices, DigestKey, ImageSource, InstanceTemplate, PushFile,
    RolloutSpec,
};
use crate::rollout;
use crate::schedule::{HostPort, Mode, ServiceSpec};

/// How many revisions are kept unless `x-incus: {revisions: N}` says otherwise.
pub const DEFAULT_KEEP: usize = 10;

/// How a revision's rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Being rolled out (or interrupted: the next `up` goes on).
    InProgress,
    Completed,
    Paused,
    RolledBack,
    /// Something other than a replica failed (an Incus error).
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::InProgress => "in progress",
            Outcome::Completed => "completed",
            Outcome::Paused => "paused",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "failed",
        })
    }
}

/// One revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    /// RFC 3339, from the engine's clock.
    pub time: String,
    /// The incus-compose version that made it.
    pub version: String,
    pub outcome: Outcome,
    /// What made it: `up`, or `rollback to N`.
    #[serde(default)]
    pub cause: String,
    pub services: BTreeMap<String, StoredService>,
    /// The project's networks as planned (a rollback plans replica addresses and DNS records
    /// on them).
    #[serde(default)]
    pub networks: Vec<StoredNetwork>,
}

/// A network as the planner wants it, stored (it exists while the project does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNetwork {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub config: BTreeMap<String, String>,
    pub kind: crate::plan::span::Kind,
    pub names: Vec<(String, String)>,
    pub internal: bool,
    /// Service names served by the member resolvers (`x-incus: {names: resolver}`).
    #[serde(default)]
    pub resolver: bool,
}

/// The networks of `d` as stored.
pub fn networks_of(d: &Desired) -> Vec<StoredNetwork> {
    d.networks
        .iter()
        .map(|n| StoredNetwork {
            key: n.key.clone(),
            name: n.name.clone(),
            external: n.external,
            config: n.config.clone(),
            kind: n.kind.clone(),
            names: n.names.clone(),
            internal: n.internal,
            resolver: n.resolver,
        })
        .collect()
}

/// A file pushed before the first start, as stored: secret and config contents left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    pub path: String,
    /// Hex of the content (`None`: a directory, or a secret/config whose content is not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hex: Option<String>,
    /// The content's digest: for a secret or config, `hmac-sha256:<hex>` under the project's
    /// key (a bare sha256 in revisions written before the project had one; see
    /// `plan::PushFile::digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Owner names resolved in the image (see `plan::PushFile::user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A service's instance template, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredService {
    pub hash: String,
    pub static_hash: String,
    pub base_name: String,
    #[serde(default)]
    pub container_name: Option<String>,
    /// The image as the template names it: `local`, `remote` or `oci` with its fields.
    pub image: serde_json::Value,
    #[serde(default)]
    pub image_fingerprint: Option<String>,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `None`: global.
    pub replicas: Option<u32>,
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub preferences: Vec<String>,
    #[serde(default)]
    pub max_replicas_per_node: Option<u32>,
    #[serde(default)]
    pub reservation_millicpus: Option<u64>,
    #[serde(default)]
    pub reservation_memory: Option<u64>,
    /// (port, udp).
    #[serde(default)]
    pub fixed_host_ports: Vec<(u16, bool)>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub stop_timeout: i64,
    #[serde(default)]
    pub files: Vec<StoredFile>,
    /// (device, target, read_only, pool, shared).
    #[serde(default)]
    pub anonymous_volumes: Vec<(String, String, bool, String, bool)>,
    #[serde(default)]
    pub architecture: Option<String>,
    pub update: rollout::Config,
    pub rollback: rollout::Config,
    #[serde(default)]
    pub check: Option<StoredCheck>,
    /// (pool, volume) snapshotted before an update.
    #[serde(default)]
    pub snapshot_volumes: Vec<(String, String)>,
}

/// A healthcheck, as stored (durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub argv: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    pub start_interval_ms: u64,
}

/// Why a revision cannot be turned back into templates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "service {service:?}: {source_name} (at {path}) is not kept in Incus, and {problem}; run the rollback from the project directory with the {source_name} as it was, or roll back another revision"
    )]
    Secret {
        service: String,
        source_name: String,
        path: String,
        problem: String,
    },
    #[error("revision {revision}: service {service:?}: {problem}")]
    Corrupt {
        revision: u64,
        service: String,
        problem: String,
    },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The longest healthcheck duration a revision gives back: a year. A larger value read from
/// Incus (edited by hand, or corrupt) is taken as this, so that deadlines computed from it
/// (`now + interval * retries`...) stay far from overflowing.
pub const MAX_CHECK_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn stored_ms(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_CHECK_DURATION)
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl StoredService {
    /// The stored form of a template.
    pub fn from_template(t: &InstanceTemplate) -> StoredService {
        let image = match &t.image {
            ImageSource::Local(a) => serde_json::json!({"local": a}),
            ImageSource::Remote { remote, alias } => {
                serde_json::json!({"remote": remote, "alias": alias})
            }
            ImageSource::Oci {
                remote,
                server,
                alias,
            } => serde_json::json!({"oci": remote, "server": server, "alias": alias}),
        };
        StoredService {
            hash: t.hash.clone(),
            static_hash: t.static_hash.clone(),
            base_name: t.base_name.clone(),
            container_name: t.container_name.clone(),
            image,
            image_fingerprint: t.image_fingerprint.clone(),
            config: t.config.clone(),
            devices: t.devices.clone(),
            command: t.command.clone(),
            volumes: t.volumes.clone(),
            replicas: match t.spec.mode {
                Mode::Replicated { replicas } => Some(replicas),
                Mode::Global => None,
            },
            constraints: t.spec.constraints.iter().map(|c| c.to_string()).collect(),
            preferences: t
                .spec
                .preferences
                .iter()
                .map(|p| p.descriptor.clone())
                .collect(),
            max_replicas_per_node: t.spec.max_replicas_per_node,
            reservation_millicpus: t.spec.reservation_millicpus,
            reservation_memory: t.spec.reservation_memory,
            fixed_host_ports: t
                .spec
                .fixed_host_ports
                .iter()
                .map(|p| (p.port, p.udp))
                .collect(),
            depends_on: t.depends_on.clone(),
            stop_timeout: t.stop_timeout,
            files: t
                .files
                .iter()
                .map(|f| StoredFile {
                    path: f.path.clone(),
                    content_hex: match (&f.source, &f.content) {
                        (None, Some(c)) => Some(crate::plan::naming::hex(c)),
                        _ => None,
                    },
                    sha256: f.digest(),
                    uid: f.uid,
                    gid: f.gid,
                    mode: f.mode,
                    source: f.source.clone(),
                    user: f.user.clone(),
                    group: f.group.clone(),
                })
                .collect(),
            anonymous_volumes: t
                .anonymous_volumes
                .iter()
                .map(|a| {
                    (
                        a.device.clone(),
                        a.target.clone(),
                        a.read_only,
                        a.pool.clone(),
                        a.shared,
                    )
                })
                .collect(),
            architecture: t.architecture.clone(),
            update: t.rollout.update.clone(),
            rollback: t.rollout.rollback.clone(),
            check: t.rollout.check.as_ref().map(|c| StoredCheck {
                argv: c.argv.clone(),
                interval_ms: ms(c.interval),
                timeout_ms: ms(c.timeout),
                retries: c.retries,
                start_period_ms: ms(c.start_period),
                start_interval_ms: ms(c.start_interval),
            }),
            snapshot_volumes: t.rollout.snapshot_volumes.clone(),
        }
    }

    /// The template back. Secret and config contents come from `current` (the files the
    /// compose file gives now, or read back from a running replica): the file at the same
    /// path, of the same secret or config, with the same sha256, else
    /// [`RevisionError::Secret`].
    pub fn to_template(
        &self,
        revision: u64,
        service: &str,
        current: Option<&[PushFile]>,
    ) -> Result<InstanceTemplate, RevisionError> {
        let corrupt = |problem: String| RevisionError::Corrupt {
            revision,
            service: service.to_string(),
            problem,
        };
        let text = |k: &str| {
            self.image
                .get(k)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let image = if let Some(a) = text("local") {
            ImageSource::Local(a)
        } else if let (Some(remote), Some(alias)) = (text("remote"), text("alias")) {
            ImageSource::Remote { remote, alias }
        } else if let (Some(remote), Some(server), Some(alias)) =
            (text("oci"), text("server"), text("alias"))
        {
            ImageSource::Oci {
                remote,
                server,
                alias,
            }
        } else {
            return Err(corrupt(format!("unknown image {}", self.image)));
        };
        let mut files = Vec::new();
        for f in &self.files {
            let content = match (&f.source, &f.content_hex, &f.sha256) {
                (Some(source), _, Some(sha)) => {
                    let now = current
                        .and_then(|files| files.iter().find(|c| c.path == f.path))
                        .filter(|c| c.source.as_ref() == Some(source));
                    let problem = match now {
                        None => "the compose file at hand does not deliver it there".to_string(),
                        Some(c) if !c.matches(sha) => "its content changed since".to_string(),
                        Some(c) => {
                            files.push(c.clone());
                            continue;
                        }
                    };
                    return Err(RevisionError::Secret {
                        service: service.to_string(),
                        source_name: source.clone(),
                        path: f.path.clone(),
                        problem,
                    });
                }
                (_, Some(hex), _) => Some(
                    hex_decode(hex).ok_or_else(|| corrupt(format!("file {}: bad hex", f.path)))?,
                ),
                _ => None,
            };
            files.push(PushFile {
                path: f.path.clone(),
                content,
                uid: f.uid,
                gid: f.gid,
                mode: f.mode,
                source: f.source.clone(),
                key: None,
                user: f.user.clone(),
                group: f.group.clone(),
            });
        }
        let mut spec = match self.replicas {
            Some(n) => ServiceSpec::replicated(service, n),
            None => ServiceSpec::global(service),
        };
        for c in &self.constraints {
            spec.constraints.push(
                c.parse()
                    .map_err(|e| corrupt(format!("constraint {c:?}: {e}")))?,
            );
        }
        for p in &self.preferences {
            spec.preferences.push(
                p.parse()
                    .map_err(|e| corrupt(format!("spread {p:?}: {e}")))?,
            );
        }
        spec.max_replicas_per_node = self.max_replicas_per_node;
        spec.reservation_millicpus = self.reservation_millicpus;
        spec.reservation_memory = self.reservation_memory;
        spec.fixed_host_ports = self
            .fixed_host_ports
            .iter()
            .map(|(port, udp)| HostPort {
                port: *port,
                udp: *udp,
            })
            .collect();
        Ok(InstanceTemplate {
            service: service.to_string(),
            base_name: self.base_name.clone(),
            container_name: self.container_name.clone(),
            image,
            image_fingerprint: self.image_fingerprint.clone(),
            config: self.config.clone(),
            devices: self.devices.clone(),
            command: self.command.clone(),
            hash: self.hash.clone(),
            volumes: self.volumes.clone(),
            spec,
            depends_on: self.depends_on.clone(),
            stop_timeout: self.stop_timeout,
            files,
            anonymous_volumes: self
                .anonymous_volumes
                .iter()
                .map(
                    |(device, target, read_only, pool, shared)| AnonymousVolume {
                        device: device.clone(),
                        target: target.clone(),
                        read_only: *read_only,
                        pool: pool.clone(),
                        shared: *shared,
                        volume: None,
                    },
                )
                .collect(),
            architecture: self.architecture.clone(),
            static_hash: self.static_hash.clone(),
            rollout: RolloutSpec {
                update: self.update.clone(),
                rollback: self.rollback.clone(),
                check: self.check.as_ref().map(|c| Check {
                    argv: c.argv.clone(),
                    interval: stored_ms(c.interval_ms),
                    timeout: stored_ms(c.timeout_ms),
                    retries: c.retries,
                    start_period: stored_ms(c.start_period_ms),
                    start_interval: stored_ms(c.start_interval_ms),
                }),
                snapshot_volumes: self.snapshot_volumes.clone(),
                stop_first_slots: Default::default(),
            },
        })
    }
}

/// The revisions in a project's config, oldest first (unreadable entries are skipped and
/// named in the second list).
pub fn read(config: &BTreeMap<String, String>) -> (Vec<Revision>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (k, v) in config {
        if !k.starts_with(REVISION_PREFIX) || v.is_empty() {
            continue;
        }
        match serde_json::from_str::<Revision>(v) {
            Ok(r) => out.push(r),
            Err(e) => bad.push(format!("{k}: {e}")),
        }
    }
    out.sort_by_key(|r| r.number);
    (out, bad)
}

/// The config key of revision `n`.
pub fn key(n: u64) -> String {
    format!("{REVISION_PREFIX}{n}")
}

/// The newest revision whose rollout completed: what runs now.
pub fn deployed(revisions: &[Revision]) -> Option<&Revision> {
    revisions
        .iter()
        .rev()
        .find(|r| r.outcome == Outcome::Completed)
}

/// The revision `rollback` goes to: `to`, or the newest completed one older than the
/// deployed one.
pub fn rollback_target(revisions: &[Revision], to: Option<u64>) -> Result<&Revision, String> {
    if let Some(n) = to {
        return revisions.iter().find(|r| r.number == n).ok_or_else(|| {
            format!(
                "no revision {n} is kept (kept: {})",
                revisions
                    .iter()
                    .map(|r| r.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    }
    let current = deployed(revisions).ok_or("no revision has completed yet")?;
    revisions
        .iter()
        .rev()
        .find(|r| r.number < current.number && r.outcome == Outcome::Completed)
        .ok_or_else(|| {
            format!(
                "revision {} is the oldest completed revision kept: nothing to roll back to",
                current.number
            )
        })
}

/// The revision a replica of `service` whose hash label is `hash` runs: the newest revision
/// that stored `service` with that hash (a rollback makes a newer revision with an older
/// hash). `None` when no revision kept has it (made before revisions were kept, or by a
/// revision no longer kept).
pub fn running_revision(revisions: &[Revision], service: &str, hash: &str) -> Option<u64> {
    revisions
        .iter()
        .rev()
        .find(|r| r.services.get(service).is_some_and(|s| s.hash == hash))
        .map(|r| r.number)
}

/// The services whose spec differs between two revisions (added and removed ones too).
pub fn changed(before: Option<&Revision>, after: &Revision) -> Vec<String> {
    let mut names: BTreeSet<&String> = after.services.keys().collect();
    if let Some(b) = before {
        names.extend(b.services.keys());
    }
    names
        .into_iter()
        .filter(|n| {
            let a = after.services.get(*n);
            let b = before.and_then(|b| b.services.get(*n));
            a.map(|s| (&s.hash, s.replicas)) != b.map(|s| (&s.hash, s.replicas))
        })
        .cloned()
        .collect()
}

/// The services of `d` as they would be stored.
pub fn services_of(d: &Desired) -> BTreeMap<String, StoredService> {
    d.services
        .iter()
        .map(|t| (t.service.clone(), StoredService::from_template(t)))
        .collect()
}

/// Whether deploying `d` makes a new revision: its services differ from the newest one's.
pub fn is_new(revisions: &[Revision], services: &BTreeMap<String, StoredService>) -> bool {
    // Every stored field counts, not only what recreates a replica: a changed placement
    // constraint, reservation or `update_config` is a new spec (as `docker service update`
    // makes one) that `watch`, `node drain` and `rollback` must act on.
    revisions
        .last()
        .is_none_or(|last| &last.services != services)
}

/// Config keys to write so that only the newest `keep` revisions stay (an empty value
/// removes a key) after adding `new`.
pub fn with_revision(
    config: &BTreeMap<String, String>,
    new: &Revision,
    keep: usize,
) -> BTreeMap<String, String> {
    let mut out = config.clone();
    if let Ok(json) = serde_json::to_string(new) {
        out.insert(key(new.number), json);
    }
    let (all, _) = read(&out);
    // The deployed revision stays whatever the count: it is what `watch` keeps and
    // `rollback` goes back from (ten failed attempts after it must not drop it).
    let deployed = deployed(&all).map(|r| r.number);
    let drop = all.len().saturating_sub(keep.max(1));
    for r in all.iter().take(drop) {
        if Some(r.number) != deployed {
            out.remove(&key(r.number));
        }
    }
    out
}

/// The newest revision when deploying `services` goes on with it rather than making a new
/// one: its services are the same and its rollout did not complete (interrupted, failed,
/// paused or rolled back). The next run reopens it (`in progress`) and records how it ends.
pub fn to_reopen<'a>(
    revisions: &'a [Revision],
    services: &BTreeMap<String, StoredService>,
) -> Option<&'a Revision> {
    let last = revisions.last()?;
    (last.outcome != Outcome::Completed && !is_new(revisions, services)).then_some(last)
}

/// Where a project's revisions stand: the deployed one (newest completed) and the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The newest completed revision: what runs.
    pub deployed: Option<u64>,
    /// The newest revision and how its rollout ended (`None`: no revision).
    pub newest: Option<(u64, Outcome)>,
}

/// Where `revisions` stand (see [`Standing`]).
pub fn standing(revisions: &[Revision]) -> Standing {
    Standing {
        deployed: deployed(revisions).map(|r| r.number),
        newest: revisions.last().map(|r| (r.number, r.outcome)),
    }
}

/// The services `watch` must not act on, each with why: those the newest revision changes
/// (from the deployed one) while its rollout is in progress, paused or failed. Converging them
/// to the deployed revision would undo an update a run is making (or one a user must look at);
/// converging them to the newest would finish an update nobody confirmed. A rolled-back newest
/// revision holds nothing back: its rollback restored the deployed revision.
pub fn watch_holds(revisions: &[Revision]) -> BTreeMap<String, String> {
    let Some(newest) = revisions.last() else {
        return BTreeMap::new();
    };
    if matches!(newest.outcome, Outcome::Completed | Outcome::RolledBack) {
        return BTreeMap::new();
    }
    let base = deployed(revisions);
    changed(base, newest)
        .into_iter()
        .map(|s| {
            let why = format!(
                "revision {} changes it and is {}{}: not acting on it (run `incus-compose up` to finish it, or `rollback`)",
                newest.number,
                newest.outcome,
                base.map(|b| format!(" (deployed: revision {})", b.number))
                    .unwrap_or_default()
            );
            (s, why)
        })
        .collect()
}

/// What `watch` converges to: the services of the deployed revision, as `up` deployed them;
/// a replica `watch` must re-create rolls with the service's `update_config` (a rollback's
/// `rollback_config` is for going back to an older revision, not for keeping this one).
///
/// Secret and config contents (not kept in Incus) come from `read_back`: per service, the
/// files read from one of its running replicas (see [`files_to_read_back`]); each must have
/// the sha256 the revision recorded.
pub fn deployed_desired(
    compose: &str,
    incus_project: &str,
    deployed: &Revision,
    read_back: &BTreeMap<String, Vec<PushFile>>,
) -> Result<Desired, RevisionError> {
    let files = |service: &str| read_back.get(service).map(Vec::as_slice);
    let mut d = desired_from_files(compose, incus_project, deployed, deployed, &[], &files)?;
    for t in &mut d.services {
        if let Some(s) = deployed.services.get(&t.service) {
            t.rollout.update = s.update.clone();
        }
    }
    Ok(d)
}

/// The secret and config files of `deployed` whose contents are not kept in Incus, per
/// service (each with its path, `secret NAME` / `config NAME` source and sha256).
pub fn files_to_read_back(deployed: &Revision) -> BTreeMap<String, Vec<StoredFile>> {
    let mut out: BTreeMap<String, Vec<StoredFile>> = BTreeMap::new();
    for (service, s) in &deployed.services {
        for f in &s.files {
            if f.source.is_some() && f.content_hex.is_none() && f.sha256.is_some() {
                out.entry(service.clone()).or_default().push(f.clone());
            }
        }
    }
    out
}

/// `content` as the file `f` (read back from a replica) when it has the recorded digest
/// (keyed with `key`, the project's, or a bare sha256 of a revision written before it).
pub fn read_back_file(
    f: &StoredFile,
    content: Vec<u8>,
    key: Option<&DigestKey>,
) -> Option<PushFile> {
    let file = PushFile {
        path: f.path.clone(),
        content: Some(content),
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
        source: f.source.clone(),
        key: key.cloned(),
        user: f.user.clone(),
        group: f.group.clone(),
    };
    f.sha256
        .as_deref()
        .is_some_and(|d| file.matches(d))
        .then_some(file)
}

/// A desired state made of stored services (for `rollback`): the services of `target`
/// (only `only` when given, the others as in `deployed`), with no networks or volumes to
/// create (they exist). Each service rolls with `rollback_config` of the deployed revision.
pub fn desired_from(
    compose: &str,
    incus_project: &str,
    target: &Revision,
    deployed: &Revision,
    only: &[String],
    current: Option<&Desired>,
) -> Result<Desired, RevisionError> {
    let files = |service: &str| {
        current
            .and_then(|d| d.services.iter().find(|t| t.service == service))
            .map(|t| t.files.as_slice())
    };
    desired_from_files(compose, incus_project, target, deployed, only, &files)
}

/// [`desired_from`], with the secret and config files of each service from `files`.
fn desired_from_files<'a>(
    compose: &str,
    incus_project: &str,
    target: &Revision,
    deployed: &Revision,
    only: &[String],
    files: &dyn Fn(&str) -> Option<&'a [PushFile]>,
) -> Result<Desired, RevisionError> {
    let mut services = Vec::new();
    let names: BTreeSet<&String> = target
        .services
        .keys()
        .chain(deployed.services.keys())
        .collect();
    for name in names {
        let from_target = only.is_empty() || only.contains(name);
        let (rev, stored) = match (from_target, target.services.get(name)) {
            (true, Some(s)) => (target.number, s),
            _ => match deployed.services.get(name) {
                Some(s) => (deployed.number, s),
                None => continue,
            },
        };
        let mut t = stored.to_template(rev, name, files(name))?;
        if let Some(d) = deployed.services.get(name) {
            t.rollout.update = d.rollback.clone();
        }
        services.push(t);
    }
    // Dependency order: a service after those it depends on.
    let mut ordered: Vec<InstanceTemplate> = Vec::new();
    while !services.is_empty() {
        let pos = services
            .iter()
            .position(|t| {
                t.depends_on.iter().all(|d| {
                    ordered.iter().any(|o| &o.service == d)
                        || !services.iter().any(|s| &s.service == d)
                })
            })
            .unwrap_or(0);
        ordered.push(services.remove(pos));
    }
    // The networks of the target, and of the deployed revision for those it lacks.
    let mut networks: Vec<crate::plan::DesiredNetwork> = Vec::new();
    for n in target.networks.iter().chain(&deployed.networks) {
        if networks.iter().any(|d| d.name == n.name) {
            continue;
        }
        networks.push(crate::plan::DesiredNetwork {
            key: n.key.clone(),
            name: n.name.clone(),
            external: n.external,
            subnet: None,
            config: n.config.clone(),
            kind: n.kind.clone(),
            member_config: BTreeMap::new(),
            names: n.names.clone(),
            internal: n.internal,
            resolver: n.resolver,
            fill_members: Vec::new(),
        });
    }
    Ok(Desired {
        compose_project: compose.to_string(),
        incus_project: incus_project.to_string(),
        networks,
        volumes: Vec::new(),
        all_services: ordered.iter().map(|t| t.service.clone()).collect(),
        services: ordered,
        shared_storage: false,
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use ic_compose::{LoadOptions, MemFs, load_with};

    use super::*;
    use crate::plan::{PlanOptions, ServerFacts, desired};

    fn key() -> DigestKey {
        DigestKey::from_hex(&"a5".repeat(32)).expect("a key")
    }

    fn desired_of(text: &str, secret: &str) -> Desired {
        desired_keyed(text, secret, Some(key()))
    }

    fn desired_keyed(text: &str, secret: &str, digest_key: Option<DigestKey>) -> Desired {
        let o = LoadOptions {
            files: vec![PathBuf::from("/p/compose.yaml")],
            working_dir: PathBuf::from("/p"),
            environment: BTreeMap::new(),
            interpolate: true,
            ..LoadOptions::default()
        };
        let fs = MemFs::default()
            .with("/p/compose.yaml", text)
            .with("/p/pw.txt", secret);
        let project = load_with(&o, &fs).unwrap_or_else(|e| panic!("{e}"));
        let facts = ServerFacts {
            image_aliases: ["testapp/v1", "testapp/v2"].map(String::from).into(),
            storage_pool: "data".into(),
            pools: BTreeMap::from([("data".into(), "dir".into())]),
            digest_key,
            ..Default::default()
        };
        desired(&project, &facts, &PlanOptions::default()).unwrap()
    }

    const APP: &str = r#"
name: shop
services:
  web:
    image: testapp/v1
    command: ["httpd", "-f"]
    secrets: [pw]
    healthcheck: {test: ["CMD", "true"], interval: 3s}
    deploy:
      replicas: 3
      placement: {constraints: ["node.labels.zone == a"], preferences: [{spread: node.labels.rack}]}
      update_config: {parallelism: 2, order: start-first}
secrets:
  pw: {file: ./pw.txt}
"#;

    fn revision(n: u64, d: &Desired, outcome: Outcome) -> Revision {
        Revision {
            number: n,
            time: "2026-12-03T16:00:00Z".into(),
            version: "0.1.0".into(),
            outcome,
            cause: "up".into(),
            services: services_of(d),
            networks: networks_of(d),
        }
    }

    #[test]
    fn a_stored_service_comes_back_as_the_same_template_without_keeping_the_secret() {
        let d = desired_of(APP, "hunter2");
        let stored = StoredService::from_template(&d.services[0]);
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("hunter2"), "the secret is stored: {json}");
        let back: StoredService = serde_json::from_str(&json).unwrap();
        let t = back
            .to_template(1, "web", Some(&d.services[0].files))
            .unwrap();
        assert_eq!(t, d.services[0]);
    }

    #[test]
    fn a_secret_whose_content_changed_refuses_the_rollback_and_names_it() {
        let old = desired_of(APP, "hunter2");
        let now = desired_of(APP, "changed");
        let stored = StoredService::from_template(&old.services[0]);
        let err = stored
            .to_template(4, "web", Some(&now.services[0].files))
            .unwrap_err();
        assert!(err.to_string().contains("secret pw"), "{err}");
        assert!(err.to_string().contains("changed"), "{err}");
        let err = stored.to_template(4, "web", None).unwrap_err();
        assert!(err.to_string().contains("does not deliver it"), "{err}");
    }

    #[test]
    fn only_the_newest_revisions_are_kept() {
        let d = desired_of(APP, "x");
        let mut config = BTreeMap::from([("user.other".to_string(), "kept".to_string())]);
        for n in 1..=12 {
            config = with_revision(&config, &revision(n, &d, Outcome::Completed), 10);
        }
        let (all, bad) = read(&config);
        assert!(bad.is_empty());
        assert_eq!(
            all.iter().map(|r| r.number).collect::<Vec<_>>(),
            (3..=12).collect::<Vec<_>>()
        );
        assert_eq!(config["user.other"], "kept");
    }

    #[test]
    fn absurd_healthcheck_durations_read_back_saturate_instead_of_overflowing() {
        let d = desired_of(APP, "x");
        let mut stored = StoredService::from_template(&d.services[0]);
        stored.check = Some(StoredCheck {
            argv: vec!["true".into()],
            interval_ms: u64::MAX,
            timeout_ms: u64::MAX,
            retries: u32::MAX,
            start_period_ms: u64::MAX,
            start_interval_ms: u64::MAX,
        });
        let t = stored
            .to_template(1, "web", Some(&d.services[0].files))
            .unwrap();
        let c = t.rollout.check.as_ref().expect("a check");
        assert_eq!(c.interval, MAX_CHECK_DURATION);
        // The deadlines computed from it saturate (they overflowed and panicked before).
        let deadline = crate::rollout::deadline(&t.rollout.update, Some(c));
        assert!(deadline >= MAX_CHECK_DURATION);
        assert!(crate::rollout::monitor_warning("web", &t.rollout.update, Some(c)).is_some());
        let raw = Check {
            interval: Duration::MAX,
            timeout: Duration::MAX,
            start_period: Duration::MAX,
            ..c.clone()
        };
        assert_eq!(
            crate::rollout::deadline(&t.rollout.update, Some(&raw)),
            Duration::MAX
        );
    }

    #[test]
    fn pruning_never_drops_the_deployed_revision() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let mut config = with_revision(&BTreeMap::new(), &revision(1, &v1, Outcome::Completed), 10);
        for n in 2..=13 {
            config = with_revision(&config, &revision(n, &v2, Outcome::Failed), 10);
        }
        let (all, _) = read(&config);
        let numbers: Vec<u64> = all.iter().map(|r| r.number).collect();
        assert_eq!(numbers[0], 1, "the deployed revision is kept: {numbers:?}");
        assert_eq!(&numbers[1..], (4..=13).collect::<Vec<_>>().as_slice());
        assert_eq!(deployed(&all).map(|r| r.number), Some(1));
        // Once a newer one completes, the old deployed one goes by count as any other.
        config = with_revision(&config, &revision(14, &v2, Outcome::Completed), 10);
        let (all, _) = read(&config);
        assert_eq!(
            all.iter().map(|r| r.number).collect::<Vec<_>>(),
            (5..=14).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_unfinished_newest_revision_of_the_same_services_is_reopened() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let done = revision(1, &v1, Outcome::Completed);
        for outcome in [
            Outcome::InProgress,
            Outcome::Failed,
            Outcome::Paused,
            Outcome::RolledBack,
        ] {
            let revs = vec![done.clone(), revision(2, &v2, outcome)];
            assert_eq!(
                to_reopen(&revs, &services_of(&v2)).map(|r| r.number),
                Some(2),
                "{outcome}"
            );
            // Other services: a new revision, nothing reopened.
            assert_eq!(to_reopen(&revs, &services_of(&v1)), None, "{outcome}");
        }
        let revs = vec![done.clone(), revision(2, &v2, Outcome::Completed)];
        assert_eq!(to_reopen(&revs, &services_of(&v2)), None);
        assert_eq!(to_reopen(&[], &services_of(&v2)), None);
    }

    #[test]
    fn watch_holds_the_services_an_unfinished_newest_revision_changes() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let done = revision(1, &v1, Outcome::Completed);
        assert!(watch_holds(std::slice::from_ref(&done)).is_empty());
        assert_eq!(
            standing(std::slice::from_ref(&done)),
            Standing {
                deployed: Some(1),
                newest: Some((1, Outcome::Completed))
            }
        );
        for outcome in [Outcome::InProgress, Outcome::Paused, Outcome::Failed] {
            let revs = vec![done.clone(), revision(2, &v2, outcome)];
            let held = watch_holds(&revs);
            assert_eq!(held.keys().collect::<Vec<_>>(), ["web"], "{outcome}");
            assert!(held["web"].contains(&format!("revision 2 changes it and is {outcome}")));
            assert!(held["web"].contains("deployed: revision 1"));
            assert_eq!(
                standing(&revs),
                Standing {
                    deployed: Some(1),
                    newest: Some((2, outcome))
                }
            );
        }
        // A rolled-back update restored the deployed revision: watch keeps it.
        let revs = vec![done.clone(), revision(2, &v2, Outcome::RolledBack)];
        assert!(watch_holds(&revs).is_empty());
        // A first deployment still in progress: nothing is deployed yet, every service waits.
        let first = vec![revision(1, &v1, Outcome::InProgress)];
        assert_eq!(watch_holds(&first).keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(
            standing(&first),
            Standing {
                deployed: None,
                newest: Some((1, Outcome::InProgress))
            }
        );
    }

    #[test]
    fn rollback_goes_to_the_completed_revision_before_the_deployed_one() {
        let d = desired_of(APP, "x");
        let revs = vec![
            revision(1, &d, Outcome::Completed),
            revision(2, &d, Outcome::Completed),
            revision(3, &d, Outcome::RolledBack),
        ];
        assert_eq!(deployed(&revs).unwrap().number, 2);
        assert_eq!(rollback_target(&revs, None).unwrap().number, 1);
        assert_eq!(rollback_target(&revs, Some(3)).unwrap().number, 3);
        assert!(
            rollback_target(&revs, Some(9))
                .unwrap_err()
                .contains("1, 2, 3")
        );
        assert!(rollback_target(&revs[..1], None).is_err());
    }

    #[test]
    fn changed_services_and_new_revisions_follow_hashes_and_replicas() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let r1 = revision(1, &v1, Outcome::Completed);
        let r2 = revision(2, &v2, Outcome::Completed);
        assert_eq!(changed(Some(&r1), &r2), ["web"]);
        assert!(changed(Some(&r1), &r1).is_empty());
        assert!(!is_new(std::slice::from_ref(&r1), &services_of(&v1)));
        assert!(is_new(std::slice::from_ref(&r1), &services_of(&v2)));
    }

    #[test]
    fn a_spec_change_that_recreates_no_replica_is_a_new_revision_and_a_stored_one_reads_back_equal()
    {
        let v1 = desired_of(APP, "x");
        let r1 = revision(1, &v1, Outcome::Completed);
        // Stored in the project config and read back: the same services (a converged `up`
        // records nothing).
        let config = with_revision(&BTreeMap::new(), &r1, 10);
        let (stored, _) = read(&config);
        assert_eq!(stored.len(), 1);
        assert!(!is_new(&stored, &services_of(&v1)));
        for (from, to) in [
            ("node.labels.zone == a", "node.labels.zone != b"),
            ("parallelism: 2", "parallelism: 1"),
            ("{spread: node.labels.rack}", "{spread: node.labels.zone}"),
        ] {
            let changed = desired_of(&APP.replace(from, to), "x");
            assert_eq!(
                changed.services[0].hash, v1.services[0].hash,
                "{to}: no replica is recreated"
            );
            assert!(
                is_new(&stored, &services_of(&changed)),
                "{to}: not recorded"
            );
        }
    }

    #[test]
    fn a_replica_runs_the_newest_revision_with_its_hash() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let revs = [
            revision(1, &v1, Outcome::Completed),
            revision(2, &v2, Outcome::RolledBack),
            revision(3, &v1, Outcome::Completed),
        ];
        let (h1, h2) = (&v1.services[0].hash, &v2.services[0].hash);
        assert_ne!(h1, h2);
        assert_eq!(running_revision(&revs, "web", h1), Some(3));
        assert_eq!(running_revision(&revs, "web", h2), Some(2));
        assert_eq!(running_revision(&revs, "web", "other"), None);
        assert_eq!(running_revision(&revs, "db", h1), None);
    }

    #[test]
    fn a_rollback_desired_takes_named_services_from_the_target_and_rolls_with_rollback_config() {
        let v1 = desired_of(APP, "x");
        let v2 = desired_of(&APP.replace("testapp/v1", "testapp/v2"), "x");
        let r1 = revision(1, &v1, Outcome::Completed);
        let r2 = revision(2, &v2, Outcome::Completed);
        let d = desired_from("shop", "shop", &r1, &r2, &[], Some(&v2)).unwrap();
        assert_eq!(d.services[0].hash, v1.services[0].hash);
        assert_eq!(
            d.services[0].rollout.update,
            v2.services[0].rollout.rollback
        );
        let d = desired_from("shop", "shop", &r1, &r2, &["other".into()], Some(&v2)).unwrap();
        assert_eq!(d.services[0].hash, v2.services[0].hash);
    }

    #[test]
    fn what_watch_converges_to_takes_secrets_read_back_from_a_replica_with_the_recorded_hash() {
        let v1 = desired_of(APP, "s3cret");
        let r1 = revision(1, &v1, Outcome::Completed);
        let wanted = files_to_read_back(&r1);
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(wanted["web"].len(), 1);
        let f = &wanted["web"][0];
        assert_eq!(f.source.as_deref(), Some("secret pw"));
        assert!(read_back_file(f, b"changed".to_vec(), Some(&key())).is_none());
        let good =
            read_back_file(f, b"s3cret".to_vec(), Some(&key())).expect("the recorded content");
        // Without the contents: refused, naming the secret.
        let err = deployed_desired("shop", "shop", &r1, &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("secret pw"), "{err}");
        let read = BTreeMap::from([("web".to_string(), vec![good])]);
        let d = deployed_desired("shop", "shop", &r1, &read).unwrap();
        assert_eq!(d.services[0].hash, v1.services[0].hash);
        let pushed = d.services[0]
            .files
            .iter()
            .find(|x| x.source.as_deref() == Some("secret pw"))
            .expect("the secret is pushed");
        assert_eq!(pushed.content.as_deref(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn a_secret_digest_is_keyed_and_one_recorded_before_the_key_is_still_recognised() {
        let keyed = desired_of(APP, "s3cret");
        let r1 = revision(1, &keyed, Outcome::Completed);
        let f = &files_to_read_back(&r1)["web"][0];
        let bare = crate::plan::naming::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"s3cret"));
        let recorded = f.sha256.as_deref().expect("a digest");
        assert!(recorded.starts_with("hmac-sha256:"), "{recorded}");
        assert!(!recorded.contains(&bare), "the bare sha256 is not stored");
        // Not checkable without the key, nor under another one.
        assert!(read_back_file(f, b"s3cret".to_vec(), None).is_none());
        let other = DigestKey::from_hex(&"5a".repeat(32)).unwrap();
        assert!(read_back_file(f, b"s3cret".to_vec(), Some(&other)).is_none());
        // The spec hash depends on the key (so does not reveal a bare digest either).
        let unkeyed = desired_keyed(APP, "s3cret", None);
        assert_ne!(keyed.services[0].hash, unkeyed.services[0].hash);
        // A revision written before the project had a key (bare sha256) still reads back.
        let r0 = revision(1, &unkeyed, Outcome::Completed);
        let f0 = &files_to_read_back(&r0)["web"][0];
        assert_eq!(f0.sha256.as_deref(), Some(bare.as_str()));
        assert!(read_back_file(f0, b"s3cret".to_vec(), Some(&key())).is_some());
        assert!(read_back_file(f0, b"other".to_vec(), Some(&key())).is_none());
        // And a rollback to it with the keyed compose file at hand takes the secret from it.
        let d = desired_from("shop", "shop", &r0, &r1, &[], Some(&keyed)).unwrap();
        assert_eq!(d.services[0].hash, unkeyed.services[0].hash);
    }

    #[test]
    fn hmac_sha256_is_rfc_4231s() {
        // RFC 4231, test case 2.
        let mac = crate::plan::mapping::hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::plan::naming::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = crate::plan::mapping::hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            crate::plan::naming::hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn what_watch_converges_to_rolls_with_update_config_not_rollback_config() {
        let v1 = desired_of(APP, "x");
        let r1 = revision(1, &v1, Outcome::Completed);
        let read = BTreeMap::from([(
            "web".to_string(),
            vec![
                read_back_file(
                    &files_to_read_back(&r1)["web"][0],
                    b"x".to_vec(),
                    Some(&key()),
                )
                .unwrap(),
            ],
        )]);
        let update = &v1.services[0].rollout.update;
        assert_ne!(
            update, &v1.services[0].rollout.rollback,
            "the test needs them to differ"
        );
        let d = deployed_desired("shop", "shop", &r1, &read).unwrap();
        assert_eq!(&d.services[0].rollout.update, update);
        assert!(update.start_first && update.parallelism == 2);
        assert_eq!(d.services[0].hash, v1.services[0].hash);
    }
}
