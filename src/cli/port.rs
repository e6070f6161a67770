//! `incus-compose port SERVICE PRIVATE_PORT [--protocol tcp|udp] [--index N]`: the address
//! a replica's port is published on (its `proxy` device's listen address). A port published
//! on all addresses (`0.0.0.0`) of a cluster member is printed with that member's address,
//! where it can be reached; on a standalone server as docker prints it.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use ic_compose::model::DeployMode;

use super::GlobalArgs;
use super::project::{Context, block_on};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    /// Protocol of the port
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,
    /// Which replica: N for `SERVICE-N`
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub index: usize,
    /// The service
    pub service: String,
    /// The port inside the replica
    pub private_port: u16,
}

/// The listen address (`HOST:PORT`) of the proxy device that connects to `port`/`proto`.
fn published(devices: &ic_incus::Devices, proto: &str, port: u16) -> Option<(String, String)> {
    devices.values().find_map(|d| {
        if d.get("type").map(String::as_str) != Some("proxy") {
            return None;
        }
        let (cproto, caddr) = d.get("connect")?.split_once(':')?;
        let cport = caddr.rsplit(':').next()?;
        if cproto != proto || cport.parse::<u16>().ok()? != port {
            return None;
        }
        let (lproto, laddr) = d.get("listen")?.split_once(':')?;
        if lproto != proto {
            return None;
        }
        let (host, lport) = laddr.rsplit_once(':')?;
        Some((host.to_string(), lport.to_string()))
    })
}

pub fn run(global: &GlobalArgs, args: &PortArgs) -> anyhow::Result<ExitCode> {
    let ctx = Context::new(global)?;
    super::select::check_services(&ctx, std::slice::from_ref(&args.service))?;
    let is_global = ctx.project.services[&args.service]
        .deploy
        .as_ref()
        .is_some_and(|d| d.mode == DeployMode::Global);
    let proto = match args.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    block_on(async {
        super::select::check_services(&ctx, std::slice::from_ref(&args.service))?;
        let reached = super::select::reach(&ctx, &[], false).await?;
        // The replica asked for is on a member that cannot be asked: say so, naming both.
        if !is_global
            && let Some(u) = reached.unreached.iter().find(|u| {
                u.service.as_deref() == Some(args.service.as_str())
                    && u.slot.as_deref() == Some(args.index.to_string().as_str())
            })
        {
            bail!(
                "{} (replica {} of {}) is on cluster member {}, which is offline or does not answer: try another replica (--index) or once {} is back",
                u.name,
                args.index,
                args.service,
                u.member,
                u.member
            );
        }
        let instances: Vec<_> = reached
            .instances
            .into_iter()
            .filter(|i| !ic_core::plan::is_oneoff(&i.config))
            .collect();
        let i = super::shared::pick_replica(&instances, &args.service, args.index, is_global)?;
        let Some((mut host, port)) = published(&i.expanded_devices, proto, args.private_port)
            .or_else(|| published(&i.devices, proto, args.private_port))
            .or_else(|| {
                // An ingress port on a cluster: published by every member's forwarder.
                let ingress = ic_core::plan::ingress::as_proxies(&i.config);
                published(&ingress, proto, args.private_port)
            })
        else {
            bail!(
                "no port {}/{proto} published for {}",
                args.private_port,
                i.name
            );
        };
        if host == "0.0.0.0" || host == "[::]" {
            let info = ctx.base.server().await?;
            if info.environment.server_clustered {
                let members = ctx.base.cluster_members().await?;
                let m = members
                    .iter()
                    .find(|m| m.server_name == i.location)
                    .ok_or_else(|| anyhow!("{} is on unknown member {}", i.name, i.location))?;
                let addr = m
                    .url
                    .trim_start_matches("https://")
                    .rsplit_once(':')
                    .map_or(m.url.as_str(), |(h, _)| h);
                host = addr.to_string();
            }
        }
        println!("{host}:{port}");
        Ok(ExitCode::SUCCESS)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_device_connecting_to_the_port_gives_the_address() {
        let mut devices = ic_incus::Devices::new();
        devices.insert(
            "port-tcp-8080".into(),
            [
                ("type", "proxy"),
                ("listen", "tcp:0.0.0.0:8080"),
                ("connect", "tcp:127.0.0.1:80"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        assert_eq!(
            published(&devices, "tcp", 80),
            Some(("0.0.0.0".into(), "8080".into()))
        );
        assert_eq!(published(&devices, "udp", 80), None);
        assert_eq!(published(&devices, "tcp", 81), None);
    }
}
