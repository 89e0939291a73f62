//! Interest announcements over NATS: holders announce the topics they hold live subscriptions to, an aggregator reads them.
//!
//! The wire format and timings are kpi-core's [`kpi_core::interest`]. Every
//! [`NatsBus`](super::NatsBus) counts its held update subscriptions per
//! topic; the first subscription starts a task that announces all of them
//! every [`REFRESH`] and whenever someone asks on
//! [`INTEREST_QUERY_SUBJECT`]. The task ends when the bus is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use kpi_core::interest::{decode, encode, INTEREST_QUERY_SUBJECT, INTEREST_SUBJECT, REFRESH};
use kpi_core::Topic;
use parking_lot::Mutex;
use tokio_util::task::AbortOnDropHandle;

use crate::BusError;

/// An undecodable announcement is warned about at most this often; the rest
/// are logged at debug level and counted into the next warning.
const BAD_ANNOUNCEMENT_WARN_EVERY: Duration = Duration::from_secs(10);

/// The held update subscriptions of one bus, and its announcing task.
pub(crate) struct Interest {
    held: Arc<Held>,
    /// Started with the first held subscription, so processes that never
    /// hold one (ingest, the aggregator) are never asked to announce.
    announcer: tokio::sync::OnceCell<AbortOnDropHandle<()>>,
}

impl Interest {
    pub(crate) fn new() -> Interest {
        Interest {
            held: Arc::default(),
            announcer: tokio::sync::OnceCell::new(),
        }
    }

    /// Counts a subscription to `topic` that `client` has just sent its SUB
    /// for, and announces the topic on the same connection: NATS handles the
    /// SUB first, so whatever the announcement makes an aggregator publish
    /// reaches the new subscription. An announcement that cannot be sent is
    /// only logged: the next refresh repeats it.
    pub(crate) async fn hold(&self, client: &async_nats::Client, topic: &Topic) -> HeldTopic {
        let guard = self.held.take(topic);
        self.start_announcer(client).await;
        announce(client, std::slice::from_ref(topic)).await;
        guard
    }

    async fn start_announcer(&self, client: &async_nats::Client) {
        let started = self
            .announcer
            .get_or_try_init(|| async {
                let queries = client.subscribe(INTEREST_QUERY_SUBJECT).await?;
                let task = tokio::spawn(announce_held(client.clone(), self.held.clone(), queries));
                Ok::<_, async_nats::SubscribeError>(AbortOnDropHandle::new(task))
            })
            .await;
        if let Err(e) = started {
            // The next subscription tries again; until then only the
            // announcements made on subscribing go out.
            tracing::warn!(error = %e, "cannot listen for interest queries; refreshes wait for the next subscription");
        }
    }
}

/// Live update subscriptions held, per topic.
#[derive(Default)]
struct Held {
    counts: Mutex<HashMap<Topic, usize>>,
}

impl Held {
    fn take(self: &Arc<Self>, topic: &Topic) -> HeldTopic {
        *self.counts.lock().entry(topic.clone()).or_default() += 1;
        HeldTopic {
            held: self.clone(),
            topic: topic.clone(),
        }
    }

    fn topics(&self) -> Vec<Topic> {
        self.counts.lock().keys().cloned().collect()
    }
}

/// One held subscription's share of its topic's count; dropping it releases it.
pub(crate) struct HeldTopic {
    held: Arc<Held>,
    topic: Topic,
}

impl Drop for HeldTopic {
    fn drop(&mut self) {
        let mut counts = self.held.counts.lock();
        if let Some(n) = counts.get_mut(&self.topic) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.topic);
            }
        }
    }
}

/// Announces every held topic every [`REFRESH`] and on every query, until
/// aborted or the connection is closed.
async fn announce_held(
    client: async_nats::Client,
    held: Arc<Held>,
    mut queries: async_nats::Subscriber,
) {
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = refresh.tick() => {}
            query = queries.next() => {
                if query.is_none() {
                    return;
                }
                // Several aggregators starting at once are answered once.
                while let Some(Some(_)) = queries.next().now_or_never() {}
            }
        }
        announce(&client, &held.topics()).await;
    }
}

async fn announce(client: &async_nats::Client, topics: &[Topic]) {
    for chunk in encode(topics) {
        if let Err(e) = client.publish(INTEREST_SUBJECT, Bytes::from(chunk)).await {
            tracing::warn!(error = %e, topics = topics.len(), "interest announcement not sent");
            return;
        }
    }
}

/// Announcements as they arrive on [`INTEREST_SUBJECT`].
pub struct NatsInterestFeed {
    sub: async_nats::Subscriber,
    /// Undecodable announcements since the last warning, and when that was.
    bad: u64,
    warned: Option<tokio::time::Instant>,
}

/// Subscribes to the announcements, then asks every holder to announce now
/// rather than at its next refresh. The subscription is to exactly
/// [`INTEREST_SUBJECT`], so the query itself is not delivered to the feed.
pub(crate) async fn feed(client: &async_nats::Client) -> Result<NatsInterestFeed, BusError> {
    let sub = client
        .subscribe(INTEREST_SUBJECT)
        .await
        .map_err(BusError::unavailable)?;
    client
        .publish(INTEREST_QUERY_SUBJECT, Bytes::new())
        .await
        .map_err(BusError::unavailable)?;
    Ok(NatsInterestFeed {
        sub,
        bad: 0,
        warned: None,
    })
}

impl NatsInterestFeed {
    pub(crate) async fn next(&mut self) -> Option<Vec<Topic>> {
        loop {
            let m = self.sub.next().await?;
            match decode(&m.payload) {
                Ok(topics) => return Some(topics),
                Err(e) => self.skipped(&e),
            }
        }
    }

    fn skipped(&mut self, e: &kpi_core::interest::InterestError) {
        self.bad += 1;
        let now = tokio::time::Instant::now();
        if self
            .warned
            .is_some_and(|at| now.duration_since(at) < BAD_ANNOUNCEMENT_WARN_EVERY)
        {
            tracing::debug!(error = %e, "interest announcement skipped");
            return;
        }
        tracing::warn!(error = %e, skipped = self.bad, "interest announcements skipped: not a list of topics");
        self.bad = 0;
        self.warned = Some(now);
    }
}
