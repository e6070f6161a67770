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
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::*;

impl Fixture {
    /// The instance's status (from the instance, not its state: Incus 7.0 fails a state read
    /// now and then right after the init exited).
    fn status(&self, name: &str) -> String {
        block_on(self.project().instance(name))
            .expect("instance")
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

    /// Custom volumes of the project labelled as anonymous volumes: (name, member).
    fn anonymous_volumes(&self) -> Vec<(String, String)> {
        let c = self.project();
        let mut out = Vec::new();
        for pool in block_on(c.storage_pools()).expect("pools") {
            for v in block_on(c.storage_volumes(&pool.name)).expect("volumes") {
                if v.kind == "custom" && v.config.contains_key("user.incus-compose.anonymous") {
                    out.push((v.name, v.location));
                }
            }
        }
        out.sort();
        out
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
    let f = Fixture::new("run").at_most(2).paused_ok().compose(APP_DB);
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
    // The dependency was converged as `up` converges it: recorded as a revision of db (so
    // `watch` keeps it as it is).
    let out = f.ok(&["history", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("history json");
    assert!(
        rows.iter()
            .any(|r| r["cause"] == "run app" && r["outcome"] == "completed"),
        "a completed revision `run app`: {out}"
    );

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
    let f = Fixture::new("runtty")
        .at_most(2)
        .paused_ok()
        .compose(APP_DB);
    let inner = format!(
        "{BIN} run --rm --no-deps app sh -c 'test -t 0 && test -t 1 && echo tty-yes; exit 4'"
    );
    let out = f.in_terminal(&inner);
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
    let f = Fixture::new("pause").at_most(2).paused_ok().compose(APP_DB);
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
    let f = Fixture::new("kill").at_most(2).paused_ok().compose(APP_DB);
    f.ok(&["up", "-d"]);
    let out = f.ok(&["kill", "-s", "KILL", "db"]);
    assert!(out.contains("db-1 killed (SIGKILL)"), "{out}");
    assert_eq!(f.status("db-1"), "Stopped");
    assert_eq!(f.status("app-1"), "Running");
    // Incus does not restart it behind our back.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.status("db-1"), "Stopped");
    // Another signal goes to PID 1 from inside; a bad one is refused before anything.
    // (busybox init rereads its inittab on SIGHUP and keeps running.)
    f.ok(&["kill", "-s", "HUP", "app"]);
    let out = f.run(&["kill", "-s", "SIGNOPE"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a signal name"));
    assert_eq!(f.status("app-1"), "Running");
}

#[test]
fn rm_removes_stopped_replicas_only_and_with_v_their_anonymous_volumes() {
    let f = Fixture::new("rm").at_most(2).paused_ok().compose(
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

    // With -v it goes too; `rm` without a terminal does not ask. (The new cache-1 may land on
    // another member, with a volume of its own there: only its own goes.)
    f.ok(&["up", "-d"]);
    let member = f.instances()["cache-1"].location.clone();
    let before = f.anonymous_volumes();
    assert!(before.iter().any(|(_, m)| m == &member), "{before:?}");
    f.ok(&["stop", "cache"]);
    f.ok(&["rm", "-v", "cache"]);
    assert_eq!(
        f.instances().keys().map(String::as_str).collect::<Vec<_>>(),
        ["web-1"]
    );
    let after = f.anonymous_volumes();
    assert!(
        !after.iter().any(|(_, m)| m == &member),
        "removed with -v: {after:?}"
    );
    assert_eq!(after.len(), before.len() - 1, "only that one: {after:?}");

    // On a terminal it asks first; `n` keeps the replica, `y` removes it.
    f.ok(&["stop", "web"]);
    let on_terminal = |answer: &str| {
        let mut child = Command::new("script")
            .args(["-qec", &format!("{BIN} rm web"), "/dev/null"])
            .current_dir(f.dir.path())
            .env_remove("COMPOSE_PROJECT_NAME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run script(1)");
        let mut input = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        // Answer once the question is up (polled, at most 30 s).
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&seen).contains("[y/N]") && Instant::now() < deadline {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.extend(chunk);
            }
        }
        input.write_all(answer.as_bytes()).expect("answer");
        child.wait().expect("wait");
        drop(input);
        reader.join().expect("stdout reader");
        seen.extend(rx.try_iter().flatten());
        String::from_utf8_lossy(&seen).into_owned()
    };
    let text = on_terminal("n\n");
    assert!(text.contains("Going to remove web-1"), "{text:?}");
    assert!(text.contains("Are you sure? [y/N]"), "{text:?}");
    assert!(f.instances().contains_key("web-1"), "kept after `n`");
    let text = on_terminal("y\n");
    assert!(text.contains("web-1 removed"), "{text:?}");
    assert!(f.instances().is_empty());
}

#[test]
fn create_makes_the_instances_without_starting_them() {
    let f = Fixture::new("create")
        .at_most(2)
        .paused_ok()
        .compose(APP_DB);
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

/// (relative path, mode, content or symlink target) of every entry under `root`, sorted.
fn tree(root: &std::path::Path) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).expect("read dir") {
            let e = e.expect("entry");
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let what = if meta.file_type().is_symlink() {
                format!(
                    "-> {}",
                    std::fs::read_link(&path).expect("link").to_string_lossy()
                )
            } else if meta.is_dir() {
                todo.push(path.clone());
                "dir".to_string()
            } else {
                std::fs::read_to_string(&path).expect("read")
            };
            let mode = if meta.file_type().is_symlink() {
                0
            } else {
                meta.permissions().mode() & 0o7777
            };
            out.push((rel, mode, what));
        }
    }
    out.sort();
    out
}

#[test]
fn cp_copies_a_directory_both_ways_keeping_contents_and_modes() {
    let f = Fixture::new("cp").at_most(2).paused_ok().compose(APP_DB);
    f.ok(&["up", "-d", "db"]);
    let local = tempfile::tempdir().expect("temp dir");
    let src = local.path().join("conf");
    std::fs::create_dir_all(src.join("sub/deeper")).expect("mkdir");
    std::fs::write(src.join("a.txt"), "alpha\n").expect("write");
    std::fs::write(src.join("sub/run.sh"), "#!/bin/sh\necho run\n").expect("write");
    std::fs::write(src.join("sub/deeper/secret"), "s3cret").expect("write");
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(
        src.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("sub/deeper/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("sub/deeper"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).expect("symlink");

    // Into an existing directory: it lands under its own name.
    f.ok(&["cp", src.to_str().unwrap(), "db:/tmp"]);
    let listing = f.ok(&[
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        "cd /tmp/conf && stat -c '%n %a' a.txt sub/run.sh sub/deeper sub/deeper/secret && cat sub/deeper/secret && readlink link",
    ]);
    assert_eq!(
        listing,
        // `cat secret` has no newline; `readlink link` follows it.
        "a.txt 640\nsub/run.sh 755\nsub/deeper 700\nsub/deeper/secret 600\ns3creta.txt\n",
        "{listing}"
    );
    assert_eq!(
        f.ok(&["exec", "-T", "db", "sh", "/tmp/conf/sub/run.sh"]),
        "run\n"
    );

    // And back out, to a new path: the same tree.
    let back = local.path().join("back");
    f.ok(&["cp", "db:/tmp/conf", back.to_str().unwrap()]);
    assert_eq!(tree(&back), tree(&src));
    // A single file to a file path; a missing source fails and names it.
    let one = local.path().join("one.txt");
    f.ok(&["cp", "db:/tmp/conf/a.txt", one.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&one).unwrap(), "alpha\n");
    let out = f.run(&["cp", "db:/nonexistent", one.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

#[test]
fn port_prints_the_member_address_of_a_published_port() {
    let f = Fixture::new("port").at_most(2).paused_ok().compose(
        r#"
name: {name}
services:
  web:
    image: testapp/v1
    ports: ["18187:80"]
"#,
    );
    f.ok(&["up", "-d"]);
    let web = &f.instances()["web-1"];
    let server = block_on(f.client.server()).expect("server");
    let out = f.ok(&["port", "web", "80"]);
    let (host, port) = out.trim().rsplit_once(':').expect("HOST:PORT");
    assert_eq!(port, "18187");
    if server.environment.server_clustered {
        let members = block_on(f.client.cluster_members()).expect("members");
        let m = members
            .iter()
            .find(|m| m.server_name == web.location)
            .expect("member");
        // https://ADDRESS:8443: the member's address, exactly.
        let address = m
            .url
            .trim_start_matches("https://")
            .rsplit_once(':')
            .map_or("", |(a, _)| a);
        assert!(
            !host.is_empty() && host == address,
            "{host} is {}'s address ({})",
            m.server_name,
            m.url
        );
    } else {
        assert_eq!(host, "0.0.0.0");
    }
    let out = f.run(&["port", "web", "81"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port 81/tcp"));
    let out = f.run(&["port", "--protocol", "udp", "web", "80"]);
    assert!(!out.status.success());
}

#[test]
fn wait_returns_once_the_replicas_stopped() {
    let f = Fixture::new("wait").at_most(2).paused_ok().compose(
        r#"
name: {name}
services:
  job:
    image: busybox
    command: ["sh", "-c", "sleep 6"]
  web:
    image: busybox
"#,
    );
    f.ok(&["up", "-d"]);
    // `up` counts a replica that already stopped as started (a one-shot command): make sure
    // the job runs before waiting for it.
    wait_for("job-1 running", Duration::from_secs(10), || {
        f.status("job-1") == "Running"
    });
    let started = Instant::now();
    let out = f.run(&["wait", "job"]);
    assert_eq!(out.status.code(), Some(0), "a clean stop");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    assert_eq!(
        f.status("job-1"),
        "Stopped",
        "after {:?}",
        started.elapsed()
    );
    assert_eq!(f.status("web-1"), "Running", "web was not waited for");
    assert!(started.elapsed() < Duration::from_secs(60));
    let out = f.run(&["wait", "nosuch"]);
    assert!(!out.status.success());
}

#[test]
fn stats_no_stream_json_parses_and_names_every_replica() {
    let f = Fixture::new("stats").at_most(2).paused_ok().compose(
        r#"
name: {name}
services:
  web:
    image: busybox
    deploy:
      replicas: 2
      resources: {limits: {memory: 256M}}
  db:
    image: testapp/v1
"#,
    );
    f.ok(&["up", "-d"]);
    let out = f.ok(&["stats", "--no-stream", "--format", "json"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let mut names: Vec<&str> = rows.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["db-1", "web-1", "web-2"]);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for r in &rows {
        assert!(r["processes"].as_i64().unwrap() >= 1, "{r}");
        // Incus 6.0 reports every container's memory use; Incus 7.0 in the harness reports none
        // (0: its daemon found no memory accounting on this host's hybrid cgroup layout).
        let memory = r["memory_bytes"].as_i64().expect("memory_bytes");
        if std::env::var("INCUS_COMPOSE_TEST_INCUS_LINE").as_deref() == Ok("7.0") {
            assert!(memory >= 0, "{r}");
        } else {
            assert!(memory > 0, "memory use is read: {r}");
        }
        let cpu = r["cpu_percent"].as_f64().expect("cpu_percent");
        assert!(
            cpu.is_finite() && (0.0..=100.0 * cpus).contains(&cpu),
            "a share of this machine's {cpus} CPUs: {r}"
        );
        assert!(r["net_rx_bytes"].as_i64().is_some(), "{r}");
        let member = r["Member"].as_str().unwrap();
        assert_eq!(member, f.instances()[r["Name"].as_str().unwrap()].location);
    }
    let web = rows.iter().find(|r| r["Name"] == "web-1").unwrap();
    assert_eq!(web["memory_limit_bytes"], 256 * 1024 * 1024);
    let table = f.ok(&["stats", "--no-stream", "web"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "header and the two web replicas");
}

#[test]
fn events_prints_a_line_for_a_replica_restarted_from_another_process() {
    let f = Fixture::new("events")
        .at_most(2)
        .paused_ok()
        .compose(APP_DB);
    f.ok(&["up", "-d"]);
    let mut child = f
        .command(&["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start events");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let it connect, then restart app-1 through Incus itself, as another terminal would.
    std::thread::sleep(Duration::from_secs(2));
    block_on(f.project().restart_instance("app-1", 10, true)).expect("restart app-1");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut started = false;
    while Instant::now() < deadline && !started {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            assert_eq!(v["type"], "instance", "{line}");
            assert_eq!(v["service"], "app", "{line}");
            // A forced restart is one `restarted` event; a clean one `shutdown` + `started`.
            started =
                v["id"] == "app-1" && (v["action"] == "restarted" || v["action"] == "started");
            seen.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "no restart event for app-1 in {seen:?}");
    assert!(
        seen.iter().all(|l| l.contains("\"app-1\"")),
        "only the restarted replica: {seen:?}"
    );
    // Instances of other Incus projects are never shown: db-1 did nothing, and the test's
    // own Incus project is the only one.
    wait_for("app-1 running", Duration::from_secs(20), || {
        f.status("app-1") == "Running"
    });
}

#[test]
fn run_detached_publishes_only_the_ports_asked_for_and_rm_s_removes_it() {
    let f = Fixture::new("rund").at_most(2).paused_ok().compose(
        r#"
name: {name}
services:
  web:
    image: busybox
    ports: ["18291:80"]
"#,
    );
    // `-p` after `run` is --publish, as in docker compose.
    let name = f.ok(&["run", "-d", "-p", "18292:8080", "web", "sleep", "300"]);
    let name = name.trim().to_string();
    let i = &f.instances()[&name];
    assert!(i.is_running(), "-d leaves it running");
    let proxies: BTreeMap<&String, &String> = i
        .devices
        .iter()
        .filter(|(_, d)| d.get("type").map(String::as_str) == Some("proxy"))
        .map(|(k, d)| (k, &d["listen"]))
        .collect();
    assert_eq!(
        proxies.values().map(|l| l.as_str()).collect::<Vec<_>>(),
        ["tcp:0.0.0.0:18292"],
        "its own port only, not the service's: {proxies:?}"
    );
    // The command runs in it (Incus starts a detached command just after `run -d` returns: under
    // load it shows in `ps` a moment later); `exec` never picks a one-off (web has no replica yet).
    let sleeps = || {
        let out = block_on(f.project().exec_output(
            &name,
            &ic_incus::ExecRequest::new(["sh", "-c", "ps -o args | grep -c '^sleep 300'"]),
            b"",
        ))
        .expect("exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut seen = sleeps();
    wait_until(Duration::from_secs(10), || {
        seen = sleeps();
        seen != "0"
    });
    assert_eq!(seen, "1");
    let out = f.run(&["exec", "-T", "web", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no instances"));
    f.ok(&["rm", "-s", "-f"]);
    assert!(f.instances().is_empty());
}
