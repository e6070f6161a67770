//! Merging canonical trees, with compose's rules (compose-go `override/merge.go`): mappings
//! merge key by key; `command`, `entrypoint`, `healthcheck.test` and `profiles` are replaced;
//! ports, volumes, secrets and configs are de-duplicated by their key (target); environment and
//! labels merge by variable name (they are mappings after canonicalisation); other lists are
//! appended without duplicates. `!reset` removes an inherited value, `!override` replaces it.

use crate::yaml::{Entry, MergeTag, Node, Value};

enum ListRule {
    Replace,
    ByKey(fn(&Node) -> String),
    Append,
}

fn port_key(n: &Node) -> String {
    let f = |k: &str| n.get(k).and_then(Node::scalar_text).unwrap_or_default();
    match n.as_map() {
        Some(_) => format!(
            "{}|{}|{}|{}",
            f("host_ip"),
            f("published"),
            f("target"),
            f("protocol")
        ),
        None => n.scalar_text().unwrap_or_default(),
    }
}

fn volume_key(n: &Node) -> String {
    n.get("target")
        .and_then(Node::scalar_text)
        .or_else(|| n.scalar_text())
        .unwrap_or_default()
}

fn secret_key(n: &Node) -> String {
    match n.get("target").and_then(Node::scalar_text) {
        Some(t) => t,
        None => format!(
            "source:{}",
            n.get("source")
                .and_then(Node::scalar_text)
                .unwrap_or_default()
        ),
    }
}

/// The rule for a list at `path` inside a service (`["ports"]`, `["healthcheck", "test"]`).
fn list_rule(path: &[&str]) -> ListRule {
    match path {
        ["command"] | ["entrypoint"] | ["profiles"] | ["healthcheck", "test"] => ListRule::Replace,
        ["build", "args"] => ListRule::Replace,
        ["ports"] => ListRule::ByKey(port_key),
        ["volumes"] => ListRule::ByKey(volume_key),
        ["secrets"] | ["configs"] => ListRule::ByKey(secret_key),
        ["env_file"] => ListRule::ByKey(|n| {
            n.get("path")
                .and_then(Node::scalar_text)
                .unwrap_or_default()
        }),
        _ => ListRule::Append,
    }
}

/// Merge `over` onto `base` for a service (`path` relative to the service). Returns None
/// when the result is reset away.
pub fn merge_service(base: Node, over: Node) -> Option<Node> {
    merge_at(Some(base), over, &mut Vec::new(), true)
}

/// Merge a top-level file tree onto another.
pub fn merge_files(base: Node, over: Node) -> Node {
    let (Value::Map(mut bm), Value::Map(om)) = (base.value.clone(), over.value.clone()) else {
        return match over.value {
            Value::Null => base,
            _ => over,
        };
    };
    for (key, oe) in om {
        let is_section = matches!(
            key.as_str(),
            "services" | "networks" | "volumes" | "secrets" | "configs" | "models"
        );
        match bm.shift_remove(&key) {
            Some(be) if is_section && oe.node.tag.is_none() => {
                let merged = merge_section(be.node, oe.node, key == "services");
                bm.insert(
                    key,
                    Entry {
                        key_span: be.key_span,
                        node: merged,
                    },
                );
            }
            Some(be) => {
                if let Some(node) = merge_at(Some(be.node), oe.node, &mut Vec::new(), false) {
                    bm.insert(
                        key,
                        Entry {
                            key_span: be.key_span,
                            node,
                        },
                    );
                }
            }
            None => {
                if let Some(node) = merge_at(None, oe.node, &mut Vec::new(), false) {
                    bm.insert(
                        key,
                        Entry {
                            key_span: oe.key_span,
                            node,
                        },
                    );
                }
            }
        }
    }
    Node {
        value: Value::Map(bm),
        span: base.span,
        tag: None,
    }
}

fn merge_section(base: Node, over: Node, services: bool) -> Node {
    let span = base.span.clone();
    let mut bm = match base.value {
        Value::Map(m) => m,
        _ => Default::default(),
    };
    let Value::Map(om) = over.value else {
        return Node::new(Value::Map(bm), span);
    };
    for (name, oe) in om {
        match bm.shift_remove(&name) {
            Some(be) => {
                if let Some(node) = merge_at(Some(be.node), oe.node, &mut Vec::new(), services) {
                    bm.insert(
                        name,
                        Entry {
                            key_span: be.key_span,
                            node,
                        },
                    );
                }
            }
            None => {
                if let Some(node) = merge_at(None, oe.node, &mut Vec::new(), services) {
                    bm.insert(
                        name,
                        Entry {
                            key_span: oe.key_span,
                            node,
                        },
                    );
                }
            }
        }
    }
    Node::new(Value::Map(bm), span)
}

fn merge_at(
    base: Option<Node>,
    mut over: Node,
    path: &mut Vec<String>,
    service: bool,
) -> Option<Node> {
    match over.tag.take() {
        Some(MergeTag::Reset) => return None,
        Some(MergeTag::Override) => return Some(strip(over)),
        None => {}
    }
    let Some(base) = base else {
        return Some(strip(over));
    };
    match (base.value, over.value) {
        (Value::Map(mut bm), Value::Map(om)) => {
            for (k, oe) in om {
                path.push(k.clone());
                let prev = bm.shift_remove(&k);
                let key_span = prev
                    .as_ref()
                    .map(|p| p.key_span.clone())
                    .unwrap_or(oe.key_span.clone());
                if let Some(node) = merge_at(prev.map(|p| p.node), oe.node, path, service) {
                    bm.insert(k, Entry { key_span, node });
                }
                path.pop();
            }
            Some(Node {
                value: Value::Map(bm),
                span: base.span,
                tag: None,
            })
        }
        (Value::Seq(bs), Value::Seq(os)) => {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let rule = if service {
                list_rule(&p)
            } else {
                ListRule::Append
            };
            let value = match rule {
                ListRule::Replace => Value::Seq(os.into_iter().map(strip).collect()),
                ListRule::ByKey(key) => {
                    let mut out: Vec<Node> = bs;
                    for o in os {
                        let o = strip(o);
                        let k = key(&o);
                        match out.iter().position(|b| key(b) == k) {
                            Some(i) => out[i] = o,
                            None => out.push(o),
                        }
                    }
                    Value::Seq(out)
                }
                ListRule::Append => {
                    let mut out: Vec<Node> = bs;
                    for o in os {
                        let o = strip(o);
                        let dup = o.scalar_text().is_some()
                            && out
                                .iter()
                                .any(|b| b.scalar_text().is_some() && b.value == o.value);
                        if !dup {
                            out.push(o);
                        }
                    }
                    Value::Seq(out)
                }
            };
            Some(Node {
                value,
                span: over.span,
                tag: None,
            })
        }
        (_, ov) => Some(strip(Node {
            value: ov,
            span: over.span,
            tag: None,
        })),
    }
}

/// Drop merge tags (and `!reset` entries) inside a value that merges with nothing.
pub fn strip(mut node: Node) -> Node {
    node.tag = None;
    match node.value {
        Value::Map(m) => {
            let mut out = crate::yaml::Mapping::new();
            for (k, e) in m {
                if e.node.tag == Some(MergeTag::Reset) {
                    continue;
                }
                out.insert(
                    k,
                    Entry {
                        key_span: e.key_span,
                        node: strip(e.node),
                    },
                );
            }
            node.value = Value::Map(out);
        }
        Value::Seq(items) => {
            node.value = Value::Seq(
                items
                    .into_iter()
                    .filter(|n| n.tag != Some(MergeTag::Reset))
                    .map(strip)
                    .collect(),
            );
        }
        _ => {}
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Ctx, canonicalize_file};
    use crate::error::Errors;
    use std::path::Path;
    use std::sync::Arc;

    fn canon(src: &str, name: &str) -> Node {
        let mut n = crate::yaml::parse(src, &Arc::from(name)).unwrap();
        let mut e = Errors::default();
        canonicalize_file(
            &mut n,
            &Ctx {
                base_dir: Path::new("/p"),
                home: None,
            },
            &mut e,
        );
        assert!(e.is_empty());
        n
    }

    fn web(n: &Node) -> &Node {
        n.get("services").unwrap().get("web").unwrap()
    }

    #[test]
    fn command_replaces_and_mappings_merge() {
        let a = canon(
            "services:\n  web:\n    image: a\n    command: [x, y]\n    environment: [A=1, B=2]\n",
            "a",
        );
        let b = canon(
            "services:\n  web:\n    command: [z]\n    environment: {B: 3, C: 4}\n",
            "b",
        );
        let m = merge_files(a, b);
        let w = web(&m);
        assert_eq!(w.get("command").unwrap().as_seq().unwrap().len(), 1);
        let env = w.get("environment").unwrap();
        assert_eq!(env.get("A").unwrap().as_str(), Some("1"));
        assert_eq!(env.get("B").unwrap().value, Value::Int(3));
        assert_eq!(env.get("C").unwrap().value, Value::Int(4));
        assert_eq!(w.get("image").unwrap().as_str(), Some("a"));
    }

    #[test]
    fn ports_and_volumes_deduplicate_by_key() {
        let a = canon(
            "services:\n  web:\n    ports: ['80:80']\n    volumes: ['va:/data', 'vb:/logs']\n",
            "a",
        );
        let b = canon(
            "services:\n  web:\n    ports: ['80:80', '443:443']\n    volumes: ['vc:/data']\n",
            "b",
        );
        let m = merge_files(a, b);
        let w = web(&m);
        assert_eq!(w.get("ports").unwrap().as_seq().unwrap().len(), 2);
        let vols = w.get("volumes").unwrap().as_seq().unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(vols[0].get("source").unwrap().as_str(), Some("vc"));
    }

    #[test]
    fn reset_removes_and_override_replaces() {
        let a = canon(
            "services:\n  web:\n    ports: ['80:80']\n    environment: {A: 1, B: 2}\n",
            "a",
        );
        let b = canon(
            "services:\n  web:\n    ports: !reset []\n    environment: !override {C: 3}\n",
            "b",
        );
        let m = merge_files(a, b);
        let w = web(&m);
        assert!(w.get("ports").is_none());
        let env = w.get("environment").unwrap().as_map().unwrap();
        assert_eq!(env.keys().collect::<Vec<_>>(), vec!["C"]);
    }

    #[test]
    fn other_lists_append_without_duplicates() {
        let a = canon("services:\n  web:\n    cap_add: [A, B]\n", "a");
        let b = canon("services:\n  web:\n    cap_add: [B, C]\n", "b");
        let m = merge_files(a, b);
        assert_eq!(web(&m).get("cap_add").unwrap().as_seq().unwrap().len(), 3);
    }
}
