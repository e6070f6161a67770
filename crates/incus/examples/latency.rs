//! Rough latencies of common client calls against a live server (not a test).
//!
//! `set -a; . .test-cluster/env; set +a; cargo run -p ic-incus --example latency`
//! Creates and deletes instances named `ictc-lat-*` on the server's default project.

use std::time::{Duration, Instant};

use ic_incus::{Client, ExecRequest, InstancesPost};

fn report(what: &str, n: u32, total: Duration) {
    println!(
        "{what:<40} n={n:<4} total={:>8.1} ms  mean={:>7.2} ms",
        total.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / f64::from(n)
    );
}

#[tokio::main]
async fn main() -> ic_incus::Result<()> {
    let c = Client::from_cli_config(None)?;
    let member = c
        .cluster_members()
        .await?
        .into_iter()
        .rev()
        .find(|m| m.is_online())
        .map(|m| m.server_name);

    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        c.server().await?;
    }
    report("GET /1.0 (pooled connection)", n, t.elapsed());

    let t = Instant::now();
    for _ in 0..n {
        c.instances().await?;
    }
    report("GET /1.0/instances?recursion=1", n, t.elapsed());

    let name = format!("ictc-lat-{}", std::process::id());
    let cycles = 5;
    let (mut create, mut start, mut exec, mut stop, mut delete) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    for _ in 0..cycles {
        let t = Instant::now();
        c.create_instance(
            &InstancesPost::from_image_alias(&name, "busybox"),
            member.as_deref(),
        )
        .await?
        .wait()
        .await?;
        create += t.elapsed();
        let t = Instant::now();
        c.start_instance(&name).await?;
        start += t.elapsed();
        let t = Instant::now();
        c.exec_output(&name, &ExecRequest::new(["true"]), b"")
            .await?;
        exec += t.elapsed();
        let t = Instant::now();
        c.stop_instance(&name, -1, true).await?;
        stop += t.elapsed();
        let t = Instant::now();
        c.delete_instance(&name).await?.wait().await?;
        delete += t.elapsed();
    }
    let on = member.unwrap_or_else(|| "server's choice".into());
    report(&format!("create from image on {on}"), cycles, create);
    report("start", cycles, start);
    report("exec `true` (4 websockets)", cycles, exec);
    report("stop --force", cycles, stop);
    report("delete", cycles, delete);
    Ok(())
}
