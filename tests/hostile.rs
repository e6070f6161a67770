//! Hostile compose files and containers against a real Incus server (the load- and plan-time
//! cases are `crates/core/tests/hostile_corpus.rs` over `tests/hostile/`):
//! - `up SERVICE` refuses another service's `container_name` that would add a `raw.dnsmasq`
//!   line, with its file, line and field, and creates nothing;
//! - `cp` out of a container never writes through a symlink the container planted on the host
//!   by an earlier copy, and drops setuid/setgid bits unless `-a`;
//! - read-back and probe output are bounded;
//! - anonymous volumes follow their slot across start-first and stop-first replacements;
//! - secret owner names are resolved in the image; secret digests in Incus config are keyed.
//!
//! Load the test cluster's environment first (`set -a && . .test-cluster/env && set +a`),
//! then `cargo test --test hostile`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

mod common;
use common::{Fixture, block_on};

/// A compose project of this suite (at most 2 at once) with `yaml` as its compose file.
fn fixture(tag: &str, yaml: &str) -> Fixture {
    Fixture::new(tag).at_most(2).compose(yaml)
}

#[test]
fn up_of_one_service_refuses_another_services_dnsmasq_injection_and_changes_nothing() {
    let f = fixture(
        "dns",
        "name: {name}\nservices:\n  web:\n    image: busybox\n  other:\n    image: busybox\n    container_name: \"x\\nconf-dir=/tmp\"\n",
    );
    let out = f.run(&["up", "-d", "web"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:7:", f.path().display());
    assert!(
        err.contains(&at)
            && err.contains("services.other.container_name")
            && err.contains("newline"),
        "{err}"
    );
    let projects = block_on(f.client.projects()).expect("projects");
    assert!(
        projects.iter().all(|p| p.name != f.name),
        "the Incus project {} was created",
        f.name
    );
    // `config` still renders it, as docker compose does.
    assert!(f.run(&["config", "-q"]).status.success());
}

#[test]
fn cp_out_never_writes_through_a_symlink_the_container_planted_and_drops_setuid() {
    let f = fixture(
        "cp",
        "name: {name}\nservices:\n  db:\n    image: testapp/v1\n",
    );
    f.ok(&["up", "-d", "db"]);
    let local = tempfile::tempdir().expect("temp dir");
    let victim = local.path().join("victim");
    std::fs::write(&victim, "host file\n").expect("write");
    let victim_dir = local.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).expect("mkdir");
    // The container plants links to host paths, then the same names as a file and a directory.
    let script = format!(
        "mkdir -p /d1 /d2/y && ln -s {} /d1/x && ln -s {} /d1/y && echo evil > /d2/x && echo deep > /d2/y/z && echo s > /d2/suid && chmod 4755 /d2/suid && chmod 2755 /d2/y",
        victim.display(),
        victim_dir.display()
    );
    f.ok(&["exec", "-T", "db", "sh", "-c", &script]);
    let out = local.path().join("out");
    f.ok(&["cp", "db:/d1", out.to_str().expect("utf-8")]);
    assert!(
        std::fs::symlink_metadata(out.join("x"))
            .expect("x")
            .file_type()
            .is_symlink()
    );
    // Copy the second folder's contents over the first copy.
    let src = "db:/d2/.";
    f.ok(&["cp", src, out.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "host file\n"
    );
    assert!(
        std::fs::read_dir(&victim_dir)
            .expect("victim dir")
            .next()
            .is_none(),
        "a file was written into the directory a planted symlink points at"
    );
    assert_eq!(std::fs::read_to_string(out.join("x")).expect("x"), "evil\n");
    assert_eq!(
        std::fs::read_to_string(out.join("y/z")).expect("y/z"),
        "deep\n"
    );
    let mode = |p: PathBuf| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode(out.join("suid")), 0o755, "setuid kept");
    assert_eq!(mode(out.join("y")), 0o755, "setgid kept");
}

#[test]
fn files_read_back_and_probe_output_are_read_bounded_from_a_container_that_writes_too_much() {
    let f = fixture(
        "big",
        "name: {name}\nservices:\n  db:\n    image: testapp/v1\n",
    );
    f.ok(&["up", "-d", "db"]);
    // 8 MiB of secret where 1 KiB was deployed, and a command that prints 8 MiB.
    f.ok(&[
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        "mkdir -p /run/secrets && head -c 8388608 /dev/zero > /run/secrets/big && echo small > /run/secrets/small",
    ]);
    let project = f.client.with_project(&f.name);
    let limit = 1 << 20;
    let err = block_on(project.pull_file_bounded("db-1", "/run/secrets/big", limit))
        .expect_err("an 8 MiB file read with a 1 MiB limit");
    assert!(
        matches!(err, ic_incus::Error::TooLarge { limit: l, .. } if l == limit),
        "{err}"
    );
    let small = block_on(project.pull_file_bounded("db-1", "/run/secrets/small", limit))
        .expect("a small file");
    assert_eq!(small, b"small\n");
    let req = ic_incus::ExecRequest::new(["sh", "-c", "head -c 8388608 /dev/zero; echo done >&2"]);
    let out = block_on(project.exec_output_bounded("db-1", &req, 65536)).expect("exec");
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), 65536);
    assert_eq!(out.stderr, b"done\n");
}

/// An anonymous volume follows its replica slot (as Docker keeps a container's anonymous
/// volumes across a recreate): the start-first replacement of slot 2 (`db-2-b`, started beside
/// `db-2`) and then its stop-first one mount slot 2's volume, with what was written in it;
/// `down` keeps it, `down -v` removes it.
#[test]
fn an_anonymous_volume_follows_its_slot_across_start_first_and_stop_first_replacements() {
    let yaml = |order: &str, version: &str| {
        format!(
            "name: {{name}}\nservices:\n  db:\n    image: testapp/v1\n    network_mode: none\n    environment: {{V: \"{version}\"}}\n    volumes: [/data]\n    deploy:\n      replicas: 2\n      update_config: {{order: {order}, parallelism: 2}}\n"
        )
    };
    let f = fixture("anon", &yaml("start-first", "1"));
    f.ok(&["up", "-d"]);
    let volume_of = |slot: &str| {
        let i = f
            .instances()
            .into_values()
            .find(|i| {
                i.config.get("user.incus-compose.slot").map(String::as_str) == Some(slot)
                    && !i.config.contains_key("user.incus-compose.retired")
            })
            .unwrap_or_else(|| panic!("no replica in slot {slot}"));
        let d = i
            .devices
            .values()
            .find(|d| d.get("path").map(String::as_str) == Some("/data"))
            .unwrap_or_else(|| panic!("{} has no /data: {:?}", i.name, i.devices));
        (i.name.clone(), d["source"].clone())
    };
    assert_eq!(volume_of("2"), ("db-2".into(), "db-2_anon-data".into()));
    f.ok(&[
        "exec",
        "-T",
        "--index",
        "2",
        "db",
        "sh",
        "-c",
        "echo slot2 > /data/f",
    ]);
    f.ok(&[
        "exec",
        "-T",
        "--index",
        "1",
        "db",
        "sh",
        "-c",
        "echo slot1 > /data/f",
    ]);
    let read = |index: &str| f.ok(&["exec", "-T", "--index", index, "db", "cat", "/data/f"]);

    // start-first: the new replica of slot 2 is db-2-b, with db-2's volume.
    f.write(&yaml("start-first", "2"));
    f.ok(&["up", "-d"]);
    assert_eq!(volume_of("2"), ("db-2-b".into(), "db-2_anon-data".into()));
    assert_eq!(read("2").trim(), "slot2");
    assert_eq!(read("1").trim(), "slot1");

    // stop-first: db-2-b is replaced by db-2, which mounts the same volume.
    f.write(&yaml("stop-first", "3"));
    f.ok(&["up", "-d"]);
    assert_eq!(volume_of("2").1, "db-2_anon-data");
    assert_eq!(read("2").trim(), "slot2");
    assert_eq!(read("1").trim(), "slot1");
    let anonymous = || {
        let mut v: Vec<String> = f
            .custom_volumes()
            .into_iter()
            .filter(|v| v.config.contains_key("user.incus-compose.anonymous"))
            .map(|v| v.name)
            .collect();
        v.sort();
        v
    };
    // One volume per slot: none was made for db-2-b or db-1-b.
    assert_eq!(anonymous(), ["db-1_anon-data", "db-2_anon-data"]);

    f.ok(&["down", "-t", "1"]);
    assert_eq!(
        anonymous(),
        ["db-1_anon-data", "db-2_anon-data"],
        "down keeps them"
    );
    f.ok(&["up", "-d"]);
    assert_eq!(read("2").trim(), "slot2");
    f.ok(&["down", "-v", "-t", "1"]);
    assert!(anonymous().is_empty(), "down -v removes them");
}

/// Secrets' owner names are resolved in the new instance's own `/etc/passwd` and `/etc/group`
/// (the test images know only root): `uid: root` is found, a `user` the image lacks warns and
/// leaves the file root's and readable (0444). What Incus config holds of a secret is keyed
/// under the project's digest key; a project made before the key gets one at its next `up`,
/// which replaces the secret's replica once, and then nothing.
#[test]
fn secret_owner_names_are_resolved_in_the_image_and_secret_digests_are_keyed() {
    let f = fixture(
        "sec",
        "name: {name}\nservices:\n  app:\n    image: testapp/v1\n    network_mode: none\n    user: ghost\n    secrets: [a, {source: b, uid: root, gid: root, mode: 0400}]\nsecrets:\n  a: {file: ./pw.txt}\n  b: {file: ./pw.txt}\n",
    );
    f.write_file("pw.txt", "hunter2\n");
    let out = f.run(&["up", "-d"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/run/secrets/a: user \"ghost\" is not in the image's /etc/passwd"),
        "{err}"
    );
    assert!(
        !err.contains("/run/secrets/b") && !err.contains("cannot read"),
        "root is in the image: {err}"
    );
    let stat = |path: &str| {
        f.ok(&[
            "exec", "-T", "-u", "root", "app", "stat", "-c", "%u %g %a", path,
        ])
        .trim()
        .to_string()
    };
    assert_eq!(stat("/run/secrets/a"), "0 0 444");
    assert_eq!(stat("/run/secrets/b"), "0 0 400");

    let config = || {
        block_on(f.client.get_project(&f.name))
            .expect("project")
            .config
    };
    let key = config()["user.incus-compose.digest-key"].clone();
    assert_eq!(key.len(), 64, "{key}");
    let bare = "46a9d5bde718bf366178313019f04a753bad00685d38e3ec81c8628f35dfcb1b";
    let revision = config()["user.incus-compose.revision.1"].clone();
    assert!(
        revision.contains("hmac-sha256:") && !revision.contains(bare),
        "{revision}"
    );
    let hash = || f.instance("app-1").config["user.incus-compose.hash"].clone();
    let first = hash();
    // Stable: a second `up` changes nothing.
    f.ok(&["up", "-d"]);
    assert_eq!(hash(), first);
    assert_eq!(config()["user.incus-compose.digest-key"], key);

    // A project from before the key: its next `up` writes one and replaces the replica once.
    let mut put = ic_incus::ProjectPut {
        description: String::new(),
        config: config(),
    };
    put.config.remove("user.incus-compose.digest-key");
    let p = block_on(f.client.get_project(&f.name)).expect("project");
    put.description = p.description;
    block_on(f.client.update_project(&f.name, &put)).expect("remove the key");
    f.ok(&["up", "-d"]);
    let renewed = config()["user.incus-compose.digest-key"].clone();
    assert_ne!(renewed, key);
    let second = hash();
    assert_ne!(second, first, "replaced once under the new key");
    f.ok(&["up", "-d"]);
    assert_eq!(hash(), second, "and then left alone");
}
