//! A YAML emitter that writes a JSON value byte for byte as go-yaml v3 (`yaml.Encoder` with
//! `SetIndent(2)`, what docker compose v2 uses) writes the same Go values: block style,
//! sequences indented under their key, `null`, `{}` / `[]` for empty collections, and
//! go-yaml's choice of scalar style (plain when the text reads back as the same string,
//! double quotes when it would read as another type, single quotes when plain is not
//! allowed, `|` blocks for multi-line text). Keys are written in the order given; use
//! [`key_order`] for Go maps.

use std::cmp::Ordering;

use serde_json::Value;

const INDENT: usize = 2;

/// The document, ending with a newline.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, a, 0),
        other => {
            scalar(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A block mapping whose keys sit at column `indent`; the first key continues the current line
/// when `out` does not end with a newline (a sequence item `- `).
fn mapping(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || out.is_empty() || out.ends_with('\n') {
            pad(out, indent);
        }
        key(out, k);
        out.push(':');
        value_after_key(out, v, indent);
    }
}

fn value_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, m, indent + INDENT);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, a, indent + INDENT);
        }
        other => {
            out.push(' ');
            scalar(out, other, indent + INDENT);
            out.push('\n');
        }
    }
}

/// A block sequence whose `- ` sit at column `indent`.
fn sequence(out: &mut String, a: &[Value], indent: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 || out.is_empty() || out.ends_with('\n') {
            pad(out, indent);
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => mapping(out, m, indent + INDENT),
            Value::Array(inner) if !inner.is_empty() => sequence(out, inner, indent + INDENT),
            other => {
                scalar(out, other, indent + INDENT);
                out.push('\n');
            }
        }
    }
}

fn key(out: &mut String, k: &str) {
    string(out, k, 0, true);
}

/// A scalar (or an empty collection in flow style); `indent` is the column of block scalar
/// content.
fn scalar(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&go_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => string(out, s, indent, false),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` as go-yaml writes floats.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Shortest form: %e when the exponent is < -4 or >= 6 (Go's eprec for shortest).
    if (-4..6).contains(&exp) {
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

#[derive(Default)]
struct Analysis {
    empty: bool,
    block_plain: bool,
    single_quoted: bool,
    block: bool,
}

fn is_printable(c: char) -> bool {
    // go-yaml v3's is_printable: U+0085 is not (libyaml's C version says it is).
    c == '\n'
        || (' '..='~').contains(&c)
        || ('\u{A0}'..='\u{D7FF}').contains(&c)
        || (('\u{E000}'..='\u{FFFD}').contains(&c) && c != '\u{FEFF}')
        || c >= '\u{10000}'
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// libyaml's `yaml_emitter_analyze_scalar`, as go-yaml v3 has it (block context only: the
/// emitter writes no flow collections but `{}` and `[]`).
fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            empty: true,
            block_plain: true,
            single_quoted: true,
            block: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = false;
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    if s.starts_with("---") || s.starts_with("...") {
        let next = chars.get(3).copied();
        if next.is_none_or(|c| is_blank(c) || is_break(c)) {
            block_indicators = true;
        }
    }
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1).copied();
        let followed_by_whitespace = next.is_none_or(|n| is_blank(n) || is_break(n));
        let indicator = if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => true,
                '?' | ':' | '-' => followed_by_whitespace,
                _ => false,
            }
        } else {
            (c == ':' && followed_by_whitespace) || (c == '#' && preceded_by_whitespace)
        };
        block_indicators |= indicator;
        if !is_printable(c) {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i + 1 == chars.len() {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            if i == 0 {
                leading_break = true;
            }
            if i + 1 == chars.len() {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank(c) || is_break(c);
    }
    let mut a = Analysis {
        empty: false,
        block_plain: true,
        single_quoted: true,
        block: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain = false;
    }
    if trailing_space {
        a.block = false;
    }
    if break_space {
        a.block_plain = false;
        a.single_quoted = false;
    }
    if space_break || special {
        a.block_plain = false;
        a.single_quoted = false;
        a.block = false;
    }
    if line_breaks {
        a.block_plain = false;
    }
    if block_indicators {
        a.block_plain = false;
    }
    a
}

/// Whether go-yaml v3 would read the plain text back as something other than this string
/// (null, bool, int, float, timestamp), or as a YAML 1.1 bool / base-60 float it quotes for
/// old parsers. (`<<` is written plain, as go-yaml's encoder does.)
fn resolves_to_non_string(s: &str) -> bool {
    if matches!(
        s,
        "" | "~"
            | "null"
            | "Null"
            | "NULL"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | ".nan"
            | ".NaN"
            | ".NAN"
            | ".inf"
            | ".Inf"
            | ".INF"
            | "+.inf"
            | "+.Inf"
            | "+.INF"
            | "-.inf"
            | "-.Inf"
            | "-.INF"
    ) {
        return true;
    }
    // isOldBool
    if matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "on"
            | "On"
            | "ON"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "off"
            | "Off"
            | "OFF"
    ) {
        return true;
    }
    let first = s.chars().next().unwrap_or(' ');
    if first == '.' {
        return s.parse::<f64>().is_ok() && yaml_float(s);
    }
    if !(first.is_ascii_digit() || first == '+' || first == '-') {
        return false;
    }
    if is_base60_float(s) || is_timestamp(s) {
        return true;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    go_parse_int(&plain) || yaml_float(&plain)
}

/// Go's `strconv.ParseInt(s, 0, 64)` / `ParseUint` succeeding (underscores already removed).
fn go_parse_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (r, 16)
        } else if let Some(r) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (r, 2)
        } else if let Some(r) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (r, 8)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && u64::from_str_radix(digits, radix).is_ok()
}

/// go-yaml's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// go-yaml's `isBase60Float`: `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60_float(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (main, frac) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if frac.is_some_and(|f| !f.chars().all(|c| c.is_ascii_digit() || c == '_')) {
        return false;
    }
    let mut parts = main.split(':');
    let Some(head) = parts.next() else {
        return false;
    };
    if !head.starts_with(|c: char| c.is_ascii_digit())
        || !head.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return false;
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        let ok = match p.as_bytes() {
            [d] => d.is_ascii_digit(),
            [a, d] => (b'0'..=b'5').contains(a) && d.is_ascii_digit(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    n > 0
}

/// go-yaml's timestamp formats: `2006-1-2`, optionally followed by `T`/`t`/space and a time.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let mut i = 5;
    let num = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < 2 {
            *i += 1;
        }
        *i - start
    };
    if num(&mut i) == 0 || i >= b.len() || b[i] != b'-' {
        return false;
    }
    i += 1;
    if num(&mut i) == 0 {
        return false;
    }
    if i == b.len() {
        return true;
    }
    if !matches!(b[i], b'T' | b't' | b' ') {
        return false;
    }
    i += 1;
    // hh:mm:ss[.frac][Z|±hh:mm]
    for part in 0..3 {
        if num(&mut i) == 0 {
            return false;
        }
        if part < 2 {
            if i >= b.len() || b[i] != b':' {
                return false;
            }
            i += 1;
        }
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    let rest = &s[i..];
    rest.is_empty()
        || rest == "Z"
        || (rest.len() == 6
            && rest.starts_with(['+', '-'])
            && rest.as_bytes()[3] == b':'
            && rest[1..3].bytes().all(|c| c.is_ascii_digit())
            && rest[4..].bytes().all(|c| c.is_ascii_digit()))
}

fn string(out: &mut String, s: &str, indent: usize, simple_key: bool) {
    let a = analyze(s);
    // go-yaml's encoder: literal for multi-line text, plain when it reads back as this string,
    // else double quotes; then libyaml falls back when the style is not allowed.
    enum Style {
        Plain,
        Single,
        Double,
        Literal,
    }
    let mut style = if s.contains('\n') {
        Style::Literal
    } else if !resolves_to_non_string(s) {
        Style::Plain
    } else {
        Style::Double
    };
    if let Style::Plain = style {
        if !a.block_plain || (a.empty && simple_key) {
            style = Style::Single;
        }
    }
    if let Style::Single = style {
        if !a.single_quoted {
            style = Style::Double;
        }
    }
    if let Style::Literal = style {
        if !a.block || simple_key {
            style = Style::Double;
        }
    }
    match style {
        Style::Plain => out.push_str(s),
        Style::Single => {
            out.push('\'');
            out.push_str(&s.replace('\'', "''"));
            out.push('\'');
        }
        Style::Double => double_quoted(out, s),
        Style::Literal => literal(out, s, indent),
    }
}

fn double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\0' => out.push_str("\\0"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\x1b' => out.push_str("\\e"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{85}' => out.push_str("\\N"),
            '\u{A0}' => out.push_str("\\_"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            '\u{FEFF}' => out.push_str("\\uFEFF"),
            c if !is_printable(c) => {
                let n = c as u32;
                if n <= 0xFF {
                    out.push_str(&format!("\\x{n:02X}"));
                } else if n <= 0xFFFF {
                    out.push_str(&format!("\\u{n:04X}"));
                } else {
                    out.push_str(&format!("\\U{n:08X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `|` block: an indentation hint when the text starts with a space or a break, `-` without a
/// final newline, `+` with more than one; lines at `indent`, empty lines left empty. (go-yaml
/// v3 lets a leading line break end the `|` line, which loses it when read back; we write it
/// as an empty first line, which keeps it.)
fn literal(out: &mut String, s: &str, indent: usize) {
    out.push('|');
    if s.starts_with([' ', '\n']) {
        out.push_str(&INDENT.to_string());
    }
    let chomp = if !s.ends_with('\n') {
        "-"
    } else if s.len() == 1 || s[..s.len() - 1].ends_with('\n') {
        "+"
    } else {
        ""
    };
    out.push_str(chomp);
    out.push('\n');
    let mut breaks = true;
    for c in s.chars() {
        if c == '\n' {
            out.push('\n');
            breaks = true;
        } else {
            if breaks {
                pad(out, indent);
            }
            out.push(c);
            breaks = false;
        }
    }
    // The caller ends the line; a text that ended with a break already did.
    if s.ends_with('\n') {
        out.pop();
    }
}

/// The order in which go-yaml v3 writes the keys of a Go map (`keyList.Less`): runs of digits
/// compare as numbers, and a letter sorts after a non-letter.
pub fn key_order(a: &str, b: &str) -> Ordering {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut digits = false;
    let n = ar.len().min(br.len());
    for i in 0..n {
        if ar[i] == br[i] {
            digits = ar[i].is_numeric();
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            let a_less = if digits { al } else { bl };
            return if a_less {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn): (i64, i64) = (0, 0);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .wrapping_mul(10)
                .wrapping_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .wrapping_mul(10)
                .wrapping_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_take_go_yamls_styles() {
        let doc = json!({
            "plain": "--flag=x",
            "number": "3306",
            "bool": "yes",
            "empty": "",
            "template": "{{.Node.ID}}",
            "colon": "a: b",
            "nothing": null,
            "multi": "a\nb\n",
            "tab": "a\tb",
            "quote": "it's",
            "date": "2024-01-02",
            "float": "1.5",
            "octal": "0644",
            "hex": "0x1F",
            "ratio": "1:30",
            "list": [],
            "map": {},
        });
        assert_eq!(
            to_string(&doc),
            "plain: --flag=x\nnumber: \"3306\"\nbool: \"yes\"\nempty: \"\"\ntemplate: '{{.Node.ID}}'\n\
             colon: 'a: b'\nnothing: null\nmulti: |\n  a\n  b\ntab: \"a\\tb\"\nquote: it's\n\
             date: \"2024-01-02\"\nfloat: \"1.5\"\noctal: \"0644\"\nhex: \"0x1F\"\nratio: \"1:30\"\n\
             list: []\nmap: {}\n"
        );
    }

    #[test]
    fn sequences_are_indented_under_their_key() {
        let doc =
            json!({"s": {"ports": [{"target": 80, "published": "8080"}], "command": ["a", "b"]}});
        assert_eq!(
            to_string(&doc),
            "s:\n  ports:\n    - target: 80\n      published: \"8080\"\n  command:\n    - a\n    - b\n"
        );
    }

    #[test]
    fn go_map_keys_sort_naturally() {
        let mut keys = vec!["B", "A_B", "AB", "v10", "v9", "a"];
        keys.sort_by(|a, b| key_order(a, b));
        assert_eq!(keys, vec!["A_B", "AB", "B", "a", "v9", "v10"]);
    }

    proptest::proptest! {
        /// Whatever string go-yaml's rules pick a style for, our loader's YAML parser reads
        /// the emitted text back as that same string, as a key and as a value. (Not U+2028 or
        /// U+2029: go-yaml writes them raw and reads them back as line breaks; README.)
        #[test]
        fn emitted_strings_read_back_unchanged(
            s in "([a-zA-Z0-9 _.:#'\"{}\\[\\]*&!|>%@`?,=/\\\\~+-]|\n|\t|é|\u{85}){0,12}",
            key in "[a-zA-Z0-9 _.:#'\"{}*&!%@?,=~+-]{1,8}",
        ) {
            let doc = json!({ "k": s.clone(), "list": [s.clone()], key.clone(): {"nested": s.clone()} });
            let text = to_string(&doc);
            let back = crate::yaml::parse(&text, &std::sync::Arc::from("emitted"))
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e:?}\n{text}")))?
                .to_json();
            proptest::prop_assert_eq!(&back, &doc, "{}", text);
        }
    }

    #[test]
    fn floats_print_as_go_does() {
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(0.00001), "1e-05");
    }
}
