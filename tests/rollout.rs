//! Rolling updates on the real test cluster: `update_config` (stop-first, start-first),
//! `failure_action` pause, in-place limit changes, updates killed half way. While `up` rolls,
//! the test fetches every replica's page over HTTP from its member's network namespace, again
//! and again, and counts the slots that answer (`tests/common/rollout.rs`, shared with
//! `tests/rollback.rs`: `failure_action` rollback and the `rollback` command, split off so that
//! the two run on different Incus lines at the same time).
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test rollout`. Without a reachable Incus cluster every test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[path = "common/rollout.rs"]
mod rollout_common;
use rollout_common::*;

#[test]
fn a_stop_first_update_keeps_three_of_four_replicas_answering_and_ends_on_v2() {
    let f = Fixture::new("stop").at_most(ALONE);
    f.write(&web("testapp/v1", "{parallelism: 1, monitor: 2s}"));
    f.ok(&["up", "-d", "--wait"]);
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    f.write(&web("testapp/v2", "{parallelism: 1, monitor: 2s}"));
    let (out, min, rounds) = f.up_while_polling("web");
    assert!(out.status.success(), "up failed");
    assert!(rounds.len() >= 4, "too few polling rounds: {rounds:?}");
    // One replica is down at a time; a record write (it restarts the tunnels on every member,
    // issue 24's open gap) can silence one more for a round: at most one such round.
    assert!(
        min >= 2 && rounds.iter().filter(|&&n| n < 3).count() <= 1,
        "fewer than 3 replicas answered in more than one round: {rounds:?}"
    );
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    // Exactly the declared replicas, under their usual names, no retired one left.
    let names: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(
        names,
        ["web-1", "web-2", "web-3", "web-4"]
            .map(String::from)
            .into()
    );
}

#[test]
fn a_start_first_update_keeps_all_four_replicas_answering() {
    let f = Fixture::new("start").at_most(ALONE);
    let cfg = "{parallelism: 1, order: start-first, monitor: 2s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/v2", cfg));
    let (out, min, rounds, fetches) = f.up_while_polling_counted("web");
    assert!(out.status.success(), "up failed");
    // Enough samples to see a gap: four replicas, each started, monitored 2 s, retired.
    assert!(rounds.len() >= 8, "too few polling rounds: {rounds:?}");
    // Every slot answers in every round: the old replica serves until its replacement does
    // (a request is tried again a second later, as a client would). The requests also go to
    // every running replica that answered once (new ones included, old ones until they are
    // retired), around the one record write at the end (it restarts the tunnels on every
    // member, the gap `names: resolver` closes): those that needed a second try or got none
    // are counted and bounded loosely; requests to a new replica before it first answered
    // (still starting, not in the service name yet) are reported apart. A replica stopped
    // before its replacement serves leaves its slot silent. What a client asking by name
    // sees is measured in `tests/names.rs`.
    assert!(
        fetches.requests + fetches.unready >= 4 * rounds.len(),
        "every round asked every replica: {}, {rounds:?}",
        fetches.summary()
    );
    eprintln!(
        "FIGURE start-first update, {} rounds: {}",
        rounds.len(),
        fetches.summary()
    );
    assert!(
        min >= 4,
        "only {min} slots answered at one moment: {rounds:?}"
    );
    assert!(
        fetches.served.len() >= 8,
        "old and new replicas of the four slots answered: {:?}",
        fetches.served
    );
    assert!(
        (fetches.retried + fetches.failed) * 20 <= fetches.requests,
        "more than 5% of the requests to replicas in service needed a second try or got none: {}",
        fetches.summary()
    );
    // The records name the new replicas, and the service name only their addresses.
    let records = f.dns_records();
    for n in 1..=4 {
        assert!(
            records.contains(&format!("host-record=web-{n}-b,")),
            "{records}"
        );
        assert!(
            !records.contains(&format!("host-record=web-{n},")),
            "{records}"
        );
    }
    assert_eq!(records.matches("host-record=web,").count(), 4, "{records}");
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let names: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(
        names,
        ["web-1-b", "web-2-b", "web-3-b", "web-4-b"]
            .map(String::from)
            .into()
    );
}

/// start-first on a spanning bridge: the old replicas serve on, marked, until the records
/// name the new ones. A new replica that turns healthy and then dies within `monitor` fails
/// the update; the rollback removes the new replicas and unmarks the old ones, which never
/// stopped: no record is written at all.
#[test]
fn a_start_first_update_whose_new_replica_dies_after_it_was_ready_rolls_back_to_the_old_replicas_still_running()
 {
    let f = Fixture::new("sfrb").at_most(ALONE);
    let cfg = "{parallelism: 1, order: start-first, monitor: 25s, failure_action: rollback}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    let before = f.dns_records();
    let started: BTreeMap<String, String> = f
        .full_instances()
        .into_iter()
        .filter(|i| i.name.starts_with("web-"))
        .map(|i| (i.name, i.last_used_at))
        .collect();
    // v2 serves (healthy) for a few seconds, then its process exits.
    let dying = web("testapp/v2", cfg).replace(
        "    image: testapp/v2\n",
        "    image: testapp/v2\n    command: [\"sh\", \"-c\", \"/etc/init.d/rcS; /usr/sbin/httpd -p 80 -h /www; sleep 12; exit 1\"]\n",
    );
    f.write(&dying);
    let (out, min, rounds) = f.up_while_polling("web");
    assert!(!out.status.success(), "up succeeded after a rollback");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back"), "{err}");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("serves on until the records name it"), "{log}");
    assert!(min >= 4, "only {min} answered at one moment: {rounds:?}");
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    let now: BTreeMap<String, String> = f
        .full_instances()
        .into_iter()
        .filter(|i| i.name.starts_with("web-"))
        .inspect(|i| {
            assert!(
                !i.config.contains_key("user.incus-compose.replaced-by"),
                "{} still marked",
                i.name
            )
        })
        .map(|i| (i.name, i.last_used_at))
        .collect();
    assert_eq!(now, started, "the old replicas never stopped");
    assert_eq!(f.dns_records(), before, "no record written");
}

#[test]
fn a_broken_image_with_failure_action_pause_stops_after_the_first_batch() {
    let f = Fixture::new("pause").at_most(CONCURRENT_FIXTURES);
    let cfg = "{parallelism: 1, monitor: 2s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    let web_replicas = |f: &Fixture| -> BTreeMap<String, (String, String)> {
        f.full_instances()
            .into_iter()
            .filter(|i| i.name.starts_with("web-"))
            .map(|i| (i.name, (i.created_at, i.last_used_at)))
            .collect()
    };
    let before = web_replicas(&f);
    assert_eq!(before.len(), 4, "{before:?}");
    f.write(&web("testapp/broken", cfg));
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success(), "up succeeded with a broken image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paused"), "{err}");
    // It stopped after the first batch (parallelism 1): one replica replaced, three untouched
    // (created and started when they were).
    let after = web_replicas(&f);
    let untouched = before
        .iter()
        .filter(|(n, v)| after.get(*n) == Some(*v))
        .count();
    assert_eq!(untouched, 3, "before {before:?}, after {after:?}");
    let h = history(&f, &[]);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[1].2, "paused", "the update is recorded as paused: {h:?}");
    // The three replicas not replaced still serve v1.
    assert_eq!(f.settled_answers("web", 3), ["v1"; 3]);
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&f.ok(&["ps", "--format", "json"])).expect("ps json");
    let web_rows: Vec<&serde_json::Value> = ps.iter().filter(|r| r["service"] == "web").collect();
    assert!(
        web_rows.len() >= 3,
        "ps lists at least the three running v1 replicas: {ps:?}"
    );
    assert!(
        web_rows.iter().all(|r| r["update"] == "paused"),
        "ps does not say paused: {ps:?}"
    );
    // A later up with a fixed file goes on and completes.
    f.write(&web("testapp/v2", cfg));
    f.ok(&["up", "-d"]);
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let h = history(&f, &[]);
    assert_eq!(h.last().map(|r| r.2.as_str()), Some("completed"), "{h:?}");
    assert_eq!(h[1].2, "paused", "{h:?}");
}

#[test]
fn a_memory_limit_change_is_applied_without_restarting_the_replicas() {
    let f = Fixture::new("live").at_most(CONCURRENT_FIXTURES);
    let text = |mem: &str| {
        format!(
            "name: {{name}}\nservices:\n  web:\n    image: testapp/v1\n    deploy:\n      replicas: 2\n      resources: {{limits: {{memory: {mem}}}}}\n"
        )
    };
    f.write(&text("64M"));
    f.ok(&["up", "-d"]);
    let before: BTreeMap<String, String> = f
        .full_instances()
        .into_iter()
        .map(|i| (i.name, i.last_used_at))
        .collect();
    f.write(&text("96M"));
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("updated in place"), "{out}");
    for i in f.full_instances() {
        assert_eq!(
            i.config.get("limits.memory").map(String::as_str),
            Some("100663296")
        );
        assert_eq!(
            Some(&i.last_used_at),
            before.get(&i.name),
            "{} restarted",
            i.name
        );
        assert!(i.is_running());
    }
}

#[test]
fn an_update_killed_half_way_is_finished_by_the_next_up_with_exactly_the_declared_replicas() {
    let f = Fixture::new("kill")
        .at_most(ALONE)
        .env("INCUS_COMPOSE_LOCK_TTL", "5");
    let cfg = "{parallelism: 1, monitor: 1s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    let v1 = created(&f);
    assert_eq!(v1.len(), 4, "{v1:?}");
    f.write(&web("testapp/v2", cfg));
    let mut child = f.spawn(&["up", "-d"]);
    // Killed (-9) right after the first replica was recreated: half way, for certain.
    let stdout = child.stdout.take().expect("up stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            eprintln!("up: {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("up recreated no replica within 2 minutes");
        if let Some((name, _)) = line
            .strip_prefix("[~] ")
            .and_then(|l| l.split_once(" recreated on "))
        {
            break name.to_string();
        }
    };
    child.kill().expect("kill -9");
    let _ = child.wait();
    let at_kill = created(&f);
    assert_ne!(at_kill.get(&first), v1.get(&first), "{first} was recreated");
    let h = history(&f, &[]);
    assert_eq!(
        h.last().map(|r| r.2.as_str()),
        Some("in progress"),
        "the killed update is left in progress: {h:?}"
    );
    // The next up goes on: stop-first, one at a time, so three of four answer at every moment.
    let (out, min, rounds) = f.up_while_polling("web");
    assert!(out.status.success(), "the second up failed");
    assert!(rounds.len() >= 4, "too few polling rounds: {rounds:?}");
    assert!(min >= 3, "only {min} answered at one moment: {rounds:?}");
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let end = created(&f);
    assert_eq!(
        end.keys().map(String::as_str).collect::<Vec<_>>(),
        ["web-1", "web-2", "web-3", "web-4"]
    );
    // Each replica replaced once: the one done before the kill is not replaced again, the
    // others are new.
    assert_eq!(
        end.get(&first),
        at_kill.get(&first),
        "{first} replaced twice"
    );
    for (name, t) in &end {
        assert_ne!(Some(t), v1.get(name), "{name} still the v1 replica");
    }
    let h = history(&f, &[]);
    assert_eq!(
        h.last().map(|r| r.2.as_str()),
        Some("completed"),
        "the update is recorded as completed: {h:?}"
    );
    assert!(
        h.iter().all(|r| r.2 != "in progress"),
        "no update left in progress: {h:?}"
    );
}

/// Four replicas of testapp without a healthcheck, failure_action `continue`, and the probe
/// on node1 (the member that stays).
fn four_over_three(image: &str) -> String {
    format!(
        r#"
name: {{name}}
services:
  web:
    image: {image}
    stop_grace_period: 1s
    deploy:
      replicas: 4
      update_config: {{parallelism: 1, monitor: 1s, failure_action: continue}}
  probe:
    image: testapp/v1
    deploy:
      placement: {{constraints: [node.hostname == node1]}}
"#
    )
}

#[test]
fn a_member_killed_during_an_update_ends_it_within_the_deadlines_and_the_next_up_converges() {
    // The fixture is declared first: its `down` runs after node3 is back.
    let f = Fixture::new("off").at_most(ALONE);
    f.write(&four_over_three("testapp/v1"));
    f.ok(&["up", "-d"]);
    let on3: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .filter(|i| i.location == "node3" && i.name.starts_with("web-"))
        .map(|i| i.name)
        .collect();
    assert!(!on3.is_empty(), "no replica of web on node3");
    let live = 4 - on3.len();
    f.write(&four_over_three("testapp/v2"));
    let turn = MemberTurn::take();
    let mut child = f
        .command(&["up", "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start up");
    // Killed as soon as the rolling update begins.
    let stdout = child.stdout.take().expect("up stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            eprintln!("up: {line}");
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("up printed no rolling update within a minute");
        if line.contains("rolling update of") {
            break;
        }
    }
    let mut killed = Killed::kill("3");
    let kill_time = Instant::now();
    f.offline.lock().unwrap().push("node3".into());
    let out = child.wait_with_output().expect("up output");
    let took = kill_time.elapsed();
    let stdout = reader.join().expect("reader");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    // The documented bound: a replica's deadline (120 s without a healthcheck, plus monitor).
    eprintln!(
        "FIGURE member killed -> up ended: {:.1} s (bound 121 s)",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(121),
        "up ran {took:?} after the kill"
    );
    // failure_action continue: the rest is updated, and `up` exits 1 naming the replicas of
    // node3 that failed.
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for n in &on3 {
        assert!(stderr.contains(n.as_str()), "{n} not named: {stderr}");
    }
    assert!(stderr.contains("node3"), "{stderr}");
    assert_eq!(f.settled_answers("web", live), vec!["v2"; live]);
    killed.revive();
    drop(turn);
    f.offline.lock().unwrap().clear();
    let again = f.run(&["up", "-d"]);
    assert!(
        again.status.success(),
        "the up after node3 came back failed"
    );
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let names: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(
        names,
        ["web-1", "web-2", "web-3", "web-4"]
            .map(String::from)
            .into()
    );
}

fn published(image: &str, port: u16) -> String {
    format!(
        r#"
name: {{name}}
services:
  web:
    image: {image}
    stop_grace_period: 1s
    ports: [{{target: 80, published: {port}, mode: host}}]
    healthcheck:
      test: "wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet"
      interval: 2s
      start_period: 20s
      start_interval: 1s
      retries: 2
    deploy:
      replicas: 2
      update_config: {{parallelism: 1, order: start-first, monitor: 1s}}
"#
    )
}

#[test]
fn a_start_first_update_with_a_published_port_moves_replicas_to_a_free_member_and_keeps_both_answering()
 {
    let f = Fixture::new("port").at_most(ALONE);
    // A host port of its own: the members' ports are shared by every suite.
    let port = 20_000 + (std::process::id() % 10_000) as u16;
    f.write(&published("testapp/v1", port));
    f.ok(&["up", "-d", "--wait"]);
    let members = member_ips();
    assert_eq!(members.len(), 3, "needs the 3-member test cluster");
    let before: BTreeMap<String, String> = f
        .full_instances()
        .into_iter()
        .filter(|i| i.name.starts_with("web-"))
        .map(|i| (i.location, i.name))
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");
    let free = members
        .iter()
        .find(|(m, _)| !before.contains_key(m))
        .map(|(m, _)| m.clone())
        .expect("a member without a replica");
    let answering = || {
        members
            .iter()
            .filter_map(|(m, ip)| published_answer(ip, port).map(|a| (m.clone(), a)))
            .collect::<BTreeMap<String, String>>()
    };
    assert_eq!(answering().len(), 2);
    f.write(&published("testapp/v2", port));
    let started = Instant::now();
    let mut child = f
        .command(&["up", "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start up");
    let mut rounds = Vec::new();
    while child.try_wait().expect("wait").is_none() {
        rounds.push(answering().len());
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "up ran for 5 minutes"
        );
    }
    let out = child.wait_with_output().expect("up output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ incus-compose up -d (polled the published port {} rounds: {rounds:?}; {:.1} s)\n{stdout}{}",
        rounds.len(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "up failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("replaced stop-first") && !stderr.contains("stop-first"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains(&format!("on {free}")), "{stdout}");
    assert!(rounds.len() >= 3, "too few polling rounds: {rounds:?}");
    let min = rounds.iter().copied().min().unwrap_or(0);
    assert!(
        min >= 2,
        "only {min} members answered on the published port at one moment: {rounds:?}"
    );
    // Both new replicas answer v2 on the port, one of them on the member that was free.
    let end = answering();
    assert_eq!(end.values().collect::<Vec<_>>(), ["v2", "v2"], "{end:?}");
    assert!(end.contains_key(&free), "{end:?}");
    let names: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(names, ["web-1-b", "web-2-b"].map(String::from).into());
}

/// Milliseconds since the Unix epoch.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[test]
fn an_update_killed_after_a_batch_is_resumed_no_sooner_than_the_delay_after_that_batch() {
    let f = Fixture::new("pace").at_most(CONCURRENT_FIXTURES);
    let text = |image: &str| {
        format!(
            r#"
name: {{name}}
services:
  web:
    image: {image}
    stop_grace_period: 1s
    healthcheck:
      test: "wget -q -O- http://127.0.0.1/ >/dev/null"
      interval: 2s
      start_period: 20s
      start_interval: 1s
      retries: 2
    deploy:
      replicas: 2
      update_config: {{parallelism: 1, delay: 15s, monitor: 1s}}
  probe:
    image: testapp/v1
"#
        )
    };
    let delay_ms = 15_000;
    f.write(&text("testapp/v1"));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&text("testapp/v2"));
    let mut child = f
        .command(&["up", "-d"])
        .env("INCUS_COMPOSE_LOCK_TTL", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start up");
    let stdout = child.stdout.take().expect("up stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // The first batch done, then killed (-9) while it waits for the delay.
    loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("up ended before its first batch");
        eprintln!("up: {line}");
        if line.contains("recreated on") {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(4));
    child.kill().expect("kill -9");
    let _ = child.wait();
    let killed = wall_ms();
    let project = block_on(f.client.get_project(&f.name)).expect("read the Incus project");
    let pace: serde_json::Value = serde_json::from_str(
        project
            .config
            .get("user.incus-compose.rollout-pace.web")
            .expect("no pace recorded"),
    )
    .expect("pace json");
    eprintln!("pace recorded: {pace}");
    // The next batch may start at the earliest `delay` after the last one was ready (after the
    // kill when it was still in flight).
    let earliest = pace["ready_at"].as_u64().unwrap_or(killed) + delay_ms;
    let mut again = f
        .command(&["up", "-d"])
        .env("INCUS_COMPOSE_LOCK_TTL", "5")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("up again");
    let stdout = again.stdout.take().expect("up stdout");
    let mut batch_at = None;
    let mut out = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
        eprintln!("up again: {line}");
        if batch_at.is_none() && line.contains("update batch 1:") {
            batch_at = Some(wall_ms());
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = again.wait().expect("wait");
    assert!(status.success(), "the resumed up failed: {out}");
    let batch_at = batch_at.expect("the resumed up replaced nothing");
    // It says it waits for the delay when the delay has not passed yet once it holds the lock
    // (the killed run's lease, longer while it was at work, may outlast the delay).
    assert!(
        out.contains("resuming an interrupted update") || wall_ms() >= earliest,
        "{out}"
    );
    eprintln!(
        "FIGURE resumed batch {:.1} s after the kill; the last batch was ready {:.1} s before it, delay 15 s",
        (batch_at as f64 - killed as f64) / 1000.0,
        (killed as f64 - (earliest - delay_ms) as f64) / 1000.0
    );
    assert!(
        batch_at >= earliest,
        "the resumed batch started {} ms before the delay had passed",
        earliest - batch_at
    );
    // Exactly one replica replaced by the resumed run (none twice), both answer v2.
    assert_eq!(out.matches("recreated on").count(), 1, "{out}");
    assert_eq!(f.settled_answers("web", 2), ["v2"; 2]);
    let names: BTreeSet<String> = f
        .full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect();
    assert_eq!(names, ["web-1", "web-2"].map(String::from).into());
    let project = block_on(f.client.get_project(&f.name)).expect("read the Incus project");
    assert!(
        !project
            .config
            .contains_key("user.incus-compose.rollout-pace.web"),
        "the pace stayed after the update completed"
    );
}
