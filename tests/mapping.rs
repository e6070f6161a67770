//! Mapping tests: compose service fields brought up by the built `incus-compose` binary on a
//! real Incus cluster, checked in Incus (config keys, devices, volumes) and inside the
//! instances through exec (file content, owner and mode, mounts, process credentials).
//!
//! Start the test cluster and load its environment first:
//! `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`, then
//! `cargo test --test mapping`. Without `INCUS_DIR`/`INCUS_SOCKET`, or with no daemon
//! answering, every test fails and says so.
//!
//! Every test uses a compose project of its own (`map-<tag>-<pid>-<n>`) and removes it
//! (`down -v`) even when it fails.

use std::collections::BTreeMap;

use ic_incus::ExecRequest;

mod common;
use common::*;

impl Fixture {
    /// Custom volumes of the project: name -> config.
    fn volumes(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.custom_volumes()
            .into_iter()
            .map(|v| (v.name, v.config))
            .collect()
    }

    /// `sh -c script` in the instance. Retried when the exec websocket itself fails (Incus
    /// 6.0 in this harness resets one now and then), never on the script's exit status.
    fn exec(&self, instance: &str, script: &str) -> ic_incus::ExecOutput {
        let req = ExecRequest::new(["sh", "-c", script]);
        let mut attempt = 0;
        loop {
            match block_on(self.project().exec_output(instance, &req, b"")) {
                Ok(out) => return out,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("exec in {instance} failed ({e}), again");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => panic!("exec in {instance}: {e}"),
            }
        }
    }

    /// `sh -c script` in the instance; stdout (the test fails on a non-zero exit).
    fn sh_on(&self, instance: &str, script: &str) -> String {
        let out = self.exec(instance, script);
        assert_eq!(
            out.exit_code,
            0,
            "{script:?} in {instance} exited {}: {}{}",
            out.exit_code,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Exit code of `sh -c script` in the instance.
    fn sh_status(&self, instance: &str, script: &str) -> i32 {
        self.exec(instance, script).exit_code
    }
}

#[test]
fn secrets_and_configs_arrive_as_read_only_files_and_a_changed_secret_recreates() {
    let mut f = Fixture::new("secrets").at_most(1);
    f.env
        .push(("MAP_TEST_TOKEN".into(), "token-from-the-environment".into()));
    f.write_file("db_password.txt", "s3cret-from-a-file\n");
    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    command: [sleep, "3600"]
    secrets:
      - db_password
      - source: token
        target: api_token
        uid: "1000"
        gid: "1001"
        mode: 0400
    configs:
      - app_conf
      - source: app_conf
        target: /etc/app/settings.ini
        mode: 0o644
  plain:
    image: busybox
    configs: [app_conf]
secrets:
  db_password:
    file: ./db_password.txt
  token:
    environment: MAP_TEST_TOKEN
configs:
  app_conf:
    content: |
      [server]
      port = 8080
"#,
    );
    let up = f.ok_all(&["up", "-d"]);
    assert!(
        !up.contains("s3cret-from-a-file") && !up.contains("token-from-the-environment"),
        "secret values printed: {up}"
    );
    let i = f.instance("app-1");
    assert!(i.is_running(), "app-1 is {}", i.status);
    for (k, v) in &i.config {
        assert!(
            !v.contains("s3cret") && !v.contains("token-from-the-environment"),
            "secret value in config key {k}"
        );
    }

    // Default secret path, content, owner root (no `user`), mode 0444 (the compose spec's).
    assert_eq!(
        f.sh_on("app-1", "cat /run/secrets/db_password"),
        "s3cret-from-a-file"
    );
    assert_eq!(
        f.sh_on("app-1", "stat -c '%a %u %g' /run/secrets/db_password"),
        "444 0 0"
    );
    // Long syntax: relative target under /run/secrets, uid/gid/mode, value from the environment.
    assert_eq!(
        f.sh_on("app-1", "cat /run/secrets/api_token"),
        "token-from-the-environment"
    );
    assert_eq!(
        f.sh_on("app-1", "stat -c '%a %u %g' /run/secrets/api_token"),
        "400 1000 1001"
    );
    // Configs: /<name> by default (0444), an absolute target with its directories; a write
    // bit asked for is dropped (read-only).
    assert_eq!(f.sh_on("app-1", "cat /app_conf"), "[server]\nport = 8080");
    assert_eq!(f.sh_on("app-1", "stat -c '%a %u %g' /app_conf"), "444 0 0");
    assert_eq!(
        f.sh_on("app-1", "cat /etc/app/settings.ini"),
        "[server]\nport = 8080"
    );
    assert_eq!(
        f.sh_on("app-1", "stat -c '%a' /etc/app/settings.ini"),
        "444"
    );

    // Without a command the image's init runs; the files are there before it starts.
    assert!(f.instance("plain-1").is_running());
    assert_eq!(f.sh_on("plain-1", "cat /app_conf"), "[server]\nport = 8080");

    // Same secret again: nothing to change. A new value: the instance is recreated with it.
    let again = f.ok_all(&["up", "-d"]);
    assert!(again.contains("Nothing to change"), "{again}");
    f.write_file("db_password.txt", "rotated\n");
    let changed = f.ok_all(&["up", "-d"]);
    assert!(changed.contains("recreated"), "{changed}");
    assert!(
        !changed.contains("rotated"),
        "secret value printed: {changed}"
    );
    assert_eq!(f.sh_on("app-1", "cat /run/secrets/db_password"), "rotated");
}

#[test]
fn a_missing_secret_file_fails_before_any_change() {
    let f = Fixture::new("nosecret").at_most(1);
    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    secrets: [gone]
secrets:
  gone:
    file: ./does-not-exist.txt
"#,
    );
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gone\"") && err.contains("does-not-exist.txt"),
        "{err}"
    );
    assert!(!f.project_exists(), "nothing may be created");
}

#[test]
fn tmpfs_mounts_shm_size_a_read_only_root_and_anonymous_volumes_take_effect() {
    let f = Fixture::new("mounts").at_most(1);
    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    command: [sleep, "3600"]
    read_only: true
    shm_size: 4m
    tmpfs:
      - /scratch:size=1m,mode=1777
    volumes:
      - type: tmpfs
        target: /cache
        tmpfs: {size: 2097152}
      - /data
"#,
    );
    f.ok_all(&["up", "-d"]);
    let i = f.instance("app-1");
    assert!(i.is_running(), "app-1 is {}", i.status);
    assert_eq!(i.devices["root"]["readonly"], "true");
    let raw = &i.config["raw.lxc"];
    assert!(
        raw.contains(
            "lxc.mount.entry = tmpfs scratch tmpfs rw,nosuid,nodev,size=1m,mode=1777,create=dir 0 0"
        ),
        "{raw}"
    );

    let mounts = f.sh_on("app-1", "cat /proc/mounts");
    let line = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("{target} is not mounted:\n{mounts}"))
            .to_string()
    };
    assert!(
        line("/scratch").starts_with("tmpfs /scratch tmpfs "),
        "{mounts}"
    );
    assert!(
        line("/scratch").contains("size=1024k"),
        "{}",
        line("/scratch")
    );
    assert!(line("/cache").contains("size=2048k"), "{}", line("/cache"));
    assert!(
        line("/dev/shm").contains("size=4096k"),
        "{}",
        line("/dev/shm")
    );
    assert!(line("/").contains(" ro,"), "{}", line("/"));
    assert_ne!(
        f.sh_status("app-1", "touch /not-here"),
        0,
        "the root is read-only"
    );
    f.sh_on("app-1", "echo kept > /scratch/x && echo kept > /data/x");
    assert_eq!(f.sh_on("app-1", "stat -c %a /scratch"), "1777");

    // The anonymous volume: one per instance, named after it, labelled as ours.
    let vols = f.volumes();
    let anon = vols
        .get("app-1_anon-data")
        .unwrap_or_else(|| panic!("no anonymous volume: {vols:?}"));
    assert_eq!(anon["user.incus-compose.project"], f.name);
    assert_eq!(anon["user.incus-compose.anonymous"], "/data");
    assert_eq!(i.devices["mount1"]["source"], "app-1_anon-data");

    // Kept by a recreate (data survives) and by `down`; removed by `down -v`.
    f.ok_all(&["up", "-d", "--force-recreate"]);
    assert_eq!(f.sh_on("app-1", "cat /data/x"), "kept");
    assert_eq!(
        f.sh_status("app-1", "test -e /scratch/x"),
        1,
        "tmpfs is fresh"
    );
    f.ok_all(&["down", "-t", "1"]);
    assert!(f.volumes().contains_key("app-1_anon-data"), "down keeps it");
    f.ok_all(&["down", "-v", "-t", "1"]);
    assert!(
        !f.volumes().contains_key("app-1_anon-data"),
        "down -v removes it"
    );
}

#[test]
fn process_fields_set_user_directory_hostname_sysctls_capabilities_limits_and_hosts() {
    let f = Fixture::new("proc").at_most(1);
    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    command: [sleep, "3600"]
    init: true
    user: "1000:1001"
    working_dir: /work/dir
    hostname: custom-host
    stop_signal: SIGUSR1
    sysctls:
      net.ipv4.ip_unprivileged_port_start: "81"
    cap_drop: [NET_RAW]
    ulimits:
      nofile: {soft: 1024, hard: 2048}
    extra_hosts:
      - "db.example:10.1.2.3"
      - "cache.example=10.1.2.4"
    dns: [10.9.9.9]
    devices:
      - /dev/zero:/dev/myzero
    ports:
      - "127.0.0.1:18611-18612:7001-7002/udp"
    cpuset: "0"
    oom_score_adj: 500
  locked:
    image: busybox
    command: [sleep, "3600"]
    network_mode: none
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    security_opt: [no-new-privileges:true]
  named:
    image: busybox
    command: [sleep, "3600"]
    user: app
    configs:
      - source: passwd
        target: /etc/passwd
configs:
  passwd:
    content: |
      root:x:0:0:root:/root:/bin/sh
      app:x:1234:1235:app:/:/bin/sh
"#,
    );
    f.ok_all(&["up", "-d"]);
    let i = f.instance("app-1");
    assert!(i.is_running(), "app-1 is {}", i.status);
    assert_eq!(
        i.config["linux.sysctl.net.ipv4.ip_unprivileged_port_start"],
        "81"
    );
    assert_eq!(i.config["limits.kernel.nofile"], "1024:2048");
    assert_eq!(i.devices["device0"]["type"], "unix-char");
    assert_eq!(i.devices["device0"]["path"], "/dev/myzero");
    assert!(
        i.config["raw.lxc"].contains("lxc.signal.halt = SIGUSR1"),
        "{}",
        i.config["raw.lxc"]
    );

    // init: true: a shell is PID 1, the command its child, as uid 1000 / gid 1001, in the
    // working directory.
    assert_eq!(f.sh_on("app-1", "cat /proc/1/comm"), "sh");
    let child = f.sh_on("app-1", "pidof sleep");
    assert_eq!(
        f.sh_on(
            "app-1",
            &format!(
                "grep -E '^(Uid|Gid):' /proc/{child}/status | awk '{{print $2}}' | tr '\\n' ' '"
            )
        ),
        "1000 1001"
    );
    assert_eq!(
        f.sh_on("app-1", &format!("readlink /proc/{child}/cwd")),
        "/work/dir"
    );
    assert_eq!(f.sh_on("app-1", "hostname"), "custom-host");
    assert_eq!(
        f.sh_on("app-1", "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"),
        "81"
    );
    // CAP_NET_RAW (13) is gone from the bounding set, CAP_NET_ADMIN (12) is not.
    let bnd = u64::from_str_radix(
        &f.sh_on("app-1", "grep CapBnd /proc/1/status | awk '{print $2}'"),
        16,
    )
    .expect("CapBnd");
    assert_eq!(bnd & (1 << 13), 0, "{bnd:x}");
    assert_ne!(bnd & (1 << 12), 0, "{bnd:x}");
    assert_eq!(
        f.sh_on(
            "app-1",
            &format!("grep 'Max open files' /proc/{child}/limits | awk '{{print $4, $5}}'")
        ),
        "1024 2048"
    );
    let hosts = f.sh_on("app-1", "cat /etc/hosts");
    assert!(hosts.contains("10.1.2.3\tdb.example"), "{hosts}");
    assert!(hosts.contains("10.1.2.4\tcache.example"), "{hosts}");
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(
        f.sh_on("app-1", "cat /etc/resolv.conf")
            .contains("nameserver 10.9.9.9"),
        "resolv.conf"
    );
    f.sh_on("app-1", "test -c /dev/myzero");
    assert_eq!(i.config["limits.cpu"], "0-0");
    // Enforcement is checked where the server has the CPU controller (the harness reports it;
    // Incus 7.0 on this host's cgroup layout has none and ignores limits).
    if std::env::var("INCUS_COMPOSE_TEST_CPU_LIMITS").as_deref() != Ok("0") {
        assert_eq!(f.sh_on("app-1", "nproc"), "1");
    }
    assert_eq!(
        f.sh_on("app-1", &format!("cat /proc/{child}/oom_score_adj")),
        "500"
    );
    // A UDP port range on one host address: a proxy device per port (the loader expands
    // ranges, as docker compose does).
    for (host, target) in [(18611, 7001), (18612, 7002)] {
        let proxy = &i.devices[&format!("port-udp-{host}")];
        assert_eq!(proxy["listen"], format!("udp:127.0.0.1:{host}"));
        assert_eq!(proxy["connect"], format!("udp:127.0.0.1:{target}"));
    }

    // network_mode: none: no NIC, only the loopback interface.
    let locked_i = f.instance("locked-1");
    assert!(
        !locked_i.devices.values().any(|d| d["type"] == "nic"),
        "{:?}",
        locked_i.devices
    );
    assert_eq!(f.sh_on("locked-1", "ls /sys/class/net"), "lo");

    // cap_drop: [ALL] with cap_add: only CAP_NET_BIND_SERVICE (10) stays.
    let locked = u64::from_str_radix(
        &f.sh_on("locked-1", "grep CapBnd /proc/1/status | awk '{print $2}'"),
        16,
    )
    .expect("CapBnd");
    assert_eq!(locked, 1 << 10, "{locked:x}");
    assert_eq!(
        f.sh_on(
            "locked-1",
            "grep NoNewPrivs /proc/1/status | awk '{print $2}'"
        ),
        "1"
    );

    // A user name: the command runs through su as that user (from the image's /etc/passwd,
    // here delivered as a config).
    let sleeper = f.sh_on("named-1", "pidof sleep");
    assert_eq!(
        f.sh_on(
            "named-1",
            &format!(
                "grep -E '^(Uid|Gid):' /proc/{sleeper}/status | awk '{{print $2}}' | tr '\\n' ' '"
            )
        ),
        "1234 1235"
    );

    // The stop signal reaches the command through the init shell: a stop is clean.
    let p = f.project();
    block_on(p.stop_instance("app-1", 30, false)).expect("clean stop within 30 s");
    assert_eq!(f.instance("app-1").status, "Stopped");
}

#[test]
fn a_platform_no_member_has_fails_naming_the_members_and_build_is_refused() {
    let f = Fixture::new("platform").at_most(1);
    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    platform: linux/s390x
"#,
    );
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"app\"")
            && err.contains("s390x")
            && err.contains(&format!(" ({})", std::env::consts::ARCH)),
        "{err}"
    );
    assert!(!f.project_exists(), "nothing may be created");

    f.write(
        r#"
name: {name}
services:
  app:
    image: busybox
    build: .
"#,
    );
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot build Dockerfiles"), "{err}");
    assert!(!f.project_exists(), "nothing may be created");
}
