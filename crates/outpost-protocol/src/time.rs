//! Timestamps on the wire: RFC 3339 in UTC with millisecond precision (`2026-11-22T10:00:00.123Z`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, serialized as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_unix_millis(Self(SystemTime::now()).unix_millis())
    }

    /// From milliseconds since the Unix epoch (negative values clamp to the epoch).
    pub fn from_unix_millis(ms: i64) -> Self {
        Self(UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// Parses RFC 3339 (`Z` offset), as produced by `Display`.
    pub fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_rfc3339(s)
            .map(|t| Self::from_unix_millis(Self(t).unix_millis()))
            .map_err(|e| format!("invalid timestamp `{s}`: {e}"))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self::from_unix_millis(Self(t).unix_millis())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_millis() {
        let t = Timestamp::from_unix_millis(1_795_000_000_123);
        let s = t.to_string();
        assert_eq!(s, "2026-11-18T11:06:40.123Z");
        assert_eq!(Timestamp::parse(&s), Ok(t));
    }

    #[test]
    fn rejects_garbage() {
        assert!(
            Timestamp::parse("yesterday")
                .unwrap_err()
                .contains("yesterday")
        );
    }
}
