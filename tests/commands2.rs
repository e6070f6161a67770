//! `version`, `run`, `kill`, `pause`/`unpause`, `rm`, `create`, `cp`, `port`, `wait`, `stats`
//! and `events`: the built `incus-compose` binary against a real Incus cluster.
//!
//! Load the test cluster's environment first (`set -a && . .test-cluster/env && set +a`),
//! then `cargo test --test commands2`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses a compose project of its own (`c2-<tag>-<pid>-<n>`) and removes it
//! (`down -v`) even when it fails; at most two fixtures of this file run at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ic_incus::{Client, Instance};

mod common;
use common::{Slot, block_on, client};

const BIN: &str = env!("CARGO_BIN_EXE_incus-compose");

/// A compose project in a temporary directory, removed with `down -v` when dropped.
struct Fixture {
    _slot: Slot,
    name: String,
    dir: tempfile::TempDir,
    client: Client,
}

impl Fixture {
    fn new(tag: &str, yaml: &str) -> Fixture {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "c2-{tag}-{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let slot = Slot::take(2);
        let f = Fixture {
            _slot: slot,
            name,
            dir: tempfile::tempdir().expect("temp dir"),
            client: client(),
        };
        std::fs::write(f.path(), yaml.replace("{name}", &f.name)).expect("write compose file");
        f
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("compose.yaml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("INCUS_COMPOSE_INCUS_PROJECT");
        c
    }

    /// Run with `stdin` as standard input.
    fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run incus-compose");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("wait for incus-compose");
        eprintln!(
            "$ incus-compose {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, b"")
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "incus-compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn project(&self) -> Client {
        self.client.with_project(&self.name)
    }

    /// Instances of the Incus project, by name.
    fn instances(&self) -> BTreeMap<String, Instance> {
        block_on(self.project().instances())
            .expect("list instances")
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect()
    }

    fn status(&self, name: &str) -> String {
        block_on(self.project().instance_state(name))
            .expect("instance state")
            .status
    }

    /// `ps --format json` rows: (name, state).
    fn ps(&self, all: bool) -> Vec<(String, String)> {
        let mut args = vec!["ps", "--format", "json"];
        if all {
            args.push("-a");
        }
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(&args)).expect("ps --format json parses");
        rows.iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Custom volumes of the project labelled as anonymous volumes, by name.
    fn anonymous_volumes(&self) -> Vec<String> {
        let c = self.project();
        let mut out = Vec::new();
        for pool in block_on(c.storage_pools()).expect("pools") {
            for v in block_on(c.storage_volumes(&pool.name)).expect("volumes") {
                if v.kind == "custom" && v.config.contains_key("user.incus-compose.anonymous") {
                    out.push(v.name);
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            // Paused replicas cannot be stopped: thaw them first.
            let _ = self.command(&["unpause"]).output();
            let down = self
                .command(&["down", "-v", "--remove-orphans", "-t", "1"])
                .output();
            match down {
                Ok(o) if o.status.success() => break,
                Ok(o) => eprintln!(
                    "cleanup of {} failed:\n{}{}",
                    self.name,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup of {}: {e}", self.name),
            }
        }
    }
}

#[allow(dead_code)] // used by the events test
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

const APP_DB: &str = r#"
name: {name}
services:
  db:
    image: testapp/v1
  app:
    image: busybox
    depends_on: [db]
    environment:
      FROM_FILE: yes-from-file
"#;

#[test]
fn version_prints_its_own_version_and_the_incus_server_version() {
    let c = client();
    let server = block_on(c.server()).expect("server info");
    let out = Command::new(BIN).arg("version").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "incus-compose version {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Incus server version {}",
            server.environment.server_version
        )),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["version", "--format", "json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        v["incus"]["version"].as_str(),
        Some(server.environment.server_version.as_str())
    );
    // --version stays, and no server is needed for `version`.
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN)
        .arg("version")
        .env("INCUS_DIR", "/nonexistent")
        .env_remove("INCUS_SOCKET")
        .output()
        .expect("run");
    assert!(out.status.success(), "version works without a server");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not reachable"));
}

#[test]
fn run_rm_passes_the_exit_code_starts_dependencies_and_leaves_no_instance() {
    let f = Fixture::new("run", APP_DB);
    let out = f.run(&[
        "run",
        "--rm",
        "app",
        "sh",
        "-c",
        "echo out $FROM_FILE; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "the command's exit code");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out yes-from-file\n",
        "stdout is the command's alone (progress goes to stderr)"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    let instances = f.instances();
    assert_eq!(
        instances.keys().map(String::as_str).collect::<Vec<_>>(),
        ["db-1"],
        "the dependency runs, the one-off is gone"
    );
    assert!(instances["db-1"].is_running());
    assert!(f.anonymous_volumes().is_empty());

    // Environment, working directory and user of the command; no dependency started with
    // --no-deps (db is already up: stop it and check it stays stopped).
    f.ok(&["stop", "db"]);
    let out = f.ok(&[
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "1234",
        "app",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u)",
    ]);
    assert_eq!(out, "hello /tmp 1234\n");
    assert_eq!(f.status("db-1"), "Stopped", "--no-deps left db alone");
    let out = f.ok(&[
        "run",
        "--rm",
        "--no-deps",
        "--entrypoint",
        "echo from-entrypoint",
        "app",
    ]);
    assert_eq!(out, "from-entrypoint\n");

    // Without --rm the one-off stays, stopped; only `ps -a` lists it, and `up` does not take
    // it for a replica of app.
    let name = f.ok(&["run", "--no-deps", "app", "hostname"]);
    let name = name.trim().to_string();
    assert!(name.starts_with("app-run-"), "{name}");
    let one_off = &f.instances()[&name];
    assert_eq!(
        one_off
            .config
            .get("user.incus-compose.oneoff")
            .map(String::as_str),
        Some("true")
    );
    assert!(!one_off.is_running());
    f.ok(&["up", "-d"]);
    let names: Vec<String> = f.instances().into_keys().collect();
    assert_eq!(names, ["app-1".to_string(), name.clone(), "db-1".into()]);
    let ps: Vec<String> = f.ps(false).into_iter().map(|(n, _)| n).collect();
    assert_eq!(ps, ["app-1", "db-1"], "ps leaves one-offs out");
    let ps_all: Vec<String> = f.ps(true).into_iter().map(|(n, _)| n).collect();
    assert!(
        ps_all.contains(&name),
        "ps -a lists the one-off: {ps_all:?}"
    );
    // A second up changes nothing.
    assert!(f.ok(&["up", "-d"]).contains("Nothing to change"));

    let out = f.run(&["run", "--rm", "nosuch", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service \"nosuch\""));
}

#[test]
fn run_with_a_terminal_gives_the_command_one() {
    let f = Fixture::new("runtty", APP_DB);
    let inner = format!(
        "{BIN} run --rm --no-deps app sh -c 'test -t 0 && test -t 1 && echo tty-yes; exit 4'"
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .current_dir(f.dir.path())
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdin(Stdio::null())
        .output()
        .expect("run script(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty-yes"), "terminal session: {text:?}");
    assert_eq!(out.status.code(), Some(4), "{text:?}");
    assert!(
        !f.instances().keys().any(|n| n.starts_with("app-run-")),
        "removed"
    );
}

#[test]
fn pause_shows_paused_in_ps_refuses_exec_and_unpause_resumes() {
    let f = Fixture::new("pause", APP_DB);
    f.ok(&["up", "-d"]);
    f.ok(&["pause", "app"]);
    assert_eq!(f.status("app-1"), "Frozen");
    assert_eq!(f.status("db-1"), "Running", "only the named service");
    let ps = f.ps(false);
    assert!(
        ps.contains(&("app-1".to_string(), "paused".to_string())),
        "{ps:?}"
    );
    let out = f.run(&["exec", "-T", "app", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("app-1 is paused") && err.contains("unpause"),
        "{err}"
    );
    f.ok(&["unpause"]);
    assert_eq!(f.status("app-1"), "Running");
    assert_eq!(f.ok(&["exec", "-T", "app", "echo", "back"]), "back\n");
}

#[test]
fn kill_sigkill_stops_a_replica_and_leaves_the_other_services() {
    let f = Fixture::new("kill", APP_DB);
    f.ok(&["up", "-d"]);
    let out = f.ok(&["kill", "-s", "KILL", "db"]);
    assert!(out.contains("db-1 killed (SIGKILL)"), "{out}");
    assert_eq!(f.status("db-1"), "Stopped");
    assert_eq!(f.status("app-1"), "Running");
    // Incus does not restart it behind our back.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.status("db-1"), "Stopped");
    // Another signal goes to PID 1 from inside; a bad one is refused before anything.
    f.ok(&["kill", "-s", "SIGUSR2", "app"]);
    let out = f.run(&["kill", "-s", "SIGNOPE"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a signal name"));
    assert_eq!(f.status("app-1"), "Running");
}

#[test]
fn rm_removes_stopped_replicas_only_and_with_v_their_anonymous_volumes() {
    let f = Fixture::new(
        "rm",
        r#"
name: {name}
services:
  web:
    image: busybox
  cache:
    image: busybox
    volumes: ["/cache"]
"#,
    );
    f.ok(&["up", "-d"]);
    assert_eq!(f.anonymous_volumes().len(), 1);
    // Nothing stopped: nothing removed.
    let out = f.ok(&["rm", "-f"]);
    assert!(out.contains("No stopped replicas"), "{out}");
    assert_eq!(f.instances().len(), 2);

    // -s stops first; without -v the anonymous volume stays.
    f.ok(&["rm", "-s", "-f", "cache"]);
    assert_eq!(
        f.instances().keys().map(String::as_str).collect::<Vec<_>>(),
        ["web-1"]
    );
    assert_eq!(f.anonymous_volumes().len(), 1, "kept without -v");

    // With -v it goes too; `rm` without a terminal does not ask.
    f.ok(&["up", "-d"]);
    assert_eq!(f.anonymous_volumes().len(), 1, "the same volume again");
    f.ok(&["stop", "cache"]);
    f.ok(&["rm", "-v", "cache"]);
    assert_eq!(
        f.instances().keys().map(String::as_str).collect::<Vec<_>>(),
        ["web-1"]
    );
    assert!(f.anonymous_volumes().is_empty(), "removed with -v");
    assert_eq!(f.status("web-1"), "Running");
}

#[test]
fn create_makes_the_instances_without_starting_them() {
    let f = Fixture::new("create", APP_DB);
    f.ok(&["create"]);
    let instances = f.instances();
    assert_eq!(
        instances.keys().map(String::as_str).collect::<Vec<_>>(),
        ["app-1", "db-1"]
    );
    assert!(instances.values().all(|i| !i.is_running()));
    f.ok(&["start"]);
    assert_eq!(f.status("app-1"), "Running");
}
