//! The project lock: a lease held in the Incus project's config (key
//! `ic_core::keys::LOCK_KEY`), so that `up`, `down`, `scale` (and `rollback`, `watch`) of one
//! compose project run one at a time, from any machine.
//!
//! - **Acquire** ([`acquire`]): read the project with its ETag, ask `ic_core::lease::decide`,
//!   write the new record with `If-Match`, read it back. Incus compares the ETag outside its
//!   write transaction, so two runs can both pass the check; the record read back after a
//!   short settle time decides (same holder *and* epoch, `lease::confirms`). A run that finds
//!   a live holder waits, saying so once, or refuses at once with `--no-wait-lock`.
//! - **Renew**: a thread of its own (own current-thread runtime, own connections) rewrites the
//!   expiry every `ttl / 3`, with a lease of `ic_core::lease::lease_length` (longer while the
//!   run is at work and after slow renewals). Times are the Incus server's (`Date` header); the
//!   holder turns the expiry into a deadline on its monotonic clock ([`Read::deadline`]). When
//!   it finds another holder or epoch, or passes that deadline, the [`Lease`] is lost:
//!   [`Lease::fence`] then fails, and the executor checks it before every stage and action.
//! - **Release**: dropping the [`LockGuard`] removes the key if it still shows this run's
//!   record, in a task that [`finish_releases`] waits for (the CLI's `block_on` runs it before
//!   the runtime ends, on success and error paths alike). Ctrl-C or SIGTERM while holding the lock
//!   releases it, then exits (status 130 / 143). A run killed with `kill -9` keeps it until
//!   its expiry.
//!
//! Other writers of the project's config ([`edit_project_config`]: revisions, pull records,
//! the marker of a network being created) write with `If-Match` too, read their change back
//! (writing again when a concurrent write undid it), and keep the lock keys as this process
//! last renewed them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use ic_core::keys::LOCK_KEY;
use ic_core::lease::{self, Decision, LockRecord};
use ic_incus::Client;

/// Default lease length.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Environment variable that sets the lease length in seconds (tests use a short one).
pub const TTL_ENV: &str = "INCUS_COMPOSE_LOCK_TTL";

/// How long an acquisition waits before reading its record back a second time: longer than
/// a concurrent write that passed the same ETag check takes to commit. Such a write was sent
/// before ours committed and takes about as long as ours did under the same load, so the wait
/// is twice the time our own write took ([`settle_time`]), at least [`SETTLE_MIN`] and at most
/// [`SETTLE_MAX`] (it was a fixed 0.5 s; a quiet cluster commits in tens of milliseconds, a
/// loaded one in seconds).
const SETTLE_MIN: Duration = Duration::from_millis(200);
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// The settle time after a lock write that took `write`.
fn settle_time(write: Duration) -> Duration {
    (write * 2).clamp(SETTLE_MIN, SETTLE_MAX)
}

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
/// created at once each recording themselves, one record lost). Every write is also read back
/// (and written again when it was undone), which covers writers of other processes.
static CONFIG_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The leases this process holds (their renewals and releases keep the newest record; a
/// config write of this process puts that record back if it read an older one).
static HELD: Mutex<Vec<(Client, Weak<Shared>)>> = Mutex::new(Vec::new());

fn held_leases() -> Vec<(Client, Arc<Shared>)> {
    let mut all = HELD.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    all.iter()
        .filter_map(|(c, w)| Some((c.clone(), w.upgrade()?)))
        .filter(|(_, s)| s.held.load(Ordering::SeqCst))
        .collect()
}

/// Read-modify-write of Incus project `name`'s config guarded by its ETag, retried when
/// someone changed it meanwhile, then read back until the change is there (and once more after
/// a pause, as [`super::member::Check`] does): Incus checks `If-Match` outside its
/// transaction, so a concurrent full write can undo ours after it succeeded. `edit` changes the
/// config and says whether anything changed (it must be idempotent: it runs again on what is
/// read back); nothing is written when it changes nothing. The lock keys this process holds are
/// written as this process last renewed them, never as an older read showed them. Returns
/// whether a write happened.
pub async fn edit_project_config(
    base: &Client,
    name: &str,
    mut edit: impl FnMut(&mut BTreeMap<String, String>) -> bool,
) -> ic_incus::Result<bool> {
    let _one_at_a_time = CONFIG_WRITES.lock().await;
    let mut check = super::member::Check::default();
    let mut wrote = false;
    for _ in 0..super::member::ATTEMPTS {
        let (project, etag) = base.get_project_with_etag(name).await?;
        let mut config = project.config.clone();
        let needed = edit(&mut config);
        if check.done(needed).await {
            return Ok(wrote);
        }
        if !needed {
            continue;
        }
        for (_, s) in held_leases() {
            if s.project == name
                && let Some(v) = config.get_mut(s.key)
                && LockRecord::parse(v).is_some_and(|r| lease::confirms(Some(&r), &s.record()))
            {
                *v = s.record().to_value();
            }
        }
        let put = ic_incus::ProjectPut {
            description: project.description,
            config,
        };
        match base.update_project_if_match(name, &put, etag).await {
            Err(e) if e.status() == Some(412) => continue,
            Err(e) => return Err(e),
            Ok(()) => {
                wrote = true;
                check.wrote();
            }
        }
    }
    Err(ic_incus::Error::Timeout {
        what: format!("a stable write of Incus project {name}'s config"),
        message: format!(
            "it kept changing under us ({} attempts); try again",
            super::member::ATTEMPTS
        ),
    })
}

/// The lock key of a project as read, with the server's clock.
struct Read {
    project: ic_incus::Project,
    etag: Option<String>,
    record: Option<LockRecord>,
    /// Unix seconds of the answer's `Date` header (this machine's clock when there is none).
    server_now: u64,
    /// When the request was sent (this machine's monotonic clock): the server's clock read
    /// `server_now` after this instant.
    sent: Instant,
}

impl Read {
    /// The instant (this machine's monotonic clock) at which a record written from this read,
    /// expiring at `expires` (server clock), must stop being acted on: the server's clock
    /// was below `server_now + 1` at `sent`, so it stays below `expires - margin` until then.
    fn deadline(&self, expires: u64, margin: u64) -> Instant {
        let left = expires
            .saturating_sub(self.server_now)
            .saturating_sub(1)
            .saturating_sub(margin);
        self.sent + Duration::from_secs(left)
    }
}

/// The lock record Incus project `name` holds now, its ETag, and the server's clock.
async fn read_lock(base: &Client, name: &str, key: &str) -> ic_incus::Result<Read> {
    let sent = Instant::now();
    let (project, etag, date) = base.get_project_dated(name).await?;
    let server_now = date
        .as_deref()
        .and_then(lease::parse_http_date)
        .unwrap_or_else(now_secs);
    let record = project.config.get(key).and_then(|v| LockRecord::parse(v));
    Ok(Read {
        project,
        etag,
        record,
        server_now,
        sent,
    })
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
    /// The origin of `deadline`.
    origin: Instant,
    /// Nanoseconds after `origin` until which this run may act (from the last record read back
    /// as ours, on the server's clock: see [`Read::deadline`]).
    deadline: AtomicU64,
    lost: Mutex<Option<String>>,
    record: Mutex<LockRecord>,
    /// This run created the Incus project just before locking it ([`LockGuard::created_project`]).
    created_project: AtomicBool,
    /// The executor passed the fence at least once: this run acted.
    acted: AtomicBool,
    /// Told when the run first passes the fence: the renewal thread then writes the longer
    /// lease of a run at work at once, before the work loads the server (the lease the
    /// acquisition wrote lasts only `ttl`, and the first renewal, `ttl / 3` later, may take
    /// longer than what is left of it once a hundred creations are under way: seen with
    /// `up -d` of 100 replicas, release build, lost after 28.5 s).
    working: tokio::sync::Notify,
    /// Renewals confirmed, the longest time between two confirmations (or the acquisition
    /// and the first), and the slowest renewal (milliseconds).
    renewals: AtomicU64,
    longest_gap_ms: AtomicU64,
    slowest_ms: AtomicU64,
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

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Moves the deadline to `at` (later or earlier).
    fn set_deadline(&self, at: Instant) {
        self.deadline.store(self.nanos(at), Ordering::SeqCst);
    }

    fn deadline(&self) -> Instant {
        self.origin + Duration::from_nanos(self.deadline.load(Ordering::SeqCst))
    }
}

/// What a run holding the lock checks before acting: cheap (no request, no lock; one read of
/// the monotonic clock). The renewal thread keeps it current.
#[derive(Clone)]
pub struct Lease {
    shared: Arc<Shared>,
}

impl Lease {
    /// Whether the lock is still held: renewed in time (judged on the server's clock) and
    /// never seen taken by another run.
    pub fn is_held(&self) -> bool {
        let s = &self.shared;
        if !s.held.load(Ordering::SeqCst) {
            return false;
        }
        if Instant::now() >= s.deadline() {
            s.lose("it could not be renewed before its expiry".into());
            return false;
        }
        true
    }

    /// `Ok` while the lock is held; else an error saying why this run stops acting. Every
    /// mutating step calls it; it sends no request.
    pub fn fence(&self) -> anyhow::Result<()> {
        if self.is_held() {
            if !self.shared.acted.swap(true, Ordering::SeqCst) {
                self.shared.working.notify_one();
            }
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

/// Holds the lock while it lives: a thread of its own renews it. Dropping it gives the lock
/// back (a task removes the key if it still shows this run's record, once the renewal thread
/// stopped); [`finish_releases`] waits for that task before the runtime ends.
pub struct LockGuard {
    lease: Lease,
    base: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = self.stopped.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let base = self.base.clone();
            let shared = self.lease.shared.clone();
            let task = handle.spawn(async move {
                // No renewal may land after the release.
                if let Some(s) = stopped {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
                }
                release(&base, &shared).await
            });
            PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(task);
        } else {
            self.lease.shared.held.store(false, Ordering::SeqCst);
        }
    }
}

/// Removes the lock key if it still shows `shared`'s record. Errors are only reported: the
/// lock then ends at its expiry.
async fn release(base: &Client, shared: &Shared) {
    shared.held.store(false, Ordering::SeqCst);
    tracing::debug!(
        target: "incus_compose::lease",
        project = %shared.project,
        renewals = shared.renewals.load(Ordering::SeqCst),
        longest_gap_ms = shared.longest_gap_ms.load(Ordering::SeqCst),
        slowest_ms = shared.slowest_ms.load(Ordering::SeqCst),
        "lease released"
    );
    let mine = shared.record();
    let _one_at_a_time = CONFIG_WRITES.lock().await;
    let mut check = super::member::Check::default();
    for _ in 0..20 {
        let read = match read_lock(base, &shared.project, shared.key).await {
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
        let needed = lease::confirms(read.record.as_ref(), &mine);
        if check.done(needed).await {
            return;
        }
        if !needed {
            continue;
        }
        if shared.created_project.load(Ordering::SeqCst) && !shared.acted.load(Ordering::SeqCst) {
            // Made by this run, which then changed nothing: remove it (Incus refuses if it
            // is not empty; then the lock key is removed below).
            if base.delete_project(&shared.project).await.is_ok() {
                return;
            }
        }
        match write_lock(base, &read.project, read.etag, None, shared.key).await {
            Ok(true) => check.wrote(),
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

/// What [`try_acquire`] found.
pub enum TryLock {
    /// Taken.
    Held(LockGuard),
    /// Another run holds it, live.
    Busy(LockRecord),
    /// The Incus project does not exist.
    Missing,
}

/// Takes the lock of Incus project `incus_project` (which must exist and be one incus-compose
/// created: the caller checks), waiting for a live holder unless `opts.wait` is false (then
/// an error names the holder).
/// `None` when the project does not exist (any more: a `down`, or a failed first `up`, removed
/// it while this run waited).
pub async fn acquire(
    base: &Client,
    incus_project: &str,
    opts: &LockOptions,
) -> anyhow::Result<Option<LockGuard>> {
    match take(base, incus_project, opts, opts.wait).await? {
        TryLock::Held(g) => Ok(Some(g)),
        TryLock::Missing => Ok(None),
        TryLock::Busy(held) => anyhow::bail!(
            "project {incus_project} is locked by {} since {} (expires in {} s); not waiting (--no-wait-lock)",
            held.holder,
            utc(held.since),
            held.expires_in(now_secs())
        ),
    }
}

/// Takes the lock if no other run holds it, never waiting for one that does
/// ([`TryLock::Busy`]): for loops over several projects (`watch --all`) that must not stall
/// on one of them.
pub async fn try_acquire(
    base: &Client,
    incus_project: &str,
    opts: &LockOptions,
) -> anyhow::Result<TryLock> {
    take(base, incus_project, opts, false).await
}

async fn take(
    base: &Client,
    incus_project: &str,
    opts: &LockOptions,
    wait: bool,
) -> anyhow::Result<TryLock> {
    let me = holder_id();
    let ttl = opts.ttl_secs();
    let length = lease::lease_length(ttl, 0, false);
    let margin = lease::margin(length);
    let mut said_waiting: Option<String> = None;
    let (record, deadline) = loop {
        let current = match read_lock(base, incus_project, opts.key).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(TryLock::Missing),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the lock of Incus project {incus_project}")
                });
            }
        };
        let now = current.server_now;
        match lease::decide(current.record.as_ref(), &me, now, length) {
            Decision::Wait(held) => {
                if !wait {
                    return Ok(TryLock::Busy(held));
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
            Decision::Take(_) => {
                // Read again under the in-process write lock (see CONFIG_WRITES).
                let guard = CONFIG_WRITES.lock().await;
                let read = match read_lock(base, incus_project, opts.key).await {
                    Ok(r) => r,
                    Err(e) if e.is_not_found() => return Ok(TryLock::Missing),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot read the lock of Incus project {incus_project}")
                        });
                    }
                };
                if read.record != current.record {
                    continue;
                }
                let Decision::Take(want) =
                    lease::decide(read.record.as_ref(), &me, read.server_now, length)
                else {
                    continue;
                };
                let sent = Instant::now();
                let written = write_lock(
                    base,
                    &read.project,
                    read.etag.clone(),
                    Some(&want),
                    opts.key,
                )
                .await
                .with_context(|| {
                    format!("cannot write the lock of Incus project {incus_project}")
                })?;
                let took = sent.elapsed();
                drop(guard);
                if !written {
                    continue;
                }
                if !confirmed(base, incus_project, &want, opts.key).await? {
                    continue;
                }
                // A concurrent writer that passed the same ETag check may commit after our
                // read-back: look again once it would have.
                tokio::time::sleep(settle_time(took)).await;
                if confirmed(base, incus_project, &want, opts.key).await? {
                    let deadline = read.deadline(want.expires, margin);
                    break (want, deadline);
                }
            }
        }
    };
    if said_waiting.is_some() {
        eprintln!("got the lock of project {incus_project}");
    }
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        project: incus_project.to_string(),
        key: opts.key,
        held: AtomicBool::new(true),
        origin,
        deadline: AtomicU64::new(0),
        lost: Mutex::new(None),
        record: Mutex::new(record),
        created_project: AtomicBool::new(false),
        acted: AtomicBool::new(false),
        working: tokio::sync::Notify::new(),
        renewals: AtomicU64::new(0),
        longest_gap_ms: AtomicU64::new(0),
        slowest_ms: AtomicU64::new(0),
    });
    shared.set_deadline(deadline);
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((base.clone(), Arc::downgrade(&shared)));
    ensure_signal_listener();
    let (stop, stopped) = spawn_renewal(base, shared.clone(), ttl);
    Ok(TryLock::Held(LockGuard {
        lease: Lease { shared },
        base: base.clone(),
        stop: Some(stop),
        stopped: Some(stopped),
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
        Ok(back) => Ok(lease::confirms(back.record.as_ref(), want)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e)
            .with_context(|| format!("cannot read back the lock of Incus project {incus_project}")),
    }
}

/// Starts the renewal on a thread of its own, with its own single-threaded runtime and its
/// own connections to Incus: however busy the executor's runtime and connection pool are,
/// renewals are sent on time. Returns the channel that stops it and the one that says it
/// stopped.
fn spawn_renewal(
    base: &Client,
    shared: Arc<Shared>,
    ttl: u64,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let client = base.independent();
    let on_thread = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("lease-{}", shared.project))
        .spawn(move || {
            let shared = on_thread;
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        _ = renew(client, shared.clone(), ttl) => {}
                        _ = stop_rx => {}
                    }
                }),
                Err(e) => shared.lose(format!("its renewal could not start: {e}")),
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        shared.lose(format!("its renewal could not start: {e}"));
    }
    (stop_tx, done_rx)
}

/// Renews the lease every `ttl / 3` (sooner when the time left is short for the slowest
/// renewal seen; every second after a failed attempt) until stopped or lost.
async fn renew(base: Client, shared: Arc<Shared>, ttl: u64) {
    let every = Duration::from_millis(ttl.saturating_mul(1000) / 3);
    let mut last_start = Instant::now();
    let mut last_confirmed = Instant::now();
    let mut retry = false;
    loop {
        let slowest = Duration::from_millis(shared.slowest_ms.load(Ordering::SeqCst));
        let left = shared.deadline().saturating_duration_since(Instant::now());
        let mut wait = every
            .saturating_sub(last_start.elapsed())
            .min(left.saturating_sub(slowest * 2 + Duration::from_secs(1)));
        if retry {
            wait = wait.min(Duration::from_secs(1));
        }
        // Sooner when the run starts its work (see `Shared::working`).
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.working.notified() => {}
        }
        if !shared.held.load(Ordering::SeqCst) {
            return;
        }
        last_start = Instant::now();
        match renew_once(&base, &shared, ttl).await {
            Ok(Some((r, deadline))) => {
                retry = false;
                let now = Instant::now();
                let took = now.saturating_duration_since(last_start);
                let gap = now.saturating_duration_since(last_confirmed);
                last_confirmed = now;
                let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                shared.slowest_ms.fetch_max(ms(took), Ordering::SeqCst);
                shared.longest_gap_ms.fetch_max(ms(gap), Ordering::SeqCst);
                let n = shared.renewals.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::debug!(
                    target: "incus_compose::lease",
                    project = %shared.project,
                    renewal = n,
                    gap_ms = ms(gap),
                    took_ms = ms(took),
                    expires = r.expires,
                    "lease renewed"
                );
                *shared.record.lock().unwrap_or_else(|e| e.into_inner()) = r;
                // The lease just written outlasts the one before: move the deadline on.
                if deadline > shared.deadline() {
                    shared.set_deadline(deadline);
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::info!("renewing the lock of {}: {e}", shared.project);
                retry = true;
                if Instant::now() >= shared.deadline() {
                    shared.lose(format!("it could not be renewed: {e}"));
                    return;
                }
            }
        }
    }
}

/// One renewal: the new record and the deadline it gives, `Ok(None)` when the lock was found
/// lost (and marked so).
async fn renew_once(
    base: &Client,
    shared: &Shared,
    ttl: u64,
) -> anyhow::Result<Option<(LockRecord, Instant)>> {
    let mine = shared.record();
    // Wait a little for this process's other config writes (they keep the newest record of
    // this lease, see `edit_project_config`), never long: the read-back covers the rest.
    let _one_at_a_time = tokio::time::timeout(Duration::from_secs(2), CONFIG_WRITES.lock()).await;
    for _ in 0..20 {
        let read = match read_lock(base, &shared.project, shared.key).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                shared.lose("the Incus project was removed".into());
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        // A write that read an older record of ours and landed after our last renewal put
        // it back: until the renewal below lands, only that older expiry counts.
        if let Some(r) = &read.record
            && lease::confirms(Some(r), &mine)
            && r.expires < mine.expires
        {
            tracing::info!(
                "the lock of {} was put back to an older expiry by another write",
                shared.project
            );
            let length = r.expires.saturating_sub(read.server_now);
            let back = read.deadline(r.expires, lease::margin(length));
            if back < shared.deadline() {
                shared.set_deadline(back);
            }
        }
        let slowest = shared.slowest_ms.load(Ordering::SeqCst).div_ceil(1000);
        let length = lease::lease_length(ttl, slowest, shared.acted.load(Ordering::SeqCst));
        let Some(next) = lease::renewal(read.record.as_ref(), &mine, read.server_now, length)
        else {
            let who = read
                .record
                .map(|c| format!("{} holds it now (epoch {})", c.holder, c.epoch))
                .unwrap_or_else(|| "its key was removed".into());
            shared.lose(who);
            return Ok(None);
        };
        if !write_lock(
            base,
            &read.project,
            read.etag.clone(),
            Some(&next),
            shared.key,
        )
        .await?
        {
            continue;
        }
        let back = match read_lock(base, &shared.project, shared.key).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                shared.lose("the Incus project was removed".into());
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if back.record.as_ref() == Some(&next) {
            let deadline = read.deadline(next.expires, lease::margin(length));
            return Ok(Some((next, deadline)));
        }
        if !lease::confirms(back.record.as_ref(), &mine) {
            // Taken over, or removed: the next round says so.
            continue;
        }
    }
    anyhow::bail!("the project's config kept changing under the renewal (20 attempts)")
}

/// Set once a command forwards signals itself (`exec`, `logs -f`): then a signal with no lock
/// held is theirs to handle.
static FORWARDED: AtomicBool = AtomicBool::new(false);

/// Says that this process handles SIGINT/SIGTERM itself from now on (it forwards them to a
/// command, or stops following logs): the lock's listener then only releases held locks and
/// exits when one is held.
pub fn signals_handled_elsewhere() {
    FORWARDED.store(true, Ordering::SeqCst);
}

/// The process's signal listener (one per runtime).
static LISTENER: Mutex<Option<tokio::task::JoinHandle<()>>> = Mutex::new(None);

/// Starts the listener of Ctrl-C/SIGTERM unless it runs: once tokio handles a signal, the
/// process no longer dies of it, so the listener stays for the life of the runtime. A signal
/// releases the locks held (if any), then exits as the signal would (130, 143).
fn ensure_signal_listener() {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut l = LISTENER.lock().unwrap_or_else(|e| e.into_inner());
    if l.as_ref().is_some_and(|t| !t.is_finished()) {
        return;
    }
    *l = Some(handle.spawn(release_on_signal()));
}

/// Ctrl-C or SIGTERM: release the locks held, then exit as the signal would (130, 143).
/// Anything under way on the server goes on; the next run converges from it.
async fn release_on_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    loop {
        let code = tokio::select! {
            _ = int.recv() => 130,
            _ = term.recv() => 143,
        };
        let held = held_leases();
        if held.is_empty() && FORWARDED.load(Ordering::SeqCst) {
            continue;
        }
        for (base, shared) in held {
            eprintln!(
                "interrupted: releasing the lock of project {}",
                shared.project
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), release(&base, &shared)).await;
        }
        std::process::exit(code);
    }
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
    fn the_settle_time_is_twice_the_write_within_bounds() {
        assert_eq!(settle_time(Duration::from_millis(20)), SETTLE_MIN);
        assert_eq!(
            settle_time(Duration::from_millis(300)),
            Duration::from_millis(600)
        );
        assert_eq!(settle_time(Duration::from_secs(30)), SETTLE_MAX);
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
        assert_eq!(o.ttl_secs(), 7);
    }

    #[test]
    fn times_in_messages_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_313_600), "2026-12-03 16:00:00 UTC");
    }
}
