//! Docker images on Incus 7.0: the built `incus-compose` binary against the harness's Incus 7.0
//! server and its local OCI registry (`https://127.0.0.1:5443`, images `testapp:v1`,
//! `testapp:v2`, `testapp:broken`).
//!
//! Start it first: `scripts/test-cluster up --incus 7.0` (it writes `.test-cluster/env-7.0`,
//! which this suite reads; `INCUS_COMPOSE_TEST_ENV7` names another file). Without it every
//! test fails and says so. Then `cargo test --test oci`.
//!
//! Every test uses a compose project of its own (`oci-<tag>-<pid>-<n>`) and an incus CLI
//! configuration of its own (`INCUS_CONF` in a temporary directory: the OCI remote that
//! incus-compose adds goes there), and removes the project (`down -v`) even when it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ic_incus::{Client, ExecRequest, Instance};

mod common;
use common::{Fixture, block_on};

const SETUP_HINT_7: &str = "start the Incus 7.0 test server: `scripts/test-cluster up --incus 7.0`";

/// The 7.0 line's env file, as KEY -> VALUE.
fn env7() -> BTreeMap<String, String> {
    let path = std::env::var_os("INCUS_COMPOSE_TEST_ENV7")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-cluster/env-7.0"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {SETUP_HINT_7}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The shared fixture on the 7.0 server, every run with its own incus CLI configuration
/// (`INCUS_CONF`) and the registry's CA.
struct Oci {
    /// Declared first: dropped (`down`) while `conf` still exists.
    f: Fixture,
    conf: tempfile::TempDir,
    registry: String,
    /// The registry's CA certificate (for incus-compose reading image configs).
    registry_ca: String,
}

impl std::ops::Deref for Oci {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.f
    }
}

impl Oci {
    fn new(tag: &str) -> Oci {
        let env = env7();
        let incus_dir = env
            .get("INCUS_DIR")
            .unwrap_or_else(|| panic!("INCUS_DIR missing from the 7.0 env file; {SETUP_HINT_7}"))
            .clone();
        let registry = env
            .get("INCUS_COMPOSE_TEST_REGISTRY")
            .unwrap_or_else(|| panic!("INCUS_COMPOSE_TEST_REGISTRY missing; {SETUP_HINT_7}"))
            .clone();
        let registry_ca = env
            .get("INCUS_COMPOSE_TEST_REGISTRY_CA")
            .unwrap_or_else(|| panic!("INCUS_COMPOSE_TEST_REGISTRY_CA missing; {SETUP_HINT_7}"))
            .clone();
        let client = Client::unix(Path::new(&incus_dir).join("unix.socket"));
        match block_on(client.server()) {
            Ok(info) => assert!(
                info.has_extension("instance_oci"),
                "the server at {incus_dir} (Incus {}) cannot run OCI images; {SETUP_HINT_7}",
                info.server_version()
            ),
            Err(e) => {
                panic!("the Incus 7.0 server at {incus_dir} does not answer: {e}; {SETUP_HINT_7}")
            }
        }
        let conf = tempfile::tempdir().expect("temp dir");
        let conf_path = conf.path().to_string_lossy().into_owned();
        let mut f = Fixture::with_client(client, tag)
            .at_most(1)
            .env("INCUS_DIR", &incus_dir)
            .env("INCUS_CONF", &conf_path)
            .env("SSL_CERT_FILE", &registry_ca);
        f.env_remove = ["INCUS_SOCKET", "INCUS_REMOTE", "INCUS_PROJECT"]
            .map(String::from)
            .to_vec();
        Oci {
            f,
            conf,
            registry,
            registry_ca,
        }
    }

    /// Write the compose file (`{name}` -> project name, `{registry}` -> the registry).
    fn write(&self, yaml: &str) {
        self.f.write(&yaml.replace("{registry}", &self.registry));
    }

    /// The instances of `service`.
    fn instances(&self, service: &str) -> Vec<Instance> {
        block_on(self.project().instances_full())
            .expect("list instances")
            .into_iter()
            .filter(|i| {
                i.config
                    .get("user.incus-compose.service")
                    .map(String::as_str)
                    == Some(service)
            })
            .collect()
    }

    fn only_instance(&self, service: &str) -> Instance {
        let mut all = self.instances(service);
        assert_eq!(all.len(), 1, "service {service} should have one instance");
        all.remove(0)
    }

    /// stdout of a command in an instance (retried until `want` or `wait` passes).
    fn exec_until(&self, instance: &str, cmd: &[&str], want: &str, wait: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let got = block_on(self.project().exec_output(
                instance,
                &ExecRequest::new(cmd.to_vec()),
                b"",
            ))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("exec failed: {e}"));
            if got == want || t0.elapsed() > wait {
                return got;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn console_until(&self, instance: &str, want: &str, wait: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let log = block_on(self.project().instance_console_log(instance)).unwrap_or_default();
            if log.contains(want) || t0.elapsed() > wait {
                return log;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_registry_image_comes_up_serving_v1_and_moves_to_v2_on_the_next_up() {
    let f = Oci::new("v1v2");
    let compose = "name: {name}\nservices:\n  web:\n    image: {registry}/testapp:TAG\n";
    f.write(&compose.replace("TAG", "v1"));
    let out = f.ok(&["up", "-d"]);
    // The registry had no remote in this (empty) configuration: one was added.
    assert!(out.contains("incus remote oci-127-0-0-1-5443"), "{out}");
    let config = std::fs::read_to_string(f.conf.path().join("config.yml")).expect("config.yml");
    let cfg = ic_incus::config::CliConfig::parse(&config, Path::new("config.yml")).expect("parse");
    let remote = &cfg.remotes["oci-127-0-0-1-5443"];
    assert_eq!(remote.addr, format!("https://{}", f.registry));
    assert_eq!(remote.protocol, "oci");

    let web = f.only_instance("web");
    assert_eq!(
        web.config.get("volatile.container.oci").map(String::as_str),
        Some("true")
    );
    // The image's own entrypoint + cmd, as Incus sets them.
    assert_eq!(
        web.config.get("oci.entrypoint").map(String::as_str),
        Some("/docker-entrypoint.sh httpd -f -v -p 80 -h /www")
    );
    let body = f.exec_until(
        &web.name,
        &["wget", "-qO-", "http://127.0.0.1/"],
        "v1",
        WAIT,
    );
    assert_eq!(body, "v1");
    // `logs` shows the application's output (the console of the application container). A
    // running container's console buffer is handed out once, so the calls' outputs add up.
    let want = "web-1 | testapp v1: starting httpd -f -v -p 80 -h /www";
    let mut logs = String::new();
    let t0 = Instant::now();
    while !logs.contains(want) && t0.elapsed() < WAIT {
        logs.push_str(&f.ok(&["logs", "web"]));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(logs.contains(want), "{logs}");

    f.write(&compose.replace("TAG", "v2"));
    let out = f.ok(&["up", "-d"]);
    assert!(
        !out.contains("incus remote"),
        "the remote exists now: {out}"
    );
    let web = f.only_instance("web");
    let body = f.exec_until(
        &web.name,
        &["wget", "-qO-", "http://127.0.0.1/"],
        "v2",
        WAIT,
    );
    assert_eq!(body, "v2");

    // Nothing changed: nothing to do.
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("Nothing to change"), "{out}");
}

#[test]
fn entrypoint_command_working_dir_user_and_environment_reach_the_application() {
    let f = Oci::new("proc");
    f.write(
        r#"name: {name}
services:
  job:
    image: {registry}/testapp:v1
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo \"pwd=$$(pwd) uid=$$(id -u) gid=$$(id -g) name=$$TESTAPP_NAME version=$$TESTAPP_VERSION extra=$$EXTRA\"; sleep 600"]
    working_dir: /tmp
    user: "1000:1000"
    environment:
      EXTRA: from compose
      TESTAPP_VERSION: from compose too
"#,
    );
    f.ok(&["up", "-d"]);
    let job = f.only_instance("job");
    assert_eq!(job.config.get("oci.cwd").map(String::as_str), Some("/tmp"));
    assert_eq!(job.config.get("oci.uid").map(String::as_str), Some("1000"));
    // The image's environment is kept (TESTAPP_NAME), the service's overrides it (TESTAPP_VERSION).
    let want =
        "pwd=/tmp uid=1000 gid=1000 name=testapp version=from compose too extra=from compose";
    let log = f.console_until(&job.name, want, WAIT);
    assert!(log.contains(want), "console log: {log:?}");
}

#[test]
fn a_short_name_resolves_through_the_registry_named_in_x_incus() {
    let f = Oci::new("short");
    f.write("name: {name}\nx-incus:\n  registry: {registry}\nservices:\n  web:\n    image: testapp:v2\n");
    f.ok(&["up", "-d"]);
    let web = f.only_instance("web");
    let body = f.exec_until(
        &web.name,
        &["wget", "-qO-", "http://127.0.0.1/"],
        "v2",
        WAIT,
    );
    assert_eq!(body, "v2");
}

#[test]
fn a_malformed_reference_is_refused_before_anything_changes() {
    let f = Oci::new("bad");
    f.write("name: {name}\nservices:\n  web:\n    image: \"{registry}/TestApp:v1\"\n");
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web") && err.contains("TestApp"), "{err}");
    assert!(
        !f.project_exists(),
        "the Incus project {} should not exist",
        f.name
    );
}

#[test]
fn a_command_alone_runs_after_the_image_entrypoint_as_docker_runs_it() {
    let f = Oci::new("cmd");
    f.write(
        "name: {name}\nservices:\n  web:\n    image: {registry}/testapp:v2\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    );
    f.ok(&["up", "-d"]);
    let web = f.only_instance("web");
    // The image's entrypoint (read from the registry) + the service's command; the image's cmd is replaced.
    assert_eq!(
        web.config.get("oci.entrypoint").map(String::as_str),
        Some("/docker-entrypoint.sh httpd -f -p 8080 -h /www")
    );
    let log = f.console_until(&web.name, "testapp v2: starting httpd -f -p 8080", WAIT);
    assert!(
        log.contains("testapp v2: starting httpd -f -p 8080 -h /www"),
        "console log: {log:?}"
    );
    let body = f.exec_until(
        &web.name,
        &["wget", "-qO-", "http://127.0.0.1:8080/"],
        "v2",
        WAIT,
    );
    assert_eq!(body, "v2");
}

#[test]
fn an_image_the_registry_does_not_have_fails_up_before_anything_changes() {
    let f = Oci::new("missing");
    f.write("name: {name}\nservices:\n  db:\n    image: {registry}/testapp:v1\n  web:\n    image: {registry}/testapp:nothere\n");
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let version = f.server_version();
    assert!(
        err.contains("\"web\"") && err.contains("testapp:nothere") && err.contains(&version),
        "{err}"
    );
    assert!(
        !f.project_exists(),
        "the Incus project {} should not exist",
        f.name
    );
}

#[test]
fn pull_gets_registry_images_onto_the_server_and_names_what_it_cannot_pull() {
    let f = Oci::new("pull");
    f.write(
        "name: {name}\nservices:\n  web:\n    image: {registry}/testapp:v2\n  local:\n    image: busybox\n  gone:\n    image: {registry}/testapp:nothere\n",
    );
    let out = f.run(&["pull", "web", "local"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[+] web: pulled"), "{stdout}");
    assert!(stdout.contains("[=] local: busybox"), "{stdout}");
    // The pulled image is in the server's store, described by its registry name.
    let images = block_on(f.client.with_project("default").images()).expect("images");
    assert!(
        images.iter().any(|i| i
            .properties
            .get("description")
            .is_some_and(|d| d.contains("testapp"))),
        "no cached testapp image: {images:?}"
    );
    let out = f.run(&["pull"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gone\"") && err.contains("testapp:nothere"),
        "{err}"
    );
    assert!(f.run(&["pull", "--ignore-pull-failures"]).status.success());
    // Pulling changes no project: none was made.
    assert!(!f.project_exists());
}

impl Oci {
    /// Point `testapp:<to>` at the image `testapp:<from>` names (as a registry's tag moves on a
    /// new release), with skopeo on this machine.
    fn tag(&self, from: &str, to: &str) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--retry-times", "2"])
            .arg(format!("docker://{}/testapp:{from}", self.registry))
            .arg(format!("docker://{}/testapp:{to}", self.registry))
            .env("SSL_CERT_FILE", &self.registry_ca)
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {from} -> {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What the instance's web server answers (`v1`, `v2`).
    fn serves(&self, instance: &str, want: &str) -> String {
        self.exec_until(instance, &["wget", "-qO-", "http://127.0.0.1/"], want, WAIT)
    }
}

#[test]
fn pull_policies_decide_when_a_moved_tag_is_pulled_and_up_recreates_what_changed() {
    let f = Oci::new("policy");
    let n = f.name.clone();
    for t in ["a", "m", "n"] {
        f.tag("v1", &format!("{t}-{n}"));
    }
    let compose = format!(
        "name: {{name}}
services:
  always:
    image: {{registry}}/testapp:a-{n}
    pull_policy: always
  missing:
    image: {{registry}}/testapp:m-{n}
NEVER"
    );
    let never =
        format!("  never:\n    image: {{registry}}/testapp:n-{n}\n    pull_policy: never\n");
    // `never` and the server has no copy: refused before anything changes, naming the service.
    f.write(&compose.replace("NEVER", &never));
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"never\"")
            && err.contains("pull_policy never")
            && err.contains(&format!("testapp:n-{n}")),
        "{err}"
    );
    assert!(
        !f.project_exists(),
        "the Incus project {} should not exist",
        f.name
    );
    // `up --pull missing` overrides the policies: pulled, and it runs.
    let out = f.ok(&["up", "-d", "--pull", "missing"]);
    assert!(
        out.contains(&format!("pulled {}/testapp:n-{n}", f.registry)),
        "{out}"
    );
    for s in ["always", "missing", "never"] {
        assert_eq!(f.serves(&f.only_instance(s).name, "v1"), "v1", "{s}");
    }
    let first = |s: &str| {
        let i = f.only_instance(s);
        (
            i.created_at.clone(),
            i.config.get("volatile.base_image").cloned(),
        )
    };
    let (missing_created, missing_image) = first("missing");
    let (never_created, _) = first("never");
    let (_, always_image) = first("always");
    assert!(always_image.is_some());

    // A new release under the same tags.
    for t in ["a", "m", "n"] {
        f.tag("v2", &format!("{t}-{n}"));
    }
    let out = f.ok(&["up", "-d"]);
    // `always` asks the registry and gets the new image; its replica is recreated from it.
    assert!(
        out.contains(&format!("pulled {}/testapp:a-{n} (new image:", f.registry)),
        "{out}"
    );
    assert!(out.contains("changed ("), "{out}");
    let (_, always_now) = first("always");
    assert_ne!(always_now, always_image);
    assert_eq!(f.serves(&f.only_instance("always").name, "v2"), "v2");
    // `missing` and `never` keep the copy the server has: not pulled, not recreated.
    assert!(!out.contains(&format!("testapp:m-{n}")), "{out}");
    assert_eq!(
        first("missing"),
        (missing_created.clone(), missing_image.clone())
    );
    assert_eq!(first("never").0, never_created);
    assert_eq!(f.serves(&f.only_instance("missing").name, "v1"), "v1");

    // `pull` then `up`, as with Docker: the new image is fetched and the replica recreated.
    let out = f.ok(&["pull", "missing"]);
    assert!(out.contains("new image"), "{out}");
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("missing-1"), "{out}");
    let (created, image) = first("missing");
    assert_ne!((created, image), (missing_created, missing_image));
    assert_eq!(f.serves(&f.only_instance("missing").name, "v2"), "v2");
    assert_eq!(first("never").0, never_created, "never was not touched");

    // Nothing moved since: `always` asks again, finds the same image, nothing changes.
    let out = f.ok(&["up", "-d"]);
    assert!(
        out.contains(&format!("pulled {}/testapp:a-{n} (unchanged)", f.registry)),
        "{out}"
    );
    assert!(out.contains("Nothing to change"), "{out}");

    // What each reference named is recorded in the Incus project; a reference the compose file
    // no longer names loses its record at the next pull.
    let records = || -> std::collections::BTreeSet<String> {
        block_on(f.client.get_project(&f.name))
            .expect("project")
            .config
            .into_iter()
            .filter(|(k, _)| k.starts_with("user.incus-compose.image."))
            .filter_map(|(_, v)| v.split_once(' ').map(|(_, key)| key.to_string()))
            .collect()
    };
    let key = |t: &str| format!("{}/testapp:{t}-{n}", f.registry);
    assert_eq!(records(), [key("a"), key("m"), key("n")].into());
    f.write(&compose.replace("NEVER", ""));
    f.ok(&["up", "-d", "--remove-orphans"]);
    assert_eq!(records(), [key("a"), key("m")].into());
}

#[test]
fn logs_follow_shows_the_applications_lines_as_they_come_once_each() {
    let f = Oci::new("follow");
    f.write(
        r#"name: {name}
services:
  ticker:
    image: {registry}/testapp:v1
    entrypoint: ["/bin/sh", "-c"]
    command: ["i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.5; done"]
"#,
    );
    f.ok(&["up", "-d"]);
    let mut child = f
        .command(&["logs", "-f", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start logs -f");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // Ticks arrive while the command runs: consecutive, none twice, none lost.
    let mut ticks: Vec<u64> = Vec::new();
    let t0 = Instant::now();
    while ticks.len() < 8 && t0.elapsed() < Duration::from_secs(30) {
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            if let Some(n) = line.strip_prefix("ticker-1 | tick ") {
                ticks.push(n.trim().parse().expect("tick number"));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ticks.len() >= 8, "too few ticks followed: {ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "ticks out of order, lost or repeated: {ticks:?}"
        );
    }
    // It followed: the last tick came well after `logs -f` started.
    assert!(ticks[ticks.len() - 1] >= ticks[0] + 7, "{ticks:?}");
}

#[test]
fn a_private_registry_is_reached_with_the_credentials_of_the_users_oci_remote() {
    let f = Oci::new("private");
    let env = env7();
    let private = env
        .get("INCUS_COMPOSE_TEST_PRIVATE_REGISTRY")
        .unwrap_or_else(|| panic!("INCUS_COMPOSE_TEST_PRIVATE_REGISTRY missing; {SETUP_HINT_7}"))
        .clone();
    let auth = env
        .get("INCUS_COMPOSE_TEST_PRIVATE_AUTH")
        .unwrap_or_else(|| panic!("INCUS_COMPOSE_TEST_PRIVATE_AUTH missing; {SETUP_HINT_7}"))
        .clone();
    let password = auth.split_once(':').expect("user:password").1.to_string();
    // `web` runs the image as it is; `cmd` sets only `command`, so incus-compose reads the
    // image's entrypoint from the registry itself.
    let compose = format!(
        "name: {{name}}\nservices:\n  web:\n    image: {private}/testapp:v2\n  cmd:\n    image: {private}/testapp:v1\n    command: [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    f.write(&compose);
    // No credentials: the registry refuses, and nothing changes. (`--pull always`: the server
    // may hold copies from earlier runs, which `missing` would use without asking the registry.)
    let out = f.run(&["up", "-d", "--pull", "always"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"web\"") && err.contains(&format!("{private}/testapp:v2")),
        "{err}"
    );
    assert!(
        !f.project_exists(),
        "the Incus project {} should not exist",
        f.name
    );
    // The user's `oci` remote for that registry carries them, as
    // `incus remote add private https://USER:PASSWORD@host:port --protocol=oci` writes it.
    std::fs::write(
        f.conf.path().join("config.yml"),
        format!(
            "default-remote: local\nremotes:\n  local:\n    addr: unix://\n    public: false\n  private:\n    addr: https://{auth}@{private}\n    protocol: oci\n    public: false\n"
        ),
    )
    .expect("write config.yml");
    let out = f.run(&["up", "-d", "--pull", "always"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(
        !printed.contains(&password),
        "the password was printed: {printed}"
    );
    assert!(
        !printed.contains("incus remote"),
        "no remote added: {printed}"
    );
    assert!(
        printed.contains(&format!("pulled {private}/testapp:v2"))
            && printed.contains(&format!("pulled {private}/testapp:v1")),
        "{printed}"
    );
    let web = f.only_instance("web");
    assert_eq!(f.serves(&web.name, "v2"), "v2");
    // The image's entrypoint, read from the private registry, runs before the command.
    let cmd = f.only_instance("cmd");
    assert_eq!(
        cmd.config.get("oci.entrypoint").map(String::as_str),
        Some("/docker-entrypoint.sh httpd -f -p 8080 -h /www")
    );
    // Nothing incus-compose wrote into the instances holds the password.
    for i in [&web, &cmd] {
        for (k, v) in &i.config {
            assert!(!v.contains(&password), "{} {k} holds the password", i.name);
        }
    }
    let out = f.ok(&["up", "-d"]);
    assert!(out.contains("Nothing to change"), "{out}");
}

#[test]
fn run_of_a_docker_image_service_passes_the_exit_code_and_without_a_command_runs_the_images_own() {
    let f = Oci::new("run");
    f.write(
        r#"name: {name}
services:
  web:
    image: {registry}/testapp:v1
    environment:
      GREETING: from compose
"#,
    );
    let out = f.run(&["run", "--rm", "web", "sh", "-c", "echo $GREETING; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "the command's exit code");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from compose\n");
    assert!(
        f.instances("web").is_empty(),
        "no replica made, the one-off removed"
    );
    // Without a command: the image's own entrypoint and cmd (testapp's httpd in the
    // foreground) run; `-d` leaves it serving.
    let name = f.ok(&["run", "-d", "web"]);
    let name = name.trim();
    let got = f.exec_until(name, &["wget", "-qO-", "http://127.0.0.1/"], "v1", WAIT);
    assert_eq!(got, "v1", "the image's process serves in {name}");
}
