//! Short syntax to long syntax, on the positioned tree, before files are merged (as compose-go
//! does), so that merging can match entries by key: ports, volumes, secrets, configs,
//! environment, labels, depends_on, networks, env_file, healthcheck tests. Relative paths are
//! resolved against the base directory of the file they come from.

use std::path::{Component, Path, PathBuf};

use crate::error::{Diagnostic, Errors};
use crate::yaml::{Entry, Mapping, Node, Span, Value};

pub struct Ctx<'a> {
    /// Directory that relative paths in services and resources resolve against.
    pub base_dir: &'a Path,
    /// `$HOME`, for `~` in paths.
    pub home: Option<&'a str>,
}

pub fn mk_map(span: &Span, pairs: Vec<(&str, Node)>) -> Node {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(
            k.to_string(),
            Entry {
                key_span: v.span.clone(),
                node: v,
            },
        );
    }
    Node::new(Value::Map(m), span.clone())
}

/// Lexically clean a path (`.` and `..` removed), without touching the file system.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

impl Ctx<'_> {
    /// A host path as compose-go's `maybeUnixPath` resolves it (bind sources, secret and
    /// config files, a local volume's bind `device`): `~` expanded, Windows absolute paths
    /// (`C:\\data`) as written, others as [`Ctx::resolve`] does.
    pub fn resolve_host(&self, p: &str) -> String {
        if is_windows_abs(p) {
            return p.to_string();
        }
        self.resolve(p)
    }

    pub fn resolve(&self, p: &str) -> String {
        if p == "~" || p.starts_with("~/") {
            if let Some(home) = self.home {
                return clean(
                    &Path::new(home).join(p.trim_start_matches('~').trim_start_matches('/')),
                )
                .to_string_lossy()
                .into_owned();
            }
        }
        let path = Path::new(p);
        if path.is_absolute() {
            clean(path).to_string_lossy().into_owned()
        } else {
            clean(&self.base_dir.join(path))
                .to_string_lossy()
                .into_owned()
        }
    }
}

fn is_remote_context(s: &str) -> bool {
    s.contains("://") || s.starts_with("git@") || s.starts_with("github.com/")
}

/// Canonicalise a whole file tree in place.
pub fn canonicalize_file(root: &mut Node, ctx: &Ctx, errors: &mut Errors) {
    let Some(top) = root.as_map_mut() else { return };
    if let Some(services) = top.get_mut("services").and_then(|e| e.node.as_map_mut()) {
        for (name, e) in services.iter_mut() {
            canonicalize_service(&mut e.node, &format!("services.{name}"), ctx, errors);
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(items) = top.get_mut(section).and_then(|e| e.node.as_map_mut()) {
            for (_, e) in items.iter_mut() {
                if let Some(m) = e.node.as_map_mut() {
                    if let Some(f) = m.get_mut("file") {
                        if let Value::Str(s) = &f.node.value {
                            f.node.value = Value::Str(ctx.resolve_host(s));
                        }
                    }
                }
            }
        }
    }
    // A local volume that binds a host directory (`driver_opts: {o: bind, device: ./data}`):
    // the device resolves as a bind source does (compose-go's `volumeDriverOpts`).
    if let Some(items) = top.get_mut("volumes").and_then(|e| e.node.as_map_mut()) {
        for (_, e) in items.iter_mut() {
            let Some(m) = e.node.as_map_mut() else {
                continue;
            };
            if m.get("driver").and_then(|d| d.node.as_str()) != Some("local") {
                continue;
            }
            let Some(opts) = m.get_mut("driver_opts").and_then(|o| o.node.as_map_mut()) else {
                continue;
            };
            if opts.get("o").and_then(|o| o.node.as_str()) != Some("bind") {
                continue;
            }
            if let Some(dev) = opts.get_mut("device") {
                if let Value::Str(s) = &dev.node.value {
                    dev.node.value = Value::Str(ctx.resolve_host(s));
                }
            }
        }
    }
    for section in ["networks", "volumes", "secrets", "configs"] {
        if let Some(items) = top.get_mut(section).and_then(|e| e.node.as_map_mut()) {
            for (_, e) in items.iter_mut() {
                if let Some(m) = e.node.as_map_mut() {
                    external_name(m);
                    for key in ["labels"] {
                        if let Some(l) = m.get_mut(key) {
                            list_to_map(&mut l.node);
                        }
                    }
                }
            }
        }
    }
}

/// `build.ssh` (`[default, id=./key]` or `{id: ./key}`) as compose-go keeps it: a list of
/// `ID` or `ID: /absolute/path` (how its `SSHKey` prints), the path resolved as a bind source.
fn build_ssh(node: &mut Node, ctx: &Ctx) {
    let keys: Vec<(String, Option<String>, Span)> = match &node.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| {
                let t = i.scalar_text()?;
                Some(match t.split_once('=') {
                    Some((id, path)) => (id.to_string(), Some(path.to_string()), i.span.clone()),
                    None => (t, None, i.span.clone()),
                })
            })
            .collect(),
        Value::Map(m) => m
            .iter()
            .map(|(id, e)| (id.clone(), e.node.scalar_text(), e.node.span.clone()))
            .collect(),
        _ => return,
    };
    node.value = Value::Seq(
        keys.into_iter()
            .map(|(id, path, span)| match path.filter(|p| !p.is_empty()) {
                Some(p) => Node::str(format!("{id}: {}", ctx.resolve_host(&p)), span),
                None => Node::str(id, span),
            })
            .collect(),
    );
}

/// `external: {name: x}` (deprecated) becomes `external: true` + `name: x`.
fn external_name(m: &mut Mapping) {
    let name = m.get("external").and_then(|e| e.node.get("name")).cloned();
    if let Some(name) = name {
        if let Some(e) = m.get_mut("external") {
            e.node.value = Value::Bool(true);
        }
        if !m.contains_key("name") {
            m.insert(
                "name".into(),
                Entry {
                    key_span: name.span.clone(),
                    node: name,
                },
            );
        }
    }
}

/// `["K=V", "K"]` becomes `{K: V, K: null}`; a mapping is left as it is.
pub fn list_to_map(node: &mut Node) {
    let Value::Seq(items) = &node.value else {
        return;
    };
    let mut m = Mapping::new();
    for item in items {
        let Some(text) = item.scalar_text() else {
            continue;
        };
        let (k, v) = match text.split_once('=') {
            Some((k, v)) => (k.to_string(), Node::str(v, item.span.clone())),
            None => (text.clone(), Node::new(Value::Null, item.span.clone())),
        };
        m.insert(
            k,
            Entry {
                key_span: item.span.clone(),
                node: v,
            },
        );
    }
    node.value = Value::Map(m);
}

fn str_to_list(node: &mut Node) {
    if let Value::Str(s) = &node.value {
        node.value = Value::Seq(vec![Node::str(s.clone(), node.span.clone())]);
    }
}

fn canonicalize_service(svc: &mut Node, path: &str, ctx: &Ctx, errors: &mut Errors) {
    let Some(m) = svc.as_map_mut() else { return };
    for key in ["environment", "labels", "annotations", "sysctls"] {
        if let Some(e) = m.get_mut(key) {
            list_to_map(&mut e.node);
        }
    }
    for key in ["dns", "dns_search", "tmpfs", "label_file"] {
        if let Some(e) = m.get_mut(key) {
            str_to_list(&mut e.node);
        }
    }
    // `develop.watch[].path` is made absolute (compose-go's `absSymbolicLink`).
    if let Some(Value::Seq(watch)) = m
        .get_mut("develop")
        .and_then(|e| e.node.as_map_mut())
        .and_then(|d| d.get_mut("watch"))
        .map(|w| &mut w.node.value)
    {
        for t in watch.iter_mut() {
            if let Some(p) = t.as_map_mut().and_then(|t| t.get_mut("path")) {
                if let Value::Str(s) = &p.node.value {
                    p.node.value = Value::Str(ctx.resolve(s));
                }
            }
        }
    }
    if let Some(e) = m.get_mut("build") {
        let span = e.node.span.clone();
        if let Value::Str(s) = &e.node.value {
            let ctxdir = if is_remote_context(s) {
                s.clone()
            } else {
                ctx.resolve(s)
            };
            e.node = mk_map(&span, vec![("context", Node::str(ctxdir, span.clone()))]);
        } else if let Some(b) = e.node.as_map_mut() {
            match b.get_mut("context") {
                Some(c) => {
                    if let Value::Str(s) = &c.node.value {
                        if !is_remote_context(s) {
                            c.node.value = Value::Str(ctx.resolve(s));
                        }
                    }
                }
                None => {
                    b.insert(
                        "context".into(),
                        Entry {
                            key_span: span.clone(),
                            node: Node::str(ctx.resolve("."), span.clone()),
                        },
                    );
                }
            }
            for key in ["args", "labels", "additional_contexts"] {
                if let Some(a) = b.get_mut(key) {
                    list_to_map(&mut a.node);
                }
            }
            if let Some(a) = b.get_mut("ssh") {
                build_ssh(&mut a.node, ctx);
            }
        }
    }
    if let Some(e) = m.get_mut("deploy") {
        if let Some(l) = e.node.as_map_mut().and_then(|d| d.get_mut("labels")) {
            list_to_map(&mut l.node);
        }
    }
    if let Some(e) = m.get_mut("healthcheck") {
        if let Some(t) = e.node.as_map_mut().and_then(|h| h.get_mut("test")) {
            if let Value::Str(s) = &t.node.value {
                let span = t.node.span.clone();
                t.node.value = Value::Seq(vec![
                    Node::str("CMD-SHELL", span.clone()),
                    Node::str(s.clone(), span),
                ]);
            }
        }
    }
    if let Some(e) = m.get_mut("depends_on") {
        if let Value::Seq(items) = &e.node.value {
            let mut dm = Mapping::new();
            for item in items {
                if let Value::Str(s) = &item.value {
                    let span = &item.span;
                    dm.insert(
                        s.clone(),
                        Entry {
                            key_span: span.clone(),
                            node: mk_map(
                                span,
                                vec![
                                    ("condition", Node::str("service_started", span.clone())),
                                    ("required", Node::new(Value::Bool(true), span.clone())),
                                ],
                            ),
                        },
                    );
                }
            }
            e.node.value = Value::Map(dm);
        }
    }
    if let Some(e) = m.get_mut("networks") {
        if let Value::Seq(items) = &e.node.value {
            let mut nm = Mapping::new();
            for item in items {
                if let Value::Str(s) = &item.value {
                    nm.insert(
                        s.clone(),
                        Entry {
                            key_span: item.span.clone(),
                            node: Node::new(Value::Null, item.span.clone()),
                        },
                    );
                }
            }
            e.node.value = Value::Map(nm);
        }
    }
    if let Some(e) = m.get_mut("env_file") {
        str_to_list(&mut e.node);
        if let Value::Seq(items) = &mut e.node.value {
            for item in items.iter_mut() {
                let span = item.span.clone();
                match &mut item.value {
                    Value::Str(s) => {
                        let p = ctx.resolve(s);
                        *item = mk_map(
                            &span,
                            vec![
                                ("path", Node::str(p, span.clone())),
                                ("required", Node::new(Value::Bool(true), span.clone())),
                            ],
                        );
                    }
                    Value::Map(em) => {
                        if let Some(p) = em.get_mut("path") {
                            if let Value::Str(s) = &p.node.value {
                                p.node.value = Value::Str(ctx.resolve(s));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(e) = m.get_mut("extra_hosts") {
        if let Value::Map(hm) = &e.node.value {
            let mut list = Vec::new();
            for (host, he) in hm {
                match &he.node.value {
                    Value::Seq(ips) => {
                        for ip in ips {
                            if let Some(t) = ip.scalar_text() {
                                list.push(Node::str(format!("{host}={t}"), ip.span.clone()));
                            }
                        }
                    }
                    _ => {
                        if let Some(t) = he.node.scalar_text() {
                            list.push(Node::str(format!("{host}={t}"), he.node.span.clone()));
                        }
                    }
                }
            }
            e.node.value = Value::Seq(list);
        }
    }
    for key in ["secrets", "configs"] {
        if let Some(e) = m.get_mut(key) {
            if let Value::Seq(items) = &mut e.node.value {
                for item in items.iter_mut() {
                    if let Value::Str(s) = &item.value {
                        let span = item.span.clone();
                        *item = mk_map(&span, vec![("source", Node::str(s.clone(), span.clone()))]);
                    }
                }
            }
        }
    }
    if let Some(e) = m.get_mut("ports") {
        if let Value::Seq(items) = &mut e.node.value {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ipath = format!("{path}.ports.{i}");
                match &item.value {
                    Value::Str(_) | Value::Int(_) | Value::Float(_) => {
                        let text = item.scalar_text().unwrap_or_default();
                        match parse_port(&text) {
                            Ok(specs) => {
                                for spec in specs {
                                    out.push(spec.to_node(&item.span));
                                }
                            }
                            Err(msg) => errors.push(
                                Diagnostic::new(item.span.clone(), &ipath, msg).with_hint(
                                    "write [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. 8080:80 or 127.0.0.1:53:53/udp",
                                ),
                            ),
                        }
                    }
                    _ => out.push(item.clone()),
                }
            }
            *items = out;
        }
    }
    if let Some(e) = m.get_mut("volumes") {
        if let Value::Seq(items) = &mut e.node.value {
            for (i, item) in items.iter_mut().enumerate() {
                let ipath = format!("{path}.volumes.{i}");
                match &mut item.value {
                    Value::Str(s) => match parse_volume(s, ctx) {
                        Ok(pairs) => {
                            let span = item.span.clone();
                            *item = build_volume_node(&span, pairs);
                        }
                        Err(msg) => errors.push(
                            Diagnostic::new(item.span.clone(), &ipath, msg)
                                .with_hint("write SOURCE:TARGET[:ro|rw] or a container path"),
                        ),
                    },
                    Value::Map(vm) => {
                        let is_bind = vm
                            .get("type")
                            .and_then(|t| t.node.as_str())
                            .is_some_and(|t| t == "bind");
                        if is_bind {
                            if let Some(src) = vm.get_mut("source") {
                                if let Value::Str(s) = &src.node.value {
                                    src.node.value = Value::Str(ctx.resolve_host(s));
                                }
                            }
                        }
                        if let Some(l) = vm
                            .get_mut("volume")
                            .and_then(|v| v.node.as_map_mut())
                            .and_then(|v| v.get_mut("labels"))
                        {
                            list_to_map(&mut l.node);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A parsed short-syntax port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    pub published: Option<String>,
    pub target: u16,
    pub protocol: String,
}

impl PortSpec {
    fn to_node(&self, span: &Span) -> Node {
        let mut pairs = vec![
            ("mode", Node::str("ingress", span.clone())),
            (
                "target",
                Node::new(Value::Int(i64::from(self.target)), span.clone()),
            ),
            ("protocol", Node::str(self.protocol.clone(), span.clone())),
        ];
        if let Some(p) = &self.published {
            pairs.push(("published", Node::str(p.clone(), span.clone())));
        }
        if let Some(ip) = &self.host_ip {
            pairs.push(("host_ip", Node::str(ip.clone(), span.clone())));
        }
        mk_map(span, pairs)
    }
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid port {s:?}");
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(format!("invalid port range {s:?}: start above end"));
    }
    Ok((a, b))
}

/// `[HOST_IP:][PUBLISHED[-RANGE]:]TARGET[-RANGE][/PROTOCOL]`, with IPv6 hosts in brackets.
pub fn parse_port(spec: &str) -> Result<Vec<PortSpec>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty port".into());
    }
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "invalid protocol {protocol:?} in port {spec:?}: use tcp, udp or sctp"
        ));
    }
    let (host_ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| format!("invalid port {spec:?}: unclosed [ in IPv6 address"))?;
        let after = after
            .strip_prefix(':')
            .ok_or_else(|| format!("invalid port {spec:?}"))?;
        (Some(ip.to_string()), after)
    } else {
        (None, rest)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, published, target) = match parts.as_slice() {
        [t] => (None, None, *t),
        [p, t] => (None, Some(*p), *t),
        [ip, p, t] => (Some(*ip), Some(*p), *t),
        _ => return Err(format!("invalid port {spec:?}: too many colons")),
    };
    let host_ip = match (host_ip, ip) {
        (Some(h), None) => Some(h),
        (None, Some(ip)) if !ip.is_empty() => Some(ip.to_string()),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(format!("invalid port {spec:?}")),
    };
    let published = published.filter(|p| !p.is_empty());
    let (t0, t1) = parse_range(target)?;
    let mut out = Vec::new();
    match published {
        None => {
            for t in t0..=t1 {
                out.push(PortSpec {
                    host_ip: host_ip.clone(),
                    published: None,
                    target: t,
                    protocol: protocol.clone(),
                });
            }
        }
        Some(p) => {
            let (p0, p1) = parse_range(p)?;
            if t0 == t1 {
                out.push(PortSpec {
                    host_ip: host_ip.clone(),
                    published: Some(if p0 == p1 {
                        p0.to_string()
                    } else {
                        format!("{p0}-{p1}")
                    }),
                    target: t0,
                    protocol: protocol.clone(),
                });
            } else if p1 - p0 == t1 - t0 {
                for (i, t) in (t0..=t1).enumerate() {
                    let i = u16::try_from(i).map_err(|_| format!("invalid port {spec:?}"))?;
                    out.push(PortSpec {
                        host_ip: host_ip.clone(),
                        published: Some((p0 + i).to_string()),
                        target: t,
                        protocol: protocol.clone(),
                    });
                }
            } else {
                return Err(format!(
                    "invalid port {spec:?}: the published range and the target range differ in size"
                ));
            }
        }
    }
    Ok(out)
}

fn build_volume_node(span: &Span, pairs: Vec<(&'static str, VolPart)>) -> Node {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let node = match v {
            VolPart::S(s) => Node::str(s, span.clone()),
            VolPart::B(b) => Node::new(Value::Bool(b), span.clone()),
            VolPart::M(inner) => build_volume_node(span, inner),
        };
        out.push((k, node));
    }
    mk_map(span, out)
}

pub enum VolPart {
    S(String),
    B(bool),
    M(Vec<(&'static str, VolPart)>),
}

/// Short volume syntax: `[SOURCE:]TARGET[:MODE]`, split as compose-go's `format.ParseVolume`
/// does: a drive letter (`C:\\data`) is part of its path; one or two characters are a target;
/// unknown options are ignored. Whether the target is absolute is checked before `up`
/// ([`crate::validate`]), as the engine checks it, not here: `config` prints such files.
pub fn parse_volume(spec: &str, ctx: &Ctx) -> Result<Vec<(&'static str, VolPart)>, String> {
    let chars: Vec<char> = spec.chars().collect();
    match chars.len() {
        0 => return Err(format!("invalid volume {spec:?}: empty")),
        1 | 2 => {
            return Ok(vec![
                ("type", VolPart::S("volume".into())),
                ("target", VolPart::S(spec.to_string())),
            ]);
        }
        _ => {}
    }
    // compose-go's `populateFieldFromBuffer`: source, then target, then options.
    let (mut source, mut target, mut options): (Option<String>, Option<String>, Option<String>) =
        (None, None, None);
    let mut section = |buffer: String, end: bool| -> Result<(), String> {
        if buffer.is_empty() {
            return Err(format!(
                "invalid volume {spec:?}: empty section between colons"
            ));
        }
        if source.is_none() && end {
            target = Some(buffer);
        } else if source.is_none() {
            source = Some(buffer);
        } else if target.is_none() {
            target = Some(buffer);
        } else if !end {
            return Err(format!("invalid volume {spec:?}: too many colons"));
        } else {
            options = Some(buffer);
        }
        Ok(())
    };
    let mut buffer = String::new();
    for c in chars.iter().copied() {
        let mut b = buffer.chars();
        let drive =
            c == ':' && matches!((b.next(), b.next()), (Some(l), None) if l.is_alphabetic());
        if c == ':' && !drive {
            section(std::mem::take(&mut buffer), false)?;
        } else {
            buffer.push(c);
        }
    }
    section(buffer, true)?;
    let (source, target) = (source, target.unwrap_or_default());
    let source = source.as_deref();
    let target = target.as_str();
    let mut out: Vec<(&'static str, VolPart)> = Vec::new();
    let is_bind = source.is_some_and(is_file_path);
    out.push((
        "type",
        VolPart::S(if is_bind { "bind" } else { "volume" }.into()),
    ));
    if let Some(s) = source {
        out.push((
            "source",
            VolPart::S(if is_bind {
                ctx.resolve_host(s)
            } else {
                s.to_string()
            }),
        ));
    }
    let target = if target.starts_with('/') {
        clean(Path::new(target)).to_string_lossy().into_owned()
    } else {
        target.to_string()
    };
    out.push(("target", VolPart::S(target)));
    let mut read_only = false;
    let mut nocopy = false;
    let (mut selinux, mut propagation) = (None, None);
    for opt in options.as_deref().unwrap_or_default().split(',') {
        match opt {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nocopy" => nocopy = true,
            "z" | "Z" => selinux = Some(opt.to_string()),
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" => {
                propagation = Some(opt.to_string())
            }
            // compose-go ignores other options (`cached`, `delegated`, ...).
            _ => {}
        }
    }
    if read_only {
        out.push(("read_only", VolPart::B(true)));
    }
    let mut bind: Vec<(&'static str, VolPart)> = Vec::new();
    if let Some(s) = selinux {
        bind.push(("selinux", VolPart::S(s)));
    }
    if let Some(p) = propagation {
        bind.push(("propagation", VolPart::S(p)));
    }
    if is_bind {
        bind.push(("create_host_path", VolPart::B(true)));
    }
    if !bind.is_empty() {
        out.push(("bind", VolPart::M(bind)));
    }
    if nocopy {
        out.push(("volume", VolPart::M(vec![("nocopy", VolPart::B(true))])));
    } else if !is_bind {
        // Named and anonymous volumes in short syntax get `volume: {}`, as in compose-go.
        out.push(("volume", VolPart::M(Vec::new())));
    }
    Ok(out)
}

/// compose-go's `isFilePath`: a short volume's source is a host path (a bind) when it starts
/// with `.`, `/`, `~`, `\\` or a drive letter (`C:`).
fn is_file_path(source: &str) -> bool {
    if source.starts_with(['.', '/', '~']) || source.starts_with("\\\\") {
        return true;
    }
    is_windows_drive(source)
}

fn is_windows_drive(s: &str) -> bool {
    let mut it = s.chars();
    matches!((it.next(), it.next()), (Some(l), Some(':')) if l.is_alphabetic())
}

/// A Windows absolute path (`C:\\x`, `c:/x`), which compose-go leaves as written.
pub fn is_windows_abs(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(s: &str) -> Vec<PortSpec> {
        parse_port(s).unwrap()
    }

    #[test]
    fn ports_in_every_short_form() {
        assert_eq!(port("80")[0].target, 80);
        assert_eq!(port("80")[0].published, None);
        let p = &port("8080:80")[0];
        assert_eq!((p.published.as_deref(), p.target), (Some("8080"), 80));
        let p = &port("127.0.0.1:9229:9229")[0];
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        let p = &port("127.0.0.1::80")[0];
        assert_eq!(
            (p.host_ip.as_deref(), p.published.as_deref()),
            (Some("127.0.0.1"), None)
        );
        let p = &port("[::1]:53:53/udp")[0];
        assert_eq!(
            (p.host_ip.as_deref(), p.protocol.as_str()),
            (Some("::1"), "udp")
        );
        assert_eq!(port("3000-3002").len(), 3);
        let pairs = port("9090-9091:8080-8081");
        assert_eq!(pairs[1].published.as_deref(), Some("9091"));
        assert_eq!(pairs[1].target, 8081);
        assert_eq!(
            port("8000-8010:80")[0].published.as_deref(),
            Some("8000-8010")
        );
    }

    #[test]
    fn bad_ports_are_rejected() {
        for bad in ["", "http", "80/xyz", "1:2:3:4", "99999", "90-80", "1-3:1-2"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_volumes_resolve_relative_binds() {
        let ctx = Ctx {
            base_dir: Path::new("/proj"),
            home: Some("/home/u"),
        };
        let v = parse_volume("./data:/data:ro", &ctx).unwrap();
        assert!(matches!(&v[0].1, VolPart::S(t) if t == "bind"));
        assert!(matches!(&v[1].1, VolPart::S(s) if s == "/proj/data"));
        let v = parse_volume("~/m:/data", &ctx).unwrap();
        assert!(matches!(&v[1].1, VolPart::S(s) if s == "/home/u/m"));
        let v = parse_volume("db:/var/lib/db", &ctx).unwrap();
        assert!(matches!(&v[0].1, VolPart::S(t) if t == "volume"));
        // As compose-go: a relative target loads (`up` refuses it), unknown options are
        // ignored, a drive letter belongs to its path (so `c:/data` is one target).
        let target = |v: &[(&str, VolPart)]| match v.iter().find(|(k, _)| *k == "target") {
            Some((_, VolPart::S(s))) => s.clone(),
            _ => String::new(),
        };
        assert_eq!(
            target(&parse_volume("db:relative", &ctx).unwrap()),
            "relative"
        );
        assert!(parse_volume("db:/b:bogus", &ctx).unwrap().len() == 4);
        assert_eq!(target(&parse_volume("c:/data", &ctx).unwrap()), "c:/data");
        let v = parse_volume("C:\\x:/data", &ctx).unwrap();
        assert!(matches!(&v[1].1, VolPart::S(s) if s == "C:\\x"));
        assert!(parse_volume("db:/a:/b:ro", &ctx).is_err());
        assert!(parse_volume("db::/a", &ctx).is_err());
    }

    #[test]
    fn clean_removes_dot_segments() {
        assert_eq!(clean(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
