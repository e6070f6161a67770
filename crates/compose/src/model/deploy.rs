//! The `deploy` section, fully typed.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use super::placement::{Constraint, SpreadPreference};
use super::units::{ByteSize, Duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    #[default]
    Replicated,
    Global,
    /// Recognised; not supported yet by incus-compose (a warning says so at load time).
    ReplicatedJob,
    /// Recognised; not supported yet by incus-compose (a warning says so at load time).
    GlobalJob,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Deploy {
    pub mode: DeployMode,
    /// None = not given (1 for replicated services).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    #[serde(skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Placement {
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_display_list"
    )]
    pub constraints: Vec<Constraint>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "ser_prefs")]
    pub preferences: Vec<SpreadPreference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u64>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
            && self.preferences.is_empty()
            && self.max_replicas_per_node.is_none()
    }
}

fn ser_display_list<S: Serializer>(v: &[Constraint], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| c.to_string()))
}

fn ser_prefs<S: Serializer>(v: &[SpreadPreference], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Spread<'a> {
        spread: &'a str,
    }
    s.collect_seq(v.iter().map(|p| Spread {
        spread: &p.descriptor,
    }))
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<Reservations>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.limits.is_none() && self.reservations.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Reservations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub generic_resources: Vec<GenericResource>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRequest>,
}

/// `discrete_resource_spec: {kind, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenericResource {
    pub kind: String,
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DeviceRequest {
    pub capabilities: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// None = not given; Some(-1) = `all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Continue,
    Pause,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// `update_config` and `rollback_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct UpdateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
}
