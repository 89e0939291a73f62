//! The in-process bus: the same semantics as the NATS one, held in memory, for one-process use.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
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
/// Dedup entries are pruned when the table grows past this many.
const DEDUP_PRUNE_AT: usize = 100_000;

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
    /// Per partition: (seq, payload), ascending.
    partitions: HashMap<u32, Vec<(u64, Bytes)>>,
    dedup: HashMap<String, (u64, Instant)>,
    updates: HashMap<String, VecDeque<Bytes>>,
    history: HashMap<String, VecDeque<Bytes>>,
    /// Ids of stored history records, as JetStream's duplicate window keeps them.
    history_ids: HashMap<String, Instant>,
    live: HashMap<String, broadcast::Sender<Bytes>>,
    checkpoints: HashMap<u32, Bytes>,
    named: HashMap<String, Bytes>,
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
        let partition = partition_of(&ev.kpi, self.inner.config.partitions);
        let window = self.inner.config.duplicate_window;
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
        if st.dedup.len() > DEDUP_PRUNE_AT {
            st.dedup
                .retain(|_, (_, at)| now.duration_since(*at) < window);
        }
        st.last_seq += 1;
        let seq = st.last_seq;
        st.dedup.insert(ev.event_id.clone(), (seq, now));
        st.partitions
            .entry(partition)
            .or_default()
            .push((seq, Bytes::from(ev.to_json())));
        drop(st);
        self.inner.appended.notify_waiters();
        Ok(Appended {
            seq,
            duplicate: false,
        })
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
        let subject = topic.updates_subject();
        let keep = self.inner.config.updates_per_topic.max(1) as usize;
        let mut st = self.inner.state.lock();
        push_bounded(
            st.updates.entry(subject.clone()).or_default(),
            payload.clone(),
            keep,
        );
        if let Some(tx) = st.live.get(&subject) {
            if tx.send(payload).is_err() {
                // Nobody listens any more: forget the channel, as NATS forgets interest.
                st.live.remove(&subject);
            }
        }
        Ok(())
    }

    pub(crate) async fn publish_all(&self, items: &[Outbound]) -> Result<(), PartialPublish> {
        for (stored, item) in items.iter().enumerate() {
            let result = match item {
                Outbound::Update { topic, payload } => {
                    self.publish_update(topic, payload.clone()).await
                }
                Outbound::History { topic, payload, id } => {
                    if self.seen_history_id(id) {
                        continue;
                    }
                    self.publish_history(topic, payload.clone()).await
                }
            };
            result.map_err(|error| PartialPublish { stored, error })?;
        }
        Ok(())
    }

    /// Records `id`; true if it was recorded within the duplicate window.
    fn seen_history_id(&self, id: &str) -> bool {
        let window = self.inner.config.duplicate_window;
        let now = Instant::now();
        let mut st = self.inner.state.lock();
        if st
            .history_ids
            .get(id)
            .is_some_and(|at| now.duration_since(*at) < window)
        {
            return true;
        }
        if st.history_ids.len() > DEDUP_PRUNE_AT {
            st.history_ids
                .retain(|_, at| now.duration_since(*at) < window);
        }
        st.history_ids.insert(id.to_string(), now);
        false
    }

    pub(crate) async fn publish_history(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let keep = self.inner.config.history_per_topic.max(1) as usize;
        let mut st = self.inner.state.lock();
        push_bounded(
            st.history.entry(topic.history_subject()).or_default(),
            payload,
            keep,
        );
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
            .get(&topic.updates_subject())
            .and_then(|q| q.back().cloned()))
    }

    pub(crate) async fn recent_updates(
        &self,
        topic: &Topic,
        max: usize,
    ) -> Result<Vec<Bytes>, BusError> {
        let st = self.inner.state.lock();
        Ok(tail(st.updates.get(&topic.updates_subject()), max))
    }

    pub(crate) async fn history(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>, BusError> {
        let st = self.inner.state.lock();
        Ok(tail(st.history.get(&topic.history_subject()), max))
    }

    pub(crate) async fn known_kpis(&self, max: usize) -> Result<Vec<KpiCode>, BusError> {
        let st = self.inner.state.lock();
        let codes: BTreeSet<KpiCode> = st
            .updates
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .filter_map(|(subject, _)| Topic::from_updates_subject(subject))
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
        let idx = log.partition_point(|(seq, _)| *seq < self.next_seq);
        let (seq, payload) = log.get(idx)?;
        let pending = (log.len() - idx - 1) as u64;
        self.next_seq = seq + 1;
        Some(StoredEvent {
            seq: *seq,
            pending,
            record: EventRecord::from_json(payload).map_err(|e| e.to_string()),
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
