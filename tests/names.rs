//! Service names that follow what runs (issue 24): a spanning bridge's names (by default, as
//! with `x-incus: {names: resolver}`) are served by a resolver on every member (`src/engine/names.rs`),
//! fed by file pushes; a replica leaves its name before it is stopped and joins once ready.
//! A client on the network asks for the service by name every 0.1 s through a start-first
//! update, a stop-first update, a scale-down and a drain: no request may fail. Under `watch`,
//! a replica stopped from outside or turned unhealthy leaves the name and comes back, and the
//! replicas of a killed member are replaced and answer by name within the offline threshold,
//! the grace and 10 s. (The README's "before"
//! figures, with the names in `raw.dnsmasq`, were taken with the same runs and `names: dnsmasq`.)
//!
//! Start the test cluster and load its environment first (see tests/common). Without a
//! reachable Incus cluster every test fails.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Two tests at a time (each its own project, network and client): a request by name fails
/// only when a name lists a replica that cannot answer, which another project's work does
/// not change.
const CONCURRENT_FIXTURES: usize = 2;
/// The drain runs alone: `node drain` moves every project's replicas off the member.
const ALONE: usize = 1;

/// Three replicas of testapp (healthcheck on the page) and a client, on one network whose
/// names are served by `names` (`resolver` or `dnsmasq`; `default`: no `x-incus`, the
/// resolvers).
fn stack(image: &str, update: &str, replicas: u32, names: &str) -> String {
    let net = if names == "default" {
        "{}".to_string()
    } else {
        format!("{{x-incus: {{names: {names}}}}}")
    };
    format!(
        r#"
name: {{name}}
services:
  web:
    image: {image}
    stop_grace_period: 2s
    networks: [net]
    healthcheck:
      test: "wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet"
      interval: 2s
      start_period: 20s
      start_interval: 1s
      retries: 2
    deploy:
      replicas: {replicas}
      update_config: {update}
  client:
    image: testapp/v1
    networks: [net]
networks:
  net: {net}
"#
    )
}

/// A client asking `http://web/` every 0.1 s (3 s timeout) from the `client` replica, until
/// stopped: each line `ok BODY` or `FAIL`.
struct Poller {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Poller {
    fn start(f: &Fixture) -> Poller {
        let mut child = Command::new("incus")
            .args(["exec", "--project", &f.name, "client-1", "--", "sh", "-c"])
            .arg(
                "while :; do b=$(timeout 3 wget -O- http://web/ 2>/tmp/wget.err) && echo \"ok $b\" || echo \"FAIL exit $? at $(date +%T): $(tr '\\n' ' ' </tmp/wget.err)\"; sleep 0.1; done",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the client loop");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let p = Poller { child, lines };
        wait_for("the client's first answer", Duration::from_secs(30), || {
            p.lines.lock().unwrap().iter().any(|l| l.starts_with("ok"))
        });
        p
    }

    /// Stops the loop: (requests, failed, bodies seen in order of first appearance).
    fn stop(mut self) -> (usize, usize, Vec<String>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let lines = self.lines.lock().unwrap().clone();
        let failed = lines.iter().filter(|l| l.starts_with("FAIL")).count();
        for l in lines.iter().filter(|l| l.starts_with("FAIL")) {
            eprintln!("client: {l}");
        }
        let mut bodies: Vec<String> = Vec::new();
        for l in &lines {
            if let Some(b) = l.strip_prefix("ok ")
                && !bodies.iter().any(|x| x == b)
            {
                bodies.push(b.to_string());
            }
        }
        (lines.len(), failed, bodies)
    }
}

/// Runs `args` while the client polls: (requests, failed, bodies).
fn polled(f: &Fixture, args: &[&str], what: &str) -> (usize, usize, Vec<String>) {
    // Let the names settle after the previous step.
    std::thread::sleep(Duration::from_secs(2));
    let p = Poller::start(f);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let out = f.run(args);
    assert!(out.status.success(), "{args:?} failed");
    std::thread::sleep(Duration::from_secs(2));
    let (requests, failed, bodies) = p.stop();
    eprintln!(
        "FIGURE {what}: {requests} requests by name, {failed} failed ({:.1} s of {args:?}); answers {bodies:?}",
        started.elapsed().as_secs_f64()
    );
    (requests, failed, bodies)
}

/// A rolling update of web from v1 to v2 with `cfg` as its update_config, polled by name.
fn update(tag: &str, cfg: &str, names: &str) -> (usize, usize, Vec<String>) {
    let f = Fixture::new(tag).at_most(CONCURRENT_FIXTURES);
    f.write(&stack("testapp/v1", cfg, 3, names));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&stack("testapp/v2", cfg, 3, names));
    polled(&f, &["up", "-d"], &format!("{tag} update, names: {names}"))
}

fn scale_down(names: &str) -> (usize, usize, Vec<String>) {
    let f = Fixture::new("scale").at_most(CONCURRENT_FIXTURES);
    f.write(&stack("testapp/v1", "{parallelism: 1}", 3, names));
    f.ok(&["up", "-d", "--wait"]);
    polled(
        &f,
        &["scale", "web=1"],
        &format!("scale-down 3 -> 1, names: {names}"),
    )
}

#[test]
fn a_start_first_update_fails_no_request_by_name() {
    let (requests, failed, bodies) = update(
        "start-first",
        "{parallelism: 1, order: start-first, monitor: 2s}",
        "resolver",
    );
    assert!(requests >= 50, "too few requests: {requests}");
    assert_eq!(failed, 0, "{failed} of {requests} requests by name failed");
    assert_eq!(bodies.last().map(String::as_str), Some("v2"), "{bodies:?}");
}

#[test]
fn a_stop_first_update_fails_no_request_by_name() {
    let (requests, failed, bodies) =
        update("stop-first", "{parallelism: 1, monitor: 2s}", "default");
    assert!(requests >= 50, "too few requests: {requests}");
    assert_eq!(failed, 0, "{failed} of {requests} requests by name failed");
    assert_eq!(bodies.last().map(String::as_str), Some("v2"), "{bodies:?}");
}

#[test]
fn a_scale_down_fails_no_request_by_name() {
    let (requests, failed, _) = scale_down("default");
    assert!(requests >= 20, "too few requests: {requests}");
    assert_eq!(failed, 0, "{failed} of {requests} requests by name failed");
}

/// A member with a replica of web but not the client (whose exec asks by name), and the
/// replicas of web there.
fn member_without_client(f: &Fixture) -> (String, Vec<String>) {
    let web = f.running("web");
    let client_at = f.instance("client-1").location;
    let member = web
        .values()
        .find(|m| **m != client_at)
        .cloned()
        .expect("a member with web and without the client");
    let there = web
        .iter()
        .filter(|(_, m)| **m == member)
        .map(|(n, _)| n.clone())
        .collect();
    (member, there)
}

/// `node restore` of a member when dropped (a no-op when it is not drained).
struct Restore<'a>(&'a Fixture, String);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let out = self.0.run(&["node", "restore", &self.1]);
        if !out.status.success() {
            eprintln!(
                "cleanup: node restore {}: {}",
                self.1,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_drain_fails_no_request_by_name() {
    let f = Fixture::new("drain").at_most(ALONE);
    f.write(&stack("testapp/v1", "{parallelism: 1}", 3, "default"));
    f.ok(&["up", "-d", "--wait"]);
    let _members = MemberTurn::take();
    let (member, moved) = member_without_client(&f);
    let _restore = Restore(&f, member.clone());
    let (requests, failed, _) = polled(
        &f,
        &["node", "drain", &member],
        &format!("drain of {member} ({moved:?} move), names: default"),
    );
    for (name, i) in f.instances() {
        eprintln!(
            "{name} on {}: {:?} {}",
            i.location,
            i.config.get("user.incus-compose.ipv4.net"),
            i.status
        );
    }
    let after = f.running("web");
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.values().all(|m| *m != member), "{after:?}");
    assert!(requests >= 20, "too few requests: {requests}");
    assert_eq!(failed, 0, "{failed} of {requests} requests by name failed");
}

/// Stops a `watch` as a service manager does (SIGTERM), so it gives its leases back and the
/// fixture's `down` does not wait for them to expire; killed after 10 s.
fn stop_gently(watch: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &watch.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(watch.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = watch.kill();
}

/// Stops `watch` ([`stop_gently`]) and prints what it said; its stdout.
fn finish_watch(mut watch: Child) -> String {
    stop_gently(&mut watch);
    let out = watch.wait_with_output().expect("watch output");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "$ incus-compose watch\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// Replica `name`'s address on the stack's network.
fn address(f: &Fixture, name: &str) -> String {
    f.instance(name)
        .config
        .get("user.incus-compose.ipv4.net")
        .cloned()
        .expect("address label")
}

/// Waits until `web` resolves to its three replicas. One lookup can time out on a loaded
/// machine (the first one failed once in CI, the one in the message then found all three): a
/// few tries.
fn all_three_resolve(f: &Fixture) {
    let mut first = Vec::new();
    wait_until(Duration::from_secs(10), || {
        first = resolved(f, "web");
        first.len() == 3
    });
    assert_eq!(first.len(), 3, "{first:?}");
}

/// Runs `args` in the client replica (`incus exec`).
fn in_client(f: &Fixture, args: &[&str]) -> std::io::Result<std::process::Output> {
    Command::new("incus")
        .args(["exec", "--project", &f.name, "client-1", "--"])
        .args(args)
        .output()
}

/// The addresses `name` resolves to from the client replica.
fn resolved(f: &Fixture, name: &str) -> Vec<String> {
    let out = in_client(f, &["nslookup", name]).expect("nslookup");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut past_server = false;
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with("Name:") {
            past_server = true;
        }
        if past_server && let Some(a) = l.strip_prefix("Address:") {
            out.push(a.trim().to_string());
        }
    }
    out
}

/// Every member runs one resolver of the project, `ps` does not list them, a converged `up`
/// makes one again where it is missing (then names every replica there), and `down` removes
/// them all.
#[test]
fn every_member_runs_a_resolver_that_a_converged_up_brings_back_and_down_removes() {
    let f = Fixture::new("res").at_most(CONCURRENT_FIXTURES);
    f.write(&stack("testapp/v1", "{parallelism: 1}", 3, "default"));
    f.ok(&["up", "-d", "--wait"]);
    let resolvers = || -> BTreeMap<String, (String, bool)> {
        f.all_instances()
            .into_values()
            .filter(is_resolver)
            .map(|i| (i.name.clone(), (i.location.clone(), i.is_running())))
            .collect()
    };
    let first = resolvers();
    let members: std::collections::BTreeSet<String> =
        first.values().map(|(m, _)| m.clone()).collect();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(members.len(), 3, "one per member: {first:?}");
    assert!(first.values().all(|(_, running)| *running), "{first:?}");
    let ps = f.ok(&["ps", "-a"]);
    assert!(!ps.contains("ic--names"), "ps lists a resolver: {ps}");
    let gone = first.keys().next().expect("a resolver").clone();
    let out = incus(&["delete", "--force", "--project", &f.name, &gone]);
    assert!(out.status.success(), "{out:?}");
    f.ok(&["up", "-d"]);
    assert_eq!(resolvers(), first, "the converged up made {gone} again");
    all_three_resolve(&f);
    f.ok(&["down"]);
    assert!(
        !f.project_exists() || resolvers().is_empty(),
        "down left resolvers: {:?}",
        resolvers()
    );
}

#[test]
fn under_watch_a_replica_stopped_from_outside_leaves_the_name_within_5_s_and_comes_back() {
    let f = Fixture::new("watch").at_most(CONCURRENT_FIXTURES);
    // Restarted by watch once stopped.
    let yaml = stack("testapp/v1", "{parallelism: 1}", 3, "default").replace(
        "    stop_grace_period: 2s\n",
        "    stop_grace_period: 2s\n    restart: always\n",
    );
    f.write(&yaml);
    f.ok(&["up", "-d", "--wait"]);
    let web2 = address(&f, "web-2");
    all_three_resolve(&f);
    let watch = f.spawn(&["watch", "--interval", "30"]);
    std::thread::sleep(Duration::from_secs(3));
    let out = incus(&["stop", "--force", "--project", &f.name, "web-2"]);
    assert!(out.status.success());
    let stopped = Instant::now();
    let gone = wait_until(Duration::from_secs(5), || {
        !resolved(&f, "web").contains(&web2)
    });
    let took = stopped.elapsed();
    // watch starts it again (restart policy), and it comes back in the name.
    let back = wait_until(Duration::from_secs(60), || {
        resolved(&f, "web").contains(&web2)
    });
    finish_watch(watch);
    eprintln!(
        "FIGURE stopped replica out of the name after {:.1} s",
        took.as_secs_f64()
    );
    assert!(gone, "web-2 ({web2}) still resolved 5 s after it stopped");
    assert!(back, "web-2 ({web2}) did not come back in the name");
}

#[test]
fn under_watch_an_unhealthy_replica_restarted_by_its_restart_policy_comes_back_in_the_name() {
    let f = Fixture::new("sick").at_most(CONCURRENT_FIXTURES);
    // Unhealthy once `/sick` holds the start time of the running PID 1: a restart (a new
    // PID 1) makes it healthy again.
    let check = "      test: \"wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet\"\n";
    let yaml = stack("testapp/v1", "{parallelism: 1}", 3, "default")
        .replace(
            check,
            "      test: \"wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet && [ \\\"$$(cat /sick 2>/dev/null)\\\" != \\\"$$(cut -d' ' -f22 /proc/1/stat)\\\" ]\"\n",
        )
        .replace(
            "    stop_grace_period: 2s\n",
            "    stop_grace_period: 2s\n    restart: always\n",
        );
    assert!(yaml.contains("/sick"), "the healthcheck was not replaced");
    f.write(&yaml);
    f.ok(&["up", "-d", "--wait"]);
    let web2 = address(&f, "web-2");
    all_three_resolve(&f);
    let watch = f.spawn(&["watch", "--interval", "30"]);
    std::thread::sleep(Duration::from_secs(3));
    let out = incus(&[
        "exec",
        "--project",
        &f.name,
        "web-2",
        "--",
        "sh",
        "-c",
        "cut -d' ' -f22 /proc/1/stat > /sick",
    ]);
    assert!(out.status.success(), "{out:?}");
    // watch finds it unhealthy and restarts it: it leaves the name, then comes back.
    let gone = wait_until(Duration::from_secs(60), || {
        !resolved(&f, "web").contains(&web2)
    });
    let back = gone
        && wait_until(Duration::from_secs(60), || {
            resolved(&f, "web").contains(&web2)
        });
    let said = finish_watch(watch);
    assert!(gone, "web-2 ({web2}) never left the name");
    assert!(
        said.contains("web-2 restarted: it was unhealthy"),
        "watch did not restart web-2"
    );
    assert!(
        back,
        "web-2 ({web2}) restarted, did not come back in the name"
    );
}

#[test]
fn under_watch_an_unhealthy_replica_without_a_restart_policy_leaves_the_name_while_it_runs_and_comes_back_once_healthy()
 {
    let f = Fixture::new("ill").at_most(CONCURRENT_FIXTURES);
    // Unhealthy while `/sick` exists; no restart policy: watch leaves it running.
    let check = "      test: \"wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet\"\n";
    let yaml = stack("testapp/v1", "{parallelism: 1}", 3, "default").replace(
        check,
        "      test: \"wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet && [ ! -e /sick ]\"\n",
    );
    assert!(yaml.contains("/sick"), "the healthcheck was not replaced");
    f.write(&yaml);
    f.ok(&["up", "-d", "--wait"]);
    let up = Instant::now();
    let web2 = address(&f, "web-2");
    all_three_resolve(&f);
    let watch = f.spawn(&["watch", "--interval", "30"]);
    // Failed probes count once the `start_period` (20 s) is over, as Docker counts them.
    std::thread::sleep(
        Duration::from_secs(21)
            .saturating_sub(up.elapsed())
            .max(Duration::from_secs(3)),
    );
    let in_web2 = |cmd: &str| {
        let out = incus(&["exec", "--project", &f.name, "web-2", "--", "sh", "-c", cmd]);
        assert!(out.status.success(), "{out:?}");
    };
    in_web2("touch /sick");
    let sick = Instant::now();
    // Two failed probes 2 s apart (`retries: 2`, `interval: 2s`), then one push.
    let gone = wait_until(Duration::from_secs(10), || {
        !resolved(&f, "web").contains(&web2)
    });
    let left_after = sick.elapsed();
    let others = resolved(&f, "web");
    let still_running = f.instance("web-2").status == "Running";
    in_web2("rm /sick");
    let healthy = Instant::now();
    let back = wait_until(Duration::from_secs(20), || {
        resolved(&f, "web").contains(&web2)
    });
    let back_after = healthy.elapsed();
    let said = finish_watch(watch);
    eprintln!(
        "FIGURE unhealthy replica out of the name after {:.1} s, back {:.1} s after it was healthy",
        left_after.as_secs_f64(),
        back_after.as_secs_f64()
    );
    assert!(
        gone,
        "web-2 ({web2}) still resolved 20 s after it turned unhealthy"
    );
    assert_eq!(
        others.len(),
        2,
        "the two healthy replicas stay in the name: {others:?}"
    );
    assert!(
        still_running,
        "web-2 was stopped: its service has no restart policy"
    );
    assert!(
        said.contains("left running"),
        "watch did not report web-2 unhealthy"
    );
    assert!(
        back,
        "web-2 ({web2}) healthy again, did not come back in the name"
    );
}

/// Whether replica `name` answers `http://NAME/` from the client, by its own name (within
/// 3 s: `timeout`, as the poller does; the image's busybox `wget -T` crashes).
fn answers_by_name(f: &Fixture, name: &str) -> bool {
    in_client(
        f,
        &[
            "timeout",
            "3",
            "wget",
            "-q",
            "-O-",
            &format!("http://{name}/"),
        ],
    )
    .is_ok_and(|o| o.status.success())
}

#[test]
fn under_watch_the_replicas_of_a_killed_member_answer_by_name_within_the_offline_threshold_the_grace_and_10_s()
 {
    // Alone: a killed member fails the other tests' requests.
    let f = Fixture::new("killed").at_most(ALONE);
    f.write(&stack("testapp/v1", "{parallelism: 1}", 3, "default"));
    f.ok(&["up", "-d", "--wait"]);
    all_three_resolve(&f);
    let web = f.running("web");
    let (member, lost) = member_without_client(&f);
    let lost_addresses: Vec<String> = lost.iter().map(|n| address(&f, n)).collect();
    let threshold = offline_threshold();
    let grace = 5;
    let watch = f.spawn(&["watch", "--interval", "2", "--grace", &grace.to_string()]);
    std::thread::sleep(Duration::from_secs(3));
    let k = member.trim_start_matches("node").to_string();
    let mut killed = Killed::kill(&k);
    f.offline.lock().unwrap().push(member.clone());
    let start = Instant::now();
    let deadline = Duration::from_secs(threshold + grace + 10);
    // Every lost replica replaced on a live member, each replacement answering by its own
    // name, and the service name listing exactly the running replicas (a replacement may take
    // the lost replica's address: its stand-in shows Incus no address while the member is
    // down). When the check that first finds it so began and ended.
    let mut last = String::new();
    let mut found: Option<(Duration, Duration)> = None;
    wait_until(deadline + Duration::from_secs(30), || {
        let began = start.elapsed();
        let now = f.running("web");
        let live: BTreeMap<&String, &String> = now.iter().filter(|(_, m)| **m != member).collect();
        let new: Vec<&String> = live
            .keys()
            .filter(|n| !web.contains_key(**n))
            .copied()
            .collect();
        let mut names = resolved(&f, "web");
        names.sort();
        let answering: Vec<(&String, bool)> =
            new.iter().map(|n| (*n, answers_by_name(&f, n))).collect();
        let mut expected: Vec<String> = live.keys().map(|n| address(&f, n)).collect();
        expected.sort();
        last = format!(
            "running {live:?} at {expected:?}, web resolves to {names:?} (the lost replicas had {lost_addresses:?}), the new ones answer by name: {answering:?}"
        );
        let ok = live.len() == 3
            && new.len() == lost.len()
            && answering.iter().all(|(_, ok)| *ok)
            && names == expected;
        if ok {
            found = Some((began, start.elapsed()));
        }
        ok
    });
    finish_watch(watch);
    if let Some((began, ended)) = found {
        eprintln!(
            "FIGURE killed member ({member}, {lost:?}) -> replacements answer by name: found by the check of {:.1}-{:.1} s after the kill (offline threshold {threshold} s + grace {grace} s)",
            began.as_secs_f64(),
            ended.as_secs_f64()
        );
    }
    killed.revive();
    f.offline.lock().unwrap().clear();
    let Some((began, _)) = found else {
        panic!("the replicas of {member} ({lost:?}) never answered by name: {last}");
    };
    assert!(
        began <= deadline,
        "the replicas of {member} ({lost:?}) answered by name only {began:?} after the kill (threshold + grace + 10 s: {deadline:?})"
    );
}
