//! Every metric the aggregator emits, named once.

pub const EVENTS_APPLIED: &str = "kpi_aggregator_events_applied_total";
/// Per period: an event can be late for `minute` and still count for `day`.
pub const EVENTS_LATE: &str = "kpi_aggregator_events_late_total";
/// Events not applied at all: a value outside the value rule, or a time
/// further than half the duplicate window from its receive time.
pub const EVENTS_REFUSED: &str = "kpi_aggregator_events_refused_total";
/// Idle topics dropped from memory (their seq continues from the bus).
pub const TOPICS_EVICTED: &str = "kpi_aggregator_topics_evicted_total";
pub const TOPICS: &str = "kpi_aggregator_topics";
/// Topics of this replica announced as watched live (the rest render only when stored).
pub const WATCHED_TOPICS: &str = "kpi_aggregator_watched_topics";
pub const CHECKPOINT_BYTES: &str = "kpi_aggregator_checkpoint_bytes";
/// Copies of an event already applied (its id seen within the duplicate
/// window): a client's retry through another ingest process or after one
/// restarted.
pub const EVENTS_DUPLICATE: &str = "kpi_aggregator_events_duplicate_total";
pub const EVENTS_UNDECODABLE: &str = "kpi_aggregator_events_undecodable_total";
/// Updates sent live, stored or not (a trailing store counts again).
pub const UPDATES_PUBLISHED: &str = "kpi_aggregator_updates_published_total";
/// Of those, the ones also stored on the bus (the store policy's share).
pub const UPDATES_STORED: &str = "kpi_aggregator_updates_stored_total";
pub const PUBLISH_FAILURES: &str = "kpi_aggregator_publish_failures_total";
pub const PUBLISH_SECONDS: &str = "kpi_aggregator_publish_seconds";
pub const CHECKPOINT_AGE: &str = "kpi_aggregator_checkpoint_age_seconds";
pub const CONSUMER_PENDING: &str = "kpi_aggregator_consumer_pending";
pub const APPLIED_SEQ: &str = "kpi_aggregator_applied_sequence";
