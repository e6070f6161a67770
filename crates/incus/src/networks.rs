//! Networks (`/1.0/networks`). On a cluster a managed network is created in two steps:
//! once per member with `?target=` (pending, member-specific config only), then once
//! without target with the global config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::Result;

/// A network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// Name.
    pub name: String,
    /// `bridge`, `macvlan`, `ovn`, `physical`...
    #[serde(rename = "type")]
    pub kind: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
    /// Whether Incus manages it.
    pub managed: bool,
    /// `Created`, `Pending`, `Errored`...
    pub status: String,
    /// Members it exists on.
    pub locations: Vec<String>,
    /// Users (instances, profiles) by URL.
    pub used_by: Vec<String>,
    /// Project.
    pub project: String,
}

/// `POST /1.0/networks` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworksPost {
    /// Name.
    pub name: String,
    /// Type (`bridge`...); empty for the server default.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
}

/// Writable fields of a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkPut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
}

/// Network config keys Incus keeps per member (`NodeSpecificNetworkConfig` and
/// `tunnel.NAME.interface|local` in Incus's `db/networks.go`).
pub fn is_member_specific_key(key: &str) -> bool {
    const KEYS: [&str; 4] = [
        "bgp.ipv4.nexthop",
        "bgp.ipv6.nexthop",
        "bridge.external_interfaces",
        "parent",
    ];
    if KEYS.contains(&key) {
        return true;
    }
    key.strip_prefix("tunnel.")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(name, field)| {
            !name.is_empty() && !name.contains('.') && matches!(field, "interface" | "local")
        })
}

/// Whether a cluster network's global step already ran (Incus's `networkPartiallyCreated`):
/// it is `Errored`, or it has a config key that is not member specific.
pub fn partially_created(n: &Network) -> bool {
    n.status == "Errored" || n.config.keys().any(|k| !is_member_specific_key(k))
}

/// `GET /1.0/networks/{name}/state`: what the host interface looks like (only the fields
/// incus-compose reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkState {
    /// Addresses on the interface.
    pub addresses: Vec<NetworkAddress>,
    /// MTU.
    pub mtu: u32,
    /// `up` or `down`.
    pub state: String,
}

/// One address of a [`NetworkState`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAddress {
    /// The address.
    pub address: String,
    /// `inet` or `inet6`.
    pub family: String,
}

/// A network ACL (`/1.0/network-acls`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAcl {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Configuration (`user.*` keys).
    pub config: BTreeMap<String, String>,
    /// Rules for traffic leaving the instances.
    pub egress: Vec<NetworkAclRule>,
    /// Rules for traffic reaching the instances.
    pub ingress: Vec<NetworkAclRule>,
    /// Users (networks, instances) by URL.
    #[serde(skip_serializing)]
    pub used_by: Vec<String>,
}

/// One rule of a [`NetworkAcl`] (empty fields match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkAclRule {
    /// `allow`, `reject` or `drop`.
    pub action: String,
    /// Source addresses (CIDR, ranges, comma-separated).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Destination addresses (CIDR, ranges, comma-separated).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// `tcp`, `udp`, `icmp4`...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Destination ports (with `tcp`/`udp`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_port: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `enabled`, `disabled` or `logged`.
    pub state: String,
}

impl Client {
    /// `GET /1.0/networks?target=member`: the names of one member's networks, host interfaces
    /// included (Incus 6.0 leaves most host interfaces out of the `recursion=1` form).
    pub async fn network_names_on(&self, member: &str) -> Result<Vec<String>> {
        let urls: Vec<String> = self
            .send(Request::get("/1.0/networks").target(Some(member)))
            .await?;
        Ok(urls
            .iter()
            .filter_map(|u| u.rsplit('/').next())
            .map(str::to_string)
            .collect())
    }

    /// `GET /1.0/networks/{name}/state[?target=member]`.
    pub async fn network_state(&self, name: &str, target: Option<&str>) -> Result<NetworkState> {
        self.send(Request::get(api_path(&["networks", name, "state"])).target(target))
            .await
    }

    /// `GET /1.0/network-acls/{name}`.
    pub async fn network_acl(&self, name: &str) -> Result<NetworkAcl> {
        self.send(Request::get(api_path(&["network-acls", name])))
            .await
    }

    /// `POST /1.0/network-acls` (no rules).
    pub async fn create_network_acl(&self, acl: &NetworkAcl) -> Result<()> {
        self.send_unit(Request::post("/1.0/network-acls").json(acl)?)
            .await
    }

    /// `PUT /1.0/network-acls/{name}` (description, config and rules).
    pub async fn update_network_acl(&self, acl: &NetworkAcl) -> Result<()> {
        #[derive(Serialize)]
        struct Put<'a> {
            description: &'a str,
            config: &'a BTreeMap<String, String>,
            egress: &'a [NetworkAclRule],
            ingress: &'a [NetworkAclRule],
        }
        self.send_unit(
            Request::put(api_path(&["network-acls", &acl.name])).json(&Put {
                description: &acl.description,
                config: &acl.config,
                egress: &acl.egress,
                ingress: &acl.ingress,
            })?,
        )
        .await
    }

    /// `DELETE /1.0/network-acls/{name}`.
    pub async fn delete_network_acl(&self, name: &str) -> Result<()> {
        self.send_unit(Request::delete(api_path(&["network-acls", name])))
            .await
    }

    /// `GET /1.0/networks?recursion=1`.
    pub async fn networks(&self) -> Result<Vec<Network>> {
        self.send(Request::get("/1.0/networks").query("recursion", "1"))
            .await
    }

    /// `GET /1.0/networks/{name}[?target=member]`.
    pub async fn network(&self, name: &str, target: Option<&str>) -> Result<Network> {
        self.send(Request::get(api_path(&["networks", name])).target(target))
            .await
    }

    /// `POST /1.0/networks[?target=member]`.
    pub async fn create_network(&self, req: &NetworksPost, target: Option<&str>) -> Result<()> {
        self.send_unit(Request::post("/1.0/networks").target(target).json(req)?)
            .await
    }

    /// Create a managed network on every member of a cluster (pending per member, then
    /// global), or directly on a standalone server. `member_config`: config keys per member.
    pub async fn create_network_everywhere(
        &self,
        req: &NetworksPost,
        members: &[String],
        member_config: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<()> {
        if members.is_empty() {
            return self.create_network(req, None).await;
        }
        // A creation that failed (or was killed) half way is finished rather than started
        // again: members it is already defined on are skipped (a member that answers 409
        // "already defined" too), then the global step runs. Once that step has written the
        // global config (the network is `Errored`, or `Pending` with global keys), Incus
        // refuses any config in a new global request ("Network already partially created")
        // and retries the creation on every member with the config it has.
        let existing = match self.network(&req.name, None).await {
            Ok(n) => Some(n),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let done: Vec<String> = match &existing {
            Some(n) if n.status == "Errored" => members.to_vec(),
            Some(n) if n.status == "Pending" => n.locations.clone(),
            _ => Vec::new(),
        };
        for m in members.iter().filter(|m| !done.contains(m)) {
            let pending = NetworksPost {
                name: req.name.clone(),
                kind: req.kind.clone(),
                description: String::new(),
                config: member_config.get(m).cloned().unwrap_or_default(),
            };
            match self.create_network(&pending, Some(m)).await {
                Err(e) if e.status() == Some(409) => {}
                other => other?,
            }
        }
        match existing {
            Some(n) if partially_created(&n) => {
                let retry = NetworksPost {
                    config: BTreeMap::new(),
                    ..req.clone()
                };
                self.create_network(&retry, None).await
            }
            _ => self.create_network(req, None).await,
        }
    }

    /// `PUT /1.0/networks/{name}[?target=member]`.
    pub async fn update_network(
        &self,
        name: &str,
        put: &NetworkPut,
        target: Option<&str>,
    ) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["networks", name]))
                .target(target)
                .json(put)?,
        )
        .await
    }

    /// `DELETE /1.0/networks/{name}`.
    pub async fn delete_network(&self, name: &str) -> Result<()> {
        self.send_unit(Request::delete(api_path(&["networks", name])))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(status: &str, keys: &[&str]) -> Network {
        Network {
            status: status.into(),
            config: keys.iter().map(|k| (k.to_string(), "x".into())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_network_is_partially_created_once_its_global_step_wrote_config_or_failed() {
        // Killed during the per-member steps: only member-specific keys, if any.
        assert!(!partially_created(&net("Pending", &[])));
        assert!(!partially_created(&net(
            "Pending",
            &["parent", "tunnel.t1.interface"]
        )));
        // The global step ran: it writes the global keys and marks it errored until done.
        assert!(partially_created(&net("Errored", &[])));
        assert!(partially_created(&net("Pending", &["ipv4.address"])));
        assert!(partially_created(&net("Pending", &["tunnel.t1.id"])));
        assert!(!is_member_specific_key("tunnel..local"));
    }
}
