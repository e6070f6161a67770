//! Docker images on Incus: image references resolved as Docker resolves them, the OCI remote
//! that reaches their registry, and the `oci.*` instance keys a service maps to.
//!
//! **References.** `name`, `name:tag`, `name@sha256:<hex>`, `host[:port]/ns/name:tag`: the
//! first path component is a registry when it contains `.` or `:`, is `localhost`, or has an
//! upper-case letter (Docker's rule); otherwise the registry is the default one (Docker Hub,
//! `docker.io`, or `x-incus.registry`), and on Docker Hub a single name gets `library/`. No
//! tag and no digest means `latest`; a digest wins over a tag.
//!
//! **Remotes.** Incus pulls OCI images itself (`source.protocol = oci`, `source.server =
//! https://<registry>`). incus-compose names the registry by an `oci` remote of the user's
//! incus configuration: an existing one with that address, or a new one (named
//! [`remote_name`]) that the engine adds to the configuration before it creates instances.
//!
//! **Process.** `entrypoint` and `command` combine with the image's own as Docker combines
//! them (see [`process_args`]) into `oci.entrypoint`, `working_dir` becomes `oci.cwd`,
//! `user` `oci.uid`/`oci.gid`. The image's environment is kept by Incus; the service's
//! `environment.*` keys override it.

use std::collections::BTreeMap;
use std::fmt;

use ic_compose::model::Service;

use super::{ImageSource, ServerFacts};
use crate::keys::PULL_RECORD_PREFIX;

/// Docker Hub, the registry of references that name none.
pub const DOCKER_HUB: &str = "docker.io";

/// A reference that is not a valid Docker image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reference:?} is not a valid image reference: {problem}")]
pub struct RefError {
    pub reference: String,
    pub problem: String,
}

/// A mapping that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciError {
    #[error("service {service:?}: {source}")]
    Reference {
        service: String,
        #[source]
        source: RefError,
    },
    #[error(
        "service {service:?}: `command` without `entrypoint` runs after the image's own entrypoint (as Docker does), and the entrypoint of {image} is not known here; set `entrypoint:` too (e.g. `entrypoint: []` to run the command alone)"
    )]
    UnknownEntrypoint { service: String, image: String },
    #[error(
        "service {service:?}: `entrypoint: []` without `command` leaves nothing to run (Docker refuses it too); set `command:` or drop `entrypoint:`"
    )]
    NothingToRun { service: String },
    #[error(
        "service {service:?}: user {user:?} is not numeric; Incus needs numeric ids for OCI containers (oci.uid/oci.gid): write `user: \"UID[:GID]\"`"
    )]
    UserNotNumeric { service: String, user: String },
    #[error(
        "service {service:?}: its command or entrypoint spans lines, which an OCI container's `oci.entrypoint` (one line of LXC config) cannot hold; put the script in a file of the image, or run it with `sh -c` from a system container image"
    )]
    MultiLineProcess { service: String },
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5443`).
    pub registry: String,
    /// Repository path (`library/nginx`, `ns/app`).
    pub path: String,
    /// Tag, if written (`latest` is used when neither tag nor digest is).
    pub tag: Option<String>,
    /// `algorithm:hex`, if written.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse `reference` as Docker does, with `default_registry` for references naming none
    /// (`None`: Docker Hub).
    pub fn parse(reference: &str, default_registry: Option<&str>) -> Result<ImageRef, RefError> {
        let err = |problem: &str| RefError {
            reference: reference.to_string(),
            problem: problem.to_string(),
        };
        if reference.is_empty() {
            return Err(err("it is empty"));
        }
        if reference.len() > 4096 {
            return Err(err("it is longer than 4096 characters"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(|p| err(&p))?;
                (r, Some(d.to_string()))
            }
            None => (reference, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                check_tag(t).map_err(|p| err(&p))?;
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                check_registry(first).map_err(|p| err(&p))?;
                (first.to_string(), rest.to_string())
            }
            _ => (
                default_registry.unwrap_or(DOCKER_HUB).to_string(),
                name.to_string(),
            ),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        for component in path.split('/') {
            check_component(component).map_err(|p| err(&p))?;
        }
        if registry.len() + 1 + path.len() > 255 {
            return Err(err("its name is longer than 255 characters"));
        }
        Ok(ImageRef {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// The registry's address for an OCI remote (`https://<registry>`).
    pub fn registry_url(&self) -> String {
        format!("https://{}", self.registry)
    }

    /// What Incus pulls from the registry: `path@digest`, else `path:tag` (tag `latest` by
    /// default).
    pub fn remote_alias(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.path),
            (None, Some(t)) => format!("{}:{t}", self.path),
            (None, None) => format!("{}:latest", self.path),
        }
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified reference (`docker.io/library/nginx:latest`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        } else if self.digest.is_none() {
            f.write_str(":latest")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} is not `algorithm:hex`"));
    };
    let alg_ok = !alg.is_empty()
        && alg.starts_with(|c: char| c.is_ascii_alphabetic())
        && alg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '.'));
    if !alg_ok {
        return Err(format!("digest algorithm {alg:?} is not valid"));
    }
    let want = match alg {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = hex.len() >= 32
        && hex.chars().all(|c| c.is_ascii_hexdigit())
        && want.is_none_or(|n| hex.len() == n);
    if !hex_ok {
        return Err(format!(
            "digest {d:?} needs {} hexadecimal digits",
            want.map(|n| n.to_string())
                .unwrap_or_else(|| "32 or more".into())
        ));
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?} must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        ))
    }
}

fn check_registry(r: &str) -> Result<(), String> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (r, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("registry port {p:?} is not a number"));
    }
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if host_ok {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is not a valid host name"))
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_component(c: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "path component {c:?} must be lower-case letters and digits, separated by `.`, `_`, `__` or dashes"
        ))
    };
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return bad();
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: between two alphanumerics.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let sep_ok = matches!(sep, "." | "_" | "__") || sep.chars().all(|ch| ch == '-');
        if start == 0 || i == bytes.len() || !sep_ok {
            return bad();
        }
    }
    Ok(())
}

/// A remote name for `registry` when the user's configuration has none for it:
/// `oci-` followed by the host and port with every other character as `-`
/// (`127.0.0.1:5443` -> `oci-127-0-0-1-5443`, `docker.io` -> `oci-docker-io`).
pub fn remote_name(registry: &str) -> String {
    let mut name = String::from("oci-");
    for c in registry.chars() {
        name.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        });
    }
    name
}

/// `addr` without the `user:password@` a private registry's remote may carry
/// (`https://user:token@registry.example` -> `https://registry.example`). Plans, messages and
/// spec hashes never hold credentials; the engine puts them back when it talks to Incus.
pub fn without_credentials(addr: &str) -> String {
    let (scheme, credentials, rest) = split_credentials(addr);
    match (scheme, credentials) {
        (_, None) => addr.to_string(),
        (Some(s), Some(_)) => format!("{s}://{rest}"),
        (None, Some(_)) => rest.to_string(),
    }
}

/// The `user:password` an address carries (`https://user:token@registry.example`), if any.
pub fn credentials(addr: &str) -> Option<&str> {
    split_credentials(addr).1
}

/// (scheme, `user:password`, the rest from the host on) of an address.
fn split_credentials(addr: &str) -> (Option<&str>, Option<&str>, &str) {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, addr),
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}

/// The text an OCI image is known by: `host[:port]/alias`, from the registry's URL (scheme and
/// credentials left out) and the reference on it (the [`ImageSource::Oci`] display).
pub fn image_key(server: &str, alias: &str) -> String {
    let server = without_credentials(server);
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    format!("{host}/{alias}")
}

/// The config key and value recording that `key` named `fingerprint` when last pulled.
pub fn pull_record(key: &str, fingerprint: &str) -> (String, String) {
    use sha2::{Digest, Sha256};
    let digest = super::naming::hex(&Sha256::digest(key.as_bytes()));
    (
        format!("{PULL_RECORD_PREFIX}{}", &digest[..16]),
        format!("{fingerprint} {key}"),
    )
}

/// The pull records in a project's config: image key -> fingerprint.
pub fn pull_records(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config
        .iter()
        .filter(|(k, _)| k.starts_with(PULL_RECORD_PREFIX))
        .filter_map(|(k, v)| {
            let (fingerprint, key) = v.split_once(' ')?;
            (pull_record(key, fingerprint).0 == *k)
                .then(|| (key.to_string(), fingerprint.to_string()))
        })
        .collect()
}

/// A project config with `pulled` (image key -> fingerprint) recorded and the records of
/// references not in `keep` (those the compose file no longer names) dropped; `None` when
/// nothing changes.
pub fn with_pull_records(
    config: &BTreeMap<String, String>,
    pulled: &BTreeMap<String, String>,
    keep: &std::collections::BTreeSet<String>,
) -> Option<BTreeMap<String, String>> {
    let stale: Vec<String> = pull_records(config)
        .into_keys()
        .filter(|key| !keep.contains(key) && !pulled.contains_key(key))
        .map(|key| pull_record(&key, "").0)
        .collect();
    let mut out = config.clone();
    for k in &stale {
        out.remove(k);
    }
    out.extend(pulled.iter().map(|(key, fp)| pull_record(key, fp)));
    (out != *config).then_some(out)
}

/// What `up` does about an OCI image, by the service's `pull_policy` and the copy the server
/// has (`cached_age`: `Some(age)` when the image store holds one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullDecision {
    /// Ask the registry (a copy the server already has costs a manifest lookup).
    Pull,
    /// Use the server's copy.
    UseCached,
    /// `never` and no copy: an error.
    Refuse,
}

/// See [`PullDecision`]. `build` never gets here (the planner refuses it).
pub fn pull_decision(
    policy: ic_compose::model::PullPolicy,
    cached_age: Option<std::time::Duration>,
) -> PullDecision {
    use ic_compose::model::PullPolicy as P;
    match (policy, cached_age) {
        (P::Always, _) | (P::Missing | P::Every(_), None) => PullDecision::Pull,
        (P::Every(d), Some(age)) if age >= d => PullDecision::Pull,
        (P::Never | P::Build, None) => PullDecision::Refuse,
        _ => PullDecision::UseCached,
    }
}

/// Whether two registry addresses name the same registry: credentials, a trailing `/` and
/// letter case set aside.
pub fn same_registry(a: &str, b: &str) -> bool {
    let norm = |a: &str| {
        without_credentials(a)
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    norm(a) == norm(b)
}

/// A fingerprint's first 12 characters, as Incus prints them.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// The `oci` remote to pull `image` through: the first (by name) of `oci_remotes` (name ->
/// address) whose address is the registry's, else a new one named by [`remote_name`].
/// Returns (name, address, exists).
pub fn choose_remote(
    image: &ImageRef,
    oci_remotes: &BTreeMap<String, String>,
) -> (String, String, bool) {
    let url = image.registry_url();
    for (name, addr) in oci_remotes {
        if same_registry(addr, &url) {
            return (name.clone(), without_credentials(addr), true);
        }
    }
    (remote_name(&image.registry), url, false)
}

/// The default registry of a project: `x-incus.registry` (a host[:port]) or, when it names one
/// of `oci_remotes`, that remote's host.
pub fn default_registry(
    x_incus_registry: Option<&str>,
    oci_remotes: &BTreeMap<String, String>,
) -> Option<String> {
    let r = x_incus_registry?.trim();
    if r.is_empty() {
        return None;
    }
    if let Some(addr) = oci_remotes.get(r) {
        let addr = without_credentials(addr);
        let host = addr
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        return Some(host.to_string());
    }
    Some(
        r.trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string(),
    )
}

/// A Docker reference as an [`ImageSource::Oci`], through an existing `oci` remote of
/// `facts` for its registry or a new one (see [`choose_remote`]).
pub fn resolve(
    service: &str,
    image: &str,
    facts: &ServerFacts,
    default_registry: Option<&str>,
) -> Result<ImageSource, OciError> {
    let r = ImageRef::parse(image, default_registry).map_err(|source| OciError::Reference {
        service: service.to_string(),
        source,
    })?;
    let (remote, server, _) = choose_remote(&r, &facts.oci_remotes);
    Ok(ImageSource::Oci {
        remote,
        server: server.trim_end_matches('/').to_string(),
        alias: r.remote_alias(),
    })
}

/// `command` without `entrypoint`, and the image's entrypoint is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("`command` without `entrypoint` runs after the image's entrypoint, which is not known")]
pub struct NeedsImageEntrypoint;

/// A `user` that is not `UID` or `UID:GID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a numeric UID or UID:GID")]
pub struct NotNumericUser;

/// The default registry of `project` (`x-incus.registry`, see [`default_registry`]).
pub fn project_registry(
    project: &ic_compose::Project,
    oci_remotes: &BTreeMap<String, String>,
) -> Option<String> {
    default_registry(
        project
            .extensions
            .get("x-incus")
            .and_then(|x| x.get("registry"))
            .and_then(|r| r.as_str()),
        oci_remotes,
    )
}

/// What the image itself says it runs (from its OCI config), when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProcess {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The process a service runs, combined as Docker combines it:
/// - neither `entrypoint` nor `command`: `None` (the image's entrypoint + cmd, as Incus sets it);
/// - `entrypoint` (even with no `command`): entrypoint + command; the image's cmd is dropped;
///   `entrypoint: []` with a `command` runs the command alone;
/// - only `command`: the image's entrypoint + command (needs `image`).
pub fn process_args(
    entrypoint: Option<&[String]>,
    command: Option<&[String]>,
    image: Option<&ImageProcess>,
) -> Result<Option<Vec<String>>, NeedsImageEntrypoint> {
    match (entrypoint, command) {
        (None, None) => Ok(None),
        (Some(e), c) => {
            let mut args = e.to_vec();
            args.extend(c.unwrap_or_default().iter().cloned());
            Ok(Some(args))
        }
        (None, Some(c)) => {
            let image = image.ok_or(NeedsImageEntrypoint)?;
            let mut args = image.entrypoint.clone();
            args.extend(c.iter().cloned());
            Ok(Some(args))
        }
    }
}

/// Joins words into the string Incus splits `oci.entrypoint` with (shell-like words): plain
/// words as they are, others in single quotes.
pub fn join_args(args: &[String]) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '/' | '.' | '_' | '-' | '=' | ':' | ',' | '+' | '@' | '%')
            })
    };
    args.iter()
        .map(|w| {
            if plain(w) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `user` (`UID`, `UID:GID`) as (`oci.uid`, `oci.gid`); a name needs the image's
/// `/etc/passwd`, which incus-compose does not read.
pub fn user_ids(user: &str) -> Result<(String, Option<String>), NotNumericUser> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let numeric = |s: &str| {
        !s.is_empty()
            && s.len() <= 10
            && s.chars().all(|c| c.is_ascii_digit())
            && s.parse::<u32>().is_ok()
    };
    if !numeric(u) || g.is_some_and(|g| !numeric(g)) {
        return Err(NotNumericUser);
    }
    Ok((u.to_string(), g.map(str::to_string)))
}

/// The `oci.*` config keys of a service that runs the OCI image `image` (as written; whose own
/// entrypoint and cmd are `image_process`, when known).
pub fn process_config(
    name: &str,
    service: &Service,
    image: &str,
    image_process: Option<&ImageProcess>,
    config: &mut BTreeMap<String, String>,
) -> Result<(), OciError> {
    match process_args(
        service.entrypoint.as_deref(),
        service.command.as_deref(),
        image_process,
    ) {
        Ok(Some(args)) if args.is_empty() => {
            return Err(OciError::NothingToRun {
                service: name.to_string(),
            });
        }
        Ok(Some(args)) if args.iter().any(|a| a.contains(char::is_control)) => {
            return Err(OciError::MultiLineProcess {
                service: name.to_string(),
            });
        }
        Ok(Some(args)) => {
            config.insert("oci.entrypoint".into(), join_args(&args));
        }
        Ok(None) => {}
        Err(NeedsImageEntrypoint) => {
            return Err(OciError::UnknownEntrypoint {
                service: name.to_string(),
                image: image.to_string(),
            });
        }
    }
    if let Some(w) = service.working_dir.as_deref().filter(|w| !w.is_empty()) {
        config.insert("oci.cwd".into(), w.to_string());
    }
    if let Some(u) = service.user.as_deref().filter(|u| !u.is_empty()) {
        let (uid, gid) = user_ids(u).map_err(|NotNumericUser| OciError::UserNotNumeric {
            service: name.to_string(),
            user: u.to_string(),
        })?;
        config.insert("oci.uid".into(), uid);
        if let Some(g) = gid {
            config.insert("oci.gid".into(), g);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s, None).unwrap()
    }

    fn full(s: &str) -> String {
        parse(s).to_string()
    }

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn single_names_are_docker_hub_library_images_at_latest() {
        assert_eq!(full("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(full("nginx:alpine"), "docker.io/library/nginx:alpine");
        let r = parse("nginx");
        assert_eq!(r.registry_url(), "https://docker.io");
        assert_eq!(r.remote_alias(), "library/nginx:latest");
    }

    #[test]
    fn namespaced_names_stay_on_docker_hub_without_library() {
        assert_eq!(full("bitnami/redis:7.2"), "docker.io/bitnami/redis:7.2");
        assert_eq!(
            parse("bitnami/redis").remote_alias(),
            "bitnami/redis:latest"
        );
    }

    #[test]
    fn a_first_component_with_a_dot_a_port_or_localhost_is_a_registry() {
        let r = parse("127.0.0.1:5443/testapp:v1");
        assert_eq!(r.registry, "127.0.0.1:5443");
        assert_eq!(r.path, "testapp");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.registry_url(), "https://127.0.0.1:5443");
        assert_eq!(r.remote_alias(), "testapp:v1");
        assert_eq!(
            full("registry.example:5000/ns/name:tag"),
            "registry.example:5000/ns/name:tag"
        );
        assert_eq!(full("ghcr.io/org/app"), "ghcr.io/org/app:latest");
        assert_eq!(full("localhost/app:1"), "localhost/app:1");
        assert_eq!(full("Registry/app"), "Registry/app:latest");
        // Not a registry: no dot, no port, lower case.
        assert_eq!(full("myorg/app"), "docker.io/myorg/app:latest");
    }

    #[test]
    fn a_port_is_not_taken_for_a_tag() {
        let r = parse("localhost:5000/app");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag, None);
        assert_eq!(r.remote_alias(), "app:latest");
    }

    #[test]
    fn digests_win_over_tags() {
        let r = parse(&format!("nginx@sha256:{HEX}"));
        assert_eq!(r.digest.as_deref(), Some(&*format!("sha256:{HEX}")));
        assert_eq!(r.remote_alias(), format!("library/nginx@sha256:{HEX}"));
        let r = parse(&format!("127.0.0.1:5443/testapp:v1@sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.remote_alias(), format!("testapp@sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("127.0.0.1:5443/testapp:v1@sha256:{HEX}")
        );
    }

    #[test]
    fn docker_hub_aliases_are_normalised() {
        assert_eq!(
            full("index.docker.io/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            full("docker.io/library/nginx:1"),
            "docker.io/library/nginx:1"
        );
        assert_eq!(full("docker.io/nginx"), "docker.io/library/nginx:latest");
    }

    #[test]
    fn a_default_registry_replaces_docker_hub_without_library() {
        let r = ImageRef::parse("testapp:v2", Some("127.0.0.1:5443")).unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5443/testapp:v2");
        // A reference naming a registry keeps it.
        let r = ImageRef::parse("quay.io/a/b", Some("127.0.0.1:5443")).unwrap();
        assert_eq!(r.registry, "quay.io");
    }

    #[test]
    fn invalid_references_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("Nginx", "path component"),
            ("nginx:", "tag"),
            ("nginx:-x", "tag"),
            ("nginx@sha256:abc", "hexadecimal"),
            ("nginx@md5", "algorithm:hex"),
            ("a//b", "path component"),
            ("a/b_", "path component"),
            ("a/-b", "path component"),
            ("a/b--c/d..e", "path component"),
            ("host:port/app", "port"),
            ("-bad.host/app", "host"),
        ] {
            let e = ImageRef::parse(bad, None).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
            assert_eq!(e.reference, bad);
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(ImageRef::parse(&long, None).is_err());
    }

    #[test]
    fn path_component_separators_follow_the_distribution_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a-b", "a---b", "a0", "0a"] {
            assert!(check_component(ok).is_ok(), "{ok}");
        }
        for bad in ["a___b", "a.-b", ".a", "a.", "A", "a b", "a_-b"] {
            assert!(check_component(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_existing_oci_remote_with_the_registry_address_is_used() {
        let remotes = BTreeMap::from([
            ("hub".to_string(), "https://docker.io".to_string()),
            ("mine".to_string(), "https://127.0.0.1:5443/".to_string()),
        ]);
        let r = parse("127.0.0.1:5443/testapp:v1");
        assert_eq!(
            choose_remote(&r, &remotes),
            ("mine".into(), "https://127.0.0.1:5443/".into(), true)
        );
        assert_eq!(
            choose_remote(&parse("nginx"), &remotes),
            ("hub".into(), "https://docker.io".into(), true)
        );
        assert_eq!(
            choose_remote(&parse("ghcr.io/a/b"), &remotes),
            ("oci-ghcr-io".into(), "https://ghcr.io".into(), false)
        );
        assert_eq!(remote_name("127.0.0.1:5443"), "oci-127-0-0-1-5443");
    }

    #[test]
    fn credentials_in_a_remote_address_never_reach_plans_or_keys() {
        assert_eq!(
            without_credentials("https://bot:s3cr@t@registry.example:5000/v2"),
            "https://registry.example:5000/v2"
        );
        assert_eq!(
            without_credentials("https://registry.example"),
            "https://registry.example"
        );
        assert_eq!(without_credentials("u:p@host:1"), "host:1");
        assert_eq!(
            credentials("https://bot:s3cr@t@registry.example:5000/v2"),
            Some("bot:s3cr@t")
        );
        assert_eq!(credentials("https://registry.example/a@b"), None);
        let remotes = BTreeMap::from([(
            "private".to_string(),
            "https://bot:token@127.0.0.1:5444".to_string(),
        )]);
        assert_eq!(
            choose_remote(&parse("127.0.0.1:5444/testapp:v1"), &remotes),
            ("private".into(), "https://127.0.0.1:5444".into(), true)
        );
        assert_eq!(
            default_registry(Some("private"), &remotes).as_deref(),
            Some("127.0.0.1:5444")
        );
        assert_eq!(
            image_key("https://bot:token@127.0.0.1:5444/", "testapp:v1"),
            "127.0.0.1:5444/testapp:v1"
        );
        let source = ImageSource::Oci {
            remote: "private".into(),
            server: "https://127.0.0.1:5444".into(),
            alias: "testapp:v1".into(),
        };
        assert_eq!(source.to_string(), "127.0.0.1:5444/testapp:v1");
    }

    #[test]
    fn pull_records_round_trip_through_project_config_and_ignore_other_keys() {
        let (k1, v1) = pull_record("127.0.0.1:5443/testapp:v1", "aaaa");
        let (k2, v2) = pull_record("docker.io/library/nginx:latest", "bbbb");
        assert!(k1.starts_with(PULL_RECORD_PREFIX) && k1.len() == PULL_RECORD_PREFIX.len() + 16);
        assert_ne!(k1, k2);
        let config = BTreeMap::from([
            (k1, v1),
            (k2.clone(), v2),
            ("user.incus-compose.project".into(), "p".into()),
            // A record whose key does not match its reference is not ours.
            (
                format!("{PULL_RECORD_PREFIX}0000000000000000"),
                "cccc other:v1".into(),
            ),
            (format!("{k2}x"), "dddd x".into()),
        ]);
        assert_eq!(
            pull_records(&config),
            BTreeMap::from([
                ("127.0.0.1:5443/testapp:v1".to_string(), "aaaa".to_string()),
                (
                    "docker.io/library/nginx:latest".to_string(),
                    "bbbb".to_string()
                ),
            ])
        );
    }

    #[test]
    fn pulls_are_recorded_and_records_of_references_no_longer_named_are_dropped() {
        let a = "127.0.0.1:5443/testapp:a".to_string();
        let b = "127.0.0.1:5443/testapp:b".to_string();
        let c = "127.0.0.1:5443/testapp:c".to_string();
        let config = BTreeMap::from([
            ("user.incus-compose.project".to_string(), "p".to_string()),
            pull_record(&a, "f1"),
            pull_record(&b, "f2"),
        ]);
        let keep = [a.clone(), c.clone()].into();
        // c pulled: recorded; b no longer named: dropped; a kept; other keys untouched.
        let out =
            with_pull_records(&config, &BTreeMap::from([(c.clone(), "f3".into())]), &keep).unwrap();
        assert_eq!(
            pull_records(&out),
            BTreeMap::from([(a.clone(), "f1".into()), (c.clone(), "f3".into())])
        );
        assert_eq!(out["user.incus-compose.project"], "p");
        // Nothing new: no change to make.
        assert_eq!(
            with_pull_records(&out, &BTreeMap::from([(a.clone(), "f1".into())]), &keep),
            None
        );
        // A new image for a: the record moves.
        let moved =
            with_pull_records(&out, &BTreeMap::from([(a.clone(), "f9".into())]), &keep).unwrap();
        assert_eq!(pull_records(&moved)[&a], "f9");
    }

    #[test]
    fn pull_policies_decide_from_the_servers_copy() {
        use ic_compose::model::PullPolicy as P;
        use std::time::Duration as D;
        let day = D::from_secs(86400);
        let cases = [
            (P::Always, None, PullDecision::Pull),
            (P::Always, Some(D::ZERO), PullDecision::Pull),
            (P::Missing, None, PullDecision::Pull),
            (P::Missing, Some(day * 400), PullDecision::UseCached),
            (P::Never, None, PullDecision::Refuse),
            (P::Never, Some(D::ZERO), PullDecision::UseCached),
            (P::Every(day), None, PullDecision::Pull),
            (
                P::Every(day),
                Some(day - D::from_secs(1)),
                PullDecision::UseCached,
            ),
            (P::Every(day), Some(day), PullDecision::Pull),
        ];
        for (policy, age, want) in cases {
            assert_eq!(pull_decision(policy, age), want, "{policy:?} {age:?}");
        }
    }

    #[test]
    fn x_incus_registry_names_a_host_or_a_remote() {
        let remotes = BTreeMap::from([(
            "local-reg".to_string(),
            "https://127.0.0.1:5443".to_string(),
        )]);
        assert_eq!(
            default_registry(Some("local-reg"), &remotes).as_deref(),
            Some("127.0.0.1:5443")
        );
        assert_eq!(
            default_registry(Some("registry.example:5000"), &remotes).as_deref(),
            Some("registry.example:5000")
        );
        assert_eq!(default_registry(None, &remotes), None);
    }

    fn facts(oci: bool) -> ServerFacts {
        ServerFacts {
            version: if oci { "7.0.2" } else { "6.0.4" }.into(),
            oci,
            image_aliases: ["testapp/v1".to_string()].into(),
            oci_remotes: BTreeMap::from([("hub".to_string(), "https://docker.io/".to_string())]),
            ..Default::default()
        }
    }

    #[test]
    fn docker_references_resolve_to_oci_sources_and_local_aliases_still_win() {
        use crate::plan::resolve_image;
        assert_eq!(
            resolve_image("web", "127.0.0.1:5443/testapp:v1", &facts(true)).unwrap(),
            ImageSource::Oci {
                remote: "oci-127-0-0-1-5443".into(),
                server: "https://127.0.0.1:5443".into(),
                alias: "testapp:v1".into(),
            }
        );
        // Through the user's remote for Docker Hub (its address without the trailing slash).
        assert_eq!(
            resolve_image("web", "nginx:alpine", &facts(true)).unwrap(),
            ImageSource::Oci {
                remote: "hub".into(),
                server: "https://docker.io".into(),
                alias: "library/nginx:alpine".into(),
            }
        );
        assert_eq!(
            resolve_image("web", "testapp/v1", &facts(true)).unwrap(),
            ImageSource::Local("testapp/v1".into())
        );
        let e = resolve_image("web", "Bad/Ref", &facts(true)).unwrap_err();
        assert!(e.to_string().contains("service \"web\""), "{e}");
    }

    #[test]
    fn a_server_without_instance_oci_refuses_docker_references_naming_version_and_fix() {
        let e = crate::plan::resolve_image("web", "127.0.0.1:5443/testapp:v1", &facts(false))
            .unwrap_err()
            .to_string();
        for part in [
            "\"web\"",
            "127.0.0.1:5443/testapp:v1",
            "6.0.4",
            "instance_oci",
            "6.3",
        ] {
            assert!(e.contains(part), "{part} missing from: {e}");
        }
    }

    fn words(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_command_combine_as_docker_combines_them() {
        let image = ImageProcess {
            entrypoint: words(&["/docker-entrypoint.sh"]),
            cmd: words(&["httpd", "-f"]),
        };
        let e = words(&["/bin/sh", "-c"]);
        let c = words(&["echo hi"]);
        // Nothing set: the image's own (Incus sets it from the image).
        assert_eq!(process_args(None, None, Some(&image)), Ok(None));
        // Command only: after the image's entrypoint.
        assert_eq!(
            process_args(None, Some(&c), Some(&image)),
            Ok(Some(words(&["/docker-entrypoint.sh", "echo hi"])))
        );
        // Command only, image unknown: cannot be combined.
        assert_eq!(
            process_args(None, Some(&c), None),
            Err(NeedsImageEntrypoint)
        );
        // Entrypoint: the image's cmd is dropped.
        assert_eq!(
            process_args(Some(&e), None, None),
            Ok(Some(words(&["/bin/sh", "-c"])))
        );
        assert_eq!(
            process_args(Some(&e), Some(&c), None),
            Ok(Some(words(&["/bin/sh", "-c", "echo hi"])))
        );
        // `entrypoint: []`: the command alone.
        assert_eq!(
            process_args(Some(&[]), Some(&c), None),
            Ok(Some(words(&["echo hi"])))
        );
    }

    #[test]
    fn args_are_joined_with_shell_quoting_where_needed() {
        assert_eq!(
            join_args(&words(&["/bin/sh", "-c", "echo 'a b'; exit 3", ""])),
            r#"/bin/sh -c 'echo '\''a b'\''; exit 3' ''"#
        );
        assert_eq!(join_args(&words(&["httpd", "-p", "80"])), "httpd -p 80");
    }

    #[test]
    fn numeric_users_become_uid_and_gid() {
        assert_eq!(user_ids("1000"), Ok(("1000".into(), None)));
        assert_eq!(
            user_ids("1000:100"),
            Ok(("1000".into(), Some("100".into())))
        );
        assert_eq!(user_ids("app"), Err(NotNumericUser));
        assert_eq!(user_ids("1000:staff"), Err(NotNumericUser));
        assert_eq!(user_ids("99999999999"), Err(NotNumericUser));
    }

    #[test]
    fn process_config_sets_the_oci_keys() {
        let img = "127.0.0.1:5443/testapp:v1";
        let service = Service {
            entrypoint: Some(words(&["/bin/sh", "-c"])),
            command: Some(words(&["echo hi; sleep 1"])),
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        };
        let mut config = BTreeMap::new();
        process_config("web", &service, img, None, &mut config).unwrap();
        assert_eq!(config["oci.entrypoint"], "/bin/sh -c 'echo hi; sleep 1'");
        assert_eq!(config["oci.cwd"], "/srv");
        assert_eq!(config["oci.uid"], "1000");
        assert_eq!(config["oci.gid"], "1000");

        let mut config = BTreeMap::new();
        let only_command = Service {
            command: Some(words(&["x"])),
            ..Default::default()
        };
        let e = process_config("web", &only_command, img, None, &mut config).unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:5443/testapp:v1"), "{e}");
        assert!(e.to_string().contains("entrypoint"), "{e}");
        let image = ImageProcess {
            entrypoint: words(&["/docker-entrypoint.sh"]),
            cmd: vec![],
        };
        process_config("web", &only_command, img, Some(&image), &mut config).unwrap();
        assert_eq!(config["oci.entrypoint"], "/docker-entrypoint.sh x");

        let mut config = BTreeMap::new();
        let nothing = Service {
            entrypoint: Some(vec![]),
            ..Default::default()
        };
        let e = process_config("web", &nothing, img, None, &mut config).unwrap_err();
        assert_eq!(
            e,
            OciError::NothingToRun {
                service: "web".into()
            }
        );
        let named_user = Service {
            user: Some("app".into()),
            ..Default::default()
        };
        let e = process_config("web", &named_user, img, None, &mut config).unwrap_err();
        assert!(matches!(e, OciError::UserNotNumeric { .. }));
        assert!(config.is_empty());
    }
}
