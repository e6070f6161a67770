//! OCI remotes in the incus CLI's configuration: a plan whose images come from a registry the
//! configuration has no `oci` remote for adds one (named by `ic_core::plan::oci::remote_name`),
//! as `incus remote add <name> https://<registry> --protocol=oci --public` would. Incus pulls
//! by address, so the remote is for the user (`incus image list <name>:`, credentials), and
//! the next plan finds it and uses its name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ic_compose::Project;
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

/// Pulls the OCI images the plan's new instances need into the server's image store
/// (`POST /1.0/images`, source protocol `oci`, all at once), before anything else changes: an
/// image that cannot be pulled (unknown, unreachable registry) fails `up` with nothing changed.
/// Images already there cost the registry a manifest lookup. Pulled into the `default`
/// project (where compose projects take their images from: `features.images=false`).
pub async fn pull_images(base: &Client, plan: &Plan, version: &str) -> anyhow::Result<()> {
    // Image (as text) -> (source, first service that uses it).
    let mut wanted: BTreeMap<String, (&ImageSource, &str)> = BTreeMap::new();
    for action in plan.actions() {
        let (Action::Create(p) | Action::Recreate(p)) = action else {
            continue;
        };
        if let ImageSource::Oci { .. } = &p.image {
            wanted
                .entry(p.image.to_string())
                .or_insert((&p.image, p.service.as_str()));
        }
    }
    let images = base.with_project("default");
    let pulls = wanted.iter().map(|(text, (source, service))| {
        let images = images.clone();
        async move {
            let ImageSource::Oci { server, alias, .. } = source else {
                return Ok(());
            };
            let body = serde_json::json!({
                "source": {"type": "image", "mode": "pull", "server": server, "protocol": "oci", "alias": alias},
            });
            let result = async {
                images
                    .send_operation(Request::post("/1.0/images").json(&body)?)
                    .await?
                    .wait()
                    .await
            }
            .await;
            result.map(|_| ()).map_err(|e| {
                anyhow::anyhow!(
                    "service {service:?}: cannot pull image {text} onto the Incus server (version {version}): {e}; nothing was changed (check the reference, and that the server reaches the registry)"
                )
            })
        }
    });
    for r in futures_util::future::join_all(pulls).await {
        r?;
    }
    Ok(())
}

/// The entrypoint and cmd of the OCI images whose services set `command` without `entrypoint`
/// (Docker runs that command after the image's entrypoint, so the plan needs it), read from
/// their registries into `facts.oci_images`. An image that cannot be read is left out
/// (planning then says what to do) and gives a warning with the reason.
///
/// It asks `skopeo inspect --config` on this machine, as the incus CLI does for its OCI
/// remotes: skopeo's own configuration applies (credentials from `skopeo login`, a private CA in
/// `/etc/containers/certs.d/<host:port>/ca.crt` or `SSL_CERT_FILE`).
pub async fn read_image_processes(project: &Project, facts: &mut ServerFacts) -> Vec<String> {
    let mut warnings = Vec::new();
    if !facts.oci {
        return warnings;
    }
    let registry = oci::project_registry(project, &facts.oci_remotes);
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in &project.services {
        let (Some(image), Some(_), None) = (&service.image, &service.command, &service.entrypoint)
        else {
            continue;
        };
        if let Ok(source @ ImageSource::Oci { .. }) =
            resolve_image_in(name, image, facts, registry.as_deref())
        {
            wanted.insert(source.to_string(), name.clone());
        }
    }
    for (reference, service) in wanted {
        match read_process(&reference).await {
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

async fn read_process(reference: &str) -> anyhow::Result<ImageProcess> {
    let out = tokio::process::Command::new("skopeo")
        .args(["inspect", "--config", "--retry-times", "1"])
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
