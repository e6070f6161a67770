//! `pull_policy`: when the image of a service is fetched from its registry.

use std::time::Duration;

/// A service's `pull_policy`, parsed (the model keeps the text as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull before every `up` (`always`; `refresh`, which the Compose schema lists, is taken
    /// as `always`).
    Always,
    /// Pull only when the image is not on the server (`missing`, `if_not_present`; the default).
    Missing,
    /// Never pull: a missing image is an error.
    Never,
    /// Build the image (refused: Incus cannot build).
    Build,
    /// Pull when the image on the server is older than this (`daily`, `weekly`, `every_12h`).
    Every(Duration),
}

const DAY: u64 = 24 * 3600;

impl PullPolicy {
    /// Parse a `pull_policy` value; `None` when it is not one Compose knows.
    pub fn parse(text: &str) -> Option<PullPolicy> {
        Some(match text {
            "always" | "refresh" => PullPolicy::Always,
            "missing" | "if_not_present" => PullPolicy::Missing,
            "never" => PullPolicy::Never,
            "build" => PullPolicy::Build,
            "daily" => PullPolicy::Every(Duration::from_secs(DAY)),
            "weekly" => PullPolicy::Every(Duration::from_secs(7 * DAY)),
            _ => PullPolicy::Every(every(text.strip_prefix("every_")?)?),
        })
    }

    /// The policy of a service: its `pull_policy`, `missing` when unset or unknown (the loader
    /// reports unknown ones).
    pub fn of(text: Option<&str>) -> PullPolicy {
        text.and_then(PullPolicy::parse)
            .unwrap_or(PullPolicy::Missing)
    }
}

/// `every_<duration>`: digits and units `w`, `d`, `h`, `m`, `s` (`every_1w`, `every_12h`,
/// `every_1h30m`); a zero duration is refused.
fn every(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        let scale = match unit {
            'w' => 7 * DAY,
            'd' => DAY,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
        rest = &rest[digits + 1..];
    }
    (total > 0).then(|| Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_compose_documents_parses() {
        assert_eq!(PullPolicy::parse("always"), Some(PullPolicy::Always));
        assert_eq!(PullPolicy::parse("refresh"), Some(PullPolicy::Always));
        assert_eq!(PullPolicy::parse("missing"), Some(PullPolicy::Missing));
        assert_eq!(
            PullPolicy::parse("if_not_present"),
            Some(PullPolicy::Missing)
        );
        assert_eq!(PullPolicy::parse("never"), Some(PullPolicy::Never));
        assert_eq!(PullPolicy::parse("build"), Some(PullPolicy::Build));
        assert_eq!(
            PullPolicy::parse("daily"),
            Some(PullPolicy::Every(Duration::from_secs(86400)))
        );
        assert_eq!(
            PullPolicy::parse("weekly"),
            Some(PullPolicy::Every(Duration::from_secs(7 * 86400)))
        );
        assert_eq!(
            PullPolicy::parse("every_12h"),
            Some(PullPolicy::Every(Duration::from_secs(12 * 3600)))
        );
        assert_eq!(
            PullPolicy::parse("every_1w2d3h4m5s"),
            Some(PullPolicy::Every(Duration::from_secs(
                9 * 86400 + 3 * 3600 + 4 * 60 + 5
            )))
        );
    }

    #[test]
    fn other_values_are_not_policies() {
        for bad in [
            "",
            "Always",
            "sometimes",
            "every_",
            "every_0s",
            "every_12",
            "every_h",
            "every_1x",
            "every_-1h",
            "every_1.5h",
        ] {
            assert_eq!(PullPolicy::parse(bad), None, "{bad:?}");
        }
        assert_eq!(PullPolicy::of(None), PullPolicy::Missing);
        assert_eq!(PullPolicy::of(Some("bogus")), PullPolicy::Missing);
    }
}
