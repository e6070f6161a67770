//! The project lock's decisions, without I/O or a clock (the time is an argument).
//!
//! The lock is a lease kept in one config key of the Incus project ([`LOCK_KEY`]): a JSON
//! [`LockRecord`] naming its holder, since when it holds it, until when (`expires`, unix
//! seconds) and an `epoch` that grows by one on every acquisition. The engine
//! (`src/engine/lock.rs`) reads the key, asks [`decide`] what to do, writes with the
//! project's ETag and reads the key back: it holds the lock only when the read-back shows its
//! own holder *and* epoch ([`confirms`]), because Incus checks the ETag outside its write
//! transaction, so two writers can both pass the check and the last one wins.

use serde::{Deserialize, Serialize};

/// What the lock key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Who holds it: `hostname:pid:random`, unique per run.
    pub holder: String,
    /// Unix seconds when this holder acquired it.
    pub since: u64,
    /// Unix seconds after which it is free, unless renewed.
    pub expires: u64,
    /// One more on every acquisition (never on a renewal).
    pub epoch: u64,
}

impl LockRecord {
    /// The record a config value holds; `None` when the value is empty or not a record
    /// (then the lock counts as free, and the epoch starts again from 0).
    pub fn parse(value: &str) -> Option<LockRecord> {
        serde_json::from_str(value).ok()
    }

    /// The config value for this record.
    pub fn to_value(&self) -> String {
        // A struct of strings and integers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Seconds left before it expires at `now` (0 once expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.expires.saturating_sub(now)
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires
    }
}

/// What a run that wants the lock should do, given what the key holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this record (free, expired, or already ours from an earlier epoch).
    Take(LockRecord),
    /// Someone else holds it, live: wait (or refuse).
    Wait(LockRecord),
}

/// What to do when `me` wants the lock for `ttl` seconds at `now` and the key holds `current`.
/// A live record of another holder means wait; anything else (no record, an unreadable one,
/// an expired one, or one of `me`) is taken with the next epoch.
pub fn decide(current: Option<&LockRecord>, me: &str, now: u64, ttl: u64) -> Decision {
    match current {
        Some(c) if c.holder != me && !c.expired(now) => Decision::Wait(c.clone()),
        _ => Decision::Take(LockRecord {
            holder: me.to_string(),
            since: now,
            expires: now.saturating_add(ttl),
            epoch: current.map_or(0, |c| c.epoch).saturating_add(1),
        }),
    }
}

/// Whether the key's record `read_back` shows that `mine` is the lock's holder now: same
/// holder and same epoch. Any other record (another holder, another epoch of mine, none)
/// means the lock is not held.
pub fn confirms(read_back: Option<&LockRecord>, mine: &LockRecord) -> bool {
    read_back.is_some_and(|r| r.holder == mine.holder && r.epoch == mine.epoch)
}

/// The record a renewal at `now` writes: `mine` with its expiry moved to `now + ttl`, when
/// the key still shows `mine` ([`confirms`]); `None` when the lock was lost.
pub fn renewal(
    current: Option<&LockRecord>,
    mine: &LockRecord,
    now: u64,
    ttl: u64,
) -> Option<LockRecord> {
    if !confirms(current, mine) {
        return None;
    }
    Some(LockRecord {
        expires: now.saturating_add(ttl).max(mine.expires),
        ..mine.clone()
    })
}

/// Whether a holder whose last confirmed record expires at `confirmed_expires` must stop
/// acting at `now`: it stops `margin` seconds before the expiry (clocks of two machines differ
/// a little, and a write takes time), so that it never acts once another run may have taken
/// the lock.
pub fn must_stop(confirmed_expires: u64, now: u64, margin: u64) -> bool {
    now.saturating_add(margin) >= confirmed_expires
}

/// How long a holder's lease lasts (seconds) when it renews it, given the configured `ttl`,
/// the slowest renewal seen so far (seconds from sending its read to reading its write back)
/// and whether the holder is at work (it passed its fence at least once).
///
/// A renewal is a project-config write; under load Incus takes seconds, even tens of seconds,
/// to commit one (measured: 17 s with 100 instances being created). The lease therefore lasts
/// at least four times the slowest renewal seen, and four times `ttl` while work is in flight
/// (the first slow renewal must land before the lease written by the fast one before it runs
/// out). Capped at ten minutes (or `ttl` when that is longer): a holder killed with `kill -9`
/// keeps the lock at most that long.
pub fn lease_length(ttl: u64, slowest_renewal: u64, working: bool) -> u64 {
    let ttl = ttl.max(1);
    let base = if working { ttl.saturating_mul(4) } else { ttl };
    base.max(slowest_renewal.saturating_mul(4))
        .min(ttl.max(600))
}

/// How long before the end of a lease of `length` seconds its holder stops acting: a sixth of
/// it, at least one second (a write under way, and the whole-second resolution of the server's
/// clock).
pub fn margin(length: u64) -> u64 {
    (length / 6).max(1)
}

/// The unix seconds of an HTTP `Date` header (IMF-fixdate, `Sun, 06 Dec 2026 19:51:10 GMT`, as
/// Incus sends it); `None` when it is not one.
pub fn parse_http_date(value: &str) -> Option<u64> {
    let mut words = value.split_whitespace();
    let _weekday = words.next()?.strip_suffix(',')?;
    let day: u64 = words.next()?.parse().ok()?;
    let month = match words.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = words.next()?.parse().ok()?;
    let mut hms = words.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if words.next()? != "GMT"
        || words.next().is_some()
        || hms.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || sec > 60
        || year < 1970
    {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's days_from_civil).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// The line a waiting run prints once:
/// `waiting for the lock of project X held by H since T (expires in N s)`.
pub fn waiting_message(project: &str, held: &LockRecord, now: u64, since: &str) -> String {
    format!(
        "waiting for the lock of project {project} held by {} since {since} (expires in {} s)",
        held.holder,
        held.expires_in(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(holder: &str, expires: u64, epoch: u64) -> LockRecord {
        LockRecord {
            holder: holder.into(),
            since: expires.saturating_sub(30),
            expires,
            epoch,
        }
    }

    #[test]
    fn a_free_lock_is_taken_with_epoch_one() {
        let d = decide(None, "me", 1000, 30);
        assert_eq!(
            d,
            Decision::Take(LockRecord {
                holder: "me".into(),
                since: 1000,
                expires: 1030,
                epoch: 1
            })
        );
    }

    #[test]
    fn a_live_lock_of_another_holder_means_wait() {
        let other = rec("other", 1010, 7);
        assert_eq!(decide(Some(&other), "me", 1000, 30), Decision::Wait(other));
    }

    #[test]
    fn an_expired_lock_is_taken_with_the_next_epoch() {
        let other = rec("other", 1000, 7);
        let Decision::Take(r) = decide(Some(&other), "me", 1000, 30) else {
            panic!("expected to take an expired lock");
        };
        assert_eq!((r.holder.as_str(), r.epoch, r.expires), ("me", 8, 1030));
    }

    #[test]
    fn a_lock_of_mine_is_taken_again_with_a_new_epoch() {
        let mine = rec("me", 2000, 3);
        let Decision::Take(r) = decide(Some(&mine), "me", 1000, 30) else {
            panic!("expected to take my own lock");
        };
        assert_eq!(r.epoch, 4);
    }

    #[test]
    fn unreadable_values_count_as_free() {
        assert_eq!(LockRecord::parse(""), None);
        assert_eq!(LockRecord::parse("{\"holder\": 3}"), None);
        let r = rec("h:1:abc", 50, 2);
        assert_eq!(LockRecord::parse(&r.to_value()), Some(r));
    }

    #[test]
    fn only_my_holder_and_epoch_confirm_an_acquisition() {
        let mine = rec("me", 1030, 5);
        assert!(confirms(Some(&mine), &mine));
        // The other writer won the race: its record is what Incus kept.
        assert!(!confirms(Some(&rec("other", 1030, 5)), &mine));
        // Same holder, another epoch: an older or newer acquisition, not this one.
        assert!(!confirms(Some(&rec("me", 1030, 4)), &mine));
        assert!(!confirms(None, &mine));
        // A renewal changes only the expiry.
        assert!(confirms(Some(&rec("me", 1090, 5)), &mine));
    }

    #[test]
    fn a_renewal_moves_only_the_expiry_and_fails_once_lost() {
        let mine = rec("me", 1030, 5);
        let r = renewal(Some(&mine), &mine, 1010, 30).expect("renewed");
        assert_eq!((r.expires, r.epoch, r.since), (1040, 5, mine.since));
        assert_eq!(renewal(Some(&rec("other", 1050, 6)), &mine, 1010, 30), None);
        assert_eq!(renewal(None, &mine, 1010, 30), None);
    }

    #[test]
    fn a_holder_stops_before_its_confirmed_expiry() {
        assert!(!must_stop(1030, 1020, 5));
        assert!(must_stop(1030, 1025, 5));
        assert!(must_stop(1030, 1040, 5));
    }

    #[test]
    fn the_waiting_message_names_project_holder_time_and_expiry() {
        let other = rec("node9:42:ab12", 1012, 1);
        assert_eq!(
            waiting_message("shop", &other, 1000, "12:00:00 UTC"),
            "waiting for the lock of project shop held by node9:42:ab12 since 12:00:00 UTC (expires in 12 s)"
        );
    }

    #[test]
    fn http_dates_are_read_as_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Dec 2026 19:51:10 GMT"),
            Some(1_796_586_670)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(parse_http_date("Sun, 06 Dec 2026 19:51:10 CET"), None);
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 2026 19:51:10 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn a_working_holder_leases_longer_and_slow_renewals_lengthen_the_lease() {
        // Idle (just acquired): the configured length.
        assert_eq!(lease_length(30, 0, false), 30);
        // At work: four times as long, so that one slow write cannot outlast it.
        assert_eq!(lease_length(30, 1, true), 120);
        // A renewal that took 17 s (seen with 100 instances being created): 68 s at least.
        assert_eq!(lease_length(30, 17, false), 68);
        assert_eq!(lease_length(30, 40, true), 160);
        // Capped at ten minutes (a killed holder keeps the lock at most that long)...
        assert_eq!(lease_length(30, 10_000, true), 600);
        // ...unless the configured length is longer.
        assert_eq!(lease_length(900, 0, false), 900);
        assert_eq!(lease_length(u64::MAX, u64::MAX, true), u64::MAX);
        assert_eq!((margin(30), margin(120), margin(3)), (5, 20, 1));
    }

    proptest! {
        /// The lease never shrinks below the configured length, and always outlasts the
        /// slowest renewal seen (within the cap).
        #[test]
        fn leases_outlast_the_slowest_renewal(
            ttl in 3u64..600, slowest in 0u64..1000, working: bool,
        ) {
            let l = lease_length(ttl, slowest, working);
            prop_assert!(l >= ttl);
            prop_assert!(l <= ttl.max(600));
            if slowest * 4 <= ttl.max(600) {
                prop_assert!(l >= slowest * 4);
                prop_assert!(l - margin(l) > slowest * 2);
            }
        }

        /// Whatever the key holds, taking the lock gives a strictly greater epoch than the
        /// record it replaces, and never takes a live lock of someone else.
        #[test]
        fn taking_always_raises_the_epoch_and_never_steals_a_live_lock(
            holder in prop::sample::select(vec!["me", "other", "third"]),
            expires in 0u64..3000,
            epoch in 0u64..u64::MAX / 2,
            now in 0u64..3000,
            ttl in 1u64..120,
        ) {
            let current = rec(holder, expires, epoch);
            match decide(Some(&current), "me", now, ttl) {
                Decision::Take(r) => {
                    prop_assert!(r.epoch > current.epoch);
                    prop_assert!(holder == "me" || current.expired(now));
                    prop_assert_eq!(r.expires, now + ttl);
                    prop_assert!(confirms(Some(&r), &r));
                    prop_assert!(!confirms(Some(&current), &r));
                }
                Decision::Wait(w) => {
                    prop_assert_eq!(&w, &current);
                    prop_assert!(holder != "me" && !current.expired(now));
                }
            }
        }

        /// Renewals never change who holds the lock or its epoch, and never shorten it.
        #[test]
        fn renewals_keep_holder_and_epoch(
            expires in 0u64..3000, epoch in 0u64..1000, now in 0u64..3000, ttl in 1u64..120,
        ) {
            let mine = rec("me", expires, epoch);
            let r = renewal(Some(&mine), &mine, now, ttl).expect("mine");
            prop_assert_eq!(&r.holder, &mine.holder);
            prop_assert_eq!(r.epoch, mine.epoch);
            prop_assert!(r.expires >= mine.expires);
        }
    }
}
