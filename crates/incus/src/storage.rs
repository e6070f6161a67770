//! Storage pools and volumes (`/1.0/storage-pools`). Pools are global; volumes are
//! project-scoped and, on a cluster, local volumes live on one member (`?target=`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::Result;

/// A storage pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoragePool {
    /// Name.
    pub name: String,
    /// Driver: `dir`, `zfs`, `btrfs`, `lvm`, `ceph`, `cephfs`...
    pub driver: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// `Created`, `Pending`...
    pub status: String,
    /// Members it exists on.
    pub locations: Vec<String>,
    /// Users by URL.
    pub used_by: Vec<String>,
}

impl StoragePool {
    /// Whether volumes in this pool are shared by all cluster members (remote drivers).
    pub fn is_shared(&self) -> bool {
        matches!(
            self.driver.as_str(),
            "ceph" | "cephfs" | "cephobject" | "lvmcluster"
        )
    }
}

/// A storage volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolume {
    /// Name.
    pub name: String,
    /// `custom`, `container`, `image`, `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// `filesystem` or `block`.
    pub content_type: String,
    /// Member it lives on (local pools on a cluster).
    pub location: String,
    /// Project.
    pub project: String,
    /// Users by URL.
    pub used_by: Vec<String>,
    /// Creation time.
    pub created_at: String,
}

/// `POST /1.0/storage-pools/{pool}/volumes` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolumesPost {
    /// Name.
    pub name: String,
    /// Volume type (`custom`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    pub description: String,
    /// Configuration (`size`...).
    pub config: BTreeMap<String, String>,
    /// `filesystem` (default) or `block`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub content_type: String,
}

impl StorageVolumesPost {
    /// A custom filesystem volume named `name`.
    pub fn custom(name: impl Into<String>) -> Self {
        StorageVolumesPost {
            name: name.into(),
            kind: "custom".into(),
            ..Default::default()
        }
    }
}

/// Writable fields of a volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageVolumePut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
}

impl Client {
    /// `GET /1.0/storage-pools?recursion=1`.
    pub async fn storage_pools(&self) -> Result<Vec<StoragePool>> {
        self.send(
            Request::get("/1.0/storage-pools")
                .query("recursion", "1")
                .global(),
        )
        .await
    }

    /// `GET /1.0/storage-pools/{name}`.
    pub async fn storage_pool(&self, name: &str) -> Result<StoragePool> {
        self.send(Request::get(api_path(&["storage-pools", name])).global())
            .await
    }

    /// `GET /1.0/storage-pools/{pool}/volumes?recursion=1` (all types).
    pub async fn storage_volumes(&self, pool: &str) -> Result<Vec<StorageVolume>> {
        self.send(
            Request::get(api_path(&["storage-pools", pool, "volumes"])).query("recursion", "1"),
        )
        .await
    }

    /// `GET /1.0/storage-pools/{pool}/volumes/{type}/{name}[?target=]`.
    pub async fn storage_volume(
        &self,
        pool: &str,
        kind: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<StorageVolume> {
        self.send(
            Request::get(api_path(&["storage-pools", pool, "volumes", kind, name])).target(target),
        )
        .await
    }

    /// `POST /1.0/storage-pools/{pool}/volumes[?target=]` (waits if Incus runs it in the background).
    pub async fn create_storage_volume(
        &self,
        pool: &str,
        req: &StorageVolumesPost,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::post(api_path(&["storage-pools", pool, "volumes"]))
                .target(target)
                .json(req)?,
        )
        .await
    }

    /// `PUT /1.0/storage-pools/{pool}/volumes/{type}/{name}[?target=]`.
    pub async fn update_storage_volume(
        &self,
        pool: &str,
        kind: &str,
        name: &str,
        put: &StorageVolumePut,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["storage-pools", pool, "volumes", kind, name]))
                .target(target)
                .json(put)?,
        )
        .await
    }

    /// `DELETE /1.0/storage-pools/{pool}/volumes/{type}/{name}[?target=]`.
    pub async fn delete_storage_volume(
        &self,
        pool: &str,
        kind: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::delete(api_path(&["storage-pools", pool, "volumes", kind, name]))
                .target(target),
        )
        .await
    }

    /// `POST /1.0/storage-pools/{pool}/volumes/custom/{name}/snapshots[?target=]`.
    pub async fn create_volume_snapshot(
        &self,
        pool: &str,
        name: &str,
        snapshot: &str,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::post(api_path(&[
                "storage-pools",
                pool,
                "volumes",
                "custom",
                name,
                "snapshots",
            ]))
            .target(target)
            .json(&serde_json::json!({ "name": snapshot }))?,
        )
        .await
    }

    /// Names of the snapshots of custom volume `name` (`GET .../snapshots`).
    pub async fn volume_snapshots(
        &self,
        pool: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<Vec<String>> {
        let urls: Vec<String> = self
            .send(
                Request::get(api_path(&[
                    "storage-pools",
                    pool,
                    "volumes",
                    "custom",
                    name,
                    "snapshots",
                ]))
                .target(target),
            )
            .await?;
        Ok(urls
            .iter()
            .filter_map(|u| u.split('?').next()?.rsplit('/').next())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect())
    }

    /// `DELETE /1.0/storage-pools/{pool}/volumes/custom/{name}/snapshots/{snapshot}`.
    pub async fn delete_volume_snapshot(
        &self,
        pool: &str,
        name: &str,
        snapshot: &str,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::delete(api_path(&[
                "storage-pools",
                pool,
                "volumes",
                "custom",
                name,
                "snapshots",
                snapshot,
            ]))
            .target(target),
        )
        .await
    }

    /// Restores custom volume `name` from its snapshot (`PUT` with `restore`); the instances
    /// using it should be stopped.
    pub async fn restore_volume_snapshot(
        &self,
        pool: &str,
        name: &str,
        snapshot: &str,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&[
                "storage-pools",
                pool,
                "volumes",
                "custom",
                name,
            ]))
            .target(target)
            .json(&serde_json::json!({ "restore": snapshot }))?,
        )
        .await
    }
}
