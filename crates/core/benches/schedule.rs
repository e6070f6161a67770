//! Scheduling 100,000 replicas over 10,000 members with two nested spread preferences
//! (zone, then rack) and constraints, from scratch and re-run on its own result.
//!
//! Run: `cargo bench -p ic-core --bench schedule`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ic_core::schedule::{ExistingReplica, Member, ServiceSpec, schedule};

const MEMBERS: usize = 10_000;
const REPLICAS: u32 = 100_000;

fn cluster() -> Vec<Member> {
    (0..MEMBERS)
        .map(|i| {
            let mut m = Member::new(format!("node{i:05}"))
                .with_label("zone", format!("zone{}", i % 10))
                .with_label("rack", format!("rack{:03}", (i / 10) % 40));
            if i % 20 == 0 {
                m = m.with_label("tier", "cold");
            }
            if i < 3 {
                m.roles.push("database".into());
            }
            if i % 97 == 0 {
                m.online = false;
            }
            m.free_millicpus = Some(16_000);
            m.free_memory = Some(64 << 30);
            m.instances = (i % 7) as u32;
            m
        })
        .collect()
}

fn service() -> ServiceSpec {
    ServiceSpec {
        constraints: vec![
            "node.labels.tier != cold".parse().unwrap(),
            "node.role == worker".parse().unwrap(),
            "node.platform.os == linux".parse().unwrap(),
        ],
        preferences: vec![
            "node.labels.zone".parse().unwrap(),
            "node.labels.rack".parse().unwrap(),
        ],
        max_replicas_per_node: Some(20),
        reservation_millicpus: Some(500),
        reservation_memory: Some(256 << 20),
        ..ServiceSpec::replicated("web", REPLICAS)
    }
}

fn bench(c: &mut Criterion) {
    let members = cluster();
    let services = [service()];
    let first = schedule(&members, &services, &[]).unwrap();
    assert_eq!(first.placements[0].assigned().count(), REPLICAS as usize);
    let existing: Vec<ExistingReplica> = first.placements[0]
        .assigned()
        .map(|(k, m)| ExistingReplica {
            service: "web".into(),
            slot: k.clone(),
            member: m.to_string(),
        })
        .collect();

    let mut group = c.benchmark_group("schedule 100k replicas over 10k members");
    group.sample_size(20);
    group.bench_function("from scratch", |b| {
        b.iter(|| schedule(black_box(&members), black_box(&services), &[]).unwrap())
    });
    group.bench_function("re-run on own result", |b| {
        b.iter(|| {
            schedule(
                black_box(&members),
                black_box(&services),
                black_box(&existing),
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
