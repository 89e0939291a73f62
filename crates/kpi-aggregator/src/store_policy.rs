//! Which renders of a topic are stored as well as published live: the aggregator's store policy.
//!
//! Every render goes out live on `kpi.updates.<code>.<period>`; storing each
//! one too (a JetStream message per update) capped the pipeline. A render is
//! stored when it closes or corrects a bucket, when the topic's last store
//! is at least the store interval old, or when [`STORE_EVERY`] seqs passed
//! since it. A topic whose newest render is not stored gets a trailing
//! store of that same render once the interval has passed, so the stored
//! latest is at most one interval behind the live one and a quiet topic's
//! stored value is its final one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// At most this many seqs of a topic go out live after its last stored one
/// (`STORE_EVERY - 1` live-only renders, then a stored one). After a
/// restart the aggregator continues above `last stored seq + STORE_EVERY`,
/// so no seq is ever published twice with different contents.
pub const STORE_EVERY: u64 = 32;

/// How often a topic's renders are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePolicy {
    interval_ms: i64,
    /// Stores per render that are not forced (`usize::MAX`: no limit).
    budget: usize,
}

impl Default for StorePolicy {
    /// Every render stored: what the aggregator did before it had a policy.
    fn default() -> Self {
        StorePolicy::every_render()
    }
}

impl StorePolicy {
    pub fn every_render() -> Self {
        StorePolicy {
            interval_ms: 0,
            budget: usize::MAX,
        }
    }

    /// Store at least once per `interval` while a topic changes; zero stores every render.
    pub fn new(interval: Duration) -> Self {
        StorePolicy {
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            budget: usize::MAX,
        }
    }

    /// At most `budget` stores per render beyond the forced ones (at least one).
    pub fn with_budget(self, budget: usize) -> Self {
        StorePolicy {
            budget: budget.max(1),
            ..self
        }
    }

    /// Stores per render that are not forced.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether a render must be stored whatever the budget: it closes or
    /// corrects a bucket (`boundary`), it would put the topic
    /// [`STORE_EVERY`] seqs past its last store, or it is the first after a
    /// restart raised the seq (a restart before a store would reuse it).
    pub fn forced(&self, mark: &StoreMark, boundary: bool) -> bool {
        boundary
            || self.interval_ms == 0
            || mark.unstored + 1 >= STORE_EVERY
            || mark.stored_at_ms == i64::MIN
    }

    /// When the topic has been owed a store since (Unix ms): its last store.
    pub fn owed_since(mark: &StoreMark) -> i64 {
        mark.stored_at_ms
    }

    /// Whether a render at `now_ms` is to be stored, budget permitting
    /// unless [`StorePolicy::forced`]; `boundary` when it closes or corrects a bucket.
    pub fn stores(&self, mark: &StoreMark, now_ms: i64, boundary: bool) -> bool {
        self.forced(mark, boundary) || self.elapsed(mark, now_ms)
    }

    /// Whether the topic's newest render is not stored and the interval
    /// since its last store has passed.
    pub fn trailing_due(&self, mark: &StoreMark, now_ms: i64) -> bool {
        mark.unstored > 0 && self.elapsed(mark, now_ms)
    }

    /// When a trailing store of this topic falls due (Unix ms).
    pub fn deadline(&self, mark: &StoreMark) -> i64 {
        mark.stored_at_ms.saturating_add(self.interval_ms)
    }

    /// The owed-since time of a trailing store due at `deadline`.
    pub fn since_deadline(&self, deadline: i64) -> i64 {
        deadline.saturating_sub(self.interval_ms)
    }

    fn elapsed(&self, mark: &StoreMark, now_ms: i64) -> bool {
        now_ms >= self.deadline(mark)
    }
}

/// A topic's store bookkeeping, checkpointed with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMark {
    /// Seqs rendered since the last stored one; 0 = the newest is stored.
    #[serde(default)]
    pub unstored: u64,
    /// When the last stored render was made (Unix ms; 0 = long ago).
    #[serde(default)]
    pub stored_at_ms: i64,
}

impl StoreMark {
    /// A topic from a checkpoint written before the policy existed: its
    /// updates were stored on a subject no longer read, so it owes a store
    /// at once.
    pub fn owed() -> Self {
        StoreMark {
            unstored: 1,
            stored_at_ms: 0,
        }
    }

    pub fn stored(&mut self, now_ms: i64) {
        self.unstored = 0;
        self.stored_at_ms = now_ms;
    }

    pub fn live_only(&mut self) {
        self.unstored += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_on_boundaries_on_the_interval_and_every_store_every_seqs() {
        let p = StorePolicy::new(Duration::from_secs(1));
        let mut mark = StoreMark::default();
        assert!(p.stores(&mark, 10_000, false), "never stored: due");
        mark.stored(10_000);
        assert!(!p.stores(&mark, 10_999, false));
        assert!(p.stores(&mark, 10_999, true), "a boundary always stores");
        assert!(p.stores(&mark, 11_000, false));
        for _ in 0..STORE_EVERY - 1 {
            assert!(!p.stores(&mark, 10_001, false));
            mark.live_only();
        }
        assert!(
            p.stores(&mark, 10_001, false),
            "{STORE_EVERY} seqs without a store"
        );
        assert!(!p.trailing_due(&mark, 10_999));
        assert!(p.trailing_due(&mark, 11_000));
        mark.stored(11_000);
        assert!(!p.trailing_due(&mark, 99_000), "nothing unstored");
        assert!(StorePolicy::every_render().stores(&mark, 11_000, false));
    }
}
