//! The corpus of real compose files (`../shared/corpus`): every file loads, and where Debian's
//! `docker-compose` 1.29.2 also loads a file, both agree on each service's image, replicas,
//! environment after interpolation, ports, volumes and deploy fields.
//!
//! `docker-compose` must be installed (`apt-get install docker-compose`); the test fails, not
//! skips, without it.

use ic_compose::corpus::dir as corpus;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ic_compose::model::placement::Constraint;
use ic_compose::model::{ByteSize, Duration};
use ic_compose::{LoadOptions, load};
use serde_json::Value;

/// Variables that some corpus files require (`${DOMAIN?...}`), set for both tools.
fn environment() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("COMPOSE_"))
        .collect();
    for (k, v) in [
        ("DOMAIN", "example.org"),
        ("ADMIN_USER", "admin"),
        ("HASHED_PASSWORD", "$$apr1$$hash"),
    ] {
        env.insert(k.into(), v.into());
    }
    env.remove("TOKEN");
    env
}

fn rel(p: &Path) -> String {
    p.strip_prefix(corpus())
        .map(|r| r.display().to_string())
        .unwrap_or_default()
}

fn load_ours(file: &Path) -> Result<ic_compose::Project, ic_compose::LoadErrors> {
    let dir = file.parent().expect("corpus files live in directories");
    load(&LoadOptions {
        files: vec![PathBuf::from(file.file_name().expect("file name"))],
        working_dir: dir.to_path_buf(),
        environment: environment(),
        interpolate: true,
        ..LoadOptions::default()
    })
}

/// Files docker-compose 1.29.2 refuses, and why. The test checks that it still refuses them
/// (so this list cannot silently hide a file it would load) and that we load them.
const REJECTED_BY_DOCKER_COMPOSE_1_29: &[(&str, &str)] = &[
    (
        "awesome-compose/react-rust-postgres/compose.yaml",
        "top-level `name:` is newer than 1.29.2's schema",
    ),
    (
        "swarm/voting-app/docker-compose.yml",
        "1.29.2 requires build contexts to exist; the corpus leaves out ./vote, ./result, ...",
    ),
];

#[test]
fn every_corpus_compose_file_loads() {
    let files = ic_compose::corpus::files(&corpus());
    assert!(
        files.len() >= 45,
        "corpus shrank: {} compose files",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        match load_ours(f) {
            Ok(p) => assert!(!p.services.is_empty(), "{}: no services", rel(f)),
            Err(e) => failures.push(format!("{}:\n{e}", rel(f))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_deploy_sections_are_typed() {
    let stack = load_ours(&corpus().join("swarm/voting-app/docker-stack.yml")).expect("loads");
    let worker = &stack.services["worker"];
    let d = worker.deploy.as_ref().expect("deploy");
    assert_eq!(d.replicas, Some(1));
    assert_eq!(d.labels.get("APP").map(String::as_str), Some("VOTING"));
    let rp = d.restart_policy.as_ref().expect("restart policy");
    assert_eq!(rp.max_attempts, Some(3));
    assert_eq!(rp.window.map(|w| w.0.as_secs()), Some(120));
    assert_eq!(
        d.placement.constraints[0].to_string(),
        "node.role == manager"
    );
    assert_eq!(stack.services["redis"].replicas(), Some(2));
    let prom = load_ours(&corpus().join("swarm/swarmprom/docker-compose.yml")).expect("loads");
    assert_eq!(prom.services["cadvisor"].replicas(), None, "global");
    let limits = prom.services["prometheus"]
        .deploy
        .as_ref()
        .and_then(|d| d.resources.limits.clone())
        .expect("limits");
    assert_eq!(limits.memory, Some(ByteSize(2048 * 1024 * 1024)));
}

/// What both tools must agree on for one service.
#[derive(Debug, PartialEq)]
struct Facts {
    image: Option<String>,
    replicas: Option<u64>,
    restart: Option<String>,
    environment: BTreeMap<String, Option<String>>,
    ports: BTreeSet<(String, String, u64, String)>,
    volumes: BTreeSet<(String, String, String, bool)>,
    deploy: BTreeMap<String, String>,
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn port_facts(v: &Value) -> Vec<(String, String, u64, String)> {
    match v {
        Value::Object(o) => vec![(
            o.get("host_ip").map(s).unwrap_or_default(),
            o.get("published").map(s).unwrap_or_default(),
            o.get("target").and_then(Value::as_u64).unwrap_or(0),
            o.get("protocol").map(s).unwrap_or_else(|| "tcp".into()),
        )],
        other => ic_compose::canonical::parse_port(&s(other))
            .expect("docker-compose prints valid ports")
            .into_iter()
            .map(|p| {
                (
                    p.host_ip.unwrap_or_default(),
                    p.published.unwrap_or_default(),
                    u64::from(p.target),
                    p.protocol,
                )
            })
            .collect(),
    }
}

fn volume_facts(v: &Value) -> (String, String, String, bool) {
    match v {
        Value::Object(o) => (
            o.get("type").map(s).unwrap_or_default(),
            o.get("source").map(s).unwrap_or_default(),
            o.get("target").map(s).unwrap_or_default(),
            o.get("read_only").and_then(Value::as_bool).unwrap_or(false),
        ),
        other => {
            let text = s(other);
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [t] => ("volume".into(), String::new(), t.to_string(), false),
                [src, t, rest @ ..] => {
                    let kind = if src.starts_with('/') {
                        "bind"
                    } else {
                        "volume"
                    };
                    let ro = rest
                        .first()
                        .is_some_and(|m| m.split(',').any(|o| o == "ro"));
                    (kind.into(), src.to_string(), t.to_string(), ro)
                }
                [] => panic!("empty volume"),
            }
        }
    }
}

/// Flatten a deploy section into `path -> canonical value`, parsing units and constraints so
/// that `128M` and `134217728`, `10s` and `10s` compare equal.
fn flatten_deploy(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let leaf = prefix.rsplit('.').next().unwrap_or_default();
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_deploy(&p, x, out);
            }
        }
        Value::Array(items) if leaf == "labels" => {
            for item in items {
                let t = s(item);
                let (k, val) = t.split_once('=').unwrap_or((&t, ""));
                out.insert(format!("{prefix}.{k}"), val.to_string());
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                flatten_deploy(&format!("{prefix}.{i}"), x, out);
            }
        }
        other => {
            let t = s(other);
            let value = if leaf == "memory" {
                match other {
                    Value::Number(n) => n.to_string(),
                    _ => t.parse::<ByteSize>().map(|b| b.0.to_string()).unwrap_or(t),
                }
            } else if matches!(leaf, "delay" | "window" | "monitor") {
                t.parse::<Duration>().map(|d| d.to_string()).unwrap_or(t)
            } else if leaf == "cpus" || leaf == "max_failure_ratio" {
                t.parse::<f64>().map(|f| f.to_string()).unwrap_or(t)
            } else if prefix.contains("constraints.") {
                t.parse::<Constraint>().map(|c| c.to_string()).unwrap_or(t)
            } else {
                t
            };
            out.insert(prefix.to_string(), value);
        }
    }
}

fn facts(svc: &Value) -> Facts {
    let deploy = svc.get("deploy").cloned().unwrap_or(Value::Null);
    let global = deploy.get("mode").and_then(Value::as_str) == Some("global");
    let replicas = if global {
        None
    } else {
        Some(
            deploy
                .get("replicas")
                .or_else(|| svc.get("scale"))
                .and_then(Value::as_u64)
                .unwrap_or(1),
        )
    };
    let mut flat = BTreeMap::new();
    if !deploy.is_null() {
        flatten_deploy("", &deploy, &mut flat);
    }
    flat.remove("replicas");
    flat.entry("mode".into())
        .or_insert_with(|| "replicated".into());
    let environment = svc
        .get("environment")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), if v.is_null() { None } else { Some(s(v)) }))
                .collect()
        })
        .unwrap_or_default();
    Facts {
        image: svc.get("image").map(s),
        replicas,
        restart: svc.get("restart").map(s),
        environment,
        ports: svc
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().flat_map(port_facts).collect())
            .unwrap_or_default(),
        volumes: svc
            .get("volumes")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(volume_facts).collect())
            .unwrap_or_default(),
        deploy: flat,
    }
}

fn docker_compose_config(file: &Path) -> Result<Value, String> {
    let dir = file.parent().expect("dir");
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(file.file_name().expect("name"))
        .arg("config")
        .current_dir(dir)
        .env_clear()
        .envs(environment())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker-compose (install it: apt-get install -y docker-compose): {e}")
        });
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let tree = ic_compose::yaml::parse(&text, &Arc::from("docker-compose output"))
        .map_err(|e| format!("{e:?}"))?;
    Ok(unescape_dollars(tree.to_json()))
}

/// docker-compose 1.29.2 prints `$` as `$$` so that its output loads again; we print values.
fn unescape_dollars(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace("$$", "$")),
        Value::Array(a) => Value::Array(a.into_iter().map(unescape_dollars).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, unescape_dollars(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn docker_compose_1_29_agrees_on_every_corpus_file_it_loads() {
    let files = ic_compose::corpus::files(&corpus());
    let mut compared = 0;
    let mut problems = Vec::new();
    for f in &files {
        let name = rel(f);
        let ours = match load_ours(f) {
            // What `config` prints (as docker compose v2 does: `restart:` and the other
            // service-level twins as written, not folded into `deploy`).
            Ok(p) => ic_compose::output::to_v2(&p, ic_compose::output::Format::Json),
            Err(e) => {
                problems.push(format!("{name}: we fail to load it:\n{e}"));
                continue;
            }
        };
        let theirs = docker_compose_config(f);
        let rejected = REJECTED_BY_DOCKER_COMPOSE_1_29
            .iter()
            .find(|(n, _)| *n == name);
        match (theirs, rejected) {
            (Err(_), Some(_)) => continue,
            (Err(e), None) => {
                problems.push(format!("{name}: docker-compose 1.29.2 rejects it, and it is not listed as rejected: {e}"));
                continue;
            }
            (Ok(_), Some((_, why))) => {
                problems.push(format!("{name}: listed as rejected by docker-compose ({why}), but it loads now: compare it"));
                continue;
            }
            (Ok(theirs), None) => {
                let ts = theirs
                    .get("services")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let os = ours
                    .get("services")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let tnames: BTreeSet<&String> = ts.keys().collect();
                let onames: BTreeSet<&String> = os.keys().collect();
                if tnames != onames {
                    problems.push(format!(
                        "{name}: services differ: docker-compose {tnames:?}, ours {onames:?}"
                    ));
                    continue;
                }
                for (svc, tv) in &ts {
                    let a = facts(tv);
                    let b = facts(&os[svc]);
                    if a != b {
                        problems.push(format!(
                            "{name}: service {svc}:\n docker-compose: {a:?}\n ours:           {b:?}"
                        ));
                    }
                }
                compared += 1;
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(
        compared + REJECTED_BY_DOCKER_COMPOSE_1_29.len(),
        files.len(),
        "every file is either compared or listed as rejected"
    );
}

/// What the planner gets: `restart:` folded into `deploy.restart_policy` (unless the service
/// declares one), while `config` prints `restart:` as written and no `deploy` it did not have.
#[test]
fn corpus_restart_policies_are_folded_for_the_planner_and_printed_as_written() {
    use ic_compose::model::RestartCondition;
    let files = ic_compose::corpus::files(&corpus());
    let mut folded = 0;
    for f in &files {
        let p = load_ours(f).unwrap_or_else(|e| panic!("{}: {e}", rel(f)));
        let printed = ic_compose::output::to_v2(&p, ic_compose::output::Format::Yaml);
        for (name, svc) in &p.services {
            let out = &printed["services"][name.as_str()];
            let Some(restart) = svc.restart.as_deref() else {
                continue;
            };
            assert_eq!(out["restart"], restart, "{}: {name}", rel(f));
            let declared = svc
                .declared_deploy
                .as_ref()
                .and_then(|d| d.deploy.restart_policy.clone());
            let policy = svc
                .deploy
                .as_ref()
                .and_then(|d| d.restart_policy.clone())
                .unwrap_or_else(|| panic!("{}: {name}: restart not folded", rel(f)));
            if declared.is_none() {
                folded += 1;
                let expected = match restart.split(':').next() {
                    Some("no") => RestartCondition::None,
                    Some("on-failure") => RestartCondition::OnFailure,
                    _ => RestartCondition::Any,
                };
                assert_eq!(policy.condition, expected, "{}: {name}", rel(f));
                assert_eq!(
                    out.get("deploy").is_some(),
                    svc.declared_deploy.is_some(),
                    "{}: {name}: config prints deploy only when declared",
                    rel(f)
                );
            }
        }
    }
    assert!(
        folded >= 20,
        "only {folded} folded restart policies in the corpus"
    );
}

/// `config` output loads again to the same project (`$` is escaped as `$$`, paths are absolute,
/// names are explicit), for every corpus file.
#[test]
fn rendered_corpus_projects_load_again_unchanged() {
    let files = ic_compose::corpus::files(&corpus());
    for f in &files {
        let first = load_ours(f).unwrap_or_else(|e| panic!("{}: {e}", rel(f)));
        let yaml = ic_compose::output::to_yaml_string(&first);
        let dir = ic_compose::canonical::clean(f.parent().expect("dir"));
        let fs = ic_compose::MemFs::default().with(dir.join("rendered.yaml"), yaml.clone());
        let again = ic_compose::load_with(
            &LoadOptions {
                files: vec![PathBuf::from("rendered.yaml")],
                working_dir: dir,
                environment: environment(),
                interpolate: true,
                ..LoadOptions::default()
            },
            &fs,
        )
        .unwrap_or_else(|e| panic!("{}: rendered output does not load:\n{e}\n{yaml}", rel(f)));
        assert_eq!(again.services, first.services, "{}", rel(f));
        assert_eq!(again.networks, first.networks, "{}", rel(f));
        assert_eq!(again.volumes, first.volumes, "{}", rel(f));
        assert_eq!(again.secrets, first.secrets, "{}", rel(f));
        assert_eq!(again.configs, first.configs, "{}", rel(f));
    }
}
