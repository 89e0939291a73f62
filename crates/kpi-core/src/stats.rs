//! Per-bucket aggregates: count, sum, avg, min, max and last-by-event-time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Aggregates as clients see them: `avg`, `min`, `max`, `last` are `null` for an empty bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub count: u64,
    pub sum: f64,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub last: Option<f64>,
}

/// The running aggregate of one bucket.
///
/// Merging is commutative and associative (up to floating-point rounding of
/// `sum`), so events may be applied in any order and partial aggregates may be
/// combined: `last` is the value of the event with the greatest event time,
/// ties broken by the greater value so the result never depends on arrival order.
/// When `count == 0` the other fields are meaningless and are shown as `null`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Stats {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// Event time of `last`, in microseconds since the epoch.
    pub last_time_us: i64,
}

impl Stats {
    pub fn of(value: f64, time: DateTime<Utc>) -> Self {
        Stats {
            count: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
            last_time_us: time.timestamp_micros(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn apply(&mut self, value: f64, time: DateTime<Utc>) {
        self.merge(&Stats::of(value, time));
    }

    pub fn merge(&mut self, other: &Stats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count = self.count.saturating_add(other.count);
        self.sum = saturate(self.sum + other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        let newer = (other.last_time_us, other.last);
        let mine = (self.last_time_us, self.last);
        if newer.0 > mine.0 || (newer.0 == mine.0 && newer.1.total_cmp(&mine.1).is_gt()) {
            self.last = other.last;
            self.last_time_us = other.last_time_us;
        }
    }

    /// Whether every field can be written as a JSON number.
    pub fn is_finite(&self) -> bool {
        [self.sum, self.min, self.max, self.last]
            .iter()
            .all(|v| v.is_finite())
    }

    pub fn avg(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The shape clients see.
    pub fn view(&self) -> StatsView {
        let some = |v: f64| (self.count > 0).then_some(v);
        StatsView {
            count: self.count,
            sum: self.sum,
            avg: self.avg(),
            min: some(self.min),
            max: some(self.max),
            last: some(self.last),
        }
    }
}

/// Values within [`crate::event::MAX_ABS_VALUE`] cannot overflow a sum;
/// should anything else reach a bucket, the sum stops at the largest finite
/// number instead of becoming infinity, which JSON cannot carry.
fn saturate(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else if v.is_nan() {
        0.0
    } else {
        f64::MAX.copysign(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).single().expect("valid time")
    }

    #[test]
    fn last_is_by_event_time_not_arrival() {
        let mut s = Stats::default();
        s.apply(5.0, at(10));
        s.apply(7.0, at(5));
        assert_eq!(s.last, 5.0);
        assert_eq!((s.count, s.sum, s.min, s.max), (2, 12.0, 5.0, 7.0));
    }

    #[test]
    fn sums_never_overflow_to_infinity() {
        let mut s = Stats::default();
        s.apply(f64::MAX, at(1));
        s.apply(f64::MAX, at(2));
        assert!(s.is_finite() && s.avg().is_some_and(f64::is_finite));
    }

    #[test]
    fn empty_stats_view_is_null() {
        let v = Stats::default().view();
        assert_eq!((v.count, v.avg, v.min, v.last), (0, None, None, None));
    }
}
