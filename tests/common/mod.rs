//! The one fixture of the root integration suites (`tests/*.rs`). Every suite starts with
//! `mod common; use common::*;` (or names what it uses) and builds on this; add here what a
//! second suite needs, not a copy in the suite.
//!
//! # A compose project: [`Fixture`]
//! ```ignore
//! let f = Fixture::new("tag")      // project `<prefix>-tag-<pid>-<n>` in a fresh temp dir
//!     .at_most(1)                  // at most 1 fixture of this test binary at once (optional)
//!     .env("KEY", "value")         // set for every incus-compose run of this fixture (optional)
//!     .compose(YAML);              // write compose.yaml (`{name}` -> the project name)
//! f.ok(&["up", "-d"]);             // run, require success, get stdout (`run` gives the Output)
//! let all = f.instances();         // name -> Instance of the Incus project (empty if none)
//! // dropped: `down -v --remove-orphans -t 0` (up to 3 tries; no grace period: a cleanup tests nothing), also when the test fails
//! ```
//! - Runs: [`Fixture::command`] (a `Command` to adjust), [`Fixture::run`], [`Fixture::ok`],
//!   [`Fixture::run_with_input`], [`Fixture::by_name`] (`-p NAME ...` from a dir without a
//!   compose file), [`Fixture::spawn`] (piped, in the background). Every run prints what it
//!   ran and what it said on stderr (shown for failing tests, or with `--nocapture`).
//! - Incus: [`Fixture::project`] (a client in the project), [`Fixture::instances`],
//!   [`Fixture::instance`], [`Fixture::running`] (running replicas of a service -> member),
//!   [`Fixture::networks`] (Incus networks labelled with the project). Set
//!   [`Fixture::offline`] to the members a test killed: their instances are listed as Incus
//!   lists a member that does not answer.
//! - Cleanup: `delete_first` (instances made by hand in the project, deleted before `down`),
//!   `delete_project` (the Incus project made by hand, deleted after `down`). The project
//!   prefix is the suite's (see [`prefix`]); a new suite gets its crate name.
//!
//! # Members (the cluster is shared by every checkout on this machine)
//! - [`MemberTurn::take`]: the turn of this cluster, shared by every checkout on the machine
//!   (`/tmp/incus-compose-members-<cluster state dir>.lock.d`), to change members; [`Killed::kill`] and [`ExtraMember::add`] take it
//!   themselves (re-entrant on one thread) and undo what they did when dropped.
//! - [`Killed::kill`]`("3")` (`kill-member`: the daemon dies, containers live on; revived
//!   when dropped), [`ExtraMember::add`] (node4; removed when dropped), [`harness`] (any
//!   `scripts/test-cluster` harness command), [`members`] (name, status),
//!   [`member_names`] (also on a single server), [`cluster_online`] (wait for N online).
//! - [`take_turn`]: the tests of one binary that count on the member set take turns.
//! - [`HandMade`]: an instance made with the incus CLI (no incus-compose labels), deleted
//!   when dropped; [`HandMadeProject`]: an Incus project made by hand, taken down and deleted.
//!
//! # Waiting
//! [`wait_for`] polls a condition (panics with `what` after `limit`, returns how long it
//! took); [`wait_until`] returns whether it held. Poll Incus state; do not sleep a guess.
#![allow(dead_code)] // each suite uses a part

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ic_incus::{Client, Instance};

pub const SETUP_HINT: &str = "start the test cluster and load its environment: \
    `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`";

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_incus-compose");

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A client for the server named by `INCUS_DIR`/`INCUS_SOCKET`; fails the test when none
/// is configured or none answers.
pub async fn client_async() -> Client {
    if std::env::var_os("INCUS_DIR").is_none() && std::env::var_os("INCUS_SOCKET").is_none() {
        panic!("no Incus server configured (INCUS_DIR and INCUS_SOCKET unset): {SETUP_HINT}");
    }
    let c = Client::local();
    if let Err(e) = c.server().await {
        panic!("no Incus server answers: {e}; {SETUP_HINT}");
    }
    c
}

/// [`client_async`] outside a runtime.
pub fn client() -> Client {
    block_on(client_async())
}

/// A client that fails the test unless the server is a cluster.
pub fn cluster_client() -> Client {
    let c = client();
    let info = block_on(c.server()).expect("server info");
    assert!(
        info.is_clustered(),
        "these tests need the 3-member test cluster, the server is not clustered: {SETUP_HINT}"
    );
    c
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// The capacity [`Slot`]s share: a fixture with limit `l` takes `CAPACITY / l` of it.
const CAPACITY: usize = 12;

/// A turn among the fixtures of this test binary; given back when dropped. A fixture with
/// limit `l` runs with at most `l - 1` others, each of which also allows that many: a limit of
/// 1 runs alone (say, a test that counts answered requests), 2 beside one other, and so on.
pub struct Slot(usize);

impl Slot {
    pub fn take(limit: usize) -> Slot {
        let units = CAPACITY / limit.clamp(1, CAPACITY);
        let (lock, cvar) = &SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used + units > CAPACITY {
            used = cvar.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += units;
        Slot(units)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cvar) = &SLOTS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        // Waiters want different amounts: each checks again.
        cvar.notify_all();
    }
}

/// The tests of one binary that change or count on the member set (or labels, or interfaces)
/// take turns with this (within the binary; [`MemberTurn`] is machine-wide).
pub fn take_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The project-name prefix of this suite (kept from before the shared fixture, so names in
/// Incus stay recognisable); a suite not listed gets its crate name.
pub fn prefix() -> &'static str {
    match env!("CARGO_CRATE_NAME") {
        "commands" => "cmd",
        "commands2" => "c2",
        "deploy" => "dp",
        "drain" => "dr",
        "egress" => "eg",
        "faults" => "fa",
        "health" => "hc",
        "hostile" => "ho",
        "lease" => "ls",
        "lifecycle" => "lc",
        "lock" => "lk",
        "mapping" => "map",
        "network" => "nw",
        "oci" => "oci",
        "offline_member" => "off",
        "rollout" => "ro",
        "watch" => "ww",
        other => other,
    }
}

/// A compose project name unique to this run: `<prefix>-<tag>-<pid>-<n>`.
pub fn project_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{tag}-{}-{}",
        prefix(),
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Prints what ran, its exit status and output (on the test's stderr).
pub fn show(what: &str, out: &Output) {
    eprintln!(
        "$ {what}  (exit {:?})\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// incus-compose with `args` in `dir`; the compose project is named by the file there only
/// (no project name, file or Incus project from the environment).
pub fn incus_compose(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("COMPOSE_FILE")
        .env_remove("INCUS_COMPOSE_INCUS_PROJECT");
    cmd
}

/// Runs incus-compose with `args` in `dir` (printing what it said).
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    let out = incus_compose(dir, args)
        .output()
        .expect("run incus-compose");
    show(&format!("incus-compose {}", args.join(" ")), &out);
    out
}

/// Runs the incus CLI (the test cluster's, through `INCUS_DIR`), printing what it said.
pub fn incus(args: &[&str]) -> Output {
    let out = Command::new("incus")
        .args(args)
        .output()
        .expect("run the incus CLI");
    show(&format!("incus {}", args.join(" ")), &out);
    out
}

/// Stdout of a run, after requiring success.
pub fn stdout_of(args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "incus-compose {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A compose project in a temporary directory, taken down (`down -v`) when dropped. See the
/// module documentation.
pub struct Fixture {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// More project directories (`add_dir`), e.g. two compose files of one project.
    pub dirs: Vec<tempfile::TempDir>,
    /// A directory without any compose file (nor one in its parents).
    pub empty: tempfile::TempDir,
    pub client: Client,
    /// Set for every incus-compose run of this fixture (cleanup included).
    pub env: Vec<(String, String)>,
    /// Removed from the environment of every run.
    pub env_remove: Vec<String>,
    /// Members a test killed: their instances are listed as Incus lists them (stand-ins).
    pub offline: Mutex<Vec<String>>,
    /// Instances made by hand in the project: deleted before `down`.
    pub delete_first: Vec<String>,
    /// Delete the Incus project after `down` (when the test made it by hand).
    pub delete_project: bool,
    /// Run `unpause` before `down` (paused replicas cannot be stopped).
    pub unpause_first: bool,
    /// When the fixture was made (or got its turn, [`Fixture::at_most`]): its time goes to
    /// `$IC_TEST_TIMES` when it is dropped.
    started: Instant,
    /// Dropped last (fields drop in order), after the cleanup in `Drop`.
    slot: Option<Slot>,
}

impl Fixture {
    /// A fixture on the server of the environment ([`client`]).
    pub fn new(tag: &str) -> Fixture {
        Fixture::with_client(client(), tag)
    }

    /// A fixture on the server `client` talks to.
    pub fn with_client(client: Client, tag: &str) -> Fixture {
        Fixture {
            name: project_name(tag),
            dir: tempfile::tempdir().expect("temp dir"),
            dirs: Vec::new(),
            empty: tempfile::tempdir().expect("temp dir"),
            client,
            env: Vec::new(),
            env_remove: Vec::new(),
            offline: Mutex::new(Vec::new()),
            delete_first: Vec::new(),
            delete_project: false,
            unpause_first: false,
            started: Instant::now(),
            slot: None,
        }
    }

    /// At most `limit` fixtures of this test binary at once, counting this one (waits for a
    /// turn; see [`Slot`]: with limit 1 it runs alone).
    pub fn at_most(mut self, limit: usize) -> Fixture {
        self.slot = Some(Slot::take(limit));
        self.started = Instant::now();
        self
    }

    /// `key=value` in the environment of every run.
    pub fn env(mut self, key: &str, value: &str) -> Fixture {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Thaw the project (`unpause`) before the cleanup's `down`: paused replicas cannot stop.
    pub fn paused_ok(mut self) -> Fixture {
        self.unpause_first = true;
        self
    }

    /// Writes compose.yaml (`{name}` -> the project name).
    pub fn compose(self, yaml: &str) -> Fixture {
        self.write(yaml);
        self
    }

    /// Writes compose.yaml (`{name}` -> the project name); its path.
    pub fn write(&self, yaml: &str) -> PathBuf {
        self.write_file("compose.yaml", yaml)
    }

    /// Writes a file of the project directory (`{name}` -> the project name); its path.
    pub fn write_file(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text.replace("{name}", &self.name)).expect("write file");
        path
    }

    /// compose.yaml's path.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("compose.yaml")
    }

    /// Another directory with its own compose.yaml (`{name}` -> the project name); its path.
    pub fn add_dir(&mut self, yaml: &str) -> PathBuf {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            d.path().join("compose.yaml"),
            yaml.replace("{name}", &self.name),
        )
        .expect("write compose file");
        let p = d.path().to_path_buf();
        self.dirs.push(d);
        p
    }

    /// incus-compose with `args` in directory `dir`, with this fixture's environment.
    pub fn command_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = incus_compose(dir, args);
        for k in &self.env_remove {
            c.env_remove(k);
        }
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// incus-compose with `args` in the project directory.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_in(self.dir.path(), args)
    }

    /// Runs with `stdin` as standard input.
    pub fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run incus-compose");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("wait for incus-compose");
        show(&format!("incus-compose {}", args.join(" ")), &out);
        out
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(self.dir.path(), args)
    }

    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        let out = self
            .command_in(dir, args)
            .output()
            .expect("run incus-compose");
        show(&format!("incus-compose {}", args.join(" ")), &out);
        out
    }

    /// Runs and requires success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        stdout_of(args, &self.run(args))
    }

    /// Runs in `dir` and requires success; stdout.
    pub fn ok_in(&self, dir: &Path, args: &[&str]) -> String {
        stdout_of(args, &self.run_in(dir, args))
    }

    /// Runs and requires success; stdout and stderr together.
    pub fn ok_all(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = stdout_of(args, &out);
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))
    }

    /// `-p NAME ARGS` from a directory without a compose file.
    pub fn by_name(&self, args: &[&str]) -> Output {
        let mut all = vec!["-p", self.name.as_str()];
        all.extend_from_slice(args);
        self.run_in(self.empty.path(), &all)
    }

    /// Starts `args` in the background (stdout and stderr piped).
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.spawn_in(self.dir.path(), args)
    }

    pub fn spawn_in(&self, dir: &Path, args: &[&str]) -> Child {
        self.command_in(dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start incus-compose")
    }

    /// A client in the Incus project.
    pub fn project(&self) -> Client {
        self.client.with_project(&self.name)
    }

    pub fn project_exists(&self) -> bool {
        match block_on(self.client.get_project(&self.name)) {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => panic!("reading project {}: {e}", self.name),
        }
    }

    /// Instances of the Incus project but its member resolvers of the service names (see
    /// [`is_resolver`]), by name (none when there is no project). Instances on members of
    /// [`Fixture::offline`] are stand-ins, as Incus lists them.
    pub fn instances(&self) -> BTreeMap<String, Instance> {
        self.all_instances()
            .into_iter()
            .filter(|(_, i)| !is_resolver(i))
            .collect()
    }

    /// Every instance of the Incus project, member resolvers included.
    pub fn all_instances(&self) -> BTreeMap<String, Instance> {
        if !self.project_exists() {
            return BTreeMap::new();
        }
        let offline = self.offline.lock().map(|o| o.clone()).unwrap_or_default();
        let p = self.project();
        let list = if offline.is_empty() {
            block_on(p.instances())
        } else {
            block_on(p.instances_with_offline(&offline))
        };
        list.expect("list instances")
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect()
    }

    pub fn instance(&self, name: &str) -> Instance {
        block_on(self.project().instance(name))
            .unwrap_or_else(|e| panic!("instance {name} of {}: {e}", self.name))
    }

    /// Running replicas of `service`: name -> member.
    pub fn running(&self, service: &str) -> BTreeMap<String, String> {
        self.instances()
            .into_values()
            .filter(|i| i.is_running() && service_of(i) == Some(service))
            .map(|i| (i.name, i.location))
            .collect()
    }

    /// The Incus networks labelled with this compose project.
    pub fn networks(&self) -> Vec<ic_incus::Network> {
        block_on(self.client.with_project("default").networks())
            .expect("list networks")
            .into_iter()
            .filter(|n| {
                n.config
                    .get("user.incus-compose.project")
                    .map(String::as_str)
                    == Some(self.name.as_str())
            })
            .collect()
    }
}

impl Fixture {
    /// A shell command in a replica (`exec -T --index N`): (exit code, stdout).
    pub fn sh(&self, service: &str, index: u32, script: &str) -> (i32, String) {
        let idx = index.to_string();
        let out = self
            .command(&["exec", "-T", "--index", &idx, service, "sh", "-c", script])
            .output()
            .expect("run incus-compose exec");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `wget -q -O- URL` in a replica, a few tries (a fresh replica may still be getting its
    /// address or starting httpd): the body, or None.
    pub fn fetch(&self, service: &str, index: u32, url: &str) -> Option<String> {
        for attempt in 0..10 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let (code, out) = self.sh(service, index, &format!("wget -q -O- {url}"));
            if code == 0 {
                return Some(out);
            }
        }
        None
    }

    /// One try of `wget -q -O- URL` (3 s at most): whether it answered. The exec itself must
    /// work (the script prints wget's exit status): a failed exec is no negative answer.
    pub fn reaches(&self, service: &str, index: u32, url: &str) -> bool {
        let (code, out) = self.sh(
            service,
            index,
            &format!("wget -q -T 3 -O- {url} >/dev/null 2>&1; echo wget=$?"),
        );
        let status = out.trim().strip_prefix("wget=");
        assert!(
            code == 0 && status.is_some(),
            "the exec in {service}-{index} did not run (exit {code}): {out:?}"
        );
        status == Some("0")
    }
}

/// Whether `i` is one of a project's member resolvers of the service names
/// (`src/engine/names.rs`): infrastructure of every project with a spanning bridge, one per
/// member, never a replica (`ps` does not list them either).
pub fn is_resolver(i: &Instance) -> bool {
    i.config.contains_key("user.incus-compose.resolver")
}

impl Fixture {
    /// The DNS records of this project's spanning bridge, as `host-record=NAME,NAME.incus,ADDRESS`
    /// lines: its `raw.dnsmasq` (`x-incus: {names: dnsmasq}`), or, when that forwards to the
    /// member resolvers (the default), the file every running resolver serves (all the same,
    /// else this fails); empty if none.
    pub fn dns_records(&self) -> String {
        let raw = self
            .networks()
            .into_iter()
            .find_map(|n| n.config.get("raw.dnsmasq").cloned())
            .unwrap_or_default();
        if !raw.contains("server=//") {
            return raw;
        }
        let project = self.project();
        let files: std::collections::BTreeSet<String> = self
            .all_instances()
            .into_values()
            .filter(|i| is_resolver(i) && i.is_running())
            .map(|i| {
                let bytes =
                    block_on(project.pull_file(&i.name, "/hosts")).expect("the resolver's file");
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect();
        assert_eq!(files.len(), 1, "the resolvers serve one file: {files:?}");
        let mut out = String::new();
        for line in files.iter().next().into_iter().flat_map(|f| f.lines()) {
            // `PORT ADDRESS NAME NAME.incus ...`
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() < 3 || line.starts_with('#') {
                continue;
            }
            for name in words[2..].iter().filter(|w| !w.ends_with(".incus")) {
                out.push_str(&format!("host-record={name},{name}.incus,{}\n", words[1]));
            }
        }
        out
    }

    /// Custom volumes of the project in pool `data` (none when there is no project).
    pub fn custom_volumes(&self) -> Vec<ic_incus::StorageVolume> {
        if !self.project_exists() {
            return Vec::new();
        }
        block_on(self.project().storage_volumes("data"))
            .expect("list volumes")
            .into_iter()
            .filter(|v| v.kind == "custom")
            .collect()
    }

    /// The Incus server's version.
    pub fn server_version(&self) -> String {
        block_on(self.client.server())
            .expect("server info")
            .environment
            .server_version
    }

    /// `incus-compose <inner>` run under script(1), in a terminal, from the project
    /// directory: `inner` is a shell command line (`{BIN}` stands for the binary).
    pub fn in_terminal(&self, inner: &str) -> Output {
        Command::new("script")
            .args(["-qec", &inner.replace("{BIN}", BIN), "/dev/null"])
            .current_dir(self.dir.path())
            .env_remove("COMPOSE_PROJECT_NAME")
            .stdin(Stdio::null())
            .output()
            .expect("run script(1)")
    }
}

/// The compose service an instance is a replica of.
pub fn service_of(i: &Instance) -> Option<&str> {
    i.config
        .get("user.incus-compose.service")
        .map(String::as_str)
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let cleanup = Instant::now();
        self.clean_up();
        record_time(&self.name, self.started.elapsed(), cleanup.elapsed());
    }
}

/// Appends `test<TAB>project<TAB>seconds<TAB>cleanup seconds` to the file `$IC_TEST_TIMES`
/// names (scripts/test sets it per suite and prints the slowest tests at the end).
fn record_time(project: &str, total: Duration, cleanup: Duration) {
    let Some(path) = std::env::var_os("IC_TEST_TIMES") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!(
        "{test}\t{project}\t{:.1}\t{:.1}\n",
        total.as_secs_f64(),
        cleanup.as_secs_f64()
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

impl Fixture {
    /// `down -v` of the project (and what the test made by hand), retried.
    fn clean_up(&mut self) {
        let p = self.project();
        for name in &self.delete_first {
            block_on(async {
                let _ = p.stop_instance(name, -1, true).await;
                if let Ok(op) = p.delete_instance(name).await {
                    let _ = op.wait().await;
                }
            });
        }
        let in_dir = self.path().exists();
        if in_dir || block_on(self.client.get_project(&self.name)).is_ok() {
            // A member another test killed holds instances `down` cannot delete: wait for it
            // (a cluster only; a single server lists no members).
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(90)
                && block_on(self.client.cluster_members())
                    .is_ok_and(|m| m.iter().any(|m| !m.status.eq_ignore_ascii_case("online")))
            {
                std::thread::sleep(Duration::from_secs(1));
            }
            let (dir, by_name): (&Path, Vec<&str>) = if in_dir {
                (self.dir.path(), vec![])
            } else {
                (self.empty.path(), vec!["-p", self.name.as_str()])
            };
            let args = |cmd: &[&'static str]| {
                let mut a = by_name.clone();
                a.extend_from_slice(cmd);
                a
            };
            for attempt in 0..3 {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                }
                if self.unpause_first {
                    let _ = self.command_in(dir, &args(&["unpause"])).output();
                }
                match self
                    .command_in(dir, &args(&["down", "-v", "--remove-orphans", "-t", "0"]))
                    .output()
                {
                    Ok(o) if o.status.success() => break,
                    Ok(o) => show(&format!("cleanup of {} failed", self.name), &o),
                    Err(e) => eprintln!("cleanup of {}: {e}", self.name),
                }
            }
        }
        if self.delete_project {
            let _ = block_on(self.client.delete_project(&self.name));
        }
    }
}

/// Waits until `check` holds, polling every 250 ms, at most `limit`; how long it took. Panics
/// naming `what` when it does not hold in time.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether `check` holds within `limit` (polled every 100 ms).
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

// --- members --------------------------------------------------------------------------------

/// Members: (name, status), sorted.
pub fn members(c: &Client) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = block_on(c.cluster_members())
        .expect("list members")
        .into_iter()
        .map(|m| (m.server_name, m.status))
        .collect();
    m.sort();
    m
}

/// Member names, sorted; a single server's own name when it is not clustered.
pub fn member_names(c: &Client) -> Vec<String> {
    let info = block_on(c.server()).expect("server info");
    if !info.is_clustered() {
        return vec![info.environment.server_name];
    }
    members(c).into_iter().map(|(n, _)| n).collect()
}

/// Waits (up to 90 s: another suite may have a member down for a moment) until the cluster
/// has exactly `n` members, all online; fails the test otherwise.
pub fn cluster_online(c: &Client, n: usize) {
    let all_online = |m: &[(String, String)]| {
        m.len() == n && m.iter().all(|(_, s)| s.eq_ignore_ascii_case("online"))
    };
    let start = Instant::now();
    let mut m = members(c);
    while !all_online(&m) && start.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(1));
        m = members(c);
    }
    assert!(
        all_online(&m),
        "these tests need the {n}-member test cluster with every member online, found {m:?}: {SETUP_HINT}"
    );
}

/// Runs the harness (`INCUS_COMPOSE_TEST_HARNESS`, the line the environment names) with
/// `args`; Err says what it printed.
pub fn harness(args: &[&str]) -> Result<(), String> {
    let path = std::env::var_os("INCUS_COMPOSE_TEST_HARNESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "INCUS_COMPOSE_TEST_HARNESS unset ({} needs it): {SETUP_HINT}",
                args.join(" ")
            )
        });
    match Command::new(&path).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "harness {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run the harness {}: {e}", args.join(" "))),
    }
}

/// The member turn of the cluster the environment names (every checkout's suites share the
/// clusters; the lines' clusters are separate, so each has its own turn and a 6.0 suite that
/// kills a member never waits for a 7.0 one).
pub fn member_turn() -> PathBuf {
    let cluster = std::env::var("INCUS_COMPOSE_TEST_STATE")
        .or_else(|_| std::env::var("INCUS_DIR"))
        .unwrap_or_default();
    let tag: String = cluster
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    PathBuf::from(format!("/tmp/incus-compose-members{tag}.lock.d"))
}

thread_local! {
    static TURNS_HELD: Cell<usize> = const { Cell::new(0) };
}

/// The turn for changing this cluster's members: the directory [`member_turn`], taken with
/// `mkdir` every 0.5 s until free, stale after 10 minutes, removed when dropped. Re-entrant
/// on one thread (a test holding it may kill a member, whose guard takes it again).
pub struct MemberTurn;

impl MemberTurn {
    pub fn take() -> MemberTurn {
        if TURNS_HELD.with(|h| h.get()) > 0 {
            TURNS_HELD.with(|h| h.set(h.get() + 1));
            return MemberTurn;
        }
        let start = Instant::now();
        let turn = member_turn();
        loop {
            match std::fs::create_dir(&turn) {
                Ok(()) => {
                    let _ = std::fs::write(
                        turn.join("holder"),
                        format!(
                            "tests/{} pid {}",
                            env!("CARGO_CRATE_NAME"),
                            std::process::id()
                        ),
                    );
                    eprintln!(
                        "member turn taken after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    TURNS_HELD.with(|h| h.set(1));
                    return MemberTurn;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&turn)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(600));
                    if stale {
                        let _ = std::fs::remove_dir_all(&turn);
                        continue;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(900),
                        "the member turn {} stayed taken for 15 minutes",
                        turn.display()
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("cannot take the member turn {}: {e}", turn.display()),
            }
        }
    }
}

impl Drop for MemberTurn {
    fn drop(&mut self) {
        let left = TURNS_HELD.with(|h| {
            let n = h.get().saturating_sub(1);
            h.set(n);
            n
        });
        if left == 0 {
            let _ = std::fs::remove_dir_all(member_turn());
        }
    }
}

/// Member K killed (`kill-member`: its daemon dies, its containers live on), under the
/// member turn; revived (`revive-member`) when dropped unless already.
pub struct Killed {
    pub k: String,
    revived: bool,
    _turn: MemberTurn,
}

impl Killed {
    pub fn kill(k: &str) -> Killed {
        let guard = Killed {
            _turn: MemberTurn::take(),
            k: k.to_string(),
            revived: false,
        };
        harness(&["kill-member", k]).unwrap_or_else(|e| panic!("{e}"));
        guard
    }

    pub fn revive(&mut self) {
        self.revived = true;
        harness(&["revive-member", &self.k]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if !self.revived
            && let Err(e) = harness(&["revive-member", &self.k])
        {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A fourth member (`add-member`, node4) under the member turn, removed (`remove-member`)
/// when dropped, also when the test fails.
pub struct ExtraMember {
    pub name: String,
    _turn: MemberTurn,
}

impl ExtraMember {
    pub fn add(client: &Client) -> ExtraMember {
        let turn = MemberTurn::take();
        let before = member_names(client);
        assert_eq!(before.len(), 3, "expected the 3-member test cluster");
        let guard = ExtraMember {
            name: "node4".into(),
            _turn: turn,
        };
        harness(&["add-member"]).unwrap_or_else(|e| panic!("{e}"));
        let after = member_names(client);
        let new: Vec<&String> = after.iter().filter(|m| !before.contains(m)).collect();
        assert_eq!(new, [&guard.name], "add-member added {new:?}");
        guard
    }
}

impl Drop for ExtraMember {
    fn drop(&mut self) {
        if let Err(e) = harness(&["remove-member"]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// An instance made by hand (busybox, no incus-compose labels) in Incus project `project`,
/// on `member` if given; deleted when dropped.
pub struct HandMade {
    pub project: String,
    pub name: String,
}

impl HandMade {
    pub fn launch(project: &str, name: &str, member: Option<&str>) -> HandMade {
        let guard = HandMade {
            project: project.to_string(),
            name: name.to_string(),
        };
        let mut args = vec![
            "launch",
            "busybox",
            name,
            "--project",
            project,
            "-c",
            "user.note=made by hand",
        ];
        if let Some(m) = member {
            args.extend(["--target", m]);
        }
        let out = incus(&args);
        assert!(out.status.success(), "incus launch {name} failed");
        guard
    }
}

impl Drop for HandMade {
    fn drop(&mut self) {
        incus(&["delete", "--force", &self.name, "--project", &self.project]);
    }
}

/// An Incus project made by hand (by the test) used for compose project `compose`: what was
/// deployed in it is taken down (from `dir`), then the project is deleted, when dropped.
pub struct HandMadeProject {
    pub client: Client,
    pub name: String,
    pub compose: String,
    pub dir: PathBuf,
    /// Set for the `down` (e.g. a short lock lease).
    pub env: Vec<(String, String)>,
}

impl Drop for HandMadeProject {
    fn drop(&mut self) {
        let _ = incus_compose(
            &self.dir,
            &[
                "-p",
                &self.compose,
                "--incus-project",
                &self.name,
                "down",
                "-v",
                "-t",
                "1",
            ],
        )
        .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output();
        let _ = block_on(self.client.delete_project(&self.name));
    }
}

// Published ports, asked from this machine (rollout, ingress).

/// What the member at `ip` answers on host port `port` (the replica there, through its
/// published port), or None. Asked from this machine, over the harness bridge; tried once
/// more after 300 ms.
pub fn published_answer(ip: &str, port: u16) -> Option<String> {
    published_answer_once(ip, port).or_else(|| {
        std::thread::sleep(Duration::from_millis(300));
        published_answer_once(ip, port)
    })
}

/// [`published_answer`] asked once (2 s to connect, 2 s to answer): what counts failed
/// requests.
pub fn published_answer_once(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:{port}")
        .parse::<std::net::SocketAddr>()
        .ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_string())
}

/// The cluster's `cluster.offline_threshold` in seconds (Incus's default, 20, when unset).
pub fn offline_threshold() -> u64 {
    block_on(client().server())
        .ok()
        .and_then(|i| {
            i.config
                .get("cluster.offline_threshold")
                .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(20)
}

/// The test cluster's members: (name, address) from the environment.
pub fn member_ips() -> Vec<(String, String)> {
    (1..=3)
        .filter_map(|k| {
            let addr = std::env::var(format!("INCUS_COMPOSE_TEST_NODE{k}_ADDRESS")).ok()?;
            let ip = addr.split(':').next()?.to_string();
            Some((format!("node{k}"), ip))
        })
        .collect()
}
