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

/// The project as JSON, keys in the model's order (maps sorted by name).
pub fn to_json(project: &Project) -> serde_json::Value {
    serde_json::to_value(project).unwrap_or(serde_json::Value::Null)
}

/// The project as a YAML document.
pub fn to_yaml_string(project: &Project) -> String {
    let mut out = String::new();
    let doc = to_yaml(&to_json(project));
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    if emitter.dump(&doc).is_err() {
        return String::new();
    }
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_string();
    body + "\n"
}
