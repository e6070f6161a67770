//! Rolling updates on the real test cluster: `update_config` (stop-first, start-first),
//! `failure_action` rollback and pause, in-place limit changes. While `up` rolls, the test
//! fetches every replica's page over HTTP from its member's network namespace, again and
//! again, and counts the slots that answer.
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test rollout`. Without a reachable Incus cluster every test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Slot, block_on, client};
use ic_incus::{Client, Instance};

const BIN: &str = env!("CARGO_BIN_EXE_incus-compose");

/// One rollout at a time: they are timing-sensitive on two cores.
const CONCURRENT_FIXTURES: usize = 1;

struct Fixture {
    _slot: Slot,
    name: String,
    dir: tempfile::TempDir,
    client: Client,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ro-{tag}-{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        Fixture {
            _slot: Slot::take(CONCURRENT_FIXTURES),
            name,
            dir: tempfile::tempdir().expect("temp dir"),
            client: client(),
        }
    }

    fn write(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("compose.yaml");
        std::fs::write(&path, yaml.replace("{name}", &self.name)).expect("write compose file");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("INCUS_COMPOSE_INCUS_PROJECT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run incus-compose");
        eprintln!(
            "$ incus-compose {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "incus-compose {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `raw.dnsmasq` of this project's spanning bridge (its DNS records).
    fn records(&self) -> String {
        block_on(self.client.networks())
            .expect("list networks")
            .into_iter()
            .filter(|n| {
                n.config
                    .get("user.incus-compose.project")
                    .map(String::as_str)
                    == Some(self.name.as_str())
            })
            .find_map(|n| n.config.get("raw.dnsmasq").cloned())
            .unwrap_or_default()
    }

    fn instances(&self) -> Vec<Instance> {
        block_on(self.client.with_project(&self.name).instances_full()).expect("list instances")
    }

    /// What each running replica of `service` answers over HTTP, by slot (several
    /// instances of one slot may answer during a start-first update). Fetched from the
    /// `probe` service's replica, on the same network (in one exec per round). A fetch that
    /// fails is tried once more a second later, as a client would: the DNS record update at
    /// the start of an update restarts dnsmasq and the VXLAN tunnels on every member, which
    /// drops cross-member packets for up to ~0.4 s (see the README's network figures); a
    /// replica down for longer still counts as not answering.
    fn answers(&self, service: &str) -> BTreeMap<String, Vec<String>> {
        let mut slots: BTreeMap<String, String> = BTreeMap::new();
        for i in self.instances() {
            let c = &i.config;
            if c.get("user.incus-compose.service").map(String::as_str) != Some(service)
                || c.contains_key("user.incus-compose.retired")
                || !i.is_running()
            {
                continue;
            }
            let slot = c
                .get("user.incus-compose.slot")
                .cloned()
                .unwrap_or_default();
            let addr = i
                .state
                .as_ref()
                .and_then(|s| s.network.as_ref())
                .and_then(|n| n.get("eth0"))
                .and_then(|e| e.addresses.iter().find(|a| a.family == "inet"))
                .map(|a| a.address.clone());
            if let Some(addr) = addr {
                slots.insert(addr, slot);
            }
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if slots.is_empty() {
            return out;
        }
        let script = format!(
            "for a in {}; do r=$(timeout 2 wget -q -O- http://$a/ 2>/dev/null) || {{ sleep 1; r=$(timeout 2 wget -q -O- http://$a/ 2>/dev/null); }}; echo \"$a $r\"; done",
            slots.keys().cloned().collect::<Vec<_>>().join(" ")
        );
        let req = ic_incus::ExecRequest::new(["sh".to_string(), "-c".to_string(), script]);
        let Ok(res) = block_on(self.client.with_project(&self.name).exec_output(
            "probe-1",
            &req,
            &[],
        )) else {
            return out;
        };
        for line in String::from_utf8_lossy(&res.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(body)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Some(slot) = slots.get(addr) {
                out.entry(slot.clone()).or_default().push(body.to_string());
            }
        }
        out
    }

    /// Runs `up -d` in the background and polls every replica of `service` until it ends;
    /// returns its output and the smallest number of slots that answered in one round.
    fn up_while_polling(&self, service: &str) -> (Output, usize, Vec<usize>) {
        let child = self
            .command(&["up", "-d"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start up");
        let started = Instant::now();
        let mut rounds = Vec::new();
        let mut child = child;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            rounds.push(self.answers(service).len());
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "up ran for 10 minutes"
            );
        }
        let out = child.wait_with_output().expect("up output");
        eprintln!(
            "$ incus-compose up -d (polled {} rounds: {:?})\n{}{}",
            rounds.len(),
            rounds,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let min = rounds.iter().copied().min().unwrap_or(0);
        (out, min, rounds)
    }

    /// Every replica's answer, once all of `n` answer (waits up to a minute).
    fn settled_answers(&self, service: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.answers(service);
            if a.len() == n || Instant::now() > deadline {
                let mut all: Vec<String> = a.into_values().flatten().collect();
                all.sort();
                return all;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for _ in 0..3 {
            let down = self
                .command(&["down", "-v", "--remove-orphans", "-t", "1"])
                .output();
            if matches!(down, Ok(ref o) if o.status.success()) {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Four replicas of testapp with a healthcheck that needs the page and an address.
fn web(image: &str, update: &str) -> String {
    format!(
        r#"
name: {{name}}
services:
  web:
    image: {image}
    stop_grace_period: 2s
    healthcheck:
      test: "wget -q -O- http://127.0.0.1/ >/dev/null && ip -4 addr show eth0 | grep -q inet"
      interval: 2s
      start_period: 20s
      start_interval: 1s
      retries: 2
    deploy:
      replicas: 4
      update_config: {update}
  probe:
    image: testapp/v1
"#
    )
}

#[test]
fn a_stop_first_update_keeps_three_of_four_replicas_answering_and_ends_on_v2() {
    let f = Fixture::new("stop");
    f.write(&web("testapp/v1", "{parallelism: 1, monitor: 2s}"));
    f.ok(&["up", "-d", "--wait"]);
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    f.write(&web("testapp/v2", "{parallelism: 1, monitor: 2s}"));
    let (out, min, rounds) = f.up_while_polling("web");
    assert!(out.status.success(), "up failed");
    assert!(rounds.len() >= 4, "too few polling rounds: {rounds:?}");
    assert!(
        min >= 3,
        "only {min} replicas answered at one moment: {rounds:?}"
    );
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    // Exactly the declared replicas, under their usual names, no retired one left.
    let names: BTreeSet<String> = f
        .instances()
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
    let f = Fixture::new("start");
    let cfg = "{parallelism: 1, order: start-first, monitor: 2s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/v2", cfg));
    let (out, min, rounds) = f.up_while_polling("web");
    assert!(out.status.success(), "up failed");
    // The old replicas serve until the one record write at the end, which restarts the
    // tunnels on every member: a fetch is tried again a second later, as a client would.
    assert!(
        min >= 4,
        "only {min} replicas answered at one moment: {rounds:?}"
    );
    // The records name the new replicas, and the service name only their addresses.
    let records = f.records();
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
        .instances()
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

#[test]
fn a_broken_image_with_failure_action_rollback_brings_v1_back_and_up_fails() {
    let f = Fixture::new("rb");
    let cfg = "{parallelism: 1, monitor: 2s, failure_action: rollback}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/broken", cfg));
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success(), "up succeeded after a rollback");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    let names: BTreeSet<String> = f
        .instances()
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

/// start-first on a spanning bridge: the old replicas serve on, marked, until the records
/// name the new ones. A new replica that turns healthy and then dies within `monitor` fails
/// the update; the rollback removes the new replicas and unmarks the old ones, which never
/// stopped: no record is written at all.
#[test]
fn a_start_first_update_whose_new_replica_dies_after_it_was_ready_rolls_back_to_the_old_replicas_still_running()
 {
    let f = Fixture::new("sfrb");
    let cfg = "{parallelism: 1, order: start-first, monitor: 25s, failure_action: rollback}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    let before = f.records();
    let started: BTreeMap<String, String> = f
        .instances()
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
        .instances()
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
    assert_eq!(f.records(), before, "no record written");
}

#[test]
fn a_broken_image_with_failure_action_pause_stops_after_the_first_batch() {
    let f = Fixture::new("pause");
    let cfg = "{parallelism: 1, monitor: 2s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/broken", cfg));
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success(), "up succeeded with a broken image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paused"), "{err}");
    // The three replicas not replaced still serve v1.
    assert_eq!(f.settled_answers("web", 3), ["v1"; 3]);
    let ps: Vec<serde_json::Value> =
        serde_json::from_str(&f.ok(&["ps", "--format", "json"])).expect("ps json");
    assert!(
        ps.iter()
            .filter(|r| r["service"] == "web")
            .all(|r| r["update"] == "paused"),
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
    let f = Fixture::new("live");
    let text = |mem: &str| {
        format!(
            "name: {{name}}\nservices:\n  web:\n    image: testapp/v1\n    deploy:\n      replicas: 2\n      resources: {{limits: {{memory: {mem}}}}}\n"
        )
    };
    f.write(&text("64M"));
    f.ok(&["up", "-d"]);
    let before: BTreeMap<String, String> = f
        .instances()
        .into_iter()
        .map(|i| (i.name, i.last_used_at))
        .collect();
    f.write(&text("96M"));
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("updated in place"), "{out}");
    for i in f.instances() {
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

/// `history --format json` rows: (revision, cause, outcome, deployed).
fn history(f: &Fixture, args: &[&str]) -> Vec<(u64, String, String, bool)> {
    let mut all = vec!["history", "--format", "json"];
    all.extend_from_slice(args);
    let out = f.ok(&all);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("history json");
    rows.iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap(),
                r["cause"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["deployed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn rollback_brings_the_previous_revision_back_and_to_goes_to_any_kept_one() {
    let f = Fixture::new("back");
    let cfg = "{parallelism: 2, monitor: 1s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/v2", cfg));
    f.ok(&["up", "-d"]);
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let h = history(&f, &[]);
    assert_eq!(
        h,
        [
            (1, "up".into(), "completed".into(), false),
            (2, "up".into(), "completed".into(), true)
        ]
    );
    // A second up without changes records nothing.
    f.ok(&["up", "-d"]);
    assert_eq!(history(&f, &[]).len(), 2);

    let out = f.ok(&["rollback"]);
    assert!(out.contains("revision 1"), "{out}");
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    // From a directory without the compose file, by name.
    let elsewhere = tempfile::tempdir().unwrap();
    let by_name = Command::new(BIN)
        .args(["-p", &f.name, "history", "--format", "json"])
        .current_dir(elsewhere.path())
        .env_remove("COMPOSE_PROJECT_NAME")
        .output()
        .unwrap();
    assert!(
        by_name.status.success(),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&by_name.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["cause"], "rollback to 1");
    assert_eq!(rows[2]["deployed"], true);
    // --to an older revision, by name too.
    let to = Command::new(BIN)
        .args(["-p", &f.name, "rollback", "--to", "2"])
        .current_dir(elsewhere.path())
        .env_remove("COMPOSE_PROJECT_NAME")
        .output()
        .unwrap();
    assert!(
        to.status.success(),
        "{}",
        String::from_utf8_lossy(&to.stderr)
    );
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    assert_eq!(history(&f, &[]).len(), 4);
    // A revision that is not kept is refused, naming those that are.
    let bad = f.run(&["rollback", "--to", "99"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1, 2, 3, 4"));
}

#[test]
fn rollback_volumes_restores_the_data_written_before_the_update() {
    let f = Fixture::new("vol");
    let text = |image: &str| {
        format!(
            "name: {{name}}\nservices:\n  db:\n    image: {image}\n    stop_grace_period: 1s\n    volumes: [data:/data]\n    deploy: {{update_config: {{monitor: 1s}}}}\n  probe:\n    image: testapp/v1\nvolumes:\n  data: {{}}\n"
        )
    };
    f.write(&text("testapp/v1"));
    f.ok(&["up", "-d"]);
    f.ok(&["exec", "-T", "db", "sh", "-c", "echo one > /data/f"]);
    f.write(&text("testapp/v2"));
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("snapshotted as incus-compose-rev-2"), "{out}");
    f.ok(&["exec", "-T", "db", "sh", "-c", "echo two > /data/f"]);
    // Without --volumes the data stays as it is.
    f.ok(&["rollback"]);
    assert_eq!(f.ok(&["exec", "-T", "db", "cat", "/data/f"]).trim(), "two");
    // Back to 2, then to 1 with the volume as it was under 1.
    f.ok(&["rollback", "--to", "2"]);
    let out = f.ok(&["rollback", "--to", "1", "--volumes"]);
    assert!(out.contains("restored from incus-compose-rev-2"), "{out}");
    assert_eq!(f.ok(&["exec", "-T", "db", "cat", "/data/f"]).trim(), "one");
    assert_eq!(f.settled_answers("db", 1), ["v1"]);
}

#[test]
fn an_update_killed_half_way_is_finished_by_the_next_up_with_exactly_the_declared_replicas() {
    let f = Fixture::new("kill");
    let cfg = "{parallelism: 1, monitor: 1s}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/v2", cfg));
    let mut child = f
        .command(&["up", "-d"])
        .env("INCUS_COMPOSE_LOCK_TTL", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start up");
    // Into the second batch or so.
    std::thread::sleep(Duration::from_secs(9));
    child.kill().expect("kill -9");
    let _ = child.wait();
    let out = f
        .command(&["up", "-d"])
        .env("INCUS_COMPOSE_LOCK_TTL", "5")
        .output()
        .expect("up again");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the second up failed");
    assert_eq!(f.settled_answers("web", 4), ["v2"; 4]);
    let names: BTreeSet<String> = f
        .instances()
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
