//! OCI remotes in the incus CLI's configuration: a plan whose images come from a registry the
//! configuration has no `oci` remote for adds one (named by `ic_core::plan::oci::remote_name`),
//! as `incus remote add <name> https://<registry> --protocol=oci --public` would. Incus pulls
//! by address, so the remote is for the user (`incus image list <name>:`, credentials), and
//! the next plan finds it and uses its name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ic_compose::Project;
use ic_compose::model::{PullPolicy, Service};
use ic_core::plan::oci::{self, ImageProcess};
use ic_core::plan::{Action, ImageSource, Plan, ServerFacts, resolve_image_in};
use ic_incus::config::{LoadedConfig, ProcessEnv};
use ic_incus::{Client, Request};

/// The `oci` remotes the plan's instances name and the configuration lacks: name -> address.
fn missing(plan: &Plan, config: &LoadedConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for action in plan.actions() {
        let (Action::Create(p) | Action::Recreate(p)) = action else {
            continue;
        };
        if let ImageSource::Oci { remote, server, .. } = &p.image
            && !config.config.remotes.contains_key(remote)
        {
            out.insert(remote.clone(), server.clone());
        }
    }
    out
}

/// Adds the missing remotes to `config.yml`; one line per remote added, for the user.
pub fn ensure_remotes(plan: &Plan) -> anyhow::Result<Vec<String>> {
    let config =
        LoadedConfig::load(&ProcessEnv).context("cannot read the incus CLI configuration")?;
    let add = missing(plan, &config);
    if add.is_empty() {
        return Ok(Vec::new());
    }
    let dir = config.dir.as_deref().context(
        "no incus CLI configuration directory (set INCUS_CONF or HOME) to add OCI remotes to",
    )?;
    let file = dir.join("config.yml");
    add_remotes(&file, &add)?;
    Ok(add
        .iter()
        .map(|(name, addr)| {
            format!(
                "[+] incus remote {name} ({addr}, protocol oci) added to {}",
                file.display()
            )
        })
        .collect())
}

fn add_remotes(file: &Path, add: &BTreeMap<String, String>) -> anyhow::Result<()> {
    use serde_yaml_ng::{Mapping, Value};
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let fresh = text.trim().is_empty();
    let mut doc: Value = if fresh {
        // What the incus CLI uses without a file, so that writing one loses nothing.
        serde_yaml_ng::from_str(
            "default-remote: local\nremotes:\n  local:\n    addr: unix://\n    public: false\n  images:\n    addr: https://images.linuxcontainers.org\n    protocol: simplestreams\n    public: true\n",
        )
        .context("built-in default incus configuration")?
    } else {
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))?
    };
    let root = doc
        .as_mapping_mut()
        .with_context(|| format!("{} is not a YAML mapping", file.display()))?;
    let remotes = root
        .entry(Value::from("remotes"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    let remotes = remotes
        .as_mapping_mut()
        .with_context(|| format!("`remotes` in {} is not a mapping", file.display()))?;
    for (name, addr) in add {
        let mut r = Mapping::new();
        r.insert(Value::from("addr"), Value::from(addr.as_str()));
        r.insert(Value::from("protocol"), Value::from("oci"));
        r.insert(Value::from("public"), Value::from(true));
        remotes.insert(Value::from(name.as_str()), Value::Mapping(r));
    }
    let out = serde_yaml_ng::to_string(&doc).context("cannot write the incus configuration")?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = file.with_extension("yml.incus-compose.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

/// A copy of an OCI image in the server's image store.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedImage {
    pub fingerprint: String,
    /// When the server pulled it (`uploaded_at`), if Incus says.
    pub uploaded: Option<time::OffsetDateTime>,
}

/// A service whose `image` names an OCI registry image.
struct OciImage<'a> {
    name: &'a str,
    service: &'a Service,
    /// `oci::image_key`: registry host and reference.
    key: String,
    /// The registry's address.
    server: String,
    /// The reference in it (`testapp:v1`).
    alias: String,
}

/// The project's services whose image resolves to an OCI registry image, in name order. Local
/// aliases, `remote:alias` images and bad references (which the planner reports) are left out.
fn oci_images<'a>(project: &'a Project, facts: &ServerFacts) -> Vec<OciImage<'a>> {
    let registry = oci::project_registry(project, &facts.oci_remotes);
    project
        .services
        .iter()
        .filter_map(|(name, service)| {
            let image = service.image.as_deref()?;
            match resolve_image_in(name, image, facts, registry.as_deref()).ok()? {
                ImageSource::Oci { server, alias, .. } => Some(OciImage {
                    name,
                    service,
                    key: oci::image_key(&server, &alias),
                    server,
                    alias,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The image keys of the project's OCI images (every service, selected or not).
pub fn project_image_keys(
    project: &Project,
    facts: &ServerFacts,
) -> std::collections::BTreeSet<String> {
    oci_images(project, facts)
        .into_iter()
        .map(|i| i.key)
        .collect()
}

/// Records in the Incus project's config (`oci::with_pull_records`) that `pulled` references
/// named these images, dropping the records of references the compose file no longer names
/// (not in `keep`), when the project exists and is this compose project's. Failures are only
/// reported: a record saves a pull later, nothing depends on it now.
pub async fn record_pulls(
    base: &Client,
    incus_project: &str,
    compose: &str,
    pulled: &BTreeMap<String, String>,
    keep: &std::collections::BTreeSet<String>,
) -> Option<String> {
    if pulled.is_empty() {
        return None;
    }
    // Guarded by the project's ETag (engine::lock::edit_project_config): the project lock's
    // key, renewed meanwhile, is kept as it is.
    let written = super::lock::edit_project_config(base, incus_project, |config| {
        if !crate::engine::is_ours(config, compose) {
            return false;
        }
        match oci::with_pull_records(config, pulled, keep) {
            Some(c) => {
                *config = c;
                true
            }
            None => false,
        }
    })
    .await;
    match written {
        Ok(_) => None,
        Err(e) if e.is_not_found() => None,
        Err(e) => Some(format!(
            "cannot record pulled images in Incus project {incus_project}: {e}"
        )),
    }
}

/// The copy of each OCI image the server has, by image key (`oci::image_key`): what the
/// project's pull records (`oci::pull_records` of `project_config`) say the key named when
/// incus-compose last pulled it, if that image is still in the store; else the newest image
/// whose `update_source` (registry and reference) is that key.
pub fn cached_oci(
    images: &[ic_incus::Image],
    project_config: &BTreeMap<String, String>,
) -> BTreeMap<String, CachedImage> {
    let uploaded = |img: &ic_incus::Image| {
        time::OffsetDateTime::parse(
            &img.uploaded_at,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    };
    let mut recorded: BTreeMap<String, CachedImage> = BTreeMap::new();
    for (key, fingerprint) in oci::pull_records(project_config) {
        if let Some(img) = images.iter().find(|i| i.fingerprint == fingerprint) {
            recorded.insert(
                key,
                CachedImage {
                    fingerprint,
                    uploaded: uploaded(img),
                },
            );
        }
    }
    let mut out: BTreeMap<String, CachedImage> = BTreeMap::new();
    for img in images {
        let Some(src) = img
            .update_source
            .as_ref()
            .filter(|s| s.protocol == "oci" && !s.alias.is_empty())
        else {
            continue;
        };
        let uploaded = uploaded(img);
        let key = oci::image_key(&src.server, &src.alias);
        let newer = out.get(&key).is_none_or(|c| uploaded > c.uploaded);
        if newer {
            out.insert(
                key,
                CachedImage {
                    fingerprint: img.fingerprint.clone(),
                    uploaded,
                },
            );
        }
    }
    out.extend(recorded);
    out
}

/// The address to hand Incus for registry `server`: the address of the user's `oci` remote for
/// that registry when it carries credentials (`https://user:token@host`), so that the server's
/// skopeo logs in; `server` itself otherwise.
pub fn credentialed(server: &str, remotes: &BTreeMap<String, (String, String)>) -> String {
    remotes
        .values()
        .filter(|(addr, protocol)| protocol == "oci" && oci::credentials(addr).is_some())
        .find(|(addr, _)| oci::same_registry(addr, server))
        .map(|(addr, _)| addr.trim_end_matches('/').to_string())
        .unwrap_or_else(|| server.to_string())
}

/// Pulls `alias` from the image server at `server` (`protocol`: `oci`, `simplestreams`,
/// `incus`) into the `default` project's image store (where compose projects take their images
/// from: `features.images=false`), with the user's credentials for an OCI registry (see
/// [`credentialed`]); returns the fingerprint of the image it names now, when Incus says.
pub async fn pull_image(
    base: &Client,
    server: &str,
    protocol: &str,
    alias: &str,
    remotes: &BTreeMap<String, (String, String)>,
) -> anyhow::Result<Option<String>> {
    let server = if protocol == "oci" {
        credentialed(server, remotes)
    } else {
        server.to_string()
    };
    let body = serde_json::json!({
        "source": {"type": "image", "mode": "pull", "server": server,
                   "protocol": protocol, "alias": alias},
    });
    let op = base
        .with_project("default")
        .send_operation(Request::post("/1.0/images").json(&body)?)
        .await?
        .wait()
        .await?;
    Ok(op
        .metadata
        .get("fingerprint")
        .and_then(|f| f.as_str())
        .filter(|f| !f.is_empty())
        .map(str::to_string))
}

/// Applies the services' `pull_policy` (or `policy` for all, `up --pull`) to their OCI images,
/// before anything changes: pulls what the policies ask for and records in
/// `obs.facts.image_targets` the image each reference names now, so that the plan recreates
/// replicas made from another one. A `never` image the server lacks, or a pull that fails,
/// fails `up` with nothing changed. `dry_run`: nothing is pulled, the lines say what would be.
pub async fn prepare_images(
    base: &Client,
    project: &Project,
    services: &std::collections::BTreeSet<String>,
    obs: &mut crate::engine::Observation,
    policy: Option<PullPolicy>,
    dry_run: bool,
) -> anyhow::Result<Prepared> {
    let now = time::OffsetDateTime::now_utc();
    // Image key -> (server, alias, first service asking to pull it).
    let mut pulls: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    let mut refused = Vec::new();
    for OciImage {
        name,
        service,
        key,
        server,
        alias,
    } in oci_images(project, &obs.facts)
    {
        if !services.contains(name) {
            continue;
        }
        let policy = policy.unwrap_or_else(|| PullPolicy::of(service.pull_policy.as_deref()));
        if policy == PullPolicy::Build {
            continue;
        }
        let age = obs.oci_cached.get(&key).map(|c| {
            c.uploaded
                .map(|u| (now - u).try_into().unwrap_or_default())
                .unwrap_or_default()
        });
        match oci::pull_decision(policy, age) {
            oci::PullDecision::UseCached => {}
            oci::PullDecision::Pull => {
                pulls
                    .entry(key)
                    .or_insert_with(|| (server, alias, name.to_string()));
            }
            oci::PullDecision::Refuse => refused.push(format!(
                "service {name:?}: pull_policy never, and the Incus server (version {}) has no copy of image {key}; pull it first (`incus-compose pull {name}`, or `up --pull missing`)",
                obs.facts.version
            )),
        }
    }
    if !refused.is_empty() {
        anyhow::bail!("{}; nothing was changed", refused.join("; "));
    }
    if dry_run {
        return Ok(Prepared {
            lines: pulls
                .keys()
                .map(|k| format!("[~] would pull {k}"))
                .collect(),
            pulled: BTreeMap::new(),
        });
    }
    let remotes = &obs.remotes;
    let version = obs.facts.version.clone();
    let results = futures_util::future::join_all(pulls.into_iter().map(
        |(key, (server, alias, service))| async move {
            let r = pull_image(base, &server, "oci", &alias, remotes)
                .await
                .and_then(|f| f.context("Incus did not say which image it pulled"));
            (key, service, r)
        },
    ))
    .await;
    let mut lines = Vec::new();
    let mut pulled = BTreeMap::new();
    let mut failures = Vec::new();
    for (key, service, r) in results {
        match r {
            Ok(fingerprint) => {
                let before = obs.facts.image_targets.get(&key);
                let what = match before {
                    Some(b) if *b == fingerprint => "unchanged".to_string(),
                    Some(b) => format!("new image: {} -> {}", oci::short(b), oci::short(&fingerprint)),
                    None => oci::short(&fingerprint).to_string(),
                };
                lines.push(format!("[+] pulled {key} ({what})"));
                obs.facts.image_targets.insert(key.clone(), fingerprint.clone());
                pulled.insert(key, fingerprint);
            }
            Err(e) => failures.push(format!(
                "service {service:?}: cannot pull image {key} onto the Incus server (version {version}): {e:#}"
            )),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{}; nothing was changed (check the reference, and that the server reaches the registry)",
            failures.join("; ")
        );
    }
    Ok(Prepared { lines, pulled })
}

/// What [`prepare_images`] did.
pub struct Prepared {
    /// One line per pull (or, for a dry run, per pull it would make), for the user.
    pub lines: Vec<String>,
    /// Image key -> the fingerprint it names now, for what was pulled (to [`record_pulls`]).
    pub pulled: BTreeMap<String, String>,
}

/// The entrypoint and cmd of the OCI images whose services set `command` without `entrypoint`
/// (Docker runs that command after the image's entrypoint, so the plan needs it), read from
/// their registries into `facts.oci_images`. An image that cannot be read is left out
/// (planning then says what to do) and gives a warning with the reason.
///
/// It asks `skopeo inspect --config` on this machine, as the incus CLI does for its OCI
/// remotes: skopeo's own configuration applies (credentials from `skopeo login`, a private CA in
/// `/etc/containers/certs.d/<host:port>/ca.crt` or `SSL_CERT_FILE`).
pub async fn read_image_processes(
    project: &Project,
    facts: &mut ServerFacts,
    remotes: &BTreeMap<String, (String, String)>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if !facts.oci {
        return warnings;
    }
    // Image key -> (the last service naming it, registry).
    let wanted: BTreeMap<String, (&str, String)> = oci_images(project, facts)
        .into_iter()
        .filter(|i| i.service.command.is_some() && i.service.entrypoint.is_none())
        .map(|i| (i.key, (i.name, i.server)))
        .collect();
    for (reference, (service, server)) in wanted {
        let creds = credentialed(&server, remotes);
        match read_process(&reference, oci::credentials(&creds)).await {
            Ok(p) => {
                facts.oci_images.insert(reference, p);
            }
            Err(e) => warnings.push(format!(
                "service {service:?}: cannot read the entrypoint of image {reference}: {e:#}"
            )),
        }
    }
    warnings
}

/// A containers-auth.json (0600, removed when dropped) with `creds` for `registry`.
fn auth_file(registry: &str, creds: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use base64::Engine;
    use std::io::Write;
    let host = registry.split('/').next().unwrap_or(registry);
    let body = serde_json::json!({"auths": {host: {
        "auth": base64::engine::general_purpose::STANDARD.encode(creds)
    }}});
    let mut f = tempfile::Builder::new()
        .prefix("incus-compose-auth-")
        .tempfile()
        .context("cannot create a credentials file for skopeo")?;
    f.write_all(body.to_string().as_bytes())
        .context("cannot write a credentials file for skopeo")?;
    Ok(f)
}

async fn read_process(reference: &str, creds: Option<&str>) -> anyhow::Result<ImageProcess> {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.args(["inspect", "--config", "--retry-times", "1"]);
    // Kept until skopeo has run.
    let auth = creds.map(|c| auth_file(reference, c)).transpose()?;
    if let Some(a) = &auth {
        cmd.arg("--authfile").arg(a.path());
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .context("skopeo inspect took more than 60 s")?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("skopeo is not installed (it reads image configs from registries, as for the incus CLI's OCI remotes: apt-get install skopeo)")
            } else {
                anyhow::anyhow!("cannot run skopeo: {e}")
            }
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "skopeo inspect failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_process(&out.stdout)
}

/// `Entrypoint` and `Cmd` of an OCI image config (JSON).
fn parse_process(config: &[u8]) -> anyhow::Result<ImageProcess> {
    #[derive(serde::Deserialize, Default)]
    struct Process {
        #[serde(rename = "Entrypoint", default)]
        entrypoint: Option<Vec<String>>,
        #[serde(rename = "Cmd", default)]
        cmd: Option<Vec<String>>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        config: Option<Process>,
    }
    let c: Config = serde_json::from_slice(config).context("the image config is not valid JSON")?;
    let p = c.config.unwrap_or_default();
    Ok(ImageProcess {
        entrypoint: p.entrypoint.unwrap_or_default(),
        cmd: p.cmd.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_added_and_other_settings_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(
            &file,
            "default-remote: prod\nremotes:\n  prod:\n    addr: https://10.0.0.1:8443\n    auth_type: tls\n",
        )
        .unwrap();
        let add = BTreeMap::from([(
            "oci-127-0-0-1-5443".to_string(),
            "https://127.0.0.1:5443".to_string(),
        )]);
        add_remotes(&file, &add).unwrap();
        let cfg =
            ic_incus::config::CliConfig::parse(&std::fs::read_to_string(&file).unwrap(), &file)
                .unwrap();
        assert_eq!(cfg.default_remote, "prod");
        assert_eq!(cfg.remotes["prod"].auth_type, "tls");
        let r = &cfg.remotes["oci-127-0-0-1-5443"];
        assert_eq!(
            (r.addr.as_str(), r.protocol.as_str(), r.public),
            ("https://127.0.0.1:5443", "oci", true)
        );
    }

    #[test]
    fn the_newest_copy_of_each_oci_image_is_what_its_reference_names() {
        let image =
            |fp: &str, uploaded: &str, server: &str, alias: &str, protocol: &str| ic_incus::Image {
                fingerprint: fp.into(),
                uploaded_at: uploaded.into(),
                update_source: Some(ic_incus::ImageUpdateSource {
                    alias: alias.into(),
                    server: server.into(),
                    protocol: protocol.into(),
                    image_type: "container".into(),
                }),
                ..Default::default()
            };
        let images = [
            image(
                "old",
                "2026-11-20T10:00:00Z",
                "https://127.0.0.1:5443",
                "testapp:v1",
                "oci",
            ),
            image(
                "new",
                "2026-11-25T10:00:00Z",
                "https://127.0.0.1:5443",
                "testapp:v1",
                "oci",
            ),
            image(
                "older",
                "2026-11-01T10:00:00Z",
                "https://127.0.0.1:5443",
                "testapp:v1",
                "oci",
            ),
            // Credentials in the recorded address do not make another key.
            image(
                "priv",
                "2026-11-25T10:00:00Z",
                "https://u:p@127.0.0.1:5444",
                "testapp:v2",
                "oci",
            ),
            image(
                "ss",
                "2026-11-25T10:00:00Z",
                "https://images.example",
                "debian/12",
                "simplestreams",
            ),
            ic_incus::Image {
                fingerprint: "local".into(),
                ..Default::default()
            },
        ];
        let cached = cached_oci(&images, &BTreeMap::new());
        assert_eq!(
            cached.keys().collect::<Vec<_>>(),
            ["127.0.0.1:5443/testapp:v1", "127.0.0.1:5444/testapp:v2"]
        );
        assert_eq!(cached["127.0.0.1:5443/testapp:v1"].fingerprint, "new");
        assert_eq!(cached["127.0.0.1:5444/testapp:v2"].fingerprint, "priv");

        // Another tag pulled by incus-compose that names the same image: Incus kept the first
        // pull's update_source; the project's pull record says what the tag names. A record of
        // an image no longer in the store counts for nothing.
        let config = BTreeMap::from([
            oci::pull_record("127.0.0.1:5443/testapp:latest", "old"),
            oci::pull_record("127.0.0.1:5443/testapp:v1", "older"),
            oci::pull_record("127.0.0.1:5443/testapp:gone", "deleted"),
        ]);
        let cached = cached_oci(&images, &config);
        assert_eq!(cached["127.0.0.1:5443/testapp:latest"].fingerprint, "old");
        // The record wins over the newest update_source.
        assert_eq!(cached["127.0.0.1:5443/testapp:v1"].fingerprint, "older");
        assert!(!cached.contains_key("127.0.0.1:5443/testapp:gone"));
    }

    #[test]
    fn credentials_come_from_the_users_remote_for_the_same_registry() {
        let remotes = BTreeMap::from([
            (
                "private".to_string(),
                (
                    "https://bot:tok@reg.example:5000/".to_string(),
                    "oci".to_string(),
                ),
            ),
            (
                "other".to_string(),
                ("https://reg.example:5001".to_string(), "oci".to_string()),
            ),
            (
                "ss".to_string(),
                (
                    "https://a:b@images.example".to_string(),
                    "simplestreams".to_string(),
                ),
            ),
        ]);
        let server = credentialed("https://reg.example:5000", &remotes);
        assert_eq!(server, "https://bot:tok@reg.example:5000");
        assert_eq!(oci::credentials(&server), Some("bot:tok"));
        assert_eq!(
            credentialed("https://reg.example:5001", &remotes),
            "https://reg.example:5001"
        );
        assert_eq!(
            credentialed("https://images.example", &remotes),
            "https://images.example"
        );
        assert_eq!(oci::credentials("https://reg.example:5001"), None);
        // The auth file skopeo reads: the registry's host, base64 of user:password.
        let f = auth_file("reg.example:5000/ns/app:v1", "bot:tok").unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.path()).unwrap()).unwrap();
        assert_eq!(body["auths"]["reg.example:5000"]["auth"], "Ym90OnRvaw==");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn the_entrypoint_and_cmd_are_read_from_an_image_config() {
        let p = parse_process(
            br#"{"architecture":"amd64","config":{"Env":["A=1"],"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["httpd","-f"]}}"#,
        )
        .unwrap();
        assert_eq!(p.entrypoint, ["/docker-entrypoint.sh"]);
        assert_eq!(p.cmd, ["httpd", "-f"]);
        let p = parse_process(br#"{"config":{"Entrypoint":null}}"#).unwrap();
        assert!(p.entrypoint.is_empty() && p.cmd.is_empty());
        assert!(parse_process(b"not json").is_err());
    }

    #[test]
    fn a_missing_file_gets_the_cli_defaults_and_the_remote() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub").join("config.yml");
        let add = BTreeMap::from([("hub".to_string(), "https://docker.io".to_string())]);
        add_remotes(&file, &add).unwrap();
        let cfg =
            ic_incus::config::CliConfig::parse(&std::fs::read_to_string(&file).unwrap(), &file)
                .unwrap();
        assert_eq!(cfg.default_remote, "local");
        assert_eq!(cfg.remotes["local"].addr, "unix://");
        assert_eq!(cfg.remotes["images"].protocol, "simplestreams");
        assert_eq!(cfg.remotes["hub"].protocol, "oci");
    }
}
