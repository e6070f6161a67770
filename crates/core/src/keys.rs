//! Every `user.*` config key incus-compose persists in Incus (on instances, volumes,
//! networks, Incus projects and cluster members): their one home. A leaf module: it imports
//! nothing, so every other module (pure core and engine) can name the keys without cycles.

/// Prefix of every key incus-compose writes (what marks an object as ours).
pub const OURS_PREFIX: &str = "user.incus-compose.";
/// Prefix of a compose `labels` entry copied onto an instance (`user.label.<key>`).
pub const COMPOSE_LABEL_PREFIX: &str = "user.label.";

// ---- instances, volumes, networks (labels) ----

/// The compose project an object belongs to.
pub const LABEL_PROJECT: &str = "user.incus-compose.project";
/// The service an instance belongs to.
pub const LABEL_SERVICE: &str = "user.incus-compose.service";
/// The replica slot of an instance: a number, or a member name for global services.
pub const LABEL_SLOT: &str = "user.incus-compose.slot";
/// The hash of the service spec an instance was made from.
pub const LABEL_HASH: &str = "user.incus-compose.hash";
/// The incus-compose version that made the object.
pub const LABEL_VERSION: &str = "user.incus-compose.version";
/// The compose network key of a network.
pub const LABEL_NETWORK: &str = "user.incus-compose.network";
/// The compose volume key of a volume.
pub const LABEL_VOLUME: &str = "user.incus-compose.volume";
/// The hash of what a running instance cannot change in place (see `plan::live_key`): when
/// only the rest changed, `up` updates the instance's config instead of replacing it.
pub const LABEL_STATIC_HASH: &str = "user.incus-compose.static-hash";
/// On an instance a rolling update replaced: its name before it was retired. Retired
/// instances are stopped, not counted as replicas, kept for a rollback until the update of
/// their service completes, then removed.
pub const LABEL_RETIRED: &str = "user.incus-compose.retired";
/// On a replica made to replace one stranded on an offline member: the stranded one's name.
/// When that member comes back, the slot has two replicas: this one is kept, the other removed.
pub const LABEL_REPLACES: &str = "user.incus-compose.replaces";
/// On the old replica of a start-first slot whose new replica is ready: the new one's name.
/// It still runs (and still has its DNS records) until the update of its service is over and
/// the records name the new replicas; then it is retired. The planner gives it no records,
/// and when a slot has both, keeps the other.
pub const LABEL_REPLACED_BY: &str = "user.incus-compose.replaced-by";
/// `true` on a one-off instance of `run`: it has [`LABEL_SERVICE`] but no [`LABEL_SLOT`], so it
/// is never a replica (not counted, moved or recreated by `up`/`scale`).
pub const LABEL_ONEOFF: &str = "user.incus-compose.oneoff";
/// On an anonymous volume: the container path it is mounted at.
pub const LABEL_ANONYMOUS: &str = "user.incus-compose.anonymous";
/// On a retired replica: the fixed NIC addresses it gave up (JSON device -> address).
pub const RETIRED_ADDRESSES: &str = "user.incus-compose.retired-addresses";
/// A replica's restart policy (`condition`, `delay`, `max_attempts`, `window`), as `up`
/// stores it.
pub const LABEL_RESTART_POLICY: &str = "user.incus-compose.restart-policy";
/// The restarts `watch` counted for a replica: unix seconds, comma-separated, oldest first.
pub const LABEL_RESTARTS: &str = "user.incus-compose.restarts";
/// On a replica `watch` left stopped because its restart budget was spent: why (one line).
pub const LABEL_GAVE_UP: &str = "user.incus-compose.gave-up";
/// Prefix (followed by the compose network key) of the instance config key holding a
/// replica's address on that network.
pub const ADDRESS_PREFIX: &str = "user.incus-compose.ipv4.";
/// On a network: the VNI of a spanning bridge (also in `tunnel.v.id`).
pub const LABEL_VNI: &str = "user.incus-compose.vni";
/// On a network: the network kind incus-compose chose (`span`, `ovn`; absent: bridge).
pub const LABEL_KIND: &str = "user.incus-compose.kind";

// ---- Incus project config ----

/// Incus project config key: the compose files of the last `up` (absolute paths, one per
/// line), for `ls`.
pub const LABEL_CONFIG_FILES: &str = "user.incus-compose.config-files";
/// Incus project config key prefix (followed by a network name): incus-compose is creating
/// that cluster network. Written before the first per-member step and removed once the
/// network is created, it is how a network left `Pending` on some members (which has no
/// config yet, so no labels) is known to be ours: see `plan::Observed::claims_network`.
pub const CREATING_NETWORK_PREFIX: &str = "user.incus-compose.creating-network.";
/// Project config keys that record, per image reference, the image incus-compose last pulled
/// for it: `user.incus-compose.image.<16 hex of sha256(key)>` = `<fingerprint> <key>`. Incus keeps
/// one record per image content with the `update_source` of one pull only, so several tags
/// naming the same image cannot be told apart from the image store alone (and aliases on pulled
/// images make Incus 7.0 fail later pulls of the same content: "Alias already exists").
pub const PULL_RECORD_PREFIX: &str = "user.incus-compose.image.";
/// Project config key prefix of revisions (followed by the revision number).
pub const REVISION_PREFIX: &str = "user.incus-compose.revision.";
/// Incus project config key prefix (followed by the service): the pace of its rollout, the
/// times of its last batch (`ic_core::rollout::Pace`, JSON), so that a run that resumes an
/// interrupted update keeps `delay` after the last batch. Removed when the update ends.
pub const PACE_PREFIX: &str = "user.incus-compose.rollout-pace.";
/// Project config key of the project lock (a `lease::LockRecord`, JSON).
pub const LOCK_KEY: &str = "user.incus-compose.lock";
/// The project config key of the lease that says which `watch` process looks after the
/// project (held for as long as it runs; the project lock is taken only while it acts).
pub const WATCH_KEY: &str = "user.incus-compose.watch";

// ---- cluster member config ----

/// Member config key: set by `node drain` (with `scheduler.instance=manual`), removed by
/// `node restore`. Its value is JSON: `{"since": RFC 3339, "scheduler.instance": previous}`.
pub const DRAINED_KEY: &str = "user.incus-compose.drained";

/// Incus project config key: the project's digest key (`plan::DigestKey`, hex), 32 random bytes
/// written once, by the first `up` that holds the project's lock (in a project incus-compose
/// created), and kept with the project. Secret and config digests in Incus config (spec
/// hashes, revisions) are HMACs under it.
pub const DIGEST_KEY: &str = "user.incus-compose.digest-key";

/// On a forwarder of published ports (`plan::ingress`): the member it serves.
pub const LABEL_INGRESS: &str = "user.incus-compose.ingress";
/// On a replica: its service's ingress ports, published by the forwarders (`plan::ingress::encode`).
pub const LABEL_INGRESS_PORTS: &str = "user.incus-compose.ingress-ports";
/// On a forwarder: what it cannot change in place (image and addresses); a change recreates it.
pub const LABEL_INGRESS_KEY: &str = "user.incus-compose.ingress-key";

/// Marks a member resolver container of the service names (value: the compose project).
pub const LABEL_RESOLVER: &str = "user.incus-compose.resolver";

/// Incus project config key, `{"member": ["interface", mtu], ...}`: written under the lock by a
/// run that changes something (`engine::converge`), only when every spanning bridge of the
/// project had its tunnel set up on every member then; read by every observation, so that a
/// converged run does not probe every member again (a few requests each).
pub const LINKS_KEY: &str = "user.incus-compose.member-links";
