//! Rendering the project as `incus-compose config` prints it: as docker compose v2 (compose-go)
//! prints it, in YAML and JSON.
//!
//! The typed model keeps what later stages need ([`Service::deploy`] with the service-level
//! twins folded in); this module turns it back into compose-go's form: `deploy` as declared
//! ([`Service::declared_deploy`]), compose-go's key order (the field order of its Go structs;
//! Go maps sorted as go-yaml v3 sorts them in YAML, bytewise in JSON), byte sizes as strings,
//! unset environment entries left out, and the empty structs `encoding/json` keeps in JSON.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::model::{Project, Service, VolumeType};

/// The two output formats, which differ in key order and in empty values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// The model as JSON (serde), keys in the model's order: what later stages see, with the
/// service-level twins folded into `deploy`. Not what `config` prints (see [`to_v2`]).
pub fn to_json(project: &Project) -> serde_json::Value {
    serde_json::to_value(project).unwrap_or(serde_json::Value::Null)
}

/// Write every `$` in string values as `$$`, so that the rendered project loads again with
/// the same values (keys are never interpolated, so they are left alone).
pub fn escape_dollars(v: serde_json::Value) -> serde_json::Value {
    match v {
        Value::String(s) if s.contains('$') => Value::String(s.replace('$', "$$")),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_dollars).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, escape_dollars(v))).collect())
        }
        other => other,
    }
}

/// The project as `config --format json` prints it: `$` escaped as `$$` unless `raw` (for
/// `--no-interpolate`, where values still hold their `${VAR}` templates).
pub fn to_json_output(project: &Project, raw: bool) -> serde_json::Value {
    let mut v = to_v2(project, Format::Json);
    go_json_numbers(&mut v);
    if raw { v } else { escape_dollars(v) }
}

/// Whole floats as Go's `encoding/json` writes them: `1`, not `1.0`.
fn go_json_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(go_json_numbers),
        Value::Object(m) => m.values_mut().for_each(go_json_numbers),
        _ => {}
    }
}

/// `config --format json` as text: Go's `json.MarshalIndent` with two spaces, `<`, `>`, `&`
/// escaped as `encoding/json` does, and no final newline (docker compose v2 writes none).
pub fn to_json_string(project: &Project, raw: bool) -> String {
    let text = serde_json::to_string_pretty(&to_json_output(project, raw)).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The project as a YAML document, `$` escaped as `$$` (loads again to the same project).
pub fn to_yaml_string(project: &Project) -> String {
    to_yaml_output(project, false)
}

/// The project as `config` prints it in YAML; `raw` as for [`to_json_output`].
pub fn to_yaml_output(project: &Project, raw: bool) -> String {
    let v = to_v2(project, Format::Yaml);
    let v = if raw { v } else { escape_dollars(v) };
    crate::goyaml::to_string(&v)
}

// Key orders: the field order of compose-go's (v2.0) structs.
const PROJECT: &[&str] = &[
    "name", "services", "networks", "volumes", "secrets", "configs",
];
const SERVICE: &[&str] = &[
    "profiles",
    "annotations",
    "attach",
    "build",
    "develop",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "cgroup",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "cpu_shares",
    "command",
    "configs",
    "container_name",
    "credential_spec",
    "depends_on",
    "deploy",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "dockerfile",
    "domainname",
    "entrypoint",
    "provider",
    "environment",
    "env_file",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "group_add",
    "gpus",
    "hostname",
    "healthcheck",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "label_file",
    "links",
    "logging",
    "log_driver",
    "log_opt",
    "mem_limit",
    "mem_reservation",
    "memswap_limit",
    "mem_swappiness",
    "mac_address",
    "models",
    "net",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "privileged",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "user",
    "userns_mode",
    "uts",
    "volume_driver",
    "volumes",
    "volumes_from",
    "working_dir",
    "pre_start",
    "post_start",
    "pre_stop",
];
const BUILD: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "pull",
    "extra_hosts",
    "isolation",
    "network",
    "target",
    "secrets",
    "shm_size",
    "tags",
    "ulimits",
    "platforms",
    "privileged",
];
const DEPLOY: &[&str] = &[
    "mode",
    "replicas",
    "labels",
    "update_config",
    "rollback_config",
    "resources",
    "restart_policy",
    "placement",
    "endpoint_mode",
];
const RESOURCES: &[&str] = &["limits", "reservations"];
const RESOURCE: &[&str] = &["cpus", "memory", "pids", "devices", "generic_resources"];
const DEVICE: &[&str] = &["capabilities", "driver", "count", "device_ids", "options"];
const HEALTHCHECK: &[&str] = &[
    "test",
    "timeout",
    "interval",
    "retries",
    "start_period",
    "start_interval",
    "disable",
];
const DEPENDENCY: &[&str] = &["condition", "restart", "required"];
const SERVICE_NETWORK: &[&str] = &[
    "priority",
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "mac_address",
];
// Later compose-go versions add fields (gpus, models, provider, ...): placed where the latest
// puts them.
const VOLUME_MOUNT: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "consistency",
    "bind",
    "volume",
    "tmpfs",
    "image",
];
const BIND: &[&str] = &["selinux", "propagation", "create_host_path", "recursive"];
const NETWORK: &[&str] = &[
    "name",
    "driver",
    "driver_opts",
    "ipam",
    "external",
    "internal",
    "attachable",
    "labels",
    "enable_ipv6",
];
const IPAM: &[&str] = &["driver", "config", "options"];
const IPAM_POOL: &[&str] = &["subnet", "gateway", "ip_range", "aux_addresses"];
const VOLUME: &[&str] = &["name", "driver", "driver_opts", "external", "labels"];
const FILE_OBJECT: &[&str] = &[
    "name",
    "file",
    "environment",
    "content",
    "external",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
];

/// The project in compose-go's shape for `format` (before `$` escaping).
pub fn to_v2(project: &Project, format: Format) -> Value {
    let Value::Object(mut top) = to_json(project) else {
        return Value::Null;
    };
    let used = used(project);
    for (section, used) in [
        ("networks", &used.networks),
        ("volumes", &used.volumes),
        ("secrets", &used.secrets),
        ("configs", &used.configs),
    ] {
        if let Some(Value::Object(items)) = top.get_mut(section) {
            items.retain(|k, _| used.contains(k.as_str()));
            if items.is_empty() {
                top.remove(section);
            }
        }
    }
    if let Some(Value::Object(services)) = top.get_mut("services") {
        for (name, v) in services.iter_mut() {
            if let (Some(svc), Value::Object(o)) = (project.services.get(name), v) {
                service(svc, o, format);
            }
        }
    }
    for (section, keys) in [
        ("networks", NETWORK),
        ("volumes", VOLUME),
        ("secrets", FILE_OBJECT),
        ("configs", FILE_OBJECT),
    ] {
        if let Some(Value::Object(items)) = top.get_mut(section) {
            for (_, item) in items.iter_mut() {
                if let Value::Object(o) = item {
                    if section == "networks" {
                        network(o, format);
                    }
                    map_values(o, &["driver_opts", "labels"], format);
                    order(o, keys, format);
                }
            }
            sort_map(items, format);
        }
    }
    if let Some(Value::Object(services)) = top.get_mut("services") {
        sort_map(services, format);
    }
    match format {
        // compose-go's Project.MarshalJSON writes a Go map: keys sorted. Only the project's
        // `x-` keys: the other structs' extensions are `json:"-"`.
        Format::Json => {
            for (k, v) in top.iter_mut() {
                if k.starts_with("x-") {
                    deep_sort(v, format);
                } else if k == "services" {
                    for svc in v.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                        strip_extensions(svc);
                        if let Some(svc) = svc.as_object_mut() {
                            for key in ["build", "deploy", "healthcheck", "logging"] {
                                if let Some(x) = svc.get_mut(key) {
                                    strip_extensions(x);
                                }
                            }
                            for key in ["volumes", "ports", "secrets", "configs"] {
                                if let Some(Value::Array(items)) = svc.get_mut(key) {
                                    items.iter_mut().for_each(strip_extensions);
                                }
                            }
                            if let Some(Value::Object(nets)) = svc.get_mut("networks") {
                                nets.values_mut().for_each(strip_extensions);
                            }
                        }
                    }
                } else if let Value::Object(items) = v {
                    items.values_mut().for_each(strip_extensions);
                }
            }
            sort_map(&mut top, format);
            Value::Object(top)
        }
        Format::Yaml => {
            order(&mut top, PROJECT, format);
            Value::Object(top)
        }
    }
}

/// The top-level networks, volumes, secrets and configs that some (enabled) service uses:
/// the only ones docker compose v2 prints (compose-go's `WithoutUnnecessaryResources`).
#[derive(Debug, Default)]
pub struct Used<'a> {
    pub networks: BTreeSet<&'a str>,
    pub volumes: BTreeSet<&'a str>,
    pub secrets: BTreeSet<&'a str>,
    pub configs: BTreeSet<&'a str>,
}

pub fn used(project: &Project) -> Used<'_> {
    let mut u = Used::default();
    for svc in project.services.values() {
        u.networks.extend(svc.networks.keys().map(String::as_str));
        u.volumes
            .extend(svc.volumes.iter().filter_map(|v| match v.kind {
                VolumeType::Volume => v.source.as_deref(),
                _ => None,
            }));
        u.secrets
            .extend(svc.secrets.iter().map(|s| s.source.as_str()));
        u.configs
            .extend(svc.configs.iter().map(|c| c.source.as_str()));
    }
    u
}

fn service(svc: &Service, o: &mut Map<String, Value>, format: Format) {
    match &svc.declared_deploy {
        Some(d) => {
            let mut v = serde_json::to_value(&d.deploy).unwrap_or(Value::Null);
            if let Value::Object(dm) = &mut v {
                if !d.mode {
                    dm.remove("mode");
                }
                if !d.constraints.is_empty() {
                    // As written, even those `up` refuses (not in the typed placement).
                    let pl = dm
                        .entry("placement")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(pl) = pl {
                        pl.insert(
                            "constraints".into(),
                            d.constraints.iter().cloned().map(Value::String).collect(),
                        );
                    }
                }
                deploy(dm, format);
            }
            o.insert("deploy".into(), v);
        }
        None => {
            o.remove("deploy");
        }
    }
    // The env files are read into `environment`; compose-go does not print them.
    o.remove("env_file");
    develop(o, format);
    // Services this one shares a namespace or volumes with, or links to, are dependencies
    // (compose-go adds them to `depends_on`).
    let mut implied: Vec<(String, bool)> = Vec::new();
    for key in ["network_mode", "ipc", "pid", "uts", "cgroup"] {
        if let Some(other) = o
            .get(key)
            .and_then(Value::as_str)
            .and_then(|m| m.strip_prefix("service:"))
        {
            implied.push((other.to_string(), true));
        }
    }
    for link in o
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(l) = link.as_str() {
            let name = l.split_once(':').map_or(l, |(n, _)| n);
            implied.push((name.to_string(), true));
        }
    }
    for from in o
        .get("volumes_from")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(f) = from.as_str().filter(|f| !f.starts_with("container:")) {
            implied.push((f.split(':').next().unwrap_or(f).to_string(), false));
        }
    }
    if !implied.is_empty() {
        let deps = o
            .entry("depends_on")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(deps) = deps {
            for (name, restart) in implied {
                deps.entry(name).or_insert_with(|| {
                    let mut d = Map::new();
                    d.insert("condition".into(), "service_started".into());
                    if restart {
                        d.insert("restart".into(), Value::Bool(true));
                    }
                    d.insert("required".into(), Value::Bool(true));
                    Value::Object(d)
                });
            }
        }
    }
    // `gpus: all` is a device request for every GPU.
    if o.get("gpus").and_then(Value::as_str) == Some("all") {
        o.insert("gpus".into(), serde_json::json!([{ "count": -1 }]));
    }
    if let Some(Value::Array(gpus)) = o.get_mut("gpus") {
        for g in gpus.iter_mut() {
            if let Value::Object(g) = g {
                order(g, DEVICE, format);
            }
        }
    }
    if o.get("pull_policy").and_then(Value::as_str) == Some("if_not_present") {
        o.insert("pull_policy".into(), Value::String("missing".into()));
    }
    // `HOST:IP` and `HOST=IP` both print as `HOST=IP`, sorted (compose-go's `HostsList`).
    if let Some(Value::Array(hosts)) = o.get_mut("extra_hosts") {
        let mut list: Vec<String> = hosts
            .iter()
            .filter_map(Value::as_str)
            .map(|h| match h.split_once('=').or_else(|| h.split_once(':')) {
                Some((host, ip)) => format!("{host}={ip}"),
                None => h.to_string(),
            })
            .collect();
        list.sort();
        *hosts = list.into_iter().map(Value::String).collect();
    }
    // `SRC[:DST[:PERMISSIONS]]` in long form (compose-go's `DeviceMapping`).
    if let Some(Value::Array(devices)) = o.get_mut("devices") {
        for d in devices.iter_mut() {
            if let Value::String(spec) = d {
                let parts: Vec<&str> = spec.split(':').collect();
                if parts.len() <= 3 {
                    let source = parts[0].to_string();
                    let target = parts
                        .get(1)
                        .filter(|t| !t.is_empty())
                        .map_or(source.clone(), |t| (*t).to_string());
                    let permissions = parts.get(2).map_or("rwm", |p| *p).to_string();
                    let mut m = Map::new();
                    m.insert("source".into(), Value::String(source));
                    m.insert("target".into(), Value::String(target));
                    m.insert("permissions".into(), Value::String(permissions));
                    *d = Value::Object(m);
                }
            }
        }
    }
    for key in ["mem_limit", "mem_reservation", "shm_size", "memswap_limit"] {
        bytes_to_string(o.get_mut(key));
    }
    if let Some(c) = o.get_mut("cpus") {
        float32(c);
    }
    if let Some(Value::Object(b)) = o.get_mut("build") {
        if let Some(Value::Object(args)) = b.get_mut("args") {
            args.retain(|_, v| !v.is_null());
        }
        // Build secrets in long form, without a default target.
        if let Some(Value::Array(secrets)) = b.get_mut("secrets") {
            for sec in secrets.iter_mut() {
                if let Value::String(name) = sec {
                    let mut m = Map::new();
                    m.insert("source".into(), Value::String(std::mem::take(name)));
                    *sec = Value::Object(m);
                }
            }
        }
        map_values(b, &["args", "labels", "additional_contexts"], format);
        order(b, BUILD, format);
    }
    if let Some(Value::Object(h)) = o.get_mut("healthcheck") {
        order(h, HEALTHCHECK, format);
    }
    if let Some(Value::Object(deps)) = o.get_mut("depends_on") {
        for (_, d) in deps.iter_mut() {
            if let Value::Object(d) = d {
                order(d, DEPENDENCY, format);
            }
        }
        sort_map(deps, format);
    }
    if let Some(Value::Object(nets)) = o.get_mut("networks") {
        for (_, n) in nets.iter_mut() {
            if let Value::Object(n) = n {
                order(n, SERVICE_NETWORK, format);
            }
        }
        sort_map(nets, format);
    }
    if let Some(Value::Array(vols)) = o.get_mut("volumes") {
        for v in vols.iter_mut() {
            if let Value::Object(v) = v {
                if let Some(Value::Object(t)) = v.get_mut("tmpfs") {
                    bytes_to_string(t.get_mut("size"));
                }
                if let Some(Value::Object(b)) = v.get_mut("bind") {
                    order(b, BIND, format);
                }
                order(v, VOLUME_MOUNT, format);
            }
        }
    }
    if let Some(Value::Object(l)) = o.get_mut("logging") {
        map_values(l, &["options"], format);
    }
    map_values(
        o,
        &[
            "annotations",
            "environment",
            "labels",
            "sysctls",
            "ulimits",
            "storage_opt",
            "log_opt",
        ],
        format,
    );
    if format == Format::Json {
        // `command` and `entrypoint` have no omitempty in compose-go's JSON tags.
        for key in ["command", "entrypoint"] {
            o.entry(key).or_insert(Value::Null);
        }
    }
    order(o, SERVICE, format);
}

fn deploy(d: &mut Map<String, Value>, format: Format) {
    if let Some(Value::Object(r)) = d.get_mut("resources") {
        for key in ["limits", "reservations"] {
            if let Some(Value::Object(res)) = r.get_mut(key) {
                bytes_to_string(res.get_mut("memory"));
                if let Some(c) = res.get_mut("cpus") {
                    float32(c);
                }
                if let Some(Value::Array(g)) = res.get_mut("generic_resources") {
                    for item in g.iter_mut() {
                        let spec = std::mem::take(item);
                        let mut m = Map::new();
                        m.insert("discrete_resource_spec".into(), spec);
                        *item = Value::Object(m);
                    }
                }
                if let Some(Value::Array(devs)) = res.get_mut("devices") {
                    for dev in devs.iter_mut() {
                        if let Value::Object(dev) = dev {
                            order(dev, DEVICE, format);
                        }
                    }
                }
                order(res, RESOURCE, format);
            }
        }
        order(r, RESOURCES, format);
    }
    if let Some(Value::Object(l)) = d.get_mut("labels") {
        sort_map(l, format);
    }
    if format == Format::Json {
        // Non-pointer structs: encoding/json writes them even when empty.
        for key in ["resources", "placement"] {
            d.entry(key).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    order(d, DEPLOY, format);
}

/// compose-go's `Trigger` field order for `develop.watch[]`; in JSON its `exec` hook is a
/// struct, always written (`{"command": null}`).
const WATCH: &[&str] = &[
    "path",
    "action",
    "target",
    "exec",
    "ignore",
    "include",
    "initial_sync",
];
const HOOK: &[&str] = &[
    "command",
    "user",
    "privileged",
    "working_dir",
    "environment",
];

fn develop(o: &mut Map<String, Value>, format: Format) {
    let Some(Value::Object(dev)) = o.get_mut("develop") else {
        return;
    };
    let Some(Value::Array(watch)) = dev.get_mut("watch") else {
        return;
    };
    for t in watch.iter_mut() {
        let Value::Object(t) = t else { continue };
        if format == Format::Json {
            let exec = t.entry("exec").or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(e) = exec {
                e.entry("command").or_insert(Value::Null);
            }
        }
        if let Some(Value::Object(e)) = t.get_mut("exec") {
            order(e, HOOK, format);
        }
        order(t, WATCH, format);
    }
}

fn network(n: &mut Map<String, Value>, format: Format) {
    if let Some(Value::Object(ipam)) = n.get_mut("ipam") {
        if let Some(Value::Array(pools)) = ipam.get_mut("config") {
            for p in pools.iter_mut() {
                if let Value::Object(p) = p {
                    map_values(p, &["aux_addresses"], format);
                    order(p, IPAM_POOL, format);
                }
            }
        }
        map_values(ipam, &["options"], format);
        order(ipam, IPAM, format);
    }
    if format == Format::Json {
        n.entry("ipam").or_insert_with(|| Value::Object(Map::new()));
    }
}

/// compose-go's `UnitBytes` prints as a decimal string.
fn bytes_to_string(v: Option<&mut Value>) {
    if let Some(v) = v {
        if let Value::Number(n) = v {
            *v = Value::String(n.to_string());
        }
    }
}

/// compose-go keeps CPU counts as `float32`: a whole number prints without a fraction.
fn float32(v: &mut Value) {
    if let Some(f) = v.as_f64() {
        let f32v = f as f32;
        if f32v.fract() == 0.0 && f32v.abs() < 1e15 {
            *v = Value::from(f32v as i64);
        } else if let Ok(short) = format!("{f32v}").parse::<f64>() {
            // The shortest decimal of the float32, as Go's strconv writes it.
            if let Some(n) = serde_json::Number::from_f64(short) {
                *v = Value::Number(n);
            }
        }
    }
}

/// The Go maps among `keys` of `o` sorted.
fn map_values(o: &mut Map<String, Value>, keys: &[&str], format: Format) {
    for key in keys {
        if let Some(Value::Object(m)) = o.get_mut(*key) {
            sort_map(m, format);
        }
    }
}

/// Put the keys of a struct in `keys` order; the rest (`x-` extensions, an inline Go map)
/// after them, sorted, their values' maps sorted too.
fn order(o: &mut Map<String, Value>, keys: &[&str], format: Format) {
    let mut rest: Vec<(String, Value)> = Vec::new();
    let mut known: Vec<Option<Value>> = vec![None; keys.len()];
    for (k, v) in std::mem::take(o) {
        match keys.iter().position(|x| *x == k) {
            Some(i) => known[i] = Some(v),
            None => rest.push((k, v)),
        }
    }
    for (k, v) in keys.iter().zip(known) {
        if let Some(v) = v {
            o.insert((*k).to_string(), v);
        }
    }
    rest.sort_by(|a, b| compare_keys(&a.0, &b.0, format));
    for (k, mut v) in rest {
        deep_sort(&mut v, format);
        o.insert(k, v);
    }
}

/// A Go map's keys in the order its encoder writes them.
fn sort_map(m: &mut Map<String, Value>, format: Format) {
    let mut items: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
    items.sort_by(|a, b| compare_keys(&a.0, &b.0, format));
    m.extend(items);
}

/// A struct's `x-` keys removed (JSON).
fn strip_extensions(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, _| !k.starts_with("x-"));
    }
}

/// Every map in an untyped value (extensions: `map[string]any` in Go) sorted.
fn deep_sort(v: &mut Value, format: Format) {
    match v {
        Value::Object(m) => {
            for (_, x) in m.iter_mut() {
                deep_sort(x, format);
            }
            sort_map(m, format);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| deep_sort(x, format)),
        _ => {}
    }
}

fn compare_keys(a: &str, b: &str, format: Format) -> Ordering {
    match format {
        Format::Json => a.cmp(b),
        Format::Yaml => crate::goyaml::key_order(a, b),
    }
}
