//! The project lock: a lease held in the Incus project's config (key
//! `ic_core::lease::LOCK_KEY`), so that `up`, `down`, `scale` (and `rollback`, `watch`) of one
//! compose project run one at a time, from any machine.
//!
//! - **Acquire** ([`acquire`]): read the project with its ETag, ask `ic_core::lease::decide`,
//!   write the new record with `If-Match`, read it back. Incus compares the ETag outside its
//!   write transaction, so two runs can both pass the check; the record read back after a
//!   short settle time decides (same holder *and* epoch, `lease::confirms`). A run that finds
//!   a live holder waits, saying so once, or refuses at once with `--no-wait-lock`.
//! - **Renew**: a background task rewrites the expiry every `ttl / 3`. When it finds another
//!   holder or epoch, or cannot renew before `expires - margin`, the [`Lease`] is lost:
//!   [`Lease::fence`] then fails, and the executor checks it before every stage and action.
//! - **Release**: dropping the [`LockGuard`] removes the key if it still shows this run's
//!   record, in a task that [`finish_releases`] waits for (the CLI's `block_on` runs it before
//!   the runtime ends, on success and error paths alike). Ctrl-C or SIGTERM while holding the lock
//!   releases it, then exits (status 130 / 143). A run killed with `kill -9` keeps it until
//!   its expiry.
//!
//! Other writers of the project's config ([`edit_project_config`]: pull records, the marker
//! of a network being created) write with `If-Match` too and keep the lock key as they read
//! it, so they never undo a lock written meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use ic_core::lease::{self, Decision, LOCK_KEY, LockRecord};
use ic_incus::Client;

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Environment variable that sets the lease length in seconds (tests use a short one).
pub const TTL_ENV: &str = "INCUS_COMPOSE_LOCK_TTL";

/// How long an acquisition waits before reading its record back a second time: longer than
/// a concurrent write that passed the same ETag check takes to commit.
const SETTLE: Duration = Duration::from_millis(500);

/// How often a waiting run reads the lock again.
const POLL: Duration = Duration::from_millis(500);

/// How a command takes the lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Lease length: a holder that stops renewing loses the lock this long after its last
    /// renewal.
    pub ttl: Duration,
    /// Wait for a live holder (else refuse at once).
    pub wait: bool,
    /// The project config key that holds the lease: [`LOCK_KEY`] for the project lock;
    /// `watch` also holds [`WATCH_KEY`] (which `watch` acts on the project).
    pub key: &'static str,
}

/// The project config key of the lease that says which `watch` process looks after the
/// project (held for as long as it runs; the project lock is taken only while it acts).
pub const WATCH_KEY: &str = "user.incus-compose.watch";

impl LockOptions {
    /// The lease length from [`TTL_ENV`] (whole seconds, at least 3), else [`DEFAULT_TTL`].
    pub fn from_env(wait: bool) -> anyhow::Result<LockOptions> {
        let ttl = parse_ttl(std::env::var(TTL_ENV).ok().as_deref())?;
        Ok(LockOptions {
            ttl,
            wait,
            key: LOCK_KEY,
        })
    }

    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(3)
    }

    /// A holder stops acting this long before its confirmed expiry.
    fn margin_secs(&self) -> u64 {
        (self.ttl_secs() / 6).max(1)
    }
}

/// The lease length a [`TTL_ENV`] value asks for.
fn parse_ttl(value: Option<&str>) -> anyhow::Result<Duration> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_TTL);
    };
    let secs: u64 = v
        .parse()
        .map_err(|_| anyhow!("{TTL_ENV}={v:?}: expected a number of seconds (at least 3)"))?;
    if secs < 3 {
        anyhow::bail!("{TTL_ENV}={v:?}: the lease must last at least 3 seconds");
    }
    Ok(Duration::from_secs(secs))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `hostname:pid:random`: unique per run, and readable in a waiting message.
fn holder_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    // RandomState is seeded from the OS's randomness per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{host}:{}:{:08x}", std::process::id(), h.finish() as u32)
}

/// UTC time of unix seconds `secs`, for messages.
fn utc(secs: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs as i64) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => secs.to_string(),
    }
}

/// Serialises this process's writes of Incus project config (read, change, write). Incus
/// compares the `If-Match` ETag outside its write transaction, so two writes that read the same
/// ETag can both pass and the second silently undoes the first (seen here: two networks
/// created at once each recording themselves, one record lost). Other processes are kept out
/// by the project lock itself.
static CONFIG_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Read-modify-write of Incus project `name`'s config guarded by its ETag, retried when
/// someone changed it meanwhile. `edit` changes the config and says whether anything changed
/// (nothing is written when not). Returns whether a write happened.
pub async fn edit_project_config(
    base: &Client,
    name: &str,
    mut edit: impl FnMut(&mut BTreeMap<String, String>) -> bool,
) -> ic_incus::Result<bool> {
    let _one_at_a_time = CONFIG_WRITES.lock().await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (project, etag) = base.get_project_with_etag(name).await?;
        let mut config = project.config.clone();
        if !edit(&mut config) {
            return Ok(false);
        }
        let put = ic_incus::ProjectPut {
            description: project.description,
            config,
        };
        match base.update_project_if_match(name, &put, etag).await {
            Err(e) if e.status() == Some(412) && attempt < 20 => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(true),
        }
    }
}

/// The lock record Incus project `name` holds now, and its ETag.
async fn read_lock(
    base: &Client,
    name: &str,
    key: &str,
) -> ic_incus::Result<(ic_incus::Project, Option<String>, Option<LockRecord>)> {
    let (project, etag) = base.get_project_with_etag(name).await?;
    let record = project.config.get(key).and_then(|v| LockRecord::parse(v));
    Ok((project, etag, record))
}

/// Writes `record` as the lock if the project still matches `etag`; `Ok(false)` when
/// someone changed the project meanwhile (HTTP 412).
async fn write_lock(
    base: &Client,
    project: &ic_incus::Project,
    etag: Option<String>,
    record: Option<&LockRecord>,
    key: &str,
) -> ic_incus::Result<bool> {
    let mut config = project.config.clone();
    match record {
        Some(r) => config.insert(key.to_string(), r.to_value()),
        None => config.remove(key),
    };
    let put = ic_incus::ProjectPut {
        description: project.description.clone(),
        config,
    };
    match base
        .update_project_if_match(&project.name, &put, etag)
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.status() == Some(412) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What the holder's tasks share.
struct Shared {
    project: String,
    /// The config key of the lease.
    key: &'static str,
    held: AtomicBool,
    /// Unix seconds: the expiry of the last record read back as ours.
    confirmed_expires: AtomicU64,
    margin: u64,
    lost: Mutex<Option<String>>,
    record: Mutex<LockRecord>,
    /// This run created the Incus project just before locking it ([`LockGuard::created_project`]).
    created_project: AtomicBool,
    /// The executor passed the fence at least once: this run acted.
    acted: AtomicBool,
}

impl Shared {
    fn lose(&self, why: String) {
        self.held.store(false, Ordering::SeqCst);
        let mut lost = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        if lost.is_none() {
            *lost = Some(why);
        }
    }

    fn record(&self) -> LockRecord {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a run holding the lock checks before acting: cheap, no I/O (the renewal task keeps
/// it current).
#[derive(Clone)]
pub struct Lease {
    shared: Arc<Shared>,
}

impl Lease {
    /// Whether the lock is still held: renewed in time and never seen taken by another run.
    pub fn is_held(&self) -> bool {
        let s = &self.shared;
        if !s.held.load(Ordering::SeqCst) {
            return false;
        }
        if lease::must_stop(
            s.confirmed_expires.load(Ordering::SeqCst),
            now_secs(),
            s.margin,
        ) {
            s.lose("it could not be renewed before its expiry".into());
            return false;
        }
        true
    }

    /// `Ok` while the lock is held; else an error saying why this run stops acting.
    pub fn fence(&self) -> anyhow::Result<()> {
        if self.is_held() {
            self.shared.acted.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let why = self
            .shared
            .lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "it was released".into());
        Err(anyhow!(
            "lost the lock of project {} ({why}): stopping here, nothing more is changed",
            self.shared.project
        ))
    }
}

/// Holds the lock while it lives: renews it in the background. Dropping it gives the lock
/// back (a task removes the key if it still shows this run's record); [`finish_releases`]
/// waits for that task before the runtime ends.
pub struct LockGuard {
    lease: Lease,
    base: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Releases started by dropped guards.
static PENDING: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits (at most 10 s) for the releases of dropped guards; the CLI's `block_on` runs it
/// before its runtime ends, so every path (success or error) gives the lock back.
pub async fn finish_releases() {
    let pending: Vec<_> = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    if pending.is_empty() {
        return;
    }
    let all = futures_util::future::join_all(pending);
    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
}

impl LockGuard {
    /// The handle to check ([`Lease::fence`]) before acting.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Says that this run created the Incus project just before taking the lock: if it ends
    /// without acting (nothing passed [`Lease::fence`], e.g. the plan failed on bad input), the
    /// release removes the project again (when it is still empty), so nothing was changed.
    pub fn created_project(&self) {
        self.lease
            .shared
            .created_project
            .store(true, Ordering::SeqCst);
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let base = self.base.clone();
            let shared = self.lease.shared.clone();
            let task = handle.spawn(async move { release(&base, &shared).await });
            PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        }
    }
}

/// Removes the lock key if it still shows `shared`'s record. Errors are only reported: the
/// lock then ends at its expiry.
async fn release(base: &Client, shared: &Shared) {
    shared.held.store(false, Ordering::SeqCst);
    let mine = shared.record();
    let _one_at_a_time = CONFIG_WRITES.lock().await;
    for _ in 0..20 {
        let (project, etag, current) = match read_lock(base, &shared.project, shared.key).await {
            Ok(r) => r,
            // `down` removed the project, and the lock with it.
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                eprintln!(
                    "warning: cannot release the lock of project {}: {e}; it ends at its expiry",
                    shared.project
                );
                return;
            }
        };
        if !lease::confirms(current.as_ref(), &mine) {
            return;
        }
        if shared.created_project.load(Ordering::SeqCst) && !shared.acted.load(Ordering::SeqCst) {
            // Made by this run, which then changed nothing: remove it (Incus refuses if it
            // is not empty; then the lock key is removed below).
            if base.delete_project(&shared.project).await.is_ok() {
                return;
            }
        }
        match write_lock(base, &project, etag, None, shared.key).await {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) if e.is_not_found() => return,
            Err(e) => {
                eprintln!(
                    "warning: cannot release the lock of project {}: {e}; it ends at its expiry",
                    shared.project
                );
                return;
            }
        }
    }
}

/// Takes the lock of Incus project `incus_project` (which must exist and be one incus-compose
/// created: the caller checks), waiting for a live holder unless `opts.wait` is false.
/// `None` when the project does not exist (any more: a `down`, or a failed first `up`, removed
/// it while this run waited).
pub async fn acquire(
    base: &Client,
    incus_project: &str,
    opts: &LockOptions,
) -> anyhow::Result<Option<LockGuard>> {
    let me = holder_id();
    let ttl = opts.ttl_secs();
    let mut said_waiting: Option<String> = None;
    let record = loop {
        let current = match read_lock(base, incus_project, opts.key).await {
            Ok((_, _, current)) => current,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the lock of Incus project {incus_project}")
                });
            }
        };
        let now = now_secs();
        match lease::decide(current.as_ref(), &me, now, ttl) {
            Decision::Wait(held) => {
                if !opts.wait {
                    anyhow::bail!(
                        "project {incus_project} is locked by {} since {} (expires in {} s); not waiting (--no-wait-lock)",
                        held.holder,
                        utc(held.since),
                        held.expires_in(now)
                    );
                }
                // Once per holder: a new holder (after another waiter got it) is news.
                if said_waiting.as_deref() != Some(held.holder.as_str()) {
                    eprintln!(
                        "{}",
                        lease::waiting_message(incus_project, &held, now, &utc(held.since))
                    );
                    said_waiting = Some(held.holder.clone());
                }
                tokio::time::sleep(POLL).await;
            }
            Decision::Take(want) => {
                // Read again under the in-process write lock (see CONFIG_WRITES).
                let guard = CONFIG_WRITES.lock().await;
                let (project, etag, now_current) =
                    match read_lock(base, incus_project, opts.key).await {
                        Ok(r) => r,
                        Err(e) if e.is_not_found() => return Ok(None),
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("cannot read the lock of Incus project {incus_project}")
                            });
                        }
                    };
                if now_current != current {
                    continue;
                }
                let written = write_lock(base, &project, etag, Some(&want), opts.key)
                    .await
                    .with_context(|| {
                        format!("cannot write the lock of Incus project {incus_project}")
                    })?;
                drop(guard);
                if !written {
                    continue;
                }
                if !confirmed(base, incus_project, &want, opts.key).await? {
                    continue;
                }
                // A concurrent writer that passed the same ETag check may commit after our
                // read-back: look again once it would have.
                tokio::time::sleep(SETTLE).await;
                if confirmed(base, incus_project, &want, opts.key).await? {
                    break want;
                }
            }
        }
    };
    if said_waiting.is_some() {
        eprintln!("got the lock of project {incus_project}");
    }
    let shared = Arc::new(Shared {
        project: incus_project.to_string(),
        key: opts.key,
        held: AtomicBool::new(true),
        confirmed_expires: AtomicU64::new(record.expires),
        margin: opts.margin_secs(),
        lost: Mutex::new(None),
        record: Mutex::new(record),
        created_project: AtomicBool::new(false),
        acted: AtomicBool::new(false),
    });
    let renewer = tokio::spawn(renew(base.clone(), shared.clone(), ttl));
    let signals = tokio::spawn(release_on_signal(base.clone(), shared.clone()));
    Ok(Some(LockGuard {
        lease: Lease { shared },
        base: base.clone(),
        tasks: vec![renewer, signals],
    }))
}

/// Whether the project's lock key shows `want` (holder and epoch).
async fn confirmed(
    base: &Client,
    incus_project: &str,
    want: &LockRecord,
    key: &str,
) -> anyhow::Result<bool> {
    match read_lock(base, incus_project, key).await {
        Ok((_, _, back)) => Ok(lease::confirms(back.as_ref(), want)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e)
            .with_context(|| format!("cannot read back the lock of Incus project {incus_project}")),
    }
}

/// Renews the lease every `ttl / 3` (every second after a failed attempt) until aborted or
/// lost.
async fn renew(base: Client, shared: Arc<Shared>, ttl: u64) {
    let every = Duration::from_millis(ttl * 1000 / 3);
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        if !shared.held.load(Ordering::SeqCst) {
            return;
        }
        match renew_once(&base, &shared, ttl).await {
            Ok(Some(r)) => {
                shared.confirmed_expires.store(r.expires, Ordering::SeqCst);
                *shared.record.lock().unwrap_or_else(|e| e.into_inner()) = r;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::info!("renewing the lock of {}: {e}", shared.project);
                wait = every.min(Duration::from_secs(1));
                let expires = shared.confirmed_expires.load(Ordering::SeqCst);
                if lease::must_stop(expires, now_secs(), shared.margin) {
                    shared.lose(format!("it could not be renewed: {e}"));
                    return;
                }
            }
        }
    }
}

/// One renewal: `Ok(None)` when the lock was found lost (and marked so).
async fn renew_once(
    base: &Client,
    shared: &Shared,
    ttl: u64,
) -> ic_incus::Result<Option<LockRecord>> {
    let mine = shared.record();
    let _one_at_a_time = CONFIG_WRITES.lock().await;
    for _ in 0..20 {
        let (project, etag, current) = match read_lock(base, &shared.project, shared.key).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                shared.lose("the Incus project was removed".into());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(next) = lease::renewal(current.as_ref(), &mine, now_secs(), ttl) else {
            let who = current
                .map(|c| format!("{} holds it now (epoch {})", c.holder, c.epoch))
                .unwrap_or_else(|| "its key was removed".into());
            shared.lose(who);
            return Ok(None);
        };
        if !write_lock(base, &project, etag, Some(&next), shared.key).await? {
            continue;
        }
        let (_, _, back) = read_lock(base, &shared.project, shared.key).await?;
        if back.as_ref() == Some(&next) {
            return Ok(Some(next));
        }
    }
    Ok(Some(mine))
}

/// Ctrl-C or SIGTERM while the lock is held: release it, then exit as the signal would
/// (130, 143). Anything under way on the server goes on; the next run converges from it.
async fn release_on_signal(base: Client, shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    };
    eprintln!(
        "interrupted: releasing the lock of project {}",
        shared.project
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), release(&base, &shared)).await;
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_ids_name_host_and_pid_and_differ_between_runs() {
        let a = holder_id();
        let b = holder_id();
        assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_lease_length_is_whole_seconds_of_at_least_three() {
        assert_eq!(parse_ttl(None).unwrap(), DEFAULT_TTL);
        assert_eq!(parse_ttl(Some("")).unwrap(), DEFAULT_TTL);
        assert_eq!(parse_ttl(Some(" 7 ")).unwrap(), Duration::from_secs(7));
        assert!(parse_ttl(Some("2")).is_err());
        assert!(parse_ttl(Some("soon")).is_err());
        let o = LockOptions {
            ttl: Duration::from_secs(7),
            wait: true,
            key: LOCK_KEY,
        };
        assert_eq!((o.ttl_secs(), o.margin_secs()), (7, 1));
    }

    #[test]
    fn times_in_messages_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_313_600), "2026-12-03 16:00:00 UTC");
    }
}
