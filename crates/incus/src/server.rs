//! Server information (`GET /1.0`) and capability detection from `api_extensions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request};
use crate::error::{Error, Result};

/// API extensions later features check for.
pub mod extensions {
    /// OCI application containers (Incus 6.3+).
    pub const INSTANCE_OCI: &str = "instance_oci";
    /// `boot.autorestart` on instances.
    pub const INSTANCE_AUTO_RESTART: &str = "instance_auto_restart";
    /// Clustering.
    pub const CLUSTERING: &str = "clustering";
    /// Cluster member failure domains.
    pub const CLUSTERING_FAILURE_DOMAINS: &str = "clustering_failure_domains";
    /// Cluster member groups.
    pub const CLUSTERING_GROUPS: &str = "clustering_groups";
    /// Projects.
    pub const PROJECTS: &str = "projects";
}

/// `GET /1.0`: the server, its API extensions and environment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// API extensions the server supports.
    pub api_extensions: Vec<String>,
    /// `stable`, `development`...
    pub api_status: String,
    /// Always `1.0`.
    pub api_version: String,
    /// `trusted` or `untrusted`.
    pub auth: String,
    /// Authentication methods offered.
    pub auth_methods: Vec<String>,
    /// Whether the server is public.
    pub public: bool,
    /// Server configuration (values are mostly strings).
    pub config: BTreeMap<String, serde_json::Value>,
    /// The server's environment (only for trusted clients).
    pub environment: ServerEnvironment,
}

/// The `environment` part of [`ServerInfo`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerEnvironment {
    /// Addresses the API listens on.
    pub addresses: Vec<String>,
    /// Architectures instances can use.
    pub architectures: Vec<String>,
    /// Server certificate (PEM).
    pub certificate: String,
    /// Its fingerprint.
    pub certificate_fingerprint: String,
    /// Instance drivers (`lxc`, `qemu`, `lxc | qemu`).
    pub driver: String,
    /// Their versions.
    pub driver_version: String,
    /// Kernel name.
    pub kernel: String,
    /// Kernel architecture.
    pub kernel_architecture: String,
    /// Kernel version.
    pub kernel_version: String,
    /// OS name.
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Project the request was made in.
    pub project: String,
    /// `incus`.
    pub server: String,
    /// Whether the server is part of a cluster.
    pub server_clustered: bool,
    /// `full-mesh`, `hub-server`, `hub-client`.
    pub server_event_mode: String,
    /// This member's name.
    pub server_name: String,
    /// Daemon PID.
    pub server_pid: i64,
    /// Incus version, e.g. `6.0.4`.
    pub server_version: String,
    /// Storage drivers in use.
    pub storage: String,
    /// Their versions.
    pub storage_version: String,
}

impl ServerInfo {
    /// Whether the server has API extension `name`.
    pub fn has_extension(&self, name: &str) -> bool {
        self.api_extensions.iter().any(|e| e == name)
    }

    /// Whether the server is a cluster member.
    pub fn is_clustered(&self) -> bool {
        self.environment.server_clustered
    }

    /// Incus version string (e.g. `6.0.4`).
    pub fn server_version(&self) -> &str {
        &self.environment.server_version
    }

    /// Whether this client is trusted by the server.
    pub fn is_trusted(&self) -> bool {
        self.auth == "trusted"
    }

    /// Fail with a clear message unless the server has `extension`; `feature` names
    /// what needs it.
    pub fn require_extension(&self, extension: &str, feature: &str) -> Result<()> {
        if self.has_extension(extension) {
            return Ok(());
        }
        Err(Error::MissingExtension {
            feature: feature.to_string(),
            extension: extension.to_string(),
            server: if self.environment.server_name.is_empty() {
                "(unnamed)".into()
            } else {
                self.environment.server_name.clone()
            },
            version: if self.environment.server_version.is_empty() {
                "unknown".into()
            } else {
                self.environment.server_version.clone()
            },
        })
    }
}

impl Client {
    /// `GET /1.0` (not cached; see [`Client::server_info`] for the cached copy).
    pub async fn server(&self) -> Result<ServerInfo> {
        self.send(Request::get("/1.0")).await
    }

    /// `GET /1.0?target=MEMBER`: that cluster member's own answer (an error when it does not
    /// answer the member asked).
    pub async fn server_on(&self, member: &str) -> Result<ServerInfo> {
        self.send(Request::get("/1.0").target(Some(member))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ServerInfo {
        serde_json::from_value(serde_json::json!({
            "api_extensions": ["clustering", "instance_auto_restart"],
            "api_version": "1.0",
            "auth": "trusted",
            "config": {"core.https_address": "100.64.1.11:8443", "cluster.offline_threshold": 11},
            "environment": {"server_clustered": true, "server_name": "node1", "server_version": "6.0.4", "new_field": 1},
            "something_new": {"x": 1}
        }))
        .unwrap()
    }

    #[test]
    fn capabilities_come_from_api_extensions() {
        let i = info();
        assert!(i.has_extension(extensions::CLUSTERING));
        assert!(i.has_extension(extensions::INSTANCE_AUTO_RESTART));
        assert!(!i.has_extension(extensions::INSTANCE_OCI));
        assert!(i.is_clustered());
        assert!(i.is_trusted());
        assert_eq!(i.server_version(), "6.0.4");
    }

    #[test]
    fn missing_extension_refuses_clearly() {
        let err = info()
            .require_extension(extensions::INSTANCE_OCI, "running OCI images")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "running OCI images needs the Incus API extension \"instance_oci\", which server node1 (Incus 6.0.4) does not have; upgrade Incus or avoid this feature"
        );
        assert!(info().require_extension("clustering", "x").is_ok());
    }
}
