//! The one converge path under faults, on the real 3-member test cluster (the 7.0 line in scripts/test):
//! `incus-compose` is killed with SIGKILL at a seeded random point of `up`, a rolling update,
//! `scale`, `rollback` and `watch`, then the same command runs once more; after it:
//! exactly the declared replicas run, each on the deployed revision's spec, no running
//! replica was deleted before its replacement ran (a slot's replica is never missing while
//! another of the slot's names was deleted), no instance or volume is left twice, and the
//! newest revision's outcome (`history --format json`) is `completed`.
//!
//! Also the converge promises that need no kill: `scale web=5` then `watch --once` keeps 5
//! (and a later `up` goes back to the file's count); `node drain` of a service with a file
//! secret and a file config moves every replica with both files in place.
//!
//! Each test uses a compose project of its own (`fa-<tag>-<pid>-<n>`), removed with `down -v`
//! even when it fails. The seeds are fixed (a failure names its seed); the kill points fall
//! within the first seconds of a command, where it creates, pushes, starts and retires.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Fixture, MemberTurn, SETUP_HINT, block_on};
use ic_incus::Instance;

const HASH: &str = "user.incus-compose.hash";
const SERVICE: &str = "user.incus-compose.service";
const RETIRED: &str = "user.incus-compose.retired";

/// splitmix64: the kill points of one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A delay in `[lo, hi)` milliseconds.
    fn between(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo).max(1))
    }
}

/// A compose project of this suite (at most 3 at once). Its runs use a 10 s lease: a run
/// killed once at work leaves a lease of four times that (`ic_core::lease::lease_length`),
/// which the next run waits out; with the default 30 s, 120 s per kill.
fn fixture(tag: &str) -> Fixture {
    Fixture::new(tag)
        .at_most(3)
        .env("INCUS_COMPOSE_LOCK_TTL", "10")
}

impl Fixture {
    /// Runs `args` and kills it (SIGKILL) after `after`, or lets it end before. Whether it
    /// was killed.
    fn kill_after(&self, args: &[&str], after: Duration) -> bool {
        let mut child = self
            .command(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn incus-compose");
        let start = Instant::now();
        while start.elapsed() < after {
            if let Ok(Some(_)) = child.try_wait() {
                eprintln!("incus-compose {args:?} ended before its kill point {after:?}");
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("incus-compose {args:?} killed after {after:?}");
        true
    }

    /// The replicas of `service` (not retired ones).
    fn replicas(&self, service: &str) -> BTreeMap<String, Instance> {
        self.instances()
            .into_iter()
            .filter(|(_, i)| {
                i.config.get(SERVICE).map(String::as_str) == Some(service)
                    && !i.config.contains_key(RETIRED)
            })
            .collect()
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["history", "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("history --format json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// What every run must leave: `n` running replicas of `service`, each with the same spec
    /// hash (the deployed one: the `ps`-visible state equals the newest revision's), the
    /// newest revision completed, no retired leftovers, no volume twice.
    fn converged(&self, service: &str, n: usize, why: &str) {
        let replicas = self.replicas(service);
        let running: Vec<&Instance> = replicas.values().filter(|i| i.is_running()).collect();
        assert_eq!(
            running.len(),
            n,
            "{why}: {n} running replicas of {service} expected, found {:?}",
            replicas
                .values()
                .map(|i| (&i.name, &i.status))
                .collect::<Vec<_>>()
        );
        assert_eq!(replicas.len(), n, "{why}: no surplus replica is left");
        let hashes: BTreeSet<Option<&String>> =
            running.iter().map(|i| i.config.get(HASH)).collect();
        assert_eq!(
            hashes.len(),
            1,
            "{why}: every replica runs one spec: {hashes:?}"
        );
        assert!(
            hashes.iter().all(Option::is_some),
            "{why}: every replica is prepared"
        );
        let retired: Vec<String> = self
            .instances()
            .into_values()
            .filter(|i| i.config.contains_key(RETIRED))
            .map(|i| i.name)
            .collect();
        assert!(retired.is_empty(), "{why}: retired leftovers {retired:?}");
        let history = self.history();
        let newest = history.last().expect("a revision");
        assert_eq!(
            newest["outcome"], "completed",
            "{why}: the newest revision completed: {history:?}"
        );
        let volumes = block_on(self.project().storage_volumes("default")).unwrap_or_default();
        let names: Vec<String> = volumes
            .iter()
            .filter(|v| v.kind == "custom")
            .map(|v| v.name.clone())
            .collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "{why}: no volume twice: {names:?}"
        );
    }
}

/// A service of `n` idle busybox replicas with a file config (pushed before the start: the
/// window where a half-made replica used to look done) and `env` as its version.
fn service(n: u32, version: &str, update: &str) -> String {
    format!(
        "name: {{name}}\nservices:\n  web:\n    image: busybox\n    network_mode: none\n    environment: {{V: \"{version}\"}}\n    configs: [conf]\n    deploy:\n      replicas: {n}\n{update}configs:\n  conf: {{file: ./conf.txt}}\n"
    )
}

const START_FIRST: &str = "      update_config: {order: start-first, parallelism: 1}\n";

/// The created_at of each running replica, to check that none went before a replacement
/// ran: after the run, every slot present before is still served.
fn slots_served(before: &BTreeMap<String, Instance>, after: &BTreeMap<String, Instance>) -> bool {
    let slot = |i: &Instance| i.config.get("user.incus-compose.slot").cloned();
    let before: BTreeSet<Option<String>> = before.values().map(slot).collect();
    let after: BTreeSet<Option<String>> = after
        .values()
        .filter(|i| i.is_running())
        .map(slot)
        .collect();
    before.is_subset(&after)
}

#[test]
fn an_up_killed_at_any_point_is_finished_by_the_next_up() {
    for seed in [11u64, 12] {
        let f = fixture("up");
        f.write_file("conf.txt", "v1\n");
        f.write(&service(3, "1", ""));
        let mut rng = Rng(seed);
        f.kill_after(&["up", "-d"], rng.between(1500, 9000));
        f.ok(&["up", "-d"]);
        f.converged("web", 3, &format!("seed {seed}"));
    }
}

#[test]
fn a_rolling_update_killed_half_way_is_completed_by_up_and_kept_by_watch() {
    for seed in [21u64, 22] {
        let f = fixture("roll");
        f.write_file("conf.txt", "v1\n");
        f.write(&service(3, "1", START_FIRST));
        f.ok(&["up", "-d"]);
        let before = f.replicas("web");
        f.write(&service(3, "2", START_FIRST));
        let mut rng = Rng(seed);
        f.kill_after(&["up", "-d"], rng.between(1500, 8000));
        let mid = f.replicas("web");
        assert!(
            slots_served(&before, &mid),
            "seed {seed}: a slot lost its running replica before its replacement ran: {:?}",
            mid.values()
                .map(|i| (&i.name, &i.status))
                .collect::<Vec<_>>()
        );
        f.ok(&["up", "-d"]);
        f.converged("web", 3, &format!("seed {seed}, after up"));
        let hash = f
            .replicas("web")
            .values()
            .next()
            .map(|i| i.config[HASH].clone());
        let log = String::from_utf8_lossy(&f.by_name(&["watch", "--once"]).stdout).into_owned();
        assert!(
            !log.contains("\"action\""),
            "seed {seed}: watch acted: {log}"
        );
        f.converged("web", 3, &format!("seed {seed}, after watch --once"));
        assert_eq!(
            f.replicas("web")
                .values()
                .next()
                .map(|i| i.config[HASH].clone()),
            hash,
            "seed {seed}: watch left the new version"
        );
    }
}

#[test]
fn scale_killed_at_any_point_is_finished_by_the_next_scale() {
    for seed in [31u64, 32] {
        let f = fixture("scale");
        f.write_file("conf.txt", "v1\n");
        f.write(&service(2, "1", ""));
        f.ok(&["up", "-d"]);
        let mut rng = Rng(seed);
        f.kill_after(&["scale", "web=5"], rng.between(1000, 7000));
        f.ok(&["scale", "web=5"]);
        f.converged("web", 5, &format!("seed {seed}"));
    }
}

#[test]
fn scale_web_5_then_watch_once_keeps_5_and_a_later_up_goes_back_to_the_files_count() {
    let f = fixture("keep");
    f.write_file("conf.txt", "v1\n");
    f.write(&service(2, "1", ""));
    f.ok(&["up", "-d"]);
    let out = f.ok(&["scale", "web=5"]);
    assert!(out.contains("revision 2: completed"), "{out}");
    let out = f.by_name(&["watch", "--once"]);
    assert!(out.status.success());
    f.converged("web", 5, "after scale and watch --once");
    let history = f.history();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[1]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("scale web=5")),
        "{history:?}"
    );
    f.ok(&["up", "-d"]);
    f.converged("web", 2, "after up of the file again");
}

#[test]
fn a_rollback_killed_at_any_point_is_finished_by_the_next_rollback() {
    let seed = 41u64;
    let f = fixture("rb");
    f.write_file("conf.txt", "v1\n");
    f.write(&service(3, "1", START_FIRST));
    f.ok(&["up", "-d"]);
    f.write(&service(3, "2", START_FIRST));
    f.ok(&["up", "-d"]);
    let mut rng = Rng(seed);
    f.kill_after(&["rollback", "--to", "1"], rng.between(1500, 8000));
    f.ok(&["rollback", "--to", "1"]);
    f.converged("web", 3, &format!("seed {seed}"));
    let history = f.history();
    assert!(
        history
            .last()
            .and_then(|r| r["cause"].as_str())
            .is_some_and(|c| c.contains("rollback to 1")),
        "{history:?}"
    );
}

#[test]
fn a_watch_killed_while_it_recreates_replicas_is_finished_by_the_next_watch() {
    let seed = 51u64;
    let f = fixture("watch");
    f.write_file("conf.txt", "v1\n");
    f.write(&service(3, "1", ""));
    f.ok(&["up", "-d"]);
    let p = f.client.with_project(&f.name);
    for name in ["web-2", "web-3"] {
        block_on(p.stop_instance(name, 5, true)).expect("stop");
        block_on(async { p.delete_instance(name).await?.wait().await }).expect("delete");
    }
    let mut rng = Rng(seed);
    let all = ["-p", f.name.as_str(), "watch", "--once"];
    let mut child = f
        .command_in(f.empty.path(), &all)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn watch");
    std::thread::sleep(rng.between(1000, 5000));
    let _ = child.kill();
    let _ = child.wait();
    // The watch lease of the killed run expires (its TTL) before the next one acts.
    let start = Instant::now();
    loop {
        let out = f.by_name(&["watch", "--once"]);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        if log.contains("holds the watch lease") || start.elapsed() > Duration::from_secs(90) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    f.converged("web", 3, &format!("seed {seed}"));
}

/// `node restore node2` when dropped (declared after the member turn: it runs first).
struct RestoreNode2<'a>(&'a Fixture);

impl Drop for RestoreNode2<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .run_in(self.0.empty.path(), &["node", "restore", "node2"]);
    }
}

#[test]
fn node_drain_of_a_service_with_a_file_secret_and_config_moves_every_replica_with_both_files() {
    let f = fixture("drain");
    f.write_file("conf.txt", "conf-for-drain\n");
    f.write_file("pw.txt", "s3cret-for-drain\n");
    f.write(
        "name: {name}\nservices:\n  web:\n    image: busybox\n    network_mode: none\n    secrets: [pw]\n    configs: [conf]\n    deploy:\n      replicas: 3\n      update_config: {order: start-first}\nsecrets:\n  pw: {file: ./pw.txt}\nconfigs:\n  conf: {file: ./conf.txt}\n",
    );
    f.ok(&["up", "-d"]);
    let _turn = MemberTurn::take();
    let _restore = RestoreNode2(&f);
    let on_node2: Vec<String> = f
        .replicas("web")
        .into_values()
        .filter(|i| i.location == "node2")
        .map(|i| i.name)
        .collect();
    assert!(
        !on_node2.is_empty(),
        "spread puts a replica on node2: {SETUP_HINT}"
    );
    let out = f.by_name(&["node", "drain", "node2"]);
    assert!(out.status.success(), "node drain failed");
    let p = f.client.with_project(&f.name);
    let replicas = f.replicas("web");
    assert_eq!(
        replicas.values().filter(|i| i.is_running()).count(),
        3,
        "{replicas:?}"
    );
    for i in replicas.values() {
        assert_ne!(i.location, "node2", "{} is still on node2", i.name);
        let pw = block_on(p.pull_file(&i.name, "/run/secrets/pw")).expect("read the secret");
        assert_eq!(String::from_utf8_lossy(&pw), "s3cret-for-drain\n");
        let conf = block_on(p.pull_file(&i.name, "/conf")).expect("read the config");
        assert_eq!(String::from_utf8_lossy(&conf), "conf-for-drain\n");
    }
}
