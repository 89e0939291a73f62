//! The ids this ingest process stored recently, so a client's retry through it is answered DUPLICATE without storing again.
//!
//! JetStream no longer sees single events (ingest stores many per message),
//! and the aggregator's window is what makes every copy count once. This
//! table only keeps the answer a retrying client expects: a retry through
//! the same process, within the duplicate window and while the table holds
//! the id, is answered `DUPLICATE` (and not stored again). Anything else (a
//! retry through another replica, after a restart, or after the table
//! rotated early because it was full) is stored again, answered `ACCEPTED`,
//! and still counted once by the aggregator.
//!
//! Two generations by the wall clock, each spanning the duplicate window and
//! holding at most half of `capacity` ids. A DUPLICATE answer is safe at any
//! age: it is given only for an id this process stored itself.

use std::time::{Duration, Instant};

pub struct RecentIds {
    /// Ids per generation; when the current one reaches it, it rotates early.
    per_generation: usize,
    span: Duration,
    started: Instant,
    /// Hash of the event id -> the sequence it was stored at.
    current: IdMap,
    previous: IdMap,
}

type IdMap = kpi_core::id_map::IdMap<u64>;

impl RecentIds {
    /// At most `capacity` ids, none older than `window`.
    pub fn new(capacity: usize, window: Duration, now: Instant) -> Self {
        RecentIds {
            per_generation: (capacity / 2).max(1),
            span: window,
            started: now,
            current: IdMap::default(),
            previous: IdMap::default(),
        }
    }

    /// Where `id` was stored, if this process stored it recently.
    pub fn get(&mut self, id: u128, now: Instant) -> Option<u64> {
        self.rotate(now);
        self.current
            .get(id)
            .or_else(|| self.previous.get(id))
            .copied()
    }

    /// Remembers that `id` was stored at `seq`.
    pub fn insert(&mut self, id: u128, seq: u64, now: Instant) {
        self.rotate(now);
        if self.current.len() >= self.per_generation {
            self.turn(now);
        }
        self.current.insert(id, seq);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= self.span * 2 {
            self.previous = IdMap::default();
            self.current = IdMap::default();
            self.started = now;
        } else if age >= self.span {
            self.turn(now);
        }
    }

    fn turn(&mut self, now: Instant) {
        self.previous = std::mem::take(&mut self.current);
        self.started = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn a_stored_id_is_found_until_the_window_has_passed() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(100, WINDOW, t0);
        r.insert(1, 7, t0);
        assert_eq!(r.get(1, t0), Some(7));
        assert_eq!(r.get(2, t0), None);
        assert_eq!(r.get(1, t0 + WINDOW + Duration::from_secs(1)), Some(7));
        assert_eq!(r.get(1, t0 + WINDOW * 2 + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_full_table_rotates_early_and_never_holds_more_than_its_capacity() {
        let t0 = Instant::now();
        let mut r = RecentIds::new(10, WINDOW, t0);
        for i in 0..25u128 {
            r.insert(i, i as u64, t0);
            assert!(r.len() <= 10);
        }
        assert_eq!(r.get(24, t0), Some(24), "the newest are kept");
        assert_eq!(r.get(0, t0), None, "the oldest made room");
    }
}
