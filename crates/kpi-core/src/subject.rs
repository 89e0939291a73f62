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

/// Everything in one partition, the filter of that partition's consumer.
pub fn partition_filter(partition: u32) -> String {
    format!("kpi.events.{partition}.>")
}

pub const EVENTS_WILDCARD: &str = "kpi.events.>";
pub const UPDATES_WILDCARD: &str = "kpi.updates.>";
pub const HISTORY_WILDCARD: &str = "kpi.history.>";
pub const CHECKPOINT_WILDCARD: &str = "kpi.checkpoint.>";
/// System messages for every connected client on every gateway.
pub const BROADCAST_SUBJECT: &str = "kpi.broadcast";

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

    /// Closed buckets: `kpi.history.<code>.<period>`.
    pub fn history_subject(&self) -> String {
        format!("kpi.history.{}.{}", self.code, self.period)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code, self.period)
    }
}
