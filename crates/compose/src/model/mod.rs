//! The typed, canonical compose project: what `incus-compose config` prints and what the planner
//! and scheduler consume. Short syntax is gone (ports, volumes, environment, ... are in long
//! form), paths are absolute, durations and sizes are typed, and `deploy` is fully typed with the
//! service-level twins (`scale`, `cpus`, `mem_limit`, `mem_reservation`, `pids_limit`,
//! `restart`) folded in. Maps are sorted by name, as compose sorts them.

pub mod deploy;
pub mod placement;
pub mod pull;
pub mod units;

use std::collections::BTreeMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Serialize;

pub use deploy::*;
pub use pull::PullPolicy;
pub use units::{ByteSize, Duration};

use crate::error::Diagnostic;

pub type Extensions = IndexMap<String, serde_json::Value>;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A loaded compose project.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Project {
    pub name: String,
    /// The project directory; relative paths were resolved against it.
    #[serde(skip)]
    pub working_dir: PathBuf,
    pub services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, Config>,
    /// Top-level `x-` keys, kept for later stages (e.g. `x-incus`).
    #[serde(flatten)]
    pub extensions: Extensions,
    /// Services left out because none of their profiles is enabled.
    #[serde(skip)]
    pub disabled_services: BTreeMap<String, Service>,
    /// Every profile named by a service.
    #[serde(skip)]
    pub all_profiles: Vec<String>,
    /// Non-fatal findings (unset variables, obsolete `version`, unsupported modes).
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
    /// The compose files that were loaded, in order.
    #[serde(skip)]
    pub files: Vec<String>,
    /// Values commands acting on Incus refuse (control characters, names outside their
    /// character set; see [`crate::hostile`]), with their file, line and field. `config`
    /// renders the project regardless, as docker compose does.
    #[serde(skip)]
    pub hostile: Vec<Diagnostic>,
    /// What docker compose's `config` accepts but a deployment refuses (a placement
    /// constraint without an operator, a relative container path): `up` refuses these before
    /// any change, through [`crate::validate::before_up`].
    #[serde(skip)]
    pub up_errors: Vec<Diagnostic>,
}

impl Project {
    /// Service names in dependency order (dependencies first), ties broken by name.
    pub fn services_in_dependency_order(&self) -> Vec<&str> {
        let mut done: Vec<&str> = Vec::new();
        let mut remaining: Vec<&str> = self.services.keys().map(String::as_str).collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            remaining.retain(|name| {
                let ready = self.services[*name]
                    .depends_on
                    .keys()
                    .all(|d| done.contains(&d.as_str()) || !self.services.contains_key(d));
                if ready {
                    done.push(name);
                }
                !ready
            });
            if remaining.len() == before {
                // A cycle (rejected at load time); keep going deterministically.
                done.append(&mut remaining);
            }
        }
        done
    }
}

/// A service, canonical.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Service {
    #[serde(skip)]
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_file: Vec<EnvFile>,
    /// Variables after interpolation, with `env_file` contents merged in (the inline value
    /// wins). `None` = declared without a value and not set in the environment.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, Option<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// Networks the service joins; `None` = joined with no per-network settings.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Option<ServiceNetwork>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<ByteSize>,
    #[serde(skip_serializing_if = "is_false")]
    pub stdin_open: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub tty: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Other specification keys, validated but not (yet) typed, as written (after
    /// interpolation and merging): `blkio_config`, `devices`, `gpus`, `ulimits`, ...
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
    /// `x-` keys of the service.
    #[serde(flatten)]
    pub extensions: Extensions,
    /// The `deploy:` section as the files declare it, before the service-level twins are folded
    /// into [`Service::deploy`]: what `config` prints (docker compose v2 does not fold). Later
    /// stages use `deploy`.
    #[serde(skip)]
    pub declared_deploy: Option<DeclaredDeploy>,
}

/// A service's `deploy:` as declared (see [`Service::declared_deploy`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeclaredDeploy {
    pub deploy: Deploy,
    /// Whether `mode` was written (it defaults to `replicated` in `deploy.mode`).
    pub mode: bool,
    /// `placement.constraints` as written (`node.role==manager`), before parsing.
    pub constraints: Vec<String>,
}

impl Service {
    /// How many replicas to run (`deploy.replicas`, or `scale`; default 1). Global services
    /// return None: one per member.
    pub fn replicas(&self) -> Option<u64> {
        match &self.deploy {
            Some(d) if matches!(d.mode, DeployMode::Global | DeployMode::GlobalJob) => None,
            Some(d) => Some(d.replicas.unwrap_or(1)),
            None => Some(self.scale.unwrap_or(1)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Build {
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub condition: DependencyCondition,
    #[serde(skip_serializing_if = "is_false")]
    pub restart: bool,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvFile {
    pub path: String,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A secret or config granted to a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRef {
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl FileRef {
    /// Where a secret is mounted: `target` (relative targets go under `/run/secrets/`), else
    /// `/run/secrets/<source>`.
    pub fn secret_target(&self) -> String {
        match &self.target {
            Some(t) if t.starts_with('/') => t.clone(),
            Some(t) => format!("/run/secrets/{t}"),
            None => format!("/run/secrets/{}", self.source),
        }
    }

    /// Where a config is mounted: `target`, else `/<source>`.
    pub fn config_target(&self) -> String {
        match &self.target {
            Some(t) if t.starts_with('/') => t.clone(),
            Some(t) => format!("/{t}"),
            None => format!("/{}", self.source),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`; a string is `CMD-SHELL`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    #[serde(skip_serializing_if = "is_false")]
    pub disable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Logging {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Ulimit {
    Single(i64),
    SoftHard { soft: i64, hard: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ServiceNetwork {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A port range `start-end` (start == end for a single port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    Ingress,
    Host,
}

/// A published or exposed port, long form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub mode: PortMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub target: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<PortRange>,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    Bind,
    Volume,
    Tmpfs,
    Cluster,
    Npipe,
    Image,
}

/// A mount of a service, long form. Bind sources are absolute paths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceVolume {
    #[serde(rename = "type")]
    pub kind: VolumeType,
    /// Volume name, host path (bind) or image; None for anonymous volumes and tmpfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BindOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub create_host_path: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recursive: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VolumeOptions {
    #[serde(skip_serializing_if = "is_false")]
    pub nocopy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TmpfsOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Network {
    /// The real network name (`<project>_<key>` unless set or external).
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub internal: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub attachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extensions: Extensions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Ipam {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamPool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct IpamPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Volume {
    /// The real volume name (`<project>_<key>` unless set or external).
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extensions: Extensions,
}

/// A top-level secret; configs have the same shape plus `content`. Equality compares the
/// declaration, not [`Secret::value`] (what the file or variable holds when loaded); `Debug`
/// shows the value's length only.
#[derive(Clone, Serialize, Default)]
pub struct Secret {
    pub name: String,
    /// Absolute path of the file holding the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub external: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
    #[serde(flatten)]
    pub extensions: Extensions,
    /// The value, resolved by the loader: `content`, the `file` read, or the `environment`
    /// variable looked up (process environment, then `.env`); `Err` says why it could not be
    /// resolved; `None` for external ones. Never serialized (never printed by `config`).
    #[serde(skip)]
    pub value: Option<Result<Vec<u8>, String>>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = match &self.value {
            Some(Ok(v)) => format!("Some(Ok(<{} bytes>))", v.len()),
            Some(Err(e)) => format!("Some(Err({e:?}))"),
            None => "None".to_string(),
        };
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("environment", &self.environment)
            .field("content", &self.content)
            .field("external", &self.external)
            .field("labels", &self.labels)
            .field("driver", &self.driver)
            .field("template_driver", &self.template_driver)
            .field("extensions", &self.extensions)
            .field("value", &format_args!("{value}"))
            .finish()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.name == other.name
            && self.file == other.file
            && self.environment == other.environment
            && self.content == other.content
            && self.external == other.external
            && self.labels == other.labels
            && self.driver == other.driver
            && self.template_driver == other.template_driver
            && self.extensions == other.extensions
    }
}

pub type Config = Secret;
