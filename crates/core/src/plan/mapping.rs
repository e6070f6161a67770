//! Compose service fields -> Incus instance config keys and devices. Pure functions; each
//! returns what it maps and pushes a warning for what it cannot, so nothing is dropped
//! silently.
//!
//! | compose | Incus |
//! |---|---|
//! | `environment: {K: v}` | `environment.K = v` (a variable without a value is left out, with a warning) |
//! | `labels: {k: v}` | `user.label.k = v` |
//! | `deploy.resources.limits.cpus` | whole numbers: `limits.cpu = N`; fractions: `limits.cpu.allowance = <cpus*100>ms/100ms` (a hard quota, as Docker's) |
//! | `deploy.resources.limits.memory` | `limits.memory = <bytes>` |
//! | `deploy.resources.limits.pids` | `limits.processes` |
//! | `restart` / `deploy.restart_policy.condition` | `no`/`none`: nothing; `always`/`unless-stopped`/`any`: `boot.autostart` + `boot.autorestart`; `on-failure`: `boot.autorestart` |
//! | `privileged: true` | `security.privileged = true` |
//! | `ports` | a `proxy` device per port: `listen: <proto>:<host_ip or 0.0.0.0>:<published>`, `connect: <proto>:127.0.0.1:<target>` |
//! | `networks` | a `nic` device `eth0`, `eth1`, ... per network (`network: <bridge>`), `ipv4_address` -> `ipv4.address`, `mac_address` -> `hwaddr`; `network_mode: none`: no NIC |
//! | `volumes` (named) | a `disk` device: `pool`, `source: <volume>`, `path: <target>`, `readonly` |
//! | `volumes` (bind) | a `disk` device: `source: <host path>`, `path: <target>`, `readonly` |

use std::collections::BTreeMap;

use ic_compose::model::{RestartCondition, Service, VolumeType};

/// Instance devices: device name -> settings.
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

fn dev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `environment.*` keys.
pub fn environment(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    for (k, v) in &service.environment {
        match v {
            Some(v) if v.is_empty() => warnings.push(format!(
                "service {:?}: environment variable {k:?} is empty; Incus treats an empty config value as unset, so it is left out",
                service.name
            )),
            Some(v) => {
                config.insert(format!("environment.{k}"), v.clone());
            }
            None => warnings.push(format!(
                "service {:?}: environment variable {k:?} has no value and is not set here; left out",
                service.name
            )),
        }
    }
}

/// `user.label.*` keys.
pub fn labels(service: &Service, config: &mut BTreeMap<String, String>) {
    for (k, v) in &service.labels {
        config.insert(format!("user.label.{k}"), v.clone());
    }
}

/// `limits.*` keys from `deploy.resources.limits`.
pub fn limits(service: &Service, config: &mut BTreeMap<String, String>) {
    let Some(l) = service
        .deploy
        .as_ref()
        .and_then(|d| d.resources.limits.as_ref())
    else {
        return;
    };
    if let Some(cpus) = l.cpus.filter(|c| *c > 0.0) {
        if cpus.fract() == 0.0 {
            config.insert("limits.cpu".into(), format!("{}", cpus as u64));
        } else {
            let ms = (cpus * 100.0).round().max(1.0) as u64;
            config.insert("limits.cpu.allowance".into(), format!("{ms}ms/100ms"));
        }
    }
    if let Some(m) = l.memory {
        config.insert("limits.memory".into(), m.bytes().to_string());
    }
    if let Some(p) = l.pids.filter(|p| *p > 0) {
        config.insert("limits.processes".into(), p.to_string());
    }
}

/// `boot.autostart` / `boot.autorestart` from the restart policy.
pub fn restart(
    service: &Service,
    config: &mut BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    let policy = service
        .deploy
        .as_ref()
        .and_then(|d| d.restart_policy.as_ref());
    let condition = match (policy, service.restart.as_deref()) {
        (Some(p), _) => Some(p.condition),
        (None, Some("no")) => Some(RestartCondition::None),
        (None, Some("on-failure")) => Some(RestartCondition::OnFailure),
        (None, Some(r)) if r.starts_with("on-failure:") => Some(RestartCondition::OnFailure),
        (None, Some(_)) => Some(RestartCondition::Any),
        (None, None) => None,
    };
    match condition {
        Some(RestartCondition::Any) => {
            config.insert("boot.autostart".into(), "true".into());
            config.insert("boot.autorestart".into(), "true".into());
        }
        Some(RestartCondition::OnFailure) => {
            config.insert("boot.autorestart".into(), "true".into());
        }
        Some(RestartCondition::None) | None => {}
    }
    if let Some(p) = policy {
        let mut ignored = Vec::new();
        if p.delay.is_some() {
            ignored.push("delay");
        }
        if p.max_attempts.is_some() {
            ignored.push("max_attempts");
        }
        if p.window.is_some() {
            ignored.push("window");
        }
        if !ignored.is_empty() {
            warnings.push(format!(
                "service {:?}: deploy.restart_policy {} ignored: Incus restarts at once, without limit",
                service.name,
                ignored.join(", ")
            ));
        }
    }
}

/// One `proxy` device per published port.
pub fn ports(service: &Service, devices: &mut Devices, warnings: &mut Vec<String>) {
    for p in &service.ports {
        let Some(published) = p.published else {
            warnings.push(format!(
                "service {:?}: port {} has no published host port; incus-compose does not pick random host ports, so it is not published",
                service.name, p.target
            ));
            continue;
        };
        let proto = p.protocol.to_ascii_lowercase();
        let host = p.host_ip.as_deref().unwrap_or("0.0.0.0");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let span = published.end.saturating_sub(published.start);
        let target = if span == 0 {
            p.target.to_string()
        } else {
            format!("{}-{}", p.target, p.target.saturating_add(span))
        };
        let name = format!("port-{proto}-{published}");
        devices.insert(
            name,
            dev(&[
                ("type", "proxy"),
                ("listen", &format!("{proto}:{host}:{published}")),
                ("connect", &format!("{proto}:127.0.0.1:{target}")),
            ]),
        );
    }
}

/// `nic` devices, one per network the service joins. `bridge_of` gives the Incus network
/// name of a compose network key.
pub fn nics(
    service: &Service,
    bridge_of: &dyn Fn(&str) -> Option<String>,
    devices: &mut Devices,
    warnings: &mut Vec<String>,
) {
    match service.network_mode.as_deref() {
        None => {}
        Some("none") => return,
        Some(other) => {
            warnings.push(format!(
                "service {:?}: network_mode {other:?} is not supported on Incus; the service joins its networks instead",
                service.name
            ));
        }
    }
    let mut nets: Vec<(&String, i64)> = service
        .networks
        .iter()
        .map(|(k, v)| (k, v.as_ref().and_then(|n| n.priority).unwrap_or(0)))
        .collect();
    // Higher priority first (eth0), then name order, as compose orders them.
    nets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (i, (key, _)) in nets.iter().enumerate() {
        let Some(bridge) = bridge_of(key) else {
            continue;
        };
        let mut d = dev(&[
            ("type", "nic"),
            ("network", &bridge),
            ("name", &format!("eth{i}")),
        ]);
        if let Some(Some(n)) = service.networks.get(*key) {
            if let Some(ip) = &n.ipv4_address {
                d.insert("ipv4.address".into(), ip.clone());
            }
            if let Some(mac) = &n.mac_address {
                d.insert("hwaddr".into(), mac.clone());
            }
            let mut ignored = Vec::new();
            if !n.aliases.is_empty() {
                ignored.push("aliases");
            }
            if n.ipv6_address.is_some() {
                ignored.push("ipv6_address");
            }
            if !ignored.is_empty() {
                warnings.push(format!(
                    "service {:?}: network {key:?}: {} not supported yet, ignored",
                    service.name,
                    ignored.join(", ")
                ));
            }
        }
        devices.insert(format!("eth{i}"), d);
    }
}

/// `disk` devices for the service's mounts. `volume_of` gives, for a compose volume key, the
/// Incus volume name; returns the names of the named volumes used.
pub fn mounts(
    service: &Service,
    pool: &str,
    volume_of: &dyn Fn(&str) -> Option<String>,
    devices: &mut Devices,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut used = Vec::new();
    for (i, v) in service.volumes.iter().enumerate() {
        let name = format!("mount{i}");
        let mut d = match (v.kind, &v.source) {
            (VolumeType::Volume, Some(src)) => {
                let Some(vol) = volume_of(src) else {
                    continue;
                };
                used.push(vol.clone());
                dev(&[
                    ("type", "disk"),
                    ("pool", pool),
                    ("source", &vol),
                    ("path", &v.target),
                ])
            }
            (VolumeType::Bind, Some(src)) => {
                dev(&[("type", "disk"), ("source", src), ("path", &v.target)])
            }
            (kind, _) => {
                warnings.push(format!(
                    "service {:?}: {} mount at {:?} is not supported yet, ignored",
                    service.name,
                    match kind {
                        VolumeType::Volume => "anonymous volume",
                        VolumeType::Tmpfs => "tmpfs",
                        VolumeType::Cluster => "cluster volume",
                        VolumeType::Npipe => "npipe",
                        VolumeType::Image => "image",
                        VolumeType::Bind => "bind",
                    },
                    v.target
                ));
                continue;
            }
        };
        if v.read_only {
            d.insert("readonly".into(), "true".into());
        }
        devices.insert(name, d);
    }
    used
}

/// Warnings for the service fields incus-compose does not map (yet).
pub fn unsupported(service: &Service, warnings: &mut Vec<String>) {
    let s = service;
    let mut names: Vec<String> = Vec::new();
    let mut flag = |set: bool, name: &str| {
        if set {
            names.push(name.to_string());
        }
    };
    flag(s.build.is_some(), "build");
    flag(!s.cap_add.is_empty(), "cap_add");
    flag(!s.cap_drop.is_empty(), "cap_drop");
    flag(!s.configs.is_empty(), "configs");
    flag(!s.secrets.is_empty(), "secrets");
    flag(!s.dns.is_empty(), "dns");
    flag(!s.dns_search.is_empty(), "dns_search");
    flag(s.domainname.is_some(), "domainname");
    flag(!s.extra_hosts.is_empty(), "extra_hosts");
    flag(
        s.healthcheck
            .as_ref()
            .is_some_and(|h| !h.disable && h.test.first().map(String::as_str) != Some("NONE")),
        "healthcheck",
    );
    flag(
        s.hostname.is_some(),
        "hostname (the hostname is the instance name)",
    );
    flag(s.init.is_some(), "init");
    flag(s.logging.is_some(), "logging");
    flag(s.platform.is_some(), "platform");
    flag(s.read_only, "read_only");
    flag(s.runtime.is_some(), "runtime");
    flag(!s.security_opt.is_empty(), "security_opt");
    flag(s.shm_size.is_some(), "shm_size");
    flag(s.stdin_open, "stdin_open");
    flag(s.stop_signal.is_some(), "stop_signal");
    flag(!s.sysctls.is_empty(), "sysctls");
    flag(!s.tmpfs.is_empty(), "tmpfs");
    flag(s.tty, "tty");
    flag(!s.ulimits.is_empty(), "ulimits");
    flag(s.user.is_some(), "user");
    flag(!s.volumes_from.is_empty(), "volumes_from");
    flag(s.working_dir.is_some(), "working_dir");
    if let Some(d) = &s.deploy {
        flag(d.endpoint_mode.is_some(), "deploy.endpoint_mode");
        flag(!d.labels.is_empty(), "deploy.labels");
        flag(
            d.update_config.is_some(),
            "deploy.update_config (updates recreate all replicas at once for now)",
        );
        flag(d.rollback_config.is_some(), "deploy.rollback_config");
        if let Some(r) = &d.resources.reservations {
            flag(
                !r.generic_resources.is_empty(),
                "deploy.resources.reservations.generic_resources",
            );
            flag(
                !r.devices.is_empty(),
                "deploy.resources.reservations.devices",
            );
        }
    }
    for k in s.other.keys() {
        names.push(k.clone());
    }
    if !names.is_empty() {
        warnings.push(format!(
            "service {:?}: not supported on Incus yet, ignored: {}",
            s.name,
            names.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_compose::model::{
        ByteSize, Deploy, Limits, Port, PortMode, PortRange, Resources, RestartPolicy,
        ServiceVolume,
    };

    fn svc() -> Service {
        Service {
            name: "web".into(),
            ..Default::default()
        }
    }

    fn with_limits(cpus: Option<f64>, memory: Option<u64>, pids: Option<i64>) -> Service {
        Service {
            deploy: Some(Deploy {
                resources: Resources {
                    limits: Some(Limits {
                        cpus,
                        memory: memory.map(ByteSize),
                        pids,
                    }),
                    reservations: None,
                },
                ..Default::default()
            }),
            ..svc()
        }
    }

    #[test]
    fn environment_becomes_environment_keys_and_valueless_variables_warn() {
        let mut s = svc();
        s.environment.insert("A".into(), Some("1".into()));
        s.environment.insert("B".into(), None);
        let (mut c, mut w) = (BTreeMap::new(), Vec::new());
        environment(&s, &mut c, &mut w);
        assert_eq!(c.get("environment.A").map(String::as_str), Some("1"));
        assert!(!c.contains_key("environment.B"));
        assert!(w[0].contains("\"B\""), "{w:?}");
    }

    #[test]
    fn whole_cpus_pin_a_count_and_fractions_set_a_quota() {
        let mut c = BTreeMap::new();
        limits(&with_limits(Some(2.0), Some(256 << 20), Some(100)), &mut c);
        assert_eq!(c["limits.cpu"], "2");
        assert_eq!(c["limits.memory"], "268435456");
        assert_eq!(c["limits.processes"], "100");
        let mut c = BTreeMap::new();
        limits(&with_limits(Some(0.5), None, None), &mut c);
        assert_eq!(c["limits.cpu.allowance"], "50ms/100ms");
        assert!(!c.contains_key("limits.cpu"));
    }

    #[test]
    fn restart_conditions_map_to_boot_keys_and_timing_fields_warn() {
        let run = |policy: Option<&str>, cond: Option<RestartCondition>| {
            let mut s = svc();
            s.restart = policy.map(Into::into);
            if let Some(condition) = cond {
                s.deploy = Some(Deploy {
                    restart_policy: Some(RestartPolicy {
                        condition,
                        delay: Some("5s".parse().unwrap()),
                        max_attempts: None,
                        window: None,
                    }),
                    ..Default::default()
                });
            }
            let (mut c, mut w) = (BTreeMap::new(), Vec::new());
            restart(&s, &mut c, &mut w);
            (c, w)
        };
        let (c, w) = run(Some("unless-stopped"), None);
        assert_eq!(
            (c["boot.autostart"].as_str(), c["boot.autorestart"].as_str()),
            ("true", "true")
        );
        assert!(w.is_empty());
        let (c, _) = run(Some("no"), None);
        assert!(c.is_empty());
        let (c, w) = run(None, Some(RestartCondition::OnFailure));
        assert_eq!(c.get("boot.autorestart").map(String::as_str), Some("true"));
        assert!(!c.contains_key("boot.autostart"));
        assert!(w[0].contains("delay"), "{w:?}");
        let (c, _) = run(None, Some(RestartCondition::None));
        assert!(c.is_empty());
    }

    #[test]
    fn published_ports_become_proxy_devices() {
        let mut s = svc();
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: None,
            target: 80,
            published: Some(PortRange {
                start: 8080,
                end: 8080,
            }),
            protocol: "tcp".into(),
            app_protocol: None,
        });
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: Some("127.0.0.1".into()),
            target: 53,
            published: Some(PortRange {
                start: 5353,
                end: 5353,
            }),
            protocol: "udp".into(),
            app_protocol: None,
        });
        s.ports.push(Port {
            name: None,
            mode: PortMode::Ingress,
            host_ip: None,
            target: 9,
            published: None,
            protocol: "tcp".into(),
            app_protocol: None,
        });
        let (mut d, mut w) = (Devices::new(), Vec::new());
        ports(&s, &mut d, &mut w);
        assert_eq!(d["port-tcp-8080"]["listen"], "tcp:0.0.0.0:8080");
        assert_eq!(d["port-tcp-8080"]["connect"], "tcp:127.0.0.1:80");
        assert_eq!(d["port-tcp-8080"]["type"], "proxy");
        assert_eq!(d["port-udp-5353"]["listen"], "udp:127.0.0.1:5353");
        assert_eq!(d.len(), 2);
        assert_eq!(w.len(), 1, "a port without a host port warns");
    }

    #[test]
    fn named_volumes_and_binds_become_disk_devices() {
        let mut s = svc();
        let vol = |kind, source: Option<&str>, target: &str, ro| ServiceVolume {
            kind,
            source: source.map(Into::into),
            target: target.into(),
            read_only: ro,
            bind: None,
            volume: None,
            tmpfs: None,
            consistency: None,
            other: BTreeMap::new(),
        };
        s.volumes = vec![
            vol(VolumeType::Volume, Some("data"), "/data", false),
            vol(VolumeType::Bind, Some("/srv/x"), "/x", true),
            vol(VolumeType::Tmpfs, None, "/tmp", false),
        ];
        let (mut d, mut w) = (Devices::new(), Vec::new());
        let used = mounts(&s, "data", &|k| Some(format!("p_{k}")), &mut d, &mut w);
        assert_eq!(used, vec!["p_data".to_string()]);
        assert_eq!(d["mount0"]["source"], "p_data");
        assert_eq!(d["mount0"]["pool"], "data");
        assert_eq!(d["mount0"]["path"], "/data");
        assert_eq!(d["mount1"]["source"], "/srv/x");
        assert_eq!(d["mount1"]["readonly"], "true");
        assert!(w[0].contains("tmpfs"));
    }

    #[test]
    fn unsupported_fields_are_named_in_a_warning() {
        let mut s = svc();
        s.cap_add = vec!["NET_ADMIN".into()];
        s.user = Some("1000".into());
        let mut w = Vec::new();
        unsupported(&s, &mut w);
        assert!(w[0].contains("cap_add") && w[0].contains("user"), "{w:?}");
        let mut w = Vec::new();
        unsupported(&svc(), &mut w);
        assert!(w.is_empty());
    }
}
