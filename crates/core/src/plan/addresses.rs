//! Addresses and DNS records of spanning bridges (see [`super::span`]), decided once the
//! replicas are placed: every replica on a spanning bridge gets its NIC address from
//! incus-compose (kept across recreations and moves, recorded in the instance key
//! [`span::address_label`]), and the bridge's `raw.dnsmasq` gets a record per replica name
//! and per service name (or alias) and replica. The records are written with the network's
//! creation, or by one `UpdateNetwork` when they differ from what the bridge holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{Action, Desired, DesiredNetwork, Observed, PlanError, Subnet, span};
use crate::keys::{LABEL_PROJECT, LABEL_SERVICE};

/// The device (NIC) of `devices` attached to bridge `network`.
fn nic_on<'a>(
    devices: &'a BTreeMap<String, BTreeMap<String, String>>,
    network: &str,
) -> Option<(&'a String, &'a BTreeMap<String, String>)> {
    devices.iter().find(|(_, d)| {
        d.get("type").map(String::as_str) == Some("nic")
            && d.get("network").map(String::as_str) == Some(network)
    })
}

/// The subnet of `net`: from its creation in `network_stage`, or as observed.
fn subnet_of(net: &DesiredNetwork, obs: &Observed, network_stage: &[Action]) -> Option<Subnet> {
    let created = network_stage.iter().find_map(|a| match a {
        Action::CreateNetwork { name, config, .. } if *name == net.name => {
            config.get("ipv4.address").cloned()
        }
        _ => None,
    });
    let address = created.or_else(|| {
        obs.networks
            .iter()
            .find(|n| n.name == net.name)
            .and_then(|n| n.config.get("ipv4.address").cloned())
    })?;
    let (gateway, _) = address.split_once('/')?;
    Subnet::parse(&address, Some(gateway)).ok()
}

/// The new replicas of start-first slots (a `Recreate` under the slot's other name) whose
/// instance does not exist yet.
fn unborn_alternates(
    obs: &Observed,
    service_actions: &BTreeMap<String, Vec<Action>>,
) -> BTreeSet<String> {
    service_actions
        .values()
        .flatten()
        .filter_map(|a| match a {
            Action::Recreate(p)
                if p.old_name.as_deref().is_some_and(|o| o != p.name)
                    && !obs.instances.iter().any(|i| i.name == p.name) =>
            {
                Some(p.name.clone())
            }
            _ => None,
        })
        .collect()
}

/// Gives every replica on a spanning bridge its address (in the `Create`/`Recreate` actions of
/// `service_actions`) and writes the bridge's DNS records (in `network_stage`).
/// `placement`: every placed replica (member, instance, service); `removed`: instances removed.
pub(super) fn assign(
    d: &Desired,
    obs: &Observed,
    placement: &[(String, String, String)],
    removed: &BTreeSet<String>,
    service_actions: &mut BTreeMap<String, Vec<Action>>,
    network_stage: &mut Vec<Action>,
) -> Result<(), PlanError> {
    let compose = d.compose_project.as_str();
    let unborn = unborn_alternates(obs, service_actions);
    for net in d
        .networks
        .iter()
        .filter(|n| n.kind == span::Kind::Span && !n.external)
    {
        let Some(subnet) = subnet_of(net, obs, network_stage) else {
            continue;
        };
        let label = span::address_label(&net.key);
        // Replicas on this network: (instance, service) -> address when fixed.
        let mut members: Vec<(String, String)> = Vec::new();
        let mut fixed: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for (_, name, service) in placement {
            let Some(t) = d.services.iter().find(|t| &t.service == service) else {
                continue;
            };
            let Some((_, nic)) = nic_on(&t.devices, &net.name) else {
                continue;
            };
            members.push((name.clone(), service.clone()));
            let explicit = nic.get("ipv4.address").and_then(|a| a.parse().ok());
            let kept = obs
                .instances
                .iter()
                .find(|i| &i.name == name && i.label(LABEL_PROJECT) == Some(compose))
                .and_then(|i| i.label(&label))
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .filter(|a| subnet.contains(*a) && *a != subnet.gateway);
            if let Some(a) = explicit.or(kept) {
                fixed.insert(name.clone(), a);
            }
        }
        // Instances of this project that stay but were not planned (services not selected,
        // and the old replicas of start-first slots, which serve until the update is over).
        for i in &obs.instances {
            // Retired replicas (kept stopped for a rollback) have no record: the replica
            // that took their slot has their address. Nor have old replicas whose start-first
            // replacement is ready (they go once the records name it).
            if i.label(LABEL_PROJECT) != Some(compose)
                || i.label(crate::keys::LABEL_RETIRED).is_some()
                || i.label(crate::keys::LABEL_REPLACED_BY).is_some()
                || removed.contains(&i.name)
                || members.iter().any(|(n, _)| n == &i.name)
            {
                continue;
            }
            if let (Some(service), Some(a)) = (
                i.label(LABEL_SERVICE),
                i.label(&label).and_then(|a| a.parse::<Ipv4Addr>().ok()),
            ) {
                members.push((i.name.clone(), service.to_string()));
                fixed.insert(i.name.clone(), a);
            }
        }
        // First claim wins; later claims of one address are given new ones.
        let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut address: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        for (name, _) in &members {
            if let Some(a) = fixed.get(name)
                && taken.insert(*a)
            {
                address.insert(name.clone(), *a);
            }
        }
        // The forwarders' addresses (see `ingress`) are not given to new replicas. Nor are
        // those of replicas that still exist but have no record here (replicas this plan
        // removes, old replicas of start-first slots): they may run on while the new replica
        // starts (a drain's or a rebalance's replacement starts before the replica it
        // replaces stops, on another member), and two NICs with one address leave clients'
        // ARP entries on the old one once it stops (requests hang for seconds).
        for i in &obs.instances {
            if i.label(LABEL_PROJECT) != Some(compose) {
                continue;
            }
            taken.extend(super::ingress::key_addresses(i, &net.name));
            if i.label(crate::keys::LABEL_RETIRED).is_none()
                && (removed.contains(&i.name) || i.label(crate::keys::LABEL_REPLACED_BY).is_some())
                && let Some(a) = i.label(&label).and_then(|a| a.parse::<Ipv4Addr>().ok())
            {
                taken.insert(a);
            }
        }
        let missing: Vec<&String> = members
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !address.contains_key(*n))
            .collect();
        let fresh = span::allocate_addresses(&subnet, &taken, missing.len()).map_err(|left| {
            PlanError::NoFreeAddress {
                network: net.key.clone(),
                subnet: subnet.bridge_address(),
                wanted: missing.len(),
                left,
            }
        })?;
        for (n, a) in missing.into_iter().zip(fresh) {
            address.insert(n.clone(), a);
        }
        // Every created or recreated replica gets its address.
        for actions in service_actions.values_mut() {
            for a in actions.iter_mut() {
                let (Action::Create(p) | Action::Recreate(p)) = a else {
                    continue;
                };
                let Some(ip) = address.get(&p.name) else {
                    continue;
                };
                let Some(dev) = nic_on(&p.devices, &net.name).map(|(k, _)| k.clone()) else {
                    continue;
                };
                if let Some(nic) = p.devices.get_mut(&dev) {
                    nic.insert("ipv4.address".into(), ip.to_string());
                }
                p.config.insert(label.clone(), ip.to_string());
            }
        }
        // DNS: each replica by name, each service name and alias by every replica. A new
        // start-first replica not created yet gets its record after its update (see
        // `unborn_alternates`): until then its old replica serves under the old records, so
        // an update writes no records at its start (a write restarts the tunnels).
        let mut records = Vec::new();
        for (name, service) in &members {
            if unborn.contains(name) {
                continue;
            }
            let Some(a) = address.get(name) else {
                continue;
            };
            if super::dns::is_dns_name(name) {
                records.push(span::Record {
                    name: name.clone(),
                    address: *a,
                });
            }
            for (dns_name, _) in net.names.iter().filter(|(_, s)| s == service) {
                records.push(span::Record {
                    name: dns_name.clone(),
                    address: *a,
                });
            }
        }
        // Names served by the member resolvers: the bridge only forwards to them (the
        // engine pushes the records, see `dns::resolver_hosts`).
        let text = if net.resolver {
            super::dns::resolver_dnsmasq(
                net.internal,
                super::dns::resolver_address(&d.incus_project),
                super::dns::resolver_port(&net.key),
            )
        } else {
            span::raw_dnsmasq(&records, net.internal)
        };
        let created = network_stage.iter_mut().find_map(|a| match a {
            Action::CreateNetwork { name, config, .. } if *name == net.name => Some(config),
            _ => None,
        });
        if let Some(config) = created {
            config.insert("raw.dnsmasq".into(), text);
            continue;
        }
        let have = obs
            .networks
            .iter()
            .find(|n| n.name == net.name)
            .and_then(|n| n.config.get("raw.dnsmasq"))
            .map(String::as_str)
            .unwrap_or("");
        if have != text {
            network_stage.push(Action::UpdateNetwork {
                name: net.name.clone(),
                set: BTreeMap::from([("raw.dnsmasq".to_string(), text)]),
            });
        }
    }
    Ok(())
}
