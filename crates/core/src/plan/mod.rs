//! The planner: from a loaded compose [`Project`] and what Incus holds now ([`Observed`]),
//! the ordered [`Action`]s that make Incus match the project. Pure: no I/O, no clock.
//!
//! Three steps: [`desired`] maps every service to an instance template (image, config,
//! devices, spec hash) and every network and volume to an Incus object; the scheduler
//! ([`crate::schedule`]) places every replica on a member; [`diff`] compares that with the
//! observed objects and orders the actions in [`Stage`]s (the actions of a stage are
//! independent and may run in parallel; stages run one after another).
//!
//! **Incus project.** One compose project lives in one Incus project, named after the
//! compose project, created by the first `up` with `features.images=false` and
//! `features.profiles=false` (it uses the `default` project's images and profiles) and, as
//! Incus defaults, `features.networks=false` (its networks live in the `default` project,
//! hence their per-project names, see [`naming`]) and `features.storage.volumes=true` (its
//! volumes are its own). `--incus-project NAME` or `x-incus: {project: NAME}` choose another
//! (existing or not) project instead.
//!
//! **Ownership.** Every object incus-compose makes carries `user.*` keys: [`LABEL_PROJECT`]
//! (the compose project), [`LABEL_SERVICE`], [`LABEL_SLOT`] (replica number, or member name
//! for global services), [`LABEL_HASH`] (see [`spec_hash`]) and [`LABEL_VERSION`]; networks
//! carry [`LABEL_NETWORK`] and volumes [`LABEL_VOLUME`] instead of service and slot. An
//! object without a matching [`LABEL_PROJECT`] is never changed or removed; if the name of a
//! desired object is taken by such an object, planning fails and names it, before any change.
//!
//! **What changes.** A missing replica is created (and started unless `--no-start`). One whose
//! [`LABEL_HASH`] differs from the service's current hash, or with `--force-recreate`, is
//! recreated (unless `--no-recreate`). A stopped one is started. Surplus replicas (scale down)
//! are removed; replicas of services no longer in the file only with `--remove-orphans`
//! (otherwise a warning names them). Services start in `depends_on` order: one stage per
//! dependency level.

pub mod dns;
pub mod mapping;
pub mod naming;
pub mod oci;
pub mod placement;
pub mod span;
pub mod storage;

mod addresses;
mod desired;
mod diff;
pub mod drain;
pub mod egress;
pub mod ingress;
mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ic_compose::Project;
use ic_compose::model::Service;
use sha2::{Digest, Sha256};

use crate::schedule::{HostPort, ServiceSpec};

use crate::keys::{
    CREATING_NETWORK_PREFIX, LABEL_HASH, LABEL_ONEOFF, LABEL_PROJECT, LABEL_RETIRED, LABEL_SLOT,
    LABEL_STATIC_HASH, LABEL_VERSION,
};
pub use desired::desired;
pub use diff::{
    DiffOptions, DownOptions, Power, dependency_levels, diff, incus_project_config, plan_down,
    plan_power,
};
pub use mapping::{AnonymousVolume, Devices, DigestKey, PushFile};
pub use network::{Subnet, allocate_subnet};

/// Config keys Incus applies to a running container, so that a change of them alone is
/// applied in place, without a restart: resource limits (except `limits.kernel.*`, which
/// take effect at start), `boot.*`, snapshot schedules, the compose `labels` and the restart
/// policy `watch` reads (a changed `restart_policy` never re-creates a running replica).
pub fn live_key(key: &str) -> bool {
    (key.starts_with("limits.") && !key.starts_with("limits.kernel."))
        || key.starts_with("boot.")
        || key.starts_with("snapshots.")
        || key.starts_with(crate::keys::COMPOSE_LABEL_PREFIX)
        || key == crate::keys::LABEL_RESTART_POLICY
}

/// How a rolling update of a service goes (see [`crate::rollout`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// `update_config`.
    pub update: crate::rollout::Config,
    /// `rollback_config`.
    pub rollback: crate::rollout::Config,
    /// The service's healthcheck, when it has one.
    pub check: Option<crate::health::Check>,
    /// Named volumes (pool, name) snapshotted before its replicas are replaced (unless
    /// `x-incus: {snapshot_volumes: false}` on the service).
    pub snapshot_volumes: Vec<(String, String)>,
    /// Slots replaced stop-first although the service asks for start-first: it publishes
    /// fixed host ports and no other member could take their new replica (see
    /// `rollout::port_moves`). Filled by `diff`.
    pub stop_first_slots: BTreeSet<String>,
}

/// Whether an instance's config marks it as a one-off instance of `run`.
pub fn is_oneoff(config: &BTreeMap<String, String>) -> bool {
    config.get(LABEL_ONEOFF).is_some_and(|v| v == "true")
}

/// Where the command script lives inside an instance (see [`InstanceTemplate::command`]).
pub const COMMAND_PATH: &str = "/.incus-compose/cmd";

/// What the caller asks for.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--incus-project`: overrides `x-incus.project` and the compose project name.
    pub incus_project: Option<String>,
    /// `--scale svc=N`.
    pub scale: BTreeMap<String, u32>,
    /// Services named on the command line (and, implied, what they depend on); empty = all.
    pub services: Vec<String>,
    /// Value of [`LABEL_VERSION`].
    pub version: String,
}

/// Facts about the server the mapping depends on.
#[derive(Debug, Clone, Default)]
pub struct ServerFacts {
    /// Incus version (for messages).
    pub version: String,
    /// The Incus project's digest key ([`DIGEST_KEY`]): `None` in a project incus-compose did
    /// not create, or one no `up` has run in since incus-compose had keys (its digests stay
    /// bare sha256).
    pub digest_key: Option<DigestKey>,
    /// API extension `instance_oci`.
    pub oci: bool,
    /// Local image aliases (in the project that holds the images).
    pub image_aliases: BTreeSet<String>,
    /// Local image fingerprints.
    pub image_fingerprints: Vec<String>,
    /// Names of the incus CLI's image remotes (`remote:alias` images).
    pub remotes: BTreeSet<String>,
    /// The incus CLI's `oci` remotes: name -> address (see [`oci`]).
    pub oci_remotes: BTreeMap<String, String>,
    /// Entrypoint and cmd of OCI images, read from their registries (by the engine, for
    /// services with `command` and no `entrypoint`): [`ImageSource::Oci`] as text -> process.
    pub oci_images: BTreeMap<String, oci::ImageProcess>,
    /// The image each reference names on the server now: a local alias -> its fingerprint,
    /// an [`ImageSource::Oci`] (as text) -> the fingerprint of the newest copy of it in the image
    /// store (pulled by `up`/`pull`, see the engine). A replica made from another image is
    /// recreated by the next `up`, as `docker compose up` recreates containers whose image
    /// changed.
    pub image_targets: BTreeMap<String, String>,
    /// The `default` profile's root disk pool (named volumes go there unless [`storage`]
    /// chooses a shared one).
    pub storage_pool: String,
    /// Every storage pool: name -> driver (see [`storage`]).
    pub pools: BTreeMap<String, String>,
    /// What decides the kind of network compose networks become (see [`span`]).
    pub network: span::NetworkFacts,
}

/// The image an instance is made from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ImageSource {
    /// A local alias or fingerprint.
    Local(String),
    /// `remote:alias` of one of the incus CLI's remotes.
    Remote { remote: String, alias: String },
    /// A Docker image reference (see [`oci`]): Incus pulls `alias` from the registry at
    /// `server` (protocol `oci`). `remote` names it in the incus CLI's configuration (added
    /// there when missing); it is not part of the spec hash.
    Oci {
        #[serde(skip)]
        remote: String,
        server: String,
        alias: String,
    },
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Local(a) => f.write_str(a),
            ImageSource::Remote { remote, alias } => write!(f, "{remote}:{alias}"),
            ImageSource::Oci { server, alias, .. } => f.write_str(&oci::image_key(server, alias)),
        }
    }
}

/// What every replica of a service is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTemplate {
    /// Compose service name.
    pub service: String,
    /// Incus form of the service name (prefix of replica names).
    pub base_name: String,
    /// `container_name`, mapped.
    pub container_name: Option<String>,
    pub image: ImageSource,
    /// The fingerprint `image` names on the server now, when known (see
    /// [`ServerFacts::image_targets`]).
    pub image_fingerprint: Option<String>,
    /// Config keys, labels included except [`LABEL_SLOT`].
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    /// `entrypoint` + `command` as a shell script, run as PID 1 through `raw.lxc`
    /// `lxc.init.cmd` (Incus 6.0 system containers run `/sbin/init` otherwise); pushed to
    /// [`COMMAND_PATH`] before the first start.
    pub command: Option<String>,
    /// [`spec_hash`] of this template.
    pub hash: String,
    /// Named (not external) volumes the service mounts: Incus volume names.
    pub volumes: Vec<String>,
    /// What the scheduler needs.
    pub spec: ServiceSpec,
    /// Services it depends on (that are part of the plan).
    pub depends_on: Vec<String>,
    /// Seconds to wait for a clean stop (`stop_grace_period`, default 10).
    pub stop_timeout: i64,
    /// Files and directories written before the first start (secrets, configs, mount
    /// points, `/etc/hosts`, ...), in order.
    pub files: Vec<PushFile>,
    /// Anonymous volumes: one custom volume per instance.
    pub anonymous_volumes: Vec<AnonymousVolume>,
    /// `platform` as an Incus architecture name.
    pub architecture: Option<String>,
    /// [`spec_hash`] of the template without its [`live_key`]s.
    pub static_hash: String,
    /// How updates of it roll.
    pub rollout: RolloutSpec,
}

impl InstanceTemplate {
    /// The instance name of a slot.
    pub fn instance_name(&self, slot: &str) -> String {
        match &self.container_name {
            Some(n) => n.clone(),
            None => naming::instance_name(&self.base_name, slot),
        }
    }

    /// The other name of a slot, taken by a replica that a `start-first` update starts
    /// beside the one it replaces (`web-1` <-> `web-1-b`); `None` with `container_name`.
    pub fn alternate_name(&self, slot: &str) -> Option<String> {
        self.container_name
            .is_none()
            .then(|| format!("{}{ALTERNATE_SUFFIX}", self.instance_name(slot)))
    }
}

/// See [`InstanceTemplate::alternate_name`].
pub const ALTERNATE_SUFFIX: &str = "-b";

/// A network the project wants.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredNetwork {
    pub key: String,
    /// Incus name.
    pub name: String,
    /// Used as it is, never created or removed.
    pub external: bool,
    /// From `ipam.config[0].subnet` (and `gateway`); `None`: allocated at plan time.
    pub subnet: Option<Subnet>,
    /// Config without `ipv4.address` (added when the subnet is known); for a spanning
    /// bridge also without its VNI and DNS records (added by `diff`).
    pub config: BTreeMap<String, String>,
    /// What Incus network it becomes (see [`span`]).
    pub kind: span::Kind,
    /// Per-member config keys (a spanning bridge's member-specific tunnel interface).
    pub member_config: BTreeMap<String, BTreeMap<String, String>>,
    /// DNS names on it: (name, service), service names and `aliases` of every service of the
    /// file on this network (spanning bridges give each name all its replicas' addresses).
    pub names: Vec<(String, String)>,
    /// `internal: true` (no outbound traffic).
    pub internal: bool,
    /// Service names served by the member resolvers (`x-incus: {names: resolver}`, spanning
    /// bridges only; see [`dns::resolver_dnsmasq`]) instead of `raw.dnsmasq` records.
    pub resolver: bool,
    /// Members that joined after this spanning bridge was made and whose tunnel has no
    /// interface yet (member-specific tunnel keys): `up` sets it there.
    pub fill_members: Vec<String>,
}

/// A named volume the project wants.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVolume {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub pool: String,
    pub config: BTreeMap<String, String>,
}

/// The desired state of a project, before placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub compose_project: String,
    pub incus_project: String,
    pub networks: Vec<DesiredNetwork>,
    pub volumes: Vec<DesiredVolume>,
    /// In dependency order.
    pub services: Vec<InstanceTemplate>,
    /// Every service of the file (selected or not), for orphan detection.
    pub all_services: BTreeSet<String>,
    /// Named volumes are in a pool every member shares (see [`storage`]).
    pub shared_storage: bool,
    pub warnings: Vec<String>,
}

/// Planning failed; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{what} {name:?} cannot be an Incus name: {problem}; rename it in the compose file")]
    BadName {
        what: &'static str,
        name: String,
        problem: String,
    },
    #[error(
        "{first} and {second} both become the Incus name {incus:?} (`_` and `.` map to `-`); rename one of them"
    )]
    NameCollision {
        first: String,
        second: String,
        incus: String,
    },
    #[error(
        "service {service:?} has no image; incus-compose does not build images (`build:`): set `image:`"
    )]
    NoImage { service: String },
    #[error(
        "service {service:?}: image {image:?} is not a local image alias or fingerprint on this Incus server (version {version}), and {why}; import it (`incus image import ... --alias {image}`), or write `<remote>:<alias>` with one of your incus remotes"
    )]
    UnknownImage {
        service: String,
        image: String,
        version: String,
        why: String,
    },
    #[error(
        "service {service:?}: `container_name` needs exactly one replica, it asks for {replicas}"
    )]
    ContainerNameWithReplicas { service: String, replicas: u64 },
    #[error("service {0:?} named on the command line is not in the compose file")]
    UnknownService(String),
    #[error("--scale {0}: no such service in the compose file")]
    UnknownScaleService(String),
    #[error(
        "{kind} {name:?} already exists in Incus project {project:?} and was not made by incus-compose for compose project {compose:?}{owner}; incus-compose never touches it. Rename or remove it, or rename the service (nothing was changed)"
    )]
    NotOurs {
        kind: &'static str,
        name: String,
        project: String,
        compose: String,
        owner: String,
    },
    #[error("{kind} {name:?} is declared external but does not exist; create it first")]
    ExternalMissing { kind: &'static str, name: String },
    #[error("network {network:?}: {message}")]
    BadSubnet { network: String, message: String },
    #[error("no free /24 left in 100.100.0.0/14 for network {0:?}; give it an ipam subnet")]
    NoFreeSubnet(String),
    #[error(
        "network {network:?}: ipam subnet {subnet} overlaps Incus network {other:?} ({address}{owner}); give networks.{network}.ipam.config a subnet no other network uses, or leave it out for a free one"
    )]
    SubnetTaken {
        network: String,
        subnet: String,
        other: String,
        address: String,
        /// ", of compose project X" when another compose project made it; else empty.
        owner: String,
    },
    #[error("{0}")]
    Network(String),
    #[error(
        "network {network:?}: subnet {subnet} has no free address left for {wanted} more replica(s) ({left} left); give it a larger ipam subnet"
    )]
    NoFreeAddress {
        network: String,
        subnet: String,
        wanted: usize,
        left: usize,
    },
    #[error("no free VXLAN network identifier left for network {0:?}")]
    NoFreeVni(String),
    /// `reason` is the whole message: the service and every member with its reason.
    #[error("{reason}")]
    Unschedulable { service: String, reason: String },
    #[error(
        "x-incus.pool: storage pool {pool:?} does not exist (pools: {known}); create it or name another"
    )]
    UnknownPool { pool: String, known: String },
    #[error("scheduler: {0}")]
    Schedule(String),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error(
        "service {service:?}: {kind} {name:?} cannot be delivered: {problem} (nothing was changed)"
    )]
    SecretSource {
        kind: &'static str,
        name: String,
        service: String,
        problem: String,
    },
    #[error(
        "service {service:?} has a `build:` section (or pull_policy: build): Incus cannot build Dockerfiles. Build the image elsewhere, import it (`incus image import ... --alias NAME`), set `image: NAME` and remove `build:`"
    )]
    Build { service: String },
    #[error("{problem}")]
    Healthcheck { service: String, problem: String },
    #[error("service {service:?}: platform {platform:?}: {problem}")]
    Platform {
        service: String,
        platform: String,
        problem: String,
    },
}

fn bad_name(what: &'static str, name: &str, p: naming::NameProblem) -> PlanError {
    PlanError::BadName {
        what,
        name: name.to_string(),
        problem: p.to_string(),
    }
}

/// The Incus project for a compose project: `--incus-project`, else `x-incus.project`,
/// else the compose project name.
pub fn incus_project_name(project: &Project, opts: &PlanOptions) -> String {
    if let Some(p) = &opts.incus_project {
        return p.clone();
    }
    project
        .extensions
        .get("x-incus")
        .and_then(|x| x.get("project"))
        .and_then(|p| p.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| project.name.clone())
}

/// Stable hash of what defines a service's instances: image, config and devices (labels with
/// a per-replica value or the tool version left out; the replica count is not part of it).
/// sha256 of the canonical JSON (sorted maps), hex.
pub fn spec_hash(
    image: &ImageSource,
    config: &BTreeMap<String, String>,
    devices: &Devices,
    command: Option<&str>,
    files: &[PushFile],
    anonymous_volumes: &[AnonymousVolume],
) -> String {
    let config: BTreeMap<&String, &String> = config
        .iter()
        .filter(|(k, _)| {
            ![
                LABEL_VERSION,
                LABEL_SLOT,
                LABEL_HASH,
                LABEL_STATIC_HASH,
                LABEL_RETIRED,
            ]
            .contains(&k.as_str())
        })
        .collect();
    let mut canonical = serde_json::json!({
        "image": image,
        "config": config,
        "devices": devices,
        "command": command,
    });
    // Left out when empty, so that hashes of services without them stay as they were.
    if !files.is_empty() {
        canonical["files"] = files.iter().map(PushFile::hash_view).collect();
    }
    if !anonymous_volumes.is_empty() {
        canonical["anonymous_volumes"] = anonymous_volumes
            .iter()
            .map(|a| serde_json::json!([a.device, a.target, a.read_only, a.pool]))
            .collect();
    }
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    naming::hex(&digest)
}

/// The fingerprint `image` names on the server now (see [`ServerFacts::image_targets`]):
/// `None` for images of other remotes and for references the server has no copy of.
pub fn image_target(image: &ImageSource, facts: &ServerFacts) -> Option<String> {
    match image {
        ImageSource::Local(a) => facts.image_targets.get(a).cloned().or_else(|| {
            let hex = a.len() >= 12 && a.chars().all(|c| c.is_ascii_hexdigit());
            let mut found = facts
                .image_fingerprints
                .iter()
                .filter(|f| f.starts_with(a.as_str()));
            // A prefix names an image only when it is unambiguous.
            match (hex, found.next(), found.next()) {
                (true, Some(f), None) => Some(f.clone()),
                _ => None,
            }
        }),
        ImageSource::Oci { .. } => facts.image_targets.get(&image.to_string()).cloned(),
        ImageSource::Remote { .. } => None,
    }
}

/// Checks an image against the server (see [`PlanError::UnknownImage`]).
pub fn resolve_image(
    service: &str,
    image: &str,
    facts: &ServerFacts,
) -> Result<ImageSource, PlanError> {
    resolve_image_in(service, image, facts, None)
}

/// [`resolve_image`] with the default registry of Docker references (`x-incus.registry`,
/// see [`oci::default_registry`]; `None`: Docker Hub).
pub fn resolve_image_in(
    service: &str,
    image: &str,
    facts: &ServerFacts,
    default_registry: Option<&str>,
) -> Result<ImageSource, PlanError> {
    if let Some((remote, alias)) = image.split_once(':')
        && facts.remotes.contains(remote)
        && !alias.is_empty()
    {
        return Ok(ImageSource::Remote {
            remote: remote.to_string(),
            alias: alias.to_string(),
        });
    }
    let is_fingerprint = image.len() >= 12
        && image.chars().all(|c| c.is_ascii_hexdigit())
        && facts
            .image_fingerprints
            .iter()
            .any(|f| f.starts_with(image));
    if facts.image_aliases.contains(image) || is_fingerprint {
        return Ok(ImageSource::Local(image.to_string()));
    }
    if facts.oci {
        return oci::resolve(service, image, facts, default_registry).map_err(PlanError::from);
    }
    let why = if facts.oci {
        "OCI registry images need an `oci` remote (`incus remote add <name> https://<registry> --protocol=oci`) named as `<name>:<image>`".to_string()
    } else {
        "this server cannot run OCI (Docker) images: that needs API extension instance_oci (Incus 6.3 or later)".to_string()
    };
    Err(PlanError::UnknownImage {
        service: service.to_string(),
        image: image.to_string(),
        version: if facts.version.is_empty() {
            "unknown".into()
        } else {
            facts.version.clone()
        },
        why,
    })
}

/// The PID 1 script for `entrypoint` + `command` (`None` when neither is set); see
/// [`mapping::process`].
pub fn command_script(service: &Service) -> Option<String> {
    mapping::process(service, &mut Vec::new(), &mut Vec::new(), &mut Vec::new())
}

fn scheduler_spec(service: &Service, name: &str, replicas: Option<u64>) -> ServiceSpec {
    let mut spec = match replicas {
        Some(n) => ServiceSpec::replicated(name, u32::try_from(n).unwrap_or(u32::MAX)),
        None => ServiceSpec::global(name),
    };
    if let Some(d) = &service.deploy {
        spec.constraints = d.placement.constraints.clone();
        spec.preferences = d.placement.preferences.clone();
        spec.max_replicas_per_node = d
            .placement
            .max_replicas_per_node
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if let Some(r) = &d.resources.reservations {
            spec.reservation_millicpus = r.cpus.map(|c| (c * 1000.0).round() as u64);
            spec.reservation_memory = r.memory.map(|m| m.bytes());
        }
    }
    for p in &service.ports {
        if let Some(r) = p.published {
            for port in r.start..=r.end {
                spec.fixed_host_ports.push(HostPort {
                    port,
                    udp: p.protocol.eq_ignore_ascii_case("udp"),
                });
            }
        }
    }
    spec
}

/// The services to plan: the named ones and everything they depend on (all when none named).
pub fn selected_services(
    project: &Project,
    opts: &PlanOptions,
) -> Result<BTreeSet<String>, PlanError> {
    if opts.services.is_empty() {
        return Ok(project.services.keys().cloned().collect());
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for s in &opts.services {
        if !project.services.contains_key(s) {
            return Err(PlanError::UnknownService(s.clone()));
        }
        todo.push(s.clone());
    }
    while let Some(s) = todo.pop() {
        if out.insert(s.clone())
            && let Some(svc) = project.services.get(&s)
        {
            todo.extend(
                svc.depends_on
                    .keys()
                    .filter(|d| project.services.contains_key(*d))
                    .cloned(),
            );
        }
    }
    Ok(out)
}

/// An instance as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedInstance {
    pub name: String,
    /// Member it is on.
    pub location: String,
    pub running: bool,
    /// Its own config (labels included).
    pub config: BTreeMap<String, String>,
}

impl ObservedInstance {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// A network as observed (in the project that holds the networks).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedNetwork {
    pub name: String,
    pub managed: bool,
    pub config: BTreeMap<String, String>,
    /// Incus's status: `Created`, or `Pending`/`Errored` for a cluster network whose creation
    /// did not finish (empty when unknown: taken as created).
    pub status: String,
}

impl ObservedNetwork {
    /// Whether a cluster-wide creation was left unfinished (then `up` finishes it).
    pub fn unfinished(&self) -> bool {
        matches!(self.status.as_str(), "Pending" | "Errored")
    }
}

/// A custom volume as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedVolume {
    pub pool: String,
    pub name: String,
    /// Member it lives on (the server name on a standalone server).
    pub location: String,
    pub config: BTreeMap<String, String>,
}

/// What Incus holds now.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Whether the Incus project exists.
    pub project_exists: bool,
    /// Its config (`user.incus-compose.project` marks a project incus-compose created).
    pub project_config: BTreeMap<String, String>,
    /// Cluster members (one for a standalone server).
    pub members: Vec<crate::schedule::Member>,
    pub clustered: bool,
    /// Instances of the Incus project.
    pub instances: Vec<ObservedInstance>,
    /// Networks visible from the project (the `default` project's when it has no networks
    /// of its own).
    pub networks: Vec<ObservedNetwork>,
    /// Custom volumes of the Incus project.
    pub volumes: Vec<ObservedVolume>,
}

impl Observed {
    /// Whether network `n` is compose project `compose`'s: it carries the project's label,
    /// or its cluster-wide creation was left unfinished (a kill during `up`) after the Incus
    /// project (itself ours) recorded that incus-compose was creating it
    /// ([`CREATING_NETWORK_PREFIX`]).
    pub fn claims_network(&self, n: &ObservedNetwork, compose: &str) -> bool {
        if n.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose) {
            return true;
        }
        let marked = self
            .project_config
            .get(&format!("{CREATING_NETWORK_PREFIX}{}", n.name))
            .is_some_and(|v| v == compose);
        n.unfinished()
            && marked
            && !n.config.contains_key(LABEL_PROJECT)
            && self.project_config.get(LABEL_PROJECT).map(String::as_str) == Some(compose)
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateProject {
        name: String,
        config: BTreeMap<String, String>,
    },
    CreateNetwork {
        name: String,
        /// Incus network type: `bridge` or `ovn`.
        kind: String,
        config: BTreeMap<String, String>,
        /// Config keys set per member (cluster creation's pending step).
        member_config: BTreeMap<String, BTreeMap<String, String>>,
    },
    /// Set config keys of a network of ours (an empty value removes the key).
    UpdateNetwork {
        name: String,
        set: BTreeMap<String, String>,
    },
    /// Set member-specific config keys of a network of ours on one member.
    UpdateNetworkMember {
        name: String,
        member: String,
        set: BTreeMap<String, String>,
    },
    CreateVolume {
        pool: String,
        name: String,
        member: String,
        config: BTreeMap<String, String>,
    },
    /// Create (and start) an instance on `member`.
    Create(Box<InstancePlan>),
    /// Replace the old instance with a new one (its spec changed): run by the engine as a
    /// rolling update of its service (see [`Plan::rollouts`]).
    Recreate(Box<InstancePlan>),
    /// Set config keys of a running instance that it applies live (only [`live_key`]s and
    /// labels changed; an empty value removes the key).
    UpdateInPlace {
        name: String,
        service: String,
        set: BTreeMap<String, String>,
    },
    Start {
        name: String,
        service: String,
    },
    Stop {
        name: String,
        service: String,
        timeout: i64,
    },
    Remove {
        name: String,
        service: String,
        member: String,
        timeout: i64,
        reason: String,
    },
    RemoveNetwork {
        name: String,
    },
    RemoveVolume {
        pool: String,
        name: String,
        member: String,
    },
    RemoveProject {
        name: String,
    },
}

impl Action {
    /// The object it acts on, for messages.
    pub fn object(&self) -> String {
        match self {
            Action::CreateProject { name, .. } | Action::RemoveProject { name } => {
                format!("project {name}")
            }
            Action::UpdateNetworkMember { name, member, .. } => {
                format!("network {name} on {member}")
            }
            Action::CreateNetwork { name, .. }
            | Action::UpdateNetwork { name, .. }
            | Action::RemoveNetwork { name } => {
                format!("network {name}")
            }
            Action::CreateVolume { name, member, .. }
            | Action::RemoveVolume { name, member, .. } => {
                format!("volume {name} on {member}")
            }
            Action::Create(p) => p.name.clone(),
            Action::Recreate(p) => p.old_name.clone().unwrap_or_else(|| p.name.clone()),
            Action::UpdateInPlace { name, .. }
            | Action::Start { name, .. }
            | Action::Stop { name, .. }
            | Action::Remove { name, .. } => name.clone(),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateProject { name, .. } => write!(f, "create Incus project {name}"),
            Action::CreateNetwork {
                name, kind, config, ..
            } => write!(
                f,
                "create {}network {name} ({}{})",
                if kind == "ovn" { "OVN " } else { "" },
                config
                    .get("ipv4.address")
                    .map(String::as_str)
                    .unwrap_or("?"),
                match config.get(crate::keys::LABEL_VNI) {
                    Some(vni) => format!(", spanning the members, VXLAN VNI {vni}"),
                    None => String::new(),
                }
            ),
            Action::CreateVolume {
                pool, name, member, ..
            } if member.is_empty() => {
                write!(f, "create volume {pool}/{name} (shared by all members)")
            }
            Action::CreateVolume {
                pool, name, member, ..
            } => {
                write!(f, "create volume {pool}/{name} on {member}")
            }
            Action::Create(p) => write!(
                f,
                "create {} ({}, image {}) on {}{}",
                p.name,
                p.service,
                p.template_image,
                p.member,
                if p.start { "" } else { ", not started" }
            ),
            Action::Recreate(p) => match &p.old_name {
                Some(old) if old != &p.name => write!(
                    f,
                    "replace {old} with {} on {} ({})",
                    p.name, p.member, p.reason
                ),
                _ => write!(f, "recreate {} on {} ({})", p.name, p.member, p.reason),
            },
            Action::UpdateInPlace { name, set, .. } => write!(
                f,
                "update {name} in place ({})",
                set.keys()
                    .filter(|k| !k.starts_with(crate::keys::OURS_PREFIX))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::Start { name, .. } => write!(f, "start {name}"),
            Action::Stop { name, .. } => write!(f, "stop {name}"),
            Action::Remove {
                name,
                member,
                reason,
                ..
            } => write!(f, "remove {name} on {member} ({reason})"),
            Action::UpdateNetwork { name, set } => write!(
                f,
                "update network {name} ({})",
                set.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Action::UpdateNetworkMember { name, member, set } => write!(
                f,
                "update network {name} on {member} ({})",
                set.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::RemoveNetwork { name } => write!(f, "remove network {name}"),
            Action::RemoveVolume { pool, name, member } => {
                write!(f, "remove volume {pool}/{name} on {member}")
            }
            Action::RemoveProject { name } => write!(f, "remove Incus project {name}"),
        }
    }
}

/// One instance to (re)create.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePlan {
    pub name: String,
    pub service: String,
    pub slot: String,
    pub member: String,
    /// For recreate: where the old one is.
    pub old_member: Option<String>,
    /// For recreate: the old instance's name (the new one takes the slot's other name in a
    /// `start-first` update).
    pub old_name: Option<String>,
    pub image: ImageSource,
    /// Made from this image (fingerprint) when known, so that every replica gets the same one.
    pub image_fingerprint: Option<String>,
    pub template_image: String,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    pub command: Option<String>,
    pub start: bool,
    pub stop_timeout: i64,
    pub reason: String,
    /// Written before the first start (see [`InstanceTemplate::files`]).
    pub files: Vec<PushFile>,
    /// Custom volumes of this instance, made by the engine when missing.
    pub anonymous_volumes: Vec<AnonymousVolume>,
}

/// Actions that may run in parallel.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub title: String,
    pub actions: Vec<Action>,
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub incus_project: String,
    pub stages: Vec<Stage>,
    /// Replicas kept as they are.
    pub unchanged: Vec<String>,
    /// Where every desired replica goes: (member, instance, service), sorted.
    pub placement: Vec<(String, String, String)>,
    /// Replicas no member can take now, in service then slot order.
    pub pending: Vec<placement::PendingReplica>,
    /// How each service with [`Action::Recreate`]s rolls.
    pub rollouts: BTreeMap<String, RolloutSpec>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// A plan of `stages` alone (no placement, rollouts or warnings): what the engine builds
    /// itself for a step the diff does not make (power, a drain's moves, `restart_policy`).
    pub fn of(incus_project: &str, stages: Vec<Stage>) -> Plan {
        Plan {
            incus_project: incus_project.to_string(),
            stages,
            unchanged: Vec::new(),
            placement: Vec::new(),
            pending: Vec::new(),
            rollouts: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.iter().all(|s| s.actions.is_empty())
    }

    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.stages.iter().flat_map(|s| &s.actions)
    }
}

/// [`desired`] then [`diff`].
pub fn plan_up(
    project: &Project,
    facts: &ServerFacts,
    observed: &Observed,
    opts: &PlanOptions,
    diff_opts: &DiffOptions,
) -> Result<Plan, PlanError> {
    let d = desired(project, facts, opts)?;
    check_platforms(project, &d, observed)?;
    diff(&d, observed, diff_opts)
}

/// A service whose `platform` no member has fails the plan, naming the members and their
/// architectures (members that have it are the only candidates, through a constraint).
pub fn check_platforms(
    project: &Project,
    d: &Desired,
    observed: &Observed,
) -> Result<(), PlanError> {
    for t in &d.services {
        let Some(arch) = &t.architecture else {
            continue;
        };
        if observed.members.iter().any(|m| &m.architecture == arch) {
            continue;
        }
        let members: Vec<String> = observed
            .members
            .iter()
            .map(|m| {
                format!(
                    "{} ({})",
                    m.name,
                    if m.architecture.is_empty() {
                        "unknown"
                    } else {
                        &m.architecture
                    }
                )
            })
            .collect();
        return Err(PlanError::Platform {
            service: t.service.clone(),
            platform: project
                .services
                .get(&t.service)
                .and_then(|s| s.platform.clone())
                .unwrap_or_default(),
            problem: format!(
                "no member has architecture {arch}; members: {}",
                members.join(", ")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_deploy;
#[cfg(test)]
mod tests_drain;
#[cfg(test)]
mod tests_faults;
#[cfg(test)]
mod tests_rollout;
#[cfg(test)]
mod tests_span;
#[cfg(test)]
mod tests_watch;
