//! The scheduler's expected outcomes from issue #5, one test each.

use std::collections::BTreeMap;

use ic_core::schedule::{
    ExistingReplica, HostPort, Member, Outcome, Placement, Rejection, RemovalReason, Schedule,
    ServiceSpec, SlotKey, schedule,
};

fn members(names: &[&str]) -> Vec<Member> {
    names.iter().map(|n| Member::new(*n)).collect()
}

fn run(members: &[Member], services: &[ServiceSpec], existing: &[ExistingReplica]) -> Schedule {
    schedule(members, services, existing).unwrap()
}

fn one(members: &[Member], spec: ServiceSpec, existing: &[ExistingReplica]) -> Placement {
    run(members, &[spec], existing).placements.remove(0)
}

fn counts(p: &Placement) -> Vec<(String, u32)> {
    p.per_member()
        .into_iter()
        .map(|(m, c)| (m.to_string(), c))
        .collect()
}

/// The existing replicas after applying a placement (assigned slots).
fn existing_after(p: &Placement) -> Vec<ExistingReplica> {
    p.assigned()
        .map(|(k, m)| ExistingReplica {
            service: p.service.clone(),
            slot: k.clone(),
            member: m.to_string(),
        })
        .collect()
}

fn c(s: &str) -> ic_compose::model::placement::Constraint {
    s.parse().unwrap()
}

#[test]
fn three_replicas_over_three_members_go_one_per_member_as_slots_one_to_three() {
    let p = one(
        &members(&["node1", "node2", "node3"]),
        ServiceSpec::replicated("web", 3),
        &[],
    );
    let got: Vec<(SlotKey, &str)> = p.assigned().map(|(k, m)| (k.clone(), m)).collect();
    assert_eq!(
        got,
        vec![
            (SlotKey::Replica(1), "node1"),
            (SlotKey::Replica(2), "node2"),
            (SlotKey::Replica(3), "node3"),
        ]
    );
    assert!(p.removals.is_empty());
}

#[test]
fn seven_replicas_over_three_members_split_three_two_two() {
    let p = one(
        &members(&["node1", "node2", "node3"]),
        ServiceSpec::replicated("web", 7),
        &[],
    );
    assert_eq!(
        counts(&p),
        vec![
            ("node1".into(), 3),
            ("node2".into(), 2),
            ("node3".into(), 2)
        ]
    );
    assert_eq!(p.pending().count(), 0);
}

#[test]
fn scaling_seven_to_two_keeps_the_survivors_where_they_were() {
    let ms = members(&["node1", "node2", "node3"]);
    let before = one(&ms, ServiceSpec::replicated("web", 7), &[]);
    let existing = existing_after(&before);
    let after = one(&ms, ServiceSpec::replicated("web", 2), &existing);
    assert_eq!(after.slots.len(), 2);
    for s in &after.slots {
        assert!(s.is_unchanged(), "{s:?} moved");
    }
    assert_eq!(after.removals.len(), 5);
    assert!(
        after
            .removals
            .iter()
            .all(|r| r.reason == RemovalReason::ScaledDown)
    );
    // The survivors are on two different members.
    assert_eq!(after.per_member().len(), 2);
    // node1 held the most (3), so it lost first; it ends with at most one.
    assert!(after.per_member().get("node1").copied().unwrap_or(0) <= 1);
}

#[test]
fn scaling_down_removes_from_the_fullest_member_its_highest_slot() {
    let ms = members(&["node1", "node2"]);
    let existing: Vec<ExistingReplica> = [(1, "node1"), (2, "node1"), (3, "node1"), (4, "node2")]
        .into_iter()
        .map(|(s, m)| ExistingReplica {
            service: "web".into(),
            slot: SlotKey::Replica(s),
            member: m.into(),
        })
        .collect();
    let p = one(&ms, ServiceSpec::replicated("web", 3), &existing);
    assert_eq!(p.removals.len(), 1);
    assert_eq!(p.removals[0].key, SlotKey::Replica(3));
    assert_eq!(p.removals[0].member, "node1");
}

#[test]
fn constraints_to_two_labelled_members_place_only_there() {
    let ms = vec![
        Member::new("node1").with_label("storage", "ssd"),
        Member::new("node2"),
        Member::new("node3").with_label("storage", "SSD"),
        Member::new("node4").with_label("storage", "hdd"),
    ];
    let spec = ServiceSpec {
        constraints: vec![c("node.labels.storage == ssd")],
        ..ServiceSpec::replicated("db", 5)
    };
    let p = one(&ms, spec, &[]);
    assert_eq!(counts(&p), vec![("node1".into(), 3), ("node3".into(), 2)]);
}

#[test]
fn no_labelled_member_is_an_error_listing_every_members_reason() {
    let mut ms = members(&["node1", "node2", "node3"]);
    ms[2].online = false;
    let spec = ServiceSpec {
        constraints: vec![c("node.labels.storage == ssd")],
        ..ServiceSpec::replicated("db", 2)
    };
    let p = one(&ms, spec, &[]);
    assert_eq!(p.assigned().count(), 0);
    assert_eq!(p.pending().count(), 2);
    let err = p.unsatisfiable().expect("unsatisfiable");
    let text = err.to_string();
    assert!(text.contains("service `db` cannot be placed"), "{text}");
    assert!(
        text.contains("  node1: node.labels.storage == ssd not satisfied\n"),
        "{text}"
    );
    assert!(
        text.contains("  node2: node.labels.storage == ssd not satisfied\n"),
        "{text}"
    );
    assert!(text.contains("  node3: offline\n"), "{text}");
}

#[test]
fn spread_over_zones_a_a_b_splits_evenly_between_the_zones() {
    let ms = vec![
        Member::new("node1").with_label("zone", "a"),
        Member::new("node2").with_label("zone", "a"),
        Member::new("node3").with_label("zone", "b"),
    ];
    for (replicas, a, b) in [(4, 2, 2), (6, 3, 3), (5, 3, 2)] {
        let spec = ServiceSpec {
            preferences: vec!["node.labels.zone".parse().unwrap()],
            ..ServiceSpec::replicated("web", replicas)
        };
        let p = one(&ms, spec, &[]);
        let per = p.per_member();
        let zone_a = per.get("node1").unwrap_or(&0) + per.get("node2").unwrap_or(&0);
        assert_eq!((zone_a, *per.get("node3").unwrap_or(&0)), (a, b));
        // Within zone a, the two members differ by at most one.
        assert!(
            per.get("node1")
                .unwrap_or(&0)
                .abs_diff(*per.get("node2").unwrap_or(&0))
                <= 1
        );
    }
}

#[test]
fn members_without_the_spread_label_form_their_own_group() {
    let ms = vec![
        Member::new("node1").with_label("zone", "a"),
        Member::new("node2"),
        Member::new("node3"),
    ];
    let spec = ServiceSpec {
        preferences: vec!["node.labels.zone".parse().unwrap()],
        ..ServiceSpec::replicated("web", 4)
    };
    let p = one(&ms, spec, &[]);
    assert_eq!(
        counts(&p),
        vec![
            ("node1".into(), 2),
            ("node2".into(), 1),
            ("node3".into(), 1)
        ]
    );
}

#[test]
fn nested_spreads_are_even_at_every_level() {
    // zone a: racks x (2 members), y (1); zone b: rack x (1).
    let ms = vec![
        Member::new("n1")
            .with_label("zone", "a")
            .with_label("rack", "x"),
        Member::new("n2")
            .with_label("zone", "a")
            .with_label("rack", "x"),
        Member::new("n3")
            .with_label("zone", "a")
            .with_label("rack", "y"),
        Member::new("n4")
            .with_label("zone", "b")
            .with_label("rack", "x"),
    ];
    let spec = ServiceSpec {
        preferences: vec![
            "node.labels.zone".parse().unwrap(),
            "node.labels.rack".parse().unwrap(),
        ],
        ..ServiceSpec::replicated("web", 8)
    };
    let p = one(&ms, spec, &[]);
    // zones 4/4; in zone a racks 2/2; in rack a/x members 1/1.
    assert_eq!(
        counts(&p),
        vec![
            ("n1".into(), 1),
            ("n2".into(), 1),
            ("n3".into(), 2),
            ("n4".into(), 4)
        ]
    );
}

#[test]
fn global_runs_one_per_eligible_member_and_a_new_member_adds_exactly_one() {
    let mut ms = vec![
        Member::new("node1").with_label("gpu", "yes"),
        Member::new("node2"),
        Member::new("node3").with_label("gpu", "yes"),
    ];
    let spec = ServiceSpec {
        constraints: vec![c("node.labels.gpu == yes")],
        ..ServiceSpec::global("agent")
    };
    let first = one(&ms, spec.clone(), &[]);
    assert_eq!(
        counts(&first),
        vec![("node1".into(), 1), ("node3".into(), 1)]
    );
    assert_eq!(
        first.rejections.for_member("node2"),
        Some(&Rejection::Constraint(c("node.labels.gpu == yes")))
    );
    ms.push(Member::new("node4").with_label("gpu", "yes"));
    let second = one(&ms, spec, &existing_after(&first));
    let unchanged: Vec<&str> = second
        .slots
        .iter()
        .filter(|s| s.is_unchanged())
        .filter_map(|s| s.member())
        .collect();
    assert_eq!(unchanged, vec!["node1", "node3"]);
    let new: Vec<_> = second
        .slots
        .iter()
        .filter(|s| s.previous.is_none())
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].key, SlotKey::Member("node4".into()));
    assert_eq!(new[0].member(), Some("node4"));
    assert!(second.removals.is_empty());
}

#[test]
fn global_removes_replicas_of_members_that_left_or_no_longer_qualify() {
    let ms = vec![
        Member::new("node1").with_label("gpu", "yes"),
        Member::new("node2"),
    ];
    let existing: Vec<ExistingReplica> = ["node1", "node2", "node9"]
        .into_iter()
        .map(|m| ExistingReplica {
            service: "agent".into(),
            slot: SlotKey::Member(m.into()),
            member: m.into(),
        })
        .collect();
    let spec = ServiceSpec {
        constraints: vec![c("node.labels.gpu == yes")],
        ..ServiceSpec::global("agent")
    };
    let p = one(&ms, spec, &existing);
    assert_eq!(counts(&p), vec![("node1".into(), 1)]);
    let removed: Vec<(&str, &RemovalReason)> = p
        .removals
        .iter()
        .map(|r| (r.member.as_str(), &r.reason))
        .collect();
    assert_eq!(
        removed,
        vec![
            (
                "node2",
                &RemovalReason::NotEligible(Rejection::Constraint(c("node.labels.gpu == yes")))
            ),
            ("node9", &RemovalReason::MemberGone),
        ]
    );
}

#[test]
fn global_replica_on_an_offline_member_stays_pending_instead_of_being_removed() {
    let mut ms = members(&["node1", "node2"]);
    ms[1].online = false;
    let existing = vec![ExistingReplica {
        service: "agent".into(),
        slot: SlotKey::Member("node2".into()),
        member: "node2".into(),
    }];
    let p = one(&ms, ServiceSpec::global("agent"), &existing);
    assert!(p.removals.is_empty());
    let node2 = &p.slots[1];
    assert_eq!(node2.key, SlotKey::Member("node2".into()));
    assert_eq!(node2.previous.as_deref(), Some("node2"));
    assert!(matches!(&node2.outcome, Outcome::Pending(r) if r.to_string() == "node2: offline"));
}

#[test]
fn max_one_per_member_with_four_replicas_on_three_members_leaves_one_pending_with_reasons() {
    let spec = ServiceSpec {
        max_replicas_per_node: Some(1),
        ..ServiceSpec::replicated("web", 4)
    };
    let p = one(&members(&["node1", "node2", "node3"]), spec, &[]);
    assert_eq!(p.assigned().count(), 3);
    let pending: Vec<_> = p.pending().collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, SlotKey::Replica(4));
    let Outcome::Pending(reason) = &pending[0].outcome else {
        unreachable!()
    };
    assert_eq!(
        reason.to_string(),
        "node1: max_replicas_per_node (1) reached\n\
         node2: max_replicas_per_node (1) reached\n\
         node3: max_replicas_per_node (1) reached"
    );
    assert!(p.unsatisfiable().is_none(), "some replicas run");
}

#[test]
fn offline_evacuated_and_manual_members_get_no_new_replicas() {
    let mut ms = members(&["node1", "node2", "node3", "node4"]);
    ms[0].online = false;
    ms[1].evacuated = true;
    ms[2].manual = true;
    let p = one(&ms, ServiceSpec::replicated("web", 3), &[]);
    assert_eq!(counts(&p), vec![("node4".into(), 3)]);
    let reasons: Vec<String> = p
        .rejections
        .members()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        reasons,
        vec![
            "node1: offline",
            "node2: evacuated",
            "node3: scheduler.instance=manual"
        ]
    );
}

#[test]
fn a_manual_member_keeps_its_existing_replicas() {
    let mut ms = members(&["node1", "node2"]);
    ms[0].manual = true;
    let existing = vec![ExistingReplica {
        service: "web".into(),
        slot: SlotKey::Replica(1),
        member: "node1".into(),
    }];
    let p = one(&ms, ServiceSpec::replicated("web", 2), &existing);
    assert!(p.slots[0].is_unchanged());
    assert_eq!(p.slots[1].member(), Some("node2"));
}

#[test]
fn a_replica_on_an_offline_member_moves_and_keeps_its_slot_number() {
    let mut ms = members(&["node1", "node2", "node3"]);
    let first = one(&ms, ServiceSpec::replicated("web", 3), &[]);
    ms[1].online = false;
    let p = one(
        &ms,
        ServiceSpec::replicated("web", 3),
        &existing_after(&first),
    );
    let moved = &p.slots[1];
    assert_eq!(moved.key, SlotKey::Replica(2));
    assert_eq!(moved.previous.as_deref(), Some("node2"));
    assert_eq!(moved.member(), Some("node1"));
    assert!(p.slots[0].is_unchanged() && p.slots[2].is_unchanged());
}

#[test]
fn cpu_and_memory_reservations_count_what_members_have_left() {
    let ms = vec![
        Member {
            free_millicpus: Some(1500),
            ..Member::new("node1")
        },
        Member {
            free_millicpus: Some(4000),
            free_memory: Some(1 << 30),
            ..Member::new("node2")
        },
    ];
    let spec = ServiceSpec {
        reservation_millicpus: Some(2000),
        reservation_memory: Some(512 << 20),
        ..ServiceSpec::replicated("db", 3)
    };
    let p = one(&ms, spec, &[]);
    assert_eq!(counts(&p), vec![("node2".into(), 2)]);
    assert_eq!(p.pending().count(), 1);
    let reasons: Vec<String> = p
        .rejections
        .members()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        reasons,
        vec![
            "node1: needs 2 CPUs reserved, 1.5 free",
            "node2: needs 2 CPUs reserved, 0 free"
        ]
    );
}

#[test]
fn earlier_services_use_up_resources_before_later_ones() {
    let ms = vec![Member {
        free_memory: Some(1 << 30),
        ..Member::new("node1")
    }];
    let big = ServiceSpec {
        reservation_memory: Some(768 << 20),
        ..ServiceSpec::replicated("big", 1)
    };
    let small = ServiceSpec {
        reservation_memory: Some(512 << 20),
        ..ServiceSpec::replicated("small", 1)
    };
    let s = run(&ms, &[big, small], &[]);
    assert_eq!(s.placements[0].assigned().count(), 1);
    let err = s.placements[1].unsatisfiable().expect("no memory left");
    assert!(
        err.to_string()
            .contains("node1: needs 512MiB memory reserved, 256MiB free")
    );
}

#[test]
fn a_fixed_host_port_allows_one_replica_per_member_across_services() {
    let ms = members(&["node1", "node2"]);
    let web = ServiceSpec {
        fixed_host_ports: vec![HostPort::tcp(8080)],
        ..ServiceSpec::replicated("web", 3)
    };
    let other = ServiceSpec {
        fixed_host_ports: vec![HostPort::tcp(8080)],
        ..ServiceSpec::replicated("other", 1)
    };
    let s = run(&ms, &[web, other], &[]);
    assert_eq!(
        counts(&s.placements[0]),
        vec![("node1".into(), 1), ("node2".into(), 1)]
    );
    assert_eq!(
        s.placements[0].rejections.to_string(),
        "node1: host port 8080 already used by another replica\n\
         node2: host port 8080 already used by another replica"
    );
    assert!(s.placements[1].unsatisfiable().is_some());
}

#[test]
fn ties_go_to_the_member_with_fewest_instances_then_name_order() {
    let ms = vec![
        Member {
            instances: 5,
            ..Member::new("node1")
        },
        Member {
            instances: 1,
            ..Member::new("node2")
        },
        Member {
            instances: 1,
            ..Member::new("node3")
        },
    ];
    let p = one(&ms, ServiceSpec::replicated("web", 2), &[]);
    assert_eq!(counts(&p), vec![("node2".into(), 1), ("node3".into(), 1)]);
}

#[test]
fn node_role_manager_means_database_members_and_arch_accepts_docker_names() {
    let ms = vec![
        Member {
            roles: vec!["database".into()],
            ..Member::new("node1")
        },
        Member {
            architecture: "aarch64".into(),
            ..Member::new("node2")
        },
        Member::new("node3"),
    ];
    let managers = ServiceSpec {
        constraints: vec![c("node.role == manager")],
        ..ServiceSpec::replicated("a", 2)
    };
    assert_eq!(counts(&one(&ms, managers, &[])), vec![("node1".into(), 2)]);
    let workers_amd64 = ServiceSpec {
        constraints: vec![c("node.role == worker"), c("node.platform.arch == amd64")],
        ..ServiceSpec::replicated("b", 2)
    };
    assert_eq!(
        counts(&one(&ms, workers_amd64, &[])),
        vec![("node3".into(), 2)]
    );
    let not_arm = ServiceSpec {
        constraints: vec![
            c("node.platform.arch != arm64"),
            c("node.platform.os == linux"),
        ],
        ..ServiceSpec::replicated("c", 2)
    };
    assert_eq!(
        counts(&one(&ms, not_arm, &[])),
        vec![("node1".into(), 1), ("node3".into(), 1)]
    );
}

#[test]
fn a_missing_label_satisfies_not_equal() {
    let ms = vec![
        Member::new("node1").with_label("tier", "cold"),
        Member::new("node2"),
    ];
    let spec = ServiceSpec {
        constraints: vec![
            c("node.labels.tier != cold"),
            c("engine.labels.tier != hot"),
        ],
        ..ServiceSpec::replicated("web", 1)
    };
    assert_eq!(counts(&one(&ms, spec, &[])), vec![("node2".into(), 1)]);
}

#[test]
fn a_standalone_server_checks_constraints_against_itself() {
    let server = vec![Member::standalone("laptop").with_label("storage", "ssd")];
    let ok = ServiceSpec {
        constraints: vec![
            c("node.hostname == laptop"),
            c("node.labels.storage == ssd"),
            c("node.role == manager"),
        ],
        ..ServiceSpec::replicated("db", 2)
    };
    assert_eq!(counts(&one(&server, ok, &[])), vec![("laptop".into(), 2)]);
    let bad = ServiceSpec {
        constraints: vec![c("node.labels.storage == nvme")],
        ..ServiceSpec::replicated("db", 1)
    };
    let err = one(&server, bad, &[]).unsatisfiable().unwrap();
    assert!(
        err.to_string()
            .contains("laptop: node.labels.storage == nvme not satisfied")
    );
}

#[test]
fn the_result_does_not_depend_on_member_input_order() {
    let mut ms: Vec<Member> = (0..12)
        .map(|i| Member::new(format!("n{i:02}")).with_label("zone", ["a", "b", "c"][i % 3]))
        .collect();
    let spec = ServiceSpec {
        preferences: vec!["node.labels.zone".parse().unwrap()],
        ..ServiceSpec::replicated("web", 17)
    };
    let a = run(&ms, std::slice::from_ref(&spec), &[]);
    ms.reverse();
    let b = run(&ms, &[spec], &[]);
    assert_eq!(a, b);
}

#[test]
fn duplicate_member_names_are_rejected() {
    let err = schedule(&members(&["a", "a"]), &[], &[]).unwrap_err();
    assert!(err.to_string().contains("\"a\" is listed twice"));
}

#[test]
fn new_slots_fill_the_lowest_unused_numbers() {
    let ms = members(&["node1", "node2"]);
    let existing: Vec<ExistingReplica> = [2, 5]
        .into_iter()
        .map(|s| ExistingReplica {
            service: "web".into(),
            slot: SlotKey::Replica(s),
            member: "node1".into(),
        })
        .collect();
    let p = one(&ms, ServiceSpec::replicated("web", 4), &existing);
    let keys: BTreeMap<u32, Option<&str>> = p
        .slots
        .iter()
        .map(|s| match s.key {
            SlotKey::Replica(n) => (n, s.member()),
            SlotKey::Member(_) => unreachable!(),
        })
        .collect();
    assert_eq!(
        keys,
        BTreeMap::from([
            (1, Some("node2")),
            (2, Some("node1")),
            (3, Some("node2")),
            (5, Some("node1"))
        ])
    );
}
