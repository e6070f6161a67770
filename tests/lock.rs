//! The project lock, crash safety of a first `up`, and operating a project by name (`-p NAME`
//! without the compose file, `ls`): the built `incus-compose` binary against a real Incus
//! cluster.
//!
//! Load the test cluster's environment first (`set -a && . .test-cluster/env && set +a`),
//! then `cargo test --test lock`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses compose projects of its own (`lk-<tag>-<pid>-<n>`) and removes them
//! (`down -v`) even when it fails. Runs use a short lease (`INCUS_COMPOSE_LOCK_TTL`), so a
//! killed holder's lock expires within seconds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ic_incus::{Client, Instance};

mod common;
use common::{Slot, block_on, client};

const BIN: &str = env!("CARGO_BIN_EXE_incus-compose");

/// The lease length the runs of these tests use, in seconds.
const TTL: u64 = 6;

const LOCK_KEY: &str = "user.incus-compose.lock";

/// A compose project name of this test run.
fn project_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "lk-{tag}-{}-{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `incus-compose` in `dir`, with the short lease and no project settings from the
/// environment.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FILE")
        .env_remove("INCUS_COMPOSE_INCUS_PROJECT")
        .env_remove("INCUS_COMPOSE_NO_WAIT_LOCK")
        .env("INCUS_COMPOSE_LOCK_TTL", TTL.to_string());
    c
}

fn show(args: &[&str], out: &Output) {
    eprintln!(
        "$ incus-compose {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = command(dir, args).output().expect("run incus-compose");
    show(args, &out);
    out
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "incus-compose {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    command(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run incus-compose")
}

/// A compose project in one or more temporary directories; removed with `down -v` (by name,
/// from an empty directory) when dropped, even when the test failed.
struct Fixture {
    _slot: Slot,
    name: String,
    dirs: Vec<tempfile::TempDir>,
    empty: tempfile::TempDir,
    client: Client,
}

impl Fixture {
    /// One directory per compose file of `yamls` (`{name}` is replaced by the project name).
    fn new(tag: &str, yamls: &[&str]) -> Fixture {
        let name = project_name(tag);
        let slot = Slot::take(1);
        let f = Fixture {
            _slot: slot,
            dirs: yamls
                .iter()
                .map(|_| tempfile::tempdir().expect("temp dir"))
                .collect(),
            empty: tempfile::tempdir().expect("temp dir"),
            client: client(),
            name,
        };
        for (d, y) in f.dirs.iter().zip(yamls) {
            std::fs::write(d.path().join("compose.yaml"), y.replace("{name}", &f.name))
                .expect("write compose file");
        }
        f
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.dirs[i].path().to_path_buf()
    }

    /// A directory without any compose file (nor one in its parents: a fresh temp dir).
    fn empty(&self) -> PathBuf {
        self.empty.path().to_path_buf()
    }

    fn instances(&self) -> Vec<Instance> {
        match block_on(self.client.with_project(&self.name).instances()) {
            Ok(list) => list,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => panic!("list instances: {e}"),
        }
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

impl Drop for Fixture {
    fn drop(&mut self) {
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(TTL));
            }
            let out = command(
                self.empty.path(),
                &["-p", &self.name, "down", "-v", "-t", "1"],
            )
            .output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
        }
    }
}

/// Waits until `cond` holds, at most `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
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
    // Kill points from before the project exists to after the networks are made; the
    // networks are being created between about 0.3 s and 1.5 s here.
    for delay_ms in [300u64, 600, 900, 1200, 1600] {
        let f = Fixture::new("kill", &[NETWORKED]);
        let mut first = spawn(&f.dir(0), &["up", "-d"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        first.kill().expect("kill -9");
        let out = first.wait_with_output().expect("wait");
        show(&[&format!("up -d (killed after {delay_ms} ms)")], &out);
        let left: Vec<String> = f
            .networks_named(&["front", "back"])
            .iter()
            .map(|n| format!("{} {}", n.name, n.status))
            .collect();
        eprintln!("left after the kill at {delay_ms} ms: {left:?}");

        // The killed run's lock (if it took it) expires after TTL: the next up waits.
        let again = run(&f.dir(0), &["up", "-d"]);
        assert!(
            again.status.success(),
            "up after a kill at {delay_ms} ms failed: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        let nets = f.networks_named(&["front", "back"]);
        assert_eq!(nets.len(), 2, "kill at {delay_ms} ms: {nets:?}");
        for n in &nets {
            assert_eq!(n.status, "Created", "kill at {delay_ms} ms: {n:?}");
            assert_eq!(
                n.config.get("user.incus-compose.project"),
                Some(&f.name),
                "{n:?}"
            );
            assert!(n.config.contains_key("ipv4.address"), "{n:?}");
        }
        let instances = f.instances();
        let mut names: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["web-1", "web-2"], "kill at {delay_ms} ms");
        assert!(instances.iter().all(|i| i.is_running()), "{instances:?}");
        // A third up has nothing left to do.
        let third = ok(&f.dir(0), &["up", "-d"]);
        assert!(third.contains("Nothing to change"), "{third}");
        // And `down` leaves no network behind.
        ok(&f.dir(0), &["down"]);
        let after = f.networks_named(&["front", "back"]);
        assert!(after.is_empty(), "kill at {delay_ms} ms: left {after:?}");
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
    let f = Fixture::new("byname", &[WEB]);
    ok(&f.dir(0), &["up", "-d"]);
    let empty = f.empty();

    let ps = ok(&empty, &["-p", &f.name, "ps", "--format", "json"]);
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
    let ls = ok(&empty, &["ls", "--format", "json"]);
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
    let table = ok(&empty, &["ls"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&f.name) && l.contains("running(3)")),
        "{table}"
    );
    assert!(ok(&empty, &["ls", "-q"]).lines().any(|l| l == f.name));

    // stop by name: every replica stopped; ls hides it, ls -a shows exited(3).
    ok(&empty, &["-p", &f.name, "stop", "-t", "1"]);
    assert!(f.instances().iter().all(|i| !i.is_running()));
    assert!(!ok(&empty, &["ls", "-q"]).lines().any(|l| l == f.name));
    let all = ok(&empty, &["ls", "-a"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with(&f.name) && l.contains("exited(3)")),
        "{all}"
    );
    ok(&empty, &["-p", &f.name, "start", "web"]);
    let running: Vec<String> = f
        .instances()
        .into_iter()
        .filter(|i| i.is_running())
        .map(|i| i.name)
        .collect();
    assert_eq!(running.len(), 2, "{running:?}");
    ok(&empty, &["-p", &f.name, "logs", "web"]);
    let unknown = run(&empty, &["-p", &f.name, "start", "nope"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no service \"nope\" deployed"),
        "{unknown:?}"
    );

    // down by name removes everything, the Incus project too.
    ok(&empty, &["-p", &f.name, "down", "-t", "1"]);
    assert!(f.instances().is_empty());
    assert!(
        block_on(f.client.get_project(&f.name)).is_err_and(|e| e.is_not_found()),
        "the Incus project is gone"
    );
    assert!(!ok(&empty, &["ls", "-a", "-q"]).lines().any(|l| l == f.name));
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
    let f = Fixture::new("twice", &[&a, &b]);
    let first = spawn(&f.dir(0), &["-p", &f.name, "up", "-d"]);
    std::thread::sleep(Duration::from_millis(200));
    let second = spawn(&f.dir(1), &["-p", &f.name, "up", "-d"]);
    let out_a = first.wait_with_output().expect("wait");
    let out_b = second.wait_with_output().expect("wait");
    show(&["up -d (file a)"], &out_a);
    show(&["up -d (file b)"], &out_b);
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
    let instances = f.instances();
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
    let f = Fixture::new("expiry", &[SLOW]);
    let mut holder = spawn(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_for(Duration::from_secs(30), || f.lock_value().is_some()),
        "the first up takes the lock"
    );
    holder.kill().expect("kill -9");
    let _ = holder.wait_with_output();
    let killed_at = Instant::now();
    let held: serde_json::Value =
        serde_json::from_str(&f.lock_value().expect("still held")).expect("lock json");

    let refused = run(&f.dir(0), &["--no-wait-lock", "up", "-d"]);
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

    let next = run(&f.dir(0), &["up", "-d"]);
    let waited = killed_at.elapsed();
    assert!(next.status.success());
    let err = String::from_utf8_lossy(&next.stderr);
    assert!(err.contains("waiting for the lock of project"), "{err}");
    assert!(err.contains("(expires in "), "{err}");
    assert!(
        waited < Duration::from_secs(TTL + 60),
        "took the lock within its expiry plus the up itself: {waited:?}"
    );
    assert_eq!(f.instances().len(), 6);
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

#[test]
fn a_run_that_loses_its_lock_stops_acting() {
    let f = Fixture::new("lost", &[LONG]);
    let holder = spawn(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_for(Duration::from_secs(30), || !f.instances().is_empty()),
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
    let out = holder.wait_with_output().expect("wait");
    show(&["up -d --parallel 1 (lock taken over)"], &out);
    assert!(!out.status.success(), "the run fails once its lock is lost");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("lost the lock of project {}", f.name)),
        "{err}"
    );
    assert!(err.contains("intruder:1:test holds it now"), "{err}");
    assert!(f.instances().len() < 12, "it stopped before the end");
    // It did not remove the other holder's lock.
    assert!(f.lock_value().is_some_and(|v| v.contains("intruder")));
    // Give the project back for the clean-up.
    let (project, etag) = block_on(f.client.get_project_with_etag(&f.name)).expect("project");
    let mut config = project.config.clone();
    config.remove(LOCK_KEY);
    let put = ic_incus::ProjectPut {
        description: project.description,
        config,
    };
    block_on(f.client.update_project_if_match(&f.name, &put, etag)).expect("remove");
}

#[test]
fn ctrl_c_during_up_gives_the_lock_back_at_once() {
    let f = Fixture::new("sigint", &[LONG]);
    let holder = spawn(&f.dir(0), &["up", "-d", "--parallel", "1"]);
    assert!(
        wait_for(Duration::from_secs(30), || !f.instances().is_empty()),
        "the up starts creating"
    );
    assert!(f.lock_value().is_some(), "held while it works");
    let status = Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = holder.wait_with_output().expect("wait");
    show(&["up -d --parallel 1 (Ctrl-C)"], &out);
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("releasing the lock"),
        "{out:?}"
    );
    assert_eq!(f.lock_value(), None, "released, not left to expire");
    // The next run neither waits nor refuses, and converges.
    let next = run(&f.dir(0), &["--no-wait-lock", "up", "-d"]);
    assert!(next.status.success());
    assert_eq!(f.instances().len(), 12);
}

/// An Incus project made by hand (by this test) for compose project `compose`: what was
/// deployed in it is taken down, then it is removed, when dropped.
struct HandMade {
    client: Client,
    name: String,
    compose: String,
    dir: PathBuf,
}

impl Drop for HandMade {
    fn drop(&mut self) {
        let _ = command(
            &self.dir,
            &[
                "-p",
                &self.compose,
                "--incus-project",
                &self.name,
                "down",
                "-v",
                "-t",
                "1",
            ],
        )
        .output();
        let _ = block_on(self.client.delete_project(&self.name));
    }
}

#[test]
fn a_project_incus_compose_did_not_create_is_never_written_to_for_the_lock() {
    let f = Fixture::new("foreign", &[WEB]);
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
    let _hand = HandMade {
        client: f.client.clone(),
        name: incus_project.clone(),
        compose: f.name.clone(),
        dir: f.empty(),
    };
    let before = block_on(f.client.get_project(&incus_project)).expect("project");
    let up = run(&f.dir(0), &["--incus-project", &incus_project, "up", "-d"]);
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
    ok(
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
