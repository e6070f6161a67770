//! Durations (Go's `time.ParseDuration` syntax: `1h5m30s20ms`, `1.5s`, `us`/`µs`, `ns`) and byte
//! sizes (docker's `RAMInBytes`: `b`, `k`/`kb`, `m`/`mb`, `g`/`gb`, `t`/`tb`, `p`/`pb`, binary
//! multiples, case-insensitive, decimals such as `1.5G`).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A duration as compose writes it. Displays like Go (`1m30s`, `500ms`, `0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid duration {0:?}: write e.g. 10s, 1m30s, 500ms or 1h (units ns, us, ms, s, m, h)"
    )]
    Duration(String),
    #[error(
        "invalid byte size {0:?}: write e.g. 512m, 1.5g or 1024 (units b, k, m, g, t, p; optional b suffix)"
    )]
    Bytes(String),
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_string());
        let t = s.trim();
        if t == "0" {
            return Ok(Duration(std::time::Duration::ZERO));
        }
        if t.starts_with('-') {
            return Err(err());
        }
        let t = t.strip_prefix('+').unwrap_or(t);
        if t.is_empty() {
            return Err(err());
        }
        let mut total_ns: f64 = 0.0;
        let mut rest = t;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let num = &rest[..num_len];
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(err());
            }
            let value: f64 = num.parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = match unit {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(err()),
            };
            total_ns += value * scale;
        }
        if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
            return Err(err());
        }
        Ok(Duration(std::time::Duration::from_nanos(
            total_ns.round() as u64
        )))
    }
}

impl fmt::Display for Duration {
    /// Go's `time.Duration.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (div, unit) = if ns < 1_000 {
                (1u128, "ns")
            } else if ns < 1_000_000 {
                (1_000, "µs")
            } else {
                (1_000_000, "ms")
            };
            return write!(f, "{}{unit}", frac(ns, div));
        }
        let h = ns / 3_600_000_000_000;
        let rem = ns % 3_600_000_000_000;
        let m = rem / 60_000_000_000;
        let s_ns = rem % 60_000_000_000;
        if h > 0 {
            write!(f, "{h}h{m}m")?;
        } else if m > 0 {
            write!(f, "{m}m")?;
        }
        write!(f, "{}s", frac(s_ns, 1_000_000_000))
    }
}

/// `n / div` with the fractional part written without trailing zeros.
fn frac(n: u128, div: u128) -> String {
    let whole = n / div;
    let rem = n % div;
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Duration {
    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(&self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Bytes(s.to_string());
        let t = s.trim();
        let num_len = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(num_len);
        if num.is_empty() || num.matches('.').count() > 1 || num == "." {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let unit = unit.trim().to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .map(|u| u.to_string())
            .unwrap_or(unit);
        let mult: f64 = match unit.as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1024.0,
            "m" | "mb" => 1024.0 * 1024.0,
            "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
            "t" | "tb" => 1024f64.powi(4),
            "p" | "pb" => 1024f64.powi(5),
            _ => return Err(err()),
        };
        let bytes = value * mult;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().0
    }

    #[test]
    fn durations_parse_every_unit_and_combinations() {
        assert_eq!(d("1h5m30s20ms").as_millis(), 3_930_020);
        assert_eq!(d("10us").as_nanos(), 10_000);
        assert_eq!(d("10µs").as_nanos(), 10_000);
        assert_eq!(d("250ms").as_millis(), 250);
        assert_eq!(d("1.5s").as_millis(), 1500);
        assert_eq!(d("2m").as_secs(), 120);
        assert_eq!(d("1h").as_secs(), 3600);
        assert_eq!(d("0").as_secs(), 0);
        assert_eq!(d("7ns").as_nanos(), 7);
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "10", "1x", "s", "-1s", "1.2.3s", "1hh"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_display_like_go() {
        assert_eq!(
            Duration(std::time::Duration::from_secs(90)).to_string(),
            "1m30s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_secs(10)).to_string(),
            "10s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_millis(500)).to_string(),
            "500ms"
        );
        assert_eq!(
            Duration(std::time::Duration::from_secs(3600)).to_string(),
            "1h0m0s"
        );
        assert_eq!(
            Duration(std::time::Duration::from_millis(3_930_020)).to_string(),
            "1h5m30.02s"
        );
        assert_eq!(Duration::default().to_string(), "0s");
    }

    #[test]
    fn byte_sizes_parse_units_case_insensitively_with_decimals() {
        let b = |s: &str| s.parse::<ByteSize>().unwrap().0;
        assert_eq!(b("128M"), 128 * 1024 * 1024);
        assert_eq!(b("128mb"), 128 * 1024 * 1024);
        assert_eq!(b("1.5G"), 1_610_612_736);
        assert_eq!(b("1gb"), 1 << 30);
        assert_eq!(b("64k"), 65536);
        assert_eq!(b("64KB"), 65536);
        assert_eq!(b("100b"), 100);
        assert_eq!(b("100"), 100);
        assert!("12x".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
    }

    proptest! {
        #[test]
        fn duration_display_round_trips(ms in 0u64..10_000_000_000) {
            let dur = Duration(std::time::Duration::from_millis(ms));
            prop_assert_eq!(dur.to_string().parse::<Duration>().unwrap(), dur);
        }
    }
}
