//! From the merged canonical tree to the typed [`Project`], with compose-go's semantic checks:
//! references to undefined networks, volumes, secrets, configs and services; dependency
//! cycles; `global` with `replicas`; `container_name` with several replicas; conflicting
//! service-level twins of `deploy` fields; placement constraints parsed at load time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::env::{Environment, parse_dotenv};
use crate::error::{Diagnostic, Errors};
use crate::loader::FileSystem;
use crate::model::placement::{Constraint, SpreadPreference};
use crate::model::*;
use crate::yaml::{Node, Value};

pub struct Settings<'a> {
    pub name: String,
    pub project_dir: &'a Path,
    pub profiles: &'a [String],
    pub env: &'a Environment,
    pub fs: &'a dyn FileSystem,
}

struct N<'a, 'b> {
    errors: &'a mut Errors,
    warnings: &'a mut Vec<Diagnostic>,
    /// Problems for `up` only (`Project::up_errors`): docker compose's `config` accepts them.
    up_errors: Vec<Diagnostic>,
    s: &'a Settings<'b>,
}

fn text(n: &Node) -> Option<String> {
    n.scalar_text()
}

impl N<'_, '_> {
    fn err(&mut self, n: &Node, path: &str, msg: impl Into<String>) {
        self.errors.at(&n.span, path, msg);
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Null => None,
            _ => match text(n) {
                Some(t) => Some(t),
                None => {
                    self.err(n, path, format!("expected a string, found {}", n.kind()));
                    None
                }
            },
        }
    }

    fn int(&mut self, n: &Node, path: &str) -> Option<i64> {
        match &n.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.err(n, path, format!("expected an integer, found {s:?}"));
                    None
                }
            },
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(*f as i64),
            _ => {
                self.err(n, path, format!("expected an integer, found {}", n.kind()));
                None
            }
        }
    }

    fn uint(&mut self, n: &Node, path: &str) -> Option<u64> {
        let i = self.int(n, path)?;
        match u64::try_from(i) {
            Ok(u) => Some(u),
            Err(_) => {
                self.err(
                    n,
                    path,
                    format!("expected a non-negative integer, found {i}"),
                );
                None
            }
        }
    }

    fn float(&mut self, n: &Node, path: &str) -> Option<f64> {
        let v = match &n.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse::<f64>().ok().filter(|_| {
                let t = s.trim().trim_start_matches(['+', '-']);
                t.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_digit() || c == '.')
            }),
            _ => None,
        };
        match v {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.err(
                    n,
                    path,
                    format!("expected a number, found {}", n.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, n: &Node, path: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "y" | "on" => Some(true),
                "false" | "0" | "no" | "n" | "off" | "" => Some(false),
                _ => {
                    self.err(n, path, format!("expected a boolean, found {s:?}"));
                    None
                }
            },
            Value::Null => None,
            _ => {
                self.err(n, path, format!("expected a boolean, found {}", n.kind()));
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, path: &str) -> Option<Duration> {
        let t = text(n)?;
        match t.parse::<Duration>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(n, path, e.to_string());
                None
            }
        }
    }

    fn bytes(&mut self, n: &Node, path: &str) -> Option<ByteSize> {
        match &n.value {
            Value::Int(i) if *i >= 0 => Some(ByteSize(*i as u64)),
            Value::Float(f) if *f >= 0.0 => Some(ByteSize(*f as u64)),
            Value::Str(s) => match s.parse::<ByteSize>() {
                Ok(b) => Some(b),
                Err(e) => {
                    self.err(n, path, e.to_string());
                    None
                }
            },
            _ => {
                self.err(
                    n,
                    path,
                    format!("expected a byte size, found {}", n.describe()),
                );
                None
            }
        }
    }

    fn string_list(&mut self, n: &Node, path: &str) -> Vec<String> {
        match &n.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, it)| self.string(it, &format!("{path}.{i}")))
                .collect(),
            Value::Null => vec![],
            _ => text(n).into_iter().collect(),
        }
    }

    /// A `list_or_dict` (already a mapping after canonicalisation) as strings; null -> "".
    fn string_map(&mut self, n: &Node) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(m) = n.as_map() {
            for (k, e) in m {
                out.insert(k.clone(), text(&e.node).unwrap_or_default());
            }
        }
        out
    }

    fn opt_string_map(&mut self, n: &Node) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        if let Some(m) = n.as_map() {
            for (k, e) in m {
                out.insert(k.clone(), text(&e.node));
            }
        }
        out
    }

    fn command(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        match &n.value {
            Value::Null => None,
            Value::Str(s) => match shlex::split(s) {
                Some(words) => Some(words),
                None => {
                    self.err(
                        n,
                        path,
                        format!("cannot split {s:?} into words: unbalanced quotes"),
                    );
                    None
                }
            },
            _ => Some(self.string_list(n, path)),
        }
    }
}

pub fn normalize(
    tree: &Node,
    s: Settings<'_>,
    errors: &mut Errors,
    warnings: &mut Vec<Diagnostic>,
) -> Project {
    let mut n = N {
        errors,
        warnings,
        up_errors: Vec::new(),
        s: &s,
    };
    let mut project = Project {
        name: s.name.clone(),
        working_dir: s.project_dir.to_path_buf(),
        ..Project::default()
    };
    let Some(top) = tree.as_map() else {
        return project;
    };
    for (k, e) in top {
        if k.starts_with("x-") {
            project.extensions.insert(k.clone(), e.node.to_json());
        }
    }
    let mut services = BTreeMap::new();
    if let Some(m) = tree.get("services").and_then(Node::as_map) {
        for (name, e) in m {
            let svc = service(&mut n, name, &e.node, &e.key_span);
            services.insert(name.clone(), (svc, e.node.clone()));
        }
    }
    let mut all_profiles = BTreeSet::new();
    for (svc, _) in services.values() {
        all_profiles.extend(svc.profiles.iter().cloned());
    }
    project.all_profiles = all_profiles.into_iter().collect();
    let enabled = |svc: &Service| {
        svc.profiles.is_empty()
            || svc
                .profiles
                .iter()
                .any(|p| s.profiles.iter().any(|a| a == p || a == "*"))
    };
    let mut nodes = BTreeMap::new();
    for (name, (svc, node)) in services {
        if enabled(&svc) {
            nodes.insert(name.clone(), node);
            project.services.insert(name, svc);
        } else {
            project.disabled_services.insert(name, svc);
        }
    }

    // Top-level resources.
    let section = |k: &str| {
        tree.get(k)
            .and_then(Node::as_map)
            .cloned()
            .unwrap_or_default()
    };
    for (key, e) in section("networks") {
        let net = network(&mut n, &project.name, &key, &e.node);
        project.networks.insert(key, net);
    }
    for (key, e) in section("volumes") {
        let vol = volume(&mut n, &project.name, &key, &e.node);
        project.volumes.insert(key, vol);
    }
    for (sec, target) in [
        ("secrets", &mut project.secrets),
        ("configs", &mut project.configs),
    ] {
        for (key, e) in section(sec) {
            let item = secret(&mut n, &project.name, sec, &key, &e.node);
            target.insert(key, item);
        }
    }

    // Default network.
    let mut uses_default = false;
    for svc in project.services.values_mut() {
        if svc.networks.is_empty() && svc.network_mode.is_none() {
            svc.networks.insert("default".into(), None);
        }
        uses_default |= svc.networks.contains_key("default");
    }
    if uses_default && !project.networks.contains_key("default") {
        project.networks.insert(
            "default".into(),
            Network {
                name: format!("{}_default", project.name),
                ..Network::default()
            },
        );
    }

    check_references(&mut n, &project, &nodes);
    project.up_errors = std::mem::take(&mut n.up_errors);
    project
}

fn check_references(n: &mut N, project: &Project, nodes: &BTreeMap<String, Node>) {
    for (name, svc) in &project.services {
        let node = &nodes[name];
        let base = format!("services.{name}");
        let at = |k: &str| node.get(k).cloned().unwrap_or_else(|| node.clone());
        for net in svc.networks.keys() {
            if !project.networks.contains_key(net) {
                let where_ = at("networks");
                let span_node = where_
                    .as_map()
                    .and_then(|m| m.get(net))
                    .map(|e| e.key_span.clone())
                    .unwrap_or(where_.span.clone());
                n.errors.push(
                    Diagnostic::new(
                        span_node,
                        format!("{base}.networks"),
                        format!("service {name:?} refers to undefined network {net:?}"),
                    )
                    .with_hint(format!(
                        "declare it under the top-level networks: ({net}: {{}})"
                    )),
                );
            }
        }
        for (i, v) in svc.volumes.iter().enumerate() {
            if v.kind == VolumeType::Volume {
                if let Some(src) = &v.source {
                    if !project.volumes.contains_key(src) {
                        let item = at("volumes")
                            .as_seq()
                            .and_then(|s| s.get(i).cloned())
                            .unwrap_or_else(|| node.clone());
                        n.errors.push(
                            Diagnostic::new(item.span, format!("{base}.volumes.{i}"), format!("service {name:?} refers to undefined volume {src:?}"))
                                .with_hint(format!("declare it under the top-level volumes: ({src}: {{}}), or write ./{src} for a bind mount")),
                        );
                    }
                }
            }
        }
        for (kind, list, defined) in [
            (
                "secret",
                &svc.secrets,
                project.secrets.keys().collect::<BTreeSet<_>>(),
            ),
            (
                "config",
                &svc.configs,
                project.configs.keys().collect::<BTreeSet<_>>(),
            ),
        ] {
            let key = format!("{kind}s");
            for (i, r) in list.iter().enumerate() {
                if !defined.contains(&r.source) {
                    let item = at(&key)
                        .as_seq()
                        .and_then(|s| s.get(i).cloned())
                        .unwrap_or_else(|| node.clone());
                    n.errors.push(
                        Diagnostic::new(
                            item.span,
                            format!("{base}.{key}.{i}"),
                            format!("service {name:?} refers to undefined {kind} {:?}", r.source),
                        )
                        .with_hint(format!("declare it under the top-level {key}:")),
                    );
                }
            }
        }
        for (dep, d) in &svc.depends_on {
            if !project.services.contains_key(dep) {
                let span = at("depends_on")
                    .as_map()
                    .and_then(|m| m.get(dep))
                    .map(|e| e.key_span.clone())
                    .unwrap_or(node.span.clone());
                let msg = if project.disabled_services.contains_key(dep) {
                    format!(
                        "service {name:?} depends on {dep:?}, which no enabled profile includes"
                    )
                } else {
                    format!("service {name:?} depends on undefined service {dep:?}")
                };
                if d.required {
                    n.errors
                        .push(Diagnostic::new(span, format!("{base}.depends_on"), msg));
                } else {
                    n.warnings
                        .push(Diagnostic::new(span, format!("{base}.depends_on"), msg));
                }
            }
        }
        if let Some(mode) = &svc.network_mode {
            if let Some(other) = mode.strip_prefix("service:") {
                if !project.services.contains_key(other) {
                    n.errors.at(
                        &at("network_mode").span,
                        &format!("{base}.network_mode"),
                        format!("service {name:?} uses the network of undefined service {other:?}"),
                    );
                }
            }
            if !svc.networks.is_empty() && mode != "bridge" && node.get("networks").is_some() {
                n.errors.at(
                    &at("network_mode").span,
                    &format!("{base}.network_mode"),
                    "network_mode and networks cannot be combined",
                );
            }
        }
    }
    // Dependency cycles.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for start in project.services.keys() {
        let mut stack: Vec<(&str, Vec<&str>)> = Vec::new();
        if state.get(start.as_str()).copied().unwrap_or(0) == 0 {
            stack.push((
                start.as_str(),
                project.services[start]
                    .depends_on
                    .keys()
                    .map(String::as_str)
                    .collect(),
            ));
            state.insert(start, 1);
        }
        while let Some((cur, deps)) = stack.last_mut() {
            let cur = *cur;
            match deps.pop() {
                None => {
                    state.insert(cur, 2);
                    stack.pop();
                }
                Some(dep) => {
                    let Some(dsvc) = project.services.get(dep) else {
                        continue;
                    };
                    match state.get(dep).copied().unwrap_or(0) {
                        0 => {
                            state.insert(dep, 1);
                            stack.push((dep, dsvc.depends_on.keys().map(String::as_str).collect()));
                        }
                        1 => {
                            let from = stack.iter().position(|(s, _)| *s == dep).unwrap_or(0);
                            let mut chain: Vec<&str> =
                                stack[from..].iter().map(|(s, _)| *s).collect();
                            chain.push(dep);
                            let node = &nodes[cur];
                            let span = node
                                .get("depends_on")
                                .map(|d| d.span.clone())
                                .unwrap_or(node.span.clone());
                            n.errors.push(Diagnostic::new(
                                span,
                                format!("services.{cur}.depends_on"),
                                format!("dependency cycle: {}", chain.join(" -> ")),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn resource_name(project: &str, key: &str, node: &Node, external: bool) -> String {
    match node.get("name").and_then(Node::as_str) {
        Some(n) => n.to_string(),
        None if external => key.to_string(),
        None => format!("{project}_{key}"),
    }
}

fn is_external(n: &mut N, node: &Node, path: &str) -> bool {
    match node.get("external") {
        Some(e) => match &e.value {
            Value::Map(_) => true,
            _ => n.boolean(e, &format!("{path}.external")).unwrap_or(false),
        },
        None => false,
    }
}

fn network(n: &mut N, project: &str, key: &str, node: &Node) -> Network {
    let path = format!("networks.{key}");
    let external = is_external(n, node, &path);
    let mut net = Network {
        name: resource_name(project, key, node, external),
        external,
        ..Network::default()
    };
    let Some(m) = node.as_map() else { return net };
    for (k, e) in m {
        let p = format!("{path}.{k}");
        let v = &e.node;
        match k.as_str() {
            "driver" => net.driver = n.string(v, &p),
            "driver_opts" => net.driver_opts = n.string_map(v),
            "internal" => net.internal = n.boolean(v, &p).unwrap_or(false),
            "attachable" => net.attachable = n.boolean(v, &p).unwrap_or(false),
            "enable_ipv6" => net.enable_ipv6 = n.boolean(v, &p),
            "labels" => net.labels = n.string_map(v),
            "ipam" => {
                let mut ipam = Ipam {
                    driver: v.get("driver").and_then(text),
                    options: v
                        .get("options")
                        .map(|o| n.string_map(o))
                        .unwrap_or_default(),
                    ..Ipam::default()
                };
                for pool in v.get("config").and_then(Node::as_seq).unwrap_or_default() {
                    ipam.config.push(IpamPool {
                        subnet: pool.get("subnet").and_then(text),
                        ip_range: pool.get("ip_range").and_then(text),
                        gateway: pool.get("gateway").and_then(text),
                        aux_addresses: pool
                            .get("aux_addresses")
                            .map(|a| n.string_map(a))
                            .unwrap_or_default(),
                    });
                }
                net.ipam = Some(ipam);
            }
            _ if k.starts_with("x-") => {
                net.extensions.insert(k.clone(), v.to_json());
            }
            _ => {}
        }
    }
    net
}

fn volume(n: &mut N, project: &str, key: &str, node: &Node) -> Volume {
    let path = format!("volumes.{key}");
    let external = is_external(n, node, &path);
    let mut vol = Volume {
        name: resource_name(project, key, node, external),
        external,
        ..Volume::default()
    };
    let Some(m) = node.as_map() else { return vol };
    for (k, e) in m {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "driver" => vol.driver = n.string(&e.node, &p),
            "driver_opts" => vol.driver_opts = n.string_map(&e.node),
            "labels" => vol.labels = n.string_map(&e.node),
            _ if k.starts_with("x-") => {
                vol.extensions.insert(k.clone(), e.node.to_json());
            }
            _ => {}
        }
    }
    vol
}

fn secret(n: &mut N, project: &str, section: &str, key: &str, node: &Node) -> Secret {
    let path = format!("{section}.{key}");
    let external = is_external(n, node, &path);
    let mut s = Secret {
        name: resource_name(project, key, node, external),
        external,
        ..Secret::default()
    };
    if let Some(m) = node.as_map() {
        for (k, e) in m {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "file" => s.file = n.string(&e.node, &p),
                "environment" => s.environment = n.string(&e.node, &p),
                "content" => s.content = n.string(&e.node, &p),
                "labels" => s.labels = n.string_map(&e.node),
                "driver" => s.driver = n.string(&e.node, &p),
                "template_driver" => s.template_driver = n.string(&e.node, &p),
                _ if k.starts_with("x-") => {
                    s.extensions.insert(k.clone(), e.node.to_json());
                }
                _ => {}
            }
        }
    }
    let sources = [
        s.file.is_some(),
        s.environment.is_some(),
        s.content.is_some(),
        external,
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        let kind = &section[..section.len() - 1];
        let what = if section == "configs" {
            "file, environment, content or external"
        } else {
            "file, environment or external"
        };
        n.err(
            node,
            &path,
            format!("{kind} {key:?} must have exactly one of {what}"),
        );
    }
    s.value = if let Some(c) = &s.content {
        Some(Ok(c.clone().into_bytes()))
    } else if let Some(f) = &s.file {
        Some(n.s.fs.read(Path::new(f)).map_err(|e| {
            // By kind, not the OS text: the same on every file system.
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "it does not exist".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                k => k.to_string(),
            };
            format!("cannot read file {f}: {why}")
        }))
    } else {
        s.environment.as_ref().map(|var| {
            n.s.env
                .get(var)
                .map(String::into_bytes)
                .ok_or_else(|| format!("environment variable {var} is not set"))
        })
    };
    s
}

fn service(n: &mut N, name: &str, node: &Node, key_span: &crate::yaml::Span) -> Service {
    let base = format!("services.{name}");
    let mut svc = Service {
        name: name.to_string(),
        ..Service::default()
    };
    let Some(m) = node.as_map() else { return svc };
    let mut deploy_node = None;
    for (k, e) in m {
        let p = format!("{base}.{k}");
        let v = &e.node;
        match k.as_str() {
            "image" => svc.image = n.string(v, &p),
            "build" => svc.build = Some(build(n, v, &p)),
            "cap_add" => svc.cap_add = n.string_list(v, &p),
            "cap_drop" => svc.cap_drop = n.string_list(v, &p),
            "command" => svc.command = n.command(v, &p),
            "entrypoint" => svc.entrypoint = n.command(v, &p),
            "configs" => svc.configs = file_refs(n, v, &p),
            "secrets" => {
                svc.secrets = file_refs(n, v, &p);
                // compose-go's default (its `defaultSecretMount`): the same mount point as
                // `FileRef::secret_target`, written out as `docker compose config` prints it.
                for s in &mut svc.secrets {
                    if s.target.is_none() {
                        s.target = Some(format!("/run/secrets/{}", s.source));
                    }
                }
            }
            "container_name" => svc.container_name = n.string(v, &p),
            "cpus" => svc.cpus = n.float(v, &p),
            "depends_on" => {
                if let Some(dm) = v.as_map() {
                    for (dep, de) in dm {
                        let dp = format!("{p}.{dep}");
                        let cond = match de.node.get("condition").and_then(Node::as_str) {
                            Some("service_healthy") => DependencyCondition::ServiceHealthy,
                            Some("service_completed_successfully") => {
                                DependencyCondition::ServiceCompletedSuccessfully
                            }
                            _ => DependencyCondition::ServiceStarted,
                        };
                        let restart = de
                            .node
                            .get("restart")
                            .and_then(|r| n.boolean(r, &format!("{dp}.restart")))
                            .unwrap_or(false);
                        let required = de
                            .node
                            .get("required")
                            .and_then(|r| n.boolean(r, &format!("{dp}.required")))
                            .unwrap_or(true);
                        svc.depends_on.insert(
                            dep.clone(),
                            Dependency {
                                condition: cond,
                                restart,
                                required,
                            },
                        );
                    }
                }
            }
            "deploy" => deploy_node = Some(v.clone()),
            "dns" => svc.dns = n.string_list(v, &p),
            "dns_search" => svc.dns_search = n.string_list(v, &p),
            "domainname" => svc.domainname = n.string(v, &p),
            "env_file" => {
                for (i, item) in v.as_seq().unwrap_or_default().iter().enumerate() {
                    let ip = format!("{p}.{i}");
                    let path = item.get("path").and_then(text).unwrap_or_default();
                    let required = item
                        .get("required")
                        .and_then(|r| n.boolean(r, &format!("{ip}.required")))
                        .unwrap_or(true);
                    let format = item.get("format").and_then(text);
                    svc.env_file.push(EnvFile {
                        path,
                        required,
                        format,
                    });
                }
            }
            "environment" => svc.environment = n.opt_string_map(v),
            "expose" => svc.expose = n.string_list(v, &p),
            "extra_hosts" => svc.extra_hosts = n.string_list(v, &p),
            "healthcheck" => svc.healthcheck = Some(healthcheck(n, v, &p)),
            "hostname" => svc.hostname = n.string(v, &p),
            "init" => svc.init = n.boolean(v, &p),
            "labels" => svc.labels = n.string_map(v),
            "logging" => {
                svc.logging = Some(Logging {
                    driver: v.get("driver").and_then(text),
                    options: v
                        .get("options")
                        .map(|o| n.string_map(o))
                        .unwrap_or_default(),
                })
            }
            "mem_limit" => svc.mem_limit = n.bytes(v, &p),
            "mem_reservation" => svc.mem_reservation = n.bytes(v, &p),
            "network_mode" => svc.network_mode = n.string(v, &p),
            "networks" => {
                if let Some(nm) = v.as_map() {
                    for (net, ne) in nm {
                        let cfg = if ne.node.is_null() {
                            None
                        } else {
                            let np = format!("{p}.{net}");
                            let mut sn = ServiceNetwork::default();
                            for (nk, nv) in ne.node.as_map().cloned().unwrap_or_default() {
                                let kp = format!("{np}.{nk}");
                                match nk.as_str() {
                                    "aliases" => sn.aliases = n.string_list(&nv.node, &kp),
                                    "ipv4_address" => sn.ipv4_address = n.string(&nv.node, &kp),
                                    "ipv6_address" => sn.ipv6_address = n.string(&nv.node, &kp),
                                    "mac_address" => sn.mac_address = n.string(&nv.node, &kp),
                                    "priority" => sn.priority = n.int(&nv.node, &kp),
                                    _ => {
                                        sn.other.insert(nk.clone(), nv.node.to_json());
                                    }
                                }
                            }
                            Some(sn)
                        };
                        svc.networks.insert(net.clone(), cfg);
                    }
                }
            }
            "pids_limit" => svc.pids_limit = n.int(v, &p),
            "platform" => svc.platform = n.string(v, &p),
            "ports" => {
                for (i, item) in v.as_seq().unwrap_or_default().iter().enumerate() {
                    if let Some(port) = port(n, item, &format!("{p}.{i}")) {
                        svc.ports.push(port);
                    }
                }
            }
            "privileged" => svc.privileged = n.boolean(v, &p).unwrap_or(false),
            "profiles" => svc.profiles = n.string_list(v, &p),
            "pull_policy" => {
                svc.pull_policy = n.string(v, &p);
                if let Some(policy) = &svc.pull_policy
                    && crate::model::PullPolicy::parse(policy).is_none()
                {
                    n.errors.push(
                        Diagnostic::new(
                            v.span.clone(),
                            &p,
                            format!("invalid pull_policy {policy:?}"),
                        )
                        .with_hint(
                            "use always, missing (or if_not_present), never, build, daily, weekly or every_<duration> (e.g. every_12h)",
                        ),
                    );
                }
            }
            "read_only" => svc.read_only = n.boolean(v, &p).unwrap_or(false),
            "restart" => {
                svc.restart = n.string(v, &p);
                if let Some(r) = &svc.restart {
                    if restart_policy_of(r).is_none() {
                        n.errors.push(
                            Diagnostic::new(
                                v.span.clone(),
                                &p,
                                format!("invalid restart policy {r:?}"),
                            )
                            .with_hint("use no, always, on-failure[:N] or unless-stopped"),
                        );
                    }
                }
            }
            "runtime" => svc.runtime = n.string(v, &p),
            "scale" => svc.scale = n.uint(v, &p),
            "security_opt" => svc.security_opt = n.string_list(v, &p),
            "shm_size" => svc.shm_size = n.bytes(v, &p),
            "stdin_open" => svc.stdin_open = n.boolean(v, &p).unwrap_or(false),
            "stop_grace_period" => svc.stop_grace_period = n.duration(v, &p),
            "stop_signal" => svc.stop_signal = n.string(v, &p),
            "sysctls" => svc.sysctls = n.string_map(v),
            "tmpfs" => svc.tmpfs = n.string_list(v, &p),
            "tty" => svc.tty = n.boolean(v, &p).unwrap_or(false),
            "ulimits" => {
                for (uk, ue) in v.as_map().cloned().unwrap_or_default() {
                    let up = format!("{p}.{uk}");
                    let u = match ue.node.as_map() {
                        Some(_) => {
                            let soft = ue
                                .node
                                .get("soft")
                                .and_then(|x| n.int(x, &format!("{up}.soft")));
                            let hard = ue
                                .node
                                .get("hard")
                                .and_then(|x| n.int(x, &format!("{up}.hard")));
                            match (soft, hard) {
                                (Some(soft), Some(hard)) => Some(Ulimit::SoftHard { soft, hard }),
                                _ => None,
                            }
                        }
                        None => n.int(&ue.node, &up).map(Ulimit::Single),
                    };
                    if let Some(u) = u {
                        svc.ulimits.insert(uk.clone(), u);
                    }
                }
            }
            "user" => svc.user = n.string(v, &p),
            "volumes" => {
                for (i, item) in v.as_seq().unwrap_or_default().iter().enumerate() {
                    if let Some(vol) = service_volume(n, item, &format!("{p}.{i}")) {
                        svc.volumes.push(vol);
                    }
                }
            }
            "volumes_from" => svc.volumes_from = n.string_list(v, &p),
            "working_dir" => svc.working_dir = n.string(v, &p),
            "extends" => {}
            _ if k.starts_with("x-") => {
                svc.extensions.insert(k.clone(), v.to_json());
            }
            _ => {
                svc.other.insert(k.clone(), v.to_json());
            }
        }
    }

    // Environment: resolve bare names from the environment, then env_file underneath.
    for (k, v) in svc.environment.iter_mut() {
        if v.is_none() {
            *v = n.s.env.get(k);
        }
    }
    let env_files = svc.env_file.clone();
    for (i, ef) in env_files.iter().enumerate() {
        let ef_node = node
            .get("env_file")
            .and_then(Node::as_seq)
            .and_then(|s| s.get(i))
            .cloned()
            .unwrap_or_else(|| node.clone());
        match n.s.fs.read_to_string(Path::new(&ef.path)) {
            Ok(text) => {
                let lookup = |k: &str| n.s.env.get(k);
                match parse_dotenv(&text, &lookup) {
                    Ok(vars) => {
                        for (k, v) in vars {
                            if m.get("environment").and_then(|e| e.node.get(&k)).is_none() {
                                svc.environment.insert(k, Some(v));
                            }
                        }
                    }
                    Err(e) => n.errors.push(Diagnostic::new(
                        ef_node.span.clone(),
                        format!("{base}.env_file.{i}"),
                        format!("{}: {e}", ef.path),
                    )),
                }
            }
            Err(e) => {
                if ef.required {
                    n.errors.push(
                        Diagnostic::new(
                            ef_node.span.clone(),
                            format!("{base}.env_file.{i}"),
                            format!("cannot read env file {}: {e}", ef.path),
                        )
                        .with_hint("create it, or mark it `required: false`"),
                    );
                }
            }
        }
    }

    if svc.image.is_none() && svc.build.is_none() && !m.contains_key("provider") {
        n.errors.push(
            Diagnostic::new(
                key_span.clone(),
                &base,
                format!("service {name:?} has neither an image nor a build context"),
            )
            .with_hint("add image: or build:"),
        );
    }
    // compose-go: a service's platform must be one its build produces.
    if let (Some(platform), Some(platforms)) = (
        svc.platform.as_deref(),
        m.get("build")
            .and_then(|b| b.node.get("platforms"))
            .and_then(Node::as_seq),
    ) {
        if !platforms.is_empty() && !platforms.iter().any(|p| p.as_str() == Some(platform)) {
            let at = m.get("platform").map(|e| &e.node).unwrap_or(node);
            n.errors.push(
                Diagnostic::new(
                    at.span.clone(),
                    format!("{base}.platform"),
                    format!("platform {platform:?} is not among build.platforms"),
                )
                .with_hint("add it to build.platforms, or change platform"),
            );
        }
    }

    fold_deploy(n, &mut svc, deploy_node.as_ref(), node, &base);
    svc
}

fn restart_policy_of(r: &str) -> Option<RestartPolicy> {
    let (cond, attempts) = match r {
        "no" => (RestartCondition::None, None),
        "always" | "unless-stopped" => (RestartCondition::Any, None),
        "on-failure" => (RestartCondition::OnFailure, None),
        _ => {
            let n = r.strip_prefix("on-failure:")?.parse::<u64>().ok()?;
            (RestartCondition::OnFailure, Some(n))
        }
    };
    Some(RestartPolicy {
        condition: cond,
        delay: None,
        max_attempts: attempts,
        window: None,
    })
}

fn fold_deploy(n: &mut N, svc: &mut Service, deploy_node: Option<&Node>, node: &Node, base: &str) {
    let dp = format!("{base}.deploy");
    let mut d = match deploy_node {
        Some(dn) if !dn.is_null() => deploy(n, dn, &dp),
        _ => Deploy::default(),
    };
    let had_deploy = deploy_node.is_some_and(|d| !d.is_null());
    if had_deploy {
        let constraints = deploy_node
            .and_then(|dn| dn.get("placement"))
            .and_then(|pl| pl.get("constraints"))
            .and_then(Node::as_seq)
            .map(|cs| cs.iter().filter_map(text).collect())
            .unwrap_or_default();
        svc.declared_deploy = Some(DeclaredDeploy {
            deploy: d.clone(),
            mode: deploy_node.and_then(|dn| dn.get("mode")).is_some(),
            constraints,
        });
    }
    let at = |k: &str| node.get(k).cloned().unwrap_or_else(|| node.clone());
    let conflict = |n: &mut N, key: &str, dkey: &str| {
        n.errors.push(
            Diagnostic::new(
                at(key).span,
                format!("{base}.{key}"),
                format!("{key} and deploy.{dkey} are both set, to different values"),
            )
            .with_hint(format!(
                "keep one of them (deploy.{dkey} is the Swarm form)"
            )),
        );
    };
    if let Some(scale) = svc.scale {
        match d.replicas {
            Some(r) if r != scale => conflict(n, "scale", "replicas"),
            _ => d.replicas = Some(scale),
        }
    }
    if let Some(cpus) = svc.cpus {
        let lim = d.resources.limits.get_or_insert_with(Limits::default);
        match lim.cpus {
            Some(c) if (c - cpus).abs() > f64::EPSILON => {
                conflict(n, "cpus", "resources.limits.cpus")
            }
            _ => lim.cpus = Some(cpus),
        }
    }
    if let Some(mem) = svc.mem_limit {
        let lim = d.resources.limits.get_or_insert_with(Limits::default);
        match lim.memory {
            Some(m) if m != mem => conflict(n, "mem_limit", "resources.limits.memory"),
            _ => lim.memory = Some(mem),
        }
    }
    if let Some(pids) = svc.pids_limit {
        let lim = d.resources.limits.get_or_insert_with(Limits::default);
        match lim.pids {
            Some(p) if p != pids => conflict(n, "pids_limit", "resources.limits.pids"),
            _ => lim.pids = Some(pids),
        }
    }
    if let Some(mem) = svc.mem_reservation {
        let res = d
            .resources
            .reservations
            .get_or_insert_with(Reservations::default);
        match res.memory {
            Some(m) if m != mem => conflict(n, "mem_reservation", "resources.reservations.memory"),
            _ => res.memory = Some(mem),
        }
    }
    if let Some(r) = &svc.restart {
        if d.restart_policy.is_none() {
            d.restart_policy = restart_policy_of(r);
        }
    }
    if d.mode == DeployMode::Global && d.replicas.is_some() {
        let span = deploy_node
            .and_then(|dn| dn.get("replicas"))
            .map(|r| r.span.clone())
            .unwrap_or(at("scale").span);
        n.errors.push(
            Diagnostic::new(span, format!("{dp}.replicas"), "replicas cannot be used with mode: global (a global service runs one replica per member)")
                .with_hint("remove replicas, or use mode: replicated"),
        );
    }
    if let Some(c) = &svc.container_name {
        let replicas = d.replicas.unwrap_or(1);
        if replicas > 1 || d.mode == DeployMode::Global {
            n.errors.push(
                Diagnostic::new(
                    at("container_name").span,
                    format!("{base}.container_name"),
                    format!("container_name {c:?} cannot be used with more than one replica"),
                )
                .with_hint("remove container_name, or run a single replica"),
            );
        }
    }
    let folded = svc.scale.is_some()
        || svc.cpus.is_some()
        || svc.mem_limit.is_some()
        || svc.pids_limit.is_some()
        || svc.mem_reservation.is_some()
        || svc.restart.is_some();
    if had_deploy || folded {
        svc.deploy = Some(d);
    }
}

fn deploy(n: &mut N, node: &Node, path: &str) -> Deploy {
    let mut d = Deploy::default();
    let Some(m) = node.as_map() else { return d };
    for (k, e) in m {
        let p = format!("{path}.{k}");
        let v = &e.node;
        match k.as_str() {
            "mode" => {
                d.mode = match v.as_str().unwrap_or_default() {
                    "replicated" => DeployMode::Replicated,
                    "global" => DeployMode::Global,
                    m @ ("replicated-job" | "global-job") => {
                        n.warnings.push(Diagnostic::new(
                            v.span.clone(),
                            &p,
                            format!("deploy mode {m} is not supported yet by incus-compose"),
                        ));
                        if m == "global-job" {
                            DeployMode::GlobalJob
                        } else {
                            DeployMode::ReplicatedJob
                        }
                    }
                    other => {
                        n.errors.push(
                            Diagnostic::new(
                                v.span.clone(),
                                &p,
                                format!("invalid deploy mode {other:?}"),
                            )
                            .with_hint("use replicated or global"),
                        );
                        DeployMode::Replicated
                    }
                }
            }
            "replicas" => d.replicas = n.uint(v, &p),
            "endpoint_mode" => {
                d.endpoint_mode = n.string(v, &p);
                if let Some(em) = &d.endpoint_mode {
                    if em != "vip" && em != "dnsrr" {
                        n.errors.push(
                            Diagnostic::new(
                                v.span.clone(),
                                &p,
                                format!("invalid endpoint_mode {em:?}"),
                            )
                            .with_hint("use vip or dnsrr"),
                        );
                    }
                }
            }
            "labels" => d.labels = n.string_map(v),
            "placement" => {
                for (pk, pe) in v.as_map().cloned().unwrap_or_default() {
                    let pp = format!("{p}.{pk}");
                    match pk.as_str() {
                        "constraints" => {
                            for (i, c) in pe.node.as_seq().unwrap_or_default().iter().enumerate() {
                                let Some(t) = text(c) else { continue };
                                // Swarm refuses a bad constraint when it deploys, not
                                // `docker compose config`: so does `up` (crate::validate).
                                match t.parse::<Constraint>() {
                                    Ok(c) => d.placement.constraints.push(c),
                                    Err(err) => n.up_errors.push(Diagnostic::new(
                                        c.span.clone(),
                                        format!("{pp}.{i}"),
                                        err.to_string(),
                                    )),
                                }
                            }
                        }
                        "preferences" => {
                            for (i, pref) in pe.node.as_seq().unwrap_or_default().iter().enumerate()
                            {
                                let Some(sp) = pref.get("spread") else {
                                    continue;
                                };
                                let Some(t) = text(sp) else { continue };
                                match t.parse::<SpreadPreference>() {
                                    Ok(s) => d.placement.preferences.push(s),
                                    Err(err) => n.errors.push(Diagnostic::new(
                                        sp.span.clone(),
                                        format!("{pp}.{i}.spread"),
                                        format!("cannot spread over {t:?}: {err}"),
                                    )),
                                }
                            }
                        }
                        "max_replicas_per_node" => {
                            d.placement.max_replicas_per_node = n.uint(&pe.node, &pp)
                        }
                        _ => {}
                    }
                }
            }
            "resources" => {
                if let Some(l) = v.get("limits") {
                    let lp = format!("{p}.limits");
                    d.resources.limits = Some(Limits {
                        cpus: l
                            .get("cpus")
                            .and_then(|x| n.float(x, &format!("{lp}.cpus"))),
                        memory: l
                            .get("memory")
                            .and_then(|x| n.bytes(x, &format!("{lp}.memory"))),
                        pids: l.get("pids").and_then(|x| n.int(x, &format!("{lp}.pids"))),
                    });
                }
                if let Some(r) = v.get("reservations") {
                    let rp = format!("{p}.reservations");
                    let mut res = Reservations {
                        cpus: r
                            .get("cpus")
                            .and_then(|x| n.float(x, &format!("{rp}.cpus"))),
                        memory: r
                            .get("memory")
                            .and_then(|x| n.bytes(x, &format!("{rp}.memory"))),
                        ..Reservations::default()
                    };
                    for (i, g) in r
                        .get("generic_resources")
                        .and_then(Node::as_seq)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        if let Some(spec) = g.get("discrete_resource_spec") {
                            let gp = format!("{rp}.generic_resources.{i}.discrete_resource_spec");
                            let kind = spec.get("kind").and_then(text).unwrap_or_default();
                            let value = spec
                                .get("value")
                                .and_then(|x| n.int(x, &format!("{gp}.value")))
                                .unwrap_or(0);
                            res.generic_resources.push(GenericResource { kind, value });
                        }
                    }
                    for (i, dev) in r
                        .get("devices")
                        .and_then(Node::as_seq)
                        .unwrap_or_default()
                        .iter()
                        .enumerate()
                    {
                        let dpath = format!("{rp}.devices.{i}");
                        let count = match dev.get("count") {
                            Some(c) if c.as_str() == Some("all") => Some(-1),
                            Some(c) => n.int(c, &format!("{dpath}.count")),
                            None => None,
                        };
                        res.devices.push(DeviceRequest {
                            capabilities: dev
                                .get("capabilities")
                                .map(|c| n.string_list(c, &dpath))
                                .unwrap_or_default(),
                            driver: dev.get("driver").and_then(text),
                            count,
                            device_ids: dev
                                .get("device_ids")
                                .map(|c| n.string_list(c, &dpath))
                                .unwrap_or_default(),
                            options: dev
                                .get("options")
                                .map(|o| n.string_map(o))
                                .unwrap_or_default(),
                        });
                    }
                    d.resources.reservations = Some(res);
                }
            }
            "restart_policy" => {
                let cond = match v.get("condition").and_then(text).as_deref() {
                    None | Some("any") => RestartCondition::Any,
                    Some("none") => RestartCondition::None,
                    Some("on-failure") => RestartCondition::OnFailure,
                    Some(other) => {
                        let c = v.get("condition").cloned().unwrap_or_else(|| v.clone());
                        n.errors.push(
                            Diagnostic::new(
                                c.span,
                                format!("{p}.condition"),
                                format!("invalid restart condition {other:?}"),
                            )
                            .with_hint("use none, on-failure or any"),
                        );
                        RestartCondition::Any
                    }
                };
                d.restart_policy = Some(RestartPolicy {
                    condition: cond,
                    delay: v
                        .get("delay")
                        .and_then(|x| n.duration(x, &format!("{p}.delay"))),
                    max_attempts: v
                        .get("max_attempts")
                        .and_then(|x| n.uint(x, &format!("{p}.max_attempts"))),
                    window: v
                        .get("window")
                        .and_then(|x| n.duration(x, &format!("{p}.window"))),
                });
            }
            "update_config" => d.update_config = Some(update_config(n, v, &p)),
            "rollback_config" => d.rollback_config = Some(update_config(n, v, &p)),
            _ => {}
        }
    }
    d
}

fn update_config(n: &mut N, v: &Node, p: &str) -> UpdateConfig {
    let failure_action = v.get("failure_action").and_then(|fa| match fa.as_str() {
        Some("continue") => Some(FailureAction::Continue),
        Some("pause") => Some(FailureAction::Pause),
        Some("rollback") => Some(FailureAction::Rollback),
        _ => {
            n.errors.push(
                Diagnostic::new(
                    fa.span.clone(),
                    format!("{p}.failure_action"),
                    format!("invalid failure_action {}", fa.describe()),
                )
                .with_hint("use continue, pause or rollback"),
            );
            None
        }
    });
    let order = v.get("order").and_then(|o| match o.as_str() {
        Some("stop-first") => Some(UpdateOrder::StopFirst),
        Some("start-first") => Some(UpdateOrder::StartFirst),
        _ => None,
    });
    let ratio = v
        .get("max_failure_ratio")
        .and_then(|x| n.float(x, &format!("{p}.max_failure_ratio")));
    if let Some(r) = ratio {
        if !(0.0..=1.0).contains(&r) {
            let node = v
                .get("max_failure_ratio")
                .cloned()
                .unwrap_or_else(|| v.clone());
            n.err(
                &node,
                &format!("{p}.max_failure_ratio"),
                format!("max_failure_ratio must be between 0 and 1, found {r}"),
            );
        }
    }
    UpdateConfig {
        parallelism: v
            .get("parallelism")
            .and_then(|x| n.uint(x, &format!("{p}.parallelism"))),
        delay: v
            .get("delay")
            .and_then(|x| n.duration(x, &format!("{p}.delay"))),
        failure_action,
        monitor: v
            .get("monitor")
            .and_then(|x| n.duration(x, &format!("{p}.monitor"))),
        max_failure_ratio: ratio,
        order,
    }
}

fn build(n: &mut N, v: &Node, p: &str) -> Build {
    let mut b = Build::default();
    let mut empty_dockerfile = false;
    for (k, e) in v.as_map().cloned().unwrap_or_default() {
        match k.as_str() {
            "context" => b.context = text(&e.node).unwrap_or_default(),
            // Empty (an unset variable): compose-go leaves it out, and adds no default.
            "dockerfile" => {
                b.dockerfile = n.string(&e.node, &format!("{p}.dockerfile"));
                if b.dockerfile.as_deref() == Some("") {
                    b.dockerfile = None;
                    empty_dockerfile = true;
                }
            }
            "args" => b.args = n.opt_string_map(&e.node),
            "target" => b.target = n.string(&e.node, &format!("{p}.target")),
            _ => {
                b.other.insert(k.clone(), e.node.to_json());
            }
        }
    }
    // compose-go's default, written out as `docker compose config` prints it.
    if b.dockerfile.is_none() && !empty_dockerfile && !b.other.contains_key("dockerfile_inline") {
        b.dockerfile = Some("Dockerfile".into());
    }
    b
}

fn healthcheck(n: &mut N, v: &Node, p: &str) -> Healthcheck {
    let mut h = Healthcheck::default();
    for (k, e) in v.as_map().cloned().unwrap_or_default() {
        let kp = format!("{p}.{k}");
        match k.as_str() {
            "test" => h.test = n.string_list(&e.node, &kp),
            "interval" => h.interval = n.duration(&e.node, &kp),
            "timeout" => h.timeout = n.duration(&e.node, &kp),
            "start_period" => h.start_period = n.duration(&e.node, &kp),
            "start_interval" => h.start_interval = n.duration(&e.node, &kp),
            "retries" => h.retries = n.uint(&e.node, &kp),
            "disable" => h.disable = n.boolean(&e.node, &kp).unwrap_or(false),
            _ => {}
        }
    }
    if let Some(first) = h.test.first() {
        if !matches!(first.as_str(), "NONE" | "CMD" | "CMD-SHELL") {
            let node = v.get("test").cloned().unwrap_or_else(|| v.clone());
            n.errors.push(
                Diagnostic::new(node.span, format!("{p}.test"), format!("a healthcheck test list must start with NONE, CMD or CMD-SHELL, not {first:?}"))
                    .with_hint("write test: [\"CMD\", ...] or a string for a shell command"),
            );
        }
    }
    h
}

fn file_refs(n: &mut N, v: &Node, p: &str) -> Vec<FileRef> {
    let mut out = Vec::new();
    for (i, item) in v.as_seq().unwrap_or_default().iter().enumerate() {
        let ip = format!("{p}.{i}");
        let mode = item.get("mode").and_then(|m| match &m.value {
            Value::Int(i) => u32::try_from(*i).ok(),
            Value::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
            _ => None,
        });
        out.push(FileRef {
            source: item.get("source").and_then(text).unwrap_or_default(),
            target: item
                .get("target")
                .and_then(|t| n.string(t, &format!("{ip}.target"))),
            uid: item.get("uid").and_then(text),
            gid: item.get("gid").and_then(text),
            mode,
        });
    }
    out
}

fn port(n: &mut N, item: &Node, p: &str) -> Option<Port> {
    let target = item
        .get("target")
        .and_then(|t| n.int(t, &format!("{p}.target")));
    let Some(target) = target else {
        if item.get("target").is_none() {
            n.err(item, p, "a port needs a target");
        }
        return None;
    };
    let Ok(target) = u16::try_from(target) else {
        n.err(
            item,
            &format!("{p}.target"),
            format!("port {target} is out of range"),
        );
        return None;
    };
    let published = match item.get("published") {
        None => None,
        Some(pn) => match text(pn).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let (a, b) = s.split_once('-').unwrap_or((&s, &s));
                match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    (Ok(start), Ok(end)) if start <= end => Some(PortRange { start, end }),
                    _ => {
                        n.err(
                            pn,
                            &format!("{p}.published"),
                            format!("invalid published port {s:?}"),
                        );
                        return None;
                    }
                }
            }
        },
    };
    let mode = match item.get("mode").and_then(Node::as_str) {
        None | Some("ingress") => PortMode::Ingress,
        Some("host") => PortMode::Host,
        Some(other) => {
            let m = item.get("mode").cloned().unwrap_or_else(|| item.clone());
            n.err(
                &m,
                &format!("{p}.mode"),
                format!("invalid port mode {other:?}: use ingress or host"),
            );
            PortMode::Ingress
        }
    };
    Some(Port {
        name: item.get("name").and_then(text),
        mode,
        host_ip: item.get("host_ip").and_then(text),
        target,
        published,
        protocol: item
            .get("protocol")
            .and_then(text)
            .unwrap_or_else(|| "tcp".into()),
        app_protocol: item.get("app_protocol").and_then(text),
    })
}

fn service_volume(n: &mut N, item: &Node, p: &str) -> Option<ServiceVolume> {
    let kind = match item.get("type").and_then(Node::as_str) {
        Some("bind") => VolumeType::Bind,
        Some("volume") => VolumeType::Volume,
        Some("tmpfs") => VolumeType::Tmpfs,
        Some("cluster") => VolumeType::Cluster,
        Some("npipe") => VolumeType::Npipe,
        Some("image") => VolumeType::Image,
        _ => return None,
    };
    let Some(target) = item.get("target").and_then(text) else {
        n.err(
            item,
            p,
            "a volume needs a target (the path in the container)",
        );
        return None;
    };
    if !target.starts_with('/') {
        // docker compose's `config` prints it; the engine refuses it at `up`, and so do we.
        let at = item.get("target").unwrap_or(item);
        n.up_errors.push(
            Diagnostic::new(
                at.span.clone(),
                format!("{p}.target"),
                format!("the container path {target:?} must be absolute"),
            )
            .with_hint("write SOURCE:/PATH, or an absolute path for an anonymous volume"),
        );
    }
    let target = if target.starts_with('/') {
        crate::canonical::clean(Path::new(&target))
            .to_string_lossy()
            .into_owned()
    } else {
        target
    };
    let source = item.get("source").and_then(text).filter(|s| !s.is_empty());
    if kind == VolumeType::Bind && source.is_none() {
        n.err(item, p, "a bind mount needs a source");
    }
    let mut v = ServiceVolume {
        kind,
        source,
        target,
        read_only: item
            .get("read_only")
            .and_then(|r| n.boolean(r, &format!("{p}.read_only")))
            .unwrap_or(false),
        bind: None,
        volume: None,
        tmpfs: None,
        consistency: item.get("consistency").and_then(text),
        other: BTreeMap::new(),
    };
    if let Some(b) = item.get("bind") {
        v.bind = Some(BindOptions {
            propagation: b.get("propagation").and_then(text),
            create_host_path: b
                .get("create_host_path")
                .and_then(|x| n.boolean(x, &format!("{p}.bind.create_host_path")))
                .unwrap_or(false),
            selinux: b.get("selinux").and_then(text),
            recursive: b.get("recursive").and_then(text),
        });
    }
    if let Some(vo) = item.get("volume") {
        v.volume = Some(VolumeOptions {
            nocopy: vo
                .get("nocopy")
                .and_then(|x| n.boolean(x, &format!("{p}.volume.nocopy")))
                .unwrap_or(false),
            subpath: vo.get("subpath").and_then(text),
            labels: vo
                .get("labels")
                .map(|l| n.string_map(l))
                .unwrap_or_default(),
        });
    }
    if let Some(t) = item.get("tmpfs") {
        v.tmpfs = Some(TmpfsOptions {
            size: t
                .get("size")
                .and_then(|x| n.bytes(x, &format!("{p}.tmpfs.size"))),
            mode: t.get("mode").and_then(|m| match &m.value {
                Value::Int(i) => u32::try_from(*i).ok(),
                Value::Str(s) => u32::from_str_radix(s, 8).ok(),
                _ => None,
            }),
        });
    }
    if let Some(img) = item.get("image") {
        v.other.insert("image".into(), img.to_json());
    }
    Some(v)
}
