//! The project lock, crash safety of a first `up`, and operating a project by name (`-p NAME`
//! without the compose file, `ls`): the built `incus-compose` binary against a real Incus
//! server (`scripts/test` runs it on the single 6.0 server; it passes on the clusters too).
//!
//! Load the test server's environment first (`set -a && . .test-cluster/env-single && set +a`),
//! then `cargo test --test lock`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses compose projects of its own (`lk-<tag>-<pid>-<n>`) and removes them
//! (`down -v`) even when it fails. Runs use a short lease (`INCUS_COMPOSE_LOCK_TTL`), so a
//! killed holder's lock expires within seconds.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ic_incus::Instance;

mod common;
use common::*;
use ic_core::keys::LOCK_KEY;

/// Seconds since the epoch, as the lock's `expires` counts them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The lease length the runs of these tests use, in seconds.
const TTL: u64 = 6;

/// The fixture of these tests: one directory per compose file of `yamls` (`{name}` is
/// replaced by the project name), every run with the short lease.
fn fixture(tag: &str, yamls: &[&str]) -> Fixture {
    let mut f = Fixture::new(tag)
        .at_most(1)
        .env("INCUS_COMPOSE_LOCK_TTL", &TTL.to_string());
    f.env_remove.push("INCUS_COMPOSE_NO_WAIT_LOCK".into());
    f.write(yamls[0]);
    for y in &yamls[1..] {
        f.add_dir(y);
    }
    f
}

impl Fixture {
    fn list(&self) -> Vec<Instance> {
        self.instances().into_values().collect()
    }

    /// Directory `i` (0: the first compose file's).
    fn dir(&self, i: usize) -> PathBuf {
        match i {
            0 => self.dir.path().to_path_buf(),
            _ => self.dirs[i - 1].path().to_path_buf(),
        }
    }

    /// A directory without any compose file (nor one in its parents: a fresh temp dir).
    fn empty(&self) -> PathBuf {
        self.empty.path().to_path_buf()
    }

    /// The lock key of the Incus project, if any.
    fn lock_value(&self) -> Option<String> {
        block_on(self.client.get_project(&self.name))
            .ok()
            .and_then(|p| p.config.get(LOCK_KEY).cloned())
    }

    /// The networks of the `default` project named as this project's networks `keys` are
    /// (any state, labelled or not).
    fn networks_named(&self, keys: &[&str]) -> Vec<ic_incus::Network> {
        let names: Vec<String> = keys
            .iter()
            .map(|k| ic_core::plan::naming::network_name(&self.name, k))
            .collect();
        let all = block_on(self.client.with_project("default").networks()).expect("networks");
        all.into_iter()
            .filter(|n| names.contains(&n.name))
            .collect()
    }
}

const NETWORKED: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    networks: [front, back]
    deploy:
      replicas: 2
networks:
  front: {}
  back: {}
";

#[test]
fn a_first_up_killed_during_its_network_creation_converges_on_the_next_up() {
    // Kill points by what Incus shows (polled every 50 ms), from the project existing to the
    // first instance: the kill lands in (or right after) each phase of the network creation.
    for phase in ["the project", "a network", "both networks", "an instance"] {
        let f = fixture("kill", &[NETWORKED]);
        let mut first = f.spawn_in(&f.dir(0), &["up", "-d"]);
        let reached = |f: &Fixture| match phase {
            "the project" => f.project_exists(),
            "a network" => !f.networks_named(&["front", "back"]).is_empty(),
            "both networks" => f.networks_named(&["front", "back"]).len() == 2,
            _ => !f.list().is_empty(),
        };
        let start = Instant::now();
        while !reached(&f) {
            assert!(
                first.try_wait().expect("wait").is_none(),
                "up ended before {phase} was seen"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{phase} not seen within a minute"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        first.kill().expect("kill -9");
        let out = first.wait_with_output().expect("wait");
        show(&format!("up -d (killed once {phase} was seen)"), &out);
        let left = f.networks_named(&["front", "back"]);
        eprintln!(
            "left after the kill at {phase}: {:?}",
            left.iter()
                .map(|n| format!("{} {}", n.name, n.status))
                .collect::<Vec<_>>()
        );
        let at_least = match phase {
            "the project" => 0,
            "a network" => 1,
            _ => 2,
        };
        assert!(left.len() >= at_least, "killed at {phase}: left {left:?}");
        // The killed run's lock (if it took it) expires after TTL: the next up waits.
        let again = f.run_in(&f.dir(0), &["up", "-d"]);
        assert!(
            again.status.success(),
            "up after a kill at {phase} failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let nets = f.networks_named(&["front", "back"]);
        assert_eq!(nets.len(), 2, "kill at {phase}: {nets:?}");
        for n in &nets {
            assert_eq!(n.status, "Created", "kill at {phase}: {n:?}");
            assert_eq!(
                n.config.get("user.incus-compose.project"),
                Some(&f.name),
                "{n:?}"
            );
            assert!(n.config.contains_key("ipv4.address"), "{n:?}");
        }
        let instances = f.list();
        let mut names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["web-1", "web-2"], "kill at {phase}");
        assert!(instances.iter().all(|i| i.is_running()), "{instances:?}");
        // A third up has nothing left to do.
        let third = f.ok_in(&f.dir(0), &["up", "-d"]);
        assert!(third.contains("Nothing to change"), "{third}");
        // And `down` leaves no network behind.
        f.ok_in(&f.dir(0), &["down"]);
        let after = f.networks_named(&["front", "back"]);
        assert!(after.is_empty(), "kill at {phase}: left {after:?}");
    }
}

const WEB: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 2
  db:
    image: testapp/v1
";

#[test]
fn ps_down_and_logs_work_by_name_from_a_directory_without_the_compose_file() {
    let f = fixture("byname", &[WEB]);
    f.ok_in(&f.dir(0), &["up", "-d"]);
    let empty = f.empty();

    let ps = f.ok_in(&empty, &["-p", &f.name, "ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps).expect("ps json");
    let mut names: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    names.sort();
    assert_eq!(names, ["db-1", "web-1", "web-2"]);

    // `ls` lists it, running, with the compose file of its last up.
    let ls = f.ok_in(&empty, &["ls", "--format", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&ls).expect("ls json");
    let me = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["Name"] == f.name.as_str())
        .unwrap_or_else(|| panic!("{} not in ls: {ls}", f.name));
    assert_eq!(me["Status"], "running(3)");
    let file = f.dir(0).join("compose.yaml");
    assert_eq!(me["ConfigFiles"], file.to_string_lossy().as_ref());
    let table = f.ok_in(&empty, &["ls"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&f.name) && l.contains("running(3)")),
        "{table}"
    );
    assert!(f.ok_in(&empty, &["ls", "-q"]).lines().any(|l| l == f.name));

    // stop by name: every replica stopped; ls hides it, ls -a shows exited(3).
    f.ok_in(&empty, &["-p", &f.name, "stop", "-t", "1"]);
    assert!(f.list().iter().all(|i| !i.is_running()));
    assert!(!f.ok_in(&empty, &["ls", "-q"]).lines().any(|l| l == f.name));
    let all = f.ok_in(&empty, &["ls", "-a"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with(&f.name) && l.contains("exited(3)")),
        "{all}"
    );
    f.ok_in(&empty, &["-p", &f.name, "start", "web"]);
    let running: Vec<String> = f
        .list()
        .into_iter()
        .filter(|i| i.is_running())
        .map(|i| i.name)
        .collect();
    assert_eq!(running.len(), 2, "{running:?}");
    f.ok_in(&empty, &["-p", &f.name, "logs", "web"]);
    let unknown = f.run_in(&empty, &["-p", &f.name, "start", "nope"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no service \"nope\" deployed"),
        "{unknown:?}"
    );

    // down by name removes everything, the Incus project too.
    f.ok_in(&empty, &["-p", &f.name, "down", "-t", "1"]);
    assert!(f.list().is_empty());
    assert!(
        block_on(f.client.get_project(&f.name)).is_err_and(|e| e.is_not_found()),
        "the Incus project is gone"
    );
    assert!(
        !f.ok_in(&empty, &["ls", "-a", "-q"])
            .lines()
            .any(|l| l == f.name)
    );
}

const MARKED: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    environment:
      MARK: {mark}
    deploy:
      replicas: {n}
";

#[test]
fn two_ups_of_one_project_at_once_run_one_after_the_other_and_end_in_one_files_state() {
    let a = MARKED.replace("{mark}", "a").replace("{n}", "2");
    let b = MARKED.replace("{mark}", "b").replace("{n}", "3");
    let f = fixture("twice", &[&a, &b]);
    let first = f.spawn_in(&f.dir(0), &["-p", &f.name, "up", "-d"]);
    std::thread::sleep(Duration::from_millis(200));
    let second = f.spawn_in(&f.dir(1), &["-p", &f.name, "up", "-d"]);
    let out_a = first.wait_with_output().expect("wait");
    let out_b = second.wait_with_output().expect("wait");
    show("up -d (file a)", &out_a);
    show("up -d (file b)", &out_b);
    assert!(out_a.status.success() && out_b.status.success());
    let waited: Vec<bool> = [&out_a, &out_b]
        .iter()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr).contains(&format!(
                "waiting for the lock of project {} held by ",
                f.name
            ))
        })
        .collect();
    assert_eq!(
        waited.iter().filter(|w| **w).count(),
        1,
        "exactly one run waits and says so: {waited:?}"
    );
    // The one that waited ran last: its file is the end state, whole.
    let (mark, count) = if waited[1] { ("b", 3) } else { ("a", 2) };
    let instances = f.list();
    assert_eq!(instances.len(), count, "{instances:?}");
    for i in &instances {
        assert_eq!(
            i.config.get("environment.MARK").map(String::as_str),
            Some(mark),
            "{}",
            i.name
        );
        assert!(i.is_running(), "{}", i.name);
    }
    assert_eq!(f.lock_value(), None, "both released the lock");
}

const SLOW: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 6
";

#[test]
fn a_killed_holders_lock_is_taken_after_its_expiry_and_no_wait_lock_refuses_before() {
    let f = fixture("expiry", &[SLOW]);
    let mut holder = f.spawn_in(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_until(Duration::from_secs(30), || f.lock_value().is_some()),
        "the first up takes the lock"
    );
    holder.kill().expect("kill -9");
    let _ = holder.wait_with_output();
    let killed_at = Instant::now();
    let held: serde_json::Value =
        serde_json::from_str(&f.lock_value().expect("still held")).expect("lock json");

    let refused = f.run_in(&f.dir(0), &["--no-wait-lock", "up", "-d"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!(
            "project {} is locked by {}",
            f.name,
            held["holder"].as_str().unwrap_or("?")
        )),
        "{err}"
    );

    // The next run, watched: the moment another holder shows in the lock key is when it took
    // the lock, which must not be before the killed holder's lease expired.
    let expires = held["expires"].as_f64().expect("expires");
    let child = f.spawn_in(&f.dir(0), &["up", "-d"]);
    let mut taken_at = None;
    while taken_at.is_none() && killed_at.elapsed() < Duration::from_secs(TTL + 60) {
        let now = unix_now();
        if f.lock_value()
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .is_some_and(|v| v["holder"] != held["holder"])
        {
            taken_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let next = child.wait_with_output().expect("wait for the next up");
    show("up -d (after the kill)", &next);
    let waited = killed_at.elapsed();
    let taken_at = taken_at.expect("the next up took the lock");
    assert!(
        taken_at >= expires,
        "the lock was taken at {taken_at:.1}, before the killed holder's expiry {expires}"
    );
    assert!(next.status.success());
    let err = String::from_utf8_lossy(&next.stderr);
    assert!(err.contains("waiting for the lock of project"), "{err}");
    assert!(err.contains("(expires in "), "{err}");
    assert!(
        waited < Duration::from_secs(TTL + 60),
        "took the lock within its expiry plus the up itself: {waited:?}"
    );
    assert_eq!(f.list().len(), 6);
    assert_eq!(f.lock_value(), None, "released at the end");
}

const LONG: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 12
";

/// More replicas than a run can create in a few renewal intervals, one at a time.
const LONGER: &str = "
name: {name}
services:
  web:
    image: testapp/v1
    deploy:
      replicas: 30
";

#[test]
fn a_run_that_loses_its_lock_stops_acting() {
    let f = fixture("lost", &[LONGER]);
    let mut holder = f.spawn_in(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_until(Duration::from_secs(30), || !f.list().is_empty()),
        "the up starts creating"
    );
    // Another run takes the lock over (as one would after a network partition).
    let (project, etag) = block_on(f.client.get_project_with_etag(&f.name)).expect("project");
    let current: serde_json::Value =
        serde_json::from_str(project.config.get(LOCK_KEY).expect("held")).expect("lock json");
    let mut config = project.config.clone();
    let intruder = serde_json::json!({
        "holder": "intruder:1:test",
        "since": current["since"],
        "expires": current["expires"].as_u64().unwrap_or(0) + 600,
        "epoch": current["epoch"].as_u64().unwrap_or(0) + 1,
    });
    config.insert(LOCK_KEY.into(), intruder.to_string());
    let put = ic_incus::ProjectPut {
        description: project.description,
        config,
    };
    block_on(f.client.update_project_if_match(&f.name, &put, etag)).expect("take over");
    let taken = Instant::now();
    let at_takeover = f.list().len();
    // Watch the instances until the run ends: when did the last one appear?
    let mut count = at_takeover;
    let mut last_new = Duration::ZERO;
    let status = loop {
        if let Some(status) = holder.try_wait().expect("wait") {
            break status;
        }
        assert!(taken.elapsed() < Duration::from_secs(300), "the run ends");
        let now = f.list().len();
        if now != count {
            count = now;
            last_new = taken.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped_after = taken.elapsed();
    let out = holder.wait_with_output().expect("output");
    show("up -d --parallel 1 (lock taken over)", &out);
    let at_end = f.list().len();
    let lock_after = f.lock_value();
    // Give the project back for the clean-up before any assertion (else `down` waits for
    // the intruder's lease, ten minutes).
    let (project, etag) = block_on(f.client.get_project_with_etag(&f.name)).expect("project");
    let mut config = project.config.clone();
    config.remove(LOCK_KEY);
    let put = ic_incus::ProjectPut {
        description: project.description,
        config,
    };
    block_on(f.client.update_project_if_match(&f.name, &put, etag)).expect("remove");

    assert!(!status.success(), "the run fails once its lock is lost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("lost the lock of project {}", f.name)),
        "{err}"
    );
    assert!(err.contains("intruder:1:test holds it now"), "{err}");
    // It notices at its next renewal (every TTL/3 s) and stops: what it creates after the
    // takeover is what it starts in that time, one at a time (how many depends on the
    // server's speed: the bound is on time). A run that went on would create all 30.
    let every = Duration::from_millis(TTL * 1000 / 3);
    assert!(at_end < 30, "it stopped creating: {at_end} of 30 instances");
    assert!(
        last_new <= every + Duration::from_secs(5),
        "its last instance appeared {last_new:?} after the takeover \
         ({at_takeover} then, {at_end} at the end)"
    );
    assert!(
        stopped_after < Duration::from_secs(TTL + 20),
        "it stopped {stopped_after:?} after the takeover"
    );
    // It did not remove the other holder's lock.
    assert!(lock_after.is_some_and(|v| v.contains("intruder")));
}

/// How far ahead the lock's lease ends now (seconds), if it is held.
fn lease_expires_in(f: &Fixture) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(&f.lock_value()?).ok()?;
    Some(v["expires"].as_f64()? - unix_now())
}

#[test]
fn a_run_writes_the_longer_lease_of_a_run_at_work_as_soon_as_it_starts_acting() {
    // A lease of 60 s: the acquisition writes 60 s, the first timed renewal comes 20 s later.
    // A run at work renews at once when it first acts, with four times that (240 s), before
    // its work loads the server (`up -d` of 100 replicas lost its lock after 28.5 s when the
    // first renewal, under that load, took longer than what was left of the default 30 s lease).
    let f = fixture("working", &[LONG]).env("INCUS_COMPOSE_LOCK_TTL", "60");
    let holder = f.spawn_in(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_until(Duration::from_secs(30), || !f.list().is_empty()),
        "the up starts creating"
    );
    let acting = Instant::now();
    let mut longest = 0.0f64;
    let renewed = wait_until(Duration::from_secs(8), || {
        longest = longest.max(lease_expires_in(&f).unwrap_or(0.0));
        longest > 150.0
    });
    let out = holder.wait_with_output().expect("wait");
    show("up -d --parallel 1 (TTL 60)", &out);
    assert!(out.status.success());
    assert!(
        renewed,
        "within {:.1} s of its first creation the lease still ended {longest:.0} s ahead (not the 240 s of a run at work)",
        acting.elapsed().as_secs_f64()
    );
    assert_eq!(f.list().len(), 12);
    assert_eq!(f.lock_value(), None, "released at the end");
}

#[test]
fn ctrl_c_during_up_gives_the_lock_back_at_once() {
    let f = fixture("sigint", &[LONG]);
    let holder = f.spawn_in(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_until(Duration::from_secs(30), || !f.list().is_empty()),
        "the up starts creating"
    );
    assert!(f.lock_value().is_some(), "held while it works");
    let status = Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = holder.wait_with_output().expect("wait");
    show("up -d --parallel 1 (Ctrl-C)", &out);
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("releasing the lock"),
        "{out:?}"
    );
    assert_eq!(f.lock_value(), None, "released, not left to expire");
    // The next run neither waits nor refuses, and converges.
    let next = f.run_in(&f.dir(0), &["--no-wait-lock", "up", "-d"]);
    assert!(next.status.success());
    assert_eq!(f.list().len(), 12);
}

#[test]
fn a_project_incus_compose_did_not_create_is_never_written_to_for_the_lock() {
    let f = fixture("foreign", &[WEB]);
    let incus_project = format!("{}-hand", f.name);
    let req = ic_incus::ProjectsPost {
        name: incus_project.clone(),
        description: "made by hand".into(),
        config: [
            ("features.images", "false"),
            ("features.profiles", "false"),
            ("features.networks", "false"),
            ("features.storage.volumes", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    block_on(f.client.create_project(&req)).expect("create the hand-made project");
    let _hand = HandMadeProject {
        env: f.env.clone(),
        client: f.client.clone(),
        name: incus_project.clone(),
        compose: f.name.clone(),
        dir: f.empty(),
    };
    let before = block_on(f.client.get_project(&incus_project)).expect("project");
    let up = f.run_in(&f.dir(0), &["--incus-project", &incus_project, "up", "-d"]);
    assert!(up.status.success());
    assert!(
        String::from_utf8_lossy(&up.stderr).contains("no project lock is taken"),
        "{up:?}"
    );
    let after = block_on(f.client.get_project(&incus_project)).expect("project");
    assert_eq!(after.config, before.config, "its config is untouched");
    assert_eq!(
        block_on(f.client.with_project(&incus_project).instances())
            .expect("instances")
            .len(),
        3
    );
    // By name too, and `down` leaves the project itself alone.
    f.ok_in(
        &f.empty(),
        &[
            "-p",
            &f.name,
            "--incus-project",
            &incus_project,
            "down",
            "-t",
            "1",
        ],
    );
    let left = block_on(f.client.get_project(&incus_project)).expect("still there");
    assert_eq!(left.config, before.config);
    assert!(
        block_on(f.client.with_project(&incus_project).instances())
            .expect("instances")
            .is_empty()
    );
}
