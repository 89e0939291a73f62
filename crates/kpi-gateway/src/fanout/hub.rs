//! The registry of topics this gateway watches, and their upstream subscriptions.
//!
//! A topic is subscribed upstream when its first local client arrives and
//! unsubscribed `linger` after its last one leaves (a client coming back
//! inside the linger keeps it), so the gateway holds exactly the upstream
//! interest its clients create. Starting a topic subscribes upstream *first*
//! and only then reads the stored recent updates, so no update can fall
//! between the two: anything published meanwhile is in both, and duplicates
//! are dropped by `seq`.
//!
//! At most `max_topics` topics are held at once. At the cap a lingering
//! topic (nobody watches it) is dropped to make room; when every held topic
//! is watched, a new one is refused with [`GatewayError::TopicLimit`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kpi_bus::{Bus, Live, UpdateSubscription};
use kpi_core::Topic;
use parking_lot::Mutex;
use tokio::task::AbortHandle;

use crate::fanout::outbox::{Mode, Outbox, SubId};
use crate::fanout::topic::{parse_batch, parse_seq, Start, TopicShared};
use crate::GatewayError;

/// Longest pause between attempts to resubscribe after the bus dropped a subscription.
const MAX_RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    bus: Bus,
    linger: Duration,
    window: usize,
    /// Most topics held at once (watched or lingering).
    max_topics: usize,
    topics: Mutex<HashMap<Topic, Held>>,
    closed: AtomicBool,
}

/// One held topic and the hub's bookkeeping of it; only the hub touches these.
struct Held {
    topic: Arc<TopicShared>,
    /// Local interest: subscriptions plus requests being set up.
    holders: usize,
    /// Bumped on every change of interest, so a stale linger timer does nothing.
    linger_epoch: u64,
    /// The running upstream task, while subscribed upstream.
    upstream: Option<AbortHandle>,
    /// Serializes starting the upstream subscription.
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl Held {
    /// Stops following upstream; the gauge counts exactly the running ones.
    fn stop(&mut self) {
        if let Some(task) = self.upstream.take() {
            task.abort();
            crate::metrics::upstream_held(-1.0);
        }
    }
}

impl Hub {
    /// A hub keeping `resume_window` updates per topic and holding at most
    /// `max_topics` topics (lingering ones make room for new ones).
    pub fn new(bus: Bus, linger: Duration, resume_window: usize, max_topics: usize) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                bus,
                linger,
                window: resume_window.max(1),
                max_topics: max_topics.max(1),
                topics: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Registers local interest in `topic`, subscribing upstream if it is the
    /// first. The interest lasts until the returned value is dropped.
    /// [`GatewayError::TopicLimit`] when `max_topics` are watched.
    pub async fn watch(&self, topic: Topic) -> Result<Interest, GatewayError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(GatewayError::ShuttingDown);
        }
        let (shared, starting) = {
            let mut topics = self.inner.topics.lock();
            if !topics.contains_key(&topic) && topics.len() >= self.inner.max_topics {
                make_room(&mut topics, self.inner.max_topics)?;
            }
            let held = topics.entry(topic.clone()).or_insert_with(|| Held {
                topic: TopicShared::new(topic, self.inner.window),
                holders: 0,
                linger_epoch: 0,
                upstream: None,
                starting: Arc::new(tokio::sync::Mutex::new(())),
            });
            held.holders += 1;
            // Cancels a pending linger expiry.
            held.linger_epoch += 1;
            (held.topic.clone(), held.starting.clone())
        };
        // From here on, dropping `interest` (also on error) releases it.
        let interest = Interest {
            hub: self.clone(),
            topic: shared,
        };
        self.ensure_upstream(&interest.topic, &starting).await?;
        Ok(interest)
    }

    /// The topic if this gateway currently follows it upstream.
    pub fn watched(&self, topic: &Topic) -> Option<Arc<TopicShared>> {
        let topics = self.inner.topics.lock();
        let held = topics.get(topic)?;
        held.upstream.is_some().then(|| held.topic.clone())
    }

    /// Topics currently held (subscribed upstream or lingering).
    pub fn topic_count(&self) -> usize {
        self.inner.topics.lock().len()
    }

    /// Drops every upstream subscription and refuses new interest.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let drained: Vec<Held> = self.inner.topics.lock().drain().map(|(_, t)| t).collect();
        for mut held in drained {
            held.stop();
        }
    }

    async fn ensure_upstream(
        &self,
        shared: &Arc<TopicShared>,
        starting: &tokio::sync::Mutex<()>,
    ) -> Result<(), GatewayError> {
        let _starting = starting.lock().await;
        if self.watched(&shared.topic).is_some() {
            return Ok(());
        }
        let bus = &self.inner.bus;
        // Subscribe first, read stored updates second: see the module docs.
        let sub = bus.subscribe_updates(&shared.topic).await?;
        let recent = bus.recent_updates(&shared.topic, self.inner.window).await?;
        shared.apply(parse_batch(recent));
        let task = tokio::spawn(follow(shared.clone(), sub, bus.clone(), self.inner.window));
        let mut topics = self.inner.topics.lock();
        match topics.get_mut(&shared.topic) {
            // Our interest keeps the entry: only close() removes a held one.
            Some(held)
                if Arc::ptr_eq(&held.topic, shared)
                    && !self.inner.closed.load(Ordering::SeqCst) =>
            {
                held.upstream = Some(task.abort_handle());
                crate::metrics::upstream_held(1.0);
                Ok(())
            }
            _ => {
                task.abort();
                Err(GatewayError::ShuttingDown)
            }
        }
    }

    fn release(&self, shared: &Arc<TopicShared>) {
        let epoch = {
            let mut topics = self.inner.topics.lock();
            let Some(held) = topics.get_mut(&shared.topic) else {
                return;
            };
            if !Arc::ptr_eq(&held.topic, shared) {
                return;
            }
            held.holders = held.holders.saturating_sub(1);
            if held.holders > 0 {
                return;
            }
            held.linger_epoch += 1;
            held.linger_epoch
        };
        let linger = self.inner.linger;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if !linger.is_zero() && !self.inner.closed.load(Ordering::SeqCst) => {
                let hub = self.clone();
                let shared = shared.clone();
                rt.spawn(async move {
                    tokio::time::sleep(linger).await;
                    hub.expire(&shared, epoch);
                });
            }
            _ => self.expire(shared, epoch),
        }
    }

    /// Drops the topic if nobody came back since `epoch`.
    fn expire(&self, shared: &Arc<TopicShared>, epoch: u64) {
        let mut topics = self.inner.topics.lock();
        let Some(held) = topics.get(&shared.topic) else {
            return;
        };
        if !Arc::ptr_eq(&held.topic, shared) || held.holders > 0 || held.linger_epoch != epoch {
            return;
        }
        if let Some(mut held) = topics.remove(&shared.topic) {
            tracing::debug!(topic = %shared.topic, "no local subscriber left, unsubscribing upstream");
            held.stop();
        }
    }
}

/// At the cap: drops one lingering topic (nobody watches it) to make room,
/// or refuses when every held topic is watched.
fn make_room(topics: &mut HashMap<Topic, Held>, max: usize) -> Result<(), GatewayError> {
    let idle = topics
        .iter()
        .find(|(_, held)| held.holders == 0)
        .map(|(topic, _)| topic.clone());
    match idle.and_then(|topic| topics.remove(&topic)) {
        Some(mut held) => {
            held.stop();
            Ok(())
        }
        None => Err(GatewayError::TopicLimit { max }),
    }
}

/// Local interest in a topic: keeps it subscribed upstream while it lives.
pub struct Interest {
    hub: Hub,
    topic: Arc<TopicShared>,
}

impl Interest {
    pub fn topic(&self) -> &Arc<TopicShared> {
        &self.topic
    }

    /// Becomes a subscription of `outbox`: queues the first messages (see
    /// [`TopicShared`]) and then every update.
    pub fn attach(self, outbox: &Outbox, sub: SubId, start: Start, mode: Mode) -> Subscription {
        self.topic.attach_as(outbox, sub, start, mode);
        Subscription {
            outbox: outbox.clone(),
            sub,
            interest: self,
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.hub.release(&self.topic);
    }
}

/// A connection's subscription to a topic; dropping it unsubscribes.
pub struct Subscription {
    outbox: Outbox,
    sub: SubId,
    interest: Interest,
}

impl Subscription {
    pub fn id(&self) -> SubId {
        self.sub
    }

    pub fn topic(&self) -> &Arc<TopicShared> {
        &self.interest.topic
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Fields drop after this, so the interest is released after detaching.
        self.interest.topic.detach(&self.outbox, self.sub);
    }
}

/// Follows one topic upstream until aborted: orders by seq, fills gaps from
/// the stored updates, fans out.
async fn follow(shared: Arc<TopicShared>, mut sub: UpdateSubscription, bus: Bus, window: usize) {
    let mut backoff = Duration::from_millis(100);
    // Until the subscription's first message, a gap is expected and the
    // stored updates cannot fill it: they were read after subscribing, and
    // an update is published live only once stored, so every stored update
    // missing here comes through the subscription. The gap is the live-only
    // updates published before it (the store policy), gone for good.
    let mut heard = false;
    loop {
        match sub.next().await {
            Some(Live::Message(bytes)) => {
                let Some(seq) = parse_seq(&bytes) else {
                    tracing::warn!(topic = %shared.topic, "ignoring an upstream message that is not an update");
                    continue;
                };
                if heard && shared.is_gap(seq) {
                    refill(&shared, &bus, window).await;
                }
                heard = true;
                shared.apply(vec![(seq, bytes)]);
                backoff = Duration::from_millis(100);
            }
            Some(Live::Gap) => refill(&shared, &bus, window).await,
            None => {
                tracing::warn!(topic = %shared.topic, "upstream subscription ended; resubscribing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_RESUBSCRIBE_BACKOFF);
                match bus.subscribe_updates(&shared.topic).await {
                    Ok(s) => {
                        sub = s;
                        refill(&shared, &bus, window).await;
                        heard = false;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %shared.topic, error = %e, "resubscribe failed")
                    }
                }
            }
        }
    }
}

/// Fetches the stored recent updates to cover a gap; what the bus no longer
/// has is skipped (subscribers then get the newer values, never older ones).
async fn refill(shared: &TopicShared, bus: &Bus, window: usize) {
    match bus.recent_updates(&shared.topic, window).await {
        Ok(recent) => shared.apply(parse_batch(recent)),
        Err(e) => tracing::warn!(topic = %shared.topic, error = %e, "cannot refill a gap"),
    }
}
