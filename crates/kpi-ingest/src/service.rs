//! The `kpi.v1.Ingest` service: validate each event, store it durably, then acknowledge it.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::stream::{FuturesOrdered, StreamExt};
use kpi_bus::{Appended, Bus};
use kpi_core::EventRecord;
use kpi_proto::v1::ingest_server::Ingest;
use kpi_proto::v1::{
    Event, EventResult, PublishAck, PublishRequest, PublishResponse, Status as EventStatus,
};
use kpi_service::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cardinality::{Cardinality, RESOURCE_EXHAUSTED};
use crate::config::IngestSettings;
use crate::metrics;
use crate::publishers::Publisher;
use crate::validate;

/// Acks waiting for the client to read them, per stream. Small on purpose:
/// once it is full the stream stops storing and reading, which is the
/// backpressure a slow publisher should feel.
const ACK_BUFFER: usize = 64;
/// Reasons quoted in a whole-batch error; the per-event results carry all of them.
const REASONS_IN_ERROR: usize = 10;

/// The Ingest service over a bus. Cheap to clone.
#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    max_future_secs: i64,
    /// Half the duplicate window: no accepted copy of an event id can then
    /// reach the bus a window or more after another (see the README).
    max_past_secs: i64,
    cardinality: Cardinality,
    calls: crate::server::CallLimit,
    max_batch: usize,
    max_in_flight: usize,
    shutdown: Shutdown,
}

/// What happened to one event, before it is shaped as a batch result or a stream ack.
#[derive(Debug)]
struct Outcome {
    event_id: String,
    status: EventStatus,
    reason: String,
    seq: u64,
}

impl Outcome {
    fn into_result(self, index: usize) -> EventResult {
        EventResult {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            event_id: self.event_id,
            status: self.status.into(),
            reason: self.reason,
            seq: self.seq,
        }
    }

    fn into_ack(self, index: u64) -> PublishAck {
        PublishAck {
            index,
            event_id: self.event_id,
            status: self.status.into(),
            reason: self.reason,
            seq: self.seq,
        }
    }
}

impl IngestService {
    /// `shutdown` ends open PublishStream calls when the server drains, so
    /// that a long-lived stream cannot hold the process up.
    pub fn new(bus: Bus, settings: &IngestSettings, shutdown: Shutdown) -> Self {
        let half_window = (bus.config().duplicate_window / 2).as_secs() as i64;
        IngestService {
            inner: Arc::new(Inner {
                bus,
                max_future_secs: settings.max_future_secs.min(half_window),
                max_past_secs: half_window,
                cardinality: Cardinality::new(
                    settings.max_kpis,
                    settings.max_kpis_per_token,
                    settings.kpi_idle,
                ),
                calls: crate::server::CallLimit::new(settings.max_calls),
                max_batch: settings.max_batch.max(1),
                max_in_flight: settings.max_in_flight.max(1),
                shutdown,
            }),
        }
    }
}

impl Inner {
    fn check(
        &self,
        ev: Event,
        now: DateTime<Utc>,
        publisher: Option<&Publisher>,
    ) -> Result<EventRecord, Outcome> {
        let sent_id = ev.event_id.clone();
        let record = validate::to_record(ev, now, self.max_future_secs)
            .and_then(|r| validate::check_age(r, now, self.max_past_secs))
            .map_err(|why| {
                metrics::event(metrics::RESULT_INVALID);
                tracing::debug!(event_id = %sent_id, reason = %why, "event refused");
                Outcome {
                    event_id: sent_id,
                    status: EventStatus::Invalid,
                    reason: why.to_string(),
                    seq: 0,
                }
            })?;
        if let Some(p) = publisher {
            if !p.may_publish(&record.kpi) {
                metrics::event(metrics::RESULT_INVALID);
                crate::server::audit_denied("publish", "forbidden_kpi", Some(p.label()), None);
                return Err(Outcome {
                    event_id: record.event_id,
                    status: EventStatus::Invalid,
                    reason: format!("{PERMISSION_DENIED}: token may not publish {}", record.kpi),
                    seq: 0,
                });
            }
        }
        if let Err(reason) = self
            .cardinality
            .admit(&record.kpi, publisher.map(Publisher::label))
        {
            metrics::event(metrics::RESULT_INVALID);
            return Err(Outcome {
                event_id: record.event_id,
                status: EventStatus::Invalid,
                reason,
                seq: 0,
            });
        }
        Ok(record)
    }

    async fn store(&self, record: EventRecord) -> Outcome {
        let started = Instant::now();
        let result = self.bus.append_event(&record).await;
        metrics::store_time(started.elapsed());
        match result {
            Ok(Appended { seq, duplicate }) => {
                let (status, label) = if duplicate {
                    (EventStatus::Duplicate, metrics::RESULT_DUPLICATE)
                } else {
                    (EventStatus::Stored, metrics::RESULT_STORED)
                };
                metrics::event(label);
                Outcome {
                    event_id: record.event_id,
                    status,
                    reason: String::new(),
                    seq,
                }
            }
            Err(e) => {
                metrics::event(metrics::RESULT_UNAVAILABLE);
                tracing::warn!(event_id = %record.event_id, kpi = %record.kpi, error = %e, "storing event failed");
                Outcome {
                    event_id: record.event_id,
                    status: EventStatus::Unavailable,
                    reason: e.to_string(),
                    seq: 0,
                }
            }
        }
    }

    async fn handle(&self, ev: Event, publisher: Option<&Publisher>) -> Outcome {
        match self.check(ev, Utc::now(), publisher) {
            Ok(record) => self.store(record).await,
            Err(refused) => refused,
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let inner = &*self.inner;
        let _call = inner.calls.admit()?;
        let publisher = request.extensions().get::<Publisher>().cloned();
        let events = request.into_inner().events;
        let total = events.len();
        if let Some(p) = &publisher {
            if !p.try_take(total) {
                crate::server::audit_denied("publish", "rate_limited", Some(p.label()), None);
                return Err(rate_limited());
            }
        }
        if total > inner.max_batch {
            return Err(Status::invalid_argument(format!(
                "batch of {total} events is larger than the limit of {}; split it",
                inner.max_batch
            )));
        }

        // One clock reading for the batch, so its events are judged alike.
        let now = Utc::now();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(total);
        let mut valid = Vec::new();
        for (index, ev) in events.into_iter().enumerate() {
            match inner.check(ev, now, publisher.as_ref()) {
                Ok(record) => {
                    outcomes.push(None);
                    valid.push((index, record));
                }
                Err(refused) => outcomes.push(Some(refused)),
            }
        }
        let valid_count = valid.len();
        let mut stored = futures::stream::iter(valid)
            .map(|(index, record)| async move { (index, inner.store(record).await) })
            .buffer_unordered(inner.max_in_flight);
        while let Some((index, outcome)) = stored.next().await {
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = Some(outcome);
            }
        }

        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome {
                    event_id: String::new(),
                    status: EventStatus::Unavailable,
                    reason: "not stored".into(),
                    seq: 0,
                })
            })
            .collect();
        let count = |s: EventStatus| outcomes.iter().filter(|o| o.status == s).count();
        let accepted = count(EventStatus::Stored);
        let duplicates = count(EventStatus::Duplicate);
        let unavailable = count(EventStatus::Unavailable);

        let denied = outcomes
            .iter()
            .filter(|o| o.reason.starts_with(PERMISSION_DENIED))
            .count();
        if total > 0 && denied == total {
            return Err(Status::permission_denied(summary(
                "this token may not publish these KPIs",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        let capped = outcomes
            .iter()
            .filter(|o| o.reason.starts_with(RESOURCE_EXHAUSTED))
            .count();
        if total > 0 && capped == total {
            return Err(Status::resource_exhausted(summary(
                "a distinct-KPI cap refused every event",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        if total > 0 && valid_count == 0 {
            return Err(Status::invalid_argument(summary(
                "every event was refused",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        if valid_count > 0 && unavailable == valid_count {
            return Err(Status::unavailable(summary(
                "no event could be stored; retry with the same event_ids",
                &outcomes,
                EventStatus::Unavailable,
            )));
        }

        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(PublishResponse {
            accepted: to_u32(accepted),
            duplicates: to_u32(duplicates),
            refused: to_u32(total - accepted - duplicates),
            results: outcomes
                .into_iter()
                .enumerate()
                .map(|(index, o)| o.into_result(index))
                .collect(),
        }))
    }

    type PublishStreamStream = ReceiverStream<Result<PublishAck, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<Event>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let call = self.inner.calls.admit()?;
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let inner = self.inner.clone();
        let publisher = request.extensions().get::<Publisher>().cloned();
        // Tracked by the shutdown's task tracker, so a drain waits for it.
        self.inner.shutdown.spawn(async move {
            ack_stream(inner, request.into_inner(), tx, publisher).await;
            drop(call);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads a PublishStream and answers every event in order.
///
/// Up to `max_in_flight` events are being stored at once; with that many
/// outstanding, or with the client not reading its acks, nothing more is read,
/// so HTTP/2 flow control pushes back on the publisher. On shutdown it stops
/// reading, acknowledges what it has read, and ends the stream UNAVAILABLE so
/// the publisher resends the rest elsewhere.
async fn ack_stream(
    inner: Arc<Inner>,
    mut input: Streaming<Event>,
    tx: mpsc::Sender<Result<PublishAck, Status>>,
    publisher: Option<Publisher>,
) {
    let mut pending = FuturesOrdered::new();
    let mut next_index: u64 = 0;
    let mut reading = true;
    let mut ending: Option<Status> = None;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        let room = pending.len() < inner.max_in_flight;
        tokio::select! {
            // Acks first: each one frees room for another event.
            biased;
            Some(ack) = pending.next(), if !pending.is_empty() => {
                if tx.send(Ok(ack)).await.is_err() {
                    // The client went away; it resends what it did not see acked.
                    return;
                }
            }
            () = inner.shutdown.recv(), if reading => {
                reading = false;
                ending = Some(Status::unavailable(
                    "server is draining; events after the last ack were not read, reconnect and send them again",
                ));
            }
            msg = input.message(), if reading && room => match msg {
                Ok(Some(_)) if publisher.as_ref().is_some_and(|p| !p.try_take(1)) => {
                    // Acks go out for what was read; the publisher backs off
                    // and resends the rest.
                    if let Some(p) = &publisher {
                        crate::server::audit_denied("publish", "rate_limited", Some(p.label()), None);
                    }
                    reading = false;
                    ending = Some(rate_limited());
                }
                Ok(Some(ev)) => {
                    let index = next_index;
                    next_index += 1;
                    let inner = inner.clone();
                    let publisher = publisher.clone();
                    pending.push_back(async move { inner.handle(ev, publisher.as_ref()).await.into_ack(index) });
                }
                Ok(None) => reading = false,
                Err(status) => {
                    tracing::debug!(%status, "publish stream ended by an error");
                    reading = false;
                    ending = Some(status);
                }
            },
        }
    }
    if let Some(status) = ending {
        let _ = tx.send(Err(status)).await;
    }
}

/// How a refused event's reason starts when its token may not publish the KPI.
const PERMISSION_DENIED: &str = "permission denied";

fn rate_limited() -> Status {
    Status::resource_exhausted(
        "rate_limited: this token publishes faster than allowed; slow down and resend what was not acknowledged",
    )
}

/// `"<headline>: [0] reason; [3] reason; ... and N more"`, for a whole-call error.
fn summary(headline: &str, outcomes: &[Outcome], status: EventStatus) -> String {
    let matching: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.status == status)
        .map(|(i, o)| format!("[{i}] {}", o.reason))
        .collect();
    let mut msg = format!("{headline}: ");
    msg.push_str(
        &matching
            .iter()
            .take(REASONS_IN_ERROR)
            .cloned()
            .collect::<Vec<_>>()
            .join("; "),
    );
    if matching.len() > REASONS_IN_ERROR {
        msg.push_str(&format!("; and {} more", matching.len() - REASONS_IN_ERROR));
    }
    msg
}
