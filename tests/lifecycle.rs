//! Lifecycle tests: the built `incus-compose` binary against a real Incus cluster.
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test lifecycle`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses a compose project of its own (`lc-<tag>-<pid>-<n>`), so tests run in
//! parallel with each other and with other suites, and removes it (`down -v`) even when it
//! fails. Results are checked in Incus through `ic-incus`, not only through exit codes.

use std::collections::{BTreeMap, BTreeSet};

use ic_incus::{ExecRequest, InstancesPost, ProjectsPost};

mod common;
use common::*;

/// At most this many fixtures at once: the test cluster's members share two CPU cores.
const CONCURRENT_FIXTURES: usize = 2;

impl Fixture {
    fn volumes(&self) -> Vec<(String, String)> {
        self.custom_volumes()
            .into_iter()
            .map(|v| (v.name, v.location))
            .collect()
    }

    /// Networks labelled with this compose project.
    fn network_names(&self) -> Vec<String> {
        self.networks().into_iter().map(|n| n.name).collect()
    }
}

const WEB_DB: &str = r#"
name: {name}
services:
  web:
    image: testapp/v1
    environment: {MODE: prod}
    depends_on: [db]
    deploy: {replicas: 2}
  db:
    image: busybox
    environment: {ROLE: db}
"#;

#[test]
fn three_replicas_run_one_per_member_with_labels_environment_limits_restart_and_port() {
    let f = Fixture::new("spread").at_most(CONCURRENT_FIXTURES);
    // One replica per member, at most three (a fixed host port allows one per member, so a
    // single server runs one).
    let n = member_names(&f.client).len().min(3);
    f.write(
        &r#"
name: {name}
services:
  web:
    image: testapp/v1
    environment: {MODE: prod}
    labels: {com.example.tier: front}
    ports: ["18481:80"]
    restart: unless-stopped
    deploy:
      replicas: {n}
      resources: {limits: {cpus: "0.5", memory: 64M, pids: 100}}
"#
        .replace("{n}", &n.to_string()),
    );
    f.ok(&["up", "-d"]);
    // On a cluster the ingress port is published by a forwarder per member (tests/ingress.rs).
    let (forwarders, all): (BTreeMap<_, _>, BTreeMap<_, _>) = f
        .instances()
        .into_iter()
        .partition(|(name, _)| name.starts_with("ic-ingress-"));
    let clustered = !forwarders.is_empty();
    let names: BTreeSet<String> = all.keys().cloned().collect();
    let expected: BTreeSet<String> = (1..=n).map(|k| format!("web-{k}")).collect();
    assert_eq!(names, expected);
    let locations: BTreeSet<String> = all.values().map(|i| i.location.clone()).collect();
    assert_eq!(locations.len(), n, "one replica per member: {locations:?}");
    for (name, i) in &all {
        assert!(i.is_running(), "{name} is {}", i.status);
        let c = &i.config;
        assert_eq!(c["user.incus-compose.project"], f.name);
        assert_eq!(c["user.incus-compose.service"], "web");
        assert_eq!(c["user.incus-compose.slot"], &name[4..]);
        assert_eq!(c["user.incus-compose.hash"].len(), 64);
        assert!(c.contains_key("user.incus-compose.version"));
        assert_eq!(c["environment.MODE"], "prod");
        assert_eq!(c["user.label.com.example.tier"], "front");
        assert_eq!(c["limits.cpu.allowance"], "50ms/100ms");
        assert_eq!(c["limits.memory"], "67108864");
        assert_eq!(c["limits.processes"], "100");
        assert_eq!(c["boot.autostart"], "true");
        assert_eq!(c["boot.autorestart"], "true");
        if clustered {
            assert_eq!(
                c["user.incus-compose.ingress-ports"],
                "tcp:0.0.0.0:18481>80"
            );
        } else {
            let proxy = &i.devices["port-tcp-18481"];
            assert_eq!(proxy["type"], "proxy");
            assert_eq!(proxy["listen"], "tcp:0.0.0.0:18481");
            assert_eq!(proxy["connect"], "tcp:127.0.0.1:80");
        }
        let nic = &i.devices["eth0"];
        assert_eq!(nic["type"], "nic");
        assert_eq!(f.network_names(), vec![nic["network"].clone()]);
    }
    let ps = f.ok(&["ps", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&ps).expect("ps json");
    assert_eq!(rows.as_array().map(Vec::len), Some(n), "{ps}");
    assert_eq!(rows[0]["name"], "web-1");
    assert_eq!(rows[0]["ports"][0], "0.0.0.0:18481->80/tcp");
}

#[test]
fn a_second_up_without_changes_changes_nothing() {
    let f = Fixture::new("again").at_most(CONCURRENT_FIXTURES);
    f.write(WEB_DB);
    f.ok(&["up", "-d"]);
    let before = f.instances();
    assert_eq!(before.len(), 3);
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("Nothing to change"), "{out}");
    let after = f.instances();
    for (name, i) in &before {
        let a = &after[name];
        assert_eq!(a.created_at, i.created_at, "{name} was recreated");
        assert_eq!(a.last_used_at, i.last_used_at, "{name} was restarted");
        assert_eq!(a.config, i.config, "{name} changed");
    }
}

#[test]
fn changing_environment_recreates_only_that_service() {
    let f = Fixture::new("envchg").at_most(CONCURRENT_FIXTURES);
    f.write(WEB_DB);
    f.ok(&["up", "-d"]);
    let before = f.instances();
    f.write(&WEB_DB.replace("MODE: prod", "MODE: test"));
    let out = f.ok(&["up", "-d"]);
    assert!(
        out.contains("web-1 recreated") && out.contains("web-2 recreated"),
        "{out}"
    );
    assert!(!out.contains("db-1"), "{out}");
    let after = f.instances();
    assert_eq!(after["db-1"].created_at, before["db-1"].created_at);
    assert_eq!(after["db-1"].last_used_at, before["db-1"].last_used_at);
    for w in ["web-1", "web-2"] {
        assert_ne!(
            after[w].config["volatile.uuid"],
            before[w].config["volatile.uuid"]
        );
        assert_eq!(after[w].config["environment.MODE"], "test");
        assert!(after[w].is_running());
        assert_ne!(
            after[w].config["user.incus-compose.hash"],
            before[w].config["user.incus-compose.hash"]
        );
    }
}

#[test]
fn a_hand_made_instance_is_never_touched_and_up_fails_before_any_change() {
    let mut f = Fixture::new("owner").at_most(CONCURRENT_FIXTURES);
    f.write(WEB_DB);
    let mut config = BTreeMap::new();
    config.insert("features.images".to_string(), "false".to_string());
    config.insert("features.profiles".to_string(), "false".to_string());
    block_on(f.client.create_project(&ProjectsPost {
        name: f.name.clone(),
        description: String::new(),
        config,
    }))
    .expect("create project");
    f.delete_project = true;
    f.delete_first.push("web-1".into());
    let mut req = InstancesPost::from_image_alias("web-1", "busybox");
    req.config.insert("user.note".into(), "made by hand".into());
    block_on(async { f.project().create_instance(&req, None).await?.wait().await })
        .expect("create hand-made web-1");
    let before = f.instances();

    for args in [
        &["up", "-d"][..],
        &["up", "-d", "--force-recreate", "--remove-orphans"],
    ] {
        let out = f.run(args);
        assert!(!out.status.success(), "up must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("\"web-1\"") && err.contains("never touches"),
            "{err}"
        );
    }
    let down = f.run(&["down", "-v"]);
    assert!(down.status.success());

    let after = f.instances();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["web-1"],
        "nothing was created or removed"
    );
    assert_eq!(after["web-1"].created_at, before["web-1"].created_at);
    assert_eq!(after["web-1"].config, before["web-1"].config);
    assert!(f.network_names().is_empty(), "no network was created");
    assert!(f.project_exists(), "the project is not ours to remove");
}

#[test]
fn down_keeps_the_named_volume_and_down_v_removes_it() {
    let f = Fixture::new("vol").at_most(CONCURRENT_FIXTURES);
    f.write(
        r#"
name: {name}
services:
  db:
    image: busybox
    volumes: [data:/data]
volumes:
  data: {}
"#,
    );
    f.ok(&["up", "-d"]);
    let db = &f.instances()["db-1"];
    assert_eq!(db.devices["mount0"]["source"], format!("{}_data", f.name));
    assert_eq!(db.devices["mount0"]["path"], "/data");
    let vols = f.volumes();
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0].0, format!("{}_data", f.name));
    if member_names(&f.client).len() > 1 {
        assert_eq!(vols[0].1, db.location, "the volume lives where db-1 runs");
    }
    assert_eq!(f.network_names().len(), 1);

    f.ok(&["down"]);
    assert!(f.instances().is_empty());
    assert!(f.network_names().is_empty());
    assert_eq!(f.volumes().len(), 1, "down keeps volumes");

    f.ok(&["down", "-v"]);
    assert!(
        !f.project_exists(),
        "down -v removes the volume and then the project"
    );
}

#[test]
fn an_unknown_image_fails_before_any_change() {
    let f = Fixture::new("noimg").at_most(CONCURRENT_FIXTURES);
    f.write(
        r#"
name: {name}
services:
  db:
    image: busybox
  web:
    image: nginx:1.25
"#,
    );
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let version = f.server_version();
    assert!(
        err.contains("\"web\"") && err.contains("nginx:1.25") && err.contains(&version),
        "{err}"
    );
    assert!(!f.project_exists(), "nothing was created");
    assert!(f.network_names().is_empty());
}

#[test]
fn scale_down_removes_the_highest_replicas_and_scale_up_adds_new_ones() {
    let f = Fixture::new("scale").at_most(CONCURRENT_FIXTURES);
    f.write(WEB_DB);
    f.ok(&["up", "-d", "--scale", "web=3"]);
    let three = f.instances();
    assert!(three.contains_key("web-3"));
    f.ok(&["up", "-d", "--scale", "web=1"]);
    let one = f.instances();
    let names: Vec<&String> = one.keys().collect();
    assert_eq!(names, ["db-1", "web-1"]);
    assert_eq!(
        one["web-1"].created_at, three["web-1"].created_at,
        "survivor kept"
    );
}

#[test]
fn a_command_becomes_the_first_process_and_logs_stop_and_start_work() {
    let f = Fixture::new("cmd").at_most(CONCURRENT_FIXTURES);
    f.write(
        r#"
name: {name}
services:
  job:
    image: busybox
    command: ["sh", "-c", "echo started-$$GREETING; exec sleep 3600"]
    environment: {GREETING: hello}
"#,
    );
    f.ok(&["up", "-d"]);
    let job = &f.instances()["job-1"];
    assert!(job.is_running());
    assert_eq!(
        job.config["raw.lxc"],
        "lxc.init.cmd = /bin/sh /.incus-compose/cmd\nlxc.signal.halt = SIGTERM"
    );
    let p = f.project();
    // PID 1 is the compose command (the script `exec`s it), and it sees the environment.
    let pid1 = block_on(p.exec_output("job-1", &ExecRequest::new(["cat", "/proc/1/cmdline"]), b""))
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&pid1.stdout), "sleep\u{0}3600\u{0}");
    let state = block_on(p.instance_state("job-1")).expect("state");
    assert!(
        state.processes <= 2,
        "sleep is PID 1's only process tree: {state:?}"
    );

    f.ok(&["stop", "-t", "1"]);
    assert_eq!(f.instances()["job-1"].status, "Stopped");
    // What PID 1 printed, read from the stopped instance's console log file.
    let logs = f.ok(&["logs"]);
    assert!(logs.contains("job-1 | started-hello"), "logs: {logs:?}");
    f.ok(&["start"]);
    assert!(f.instances()["job-1"].is_running());
}

#[test]
fn service_names_and_aliases_resolve_to_the_services_instances_on_the_same_member() {
    let f = Fixture::new("dns").at_most(CONCURRENT_FIXTURES);
    // Both services on one member: on a cluster each member's bridge is its own segment.
    let member = member_names(&f.client)
        .into_iter()
        .next()
        .expect("a member");
    f.write(
        &r#"
name: {name}
services:
  web:
    image: testapp/v1
    networks: {back: {aliases: [frontend]}}
    deploy: {placement: {constraints: ["node.hostname == {member}"]}}
  db:
    image: testapp/v2
    networks: {back: {aliases: [database]}}
    deploy: {placement: {constraints: ["node.hostname == {member}"]}}
networks:
  back: {}
"#
        .replace("{member}", &member),
    );
    f.ok(&["up", "-d"]);
    let p = f.project();
    // Fetch a page from inside an instance, waiting for its DHCP lease and DNS.
    let fetch = |from: &str, host: &str| -> String {
        // (busybox wget segfaults with -T here.)
        let cmd = format!("wget -q -O- http://{host}/");
        let mut last = String::new();
        for _ in 0..20 {
            let out = block_on(p.exec_output(from, &ExecRequest::new(["sh", "-c", &cmd]), b""));
            match out {
                Ok(o) if o.exit_code == 0 => {
                    return String::from_utf8_lossy(&o.stdout).into_owned();
                }
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!("{from}: http://{host}/ never answered: {last}");
    };
    assert_eq!(fetch("web-1", "db"), "v2");
    assert_eq!(fetch("web-1", "database"), "v2");
    assert_eq!(fetch("db-1", "web"), "v1");
    assert_eq!(fetch("db-1", "frontend"), "v1");
    // The records live on the bridge and do not change on a second `up`.
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("Nothing to change"), "{out}");
}

#[test]
fn pull_checks_local_images_and_names_the_service_whose_image_is_missing() {
    let f = Fixture::new("pull").at_most(CONCURRENT_FIXTURES);
    f.write(
        r#"
name: {name}
services:
  web:
    image: testapp/v1
  db:
    image: no-such-image/v9
"#,
    );
    let out = f.run(&["pull", "web"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[=] web: testapp/v1"), "{stdout}");
    let out = f.run(&["pull"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"db\"") && err.contains("no-such-image/v9"),
        "{err}"
    );
    assert!(!f.project_exists(), "pull made the Incus project");
}

/// A replica's IPv4 address on its `eth0`.
fn address_of(f: &Fixture, service: &str, index: u32) -> String {
    let (code, out) = f.sh(service, index, "ip -4 -o addr show eth0");
    assert_eq!(code, 0, "{service}-{index}: {out}");
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("{service}-{index} has no address: {out}"))
        .to_string()
}

/// On a single server too (plain bridges), a replica reaches its own network's instances and
/// nothing of another network of its project or of another project, by address, either way
/// (every bridge carries its project's network ACL, ingress rejected; Incus routes between
/// bridges otherwise). The cluster's side is `tests/network.rs` and `tests/egress.rs`.
#[test]
fn a_replica_reaches_its_own_networks_instances_and_not_another_networks_or_projects() {
    let f = Fixture::new("iso").at_most(CONCURRENT_FIXTURES);
    f.write(
        r#"
name: {name}
services:
  a:
    image: testapp/v1
    deploy: {replicas: 2}
    networks: [na]
  b:
    image: testapp/v1
    networks: [nb]
networks:
  na: {}
  nb: {}
"#,
    );
    f.ok(&["up", "-d"]);
    let other = Fixture::new("iso2");
    other.write(
        r#"
name: {name}
services:
  a:
    image: testapp/v1
    networks: [na]
networks:
  na: {}
"#,
    );
    other.ok(&["up", "-d"]);
    let a2 = address_of(&f, "a", 2);
    let b1 = address_of(&f, "b", 1);
    let x1 = address_of(&other, "a", 1);
    let a1 = address_of(&f, "a", 1);
    // The positive control: its own network, by address and by name.
    assert_eq!(
        f.fetch("a", 1, &format!("http://{a2}/")).as_deref(),
        Some("v1"),
        "a-1 -> a-2 at {a2}"
    );
    assert_eq!(f.fetch("a", 1, "http://a-2/").as_deref(), Some("v1"));
    assert!(
        !f.reaches("a", 1, &format!("http://{b1}/")),
        "a-1 reached network nb's b-1 at {b1}"
    );
    assert!(
        !f.reaches("b", 1, &format!("http://{a1}/")),
        "b-1 reached network na's a-1 at {a1}"
    );
    assert!(
        !f.reaches("a", 1, &format!("http://{x1}/")),
        "a-1 reached the other project's a-1 at {x1}"
    );
    assert!(
        !other.reaches("a", 1, &format!("http://{a1}/")),
        "the other project's a-1 reached {a1}"
    );
}
