//! A partition's aggregates and the messages they produce; pure data, no I/O, so it can be tested exhaustively.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use kpi_core::message::BucketView;
use kpi_core::period::secs_to_time;
use kpi_core::{EventRecord, Period, Stats, Topic, UpdateKind, UpdateMessage};
use serde::{Deserialize, Serialize};

use crate::config::Lateness;
use crate::store_policy::{StoreMark, StorePolicy, STORE_EVERY};
use crate::threshold::ThresholdPolicy;

/// Buckets this much older than the lateness horizon are dropped from memory.
/// The margin covers clock disagreement between ingest instances, whose
/// receive stamps the watermark follows.
const PRUNE_MARGIN_SECS: i64 = 300;

/// Everything one partition knows, and the log position it covers.
///
/// The checkpoint is this struct serialized: state and position are saved
/// together, which is what makes a restart neither skip nor repeat an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionState {
    /// Last event-log sequence applied (0 = none).
    pub applied_seq: u64,
    /// Greatest ingest receive time seen, in Unix seconds: the clock that
    /// pruning follows, so replay after a crash prunes exactly as the first run did.
    pub watermark: i64,
    /// Keyed by "code/period" (JSON object keys must be strings). A hash
    /// map: three searches per event (one per period) in a B-tree of
    /// 30,000 names were a sixth of the aggregator; renders that go
    /// through every topic sort the keys, so output keeps key order.
    topics: Topics,
    /// Keys of topics an event changed since the last render (each once:
    /// its `Marks::pending` says it is listed). Whether a topic is due
    /// changes only when an event changes it or a bucket boundary passes,
    /// so between boundaries a render looks at these alone instead of every
    /// topic: with coalescing off the worker renders after every batch of
    /// events, and scanning thousands of topics each time would be most of
    /// its work. Not saved: a loaded state scans everything on its first
    /// render. A render sorts them, so its output keeps key order.
    #[serde(skip)]
    pending: Vec<String>,
    /// Each period's bucket at the last render. When any of them moves, a
    /// bucket may have closed anywhere and the render looks at every topic.
    #[serde(skip)]
    scanned: Option<[i64; 3]>,
    /// (trailing store deadline in Unix ms, key) of topics whose newest
    /// render was not stored: a render adds the ones due to `pending`.
    /// Entries of topics stored since are skipped when they come due. Not
    /// saved: rebuilt by the full scan of a loaded state's first render.
    #[serde(skip)]
    trailing: BTreeSet<(i64, String)>,
    /// Which renders are stored as well as published live. Configuration,
    /// not state: set by the worker after loading; every render by default.
    #[serde(skip)]
    store: StorePolicy,
}

/// Topics by key; foldhash, as the keys are short and looked up per event.
type Topics = HashMap<String, TopicState, foldhash::fast::RandomState>;

/// A topic's place in the render index, kept with the topic so an event
/// costs one search of `topics`, not three. Not saved, and no part of the
/// state's equality: a loaded state rebuilds it in its first full render.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    /// Listed in `PartitionState::pending`.
    pending: bool,
    /// Unwatched, its render waiting in `trailing` until its store is due:
    /// events on it do not make it pending, so a render looks at it once
    /// then rather than at every render in between (with 30,000 topics
    /// changing every 100 ms, those visits were most of the aggregator's work).
    queued: bool,
}

impl PartialEq for Marks {
    fn eq(&self, _: &Marks) -> bool {
        true
    }
}

/// The checkpointed state; the render index is derived and left out.
impl PartialEq for PartitionState {
    fn eq(&self, other: &Self) -> bool {
        self.applied_seq == other.applied_seq
            && self.watermark == other.watermark
            && self.topics == other.topics
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct TopicState {
    code: kpi_core::KpiCode,
    period: Period,
    /// Bucket start (Unix seconds) -> aggregate.
    buckets: BTreeMap<i64, Stats>,
    /// Seq of the last message rendered for this topic.
    seq: u64,
    #[serde(with = "kpi_core::time::option")]
    last_event_time: Option<DateTime<Utc>>,
    /// Bucket of the last "current" message rendered.
    shown: Option<i64>,
    /// Greatest ingest receive time (Unix seconds) of an event applied here:
    /// idleness is judged by it, so a replay evicts as the first run did.
    #[serde(default)]
    last_received: i64,
    /// Changed since the last render. Persisted: a crash between checkpoint
    /// and publish must still publish after restart.
    dirty: bool,
    /// Buckets changed since the last render. Those older than the current
    /// bucket at render time are published as corrections (and to history),
    /// so every bucket that ever held data is visible to clients.
    changed: BTreeSet<i64>,
    #[serde(skip)]
    marks: Marks,
    /// The current bucket's stats as last rendered, for threshold policies.
    #[serde(default)]
    rendered: Stats,
    /// What of this topic is stored, for the store policy.
    #[serde(default = "StoreMark::owed")]
    store: StoreMark,
    /// `updated_at` and `event_time` of the newest render while it is not
    /// stored, so its trailing store is that very message again.
    #[serde(
        default,
        with = "kpi_core::time::option",
        skip_serializing_if = "Option::is_none"
    )]
    rendered_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        with = "kpi_core::time::option",
        skip_serializing_if = "Option::is_none"
    )]
    rendered_event_time: Option<DateTime<Utc>>,
}

/// One render's store budget: how many stores beyond the forced ones are
/// left, and the topics owed one (owed since in Unix ms, key, and what the
/// store would be).
struct Spend {
    left: usize,
    owed: Vec<(i64, String, Owed)>,
}

/// What a topic owed a store gets when the budget grants it one.
#[derive(Debug, Clone, Copy)]
enum Owed {
    /// This render's live-only message (its index in the output) is stored.
    Grant(usize),
    /// Its newest render, already published live, is stored again.
    Trailing,
    /// An unwatched topic's render, held back until it can be stored.
    Render,
}

/// Which topics someone watches live (gateways announce them). An
/// unwatched topic is rendered only when its render is stored, at most
/// once per store interval and within the store budget: its live updates
/// would reach nobody, and rendering 30,000 topics live every tick was most
/// of the pipeline's work at 10,000 KPIs.
pub trait Watched {
    /// `key` is the topic's `<code>/<period>`.
    fn watched(&self, key: &str) -> bool;
}

/// Every topic watched: the in-process bus, where nothing is announced,
/// and `--live-all`.
pub struct Everything;

impl Watched for Everything {
    fn watched(&self, _key: &str) -> bool {
        true
    }
}

/// What one event did, per period.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub applied: u32,
    pub late: u32,
    /// Not applied at all: a value outside the value rule, or a time further
    /// than `max_skew` from its receive time.
    pub refused: bool,
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// To `kpi.updates.<code>.<period>` only: a render the store policy
    /// does not store.
    Live(Topic, UpdateMessage),
    /// Stored on `kpi.stored.<code>.<period>`, then published live.
    Update(Topic, UpdateMessage),
    /// A closed bucket's final value, to `kpi.history.<code>.<period>`.
    History(Topic, UpdateMessage),
}

impl PartitionState {
    /// Applies an event stored alone at `log_seq` (see [`PartitionState::apply_part`]).
    pub fn apply(&mut self, log_seq: u64, ev: &EventRecord, lateness: &Lateness) -> Applied {
        self.apply_part(log_seq, true, ev, lateness)
    }

    /// Applies one event read from the log message at `log_seq`; `complete`
    /// says it is that message's last event. Messages at or below
    /// `applied_seq` were already applied (a replayed delivery) and are
    /// ignored. `applied_seq` moves only with a message's last event, so it
    /// always names a whole message: a state saved in the middle of one
    /// would hold part of it while a restart reads it again whole.
    pub fn apply_part(
        &mut self,
        log_seq: u64,
        complete: bool,
        ev: &EventRecord,
        lateness: &Lateness,
    ) -> Applied {
        let mut out = Applied::default();
        if log_seq <= self.applied_seq {
            return out;
        }
        self.skip(log_seq, complete);
        self.watermark = self.watermark.max(ev.received_at.timestamp());
        if Self::refuses(ev, lateness) {
            out.refused = true;
            return out;
        }
        // One key buffer for the three periods; a topic's key is allocated
        // only when it is new to `pending` or `topics`, not per event.
        let mut k = String::with_capacity(ev.kpi.as_str().len() + 8);
        for period in Period::ALL {
            let start = period.bucket_start_secs(ev.time);
            let deadline =
                period.bucket_end_secs(start) + lateness.for_period(period).as_secs() as i64;
            if ev.received_at.timestamp() > deadline {
                out.late += 1;
                continue;
            }
            k.clear();
            push_key(&mut k, &ev.kpi, period);
            // One search of `topics` for a topic it holds (the common
            // case), two for a new one: the search is most of `apply`.
            if let Some(ts) = self.topics.get_mut(k.as_str()) {
                ts.add(start, ev);
                if !ts.marks.pending && !ts.marks.queued {
                    ts.marks.pending = true;
                    self.pending.push(k.clone());
                }
            } else {
                let mut ts = TopicState::new(ev.kpi.clone(), period);
                ts.add(start, ev);
                ts.marks.pending = true;
                self.pending.push(k.clone());
                self.topics.insert(k.clone(), ts);
            }
            out.applied += 1;
        }
        out
    }

    /// Moves past an event that is not applied (undecodable, or a copy of
    /// one applied before): the position advances with a message's last event.
    pub fn skip(&mut self, log_seq: u64, complete: bool) {
        if complete {
            self.applied_seq = self.applied_seq.max(log_seq);
        }
    }

    /// Whether the event is outside the value rule, or timed further than
    /// `max_skew` from its receive time: then it is not applied at all.
    pub fn refuses(ev: &EventRecord, lateness: &Lateness) -> bool {
        let skew = (ev.received_at - ev.time).abs();
        let too_skewed = skew.to_std().map_or(true, |s| s > lateness.max_skew);
        too_skewed || kpi_core::event::validate_value(ev.value).is_err()
    }

    /// Topics that [`PartitionState::render`] would publish for at `now`.
    /// Looks at the same topics that render would: the pending ones, or all
    /// of them when a bucket boundary passed.
    pub fn due(&self, now: DateTime<Utc>, policy: &ThresholdPolicy) -> Vec<Topic> {
        let store = &self.store;
        let due = |ts: &TopicState| {
            ts.is_due(now, policy, store)
                .then(|| Topic::new(ts.code.clone(), ts.period))
        };
        if !self.boundary_passed(now) {
            let now_ms = now.timestamp_millis();
            let mut keys: Vec<&str> = self.pending.iter().map(String::as_str).collect();
            let before = keys.len();
            keys.extend(
                self.trailing
                    .iter()
                    .take_while(|(at, _)| *at <= now_ms)
                    .map(|(_, k)| k.as_str()),
            );
            // In key order, as render goes through them.
            keys.sort_unstable();
            if keys.len() > before {
                keys.dedup();
            }
            keys.into_iter()
                .filter_map(|k| self.topics.get(k))
                .filter_map(due)
                .collect()
        } else {
            self.topics.values().filter_map(due).collect()
        }
    }

    /// Which renders are stored as well as published live.
    pub fn set_store_policy(&mut self, store: StorePolicy) {
        self.store = store;
    }

    /// Makes the next render look at every topic, as after a load: after
    /// a change of store policy, trailing stores are due at other times.
    pub fn rescan(&mut self) {
        self.scanned = None;
    }

    /// Raises a topic's seq to at least `seq`, the last one stored on the
    /// bus, for a topic whose final render this process stored before it
    /// evicted the topic: nothing newer than the bus holds went out.
    pub fn bump_seq(&mut self, topic: &Topic, seq: u64) {
        if let Some(ts) = self.topics.get_mut(&key(&topic.code, topic.period)) {
            ts.seq = ts.seq.max(seq);
        }
    }

    /// Continues a topic's seq after a restart. The previous process may
    /// have published up to `STORE_EVERY - 1` renders live past the last
    /// one stored (`last_stored`; `None` when the bus holds none), so the
    /// seq is raised above that, and the next render is stored: no seq is
    /// ever published twice with different contents, and a later restart
    /// finds this one's seqs on the bus.
    pub fn resume_seq(&mut self, topic: &Topic, last_stored: Option<u64>) {
        let Some(ts) = self.topics.get_mut(&key(&topic.code, topic.period)) else {
            return;
        };
        let above = match last_stored {
            Some(seq) => seq,
            // Nothing stored yet a seq in the checkpoint: the stored copy
            // is gone (limits, or an upgrade that moved the stored subject).
            None if ts.seq > 0 => ts.seq,
            None => return,
        };
        let seq = above.saturating_add(STORE_EVERY);
        if seq > ts.seq {
            ts.seq = seq;
            ts.store.stored_at_ms = i64::MIN;
        }
    }

    /// Renders every due topic's messages: corrections of closed buckets
    /// first, then the current bucket, so the newest message of a topic is
    /// always its current bucket (the one a snapshot shows).
    pub fn render(&mut self, now: DateTime<Utc>, policy: &ThresholdPolicy) -> Vec<Outgoing> {
        self.render_watched(now, policy, &Everything)
    }

    /// [`PartitionState::render`], rendering topics that are not `watched`
    /// only when they can be stored (see [`Watched`]).
    pub fn render_watched(
        &mut self,
        now: DateTime<Utc>,
        policy: &ThresholdPolicy,
        watched: &dyn Watched,
    ) -> Vec<Outgoing> {
        let everything = self.boundary_passed(now);
        self.scanned = Some(bucket_marks(now));
        self.render_due(now, policy, everything, watched)
    }

    /// A topic someone started to watch is looked at by the next render:
    /// its newest value may not have been rendered while it was unwatched.
    pub fn watch_started(&mut self, key: &str) {
        if let Some(ts) = self.topics.get_mut(key) {
            // Its entry in `trailing` is skipped when it comes due.
            ts.marks.queued = false;
            if !ts.marks.pending {
                ts.marks.pending = true;
                self.pending.push(key.to_string());
            }
        }
    }

    /// Whether some period's bucket at `now` differs from the last render's
    /// (or nothing was rendered since this state was made or loaded).
    fn boundary_passed(&self, now: DateTime<Utc>) -> bool {
        self.scanned != Some(bucket_marks(now))
    }

    /// Renders the due topics among every topic, or among the pending ones,
    /// then spends the store budget on the topics owed a store longest.
    fn render_due(
        &mut self,
        now: DateTime<Utc>,
        policy: &ThresholdPolicy,
        everything: bool,
        watched: &dyn Watched,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let now_ms = now.timestamp_millis();
        let PartitionState {
            topics,
            pending,
            trailing,
            store,
            ..
        } = self;
        let mut spend = Spend {
            left: store.budget(),
            owed: Vec::new(),
        };
        let mut keys: Vec<String> = if everything {
            trailing.clear();
            pending.clear();
            for ts in topics.values_mut() {
                ts.marks = Marks::default();
            }
            topics.keys().cloned().collect()
        } else {
            std::mem::take(pending)
        };
        keys.sort_unstable();
        // Unwatched topics due a render that has to wait (for the store
        // interval, or for the budget), by index in `keys`: they are
        // queued in `trailing` for when their store is due.
        let mut held: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(ts) = topics.get_mut(k) {
                ts.marks.pending = false;
                if watched.watched(k) {
                    ts.publish(now, policy, store, &mut out, &mut spend, k);
                } else if ts.is_due_render(now, policy) {
                    if store.stores(&ts.store, now_ms, false) {
                        spend.owed.push((
                            StorePolicy::owed_since(&ts.store),
                            k.clone(),
                            Owed::Render,
                        ));
                    }
                    held.push(i);
                } else if store.trailing_due(&ts.store, now_ms) {
                    spend.owed.push((
                        StorePolicy::owed_since(&ts.store),
                        k.clone(),
                        Owed::Trailing,
                    ));
                }
            }
        }
        // Oldest owed first, among this render's topics and the trailing
        // index (whose deadlines are ordered as the owed-since times).
        spend
            .owed
            .sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut owed = std::mem::take(&mut spend.owed).into_iter().peekable();
        // Built only if a trailing store comes due: most renders have none.
        let mut rendered: Option<HashSet<&str>> = None;
        while spend.left > 0 {
            let next_trailing = trailing
                .first()
                .filter(|(at, _)| *at <= now_ms)
                .map(|(at, k)| (store.since_deadline(*at), k));
            let take_trailing = match (next_trailing, owed.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(t), Some(o)) => t < (o.0, &o.1),
            };
            if take_trailing {
                let Some((_, k)) = trailing.pop_first() else {
                    break;
                };
                // This render's topics are among `owed` already.
                let rendered =
                    rendered.get_or_insert_with(|| keys.iter().map(String::as_str).collect());
                if rendered.contains(k.as_str()) {
                    continue;
                }
                if let Some(ts) = topics.get_mut(&k) {
                    let was_queued = std::mem::take(&mut ts.marks.queued);
                    // A render held back while its topic was unwatched
                    // (stored whether or not it is watched by now).
                    if ts.is_due_render(now, policy) && store.stores(&ts.store, now_ms, false) {
                        ts.render(now, store, &mut out, &mut spend, &k, true);
                    } else if store.trailing_due(&ts.store, now_ms) {
                        ts.store_newest(now, &mut out);
                        spend.left -= 1;
                    } else if ts.is_due_render(now, policy) {
                        // Its store is due later than queued for (it was
                        // stored meanwhile): wait again, or render as usual.
                        if was_queued {
                            ts.marks.queued = true;
                            trailing.insert((store.deadline(&ts.store), k));
                        } else if !ts.marks.pending {
                            ts.marks.pending = true;
                            pending.push(k);
                        }
                    }
                }
            } else if let Some((_, k, what)) = owed.next() {
                if let Some(ts) = topics.get_mut(&k) {
                    match what {
                        Owed::Grant(i) => ts.grant(now, &mut out[i]),
                        Owed::Trailing => ts.store_newest(now, &mut out),
                        // Counted by the render, as a forced store.
                        Owed::Render => {
                            ts.render(now, store, &mut out, &mut spend, &k, true);
                            continue;
                        }
                    }
                    spend.left = spend.left.saturating_sub(1);
                }
            }
        }
        drop(rendered);
        for k in &keys {
            if let Some(ts) = topics.get(k) {
                if ts.store.unstored > 0 {
                    trailing.insert((store.deadline(&ts.store), k.clone()));
                }
            }
        }
        for i in held {
            let k = std::mem::take(&mut keys[i]);
            if let Some(ts) = topics.get_mut(&k) {
                if ts.is_due_render(now, policy) && !ts.marks.queued {
                    ts.marks.queued = true;
                    trailing.insert((store.deadline(&ts.store), k));
                }
            }
        }
        out
    }

    /// Drops buckets no event can change any more, keeping the two newest of
    /// each topic and the newest one below the horizon, so that `previous`
    /// of any bucket an event can still change is its true predecessor.
    pub fn prune(&mut self, lateness: &Lateness) {
        for ts in self.topics.values_mut() {
            let horizon = self.watermark - final_age(ts.period, lateness);
            let two_newest = ts.buckets.keys().rev().nth(1).copied().unwrap_or(i64::MIN);
            let anchor = ts
                .buckets
                .range(..horizon)
                .next_back()
                .map_or(i64::MIN, |(b, _)| *b);
            let keep_from = two_newest.min(anchor);
            ts.buckets.retain(|start, _| *start >= keep_from);
        }
    }

    /// Removes topics that received nothing for `idle` (by receive time) and
    /// that nothing can change or publish any more: not pending, not due at
    /// `now`, every bucket past the horizon. Returns them, so the caller can
    /// resume their `seq` from the bus when they come back.
    pub fn evict_idle(
        &mut self,
        now: DateTime<Utc>,
        idle: std::time::Duration,
        lateness: &Lateness,
        policy: &ThresholdPolicy,
    ) -> Vec<Topic> {
        let idle = i64::try_from(idle.as_secs()).unwrap_or(i64::MAX);
        let watermark = self.watermark;
        let mut gone = Vec::new();
        self.topics.retain(|_, ts| {
            let horizon = watermark - final_age(ts.period, lateness);
            // A topic whose newest render is not stored stays for its
            // trailing store: once evicted, its seq is read from the bus.
            let evict = watermark.saturating_sub(ts.last_received) >= idle
                && !ts.dirty
                && ts.changed.is_empty()
                && ts.store.unstored == 0
                && !ts.marks.pending
                && !ts.marks.queued
                && ts.buckets.keys().next_back().is_none_or(|b| *b < horizon)
                && !ts.is_due(now, policy, &self.store);
            if evict {
                gone.push(Topic::new(ts.code.clone(), ts.period));
            }
            !evict
        });
        gone
    }

    /// The aggregate of one bucket, for tests and audits.
    pub fn stats(&self, topic: &Topic, bucket_start: i64) -> Option<Stats> {
        self.topics
            .get(&key(&topic.code, topic.period))
            .and_then(|ts| ts.buckets.get(&bucket_start).copied())
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The checkpoint bytes, but only if they read back as this same state:
    /// a checkpoint that cannot be loaded would make every restart replay
    /// the whole log.
    pub fn checkpoint(&self) -> Result<Vec<u8>, String> {
        let raw = self.to_json();
        match PartitionState::from_json(&raw) {
            Ok(back) if back == *self => Ok(raw),
            Ok(_) => Err("the checkpoint reads back as a different state".into()),
            Err(e) => Err(format!("the checkpoint does not read back: {e}")),
        }
    }

    pub fn from_json(raw: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

/// How far behind the watermark a bucket's start must be before no event can
/// change it: its period, the lateness, and a margin for clock disagreement
/// between ingest instances.
fn final_age(period: Period, lateness: &Lateness) -> i64 {
    lateness.for_period(period).as_secs() as i64 + period.seconds() + PRUNE_MARGIN_SECS
}

/// Each period's bucket start at `now`.
fn bucket_marks(now: DateTime<Utc>) -> [i64; 3] {
    Period::ALL.map(|p| p.bucket_start_secs(now))
}

fn key(code: &kpi_core::KpiCode, period: Period) -> String {
    let mut k = String::new();
    push_key(&mut k, code, period);
    k
}

/// `key` into a buffer the caller reuses.
fn push_key(k: &mut String, code: &kpi_core::KpiCode, period: Period) {
    k.push_str(code.as_str());
    k.push('/');
    k.push_str(period.as_str());
}

impl TopicState {
    /// Counts an event in the bucket starting at `start`.
    fn add(&mut self, start: i64, ev: &EventRecord) {
        self.buckets
            .entry(start)
            .or_default()
            .apply(ev.value, ev.time);
        self.last_event_time = Some(ev.time);
        self.last_received = self.last_received.max(ev.received_at.timestamp());
        self.dirty = true;
        // Nearly every event is for the newest changed bucket: no search.
        if self.changed.last() != Some(&start) {
            self.changed.insert(start);
        }
    }

    fn new(code: kpi_core::KpiCode, period: Period) -> Self {
        TopicState {
            code,
            period,
            buckets: BTreeMap::new(),
            seq: 0,
            last_event_time: None,
            last_received: 0,
            shown: None,
            dirty: false,
            changed: BTreeSet::new(),
            rendered: Stats::default(),
            marks: Marks::default(),
            store: StoreMark::default(),
            rendered_at: None,
            rendered_event_time: None,
        }
    }

    /// The bucket a dashboard should show: the one holding `now` by this
    /// server's clock. Events timed ahead of it wait in their bucket until
    /// the clock gets there, so a publisher with a fast clock cannot turn
    /// every real value into a correction of a "closed" bucket.
    fn current(&self, now: DateTime<Utc>) -> i64 {
        self.period.bucket_start_secs(now)
    }

    /// Whether a render at `now` publishes anything for this topic: a new
    /// render, or a trailing store of the newest one.
    fn is_due(&self, now: DateTime<Utc>, policy: &ThresholdPolicy, store: &StorePolicy) -> bool {
        self.is_due_render(now, policy) || store.trailing_due(&self.store, now.timestamp_millis())
    }

    /// A new render, or a trailing store of the newest, or nothing; a store
    /// that is not forced is left to the budget (`spend`).
    fn publish(
        &mut self,
        now: DateTime<Utc>,
        policy: &ThresholdPolicy,
        store: &StorePolicy,
        out: &mut Vec<Outgoing>,
        spend: &mut Spend,
        key: &str,
    ) {
        if self.is_due_render(now, policy) {
            self.render(now, store, out, spend, key, false);
        } else if store.trailing_due(&self.store, now.timestamp_millis()) {
            spend.owed.push((
                StorePolicy::owed_since(&self.store),
                key.to_owned(),
                Owed::Trailing,
            ));
        }
    }

    fn is_due_render(&self, now: DateTime<Utc>, policy: &ThresholdPolicy) -> bool {
        let current = self.current(now);
        if self
            .changed
            .range(..current)
            .any(|b| Some(*b) != self.shown)
        {
            return true;
        }
        // A bucket closed: publish the new bucket with the closed one as
        // `previous`, whatever the threshold; a KPI that stays silent does
        // not publish again.
        let rolled = match self.shown {
            Some(shown) if shown != current => {
                self.dirty
                    || self.changed.contains(&current)
                    || self.buckets.get(&shown).is_some_and(|s| !s.is_empty())
            }
            _ => false,
        };
        if rolled || self.shown.is_none() && self.dirty {
            return true;
        }
        if !self.dirty {
            return false;
        }
        match policy.for_code(&self.code) {
            None => true,
            Some(t) => {
                let now_stats = self.buckets.get(&current).copied().unwrap_or_default();
                t.significant(&self.rendered, &now_stats)
            }
        }
    }

    fn previous_of(&self, start: i64) -> Option<BucketView> {
        self.buckets
            .range(..start)
            .rev()
            .find(|(_, s)| !s.is_empty())
            .map(|(b, s)| BucketView {
                bucket_start: secs_to_time(*b),
                stats: s.view(),
            })
    }

    fn message(&self, start: i64, now: DateTime<Utc>, correction: bool) -> UpdateMessage {
        UpdateMessage {
            kind: UpdateKind::Update,
            kpi: self.code.clone(),
            period: self.period,
            seq: self.seq,
            bucket_start: secs_to_time(start),
            stats: self.buckets.get(&start).copied().unwrap_or_default().view(),
            previous: self.previous_of(start),
            event_time: self.last_event_time,
            updated_at: now,
            correction,
        }
    }

    fn render(
        &mut self,
        now: DateTime<Utc>,
        store: &StorePolicy,
        out: &mut Vec<Outgoing>,
        spend: &mut Spend,
        key: &str,
        stored: bool,
    ) {
        let topic = Topic::new(self.code.clone(), self.period);
        let current = self.current(now);
        let rendered_before = out.len();
        for start in std::mem::take(&mut self.changed) {
            // A bucket ahead of the clock waits until the clock reaches it.
            if start > current {
                self.changed.insert(start);
                continue;
            }
            // The bucket shown until now is recorded by the rollover below.
            if start == current || Some(start) == self.shown {
                continue;
            }
            self.seq += 1;
            let m = self.message(start, now, true);
            out.push(Outgoing::History(topic.clone(), m.clone()));
            out.push(Outgoing::Update(topic.clone(), m));
        }
        if let Some(shown) = self.shown.filter(|s| *s < current) {
            // The bucket shown until now has closed: record its final value.
            if self.buckets.get(&shown).is_some_and(|s| !s.is_empty()) {
                out.push(Outgoing::History(
                    topic.clone(),
                    self.message(shown, now, false),
                ));
            }
        }
        // A closed or corrected bucket, or a new current one after it, is
        // stored whatever the interval and budget: history readers and a
        // restart need it. A topic's first render waits for the budget.
        let boundary = out.len() > rendered_before || self.shown.is_some_and(|s| s != current);
        let now_ms = now.timestamp_millis();
        self.seq += 1;
        let m = self.message(current, now, false);
        if stored || store.forced(&self.store, boundary) {
            self.store.stored(now_ms);
            self.rendered_at = None;
            self.rendered_event_time = None;
            spend.left = spend.left.saturating_sub(1);
            out.push(Outgoing::Update(topic, m));
        } else {
            if store.stores(&self.store, now_ms, boundary) {
                spend.owed.push((
                    StorePolicy::owed_since(&self.store),
                    key.to_owned(),
                    Owed::Grant(out.len()),
                ));
            }
            self.store.live_only();
            self.rendered_at = Some(now);
            self.rendered_event_time = self.last_event_time;
            out.push(Outgoing::Live(topic, m));
        }
        self.rendered = self.buckets.get(&current).copied().unwrap_or_default();
        self.shown = Some(current);
        self.dirty = false;
    }

    /// The budget granted this render's live-only `out` a store: it is
    /// stored, then published live, as if the policy had stored it at once.
    fn grant(&mut self, now: DateTime<Utc>, out: &mut Outgoing) {
        if let Outgoing::Live(topic, m) = out {
            *out = Outgoing::Update(topic.clone(), m.clone());
            self.store.stored(now.timestamp_millis());
            self.rendered_at = None;
            self.rendered_event_time = None;
        }
    }

    /// The trailing store: the newest render again, same seq and contents,
    /// stored. It also goes out live, for gateways that took the topic up
    /// after that render and hold an older stored one; the others drop it
    /// by its seq. Threshold-held changes since stay held: the message is
    /// rebuilt from what was rendered, not from the buckets' values now.
    ///
    /// A topic from a checkpoint of a version that stored every render
    /// elsewhere has no record of its newest render: it is rebuilt from
    /// what was rendered, stamped now, under the seq raised after the
    /// restart.
    fn store_newest(&mut self, now: DateTime<Utc>, out: &mut Vec<Outgoing>) {
        self.store.stored(now.timestamp_millis());
        let Some(shown) = self.shown else {
            return;
        };
        let at = self.rendered_at.take().unwrap_or(now);
        let event_time = self.rendered_event_time.take().or(self.last_event_time);
        let m = UpdateMessage {
            kind: UpdateKind::Update,
            kpi: self.code.clone(),
            period: self.period,
            seq: self.seq,
            bucket_start: secs_to_time(shown),
            stats: self.rendered.view(),
            previous: self.previous_of(shown),
            event_time,
            updated_at: at,
            correction: false,
        };
        out.push(Outgoing::Update(
            Topic::new(self.code.clone(), self.period),
            m,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use kpi_core::KpiCode;
    use std::collections::HashMap;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("time")
    }

    fn ev(id: &str, value: f64, time: DateTime<Utc>, received: DateTime<Utc>) -> EventRecord {
        EventRecord {
            event_id: id.into(),
            kpi: KpiCode::parse("k").expect("code"),
            value,
            time,
            received_at: received,
            labels: Default::default(),
        }
    }

    fn minute() -> Topic {
        Topic::new(KpiCode::parse("k").expect("code"), Period::Minute)
    }

    /// The minute updates among `out`.
    fn updates(out: &[Outgoing]) -> Vec<&UpdateMessage> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Update(t, m) if t.period == Period::Minute => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_position_moves_only_with_the_last_event_of_a_message() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        st.apply_part(5, false, &ev("a", 1.0, t(0), t(0)), &l);
        assert_eq!(
            st.applied_seq, 0,
            "mid-message, the message is not applied yet"
        );
        st.apply_part(5, false, &ev("b", 2.0, t(0), t(0)), &l);
        st.apply_part(5, true, &ev("c", 3.0, t(0), t(0)), &l);
        assert_eq!(st.applied_seq, 5);
        let bucket = Period::Minute.bucket_start_secs(t(0));
        assert_eq!(st.stats(&minute(), bucket).map(|s| s.count), Some(3));
        // The whole message read again (a reopened feed) changes nothing.
        st.apply_part(5, false, &ev("a", 1.0, t(0), t(0)), &l);
        st.apply_part(5, true, &ev("c", 3.0, t(0), t(0)), &l);
        assert_eq!(st.stats(&minute(), bucket).map(|s| s.count), Some(3));
        st.skip(6, false);
        assert_eq!(st.applied_seq, 5);
        st.skip(6, true);
        assert_eq!(st.applied_seq, 6);
    }

    #[test]
    fn replayed_log_positions_are_ignored() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        st.apply(1, &ev("a", 1.0, t(0), t(0)), &l);
        st.apply(1, &ev("a", 1.0, t(0), t(0)), &l);
        let b = Period::Minute.bucket_start_secs(t(0));
        assert_eq!(st.stats(&minute(), b).map(|s| s.count), Some(1));
    }

    #[test]
    fn late_beyond_window_is_not_applied_but_within_is_a_correction() {
        let mut st = PartitionState::default();
        let l = Lateness {
            minute: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let m0 = Period::Minute.bucket_start_secs(t(0));
        let base = secs_to_time(m0);
        st.apply(1, &ev("a", 1.0, base, base), &l);
        st.render(base, &ThresholdPolicy::default());
        // Next minute starts; an event for the closed minute arrives 10 s after its end.
        let next = base + Duration::seconds(70);
        st.apply(2, &ev("b", 2.0, next, next), &l);
        st.render(next, &ThresholdPolicy::default());
        let late_ok = ev("c", 5.0, base + Duration::seconds(1), next);
        assert_eq!(st.apply(3, &late_ok, &l).late, 0);
        let out = st.render(next, &ThresholdPolicy::default());
        let ups = updates(&out);
        assert_eq!(ups.len(), 2);
        assert!(ups[0].correction && ups[0].bucket_start == base && ups[0].stats.count == 2);
        assert!(!ups[1].correction && ups[1].seq == ups[0].seq + 1);
        // 31 s after the end of the minute: too late for it, fine for hour and day.
        let too_late = ev("d", 9.0, base, base + Duration::seconds(91));
        assert_eq!(
            st.apply(4, &too_late, &l),
            Applied {
                applied: 2,
                late: 1,
                refused: false,
            }
        );
        assert_eq!(st.stats(&minute(), m0).map(|s| s.count), Some(2));
    }

    #[test]
    fn seq_grows_by_one_and_rollover_publishes_previous_once() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        let base = secs_to_time(Period::Minute.bucket_start_secs(t(0)));
        st.apply(1, &ev("a", 4.0, base, base), &l);
        let first = st.render(base, &ThresholdPolicy::default());
        let m = updates(&first)
            .into_iter()
            .find(|m| m.period == Period::Minute)
            .cloned();
        assert_eq!(m.as_ref().map(|m| m.seq), Some(1));
        let later = base + Duration::seconds(61);
        assert!(st
            .due(later, &ThresholdPolicy::default())
            .contains(&minute()));
        let out = st.render(later, &ThresholdPolicy::default());
        let roll = updates(&out)
            .into_iter()
            .find(|m| m.period == Period::Minute)
            .cloned();
        let roll = roll.expect("rollover update");
        assert_eq!(roll.seq, 2);
        assert_eq!(roll.stats.count, 0);
        assert_eq!(roll.previous.map(|p| p.stats.count), Some(1));
        assert!(out.iter().any(|o| matches!(o, Outgoing::History(t, h) if t.period == Period::Minute && h.bucket_start == base)));
        // Silent KPI: no further rollovers.
        assert!(!st
            .due(later + Duration::seconds(120), &ThresholdPolicy::default())
            .contains(&minute()));
    }

    #[test]
    fn threshold_holds_back_small_moves_but_not_bucket_closes() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        let policy = ThresholdPolicy::parse("k=10%").expect("policy");
        let base = secs_to_time(Period::Minute.bucket_start_secs(t(0)));
        st.apply(1, &ev("a", 100.0, base, base), &l);
        assert_eq!(updates(&st.render(base, &policy)).len(), 1);
        st.apply(2, &ev("b", 101.0, base + Duration::seconds(1), base), &l);
        assert!(
            !st.due(base, &policy).contains(&minute()),
            "a 1% move published"
        );
        st.apply(3, &ev("c", 150.0, base + Duration::seconds(2), base), &l);
        assert!(st.due(base, &policy).contains(&minute()));
        st.render(base, &policy);
        st.apply(4, &ev("d", 151.0, base + Duration::seconds(3), base), &l);
        let closed = st.render(base + Duration::seconds(60), &policy);
        let roll = updates(&closed);
        assert_eq!(roll.len(), 1);
        assert_eq!(roll[0].previous.map(|p| p.stats.count), Some(4));
    }

    #[test]
    fn huge_values_never_make_a_non_finite_aggregate_or_checkpoint() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        let base = secs_to_time(Period::Minute.bucket_start_secs(t(0)));
        st.apply(1, &ev("a", 1e308, base, base), &l);
        st.apply(2, &ev("b", 1e308, base, base), &l);
        st.apply(3, &ev("c", 2.0, base, base), &l);
        let out = st.render(base, &ThresholdPolicy::default());
        assert!(!out.is_empty());
        for o in &out {
            let (Outgoing::Live(_, m) | Outgoing::Update(_, m) | Outgoing::History(_, m)) = o;
            let s = &m.stats;
            assert!(s.count > 0);
            let fields = [Some(s.sum), s.avg, s.min, s.max, s.last];
            assert!(
                fields.iter().all(|f| f.is_some_and(f64::is_finite)),
                "a stats field is not a finite number: {s:?}"
            );
        }
        let back = PartitionState::from_json(&st.to_json()).expect("the checkpoint reads back");
        assert_eq!(back, st);
    }

    #[test]
    fn an_event_from_the_future_does_not_move_the_current_bucket() {
        let mut st = PartitionState::default();
        let l = Lateness::default();
        let base = secs_to_time(Period::Minute.bucket_start_secs(t(0)));
        st.apply(
            1,
            &ev("ahead", 5.0, base + Duration::seconds(240), base),
            &l,
        );
        st.apply(2, &ev("now", 1.0, base + Duration::seconds(1), base), &l);
        let out = st.render(base + Duration::seconds(2), &ThresholdPolicy::default());
        let ups = updates(&out);
        assert_eq!(ups.len(), 1);
        assert_eq!(
            ups[0].bucket_start, base,
            "the current minute is the clock's"
        );
        assert!(!ups[0].correction);
        assert_eq!(ups[0].stats.count, 1);
        // When the clock reaches it, the future bucket is shown as current.
        let later = st.render(base + Duration::seconds(241), &ThresholdPolicy::default());
        let ups = updates(&later);
        let last = ups.last().expect("an update at the rollover");
        assert_eq!(last.bucket_start, base + Duration::seconds(240));
        assert_eq!(last.stats.count, 1);
        assert!(ups.iter().all(|m| !m.correction), "{ups:?}");
    }

    /// Codes `k0`, `k1`, ... and an empty state that stores each topic at
    /// least once a second, at most `budget` stores per render.
    fn many_kpis(n: usize, budget: usize) -> (Vec<KpiCode>, PartitionState) {
        let codes = (0..n)
            .map(|i| KpiCode::parse(&format!("k{i}")).expect("code"))
            .collect();
        let mut state = PartitionState::default();
        state.set_store_policy(
            StorePolicy::new(std::time::Duration::from_secs(1)).with_budget(budget),
        );
        (codes, state)
    }

    /// An event of value 1 on every KPI of `codes`, timed and received at `now`.
    fn one_event_each(
        state: &mut PartitionState,
        codes: &[KpiCode],
        log_seq: &mut u64,
        now: DateTime<Utc>,
    ) {
        for code in codes {
            *log_seq += 1;
            let e = EventRecord {
                kpi: code.clone(),
                ..ev(&format!("e{log_seq}"), 1.0, now, now)
            };
            state.apply(*log_seq, &e, &Lateness::default());
        }
    }

    /// 30,000 topics rendering every 100 ms with a budget of 500 stores per
    /// render: no render stores more than that beyond the forced stores
    /// (the `STORE_EVERY` bound), no live seq runs more than `STORE_EVERY`
    /// past the topic's last stored one, and once events stop every
    /// topic's newest render is stored within the renders the budget needs.
    #[test]
    fn the_store_budget_bounds_stores_per_render_and_stores_everything_eventually() {
        const KPIS: usize = 10_000;
        const BUDGET: usize = 500;
        let (codes, mut state) = many_kpis(KPIS, BUDGET);
        let policy = ThresholdPolicy::default();
        // Per topic: (last stored seq, newest seq published).
        let mut seen: HashMap<Topic, (u64, u64)> = HashMap::new();
        let mut log_seq = 0;
        let check = |out: Vec<Outgoing>, seen: &mut HashMap<Topic, (u64, u64)>| {
            let mut unforced = 0;
            for o in out {
                let (topic, m, stored) = match o {
                    Outgoing::Live(t, m) => (t, m, false),
                    Outgoing::Update(t, m) => (t, m, true),
                    Outgoing::History(..) => continue,
                };
                let (last, newest) = seen.entry(topic).or_insert((0, 0));
                assert!(
                    m.seq <= *last + STORE_EVERY,
                    "seq {} after stored {last}",
                    m.seq
                );
                if stored {
                    if m.seq < *last + STORE_EVERY {
                        unforced += 1;
                    }
                    *last = m.seq;
                }
                *newest = (*newest).max(m.seq);
            }
            assert!(
                unforced <= BUDGET,
                "{unforced} unforced stores in one render"
            );
        };
        // 4 s of an event on every KPI every 100 ms, within one minute.
        let mut now = t(1);
        for _ in 0..40 {
            one_event_each(&mut state, &codes, &mut log_seq, now);
            check(state.render(now, &policy), &mut seen);
            now += Duration::milliseconds(100);
        }
        assert_eq!(seen.len(), 3 * KPIS);
        // Then quiet: the owed stores drain at the budget's pace.
        let needed = 3 * KPIS / BUDGET + 10;
        for _ in 0..needed {
            check(state.render(now, &policy), &mut seen);
            now += Duration::milliseconds(100);
        }
        let behind = seen
            .values()
            .filter(|(last, newest)| last != newest)
            .count();
        assert_eq!(behind, 0, "topics whose newest render is not stored");
        assert!(
            state.render(now, &policy).is_empty(),
            "nothing left to store"
        );
    }

    struct One(String);
    impl Watched for One {
        fn watched(&self, key: &str) -> bool {
            key == self.0
        }
    }

    /// A topic's newest value held back while nobody watched goes out at
    /// the first render after someone starts watching, not at its next
    /// store.
    #[test]
    fn a_held_back_render_goes_out_once_its_topic_is_watched() {
        let store = StorePolicy::new(std::time::Duration::from_secs(10));
        let policy = ThresholdPolicy::default();
        let l = Lateness::default();
        let mut st = PartitionState::default();
        st.set_store_policy(store);
        let nobody = One(String::new());
        let base = t(0) + Duration::seconds(5);
        st.apply(1, &ev("a", 1.0, base, base), &l);
        let first = st.render_watched(base, &policy, &nobody);
        assert_eq!(updates(&first).len(), 1, "a first render is stored");
        let later = base + Duration::seconds(1);
        st.apply(2, &ev("b", 2.0, later, later), &l);
        assert!(
            st.render_watched(later, &policy, &nobody).is_empty(),
            "unwatched: held until its store interval"
        );
        let soon = later + Duration::milliseconds(100);
        assert!(st.render_watched(soon, &policy, &nobody).is_empty());
        st.watch_started("k/minute");
        let out = st.render_watched(soon, &policy, &One("k/minute".into()));
        let sum = out.iter().find_map(|o| match o {
            Outgoing::Live(t, m) | Outgoing::Update(t, m) if t.period == Period::Minute => {
                Some(m.stats.sum)
            }
            _ => None,
        });
        assert_eq!(sum, Some(3.0), "{out:?}");
    }

    /// 500 KPIs with one watched: the watched one goes out live every
    /// render; the others render only stored, at most once per store
    /// interval and within the budget, across a minute boundary too (whose
    /// closes are not forced through for unwatched topics), and each closed
    /// minute still reaches the history. A topic that starts being watched
    /// goes out at the next render.
    #[test]
    fn unwatched_topics_render_only_when_stored() {
        const KPIS: usize = 500;
        const BUDGET: usize = 50;
        let (codes, mut state) = many_kpis(KPIS, BUDGET);
        let policy = ThresholdPolicy::default();
        let mut watched = One("k0/minute".into());
        let mut log_seq = 0;
        // Per unwatched topic: when it was last rendered (ms).
        let mut last_render: HashMap<Topic, i64> = HashMap::new();
        let mut watched_seqs: std::collections::HashSet<(Topic, u64)> = Default::default();
        let mut closed: std::collections::HashSet<Topic> = Default::default();
        // 70 s of an event on every KPI every 100 ms, across a minute boundary.
        let mut now = t(0) + Duration::seconds(30);
        for _ in 0..700 {
            one_event_each(&mut state, &codes, &mut log_seq, now);
            let out = state.render_watched(now, &policy, &watched);
            let mut stores = 0;
            for o in &out {
                match o {
                    Outgoing::Live(t, m) => {
                        assert_eq!(
                            t.to_string(),
                            watched.0,
                            "only the watched topic goes out live-only"
                        );
                        watched_seqs.insert((t.clone(), m.seq));
                    }
                    Outgoing::Update(t, m) if !m.correction => {
                        if t.to_string() == watched.0 {
                            watched_seqs.insert((t.clone(), m.seq));
                            continue;
                        }
                        stores += 1;
                        if let Some(at) = last_render.insert(t.clone(), now.timestamp_millis()) {
                            assert!(
                                now.timestamp_millis() - at >= 1000,
                                "{t} rendered {} ms after its last render",
                                now.timestamp_millis() - at
                            );
                        }
                    }
                    // Events from :30 on: 300 in the closed minute.
                    Outgoing::History(t, m) if t.period == Period::Minute => {
                        assert_eq!(
                            m.stats.count, 300,
                            "{t} closed with every event of its minute"
                        );
                        closed.insert(t.clone());
                    }
                    _ => {}
                }
            }
            assert!(stores <= BUDGET + 1, "{stores} stores in one render");
            if watched_seqs.len() == 100 {
                watched = One("k1/minute".into());
                state.watch_started("k1/minute");
            }
            now += Duration::milliseconds(100);
        }
        assert_eq!(
            watched_seqs.len(),
            700,
            "the watched topic renders at every render"
        );
        assert_eq!(
            closed.len(),
            KPIS,
            "every KPI's closed minute in the history"
        );
        assert_eq!(last_render.len(), 3 * KPIS, "every topic rendered, stored");
    }

    #[test]
    fn checkpoint_round_trips() {
        let mut st = PartitionState::default();
        st.apply(7, &ev("a", 4.5, t(3), t(3)), &Lateness::default());
        st.render(t(3), &ThresholdPolicy::default());
        let back = PartitionState::from_json(&st.to_json()).expect("decode");
        assert_eq!(back, st);
    }

    mod incremental_render {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// An event for KPI `kpi`, `ahead` s after the clock (may be
            /// negative: late), received now.
            Event { kpi: u8, ahead: i64, value: i8 },
            /// The clock moves on by this many seconds, then a render.
            Render { after: u16 },
            /// Checkpoint and reload (the render index is rebuilt).
            Reload,
            /// KPI `kpi` (all its periods) starts or stops being watched.
            Watch { kpi: u8, on: bool },
        }

        /// The KPIs `k<n>` watched, all periods.
        #[derive(Default)]
        struct Kpis(std::collections::HashSet<u8>);

        impl Watched for Kpis {
            fn watched(&self, key: &str) -> bool {
                key.strip_prefix('k')
                    .and_then(|k| k.split_once('/'))
                    .and_then(|(n, _)| n.parse().ok())
                    .is_some_and(|n: u8| self.0.contains(&n))
            }
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0u8..6, -150i64..90, any::<i8>())
                    .prop_map(|(kpi, ahead, value)| Step::Event { kpi, ahead, value }),
                3 => (0u16..200).prop_map(|after| Step::Render { after }),
                1 => Just(Step::Reload),
                1 => (0u8..6, any::<bool>()).prop_map(|(kpi, on)| Step::Watch { kpi, on }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Looking only at the topics events changed since the last
            /// render (between bucket boundaries) and at the trailing
            /// stores that fell due publishes exactly what looking at every
            /// topic would, whatever the store interval, budget and the
            /// topics watched.
            #[test]
            fn renders_the_same_as_scanning_every_topic(
                steps in prop::collection::vec(step(), 1..120),
                store_secs in prop_oneof![Just(0u64), 1u64..120],
                budget in prop_oneof![Just(usize::MAX), 1usize..4],
                all_watched in any::<bool>(),
            ) {
                // A threshold on some codes, so changed-but-not-due topics occur.
                let policy = ThresholdPolicy::parse("k1=50%,k3=2").expect("policy");
                let store = StorePolicy::new(std::time::Duration::from_secs(store_secs))
                    .with_budget(budget);
                let lateness = Lateness::default();
                let mut fast = PartitionState::default();
                let mut reference = PartitionState::default();
                fast.set_store_policy(store);
                reference.set_store_policy(store);
                let mut clock = 0i64;
                let mut watched = Kpis::default();
                if all_watched {
                    watched.0.extend(0..6);
                }
                for (i, step) in steps.into_iter().enumerate() {
                    match step {
                        Step::Event { kpi, ahead, value } => {
                            let e = EventRecord {
                                kpi: KpiCode::parse(&format!("k{kpi}")).expect("code"),
                                ..ev(&format!("e{i}"), f64::from(value), t(clock + ahead), t(clock))
                            };
                            fast.apply(i as u64 + 1, &e, &lateness);
                            reference.apply(i as u64 + 1, &e, &lateness);
                        }
                        Step::Render { after } => {
                            clock += i64::from(after);
                            let now = t(clock);
                            let mut listed = fast.due(now, &policy);
                            listed.sort();
                            let got = fast.render_watched(now, &policy, &watched);
                            let want = reference.render_due(now, &policy, true, &watched);
                            let mut rendered: Vec<Topic> = got
                                .iter()
                                .filter_map(|o| match o {
                                    Outgoing::Live(t, _) | Outgoing::Update(t, _) => Some(t.clone()),
                                    Outgoing::History(..) => None,
                                })
                                .collect();
                            rendered.sort();
                            rendered.dedup();
                            // A trailing store the budget defers publishes
                            // nothing yet, nor does an unwatched topic's render
                            // before its store is due.
                            if budget == usize::MAX && watched.0.len() == 6 {
                                prop_assert_eq!(&listed, &rendered, "due() at {}", clock);
                            } else {
                                prop_assert!(rendered.iter().all(|t| listed.contains(t)), "due() at {}", clock);
                            }
                            prop_assert_eq!(got, want, "at {}", clock);
                        }
                        Step::Watch { kpi, on } => {
                            if on {
                                if watched.0.insert(kpi) {
                                    for p in Period::ALL {
                                        fast.watch_started(&format!("k{kpi}/{}", p.as_str()));
                                    }
                                }
                            } else {
                                watched.0.remove(&kpi);
                            }
                        }
                        Step::Reload => {
                            fast = PartitionState::from_json(&fast.to_json()).expect("decode");
                            fast.set_store_policy(store);
                        }
                    }
                }
            }
        }
    }
}
