//! The `kpi.v1.Ingest` service: gRPC's shape around the shared accept path.

use std::sync::Arc;

use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use kpi_proto::v1::ingest_server::Ingest;
use kpi_proto::v1::{
    Event, EventResult, PublishAck, PublishRequest, PublishResponse, Status as EventStatus,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::accept::{Accept, Outcome, Refusal, Tally};
use crate::publishers::Publisher;

/// Acks waiting for the client to read them, per stream. Small on purpose:
/// once it is full the stream stops storing and reading, which is the
/// backpressure a slow publisher should feel.
const ACK_BUFFER: usize = 64;
/// Reasons quoted in a whole-batch error; the per-event results carry all of them.
const REASONS_IN_ERROR: usize = 10;

/// The Ingest service over the shared accept path. Cheap to clone.
#[derive(Clone)]
pub struct IngestService {
    accept: Accept,
}

fn into_result(o: Outcome, index: usize) -> EventResult {
    EventResult {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        event_id: o.event_id,
        status: o.status.into(),
        reason: o.reason,
        seq: o.seq,
    }
}

fn into_ack(o: Outcome, index: u64) -> PublishAck {
    PublishAck {
        index,
        event_id: o.event_id,
        status: o.status.into(),
        reason: o.reason,
        seq: o.seq,
    }
}

impl IngestService {
    /// The accept's shutdown ends open PublishStream calls when the server
    /// drains, so that a long-lived stream cannot hold the process up.
    pub fn new(accept: Accept) -> Self {
        IngestService { accept }
    }
}

/// A whole-call refusal as gRPC says it.
pub(crate) fn refusal_status(r: &Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::TokenMissing | Refusal::TokenInvalid => Status::unauthenticated(msg),
        Refusal::RateLimited => Status::resource_exhausted(msg),
        Refusal::TooMany { .. } => Status::invalid_argument(msg),
        Refusal::BusDown => Status::unavailable(msg),
        Refusal::TooManyCalls { .. } => Status::resource_exhausted(msg),
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let _call = self.accept.admit_call().map_err(|r| refusal_status(&r))?;
        let publisher = request.extensions().get::<Publisher>().cloned();
        let events = request.into_inner().events;
        let outcomes = self
            .accept
            .publish(events.into_iter().map(Ok).collect(), publisher.as_ref())
            .await
            .map_err(|r| refusal_status(&r))?;
        let tally = Tally::of(&outcomes);
        if tally.all_denied() {
            return Err(Status::permission_denied(summary(
                "this token may not publish these KPIs",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        if tally.all_capped() {
            return Err(Status::resource_exhausted(summary(
                "a distinct-KPI cap refused every event",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        if tally.all_refused() {
            return Err(Status::invalid_argument(summary(
                "every event was refused",
                &outcomes,
                EventStatus::Invalid,
            )));
        }
        if tally.all_unknown() {
            return Err(Status::unavailable(summary(
                "outcome unknown: the bus did not confirm these events, some may be stored; retry with the same event_ids, each counts once",
                &outcomes,
                EventStatus::Unavailable,
            )));
        }

        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(PublishResponse {
            accepted: to_u32(tally.stored),
            duplicates: to_u32(tally.duplicates),
            refused: to_u32(tally.refused + tally.unavailable),
            results: outcomes
                .into_iter()
                .enumerate()
                .map(|(index, o)| into_result(o, index))
                .collect(),
        }))
    }

    type PublishStreamStream = ReceiverStream<Result<PublishAck, Status>>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<Event>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        let publisher = request.extensions().get::<Publisher>().cloned();
        // Tracked by the shutdown's task tracker, so a drain waits for it.
        let call = self.accept.admit_call().map_err(|r| refusal_status(&r))?;
        let accept = Arc::new(self.accept.clone());
        self.accept.shutdown().spawn(async move {
            ack_stream(accept, request.into_inner(), tx, publisher).await;
            drop(call);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Reads a PublishStream and answers every event in order.
///
/// Events that have already arrived when one is read are stored together,
/// in one accept call (so one stored message per partition rather than one
/// per event); a lone event is stored at once, so batching adds no wait.
/// Up to `max_in_flight` events are being stored at once; with that many
/// outstanding, or with the client not reading its acks, nothing more is read,
/// so HTTP/2 flow control pushes back on the publisher. On shutdown it stops
/// reading, acknowledges what it has read, and ends the stream UNAVAILABLE so
/// the publisher resends the rest elsewhere.
async fn ack_stream(
    accept: Arc<Accept>,
    mut input: Streaming<Event>,
    tx: mpsc::Sender<Result<PublishAck, Status>>,
    publisher: Option<Publisher>,
) {
    let mut pending = FuturesOrdered::new();
    let mut in_flight = 0usize;
    let mut next_index: u64 = 0;
    let mut reading = true;
    let mut ending: Option<Status> = None;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        let room = accept.max_in_flight().saturating_sub(in_flight);
        tokio::select! {
            // Acks first: each one frees room for more events.
            biased;
            Some((count, acks)) = pending.next(), if !pending.is_empty() => {
                in_flight -= count;
                match acks {
                    Ok(acks) => {
                        for ack in acks {
                            if tx.send(Ok(ack)).await.is_err() {
                                // The client went away; it resends what it did not see acked.
                                return;
                            }
                        }
                    }
                    // Not stored: no acks; the publisher resends them.
                    Err(status) => {
                        reading = false;
                        ending.get_or_insert(status);
                    }
                }
            }
            () = accept.shutdown().recv(), if reading => {
                reading = false;
                ending = Some(Status::unavailable(
                    "server is draining; events after the last ack were not read, reconnect and send them again",
                ));
            }
            msg = input.message(), if reading && room > 0 => match msg {
                Ok(Some(ev)) => {
                    let mut batch = vec![ev];
                    let most = room.min(accept.max_batch()).max(1);
                    // Only what is already here: polling once never waits.
                    while batch.len() < most {
                        match input.message().now_or_never() {
                            Some(Ok(Some(ev))) => batch.push(ev),
                            Some(Ok(None)) => {
                                reading = false;
                                break;
                            }
                            Some(Err(status)) => {
                                tracing::debug!(%status, "publish stream ended by an error");
                                reading = false;
                                ending = Some(status);
                                break;
                            }
                            None => break,
                        }
                    }
                    // Taken per event, as if read one by one: a batch must
                    // not borrow against the budget the way a Publish call
                    // may. Past it, what it still allowed is stored and
                    // acked, then the stream ends; the publisher backs off
                    // and resends the rest.
                    let mut refused = None;
                    let allowed = batch
                        .iter()
                        .take_while(|_| match accept.take_rate(publisher.as_ref(), 1) {
                            Ok(()) => true,
                            Err(r) => {
                                refused = Some(r);
                                false
                            }
                        })
                        .count();
                    if let Some(r) = refused {
                        batch.truncate(allowed);
                        reading = false;
                        ending = Some(refusal_status(&r));
                    }
                    if !batch.is_empty() {
                        let first = next_index;
                        let count = batch.len();
                        next_index += count as u64;
                        in_flight += count;
                        let accept = accept.clone();
                        let publisher = publisher.clone();
                        pending.push_back(async move {
                            let items = batch.into_iter().map(Ok).collect();
                            let acks = accept
                                .publish_rated(items, publisher.as_ref())
                                .await
                                .map(|outcomes| {
                                    (first..)
                                        .zip(outcomes)
                                        .map(|(index, o)| into_ack(o, index))
                                        .collect::<Vec<_>>()
                                })
                                .map_err(|r| refusal_status(&r));
                            (count, acks)
                        });
                    }
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

/// `"<headline>: [0] reason; [3] reason; ... and N more"`, for a whole-call error.
pub(crate) fn summary(headline: &str, outcomes: &[Outcome], status: EventStatus) -> String {
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
