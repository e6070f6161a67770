//! Compose service fields -> Incus instance config keys and devices. Pure functions; each
//! returns what it maps and pushes a warning for what it cannot, so nothing is dropped
//! silently.
//!
//! | compose | Incus |
//! |---|---|
//! | `environment: {K: v}` | `environment.K = v` (a variable without a value is left out, with a warning) |
//! | `labels: {k: v}` | `user.label.k = v` |
//! | `deploy.resources.limits.cpus` | whole numbers: `limits.cpu = N`; fractions: `limits.cpu.allowance = <cpus*100>ms/100ms` (a hard quota, as Docker's) |
//! | `deploy.resources.limits.memory` | `limits.memory = <bytes>` |
//! | `deploy.resources.limits.pids` | `limits.processes` |
//! | `restart` / `deploy.restart_policy.condition` | `no`/`none`: nothing; `always`/`unless-stopped`/`any`: `boot.autostart` + `boot.autorestart`; `on-failure`: `boot.autorestart`; with `delay`/`max_attempts`/`window` (or `on-failure:N`): also `user.incus-compose.restart-policy`, counted by `watch` |
//! | `privileged: true` | `security.privileged = true` |
//! | `ports` | a `proxy` device per port: `listen: <proto>:<host_ip or 0.0.0.0>:<published>`, `connect: <proto>:127.0.0.1:<target>` |
//! | `networks` | a `nic` device `eth0`, `eth1`, ... per network (`network: <bridge>`), `ipv4_address` -> `ipv4.address`, `mac_address` -> `hwaddr`; `network_mode: none`: no NIC |
//! | `volumes` (named) | a `disk` device: `pool`, `source: <volume>`, `path: <target>`, `readonly` |
//! | `volumes` (bind) | a `disk` device: `source: <host path>`, `path: <target>`, `readonly` |
//! | `volumes` (anonymous, `- /data`) | a custom volume per instance, `<instance>_anon-<target>` (e.g. `web-1_anon-data`), labelled as ours, mounted by a `disk` device; kept by `down`, removed by `down -v` |
//! | `volumes` (`type: tmpfs`, `tmpfs.size`, `tmpfs.mode`), `tmpfs` | `raw.lxc`: `lxc.mount.entry = tmpfs <path> tmpfs rw,nosuid,nodev[,size=..][,mode=..],create=dir 0 0` (the mount point is created in the root filesystem before the first start) |
//! | `shm_size` | a tmpfs of that size on `/dev/shm` (as above) |
//! | `secrets`, `configs` | files written into the instance through the Incus file API before its first start: secrets at `/run/secrets/<name>` (or `target`), configs at `/<name>` (or `target`), owner `uid`/`gid` (default 0), mode `mode` (default 0444, the compose spec's; secrets owned by the service's numeric `user` unless `uid`/`gid` say otherwise) without write bits; their content is part of the spec hash (a changed secret recreates the instance), never of a config key |
//! | `read_only: true` | the instance's `root` disk device with `readonly: true` |
//! | `hostname` | `raw.lxc`: `lxc.uts.name = <hostname>` |
//! | `sysctls` | `linux.sysctl.<key> = <value>` |
//! | `cap_drop` | `raw.lxc`: `lxc.cap.drop = <caps>`; `cap_drop: [ALL]` with `cap_add`: `lxc.cap.keep = <cap_add>` |
//! | `cap_add` | nothing: root in the container already holds every capability in its user namespace (only with `cap_drop: [ALL]` it becomes the keep list) |
//! | `devices` | `unix-block` (for `/dev/sd*`, `/dev/nvme*`, `/dev/vd*`, `/dev/loop*`, ...) or `unix-char` device: `source`, `path` |
//! | `ulimits` | `limits.kernel.<name> = <soft>:<hard>` (`-1`: `unlimited`) |
//! | `user` | with a command: numeric `uid[:gid]`: `raw.lxc` `lxc.init.uid`/`lxc.init.gid`; a name: the command script runs the command through `su` |
//! | `working_dir` | with a command: `raw.lxc` `lxc.init.cwd` (the directory is created before the first start) |
//! | `init: true` | with a command: the command script stays PID 1, runs the command as its child, forwards signals and reaps zombies |
//! | `stop_signal` | `raw.lxc`: `lxc.signal.halt = <signal>` (default `SIGTERM` for services with a command; the image's init keeps Incus's `SIGPWR`) |
//! | `stop_grace_period` | the stop timeout of `down`/`stop`/recreate |
//! | `extra_hosts` | `/etc/hosts` written before the first start: localhost entries plus one line per host |
//! | `dns`, `dns_search`, `dns_opt` | `/etc/resolv.conf` written before the first start |
//! | `platform` | a placement constraint `node.platform.arch == <Incus arch>`; planning fails if no member has that architecture |
//! | `pull_policy` | OCI images (Incus >= 6.3): `always` pulls before every `up`, `missing`/`if_not_present` (default) when the server has no copy, `never` refuses a missing image, `daily`/`weekly`/`every_<d>` pull when the server's copy is older (engine `images`); local aliases are never pulled; `build`: refused |
//! | `build` | refused: Incus cannot build Dockerfiles |
//! | `cpuset` | `limits.cpu = <set>` (pinning; a single CPU `N` as `N-N`; a whole-CPU count from `cpus` then becomes `limits.cpu.allowance`) |
//! | `oom_score_adj` (0..1000) | `raw.lxc`: `lxc.proc.oom_score_adj` (negative values warn: not allowed unprivileged) |
//! | `security_opt: [no-new-privileges]` | `raw.lxc`: `lxc.no_new_privs = 1` (other options warn) |
//! | `mem_reservation`, `deploy.resources.reservations` | placement only (the scheduler reserves them); Incus has no reservation key |

use std::collections::BTreeMap;
use std::fmt;

use ic_compose::Project;
use ic_compose::model::{FileRef, RestartCondition, Service, Ulimit, VolumeType};
use sha2::{Digest, Sha256};

use super::{COMMAND_PATH, PlanError, naming};

/// Instance devices: device name -> settings.
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

fn dev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `environment.*` keys.
pub fn environment(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    for (k, v) in &service.environment {
        match v {
            Some(v) if v.is_empty() => warnings.push(format!(
                "service {:?}: environment variable {k:?} is empty; Incus treats an empty config value as unset, so it is left out",
                service.name
            )),
            Some(v) => {
                config.insert(format!("environment.{k}"), v.clone());
            }
            None => warnings.push(format!(
                "service {:?}: environment variable {k:?} has no value and is not set here; left out",
                service.name
            )),
        }
    }
}

/// `user.label.*` keys.
pub fn labels(service: &Service, config: &mut BTreeMap<String, String>) {
    for (k, v) in &service.labels {
        config.insert(
            format!("{}{k}", crate::keys::COMPOSE_LABEL_PREFIX),
            v.clone(),
        );
    }
}

/// `limits.*` keys from `deploy.resources.limits`.
pub fn limits(service: &Service, config: &mut BTreeMap<String, String>) {
    let Some(l) = service
        .deploy
        .as_ref()
        .and_then(|d| d.resources.limits.as_ref())
    else {
        return;
    };
    if let Some(cpus) = l.cpus.filter(|c| *c > 0.0) {
        if cpus.fract() == 0.0 {
            config.insert("limits.cpu".into(), format!("{}", cpus as u64));
        } else {
            let ms = (cpus * 100.0).round().max(1.0) as u64;
            config.insert("limits.cpu.allowance".into(), format!("{ms}ms/100ms"));
        }
    }
    if let Some(m) = l.memory {
        config.insert("limits.memory".into(), m.bytes().to_string());
    }
    if let Some(p) = l.pids.filter(|p| *p > 0) {
        config.insert("limits.processes".into(), p.to_string());
    }
}

/// `boot.autostart` / `boot.autorestart` from the restart policy.
pub fn restart(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    let policy = service
        .deploy
        .as_ref()
        .and_then(|d| d.restart_policy.as_ref());
    let condition = match (policy, service.restart.as_deref()) {
        (Some(p), _) => Some(p.condition),
        (None, Some("no")) => Some(RestartCondition::None),
        (None, Some("on-failure")) => Some(RestartCondition::OnFailure),
        (None, Some(r)) if r.starts_with("on-failure:") => Some(RestartCondition::OnFailure),
        (None, Some(_)) => Some(RestartCondition::Any),
        (None, None) => None,
    };
    match condition {
        Some(RestartCondition::Any) => {
            config.insert("boot.autostart".into(), "true".into());
            config.insert("boot.autorestart".into(), "true".into());
        }
        Some(RestartCondition::OnFailure) => {
            config.insert("boot.autorestart".into(), "true".into());
        }
        Some(RestartCondition::None) | None => {}
    }
    if let Some(rp) = policy.and_then(crate::watch::restart::RestartPolicy::from_compose) {
        config.insert(crate::keys::LABEL_RESTART_POLICY.into(), rp.encode());
        warnings.push(format!(
            "service {:?}: deploy.restart_policy delay, max_attempts and window are kept only while `incus-compose watch` runs; without it Incus restarts at once, up to 10 times a minute",
            service.name
        ));
    }
}

/// One `proxy` device per published port.
pub fn ports(service: &Service, devices: &mut Devices, warnings: &mut Vec<String>) {
    for p in &service.ports {
        let Some(published) = p.published else {
            warnings.push(format!(
                "service {:?}: port {} has no published host port; incus-compose does not pick random host ports, so it is not published",
                service.name, p.target
            ));
            continue;
        };
        let proto = p.protocol.to_ascii_lowercase();
        let host = p.host_ip.as_deref().unwrap_or("0.0.0.0");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let span = published.end.saturating_sub(published.start);
        let target = if span == 0 {
            p.target.to_string()
        } else {
            format!("{}-{}", p.target, p.target.saturating_add(span))
        };
        let name = format!("port-{proto}-{published}");
        devices.insert(
            name,
            dev(&[
                ("type", "proxy"),
                ("listen", &format!("{proto}:{host}:{published}")),
                ("connect", &format!("{proto}:127.0.0.1:{target}")),
            ]),
        );
    }
}

/// `nic` devices, one per network the service joins. `bridge_of` gives the Incus network
/// name of a compose network key.
pub fn nics(
    service: &Service,
    bridge_of: &dyn Fn(&str) -> Option<String>,
    devices: &mut Devices,
    warnings: &mut Vec<String>,
) {
    match service.network_mode.as_deref() {
        None => {}
        Some("none") => return,
        Some(other) => {
            warnings.push(format!(
                "service {:?}: network_mode {other:?} is not supported on Incus; the service joins its networks instead",
                service.name
            ));
        }
    }
    let mut nets: Vec<(&String, i64)> = service
        .networks
        .iter()
        .map(|(k, v)| (k, v.as_ref().and_then(|n| n.priority).unwrap_or(0)))
        .collect();
    // Higher priority first (eth0), then name order, as compose orders them.
    nets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (i, (key, _)) in nets.iter().enumerate() {
        let Some(bridge) = bridge_of(key) else {
            continue;
        };
        let mut d = dev(&[
            ("type", "nic"),
            ("network", &bridge),
            ("name", &format!("eth{i}")),
        ]);
        if let Some(Some(n)) = service.networks.get(*key) {
            if let Some(ip) = &n.ipv4_address {
                d.insert("ipv4.address".into(), ip.clone());
            }
            if let Some(mac) = &n.mac_address {
                d.insert("hwaddr".into(), mac.clone());
            }
            // `aliases` are DNS names on the bridge (plan/dns.rs).
            let mut ignored = Vec::new();
            if n.ipv6_address.is_some() {
                ignored.push("ipv6_address");
            }
            if !ignored.is_empty() {
                warnings.push(format!(
                    "service {:?}: network {key:?}: {} not supported yet, ignored",
                    service.name,
                    ignored.join(", ")
                ));
            }
        }
        devices.insert(format!("eth{i}"), d);
    }
}

/// `disk` devices for the service's mounts. `volume_of` gives, for a compose volume key, the
/// Incus volume name; returns the names of the named volumes used.
pub fn mounts(
    service: &Service,
    pool: &str,
    volume_of: &dyn Fn(&str) -> Option<String>,
    devices: &mut Devices,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut used = Vec::new();
    for (i, v) in service.volumes.iter().enumerate() {
        let name = format!("mount{i}");
        let mut d = match (v.kind, &v.source) {
            (VolumeType::Volume, Some(src)) => {
                let Some(vol) = volume_of(src) else {
                    continue;
                };
                used.push(vol.clone());
                dev(&[
                    ("type", "disk"),
                    ("pool", pool),
                    ("source", &vol),
                    ("path", &v.target),
                ])
            }
            (VolumeType::Bind, Some(src)) => {
                dev(&[("type", "disk"), ("source", src), ("path", &v.target)])
            }
            // See [`anonymous_volumes`] and [`tmpfs`].
            (VolumeType::Volume, None) | (VolumeType::Tmpfs, _) => continue,
            (kind, _) => {
                warnings.push(format!(
                    "service {:?}: {} mount at {:?} is not supported yet, ignored",
                    service.name,
                    match kind {
                        VolumeType::Volume => "anonymous volume",
                        VolumeType::Tmpfs => "tmpfs",
                        VolumeType::Cluster => "cluster volume",
                        VolumeType::Npipe => "npipe",
                        VolumeType::Image => "image",
                        VolumeType::Bind => "bind",
                    },
                    v.target
                ));
                continue;
            }
        };
        if v.read_only {
            d.insert("readonly".into(), "true".into());
        }
        devices.insert(name, d);
    }
    used
}

/// Fields of [`Service::other`] that are mapped here (not reported as unsupported).
const MAPPED_OTHER: &[&str] = &["devices", "dns_opt", "cpuset", "oom_score_adj"];

/// The per-project key of secret and config digests (see [`PushFile::digest`]): random bytes
/// kept in the config of the Incus project incus-compose created
/// ([`super::DIGEST_KEY`]), so that a digest in Incus config (spec hashes, revisions) cannot
/// be checked against guesses of a weak secret by whoever reads that config. Its `Debug` form
/// hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestKey(pub std::sync::Arc<[u8]>);

impl DigestKey {
    /// From its stored form (hex); `None` when it is not hex or shorter than 16 bytes.
    pub fn from_hex(text: &str) -> Option<DigestKey> {
        let bytes = crate::revision::hex_decode(text.trim())?;
        (bytes.len() >= 16).then(|| DigestKey(bytes.into()))
    }

    /// Its stored form (hex).
    pub fn to_hex(&self) -> String {
        naming::hex(&self.0)
    }
}

impl fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DigestKey(<{} bytes>)", self.0.len())
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// How a keyed digest starts (a bare one, as revisions written before the key, is 64 hex
/// digits).
pub const HMAC_PREFIX: &str = "hmac-sha256:";

/// A file or directory written into an instance through the Incus file API before its first
/// start. Its `Debug` form never shows the content (secrets), only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct PushFile {
    /// Absolute path inside the instance.
    pub path: String,
    /// `None`: a directory (made with its missing parents).
    pub content: Option<Vec<u8>>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// For a secret or config: `secret NAME` / `config NAME`. Its content is never stored
    /// in Incus config (revisions keep only its digest).
    pub source: Option<String>,
    /// The project's digest key (secrets and configs; see [`PushFile::digest`]).
    pub key: Option<DigestKey>,
    /// Owner names resolved in the instance's image before the push (its `/etc/passwd` and
    /// `/etc/group`, see [`resolve_owner`]): a secret of a service whose `user` is a name, or
    /// a `uid`/`gid` given as a name. `uid`/`gid` stay when a name is not found there.
    pub user: Option<String>,
    pub group: Option<String>,
}

impl PushFile {
    /// A directory owned by root, mode 0755.
    pub fn dir(path: &str) -> PushFile {
        PushFile {
            path: path.to_string(),
            content: None,
            uid: 0,
            gid: 0,
            mode: 0o755,
            source: None,
            key: None,
            user: None,
            group: None,
        }
    }

    /// The digest of the content (`None` for a directory): for a secret or config with the
    /// project's key, `hmac-sha256:<hex>` (HMAC-SHA256 under the key); else its sha256, hex
    /// (other files, whose content is stored anyway, and projects without a key: one
    /// incus-compose did not create).
    pub fn digest(&self) -> Option<String> {
        let c = self.content.as_ref()?;
        Some(match (&self.key, &self.source) {
            (Some(k), Some(_)) => format!("{HMAC_PREFIX}{}", naming::hex(&hmac_sha256(&k.0, c))),
            _ => naming::hex(&Sha256::digest(c)),
        })
    }

    /// Whether the content has the digest `recorded` (a revision's): a keyed one under this
    /// file's key, or a bare sha256 (revisions written before the project had a key).
    pub fn matches(&self, recorded: &str) -> bool {
        let Some(c) = self.content.as_ref() else {
            return false;
        };
        if recorded.starts_with(HMAC_PREFIX) {
            self.key.is_some() && self.digest().as_deref() == Some(recorded)
        } else {
            naming::hex(&Sha256::digest(c)) == recorded
        }
    }

    /// What the spec hash sees: everything, the content as its digest.
    pub(crate) fn hash_view(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "path": self.path,
            "sha256": self.digest(),
            "uid": self.uid,
            "gid": self.gid,
            "mode": self.mode,
        });
        // Left out when there are none, so that other files' hashes stay as they were.
        if self.user.is_some() || self.group.is_some() {
            v["owner"] = serde_json::json!([self.user, self.group]);
        }
        v
    }
}

impl fmt::Debug for PushFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PushFile");
        d.field("path", &self.path);
        match &self.content {
            Some(c) => d.field("content", &format_args!("<{} bytes>", c.len())),
            None => d.field("content", &"<directory>"),
        };
        d.field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// An anonymous volume (`volumes: [/data]`): one custom volume per replica slot, see
/// [`anonymous_volume_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonymousVolume {
    /// Device name (`mount<i>`, as the service's other mounts).
    pub device: String,
    pub target: String,
    pub read_only: bool,
    pub pool: String,
    /// The pool is shared by every member (the volume is created without a target member).
    pub shared: bool,
    /// The custom volume, named after the slot's first name (`web-2_anon-data` for `web-2`
    /// and for `web-2-b`, its start-first replacement), so that it follows the slot across
    /// replacements as Docker keeps a container's anonymous volumes across a recreate. Set by
    /// the planner for each replica; `None` (a one-off of `run`): named after the instance.
    pub volume: Option<String>,
}

impl AnonymousVolume {
    /// The custom volume of this anonymous volume for instance `instance`.
    pub fn volume_name(&self, instance: &str) -> String {
        self.volume
            .clone()
            .unwrap_or_else(|| anonymous_volume_name(instance, &self.target))
    }
}

/// The custom volume of an anonymous volume: `<name>_anon-<target>` with the target's
/// `/` and other non-alphanumerics as `-` (`web-1_anon-var-lib-db`), `<name>` the slot's first
/// instance name. Instance names hold no `_`, so it cannot collide with another slot's volume.
pub fn anonymous_volume_name(instance: &str, target: &str) -> String {
    let mut t = String::new();
    for c in target.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && t.ends_with('-')) {
            t.push(c);
        }
    }
    let t = t.trim_matches('-');
    format!("{instance}_anon-{}", if t.is_empty() { "root" } else { t })
}

/// The service's anonymous volumes (volume mounts without a source).
pub fn anonymous_volumes(service: &Service, pool: &str, shared: bool) -> Vec<AnonymousVolume> {
    service
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| v.kind == VolumeType::Volume && v.source.is_none())
        .map(|(i, v)| AnonymousVolume {
            device: format!("mount{i}"),
            target: v.target.clone(),
            read_only: v.read_only,
            pool: pool.to_string(),
            shared,
            volume: None,
        })
        .collect()
}

/// A value that goes into `raw.lxc`: one line, no control characters (a newline would
/// inject LXC configuration).
fn raw_safe(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_control())
}

/// A path that can be an `lxc.mount.entry` target: absolute, no whitespace.
fn mount_path_ok(path: &str) -> bool {
    path.starts_with('/') && raw_safe(path) && !path.chars().any(char::is_whitespace)
}

/// The names in the service's `user` (`www-data`, `www-data:staff`, `1000:staff`), to be
/// resolved in the image: (user, group).
fn named_user(service: &Service) -> (Option<String>, Option<String>) {
    let Some(user) = service.user.as_deref() else {
        return (None, None);
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let name = |s: &str| (!s.is_empty() && s.parse::<u32>().is_err()).then(|| s.to_string());
    (name(u), name(g))
}

/// The owner of `f` in an image whose `/etc/passwd` and `/etc/group` say `passwd` and `group`
/// (`None`: not readable): `(uid, gid)`, with a warning for each name not found (its
/// numeric fallback, root's, stays). A named user without a named group or a gid gets the
/// user's primary group.
pub fn resolve_owner(
    f: &PushFile,
    passwd: Option<&str>,
    group: Option<&str>,
) -> (u32, u32, Vec<String>) {
    // `name:x:id:gid:...` lines; the first of a name counts, as getpwnam's.
    let lookup = |table: Option<&str>, name: &str| -> Option<(u32, Option<u32>)> {
        table?.lines().find_map(|l| {
            let mut parts = l.split(':');
            (parts.next()? == name).then_some(())?;
            let id = parts.nth(1)?.trim().parse().ok()?;
            Some((id, parts.next().and_then(|g| g.trim().parse().ok())))
        })
    };
    let (mut uid, mut gid) = (f.uid, f.gid);
    let mut warnings = Vec::new();
    if let Some(u) = &f.user {
        match lookup(passwd, u) {
            Some((id, primary)) => {
                uid = id;
                if f.group.is_none() && gid == 0 {
                    gid = primary.unwrap_or(0);
                }
            }
            None => warnings.push(format!(
                "{}: user {u:?} is not in the image's /etc/passwd: the file belongs to uid {uid}",
                f.path
            )),
        }
    }
    if let Some(g) = &f.group {
        match lookup(group, g) {
            Some((id, _)) => gid = id,
            None => warnings.push(format!(
                "{}: group {g:?} is not in the image's /etc/group: the file belongs to gid {gid}",
                f.path
            )),
        }
    }
    (uid, gid, warnings)
}

/// The service's `user` as numeric `(uid, gid)` (`1000`, `1000:1001`); `(0, 0)` otherwise.
fn numeric_user(service: &Service) -> (u32, u32) {
    let Some(user) = service.user.as_deref() else {
        return (0, 0);
    };
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(u), Ok(g)) => (u, g),
        (Ok(u), Err(_)) if g.is_empty() => (u, u),
        // `1000:staff`: the group is a name (see `named_user`).
        (Ok(u), Err(_)) => (u, 0),
        (Err(_), Ok(g)) => (0, g),
        _ => (0, 0),
    }
}

/// `secrets` and `configs`: files to push (see the module table). A secret or config whose
/// value cannot be read fails the plan; external ones (Swarm's store) are left out with a
/// warning.
pub fn secrets_and_configs(
    service: &Service,
    project: &Project,
    key: Option<&DigestKey>,
    files: &mut Vec<PushFile>,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    let groups: [(&'static str, &Vec<FileRef>, bool); 2] = [
        ("secret", &service.secrets, true),
        ("config", &service.configs, false),
    ];
    for (kind, refs, is_secret) in groups {
        for r in refs {
            let top = if is_secret {
                project.secrets.get(&r.source)
            } else {
                project.configs.get(&r.source)
            };
            let Some(top) = top else {
                return Err(PlanError::SecretSource {
                    kind,
                    name: r.source.clone(),
                    service: service.name.clone(),
                    problem: format!("it is not defined in the top-level `{kind}s`"),
                });
            };
            if top.external {
                warnings.push(format!(
                    "service {:?}: {kind} {:?} is external (a Swarm {kind} store); Incus has none, so it is not delivered",
                    service.name, r.source
                ));
                continue;
            }
            if top.driver.is_some() || top.template_driver.is_some() {
                warnings.push(format!(
                    "service {:?}: {kind} {:?}: driver/template_driver ignored, the value is delivered as it is",
                    service.name, r.source
                ));
            }
            let content = match &top.value {
                Some(Ok(v)) => v.clone(),
                Some(Err(problem)) => {
                    return Err(PlanError::SecretSource {
                        kind,
                        name: r.source.clone(),
                        service: service.name.clone(),
                        problem: problem.clone(),
                    });
                }
                None => {
                    return Err(PlanError::SecretSource {
                        kind,
                        name: r.source.clone(),
                        service: service.name.clone(),
                        problem: "it has no value (file, environment or content)".into(),
                    });
                }
            };
            let path = if is_secret {
                r.secret_target()
            } else {
                r.config_target()
            };
            // Owner: `uid`/`gid` when given; else a secret belongs to the service's numeric
            // `user` (so a non-root service reads its own secret whatever its `mode`), anything
            // else to root.
            let (user_uid, user_gid) = if is_secret {
                numeric_user(service)
            } else {
                (0, 0)
            };
            // Names (`uid: www-data`, or a secret of a service whose `user` is a name) are
            // resolved in the image when the file is written (its /etc/passwd and /etc/group):
            // until then, and if a name is not there (with a warning), root's.
            let name = |v: Option<&String>| v.filter(|v| v.parse::<u32>().is_err()).cloned();
            let (named_user, named_group) = if is_secret {
                named_user(service)
            } else {
                (None, None)
            };
            let (uid, user) = match &r.uid {
                Some(v) => (v.parse().unwrap_or(0), name(Some(v))),
                None => (user_uid, named_user),
            };
            // Without a group: the numeric one of `user`, else (0) a named user's primary
            // group, found with it in the image.
            let (gid, group) = match &r.gid {
                Some(v) => (v.parse().unwrap_or(0), name(Some(v))),
                None if named_group.is_some() => (0, named_group),
                None => (user_gid, None),
            };
            // Read-only: write bits are dropped (the compose spec: "writable bit must be
            // ignored"). Default 0444 for secrets and configs, as the compose spec says.
            let mode = r.mode.unwrap_or(0o444) & 0o7555;
            files.push(PushFile {
                path,
                content: Some(content),
                uid,
                gid,
                mode,
                source: Some(format!("{kind} {}", r.source)),
                key: key.cloned(),
                user,
                group,
            });
        }
    }
    Ok(())
}

/// tmpfs mount options a compose file may give and that are passed on.
const TMPFS_OPTIONS: &[&str] = &[
    "size",
    "mode",
    "uid",
    "gid",
    "nr_inodes",
    "noexec",
    "exec",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "ro",
    "rw",
    "noatime",
    "atime",
];

fn tmpfs_entry(path: &str, options: &[String]) -> String {
    let mut opts = vec!["rw".to_string(), "nosuid".into(), "nodev".into()];
    for o in options {
        let key = o.split('=').next().unwrap_or_default();
        let opposite = match key {
            "ro" => Some("rw"),
            "exec" => Some("noexec"),
            "suid" => Some("nosuid"),
            "dev" => Some("nodev"),
            _ => None,
        };
        if let Some(opp) = opposite {
            opts.retain(|x| x != opp);
        }
        if !opts.contains(o) {
            opts.push(o.clone());
        }
    }
    opts.push("create=dir".into());
    format!(
        "lxc.mount.entry = tmpfs {} tmpfs {} 0 0",
        path.trim_start_matches('/'),
        opts.join(",")
    )
}

/// `tmpfs`, `volumes` of type `tmpfs` and `shm_size`: `lxc.mount.entry` lines, and the mount
/// points as directories to create (so that a read-only root filesystem works too).
pub fn tmpfs(
    service: &Service,
    raw: &mut Vec<String>,
    files: &mut Vec<PushFile>,
    warnings: &mut Vec<String>,
) {
    let mut mounts: Vec<(String, Vec<String>)> = Vec::new();
    for t in &service.tmpfs {
        let (path, opts) = match t.split_once(':') {
            Some((p, o)) => (p, o),
            None => (t.as_str(), ""),
        };
        let mut options = Vec::new();
        for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let key = o.split('=').next().unwrap_or_default();
            if TMPFS_OPTIONS.contains(&key) && raw_safe(o) && !o.contains(char::is_whitespace) {
                options.push(o.to_string());
            } else {
                warnings.push(format!(
                    "service {:?}: tmpfs {path:?}: option {o:?} is not supported, ignored",
                    service.name
                ));
            }
        }
        mounts.push((path.to_string(), options));
    }
    for v in service
        .volumes
        .iter()
        .filter(|v| v.kind == VolumeType::Tmpfs)
    {
        let mut options = Vec::new();
        if let Some(t) = &v.tmpfs {
            if let Some(size) = t.size {
                options.push(format!("size={}", size.bytes()));
            }
            if let Some(mode) = t.mode {
                options.push(format!("mode={mode:o}"));
            }
        }
        if v.read_only {
            options.push("ro".into());
        }
        mounts.push((v.target.clone(), options));
    }
    if let Some(size) = service.shm_size {
        mounts.push(("/dev/shm".into(), vec![format!("size={}", size.bytes())]));
    }
    for (path, options) in mounts {
        if !mount_path_ok(&path) {
            warnings.push(format!(
                "service {:?}: tmpfs mount point {path:?} must be an absolute path without spaces; ignored",
                service.name
            ));
            continue;
        }
        raw.push(tmpfs_entry(&path, &options));
        // /dev is a fresh tmpfs of LXC's at start: nothing to prepare there.
        if !path.starts_with("/dev/") {
            files.push(PushFile::dir(&path));
        }
    }
}

/// `cpuset`: `limits.cpu` as a CPU set (pinning); a whole-CPU count from `cpus` becomes the
/// same quota as `limits.cpu.allowance`. `oom_score_adj` (0 or more): `raw.lxc`
/// `lxc.proc.oom_score_adj`; a negative one needs privileges an unprivileged container lacks.
pub fn cpuset_and_oom(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    raw: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let name = &service.name;
    if let Some(v) = service.other.get("cpuset") {
        let set = match v {
            serde_json::Value::String(s) => s.trim().to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        if !set.is_empty()
            && set
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
        {
            // A lone number is a count for Incus: CPU 2 alone is the range `2-2`.
            let set = if set.chars().all(|c| c.is_ascii_digit()) {
                format!("{set}-{set}")
            } else {
                set
            };
            if let Some(count) = config.insert("limits.cpu".into(), set)
                && let Ok(n) = count.parse::<u64>()
            {
                config
                    .entry("limits.cpu.allowance".into())
                    .or_insert_with(|| format!("{}ms/100ms", n * 100));
            }
        } else {
            warnings.push(format!(
                "service {name:?}: cpuset {v} is not a CPU list like \"0-3\" or \"0,2\"; ignored"
            ));
        }
    }
    if let Some(v) = service.other.get("oom_score_adj") {
        match v.as_i64() {
            Some(n) if (0..=1000).contains(&n) => {
                raw.push(format!("lxc.proc.oom_score_adj = {n}"));
            }
            Some(n) if (-1000..0).contains(&n) => warnings.push(format!(
                "service {name:?}: oom_score_adj {n} is below 0, which an unprivileged container may not set; ignored"
            )),
            _ => warnings.push(format!(
                "service {name:?}: oom_score_adj {v} is not a number from -1000 to 1000; ignored"
            )),
        }
    }
}

/// `security_opt`: `no-new-privileges` -> `raw.lxc` `lxc.no_new_privs = 1`; the others
/// (AppArmor, seccomp, SELinux labels) are Incus's to set and warn.
pub fn security_opt(service: &Service, raw: &mut Vec<String>, warnings: &mut Vec<String>) {
    let mut ignored = Vec::new();
    for o in &service.security_opt {
        let (key, value) = o
            .split_once(['=', ':'])
            .map(|(k, v)| (k.trim(), v.trim()))
            .unwrap_or((o.trim(), "true"));
        match (key, value) {
            ("no-new-privileges", "true") => {
                if !raw.iter().any(|l| l == "lxc.no_new_privs = 1") {
                    raw.push("lxc.no_new_privs = 1".into());
                }
            }
            ("no-new-privileges", "false") => {}
            _ => ignored.push(o.as_str()),
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "service {:?}: security_opt {} not supported on Incus (its AppArmor and seccomp profiles apply), ignored",
            service.name,
            ignored.join(", ")
        ));
    }
}

/// `sysctls`: `linux.sysctl.*` keys.
pub fn sysctls(service: &Service, config: &mut BTreeMap<String, String>) {
    for (k, v) in &service.sysctls {
        config.insert(format!("linux.sysctl.{k}"), v.clone());
    }
}

/// `hostname`: `lxc.uts.name`; `domainname` has no equivalent in an unprivileged container.
pub fn hostname(service: &Service, raw: &mut Vec<String>, warnings: &mut Vec<String>) {
    if let Some(h) = &service.hostname {
        if raw_safe(h) && !h.contains(char::is_whitespace) {
            raw.push(format!("lxc.uts.name = {h}"));
        } else {
            warnings.push(format!(
                "service {:?}: hostname {h:?} is not a valid host name; ignored",
                service.name
            ));
        }
    }
    if service.domainname.is_some() {
        warnings.push(format!(
            "service {:?}: domainname is not supported on Incus (an unprivileged container cannot set its NIS domain name through LXC), ignored",
            service.name
        ));
    }
}

fn cap_name(c: &str) -> String {
    let c = c.trim().to_ascii_lowercase();
    c.strip_prefix("cap_").map(str::to_string).unwrap_or(c)
}

/// `cap_add` / `cap_drop` (see the module table).
pub fn capabilities(service: &Service, raw: &mut Vec<String>, warnings: &mut Vec<String>) {
    let mut valid = |c: &String| {
        let ok = !c.is_empty() && c.chars().all(|x| x.is_ascii_alphanumeric() || x == '_');
        if !ok {
            warnings.push(format!(
                "service {:?}: capability {c:?} is not a capability name; ignored",
                service.name
            ));
        }
        ok
    };
    let add: Vec<String> = service.cap_add.iter().map(|c| cap_name(c)).collect();
    let drop: Vec<String> = service.cap_drop.iter().map(|c| cap_name(c)).collect();
    let (add, drop): (Vec<String>, Vec<String>) = (
        add.into_iter().filter(&mut valid).collect(),
        drop.into_iter().filter(&mut valid).collect(),
    );
    if drop.iter().any(|c| c == "all") {
        let keep: Vec<&String> = add.iter().filter(|c| *c != "all").collect();
        // LXC refuses lxc.cap.keep next to lxc.cap.drop: clear Incus's drop list first.
        raw.push("lxc.cap.drop =".into());
        if add.iter().any(|c| c == "all") {
            return;
        }
        raw.push(if keep.is_empty() {
            "lxc.cap.keep = none".to_string()
        } else {
            format!(
                "lxc.cap.keep = {}",
                keep.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        });
        return;
    }
    let drop: Vec<&String> = drop.iter().filter(|c| !add.contains(c)).collect();
    if !drop.is_empty() {
        raw.push(format!(
            "lxc.cap.drop = {}",
            drop.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
}

fn is_block_device(path: &str) -> bool {
    const BLOCK: &[&str] = &[
        "/dev/sd",
        "/dev/hd",
        "/dev/vd",
        "/dev/xvd",
        "/dev/loop",
        "/dev/dm-",
        "/dev/mapper/",
        "/dev/md",
        "/dev/mmcblk",
        "/dev/sr",
        "/dev/nbd",
        "/dev/zd",
        "/dev/rbd",
        "/dev/ram",
        "/dev/disk/",
    ];
    if BLOCK.iter().any(|p| path.starts_with(p)) {
        return true;
    }
    // /dev/nvme0 is the controller (a character device), /dev/nvme0n1 a namespace (block).
    path.strip_prefix("/dev/nvme")
        .map(|rest| {
            rest.trim_start_matches(|c: char| c.is_ascii_digit())
                .starts_with('n')
        })
        .unwrap_or(false)
}

/// `devices`: `unix-block` or `unix-char` devices.
pub fn devices(service: &Service, devices: &mut Devices, warnings: &mut Vec<String>) {
    let Some(list) = service.other.get("devices").and_then(|d| d.as_array()) else {
        return;
    };
    for (i, item) in list.iter().enumerate() {
        let (source, target, perms) = match item {
            serde_json::Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts.next().map(str::to_string);
                let perms = parts.next().map(str::to_string);
                (source, target, perms)
            }
            serde_json::Value::Object(m) => (
                m.get("source")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                m.get("target").and_then(|v| v.as_str()).map(str::to_string),
                m.get("permissions")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
            ),
            other => {
                warnings.push(format!(
                    "service {:?}: device {other} is not understood; ignored",
                    service.name
                ));
                continue;
            }
        };
        if !source.starts_with("/dev/") {
            warnings.push(format!(
                "service {:?}: device {source:?} is not a /dev path (CDI device names are not supported on Incus); ignored",
                service.name
            ));
            continue;
        }
        let target = target.unwrap_or_else(|| source.clone());
        if let Some(p) = perms.filter(|p| {
            let mut c: Vec<char> = p.chars().collect();
            c.sort_unstable();
            c != ['m', 'r', 'w']
        }) {
            warnings.push(format!(
                "service {:?}: device {source:?}: cgroup permissions {p:?} are not enforced on Incus (the device is readable and writable)",
                service.name
            ));
        }
        let kind = if is_block_device(&source) {
            "unix-block"
        } else {
            "unix-char"
        };
        devices.insert(
            format!("device{i}"),
            dev(&[("type", kind), ("source", &source), ("path", &target)]),
        );
    }
}

/// Resource names `limits.kernel.*` accepts.
const KERNEL_LIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// `ulimits`: `limits.kernel.*` keys.
pub fn ulimits(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    let value = |v: i64| {
        if v < 0 {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    for (name, limit) in &service.ulimits {
        if !KERNEL_LIMITS.contains(&name.as_str()) {
            warnings.push(format!(
                "service {:?}: ulimit {name:?} has no Incus equivalent (limits.kernel.*); ignored",
                service.name
            ));
            continue;
        }
        let v = match limit {
            Ulimit::Single(n) => value(*n),
            Ulimit::SoftHard { soft, hard } if soft == hard => value(*soft),
            Ulimit::SoftHard { soft, hard } => format!("{}:{}", value(*soft), value(*hard)),
        };
        config.insert(format!("limits.kernel.{name}"), v);
    }
}

/// A signal name as LXC reads it: `SIGTERM`, `SIGRTMIN+3` or a number.
fn signal_name(sig: &str) -> Option<String> {
    let s = sig.trim().to_ascii_uppercase();
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
    {
        return None;
    }
    if s.chars().all(|c| c.is_ascii_digit()) || s.starts_with("SIG") {
        Some(s)
    } else {
        Some(format!("SIG{s}"))
    }
}

/// Single-quote a word for `sh`.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The process side: `entrypoint` + `command` as the PID 1 script (`None` without either),
/// and `user`, `working_dir`, `init`, `stop_signal` as `raw.lxc` lines or script lines.
pub fn process(
    service: &Service,
    raw: &mut Vec<String>,
    files: &mut Vec<PushFile>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let name = &service.name;
    let mut words: Vec<&String> = Vec::new();
    if let Some(e) = &service.entrypoint {
        words.extend(e);
    }
    if let Some(c) = &service.command {
        words.extend(c);
    }
    let stop_signal = match service.stop_signal.as_deref().map(|s| (s, signal_name(s))) {
        Some((_, Some(sig))) => Some(sig),
        Some((s, None)) => {
            warnings.push(format!(
                "service {name:?}: stop_signal {s:?} is not a signal name; ignored"
            ));
            None
        }
        None => None,
    };
    if words.is_empty() {
        let mut ignored = Vec::new();
        if service.user.is_some() {
            ignored.push("user");
        }
        if service.working_dir.is_some() {
            ignored.push("working_dir");
        }
        if !ignored.is_empty() {
            warnings.push(format!(
                "service {name:?}: {} need `command:` or `entrypoint:` on Incus (without them the image's init runs, as root, from /); ignored",
                ignored.join(" and ")
            ));
        }
        if let Some(sig) = stop_signal {
            raw.push(format!("lxc.signal.halt = {sig}"));
        }
        return None;
    }
    raw.push(format!("lxc.init.cmd = /bin/sh {COMMAND_PATH}"));
    let mut line: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
    if let Some(user) = &service.user {
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let numeric = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
        if numeric(u) {
            raw.push(format!("lxc.init.uid = {u}"));
            match g {
                Some(g) if numeric(g) => raw.push(format!("lxc.init.gid = {g}")),
                Some(g) => warnings.push(format!(
                    "service {name:?}: user {user:?}: a group name with a numeric uid is not supported, the group stays 0 ({g:?} ignored)"
                )),
                None => {}
            }
        } else if raw_safe(u) {
            if let Some(g) = g {
                warnings.push(format!(
                    "service {name:?}: user {user:?}: with a user name the command runs with that user's groups ({g:?} ignored)"
                ));
            }
            let mut su = vec![
                "su".to_string(),
                "-p".into(),
                "-s".into(),
                "/bin/sh".into(),
                sh_quote(u),
                "-c".into(),
                sh_quote("exec \"$0\" \"$@\""),
            ];
            su.append(&mut line);
            line = su;
        } else {
            warnings.push(format!(
                "service {name:?}: user {user:?} is not valid; ignored"
            ));
        }
    }
    if let Some(dir) = &service.working_dir {
        if mount_path_ok(dir) {
            raw.push(format!("lxc.init.cwd = {dir}"));
            files.push(PushFile::dir(dir));
        } else {
            warnings.push(format!(
                "service {name:?}: working_dir {dir:?} must be an absolute path without spaces; ignored"
            ));
        }
    }
    let halt = stop_signal.unwrap_or_else(|| "SIGTERM".into());
    raw.push(format!("lxc.signal.halt = {halt}"));
    let script = if service.init == Some(true) {
        let mut signals = vec!["TERM", "INT", "QUIT", "HUP", "USR1", "USR2"];
        let own = halt.trim_start_matches("SIG").to_string();
        if !signals.contains(&own.as_str()) {
            signals.push(&own);
        }
        let mut traps = String::new();
        for sig in &signals {
            traps.push_str(&format!(
                "trap 'kill -{sig} \"$child\" 2>/dev/null' {sig}\n"
            ));
        }
        format!(
            "# written by incus-compose: the service's entrypoint and command under a minimal init (init: true):\n\
             # this shell stays PID 1, forwards signals to the command and reaps orphans\n\
             {} &\nchild=$!\n{traps}\
             while :; do\n    wait \"$child\"\n    status=$?\n    kill -0 \"$child\" 2>/dev/null || exit \"$status\"\ndone\n",
            line.join(" ")
        )
    } else {
        format!(
            "# written by incus-compose: the service's entrypoint and command\nexec {}\n",
            line.join(" ")
        )
    };
    Some(script)
}

/// `extra_hosts` -> `/etc/hosts`; `dns`, `dns_search`, `dns_opt` -> `/etc/resolv.conf`.
pub fn name_resolution(service: &Service, files: &mut Vec<PushFile>, warnings: &mut Vec<String>) {
    let name = &service.name;
    if !service.extra_hosts.is_empty() {
        let mut hosts = String::from(
            "# written by incus-compose (extra_hosts)\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
        for entry in &service.extra_hosts {
            let pair = entry
                .split_once('=')
                .or_else(|| entry.split_once(':'))
                .map(|(h, ip)| {
                    (
                        h.trim(),
                        ip.trim().trim_start_matches('[').trim_end_matches(']'),
                    )
                });
            match pair {
                Some((_, "host-gateway")) => warnings.push(format!(
                    "service {name:?}: extra_hosts {entry:?}: host-gateway has no equivalent on Incus; ignored"
                )),
                Some((h, ip)) if !h.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {
                    hosts.push_str(&format!("{ip}\t{h}\n"));
                }
                _ => warnings.push(format!(
                    "service {name:?}: extra_hosts {entry:?} is not HOST:IP; ignored"
                )),
            }
        }
        files.push(PushFile {
            path: "/etc/hosts".into(),
            content: Some(hosts.into_bytes()),
            uid: 0,
            gid: 0,
            mode: 0o644,
            source: None,
            key: None,
            user: None,
            group: None,
        });
    }
    let dns_opt: Vec<String> = service
        .other
        .get("dns_opt")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if service.dns.is_empty() {
        if !service.dns_search.is_empty() || !dns_opt.is_empty() {
            warnings.push(format!(
                "service {name:?}: dns_search/dns_opt need `dns:` on Incus (the name servers come from DHCP otherwise); ignored"
            ));
        }
        return;
    }
    let mut conf = String::from("# written by incus-compose (dns)\n");
    for d in &service.dns {
        if d.parse::<std::net::IpAddr>().is_ok() {
            conf.push_str(&format!("nameserver {d}\n"));
        } else {
            warnings.push(format!(
                "service {name:?}: dns {d:?} is not an IP address; ignored"
            ));
        }
    }
    if !service.dns_search.is_empty() {
        conf.push_str(&format!("search {}\n", service.dns_search.join(" ")));
    }
    if !dns_opt.is_empty() {
        conf.push_str(&format!("options {}\n", dns_opt.join(" ")));
    }
    if words_empty(service) {
        warnings.push(format!(
            "service {name:?}: dns: /etc/resolv.conf is written before the first start; a DHCP client run by the image's init may replace it"
        ));
    }
    files.push(PushFile {
        path: "/etc/resolv.conf".into(),
        content: Some(conf.into_bytes()),
        uid: 0,
        gid: 0,
        mode: 0o644,
        source: None,
        key: None,
        user: None,
        group: None,
    });
}

fn words_empty(service: &Service) -> bool {
    service.entrypoint.as_ref().is_none_or(Vec::is_empty)
        && service.command.as_ref().is_none_or(Vec::is_empty)
}

/// `platform` -> the Incus architecture name (`linux/amd64` -> `x86_64`).
pub fn platform_arch(service: &Service) -> Result<Option<String>, PlanError> {
    let Some(p) = &service.platform else {
        return Ok(None);
    };
    let bad = |problem: &str| PlanError::Platform {
        service: service.name.clone(),
        platform: p.clone(),
        problem: problem.to_string(),
    };
    let mut parts = p.split('/');
    let os = parts.next().unwrap_or_default();
    if os != "linux" {
        return Err(bad("Incus runs Linux containers only"));
    }
    let arch = parts.next().unwrap_or_default();
    let variant = parts.next();
    let incus = match (arch, variant) {
        ("amd64" | "x86_64", _) => "x86_64",
        ("arm64" | "aarch64", _) => "aarch64",
        ("arm", Some("v6")) => "armv6l",
        ("arm", Some("v8")) => "armv8l",
        ("arm", _) => "armv7l",
        ("386" | "i386", _) => "i686",
        ("ppc64le", _) => "ppc64le",
        ("s390x", _) => "s390x",
        ("riscv64", _) => "riscv64",
        ("loong64", _) => "loongarch64",
        _ => return Err(bad("unknown architecture")),
    };
    Ok(Some(incus.to_string()))
}

/// `build:` and `pull_policy` (see the module table).
pub fn build_and_pull(service: &Service, warnings: &mut Vec<String>) -> Result<(), PlanError> {
    use ic_compose::model::PullPolicy;
    let policy = service.pull_policy.as_deref();
    if service.build.is_some() || policy.and_then(PullPolicy::parse) == Some(PullPolicy::Build) {
        return Err(PlanError::Build {
            service: service.name.clone(),
        });
    }
    if let Some(p) = policy
        && PullPolicy::parse(p).is_none()
    {
        // The loader refuses these; a project built in code may still carry one.
        warnings.push(format!(
            "service {:?}: pull_policy {p:?} is unknown; taken as `missing`",
            service.name
        ));
    }
    Ok(())
}

/// Warnings for the service fields incus-compose does not map (yet).
pub fn unsupported(service: &Service, warnings: &mut Vec<String>) {
    let s = service;
    let mut names: Vec<String> = Vec::new();
    let mut flag = |set: bool, name: &str| {
        if set {
            names.push(name.to_string());
        }
    };
    flag(s.build.is_some(), "build");
    // `healthcheck` is run through Incus exec (src/engine/health.rs).
    flag(s.logging.is_some(), "logging");
    flag(s.runtime.is_some(), "runtime");
    flag(s.stdin_open, "stdin_open");
    flag(s.tty, "tty");
    flag(!s.volumes_from.is_empty(), "volumes_from");
    if let Some(d) = &s.deploy {
        flag(d.endpoint_mode.is_some(), "deploy.endpoint_mode");
        flag(!d.labels.is_empty(), "deploy.labels");
        if let Some(r) = &d.resources.reservations {
            flag(
                !r.generic_resources.is_empty(),
                "deploy.resources.reservations.generic_resources",
            );
            flag(
                !r.devices.is_empty(),
                "deploy.resources.reservations.devices",
            );
        }
    }
    for k in s.other.keys() {
        if !MAPPED_OTHER.contains(&k.as_str()) {
            names.push(k.clone());
        }
    }
    if !names.is_empty() {
        warnings.push(format!(
            "service {:?}: not supported on Incus yet, ignored: {}",
            s.name,
            names.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_compose::model::{
        ByteSize, Deploy, Limits, Port, PortMode, PortRange, Resources, RestartPolicy,
        ServiceVolume,
    };

    fn svc() -> Service {
        Service {
            name: "web".into(),
            ..Default::default()
        }
    }

    fn with_limits(cpus: Option<f64>, memory: Option<u64>, pids: Option<i64>) -> Service {
        Service {
            deploy: Some(Deploy {
                resources: Resources {
                    limits: Some(Limits {
                        cpus,
                        memory: memory.map(ByteSize),
                        pids,
                    }),
                    reservations: None,
                },
                ..Default::default()
            }),
            ..svc()
        }
    }

    #[test]
    fn environment_becomes_environment_keys_and_valueless_variables_warn() {
        let mut s = svc();
        s.environment.insert("A".into(), Some("1".into()));
        s.environment.insert("B".into(), None);
        let (mut c, mut w) = (BTreeMap::new(), Vec::new());
        environment(&s, &mut c, &mut w);
        assert_eq!(c.get("environment.A").map(String::as_str), Some("1"));
        assert!(!c.contains_key("environment.B"));
        assert!(w[0].contains("\"B\""), "{w:?}");
    }

    #[test]
    fn whole_cpus_pin_a_count_and_fractions_set_a_quota() {
        let mut c = BTreeMap::new();
        limits(&with_limits(Some(2.0), Some(256 << 20), Some(100)), &mut c);
        assert_eq!(c["limits.cpu"], "2");
        assert_eq!(c["limits.memory"], "268435456");
        assert_eq!(c["limits.processes"], "100");
        let mut c = BTreeMap::new();
        limits(&with_limits(Some(0.5), None, None), &mut c);
        assert_eq!(c["limits.cpu.allowance"], "50ms/100ms");
        assert!(!c.contains_key("limits.cpu"));
    }

    #[test]
    fn restart_conditions_map_to_boot_keys_and_timing_fields_warn() {
        let run = |policy: Option<&str>, cond: Option<RestartCondition>| {
            let mut s = svc();
            s.restart = policy.map(Into::into);
            if let Some(condition) = cond {
                s.deploy = Some(Deploy {
                    restart_policy: Some(RestartPolicy {
                        condition,
                        delay: Some("5s".parse().unwrap()),
                        max_attempts: None,
                        window: None,
                    }),
                    ..Default::default()
                });
            }
            let (mut c, mut w) = (BTreeMap::new(), Vec::new());
            restart(&s, &mut c, &mut w);
            (c, w)
        };
        let (c, w) = run(Some("unless-stopped"), None);
        assert_eq!(
            (c["boot.autostart"].as_str(), c["boot.autorestart"].as_str()),
            ("true", "true")
        );
        assert!(w.is_empty());
        let (c, _) = run(Some("no"), None);
        assert!(c.is_empty());
        let (c, w) = run(None, Some(RestartCondition::OnFailure));
        assert_eq!(c.get("boot.autorestart").map(String::as_str), Some("true"));
        assert!(!c.contains_key("boot.autostart"));
        assert!(
            w[0].contains("only while `incus-compose watch` runs"),
            "{w:?}"
        );
        assert_eq!(
            c[crate::keys::LABEL_RESTART_POLICY],
            "condition=on-failure delay=5 max_attempts=0 window=0"
        );
        let (c, w) = run(Some("always"), None);
        assert!(!c.contains_key(crate::keys::LABEL_RESTART_POLICY));
        assert!(w.is_empty());
        let (c, _) = run(None, Some(RestartCondition::None));
        assert!(c.is_empty());
    }

    #[test]
    fn published_ports_become_proxy_devices() {
        let mut s = svc();
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: None,
            target: 80,
            published: Some(PortRange {
                start: 8080,
                end: 8080,
            }),
            protocol: "tcp".into(),
            app_protocol: None,
        });
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: Some("127.0.0.1".into()),
            target: 53,
            published: Some(PortRange {
                start: 5353,
                end: 5353,
            }),
            protocol: "udp".into(),
            app_protocol: None,
        });
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: None,
            target: 9,
            published: None,
            protocol: "tcp".into(),
            app_protocol: None,
        });
        let (mut d, mut w) = (Devices::new(), Vec::new());
        ports(&s, &mut d, &mut w);
        assert_eq!(d["port-tcp-8080"]["listen"], "tcp:0.0.0.0:8080");
        assert_eq!(d["port-tcp-8080"]["connect"], "tcp:127.0.0.1:80");
        assert_eq!(d["port-tcp-8080"]["type"], "proxy");
        assert_eq!(d["port-udp-5353"]["listen"], "udp:127.0.0.1:5353");
        assert_eq!(d.len(), 2);
        assert_eq!(w.len(), 1, "a port without a host port warns");
    }

    #[test]
    fn named_volumes_and_binds_become_disk_devices() {
        let mut s = svc();
        let vol = |kind, source: Option<&str>, target: &str, ro| ServiceVolume {
            kind,
            source: source.map(Into::into),
            target: target.into(),
            read_only: ro,
            bind: None,
            volume: None,
            tmpfs: None,
            consistency: None,
            other: BTreeMap::new(),
        };
        s.volumes = vec![
            vol(VolumeType::Volume, Some("data"), "/data", false),
            vol(VolumeType::Bind, Some("/srv/x"), "/x", true),
            vol(VolumeType::Tmpfs, None, "/tmp", false),
        ];
        let (mut d, mut w) = (Devices::new(), Vec::new());
        let used = mounts(&s, "data", &|k| Some(format!("p_{k}")), &mut d, &mut w);
        assert_eq!(used, vec!["p_data".to_string()]);
        assert_eq!(d["mount0"]["source"], "p_data");
        assert_eq!(d["mount0"]["pool"], "data");
        assert_eq!(d["mount0"]["path"], "/data");
        assert_eq!(d["mount1"]["source"], "/srv/x");
        assert_eq!(d["mount1"]["readonly"], "true");
        assert!(!d.contains_key("mount2"), "tmpfs is a raw.lxc mount entry");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn unsupported_fields_are_named_in_a_warning() {
        let mut s = svc();
        s.stdin_open = true;
        s.runtime = Some("runc".into());
        s.cap_add = vec!["NET_ADMIN".into()];
        let mut w = Vec::new();
        unsupported(&s, &mut w);
        assert!(
            w[0].contains("stdin_open") && w[0].contains("runtime") && !w[0].contains("cap_add"),
            "{w:?}"
        );
        let mut w = Vec::new();
        unsupported(&svc(), &mut w);
        assert!(w.is_empty());
    }

    /// A compose project loaded from text (files under /proj), with an environment.
    fn project(text: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Project {
        use std::path::PathBuf;
        let o = ic_compose::LoadOptions {
            files: vec![PathBuf::from("/proj/compose.yaml")],
            working_dir: PathBuf::from("/proj"),
            environment: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            interpolate: true,
            ..ic_compose::LoadOptions::default()
        };
        let mut fs = ic_compose::MemFs::default().with("/proj/compose.yaml", text);
        for (path, content) in files {
            fs = fs.with(*path, *content);
        }
        ic_compose::load_with(&o, &fs).unwrap_or_else(|e| panic!("load failed:\n{e}"))
    }

    fn facts() -> super::super::ServerFacts {
        super::super::ServerFacts {
            version: "6.0.4".into(),
            image_aliases: ["busybox".to_string()].into(),
            storage_pool: "data".into(),
            ..Default::default()
        }
    }

    fn template(p: &Project, service: &str) -> super::super::InstanceTemplate {
        let opts = super::super::PlanOptions {
            version: "0.1.0".into(),
            ..Default::default()
        };
        let d = super::super::desired(p, &facts(), &opts).expect("desired");
        d.services
            .into_iter()
            .find(|t| t.service == service)
            .expect("service")
    }

    const SECRETS: &str = r#"
name: p
services:
  app:
    image: busybox
    secrets:
      - db
      - source: token
        target: api
        uid: "1000"
        gid: "1001"
        mode: 0o640
    configs:
      - conf
      - source: conf
        target: /etc/app.ini
secrets:
  db: {file: ./db.txt}
  token: {environment: TOKEN}
configs:
  conf: {content: "port = 1\n"}
"#;

    #[test]
    fn secrets_and_configs_become_files_at_compose_paths_with_owner_and_read_only_mode() {
        let p = project(
            SECRETS,
            &[("/proj/db.txt", "hunter2")],
            &[("TOKEN", "xyzzy")],
        );
        let t = template(&p, "app");
        let f: BTreeMap<&str, &PushFile> = t.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let db = f["/run/secrets/db"];
        assert_eq!(db.content.as_deref(), Some(&b"hunter2"[..]));
        // The compose spec's default mode: 0444.
        assert_eq!((db.uid, db.gid, db.mode), (0, 0, 0o444));
        let api = f["/run/secrets/api"];
        assert_eq!(api.content.as_deref(), Some(&b"xyzzy"[..]));
        // The write bit asked for is dropped: read-only.
        assert_eq!((api.uid, api.gid, api.mode), (1000, 1001, 0o440));
        assert_eq!(f["/conf"].content.as_deref(), Some(&b"port = 1\n"[..]));
        assert_eq!(f["/conf"].mode, 0o444);
        assert_eq!(
            f["/etc/app.ini"].content.as_deref(),
            Some(&b"port = 1\n"[..])
        );
        // Never in config keys nor in the Debug form.
        for v in t.config.values() {
            assert!(!v.contains("hunter2") && !v.contains("xyzzy"), "{v}");
        }
        let debug = format!("{:?}", t.files);
        assert!(
            !debug.contains("hunter2") && debug.contains("<7 bytes>"),
            "{debug}"
        );
    }

    #[test]
    fn a_secret_of_a_named_user_is_owned_by_that_user_as_the_image_knows_it() {
        let text = r#"
name: p
services:
  app:
    image: busybox
    user: www-data
    secrets: [a, {source: b, uid: "nobody", gid: staff, mode: 0400}, {source: c, uid: "7"}]
  grp:
    image: busybox
    user: "1000:staff"
    secrets: [a]
secrets:
  a: {file: ./a.txt}
  b: {file: ./a.txt}
  c: {file: ./a.txt}
"#;
        let p = project(text, &[("/proj/a.txt", "x")], &[]);
        let t = template(&p, "app");
        let f: BTreeMap<&str, &PushFile> = t.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let owner = |f: &PushFile| (f.user.clone(), f.group.clone(), f.uid, f.gid);
        let name = |s: &str| Some(s.to_string());
        assert_eq!(owner(f["/run/secrets/a"]), (name("www-data"), None, 0, 0));
        assert_eq!(
            owner(f["/run/secrets/b"]),
            (name("nobody"), name("staff"), 0, 0)
        );
        assert_eq!(owner(f["/run/secrets/c"]), (None, None, 7, 0));
        let g = template(&p, "grp");
        assert_eq!(owner(&g.files[0]), (None, name("staff"), 1000, 0));
        // Resolved in the image's tables; a name not there stays root's, with a warning.
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:34::/var/www:/bin/false\nnobody:x:65534:65534::/:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        let r = |f: &PushFile| resolve_owner(f, Some(passwd), Some(group));
        assert_eq!(r(f["/run/secrets/a"]), (33, 34, vec![]));
        assert_eq!(r(f["/run/secrets/b"]), (65534, 50, vec![]));
        assert_eq!(r(&g.files[0]), (1000, 50, vec![]));
        let (uid, gid, warnings) =
            resolve_owner(f["/run/secrets/b"], Some("root:x:0:0::/:/bin/sh\n"), None);
        assert_eq!((uid, gid), (0, 0));
        assert!(
            warnings.len() == 2
                && warnings[0].contains("\"nobody\" is not in the image's /etc/passwd")
                && warnings[1].contains("\"staff\" is not in the image's /etc/group"),
            "{warnings:?}"
        );
        // The names are part of the spec hash (the owner they resolve to can differ).
        let plain = template(
            &project(
                &text.replace("    user: www-data\n", ""),
                &[("/proj/a.txt", "x")],
                &[],
            ),
            "app",
        );
        assert_ne!(plain.hash, t.hash);
    }

    #[test]
    fn a_changed_secret_value_changes_the_spec_hash() {
        let a = template(
            &project(SECRETS, &[("/proj/db.txt", "one")], &[("TOKEN", "x")]),
            "app",
        );
        let b = template(
            &project(SECRETS, &[("/proj/db.txt", "two")], &[("TOKEN", "x")]),
            "app",
        );
        let c = template(
            &project(SECRETS, &[("/proj/db.txt", "one")], &[("TOKEN", "x")]),
            "app",
        );
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash, c.hash);
    }

    #[test]
    fn an_unreadable_secret_fails_the_plan_and_an_external_one_warns() {
        let p = project(SECRETS, &[], &[("TOKEN", "x")]);
        let opts = super::super::PlanOptions::default();
        let err = super::super::desired(&p, &facts(), &opts).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"db\"") && text.contains("/proj/db.txt"),
            "{text}"
        );
        let p = project(SECRETS, &[("/proj/db.txt", "x")], &[]);
        let err = super::super::desired(&p, &facts(), &opts).unwrap_err();
        assert!(err.to_string().contains("TOKEN is not set"), "{err}");

        let text = "name: p\nservices:\n  app: {image: busybox, secrets: [ext]}\nsecrets:\n  ext: {external: true}\n";
        let d = super::super::desired(&project(text, &[], &[]), &facts(), &opts).unwrap();
        assert!(d.services[0].files.is_empty());
        assert!(
            d.warnings.iter().any(|w| w.contains("\"ext\" is external")),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn tmpfs_and_shm_size_become_lxc_mount_entries_with_mount_points() {
        let text = r#"
name: p
services:
  app:
    image: busybox
    shm_size: 64m
    tmpfs: ["/run:size=1m,noexec,uid=5", "/tmp:bogus=1"]
    volumes:
      - {type: tmpfs, target: /cache, tmpfs: {size: 1024, mode: 0o700}}
"#;
        let p = project(text, &[], &[]);
        let s = &p.services["app"];
        let (mut raw, mut files, mut w) = (Vec::new(), Vec::new(), Vec::new());
        tmpfs(s, &mut raw, &mut files, &mut w);
        assert_eq!(
            raw,
            [
                "lxc.mount.entry = tmpfs run tmpfs rw,nosuid,nodev,size=1m,noexec,uid=5,create=dir 0 0",
                "lxc.mount.entry = tmpfs tmp tmpfs rw,nosuid,nodev,create=dir 0 0",
                "lxc.mount.entry = tmpfs cache tmpfs rw,nosuid,nodev,size=1024,mode=700,create=dir 0 0",
                "lxc.mount.entry = tmpfs dev/shm tmpfs rw,nosuid,nodev,size=67108864,create=dir 0 0",
            ]
        );
        let dirs: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(dirs, ["/run", "/tmp", "/cache"]);
        assert!(w.len() == 1 && w[0].contains("bogus=1"), "{w:?}");
        // A newline cannot smuggle LXC configuration in.
        let mut s = s.clone();
        s.tmpfs = vec!["/x\nlxc.apparmor.profile = unconfined".into()];
        s.volumes.clear();
        s.shm_size = None;
        let (mut raw, mut w) = (Vec::new(), Vec::new());
        tmpfs(&s, &mut raw, &mut Vec::new(), &mut w);
        assert!(raw.is_empty() && w.len() == 1, "{raw:?} {w:?}");
    }

    #[test]
    fn anonymous_volumes_are_per_instance_and_named_after_instance_and_target() {
        assert_eq!(anonymous_volume_name("web-1", "/data"), "web-1_anon-data");
        assert_eq!(
            anonymous_volume_name("web-2", "/var/lib//my_db/"),
            "web-2_anon-var-lib-my-db"
        );
        let text = "name: p\nservices:\n  app:\n    image: busybox\n    volumes: [/data, {type: volume, target: /ro, read_only: true}]\n";
        let t = template(&project(text, &[], &[]), "app");
        assert_eq!(t.anonymous_volumes.len(), 2);
        assert_eq!(t.anonymous_volumes[0].device, "mount0");
        assert_eq!(t.anonymous_volumes[0].target, "/data");
        assert!(t.anonymous_volumes[1].read_only);
        assert_eq!(t.anonymous_volumes[1].pool, "data");
        assert!(
            t.devices.keys().all(|k| !k.starts_with("mount")),
            "added per instance"
        );
    }

    #[test]
    fn read_only_makes_the_root_disk_read_only_and_prepares_mount_points() {
        let text = "name: p\nservices:\n  app:\n    image: busybox\n    read_only: true\n    volumes: [/data, \"/srv:/srv\"]\n";
        let t = template(&project(text, &[], &[]), "app");
        let root = &t.devices["root"];
        assert_eq!(
            (
                root["type"].as_str(),
                root["path"].as_str(),
                root["pool"].as_str(),
                root["readonly"].as_str()
            ),
            ("disk", "/", "data", "true")
        );
        let dirs: Vec<&str> = t.files.iter().map(|f| f.path.as_str()).collect();
        assert!(
            dirs.contains(&"/data") && dirs.contains(&"/srv"),
            "{dirs:?}"
        );
    }

    #[test]
    fn hostname_sysctls_and_ulimits_map_to_incus_keys() {
        let text = r#"
name: p
services:
  app:
    image: busybox
    hostname: db-host
    domainname: example.org
    sysctls: {net.core.somaxconn: "1024"}
    ulimits:
      nproc: 512
      nofile: {soft: 1024, hard: 4096}
      core: {soft: -1, hard: -1}
      bogus: 1
"#;
        let t = template(&project(text, &[], &[]), "app");
        assert_eq!(t.config["linux.sysctl.net.core.somaxconn"], "1024");
        assert_eq!(t.config["limits.kernel.nproc"], "512");
        assert_eq!(t.config["limits.kernel.nofile"], "1024:4096");
        assert_eq!(t.config["limits.kernel.core"], "unlimited");
        assert!(!t.config.contains_key("limits.kernel.bogus"));
        assert_eq!(t.config["raw.lxc"], "lxc.uts.name = db-host");
        let p = project(text, &[], &[]);
        let d = super::super::desired(&p, &facts(), &Default::default()).unwrap();
        assert!(
            d.warnings.iter().any(|w| w.contains("\"bogus\"")),
            "{:?}",
            d.warnings
        );
        assert!(
            d.warnings.iter().any(|w| w.contains("domainname")),
            "{:?}",
            d.warnings
        );
    }

    #[test]
    fn cpuset_pins_cpus_keeping_a_count_as_quota_and_oom_score_adj_goes_to_lxc() {
        let mut s = with_limits(Some(2.0), None, None);
        s.other.insert("cpuset".into(), serde_json::json!("0,1"));
        s.other
            .insert("oom_score_adj".into(), serde_json::json!(500));
        let (mut c, mut raw, mut w) = (BTreeMap::new(), Vec::new(), Vec::new());
        limits(&s, &mut c);
        cpuset_and_oom(&s, &mut c, &mut raw, &mut w);
        assert_eq!(c["limits.cpu"], "0,1");
        assert_eq!(c["limits.cpu.allowance"], "200ms/100ms");
        assert_eq!(raw, ["lxc.proc.oom_score_adj = 500"]);
        assert!(w.is_empty(), "{w:?}");
        s.other.insert("cpuset".into(), serde_json::json!("all"));
        s.other
            .insert("oom_score_adj".into(), serde_json::json!(-100));
        let (mut c, mut raw, mut w) = (BTreeMap::new(), Vec::new(), Vec::new());
        cpuset_and_oom(&s, &mut c, &mut raw, &mut w);
        assert!(c.is_empty() && raw.is_empty() && w.len() == 2, "{w:?}");
        s.other.insert("cpuset".into(), serde_json::json!("1"));
        let mut c = BTreeMap::new();
        cpuset_and_oom(&s, &mut c, &mut Vec::new(), &mut Vec::new());
        assert_eq!(c["limits.cpu"], "1-1", "one pinned CPU, not a count");
        let mut w = Vec::new();
        unsupported(&s, &mut w);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn no_new_privileges_sets_lxc_no_new_privs_and_other_security_options_warn() {
        let mut s = svc();
        s.security_opt = vec![
            "no-new-privileges:true".into(),
            "no-new-privileges".into(),
            "apparmor=unconfined".into(),
        ];
        let (mut raw, mut w) = (Vec::new(), Vec::new());
        security_opt(&s, &mut raw, &mut w);
        assert_eq!(raw, ["lxc.no_new_privs = 1"]);
        assert!(
            w.len() == 1 && w[0].contains("apparmor=unconfined"),
            "{w:?}"
        );
    }

    #[test]
    fn capabilities_drop_from_lxc_and_drop_all_keeps_only_the_added_ones() {
        let run = |add: &[&str], drop: &[&str]| {
            let mut s = svc();
            s.cap_add = add.iter().map(|c| c.to_string()).collect();
            s.cap_drop = drop.iter().map(|c| c.to_string()).collect();
            let (mut raw, mut w) = (Vec::new(), Vec::new());
            capabilities(&s, &mut raw, &mut w);
            raw
        };
        assert_eq!(
            run(&[], &["NET_RAW", "CAP_MKNOD"]),
            ["lxc.cap.drop = net_raw mknod"]
        );
        assert!(
            run(&["NET_ADMIN"], &[]).is_empty(),
            "already held in the user namespace"
        );
        assert_eq!(
            run(&["NET_BIND_SERVICE", "CHOWN"], &["ALL"]),
            ["lxc.cap.drop =", "lxc.cap.keep = net_bind_service chown"]
        );
        assert_eq!(
            run(&[], &["ALL"]),
            ["lxc.cap.drop =", "lxc.cap.keep = none"]
        );
        assert_eq!(
            run(&["NET_RAW"], &["NET_RAW", "MKNOD"]),
            ["lxc.cap.drop = mknod"]
        );
    }

    #[test]
    fn devices_become_unix_char_or_block_devices() {
        let mut s = svc();
        s.other.insert(
            "devices".into(),
            serde_json::json!([
                "/dev/ttyUSB0:/dev/modem:rw",
                "/dev/sdb",
                "/dev/nvme0n1:/dev/disk0",
                {"source": "/dev/fuse", "target": "/dev/fuse", "permissions": "rwm"},
                "vendor.com/gpu=all"
            ]),
        );
        let (mut d, mut w) = (Devices::new(), Vec::new());
        devices(&s, &mut d, &mut w);
        assert_eq!(d["device0"]["type"], "unix-char");
        assert_eq!(d["device0"]["source"], "/dev/ttyUSB0");
        assert_eq!(d["device0"]["path"], "/dev/modem");
        assert_eq!(d["device1"]["type"], "unix-block");
        assert_eq!(d["device1"]["path"], "/dev/sdb");
        assert_eq!(d["device2"]["type"], "unix-block");
        assert_eq!(d["device3"]["type"], "unix-char");
        assert_eq!(d.len(), 4);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("\"rw\"") && w[1].contains("CDI"), "{w:?}");
        let mut w = Vec::new();
        unsupported(&s, &mut w);
        assert!(w.is_empty(), "devices is mapped: {w:?}");
    }

    #[test]
    fn user_working_dir_init_and_stop_signal_shape_the_init_process() {
        let mut s = svc();
        s.command = Some(vec!["sleep".into(), "1".into()]);
        s.user = Some("1000:1001".into());
        s.working_dir = Some("/srv/app".into());
        s.stop_signal = Some("QUIT".into());
        let (mut raw, mut files, mut w) = (Vec::new(), Vec::new(), Vec::new());
        let script = process(&s, &mut raw, &mut files, &mut w).unwrap();
        assert_eq!(
            raw,
            [
                format!("lxc.init.cmd = /bin/sh {COMMAND_PATH}"),
                "lxc.init.uid = 1000".into(),
                "lxc.init.gid = 1001".into(),
                "lxc.init.cwd = /srv/app".into(),
                "lxc.signal.halt = SIGQUIT".into(),
            ]
        );
        assert_eq!(files, [PushFile::dir("/srv/app")]);
        assert!(script.contains("exec 'sleep' '1'"), "{script}");
        assert!(w.is_empty(), "{w:?}");

        // A user name: su runs the command; init: the shell stays PID 1 and forwards signals.
        s.user = Some("www-data".into());
        s.init = Some(true);
        let (mut raw, mut w) = (Vec::new(), Vec::new());
        let script = process(&s, &mut raw, &mut Vec::new(), &mut w).unwrap();
        assert!(
            script.contains("su -p -s /bin/sh 'www-data' -c 'exec \"$0\" \"$@\"' 'sleep' '1' &"),
            "{script}"
        );
        assert!(
            script.contains("trap 'kill -QUIT \"$child\" 2>/dev/null' QUIT"),
            "{script}"
        );
        assert!(!script.contains("\nexec "), "{script}");
        assert!(
            !raw.iter().any(|l| l.starts_with("lxc.init.uid")),
            "{raw:?}"
        );

        // Without a command: the image's init runs; user and working_dir warn.
        let mut s = svc();
        s.user = Some("1000".into());
        s.working_dir = Some("/x".into());
        s.stop_signal = Some("SIGRTMIN+3".into());
        let (mut raw, mut w) = (Vec::new(), Vec::new());
        assert!(process(&s, &mut raw, &mut Vec::new(), &mut w).is_none());
        assert_eq!(raw, ["lxc.signal.halt = SIGRTMIN+3"]);
        assert!(w[0].contains("user and working_dir"), "{w:?}");
    }

    #[test]
    fn extra_hosts_and_dns_become_files() {
        let mut s = svc();
        s.command = Some(vec!["true".into()]);
        s.extra_hosts = vec![
            "db:10.0.0.5".into(),
            "v6=::1".into(),
            "gw:host-gateway".into(),
        ];
        s.dns = vec!["1.1.1.1".into()];
        s.dns_search = vec!["example.org".into()];
        let (mut files, mut w) = (Vec::new(), Vec::new());
        name_resolution(&s, &mut files, &mut w);
        let hosts = String::from_utf8(files[0].content.clone().unwrap()).unwrap();
        assert_eq!(files[0].path, "/etc/hosts");
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(
            hosts.contains("10.0.0.5\tdb\n") && hosts.contains("::1\tv6\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("gw"), "{hosts}");
        let resolv = String::from_utf8(files[1].content.clone().unwrap()).unwrap();
        assert_eq!(files[1].path, "/etc/resolv.conf");
        assert!(
            resolv.contains("nameserver 1.1.1.1\nsearch example.org\n"),
            "{resolv}"
        );
        assert_eq!(w.len(), 1, "host-gateway warns: {w:?}");

        let mut s = svc();
        s.dns_search = vec!["x".into()];
        let (mut files, mut w) = (Vec::new(), Vec::new());
        name_resolution(&s, &mut files, &mut w);
        assert!(files.is_empty() && w[0].contains("need `dns:`"), "{w:?}");
    }

    #[test]
    fn platforms_map_to_incus_architectures_and_build_is_refused() {
        let with = |p: &str| Service {
            platform: Some(p.into()),
            ..svc()
        };
        assert_eq!(
            platform_arch(&with("linux/amd64")).unwrap().as_deref(),
            Some("x86_64")
        );
        assert_eq!(
            platform_arch(&with("linux/arm64/v8")).unwrap().as_deref(),
            Some("aarch64")
        );
        assert_eq!(
            platform_arch(&with("linux/arm/v7")).unwrap().as_deref(),
            Some("armv7l")
        );
        assert!(platform_arch(&with("windows/amd64")).is_err());
        assert!(platform_arch(&with("linux/mips")).is_err());

        let text = "name: p\nservices:\n  app: {image: busybox, platform: linux/arm64}\n";
        let p = project(text, &[], &[]);
        let d = super::super::desired(&p, &facts(), &Default::default()).unwrap();
        assert_eq!(d.services[0].architecture.as_deref(), Some("aarch64"));
        let mut m = crate::schedule::Member::new("node1");
        m.architecture = "x86_64".into();
        let obs = super::super::Observed {
            members: vec![m],
            ..Default::default()
        };
        let err = super::super::check_platforms(&p, &d, &obs)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"app\"") && err.contains("node1 (x86_64)"),
            "{err}"
        );

        let text = "name: p\nservices:\n  app: {image: busybox, build: .}\n";
        let err = super::super::desired(&project(text, &[], &[]), &facts(), &Default::default())
            .unwrap_err();
        assert!(matches!(err, PlanError::Build { .. }), "{err}");
        let text = "name: p\nservices:\n  app: {image: busybox, pull_policy: never}\n";
        assert!(
            super::super::desired(&project(text, &[], &[]), &facts(), &Default::default()).is_ok()
        );
    }
}
