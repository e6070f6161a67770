//! The project lock's lease under load, and revisions across interrupted runs: the built
//! `incus-compose` binary against a real Incus cluster (the 7.0 line in scripts/test).
//!
//! Load the test cluster's environment first (`set -a && . .test-cluster/env && set +a`),
//! then `cargo test --test lease`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses compose projects of its own (`ls-<tag>-<pid>-<n>`) and removes them
//! (`down -v`) even when it fails.

use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{Fixture, block_on, show};

/// The lease length the runs of these tests use, in seconds: short, so that a lease that is
/// not renewed in time under load is lost within the test.
const TTL: u64 = 6;

/// A compose project of this suite: its runs wait for the lock, with a lease of [`TTL`] and
/// the lease's debug log. The two tests run at once: each is load on the other, and a lease
/// must survive load.
fn fixture(tag: &str) -> Fixture {
    let mut f = Fixture::new(tag)
        .at_most(2)
        .env("INCUS_COMPOSE_LOCK_TTL", &TTL.to_string())
        .env("INCUS_COMPOSE_LOG", "incus_compose::lease=debug");
    f.env_remove.push("INCUS_COMPOSE_NO_WAIT_LOCK".into());
    f
}

impl Fixture {
    /// The revisions kept in the Incus project: (number, outcome).
    fn revisions(&self) -> Vec<(u64, String)> {
        let p = block_on(self.client.get_project(&self.name)).expect("project");
        let mut out: Vec<(u64, String)> = p
            .config
            .iter()
            .filter(|(k, _)| k.starts_with("user.incus-compose.revision."))
            .map(|(_, v)| {
                let r: serde_json::Value = serde_json::from_str(v).expect("revision json");
                (
                    r["number"].as_u64().unwrap_or(0),
                    r["outcome"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// The renewals the debug log of a run shows: (gap, took) in milliseconds each.
fn renewals(stderr: &str) -> Vec<(u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    stderr
        .lines()
        .filter(|l| l.contains("lease renewed"))
        .filter_map(|l| Some((field(l, "gap_ms")?, field(l, "took_ms")?)))
        .collect()
}

const MANY: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 100
";

/// With the default 30 s lease setting, a run at work renews a lease of four times that (and
/// more after a slow renewal), on a thread and connections of its own: the 100 creations load
/// the cluster so that project-config writes take seconds to tens of seconds (18 s seen), and
/// the run keeps the lock to the end. Before, the lease was renewed for 30 s at a time from the
/// executor's runtime and pool, and the run lost it after about 25 s (issue 18).
#[test]
fn a_long_up_under_load_keeps_its_lock_to_the_end() {
    let f = fixture("load");
    f.write(MANY);
    let started = Instant::now();
    let out = f
        .command(&["up", "-d", "--parallel", "16"])
        .stdin(Stdio::null())
        .env("INCUS_COMPOSE_LOCK_TTL", "30")
        .output()
        .expect("run incus-compose");
    show("up -d --parallel 16", &out);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the up completes: {err}");
    assert!(!err.contains("lost the lock"), "{err}");
    assert_eq!(f.instances().len(), 100);
    assert_eq!(f.revisions(), [(1, "completed".to_string())]);
    let seen = renewals(&err);
    eprintln!("up of 100 replicas: {took:?}, renewals (gap ms, took ms): {seen:?}");
    if took > Duration::from_secs(30) {
        assert!(
            !seen.is_empty(),
            "a run longer than its lease renews it: {err}"
        );
    }
    assert!(err.contains("lease released"), "{err}");
}

const V1: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 4
      update_config: {parallelism: 1, delay: 3s}
";

/// An update killed half-way (kill -9) leaves its revision `in progress`; the next `up` of the
/// same file reopens that revision and finishes it: `completed`, with no new revision.
#[test]
fn an_update_killed_half_way_is_completed_by_the_next_up() {
    let f = fixture("reopen");
    f.write(V1);
    assert!(f.run(&["up", "-d"]).status.success());
    assert_eq!(f.revisions(), [(1, "completed".to_string())]);
    f.write(&V1.replace("testapp/v1", "testapp/v2"));
    // What the killed run said, shown when the check below fails.
    let said = std::env::temp_dir().join(format!("{}-update.log", f.name));
    let log = std::fs::File::create(&said).expect("a log file");
    let mut update = f
        .command(&["up", "-d"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .spawn()
        .expect("spawn");
    // Killed once revision 2 is recorded and the update is under way.
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if f.revisions().iter().any(|(n, _)| *n == 2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    update.kill().expect("kill -9");
    let _ = update.wait();
    let said = std::fs::read_to_string(&said).unwrap_or_default();
    assert_eq!(
        f.revisions(),
        [(1, "completed".to_string()), (2, "in-progress".to_string())],
        "the killed update left revision 2 in progress; it said:\n{said}"
    );
    // Its lease ends by expiry; the next up waits for it, then finishes the update.
    let out = f.run(&["up", "-d"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revision 2: completed"),
        "the next up reports the reopened revision"
    );
    assert_eq!(
        f.revisions(),
        [(1, "completed".to_string()), (2, "completed".to_string())]
    );
    // And an up with nothing left to do records nothing new.
    let out = f.run(&["up", "-d"]);
    assert!(out.status.success());
    assert_eq!(f.revisions().len(), 2);
}
