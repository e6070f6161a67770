//! Published ports on every member (`ic_core::plan::ingress` decides; this applies): after a
//! converge, each online member gets its forwarder, holding the project's ingress ports and
//! connecting each to a running replica of its service. Idempotent: nothing is changed when
//! the forwarders already match.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{LazyLock, Mutex};

use anyhow::Context as _;
use ic_core::keys::{LABEL_PROJECT, LABEL_RETIRED, LABEL_SERVICE, LABEL_VERSION};
use ic_core::plan::ingress::{
    self, Existing, Forwarder, LABEL_INGRESS, LABEL_INGRESS_KEY, LABEL_INGRESS_PORTS, Replica,
};
use ic_core::plan::{COMMAND_PATH, ImageSource, InstancePlan, Subnet};
use ic_incus::{Instance, InstancePut};

use super::Target;

/// PID 1 of a forwarder: nothing to do but stay up (Incus's forkproxy does the forwarding).
const KEEP_ALIVE: &str =
    "trap 'exit 0' TERM INT HUP QUIT USR1 USR2 PWR; while :; do sleep 3600 & wait $!; done";

/// Replicas this process is stopping, per Incus project: no forwarder sends to them (until
/// they are ready again, [`join`]).
static LEAVING: LazyLock<Mutex<BTreeSet<(String, String)>>> = LazyLock::new(Mutex::default);
/// One forwarder change at a time in this process (a batch stops replicas in parallel).
static TURN: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(tokio::sync::Mutex::default);

fn leaving() -> std::sync::MutexGuard<'static, BTreeSet<(String, String)>> {
    LEAVING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Before replica `name` stops (`execute::before_stop`, every executor): the forwarders that
/// send a published port to it are pointed at another running replica of its service, when
/// one runs, so that the port keeps answering on every member (a drain's replacement, a
/// start-first update's new replica, the other replicas of a scale-down). Nothing when its
/// service publishes no ingress port.
pub async fn leave(t: &Target, name: &str) {
    let Some(compose) = meshed(t, name).await else {
        return;
    };
    let project = t.project.project().unwrap_or("default").to_string();
    leaving().insert((project, name.to_string()));
    follow(t, &compose).await;
}

/// Once replica `name` is ready (`execute::after_ready`): forwarders left without a running
/// replica of its service (a stop-first update of a single replica) send to it.
pub async fn join(t: &Target, name: &str) {
    let project = t.project.project().unwrap_or("default").to_string();
    leaving().remove(&(project, name.to_string()));
    if let Some(compose) = meshed(t, name).await {
        follow(t, &compose).await;
    }
}

/// The compose project of replica `name` when its ingress ports go through forwarders.
async fn meshed(t: &Target, name: &str) -> Option<String> {
    if !t.clustered {
        return None;
    }
    let i = t.project.instance(name).await.ok()?;
    if !i.config.contains_key(LABEL_INGRESS_PORTS) {
        return None;
    }
    i.config.get(LABEL_PROJECT).cloned()
}

/// Existing forwarders pointed away from the replicas leaving (none made or removed); each
/// change on a line of stderr, a failure a warning (the run goes on).
async fn follow(t: &Target, compose: &str) {
    let _turn = TURN.lock().await;
    let project = t.project.project().unwrap_or("default");
    let away: BTreeSet<String> = leaving()
        .iter()
        .filter(|(p, _)| p == project)
        .map(|(_, n)| n.clone())
        .collect();
    match reconcile_with(t, compose, &away, true, true).await {
        Ok(lines) => {
            for l in lines {
                eprintln!("[~] {l}");
            }
        }
        Err(e) => eprintln!("warning: published ports: {e:#}"),
    }
}

/// Brings the forwarders of compose project `compose` in line with its replicas; returns a
/// line per change. On a single server nothing is made (replicas publish their own ports).
/// `leaving`: replicas about to be stopped or removed, taken as not running; with `only_update`
/// (before a plan runs) existing forwarders are only pointed away from them, none is made or
/// removed.
pub async fn reconcile(
    t: &Target,
    compose: &str,
    leaving: &BTreeSet<String>,
    only_update: bool,
) -> anyhow::Result<Vec<String>> {
    reconcile_with(t, compose, leaving, only_update, false).await
}

/// [`reconcile`]; `sticky`: a forwarder keeps a target that still runs (within a run, as
/// replicas leave and join: no proxy restarted for nothing), else each goes to its member's
/// own replica where one runs (after a run: the load spread by member again).
async fn reconcile_with(
    t: &Target,
    compose: &str,
    leaving: &BTreeSet<String>,
    only_update: bool,
    sticky: bool,
) -> anyhow::Result<Vec<String>> {
    let instances = match t.project.instances().await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e).context("cannot list instances"),
    };
    let ours: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.config.get(LABEL_PROJECT).map(String::as_str) == Some(compose))
        .collect();
    let (forwarders, replicas): (Vec<&Instance>, Vec<&Instance>) = ours
        .into_iter()
        .partition(|i| ingress::is_forwarder(&i.config));
    let wanted = if t.clustered {
        plan(t, compose, &replicas, &forwarders, leaving, sticky).await?
    } else {
        Vec::new()
    };
    let mut lines = Vec::new();
    // Forwarders no longer wanted (member gone, no ingress port left).
    for f in forwarders.iter().filter(|_| !only_update) {
        if !wanted.iter().any(|w| w.0.name == f.name) {
            super::execute::remove(t, &f.name, 0)
                .await
                .with_context(|| format!("removing forwarder {}", f.name))?;
            lines.push(format!(
                "{} removed on {}: no published port to forward there",
                f.name, f.location
            ));
        }
    }
    for (w, image) in &wanted {
        let have = forwarders.iter().find(|f| f.name == w.name);
        match have {
            Some(f)
                if f.config.get(LABEL_INGRESS_KEY) == Some(&w.key()) && f.location == w.member =>
            {
                let mut devices = w.nic_devices();
                devices.extend(w.ports.clone());
                if f.devices != devices {
                    let put = InstancePut {
                        architecture: f.architecture.clone(),
                        config: f.config.clone(),
                        devices,
                        ephemeral: f.ephemeral,
                        profiles: f.profiles.clone(),
                        stateful: f.stateful,
                        description: f.description.clone(),
                    };
                    super::execute::fenced(t)?;
                    t.project
                        .update_instance(&f.name, &put)
                        .await?
                        .wait()
                        .await
                        .with_context(|| format!("updating forwarder {}", f.name))?;
                    lines.push(format!(
                        "{} updated on {}: {}",
                        f.name,
                        w.member,
                        targets(w)
                    ));
                }
                if !f.is_running() {
                    super::execute::start(t, &f.name).await?;
                    lines.push(format!("{} started on {}", f.name, w.member));
                }
            }
            _ if only_update => {}
            _ => {
                if let Some(f) = have {
                    super::execute::remove(t, &f.name, 0).await?;
                }
                let Some((image, oci)) = image else {
                    continue;
                };
                super::execute::create(t, &instance_plan(compose, w, image, *oci))
                    .await
                    .with_context(|| format!("creating forwarder {} on {}", w.name, w.member))?;
                lines.push(format!(
                    "{} created on {}: {}",
                    w.name,
                    w.member,
                    targets(w)
                ));
            }
        }
    }
    Ok(lines)
}

/// What each published port reaches.
fn targets(w: &Forwarder) -> String {
    if w.targets.is_empty() {
        return "no running replica to forward to".into();
    }
    w.targets
        .iter()
        .map(|(d, r)| format!("{} -> {r}", d.trim_start_matches("port-")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The forwarders wanted, each with the image to make it from (a running replica's, when one
/// is known) and whether that is an OCI image.
#[allow(clippy::type_complexity)]
async fn plan(
    t: &Target,
    compose: &str,
    replicas: &[&Instance],
    forwarders: &[&Instance],
    leaving: &BTreeSet<String>,
    sticky: bool,
) -> anyhow::Result<Vec<(Forwarder, Option<(String, bool)>)>> {
    if !replicas
        .iter()
        .any(|i| i.config.contains_key(LABEL_INGRESS_PORTS))
    {
        return Ok(Vec::new());
    }
    // The project's spanning bridges and their subnets.
    let mut subnets = BTreeMap::new();
    for n in t
        .networks
        .networks()
        .await
        .context("cannot list networks")?
    {
        if n.config.get(LABEL_PROJECT).map(String::as_str) != Some(compose)
            || !n.config.keys().any(|k| k.starts_with("tunnel."))
        {
            continue;
        }
        if let Some(s) = n
            .config
            .get("ipv4.address")
            .and_then(|a| Subnet::parse(a, a.split('/').next()).ok())
        {
            subnets.insert(n.name.clone(), s);
        }
    }
    let members: Vec<String> = match t.base.cluster_members().await {
        Ok(m) => {
            let mut online: Vec<String> = m
                .into_iter()
                .filter(|m| m.status.eq_ignore_ascii_case("online"))
                .map(|m| m.server_name)
                .collect();
            online.sort();
            online
        }
        Err(e) => return Err(e).context("cannot list cluster members"),
    };
    let seen: Vec<Replica> = replicas
        .iter()
        .filter(|i| {
            i.config.contains_key(LABEL_SERVICE)
                && !i.config.contains_key(LABEL_RETIRED)
                && !ic_core::plan::is_oneoff(&i.config)
        })
        .map(|i| Replica {
            name: i.name.clone(),
            service: i.config[LABEL_SERVICE].clone(),
            member: i.location.clone(),
            running: i.is_running() && !leaving.contains(&i.name),
            ports: ingress::decode(
                i.config
                    .get(LABEL_INGRESS_PORTS)
                    .map(String::as_str)
                    .unwrap_or_default(),
            ),
            addresses: i
                .devices
                .values()
                .filter(|d| d.get("type").map(String::as_str) == Some("nic"))
                .filter_map(|d| {
                    let ip: Ipv4Addr = d.get("ipv4.address")?.parse().ok()?;
                    Some((d.get("network")?.clone(), ip))
                })
                .collect(),
        })
        .collect();
    let existing: Existing = forwarders
        .iter()
        .map(|f| {
            (
                f.location.clone(),
                ingress::parse_key(
                    f.config
                        .get(LABEL_INGRESS_KEY)
                        .map(String::as_str)
                        .unwrap_or_default(),
                )
                .into_iter()
                .collect(),
            )
        })
        .collect();
    let image = replicas
        .iter()
        .filter(|i| i.is_running() && i.config.contains_key(LABEL_INGRESS_PORTS))
        .find_map(|i| {
            let f = i.config.get("volatile.base_image")?.clone();
            let oci = i.config.keys().any(|k| k.starts_with("oci."))
                || i.config.get("volatile.container.oci").map(String::as_str) == Some("true")
                || i.config.get("image.type").map(String::as_str) == Some("oci");
            Some((f, oci))
        });
    let current: ingress::Current = forwarders
        .iter()
        .filter(|_| sticky)
        .map(|f| (f.location.clone(), ingress::connected(&f.devices)))
        .collect();
    Ok(
        ingress::forwarders(&members, &seen, &subnets, &existing, &current)
            .into_iter()
            .filter(|f| !f.nics.is_empty())
            .map(|f| (f, image.clone()))
            .collect(),
    )
}

/// The instance of a forwarder: made from a replica's image, with a keep-alive PID 1 (a shell
/// loop: system containers run it through `lxc.init.cmd`, OCI ones as their entrypoint), its
/// addresses set by LXC and its proxy devices.
fn instance_plan(compose: &str, w: &Forwarder, image: &str, oci: bool) -> InstancePlan {
    let mut config = BTreeMap::from([
        (LABEL_PROJECT.to_string(), compose.to_string()),
        (LABEL_INGRESS.to_string(), w.member.clone()),
        (LABEL_INGRESS_KEY.to_string(), w.key()),
        (
            LABEL_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    let mut raw = w.raw_lxc();
    let mut command = None;
    if oci {
        let quoted = shlex::try_quote(KEEP_ALIVE).map(|q| q.into_owned());
        config.insert(
            "oci.entrypoint".into(),
            format!("/bin/sh -c {}", quoted.unwrap_or_default()),
        );
    } else {
        raw.push(format!("lxc.init.cmd = /bin/sh {COMMAND_PATH}"));
        command = Some(format!(
            "# written by incus-compose: PID 1 of a forwarder of published ports\n{KEEP_ALIVE}\n"
        ));
    }
    config.insert("raw.lxc".into(), raw.join("\n"));
    let mut devices = w.nic_devices();
    devices.extend(w.ports.clone());
    InstancePlan {
        name: w.name.clone(),
        service: "published ports".into(),
        slot: String::new(),
        member: w.member.clone(),
        old_member: None,
        old_name: None,
        image: ImageSource::Local(image.to_string()),
        image_fingerprint: Some(image.to_string()),
        template_image: image.to_string(),
        config,
        devices,
        command,
        start: true,
        stop_timeout: 0,
        reason: "forwards published ports".into(),
        files: Vec::new(),
        anonymous_volumes: Vec::new(),
    }
}
