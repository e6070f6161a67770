//! `deploy:` on the real test cluster: replicas spread over members, global mode (and a
//! member joining), placement constraints, spread preferences, pending replicas, `node`.
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test deploy`. Without a reachable Incus cluster of 3 members every test fails
//! and says so.
//!
//! Every test uses a compose project of its own (`dp-<tag>-<pid>-<n>`) and removes it
//! (`down -v`) even when it fails. Member labels are cluster-wide, so the tests use label keys
//! unique to this run (`<key>_<pid>`) and remove them at the end (a guard, also on failure).
//! The tests of this binary change or depend on the member set and labels, so they take
//! turns (one lock). Placement is checked in Incus (`location` of each instance), not only
//! through exit codes.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use ic_incus::{Client, Instance, Request, api_path};

mod common;
use common::*;

/// `up`'s exit status when some replicas are pending (src/cli/up.rs `EXIT_PENDING`).
const EXIT_PENDING: i32 = 3;

/// A label key unique to this test run.
fn key(base: &str) -> String {
    format!("{base}_{}", std::process::id())
}

/// Member labels set for a test, removed when dropped (also when the test fails).
struct Labels {
    client: Client,
    set: Vec<(String, String)>,
}

impl Labels {
    fn new(client: &Client) -> Labels {
        Labels {
            client: client.clone(),
            set: Vec::new(),
        }
    }

    /// Set `user.<key>=<value>` on `member` through `incus-compose node label`.
    fn set(&mut self, member: &str, key: &str, value: &str) {
        self.set.push((member.to_string(), key.to_string()));
        let out = run_in(
            &std::env::temp_dir(),
            &["node", "label", member, &format!("{key}={value}")],
        );
        assert!(
            out.status.success(),
            "node label failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = block_on(self.client.cluster_member(member)).expect("read member");
        assert_eq!(
            m.config.get(&format!("user.{key}")).map(String::as_str),
            Some(value)
        );
    }
}

impl Drop for Labels {
    fn drop(&mut self) {
        for (member, key) in &self.set {
            if let Err(e) = block_on(self.client.set_cluster_member_label(member, key, None)) {
                eprintln!("cleanup: cannot remove label {key} of {member}: {e}");
            }
        }
    }
}

/// The harness's number K of member `nodeK`.
fn member_number(member: &str) -> String {
    member
        .strip_prefix("node")
        .unwrap_or_else(|| panic!("member {member} is not a harness member nodeK"))
        .to_string()
}

/// Member `member` refusing new connections to its API port from member `from` (the harness's
/// `isolate-member`), as a member that does not answer it; taking them again
/// (`reconnect-member`) when dropped.
struct Isolated {
    k: String,
}

impl Isolated {
    fn new(member: &str, from: &str) -> Isolated {
        let k = member_number(member);
        harness(&["isolate-member", &k, &member_number(from)]).unwrap_or_else(|e| panic!("{e}"));
        Isolated { k }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Err(e) = harness(&["reconnect-member", &self.k]) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Fixture {
    /// Instance name -> member.
    fn placement(&self) -> BTreeMap<String, String> {
        self.instances()
            .into_values()
            .map(|i| (i.name, i.location))
            .collect()
    }

    /// Member -> number of instances.
    fn per_member(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in self.placement().into_values() {
            *out.entry(m).or_insert(0) += 1;
        }
        out
    }

    /// What shows that an instance was left alone: creation time, last start, ETag.
    fn fingerprints(&self) -> BTreeMap<String, (String, String, String)> {
        self.instances()
            .into_values()
            .map(|i| {
                let (_, etag): (Instance, _) = block_on(
                    self.project()
                        .send_with_etag(Request::get(api_path(&["instances", &i.name]))),
                )
                .expect("read instance");
                (
                    i.name,
                    (i.created_at, i.last_used_at, etag.unwrap_or_default()),
                )
            })
            .collect()
    }
}

/// An idle busybox service without networks (fast to create), with `deploy` given as YAML.
fn service(deploy: &str) -> String {
    format!(
        "name: {{name}}\nservices:\n  app:\n    image: busybox\n    network_mode: none\n    deploy: {deploy}\n"
    )
}

fn counts(per_member: &BTreeMap<String, usize>) -> Vec<usize> {
    let mut c: Vec<usize> = per_member.values().copied().collect();
    c.sort_unstable_by(|a, b| b.cmp(a));
    c
}

#[test]
fn three_replicas_go_one_per_member_seven_split_three_two_two_and_scaling_to_two_keeps_survivors_in_place()
 {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    let f = Fixture::new("spread");

    f.write(&service("{replicas: 3}"));
    f.ok(&["up", "-d"]);
    let per = f.per_member();
    assert_eq!(per.keys().cloned().collect::<Vec<_>>(), all, "{per:?}");
    assert_eq!(counts(&per), [1, 1, 1]);
    let three = f.fingerprints();

    f.write(&service("{replicas: 7}"));
    f.ok(&["up", "-d"]);
    let per = f.per_member();
    assert_eq!(counts(&per), [3, 2, 2], "{per:?}");
    // The first three were not touched.
    let seven = f.fingerprints();
    for (name, before) in &three {
        assert_eq!(seven.get(name), Some(before), "{name} changed on scale up");
    }
    let ps = f.ok(&["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps).expect("ps json");
    assert_eq!(rows.as_array().map(Vec::len), Some(7), "{ps}");

    let before = f.placement();
    f.write(&service("{replicas: 2}"));
    f.ok(&["up", "-d"]);
    let after = f.placement();
    assert_eq!(after.len(), 2, "{after:?}");
    for (name, member) in &after {
        assert_eq!(
            before.get(name),
            Some(member),
            "survivor {name} moved from {:?} to {member}",
            before.get(name)
        );
        assert_eq!(
            f.fingerprints().get(name),
            seven.get(name),
            "{name} was touched"
        );
    }
    // Scaling down removes from the members that held the most: the survivors are on two
    // different members.
    assert_eq!(counts(&f.per_member()), [1, 1], "{after:?}");
}

#[test]
fn a_member_that_does_not_answer_is_asked_again_and_when_it_stays_silent_up_fails_naming_it_and_changes_nothing()
 {
    use std::io::{BufRead, Read};
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    // incus-compose talks to `via`; `silent` stops answering `via` only. Neither is the database
    // leader, whose heartbeats keep reaching `silent` (it stays ONLINE).
    let leader = block_on(c.cluster_members())
        .expect("list members")
        .into_iter()
        .find(|m| m.roles.iter().any(|r| r == "database-leader"))
        .map(|m| m.server_name)
        .expect("a database leader");
    let others: Vec<&String> = all.iter().filter(|m| **m != leader).collect();
    let (via, silent) = (others[0].as_str(), others[1].as_str());
    let via_dir = std::env::var(format!("INCUS_COMPOSE_TEST_NODE{}_DIR", member_number(via)))
        .unwrap_or_else(|_| panic!("INCUS_COMPOSE_TEST_NODEK_DIR unset for {via}: {SETUP_HINT}"));
    let f = Fixture::new("silent");
    f.write(&service("{replicas: 3}"));
    f.ok(&["up", "-d"]);
    let placement = f.placement();
    let on_it = placement
        .iter()
        .find(|(_, m)| *m == silent)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| panic!("no replica on {silent}: {placement:?}"));
    let before = f.fingerprints();
    let through_via = |args: &[&str]| {
        let mut cmd = incus_compose(f.dir.path(), args);
        cmd.env("INCUS_DIR", &via_dir).env_remove("INCUS_SOCKET");
        cmd
    };

    // A short silence: Incus on `via` lists the replica on `silent` as a stand-in (status Error,
    // no configuration); `ps` reads it again by itself, and `silent` answers again as soon as
    // `ps` says so. `ps` then shows all three, the silent member's running.
    let isolated = Isolated::new(silent, via);
    let mut child = through_via(&["ps", "--format", "json"])
        .env("INCUS_COMPOSE_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ps");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read ps's stderr");
        log.push_str(&line);
        if n == 0 || (line.contains("reading it by itself") && line.contains(&on_it)) {
            break;
        }
    }
    drop(isolated);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).expect("read ps's stderr");
    log.push_str(&rest);
    let status = child.wait().expect("wait for ps");
    let out = reader
        .join()
        .expect("stdout reader")
        .expect("read ps's stdout");
    eprintln!("$ incus-compose ps --format json  (through {via}; exit {status:?})\n{out}{log}");
    assert!(
        log.contains("reading it by itself") && log.contains(&on_it),
        "ps never read {on_it} by itself: the listing did not hold a stand-in:\n{log}"
    );
    assert!(
        status.success(),
        "ps failed after {silent} answered again:\n{log}"
    );
    let rows: serde_json::Value = serde_json::from_str(&out).expect("ps json");
    let rows = rows.as_array().expect("ps rows");
    assert_eq!(rows.len(), 3, "{out}");
    let row = rows
        .iter()
        .find(|r| r["name"] == on_it.as_str())
        .unwrap_or_else(|| panic!("{on_it} missing from ps: {out}"));
    assert_eq!(row["member"], silent, "{out}");
    assert_eq!(row["state"], "Running", "{out}");

    // A member that stays silent: `up` (with a change to make) fails naming the member and the
    // replica, and changes nothing.
    f.write(&service("{replicas: 4}"));
    let isolated = Isolated::new(silent, via);
    let out = through_via(&["up", "-d"]).output().expect("run up");
    drop(isolated);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "$ incus-compose up -d  (through {via}; exit {:?})\n{err}",
        out.status.code()
    );
    assert!(
        !out.status.success(),
        "up succeeded while {silent} was silent"
    );
    assert!(
        err.contains(&format!("{on_it:?}"))
            && err.contains(&format!("member {silent:?}"))
            && err.contains("cannot be read"),
        "{err}"
    );
    assert_eq!(f.placement(), placement, "up changed instances");
    assert_eq!(f.fingerprints(), before, "up touched an instance");
    // Once it answers, the same `up` goes through.
    let out = through_via(&["up", "-d"]).output().expect("run up");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.placement().len(), 4);
}

#[test]
fn global_mode_runs_one_per_member_and_a_new_member_gets_one_without_touching_the_others() {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    // Declared before the fixture: dropped after it (the project is gone before the member).
    let mut extra: Vec<ExtraMember> = Vec::new();
    let f = Fixture::new("global");
    f.write(&service("{mode: global}"));
    f.ok(&["up", "-d"]);
    let placement = f.placement();
    let expected: BTreeMap<String, String> = all
        .iter()
        .map(|m| (format!("app-{m}"), m.clone()))
        .collect();
    assert_eq!(placement, expected);
    let before = f.fingerprints();

    extra.push(ExtraMember::add(&c));
    let new = extra[0].name.clone();
    let dry = f.ok(&["up", "--dry-run"]);
    assert!(
        dry.contains(&format!("create app-{new} (app, image busybox) on {new}")),
        "{dry}"
    );
    f.ok(&["up", "-d"]);
    let mut expected = expected;
    expected.insert(format!("app-{new}"), new.clone());
    assert_eq!(f.placement(), expected);
    let after = f.fingerprints();
    for (name, fp) in &before {
        assert_eq!(after.get(name), Some(fp), "{name} was touched");
    }
    // A second `up` changes nothing.
    let again = f.ok(&["up", "-d"]);
    assert!(again.contains("Nothing to change"), "{again}");
    drop(f);
    drop(extra);
    assert_eq!(member_names(&c), all, "the extra member is gone");
}

#[test]
fn a_label_constraint_places_replicas_only_on_labelled_members_and_none_labelled_is_a_clear_error()
{
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    let storage = key("storage");
    let mut labels = Labels::new(&c);
    labels.set(&all[0], &storage, "ssd");
    labels.set(&all[1], &storage, "ssd");
    let f = Fixture::new("ssd");
    f.write(&service(&format!(
        "{{replicas: 4, placement: {{constraints: [node.labels.{storage} == ssd]}}}}"
    )));
    f.ok(&["up", "-d"]);
    let per = f.per_member();
    assert_eq!(
        per,
        BTreeMap::from([(all[0].clone(), 2), (all[1].clone(), 2)]),
        "replicas only on the labelled members, evenly"
    );

    // `node ls` shows the labels and this project's replicas per member.
    let ls = f.ok(&["node", "ls", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ls).expect("node ls json");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 3, "{ls}");
    for (row, member) in rows.iter().zip(&all) {
        assert_eq!(row["name"], member.as_str());
        assert_eq!(row["status"], "Online");
        let labelled = member != &all[2];
        assert_eq!(
            row["labels"][&storage].as_str(),
            labelled.then_some("ssd"),
            "{row}"
        );
        let replicas = row["replicas"]["app"].as_u64().unwrap_or(0);
        assert_eq!(replicas, if labelled { 2 } else { 0 }, "{row}");
    }
    let table = f.ok(&["node", "ls"]);
    assert!(table.contains(&format!("{storage}=ssd")), "{table}");

    // Nobody labelled: a clear error naming every member, and nothing created.
    let g = Fixture::new("nossd");
    let none = key("nowhere");
    g.write(&service(&format!(
        "{{replicas: 2, placement: {{constraints: [node.labels.{none} == ssd]}}}}"
    )));
    let out = g.run(&["up", "-d"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service `app` cannot be placed on any cluster member"),
        "{err}"
    );
    for m in &all {
        assert!(
            err.contains(&format!("{m}: node.labels.{none} == ssd not satisfied")),
            "{err}"
        );
    }
    assert!(g.instances().is_empty(), "nothing is created");
    drop(labels);
    let m = block_on(c.cluster_member(&all[0])).expect("member");
    assert!(!m.config.contains_key(&format!("user.{storage}")));
}

#[test]
fn spreading_over_a_zone_label_splits_replicas_evenly_between_zones() {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    let zone = key("zone");
    let mut labels = Labels::new(&c);
    labels.set(&all[0], &zone, "a");
    labels.set(&all[1], &zone, "a");
    labels.set(&all[2], &zone, "b");
    let f = Fixture::new("zone");
    f.write(&service(&format!(
        "{{replicas: 4, placement: {{preferences: [{{spread: node.labels.{zone}}}]}}}}"
    )));
    f.ok(&["up", "-d"]);
    let per = f.per_member();
    let zone_a = per.get(&all[0]).copied().unwrap_or(0) + per.get(&all[1]).copied().unwrap_or(0);
    let zone_b = per.get(&all[2]).copied().unwrap_or(0);
    assert_eq!((zone_a, zone_b), (2, 2), "{per:?}");
    assert_eq!(counts(&per), [2, 1, 1], "within zone a, one each: {per:?}");
}

#[test]
fn more_replicas_than_members_allow_leaves_one_pending_with_its_reason_and_exit_status_three() {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    assert_eq!(all.len(), 3, "expected the 3-member test cluster");
    let f = Fixture::new("pending");
    f.write(&service(
        "{replicas: 4, placement: {max_replicas_per_node: 1}}",
    ));
    let out = f.run(&["up", "-d"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_PENDING), "{stdout}{stderr}");
    assert_eq!(counts(&f.per_member()), [1, 1, 1]);
    assert!(f.instances().values().all(Instance::is_running));
    assert!(!f.instances().contains_key("app-4"));
    assert!(stdout.contains("app-4 (service app)"), "{stdout}");
    for m in &all {
        assert!(
            stdout.contains(&format!("{m}: max_replicas_per_node (1) reached")),
            "{stdout}"
        );
    }
    assert!(
        stderr.contains("1 replica(s) pending (exit status 3)"),
        "{stderr}"
    );

    // `ps` shows it as a pending row with the reason.
    let ps = f.ok(&["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps).expect("ps json");
    let pending: Vec<&serde_json::Value> = rows
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "{ps}");
    assert_eq!(pending[0]["name"], "app-4");
    let reasons = pending[0]["pending_reason"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 3, "{ps}");
    let table = f.ok(&["ps"]);
    assert!(table.contains("pending"), "{table}");
    assert!(table.contains("app-4 is pending"), "{table}");

    // A second `up` changes nothing and still says so.
    let again = f.run(&["up", "-d"]);
    assert_eq!(again.status.code(), Some(EXIT_PENDING));
    assert!(String::from_utf8_lossy(&again.stdout).contains("Nothing to change"));
}

#[test]
fn concurrent_node_label_runs_keep_each_others_labels() {
    let _turn = take_turn();
    let c = cluster_client();
    let all = member_names(&c);
    let member = all.last().expect("a member").clone();
    let keys: Vec<String> = (0..6).map(|i| key(&format!("conc{i}"))).collect();
    // The guard removes them even if the test fails half way.
    let mut labels = Labels::new(&c);
    labels
        .set
        .extend(keys.iter().map(|k| (member.clone(), k.clone())));
    let spawn = |args: Vec<String>| {
        Command::new(BIN)
            .args(args)
            .current_dir(std::env::temp_dir())
            .output()
    };
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|k| {
                let args = vec![
                    "node".to_string(),
                    "label".into(),
                    member.clone(),
                    format!("{k}=v"),
                ];
                s.spawn(move || spawn(args))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("run incus-compose"))
            .collect()
    });
    for o in &outputs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let m = block_on(c.cluster_member(&member)).expect("member");
    for k in &keys {
        assert_eq!(
            m.config.get(&format!("user.{k}")).map(String::as_str),
            Some("v"),
            "label {k} was lost: {:?}",
            m.config
        );
    }
    // Removing them concurrently, too.
    std::thread::scope(|s| {
        for k in &keys {
            let args = vec![
                "node".to_string(),
                "label".into(),
                member.clone(),
                "--remove".into(),
                k.clone(),
            ];
            s.spawn(move || {
                let o = spawn(args).expect("run incus-compose");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            });
        }
    });
    let m = block_on(c.cluster_member(&member)).expect("member");
    for k in &keys {
        assert!(!m.config.contains_key(&format!("user.{k}")), "{k} left");
    }
}
