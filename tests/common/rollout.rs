//! What the rollout suites share (`tests/rollout.rs` on the 6.0 line, `tests/rollback.rs` on
//! the 7.0 line): polling every replica's page while `up` rolls, the four-replica `web` stack,
//! `history` rows. Included with `#[path = "common/rollout.rs"] mod rollout_common;` after
//! `mod common;`.
#![allow(dead_code)] // each suite uses a part

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::*;
use ic_incus::Instance;

/// A test that counts the requests answered during an update, or kills a member, runs alone:
/// on two cores a second rollout's load would be counted as ours, and a killed member fails
/// the other test's requests.
pub const ALONE: usize = 1;
/// The other rollout tests (end states, history, timings with a lower bound) run two at a time.
pub const CONCURRENT_FIXTURES: usize = 2;

impl Fixture {
    /// Instances with their state (stand-ins on [`Fixture::offline`] members).
    pub fn full_instances(&self) -> Vec<Instance> {
        let offline = self.offline.lock().map(|o| o.clone()).unwrap_or_default();
        let c = self.client.with_project(&self.name);
        if offline.is_empty() {
            let mut all = block_on(c.instances_full()).expect("list instances");
            all.retain(|i| !is_resolver(i));
            return all;
        }
        // A killed member cannot be asked: its instances stay stand-ins (status Error), the
        // others are read with their state one by one.
        let mut all = block_on(c.instances_with_offline(&offline)).expect("list instances");
        all.retain(|i| !is_resolver(i));
        for i in &mut all {
            if !offline.contains(&i.location) && i.is_running() {
                i.state = block_on(c.instance_state(&i.name)).ok();
            }
        }
        all
    }

    /// Instances without their state (`recursion=1`: a third of the CPU Incus spends on a
    /// listing with state), stand-ins on [`Fixture::offline`] members.
    pub fn listed_instances(&self) -> Vec<Instance> {
        let offline = self.offline.lock().map(|o| o.clone()).unwrap_or_default();
        block_on(
            self.client
                .with_project(&self.name)
                .instances_with_offline(&offline),
        )
        .expect("list instances")
        .into_iter()
        .filter(|i| !is_resolver(i))
        .collect()
    }

    /// What each running replica of `service` answers over HTTP, by slot (several
    /// instances of one slot may answer during a start-first update). Fetched from the
    /// `probe` service's replica, on the same network (in one exec per round). A fetch that
    /// fails is tried once more a second later, as a client would: the DNS record update at
    /// the start of an update restarts dnsmasq and the VXLAN tunnels on every member, which
    /// drops cross-member packets for up to ~0.4 s (see the README's network figures); a
    /// replica down for longer still counts as not answering.
    pub fn answers(&self, service: &str) -> BTreeMap<String, Vec<String>> {
        self.answers_counted(service, &mut Fetches::default())
    }

    /// [`Fixture::answers`], adding to `n` the requests made, those that needed the second
    /// try and those that failed both (a round whose exec fails counts one failed request
    /// per replica).
    pub fn answers_counted(&self, service: &str, n: &mut Fetches) -> BTreeMap<String, Vec<String>> {
        let mut slots: BTreeMap<String, String> = BTreeMap::new();
        // A member Incus could not read this round lists its instances as `Error`, without
        // configuration: such a replica is asked at the address it had in an earlier round
        // (not reading it is not a failed request).
        static SEEN: Mutex<BTreeMap<(String, String), (String, String)>> =
            Mutex::new(BTreeMap::new());
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let killed = self.offline.lock().map(|o| o.clone()).unwrap_or_default();
        for i in self.listed_instances() {
            let c = &i.config;
            if i.status.eq_ignore_ascii_case("error")
                && c.is_empty()
                && !killed.contains(&i.location)
            {
                if let Some((addr, slot)) = seen.get(&(self.name.clone(), i.name.clone())) {
                    slots.insert(addr.clone(), slot.clone());
                }
                continue;
            }
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
            // The fixed address incus-compose gave the NIC; else what its state reports.
            let addr = i
                .devices
                .get("eth0")
                .and_then(|d| d.get("ipv4.address"))
                .cloned()
                .or_else(|| {
                    block_on(self.client.with_project(&self.name).instance_state(&i.name))
                        .ok()?
                        .network?
                        .get("eth0")?
                        .addresses
                        .iter()
                        .find(|a| a.family == "inet")
                        .map(|a| a.address.clone())
                });
            if let Some(addr) = addr {
                seen.insert(
                    (self.name.clone(), i.name.clone()),
                    (addr.clone(), slot.clone()),
                );
                slots.insert(addr, slot);
            }
        }
        drop(seen);
        n.resolve(&slots);
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if slots.is_empty() {
            return out;
        }
        let script = format!(
            "for a in {}; do t=1; r=$(timeout 2 wget -q -O- http://$a/ 2>/dev/null) || {{ t=2; sleep 1; r=$(timeout 2 wget -q -O- http://$a/ 2>/dev/null); }}; echo \"$a $t $r\"; done",
            slots.keys().cloned().collect::<Vec<_>>().join(" ")
        );
        let req = ic_incus::ExecRequest::new(["sh".to_string(), "-c".to_string(), script]);
        let Ok(res) = block_on(self.client.with_project(&self.name).exec_output(
            "probe-1",
            &req,
            &[],
        )) else {
            n.requests += slots.len();
            n.failed += slots.len();
            return out;
        };
        for line in String::from_utf8_lossy(&res.stdout).lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(tries)) = (parts.next(), parts.next()) else {
                continue;
            };
            let body = parts.next();
            // A replica that has not answered yet in this poll is still starting: no client
            // is sent to it (it joins the service name once ready), so its requests are
            // counted apart. Once it answered, each of its requests counts.
            if !n.served.contains(addr) {
                if body.is_none() {
                    n.unready += 1;
                    continue;
                }
                n.served.insert(addr.to_string());
            }
            n.requests += 1;
            if tries == "2" || body.is_none() {
                n.pending.push((addr.to_string(), body.is_some()));
            }
            let Some(body) = body else {
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
    pub fn up_while_polling(&self, service: &str) -> (Output, usize, Vec<usize>) {
        let (out, min, rounds, _) = self.up_while_polling_counted(service);
        (out, min, rounds)
    }

    /// [`Fixture::up_while_polling`], with the count of the requests made.
    pub fn up_while_polling_counted(&self, service: &str) -> (Output, usize, Vec<usize>, Fetches) {
        // The replicas in service before the update have answered already.
        let mut before = Fetches::default();
        self.answers_counted(service, &mut before);
        let mut fetches = Fetches {
            served: before.served,
            ..Fetches::default()
        };
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
            let answered = self.answers_counted(service, &mut fetches);
            // Which slots a short round missed, and when: the failure says who was down.
            if rounds.iter().any(|&n| n > answered.len()) {
                eprintln!(
                    "round {} at {:.1} s: {} answered ({:?})",
                    rounds.len(),
                    started.elapsed().as_secs_f64(),
                    answered.len(),
                    answered.keys().collect::<Vec<_>>()
                );
            }
            rounds.push(answered.len());
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "up ran for 10 minutes"
            );
        }
        let out = child.wait_with_output().expect("up output");
        // What the last round's late answers were: listed once more.
        let mut last = Fetches::default();
        let _ = self.answers_counted(service, &mut last);
        fetches.resolve(&last.listed);
        eprintln!(
            "$ incus-compose up -d (polled {} rounds: {:?}; {})\n{}{}",
            rounds.len(),
            rounds,
            fetches.summary(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let min = rounds.iter().copied().min().unwrap_or(0);
        (out, min, rounds, fetches)
    }

    /// Every replica's answer, once all of `n` answer (waits up to a minute).
    pub fn settled_answers(&self, service: &str, n: usize) -> Vec<String> {
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

/// HTTP requests made while polling replicas that had answered before (in service): all,
/// those answered only on the second try (a second later), those not answered at all; and
/// apart, the requests to replicas that had not answered yet (still starting), and the late
/// or missing answers of replicas that were stopping (retired or stopped by the next round:
/// a client asking by name is no longer sent there).
#[derive(Debug, Default)]
pub struct Fetches {
    pub requests: usize,
    pub retried: usize,
    pub failed: usize,
    pub unready: usize,
    pub leaving: usize,
    /// The addresses that answered at least once.
    pub served: BTreeSet<String>,
    /// This round's late answers (address, answered on the second try), counted once the
    /// next listing tells whether the replica was still in service.
    pending: Vec<(String, bool)>,
    /// The addresses of the replicas in service at the last listing.
    listed: BTreeMap<String, String>,
}

impl Fetches {
    pub fn summary(&self) -> String {
        format!(
            "{} requests to replicas in service, {} answered on the second try, {} not answered; apart: {} to replicas still starting, {} late or missing from replicas stopping",
            self.requests, self.retried, self.failed, self.unready, self.leaving
        )
    }

    /// Counts the last round's late answers, given the replicas in service now.
    fn resolve(&mut self, in_service: &BTreeMap<String, String>) {
        for (addr, answered) in std::mem::take(&mut self.pending) {
            if !in_service.contains_key(&addr) {
                self.requests -= 1;
                self.leaving += 1;
            } else if answered {
                self.retried += 1;
            } else {
                self.failed += 1;
            }
            eprintln!(
                "request to {addr}: {}{}",
                if answered {
                    "answered on the second try"
                } else {
                    "not answered"
                },
                if in_service.contains_key(&addr) {
                    ""
                } else {
                    " (stopping)"
                }
            );
        }
        self.listed = in_service.clone();
    }
}

/// Four replicas of testapp with a healthcheck that needs the page and an address.
pub fn web(image: &str, update: &str) -> String {
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

/// `history --format json` rows: (revision, cause, outcome, deployed).
pub fn history(f: &Fixture, args: &[&str]) -> Vec<(u64, String, String, bool)> {
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

/// Web replicas: name -> creation time.
pub fn created(f: &Fixture) -> BTreeMap<String, String> {
    f.full_instances()
        .into_iter()
        .filter(|i| i.name.starts_with("web-"))
        .map(|i| (i.name, i.created_at))
        .collect()
}

/// The names of the `web-*` instances, sorted.
pub fn web_names(f: &Fixture) -> Vec<String> {
    f.full_instances()
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with("web-"))
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect()
}
