//! Rendering the canonical project as YAML or JSON (`incus-compose config`).

use yaml_rust2::YamlEmitter;
use yaml_rust2::yaml::{Hash, Yaml};

use crate::model::Project;

fn to_yaml(v: &serde_json::Value) -> Yaml {
    match v {
        serde_json::Value::Null => Yaml::Null,
        serde_json::Value::Bool(b) => Yaml::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => match n.as_u64() {
                Some(u) => Yaml::Real(u.to_string()),
                None => Yaml::Real(n.to_string()),
            },
        },
        serde_json::Value::String(s) => Yaml::String(s.clone()),
        serde_json::Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        serde_json::Value::Object(o) => {
            let mut h = Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

/// The project as JSON, keys in the model's order (maps sorted by name), values as loaded.
pub fn to_json(project: &Project) -> serde_json::Value {
    serde_json::to_value(project).unwrap_or(serde_json::Value::Null)
}

/// Write every `$` in string values as `$$`, so that the rendered project loads again with
/// the same values (keys are never interpolated, so they are left alone).
pub fn escape_dollars(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('$') => Value::String(s.replace('$', "$$")),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_dollars).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, escape_dollars(v))).collect())
        }
        other => other,
    }
}

/// The project as `config` prints it in JSON: `$` escaped as `$$` unless `raw` (for
/// `--no-interpolate`, where values still hold their `${VAR}` templates).
pub fn to_json_output(project: &Project, raw: bool) -> serde_json::Value {
    if raw {
        to_json(project)
    } else {
        escape_dollars(to_json(project))
    }
}

/// The project as a YAML document, `$` escaped as `$$` (loads again to the same project).
pub fn to_yaml_string(project: &Project) -> String {
    to_yaml_output(project, false)
}

/// The project as `config` prints it in YAML; `raw` as for [`to_json_output`].
pub fn to_yaml_output(project: &Project, raw: bool) -> String {
    let mut out = String::new();
    let doc = to_yaml(&to_json_output(project, raw));
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    if emitter.dump(&doc).is_err() {
        return String::new();
    }
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_string();
    body + "\n"
}
