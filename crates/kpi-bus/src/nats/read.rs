//! Reading stored messages back with bounded waits: a stream whose leader just died answers nothing, so every read has a deadline and a second path.
//!
//! The leader answers `STREAM.MSG.GET` and creates consumers; while it is
//! dead (nats-server 2.9 elects a new one in 4 to 9 s) such requests get no
//! reply, and async-nats waits its default 5 s per request: a client's
//! initial load once took 10 s through a node failure. Here each attempt
//! waits at most [`ATTEMPT`], and a failed leader read is followed by a
//! direct get (`$JS.API.DIRECT.GET`, streams created with `allow_direct`),
//! which any current replica answers. A value read from a replica may trail
//! the leader by the replication delay; callers that need every stored
//! message (a resume, history) get the latest value only, or an error, and
//! never wait past the budget.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{timeout, timeout_at, Instant};

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
/// Reading a subject's stored messages through a consumer, once the leader
/// has answered.
const READBACK: Duration = Duration::from_secs(3);

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

/// What [`recent`] does when only a replica answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WithoutLeader {
    /// Return the latest message alone (a live topic's resume: the client
    /// then gets a fresh snapshot instead of what it missed).
    LatestOnly,
    /// Fail (history: one record would pass for the whole history).
    Fail,
}

/// Up to `max` newest messages of one subject, oldest first. The streams keep
/// a bounded number per subject, so reading them all is bounded too.
pub(crate) async fn recent(
    s: &stream::Stream,
    subject: &str,
    max: usize,
    without_leader: WithoutLeader,
) -> Result<Vec<Bytes>, BusError> {
    let last_seq = match last(s, subject, CLIENT_READ).await? {
        Last::Empty => return Ok(Vec::new()),
        Last::Leader(m) => m.sequence,
        Last::Replica(m) => {
            return match without_leader {
                WithoutLeader::LatestOnly => Ok(vec![m.payload]),
                WithoutLeader::Fail => Err(BusError::Unavailable(format!(
                    "reading {subject}: the stream has no leader (a new one is being elected)"
                ))),
            }
        }
    };
    let consumer = timeout(
        ATTEMPT * 3,
        s.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| BusError::Unavailable(format!("reading {subject}: no consumer in time")))?
    .map_err(BusError::unavailable)?;
    let mut out = std::collections::VecDeque::new();
    let read = async {
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
        Ok::<(), BusError>(())
    };
    timeout(READBACK, read)
        .await
        .map_err(|_| BusError::Unavailable(format!("reading {subject} timed out")))??;
    Ok(out.into())
}
