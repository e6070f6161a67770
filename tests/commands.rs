//! `exec`, `scale`, `images`, `top` and `logs -f`: the built `incus-compose` binary against a
//! real Incus cluster.
//!
//! Load the test cluster's environment first (`set -a && . .test-cluster/env && set +a`),
//! then `cargo test --test commands`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses a compose project of its own (`cmd-<tag>-<pid>-<n>`) and removes it
//! (`down -v`) even when it fails; the tests of this file take turns (one fixture at a time).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ic_incus::Instance;

mod common;
use common::*;

const WEB2: &str = r#"
name: {name}
services:
  web:
    image: testapp/v1
    deploy: {replicas: 2}
"#;

#[test]
fn exec_passes_the_exit_code_and_stdin_through_and_runs_in_the_replica_index_names() {
    let f = Fixture::new("exec").at_most(1).compose(WEB2);
    f.ok(&["up", "-d"]);

    let out = f.run(&["exec", "-T", "web", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exit code passed through");

    let out = f.run_with_input(&["exec", "-T", "web", "cat"], b"hi\n");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stdin forwarded"
    );

    assert_eq!(f.ok(&["exec", "-T", "web", "hostname"]).trim(), "web-1");
    assert_eq!(
        f.ok(&["exec", "-T", "--index", "2", "web", "hostname"])
            .trim(),
        "web-2"
    );
    let out = f.run(&["exec", "-T", "--index", "3", "web", "true"]);
    assert!(!out.status.success(), "there is no third replica");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 (web-1), 2 (web-2)"));

    // stdout and stderr stay apart, and a command that ends at once keeps its output, also
    // four execs at a time (Incus closed each output socket right after the last output and
    // about one exec in 25 printed nothing, with exit code 0: see `Stream::ReadOnly`).
    let lost: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|t| {
                let f = &f;
                s.spawn(move || {
                    let mut lost = Vec::new();
                    for i in 0..15 {
                        let out =
                            f.run(&["exec", "-T", "web", "sh", "-c", "echo out; echo err >&2"]);
                        let (o, e) = (
                            String::from_utf8_lossy(&out.stdout).to_string(),
                            String::from_utf8_lossy(&out.stderr).to_string(),
                        );
                        if !out.status.success() || o != "out\n" || e != "err\n" {
                            lost.push(format!(
                                "{t}/{i}: {:?} stdout {o:?} stderr {e:?}",
                                out.status
                            ));
                        }
                    }
                    lost
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(
        lost.is_empty(),
        "{} of 60 execs lost output: {lost:#?}",
        lost.len()
    );

    // Environment, working directory, user (numeric and by name).
    let out = f.ok(&[
        "exec",
        "-T",
        "-e",
        "GREETING=hello",
        "-w",
        "/tmp",
        "-u",
        "1234:5678",
        "web",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(id -u) $(id -g)",
    ]);
    assert_eq!(out.trim(), "hello /tmp 1234 5678");
    assert_eq!(
        f.ok(&["exec", "-T", "-u", "root", "web", "id", "-u"])
            .trim(),
        "0"
    );

    // With a terminal (script(1) gives one): the command sees a tty, and its exit code
    // still comes through.
    let inner = format!("{BIN} exec web sh -c 'test -t 0 && test -t 1 && echo tty-yes; exit 5'");
    let out = f.in_terminal(&inner);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty-yes"), "terminal session: {text:?}");
    assert_eq!(out.status.code(), Some(5), "{text:?}");

    // -d returns at once; the command ran.
    f.ok(&["exec", "-d", "web", "sh", "-c", "echo done > /tmp/detached"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = f.run(&["exec", "-T", "web", "cat", "/tmp/detached"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
            break;
        }
        assert!(Instant::now() < deadline, "the detached command never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn scale_changes_the_number_of_replicas_and_leaves_other_instances_untouched() {
    let f = Fixture::new("scale").at_most(1).compose(
        r#"
name: {name}
services:
  web:
    image: busybox
  other:
    image: busybox
"#,
    );
    f.ok(&["up", "-d"]);
    let before = f.instances();
    assert_eq!(
        before.keys().map(String::as_str).collect::<Vec<_>>(),
        ["other-1", "web-1"]
    );

    f.ok(&["scale", "web=3"]);
    let up = f.instances();
    assert_eq!(
        up.keys().map(String::as_str).collect::<Vec<_>>(),
        ["other-1", "web-1", "web-2", "web-3"]
    );
    for name in ["other-1", "web-1"] {
        assert_eq!(
            up[name].created_at, before[name].created_at,
            "{name} was not recreated"
        );
        assert_eq!(up[name].config, before[name].config, "{name} unchanged");
    }
    assert!(up.values().all(Instance::is_running));

    f.ok(&["scale", "web=1"]);
    let down = f.instances();
    assert_eq!(
        down.keys().map(String::as_str).collect::<Vec<_>>(),
        ["other-1", "web-1"]
    );
    for name in ["other-1", "web-1"] {
        assert_eq!(down[name].created_at, before[name].created_at);
    }

    // A second identical scale changes nothing.
    let again = f.ok(&["scale", "web=1"]);
    assert!(again.contains("Nothing to change"), "{again}");
    let out = f.run(&["scale", "nosuch=2"]);
    assert!(!out.status.success());
}

#[test]
fn images_lists_each_instance_with_its_alias_fingerprint_and_size() {
    let f = Fixture::new("images").at_most(1).compose(
        r#"
name: {name}
services:
  web:
    image: testapp/v1
  tool:
    image: busybox
"#,
    );
    f.ok(&["up", "-d"]);
    let inst = f.instances();
    let fp_web = &inst["web-1"].config["volatile.base_image"];
    let fp_tool = &inst["tool-1"].config["volatile.base_image"];

    let table = f.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("INSTANCE"), "{table}");
    let tool: Vec<&str> = lines[1].split_whitespace().collect();
    let web: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&tool[..4], ["tool-1", "tool", "busybox", &fp_tool[..12]]);
    assert_eq!(&web[..4], ["web-1", "web", "testapp/v1", &fp_web[..12]]);
    assert!(web[4].ends_with("iB"), "a size: {}", web[4]);

    let json: serde_json::Value =
        serde_json::from_str(&f.ok(&["images", "--format", "json"])).expect("JSON");
    assert_eq!(json[1]["instance"], "web-1");
    assert_eq!(json[1]["image"], "testapp/v1");
    assert_eq!(json[1]["fingerprint"], fp_web.as_str());
    assert!(json[1]["size"].as_i64().is_some_and(|s| s > 0));

    let quiet = f.ok(&["images", "-q"]);
    let mut want = vec![fp_tool.clone(), fp_web.clone()];
    want.dedup();
    assert_eq!(quiet.lines().collect::<Vec<_>>(), want);

    // top: every running replica with its PID 1.
    let top = f.ok(&["top"]);
    for name in ["tool-1", "web-1"] {
        let block: Vec<&str> = top
            .split("\n\n")
            .find(|b| b.lines().next() == Some(name))
            .unwrap_or_else(|| panic!("no block for {name} in {top}"))
            .lines()
            .collect();
        assert!(block[1].contains("PID"), "{block:?}");
        assert!(
            block[2..]
                .iter()
                .any(|l| l.split_whitespace().next() == Some("1")),
            "PID 1 listed for {name}: {block:?}"
        );
    }
    let only = f.ok(&["top", "web"]);
    assert!(
        only.starts_with("web-1\n") && !only.contains("tool-1"),
        "{only}"
    );
}

#[test]
fn logs_follow_prints_lines_emitted_after_it_started_and_stops_cleanly_on_ctrl_c() {
    let f = Fixture::new("logs").at_most(1).compose(
        r#"
name: {name}
services:
  tick:
    image: busybox
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick-$$i; sleep 1; done"]
"#,
    );
    f.ok(&["up", "-d"]);
    let mut child = f
        .command(&["logs", "-f", "-t", "tick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what:?} from logs -f; got {seen:?}"),
            }
        }
    };
    // Live output of the service's own command...
    // (" tick-": the service's output after the timestamp, not the `tick-1 | ` prefix.)
    let first = wait_for(" tick-", &mut seen);
    // ...and a line that exists only after `logs -f` started: written to the console now.
    let marker = format!("marker-{}", std::process::id());
    f.ok(&[
        "exec",
        "-T",
        "tick",
        "sh",
        "-c",
        &format!("echo {marker} > /dev/console"),
    ]);
    let line = wait_for(&marker, &mut seen);
    assert!(line.starts_with("tick-1 | "), "prefixed: {line:?}");
    let stamp = line["tick-1 | ".len()..].split(' ').next().unwrap_or("");
    assert!(
        stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T'),
        "timestamp: {line:?} (first line {first:?})"
    );
    // Still following: the ticks go on after the marker.
    let n = |l: &str| -> u64 {
        l.rsplit("tick-")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let last_tick = seen
        .iter()
        .filter(|l| l.contains(" tick-"))
        .map(|l| n(l))
        .max()
        .expect("a tick was seen");
    assert!(last_tick >= 1, "ticks count from 1: {seen:?}");
    let later = wait_for(&format!(" tick-{}", last_tick + 2), &mut seen);
    assert!(n(&later) >= last_tick + 2, "a later tick: {later:?}");

    // Ctrl-C: it detaches and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("logs -f still running 15 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(code.success(), "exit status after Ctrl-C: {code:?}");
    let _ = reader.join();

    // The console was let go: following again works at once.
    let mut again = f
        .command(&["logs", "-f", "--tail", "0", "--no-log-prefix", "tick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let (tx, rx) = mpsc::channel::<String>();
    let out = again.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let _ = again.kill();
    let _ = again.wait();
    assert!(
        next.strip_prefix("tick-")
            .is_some_and(|k| k.parse::<u64>().is_ok()),
        "no prefix, live tick: {next:?}"
    );
}
