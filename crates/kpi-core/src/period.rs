//! Periods and UTC-aligned bucket arithmetic (TimescaleDB's `time_bucket` for fixed widths).

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown period {0:?}; use minute, hour or day")]
pub struct PeriodError(pub String);

/// The width of a bucket. Days are UTC days: Unix time has no leap seconds, so
/// every period is a fixed number of seconds and bucket math is plain division.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Minute, Period::Hour, Period::Day];

    pub fn parse(raw: &str) -> Result<Self, PeriodError> {
        match raw {
            "minute" => Ok(Period::Minute),
            "hour" => Ok(Period::Hour),
            "day" => Ok(Period::Day),
            other => Err(PeriodError(other.chars().take(32).collect())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    pub fn seconds(self) -> i64 {
        match self {
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
        }
    }

    /// Start of the bucket holding `t`, as Unix seconds (floor, also before 1970).
    pub fn bucket_start_secs(self, t: DateTime<Utc>) -> i64 {
        t.timestamp().div_euclid(self.seconds()) * self.seconds()
    }

    /// Start of the bucket holding `t`.
    pub fn bucket_start(self, t: DateTime<Utc>) -> DateTime<Utc> {
        secs_to_time(self.bucket_start_secs(t))
    }

    /// First instant after the bucket that starts at `start_secs`.
    pub fn bucket_end_secs(self, start_secs: i64) -> i64 {
        start_secs + self.seconds()
    }
}

/// Unix seconds to a UTC time; out-of-range values clamp rather than panic.
pub fn secs_to_time(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Period {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
