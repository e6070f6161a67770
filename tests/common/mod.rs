//! What every root integration suite needs: a runtime for one call, a client that fails the
//! test when no Incus answers, and turns for fixtures (the suites share one test cluster).
#![allow(dead_code)] // each suite uses a part

use std::sync::{Condvar, Mutex};

use ic_incus::Client;

pub const SETUP_HINT: &str = "start the test cluster and load its environment: \
    `scripts/test-cluster up && set -a && . .test-cluster/env && set +a`";

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A client for the server named by `INCUS_DIR`/`INCUS_SOCKET`; fails the test when none
/// is configured or none answers.
pub fn client() -> Client {
    if std::env::var_os("INCUS_DIR").is_none() && std::env::var_os("INCUS_SOCKET").is_none() {
        panic!("no Incus server configured (INCUS_DIR and INCUS_SOCKET unset): {SETUP_HINT}");
    }
    let c = Client::local();
    if let Err(e) = block_on(c.server()) {
        panic!("no Incus server answers: {e}; {SETUP_HINT}");
    }
    c
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A turn among at most `limit` fixtures of this test binary at once; given back when dropped.
pub struct Slot;

impl Slot {
    pub fn take(limit: usize) -> Slot {
        let (lock, cvar) = &SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= limit.max(1) {
            used = cvar.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cvar) = &SLOTS;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cvar.notify_one();
    }
}
