//! Which topics someone watches live, from holders' announcements on the bus; the workers render the rest only when they store them.
//!
//! Gateways (every holder of a live update subscription) announce their
//! topics when they subscribe and every `kpi_core::interest::REFRESH`; a
//! topic counts as watched for `TTL` after its last announcement. Nothing
//! here is needed for correctness: an unwatched topic is still rendered and
//! stored at the store policy's pace, so a topic wrongly thought unwatched
//! only updates less often, and one wrongly thought watched costs work.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kpi_bus::Bus;
use kpi_core::interest::{REFRESH, TTL};
use kpi_core::Topic;
use kpi_service::Shutdown;

use crate::config::AggregatorSettings;
use crate::metrics as m;
use crate::state::Watched;

/// Most topics remembered as watched. Announcements come from inside the
/// cluster, but a runaway holder must not grow this without end: past it, a
/// new topic is not recorded (it updates at the store policy's pace).
const MAX_WATCHED: usize = 1_000_000;
/// Most newly watched topics waiting for their worker's next render, per
/// partition; past it a topic just waits for its next event.
const MAX_FRESH: usize = 100_000;

/// The watched topics of this replica's partitions, shared by its workers.
#[derive(Clone)]
pub struct Interest {
    /// `None`: every topic counts as watched (`--live-all`, or a bus that
    /// announces nothing because it delivers everything live for free).
    table: Option<Arc<RwLock<Table>>>,
}

struct Table {
    /// Topic key (`<code>/<period>`) -> watched until.
    until: HashMap<String, Instant>,
    /// Per owned partition, keys that became watched since its last render.
    fresh: HashMap<u32, Vec<String>>,
    partitions: u32,
    full_warned: Option<Instant>,
}

impl Interest {
    /// Every topic watched.
    pub fn everything() -> Interest {
        Interest { table: None }
    }

    /// Nothing watched until announced, for the partitions `settings` owns.
    pub fn tracking(settings: &AggregatorSettings) -> Interest {
        let fresh = settings
            .owned_partitions()
            .into_iter()
            .map(|p| (p, Vec::new()))
            .collect();
        Interest {
            table: Some(Arc::new(RwLock::new(Table {
                until: HashMap::new(),
                fresh,
                partitions: settings.partitions,
                full_warned: None,
            }))),
        }
    }

    /// What the workers go by: everything when `--live-all` or the bus
    /// announces nothing, else what the bus's announcements say, followed
    /// by a task that stops with `shutdown`.
    pub async fn follow(bus: &Bus, settings: &AggregatorSettings, shutdown: Shutdown) -> Interest {
        if settings.live_all {
            return Interest::everything();
        }
        let mut feed = match bus.interest_feed().await {
            Ok(Some(feed)) => feed,
            Ok(None) => return Interest::everything(),
            Err(e) => {
                // Rendering every topic live is what the aggregator did
                // before it listened: slower, never wrong.
                tracing::warn!(error = %e, "cannot follow announcements of watched topics; rendering every topic live");
                return Interest::everything();
            }
        };
        let interest = Interest::tracking(settings);
        let recorder = interest.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = shutdown.recv() => break,
                    _ = sweep.tick() => recorder.expire(Instant::now()),
                    next = feed.next() => match next {
                        Some(topics) => recorder.record(&topics, Instant::now()),
                        None => {
                            tracing::warn!("announcements of watched topics ended; topics update at the store interval once theirs expire");
                            break;
                        }
                    },
                }
            }
        });
        interest
    }

    /// An announcement of `topics` at `now`.
    pub fn record(&self, topics: &[Topic], now: Instant) {
        let Some(table) = &self.table else {
            return;
        };
        let Ok(mut t) = table.write() else {
            return;
        };
        let until = now + TTL;
        for topic in topics {
            let partition = kpi_core::partition_of(&topic.code, t.partitions);
            if !t.fresh.contains_key(&partition) {
                continue;
            }
            let key = topic.to_string();
            let full = t.until.len() >= MAX_WATCHED;
            let was_watched = match t.until.get_mut(&key) {
                Some(at) => {
                    let was = *at > now;
                    *at = until;
                    was
                }
                None if full => {
                    let quiet = t
                        .full_warned
                        .is_none_or(|w| now.duration_since(w) > Duration::from_secs(60));
                    if quiet {
                        tracing::warn!(max = MAX_WATCHED, "too many watched topics announced; new ones update at the store interval");
                        t.full_warned = Some(now);
                    }
                    continue;
                }
                None => {
                    t.until.insert(key.clone(), until);
                    false
                }
            };
            if !was_watched {
                if let Some(fresh) = t.fresh.get_mut(&partition) {
                    if fresh.len() < MAX_FRESH {
                        fresh.push(key);
                    }
                }
            }
        }
        metrics::gauge!(m::WATCHED_TOPICS).set(t.until.len() as f64);
    }

    /// Forgets topics whose announcements stopped.
    pub fn expire(&self, now: Instant) {
        let Some(table) = &self.table else {
            return;
        };
        if let Ok(mut t) = table.write() {
            t.until.retain(|_, at| *at > now);
            metrics::gauge!(m::WATCHED_TOPICS).set(t.until.len() as f64);
        }
    }

    /// Topics remembered as watched (expired ones until the next sweep).
    pub fn watched_count(&self) -> usize {
        match &self.table {
            Some(table) => table.read().map(|t| t.until.len()).unwrap_or(0),
            None => 0,
        }
    }

    /// Keys of `partition`'s topics that became watched since the last call.
    pub fn take_fresh(&self, partition: u32) -> Vec<String> {
        let Some(table) = &self.table else {
            return Vec::new();
        };
        match table.write() {
            Ok(mut t) => t
                .fresh
                .get_mut(&partition)
                .map(std::mem::take)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Runs `f` with what is watched at `now` (for one render).
    pub fn with<R>(&self, now: Instant, f: impl FnOnce(&dyn Watched) -> R) -> R {
        match &self.table {
            None => f(&crate::state::Everything),
            Some(table) => match table.read() {
                Ok(t) => f(&View { table: &t, now }),
                // A writer panicked: the table may be half updated; live
                // for everything is slower, never wrong.
                Err(_) => f(&crate::state::Everything),
            },
        }
    }
}

struct View<'a> {
    table: &'a Table,
    now: Instant,
}

impl Watched for View<'_> {
    fn watched(&self, key: &str) -> bool {
        self.table.until.get(key).is_some_and(|at| *at > self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_core::{KpiCode, Period};

    fn topic(code: &str, period: Period) -> Topic {
        Topic::new(KpiCode::parse(code).expect("code"), period)
    }

    fn settings(partitions: u32, replica_index: u32, replica_count: u32) -> AggregatorSettings {
        AggregatorSettings {
            partitions,
            replica_index,
            replica_count,
            ..Default::default()
        }
    }

    #[test]
    fn a_topic_is_watched_from_its_announcement_until_its_ttl_runs_out() {
        let interest = Interest::tracking(&settings(1, 0, 1));
        let t0 = Instant::now();
        let watched = |at: Instant, key: &str| interest.with(at, |w| w.watched(key));
        assert!(!watched(t0, "a/minute"));
        interest.record(&[topic("a", Period::Minute)], t0);
        assert!(watched(t0, "a/minute"));
        assert!(!watched(t0, "a/hour"), "per period");
        assert!(watched(t0 + TTL - Duration::from_millis(1), "a/minute"));
        assert!(!watched(t0 + TTL, "a/minute"));
        // A refresh extends it.
        interest.record(&[topic("a", Period::Minute)], t0 + REFRESH);
        assert!(watched(t0 + TTL, "a/minute"));
        interest.expire(t0 + REFRESH + TTL);
        assert!(
            !watched(t0 + REFRESH + TTL - Duration::from_millis(1), "a/minute"),
            "expired entries are gone"
        );
        assert!(Interest::everything().with(t0, |w| w.watched("anything/day")));
    }

    #[test]
    fn a_newly_watched_topic_reaches_its_partitions_worker_once() {
        let s = settings(4, 0, 1);
        let interest = Interest::tracking(&s);
        let a = topic("a", Period::Minute);
        let p = kpi_core::partition_of(&a.code, 4);
        let t0 = Instant::now();
        interest.record(&[a.clone(), a.clone()], t0);
        assert_eq!(interest.take_fresh(p), vec!["a/minute".to_string()]);
        interest.record(std::slice::from_ref(&a), t0 + REFRESH);
        assert!(interest.take_fresh(p).is_empty(), "a refresh is not news");
        interest.record(
            std::slice::from_ref(&a),
            t0 + REFRESH + TTL + Duration::from_secs(1),
        );
        assert_eq!(
            interest.take_fresh(p).len(),
            1,
            "watched again after it lapsed"
        );
    }

    /// A holder (or anything on the bus) announcing a million and more
    /// distinct valid topics: the table stops at its bound, the topics it
    /// took stay watched, the newly-watched list for the worker stays
    /// bounded, and once announcements stop everything is forgotten.
    #[test]
    fn a_flood_of_distinct_topics_is_bounded_and_forgotten() {
        let interest = Interest::tracking(&settings(1, 0, 1));
        let t0 = Instant::now();
        let total = MAX_WATCHED + 1000;
        let mut chunk = Vec::with_capacity(10_000);
        for i in 0..total {
            chunk.push(topic(&format!("flood{i}"), Period::Minute));
            if chunk.len() == 10_000 || i + 1 == total {
                interest.record(&chunk, t0);
                chunk.clear();
            }
        }
        assert_eq!(interest.watched_count(), MAX_WATCHED);
        let watched = |key: &str| interest.with(t0, |w| w.watched(key));
        assert!(watched("flood0/minute"));
        assert!(watched(&format!("flood{}/minute", MAX_WATCHED - 1)));
        assert!(
            !watched(&format!("flood{}/minute", MAX_WATCHED)),
            "past the bound"
        );
        assert_eq!(interest.take_fresh(0).len(), MAX_FRESH);
        assert!(interest.take_fresh(0).is_empty());
        interest.expire(t0 + TTL);
        assert_eq!(interest.watched_count(), 0);
        // Room again for a topic announced now.
        interest.record(&[topic("late", Period::Day)], t0 + TTL);
        assert!(interest.with(t0 + TTL, |w| w.watched("late/day")));
    }

    #[test]
    fn only_this_replicas_partitions_are_recorded() {
        // Two replicas of 2 partitions: each records only its own topics.
        let codes: Vec<Topic> = (0..50)
            .map(|i| topic(&format!("k{i}"), Period::Hour))
            .collect();
        let mine = |index| {
            let interest = Interest::tracking(&settings(2, index, 2));
            interest.record(&codes, Instant::now());
            codes
                .iter()
                .filter(|t| interest.with(Instant::now(), |w| w.watched(&t.to_string())))
                .count()
        };
        let (a, b) = (mine(0), mine(1));
        assert_eq!(a + b, codes.len());
        assert!(a > 0 && b > 0, "{a} / {b}");
    }
}
