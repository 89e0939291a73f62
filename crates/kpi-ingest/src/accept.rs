//! The one accept path of every ingest format: publisher token, per-token rate, batch limit, validation, store-then-answer.
//!
//! gRPC (`service.rs`), JSON and line protocol over HTTP (`http/`) and OTLP
//! (`otlp.rs`) turn their input into proto `Event`s (or a reason why a piece
//! of it cannot be one) and hand them here, so a rule added to validation or
//! to the token checks holds for every format at once. An answer is given only
//! after the bus stored the event; `event_id` makes a retry count once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use kpi_bus::{Appended, Bus, BusError};
use kpi_core::id_hash::IdBuildHasher;
use kpi_core::EventRecord;
use kpi_proto::v1::{Event, Status as EventStatus};
use kpi_service::Shutdown;

use crate::cardinality::{Cardinality, RESOURCE_EXHAUSTED};
use crate::config::IngestSettings;
use crate::metrics;
use crate::publishers::{Publisher, PublisherTokens};
use crate::recent::RecentIds;
use crate::IngestError;

/// How a refused event's reason starts when its token may not publish the KPI.
pub const PERMISSION_DENIED: &str = "permission denied";

/// The reason given for an event the bus did not confirm. Said the same way
/// by every format, because the event may well be stored (a client library
/// resends its buffer on reconnect) and the only safe move is a retry with
/// the same id.
pub fn outcome_unknown(cause: &str) -> String {
    format!("outcome unknown: the bus did not confirm storing it ({cause}); retry with the same event_id, a stored event counts once")
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub event_id: String,
    pub status: EventStatus,
    /// Empty when stored or a duplicate.
    pub reason: String,
    /// The bus's sequence number when stored (or of the original, for a duplicate).
    pub seq: u64,
}

impl Outcome {
    /// An event that never became one (unparsable input), refused with `reason`.
    pub fn refused(event_id: impl Into<String>, reason: impl Into<String>) -> Self {
        metrics::event(metrics::RESULT_INVALID);
        Outcome {
            event_id: event_id.into(),
            status: EventStatus::Invalid,
            reason: reason.into(),
            seq: 0,
        }
    }

    pub fn is_permission_denied(&self) -> bool {
        self.status == EventStatus::Invalid && self.reason.starts_with(PERMISSION_DENIED)
    }
}

/// Why a whole request is refused before any of its events is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing token: send `Authorization: Bearer <token>`")]
    TokenMissing,
    #[error("invalid token")]
    TokenInvalid,
    #[error("rate_limited: this token publishes faster than allowed; slow down and resend what was not acknowledged")]
    RateLimited,
    #[error("batch of {got} events is larger than the limit of {limit}; split it")]
    TooMany { got: usize, limit: usize },
    #[error("the bus is unavailable; nothing was stored, retry later")]
    BusDown,
    #[error("too many concurrent calls (--max-calls {max}); retry later")]
    TooManyCalls { max: usize },
}

/// The counts of a finished request, as every format reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub stored: usize,
    pub duplicates: usize,
    pub refused: usize,
    pub unavailable: usize,
    pub denied: usize,
    /// Refused by a distinct-KPI cap.
    pub capped: usize,
}

impl Tally {
    pub fn add(&mut self, o: &Outcome) {
        match o.status {
            EventStatus::Stored => self.stored += 1,
            EventStatus::Duplicate => self.duplicates += 1,
            EventStatus::Unavailable => self.unavailable += 1,
            _ => {
                self.refused += 1;
                if o.is_permission_denied() {
                    self.denied += 1;
                }
                if o.reason.starts_with(RESOURCE_EXHAUSTED) {
                    self.capped += 1;
                }
            }
        }
    }

    pub fn of(outcomes: &[Outcome]) -> Self {
        let mut t = Tally::default();
        outcomes.iter().for_each(|o| t.add(o));
        t
    }

    pub fn total(&self) -> usize {
        self.stored + self.duplicates + self.refused + self.unavailable
    }

    /// Every event of a non-empty request was refused for its token.
    pub fn all_denied(&self) -> bool {
        self.total() > 0 && self.denied == self.total()
    }

    /// Every event of a non-empty request was refused by a distinct-KPI cap.
    pub fn all_capped(&self) -> bool {
        self.total() > 0 && self.capped == self.total()
    }

    /// Every event of a non-empty request was refused.
    pub fn all_refused(&self) -> bool {
        self.total() > 0 && self.refused == self.total()
    }

    /// Every valid event of the request is in doubt.
    pub fn all_unknown(&self) -> bool {
        self.unavailable > 0 && self.unavailable == self.total() - self.refused
    }
}

/// The shared accept path. Cheap to clone.
#[derive(Clone)]
pub struct Accept {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    tokens: Option<PublisherTokens>,
    max_future_secs: i64,
    /// Half the duplicate window: no accepted copy of an event id can then
    /// reach the bus a window or more after another (see the README).
    max_past_secs: i64,
    cardinality: Cardinality,
    calls: CallLimit,
    max_batch: usize,
    max_in_flight: usize,
    max_body_bytes: usize,
    shutdown: Shutdown,
    /// Ids this process stored recently: a retry of one is answered DUPLICATE.
    recent: parking_lot::Mutex<RecentIds>,
}

impl Accept {
    /// Reads the publisher tokens of `settings`; fails on a bad tokens file.
    pub fn new(
        bus: Bus,
        settings: &IngestSettings,
        shutdown: Shutdown,
    ) -> Result<Self, IngestError> {
        settings.validate()?;
        let window = bus.config().duplicate_window;
        let half_window = i64::try_from((window / 2).as_secs()).unwrap_or(i64::MAX);
        Ok(Accept {
            inner: Arc::new(Inner {
                bus,
                tokens: publisher_tokens(settings)?,
                max_future_secs: settings.max_future_secs.min(half_window),
                max_past_secs: half_window,
                cardinality: Cardinality::new(
                    settings.max_kpis,
                    settings.max_kpis_per_token,
                    settings.kpi_idle,
                ),
                calls: CallLimit::new(settings.max_calls),
                max_batch: settings.max_batch.max(1),
                max_in_flight: settings.max_in_flight.max(1),
                max_body_bytes: settings.max_body_bytes.max(1),
                shutdown,
                recent: parking_lot::Mutex::new(RecentIds::new(
                    settings.recent_ids,
                    window,
                    Instant::now(),
                )),
            }),
        })
    }

    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    pub fn max_batch(&self) -> usize {
        self.inner.max_batch
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// Largest request body (after decompression) an HTTP format reads.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// The publisher `presented` stands for. `Ok(None)` when no tokens are
    /// configured (anyone may publish); a refusal is audited, never with the token.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        remote_ip: Option<std::net::IpAddr>,
    ) -> Result<Option<Publisher>, Refusal> {
        let who = kpi_service::Who {
            subject: None,
            remote_ip,
        };
        let Some(tokens) = &self.inner.tokens else {
            return Ok(None);
        };
        match presented.map(|t| tokens.find(t)) {
            Some(Some(publisher)) => Ok(Some(publisher)),
            Some(None) => {
                crate::metrics::AUDIT.denied("publish", "bad_token", who, None);
                Err(Refusal::TokenInvalid)
            }
            None => {
                crate::metrics::AUDIT.denied("publish", "token_missing", who, None);
                Err(Refusal::TokenMissing)
            }
        }
    }

    /// Spends `events` of the publisher's rate budget.
    pub fn take_rate(&self, publisher: Option<&Publisher>, events: usize) -> Result<(), Refusal> {
        match publisher {
            Some(p) if !p.try_take(events) => {
                crate::metrics::AUDIT.denied("publish", "rate_limited", p.audit_who(), None);
                Err(Refusal::RateLimited)
            }
            _ => Ok(()),
        }
    }

    /// A permit for one call (held until the call ends, a stream's until it
    /// closes), or a refusal naming `--max-calls`.
    pub fn admit_call(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        self.inner.calls.admit()
    }

    /// The bus can take events now (a request that cannot be stored is
    /// better refused whole, with nothing in doubt).
    pub fn check_bus(&self) -> Result<(), Refusal> {
        if self.inner.bus.is_connected() {
            Ok(())
        } else {
            Err(Refusal::BusDown)
        }
    }

    /// A batch: rate and size first, then each event validated and the valid
    /// ones stored with one call to the bus. Outcomes are in input order;
    /// an `Err` item is an event the format could not even read.
    pub async fn publish(
        &self,
        items: Vec<Result<Event, Outcome>>,
        publisher: Option<&Publisher>,
    ) -> Result<Vec<Outcome>, Refusal> {
        self.take_rate(publisher, items.len())?;
        self.publish_rated(items, publisher).await
    }

    /// [`Accept::publish`] for a caller that has taken the rate already (a
    /// stream takes it as it reads, before it reads more).
    pub async fn publish_rated(
        &self,
        items: Vec<Result<Event, Outcome>>,
        publisher: Option<&Publisher>,
    ) -> Result<Vec<Outcome>, Refusal> {
        let total = items.len();
        if total > self.inner.max_batch {
            return Err(Refusal::TooMany {
                got: total,
                limit: self.inner.max_batch,
            });
        }
        // One clock reading for the batch, so its events are judged alike.
        let now = Utc::now();
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(total);
        let mut valid = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match item.and_then(|ev| self.check(ev, now, publisher)) {
                Ok(record) => {
                    outcomes.push(None);
                    valid.push((index, record));
                }
                Err(refused) => outcomes.push(Some(refused)),
            }
        }
        let (indices, records): (Vec<usize>, Vec<EventRecord>) = valid.into_iter().unzip();
        for (index, outcome) in indices.into_iter().zip(self.store(records).await) {
            if let Some(slot) = outcomes.get_mut(index) {
                *slot = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome {
                    event_id: String::new(),
                    status: EventStatus::Unavailable,
                    reason: outcome_unknown("not attempted"),
                    seq: 0,
                })
            })
            .collect())
    }

    /// A request of any size (bounded by its body limit), stored in batches of
    /// `max_batch`. A refusal part-way leaves earlier batches stored; formats
    /// that use this derive ids from content, so the client's retry of the
    /// whole request counts those once.
    pub async fn publish_all(
        &self,
        items: Vec<Result<Event, Outcome>>,
        publisher: Option<&Publisher>,
    ) -> Result<Vec<Outcome>, Refusal> {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(self.inner.max_batch).collect();
            outcomes.extend(self.publish(chunk, publisher).await?);
        }
        Ok(outcomes)
    }

    fn check(
        &self,
        ev: Event,
        now: DateTime<Utc>,
        publisher: Option<&Publisher>,
    ) -> Result<EventRecord, Outcome> {
        let sent_id = ev.event_id.clone();
        let record = crate::validate::to_record(ev, now, self.inner.max_future_secs)
            .and_then(|r| crate::validate::check_age(r, now, self.inner.max_past_secs))
            .map_err(|why| {
                tracing::debug!(event_id = %sent_id, reason = %why, "event refused");
                Outcome::refused(sent_id, why.to_string())
            })?;
        if let Some(p) = publisher {
            if !p.may_publish(&record.kpi) {
                crate::metrics::AUDIT.denied(
                    "publish",
                    "forbidden_kpi",
                    p.audit_who(),
                    Some(record.kpi.as_str()),
                );
                return Err(Outcome::refused(
                    record.event_id,
                    format!("{PERMISSION_DENIED}: token may not publish {}", record.kpi),
                ));
            }
        }
        if let Err(reason) = self
            .inner
            .cardinality
            .admit(&record.kpi, publisher.map(Publisher::label))
        {
            return Err(Outcome::refused(record.event_id, reason));
        }
        Ok(record)
    }

    /// Stores `records` with one call to the bus, except those this process
    /// stored recently, or that repeat an earlier one of the same call
    /// (answered DUPLICATE with the original's seq); one outcome per record,
    /// in order.
    async fn store(&self, records: Vec<EventRecord>) -> Vec<Outcome> {
        let hashes: Vec<u128> = records
            .iter()
            .map(|r| kpi_core::id_hash::event_id_hash(&r.event_id))
            .collect();
        let mut fresh: Vec<EventRecord> = Vec::new();
        let plans: Vec<Plan> = {
            let now = Instant::now();
            let mut recent = self.inner.recent.lock();
            let mut sending: HashMap<u128, usize, IdBuildHasher> = HashMap::default();
            records
                .iter()
                .zip(&hashes)
                .map(|(record, hash)| {
                    if let Some(seq) = recent.get(*hash, now) {
                        Plan::Known(seq)
                    } else if let Some(first) = sending.get(hash) {
                        Plan::SameAs(*first)
                    } else {
                        sending.insert(*hash, fresh.len());
                        fresh.push(record.clone());
                        Plan::Send(fresh.len() - 1)
                    }
                })
                .collect()
        };
        let started = Instant::now();
        let results = if fresh.is_empty() {
            Vec::new()
        } else {
            self.inner.bus.append_events(&fresh).await
        };
        metrics::store_time(started.elapsed());
        let result_of = |i: usize| {
            results
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err(BusError::Unavailable("no answer from the bus".into())))
        };
        let now = Instant::now();
        let mut recent = self.inner.recent.lock();
        let outcomes: Vec<Outcome> = records
            .into_iter()
            .zip(hashes)
            .zip(plans)
            .map(|((record, hash), plan)| {
                let result = match plan {
                    Plan::Known(seq) => Ok(Appended {
                        seq,
                        duplicate: true,
                    }),
                    Plan::Send(i) => {
                        let result = result_of(i);
                        if let Ok(a) = &result {
                            recent.insert(hash, a.seq, now);
                        }
                        result
                    }
                    Plan::SameAs(i) => result_of(i).map(|a| Appended {
                        duplicate: true,
                        ..a
                    }),
                };
                outcome(record, result)
            })
            .collect();
        drop(recent);
        count_outcomes(&outcomes);
        outcomes
    }
}

/// Counts a call's outcomes, one counter update per result rather than
/// per event (a labelled counter costs a registry lookup), and logs a
/// failed store once per call rather than once per event.
fn count_outcomes(outcomes: &[Outcome]) {
    let count = |status: EventStatus| outcomes.iter().filter(|o| o.status == status).count();
    for (status, label) in [
        (EventStatus::Stored, metrics::RESULT_STORED),
        (EventStatus::Duplicate, metrics::RESULT_DUPLICATE),
        (EventStatus::Unavailable, metrics::RESULT_UNAVAILABLE),
    ] {
        metrics::events(label, count(status));
    }
    if let Some(failed) = outcomes
        .iter()
        .find(|o| o.status == EventStatus::Unavailable)
    {
        tracing::warn!(
            events = count(EventStatus::Unavailable),
            first_event_id = %failed.event_id,
            error = %failed.reason,
            "storing events failed"
        );
    }
}

/// What [`Accept::store`] does with one event of a call.
enum Plan {
    /// This process stored it recently, at this seq.
    Known(u64),
    /// Sent to the bus, as this item of the events sent.
    Send(usize),
    /// The same id as this earlier item of the events sent.
    SameAs(usize),
}

/// The answer for one event from what the bus said.
fn outcome(record: EventRecord, result: Result<Appended, BusError>) -> Outcome {
    match result {
        Ok(Appended { seq, duplicate }) => {
            let status = if duplicate {
                EventStatus::Duplicate
            } else {
                EventStatus::Stored
            };
            Outcome {
                event_id: record.event_id,
                status,
                reason: String::new(),
                seq,
            }
        }
        Err(e) => Outcome {
            event_id: record.event_id,
            status: EventStatus::Unavailable,
            reason: outcome_unknown(&e.to_string()),
            seq: 0,
        },
    }
}

/// The tokens of `--publisher-token` and `--publisher-tokens-file`; `None` when neither is set.
fn publisher_tokens(s: &IngestSettings) -> Result<Option<PublisherTokens>, IngestError> {
    let rate = s.max_publishes_per_token_per_sec;
    let mut all = PublisherTokens::default();
    if let Some(t) = &s.publisher_token {
        all.extend(PublisherTokens::single(t, rate));
    }
    if let Some(path) = &s.publisher_tokens_file {
        all.extend(PublisherTokens::load(path, rate)?);
    }
    Ok((!all.is_empty()).then_some(all))
}

/// A stable id for an event derived from what it says, for formats that
/// carry no id of their own: the same point sent again gets the same id, so
/// JetStream's duplicate window counts it once. `parts` are fed with
/// separators so that ("ab","c") and ("a","bc") differ.
pub fn content_id(prefix: &str, parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(prefix.len() + 33);
    id.push_str(prefix);
    id.push('-');
    for b in digest.iter().take(16) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Bounds the calls open at once across all connections and formats.
struct CallLimit {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl CallLimit {
    fn new(max: usize) -> Self {
        CallLimit {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManyCalls { max: self.max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_stable_and_separate_their_parts() {
        let a = content_id("lp", &[b"ab", b"c"]);
        assert_eq!(a, content_id("lp", &[b"ab", b"c"]));
        assert_ne!(a, content_id("lp", &[b"a", b"bc"]));
        assert!(a.starts_with("lp-") && a.len() == 35, "{a}");
        kpi_core::event::validate_event_id(&a).expect("a valid event_id");
    }
}
