//! What `up` and the other commands that act on Incus refuse in a project that `config` still
//! renders (docker compose renders it too): values that would reach an Incus config key, a
//! `raw.lxc` or `raw.dnsmasq` line, an LXC key, a file inside an instance or a DNS record and
//! could change their meaning there. A compose file is often someone else's; nothing in it may
//! add a line to a line-based format or a name outside its character set.
//!
//! The rules, for every service of the project whatever the services a command selects:
//! - no control character (newline, carriage return, NUL, escape, ...) in any string, key or
//!   value, except in the few places that are multi-line by design and never become a config
//!   line: `command`, `entrypoint` and `healthcheck.test` (shell scripts; NUL and the C1/escape
//!   range are still refused there), `build` (not used), the `content` of secrets and configs
//!   (file contents) and `x-` extension keys other than `x-incus` (YAML anchors' storage);
//! - `container_name` in Docker's character set (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`);
//! - `hostname` and `domainname` host names (letters, digits, `-`, `.`);
//! - `sysctls` keys kernel parameter names (letters, digits, `_`, `.`, `/`, `-`);
//! - `environment` keys without `=` or white space, `labels` keys without white space;
//! - `extra_hosts`, `dns`, `dns_search` and network `aliases` without white space, `,` or `#`
//!   (they become lines of `/etc/hosts`, `/etc/resolv.conf` and DNS records).
//!
//! Each finding points at the file, line and column of the value (or of the nearest key the
//! value came from, e.g. the `env_file` of a variable read from one) and names the field.

use crate::error::Diagnostic;
use crate::model::Project;
use crate::yaml::{Node, Span, Value};

/// Every value of `project` that must not reach Incus, located in `tree` (the merged files).
pub fn check(project: &Project, tree: &Node) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Ok(json) = serde_json::to_value(project) else {
        return out;
    };
    let mut path = Vec::new();
    walk(&json, &mut path, tree, &mut out);
    for (name, svc) in &project.services {
        let at = |field: &str| vec!["services".to_string(), name.clone(), field.to_string()];
        if let Some(c) = &svc.container_name {
            if !docker_name(c) {
                push(
                    &mut out,
                    tree,
                    &at("container_name"),
                    false,
                    format!(
                        "container_name {c:?} is not a container name: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-' (as Docker requires)"
                    ),
                );
            }
        }
        for (field, value) in [("hostname", &svc.hostname), ("domainname", &svc.domainname)] {
            if let Some(h) = value {
                if !host_name(h) {
                    push(
                        &mut out,
                        tree,
                        &at(field),
                        false,
                        format!(
                            "{field} {h:?} is not a host name: letters, digits, '-' and '.' only, labels of at most 63 characters"
                        ),
                    );
                }
            }
        }
        for k in svc.sysctls.keys() {
            if k.is_empty()
                || k.starts_with(['.', '/'])
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'))
            {
                let mut p = at("sysctls");
                p.push(k.clone());
                push(
                    &mut out,
                    tree,
                    &p,
                    true,
                    format!(
                        "sysctl {k:?} is not a kernel parameter name (letters, digits, '_', '.', '/', '-')"
                    ),
                );
            }
        }
        for k in svc.environment.keys() {
            if k.is_empty() || k.contains('=') || k.contains(char::is_whitespace) {
                let mut p = at("environment");
                p.push(k.clone());
                push(
                    &mut out,
                    tree,
                    &p,
                    true,
                    format!("environment variable name {k:?} holds '=' or white space"),
                );
            }
        }
        for k in svc.labels.keys() {
            if k.is_empty() || k.contains(char::is_whitespace) {
                let mut p = at("labels");
                p.push(k.clone());
                push(
                    &mut out,
                    tree,
                    &p,
                    true,
                    format!("label name {k:?} is empty or holds white space"),
                );
            }
        }
        let listed = [
            ("extra_hosts", &svc.extra_hosts),
            ("dns", &svc.dns),
            ("dns_search", &svc.dns_search),
        ];
        for (field, items) in listed {
            for (i, v) in items.iter().enumerate() {
                if !line_word(v) {
                    let mut p = at(field);
                    p.push(i.to_string());
                    push(
                        &mut out,
                        tree,
                        &p,
                        false,
                        format!("{field} entry {v:?} holds white space, ',' or '#'"),
                    );
                }
            }
        }
        for (net, opts) in &svc.networks {
            let Some(o) = opts else { continue };
            for (i, a) in o.aliases.iter().enumerate() {
                if !line_word(a) {
                    let p = vec![
                        "services".to_string(),
                        name.clone(),
                        "networks".into(),
                        net.clone(),
                        "aliases".into(),
                        i.to_string(),
                    ];
                    push(
                        &mut out,
                        tree,
                        &p,
                        false,
                        format!("network alias {a:?} holds white space, ',' or '#'"),
                    );
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    out.dedup_by(|b, a| a.file == b.file && a.line == b.line && a.col == b.col && a.path == b.path);
    out
}

/// Docker's container name rule.
fn docker_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An RFC 1123 host name (a trailing dot allowed).
fn host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// One word of a line-based file (`/etc/hosts`, `resolv.conf`, a dnsmasq record).
fn line_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == '#')
}

/// Where multi-line text is expected (by path from the project root).
fn multi_line(path: &[String]) -> bool {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(
        p.as_slice(),
        ["services", _, "command" | "entrypoint", ..]
            | ["services", _, "healthcheck", "test", ..]
            | ["services", _, "build", ..]
            | ["secrets" | "configs", _, "content"]
    )
}

/// An extension key the loader only carries (not `x-incus`, which incus-compose reads). An
/// `x-` name of a service, network, volume, secret or config (`services: {x-web: ..}`) or an
/// `x-` key of user data (`labels`, `sysctls`, `environment`, ...) is not one: what is under it
/// reaches Incus (found by the planner fuzz target).
fn inert_extension(path: &[String]) -> bool {
    const DATA_MAPS: &[&str] = &[
        "environment",
        "labels",
        "sysctls",
        "extra_hosts",
        "annotations",
        "driver_opts",
        "options",
        "ulimits",
        "args",
        "storage_opt",
    ];
    path.iter().enumerate().any(|(i, s)| {
        s.starts_with("x-")
            && s.as_str() != "x-incus"
            && !(i == 1
                && matches!(
                    path[0].as_str(),
                    "services" | "networks" | "volumes" | "secrets" | "configs"
                ))
            && !(i > 0 && DATA_MAPS.contains(&path[i - 1].as_str()))
    })
}

/// A control character that is never acceptable, even in multi-line text.
fn forbidden_everywhere(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\t' | '\r')
}

fn describe(c: char) -> String {
    match c {
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        '\0' => "a NUL byte".into(),
        c => format!("control character U+{:04X}", c as u32),
    }
}

fn walk(v: &serde_json::Value, path: &mut Vec<String>, tree: &Node, out: &mut Vec<Diagnostic>) {
    if inert_extension(path) {
        return;
    }
    match v {
        serde_json::Value::String(s) => {
            let multi = multi_line(path);
            let bad = s.chars().find(|&c| {
                if multi {
                    forbidden_everywhere(c)
                } else {
                    c.is_control()
                }
            });
            if let Some(c) = bad {
                let message = if multi {
                    format!(
                        "holds {}; text here may span lines but not hold it",
                        describe(c)
                    )
                } else {
                    format!(
                        "holds {}, which could add a line to the Incus or LXC configuration this value goes into",
                        describe(c)
                    )
                };
                push(out, tree, path, false, message);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(item, path, tree, out);
                path.pop();
            }
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                path.push(k.clone());
                if let Some(c) = k.chars().find(|c| c.is_control()) {
                    push(
                        out,
                        tree,
                        path,
                        true,
                        format!("the key holds {}", describe(c)),
                    );
                }
                walk(item, path, tree, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn push(out: &mut Vec<Diagnostic>, tree: &Node, path: &[String], key: bool, message: String) {
    let span = locate(tree, path, key);
    let shown: Vec<String> = path.iter().map(|s| shown_segment(s)).collect();
    out.push(
        Diagnostic::new(span, shown.join("."), message).with_hint(
            "incus-compose refuses it before changing anything; fix the value in the file",
        ),
    );
}

/// A path segment as printed (control characters escaped, so the message stays one line).
fn shown_segment(s: &str) -> String {
    if s.chars().any(char::is_control) {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

/// The position of `path` in the tree: the value (or, with `key`, its key), else the deepest
/// ancestor found. A variable read from an `env_file` points at that `env_file`.
fn locate(tree: &Node, path: &[String], key: bool) -> Span {
    let mut node = tree;
    let mut span = tree.span.clone();
    for (i, seg) in path.iter().enumerate() {
        let next = match &node.value {
            Value::Map(m) => m.get(seg.as_str()).map(|e| {
                let last = i + 1 == path.len();
                (
                    &e.node,
                    if key && last {
                        e.key_span.clone()
                    } else {
                        e.node.span.clone()
                    },
                )
            }),
            Value::Seq(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|n| items.get(n))
                .map(|n| (n, n.span.clone())),
            _ => None,
        };
        match next {
            Some((n, s)) => {
                node = n;
                span = s;
            }
            None => {
                if i >= 2 && path[0] == "services" && path[2] == "environment" {
                    if let Some(f) = tree
                        .get("services")
                        .and_then(|s| s.get(&path[1]))
                        .and_then(|s| s.get("env_file"))
                    {
                        return f.span.clone();
                    }
                }
                break;
            }
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use crate::{LoadOptions, MemFs, load_with};

    fn findings(text: &str) -> Vec<String> {
        let o = LoadOptions {
            files: vec!["/p/compose.yaml".into()],
            working_dir: "/p".into(),
            interpolate: true,
            ..Default::default()
        };
        let fs = MemFs::default()
            .with("/p/compose.yaml", text)
            .with("/p/bad.env", "GOOD=1\nBAD=\"a\nb\"\n");
        let p = load_with(&o, &fs).unwrap_or_else(|e| panic!("{e}"));
        p.hostile.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_newline_in_another_services_container_name_is_refused_at_its_line() {
        let f = findings(
            "services:\n  web:\n    image: a\n  other:\n    image: a\n    container_name: \"x\\nconf-dir=/tmp\"\n",
        );
        assert!(
            f.iter().any(|d| d.starts_with(
                "/p/compose.yaml:6:21: services.other.container_name: holds a newline"
            )),
            "{f:#?}"
        );
    }

    #[test]
    fn multi_line_commands_pass_and_a_clean_file_has_no_finding() {
        let f = findings(
            "services:\n  web:\n    image: a\n    command: [sh, -c, \"echo a\\necho b\"]\n    environment: {A: b}\n    sysctls: {net.core.somaxconn: '1024'}\n",
        );
        assert!(f.is_empty(), "{f:#?}");
    }

    #[test]
    fn sysctl_keys_environment_from_env_files_and_aliases_are_checked() {
        let f = findings(
            "services:\n  web:\n    image: a\n    env_file: bad.env\n    sysctls:\n      \"net.x = 1 \": '1'\n    networks:\n      default: {aliases: [\"a b\"]}\n",
        );
        let joined = f.join("\n");
        assert!(
            joined.contains("/p/compose.yaml:4:15: services.web.environment.BAD: holds a newline"),
            "{joined}"
        );
        assert!(
            joined.contains("/p/compose.yaml:6:7: services.web.sysctls.net.x = 1 : sysctl"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "/p/compose.yaml:8:27: services.web.networks.default.aliases.0: network alias"
            ),
            "{joined}"
        );
    }
}
