//! The registry of topics this gateway watches, and their upstream subscriptions.
//!
//! A topic is subscribed upstream when its first local client arrives and
//! unsubscribed `linger` after its last one leaves (a client coming back
//! inside the linger keeps it), so the gateway holds exactly the upstream
//! interest its clients create. Starting a topic subscribes upstream *first*
//! and only then reads the stored recent updates, so no update can fall
//! between the two: anything published meanwhile is in both, and duplicates
//! are dropped by `seq`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kpi_bus::{Bus, Live, UpdateSubscription};
use kpi_core::Topic;
use parking_lot::Mutex;

use crate::outbox::{Outbox, SubId};
use crate::topic::{parse_batch, parse_seq, Start, TopicShared};
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
    topics: Mutex<HashMap<Topic, Arc<TopicShared>>>,
    closed: AtomicBool,
}

impl Hub {
    pub fn new(bus: Bus, linger: Duration, resume_window: usize) -> Hub {
        Hub {
            inner: Arc::new(HubInner {
                bus,
                linger,
                window: resume_window.max(1),
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
    pub async fn watch(&self, topic: Topic) -> Result<Interest, GatewayError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(GatewayError::ShuttingDown);
        }
        let shared = {
            let mut topics = self.inner.topics.lock();
            let shared = topics
                .entry(topic.clone())
                .or_insert_with(|| TopicShared::new(topic, self.inner.window))
                .clone();
            let mut st = shared.state.lock();
            st.holders += 1;
            // Cancels a pending linger expiry.
            st.linger_epoch += 1;
            drop(st);
            shared
        };
        // From here on, dropping `interest` (also on error) releases it.
        let interest = Interest {
            hub: self.clone(),
            topic: shared,
        };
        self.ensure_upstream(&interest.topic).await?;
        Ok(interest)
    }

    /// The topic if this gateway currently follows it upstream.
    pub fn watched(&self, topic: &Topic) -> Option<Arc<TopicShared>> {
        let topics = self.inner.topics.lock();
        let shared = topics.get(topic)?;
        let running = shared.state.lock().upstream.is_some();
        running.then(|| shared.clone())
    }

    /// Topics currently held (subscribed upstream or lingering).
    pub fn topic_count(&self) -> usize {
        self.inner.topics.lock().len()
    }

    /// Drops every upstream subscription and refuses new interest.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let drained: Vec<_> = self.inner.topics.lock().drain().map(|(_, t)| t).collect();
        for t in drained {
            if let Some(task) = t.state.lock().upstream.take() {
                task.abort();
            }
        }
    }

    async fn ensure_upstream(&self, shared: &Arc<TopicShared>) -> Result<(), GatewayError> {
        let _starting = shared.start.lock().await;
        if shared.state.lock().upstream.is_some() {
            return Ok(());
        }
        let bus = &self.inner.bus;
        // Subscribe first, read stored updates second: see the module docs.
        let sub = Held::new(bus.subscribe_updates(&shared.topic).await?);
        let recent = bus.recent_updates(&shared.topic, self.inner.window).await?;
        shared.apply(parse_batch(recent));
        let task = tokio::spawn(follow(shared.clone(), sub, bus.clone(), self.inner.window));
        let mut st = shared.state.lock();
        st.upstream = Some(task.abort_handle());
        drop(st);
        if self.inner.closed.load(Ordering::SeqCst) {
            // close() ran while we were starting and did not see this task.
            task.abort();
            return Err(GatewayError::ShuttingDown);
        }
        Ok(())
    }

    fn release(&self, shared: &Arc<TopicShared>) {
        let epoch = {
            let _topics = self.inner.topics.lock();
            let mut st = shared.state.lock();
            st.holders = st.holders.saturating_sub(1);
            if st.holders > 0 {
                return;
            }
            st.linger_epoch += 1;
            st.linger_epoch
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
        let task = {
            let mut topics = self.inner.topics.lock();
            let Some(current) = topics.get(&shared.topic) else {
                return;
            };
            if !Arc::ptr_eq(current, shared) {
                return;
            }
            let mut st = shared.state.lock();
            if st.holders > 0 || st.linger_epoch != epoch {
                return;
            }
            let task = st.upstream.take();
            drop(st);
            topics.remove(&shared.topic);
            task
        };
        if let Some(task) = task {
            tracing::debug!(topic = %shared.topic, "no local subscriber left, unsubscribing upstream");
            task.abort();
        }
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
    pub fn attach(self, outbox: &Outbox, sub: SubId, start: Start) -> Subscription {
        self.topic.attach(outbox, sub, start);
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
        self.outbox.remove_sub(self.sub);
    }
}

/// An upstream subscription, counted in the gauge exactly while it exists.
struct Held(UpdateSubscription);

impl Held {
    fn new(sub: UpdateSubscription) -> Held {
        crate::metrics::upstream_held(1.0);
        Held(sub)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        crate::metrics::upstream_held(-1.0);
    }
}

/// Follows one topic upstream until aborted: orders by seq, fills gaps from
/// the stored updates, fans out.
async fn follow(shared: Arc<TopicShared>, mut sub: Held, bus: Bus, window: usize) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match sub.0.next().await {
            Some(Live::Message(bytes)) => {
                let Some(seq) = parse_seq(&bytes) else {
                    tracing::warn!(topic = %shared.topic, "ignoring an upstream message that is not an update");
                    continue;
                };
                if shared.is_gap(seq) {
                    refill(&shared, &bus, window).await;
                }
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
                        sub = Held::new(s);
                        refill(&shared, &bus, window).await;
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
