//! `incus-compose run [OPTIONS] SERVICE [COMMAND...]`: a one-off instance of a service.
//!
//! How it maps onto Incus:
//! - The one-off is made from the service's planned instance template (image, config,
//!   devices, networks, volumes, secrets and files), named `SERVICE-run-XXXXXX` (or
//!   `--name`), labelled [`LABEL_ONEOFF`] and without a replica slot, so `up`, `scale` and
//!   `ps` (without `-a`) never count it as a replica. Its ports are published only with
//!   `--service-ports` or `--publish`.
//! - What the service depends on is brought up first, unless `--no-deps`: through the one
//!   converge path as `up` brings it up (`engine::converge`, limited to the dependencies and
//!   the project, networks and volumes; under the project lock; recorded as a revision of
//!   those services, cause `run SERVICE`; `depends_on` conditions are waited for).
//! - Its PID 1 is a small keep-alive shell (Incus 6.0 system containers have no way to run
//!   a command as PID 1 and report its exit code); the command (entrypoint + command, or
//!   the ones given) runs through the exec API as `exec` runs it: its output and exit code
//!   are incus-compose's, with a terminal when stdin and stdout are terminals (unless `-T`),
//!   as the service's `user`/`working_dir` unless `-u`/`-w`.
//! - Afterwards the one-off is stopped; with `--rm` it is removed with its anonymous
//!   volumes. With `-d` the command is started and the one-off's name printed; it stays
//!   running until `rm -s` or `down`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use ic_core::plan::{
    Action, Desired, DiffOptions, ImageSource, InstancePlan, Plan, PlanOptions, Stage, desired,
};

use super::GlobalArgs;
use super::project::{Context, block_on};
use super::session::{Session, exec_in, exit_code, parse_env};
use crate::engine::{self, converge, health};
use ic_core::keys::{LABEL_ONEOFF, LABEL_SERVICE};

#[derive(Debug, Args)]
#[command(
    after_help = "The one-off instance runs a keep-alive PID 1 and the command through Incus exec; the command's exit code is incus-compose's. `-p` is the global --project-name before `run`, and --publish after it (as docker compose)."
)]
pub struct RunArgs {
    /// Remove the one-off instance (and its anonymous volumes) when the command ends
    #[arg(long)]
    pub rm: bool,
    /// Start the command in the background and print the one-off instance's name
    #[arg(short = 'd', long, conflicts_with = "rm")]
    pub detach: bool,
    /// Set an environment variable (KEY=VAL, or KEY to pass the local value; repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// Working directory of the command
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user: uid[:gid] or name[:group]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Do not start the services it depends on
    #[arg(long)]
    pub no_deps: bool,
    /// Override the service's entrypoint (a shell-like string; the service's command is then
    /// dropped unless COMMAND is given)
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Name of the one-off instance (default: SERVICE-run-XXXXXX)
    #[arg(long)]
    pub name: Option<String>,
    /// Do not allocate a terminal (the default when stdin or stdout is not a terminal)
    #[arg(short = 'T', long = "no-TTY", visible_alias = "no-tty")]
    pub no_tty: bool,
    /// Keep stdin open (always the case; accepted for docker compose compatibility)
    #[arg(short = 'i', long, hide = true)]
    pub interactive: bool,
    /// Publish a port of the one-off: [IP:]HOST:CONTAINER[/PROTO] (repeatable; `-p` after
    /// `run` means --publish, as in docker compose)
    #[arg(long = "publish", value_name = "PORTS")]
    pub publish: Vec<String>,
    /// Publish the service's own ports (they must be free: the replicas hold them)
    #[arg(long)]
    pub service_ports: bool,
    /// The service
    pub service: String,
    /// The command and its arguments (default: the service's)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Options of `run` that take a value (their value is not the SERVICE).
const VALUE_OPTIONS: [&str; 10] = [
    "-e",
    "--env",
    "-w",
    "--workdir",
    "-u",
    "--user",
    "--entrypoint",
    "--name",
    "--publish",
    "-p",
];

/// `-p` is the global `--project-name`; after `run` and before its SERVICE it means
/// `--publish`, as with docker compose (`incus-compose -p proj run -p 8080:80 web`). Rewrites
/// those, before clap sees the arguments; the command after SERVICE is left alone.
pub fn rewrite_publish(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut args = args.into_iter();
    if let Some(program) = args.next() {
        out.push(program);
    }
    // Before the subcommand, then in `run` before SERVICE, then done.
    let (mut in_run, mut found, mut done, mut skip_value) = (false, false, false, false);
    for arg in args {
        let text = arg.to_str().map(str::to_string);
        match text.as_deref() {
            _ if done => {}
            None => {}
            Some(_) if skip_value => skip_value = false,
            Some(t) if !found => {
                if super::shared::GLOBAL_VALUE_OPTIONS.contains(&t) {
                    skip_value = true;
                } else if !t.starts_with('-') {
                    found = true;
                    in_run = t == "run";
                    done = !in_run;
                }
            }
            Some("--") => done = true,
            Some("-p") if in_run => {
                out.push("--publish".into());
                skip_value = true;
                continue;
            }
            Some(t) if t.starts_with("-p") && !t.starts_with("--") && in_run => {
                out.push(format!("--publish={}", &t[2..]).into());
                continue;
            }
            Some(t) if VALUE_OPTIONS.contains(&t) => skip_value = true,
            Some(t) if !t.starts_with('-') => done = true,
            Some(_) => {}
        }
        out.push(arg);
    }
    out
}

/// The keep-alive PID 1 of a one-off: ends cleanly on the usual stop signals.
const KEEP_ALIVE: &str =
    "trap 'exit 0' TERM INT HUP QUIT USR1 USR2 PWR; while :; do sleep 3600 & wait $!; done";

/// `[IP:]HOST:CONTAINER[/PROTO]` -> a proxy device (name, settings).
fn publish_device(spec: &str) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if proto != "tcp" && proto != "udp" {
        bail!("--publish {spec:?}: protocol must be tcp or udp");
    }
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [c, h] => ("0.0.0.0", *h, *c),
        [c, h, ip] => (*ip, *h, *c),
        _ => bail!("--publish {spec:?}: expected [IP:]HOST:CONTAINER[/PROTO]"),
    };
    let num = |p: &str| -> anyhow::Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("--publish {spec:?}: {p:?} is not a port number"))
    };
    let (host, container) = (num(host)?, num(container)?);
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Ok((
        format!("port-{proto}-{host}"),
        BTreeMap::from([
            ("type".to_string(), "proxy".to_string()),
            ("listen".to_string(), format!("{proto}:{ip}:{host}")),
            (
                "connect".to_string(),
                format!("{proto}:127.0.0.1:{container}"),
            ),
        ]),
    ))
}

/// The words the one-off runs: the entrypoint (`--entrypoint`, else the service's) followed
/// by COMMAND, else by the service's command (dropped when `--entrypoint` is given, as docker
/// does).
fn command_words(
    service: &ic_compose::model::Service,
    entrypoint: Option<&str>,
    command: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut words = match entrypoint {
        Some(e) => {
            shlex::split(e).ok_or_else(|| anyhow!("--entrypoint {e:?}: unbalanced quotes"))?
        }
        None => service.entrypoint.clone().unwrap_or_default(),
    };
    if !command.is_empty() {
        words.extend(command.iter().cloned());
    } else if entrypoint.is_none() {
        words.extend(service.command.clone().unwrap_or_default());
    }
    Ok(words)
}

/// A name for a one-off: `BASE-run-` and 6 hex digits from the clock and the pid.
fn oneoff_name(base: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0);
    let mixed = nanos ^ (u64::from(std::process::id()) << 12);
    format!("{base}-run-{:06x}", mixed & 0xff_ffff)
}

/// The services the one-off of `service` depends on, directly or not (none with `no_deps`):
/// what its run converges first.
fn dependencies(d: &Desired, service: &str, no_deps: bool) -> BTreeSet<String> {
    if no_deps {
        return BTreeSet::new();
    }
    let mut deps = converge::with_dependencies(d, &BTreeSet::from([service.to_string()]));
    deps.remove(service);
    deps
}

pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    let Some(service) = ctx.project.services.get(&args.service) else {
        let known: Vec<&str> = ctx.project.services.keys().map(String::as_str).collect();
        bail!(
            "no service {:?} in compose project {} (services: {})",
            args.service,
            ctx.project.name,
            known.join(", ")
        );
    };
    let words = command_words(service, args.entrypoint.as_deref(), &args.command)?;
    let environment = parse_env(&args.env)?;
    let mut published = Vec::new();
    for p in &args.publish {
        published.push(publish_device(p)?);
    }
    let tty = !args.no_tty
        && !args.detach
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    // The command's output is ours: progress lines go to stderr.
    engine::lines_to_stderr();
    let opts = PlanOptions {
        incus_project: Some(ctx.incus_project.clone()),
        services: vec![args.service.clone()],
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    let client = ctx.base.with_project(&ctx.incus_project);
    block_on(async {
        // The dependencies are brought up as `up` brings them, through the one converge path
        // (engine::converge): under the project lock (the Incus project made first when it is
        // missing), planned from what Incus holds once it is taken, recorded as a revision
        // of those services. The lock is given back once the one-off exists: it may run for
        // hours.
        let lock = ctx.lock_for_up().await?;
        let mut obs = engine::observe_fresh(&ctx.base, &ctx.incus_project).await?;
        let selected =
            ic_core::plan::selected_services(&ctx.project, &opts).map_err(|e| anyhow!("{e}"))?;
        if obs.facts.oci {
            let prepared =
                engine::prepare_images(&ctx.base, &ctx.project, &selected, &mut obs, None, false)
                    .await?;
            for l in &prepared.lines {
                eprintln!("{l}");
            }
        }
        // A Docker image service run without any command runs the image's own entrypoint and
        // cmd: have them read too (as for a service that sets only `command`).
        let mut reading = ctx.project.clone();
        if words.is_empty()
            && let Some(s) = reading.services.get_mut(&args.service)
        {
            s.command = Some(Vec::new());
        }
        for w in engine::read_image_processes(&reading, &mut obs.facts, &obs.remotes).await {
            eprintln!("warning: {w}");
        }
        let d = desired(&ctx.project, &obs.facts, &opts).map_err(|e| anyhow!("{e}"))?;
        // Planned whole (read-only) for where the service's first replica would go.
        let plan = ic_core::plan::diff(&d, &obs.observed, &DiffOptions::default())
            .map_err(|e| anyhow!("{e}"))?;
        let t = d
            .services
            .iter()
            .find(|t| t.service == args.service)
            .ok_or_else(|| anyhow!("service {:?} was not planned", args.service))?;
        let oci = matches!(t.image, ImageSource::Oci { .. });
        if words.is_empty() && !(oci && obs.facts.oci_images.contains_key(&t.image.to_string())) {
            bail!(
                "service {:?} has no command or entrypoint: give the command to run (`incus-compose run {} COMMAND...`)",
                args.service,
                args.service
            );
        }
        // Where it goes: where the scheduler puts the service's first replica (its
        // constraints and local volumes hold there), else any member.
        let member = plan
            .placement
            .iter()
            .find(|(_, _, s)| s == &args.service)
            .map(|(m, _, _)| m.clone())
            .or_else(|| {
                obs.observed
                    .instances
                    .iter()
                    .find(|i| i.label(LABEL_SERVICE) == Some(args.service.as_str()))
                    .map(|i| i.location.clone())
            })
            .or_else(|| {
                obs.observed
                    .members
                    .iter()
                    .find(|m| m.online)
                    .map(|m| m.name.clone())
            })
            .unwrap_or_default();
        let name = args
            .name
            .clone()
            .unwrap_or_else(|| oneoff_name(&t.base_name));
        if let Some(i) = obs.observed.instances.iter().find(|i| i.name == name) {
            bail!(
                "an instance named {name} already exists on {}; choose another --name",
                i.location
            );
        }
        let mut config = t.config.clone();
        // A one-off is no replica for the forwarders of published ports: with
        // --service-ports it publishes the service's ingress ports itself, as proxy devices.
        let ingress_ports = ic_core::plan::ingress::as_proxies(&config);
        config.remove(ic_core::plan::ingress::LABEL_INGRESS_PORTS);
        config.insert(LABEL_ONEOFF.into(), "true".into());
        let mut command = None;
        let mut exec_words = words.clone();
        if oci {
            // PID 1 is the keep-alive; the command (or the image's own) runs through exec.
            if exec_words.is_empty()
                && let Some(p) = obs.facts.oci_images.get(&t.image.to_string())
            {
                exec_words = p.entrypoint.iter().chain(&p.cmd).cloned().collect();
            }
            config.insert(
                "oci.entrypoint".into(),
                format!("/bin/sh -c {}", shlex::try_quote(KEEP_ALIVE)?),
            );
        } else {
            let mut raw: Vec<String> = config
                .get("raw.lxc")
                .map(|r| {
                    r.lines()
                        .filter(|l| !l.trim_start().starts_with("lxc.init.cmd"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            raw.push(format!(
                "lxc.init.cmd = /bin/sh {}",
                ic_core::plan::COMMAND_PATH
            ));
            config.insert("raw.lxc".into(), raw.join("\n"));
            command = Some(format!(
                "# written by incus-compose run: keeps the one-off instance up while its command runs through exec\n{KEEP_ALIVE}\n"
            ));
        }
        let mut devices = t.devices.clone();
        if args.service_ports {
            devices.extend(ingress_ports);
        } else {
            devices.retain(|_, d| d.get("type").map(String::as_str) != Some("proxy"));
        }
        devices.extend(published.iter().cloned());
        let oneoff = InstancePlan {
            name: name.clone(),
            service: args.service.clone(),
            slot: String::new(),
            member,
            old_member: None,
            old_name: None,
            image: t.image.clone(),
            image_fingerprint: t.image_fingerprint.clone(),
            template_image: t.image.to_string(),
            config,
            devices,
            command,
            start: true,
            stop_timeout: t.stop_timeout,
            reason: "run".into(),
            files: t.files.clone(),
            anonymous_volumes: t.anonymous_volumes.clone(),
        };
        let gate = if args.no_deps {
            None
        } else {
            Some(health::Gate::new(client.clone(), &ctx.project, None)?)
        };
        // First what the one-off needs, converged as `up` converges it: the project, networks
        // and volumes, and (unless --no-deps) the services it depends on, recorded as a
        // revision of those services (so `watch` keeps them as they are now); never the
        // service's own replicas.
        let deps = dependencies(&d, &args.service, args.no_deps);
        let done = converge::converge(
            &ctx.base,
            &ctx.incus_project,
            &ctx.project.name,
            obs,
            converge::Source::File(Box::new(d)),
            &converge::Options {
                only: Some(deps.clone()),
                ..Default::default()
            },
            &converge::Policy {
                lock: lock.as_ref(),
                record: (!deps.is_empty()).then(|| format!("run {}", args.service)),
                keep: engine::revisions::keep(Some(&ctx.project)),
                parallel: 8,
                gate: gate.as_ref(),
            },
        )
        .await?;
        if let Some((n, result)) = done.revision {
            eprintln!("revision {n}: {result}");
        }
        let mut outcome = done.outcome.unwrap_or_default();
        if outcome.ok() {
            // Then the one-off, once its dependencies' `depends_on` conditions hold.
            let one_off = Plan::of(
                &ctx.incus_project,
                vec![Stage {
                    title: "one-off".into(),
                    actions: vec![Action::Create(Box::new(oneoff))],
                }],
            );
            outcome =
                engine::execute_gated(&ctx.target(&done.obs), &one_off, 1, gate.as_ref()).await;
        }
        drop(lock);
        if !outcome.ok() {
            outcome.report_failures("run", None);
            // A half-made one-off is not left behind.
            if let Ok(i) = client.instance(&name).await {
                let _ =
                    super::shared::remove_instance(&client, &i, &ctx.project.name, 0, true).await;
            }
            return Ok(ExitCode::FAILURE);
        }
        let session = Session {
            command: &exec_words,
            environment,
            workdir: args.workdir.clone().or_else(|| service.working_dir.clone()),
            user: args.user.clone().or_else(|| service.user.clone()),
            tty,
            detach: args.detach,
        };
        let result = exec_in(&client, &name, session).await;
        if args.detach {
            result?;
            println!("{name}");
            return Ok(ExitCode::SUCCESS);
        }
        let cleanup = async {
            let instance = client.instance(&name).await?;
            if args.rm {
                super::shared::remove_instance(&client, &instance, &ctx.project.name, 0, true).await
            } else {
                client
                    .stop_instance(&name, -1, true)
                    .await
                    .with_context(|| format!("stopping {name}"))
            }
        }
        .await;
        if let Err(e) = cleanup {
            eprintln!(
                "warning: one-off instance {name}: {e:#}; remove it with `incus-compose rm -s -f {}`",
                args.service
            );
        }
        Ok(exit_code(result?))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rewrite_publish(args.iter().map(std::ffi::OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn dash_p_after_run_publishes_until_the_service_and_names_the_project_before() {
        assert_eq!(
            rewrite(&[
                "ic", "-p", "run", "run", "-p", "80:80", "-e", "-p", "web", "ls", "-p"
            ]),
            [
                "ic",
                "-p",
                "run",
                "run",
                "--publish",
                "80:80",
                "-e",
                "-p",
                "web",
                "ls",
                "-p"
            ]
        );
        assert_eq!(
            rewrite(&["ic", "run", "-p8080:80", "web"]),
            ["ic", "run", "--publish=8080:80", "web"]
        );
        assert_eq!(rewrite(&["ic", "up", "-p", "x"]), ["ic", "up", "-p", "x"]);
    }

    #[test]
    fn publish_reads_host_container_ip_and_protocol() {
        let (name, d) = publish_device("8080:80").unwrap();
        assert_eq!(name, "port-tcp-8080");
        assert_eq!(d["listen"], "tcp:0.0.0.0:8080");
        assert_eq!(d["connect"], "tcp:127.0.0.1:80");
        let (_, d) = publish_device("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(d["listen"], "udp:127.0.0.1:5353");
        assert!(publish_device("80").is_err());
        assert!(publish_device("x:80").is_err());
        assert!(publish_device("1:2/sctp").is_err());
    }

    #[test]
    fn command_replaces_the_command_and_entrypoint_drops_it() {
        let mut s = ic_compose::model::Service {
            entrypoint: Some(vec!["/entry".into()]),
            command: Some(vec!["serve".into()]),
            ..Default::default()
        };
        assert_eq!(command_words(&s, None, &[]).unwrap(), ["/entry", "serve"]);
        assert_eq!(
            command_words(&s, None, &["migrate".into()]).unwrap(),
            ["/entry", "migrate"]
        );
        assert_eq!(
            command_words(&s, Some("sh -c 'echo a b'"), &[]).unwrap(),
            ["sh", "-c", "echo a b"]
        );
        s.entrypoint = None;
        assert_eq!(command_words(&s, None, &[]).unwrap(), ["serve"]);
    }

    #[test]
    fn a_run_converges_only_its_dependencies_and_never_removes_a_network() {
        let create = |service: &str| {
            Action::Create(Box::new(InstancePlan {
                name: format!("{service}-1"),
                service: service.into(),
                slot: "1".into(),
                member: "node1".into(),
                old_member: None,
                old_name: None,
                image: ImageSource::Local("img".into()),
                image_fingerprint: None,
                template_image: "img".into(),
                config: BTreeMap::new(),
                devices: Default::default(),
                command: None,
                start: true,
                stop_timeout: 10,
                reason: String::new(),
                files: Vec::new(),
                anonymous_volumes: Vec::new(),
            }))
        };
        let plan = Plan {
            incus_project: "p".into(),
            stages: vec![
                Stage {
                    title: "networks".into(),
                    actions: vec![Action::RemoveNetwork { name: "n".into() }],
                },
                Stage {
                    title: "removals".into(),
                    actions: vec![Action::Remove {
                        name: "db-3".into(),
                        service: "db".into(),
                        member: "node1".into(),
                        timeout: 10,
                        reason: "scale".into(),
                    }],
                },
                Stage {
                    title: "level 0".into(),
                    actions: vec![create("db")],
                },
                Stage {
                    title: "level 1".into(),
                    actions: vec![create("app")],
                },
            ],
            unchanged: Vec::new(),
            placement: Vec::new(),
            pending: Vec::new(),
            rollouts: Default::default(),
            warnings: Vec::new(),
        };
        // A run converges its dependencies as `up db` would (a surplus db replica goes), and
        // never removes a network or touches the service's own replicas.
        let deps = BTreeSet::from(["db".to_string()]);
        let with_deps = converge::restrict(plan.clone(), &deps, &deps);
        let objects: Vec<String> = with_deps.actions().map(Action::object).collect();
        assert_eq!(objects, ["db-3", "db-1"]);
        let none = BTreeSet::new();
        let no_deps = converge::restrict(plan, &none, &none);
        assert!(no_deps.is_empty(), "{:?}", no_deps.stages);
    }
}
