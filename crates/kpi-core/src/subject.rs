//! NATS subject names; the only place they are spelled.
//!
//! Subjects are built from validated [`KpiCode`]s only, so no client input can
//! put a `.`, `*` or `>` into one.

use std::fmt;

use crate::code::KpiCode;
use crate::period::Period;

/// Events for one partition: `kpi.events.<partition>.<code>`.
pub fn event_subject(partition: u32, code: &KpiCode) -> String {
    format!("kpi.events.{partition}.{code}")
}

/// Many events of one partition in one stored message:
/// `kpi.events.<partition>.~batch`. `~` is not allowed in a KPI code, so the
/// last token names no KPI, and the partition filter still matches it.
pub fn event_batch_subject(partition: u32) -> String {
    format!("kpi.events.{partition}.{BATCH_TOKEN}")
}

/// The last token of [`event_batch_subject`].
pub const BATCH_TOKEN: &str = "~batch";

/// Everything in one partition, the filter of that partition's consumer.
pub fn partition_filter(partition: u32) -> String {
    format!("kpi.events.{partition}.>")
}

pub const EVENTS_WILDCARD: &str = "kpi.events.>";
/// Live updates, published without being stored (the gateways subscribe here).
pub const UPDATES_WILDCARD: &str = "kpi.updates.>";
/// Stored copies of updates: what `KPI_UPDATES` captures and readers read.
pub const STORED_WILDCARD: &str = "kpi.stored.>";
pub const HISTORY_WILDCARD: &str = "kpi.history.>";
pub const CHECKPOINT_WILDCARD: &str = "kpi.checkpoint.>";
/// System messages for every connected client on every gateway.
pub const BROADCAST_SUBJECT: &str = "kpi.broadcast";

/// Small named values kept for services that start later (maintenance mode).
pub const STATE_WILDCARD: &str = "kpi.state.>";

/// The name of a small shared value kept on the bus (`maintenance`): one
/// subject token of 1 to 64 lowercase letters, digits and `_`, checked once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateName(String);

/// A state name that could not be a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid state name: 1 to 64 of a-z, 0-9 and _")]
pub struct StateNameError(pub String);

impl StateName {
    pub fn parse(raw: &str) -> Result<Self, StateNameError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(StateName(raw.to_string()))
        } else {
            Err(StateNameError(raw.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the named value `name` is kept: `kpi.state.<name>`.
pub fn state_subject(name: &StateName) -> String {
    format!("kpi.state.{}", name.0)
}

pub fn checkpoint_subject(partition: u32) -> String {
    format!("kpi.checkpoint.{partition}")
}

/// One KPI in one period: the unit of subscription everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub code: KpiCode,
    pub period: Period,
}

impl Topic {
    pub fn new(code: KpiCode, period: Period) -> Self {
        Topic { code, period }
    }

    /// Live updates: `kpi.updates.<code>.<period>`.
    pub fn updates_subject(&self) -> String {
        format!("kpi.updates.{}.{}", self.code, self.period)
    }

    /// Stored copies of the topic's updates: `kpi.stored.<code>.<period>`.
    /// Not every live update is stored (the aggregator's store policy), so
    /// readers of this subject see a subset of the live seqs, newest last.
    pub fn stored_subject(&self) -> String {
        format!("kpi.stored.{}.{}", self.code, self.period)
    }

    /// The topic a stored-updates subject names, or `None` for anything
    /// else: the inverse of [`Topic::stored_subject`], for listing what is stored.
    pub fn from_stored_subject(subject: &str) -> Option<Topic> {
        let rest = subject.strip_prefix("kpi.stored.")?;
        let (code, period) = rest.split_once('.')?;
        Some(Topic::new(
            KpiCode::parse(code).ok()?,
            Period::parse(period).ok()?,
        ))
    }

    /// Closed buckets: `kpi.history.<code>.<period>`, followed by
    /// `.<bucket start secs>` per bucket (see [`Topic::history_bucket_subject`]).
    pub fn history_subject(&self) -> String {
        format!("kpi.history.{}.{}", self.code, self.period)
    }

    /// One closed bucket's record, `kpi.history.<code>.<period>.<start secs>`:
    /// a subject per bucket, so the stream keeps only its latest record.
    pub fn history_bucket_subject(&self, bucket_start_secs: i64) -> String {
        format!("{}.{bucket_start_secs}", self.history_subject())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code, self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_subject_names_no_kpi_and_stays_in_its_partition() {
        assert!(KpiCode::parse(BATCH_TOKEN).is_err());
        let s = event_batch_subject(3);
        assert_eq!(s, "kpi.events.3.~batch");
        assert!(s.starts_with(partition_filter(3).trim_end_matches('>')));
    }

    #[test]
    fn state_names_are_one_plain_token() {
        let m = StateName::parse("maintenance").expect("valid");
        assert_eq!(state_subject(&m), "kpi.state.maintenance");
        for bad in ["", "a.b", "*", ">", "Upper", "a b", &"x".repeat(65)] {
            assert!(StateName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stored_subject_round_trips_and_rejects_other_subjects() {
        let t = Topic::new(KpiCode::parse("rev-1_a").expect("code"), Period::Hour);
        assert_eq!(t.updates_subject(), "kpi.updates.rev-1_a.hour");
        assert_eq!(Topic::from_stored_subject(&t.stored_subject()), Some(t));
        for bad in [
            "kpi.history.a.hour",
            "kpi.updates.a.hour",
            "kpi.stored.a",
            "kpi.stored.a.week",
            "kpi.stored.a.b.hour",
            "kpi.stored..hour",
        ] {
            assert_eq!(Topic::from_stored_subject(bad), None, "{bad}");
        }
    }
}
