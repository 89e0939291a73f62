//! kpistream's shared vocabulary: names, periods, buckets, aggregates and wire messages, with no network.
//!
//! Every service depends on this crate and on nothing of each other's, so a
//! type that crosses a process boundary (a bus payload, a JSON message a
//! client sees, a subject name) is defined here exactly once.

pub mod access;
pub mod cadence;
pub mod code;
pub mod event;
pub mod id_hash;
pub mod id_map;
pub mod interest;
pub mod merge_patch;
pub mod message;
pub mod partition;
pub mod period;
pub mod stats;
pub mod subject;
pub mod time;

pub use access::{KpiGrants, KpiPattern, PatternError};
pub use cadence::{Cadence, CadenceError};
pub use code::{CodeError, KpiCode};
pub use event::{EventError, EventRecord};
pub use message::{ClientMessage, ErrorMessage, Secret, StatsView, UpdateKind, UpdateMessage};
pub use partition::partition_of;
pub use period::{Period, PeriodError};
pub use stats::Stats;
pub use subject::Topic;
