//! Structural validation with the Compose Specification's JSON-schema semantics: unknown keys
//! (outside `x-`) and wrong types are errors, required keys must be present. The shapes below
//! follow the specification's schema (compose-spec `schema/compose-spec.json`), written as Rust
//! tables so every error carries the node's position and a "did you mean".
//!
//! Where the schema offers `oneOf`, the alternatives differ by YAML kind (string, list,
//! mapping), so the alternative is chosen by the node's kind and the error names what was found.

use crate::error::{Diagnostic, Errors};
use crate::yaml::{Node, Value};

#[derive(Clone, Copy)]
pub enum Shape {
    Any,
    Str,
    /// An integer, or a string (to be interpolated / parsed later).
    Int,
    /// A number, or a string.
    Num,
    /// A boolean, or a string.
    Bool,
    /// A boolean only.
    StrictBool,
    /// A string or a number.
    StrNum,
    /// A string, number, boolean or null (values of `list_or_dict`).
    Scalar,
    Enum(&'static [&'static str]),
    List(&'static Shape),
    /// A mapping with free keys.
    Map(&'static Shape),
    Obj(&'static Obj),
    /// One of several shapes, chosen by the node's YAML kind.
    Either(&'static [Shape]),
    OrNull(&'static Shape),
}

pub struct Obj {
    pub fields: &'static [(&'static str, Shape)],
    pub required: &'static [&'static str],
    /// `x-` keys allowed.
    pub ext: bool,
}

use Shape::*;

const STR_LIST: Shape = List(&Str);
const STR_OR_LIST: Shape = Either(&[Str, STR_LIST]);
const LIST_OR_DICT: Shape = Either(&[Map(&Scalar), STR_LIST]);
const COMMAND: Shape = Either(&[Str, STR_LIST, OrNull(&Any)]);
const EXTRA_HOSTS: Shape = Either(&[Map(&Either(&[Str, STR_LIST])), STR_LIST]);

static ULIMIT_OBJ: Obj = Obj {
    fields: &[("hard", Int), ("soft", Int)],
    required: &["soft", "hard"],
    ext: true,
};
const ULIMITS: Shape = Map(&Either(&[Int, Obj(&ULIMIT_OBJ)]));

static FILE_REF: Obj = Obj {
    fields: &[
        ("source", Str),
        ("target", Str),
        ("uid", Str),
        ("gid", Str),
        ("mode", Num),
    ],
    required: &[],
    ext: true,
};
const CONFIG_OR_SECRET: Shape = List(&Either(&[Str, Obj(&FILE_REF)]));

static BLKIO_LIMIT: Obj = Obj {
    fields: &[("path", Str), ("rate", Int)],
    required: &[],
    ext: false,
};
static BLKIO_WEIGHT: Obj = Obj {
    fields: &[("path", Str), ("weight", Int)],
    required: &[],
    ext: false,
};
static BLKIO: Obj = Obj {
    fields: &[
        ("device_read_bps", List(&Obj(&BLKIO_LIMIT))),
        ("device_read_iops", List(&Obj(&BLKIO_LIMIT))),
        ("device_write_bps", List(&Obj(&BLKIO_LIMIT))),
        ("device_write_iops", List(&Obj(&BLKIO_LIMIT))),
        ("weight", Int),
        ("weight_device", List(&Obj(&BLKIO_WEIGHT))),
    ],
    required: &[],
    ext: false,
};

static BUILD: Obj = Obj {
    fields: &[
        ("context", Str),
        ("dockerfile", Str),
        ("dockerfile_inline", Str),
        ("entitlements", STR_LIST),
        ("args", LIST_OR_DICT),
        ("ssh", LIST_OR_DICT),
        ("labels", LIST_OR_DICT),
        ("cache_from", STR_LIST),
        ("cache_to", STR_LIST),
        ("no_cache", Bool),
        ("additional_contexts", LIST_OR_DICT),
        ("network", Str),
        ("pull", Bool),
        ("target", Str),
        ("shm_size", Either(&[Int, Str])),
        ("extra_hosts", EXTRA_HOSTS),
        ("isolation", Str),
        ("privileged", Bool),
        ("secrets", CONFIG_OR_SECRET),
        ("tags", STR_LIST),
        ("ulimits", ULIMITS),
        ("platforms", STR_LIST),
    ],
    required: &[],
    ext: true,
};

static CREDENTIAL_SPEC: Obj = Obj {
    fields: &[("config", Str), ("file", Str), ("registry", Str)],
    required: &[],
    ext: true,
};

static DEPENDS_ON_ENTRY: Obj = Obj {
    fields: &[
        ("restart", Bool),
        ("required", StrictBool),
        (
            "condition",
            Enum(&[
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            ]),
        ),
    ],
    required: &["condition"],
    ext: true,
};

static DEVICE_MAPPING: Obj = Obj {
    fields: &[("source", Str), ("target", Str), ("permissions", Str)],
    required: &["source"],
    ext: true,
};

static EXTENDS: Obj = Obj {
    fields: &[("service", Str), ("file", Str)],
    required: &["service"],
    ext: false,
};

static PROVIDER: Obj = Obj {
    fields: &[
        ("type", Str),
        ("options", Map(&Either(&[Scalar, List(&Scalar)]))),
    ],
    required: &["type"],
    ext: true,
};

static GPU: Obj = Obj {
    fields: &[
        ("capabilities", STR_LIST),
        ("count", Int),
        ("device_ids", STR_LIST),
        ("driver", Str),
        ("options", LIST_OR_DICT),
    ],
    required: &[],
    ext: true,
};

static HEALTHCHECK: Obj = Obj {
    fields: &[
        ("disable", Bool),
        ("interval", Str),
        ("retries", Num),
        ("test", STR_OR_LIST),
        ("timeout", Str),
        ("start_period", Str),
        ("start_interval", Str),
    ],
    required: &[],
    ext: true,
};

static LOGGING: Obj = Obj {
    fields: &[("driver", Str), ("options", Map(&OrNull(&StrNum)))],
    required: &[],
    ext: true,
};

static MODEL_REF: Obj = Obj {
    fields: &[("endpoint_var", Str)],
    required: &[],
    ext: true,
};

static SERVICE_NETWORK: Obj = Obj {
    fields: &[
        ("aliases", STR_LIST),
        ("interface_name", Str),
        ("ipv4_address", Str),
        ("ipv6_address", Str),
        ("link_local_ips", STR_LIST),
        ("mac_address", Str),
        ("driver_opts", Map(&StrNum)),
        ("priority", Num),
        ("gw_priority", Num),
    ],
    required: &[],
    ext: true,
};

static PORT: Obj = Obj {
    fields: &[
        ("name", Str),
        ("mode", Str),
        ("host_ip", Str),
        ("target", Int),
        ("published", Either(&[Int, Str])),
        ("protocol", Str),
        ("app_protocol", Str),
    ],
    required: &[],
    ext: true,
};

static HOOK: Obj = Obj {
    fields: &[
        ("command", COMMAND),
        ("user", Str),
        ("privileged", Bool),
        ("working_dir", Str),
        ("environment", LIST_OR_DICT),
    ],
    required: &["command"],
    ext: true,
};

static VOLUME_BIND: Obj = Obj {
    fields: &[
        ("propagation", Str),
        ("create_host_path", Bool),
        (
            "recursive",
            Enum(&["enabled", "disabled", "writable", "readonly"]),
        ),
        ("selinux", Enum(&["z", "Z"])),
    ],
    required: &[],
    ext: true,
};
static VOLUME_VOLUME: Obj = Obj {
    fields: &[("labels", LIST_OR_DICT), ("nocopy", Bool), ("subpath", Str)],
    required: &[],
    ext: true,
};
static VOLUME_TMPFS: Obj = Obj {
    fields: &[("size", Either(&[Int, Str])), ("mode", Num)],
    required: &[],
    ext: true,
};
static VOLUME_IMAGE: Obj = Obj {
    fields: &[("subpath", Str)],
    required: &[],
    ext: true,
};
static SERVICE_VOLUME: Obj = Obj {
    fields: &[
        (
            "type",
            Enum(&["bind", "volume", "tmpfs", "cluster", "npipe", "image"]),
        ),
        ("source", Str),
        ("target", Str),
        ("read_only", Bool),
        ("consistency", Str),
        ("bind", Obj(&VOLUME_BIND)),
        ("volume", Obj(&VOLUME_VOLUME)),
        ("tmpfs", Obj(&VOLUME_TMPFS)),
        ("image", Obj(&VOLUME_IMAGE)),
    ],
    required: &["type"],
    ext: true,
};

static WATCH: Obj = Obj {
    fields: &[
        ("ignore", STR_OR_LIST),
        ("include", STR_OR_LIST),
        ("path", Str),
        (
            "action",
            Enum(&["rebuild", "sync", "restart", "sync+restart", "sync+exec"]),
        ),
        ("target", Str),
        ("exec", Obj(&HOOK)),
    ],
    required: &["path", "action"],
    ext: true,
};
static DEVELOP: Obj = Obj {
    fields: &[("watch", List(&Obj(&WATCH)))],
    required: &[],
    ext: true,
};

static UPDATE_CONFIG: Obj = Obj {
    fields: &[
        ("parallelism", Int),
        ("delay", Str),
        ("failure_action", Str),
        ("monitor", Str),
        ("max_failure_ratio", Num),
        ("order", Enum(&["start-first", "stop-first"])),
    ],
    required: &[],
    ext: true,
};
static LIMITS: Obj = Obj {
    fields: &[
        ("cpus", Num),
        ("memory", Either(&[Str, Int])),
        ("pids", Int),
    ],
    required: &[],
    ext: true,
};
static DISCRETE: Obj = Obj {
    fields: &[("kind", Str), ("value", Num)],
    required: &[],
    ext: true,
};
static GENERIC_RESOURCE: Obj = Obj {
    fields: &[("discrete_resource_spec", Obj(&DISCRETE))],
    required: &[],
    ext: true,
};
static DEVICE_REQUEST: Obj = Obj {
    fields: &[
        ("capabilities", STR_LIST),
        ("count", Int),
        ("device_ids", STR_LIST),
        ("driver", Str),
        ("options", LIST_OR_DICT),
    ],
    required: &["capabilities"],
    ext: true,
};
static RESERVATIONS: Obj = Obj {
    fields: &[
        ("cpus", Num),
        ("memory", Either(&[Str, Int])),
        ("generic_resources", List(&Obj(&GENERIC_RESOURCE))),
        ("devices", List(&Obj(&DEVICE_REQUEST))),
    ],
    required: &[],
    ext: true,
};
static RESOURCES: Obj = Obj {
    fields: &[
        ("limits", Obj(&LIMITS)),
        ("reservations", Obj(&RESERVATIONS)),
    ],
    required: &[],
    ext: true,
};
static RESTART_POLICY: Obj = Obj {
    fields: &[
        ("condition", Str),
        ("delay", Str),
        ("max_attempts", Int),
        ("window", Str),
    ],
    required: &[],
    ext: true,
};
static PREFERENCE: Obj = Obj {
    fields: &[("spread", Str)],
    required: &[],
    ext: true,
};
static PLACEMENT: Obj = Obj {
    fields: &[
        ("constraints", STR_LIST),
        ("preferences", List(&Obj(&PREFERENCE))),
        ("max_replicas_per_node", Int),
    ],
    required: &[],
    ext: true,
};
static DEPLOY: Obj = Obj {
    fields: &[
        ("mode", Str),
        ("endpoint_mode", Str),
        ("replicas", Int),
        ("labels", LIST_OR_DICT),
        ("rollback_config", Obj(&UPDATE_CONFIG)),
        ("update_config", Obj(&UPDATE_CONFIG)),
        ("resources", Obj(&RESOURCES)),
        ("restart_policy", Obj(&RESTART_POLICY)),
        ("placement", Obj(&PLACEMENT)),
    ],
    required: &[],
    ext: true,
};

static SERVICE: Obj = Obj {
    fields: &[
        ("develop", OrNull(&Obj(&DEVELOP))),
        ("deploy", OrNull(&Obj(&DEPLOY))),
        ("annotations", LIST_OR_DICT),
        ("attach", Bool),
        ("build", Either(&[Str, Obj(&BUILD)])),
        ("blkio_config", Obj(&BLKIO)),
        ("cap_add", STR_LIST),
        ("cap_drop", STR_LIST),
        ("cgroup", Enum(&["host", "private"])),
        ("cgroup_parent", Str),
        ("command", COMMAND),
        ("configs", CONFIG_OR_SECRET),
        ("container_name", Str),
        ("cpu_count", Int),
        ("cpu_percent", Int),
        ("cpu_shares", Num),
        ("cpu_quota", Num),
        ("cpu_period", Num),
        ("cpu_rt_period", Num),
        ("cpu_rt_runtime", Num),
        ("cpus", Num),
        ("cpuset", Str),
        ("credential_spec", Obj(&CREDENTIAL_SPEC)),
        (
            "depends_on",
            Either(&[STR_LIST, Map(&Obj(&DEPENDS_ON_ENTRY))]),
        ),
        ("device_cgroup_rules", STR_LIST),
        ("devices", List(&Either(&[Str, Obj(&DEVICE_MAPPING)]))),
        ("dns", STR_OR_LIST),
        ("dns_opt", STR_LIST),
        ("dns_search", STR_OR_LIST),
        ("domainname", Str),
        ("entrypoint", COMMAND),
        (
            "env_file",
            Either(&[Str, List(&Either(&[Str, Obj(&ENV_FILE)]))]),
        ),
        ("label_file", STR_OR_LIST),
        ("environment", LIST_OR_DICT),
        ("expose", List(&StrNum)),
        ("extends", Either(&[Str, Obj(&EXTENDS)])),
        ("provider", Obj(&PROVIDER)),
        ("external_links", STR_LIST),
        ("extra_hosts", EXTRA_HOSTS),
        ("gpus", Either(&[Enum(&["all"]), List(&Obj(&GPU))])),
        ("group_add", List(&StrNum)),
        ("healthcheck", Obj(&HEALTHCHECK)),
        ("hostname", Str),
        ("image", Str),
        ("init", Bool),
        ("ipc", Str),
        ("isolation", Str),
        ("labels", LIST_OR_DICT),
        ("links", STR_LIST),
        ("logging", Obj(&LOGGING)),
        ("mac_address", Str),
        ("mem_limit", Either(&[Num, Str])),
        ("mem_reservation", Either(&[Int, Str])),
        ("mem_swappiness", Int),
        ("memswap_limit", Either(&[Num, Str])),
        ("network_mode", Str),
        ("models", Either(&[STR_LIST, Map(&Obj(&MODEL_REF))])),
        (
            "networks",
            Either(&[STR_LIST, Map(&OrNull(&Obj(&SERVICE_NETWORK)))]),
        ),
        ("oom_kill_disable", Bool),
        ("oom_score_adj", Int),
        ("pid", OrNull(&Str)),
        ("pids_limit", Num),
        ("platform", Str),
        ("ports", List(&Either(&[StrNum, Obj(&PORT)]))),
        ("post_start", List(&Obj(&HOOK))),
        ("pre_stop", List(&Obj(&HOOK))),
        ("privileged", Bool),
        ("profiles", STR_LIST),
        ("pull_policy", Str),
        ("pull_refresh_after", Str),
        ("read_only", Bool),
        ("restart", Str),
        ("runtime", Str),
        ("scale", Int),
        ("security_opt", STR_LIST),
        ("shm_size", Either(&[Num, Str])),
        ("secrets", CONFIG_OR_SECRET),
        ("sysctls", LIST_OR_DICT),
        ("stdin_open", Bool),
        ("stop_grace_period", Str),
        ("stop_signal", Str),
        ("storage_opt", Map(&Any)),
        ("tmpfs", STR_OR_LIST),
        ("tty", Bool),
        ("ulimits", ULIMITS),
        ("use_api_socket", StrictBool),
        ("user", Str),
        ("uts", Str),
        ("userns_mode", Str),
        ("volumes", List(&Either(&[Str, Obj(&SERVICE_VOLUME)]))),
        ("volumes_from", STR_LIST),
        ("working_dir", Str),
    ],
    required: &[],
    ext: true,
};

static ENV_FILE: Obj = Obj {
    fields: &[("path", Str), ("format", Str), ("required", Bool)],
    required: &["path"],
    ext: false,
};

static INCLUDE: Obj = Obj {
    fields: &[
        ("path", STR_OR_LIST),
        ("env_file", STR_OR_LIST),
        ("project_directory", Str),
    ],
    required: &[],
    ext: false,
};

static EXTERNAL: Obj = Obj {
    fields: &[("name", Str)],
    required: &[],
    ext: true,
};
const EXTERNAL_SHAPE: Shape = Either(&[Bool, Obj(&EXTERNAL)]);

static IPAM_CONFIG: Obj = Obj {
    fields: &[
        ("subnet", Str),
        ("ip_range", Str),
        ("gateway", Str),
        ("aux_addresses", Map(&Str)),
    ],
    required: &[],
    ext: true,
};
static IPAM: Obj = Obj {
    fields: &[
        ("driver", Str),
        ("config", List(&Obj(&IPAM_CONFIG))),
        ("options", Map(&Str)),
    ],
    required: &[],
    ext: true,
};
static NETWORK: Obj = Obj {
    fields: &[
        ("name", Str),
        ("driver", Str),
        ("driver_opts", Map(&StrNum)),
        ("ipam", Obj(&IPAM)),
        ("external", EXTERNAL_SHAPE),
        ("internal", Bool),
        ("enable_ipv4", Bool),
        ("enable_ipv6", Bool),
        ("attachable", Bool),
        ("labels", LIST_OR_DICT),
    ],
    required: &[],
    ext: true,
};
static VOLUME: Obj = Obj {
    fields: &[
        ("name", Str),
        ("driver", Str),
        ("driver_opts", Map(&StrNum)),
        ("external", EXTERNAL_SHAPE),
        ("labels", LIST_OR_DICT),
    ],
    required: &[],
    ext: true,
};
static SECRET: Obj = Obj {
    fields: &[
        ("name", Str),
        ("environment", Str),
        ("file", Str),
        ("external", EXTERNAL_SHAPE),
        ("labels", LIST_OR_DICT),
        ("driver", Str),
        ("driver_opts", Map(&StrNum)),
        ("template_driver", Str),
    ],
    required: &[],
    ext: true,
};
static CONFIG: Obj = Obj {
    fields: &[
        ("name", Str),
        ("content", Str),
        ("environment", Str),
        ("file", Str),
        ("external", EXTERNAL_SHAPE),
        ("labels", LIST_OR_DICT),
        ("template_driver", Str),
    ],
    required: &[],
    ext: true,
};
static MODEL: Obj = Obj {
    fields: &[
        ("name", Str),
        ("model", Str),
        ("context_size", Int),
        ("runtime_flags", STR_LIST),
    ],
    required: &["model"],
    ext: true,
};

const INCLUDE_LIST: Shape = List(&Either(&[Str, Obj(&INCLUDE)]));

/// Top-level sections whose entries are named resources.
const NAMED: &[(&str, &Shape)] = &[
    ("services", &Obj(&SERVICE)),
    ("networks", &OrNull(&Obj(&NETWORK))),
    ("volumes", &OrNull(&Obj(&VOLUME))),
    ("secrets", &Obj(&SECRET)),
    ("configs", &Obj(&CONFIG)),
    ("models", &Obj(&MODEL)),
];

const TOP_KEYS: &[&str] = &[
    "version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models",
];

fn valid_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Validate a whole compose file tree.
pub fn validate_file(root: &Node, errors: &mut Errors) {
    let Some(map) = root.as_map() else {
        if !root.is_null() {
            errors.at(
                &root.span,
                "",
                format!(
                    "a compose file must be a mapping at the top level, found {}",
                    root.kind()
                ),
            );
        }
        return;
    };
    for (key, entry) in map {
        let node = &entry.node;
        if key.starts_with("x-") {
            continue;
        }
        match key.as_str() {
            "version" => {
                if matches!(node.value, Value::Seq(_) | Value::Map(_)) {
                    errors.at(
                        &node.span,
                        "version",
                        format!("expected a string, found {}", node.kind()),
                    );
                }
            }
            "name" => check(node, &Str, "name", errors),
            "include" => check(node, &INCLUDE_LIST, "include", errors),
            _ => {
                if let Some((_, shape)) = NAMED.iter().find(|(k, _)| k == key) {
                    if node.is_null() {
                        continue;
                    }
                    let Some(items) = node.as_map() else {
                        errors.at(
                            &node.span,
                            key,
                            format!("expected a mapping, found {}", node.kind()),
                        );
                        continue;
                    };
                    for (name, item) in items {
                        let path = format!("{key}.{name}");
                        if !valid_resource_name(name) {
                            errors.push(
                                Diagnostic::new(
                                    item.key_span.clone(),
                                    &path,
                                    format!("invalid name {name:?}"),
                                )
                                .with_hint("names may use only letters, digits, `.`, `_` and `-`"),
                            );
                            continue;
                        }
                        if *key == "services" && item.node.is_null() {
                            errors.at(&item.node.span, &path, "expected a mapping, found null");
                            continue;
                        }
                        check(&item.node, shape, &path, errors);
                    }
                } else {
                    unknown_key(&entry.key_span, "", key, TOP_KEYS, errors);
                }
            }
        }
    }
}

fn unknown_key(
    span: &crate::yaml::Span,
    path: &str,
    key: &str,
    known: &[&str],
    errors: &mut Errors,
) {
    let full = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    let mut d = Diagnostic::new(span.clone(), full, format!("unknown key {key:?}"));
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(k, key), *k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    d = match best {
        Some((_, k)) => d.with_hint(format!("did you mean {k:?}?")),
        None => d.with_hint("extension keys must start with x-"),
    };
    errors.push(d);
}

fn kind_matches(shape: &Shape, node: &Node) -> bool {
    match (shape, &node.value) {
        (Any, _) => true,
        (Str | Enum(_), Value::Str(_)) => true,
        (Int, Value::Int(_) | Value::Str(_)) => true,
        (Num, Value::Int(_) | Value::Float(_) | Value::Str(_)) => true,
        (Bool, Value::Bool(_) | Value::Str(_)) => true,
        (StrictBool, Value::Bool(_)) => true,
        (StrNum, Value::Int(_) | Value::Float(_) | Value::Str(_)) => true,
        (Scalar, Value::Seq(_) | Value::Map(_)) => false,
        (Scalar, _) => true,
        (List(_), Value::Seq(_)) => true,
        (Map(_) | Obj(_), Value::Map(_)) => true,
        (Either(alts), _) => alts.iter().any(|a| kind_matches(a, node)),
        (OrNull(_), Value::Null) => true,
        (OrNull(inner), _) => kind_matches(inner, node),
        _ => false,
    }
}

fn describe(shape: &Shape) -> String {
    match shape {
        Any => "anything".into(),
        Str => "a string".into(),
        Int => "an integer".into(),
        Num => "a number".into(),
        Bool | StrictBool => "a boolean".into(),
        StrNum => "a string or number".into(),
        Scalar => "a string, number or boolean".into(),
        Enum(v) => format!("one of {}", v.join(", ")),
        List(_) => "a list".into(),
        Map(_) | Obj(_) => "a mapping".into(),
        Either(alts) => {
            let parts: Vec<String> = alts.iter().map(describe).collect();
            parts.join(" or ")
        }
        OrNull(inner) => format!("{} or null", describe(inner)),
    }
}

/// Check `node` against `shape`; `path` is the dotted field path.
pub fn check(node: &Node, shape: &Shape, path: &str, errors: &mut Errors) {
    if !kind_matches(shape, node) {
        errors.at(
            &node.span,
            path,
            format!(
                "expected {}, found {} {}",
                describe(shape),
                node.kind(),
                show(node)
            ),
        );
        return;
    }
    match shape {
        Enum(values) => {
            if let Value::Str(s) = &node.value {
                if !values.contains(&s.as_str()) {
                    let mut d = Diagnostic::new(
                        node.span.clone(),
                        path,
                        format!("{s:?} is not one of {}", values.join(", ")),
                    );
                    if let Some(best) = values
                        .iter()
                        .map(|v| (strsim::jaro_winkler(v, s), *v))
                        .filter(|(score, _)| *score > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                    {
                        d = d.with_hint(format!("did you mean {:?}?", best.1));
                    }
                    errors.push(d);
                }
            }
        }
        List(item) => {
            if let Value::Seq(items) = &node.value {
                for (i, it) in items.iter().enumerate() {
                    check(it, item, &format!("{path}.{i}"), errors);
                }
            }
        }
        Map(value) => {
            if let Value::Map(m) = &node.value {
                for (k, e) in m {
                    check(&e.node, value, &format!("{path}.{k}"), errors);
                }
            }
        }
        Obj(obj) => {
            if let Value::Map(m) = &node.value {
                for (k, e) in m {
                    if obj.ext && k.starts_with("x-") {
                        continue;
                    }
                    match obj.fields.iter().find(|(name, _)| name == k) {
                        Some((_, s)) => check(&e.node, s, &format!("{path}.{k}"), errors),
                        None => {
                            let known: Vec<&str> = obj.fields.iter().map(|(n, _)| *n).collect();
                            unknown_key(&e.key_span, path, k, &known, errors);
                        }
                    }
                }
                for req in obj.required {
                    if !m.contains_key(*req) {
                        errors.at(&node.span, path, format!("missing required key {req:?}"));
                    }
                }
            }
        }
        Either(alts) => {
            if let Some(alt) = alts.iter().find(|a| kind_matches(a, node)) {
                check(node, alt, path, errors);
            }
        }
        OrNull(inner) if !node.is_null() => check(node, inner, path, errors),
        _ => {}
    }
}

fn show(node: &Node) -> String {
    match &node.value {
        Value::Seq(_) | Value::Map(_) | Value::Null => String::new(),
        _ => format!("({})", node.describe()),
    }
    .trim()
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn errors(src: &str) -> Vec<Diagnostic> {
        let root = crate::yaml::parse(src, &Arc::from("c.yaml")).unwrap();
        let mut e = Errors::default();
        validate_file(&root, &mut e);
        e.list
    }

    #[test]
    fn unknown_keys_are_errors_with_a_suggestion() {
        let e = errors("services:\n  web:\n    image: x\n    imgae: y\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].col), (4, 5));
        assert_eq!(e[0].path, "services.web.imgae");
        assert_eq!(e[0].hint.as_deref(), Some("did you mean \"image\"?"));
    }

    #[test]
    fn extension_keys_are_allowed_where_the_spec_allows_them() {
        assert!(
            errors("x-common: {a: 1}\nservices:\n  web:\n    image: x\n    x-incus: {b: 2}\n")
                .is_empty()
        );
        let e = errors("services:\n  web:\n    extends:\n      service: a\n      x-no: 1\n");
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn wrong_types_are_errors_and_several_are_reported_together() {
        let e = errors(
            "services:\n  web:\n    image: [a]\n    deploy:\n      replicas: [1]\n      placement: {constraints: node.role}\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].path, "services.web.image");
        assert!(e[0].message.contains("expected a string, found a list"));
        assert_eq!(e[1].path, "services.web.deploy.replicas");
        assert_eq!(e[2].path, "services.web.deploy.placement.constraints");
    }

    #[test]
    fn numbers_may_be_given_as_strings() {
        assert!(errors("services:\n  web:\n    deploy:\n      replicas: \"3\"\n").is_empty());
    }

    #[test]
    fn enums_and_required_keys_are_checked() {
        let e = errors(
            "services:\n  web:\n    depends_on:\n      db: {condition: service_healty}\n      x: {restart: true}\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0].hint.as_deref(),
            Some("did you mean \"service_healthy\"?")
        );
        assert!(e[1].message.contains("missing required key \"condition\""));
    }
}
