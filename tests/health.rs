//! Healthchecks and `depends_on` conditions: the built `incus-compose` binary against a real
//! Incus cluster (probes run through the Incus exec API inside the instances).
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test health`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses a compose project of its own (`hc-<tag>-<pid>-<n>`), takes turns with the
//! other tests of this file, and removes its project (`down -v`) even when it fails.

use std::collections::BTreeMap;
use std::process::Output;

mod common;
use common::*;

impl Fixture {
    /// `ps -a --format json`, by instance name.
    fn ps(&self) -> BTreeMap<String, serde_json::Value> {
        let out = self.ok(&["ps", "-a", "--format", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("ps json");
        rows.into_iter()
            .map(|r| (r["name"].as_str().expect("name").to_string(), r))
            .collect()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Index of the first line containing `needle` (panics with the text when absent).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

const MIXED: &str = r#"
name: {name}
services:
  web:
    image: testapp/v1
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]
      interval: 1s
      timeout: 5s
      retries: 3
  bad:
    image: busybox
    healthcheck:
      test: "echo bad-check-output; exit 1"
      interval: 1s
      retries: 2
  slow:
    image: busybox
    healthcheck:
      test: ["CMD-SHELL", "test -f /ready"]
      start_period: 10m
      start_interval: 1s
  plain:
    image: busybox
  nocheck:
    image: busybox
    healthcheck:
      disable: true
      test: ["CMD", "false"]
"#;

#[test]
fn ps_shows_healthy_unhealthy_starting_and_none_and_up_wait_fails_naming_what_is_not_healthy() {
    let f = Fixture::new("ps").at_most(1).compose(MIXED);
    let out = f.run(&["up", "--wait", "--wait-timeout", "25"]);
    assert!(
        !out.status.success(),
        "up --wait must fail: bad is unhealthy"
    );
    let err = stderr(&out);
    assert!(err.contains("service bad"), "{err}");
    assert!(err.contains("bad-1 is unhealthy"), "{err}");
    assert!(err.contains("bad-check-output"), "{err}");
    assert!(err.contains("service slow"), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(!err.contains("service web"), "web is healthy: {err}");
    assert!(!err.contains("service plain"), "plain runs: {err}");

    // Every instance was created and runs: --wait only judges.
    let instances = f.instances();
    for name in ["web-1", "bad-1", "slow-1", "plain-1", "nocheck-1"] {
        assert!(instances[name].is_running(), "{name} runs");
    }

    let ps = f.ps();
    assert_eq!(ps["web-1"]["health"], "healthy", "{:?}", ps["web-1"]);
    assert_eq!(ps["web-1"]["health_output"], "exit 0: v1");
    assert_eq!(ps["bad-1"]["health"], "unhealthy", "{:?}", ps["bad-1"]);
    assert_eq!(ps["bad-1"]["health_output"], "exit 1: bad-check-output");
    assert_eq!(ps["slow-1"]["health"], "starting", "{:?}", ps["slow-1"]);
    assert_eq!(ps["plain-1"]["health"], serde_json::Value::Null);
    assert_eq!(ps["nocheck-1"]["health"], serde_json::Value::Null);

    // The check really runs inside the instance: make `slow` ready and it turns healthy.
    let out = block_on(f.client.with_project(&f.name).exec_output(
        "slow-1",
        &ic_incus::ExecRequest::new(["touch", "/ready"]),
        &[],
    ))
    .expect("exec touch");
    assert_eq!(out.exit_code, 0);
    assert_eq!(f.ps()["slow-1"]["health"], "healthy");

    let table = f.ok(&["ps"]);
    let header = table.lines().next().expect("header");
    assert!(header.contains("HEALTH"), "{table}");
    let plain = table
        .lines()
        .find(|l| l.starts_with("plain-1"))
        .expect("plain row");
    assert!(plain.split_whitespace().any(|w| w == "-"), "{table}");
    let bad = table
        .lines()
        .find(|l| l.starts_with("bad-1"))
        .expect("bad row");
    assert!(bad.contains("unhealthy"), "{table}");
}

const NEVER_HEALTHY: &str = r#"
name: {name}
services:
  db:
    image: busybox
    healthcheck:
      test: ["CMD-SHELL", "echo db-not-ready-yet >&2; exit 1"]
      interval: 1s
      retries: 2
  app:
    image: busybox
    depends_on:
      db: {condition: service_healthy}
"#;

#[test]
fn up_fails_naming_a_never_healthy_dependency_its_instance_and_probe_output_and_leaves_the_dependent_uncreated()
 {
    let f = Fixture::new("never").at_most(1).compose(NEVER_HEALTHY);
    let out = f.run(&["up"]);
    assert!(!out.status.success(), "up must fail");
    let err = stderr(&out);
    assert!(err.contains("service db"), "{err}");
    assert!(
        err.contains("db-1 is unhealthy after 2 failed probe(s)"),
        "{err}"
    );
    assert!(err.contains("db-not-ready-yet"), "{err}");
    assert!(err.contains("app not started"), "{err}");
    let instances = f.instances();
    assert!(instances["db-1"].is_running(), "the dependency was started");
    assert!(
        !instances.contains_key("app-1"),
        "the dependent must not be created: {:?}",
        instances.keys()
    );
}

const HEALTHY_CHAIN: &str = r#"
name: {name}
services:
  web:
    image: testapp/v1
    healthcheck:
      test: "wget -q -O- http://127.0.0.1/ | grep -q v1"
      interval: 2s
      start_period: 30s
      start_interval: 1s
  app:
    image: busybox
    depends_on:
      web: {condition: service_healthy}
      extra: {condition: service_healthy, required: false}
  extra:
    image: busybox
"#;

#[test]
fn a_service_healthy_dependent_starts_after_its_dependency_is_healthy_and_up_wait_succeeds() {
    let f = Fixture::new("chain").at_most(1).compose(HEALTHY_CHAIN);
    let out = f.run(&["up", "--wait"]);
    assert!(out.status.success(), "up --wait failed: {}", stderr(&out));
    let text = stdout(&out);
    let healthy = line_of(&text, "[+] web healthy");
    let created = line_of(&text, "app-1 created");
    assert!(
        healthy < created,
        "app-1 created before web was healthy:\n{text}"
    );
    assert!(text.contains("every service is running"), "{text}");
    // `extra` has no healthcheck: an optional service_healthy dependency warns and goes on.
    let err = stderr(&out);
    assert!(err.contains("optional dependency extra"), "{err}");
    assert!(err.contains("has no healthcheck"), "{err}");
    let instances = f.instances();
    assert!(instances["app-1"].is_running());
    assert_eq!(f.ps()["web-1"]["health"], "healthy");

    // A second `up` changes nothing and still succeeds with --wait.
    let again = f.ok(&["up", "--wait"]);
    assert!(again.contains("Nothing to change"), "{again}");

    // `restart`, and `stop` then `start`: app starts again only once web is healthy again.
    for steps in [
        &[&["restart"][..]][..],
        &[&["stop"][..], &["start"][..]][..],
    ] {
        let mut text = String::new();
        for args in steps {
            text = f.ok(args);
        }
        let healthy = line_of(&text, "[+] web healthy");
        let started = line_of(&text, "[+] app-1 started");
        assert!(
            healthy < started,
            "app-1 started before web was healthy:\n{text}"
        );
        assert!(f.instances()["app-1"].is_running());
    }
}

const ONE_SHOT: &str = r#"
name: {name}
services:
  migrate:
    image: busybox
    command: ["sh", "-c", "sleep 3; echo migrated"]
  app:
    image: busybox
    depends_on:
      migrate: {condition: service_completed_successfully}
"#;

#[test]
fn a_service_completed_successfully_dependent_starts_after_the_one_shot_command_stopped() {
    let f = Fixture::new("once").at_most(1).compose(ONE_SHOT);
    let out = f.run(&["up"]);
    assert!(out.status.success(), "up failed: {}", stderr(&out));
    let text = stdout(&out);
    let completed = line_of(&text, "[+] migrate completed");
    let created = line_of(&text, "app-1 created");
    assert!(
        completed < created,
        "app-1 created before migrate ended:\n{text}"
    );
    let instances = f.instances();
    assert_eq!(instances["migrate-1"].status, "Stopped");
    assert!(instances["app-1"].is_running());
    // The one-shot ran its command: what it printed is in its console log.
    let logs = f.ok(&["logs", "migrate"]);
    assert!(logs.contains("migrated"), "{logs}");
}
