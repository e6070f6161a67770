//! `desired`: a loaded compose project -> the Incus objects it wants (see the parent module
//! documentation). One function per kind of object: [`networks`], [`volumes`], and
//! [`service`] (with its parts: [`names`], [`replicas`], [`config_and_files`], [`devices`]),
//! so each new rule has one obvious home.

use std::collections::{BTreeMap, BTreeSet};

use ic_compose::Project;
use ic_compose::model::{DeployMode, Service, VolumeType};

use super::storage::StorageChoice;
use super::{
    Desired, DesiredNetwork, DesiredVolume, Devices, ImageSource, InstanceTemplate, PlanError,
    PlanOptions, PushFile, RolloutSpec, ServerFacts, Subnet, bad_name, dns, image_target,
    incus_project_name, live_key, mapping, naming, oci, resolve_image_in, scheduler_spec,
    selected_services, span, spec_hash, storage,
};
use crate::keys::{
    LABEL_HASH, LABEL_NETWORK, LABEL_PROJECT, LABEL_SERVICE, LABEL_STATIC_HASH, LABEL_VERSION,
    LABEL_VOLUME,
};
use crate::{health, rollout};

/// What every function here shares: the project, the server, the caller's options, the
/// selected services and the warnings collected so far.
struct Ctx<'a> {
    project: &'a Project,
    facts: &'a ServerFacts,
    opts: &'a PlanOptions,
    incus_project: String,
    selected: BTreeSet<String>,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    /// Ownership labels of an object of this project, plus `extra`.
    fn owner(&self, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([
            (LABEL_PROJECT.to_string(), self.project.name.clone()),
            (LABEL_VERSION.to_string(), self.opts.version.clone()),
        ]);
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }
}

/// The desired state of `project` (see the module documentation).
pub fn desired(
    project: &Project,
    facts: &ServerFacts,
    opts: &PlanOptions,
) -> Result<Desired, PlanError> {
    for s in opts.scale.keys() {
        if !project.services.contains_key(s) {
            return Err(PlanError::UnknownScaleService(s.clone()));
        }
    }
    let mut cx = Ctx {
        project,
        facts,
        opts,
        incus_project: incus_project_name(project, opts),
        selected: selected_services(project, opts)?,
        warnings: project.warnings.iter().map(|d| d.to_string()).collect(),
    };
    let networks = networks(&mut cx)?;
    let storage = storage::choose(project, facts)?;
    let volumes = volumes(&mut cx, &storage.volume_pool);
    let mut services = Vec::new();
    let mut by_incus_name: BTreeMap<String, String> = BTreeMap::new();
    for name in project.services_in_dependency_order() {
        let Some(svc) = project.services.get(name) else {
            continue;
        };
        if !cx.selected.contains(name) {
            continue;
        }
        services.push(service(
            &mut cx,
            name,
            svc,
            &networks,
            &volumes,
            &storage,
            &mut by_incus_name,
        )?);
    }
    Ok(Desired {
        compose_project: project.name.clone(),
        incus_project: cx.incus_project,
        networks,
        volumes,
        services,
        all_services: project.services.keys().cloned().collect(),
        shared_storage: storage.shared,
        warnings: cx.warnings,
    })
}

/// The networks the selected services use: external ones as they are, the others as Incus
/// bridges of this project (subnet from `ipam` or allocated by `diff`; service names in DNS),
/// spanning the members on a cluster (see [`span`]).
fn networks(cx: &mut Ctx) -> Result<Vec<DesiredNetwork>, PlanError> {
    let project = cx.project;
    let used: BTreeSet<&String> = project
        .services
        .iter()
        .filter(|(n, s)| cx.selected.contains(*n) && s.network_mode.as_deref() != Some("none"))
        .flat_map(|(_, s)| s.networks.keys())
        .collect();
    // Service names and aliases as DNS names on each bridge (see dns.rs).
    let dns_names = dns::service_names(project);
    let all_names = dns::names_by_network(project);
    let mut out = Vec::new();
    for (key, net) in &project.networks {
        if !used.contains(key) {
            continue;
        }
        if net.external {
            out.push(DesiredNetwork {
                key: key.clone(),
                name: net.name.clone(),
                external: true,
                subnet: None,
                config: BTreeMap::new(),
                kind: span::Kind::Bridge,
                member_config: BTreeMap::new(),
                names: Vec::new(),
                internal: false,
                resolver: false,
                fill_members: Vec::new(),
            });
            continue;
        }
        if let Some(d) = net
            .driver
            .as_deref()
            .filter(|d| !matches!(*d, "bridge" | "overlay"))
        {
            cx.warnings.push(format!(
                "network {key:?}: driver {d:?} is not supported; an Incus bridge is used"
            ));
        }
        let kind = span::choose(key, net, &cx.facts.network).map_err(PlanError::Network)?;
        let subnet = match net
            .ipam
            .as_ref()
            .and_then(|i| i.config.first())
            .and_then(|pool| pool.subnet.as_ref().map(|s| (s, pool.gateway.as_deref())))
        {
            Some((s, gateway)) => {
                Some(
                    Subnet::parse(s, gateway).map_err(|message| PlanError::BadSubnet {
                        network: key.clone(),
                        message,
                    })?,
                )
            }
            None => None,
        };
        let mut config = cx.owner(&[(LABEL_NETWORK, key)]);
        let egress = super::egress::egress(key, net).map_err(PlanError::Network)?;
        config.insert("ipv4.nat".into(), egress.to_string());
        config.insert("ipv6.address".into(), "none".into());
        for (k, v) in &net.labels {
            config.insert(
                format!("{}{k}", crate::keys::COMPOSE_LABEL_PREFIX),
                v.clone(),
            );
        }
        let mut member_config = BTreeMap::new();
        let mut fill_members = Vec::new();
        let name = match &kind {
            span::Kind::Bridge => {
                if let Some(pairs) = dns_names.get(key) {
                    config.insert("raw.dnsmasq".into(), dns::raw_dnsmasq(pairs));
                }
                let name = naming::network_name(&cx.incus_project, key);
                // The project's isolation, as on spanning bridges (see egress.rs).
                let acl = span::acl_name(&cx.incus_project);
                if net.internal {
                    config.extend(super::egress::internal_keys(&name, Some(&acl)));
                } else {
                    config.extend(super::egress::isolation_keys(&acl));
                }
                name
            }
            span::Kind::Span => {
                let name = naming::span_network_name(&cx.incus_project, key);
                let (keys, per_member) = span::span_config(
                    key,
                    &name,
                    0,
                    &span::acl_name(&cx.incus_project),
                    &cx.facts.network,
                )
                .map_err(PlanError::Network)?;
                // The VNI is allocated by `diff`, which sees the networks that hold one.
                config.extend(
                    keys.into_iter()
                        .filter(|(k, _)| k != crate::keys::LABEL_VNI && !k.ends_with(".id")),
                );
                if let Some(unset) = cx.facts.network.tunnel_unset.get(&name) {
                    fill_members = unset
                        .iter()
                        .filter(|m| per_member.contains_key(*m))
                        .cloned()
                        .collect();
                }
                if let Some(members) = cx.facts.network.unavailable.get(&name) {
                    cx.warnings.push(span::unavailable_warning(
                        key,
                        &name,
                        members,
                        &cx.facts.network,
                    ));
                }
                member_config = per_member;
                if net.internal {
                    config.extend(super::egress::internal_keys(
                        &name,
                        Some(&span::acl_name(&cx.incus_project)),
                    ));
                }
                name
            }
            span::Kind::Ovn { uplink } => {
                // Egress through the uplink: the OVN router masquerades the network's subnet behind
                // its uplink address (as Docker's bridge does). A routed (non-NAT) subnet would need
                // a route for it on the uplink (`ipv4.routes`), which Incus checks and the uplink's
                // admin sets, not a compose file. An `internal` network has no uplink at all
                // (`network=none`, Incus's isolated OVN network): no router, no way out. It gets an
                // IPv6 ULA subnet too, so that OVN's own DNS answers AAAA queries for its instances
                // (with no uplink there is no name server to answer them, and a resolver asking A
                // and AAAA at once would wait for the AAAA and fail the lookup).
                if net.internal {
                    config.insert("network".into(), "none".into());
                    config.insert("ipv6.address".into(), "auto".into());
                } else {
                    config.insert("network".into(), uplink.clone());
                    config.insert("ipv4.nat".into(), "true".into());
                }
                config.insert(crate::keys::LABEL_KIND.into(), "ovn".into());
                if all_names.get(key).is_some_and(|n| !n.is_empty()) {
                    cx.warnings.push(format!(
                        "network {key:?} is an OVN network: instance names resolve on every member, service names and aliases are not served yet"
                    ));
                }
                let name = naming::network_name(&cx.incus_project, key);
                if net.internal {
                    config.extend(super::egress::internal_keys(&name, None));
                }
                name
            }
        };
        let resolver = kind == span::Kind::Span
            && dns::wants_resolver(key, net).map_err(PlanError::Network)?;
        out.push(DesiredNetwork {
            key: key.clone(),
            name,
            external: false,
            subnet,
            config,
            kind,
            member_config,
            names: all_names.get(key).cloned().unwrap_or_default(),
            internal: net.internal,
            resolver,
            fill_members,
        });
    }
    Ok(out)
}

/// The named volumes the selected services mount, as custom volumes of `pool`.
fn volumes(cx: &mut Ctx, pool: &str) -> Vec<DesiredVolume> {
    let project = cx.project;
    let mut out = Vec::new();
    for (key, vol) in &project.volumes {
        let used = project.services.iter().any(|(n, s)| {
            cx.selected.contains(n)
                && s.volumes
                    .iter()
                    .any(|v| v.kind == VolumeType::Volume && v.source.as_deref() == Some(key))
        });
        if !used {
            continue;
        }
        if let Some(d) = vol.driver.as_deref().filter(|d| *d != "local") {
            cx.warnings.push(format!(
                "volume {key:?}: driver {d:?} is not supported; a custom volume of pool {pool:?} is used"
            ));
        }
        let mut config = cx.owner(&[(LABEL_VOLUME, key)]);
        for (k, v) in &vol.labels {
            config.insert(
                format!("{}{k}", crate::keys::COMPOSE_LABEL_PREFIX),
                v.clone(),
            );
        }
        out.push(DesiredVolume {
            key: key.clone(),
            name: vol.name.clone(),
            external: vol.external,
            pool: pool.to_string(),
            config,
        });
    }
    out
}

/// The instance template of one service.
fn service(
    cx: &mut Ctx,
    name: &str,
    svc: &Service,
    networks: &[DesiredNetwork],
    volumes: &[DesiredVolume],
    storage: &StorageChoice,
    by_incus_name: &mut BTreeMap<String, String>,
) -> Result<InstanceTemplate, PlanError> {
    let (base_name, container_name) = names(name, svc, by_incus_name)?;
    let Some(image_ref) = &svc.image else {
        return Err(PlanError::NoImage {
            service: name.to_string(),
        });
    };
    let registry = oci::project_registry(cx.project, &cx.facts.oci_remotes);
    let image = resolve_image_in(name, image_ref, cx.facts, registry.as_deref())?;
    let replicas = replicas(cx, name, svc, container_name.is_some())?;
    mapping::build_and_pull(svc, &mut cx.warnings)?;
    let architecture = mapping::platform_arch(svc)?;
    let (config, mut files, command) = config_and_files(cx, name, svc, &image, image_ref)?;
    let (mut devices, volumes_used, anonymous_volumes) =
        self::devices(cx, svc, networks, volumes, storage);
    if svc.read_only {
        read_only_root(cx, storage, &anonymous_volumes, &mut devices, &mut files);
    }

    let mut config = config;
    // Ingress ports on a cluster go through every member's forwarder (see `ingress`) when the
    // service is on a spanning bridge, which the forwarders reach it through.
    let mesh = cx.facts.network.clustered
        && devices.values().any(|d| {
            d.get("type").map(String::as_str) == Some("nic")
                && networks.iter().any(|n| {
                    n.kind == span::Kind::Span && !n.external && d.get("network") == Some(&n.name)
                })
        });
    if mesh && let Some(ports) = super::ingress::take_ingress(svc, &mut devices) {
        config.insert(super::ingress::LABEL_INGRESS_PORTS.into(), ports);
    }
    let hash = spec_hash(
        &image,
        &config,
        &devices,
        command.as_deref(),
        &files,
        &anonymous_volumes,
    );
    let fixed: BTreeMap<String, String> = config
        .iter()
        .filter(|(k, _)| !live_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let static_hash = spec_hash(
        &image,
        &fixed,
        &devices,
        command.as_deref(),
        &files,
        &anonymous_volumes,
    );
    config.insert(LABEL_HASH.into(), hash.clone());
    config.insert(LABEL_STATIC_HASH.into(), static_hash.clone());
    let mut rollout = rollout_spec(cx, name, svc, container_name.is_some())?;
    let snapshots = svc
        .extensions
        .get("x-incus")
        .and_then(|x| x.get("snapshot_volumes"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    if snapshots {
        rollout.snapshot_volumes = volumes_used
            .iter()
            .map(|v| (storage.volume_pool.clone(), v.clone()))
            .collect();
    }
    let mut spec = scheduler_spec(svc, name, replicas);
    spec.fixed_host_ports = super::ingress::replica_host_ports(svc, mesh);
    if let Some(arch) = &architecture {
        let c: ic_compose::model::placement::Constraint = format!("node.platform.arch == {arch}")
            .parse()
            .map_err(|e| PlanError::Platform {
                service: name.to_string(),
                platform: svc.platform.clone().unwrap_or_default(),
                problem: format!("{e}"),
            })?;
        spec.constraints.push(c);
    }
    Ok(InstanceTemplate {
        service: name.to_string(),
        base_name,
        container_name,
        image_fingerprint: image_target(&image, cx.facts),
        image,
        config,
        devices,
        command,
        hash,
        volumes: volumes_used,
        spec,
        depends_on: svc
            .depends_on
            .keys()
            .filter(|d| cx.selected.contains(*d))
            .cloned()
            .collect(),
        stop_timeout: svc
            .stop_grace_period
            .map(|d| d.as_std().as_secs() as i64)
            .unwrap_or(10),
        files,
        anonymous_volumes,
        architecture,
        static_hash,
        rollout,
    })
}

/// `update_config`, `rollback_config` and the healthcheck; warns when `monitor` is too
/// short for the healthcheck, and when `start-first` cannot be honoured.
fn rollout_spec(
    cx: &mut Ctx,
    name: &str,
    svc: &Service,
    has_container_name: bool,
) -> Result<RolloutSpec, PlanError> {
    let deploy = svc.deploy.as_ref();
    let mut update = rollout::Config::update(deploy.and_then(|d| d.update_config.as_ref()));
    let mut rollback = rollout::Config::rollback(deploy.and_then(|d| d.rollback_config.as_ref()));
    let check =
        health::check_of(name, svc.healthcheck.as_ref()).map_err(|e| PlanError::Healthcheck {
            service: name.to_string(),
            problem: e.to_string(),
        })?;
    // Only for a declared `update_config`: Swarm's defaults are not the user's choice.
    if deploy.and_then(|d| d.update_config.as_ref()).is_some()
        && let Some(w) = rollout::monitor_warning(name, &update, check.as_ref())
    {
        cx.warnings.push(w);
    }
    if has_container_name && (update.start_first || rollback.start_first) {
        cx.warnings.push(format!(
            "service {name:?}: order start-first needs a second instance name, and container_name fixes the only one: its updates run stop-first"
        ));
        update.start_first = false;
        rollback.start_first = false;
    }
    // A replicated service's new replica starts on another member (see `diff`, `port_moves`);
    // a global one has no other member to go to.
    if svc.ports.iter().any(|p| p.published.is_some())
        && svc.replicas().is_none()
        && (update.start_first || rollback.start_first)
    {
        cx.warnings.push(format!(
            "service {name:?}: order start-first: it publishes fixed host ports, which a new replica cannot bind beside the old one on the same member, and a global service has no other member to start it on; its updates run stop-first"
        ));
        update.start_first = false;
        rollback.start_first = false;
    }
    Ok(RolloutSpec {
        update,
        rollback,
        check,
        snapshot_volumes: Vec::new(),
        stop_first_slots: Default::default(),
    })
}

/// The Incus form of the service name and of its `container_name`; two services (or
/// container names) that map to one Incus name fail.
fn names(
    name: &str,
    svc: &Service,
    by_incus_name: &mut BTreeMap<String, String>,
) -> Result<(String, Option<String>), PlanError> {
    let mut claim =
        |incus: String, what: String| match by_incus_name.insert(incus.clone(), what.clone()) {
            Some(first) => Err(PlanError::NameCollision {
                first,
                second: what,
                incus,
            }),
            None => Ok(incus),
        };
    let base = naming::incus_name(name).map_err(|p| bad_name("service", name, p))?;
    let base = claim(base, format!("service {name:?}"))?;
    let container = match &svc.container_name {
        Some(c) => {
            let mapped = naming::incus_name(c).map_err(|p| bad_name("container_name", c, p))?;
            Some(claim(mapped, format!("container_name {c:?}"))?)
        }
        None => None,
    };
    Ok((base, container))
}

/// The replica count (`None`: global), after `--scale`.
fn replicas(
    cx: &mut Ctx,
    name: &str,
    svc: &Service,
    has_container_name: bool,
) -> Result<Option<u64>, PlanError> {
    let mut replicas = svc.replicas();
    if let Some(n) = cx.opts.scale.get(name) {
        match replicas {
            Some(_) => replicas = Some(u64::from(*n)),
            None => cx.warnings.push(format!(
                "--scale {name}={n} ignored: a global service runs one replica per member"
            )),
        }
    }
    if matches!(
        svc.deploy.as_ref().map(|d| d.mode),
        Some(DeployMode::ReplicatedJob | DeployMode::GlobalJob)
    ) {
        cx.warnings.push(format!(
            "service {name:?}: job modes run as ordinary services for now"
        ));
    }
    if has_container_name && replicas != Some(1) && replicas != Some(0) {
        return Err(PlanError::ContainerNameWithReplicas {
            service: name.to_string(),
            replicas: replicas.unwrap_or(0),
        });
    }
    Ok(replicas)
}

/// Instance config keys (labels, environment, limits, restart, raw.lxc, ...), the files
/// pushed before the first start and the PID 1 script.
#[allow(clippy::type_complexity)]
fn config_and_files(
    cx: &mut Ctx,
    name: &str,
    svc: &Service,
    image: &ImageSource,
    image_ref: &str,
) -> Result<(BTreeMap<String, String>, Vec<PushFile>, Option<String>), PlanError> {
    let mut config = cx.owner(&[(LABEL_SERVICE, name)]);
    let warnings = &mut cx.warnings;
    mapping::environment(svc, &mut config, warnings);
    mapping::labels(svc, &mut config);
    mapping::limits(svc, &mut config);
    mapping::restart(svc, &mut config, warnings);
    if svc.privileged {
        config.insert("security.privileged".into(), "true".into());
    }
    mapping::sysctls(svc, &mut config);
    mapping::ulimits(svc, &mut config, warnings);
    let mut raw: Vec<String> = Vec::new();
    let mut files: Vec<PushFile> = Vec::new();
    let command = if let ImageSource::Oci { .. } = image {
        let known = cx.facts.oci_images.get(&image.to_string());
        oci::process_config(name, svc, image_ref, known, &mut config)?;
        None
    } else {
        mapping::process(svc, &mut raw, &mut files, warnings)
    };
    mapping::cpuset_and_oom(svc, &mut config, &mut raw, warnings);
    mapping::hostname(svc, &mut raw, warnings);
    mapping::capabilities(svc, &mut raw, warnings);
    mapping::security_opt(svc, &mut raw, warnings);
    mapping::tmpfs(svc, &mut raw, &mut files, warnings);
    mapping::secrets_and_configs(
        svc,
        cx.project,
        cx.facts.digest_key.as_ref(),
        &mut files,
        warnings,
    )?;
    mapping::name_resolution(svc, &mut files, warnings);
    if !raw.is_empty() {
        config.insert("raw.lxc".into(), raw.join("\n"));
    }
    Ok((config, files, command))
}

/// Devices (NICs, ports, mounts, root disk), the named volumes of this project the service
/// mounts, and its anonymous volumes.
fn devices(
    cx: &mut Ctx,
    svc: &Service,
    networks: &[DesiredNetwork],
    volumes: &[DesiredVolume],
    storage: &StorageChoice,
) -> (Devices, Vec<String>, Vec<mapping::AnonymousVolume>) {
    let warnings = &mut cx.warnings;
    let mut devices = Devices::new();
    mapping::devices(svc, &mut devices, warnings);
    mapping::ports(svc, &mut devices, warnings);
    let bridge_of = |key: &str| {
        networks
            .iter()
            .find(|n| n.key == key)
            .map(|n| n.name.clone())
    };
    mapping::nics(svc, &bridge_of, &mut devices, warnings);
    let project = cx.project;
    let volume_of = |key: &str| project.volumes.get(key).map(|v| v.name.clone());
    let used = mapping::mounts(
        svc,
        &storage.volume_pool,
        &volume_of,
        &mut devices,
        warnings,
    );
    let volumes_used: Vec<String> = used
        .into_iter()
        .filter(|v| volumes.iter().any(|d| &d.name == v && !d.external))
        .collect();
    let anonymous_volumes = mapping::anonymous_volumes(svc, &storage.volume_pool, storage.shared);
    mapping::unsupported(svc, warnings);
    if let Some(root) =
        storage.root_device(!volumes_used.is_empty() || !anonymous_volumes.is_empty())
    {
        devices.insert("root".into(), root);
    }
    (devices, volumes_used, anonymous_volumes)
}

/// `read_only: true`: a read-only root disk, and every mount point made beforehand (LXC
/// cannot make them in a read-only root).
fn read_only_root(
    cx: &Ctx,
    storage: &StorageChoice,
    anonymous_volumes: &[mapping::AnonymousVolume],
    devices: &mut Devices,
    files: &mut Vec<PushFile>,
) {
    let root_pool = storage
        .root_pool
        .clone()
        .unwrap_or_else(|| cx.facts.storage_pool.clone());
    let root = devices.entry("root".into()).or_insert_with(|| {
        BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("path".to_string(), "/".to_string()),
            ("pool".to_string(), root_pool),
        ])
    });
    root.insert("readonly".into(), "true".into());
    let targets: Vec<String> = devices
        .values()
        .filter(|d| d.get("type").map(String::as_str) == Some("disk"))
        .filter_map(|d| d.get("path").cloned())
        .chain(anonymous_volumes.iter().map(|a| a.target.clone()))
        .filter(|p| p.as_str() != "/")
        .collect();
    for path in targets {
        if !files.iter().any(|f| f.path == path) {
            files.push(PushFile::dir(&path));
        }
    }
}
