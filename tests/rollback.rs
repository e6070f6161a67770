//! Rolling updates that go back or pick up again, on a real Incus server: `failure_action`
//! rollback and pause, `rollback` (to a revision, with volumes), and updates killed half way
//! and finished or resumed by the next `up`. The forward rollouts (stop-first, start-first,
//! published ports, in-place limits, a member killed during an update) are `tests/rollout.rs`;
//! both share `tests/common/rollout.rs` (polling every replica's page while `up` rolls).
//!
//! Nothing here needs a cluster: `scripts/test` runs it on the single 6.0 server, beside the
//! cluster suites (it passes on the clusters too). Start a test server and load its environment
//! first (`set -a && . .test-cluster/env-single && set +a`), then `cargo test --test rollback`.
//! Without a reachable Incus server every test fails.

mod common;

use common::*;

#[path = "common/rollout.rs"]
mod rollout_common;
use rollout_common::*;

#[test]
fn a_broken_image_with_failure_action_rollback_brings_v1_back_and_up_fails() {
    let f = Fixture::new("rb").at_most(CONCURRENT_FIXTURES);
    let cfg = "{parallelism: 1, monitor: 2s, failure_action: rollback}";
    f.write(&web("testapp/v1", cfg));
    f.ok(&["up", "-d", "--wait"]);
    f.write(&web("testapp/broken", cfg));
    let out = f.run(&["up", "-d"]);
    assert!(!out.status.success(), "up succeeded after a rollback");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(f.settled_answers("web", 4), ["v1"; 4]);
    assert_eq!(web_names(&f), ["web-1", "web-2", "web-3", "web-4"]);
}

#[test]
fn rollback_brings_the_previous_revision_back_and_to_goes_to_any_kept_one() {
    let f = Fixture::new("back").at_most(CONCURRENT_FIXTURES);
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
    let by_name = f.by_name(&["history", "--format", "json"]);
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
    let to = f.by_name(&["rollback", "--to", "2"]);
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
    let f = Fixture::new("vol").at_most(CONCURRENT_FIXTURES);
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
