//! Images and image aliases (`/1.0/images`, `/1.0/images/aliases`). Alias names may
//! contain `/` (`testapp/v1`); paths encode them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::Result;

/// An image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Image {
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// Original file name.
    pub filename: String,
    /// Size in bytes.
    pub size: i64,
    /// Architecture.
    pub architecture: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Aliases pointing at it.
    pub aliases: Vec<ImageAliasEntry>,
    /// Properties (`os`, `release`, `description`...).
    pub properties: BTreeMap<String, String>,
    /// Public.
    pub public: bool,
    /// Auto-update from its source.
    pub auto_update: bool,
    /// Cached copy of a remote image.
    pub cached: bool,
    /// Creation time.
    pub created_at: String,
    /// Upload time.
    pub uploaded_at: String,
    /// Last use.
    pub last_used_at: String,
    /// Project.
    pub project: String,
    /// Where it was pulled from, for images pulled from a remote (`None` otherwise).
    pub update_source: Option<ImageUpdateSource>,
}

/// Where a pulled image came from (`update_source` of an [`Image`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageUpdateSource {
    /// The alias (for OCI images: the reference on the registry, `testapp:v1`).
    pub alias: String,
    /// The server's URL.
    pub server: String,
    /// `simplestreams`, `incus` or `oci`.
    pub protocol: String,
    /// `container` or `virtual-machine`.
    pub image_type: String,
}

/// An alias as listed inside an [`Image`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAliasEntry {
    /// Alias name.
    pub name: String,
    /// Description.
    pub description: String,
}

/// An image alias (`/1.0/images/aliases/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageAlias {
    /// Alias name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Target image fingerprint.
    pub target: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Client {
    /// `GET /1.0/images?recursion=1`.
    pub async fn images(&self) -> Result<Vec<Image>> {
        self.send(Request::get("/1.0/images").query("recursion", "1"))
            .await
    }

    /// `GET /1.0/images/{fingerprint}`.
    pub async fn image(&self, fingerprint: &str) -> Result<Image> {
        self.send(Request::get(api_path(&["images", fingerprint])))
            .await
    }

    /// `GET /1.0/images/aliases?recursion=1`.
    pub async fn image_aliases(&self) -> Result<Vec<ImageAlias>> {
        self.send(Request::get("/1.0/images/aliases").query("recursion", "1"))
            .await
    }

    /// `GET /1.0/images/aliases/{name}`.
    pub async fn image_alias(&self, name: &str) -> Result<ImageAlias> {
        self.send(Request::get(api_path(&["images", "aliases", name])))
            .await
    }
}
