//! `watch`'s decisions about members, without I/O or a clock (times are unix seconds passed
//! in): since when each member has been offline, which offline members are still within
//! their grace period (their replicas stay put, see `plan::DiffOptions::grace`), and when
//! the next grace period ends (a reconcile is due then).

use std::collections::{BTreeMap, BTreeSet};

pub mod restart;

use crate::plan::{Action, Desired, Plan};

/// Incus's default `cluster.offline_threshold`, in seconds.
pub const DEFAULT_OFFLINE_THRESHOLD: u64 = 20;

/// The default grace period: a little over Incus's offline threshold (a tenth more, plus a
/// second), counted from when `watch` first sees the member offline, so that a member that
/// missed heartbeats for a moment (a reboot, a network blip) is not given up on at once.
pub fn default_grace(offline_threshold: u64) -> u64 {
    offline_threshold + offline_threshold / 10 + 1
}

/// Updates `since` (member -> unix seconds when first seen offline) from the members seen
/// now (`(name, online)`): a newly offline member starts its clock at `now`; an online or
/// departed member is forgotten.
pub fn track_offline(since: &mut BTreeMap<String, u64>, members: &[(String, bool)], now: u64) {
    since.retain(|name, _| members.iter().any(|(m, online)| m == name && !online));
    for (name, online) in members {
        if !online {
            since.entry(name.clone()).or_insert(now);
        }
    }
}

/// The offline members still within their grace period at `now`.
pub fn within_grace(since: &BTreeMap<String, u64>, now: u64, grace: u64) -> BTreeSet<String> {
    since
        .iter()
        .filter(|&(_, &t)| now < t.saturating_add(grace))
        .map(|(m, _)| m.clone())
        .collect()
}

/// The first moment after `now` at which a grace period ends, if any is running.
pub fn next_grace_end(since: &BTreeMap<String, u64>, now: u64, grace: u64) -> Option<u64> {
    since
        .values()
        .map(|t| t.saturating_add(grace))
        .filter(|&end| end > now)
        .min()
}

/// Whether `watch` starts a stopped replica of a service made from `config`: only when its
/// restart policy asks Incus to restart it (`boot.autorestart=true`: `restart: always`,
/// `unless-stopped`, `on-failure`, or `deploy.restart_policy.condition` `any` /
/// `on-failure`). A service with `restart: no`, `condition: none`, or neither (docker
/// compose's default) stays stopped, as Docker leaves it.
pub fn restarts(config: &BTreeMap<String, String>) -> bool {
    config.get("boot.autorestart").map(String::as_str) == Some("true")
}

/// Takes out of `plan` the starts of stopped replicas whose service does not restart (see
/// [`restarts`]); returns their names, for the log.
pub fn keep_stopped(plan: &mut Plan, d: &Desired) -> Vec<String> {
    let mut kept = Vec::new();
    for stage in &mut plan.stages {
        stage.actions.retain(|a| match a {
            Action::Start { name, service } => {
                let restart = d
                    .services
                    .iter()
                    .find(|t| &t.service == service)
                    .is_some_and(|t| restarts(&t.config));
                if !restart {
                    kept.push(name.clone());
                }
                restart
            }
            _ => true,
        });
    }
    plan.stages.retain(|s| !s.actions.is_empty());
    kept
}

/// Takes out of `plan` the starts of stopped replicas of services with a [`restart::RestartPolicy`]:
/// `watch` starts those itself, after `delay` and counted (see [`restart::assess`]). Their names.
pub fn take_policy_starts(plan: &mut Plan, d: &Desired) -> Vec<String> {
    let mut taken = Vec::new();
    for stage in &mut plan.stages {
        stage.actions.retain(|a| match a {
            Action::Start { name, service } => {
                let counted = d
                    .services
                    .iter()
                    .any(|t| &t.service == service && restart::policy_of(&t.config).is_some());
                if counted {
                    taken.push(name.clone());
                }
                !counted
            }
            _ => true,
        });
    }
    plan.stages.retain(|s| !s.actions.is_empty());
    taken
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `text` planned on one member and deployed with every replica stopped: what `watch`
    /// then finds (for the tests of what it starts).
    pub(crate) fn deployed_stopped(text: &str) -> (Desired, crate::plan::Observed) {
        use crate::plan::{DiffOptions, Observed, ObservedInstance, PlanOptions, ServerFacts};
        let o = ic_compose::LoadOptions {
            files: vec!["/p/compose.yaml".into()],
            working_dir: "/p".into(),
            interpolate: true,
            ..Default::default()
        };
        let fs = ic_compose::MemFs::default().with("/p/compose.yaml", text);
        let project = ic_compose::load_with(&o, &fs).unwrap_or_else(|e| panic!("{e}"));
        let facts = ServerFacts {
            version: "6.0.4".into(),
            image_aliases: ["busybox".to_string()].into(),
            storage_pool: "local".into(),
            ..Default::default()
        };
        let d = crate::plan::desired(&project, &facts, &PlanOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut obs = Observed {
            project_exists: true,
            members: vec![crate::schedule::Member::new("node1")],
            ..Default::default()
        };
        let first = crate::plan::diff(&d, &obs, &DiffOptions::default()).unwrap();
        for a in first.actions() {
            match a {
                Action::Create(p) => obs.instances.push(ObservedInstance {
                    name: p.name.clone(),
                    location: p.member.clone(),
                    running: false,
                    config: p.config.clone(),
                }),
                Action::CreateNetwork { name, config, .. } => {
                    obs.networks.push(crate::plan::ObservedNetwork {
                        name: name.clone(),
                        managed: true,
                        config: config.clone(),
                        status: "Created".into(),
                    })
                }
                _ => {}
            }
        }
        (d, obs)
    }

    #[test]
    fn only_replicas_of_services_with_a_restart_policy_are_started_again() {
        use crate::plan::DiffOptions;
        let text = "name: shop\nservices:\n  web:\n    image: busybox\n    restart: always\n  job:\n    image: busybox\n  off:\n    image: busybox\n    deploy: {restart_policy: {condition: none}}\n";
        let (d, obs) = deployed_stopped(text);
        let mut plan = crate::plan::diff(&d, &obs, &DiffOptions::default()).unwrap();
        assert_eq!(plan.actions().count(), 3);
        let mut kept = keep_stopped(&mut plan, &d);
        kept.sort();
        assert_eq!(kept, ["job-1", "off-1"]);
        let left: Vec<String> = plan.actions().map(|a| a.to_string()).collect();
        assert_eq!(left, ["start web-1"]);
    }

    fn seen(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn a_member_offline_keeps_the_time_it_was_first_seen_offline() {
        let mut since = BTreeMap::new();
        track_offline(&mut since, &seen(&[("node1", true), ("node3", false)]), 100);
        track_offline(&mut since, &seen(&[("node1", true), ("node3", false)]), 110);
        assert_eq!(since.get("node3"), Some(&100));
        assert!(within_grace(&since, 130, 31).contains("node3"));
        assert!(!within_grace(&since, 131, 31).contains("node3"));
        assert_eq!(next_grace_end(&since, 110, 31), Some(131));
        assert_eq!(next_grace_end(&since, 131, 31), None);
    }

    #[test]
    fn a_member_back_online_or_gone_is_forgotten_and_its_clock_restarts() {
        let mut since = BTreeMap::new();
        track_offline(
            &mut since,
            &seen(&[("node3", false), ("node4", false)]),
            100,
        );
        track_offline(&mut since, &seen(&[("node3", true)]), 105);
        assert!(since.is_empty());
        track_offline(&mut since, &seen(&[("node3", false)]), 200);
        assert_eq!(since.get("node3"), Some(&200));
    }

    #[test]
    fn the_default_grace_is_a_little_over_the_offline_threshold() {
        assert_eq!(default_grace(DEFAULT_OFFLINE_THRESHOLD), 23);
        assert_eq!(default_grace(11), 13);
        assert!(default_grace(5) > 5);
    }

    proptest! {
        /// Exactly the offline members are tracked, and one is within its grace period
        /// exactly while less than `grace` seconds passed since it was first seen offline.
        #[test]
        fn grace_holds_exactly_while_less_than_grace_has_passed(
            steps in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 1..12),
            grace in 1u64..60,
            dt in 0u64..30,
        ) {
            let mut since = BTreeMap::new();
            let mut first: BTreeMap<String, u64> = BTreeMap::new();
            let mut now = 0;
            for step in &steps {
                now += dt;
                let members: Vec<(String, bool)> =
                    step.iter().enumerate().map(|(i, o)| (format!("node{i}"), *o)).collect();
                track_offline(&mut since, &members, now);
                for (m, online) in &members {
                    if *online { first.remove(m); } else { first.entry(m.clone()).or_insert(now); }
                }
                prop_assert_eq!(&since, &first);
                let g = within_grace(&since, now, grace);
                for (m, t) in &first {
                    prop_assert_eq!(g.contains(m), now - t < grace);
                }
                if let Some(end) = next_grace_end(&since, now, grace) {
                    prop_assert!(end > now);
                    prop_assert!(first.values().any(|t| t + grace == end));
                }
            }
        }
    }
}
