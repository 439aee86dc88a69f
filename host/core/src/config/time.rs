//! Wall-clock timestamps as RFC 3339 text (millisecond precision, UTC).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A wall-clock instant supplied by the caller (the core never reads clocks).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    pub fn from_system_time(at: SystemTime) -> Self {
        // Keep millisecond precision so a value survives a YAML round trip.
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let millis = Duration::from_millis(since.as_millis() as u64);
        Self(UNIX_EPOCH + millis)
    }

    pub fn from_unix_millis(millis: u64) -> Self {
        Self(UNIX_EPOCH + Duration::from_millis(millis))
    }

    pub fn as_system_time(&self) -> SystemTime {
        self.0
    }

    pub fn unix_millis(&self) -> u64 {
        self.0.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339(s.trim())
            .map(Self::from_system_time)
            .map_err(|e| format!("`{s}` is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z: {e}"))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn round_trips_through_text() {
        let t = Timestamp::from_unix_millis(1_790_000_000_123);
        let text = t.to_string();
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(text.parse::<Timestamp>().unwrap(), t);
        assert!("yesterday".parse::<Timestamp>().is_err());
    }
}
