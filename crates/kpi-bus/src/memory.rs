//! The in-process bus: the same semantics as the NATS one, held in memory, for one-process use.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kpi_core::subject::StateName;
use kpi_core::{partition_of, EventRecord, KpiCode, Topic};
use parking_lot::Mutex;
use tokio::sync::{broadcast, Notify};

use crate::{
    Appended, BusConfig, BusError, EventFeed, FeedInner, Live, Outbound, PartialPublish,
    StoredEvent, SubInner, UpdateSubscription,
};

/// Live-subscriber buffer per topic; a subscriber further behind gets [`Live::Gap`].
const LIVE_BUFFER: usize = 1024;
/// Dedup entries are pruned when the table grows past this many (or past
/// twice what the last pruning left, so pruning stays amortized).
const DEDUP_PRUNE_AT: usize = 100_000;
/// Expired events are looked for at most this often.
const EXPIRY_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: BusConfig,
    state: Mutex<State>,
    appended: Notify,
    broadcast: broadcast::Sender<Bytes>,
}

#[derive(Default)]
struct State {
    /// Log-wide sequence, like a JetStream stream sequence.
    last_seq: u64,
    /// Per partition: events ascending by seq, with when each was stored;
    /// the same age and byte limits as the NATS stream apply.
    partitions: HashMap<u32, VecDeque<Stored>>,
    /// Bytes of all stored events.
    event_bytes: usize,
    expiry_checked: Option<Instant>,
    dedup: HashMap<String, (u64, Instant)>,
    /// Dedup entries left by the last pruning.
    dedup_kept: usize,
    /// Stored updates per stored subject; live-only ones never land here.
    updates: HashMap<String, VecDeque<Bytes>>,
    /// Per topic: bucket start -> its latest record.
    history: HashMap<String, BTreeMap<i64, Bytes>>,
    live: HashMap<String, broadcast::Sender<Bytes>>,
    checkpoints: HashMap<u32, Bytes>,
    named: HashMap<String, Bytes>,
}

struct Stored {
    seq: u64,
    at: Instant,
    /// For feeds that start at a time, as JetStream's stored timestamp.
    stored_at: DateTime<Utc>,
    payload: Bytes,
}

impl State {
    /// Drops events older than the max age, as JetStream's `max_age` does.
    fn expire_events(&mut self, now: Instant, max_age: std::time::Duration) {
        if self
            .expiry_checked
            .is_some_and(|at| now.duration_since(at) < EXPIRY_CHECK)
        {
            return;
        }
        self.expiry_checked = Some(now);
        let mut freed = 0;
        for log in self.partitions.values_mut() {
            while log
                .front()
                .is_some_and(|e| now.duration_since(e.at) >= max_age)
            {
                if let Some(e) = log.pop_front() {
                    freed += e.payload.len();
                }
            }
        }
        self.event_bytes = self.event_bytes.saturating_sub(freed);
    }

    /// Hands an update to the topic's live subscribers, storing nothing.
    fn send_live(&mut self, topic: &Topic, payload: Bytes) {
        let subject = topic.updates_subject();
        if let Some(tx) = self.live.get(&subject) {
            if tx.send(payload).is_err() {
                // Nobody listens any more: forget the channel, as NATS forgets interest.
                self.live.remove(&subject);
            }
        }
    }

    fn prune_dedup(&mut self, now: Instant, window: std::time::Duration) {
        if self.dedup.len() > DEDUP_PRUNE_AT.max(2 * self.dedup_kept) {
            self.dedup
                .retain(|_, (_, at)| now.duration_since(*at) < window);
            self.dedup_kept = self.dedup.len();
        }
    }
}

impl MemoryBus {
    pub fn new(config: BusConfig) -> Self {
        let (broadcast, _) = broadcast::channel(256);
        MemoryBus {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                appended: Notify::new(),
                broadcast,
            }),
        }
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Topics with at least one live subscriber (what NATS would show as subscriptions).
    pub fn live_subscriptions(&self) -> usize {
        let st = self.inner.state.lock();
        st.live.values().filter(|s| s.receiver_count() > 0).count()
    }

    pub(crate) async fn append_event(&self, ev: &EventRecord) -> Result<Appended, BusError> {
        let config = &self.inner.config;
        let partition = partition_of(&ev.kpi, config.partitions);
        let window = config.duplicate_window;
        let mut st = self.inner.state.lock();
        let now = Instant::now();
        if let Some((seq, at)) = st.dedup.get(&ev.event_id) {
            if now.duration_since(*at) < window {
                return Ok(Appended {
                    seq: *seq,
                    duplicate: true,
                });
            }
        }
        st.prune_dedup(now, window);
        st.expire_events(now, config.events_max_age);
        let payload = Bytes::from(ev.to_json());
        let limit = usize::try_from(config.events_max_bytes).unwrap_or(0);
        if st.event_bytes + payload.len() > limit {
            return Err(BusError::Full(format!(
                "the event log holds its limit of {limit} bytes; retry later"
            )));
        }
        st.last_seq += 1;
        let seq = st.last_seq;
        st.dedup.insert(ev.event_id.clone(), (seq, now));
        st.event_bytes += payload.len();
        st.partitions
            .entry(partition)
            .or_default()
            .push_back(Stored {
                seq,
                at: now,
                stored_at: Utc::now(),
                payload,
            });
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    /// One message per event, as [`MemoryBus::append_event`]: this bus has
    /// no per-message cost to save, and keeps its exact id table.
    pub(crate) async fn append_events(
        &self,
        events: &[EventRecord],
    ) -> Vec<Result<Appended, BusError>> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            out.push(self.append_event(ev).await);
        }
        out
    }

    pub(crate) async fn event_feed_from_time(
        &self,
        partition: u32,
        since: DateTime<Utc>,
    ) -> Result<EventFeed, BusError> {
        let next_seq = {
            let st = self.inner.state.lock();
            st.partitions
                .get(&partition)
                .and_then(|log| log.iter().find(|e| e.stored_at >= since))
                .map_or(st.last_seq + 1, |e| e.seq)
        };
        self.event_feed(partition, next_seq).await
    }

    pub(crate) async fn last_event_seq(&self, partition: u32) -> Result<u64, BusError> {
        let st = self.inner.state.lock();
        Ok(st
            .partitions
            .get(&partition)
            .and_then(|log| log.back())
            .map_or(0, |e| e.seq))
    }

    pub(crate) async fn event_feed(
        &self,
        partition: u32,
        from_seq: u64,
    ) -> Result<EventFeed, BusError> {
        Ok(EventFeed {
            inner: FeedInner::Memory(MemoryFeed {
                bus: self.clone(),
                partition,
                next_seq: from_seq.max(1),
            }),
        })
    }

    pub(crate) async fn publish_update(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let keep = self.inner.config.updates_per_topic.max(1) as usize;
        let mut st = self.inner.state.lock();
        push_bounded(
            st.updates.entry(topic.stored_subject()).or_default(),
            payload.clone(),
            keep,
        );
        st.send_live(topic, payload);
        Ok(())
    }

    pub(crate) async fn publish_all(&self, items: &[Outbound]) -> Result<(), PartialPublish> {
        for (stored, item) in items.iter().enumerate() {
            let result = match item {
                Outbound::Live { topic, payload } => {
                    self.inner.state.lock().send_live(topic, payload.clone());
                    Ok(())
                }
                Outbound::Update { topic, payload } => {
                    self.publish_update(topic, payload.clone()).await
                }
                // A bucket keeps only its latest record, so a retry is harmless.
                Outbound::History { topic, payload, .. } => {
                    self.publish_history(topic, payload.clone()).await
                }
            };
            result.map_err(|error| PartialPublish { stored, error })?;
        }
        Ok(())
    }

    pub(crate) async fn publish_history(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let bucket = crate::history_bucket(&payload)?;
        let keep = self.inner.config.history_per_topic.max(1) as usize;
        let mut st = self.inner.state.lock();
        let buckets = st.history.entry(topic.history_subject()).or_default();
        buckets.insert(bucket, payload);
        while buckets.len() > keep {
            buckets.pop_first();
        }
        Ok(())
    }

    pub(crate) async fn save_state(
        &self,
        name: &StateName,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.inner
            .state
            .lock()
            .named
            .insert(name.as_str().to_string(), payload);
        Ok(())
    }

    pub(crate) async fn load_state(&self, name: &StateName) -> Result<Option<Bytes>, BusError> {
        Ok(self.inner.state.lock().named.get(name.as_str()).cloned())
    }

    pub(crate) async fn save_checkpoint(
        &self,
        partition: u32,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.inner
            .state
            .lock()
            .checkpoints
            .insert(partition, payload);
        Ok(())
    }

    pub(crate) async fn load_checkpoint(&self, partition: u32) -> Result<Option<Bytes>, BusError> {
        Ok(self.inner.state.lock().checkpoints.get(&partition).cloned())
    }

    pub(crate) async fn subscribe_updates(
        &self,
        topic: &Topic,
    ) -> Result<UpdateSubscription, BusError> {
        let mut st = self.inner.state.lock();
        let rx = st
            .live
            .entry(topic.updates_subject())
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe();
        Ok(UpdateSubscription {
            inner: SubInner::Memory(MemorySubscription {
                rx,
                release: Some((Arc::downgrade(&self.inner), topic.updates_subject())),
            }),
        })
    }

    pub(crate) async fn last_update(&self, topic: &Topic) -> Result<Option<Bytes>, BusError> {
        let st = self.inner.state.lock();
        Ok(st
            .updates
            .get(&topic.stored_subject())
            .and_then(|q| q.back().cloned()))
    }

    pub(crate) async fn recent_updates(
        &self,
        topic: &Topic,
        max: usize,
    ) -> Result<Vec<Bytes>, BusError> {
        let st = self.inner.state.lock();
        Ok(tail(st.updates.get(&topic.stored_subject()), max))
    }

    pub(crate) async fn history(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>, BusError> {
        let st = self.inner.state.lock();
        let Some(buckets) = st.history.get(&topic.history_subject()) else {
            return Ok(Vec::new());
        };
        let mut newest: Vec<Bytes> = buckets.values().rev().take(max).cloned().collect();
        newest.reverse();
        Ok(newest)
    }

    pub(crate) async fn known_kpis(&self, max: usize) -> Result<Vec<KpiCode>, BusError> {
        let st = self.inner.state.lock();
        let codes: BTreeSet<KpiCode> = st
            .updates
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .filter_map(|(subject, _)| Topic::from_stored_subject(subject))
            .map(|t| t.code)
            .collect();
        Ok(codes.into_iter().take(max).collect())
    }

    pub(crate) async fn broadcast(&self, payload: Bytes) -> Result<(), BusError> {
        // No receivers is fine: nobody to tell.
        let _ = self.inner.broadcast.send(payload);
        Ok(())
    }

    pub(crate) async fn subscribe_broadcast(&self) -> Result<UpdateSubscription, BusError> {
        Ok(UpdateSubscription {
            inner: SubInner::Memory(MemorySubscription {
                rx: self.inner.broadcast.subscribe(),
                release: None,
            }),
        })
    }
}

fn push_bounded(q: &mut VecDeque<Bytes>, item: Bytes, keep: usize) {
    q.push_back(item);
    while q.len() > keep {
        q.pop_front();
    }
}

fn tail(q: Option<&VecDeque<Bytes>>, max: usize) -> Vec<Bytes> {
    match q {
        Some(q) => q
            .iter()
            .skip(q.len().saturating_sub(max))
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

pub struct MemoryFeed {
    bus: MemoryBus,
    partition: u32,
    next_seq: u64,
}

impl MemoryFeed {
    pub(crate) async fn next(&mut self) -> Option<Result<StoredEvent, BusError>> {
        let inner = self.bus.inner.clone();
        loop {
            let notified = inner.appended.notified();
            tokio::pin!(notified);
            // Register before looking, so an append between the look and the
            // wait still wakes us.
            notified.as_mut().enable();
            if let Some(ev) = self.take() {
                return Some(Ok(ev));
            }
            notified.await;
        }
    }

    fn take(&mut self) -> Option<StoredEvent> {
        let st = self.bus.inner.state.lock();
        let log = st.partitions.get(&self.partition)?;
        let idx = log.partition_point(|e| e.seq < self.next_seq);
        let e = log.get(idx)?;
        let pending = (log.len() - idx - 1) as u64;
        self.next_seq = e.seq + 1;
        Some(StoredEvent {
            seq: e.seq,
            pending,
            complete: true,
            record: EventRecord::from_json(&e.payload).map_err(|e| e.to_string()),
        })
    }
}

pub struct MemorySubscription {
    rx: broadcast::Receiver<Bytes>,
    /// The bus and subject whose channel goes when its last subscriber does:
    /// a subject nobody listens to and nothing was stored on costs nothing.
    release: Option<(std::sync::Weak<Inner>, String)>,
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let Some((inner, subject)) = self.release.take() else {
            return;
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut st = inner.state.lock();
        // Under the lock no one can subscribe meanwhile; ours is the last receiver.
        if st
            .live
            .get(&subject)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            st.live.remove(&subject);
        }
    }
}

impl MemorySubscription {
    pub(crate) async fn next(&mut self) -> Option<Live> {
        match self.rx.recv().await {
            Ok(b) => Some(Live::Message(b)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Live::Gap),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_core::Period;

    #[tokio::test]
    async fn a_subject_nobody_watches_and_nothing_was_stored_on_costs_nothing() {
        let bus = MemoryBus::new(BusConfig::default());
        let topics: Vec<Topic> = (0..100)
            .map(|i| {
                Topic::new(
                    KpiCode::parse(&format!("k{i}")).expect("code"),
                    Period::Minute,
                )
            })
            .collect();
        let mut subs = Vec::new();
        for t in &topics {
            subs.push(bus.subscribe_updates(t).await.expect("subscribe"));
            subs.push(bus.subscribe_updates(t).await.expect("subscribe"));
        }
        assert_eq!(bus.inner.state.lock().live.len(), 100);
        // One of two subscribers left: the channel stays for the other.
        subs.truncate(subs.len() - 1);
        subs.retain({
            let mut keep = false;
            move |_| {
                keep = !keep;
                keep
            }
        });
        assert_eq!(bus.inner.state.lock().live.len(), 100);
        drop(subs);
        assert_eq!(bus.inner.state.lock().live.len(), 0);
    }
}
