//! Read-only commands with a cluster member offline, on the real test cluster: a stack of three
//! replicas, one per member; node3's daemon is killed (`kill-member 3`, under the machine-wide
//! member turn `/tmp/incus-compose-members.lock.d`); then `ps`, `ps --format json`, `logs`,
//! `stats --no-stream`, `top`, `images`, `ls`, `node ls` and `history` each answer for the
//! replicas on node1 and node2, print one warning naming node3 and its replica, and exit as
//! documented (0 for the listings, 1 for what comes from inside the replicas: `logs`, `top`,
//! `stats`, as `docker service logs` ends an incomplete stream). node3 is revived at the end,
//! and when the test fails (Drop).
//!
//! Runs on the 6.0 line (`set -a && . .test-cluster/env && set +a && cargo test --test
//! offline_member`) or the 7.0 line (`.test-cluster/env-7.0`); without a reachable Incus
//! cluster it fails.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, Killed, MemberTurn, cluster_client, wait_for};

/// The member killed.
const MEMBER: &str = "node3";

/// Three replicas, one per member, each printing a line on its console.
const STACK: &str = r#"
name: {name}
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo hello from $$(hostname); exec sleep 100000"]
    stop_grace_period: 1s
    deploy:
      replicas: 3
      placement: {max_replicas_per_node: 1}
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The one warning naming the offline member and its replica.
fn warns_once(stderr: &str, replica: &str) {
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:") && l.contains(MEMBER))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning naming {MEMBER}: {stderr}");
    assert!(warnings[0].contains(replica), "{replica} named: {stderr}");
    assert!(!stderr.contains("error:"), "no error: {stderr}");
}

#[test]
fn read_only_commands_answer_for_live_members_and_warn_naming_the_offline_one() {
    // Declared first: its `down` runs once node3 is back.
    let f = Fixture::with_client(cluster_client(), "ro").compose(STACK);
    let up = f.run(&["up", "-d"]);
    assert!(up.status.success(), "up failed: {}", text(&up.stderr));
    let ps = f.run(&["ps", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    let on = |member: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["member"] == member)
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect()
    };
    let lost = on(MEMBER);
    assert_eq!(lost.len(), 1, "one replica on {MEMBER}: {rows:?}");
    let lost = lost[0].clone();
    let mut live: Vec<String> = ["node1", "node2"].iter().flat_map(|m| on(m)).collect();
    live.sort();
    assert_eq!(live.len(), 2, "one replica on node1 and node2: {rows:?}");
    // The consoles have printed their line. Not polled with `logs`: reading a console log
    // may take what it read (a `logs` here was seen to leave the one after the kill without
    // the live replicas' lines).
    std::thread::sleep(Duration::from_secs(2));

    let turn = MemberTurn::take();
    let mut killed = Killed::kill("3");

    // ps: every replica listed, node3's with state unknown; exit 0.
    let t = Instant::now();
    let out = f.run(&["ps"]);
    eprintln!(
        "FIGURE ps with {MEMBER} offline: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    for n in &live {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(n.as_str()))
            .unwrap_or_else(|| panic!("{n} listed: {stdout}"));
        assert!(line.contains("Running"), "{line}");
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with(lost.as_str()))
        .unwrap_or_else(|| panic!("{lost} listed: {stdout}"));
    assert!(line.contains("unknown") && line.contains(MEMBER), "{line}");
    // Listed once (not also as pending), and the revisions do not differ.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with(lost.as_str()))
            .count(),
        1,
        "{stdout}"
    );
    assert!(!stdout.contains("REVISION"), "{stdout}");
    warns_once(&text(&out.stderr), &lost);

    let out = f.run(&["ps", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ps json");
    let mut running: Vec<&str> = rows
        .iter()
        .filter(|r| r["state"] == "Running")
        .filter_map(|r| r["name"].as_str())
        .collect();
    running.sort();
    assert_eq!(running, live.iter().map(String::as_str).collect::<Vec<_>>());
    warns_once(&text(&out.stderr), &lost);

    // logs: the lines of the live replicas, then exit 1 (incomplete, as docker's).
    let out = f.run(&["logs"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for n in &live {
        assert!(
            stdout.contains(&format!("hello from {n}")),
            "{n}'s line: {stdout}"
        );
    }
    warns_once(&text(&out.stderr), &lost);

    // stats and top: a row / a process table per live replica, exit 1.
    let out = f.run(&["stats", "--no-stream"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for n in &live {
        assert!(
            stdout.lines().any(|l| l.starts_with(n.as_str())),
            "{n}: {stdout}"
        );
    }
    assert!(!stdout.contains(&lost), "{stdout}");
    warns_once(&text(&out.stderr), &lost);

    let out = f.run(&["top"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for n in &live {
        assert!(stdout.lines().any(|l| l == n), "{n}: {stdout}");
    }
    assert!(stdout.contains("sleep"), "{stdout}");
    warns_once(&text(&out.stderr), &lost);

    // images: the live replicas' rows, exit 0.
    let out = f.run(&["images"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    for n in &live {
        assert!(
            stdout.lines().any(|l| l.starts_with(n.as_str())),
            "{n}: {stdout}"
        );
    }
    warns_once(&text(&out.stderr), &lost);

    // ls: the project, its running replicas counted, a warning naming node3.
    let out = f.run(&["ls"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(f.name.as_str()))
        .unwrap_or_else(|| panic!("{} listed: {stdout}", f.name));
    assert!(line.contains("running(2)"), "{line}");
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains(MEMBER) && l.contains(&lost)),
        "{stderr}"
    );

    // node ls: node3 offline, its replica still counted.
    let out = f.run(&["node", "ls"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(MEMBER))
        .unwrap_or_else(|| panic!("{MEMBER} listed: {stdout}"));
    assert!(
        line.contains("OFFLINE") && line.contains("1 (web=1)"),
        "{line}"
    );

    // history reads the project's record only.
    let out = f.run(&["history"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("completed"));

    killed.revive();
    drop(killed);
    drop(turn);
    // Back: no warning any more.
    wait_for(
        "ps without a warning after revive",
        Duration::from_secs(60),
        || {
            let out = f.run(&["ps"]);
            out.status.success() && !text(&out.stderr).contains("warning")
        },
    );
}
