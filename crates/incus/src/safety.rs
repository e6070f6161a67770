//! The last check before config reaches Incus: no value of a `config` map or of a device
//! carries a line break or another control character, except in the keys that are multi-line
//! by design, whose lines are checked one by one (`raw.lxc`: `lxc.<key> = <value>` lines;
//! `raw.dnsmasq`: the record directives incus-compose writes). Incus keeps most config in
//! its database, but LXC's config and dnsmasq's are line formats: one newline in a value
//! there is one more directive, run as root on the member. The compose loader refuses such
//! values with their file and line (`ic_compose::hostile`); this check
//! holds the boundary for every other way a value gets here (a stored revision replayed by
//! `watch` or `rollback`, a value read back from an instance).

use serde_json::Value;

/// Keys whose values are multi-line by design and are passed through unchanged (incus-compose
/// never writes them; an instance's own keys written back as they are).
fn free_multi_line(key: &str) -> bool {
    matches!(
        key,
        "raw.idmap"
            | "raw.apparmor"
            | "raw.seccomp"
            | "raw.qemu"
            | "raw.qemu.conf"
            | "user.user-data"
            | "user.vendor-data"
            | "user.network-config"
            | "user.meta-data"
    ) || key.starts_with("cloud-init.")
}

/// Why the value of config key `key` must not be written, if it must not.
pub fn check_config_value(key: &str, value: &str) -> Result<(), String> {
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(format!("config key {key:?} holds control character {c:?}"));
    }
    // Keys Incus itself writes (copied from the image, or its own state) come back in a PUT
    // of an instance's writable fields as they are; Incus never puts them in a line format.
    if free_multi_line(key) || key.starts_with("image.") || key.starts_with("volatile.") {
        return Ok(());
    }
    let bad_char = |line: &str| line.chars().find(|c| c.is_control());
    match key {
        "raw.lxc" => {
            for line in value.lines().filter(|l| !l.trim().is_empty()) {
                if let Some(c) = bad_char(line) {
                    return Err(format!(
                        "raw.lxc line {line:?} holds control character {c:?}"
                    ));
                }
                let Some((k, _)) = line.split_once('=') else {
                    return Err(format!(
                        "raw.lxc line {line:?} is not `lxc.<key> = <value>`"
                    ));
                };
                let k = k.trim();
                if !k.starts_with("lxc.")
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                {
                    return Err(format!(
                        "raw.lxc line {line:?} is not `lxc.<key> = <value>`"
                    ));
                }
            }
            if value.contains('\r') {
                return Err("raw.lxc holds a carriage return".into());
            }
            Ok(())
        }
        "raw.dnsmasq" => {
            for line in value.lines().filter(|l| !l.is_empty()) {
                let ok = line.split_once('=').is_some_and(|(directive, args)| {
                    matches!(
                        directive,
                        "cname" | "host-record" | "dhcp-ignore" | "dhcp-option" | "server"
                    ) && !args.is_empty()
                        && args.chars().all(|c| {
                            c.is_ascii_alphanumeric()
                                || matches!(c, '.' | ',' | ':' | '!' | '-' | '_')
                                || (directive == "server" && matches!(c, '/' | '#'))
                        })
                });
                if !ok {
                    return Err(format!(
                        "raw.dnsmasq line {line:?} is not a record incus-compose writes (cname, host-record, dhcp-ignore, dhcp-option, server with names and addresses)"
                    ));
                }
            }
            if value.contains('\r') {
                return Err("raw.dnsmasq holds a carriage return".into());
            }
            Ok(())
        }
        _ => match value.chars().find(|c| c.is_control()) {
            Some(c) => Err(format!(
                "the value of {key:?} holds control character {c:?}; only raw.lxc, raw.dnsmasq and cloud-init keys may span lines"
            )),
            None => Ok(()),
        },
    }
}

/// Checks every `config` map and every device of a request body (at any depth: instance,
/// network, project and storage volume bodies, and their `PATCH`es).
pub fn check_body(body: &Value) -> Result<(), String> {
    match body {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("config", Value::Object(config)) => {
                        for (key, value) in config {
                            if let Value::String(s) = value {
                                check_config_value(key, s)?;
                            }
                        }
                    }
                    ("devices", Value::Object(devices)) => {
                        for (name, device) in devices {
                            if let Some(c) = name.chars().find(|c| c.is_control()) {
                                return Err(format!(
                                    "device name {name:?} holds control character {c:?}"
                                ));
                            }
                            let Value::Object(props) = device else {
                                continue;
                            };
                            for (key, value) in props {
                                let Value::String(s) = value else { continue };
                                if let Some(c) =
                                    key.chars().chain(s.chars()).find(|c| c.is_control())
                                {
                                    return Err(format!(
                                        "device {name:?} property {key:?} holds control character {c:?}"
                                    ));
                                }
                            }
                        }
                    }
                    _ => check_body(v)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_body),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_newline_in_any_config_value_or_device_is_refused() {
        let e = check_body(
            &json!({"config": {"environment.A": "x\nlxc.apparmor.profile = unconfined"}}),
        )
        .unwrap_err();
        assert!(e.contains("environment.A"), "{e}");
        assert!(check_body(&json!({"config": {"linux.sysctl.a": "1\n"}})).is_err());
        assert!(check_body(&json!({"devices": {"d": {"path": "/x\ny"}}})).is_err());
        assert!(check_body(&json!({"metadata": {"config": {"user.x": "a\rb"}}})).is_err());
        assert!(check_body(&json!({"config": {"user.x": "{\"a\":\"b\\nc\"}"}, "devices": {"root": {"path": "/"}}})).is_ok());
    }

    #[test]
    fn multi_line_keys_are_checked_line_by_line() {
        assert!(
            check_config_value("raw.lxc", "lxc.uts.name = web\nlxc.cap.drop = sys_admin").is_ok()
        );
        assert!(check_config_value("raw.lxc", "lxc.uts.name = web\nconf-dir=/tmp").is_err());
        assert!(
            check_config_value(
                "raw.dnsmasq",
                "cname=db,db.incus,db-1\nhost-record=a,a.incus,10.0.0.2\n"
            )
            .is_ok()
        );
        assert!(check_config_value("raw.dnsmasq", "cname=db,db.incus,x\nconf-dir=/tmp\n").is_err());
        assert!(check_config_value("raw.dnsmasq", "cname=db,db.incus,x y\n").is_err());
        assert!(check_config_value("raw.dnsmasq", "server=/incus/100.127.1.2#5301\n").is_ok());
        assert!(check_config_value("raw.dnsmasq", "cname=/incus/x\n").is_err());
        assert!(
            check_config_value("cloud-init.user-data", "#cloud-config\npackages: []\n").is_ok()
        );
        // An image's own description (not ours to fix) is echoed back as it is.
        assert!(check_config_value("image.description", "a\nb").is_ok());
        assert!(check_config_value("user.label.x", "a\nb").is_err());
    }
}
