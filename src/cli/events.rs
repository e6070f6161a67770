//! `incus-compose events [--json] [SERVICE...]`: the project's instance lifecycle events, live,
//! one line each, from Incus's event stream (`/1.0/events`, which carries every cluster
//! member's events). Only instances of this compose project are shown (their labels are read
//! when an event names an instance not seen yet).
//!
//! A line: `TIME instance ACTION NAME (service=S, member=M)`, ACTION being Incus's lifecycle
//! action without its `instance-` prefix (`created`, `started`, `stopped`, `shutdown`,
//! `restarted`, `paused`, `resumed`, `deleted`, `updated`, `exec`, ...). With `--json`, one
//! JSON object per line: `time`, `type`, `action`, `id`, `service`, `attributes`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use ic_core::plan::is_oneoff;
use ic_incus::EventFilter;

use super::GlobalArgs;
use super::project::{Context, block_on};
use ic_core::keys::LABEL_SERVICE;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// One JSON object per event
    #[arg(long)]
    pub json: bool,
    /// Only these services
    pub services: Vec<String>,
}

/// What is known of an instance: ours (with its service and whether it is a one-off) or not.
type Known = BTreeMap<String, Option<(String, bool)>>;

pub fn run(global: &GlobalArgs, args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    super::select::check_services(&ctx, &args.services)?;
    let client = super::select::client(&ctx);
    block_on(async {
        let mut filter = EventFilter {
            types: vec!["lifecycle".into()],
            all_projects: false,
        };
        // Before the first `up` the Incus project does not exist: listen to every project
        // (only this one's events are shown) until it does.
        let mut stream = match client.events(&filter).await {
            Err(e) if e.is_not_found() => {
                filter.all_projects = true;
                client.events(&filter).await
            }
            other => other,
        }
        .context("cannot open the Incus event stream")?;
        let mut known: Known = BTreeMap::new();
        for i in super::select::instances(&ctx, &[], true).await? {
            let service = i.config.get(LABEL_SERVICE).cloned().unwrap_or_default();
            known.insert(i.name.clone(), Some((service, is_oneoff(&i.config))));
        }
        let mut out = std::io::stdout();
        while let Some(event) = stream.next_event().await {
            let event = event.context("reading the Incus event stream")?;
            let Some(l) = event.lifecycle() else {
                continue;
            };
            let Some(action) = l.action.strip_prefix("instance-") else {
                continue;
            };
            if !event.project.is_empty() && event.project != ctx.incus_project {
                continue;
            }
            let name = l.object_name();
            if !known.contains_key(&name) {
                let ours = match client.instance(&name).await {
                    Ok(i) if crate::engine::is_ours(&i.config, &ctx.project.name) => Some((
                        i.config.get(LABEL_SERVICE).cloned().unwrap_or_default(),
                        is_oneoff(&i.config),
                    )),
                    _ => None,
                };
                known.insert(name.clone(), ours);
            }
            let Some(Some((service, oneoff))) = known.get(&name).cloned() else {
                continue;
            };
            if !args.services.is_empty() && !args.services.contains(&service) {
                continue;
            }
            let line = if args.json {
                serde_json::json!({
                    "time": event.timestamp,
                    "type": "instance",
                    "action": action,
                    "id": name,
                    "service": service,
                    "attributes": {
                        "name": name,
                        "member": event.location,
                        "project": event.project,
                        "oneoff": oneoff,
                        "incus_action": l.action,
                    },
                })
                .to_string()
            } else {
                format!(
                    "{} instance {action} {name} (service={service}, member={})",
                    event.timestamp, event.location
                )
            };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // The reader went away (a closed pipe): stop quietly.
                return Ok(ExitCode::SUCCESS);
            }
            if action == "deleted" {
                known.remove(&name);
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}
