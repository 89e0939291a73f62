//! The window of recently applied event ids that makes an event count once, however many copies the log holds.
//!
//! Ingest stores many events per JetStream message, so JetStream's
//! duplicate window (keyed by message id) no longer sees single events: a
//! retry through another ingest process, or after one restarted, lands in
//! the log again. The aggregator reads every copy in log order and applies
//! only the first whose id is not in this window.
//!
//! Ids are kept as 128-bit hashes in two generations, rotated by the events'
//! own receive times (never the wall clock), so a replay after a crash
//! decides exactly as the first run did. A generation spans at least
//! `window`, so the two together hold every id received within `window` of
//! the newest receive time seen. Two accepted copies of one event are
//! received less than a duplicate window apart (ingest refuses event times
//! further than half of it from receipt, and the aggregator refuses those it
//! reads), so the window catches every copy.
//!
//! Memory: one hash per event received in the last one to two windows, so
//! it is bounded by what the event stream holds in that time (16 bytes per
//! id plus the set's overhead); a shorter duplicate window shrinks it.

use kpi_core::id_map::IdMap;

/// Ids seen, as `kpi_core::id_hash::event_id_hash` values.
#[derive(Debug, Default)]
pub struct Dedupe {
    /// Receive times (Unix seconds) a generation spans.
    window: i64,
    /// Receive time the current generation started at; `None` while empty.
    current_start: Option<i64>,
    current: IdSet,
    previous: IdSet,
}

type IdSet = IdMap<()>;

impl Dedupe {
    pub fn new(window: std::time::Duration) -> Self {
        Dedupe {
            window: i64::try_from(window.as_secs()).unwrap_or(i64::MAX).max(1),
            ..Default::default()
        }
    }

    /// Records `id` received at `received_at` (Unix seconds); returns whether
    /// it was already in the window (a copy: do not apply it again).
    pub fn check_and_insert(&mut self, id: u128, received_at: i64) -> bool {
        self.rotate(received_at);
        if self.previous.contains(id) {
            return true;
        }
        self.current.insert(id, ()).is_some()
    }

    /// Ids held, for the gauge and tests.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a new generation once receive times move a window past the
    /// current one's start. Receive times of several ingest processes
    /// interleave slightly out of order in the log; an older one only lands
    /// in the current generation, which keeps it at least as long.
    fn rotate(&mut self, received_at: i64) {
        let Some(start) = self.current_start else {
            self.current_start = Some(received_at);
            return;
        };
        if received_at < start.saturating_add(self.window) {
            return;
        }
        if received_at >= start.saturating_add(self.window.saturating_mul(2)) {
            // Nothing held is within a window of this event any more.
            self.previous = IdSet::default();
            self.current = IdSet::default();
        } else {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current_start = Some(received_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const W: u64 = 600;

    #[test]
    fn a_copy_inside_the_window_is_caught_and_the_first_is_not() {
        let mut d = Dedupe::new(Duration::from_secs(W));
        assert!(!d.check_and_insert(1, 1000));
        assert!(!d.check_and_insert(2, 1001));
        assert!(d.check_and_insert(1, 1002));
        // Across a rotation: still within a window of the first.
        assert!(!d.check_and_insert(3, 1000 + W as i64));
        assert!(d.check_and_insert(2, 1000 + W as i64 + 500));
    }

    #[test]
    fn ids_older_than_two_windows_are_forgotten_so_memory_stays_bounded() {
        let mut d = Dedupe::new(Duration::from_secs(W));
        for i in 0..1000 {
            d.check_and_insert(i, 0);
        }
        assert_eq!(d.len(), 1000);
        d.check_and_insert(5000, W as i64);
        d.check_and_insert(5001, 2 * W as i64);
        assert_eq!(d.len(), 2, "the first generation is gone");
        assert!(!d.check_and_insert(7, 2 * W as i64));
        d.check_and_insert(6000, 10 * W as i64);
        assert_eq!(d.len(), 1, "a jump past two windows clears both");
    }

    #[test]
    fn decisions_depend_on_receive_times_not_on_when_they_are_made() {
        let run = || {
            let mut d = Dedupe::new(Duration::from_secs(W));
            (0..3000u64)
                .map(|i| d.check_and_insert(u128::from(i % 700), (i / 2) as i64))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(run().iter().any(|dup| *dup));
    }
}
