//! Cluster and cluster members (`/1.0/cluster`, `/1.0/cluster/members`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::Result;

/// `GET /1.0/cluster`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cluster {
    /// This member's name.
    pub server_name: String,
    /// Whether clustering is enabled.
    pub enabled: bool,
}

/// A cluster member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMember {
    /// Member name (e.g. `node2`); the `?target=` value.
    pub server_name: String,
    /// API URL of the member.
    pub url: String,
    /// Whether it holds a database role.
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated`, `Blocked`...
    pub status: String,
    /// Status details.
    pub message: String,
    /// Architecture (e.g. `x86_64`).
    pub architecture: String,
    /// Failure domain (default `default`).
    pub failure_domain: String,
    /// Description.
    pub description: String,
    /// Member configuration: `user.*` labels and `scheduler.instance`.
    pub config: BTreeMap<String, String>,
    /// Roles (`database`, `database-leader`, `event-hub`...).
    pub roles: Vec<String>,
    /// Cluster groups it belongs to.
    pub groups: Vec<String>,
}

impl ClusterMember {
    /// Whether Incus reports it online.
    pub fn is_online(&self) -> bool {
        self.status.eq_ignore_ascii_case("online")
    }

    /// Its `user.*` labels with the prefix removed (`user.storage=ssd` -> `storage=ssd`).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("user.").map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    /// The writable part, for [`Client::update_cluster_member`].
    pub fn writable(&self) -> ClusterMemberPut {
        ClusterMemberPut {
            config: self.config.clone(),
            description: self.description.clone(),
            roles: self.roles.clone(),
            failure_domain: self.failure_domain.clone(),
            groups: self.groups.clone(),
        }
    }
}

/// Writable fields of a cluster member (PUT replaces all, PATCH merges).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMemberPut {
    /// Member configuration (`user.*` labels...).
    pub config: BTreeMap<String, String>,
    /// Description.
    pub description: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Failure domain.
    pub failure_domain: String,
    /// Cluster groups.
    pub groups: Vec<String>,
}

impl Client {
    /// `GET /1.0/cluster`.
    pub async fn cluster(&self) -> Result<Cluster> {
        self.send(Request::get("/1.0/cluster").global()).await
    }

    /// `GET /1.0/cluster/members?recursion=1`.
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>> {
        self.send(
            Request::get("/1.0/cluster/members")
                .query("recursion", "1")
                .global(),
        )
        .await
    }

    /// `GET /1.0/cluster/members/{name}`.
    pub async fn cluster_member(&self, name: &str) -> Result<ClusterMember> {
        self.send(Request::get(api_path(&["cluster", "members", name])).global())
            .await
    }

    /// `PUT /1.0/cluster/members/{name}`: replace the writable fields.
    pub async fn update_cluster_member(&self, name: &str, put: &ClusterMemberPut) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["cluster", "members", name]))
                .global()
                .json(put)?,
        )
        .await
    }

    /// `GET /1.0/cluster/members/{name}` with its ETag.
    pub async fn cluster_member_with_etag(
        &self,
        name: &str,
    ) -> Result<(ClusterMember, Option<String>)> {
        self.send_with_etag(Request::get(api_path(&["cluster", "members", name])).global())
            .await
    }

    /// `PUT /1.0/cluster/members/{name}` only if it still matches `etag` (else HTTP 412).
    pub async fn update_cluster_member_if_match(
        &self,
        name: &str,
        put: &ClusterMemberPut,
        etag: Option<String>,
    ) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["cluster", "members", name]))
                .global()
                .if_match(etag)
                .json(put)?,
        )
        .await
    }

    /// Set (`Some`) or remove (`None`) one `user.*` label of a member, keeping everything
    /// else. `key` is given without the `user.` prefix. Read-modify-write guarded by the
    /// member's ETag, retried when someone else changed the member meanwhile.
    pub async fn set_cluster_member_label(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let full = format!("user.{key}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (member, etag) = self.cluster_member_with_etag(name).await?;
            let mut put = member.writable();
            match value {
                Some(v) => {
                    put.config.insert(full.clone(), v.to_string());
                }
                None => {
                    if put.config.remove(&full).is_none() {
                        return Ok(());
                    }
                }
            }
            match self.update_cluster_member_if_match(name, &put, etag).await {
                Err(e) if e.status() == Some(412) && attempt < 10 => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_parses_with_labels_and_unknown_fields() {
        let m: ClusterMember = serde_json::from_value(serde_json::json!({
            "server_name": "node2", "url": "https://100.64.1.12:8443", "database": true,
            "status": "Online", "message": "Fully operational", "architecture": "x86_64",
            "failure_domain": "rack1", "description": "",
            "config": {"user.storage": "ssd", "scheduler.instance": "all"},
            "roles": ["database"], "groups": ["default"], "future": 1
        }))
        .unwrap();
        assert!(m.is_online());
        assert_eq!(
            m.labels(),
            BTreeMap::from([("storage".to_string(), "ssd".to_string())])
        );
        assert_eq!(m.writable().failure_domain, "rack1");
    }
}
