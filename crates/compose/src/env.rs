//! `.env` files, in compose's dotenv format: `KEY=VALUE` lines, `export ` prefixes, `#` comments,
//! single quotes (literal), double quotes (escapes and interpolation), unquoted values
//! (trimmed, inline ` #` comments, interpolation of earlier variables).

use std::collections::BTreeMap;

use crate::interpolate::substitute;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DotenvError {
    pub line: u32,
    pub message: String,
}

/// Parse dotenv text. `outer` is consulted for `${VAR}` references not defined in the file
/// itself (the process environment).
pub fn parse_dotenv(
    text: &str,
    outer: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, DotenvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((idx, raw)) = lines.next() {
        let line_no = u32::try_from(idx + 1).unwrap_or(u32::MAX);
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            let key = line.trim();
            if key.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
                // `KEY` alone: take it from the environment, if set.
                if let Some(v) = outer(key) {
                    vars.push((key.to_string(), v));
                }
                continue;
            }
            return Err(DotenvError {
                line: line_no,
                message: format!("expected KEY=VALUE, found {key:?}"),
            });
        };
        let key = key.trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(DotenvError {
                line: line_no,
                message: format!("invalid variable name {key:?}"),
            });
        }
        let value = value.trim_start();
        let lookup = |name: &str| -> Option<String> {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| outer(name))
        };
        let parsed = if let Some(rest) = value.strip_prefix('\'') {
            let mut body = rest.to_string();
            while !body.contains('\'') {
                match lines.next() {
                    Some((_, more)) => {
                        body.push('\n');
                        body.push_str(more);
                    }
                    None => {
                        return Err(DotenvError {
                            line: line_no,
                            message: "unterminated single quote".into(),
                        });
                    }
                }
            }
            body.split('\'').next().unwrap_or_default().to_string()
        } else if let Some(rest) = value.strip_prefix('"') {
            let mut body = rest.to_string();
            let end = loop {
                if let Some(end) = closing_double_quote(&body) {
                    break end;
                }
                match lines.next() {
                    Some((_, more)) => {
                        body.push('\n');
                        body.push_str(more);
                    }
                    None => {
                        return Err(DotenvError {
                            line: line_no,
                            message: "unterminated double quote".into(),
                        });
                    }
                }
            };
            let inner = unescape(&body[..end]);
            let mut unset = Vec::new();
            substitute(&inner, &lookup, &mut unset).unwrap_or(inner)
        } else {
            let v = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            let v = v.trim();
            let mut unset = Vec::new();
            substitute(v, &lookup, &mut unset).unwrap_or_else(|_| v.to_string())
        };
        vars.push((key, parsed));
    }
    Ok(vars)
}

fn closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The variables interpolation sees: the process environment over the `.env` files.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub process: BTreeMap<String, String>,
    pub dotenv: BTreeMap<String, String>,
}

impl Environment {
    pub fn get(&self, key: &str) -> Option<String> {
        self.process
            .get(key)
            .or_else(|| self.dotenv.get(key))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Vec<(String, String)> {
        let outer = |k: &str| (k == "HOME").then(|| "/root".to_string());
        parse_dotenv(t, &outer).unwrap()
    }

    #[test]
    fn dotenv_values_quotes_comments_and_interpolation() {
        let v = parse(
            "# comment\nA=1\nexport B = two \nC='lit ${A}'\nD=\"x\\ny ${A}\"\nE=val # note\nF=${HOME}/x\nG=\n",
        );
        let get = |k: &str| v.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two"));
        assert_eq!(get("C"), Some("lit ${A}"));
        assert_eq!(get("D"), Some("x\ny 1"));
        assert_eq!(get("E"), Some("val"));
        assert_eq!(get("F"), Some("/root/x"));
        assert_eq!(get("G"), Some(""));
    }

    #[test]
    fn dotenv_errors_name_the_line() {
        let outer = |_: &str| None;
        let e = parse_dotenv("A=1\nnot a var\n", &outer).unwrap_err();
        assert_eq!(e.line, 2);
    }
}
