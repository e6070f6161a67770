//! Names of the Incus objects incus-compose makes.
//!
//! **Instances.** A replica of a replicated service is `<service>-<slot>` (`web-1`, `web-2`,
//! ... where the slot number is the scheduler's); a replica of a global service is
//! `<service>-<member>`; `container_name` replaces the whole name (one replica only). There is
//! no project prefix: a compose project has an Incus project of its own.
//!
//! **Mapping compose names to Incus names.** Compose names may hold `_` and `.`, Incus names
//! only ASCII letters, digits and `-`. [`incus_name`] maps `_` and `.` to `-` and keeps
//! everything else; the result must be at most 63 characters, must not start with a digit or
//! `-`, and must not end with `-`, otherwise planning fails and names the compose name. Two
//! compose names that map to the same Incus name (`my_app` and `my.app`) are rejected too
//! ([`super::PlanError::NameCollision`]).
//!
//! **Networks.** Incus network names are Linux interface names: at most 15 characters. A
//! compose network `<key>` of Incus project `<p>` becomes `ic<h>-<k>`, where `<h>` is the
//! first 5 hex digits of sha256(`<p>/<key>`) and `<k>` the mapped key cut to 7 characters
//! (`ic3f9a1-default`): unique per project and network, recognisable, never over 15. A network
//! spanning a cluster keeps 5 characters of the key (`ic3f9a1-defau`), so that its tunnel
//! interface `<name>-v` fits in 15 too ([`span_network_name`]).
//!
//! **Volumes.** A named volume keeps the compose name (`<project>_<key>` unless `name:` says
//! otherwise), as a custom volume of the storage pool in the project's Incus project; on a
//! cluster with a local pool each member that runs a replica using it gets its own volume of
//! that name (`?target=<member>`).

use sha2::{Digest, Sha256};

/// Longest Incus instance name.
pub const MAX_INSTANCE_NAME: usize = 63;
/// Longest Incus network name (a Linux interface name).
pub const MAX_NETWORK_NAME: usize = 15;

/// Why a compose name cannot become an Incus name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong(usize),
    BadStart(char),
    EndsWithDash,
    BadChar(char),
}

impl std::fmt::Display for NameProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameProblem::Empty => f.write_str("it is empty"),
            NameProblem::TooLong(n) => write!(
                f,
                "it is {n} characters long, Incus allows at most {MAX_INSTANCE_NAME}"
            ),
            NameProblem::BadStart(c) => {
                write!(
                    f,
                    "it starts with {c:?}; Incus names must start with a letter"
                )
            }
            NameProblem::EndsWithDash => f.write_str("it ends with '-'"),
            NameProblem::BadChar(c) => write!(
                f,
                "it contains {c:?}; Incus names hold only letters, digits and '-'"
            ),
        }
    }
}

/// Maps `_` and `.` to `-`; everything else is kept.
pub fn map_compose_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '_' || c == '.' { '-' } else { c })
        .collect()
}

/// Checks that `name` is a valid Incus instance name.
pub fn check_incus_name(name: &str) -> Result<(), NameProblem> {
    let Some(first) = name.chars().next() else {
        return Err(NameProblem::Empty);
    };
    if name.len() > MAX_INSTANCE_NAME {
        return Err(NameProblem::TooLong(name.len()));
    }
    if first.is_ascii_digit() || first == '-' {
        return Err(NameProblem::BadStart(first));
    }
    if name.ends_with('-') {
        return Err(NameProblem::EndsWithDash);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(NameProblem::BadChar(c));
    }
    Ok(())
}

/// The Incus name of a compose name (see the module documentation).
pub fn incus_name(compose: &str) -> Result<String, NameProblem> {
    let mapped = map_compose_name(compose);
    check_incus_name(&mapped)?;
    Ok(mapped)
}

/// Name of replica `slot` (a number or a member name) of `service` (already mapped).
pub fn instance_name(service: &str, slot: &str) -> String {
    format!("{service}-{}", map_compose_name(slot))
}

/// Incus name of compose network `key` in Incus project `project` (see the module doc).
pub fn network_name(project: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{project}/{key}").as_bytes());
    let h: String = hex(&digest).chars().take(5).collect();
    let k: String = map_compose_name(key)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(7)
        .collect();
    let k = k.trim_end_matches('-');
    if k.is_empty() {
        format!("ic{h}")
    } else {
        format!("ic{h}-{k}")
    }
}

/// Incus name of compose network `key` when it spans the cluster: as [`network_name`] with
/// the key cut to 5 characters, so that the tunnel interface `<name>-v` fits in 15.
pub fn span_network_name(project: &str, key: &str) -> String {
    let full = network_name(project, key);
    let cut: String = full.chars().take(MAX_NETWORK_NAME - 2).collect();
    cut.trim_end_matches('-').to_string()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_and_dots_become_dashes() {
        assert_eq!(incus_name("my_web.app").unwrap(), "my-web-app");
        assert_eq!(incus_name("Web2").unwrap(), "Web2");
    }

    #[test]
    fn names_incus_refuses_are_rejected_with_the_reason() {
        assert_eq!(incus_name("1web"), Err(NameProblem::BadStart('1')));
        assert_eq!(incus_name("_web"), Err(NameProblem::BadStart('-')));
        assert_eq!(incus_name("web_"), Err(NameProblem::EndsWithDash));
        assert_eq!(incus_name(""), Err(NameProblem::Empty));
        assert_eq!(incus_name(&"a".repeat(64)), Err(NameProblem::TooLong(64)));
        assert!(incus_name(&"a".repeat(63)).is_ok());
        assert_eq!(incus_name("wéb"), Err(NameProblem::BadChar('é')));
    }

    #[test]
    fn replicas_are_named_service_dash_slot() {
        assert_eq!(instance_name("web", "3"), "web-3");
        assert_eq!(instance_name("agent", "node_2"), "agent-node-2");
    }

    #[test]
    fn network_names_fit_in_fifteen_characters_and_differ_per_project() {
        let a = network_name("shop", "default");
        let b = network_name("blog", "default");
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("ic") && a.ends_with("-default"));
        assert_ne!(a, b);
        let long = network_name("shop", "a_very_long_network_name");
        assert!(long.len() <= MAX_NETWORK_NAME, "{long}");
        assert_eq!(&long[8..], "a-very");
        assert!(!network_name("p", "___").ends_with('-'));
        assert_eq!(network_name("shop", "default"), a, "stable");
    }

    #[test]
    fn spanning_network_names_leave_room_for_the_tunnel_interface() {
        let a = span_network_name("shop", "default");
        assert_eq!(a.len(), 13, "{a}");
        assert_eq!(&a[..8], &network_name("shop", "default")[..8]);
        assert!(a.ends_with("-defau"));
        assert!(!span_network_name("shop", "ab-c-ef").ends_with('-'));
        assert!(span_network_name("shop", "x").len() <= 13);
    }
}
