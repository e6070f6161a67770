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
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ic_incus::Client;

mod common;
use common::{Slot, block_on, client};

const BIN: &str = env!("CARGO_BIN_EXE_incus-compose");

struct Fixture {
    _slot: Slot,
    name: String,
    dir: tempfile::TempDir,
    client: Client,
}

impl Fixture {
    fn new(tag: &str, yaml: &str) -> Fixture {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ho-{tag}-{}-{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let f = Fixture {
            _slot: Slot::take(2),
            name,
            dir: tempfile::tempdir().expect("temp dir"),
            client: client(),
        };
        std::fs::write(f.path(), yaml.replace("{name}", &f.name)).expect("write compose file");
        f
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("compose.yaml")
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(2));
            }
            match self
                .command(&["down", "-v", "--remove-orphans", "-t", "1"])
                .output()
            {
                Ok(o) if o.status.success() => break,
                Ok(o) => eprintln!(
                    "cleanup of {} failed:\n{}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup of {}: {e}", self.name),
            }
        }
    }
}

#[test]
fn up_of_one_service_refuses_another_services_dnsmasq_injection_and_changes_nothing() {
    let f = Fixture::new(
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
    let f = Fixture::new(
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
    let f = Fixture::new(
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
