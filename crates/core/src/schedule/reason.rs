//! Why a member cannot take a replica, why an existing replica is removed, and the
//! "cannot place" error. Every text here ends up in front of the user.

use std::fmt;
use std::sync::Arc;

use ic_compose::model::placement::Constraint;

use super::HostPort;

/// Why one member cannot take (another) replica of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The member is not online.
    Offline,
    /// The member is evacuated (`incus cluster evacuate`).
    Evacuated,
    /// The member is being drained (`incus-compose node drain`).
    Draining,
    /// The member has `scheduler.instance=manual`: it keeps what it has but gets nothing new.
    Manual,
    /// A placement constraint does not hold on this member.
    Constraint(Constraint),
    /// The member already holds `max_replicas_per_node` replicas of the service.
    MaxReplicas(u32),
    /// The service publishes this fixed host port, and a replica on the member already uses it.
    HostPort(HostPort),
    /// Not enough CPU left for `reservations.cpus` (both in thousandths of a CPU).
    Cpu { needed: u64, free: u64 },
    /// Not enough memory left for `reservations.memory` (bytes).
    Memory { needed: u64, free: u64 },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Offline => f.write_str("offline"),
            Rejection::Evacuated => f.write_str("evacuated"),
            Rejection::Draining => f.write_str("being drained"),
            Rejection::Manual => f.write_str("scheduler.instance=manual"),
            Rejection::Constraint(c) => write!(f, "{c} not satisfied"),
            Rejection::MaxReplicas(n) => write!(f, "max_replicas_per_node ({n}) reached"),
            Rejection::HostPort(p) => write!(f, "host port {p} already used by another replica"),
            Rejection::Cpu { needed, free } => write!(
                f,
                "needs {} {} reserved, {} free",
                Millicpus(*needed),
                if *needed == 1000 { "CPU" } else { "CPUs" },
                Millicpus(*free)
            ),
            Rejection::Memory { needed, free } => write!(
                f,
                "needs {} memory reserved, {} free",
                Bytes(*needed),
                Bytes(*free)
            ),
        }
    }
}

/// A member and why it was rejected; displays as `node2: node.labels.storage == ssd not satisfied`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRejection {
    pub member: String,
    pub reason: Rejection,
}

impl fmt::Display for MemberRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.member, self.reason)
    }
}

/// Why a slot is pending: every member that could not take it, with its reason, in member name
/// order. Shared between the pending slots of one service. Displays one member per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReason(pub Arc<[MemberRejection]>);

impl PendingReason {
    pub fn members(&self) -> &[MemberRejection] {
        &self.0
    }

    /// The reason given for one member, if it was rejected.
    pub fn for_member(&self, member: &str) -> Option<&Rejection> {
        self.0
            .iter()
            .find(|r| r.member == member)
            .map(|r| &r.reason)
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no cluster members");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Why an existing replica is to be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalReason {
    /// `deploy.replicas` went down.
    ScaledDown,
    /// Its member is no longer in the cluster.
    MemberGone,
    /// Its member (for global mode: the member the slot belongs to) no longer qualifies, and
    /// the replica could not be moved elsewhere.
    NotEligible(Rejection),
    /// Another existing replica has the same slot.
    Duplicate,
    /// `deploy.mode` changed between `replicated` and `global`.
    ModeChanged,
}

impl fmt::Display for RemovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemovalReason::ScaledDown => f.write_str("scaled down"),
            RemovalReason::MemberGone => f.write_str("member left the cluster"),
            RemovalReason::NotEligible(r) => write!(f, "member no longer qualifies: {r}"),
            RemovalReason::Duplicate => f.write_str("duplicate of another replica's slot"),
            RemovalReason::ModeChanged => f.write_str("deploy.mode changed"),
        }
    }
}

/// A service none of whose replicas can be placed anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "service `{service}` cannot be placed on any cluster member:\n{}\n\
     Relax its deploy.placement constraints, max_replicas_per_node or resource reservations, \
     or change the members (e.g. `incus cluster set <member> user.<label>=<value>`)",
    indent(&self.reasons)
)]
pub struct Unsatisfiable {
    pub service: String,
    pub reasons: PendingReason,
}

fn indent(reasons: &PendingReason) -> String {
    reasons
        .to_string()
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Thousandths of a CPU, displayed as a decimal number of CPUs (`1500` -> `1.5`).
struct Millicpus(u64);

impl fmt::Display for Millicpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// Bytes in the largest binary unit that divides them exactly (`536870912` -> `512MiB`).
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_read_like_the_issue_examples() {
        let c: Constraint = "node.labels.storage == ssd".parse().unwrap();
        let cases = [
            (
                Rejection::Constraint(c),
                "node2: node.labels.storage == ssd not satisfied",
            ),
            (
                Rejection::MaxReplicas(1),
                "node2: max_replicas_per_node (1) reached",
            ),
            (Rejection::Offline, "node2: offline"),
            (Rejection::Evacuated, "node2: evacuated"),
            (Rejection::Manual, "node2: scheduler.instance=manual"),
            (
                Rejection::Cpu {
                    needed: 2000,
                    free: 1500,
                },
                "node2: needs 2 CPUs reserved, 1.5 free",
            ),
            (
                Rejection::Cpu {
                    needed: 250,
                    free: 0,
                },
                "node2: needs 0.25 CPUs reserved, 0 free",
            ),
            (
                Rejection::Memory {
                    needed: 512 << 20,
                    free: (1 << 20) + 1,
                },
                "node2: needs 512MiB memory reserved, 1048577B free",
            ),
            (
                Rejection::HostPort(HostPort::tcp(8080)),
                "node2: host port 8080 already used by another replica",
            ),
            (
                Rejection::HostPort(HostPort::udp(53)),
                "node2: host port 53/udp already used by another replica",
            ),
        ];
        for (reason, text) in cases {
            let r = MemberRejection {
                member: "node2".into(),
                reason,
            };
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn unsatisfiable_error_lists_every_member_on_its_own_line() {
        let err = Unsatisfiable {
            service: "db".into(),
            reasons: PendingReason(Arc::from(vec![
                MemberRejection {
                    member: "node1".into(),
                    reason: Rejection::Offline,
                },
                MemberRejection {
                    member: "node2".into(),
                    reason: Rejection::Evacuated,
                },
            ])),
        };
        let text = err.to_string();
        assert!(text.starts_with("service `db` cannot be placed on any cluster member:\n"));
        assert!(text.contains("\n  node1: offline\n  node2: evacuated\n"));
    }
}
