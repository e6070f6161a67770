//! Which storage pool a project's named volumes and root disks go to.
//!
//! Local pools (`dir`, `zfs`, `btrfs`, `lvm`, ...) exist once per cluster member: a volume
//! made on one member is not visible on another, so replicas on several members each get a
//! copy of their own, and an instance cannot move when its member fails. Shared pools
//! (drivers in [`SHARED_DRIVERS`]) hold one copy every member sees. The choice:
//!
//! 1. `x-incus: {pool: NAME}` at the top of the compose file: named volumes, and the root disk
//!    of every service, go to that pool (it must exist).
//! 2. Otherwise, the `default` profile's root disk pool if it is shared: nothing to add.
//! 3. Otherwise, the first shared pool (name order; pools that can hold instances first): the
//!    named volumes go there, and so do the root disks of the services that mount one (a
//!    `root` disk device; cephfs cannot hold instances, so then only the volumes move).
//! 4. Otherwise, the `default` profile's root disk pool, local: [`super::diff`] warns once
//!    per service whose replicas with volumes land on several members.

use std::collections::BTreeMap;

use ic_compose::Project;
use ic_compose::model::VolumeType;

use super::{PlanError, ServerFacts};

/// Storage drivers whose volumes every cluster member shares.
pub const SHARED_DRIVERS: &[&str] = &["ceph", "cephfs", "lvmcluster", "linstor", "truenas"];

/// Whether a pool of this driver is shared by the cluster members.
pub fn is_shared_driver(driver: &str) -> bool {
    SHARED_DRIVERS.contains(&driver)
}

/// Whether a pool of this driver can hold instance root disks (cephfs holds only custom
/// filesystem volumes).
fn holds_instances(driver: &str) -> bool {
    driver != "cephfs"
}

/// Where a project's storage goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageChoice {
    /// Pool of the named volumes.
    pub volume_pool: String,
    /// Whether that pool is shared by all members (one volume for the cluster, created
    /// without a target).
    pub shared: bool,
    /// Pool for a `root` disk device, when it differs from the `default` profile's.
    pub root_pool: Option<String>,
    /// The root disk goes to `root_pool` for every service (`x-incus.pool`), not only for
    /// services that mount a named volume.
    pub root_for_all: bool,
}

impl StorageChoice {
    /// The `root` disk device for a service, if it needs one.
    pub fn root_device(&self, mounts_volumes: bool) -> Option<BTreeMap<String, String>> {
        let pool = self.root_pool.as_ref()?;
        if !(self.root_for_all || mounts_volumes) {
            return None;
        }
        Some(BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("path".to_string(), "/".to_string()),
            ("pool".to_string(), pool.clone()),
        ]))
    }
}

/// Whether planning `project` reads the storage facts (the `default` profile's root pool, the
/// pools and their drivers, the project's volumes): only when it declares or mounts volumes
/// (named or anonymous: bind mounts and tmpfs need no pool), uses another service's
/// (`volumes_from`), has a read-only root or names a pool (`x-incus: {pool}`). Without them,
/// [`choose`] adds no device and the plan is the same whatever the pools are, so a run may
/// skip reading them (three requests whose answers grow with the instances: `used_by`).
pub fn needs_facts(project: &Project) -> bool {
    !project.volumes.is_empty()
        || project
            .extensions
            .get("x-incus")
            .is_some_and(|x| x.get("pool").is_some())
        || project.services.values().any(|s| {
            s.read_only
                || !s.volumes_from.is_empty()
                || s.volumes
                    .iter()
                    .any(|v| !matches!(v.kind, VolumeType::Bind | VolumeType::Tmpfs))
        })
}

/// Choose the pools (see the module documentation).
pub fn choose(project: &Project, facts: &ServerFacts) -> Result<StorageChoice, PlanError> {
    let default = facts.storage_pool.clone();
    let driver_of = |pool: &str| facts.pools.get(pool).map(String::as_str);
    let explicit = project
        .extensions
        .get("x-incus")
        .and_then(|x| x.get("pool"))
        .and_then(|p| p.as_str());
    if let Some(pool) = explicit {
        // Pools unknown to the facts (none observed) are taken on trust.
        let driver = match driver_of(pool) {
            Some(d) => d,
            None if facts.pools.is_empty() => "",
            None => {
                return Err(PlanError::UnknownPool {
                    pool: pool.to_string(),
                    known: facts.pools.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        };
        return Ok(StorageChoice {
            volume_pool: pool.to_string(),
            shared: is_shared_driver(driver),
            root_pool: (pool != default && holds_instances(driver)).then(|| pool.to_string()),
            root_for_all: true,
        });
    }
    if driver_of(&default).is_some_and(is_shared_driver) {
        return Ok(StorageChoice {
            volume_pool: default,
            shared: true,
            root_pool: None,
            root_for_all: false,
        });
    }
    let mut shared: Vec<(&String, &String)> = facts
        .pools
        .iter()
        .filter(|(_, d)| is_shared_driver(d))
        .collect();
    shared.sort_by_key(|(name, d)| (!holds_instances(d), name.as_str()));
    if let Some((pool, driver)) = shared.first() {
        return Ok(StorageChoice {
            volume_pool: pool.to_string(),
            shared: true,
            root_pool: holds_instances(driver).then(|| pool.to_string()),
            root_for_all: false,
        });
    }
    Ok(StorageChoice {
        volume_pool: default,
        shared: false,
        root_pool: None,
        root_for_all: false,
    })
}
