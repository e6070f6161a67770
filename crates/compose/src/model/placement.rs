//! Placement constraints and spread preferences (`deploy.placement`), with Docker Swarm's
//! semantics (swarmkit `manager/constraint/constraint.go`).
//!
//! A constraint is `key == value` or `key != value`. Keys are case-insensitive except for the
//! label name after `node.labels.` / `engine.labels.`, which is case-sensitive; values compare
//! case-insensitively. A label the member does not have compares as the empty string, so
//! `node.labels.x != y` matches a member without `x`.

use std::fmt;
use std::str::FromStr;

/// What a constraint looks at on a member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintKey {
    /// `node.id`: the Incus member name (members have no separate id).
    NodeId,
    /// `node.hostname`: the Incus member name.
    NodeHostname,
    /// `node.role`: `manager` for members with the `database` role, `worker` otherwise.
    NodeRole,
    /// `node.platform.os`: always `linux` on Incus.
    PlatformOs,
    /// `node.platform.arch`: the member's architecture (`x86_64`, `aarch64`, ...).
    PlatformArch,
    /// `node.labels.<key>`: the member config key `user.<key>`.
    NodeLabel(String),
    /// `engine.labels.<key>`: read from the same source as `node.labels.<key>`.
    EngineLabel(String),
}

impl fmt::Display for ConstraintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintKey::NodeId => f.write_str("node.id"),
            ConstraintKey::NodeHostname => f.write_str("node.hostname"),
            ConstraintKey::NodeRole => f.write_str("node.role"),
            ConstraintKey::PlatformOs => f.write_str("node.platform.os"),
            ConstraintKey::PlatformArch => f.write_str("node.platform.arch"),
            ConstraintKey::NodeLabel(k) => write!(f, "node.labels.{k}"),
            ConstraintKey::EngineLabel(k) => write!(f, "engine.labels.{k}"),
        }
    }
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        })
    }
}

/// One placement constraint, e.g. `node.labels.storage == ssd`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Constraint {
    pub key: ConstraintKey,
    pub op: ConstraintOp,
    pub value: String,
}

impl Constraint {
    /// Whether a member whose value for this key is `actual` satisfies the constraint
    /// (`None` = the member has no such label, compared as the empty string).
    pub fn matches(&self, actual: Option<&str>) -> bool {
        let equal = actual.unwrap_or("").eq_ignore_ascii_case(&self.value);
        match self.op {
            ConstraintOp::Eq => equal,
            ConstraintOp::Ne => !equal,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.key, self.op, self.value)
    }
}

/// Why a constraint string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("constraint {0:?} has no operator: write `key == value` or `key != value`")]
    NoOperator(String),
    #[error("constraint {0:?} has an empty key")]
    EmptyKey(String),
    #[error("constraint {0:?} has an empty value")]
    EmptyValue(String),
    #[error(
        "unknown constraint key {key:?}: use node.id, node.hostname, node.role, node.platform.os, \
         node.platform.arch, node.labels.<key> or engine.labels.<key>"
    )]
    UnknownKey { key: String },
    #[error("node.role must be `manager` or `worker`, not {0:?}")]
    BadRole(String),
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
            (k, ConstraintOp::Eq, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, ConstraintOp::Ne, v)
        } else {
            return Err(ConstraintError::NoOperator(s.to_string()));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(ConstraintError::EmptyKey(s.to_string()));
        }
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(s.to_string()));
        }
        let lower = key.to_ascii_lowercase();
        let key = match lower.as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.role" => {
                if !["manager", "worker"].contains(&value.to_ascii_lowercase().as_str()) {
                    return Err(ConstraintError::BadRole(value.to_string()));
                }
                ConstraintKey::NodeRole
            }
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ if lower.starts_with("node.labels.") && key.len() > "node.labels.".len() => {
                ConstraintKey::NodeLabel(key["node.labels.".len()..].to_string())
            }
            _ if lower.starts_with("engine.labels.") && key.len() > "engine.labels.".len() => {
                ConstraintKey::EngineLabel(key["engine.labels.".len()..].to_string())
            }
            _ => {
                return Err(ConstraintError::UnknownKey {
                    key: key.to_string(),
                });
            }
        };
        Ok(Constraint {
            key,
            op,
            value: value.to_string(),
        })
    }
}

/// What a `spread` preference spreads over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpreadOver {
    /// `node.id`, `node.hostname` or `instanceId`: every member is its own group.
    Member,
    /// `node.labels.<key>` or `engine.labels.<key>`: the values of member label `user.<key>`;
    /// members without it form one group of their own.
    Label(String),
    /// `node.platform.arch`, `node.platform.os`, `node.role`: the member's attribute.
    Attribute(ConstraintKey),
}

/// One `deploy.placement.preferences` entry: `- spread: <descriptor>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpreadPreference {
    pub over: SpreadOver,
    /// The descriptor as written, for messages and `config` output.
    pub descriptor: String,
}

impl FromStr for SpreadPreference {
    type Err = ConstraintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = s.trim();
        let lower = d.to_ascii_lowercase();
        let over = match lower.as_str() {
            "node.id" | "node.hostname" | "instanceid" => SpreadOver::Member,
            "node.platform.arch" => SpreadOver::Attribute(ConstraintKey::PlatformArch),
            "node.platform.os" => SpreadOver::Attribute(ConstraintKey::PlatformOs),
            "node.role" => SpreadOver::Attribute(ConstraintKey::NodeRole),
            _ if lower.starts_with("node.labels.") && d.len() > "node.labels.".len() => {
                SpreadOver::Label(d["node.labels.".len()..].to_string())
            }
            _ if lower.starts_with("engine.labels.") && d.len() > "engine.labels.".len() => {
                SpreadOver::Label(d["engine.labels.".len()..].to_string())
            }
            _ => return Err(ConstraintError::UnknownKey { key: d.to_string() }),
        };
        Ok(SpreadPreference {
            over,
            descriptor: d.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_equality_and_inequality_with_spaces() {
        let c: Constraint = "node.labels.storage == ssd".parse().unwrap();
        assert_eq!(c.key, ConstraintKey::NodeLabel("storage".into()));
        assert_eq!(c.op, ConstraintOp::Eq);
        assert_eq!(c.value, "ssd");
        let c: Constraint = "node.role!=manager".parse().unwrap();
        assert_eq!(c.key, ConstraintKey::NodeRole);
        assert_eq!(c.op, ConstraintOp::Ne);
    }

    #[test]
    fn keys_are_case_insensitive_but_label_names_keep_their_case() {
        let c: Constraint = "Node.Labels.Zone==A".parse().unwrap();
        assert_eq!(c.key, ConstraintKey::NodeLabel("Zone".into()));
        assert!(c.matches(Some("a")));
    }

    #[test]
    fn missing_label_compares_as_empty() {
        let ne: Constraint = "node.labels.x != y".parse().unwrap();
        assert!(ne.matches(None));
        let eq: Constraint = "node.labels.x == y".parse().unwrap();
        assert!(!eq.matches(None));
    }

    #[test]
    fn rejects_unknown_keys_and_missing_operators() {
        assert!(matches!(
            "node.foo == bar".parse::<Constraint>(),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            "node.hostname = a".parse::<Constraint>(),
            Err(ConstraintError::NoOperator(_))
        ));
        assert!(matches!(
            "node.role == boss".parse::<Constraint>(),
            Err(ConstraintError::BadRole(_))
        ));
    }

    #[test]
    fn spread_instance_id_means_members() {
        let p: SpreadPreference = "instanceId".parse().unwrap();
        assert_eq!(p.over, SpreadOver::Member);
        let p: SpreadPreference = "node.labels.zone".parse().unwrap();
        assert_eq!(p.over, SpreadOver::Label("zone".into()));
    }
}
