//! The event as ingest stores it on the bus and the aggregator reads it back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::code::KpiCode;

/// Longest accepted `event_id`; it becomes a `Nats-Msg-Id` header value.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// At most this many labels per event, each key and value at most 256 bytes.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 256;
/// Largest accepted magnitude of a value. A bucket holds at most `u64::MAX`
/// (about 1.8e19) events, so a sum of values this large stays below
/// `f64::MAX` (about 1.8e308): no aggregate can overflow to infinity, which
/// JSON cannot carry.
pub const MAX_ABS_VALUE: f64 = 1e200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid kpi: {0}")]
    Code(#[from] crate::code::CodeError),
    #[error("value must be a finite number, got {0}")]
    NotFinite(String),
    #[error("value magnitude must be at most 1e200 so sums cannot overflow, got {0}")]
    TooLarge(String),
    #[error("event_id must be at most 128 printable ASCII characters")]
    BadEventId,
    #[error("event time {time} is more than {max_secs} s in the future")]
    InFuture { time: String, max_secs: i64 },
    #[error("event time {time} is more than {max_secs} s in the past (half the duplicate window: an older retry could be stored twice)")]
    InPast { time: String, max_secs: i64 },
    #[error("event time is out of range")]
    TimeOutOfRange,
    #[error("too many labels or a label longer than 256 bytes")]
    BadLabels,
}

/// One data point, after validation, with the moment ingest received it.
///
/// `received_at` is what lateness is judged by: it is fixed when the event is
/// stored, so replaying the stream after a crash judges every event exactly as
/// the first run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    pub kpi: KpiCode,
    pub value: f64,
    #[serde(with = "crate::time")]
    pub time: DateTime<Utc>,
    #[serde(with = "crate::time")]
    pub received_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Checks an event_id: printable ASCII without spaces, so it is a safe header value.
pub fn validate_event_id(id: &str) -> Result<(), EventError> {
    if id.len() > MAX_EVENT_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EventError::BadEventId);
    }
    Ok(())
}

pub fn validate_value(value: f64) -> Result<(), EventError> {
    if !value.is_finite() {
        Err(EventError::NotFinite(value.to_string()))
    } else if value.abs() > MAX_ABS_VALUE {
        Err(EventError::TooLarge(value.to_string()))
    } else {
        Ok(())
    }
}

pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), EventError> {
    if labels.len() > MAX_LABELS
        || labels
            .iter()
            .any(|(k, v)| k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
    {
        return Err(EventError::BadLabels);
    }
    Ok(())
}

/// Refuses event times further than `max_future_secs` ahead of `now`.
pub fn validate_time(
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    max_future_secs: i64,
) -> Result<(), EventError> {
    if (time - now).num_seconds() > max_future_secs {
        return Err(EventError::InFuture {
            time: crate::time::rfc3339(&time),
            max_secs: max_future_secs,
        });
    }
    Ok(())
}

/// Refuses event times more than `max_past_secs` before `now`.
pub fn validate_age(
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    max_past_secs: i64,
) -> Result<(), EventError> {
    if (now - time).num_seconds() > max_past_secs {
        return Err(EventError::InPast {
            time: crate::time::rfc3339(&time),
            max_secs: max_past_secs,
        });
    }
    Ok(())
}

impl EventRecord {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(raw: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_whose_sum_could_overflow_are_refused() {
        assert!(validate_value(1e200).is_ok());
        assert!(validate_value(-1e200).is_ok());
        assert!(matches!(
            validate_value(1e308),
            Err(EventError::TooLarge(_))
        ));
        assert!(matches!(
            validate_value(-1e201),
            Err(EventError::TooLarge(_))
        ));
        assert!(matches!(
            validate_value(f64::NAN),
            Err(EventError::NotFinite(_))
        ));
        // The bound holds for the largest possible count.
        assert!((MAX_ABS_VALUE * u64::MAX as f64).is_finite());
    }
}
