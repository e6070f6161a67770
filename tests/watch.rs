//! `watch` on the real test cluster: a stopped replica is started again (`watch --once`), a
//! member that joins gets the global service's instance from a running `watch` within
//! seconds, a killed member's replicas are re-created on live members after the grace period
//! and the surplus is removed when it comes back, a second `watch` takes over when the
//! lease holder dies, and `restart_policy` holds: a failing replica is restarted at most
//! `max_attempts` times within `window`, then left stopped; `condition: none` never.
//!
//! The member-changing tests disturb other suites: run this suite on the Incus 7.0 line
//! (`scripts/test-cluster up --incus 7.0 && set -a && . .test-cluster/env-7.0 && set +a &&
//! cargo test --test watch`); `scripts/test` runs it there only (the README's table of suites
//! and lines), and `cargo test` leaves it out (`test = false`). Each test uses a compose project
//! of its own (`ww-<tag>-<pid>-<n>`), removed with `down -v` even when it fails, and always
//! restores the member set (`remove-member` after `add-member`, `revive-member` after
//! `kill-member`). The figures (join -> instance running, failure -> replacement running,
//! lease takeover) are printed on stderr (`--nocapture`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ic_incus::Instance;

/// Tests that change the member set, run `watch --all` (which acts on every project of the
/// server) or count `restart_policy` restarts run alone: with another test's load, Incus's
/// own restart of an exit came late enough that `watch` had started the replica itself, and
/// both counted (a budget of 2 spent on one restart: CI, 2026-12-07).
const ALONE: usize = 1;
/// The others, each watching its own project, two at a time.
const CONCURRENT: usize = 2;

impl Fixture {
    /// `watch -p NAME ARGS` from a directory without a compose file (by name, as a service).
    fn watch_cmd(&self, args: &[&str]) -> Command {
        let mut all = vec!["-p", self.name.as_str(), "watch"];
        all.extend_from_slice(args);
        incus_compose(&std::env::temp_dir(), &all)
    }

    fn watch_once(&self) -> String {
        self.watch_once_with(&[])
    }

    fn watch_once_with(&self, extra: &[&str]) -> String {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let out = self
            .watch_cmd(&args)
            .output()
            .expect("run incus-compose watch");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "$ incus-compose -p {} watch --once  (exit {:?})\n{stdout}{}",
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "watch --once failed");
        assert!(
            stdout.contains("holds the watch lease"),
            "watch --once did not get the watch lease: {stdout}"
        );
        stdout
    }

    /// A background `watch` whose log lines arrive on the returned channel.
    fn spawn_watch(&self, args: &[&str], env: &[(&str, &str)]) -> Watcher {
        let mut cmd = self.watch_cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn watch");
        let stdout = child.stdout.take().expect("watch stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("watch: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watcher { child, lines: rx }
    }

    /// Instances as Incus lists them, every member asked as one that may not answer.
    fn listed(&self) -> BTreeMap<String, Instance> {
        // Stand-ins (instances of a member that does not answer) as Incus lists them.
        let offline: Vec<String> = members(&self.client).into_iter().map(|(m, _)| m).collect();
        block_on(
            self.client
                .with_project(&self.name)
                .instances_with_offline(&offline),
        )
        .expect("list instances")
        .into_iter()
        .filter(|i| !is_resolver(i))
        .map(|i| (i.name.clone(), i))
        .collect()
    }

    /// Running instances on members in `on` (all members when empty): name -> member.
    fn running_on(&self, on: &[&str]) -> BTreeMap<String, String> {
        self.listed()
            .into_values()
            .filter(|i| i.is_running() && (on.is_empty() || on.contains(&i.location.as_str())))
            .map(|i| (i.name, i.location))
            .collect()
    }

    /// Waits until `check` holds (polling every 250 ms), at most `limit`; the time it took.
    fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Fixture) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            if check(self) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?}; instances: {:?}",
                self.listed()
                    .values()
                    .map(|i| (&i.name, &i.location, &i.status))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A running `watch` process, killed when dropped.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    /// Waits for a log line containing `needle`; the line.
    fn line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("watch said no line with {needle:?} within {limit:?}"),
            }
        }
    }

    /// Dies at once (`kill -9`): its leases stay until they expire.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops as a service manager stops it (SIGTERM): it gives its leases back.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An idle busybox service without networks (fast to create).
fn services(yaml: &str) -> String {
    format!("name: {{name}}\nservices:\n{yaml}")
}

const GLOBAL: &str =
    "  hh:\n    image: busybox\n    network_mode: none\n    deploy: {mode: global}\n";

/// `web`: `n` replicas that Incus and `watch` restart (`restart: always`).
fn replicated(n: u32) -> String {
    format!(
        "  web:\n    image: busybox\n    network_mode: none\n    restart: always\n    deploy: {{replicas: {n}}}\n"
    )
}

#[test]
fn watch_once_starts_a_stopped_replica_and_then_has_nothing_to_do() {
    let _turn = Slot::take(CONCURRENT);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("once");
    f.write(&services(&replicated(2)));
    f.ok(&["up", "-d"]);
    block_on(c.with_project(&f.name).stop_instance("web-1", 5, true)).expect("stop web-1");
    assert_eq!(f.running_on(&[]).len(), 1);
    let log = f.watch_once();
    assert!(log.contains("web-1 started"), "{log}");
    assert_eq!(f.running_on(&[]).len(), 2);
    let again = f.watch_once();
    assert!(
        !again.contains("started") && !again.contains("created"),
        "{again}"
    );
}

#[test]
fn watch_once_leaves_a_stopped_replica_of_a_service_without_restart_policy_stopped() {
    let _turn = Slot::take(CONCURRENT);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("norestart");
    f.write(&services(
        "  job:\n    image: busybox\n    network_mode: none\n    deploy: {restart_policy: {condition: none}}\n",
    ));
    f.ok(&["up", "-d"]);
    block_on(c.with_project(&f.name).stop_instance("job-1", 5, true)).expect("stop job-1");
    let log = f.watch_once_with(&["--format", "json"]);
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "left-stopped" && e["object"] == "job-1"),
        "{log}"
    );
    assert!(f.running_on(&[]).is_empty());
}

#[test]
fn a_running_watch_gives_a_joining_member_its_global_instance_and_changes_nothing_else() {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("join");
    f.write(&services(&format!("{GLOBAL}{}", replicated(2))));
    f.ok(&["up", "-d"]);
    let before: BTreeMap<String, (String, String)> = f
        .listed()
        .into_values()
        .map(|i| (i.name, (i.location, i.created_at)))
        .collect();
    assert_eq!(before.len(), 5);
    let w = f.spawn_watch(&["--interval", "2"], &[]);
    w.line("holds the watch lease", Duration::from_secs(30));
    let joined = Instant::now();
    let _node4 = ExtraMember::add(&c);
    // Measured 1.9 s (README): the member-added event wakes `watch`; 15 s allows for a loaded
    // machine, not for polling alone.
    let took = f.wait_for("hh-node4 running on node4", Duration::from_secs(15), |f| {
        f.running_on(&["node4"]).contains_key("hh-node4")
    });
    eprintln!(
        "FIGURE join -> global instance running: {:.1} s (after add-member returned)",
        took.as_secs_f64()
    );
    let line = w.line("hh-node4 created on node4", Duration::from_secs(10));
    assert!(line.contains("global service, member node4"), "{line}");
    drop(w);
    let after: BTreeMap<String, (String, String)> = f
        .listed()
        .into_values()
        .map(|i| (i.name, (i.location, i.created_at)))
        .collect();
    for (name, was) in &before {
        assert_eq!(after.get(name), Some(was), "{name} changed");
    }
    assert_eq!(after.len(), 6, "{after:?}");
    let again = f.watch_once();
    assert!(!again.contains("created"), "{again}");
    eprintln!(
        "(add-member took {:.1} s)",
        joined.elapsed().as_secs_f64() - took.as_secs_f64()
    );
    // The project goes before node4 does (its instance there must be deleted first).
    drop(f);
}

#[test]
fn replicas_of_a_killed_member_run_on_live_members_after_the_grace_period_and_exactly_six_remain_when_it_returns()
 {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("fail");
    f.write(&services(&replicated(6)));
    f.ok(&["up", "-d"]);
    let on3: Vec<String> = f
        .listed()
        .into_values()
        .filter(|i| i.location == "node3")
        .map(|i| i.name)
        .collect();
    assert_eq!(on3.len(), 2, "{on3:?}");
    // The replicas on the members that stay: they must live on untouched.
    let survivors: BTreeMap<String, String> = f
        .listed()
        .into_values()
        .filter(|i| i.location != "node3")
        .map(|i| (i.name, i.created_at))
        .collect();
    assert_eq!(survivors.len(), 4, "{survivors:?}");
    let grace = 5;
    let threshold = offline_threshold();
    let w = f.spawn_watch(&["--interval", "2", "--grace", &grace.to_string()], &[]);
    w.line("holds the watch lease", Duration::from_secs(30));
    let mut killed = Killed::kill("3");
    // Measured 22.6 s (README: ~3 s more than the threshold until Incus lists it offline, the
    // grace, up to 2 s of polling, ~1 s to create): the bound is that plus 20 s of slack.
    let took = f.wait_for(
        "6 replicas running on node1 and node2",
        Duration::from_secs(threshold + grace + 20),
        |f| f.running_on(&["node1", "node2"]).len() == 6,
    );
    let running = f.running_on(&["node1", "node2"]);
    for (name, created) in &survivors {
        assert!(
            running.contains_key(name),
            "{name} no longer runs: {running:?}"
        );
        assert_eq!(
            f.listed().get(name).map(|i| &i.created_at),
            Some(created),
            "{name} was replaced though its member stayed"
        );
    }
    eprintln!(
        "FIGURE member failure -> replacements running: {:.1} s (Incus offline threshold {threshold} s + grace {grace} s)",
        took.as_secs_f64()
    );
    let line = w.line("created on node", Duration::from_secs(10));
    assert!(line.contains("member node3 offline"), "{line}");
    killed.revive();
    // Measured 5.5 s (README).
    let took = f.wait_for(
        "exactly 6 replicas once node3 is back",
        Duration::from_secs(30),
        |f| {
            let all = f.listed();
            all.len() == 6 && all.values().all(|i| i.is_running())
        },
    );
    eprintln!(
        "FIGURE member back -> surplus removed: {:.1} s",
        took.as_secs_f64()
    );
    drop(w);
    // The replacements were kept, the returning ones removed.
    let names: Vec<String> = f.listed().into_keys().collect();
    for n in &on3 {
        assert!(
            !names.contains(n),
            "{n} came back with node3 and stayed: {names:?}"
        );
    }
    let again = f.watch_once();
    assert!(
        !again.contains("created") && !again.contains("removed"),
        "{again}"
    );
}

#[test]
fn a_second_watch_takes_over_within_the_lease_time_when_the_holder_dies() {
    let _turn = Slot::take(CONCURRENT);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("lease");
    f.write(&services(&replicated(1)));
    f.ok(&["up", "-d"]);
    let ttl = 6;
    let env = [("INCUS_COMPOSE_LOCK_TTL", "6")];
    let mut a = f.spawn_watch(&["--interval", "1"], &env);
    a.line("holds the watch lease", Duration::from_secs(30));
    let b = f.spawn_watch(&["--interval", "1"], &env);
    b.line("standing by", Duration::from_secs(30));
    a.kill();
    let died = Instant::now();
    b.line("holds the watch lease", Duration::from_secs(ttl + 10));
    let takeover = died.elapsed();
    eprintln!(
        "FIGURE lease takeover: {:.1} s (lease {ttl} s)",
        takeover.as_secs_f64()
    );
    assert!(takeover <= Duration::from_secs(ttl + 3), "{takeover:?}");
    // And it acts.
    block_on(c.with_project(&f.name).stop_instance("web-1", 5, true)).expect("stop web-1");
    b.line("web-1 started", Duration::from_secs(30));
    assert_eq!(f.running_on(&[]).len(), 1);
}

/// A replica's process (`web`, busybox) that notes each start in `/starts` and exits with
/// status 3: the first run after 10 s (time for `watch` to take its lease), then after 3 s.
fn failing(policy: &str) -> String {
    format!(
        "  web:\n    image: busybox\n    network_mode: none\n    command: [\"sh\", \"-c\", \"echo x >> /starts; [ $$(wc -l < /starts) -eq 1 ] && sleep 7; sleep 3; exit 3\"]\n    deploy: {{restart_policy: {policy}}}\n"
    )
}

/// How many times web-1's process started (lines of `/starts`; readable while it is stopped).
fn starts(f: &Fixture) -> usize {
    let bytes = block_on(f.client.with_project(&f.name).pull_file("web-1", "/starts"))
        .expect("read /starts of web-1");
    String::from_utf8_lossy(&bytes).lines().count()
}

#[test]
fn a_replica_that_keeps_failing_is_restarted_max_attempts_times_within_the_window_then_left_stopped_and_reported()
 {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("maxatt");
    f.write(&services(&failing(
        "{condition: on-failure, max_attempts: 2, window: 60s}",
    )));
    let up = f.ok(&["up", "-d"]);
    let w = f.spawn_watch(&["--interval", "1"], &[]);
    w.line("holds the watch lease", Duration::from_secs(8));
    let started = Instant::now();
    let line = w.line("web-1 left stopped", Duration::from_secs(60));
    assert!(
        line.contains(
            "web-1 left stopped: restarted 2 times within 60 s (restart_policy.max_attempts 2)"
        ),
        "{line}"
    );
    eprintln!(
        "left stopped {:.1} s after watch took its lease",
        started.elapsed().as_secs_f64()
    );
    // And it stays stopped: nobody (neither Incus nor watch) starts it again.
    std::thread::sleep(Duration::from_secs(6));
    assert!(f.running_on(&[]).is_empty(), "web-1 runs again");
    assert_eq!(starts(&f), 3, "the first start and exactly 2 restarts");
    let ps = f.ok(&["ps", "-a"]);
    assert!(ps.contains("restart budget spent"), "{ps}\n(up said: {up})");
    drop(w);
}

#[test]
fn a_replica_with_restart_policy_condition_none_is_never_restarted_while_watch_runs() {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("condnone");
    f.write(&services(&failing("{condition: none, max_attempts: 2}")));
    f.ok(&["up", "-d"]);
    let w = f.spawn_watch(&["--interval", "1"], &[]);
    w.line("holds the watch lease", Duration::from_secs(8));
    f.wait_for("web-1 stopped", Duration::from_secs(30), |f| {
        f.running_on(&[]).is_empty()
    });
    w.line("web-1 is stopped and left so", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(8));
    assert!(f.running_on(&[]).is_empty(), "web-1 was started again");
    assert_eq!(starts(&f), 1, "web-1 was restarted");
    drop(w);
}

#[test]
fn an_unhealthy_replica_is_restarted_within_the_same_budget_then_stopped_and_left_stopped() {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("unhealthy");
    // Healthy for 4 s after each start, then its healthcheck fails (and stays failing); it
    // stops cleanly on SIGTERM.
    f.write(&services(
        "  web:\n    image: busybox\n    network_mode: none\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo x >> /starts; touch /healthy; sleep 4; rm /healthy; while :; do sleep 1; done\"]\n    healthcheck: {test: [\"CMD\", \"test\", \"-e\", \"/healthy\"], interval: 1s, timeout: 2s, retries: 2}\n    deploy: {restart_policy: {condition: any, max_attempts: 2, window: 60s}}\n",
    ));
    f.ok(&["up", "-d"]);
    let w = f.spawn_watch(&["--interval", "1"], &[]);
    w.line("holds the watch lease", Duration::from_secs(8));
    let started = Instant::now();
    w.line("web-1 restarted: it was unhealthy", Duration::from_secs(30));
    w.line("web-1 restarted: it was unhealthy", Duration::from_secs(30));
    let line = w.line("web-1 left stopped", Duration::from_secs(30));
    assert!(
        line.contains("restarted 2 times within 60 s (restart_policy.max_attempts 2)"),
        "{line}"
    );
    eprintln!(
        "restarted twice for failing its healthcheck, then stopped: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    f.wait_for("web-1 stopped", Duration::from_secs(20), |f| {
        f.running_on(&[]).is_empty()
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(f.running_on(&[]).is_empty(), "web-1 runs again");
    assert_eq!(starts(&f), 3, "the first start and exactly 2 restarts");
    drop(w);
}

#[test]
fn a_stopped_replica_is_started_by_watch_after_the_restart_policy_delay_and_counted() {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("delay");
    f.write(&services(
        "  web:\n    image: busybox\n    network_mode: none\n    deploy: {restart_policy: {condition: any, delay: 4s, max_attempts: 3}}\n",
    ));
    f.ok(&["up", "-d"]);
    let w = f.spawn_watch(&["--interval", "1"], &[]);
    w.line("holds the watch lease", Duration::from_secs(8));
    // Stopped from outside: Incus does not restart it, watch does, after the delay.
    block_on(c.with_project(&f.name).stop_instance("web-1", 5, true)).expect("stop web-1");
    let stopped = Instant::now();
    let line = w.line("web-1 started", Duration::from_secs(20));
    let took = stopped.elapsed();
    assert!(line.contains("restart 1, restart_policy"), "{line}");
    assert!(
        took >= Duration::from_secs(3),
        "started {took:?} after it stopped, before the 4 s delay"
    );
    f.wait_for("web-1 running", Duration::from_secs(10), |f| {
        f.running_on(&[]).contains_key("web-1")
    });
    let i = block_on(c.with_project(&f.name).instance("web-1")).expect("read web-1");
    let counted = i
        .config
        .get("user.incus-compose.restarts")
        .cloned()
        .unwrap_or_default();
    assert_eq!(counted.split(',').count(), 1, "{counted:?}");
    drop(w);
}

#[test]
fn watch_all_once_converges_every_compose_project_on_the_server_without_a_compose_file() {
    let _turn = Slot::take(ALONE);
    let c = client();
    cluster_online(&c, 3);
    let a = Fixture::new("alla");
    let b = Fixture::new("allb");
    for f in [&a, &b] {
        f.write(&services(&replicated(1)));
        f.ok(&["up", "-d"]);
        block_on(c.with_project(&f.name).stop_instance("web-1", 5, true)).expect("stop web-1");
        assert!(f.running_on(&[]).is_empty());
    }
    // From a directory without a compose file, no -p: every compose project.
    let out = incus_compose(&std::env::temp_dir(), &["watch", "--all", "--once"])
        .output()
        .expect("run incus-compose watch --all --once");
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ incus-compose watch --all --once  (exit {:?})\n{log}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "watch --all --once failed");
    for f in [&a, &b] {
        assert!(
            log.contains(&format!("[{}] web-1 started", f.name)),
            "{} not converged: {log}",
            f.name
        );
        assert_eq!(f.running_on(&[]).len(), 1, "{}", f.name);
    }
}

#[test]
fn watch_recreates_a_replica_of_a_service_with_a_file_secret_by_reading_it_back_from_another_replica()
 {
    let _turn = Slot::take(CONCURRENT);
    let c = client();
    cluster_online(&c, 3);
    let f = Fixture::new("secret");
    std::fs::write(f.dir.path().join("pw.txt"), "s3cret-for-watch\n").expect("write secret");
    f.write(
        "name: {name}\nservices:\n  web:\n    image: busybox\n    network_mode: none\n    restart: always\n    secrets: [pw]\n    deploy: {replicas: 2}\nsecrets:\n  pw: {file: ./pw.txt}\n",
    );
    f.ok(&["up", "-d"]);
    let p = c.with_project(&f.name);
    block_on(p.stop_instance("web-2", 5, true)).expect("stop web-2");
    block_on(async { p.delete_instance("web-2").await?.wait().await }).expect("delete web-2");
    let log = f.watch_once();
    assert!(log.contains("web-2 created"), "{log}");
    let content = block_on(p.pull_file("web-2", "/run/secrets/pw")).expect("read the secret");
    assert_eq!(String::from_utf8_lossy(&content), "s3cret-for-watch\n");
    assert_eq!(f.running_on(&[]).len(), 2);
}
