//! What a user reads, as docker prints it: tables aligned to their content, and durations in
//! words ("2 minutes", "About an hour") for the "2 minutes ago" of a table's time column.

use std::time::Duration;

/// Columns of a table are separated by this many spaces (docker's tabwriter padding).
const GAP: usize = 3;

/// A table: `header`, then `rows`, each column as wide as its widest cell (counted in
/// characters), separated by three spaces; the last column is not padded and no line ends
/// in spaces. Rows shorter than the header are padded with empty cells.
pub fn table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.as_ref().chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (k, c) in cells.take(cols).enumerate() {
            s.push_str(c);
            if k + 1 < cols {
                let pad = width[k] - c.chars().count() + GAP;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in rows {
        let mut cells = r
            .iter()
            .map(AsRef::as_ref)
            .chain(std::iter::repeat(""))
            .take(cols);
        line(&mut cells);
    }
    out
}

/// A duration in words, as docker's go-units `HumanDuration` words it: "Less than a second",
/// "1 second", "45 seconds", "About a minute", "12 minutes", "About an hour", "5 hours",
/// "3 days", "2 weeks", "4 months", "2 years".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let minutes = secs / 60;
    // go-units rounds hours to the nearest (int(d.Hours() + 0.5)).
    let hours = ((d.as_secs_f64() / 3600.0) + 0.5) as u64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", secs / 3600 / 24 / 365)
    }
}

/// "2 minutes ago": the time `d` before now, for a table's time column.
pub fn ago(d: Duration) -> String {
    format!("{} ago", human_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(secs: u64) -> String {
        human_duration(Duration::from_secs(secs))
    }

    #[test]
    fn durations_read_as_docker_words_them() {
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(s(1), "1 second");
        assert_eq!(s(59), "59 seconds");
        assert_eq!(s(60), "About a minute");
        assert_eq!(s(119), "About a minute");
        assert_eq!(s(120), "2 minutes");
        assert_eq!(s(59 * 60 + 59), "59 minutes");
        // 60 to 89 minutes round to one hour, 90 minutes to two.
        assert_eq!(s(3600), "About an hour");
        assert_eq!(s(89 * 60), "About an hour");
        assert_eq!(s(90 * 60), "2 hours");
        assert_eq!(s(47 * 3600), "47 hours");
        assert_eq!(s(48 * 3600), "2 days");
        assert_eq!(s(13 * 24 * 3600), "13 days");
        assert_eq!(s(14 * 24 * 3600), "2 weeks");
        assert_eq!(s(60 * 24 * 3600), "2 months");
        assert_eq!(s(2 * 365 * 24 * 3600), "2 years");
        assert_eq!(ago(Duration::from_secs(150)), "2 minutes ago");
    }

    #[test]
    fn tables_align_columns_to_their_widest_cell() {
        let t = table(
            &["NAME", "STATE", "PORTS"],
            &[
                vec!["web-1", "Running", "8080->80/tcp"],
                vec!["a-much-longer-name-1", "Stopped", ""],
                vec!["ü-1", "Running"],
            ],
        );
        assert_eq!(
            t,
            "NAME                   STATE     PORTS\n\
             web-1                  Running   8080->80/tcp\n\
             a-much-longer-name-1   Stopped\n\
             ü-1                    Running\n"
        );
    }

    proptest! {
        /// Every column starts at the same character offset on every line.
        #[test]
        fn every_column_starts_at_the_same_offset(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-zé0-9]{1,12}", 3), 0..8)
        ) {
            let t = table(&["A", "BB", "CCC"], &rows);
            let lines: Vec<&str> = t.lines().collect();
            prop_assert_eq!(lines.len(), rows.len() + 1);
            let start_of = |line: &str, col: usize| -> usize {
                // Cells hold no spaces: the start of column `col` is after `col` runs of spaces.
                let chars: Vec<char> = line.chars().collect();
                let mut k = 0;
                let mut seen = 0;
                while seen < col {
                    while chars[k] != ' ' { k += 1; }
                    while chars[k] == ' ' { k += 1; }
                    seen += 1;
                }
                k
            };
            for col in 1..3 {
                let first = start_of(lines[0], col);
                for l in &lines[1..] {
                    prop_assert_eq!(start_of(l, col), first, "{}", t);
                }
            }
        }

        #[test]
        fn human_duration_never_panics_and_has_no_zero(secs in 0u64..10_000_000_000) {
            let w = human_duration(Duration::from_secs(secs));
            prop_assert!(!w.starts_with("0 "), "{}", w);
        }
    }
}
