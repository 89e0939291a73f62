//! The bus between services: durable events, per-topic updates with history, checkpoints, live subscriptions.
//!
//! Two implementations share one API and one conformance suite
//! (`tests/conformance.rs`): [`nats`] over NATS JetStream for real
//! deployments, and [`memory`] for `kpi-stack` on a laptop and for fast tests.
//! `Bus` is an enum rather than a trait object so async methods stay plain.

pub mod config;
pub mod error;
pub mod memory;
pub mod nats;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kpi_core::subject::StateName;
use kpi_core::{EventRecord, KpiCode, Topic};

pub use config::BusConfig;
pub use error::BusError;

/// Where an acknowledged event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Position in the event log (JetStream stream sequence).
    pub seq: u64,
    /// The same `event_id` was stored before, inside the duplicate window; nothing new was stored.
    pub duplicate: bool,
}

/// An event read back from the log, in log order.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Position in the event log; feeds resume from a position + 1.
    pub seq: u64,
    /// Events of this partition still behind this one when it was delivered;
    /// 0 means the reader has caught up with the log. The log counts stored
    /// messages, so all events of one batch message carry that message's count.
    pub pending: u64,
    /// The last event of its stored message. A batch message holds many
    /// events under one `seq`; a reader that saves its position must do so
    /// only after a complete event, or a restart would skip the rest of the
    /// message. An event stored alone is always complete.
    pub complete: bool,
    /// The event, or why its payload could not be decoded (counted, skipped).
    pub record: Result<EventRecord, String>,
}

/// A live item on an update subscription.
#[derive(Debug, Clone)]
pub enum Live {
    Message(Bytes),
    /// The bus dropped messages for this subscriber (it fell behind): the
    /// receiver must refetch the latest value rather than trust continuity.
    Gap,
}

/// A message the aggregator publishes with [`Bus::publish_all`].
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An update for live subscribers only: not stored, not acknowledged.
    /// `last_update` and `recent_updates` never return it.
    Live { topic: Topic, payload: Bytes },
    /// An update stored in the topic's bounded update history and, once
    /// stored, published to live subscribers. A retry may store it twice;
    /// readers order and deduplicate by its `seq`.
    Update { topic: Topic, payload: Bytes },
    /// A closed bucket's record (an `UpdateMessage`); the history keeps the
    /// latest record of each bucket. `id` identifies it across retries.
    History {
        topic: Topic,
        payload: Bytes,
        id: String,
    },
}

impl Outbound {
    pub fn topic(&self) -> &Topic {
        match self {
            Outbound::Live { topic, .. }
            | Outbound::Update { topic, .. }
            | Outbound::History { topic, .. } => topic,
        }
    }

    /// Whether the bus stores it (and so acknowledges it): everything but
    /// [`Outbound::Live`].
    pub fn is_stored(&self) -> bool {
        !matches!(self, Outbound::Live { .. })
    }
}

/// [`Bus::publish_all`] stopped at a failure.
#[derive(Debug)]
pub struct PartialPublish {
    /// Leading items known to be stored; the caller retries the rest.
    pub stored: usize,
    pub error: BusError,
}

#[derive(Clone)]
pub enum Bus {
    Memory(memory::MemoryBus),
    // Boxed: the NATS client and stream handles are large, the enum is cloned often.
    Nats(std::sync::Arc<nats::NatsBus>),
}

impl Bus {
    /// An in-process bus with the given limits.
    pub fn memory(config: BusConfig) -> Bus {
        Bus::Memory(memory::MemoryBus::new(config))
    }

    /// Connects to NATS and makes sure every stream exists with `config`.
    pub async fn connect_nats(url: &str, config: BusConfig) -> Result<Bus, BusError> {
        Ok(Bus::Nats(std::sync::Arc::new(
            nats::NatsBus::connect(url, config).await?,
        )))
    }

    pub fn config(&self) -> &BusConfig {
        match self {
            Bus::Memory(b) => b.config(),
            Bus::Nats(b) => b.config(),
        }
    }

    /// For `/readyz`: is the connection up right now.
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Nats(b) => b.is_connected(),
        }
    }

    /// Stores an event durably; returns once it is acknowledged. A repeated
    /// `event_id` within the duplicate window is reported, not stored again.
    pub async fn append_event(&self, ev: &EventRecord) -> Result<Appended, BusError> {
        match self {
            Bus::Memory(b) => b.append_event(ev).await,
            Bus::Nats(b) => b.append_event(ev).await,
        }
    }

    /// Stores many events; returns once all are acknowledged or one failed,
    /// with one result per event in input order. The NATS bus stores them
    /// in few messages (one per partition and chunk); an event's `seq` is its
    /// message's, and `duplicate` says the whole chunk was stored before (an
    /// exact retry). A failed chunk fails each of its events, so the caller
    /// reports them as in doubt. The memory bus stores them one by one.
    pub async fn append_events(&self, events: &[EventRecord]) -> Vec<Result<Appended, BusError>> {
        match self {
            Bus::Memory(b) => b.append_events(events).await,
            Bus::Nats(b) => b.append_events(events).await,
        }
    }

    /// Reads one partition's events in log order from the first one stored
    /// at or after `since`, and keeps following the log. For rebuilding what
    /// a checkpoint does not hold (the aggregator's duplicate window).
    pub async fn event_feed_from_time(
        &self,
        partition: u32,
        since: DateTime<Utc>,
    ) -> Result<EventFeed, BusError> {
        match self {
            Bus::Memory(b) => b.event_feed_from_time(partition, since).await,
            Bus::Nats(b) => b.event_feed_from_time(partition, since).await,
        }
    }

    /// Reads one partition's events in log order, starting at `from_seq`
    /// (1 = the beginning), and keeps following the log.
    pub async fn event_feed(&self, partition: u32, from_seq: u64) -> Result<EventFeed, BusError> {
        match self {
            Bus::Memory(b) => b.event_feed(partition, from_seq).await,
            Bus::Nats(b) => b.event_feed(partition, from_seq).await,
        }
    }

    /// Stores an update in the topic's bounded history and publishes it to
    /// the topic's live subscribers; returns once stored.
    pub async fn publish_update(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => b.publish_update(topic, payload).await,
            Bus::Nats(b) => b.publish_update(topic, payload).await,
        }
    }

    /// The last sequence of a partition's events in the log (0 = none): a
    /// reader that applied this far has caught up.
    pub async fn last_event_seq(&self, partition: u32) -> Result<u64, BusError> {
        match self {
            Bus::Memory(b) => b.last_event_seq(partition).await,
            Bus::Nats(b) => b.last_event_seq(partition).await,
        }
    }

    /// Stores a closed bucket (an `UpdateMessage`) in the topic's history:
    /// one record per bucket, a later one replacing an earlier one.
    pub async fn publish_history(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => b.publish_history(topic, payload).await,
            Bus::Nats(b) => b.publish_history(topic, payload).await,
        }
    }

    /// Publishes `items` in order, waiting for acknowledgements only after
    /// sending a window of them, so one round trip is paid per window rather
    /// than per message. Live subscribers see the [`Outbound::Live`] and
    /// [`Outbound::Update`] items in order; an `Update` reaches them only
    /// after it is stored, so nothing is seen live that a failure could
    /// leave unstored and a retry render differently.
    pub async fn publish_all(&self, items: &[Outbound]) -> Result<(), PartialPublish> {
        match self {
            Bus::Memory(b) => b.publish_all(items).await,
            Bus::Nats(b) => b.publish_all(items).await,
        }
    }

    /// Replaces the checkpoint of a partition.
    pub async fn save_checkpoint(&self, partition: u32, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => b.save_checkpoint(partition, payload).await,
            Bus::Nats(b) => b.save_checkpoint(partition, payload).await,
        }
    }

    pub async fn load_checkpoint(&self, partition: u32) -> Result<Option<Bytes>, BusError> {
        match self {
            Bus::Memory(b) => b.load_checkpoint(partition).await,
            Bus::Nats(b) => b.load_checkpoint(partition).await,
        }
    }

    /// Replaces the stored value `name` (a small, named piece of shared
    /// state such as maintenance mode, read by services when they start).
    pub async fn save_state(&self, name: &str, payload: Bytes) -> Result<(), BusError> {
        let name = check_state_name(name)?;
        match self {
            Bus::Memory(b) => b.save_state(&name, payload).await,
            Bus::Nats(b) => b.save_state(&name, payload).await,
        }
    }

    /// The stored value `name`, if one was ever saved.
    pub async fn load_state(&self, name: &str) -> Result<Option<Bytes>, BusError> {
        let name = check_state_name(name)?;
        match self {
            Bus::Memory(b) => b.load_state(&name).await,
            Bus::Nats(b) => b.load_state(&name).await,
        }
    }

    /// Subscribes to a topic's live updates; dropping the subscription unsubscribes.
    pub async fn subscribe_updates(&self, topic: &Topic) -> Result<UpdateSubscription, BusError> {
        match self {
            Bus::Memory(b) => b.subscribe_updates(topic).await,
            Bus::Nats(b) => b.subscribe_updates(topic).await,
        }
    }

    /// The latest stored update of a topic, if any.
    pub async fn last_update(&self, topic: &Topic) -> Result<Option<Bytes>, BusError> {
        match self {
            Bus::Memory(b) => b.last_update(topic).await,
            Bus::Nats(b) => b.last_update(topic).await,
        }
    }

    /// Up to `max` of the topic's most recent stored updates, oldest first.
    pub async fn recent_updates(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>, BusError> {
        match self {
            Bus::Memory(b) => b.recent_updates(topic, max).await,
            Bus::Nats(b) => b.recent_updates(topic, max).await,
        }
    }

    /// The newest `max` closed buckets of the topic (at most the configured
    /// `history_per_topic`), one record each, oldest first. Costs work in
    /// proportion to `max`, not to the stream.
    pub async fn history(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>, BusError> {
        match self {
            Bus::Memory(b) => b.history(topic, max).await,
            Bus::Nats(b) => b.history(topic, max).await,
        }
    }

    /// The KPI codes that have stored updates (in any period), sorted, at
    /// most `max` of them: what a dashboard offers to pick from.
    pub async fn known_kpis(&self, max: usize) -> Result<Vec<KpiCode>, BusError> {
        match self {
            Bus::Memory(b) => b.known_kpis(max).await,
            Bus::Nats(b) => b.known_kpis(max).await,
        }
    }

    /// Sends a system message to every gateway (not stored).
    pub async fn broadcast(&self, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => b.broadcast(payload).await,
            Bus::Nats(b) => b.broadcast(payload).await,
        }
    }

    pub async fn subscribe_broadcast(&self) -> Result<UpdateSubscription, BusError> {
        match self {
            Bus::Memory(b) => b.subscribe_broadcast().await,
            Bus::Nats(b) => b.subscribe_broadcast().await,
        }
    }

    /// Topics announced as watched live (NATS). `None` on the memory bus: it
    /// delivers every update live at no cost, so every topic counts as
    /// watched there.
    ///
    /// Over NATS, every holder of update subscriptions is asked to announce
    /// at once, so a starting aggregator learns what is watched well within
    /// [`kpi_core::interest::REFRESH`].
    pub async fn interest_feed(&self) -> Result<Option<InterestFeed>, BusError> {
        match self {
            Bus::Memory(_) => Ok(None),
            Bus::Nats(b) => Ok(Some(InterestFeed {
                inner: b.interest_feed().await?,
            })),
        }
    }
}

/// Announcements of watched topics (see [`kpi_core::interest`]).
pub struct InterestFeed {
    inner: nats::NatsInterestFeed,
}

impl InterestFeed {
    /// The next announcement's topics; waits for one. `None` when the bus is
    /// gone. An announcement that does not decode is logged and skipped.
    pub async fn next(&mut self) -> Option<Vec<Topic>> {
        self.inner.next().await
    }
}

/// A partition's events in log order.
pub struct EventFeed {
    inner: FeedInner,
}

enum FeedInner {
    Memory(memory::MemoryFeed),
    Nats(Box<nats::NatsFeed>),
}

impl EventFeed {
    /// The next event; waits for one. `None` only when the bus is gone.
    ///
    /// Dropping the returned future loses no event, but it abandons any
    /// recovery in progress (a stall check, reopening the consumer), so a
    /// caller that races `next` against a short timer should read the feed
    /// from its own task instead, as the aggregator's worker does.
    pub async fn next(&mut self) -> Option<Result<StoredEvent, BusError>> {
        match &mut self.inner {
            FeedInner::Memory(f) => f.next().await,
            FeedInner::Nats(f) => f.next().await,
        }
    }
}

/// Live updates of one topic (or broadcasts). Dropping it unsubscribes.
pub struct UpdateSubscription {
    inner: SubInner,
}

enum SubInner {
    Memory(memory::MemorySubscription),
    Nats(nats::NatsSubscription),
}

impl UpdateSubscription {
    /// The next message; `None` when the bus closed the subscription.
    pub async fn next(&mut self) -> Option<Live> {
        match &mut self.inner {
            SubInner::Memory(s) => s.next().await,
            SubInner::Nats(s) => s.next().await,
        }
    }
}

/// The bucket start (Unix seconds) a history record is for.
pub(crate) fn history_bucket(payload: &[u8]) -> Result<i64, BusError> {
    kpi_core::UpdateMessage::from_json(payload)
        .map(|m| m.bucket_start.timestamp())
        .map_err(|e| BusError::Invalid(format!("a history record must be an update message: {e}")))
}

/// A state name is one subject token, checked by kpi-core's [`StateName`].
fn check_state_name(name: &str) -> Result<StateName, BusError> {
    StateName::parse(name).map_err(|e| BusError::Setup(e.to_string()))
}
