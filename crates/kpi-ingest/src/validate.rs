//! Turns a publisher's proto `Event` into a stored `EventRecord`, or says exactly why it cannot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kpi_core::event::{
    validate_age, validate_event_id, validate_labels, validate_time, validate_value,
};
use kpi_core::{CodeError, EventError, EventRecord, KpiCode};
use kpi_proto::v1::Event;

/// The longest piece of a client's KPI code echoed back in a reason; the rest
/// is elided so a hostile megabyte-long code does not come back in an error.
const ECHO_MAX_CHARS: usize = 80;

/// Why an event was refused. The message is sent to the publisher as-is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("invalid kpi code {shown}: {source}")]
    Kpi { shown: String, source: CodeError },
    #[error("{0}")]
    Event(#[from] EventError),
}

/// Validates `ev` as received at `now`.
///
/// An unset time means "now"; an empty `event_id` gets a random UUID, which
/// makes the event storable but not safely retryable.
pub fn to_record(
    ev: Event,
    now: DateTime<Utc>,
    max_future_secs: i64,
) -> Result<EventRecord, Invalid> {
    let kpi = KpiCode::parse(&ev.kpi).map_err(|source| Invalid::Kpi {
        shown: echo(&ev.kpi),
        source,
    })?;
    validate_value(ev.value)?;
    let event_id = if ev.event_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        validate_event_id(&ev.event_id)?;
        ev.event_id
    };
    let labels: BTreeMap<String, String> = ev.labels.into_iter().collect();
    validate_labels(&labels)?;
    let time = match ev.time {
        None => now,
        Some(ts) => {
            let time = timestamp(&ts)?;
            validate_time(time, now, max_future_secs)?;
            time
        }
    };
    Ok(EventRecord {
        event_id,
        kpi,
        value: ev.value,
        time,
        received_at: now,
        labels,
    })
}

/// Refuses a record whose event time is more than `max_past_secs` before
/// `now` (half the duplicate window; see the README's exactly-once rule).
pub fn check_age(
    record: EventRecord,
    now: DateTime<Utc>,
    max_past_secs: i64,
) -> Result<EventRecord, Invalid> {
    validate_age(record.time, now, max_past_secs)?;
    Ok(record)
}

/// A protobuf Timestamp as UTC; refuses the non-normalized forms the spec forbids.
fn timestamp(ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, EventError> {
    let nanos = u32::try_from(ts.nanos).map_err(|_| EventError::TimeOutOfRange)?;
    if nanos >= 1_000_000_000 {
        return Err(EventError::TimeOutOfRange);
    }
    DateTime::from_timestamp(ts.seconds, nanos).ok_or(EventError::TimeOutOfRange)
}

/// The client's string quoted with control and non-ASCII characters escaped, shortened if long.
fn echo(raw: &str) -> String {
    let count = raw.chars().count();
    if count <= ECHO_MAX_CHARS {
        format!("{raw:?}")
    } else {
        let head: String = raw.chars().take(ECHO_MAX_CHARS).collect();
        format!("{head:?}... ({count} characters)")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;

    use super::*;

    fn event(kpi: &str) -> Event {
        Event {
            event_id: "e-1".into(),
            kpi: kpi.into(),
            value: 1.5,
            time: None,
            labels: HashMap::new(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 8, 0, 0)
            .single()
            .expect("a valid date")
    }

    #[test]
    fn fills_in_time_and_id() {
        let ev = Event {
            event_id: String::new(),
            ..event("sales")
        };
        let rec = to_record(ev, now(), 300).expect("a valid event");
        assert_eq!(rec.time, now());
        assert_eq!(rec.received_at, now());
        assert_eq!(rec.event_id.len(), 36);
    }

    #[test]
    fn reasons_name_the_offending_code() {
        let err = to_record(event("a.b"), now(), 300)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("\"a.b\"") && err.contains("'.'"), "{err}");
        let long = "x".repeat(500);
        let err = to_record(event(&long), now(), 300)
            .expect_err("refused")
            .to_string();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn refuses_non_normalized_timestamps() {
        for nanos in [-1, 1_000_000_000] {
            let ev = Event {
                time: Some(prost_types::Timestamp { seconds: 0, nanos }),
                ..event("sales")
            };
            assert_eq!(
                to_record(ev, now(), 300),
                Err(Invalid::Event(EventError::TimeOutOfRange))
            );
        }
    }
}
