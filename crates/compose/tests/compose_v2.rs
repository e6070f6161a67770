//! `config` prints what docker compose v2 prints: for every compose file of the corpus
//! (`../shared/corpus`), our YAML and `--format json` output against Debian 13's
//! `docker-compose` 2.26.1 (compose-go), run with the same working directory, environment and
//! `-p`: the same keys and values after parsing both, and the same bytes.
//!
//! The reference binary comes from `scripts/test-cluster compose-v2` (cached as
//! /var/cache/incus-compose-test/compose-v2/docker-compose; `INCUS_COMPOSE_TEST_COMPOSE_V2`
//! names another). Without it the tests fail, saying how to get it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ic_compose::{LoadOptions, load, normalize_project_name};
use serde_json::Value;

const DEFAULT_V2: &str = "/var/cache/incus-compose-test/compose-v2/docker-compose";

fn v2_binary() -> PathBuf {
    let path = std::env::var_os("INCUS_COMPOSE_TEST_COMPOSE_V2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_V2));
    assert!(
        path.is_file(),
        "docker compose v2, the reference of these tests, is not at {}: get it with \
         `scripts/test-cluster compose-v2` (as root; it downloads Debian 13's docker-compose \
         2.26.1 with the harness's Debian 13 root and caches it there), or point \
         INCUS_COMPOSE_TEST_COMPOSE_V2 at a docker-compose v2 binary",
        path.display()
    );
    path
}

fn corpus() -> PathBuf {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus");
    std::fs::canonicalize(path).unwrap_or_else(|e| panic!("cannot find the corpus at {path}: {e}"))
}

fn compose_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            compose_files(&p, out);
        } else {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if (name.contains("compose") || name == "docker-stack.yml")
                && (name.ends_with(".yml") || name.ends_with(".yaml"))
            {
                out.push(p);
            }
        }
    }
}

/// The environment both tools see: a fixed one (not the caller's), with the variables some
/// corpus files require (`${DOMAIN?...}`).
fn environment() -> BTreeMap<String, String> {
    [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/root"),
        ("DOMAIN", "example.org"),
        ("ADMIN_USER", "admin"),
        ("HASHED_PASSWORD", "$$apr1$$hash"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(corpus())
        .map(|r| r.display().to_string())
        .unwrap_or_default()
}

/// The project name both tools get with `-p`: the directory's, as compose derives it.
fn project_name(file: &Path) -> String {
    let dir = file.parent().and_then(Path::file_name).unwrap_or_default();
    normalize_project_name(&dir.to_string_lossy())
}

fn ours(file: &Path) -> ic_compose::Project {
    load(&LoadOptions {
        files: vec![PathBuf::from(file.file_name().expect("file name"))],
        working_dir: file.parent().expect("directory").to_path_buf(),
        project_name: Some(project_name(file)),
        environment: environment(),
        interpolate: true,
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", rel(file)))
}

fn theirs(v2: &Path, file: &Path, json: bool) -> String {
    let mut cmd = Command::new(v2);
    cmd.arg("-f")
        .arg(file.file_name().expect("name"))
        .arg("-p")
        .arg(project_name(file))
        .arg("config");
    if json {
        cmd.args(["--format", "json"]);
    }
    let out = cmd
        .current_dir(file.parent().expect("dir"))
        .env_clear()
        .envs(environment())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", v2.display()));
    assert!(
        out.status.success(),
        "{}: docker compose v2 fails: {}",
        rel(file),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn parse_yaml(text: &str, what: &str) -> Value {
    ic_compose::yaml::parse(text, &Arc::from(what))
        .unwrap_or_else(|e| panic!("{what} does not parse: {e:?}\n{text}"))
        .to_json()
}

/// Where two values differ, one line per differing leaf (`services.db.volumes.0.volume`).
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => differences(v, w, &p, out),
                    None => out.push(format!("{p}: only docker compose v2 has {v}")),
                }
            }
            for (k, w) in y {
                if !x.contains_key(k) {
                    out.push(format!("{path}.{k}: only incus-compose has {w}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(v, w, &format!("{path}.{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: docker compose v2 {a}, incus-compose {b}")),
        _ => {}
    }
}

/// Our deliberate differences (README, "config and docker compose v2"), applied to v2's
/// parsed output: absolute bind sources are cleaned (`/var/lib/docker/` is written
/// `/var/lib/docker`), since the cleaned path is the disk device's source.
fn deliberate(v: &mut Value) {
    let Some(services) = v.get_mut("services").and_then(Value::as_object_mut) else {
        return;
    };
    for (_, svc) in services.iter_mut() {
        let Some(vols) = svc.get_mut("volumes").and_then(Value::as_array_mut) else {
            continue;
        };
        for vol in vols {
            if vol.get("type").and_then(Value::as_str) == Some("bind") {
                if let Some(Value::String(s)) = vol.get_mut("source") {
                    if s.len() > 1 && s.ends_with('/') {
                        *s = s.trim_end_matches('/').to_string();
                    }
                }
            }
        }
    }
}

/// Compares one format over the corpus: every file byte-identical, or structurally identical
/// up to the deliberate differences.
fn compare_corpus(json: bool) {
    let v2 = v2_binary();
    let mut files = Vec::new();
    compose_files(&corpus(), &mut files);
    assert!(
        files.len() >= 45,
        "corpus shrank: {} compose files",
        files.len()
    );
    let mut problems = Vec::new();
    let mut byte_identical = 0;
    let mut deliberately_different = Vec::new();
    for f in &files {
        let project = ours(f);
        let mine = if json {
            ic_compose::output::to_json_string(&project, false)
        } else {
            ic_compose::output::to_yaml_string(&project)
        };
        let reference = theirs(&v2, f, json);
        let parse = |text: &str, what: &str| -> Value {
            if json {
                serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{what} is not JSON: {e}\n{text}"))
            } else {
                parse_yaml(text, what)
            }
        };
        let mut a = parse(&reference, "docker compose v2's output");
        let b = parse(&mine, "our output");
        if mine == reference {
            byte_identical += 1;
            continue;
        }
        let before = a.clone();
        deliberate(&mut a);
        let mut diff = Vec::new();
        differences(&a, &b, "", &mut diff);
        if !diff.is_empty() {
            problems.push(format!("{}:\n  {}", rel(f), diff.join("\n  ")));
        } else if before != a {
            deliberately_different.push(rel(f));
        } else {
            problems.push(format!(
                "{}: same keys and values, other bytes:\n--- docker compose v2\n{reference}\n--- incus-compose\n{mine}",
                rel(f)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert_eq!(
        byte_identical + deliberately_different.len(),
        files.len(),
        "every file is byte-identical or differs only deliberately"
    );
    // The deliberate difference shows up where the corpus writes a bind source with a final
    // `/`, and nowhere else.
    assert_eq!(
        deliberately_different,
        [
            "awesome-compose/pihole-cloudflared-DoH/compose.yaml",
            "swarm/swarmprom/docker-compose.traefik.yml",
            "swarm/swarmprom/docker-compose.yml",
            "swarm/swarmprom/weave-compose.yml",
        ]
    );
}

#[test]
fn config_yaml_is_what_docker_compose_v2_prints_for_every_corpus_file() {
    compare_corpus(false);
}

#[test]
fn config_json_is_what_docker_compose_v2_prints_for_every_corpus_file() {
    compare_corpus(true);
}

/// Strings whose YAML style go-yaml picks by its own rules (plain, quoted because they would
/// read as another type, single quotes for indicators, `|` blocks), and map keys in go-yaml's
/// natural order: our output equals docker compose v2's, byte for byte, in YAML and JSON.
/// Not here: a value that starts with a line break (go-yaml v3 writes a `|` block that reads
/// back without it; we keep it: README), and U+0085 (go-yaml reads it as a line break).
#[test]
fn config_quotes_and_orders_tricky_values_as_docker_compose_v2_does() {
    let v2 = v2_binary();
    let values = [
        "",
        " lead",
        "trail ",
        "a: b",
        "a #b",
        "a#b",
        "#x",
        "- x",
        "-x",
        "--x",
        "? x",
        ":x",
        "x:",
        "yes",
        "No",
        "on",
        "y",
        "~",
        "null",
        "NULL",
        "True",
        "0644",
        "0o17",
        "0x1F",
        "1e3",
        "1.5",
        ".5",
        "1_000",
        "+1",
        "-1",
        "12:30",
        "1:2:3",
        "2024-01-02",
        "2024-01-02T10:00:00Z",
        "{a}",
        "[a]",
        "*x",
        "&x",
        "!x",
        "|x",
        ">x",
        "%x",
        "@x",
        "`x",
        "'x'",
        "\"x\"",
        "it's",
        "a\tb",
        "line1\nline2",
        "line1\nline2\n",
        "line1\n\n",
        " x\ny",
        "x \ny",
        "é✓ ünï",
        "---",
        "--- x",
        "...",
        "a,b",
        "a[b]",
        "=x",
        "<<",
        ".inf",
        "-.Inf",
        ".nan",
        "0",
        "00",
        "08",
        "0b101",
        "9223372036854775808",
        "18446744073709551616",
        "1e",
        "e1",
        "0.",
        "+.5",
        "C:\\path",
        "a\\nb",
    ];
    let keys = [
        "a10", "a9", "A_B", "AB", "a.b", "a-b", "ab", "a1b", "a01", "a001b", "B", "b", "_x", "x_",
        "Z9", "z10", "10", "9", "é",
    ];
    let mut env = serde_json::Map::new();
    for (i, v) in values.iter().enumerate() {
        env.insert(format!("V{i}"), Value::String((*v).to_string()));
    }
    let labels: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_string(), Value::String("v".into())))
        .collect();
    let doc = serde_json::json!({
        "services": {"web": {"image": "busybox", "environment": env, "labels": labels}}
    });
    let dir = std::env::temp_dir().join(format!("ic-compose-v2-quoting-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("compose.yaml");
    std::fs::write(&file, ic_compose::goyaml::to_string(&doc)).expect("write compose.yaml");
    let project = ours(&file);
    for json in [false, true] {
        let mine = if json {
            ic_compose::output::to_json_string(&project, false)
        } else {
            ic_compose::output::to_yaml_string(&project)
        };
        let reference = theirs(&v2, &file, json);
        assert_eq!(mine, reference, "json: {json}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
