//! Variable interpolation, as compose-go's `template` package does it: `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`,
//! `${VAR+replacement}`, nested templates inside defaults, and `$$` for a literal `$`.
//! Only values are interpolated, never keys.

use crate::error::{Diagnostic, Errors};
use crate::yaml::{Node, Value};

/// Why a template could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// An unterminated `${`, or a bad `${...}`.
    Invalid(String),
    /// `${VAR:?msg}` / `${VAR?msg}` with VAR missing.
    Required { var: String, message: String },
}

/// Substitute `template`. `lookup` returns a variable's value; `unset` collects the names of
/// variables that were used without a value and without a default.
pub fn substitute(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, TemplateError> {
    substitute_at(template, lookup, unset, 0)
}

/// Nested templates deeper than this are refused (they would only exhaust the stack).
const MAX_NESTING: usize = 32;

fn substitute_at(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, TemplateError> {
    if depth > MAX_NESTING {
        return Err(TemplateError::Invalid(template.to_string()));
    }
    let mut out = String::with_capacity(template.len());
    let chars: Vec<char> = template.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                let start = i + 2;
                let mut braces = 1usize;
                let mut j = start;
                while j < chars.len() {
                    match chars[j] {
                        '$' if chars.get(j + 1) == Some(&'$') => j += 1,
                        '$' if chars.get(j + 1) == Some(&'{') => {
                            braces += 1;
                            j += 1;
                        }
                        '}' => {
                            braces -= 1;
                            if braces == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(TemplateError::Invalid(template.to_string()));
                }
                let inner: String = chars[start..j].iter().collect();
                out.push_str(&braced(&inner, template, lookup, unset, depth)?);
                i = j + 1;
            }
            Some(&n) if n == '_' || n.is_ascii_alphabetic() => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j] == '_' || chars[j].is_ascii_alphanumeric()) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match lookup(&name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name),
                }
                i = j;
            }
            // compose-go's pattern does not match a `$` followed by anything else (`$2`, `$-`,
            // a final `$`): the text stays as written.
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

fn braced(
    inner: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    depth: usize,
) -> Result<String, TemplateError> {
    let name_len = inner
        .char_indices()
        .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map(|(i, _)| i)
        .unwrap_or(inner.len());
    let name = &inner[..name_len];
    if name.is_empty() {
        return Err(TemplateError::Invalid(whole.to_string()));
    }
    let rest = &inner[name_len..];
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (op, arg) = if rest.is_empty() {
        ("", "")
    } else if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = rest.strip_prefix('+') {
        ("+", a)
    } else {
        return Err(TemplateError::Invalid(whole.to_string()));
    };
    let nested = |unset: &mut Vec<String>| substitute_at(arg, lookup, unset, depth + 1);
    Ok(match op {
        "" => match value {
            Some(v) => v,
            None => {
                unset.push(name.to_string());
                String::new()
            }
        },
        ":-" => {
            if non_empty {
                value.unwrap_or_default()
            } else {
                nested(unset)?
            }
        }
        "-" => {
            if set {
                value.unwrap_or_default()
            } else {
                nested(unset)?
            }
        }
        ":?" | "?" => {
            let ok = if op == ":?" { non_empty } else { set };
            if ok {
                value.unwrap_or_default()
            } else {
                return Err(TemplateError::Required {
                    var: name.to_string(),
                    message: nested(unset)?,
                });
            }
        }
        ":+" => {
            if non_empty {
                nested(unset)?
            } else {
                String::new()
            }
        }
        _ => {
            // "+"
            if set { nested(unset)? } else { String::new() }
        }
    })
}

/// Interpolate every string value of the tree in place (keys are left alone). Problems are
/// collected into `errors`; unset variables into `warnings`.
pub fn interpolate_tree(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Errors,
    warnings: &mut Vec<Diagnostic>,
) {
    let mut path = Vec::new();
    walk(node, lookup, errors, warnings, &mut path);
}

fn walk(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Errors,
    warnings: &mut Vec<Diagnostic>,
    path: &mut Vec<String>,
) {
    match &mut node.value {
        Value::Str(s) => {
            if !s.contains('$') {
                return;
            }
            let mut unset = Vec::new();
            match substitute(s, lookup, &mut unset) {
                Ok(v) => *s = v,
                Err(TemplateError::Invalid(t)) => errors.push(
                    Diagnostic::new(
                        node.span.clone(),
                        path.join("."),
                        format!("invalid interpolation format in {t:?}"),
                    )
                    .with_hint("write $$ for a literal $"),
                ),
                Err(TemplateError::Required { var, message }) => {
                    let msg = if message.is_empty() {
                        format!("required variable {var} is missing a value")
                    } else {
                        format!("required variable {var} is missing a value: {message}")
                    };
                    errors.push(
                        Diagnostic::new(node.span.clone(), path.join("."), msg)
                            .with_hint(format!("set {var} in the environment or in the .env file")),
                    );
                }
            }
            for var in unset {
                warnings.push(Diagnostic::new(
                    node.span.clone(),
                    path.join("."),
                    format!("the {var} variable is not set; defaulting to a blank string"),
                ));
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                walk(item, lookup, errors, warnings, path);
                path.pop();
            }
        }
        Value::Map(m) => {
            for (k, e) in m.iter_mut() {
                path.push(k.clone());
                walk(&mut e.node, lookup, errors, warnings, path);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(t: &str) -> Result<(String, Vec<String>), TemplateError> {
        let env: BTreeMap<&str, &str> = [("SET", "value"), ("EMPTY", ""), ("NUM", "3")]
            .into_iter()
            .collect();
        let lookup = |k: &str| env.get(k).map(|v| v.to_string());
        let mut unset = Vec::new();
        substitute(t, &lookup, &mut unset).map(|s| (s, unset))
    }

    fn ok(t: &str) -> String {
        run(t).unwrap().0
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(ok("a $SET b ${SET}c"), "a value b valuec");
        assert_eq!(ok("${NUM}x"), "3x");
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(ok("${EMPTY:-d}"), "d");
        assert_eq!(ok("${EMPTY-d}"), "");
        assert_eq!(ok("${UNSET-d}"), "d");
        assert_eq!(ok("${UNSET:-d}"), "d");
        assert_eq!(ok("${SET:-d}"), "value");
    }

    #[test]
    fn replacements_apply_only_when_set() {
        assert_eq!(ok("${SET:+r}"), "r");
        assert_eq!(ok("${EMPTY:+r}"), "");
        assert_eq!(ok("${EMPTY+r}"), "r");
        assert_eq!(ok("${UNSET+r}"), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${UNSET:?please set it}"),
            Err(TemplateError::Required {
                var: "UNSET".into(),
                message: "please set it".into()
            })
        );
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(ok("${EMPTY?x}"), "");
    }

    #[test]
    fn nested_defaults_and_escapes() {
        assert_eq!(ok("${UNSET:-${ALSO_UNSET:-${SET}}}"), "value");
        assert_eq!(ok("$$SET $${SET}"), "$SET ${SET}");
        assert_eq!(ok("${UNSET:-a$$b}"), "a$b");
    }

    #[test]
    fn unset_variables_become_empty_and_are_reported() {
        let (s, unset) = run("x${UNSET}y$OTHER").unwrap();
        assert_eq!(s, "xy");
        assert_eq!(unset, vec!["UNSET".to_string(), "OTHER".to_string()]);
    }

    proptest::proptest! {
        /// Text with `$` in 79% of the cases (runs of them, next to braces, names and the
        /// operators of templates: `$$`, `${A}`, `$A`, `${A:-x}` once escaped), and any other
        /// printable characters (`\\PC*` alone had a `$` in 21%).
        #[test]
        fn escaped_text_comes_back_unchanged(text in "([$]{1,3}|[{}]|[A-Za-z_][A-Za-z0-9_]*|[:?+-]|\\PC){0,24}") {
            let escaped = text.replace('$', "$$");
            let (out, unset) = run(&escaped).unwrap();
            proptest::prop_assert_eq!(out, text);
            proptest::prop_assert!(unset.is_empty());
        }
    }

    #[test]
    fn absurdly_nested_templates_are_refused() {
        let t = "${A:-".repeat(100) + &"}".repeat(100);
        assert!(matches!(run(&t), Err(TemplateError::Invalid(_))));
    }

    #[test]
    fn invalid_templates_are_errors() {
        // A `$` that starts no template stays as written, as in compose-go.
        assert_eq!(
            run("cost $5 $-x end $"),
            Ok(("cost $5 $-x end $".to_string(), vec![]))
        );
        assert!(matches!(
            run("${unterminated"),
            Err(TemplateError::Invalid(_))
        ));
        assert!(matches!(run("${}"), Err(TemplateError::Invalid(_))));
        assert!(matches!(run("${A B}"), Err(TemplateError::Invalid(_))));
    }
}
