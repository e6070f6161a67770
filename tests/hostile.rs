//! Hostile compose files and containers against a real Incus server (the load- and plan-time
//! cases are `crates/core/tests/hostile_corpus.rs` over `tests/hostile/`):
//! - `up SERVICE` refuses another service's `container_name` that would add a `raw.dnsmasq`
//!   line, with its file, line and field, and creates nothing;
//! - `cp` out of a container never writes through a symlink the container planted on the host
//!   by an earlier copy, and drops setuid/setgid bits unless `-a`.
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
