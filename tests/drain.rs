//! `node drain` / `node restore` and evacuated members on the real test cluster: a drain of a
//! member keeps every service at its count at every moment (polled every 0.3 s) and leaves
//! nothing of ours on the member; `node restore` and a scale-up place replicas there again; a
//! replica no other member can take is reported and kept (exit 1); instances incus-compose did
//! not create are never touched; and `watch --once` re-places replicas that `incus cluster
//! evacuate` stopped, and leaves alone those Incus moved.
//!
//! These tests mark a member `scheduler.instance=manual` or evacuate it, which disturbs other
//! suites' placement: run on the Incus 7.0 line (`scripts/test-cluster up --incus 7.0 && set -a
//! && . .test-cluster/env-7.0 && set +a && cargo test --test drain`), each under the machine-wide
//! member turn (`/tmp/incus-compose-members.lock.d`), restoring the member when dropped. Each
//! test drains only its own compose project (`-p dr-<tag>-<pid>-<n>`), removed with `down -v`
//! even when it fails.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ic_incus::{Client, Instance};

/// The member drained or evacuated by these tests.
const MEMBER: &str = "node2";

/// Undoes what a test did to [`MEMBER`] when dropped: `node restore` and `incus cluster
/// restore` (each a no-op when not needed).
struct RestoreMember;

impl Drop for RestoreMember {
    fn drop(&mut self) {
        let out = incus_compose(&std::env::temp_dir(), &["node", "restore", MEMBER])
            .output()
            .map(|o| show("cleanup: node restore", &o));
        if let Err(e) = out {
            eprintln!("cleanup: node restore: {e}");
        }
        let c = client();
        let evacuated = members(&c)
            .iter()
            .any(|(n, s)| n == MEMBER && s.eq_ignore_ascii_case("evacuated"));
        if evacuated {
            incus(&["cluster", "restore", MEMBER, "--force"]);
        }
    }
}

impl Fixture {
    /// Writes compose.yaml: this project's name and `services`.
    fn services(&self, services: &str) {
        self.write(&format!("name: {{name}}\nservices:\n{services}"));
    }

    fn on(&self, member: &str) -> Vec<String> {
        self.instances()
            .into_values()
            .filter(|i| i.location == member)
            .map(|i| i.name)
            .collect()
    }
}

fn instances(c: &Client, project: &str) -> BTreeMap<String, Instance> {
    block_on(c.with_project(project).instances())
        .expect("list instances")
        .into_iter()
        .filter(|i| !is_resolver(i))
        .map(|i| (i.name.clone(), i))
        .collect()
}

/// Counts running replicas of `service` in `project` every 0.3 s on a thread, until stopped:
/// the smallest count seen and the number of reads.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl Poller {
    fn start(client: &Client, project: &str, service: &str) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let (c, p, s, flag) = (
            client.clone(),
            project.to_string(),
            service.to_string(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut min = usize::MAX;
            let mut reads = 0;
            while !flag.load(Ordering::Relaxed) {
                let n = instances(&c, &p)
                    .values()
                    .filter(|i| {
                        i.is_running()
                            && i.config
                                .get("user.incus-compose.service")
                                .map(String::as_str)
                                == Some(s.as_str())
                    })
                    .count();
                min = min.min(n);
                reads += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            (min, reads)
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .expect("poller thread")
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn replicated(n: u32, extra: &str) -> String {
    format!(
        "  web:\n    image: busybox\n    network_mode: none\n    deploy:\n      replicas: {n}\n{extra}"
    )
}

const GLOBAL: &str =
    "  hh:\n    image: busybox\n    network_mode: none\n    deploy: {mode: global}\n";

fn per_member(running: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in running.values() {
        *out.entry(m.clone()).or_insert(0) += 1;
    }
    out
}

#[test]
fn a_drain_keeps_six_replicas_running_at_every_moment_and_after_restore_a_scale_up_uses_the_member_again()
 {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("six");
    f.services(&format!("{}{GLOBAL}", replicated(6, "")));
    f.ok(&["up", "-d"]);
    assert_eq!(
        per_member(&f.running("web")),
        BTreeMap::from([
            ("node1".to_string(), 2),
            ("node2".into(), 2),
            ("node3".into(), 2)
        ])
    );
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    // Not ours: made by hand in the compose project's Incus project, on the drained member.
    let hand = HandMade::launch(
        &f.name,
        &format!("hand-{}", std::process::id() % 100_000),
        Some(MEMBER),
    );
    let dry = f.by_name(&["node", "drain", MEMBER, "--dry-run"]);
    assert!(dry.status.success());
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry_out.matches("move web-").count(), 2, "{dry_out}");
    assert!(dry_out.contains("remove hh-node2"), "{dry_out}");
    assert_eq!(f.on(MEMBER).len(), 4, "a dry run changes nothing");

    let poll = Poller::start(&c, &f.name, "web");
    let start = Instant::now();
    let out = f.by_name(&["node", "drain", MEMBER]);
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let (min, reads) = poll.finish();
    assert!(out.status.success(), "node drain failed");
    eprintln!(
        "drain of 2 replicas (+1 global) off {MEMBER}: {took:?}; {reads} reads, at least {min} running"
    );
    assert!(reads >= 5, "only {reads} reads of the instance list");
    assert_eq!(min, 6, "fewer than 6 replicas ran at some moment");
    let after = f.running("web");
    assert_eq!(after.len(), 6, "{after:?}");
    assert!(after.values().all(|m| m != MEMBER), "{after:?}");
    assert_eq!(
        f.on(MEMBER),
        vec![hand.name.clone()],
        "only the hand-made instance stays"
    );
    let h = &f.instances()[&hand.name];
    assert!(h.is_running(), "the hand-made instance was stopped");
    assert_eq!(
        h.config.get("user.note").map(String::as_str),
        Some("made by hand")
    );
    assert!(!h.config.contains_key("user.incus-compose.project"));
    let m = block_on(c.cluster_member(MEMBER)).expect("read member");
    assert_eq!(
        m.config.get("scheduler.instance").map(String::as_str),
        Some("manual")
    );
    assert!(m.config.contains_key("user.incus-compose.drained"));
    let ls = f.by_name(&["node", "ls"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("ONLINE (drained)"),
        "node ls does not show the mark"
    );
    // A scale-up while drained places nothing there.
    f.ok(&["up", "-d", "--scale", "web=7"]);
    assert!(f.running("web").values().all(|m| m != MEMBER));

    let restored = f.by_name(&["node", "restore", MEMBER]);
    assert!(restored.status.success());
    let m = block_on(c.cluster_member(MEMBER)).expect("read member");
    assert!(
        !m.config.contains_key("scheduler.instance"),
        "{:?}",
        m.config
    );
    assert!(!m.config.contains_key("user.incus-compose.drained"));
    assert!(
        f.running("web").values().all(|m| m != MEMBER),
        "nothing moves back by itself"
    );
    f.ok(&["up", "-d", "--scale", "web=9"]);
    let on_member = f
        .running("web")
        .values()
        .filter(|m| m.as_str() == MEMBER)
        .count();
    assert_eq!(
        on_member, 2,
        "the scale-up placed its new replicas on {MEMBER}"
    );
    assert!(
        f.running("hh").contains_key("hh-node2"),
        "up gives the global service its replica back"
    );
}

#[test]
fn a_replica_that_no_other_member_can_take_is_reported_and_kept_and_the_drain_exits_non_zero() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("stuck");
    f.services(&format!(
        "{}{}",
        replicated(
            2,
            "      placement:\n        constraints: [node.hostname == node2]\n"
        ),
        "  free:\n    image: busybox\n    network_mode: none\n    deploy: {replicas: 3}\n"
    ));
    f.ok(&["up", "-d"]);
    let before = f.running("web");
    assert_eq!(before.len(), 2);
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    let out = f.by_name(&["node", "drain", MEMBER]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a drain that leaves replicas fails"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for name in before.keys() {
        assert!(
            err.contains(&format!("{name} stays on {MEMBER}")),
            "{name} not reported: {err}"
        );
    }
    assert!(
        err.contains("node1: node.hostname == node2 not satisfied"),
        "the scheduler's reason is not given: {err}"
    );
    assert_eq!(
        f.running("web"),
        before,
        "the stuck replicas are kept, running"
    );
    // The other service moved.
    let free = f.running("free");
    assert_eq!(free.len(), 3);
    assert!(free.values().all(|m| m != MEMBER), "{free:?}");
}

#[test]
fn watch_once_recreates_elsewhere_the_replicas_an_evacuation_stopped_and_keeps_those_incus_moved() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("evac");
    f.services(&format!("{}{GLOBAL}", replicated(6, "")));
    f.ok(&["up", "-d"]);
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    // Incus stops them in place (`--action stop`): watch re-creates them elsewhere.
    let out = incus(&["cluster", "evacuate", MEMBER, "--force", "--action", "stop"]);
    assert!(out.status.success(), "incus cluster evacuate failed");
    let stopped: Vec<String> = f
        .instances()
        .into_values()
        .filter(|i| i.location == MEMBER && !i.is_running())
        .map(|i| i.name)
        .collect();
    assert_eq!(
        stopped.len(),
        3,
        "Incus stopped web x2 and hh-node2: {stopped:?}"
    );
    let w = f.by_name(&["watch", "--once"]);
    assert!(w.status.success(), "watch --once failed");
    let web = f.running("web");
    assert_eq!(web.len(), 6, "{web:?}");
    assert!(web.values().all(|m| m != MEMBER), "{web:?}");
    // A global service's replica waits for its member (it is not moved elsewhere).
    assert!(f.instances().contains_key("hh-node2"));
    let again = f.by_name(&["watch", "--once"]);
    let log = String::from_utf8_lossy(&again.stdout);
    assert!(
        !log.contains(" created on ") && !log.contains(" removed on "),
        "a second watch changed something: {log}"
    );
    incus(&["cluster", "restore", MEMBER, "--force"]);
    // Back: the global replica runs again; the service keeps exactly 6.
    f.by_name(&["watch", "--once"]);
    assert_eq!(f.running("web").len(), 6);
    assert!(f.running("hh").contains_key("hh-node2"));

    // Incus migrates them (the default for this storage): watch leaves them where they are.
    let out = incus(&["cluster", "evacuate", MEMBER, "--force"]);
    assert!(out.status.success(), "incus cluster evacuate failed");
    let moved = f.running("web");
    let w = f.by_name(&["watch", "--once"]);
    let log = String::from_utf8_lossy(&w.stdout);
    assert!(w.status.success());
    assert!(
        !log.contains(" created on ") && !log.contains(" removed on "),
        "watch moved what Incus had moved: {log}"
    );
    assert_eq!(f.running("web"), moved);
    assert_eq!(moved.len(), 6);
}

#[test]
fn a_replica_leaves_the_drained_member_only_once_its_replacement_is_healthy() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("health");
    // Healthy only once /ready exists (the test makes it), probed every second until then.
    f.services(
        "  web:\n    image: busybox\n    network_mode: none\n    deploy: {replicas: 3}\n    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /ready\"]\n      start_period: 10m\n      start_interval: 1s\n",
    );
    f.ok(&["up", "-d"]);
    let before = f.running("web");
    let old: Vec<String> = before
        .iter()
        .filter(|(_, m)| m.as_str() == MEMBER)
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(old.len(), 1, "{before:?}");
    let old = old[0].clone();
    let new = format!("{old}-b");
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    let mut all = vec!["-p", f.name.as_str(), "node", "drain", MEMBER];
    all.push("--parallel");
    all.push("4");
    let child = incus_compose(&std::env::temp_dir(), &all)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn node drain");
    let start = Instant::now();
    while !f.running("web").contains_key(&new) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no replacement {new} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Running but not healthy: the old replica stays, running, however long that lasts.
    std::thread::sleep(Duration::from_secs(4));
    let now = f.running("web");
    assert_eq!(
        now.get(&old).map(String::as_str),
        Some(MEMBER),
        "{old} went before its replacement was healthy: {now:?}"
    );
    let out = incus(&["exec", &new, "--project", &f.name, "--", "touch", "/ready"]);
    assert!(out.status.success(), "cannot make {new} healthy");
    let out = child.wait_with_output().expect("wait for node drain");
    show("incus-compose node drain (healthcheck)", &out);
    assert!(out.status.success(), "node drain failed");
    let err = String::from_utf8_lossy(&out.stderr);
    // The move is a start-first rollout of the slot: the replacement made, then (once
    // healthy) the old replica stopped and retired, then removed.
    let made = err
        .find(&format!("{old} replaced by {new} on"))
        .unwrap_or_else(|| panic!("no replacement line: {err}"));
    let stopped = err
        .find(&format!("{old} stopped, {new} serves its slot"))
        .unwrap_or_else(|| panic!("no line retiring {old}: {err}"));
    assert!(made < stopped, "{err}");
    assert!(!f.instances().contains_key(&old), "{old} is removed");
    let after = f.running("web");
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.values().all(|m| m != MEMBER), "{after:?}");
}

#[test]
fn a_replacement_that_turns_unhealthy_is_removed_again_reported_and_the_old_replica_keeps_running()
{
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("sick");
    f.services(
        "  web:\n    image: busybox\n    network_mode: none\n    deploy: {replicas: 3}\n    healthcheck:\n      test: [\"CMD-SHELL\", \"test -f /ready\"]\n      interval: 1s\n      retries: 2\n",
    );
    f.ok(&["up", "-d"]);
    let old: Vec<String> = f
        .running("web")
        .into_iter()
        .filter(|(_, m)| m.as_str() == MEMBER)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(old.len(), 1);
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    let out = f.by_name(&["node", "drain", MEMBER]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}-b (replacing {}) is not ready: unhealthy",
            old[0], old[0]
        )),
        "{err}"
    );
    assert_eq!(
        f.running("web").get(&old[0]).map(String::as_str),
        Some(MEMBER),
        "the old replica must keep running"
    );
    assert!(
        !f.instances().contains_key(&format!("{}-b", old[0])),
        "the failed replacement is removed again"
    );
}

#[test]
fn a_drain_warns_naming_the_local_volumes_it_leaves_on_the_member() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("vol");
    f.services(
        "  web:\n    image: busybox\n    network_mode: none\n    deploy: {replicas: 3}\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {}\n",
    );
    f.ok(&["up", "-d"]);
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    let out = f.by_name(&["node", "drain", MEMBER]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains(&format!("volumes stay on {MEMBER}")))
        .unwrap_or_else(|| panic!("no warning about the volume left behind: {err}"));
    assert!(line.contains("data"), "{line}");
    // Left, not removed: the volume is still on the member.
    let pool = line
        .split("(pool ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no pool named: {line}"));
    let vols = block_on(c.with_project(&f.name).storage_volumes(pool)).expect("list volumes");
    assert!(
        vols.iter()
            .any(|v| v.name.contains("data") && v.location == MEMBER),
        "{:?}",
        vols.iter()
            .map(|v| (&v.name, &v.location))
            .collect::<Vec<_>>()
    );
}

#[test]
fn restore_with_rebalance_moves_replicas_back_start_first_until_each_member_has_two_of_six() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("rebal");
    f.services(&replicated(6, ""));
    f.ok(&["up", "-d"]);
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    assert!(f.by_name(&["node", "drain", MEMBER]).status.success());
    assert!(f.running("web").values().all(|m| m != MEMBER));
    let poll = Poller::start(&c, &f.name, "web");
    let out = f.by_name(&["node", "restore", MEMBER, "--rebalance"]);
    std::thread::sleep(Duration::from_millis(700));
    let (min, reads) = poll.finish();
    assert!(out.status.success(), "node restore --rebalance failed");
    assert!(reads >= 3, "only {reads} reads");
    assert_eq!(min, 6, "fewer than 6 replicas ran at some moment");
    let after = f.running("web");
    assert_eq!(
        per_member(&after),
        BTreeMap::from([
            ("node1".to_string(), 2),
            ("node2".into(), 2),
            ("node3".into(), 2)
        ]),
        "{after:?}"
    );
    // Balanced: a second rebalance moves nothing.
    let again = f.by_name(&["node", "restore", MEMBER, "--rebalance"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 replica(s) moved"));
    assert_eq!(f.running("web"), after);
}

/// On a spanning network the records follow the drain in one write, made once the
/// replacements run: they name the replacements, not the replicas that left.
#[test]
fn after_a_drain_the_dns_records_name_the_replacements_and_not_the_replicas_that_left() {
    let c = client();
    let _turn = take_turn();
    cluster_online(&c, 3);
    let f = Fixture::new("dns");
    f.services("  web:\n    image: testapp/v1\n    deploy: {replicas: 3}\n");
    f.ok(&["up", "-d"]);
    let records = || f.dns_records();
    let leaving = f.on(MEMBER);
    assert_eq!(leaving.len(), 1, "{leaving:?}");
    let old = leaving[0].clone();
    assert!(records().contains(&format!("host-record={old},")));
    let _members = MemberTurn::take();
    let _restore = RestoreMember;
    let out = f.by_name(&["node", "drain", MEMBER]);
    assert!(out.status.success(), "node drain failed");
    let text = records();
    assert!(!text.contains(&format!("host-record={old},")), "{text}");
    assert!(text.contains(&format!("host-record={old}-b,")), "{text}");
    assert_eq!(text.matches("host-record=web,").count(), 3, "{text}");
}
