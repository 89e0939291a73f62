//! The NATS JetStream bus: streams for events, updates, closed buckets and checkpoints.
//!
//! Only features present in nats-server 2.9 are used (Debian ships 2.9.10):
//! streams are created directly rather than through the KV helpers, and
//! "latest per subject" is read with the stream's message-get API.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kpi_core::subject::{
    checkpoint_subject, event_batch_subject, event_subject, partition_filter, state_subject,
    StateName, BROADCAST_SUBJECT, CHECKPOINT_WILDCARD, EVENTS_WILDCARD, HISTORY_WILDCARD,
    STATE_WILDCARD, STORED_WILDCARD,
};
use kpi_core::{partition_of, EventRecord, KpiCode, Topic};

mod interest;
mod read;

pub use interest::NatsInterestFeed;

use read::{last, last_of, recent, CLIENT_READ, RECENT_READ, SERVICE_READ};

use crate::{
    Appended, BusConfig, BusError, EventFeed, FeedInner, Live, Outbound, PartialPublish,
    StoredEvent, SubInner, UpdateSubscription,
};

pub const EVENTS_STREAM: &str = "KPI_EVENTS";
pub const UPDATES_STREAM: &str = "KPI_UPDATES";
pub const HISTORY_STREAM: &str = "KPI_HISTORY";
pub const CHECKPOINT_STREAM: &str = "KPI_CHECKPOINTS";
pub const STATE_STREAM: &str = "KPI_STATE";

/// Listing the stored KPI codes never takes longer than this.
const READBACK_TIMEOUT: Duration = Duration::from_secs(3);
/// The reply wait of the event feed's own API requests (stall checks,
/// consumer creation). A request to a stream whose leader just died gets no
/// reply at all, and the client's default of 10 s per request made a lost
/// consumer take 20 s or more to replace; a leader is re-elected within
/// seconds, so retrying sooner is what shortens the gap.
const FEED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// `publish_all` sends at most this many messages before awaiting their
/// acknowledgements; bounds what a failure leaves unconfirmed.
const PUBLISH_WINDOW: usize = 256;
/// Marks a stored message that holds many events, one JSON record per line;
/// the value is their count. A message without it holds one event.
const EVENTS_HEADER: &str = "Kpi-Events";
/// Largest payload of a batch message; well under the server's
/// `max_payload` (1 MiB by default), so one large chunk never fails alone.
const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Most events in a batch message: bounds the work a reader does per message.
const BATCH_MAX_EVENTS: usize = 1024;
/// Marks a checkpoint message that is a manifest of parts, not the checkpoint.
const CHECKPOINT_PARTS_HEADER: &str = "Kpi-Checkpoint-Parts";
/// Room left in each checkpoint part for headers and the protocol line.
const CHECKPOINT_HEADROOM: usize = 16 * 1024;
/// The named states are a few small values.
const STATE_MAX_BYTES: i64 = 16 << 20;
/// `history` reads this many bucket records at once.
const HISTORY_READS_IN_FLIGHT: usize = 32;
/// `known_kpis` reads at most this many update subjects (three per code).
const MAX_SUBJECTS_LISTED: usize = 300_000;

#[derive(Clone)]
pub struct NatsBus {
    config: BusConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Seen through a context with [`FEED_REQUEST_TIMEOUT`]: only event
    /// feeds read it.
    feed_events: stream::Stream,
    updates: stream::Stream,
    history: stream::Stream,
    checkpoints: stream::Stream,
    named: stream::Stream,
    /// Shared by clones: the held subscriptions and the task announcing them
    /// live as long as the last clone.
    interest: std::sync::Arc<interest::Interest>,
}

impl NatsBus {
    /// `url` is one NATS URL or a comma-separated list of a cluster's URLs
    /// (the usual `NATS_URL` form); async-nats parses only single URLs from a
    /// string, so the list is split here.
    pub async fn connect(url: &str, config: BusConfig) -> Result<Self, BusError> {
        let addrs = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| BusError::Setup(format!("bad NATS URL {u:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(BusError::Setup("no NATS URL given".into()));
        }
        let client = async_nats::ConnectOptions::new()
            .name("kpistream")
            .connection_timeout(Duration::from_secs(5))
            .connect(addrs)
            .await
            .map_err(|e| BusError::Unavailable(format!("connecting to {url}: {e}")))?;
        let js = jetstream::new(client.clone());
        let base = |name: &str, subject: &str| stream::Config {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            storage: stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            discard: stream::DiscardPolicy::Old,
            // Any replica answers a direct get: reads go on while a new
            // leader is elected (see nats/read.rs).
            allow_direct: true,
            ..Default::default()
        };
        ensure_stream(
            &js,
            stream::Config {
                duplicate_window: config.duplicate_window,
                max_age: config.events_max_age,
                max_bytes: config.events_max_bytes,
                // Full: refuse new events rather than drop old ones that may
                // not be aggregated yet.
                discard: stream::DiscardPolicy::New,
                ..base(EVENTS_STREAM, EVENTS_WILDCARD)
            },
        )
        .await?;
        let updates = ensure_stream(
            &js,
            stream::Config {
                max_messages_per_subject: config.updates_per_topic.max(1),
                max_bytes: config.updates_max_bytes,
                // Only the stored copies: live updates are plain publishes.
                ..base(UPDATES_STREAM, STORED_WILDCARD)
            },
        )
        .await?;
        // One subject per closed bucket, keeping its latest record only.
        let history = ensure_stream(
            &js,
            stream::Config {
                max_messages_per_subject: 1,
                max_bytes: config.history_max_bytes,
                ..base(HISTORY_STREAM, HISTORY_WILDCARD)
            },
        )
        .await?;
        let checkpoints = ensure_stream(
            &js,
            stream::Config {
                max_messages_per_subject: 1,
                max_bytes: config.checkpoints_max_bytes,
                ..base(CHECKPOINT_STREAM, CHECKPOINT_WILDCARD)
            },
        )
        .await?;
        let named = ensure_stream(
            &js,
            stream::Config {
                max_messages_per_subject: 1,
                max_bytes: STATE_MAX_BYTES,
                ..base(STATE_STREAM, STATE_WILDCARD)
            },
        )
        .await?;
        let feed_events = jetstream::ContextBuilder::new()
            .timeout(FEED_REQUEST_TIMEOUT)
            .build(client.clone())
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| BusError::Setup(format!("opening stream {EVENTS_STREAM}: {e}")))?;
        Ok(NatsBus {
            config,
            client,
            js,
            feed_events,
            updates,
            history,
            checkpoints,
            named,
            interest: std::sync::Arc::new(interest::Interest::new()),
        })
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub(crate) async fn append_event(&self, ev: &EventRecord) -> Result<Appended, BusError> {
        let subject = event_subject(partition_of(&ev.kpi, self.config.partitions), &ev.kpi);
        let mut headers = async_nats::HeaderMap::new();
        // JetStream drops a second message with the same id inside the
        // stream's duplicate window: this is what makes a retry count once.
        headers.insert("Nats-Msg-Id", ev.event_id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject, headers, Bytes::from(ev.to_json()))
            .await
            .map_err(BusError::unavailable)?
            .await
            .map_err(BusError::unavailable)?;
        Ok(Appended {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Groups the events by partition (keeping their order), cuts each group
    /// into chunks of at most [`BATCH_MAX_EVENTS`] and [`BATCH_MAX_BYTES`],
    /// sends every chunk, then awaits the acks. A chunk of one event is
    /// stored as [`NatsBus::append_event`] stores it.
    pub(crate) async fn append_events(
        &self,
        events: &[EventRecord],
    ) -> Vec<Result<Appended, BusError>> {
        let mut out: Vec<Result<Appended, BusError>> = events
            .iter()
            .map(|_| Err(BusError::Unavailable("not sent".into())))
            .collect();
        let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, ev) in events.iter().enumerate() {
            by_partition
                .entry(partition_of(&ev.kpi, self.config.partitions))
                .or_default()
                .push(i);
        }
        // The server's max_payload less headroom, as for checkpoint parts.
        let limit = BATCH_MAX_BYTES.min(self.checkpoint_part_limit());
        let mut sent = Vec::new();
        for (partition, indices) in by_partition {
            let mut chunk: Vec<usize> = Vec::new();
            let mut payload: Vec<u8> = Vec::new();
            for i in indices {
                let json = events[i].to_json();
                let full = chunk.len() == BATCH_MAX_EVENTS
                    || (!chunk.is_empty() && payload.len() + 1 + json.len() > limit);
                if full {
                    let done = std::mem::take(&mut chunk);
                    let body = std::mem::take(&mut payload);
                    sent.push((self.send_chunk(partition, events, &done, body).await, done));
                }
                if !chunk.is_empty() {
                    payload.push(b'\n');
                }
                payload.extend_from_slice(&json);
                chunk.push(i);
            }
            if !chunk.is_empty() {
                sent.push((
                    self.send_chunk(partition, events, &chunk, payload).await,
                    chunk,
                ));
            }
        }
        for (ack, chunk) in sent {
            let result = match ack {
                Ok(ack) => ack.await.map_err(BusError::unavailable).map(|a| Appended {
                    seq: a.sequence,
                    duplicate: a.duplicate,
                }),
                Err(e) => Err(e),
            };
            for i in chunk {
                out[i] = result.clone();
            }
        }
        out
    }

    /// Sends one chunk of a partition's events without awaiting its ack.
    async fn send_chunk(
        &self,
        partition: u32,
        events: &[EventRecord],
        chunk: &[usize],
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut headers = async_nats::HeaderMap::new();
        let subject = match chunk {
            [one] => {
                let ev = &events[*one];
                headers.insert(async_nats::header::NATS_MESSAGE_ID, ev.event_id.as_str());
                event_subject(partition, &ev.kpi)
            }
            _ => {
                // An exact retry of a chunk is stored once; any other overlap
                // is caught by the aggregator's duplicate window.
                let id =
                    kpi_core::id_hash::batch_id(chunk.iter().map(|i| events[*i].event_id.as_str()));
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                headers.insert(EVENTS_HEADER, chunk.len().to_string().as_str());
                event_batch_subject(partition)
            }
        };
        self.js
            .publish_with_headers(subject, headers, Bytes::from(payload))
            .await
            .map_err(BusError::unavailable)
    }

    pub(crate) async fn last_event_seq(&self, partition: u32) -> Result<u64, BusError> {
        Ok(last_of(
            &self.feed_events,
            &partition_filter(partition),
            SERVICE_READ,
        )
        .await?
        .map_or(0, |(seq, _)| seq))
    }

    pub(crate) async fn event_feed(
        &self,
        partition: u32,
        from_seq: u64,
    ) -> Result<EventFeed, BusError> {
        let next_seq = from_seq.max(1);
        let start = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: next_seq,
        };
        self.open_event_feed(partition, start, next_seq).await
    }

    pub(crate) async fn event_feed_from_time(
        &self,
        partition: u32,
        since: DateTime<Utc>,
    ) -> Result<EventFeed, BusError> {
        let nanos = since
            .timestamp_nanos_opt()
            .ok_or_else(|| BusError::Invalid(format!("{since} is out of range")))?;
        let start_time = async_nats::datetime::from_nanos(i128::from(nanos))
            .map_err(|e| BusError::Invalid(format!("{since}: {e}")))?;
        let start = consumer::DeliverPolicy::ByStartTime { start_time };
        self.open_event_feed(partition, start, 1).await
    }

    async fn open_event_feed(
        &self,
        partition: u32,
        start: consumer::DeliverPolicy,
        next_seq: u64,
    ) -> Result<EventFeed, BusError> {
        let filter = partition_filter(partition);
        // Opened eagerly so a bad stream or a down server fails here, where
        // the caller expects setup errors, rather than on the first read.
        let (messages, start) = open_feed(&self.feed_events, &filter, start).await?;
        Ok(EventFeed {
            inner: FeedInner::Nats(Box::new(NatsFeed {
                events: self.feed_events.clone(),
                filter,
                next_seq: next_seq.max(start),
                messages: Some(messages),
                failed: false,
                check_at: tokio::time::Instant::now() + FEED_STALL_CHECK,
                split: VecDeque::new(),
            })),
        })
    }

    pub(crate) async fn publish_update(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.store(topic.stored_subject(), None, payload.clone())
            .await?;
        self.publish_live(topic, payload).await
    }

    /// A plain publish on the live subject: the gateways' subscriptions
    /// receive it, nothing stores it.
    async fn publish_live(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(topic.updates_subject(), payload)
            .await
            .map_err(BusError::unavailable)
    }

    /// Per window: every stored item is sent, then, in item order, each
    /// stored item's ack is awaited and each update (stored or live-only)
    /// is published live. An update is thus seen live only once stored, and
    /// live subscribers see the items in order.
    pub(crate) async fn publish_all(&self, items: &[Outbound]) -> Result<(), PartialPublish> {
        for (window, chunk) in items.chunks(PUBLISH_WINDOW).enumerate() {
            let base = window * PUBLISH_WINDOW;
            let mut acks = Vec::with_capacity(chunk.len());
            for item in chunk {
                let sent = match item {
                    Outbound::Live { .. } => {
                        acks.push(None);
                        continue;
                    }
                    Outbound::Update { topic, payload } => {
                        self.js
                            .publish(topic.stored_subject(), payload.clone())
                            .await
                    }
                    Outbound::History { topic, payload, id } => {
                        let bucket = match crate::history_bucket(payload) {
                            Ok(b) => b,
                            Err(error) => {
                                return Err(PartialPublish {
                                    stored: base,
                                    error,
                                })
                            }
                        };
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                        self.js
                            .publish_with_headers(
                                topic.history_bucket_subject(bucket),
                                headers,
                                payload.clone(),
                            )
                            .await
                    }
                };
                match sent {
                    Ok(ack) => acks.push(Some(ack)),
                    // Whether the window's earlier items were stored is not
                    // known without their acks, and none of them went out
                    // live yet; resending them is harmless.
                    Err(e) => {
                        return Err(PartialPublish {
                            stored: base,
                            error: BusError::unavailable(e),
                        })
                    }
                }
            }
            for (i, (item, ack)) in chunk.iter().zip(acks).enumerate() {
                let failed = |error| PartialPublish {
                    stored: base + i,
                    error,
                };
                if let Some(ack) = ack {
                    ack.await.map_err(|e| failed(BusError::unavailable(e)))?;
                }
                match item {
                    Outbound::Live { topic, payload } | Outbound::Update { topic, payload } => {
                        self.publish_live(topic, payload.clone())
                            .await
                            .map_err(failed)?;
                    }
                    Outbound::History { .. } => {}
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn publish_history(
        &self,
        topic: &Topic,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let bucket = crate::history_bucket(&payload)?;
        self.store(topic.history_bucket_subject(bucket), None, payload)
            .await?;
        Ok(())
    }

    pub(crate) async fn save_state(
        &self,
        name: &StateName,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.store(state_subject(name), None, payload).await?;
        Ok(())
    }

    pub(crate) async fn load_state(&self, name: &StateName) -> Result<Option<Bytes>, BusError> {
        last_of(&self.named, &state_subject(name), SERVICE_READ)
            .await
            .map(|m| m.map(|(_, p)| p))
    }

    /// A checkpoint that fits one message is stored as it is. A larger one is
    /// stored as parts on subjects of their own, then a manifest listing
    /// them replaces the checkpoint; only then are older parts purged. A
    /// crash before the manifest is stored leaves the previous checkpoint
    /// whole and in force.
    pub(crate) async fn save_checkpoint(
        &self,
        partition: u32,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let limit = self.checkpoint_part_limit();
        let subject = checkpoint_subject(partition);
        if payload.len() <= limit {
            self.store(subject, None, payload).await?;
            self.purge_parts_before(partition, u64::MAX).await;
            return Ok(());
        }
        // Unique per save, so a half-written set never mixes with another.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut parts = Vec::new();
        for (i, chunk) in payload.chunks(limit).enumerate() {
            let part_subject = format!("{}.{generation}.{i}", parts_prefix(partition));
            parts.push(
                self.store(part_subject, None, payload.slice_ref(chunk))
                    .await?,
            );
        }
        let first = parts.first().copied().unwrap_or(u64::MAX);
        let manifest = Manifest {
            parts,
            len: payload.len(),
        };
        let body = serde_json::to_vec(&manifest)
            .map_err(|e| BusError::Unavailable(format!("encoding a checkpoint manifest: {e}")))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            CHECKPOINT_PARTS_HEADER,
            manifest.parts.len().to_string().as_str(),
        );
        self.store(subject, Some(headers), Bytes::from(body))
            .await?;
        self.purge_parts_before(partition, first).await;
        Ok(())
    }

    pub(crate) async fn load_checkpoint(&self, partition: u32) -> Result<Option<Bytes>, BusError> {
        let Some(m) = last(
            &self.checkpoints,
            &checkpoint_subject(partition),
            SERVICE_READ,
        )
        .await?
        .message() else {
            return Ok(None);
        };
        if m.headers.get(CHECKPOINT_PARTS_HEADER).is_none() {
            return Ok(Some(m.payload));
        }
        let manifest: Manifest = serde_json::from_slice(&m.payload).map_err(|e| {
            BusError::Damaged(format!("checkpoint manifest of partition {partition}: {e}"))
        })?;
        let prefix = parts_prefix(partition);
        let mut whole = bytes::BytesMut::with_capacity(manifest.len);
        for seq in manifest.parts {
            let part = match self.checkpoints.get_raw_message(seq).await {
                Ok(p) => p,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Err(BusError::Damaged(format!(
                        "part {seq} of partition {partition}'s checkpoint is gone"
                    )))
                }
                Err(e) => return Err(BusError::unavailable(e)),
            };
            if !part.subject.as_str().starts_with(&prefix) {
                return Err(BusError::Damaged(format!(
                    "message {seq} is not a part of partition {partition}'s checkpoint"
                )));
            }
            whole.extend_from_slice(&part.payload);
        }
        if whole.len() != manifest.len {
            return Err(BusError::Damaged(format!(
                "partition {partition}'s checkpoint parts hold {} bytes, the manifest says {}",
                whole.len(),
                manifest.len
            )));
        }
        Ok(Some(whole.freeze()))
    }

    /// The largest checkpoint part: what the server accepts, less room for
    /// headers and the protocol line.
    fn checkpoint_part_limit(&self) -> usize {
        self.client
            .server_info()
            .max_payload
            .saturating_sub(CHECKPOINT_HEADROOM)
            .max(1024)
    }

    /// Publishes to JetStream and waits for the ack: the stream sequence.
    async fn store(
        &self,
        subject: String,
        headers: Option<async_nats::HeaderMap>,
        payload: Bytes,
    ) -> Result<u64, BusError> {
        let ack = match headers {
            Some(h) => self.js.publish_with_headers(subject, h, payload).await,
            None => self.js.publish(subject, payload).await,
        }
        .map_err(BusError::unavailable)?
        .await
        .map_err(BusError::unavailable)?;
        Ok(ack.sequence)
    }

    /// Removes a partition's checkpoint parts stored before `seq`: those of
    /// replaced checkpoints and of saves that never finished. Failing only
    /// leaves garbage for the next save to remove, so it is not an error.
    async fn purge_parts_before(&self, partition: u32, seq: u64) {
        // Nothing is stored before sequence 1; and nats-server reads a purge
        // "before 1" as a purge of everything the filter matches.
        if seq <= 1 {
            return;
        }
        let filter = format!("{}.>", parts_prefix(partition));
        let purged = if seq == u64::MAX {
            self.checkpoints.purge().filter(filter).await
        } else {
            self.checkpoints.purge().filter(filter).sequence(seq).await
        };
        if let Err(e) = purged {
            tracing::debug!(partition, error = %e, "old checkpoint parts not purged yet");
        }
    }

    pub(crate) async fn subscribe_updates(
        &self,
        topic: &Topic,
    ) -> Result<UpdateSubscription, BusError> {
        let sub = self
            .client
            .subscribe(topic.updates_subject())
            .await
            .map_err(BusError::unavailable)?;
        let held = self.interest.hold(&self.client, topic).await;
        Ok(UpdateSubscription {
            inner: SubInner::Nats(NatsSubscription {
                sub,
                _held: Some(held),
            }),
        })
    }

    /// Announcements of watched topics; asks every holder to announce now.
    pub(crate) async fn interest_feed(&self) -> Result<NatsInterestFeed, BusError> {
        interest::feed(&self.client).await
    }

    pub(crate) async fn last_update(&self, topic: &Topic) -> Result<Option<Bytes>, BusError> {
        last_of(&self.updates, &topic.stored_subject(), CLIENT_READ)
            .await
            .map(|m| m.map(|(_, p)| p))
    }

    pub(crate) async fn recent_updates(
        &self,
        topic: &Topic,
        max: usize,
    ) -> Result<Vec<Bytes>, BusError> {
        recent(&self.updates, &topic.stored_subject(), max).await
    }

    /// Lists the topic's bucket subjects (names only, from the stream info),
    /// then reads the newest `max` of them, each its latest record.
    pub(crate) async fn history(&self, topic: &Topic, max: usize) -> Result<Vec<Bytes>, BusError> {
        let keep = usize::try_from(self.config.history_per_topic)
            .unwrap_or(usize::MAX)
            .min(max);
        if keep == 0 {
            return Ok(Vec::new());
        }
        let prefix = format!("{}.", topic.history_subject());
        let read = async {
            let mut buckets = Vec::new();
            let mut subjects = self
                .history
                .info_with_subjects(format!("{prefix}*"))
                .await
                .map_err(BusError::unavailable)?;
            while let Some(item) = subjects.next().await {
                let (subject, count) = item.map_err(BusError::unavailable)?;
                let bucket = subject
                    .strip_prefix(&prefix)
                    .and_then(|b| b.parse::<i64>().ok());
                if let (Some(b), true) = (bucket, count > 0) {
                    buckets.push(b);
                }
            }
            buckets.sort_unstable();
            let newest = &buckets[buckets.len().saturating_sub(keep)..];
            let subjects: Vec<String> = newest
                .iter()
                .map(|b| topic.history_bucket_subject(*b))
                .collect();
            let history = self.history.clone();
            futures::stream::iter(subjects)
                .map(move |subject| {
                    let history = history.clone();
                    async move { last_of(&history, &subject, CLIENT_READ).await }
                })
                .buffered(HISTORY_READS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .filter_map(|r| r.transpose())
                .map(|r| r.map(|(_, payload)| payload))
                .collect::<Result<Vec<_>, _>>()
        };
        // As bounded as a resume: a stream leader being elected does not answer
        // the subject listing, and a quick 503 lets a balancer try elsewhere.
        tokio::time::timeout(RECENT_READ, read).await.map_err(|_| {
            BusError::Unavailable(format!("reading the history of {topic} timed out"))
        })?
    }

    /// Reads the subjects of `KPI_UPDATES` from the stream info (the server
    /// pages them), reading at most [`MAX_SUBJECTS_LISTED`] subjects and for
    /// no longer than the readback timeout, then keeps the first `max` codes
    /// in order. Subjects arrive unordered, so the whole (bounded) list is
    /// read before cutting: a page of codes stays stable between calls.
    pub(crate) async fn known_kpis(&self, max: usize) -> Result<Vec<KpiCode>, BusError> {
        let mut codes = BTreeSet::new();
        if max == 0 {
            return Ok(Vec::new());
        }
        let read = async {
            let mut subjects = self
                .updates
                .info_with_subjects(STORED_WILDCARD)
                .await
                .map_err(BusError::unavailable)?;
            let mut seen = 0usize;
            while let Some(item) = subjects.next().await {
                let (subject, count) = item.map_err(BusError::unavailable)?;
                seen += 1;
                if count > 0 {
                    if let Some(topic) = Topic::from_stored_subject(&subject) {
                        codes.insert(topic.code);
                    }
                }
                if seen >= MAX_SUBJECTS_LISTED {
                    tracing::warn!(seen, "listing KPI codes stopped at the subject cap");
                    break;
                }
            }
            Ok::<(), BusError>(())
        };
        tokio::time::timeout(READBACK_TIMEOUT, read)
            .await
            .map_err(|_| BusError::Unavailable("listing KPI codes timed out".into()))??;
        Ok(codes.into_iter().take(max).collect())
    }

    pub(crate) async fn broadcast(&self, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(BROADCAST_SUBJECT, payload)
            .await
            .map_err(BusError::unavailable)?;
        self.client.flush().await.map_err(BusError::unavailable)
    }

    pub(crate) async fn subscribe_broadcast(&self) -> Result<UpdateSubscription, BusError> {
        let sub = self
            .client
            .subscribe(BROADCAST_SUBJECT)
            .await
            .map_err(BusError::unavailable)?;
        Ok(UpdateSubscription {
            inner: SubInner::Nats(NatsSubscription { sub, _held: None }),
        })
    }
}

/// Where a checkpoint stored in parts finds them, in order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// Stream sequences of the parts.
    parts: Vec<u64>,
    /// Total bytes, checked after joining.
    len: usize,
}

/// Subjects of a partition's checkpoint parts start with this; the wildcard
/// of the checkpoint stream covers them.
fn parts_prefix(partition: u32) -> String {
    format!("{}.parts", checkpoint_subject(partition))
}

/// Gets a stream, creating it when missing. An existing stream keeps the
/// operator's settings except two that this version depends on: direct gets
/// on, and the subjects it captures (`KPI_UPDATES` moved from the live
/// subjects to the stored ones; messages already on the old subjects stay
/// in the stream, unread, until its limits drop them).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, BusError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(s) => {
            let current = &s.cached_info().config;
            let direct = config.allow_direct && !current.allow_direct;
            let subjects = current.subjects != config.subjects;
            if !direct && !subjects {
                return Ok(s);
            }
            let mut cfg = current.clone();
            cfg.allow_direct |= config.allow_direct;
            cfg.subjects = config.subjects.clone();
            match js.update_stream(cfg).await {
                Ok(_) => js
                    .get_stream(&name)
                    .await
                    .map_err(|e| BusError::Setup(format!("opening stream {name}: {e}"))),
                // Without the right subjects the stream would store the
                // wrong messages, or none: refuse to start.
                Err(e) if subjects => Err(BusError::Setup(format!(
                    "stream {name} captures {:?}, not {:?}, and cannot be changed: {e}",
                    s.cached_info().config.subjects,
                    config.subjects
                ))),
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "cannot allow direct gets; reads wait for the stream leader");
                    Ok(s)
                }
            }
        }
        Err(_) => js
            .create_stream(config)
            .await
            .map_err(|e| BusError::Setup(format!("creating stream {name}: {e}"))),
    }
}

/// How long a feed waits before reopening its consumer after a failure, so
/// a caller that reads again straight after an error does not spin.
const FEED_REOPEN_BACKOFF: Duration = Duration::from_millis(250);
/// A feed silent this long checks whether its partition has events it has
/// not delivered. When the server holding an ordered consumer dies, the
/// client may report nothing and recover only after ~70 s of missed
/// heartbeats; the check turns that stall into a reopen within seconds.
const FEED_STALL_CHECK: Duration = Duration::from_secs(2);

/// An ephemeral ordered consumer over one partition's events, and the
/// stream sequence it starts at. The server resolves a start time to that
/// sequence, so a feed opened by time stall-checks and reopens by sequence
/// like any other, even before it has delivered anything.
async fn open_feed(
    events: &stream::Stream,
    filter: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<(consumer::pull::Ordered, u64), BusError> {
    let consumer = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(BusError::unavailable)?;
    let start = consumer.cached_info().delivered.stream_sequence + 1;
    let messages = consumer.messages().await.map_err(BusError::unavailable)?;
    Ok((messages, start))
}

/// One partition's events, following the log.
///
/// The consumer is reopened from the next undelivered sequence after any
/// error. async-nats' ordered consumer does recover by itself when the server
/// loses the consumer (a restart of nats-server 2.9, or the death of the
/// cluster node holding this R1 consumer), but only after it has reported
/// "consumer not found" and then sat through missed heartbeats: measured
/// against 2.9.10, about 75 s with no events. Reopening ourselves after the
/// first error or a failed stall check ([`FEED_STALL_CHECK`]) brings that
/// down to a few seconds after a new stream leader is elected, and the feed's
/// own `next_seq` makes the reopened consumer start exactly after the last
/// event handed out, so nothing is skipped or repeated.
pub struct NatsFeed {
    events: stream::Stream,
    filter: String,
    /// The stream sequence the next delivered event must be at or after.
    next_seq: u64,
    /// `None` after a failure, until the next read reopens it.
    messages: Option<consumer::pull::Ordered>,
    /// The previous read failed: back off before reopening.
    failed: bool,
    /// When to check for a stall if nothing arrives before. Kept here, not
    /// in `next`'s future: callers select over `next` next to a timer, so
    /// the future is dropped and restarted far more often than the check
    /// interval, and a timeout inside it would never fire.
    check_at: tokio::time::Instant,
    /// The rest of a batch message already taken from the consumer.
    split: VecDeque<StoredEvent>,
}

impl NatsFeed {
    pub(crate) async fn next(&mut self) -> Option<Result<StoredEvent, BusError>> {
        if let Some(ev) = self.split.pop_front() {
            return Some(Ok(ev));
        }
        loop {
            let messages = match &mut self.messages {
                Some(m) => m,
                None => {
                    if self.failed {
                        tokio::time::sleep(FEED_REOPEN_BACKOFF).await;
                    }
                    let start = consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: self.next_seq,
                    };
                    match open_feed(&self.events, &self.filter, start).await {
                        Ok((m, _)) => {
                            self.failed = false;
                            self.messages.insert(m)
                        }
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    }
                }
            };
            let m = match tokio::time::timeout_at(self.check_at, messages.next()).await {
                Ok(None) => return None,
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Some(Err(self.fail(e))),
                Err(_) => {
                    // Owned copies: holding `&self` across the await would
                    // need the feed to be Sync, which the consumer is not.
                    let (events, filter) = (self.events.clone(), self.filter.clone());
                    let is_stalled = stalled(&events, &filter, self.next_seq).await;
                    self.check_at = tokio::time::Instant::now() + FEED_STALL_CHECK;
                    if is_stalled {
                        tracing::warn!(filter = %self.filter, next_seq = self.next_seq, "event feed stalled; reopening");
                        self.messages = None;
                    }
                    continue;
                }
            };
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Some(Err(self.fail(e))),
            };
            // An ordered consumer never goes backwards, but a reopened one
            // must not hand out anything already delivered either.
            if seq < self.next_seq {
                continue;
            }
            self.next_seq = seq + 1;
            self.check_at = tokio::time::Instant::now() + FEED_STALL_CHECK;
            if m.headers
                .as_ref()
                .and_then(|h| h.get(EVENTS_HEADER))
                .is_none()
            {
                return Some(Ok(StoredEvent {
                    seq,
                    pending,
                    complete: true,
                    record: EventRecord::from_json(&m.payload).map_err(|e| e.to_string()),
                }));
            }
            self.split = split_batch(seq, pending, &m.payload);
            if let Some(ev) = self.split.pop_front() {
                return Some(Ok(ev));
            }
        }
    }

    /// Drops the consumer so the next read reopens it from `next_seq`.
    fn fail(&mut self, e: impl std::fmt::Display) -> BusError {
        self.messages = None;
        self.failed = true;
        BusError::Unavailable(format!(
            "reading {}: {e}; the feed reopens on the next read",
            self.filter
        ))
    }
}

/// The events of one batch message, one JSON record per line, the last one
/// marked complete. A line that does not decode is an `Err` record (the
/// reader counts and skips it) and the others still apply; an empty message
/// is one `Err`, so a reader still moves past it.
fn split_batch(seq: u64, pending: u64, payload: &[u8]) -> VecDeque<StoredEvent> {
    let mut out: VecDeque<StoredEvent> = payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| StoredEvent {
            seq,
            pending,
            complete: false,
            record: EventRecord::from_json(line).map_err(|e| e.to_string()),
        })
        .collect();
    if out.is_empty() {
        out.push_back(StoredEvent {
            seq,
            pending,
            complete: true,
            record: Err("a batch message with no events".into()),
        });
    }
    if let Some(last) = out.back_mut() {
        last.complete = true;
    }
    out
}

/// Whether the log holds an event matching `filter` at or after `next_seq`.
/// An error counts as stalled: reopening is cheap, missing events is not.
async fn stalled(events: &stream::Stream, filter: &str, next_seq: u64) -> bool {
    match last_of(events, filter, FEED_REQUEST_TIMEOUT).await {
        Ok(Some((last, _))) => last >= next_seq,
        Ok(None) => false,
        Err(_) => true,
    }
}

pub struct NatsSubscription {
    sub: async_nats::Subscriber,
    /// Counts an update subscription among the bus's announced topics while
    /// it lives; broadcasts hold none.
    _held: Option<interest::HeldTopic>,
}

impl NatsSubscription {
    pub(crate) async fn next(&mut self) -> Option<Live> {
        self.sub.next().await.map(|m| Live::Message(m.payload))
    }
}
