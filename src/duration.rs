//! Human durations in overlay files: `90d`, `8760h`, `5y`, `30m`, `1w2d`.
//!
//! A year is 365 days and a week 7 days; there are no months, whose length varies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::echo::quote;

/// A non-negative span of time written with units, such as `90d` or `2y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(time::Duration);

/// Why a duration string could not be read. Messages quote the text through
/// [`crate::echo::quote`] (capped, never a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: write a number and a unit, such as 90d")]
    Empty,
    #[error("invalid duration {}: write a number and a unit (s, m, h, d, w, y), such as 90d or 8760h", quote(.0))]
    Invalid(String),
    #[error("invalid duration {}: remove the spaces around it, such as 90d", quote(.0))]
    Spaces(String),
    #[error("invalid duration {}: a duration cannot be negative; write a positive one, such as 90d", quote(.0))]
    Negative(String),
    #[error("duration {} is too large", quote(.0))]
    Overflow(String),
}

const UNITS: &[(&str, i64)] = &[
    ("s", 1),
    ("m", 60),
    ("h", 3_600),
    ("d", 86_400),
    ("w", 7 * 86_400),
    ("y", 365 * 86_400),
];

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: i64) -> Self {
        Self(time::Duration::seconds(secs))
    }

    /// A duration of whole days.
    pub const fn from_days(days: i64) -> Self {
        Self(time::Duration::days(days))
    }

    /// The length in whole seconds.
    pub fn as_secs(self) -> i64 {
        self.0.whole_seconds()
    }

    /// The same span as a `time::Duration`.
    pub fn as_time(self) -> time::Duration {
        self.0
    }

    /// True for a zero-length span.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    /// Exactly the schema's `^([0-9]+[smhdwy])+$`: no spaces, no sign.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s;
        if text.trim().is_empty() {
            return Err(DurationError::Empty);
        }
        if text.trim() != text {
            return Err(DurationError::Spaces(s.to_string()));
        }
        if text.starts_with('-') {
            return Err(DurationError::Negative(s.to_string()));
        }
        let invalid = || DurationError::Invalid(s.to_string());
        let mut total: i64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(invalid());
            }
            let number: i64 = rest[..digits]
                .parse()
                .map_err(|_| DurationError::Overflow(s.to_string()))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let (_, factor) = UNITS.iter().find(|(name, _)| *name == unit).ok_or_else(invalid)?;
            rest = &rest[unit_len..];
            total = number
                .checked_mul(*factor)
                .and_then(|secs| total.checked_add(secs))
                .ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        }
        Ok(Self::from_secs(total))
    }
}

impl fmt::Display for Duration {
    /// Writes the largest unit that divides the span evenly, so `90d` stays `90d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        let (name, factor) = UNITS
            .iter()
            .rev()
            .find(|(_, factor)| secs % factor == 0)
            .copied()
            .unwrap_or(("s", 1));
        write!(f, "{}{}", secs / factor, name)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+[smhdwy])+$",
            "description": "A span of time with units s, m, h, d, w (7d) or y (365d), such as 90d or 8760h",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!("90d".parse::<Duration>().unwrap(), Duration::from_days(90));
        assert_eq!("1w2d".parse::<Duration>().unwrap(), Duration::from_days(9));
        assert_eq!("5y".parse::<Duration>().unwrap(), Duration::from_days(5 * 365));
        assert_eq!("90s".parse::<Duration>().unwrap().as_secs(), 90);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "", "d", "10", "10x", "-5d", "1.5d", "10 d", "+5d", "1d ", " 1d", "\t1d", "1d\n",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should not parse");
        }
        assert!(matches!(
            "99999999999999y".parse::<Duration>(),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn errors_say_what_to_write() {
        let err = |s: &str| s.parse::<Duration>().unwrap_err().to_string();
        assert_eq!(
            err("1d "),
            "invalid duration \"1d \": remove the spaces around it, such as 90d"
        );
        assert_eq!(
            err("-1d"),
            "invalid duration \"-1d\": a duration cannot be negative; write a positive one, such as 90d"
        );
        assert_eq!(
            err("   "),
            "empty duration: write a number and a unit, such as 90d"
        );
        let long = err(&"9".repeat(100_000));
        assert!(long.len() < 200, "{long}");
        assert!(long.contains("(100000 characters)"), "{long}");
    }

    #[test]
    fn every_accepted_text_matches_the_schema_pattern() {
        // The loader and `kiln schema` agree: ^([0-9]+[smhdwy])+$.
        let matches = |s: &str| {
            let mut rest = s;
            if rest.is_empty() {
                return false;
            }
            while !rest.is_empty() {
                let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                let Some(unit) = rest[digits..].chars().next() else {
                    return false;
                };
                if digits == 0 || !"smhdwy".contains(unit) {
                    return false;
                }
                rest = &rest[digits + 1..];
            }
            true
        };
        for text in [
            "90d", "1w2d", "0s", "1d ", " 1d", "-1d", "+1d", "1 d", "1dd", "d1", "1h30m", "1D", "1",
        ] {
            assert_eq!(
                text.parse::<Duration>().is_ok(),
                matches(text),
                "{text:?}: loader and schema disagree"
            );
        }
    }

    #[test]
    fn displays_in_largest_even_unit() {
        assert_eq!(Duration::from_days(90).to_string(), "90d");
        assert_eq!(Duration::from_days(730).to_string(), "2y");
        assert_eq!(Duration::from_secs(5400).to_string(), "90m");
        assert_eq!("36h".parse::<Duration>().unwrap().to_string(), "36h");
    }
}
