//! Times as a user reads them: "2 minutes ago" in tables (docker's words), RFC 3339 with
//! second precision at the start of a log line, and no timestamp at all when the line goes to
//! the systemd journal (which stamps every line itself).

use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::sync::OnceLock;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// "2 minutes ago" for an RFC 3339 time, relative to `now`; the text as it is when it is not
/// RFC 3339 (and "Less than a second ago" for a time a little ahead of `now`).
pub fn ago_rfc3339(text: &str, now: OffsetDateTime) -> String {
    match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(at) => {
            let d = (now - at).max(time::Duration::ZERO);
            ic_core::display::ago(d.try_into().unwrap_or_default())
        }
        Err(_) => text.to_string(),
    }
}

/// Now, UTC, RFC 3339 to the second: `2026-12-06T17:32:18Z`.
pub fn now_seconds() -> String {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, `DEVICE:INODE`) names the file
/// whose device and inode are `dev` and `ino`: systemd sets it for a service whose stdout or
/// stderr is connected to the journal, and documents comparing it so (systemd.exec(5)).
pub fn is_journal(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Whether `fd` is the systemd journal (`JOURNAL_STREAM` set and naming its device and inode).
fn fd_is_journal(fd: std::os::fd::BorrowedFd<'_>, terminal: bool) -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    if terminal {
        return false;
    }
    let Ok(fd) = fd.try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    is_journal(&stream.to_string_lossy(), meta.dev(), meta.ino())
}

/// Whether stdout is the systemd journal. Read once.
pub fn stdout_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let out = std::io::stdout();
        fd_is_journal(out.as_fd(), out.is_terminal())
    })
}

/// Whether stderr is the systemd journal. Read once.
pub fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let err = std::io::stderr();
        fd_is_journal(err.as_fd(), err.is_terminal())
    })
}

/// The timestamp a log line on stdout starts with (`2026-12-06T17:32:18Z `), or nothing when
/// stdout is the journal.
pub fn line_prefix() -> String {
    if stdout_is_journal() {
        String::new()
    } else {
        format!("{} ", now_seconds())
    }
}

/// [`line_prefix`] for a line on stderr.
pub fn stderr_line_prefix() -> String {
    if stderr_is_journal() {
        String::new()
    } else {
        format!("{} ", now_seconds())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_a_device_and_inode() {
        assert!(is_journal("8:123456", 8, 123456));
        assert!(!is_journal("8:123456", 8, 123457));
        assert!(!is_journal("9:123456", 8, 123456));
        assert!(!is_journal("", 8, 123456));
        assert!(!is_journal("garbage", 8, 123456));
    }

    #[test]
    fn log_times_have_second_precision() {
        let t = now_seconds();
        assert_eq!(t.len(), "2026-12-06T17:32:18Z".len(), "{t}");
        assert!(t.ends_with('Z'), "{t}");
    }

    #[test]
    fn ago_reads_rfc3339_and_keeps_other_text() {
        let now = OffsetDateTime::parse("2026-12-06T17:32:00Z", &Rfc3339).unwrap();
        assert_eq!(
            ago_rfc3339("2026-12-06T17:29:27.350681175Z", now),
            "2 minutes ago"
        );
        assert_eq!(
            ago_rfc3339("2026-12-06T17:32:05Z", now),
            "Less than a second ago"
        );
        assert_eq!(ago_rfc3339("yesterday", now), "yesterday");
    }
}
