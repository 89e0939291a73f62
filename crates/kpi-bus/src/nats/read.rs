//! Reading stored messages back with bounded waits: a stream whose leader just died answers nothing, so every read has a deadline and a second path.
//!
//! The leader answers `STREAM.MSG.GET` and creates consumers; while it is
//! dead (nats-server 2.9 elects a new one in 4 to 9 s) such requests get no
//! reply, and async-nats waits its default 5 s per request: a client's
//! initial load once took 10 s through a node failure. Here each attempt
//! waits at most [`ATTEMPT`], and a failed leader read is followed by a
//! direct get (`$JS.API.DIRECT.GET`, streams created with `allow_direct`),
//! which any current replica answers. A value read from a replica may trail
//! the leader by the replication delay. Reading every stored message of a
//! subject (a resume, history) needs a consumer, which only the leader
//! creates: when that does not finish within the budget, a resume gets the
//! latest value alone (its client then starts from a snapshot) and history
//! an error, rather than a wait.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{timeout_at, Instant};

use crate::BusError;

/// One request's wait for a reply.
const ATTEMPT: Duration = Duration::from_millis(400);
/// Pause between rounds of attempts that failed at once (no responders), so
/// a read does not spin while a leader is being elected.
const ROUND_PAUSE: Duration = Duration::from_millis(50);
/// All attempts of a read behind a client's request together: with the
/// gateway's own work, an initial load stays under 2 s through a node failure.
pub(crate) const CLIENT_READ: Duration = Duration::from_millis(1200);
/// Reads of services at start-up or recovery (checkpoints, stored state,
/// the feed's stall check), which may wait for an election rather than fail.
pub(crate) const SERVICE_READ: Duration = Duration::from_secs(10);
/// All of [`recent`]: the last message, then a consumer over the subject.
pub(crate) const RECENT_READ: Duration = Duration::from_millis(1600);
/// The part of [`RECENT_READ`] the last message may take.
const RECENT_LAST: Duration = Duration::from_millis(1000);

/// Who answered a read of the last message.
pub(crate) enum Last {
    /// The stream leader: the latest stored message.
    Leader(StreamMessage),
    /// A replica, because the leader did not answer in time.
    Replica(StreamMessage),
    /// Nothing is stored on the subject.
    Empty,
}

impl Last {
    pub(crate) fn message(self) -> Option<StreamMessage> {
        match self {
            Last::Leader(m) | Last::Replica(m) => Some(m),
            Last::Empty => None,
        }
    }
}

/// The last message on `subject`: from the leader, else from any replica,
/// retried until `budget` runs out.
pub(crate) async fn last(
    s: &stream::Stream,
    subject: &str,
    budget: Duration,
) -> Result<Last, BusError> {
    let deadline = Instant::now() + budget;
    let direct = s.cached_info().config.allow_direct;
    loop {
        let round = Instant::now();
        let mut why = match timeout_at(
            deadline.min(Instant::now() + ATTEMPT),
            s.get_last_raw_message_by_subject(subject),
        )
        .await
        {
            Ok(Ok(m)) => return Ok(Last::Leader(m)),
            Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Last::Empty)
            }
            Ok(Err(e)) => format!("stream leader: {e}"),
            Err(_) => format!("stream leader: no reply within {ATTEMPT:?}"),
        };
        if direct && Instant::now() < deadline {
            match timeout_at(
                deadline.min(Instant::now() + ATTEMPT),
                s.direct_get_last_for_subject(subject),
            )
            .await
            {
                Ok(Ok(m)) => {
                    tracing::debug!(%subject, "read the last message from a replica; the stream leader did not answer");
                    return Ok(Last::Replica(m));
                }
                Ok(Err(e)) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                    return Ok(Last::Empty)
                }
                Ok(Err(e)) => why += &format!("; replicas: {e}"),
                Err(_) => why += &format!("; replicas: no reply within {ATTEMPT:?}"),
            }
        }
        if Instant::now() + ROUND_PAUSE >= deadline {
            return Err(BusError::Unavailable(format!(
                "reading the last message of {subject} within {budget:?}: {why}"
            )));
        }
        if round.elapsed() < ROUND_PAUSE {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}

/// The last message on `subject` in `stream`: (stream sequence, payload).
pub(crate) async fn last_of(
    s: &stream::Stream,
    subject: &str,
    budget: Duration,
) -> Result<Option<(u64, Bytes)>, BusError> {
    Ok(last(s, subject, budget)
        .await?
        .message()
        .map(|m| (m.sequence, m.payload)))
}

/// Up to `max` newest messages of one subject, oldest first, within
/// [`RECENT_READ`]. The streams keep a bounded number per subject, so
/// reading them all is bounded too. When only a replica answers, or the
/// leader's consumer does not, the latest message alone is returned (a live
/// topic's resume: the client then gets a fresh snapshot instead of what it
/// missed).
pub(crate) async fn recent(
    s: &stream::Stream,
    subject: &str,
    max: usize,
) -> Result<Vec<Bytes>, BusError> {
    let deadline = Instant::now() + RECENT_READ;
    let latest = match last(s, subject, RECENT_LAST).await? {
        Last::Empty => return Ok(Vec::new()),
        Last::Leader(m) => m,
        Last::Replica(m) => return Ok(vec![m.payload]),
    };
    match timeout_at(deadline, through_consumer(s, subject, max, latest.sequence)).await {
        Ok(Ok(all)) => Ok(all),
        Ok(Err(e)) => {
            tracing::debug!(%subject, error = %e, "stored messages not read back");
            Ok(vec![latest.payload])
        }
        Err(_) => Ok(vec![latest.payload]),
    }
}

/// Every stored message of `subject` up to `last_seq` through an ordered
/// consumer (which the stream leader creates), keeping the newest `max`.
async fn through_consumer(
    s: &stream::Stream,
    subject: &str,
    max: usize,
    last_seq: u64,
) -> Result<Vec<Bytes>, BusError> {
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(BusError::unavailable)?;
    let mut out = std::collections::VecDeque::new();
    let mut messages = consumer.messages().await.map_err(BusError::unavailable)?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(BusError::unavailable)?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(last_seq);
        out.push_back(m.payload.clone());
        if out.len() > max {
            out.pop_front();
        }
        if seq >= last_seq {
            break;
        }
    }
    Ok(out.into())
}
