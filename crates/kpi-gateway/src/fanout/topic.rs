//! One watched topic: its recent updates, its latest value and its local subscribers.
//!
//! Everything here happens under one lock per topic: appending an update and
//! fanning it out, and registering a subscriber with its first messages. So a
//! new subscriber gets its snapshot (or missed updates) and then exactly the
//! updates that follow, with no gap and no duplicate between the two.
//!
//! Each update is classed once, here, for the `close` cadence: the first
//! update of a new bucket and a correction of a closed one are "closing";
//! the rest stay inside a bucket.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use kpi_core::{Cadence, Topic, UpdateMessage};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::fanout::outbox::{DataKind, Mode, Outbox, Patch, Source, SubId};

/// How long a stream resuming past the latest seq held here waits for a
/// newer update before it gets the latest as a snapshot. A gateway taking a
/// topic up starts from the stored updates, which may trail the live ones
/// the client saw elsewhere by the aggregator's store interval (1 s by
/// default): within this wait the next live update or the topic's trailing
/// store arrives, and the client never sees a value go back. Past it, the
/// client holds another series (the aggregator's seqs were reset).
pub const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Just enough of an update to order it; the bytes are relayed untouched.
#[derive(Deserialize)]
struct Head {
    seq: u64,
}

/// Just enough of an update to class it for the `close` cadence.
#[derive(Deserialize)]
struct BucketHead {
    bucket_start: String,
    #[serde(default)]
    correction: bool,
}

/// The `seq` of an update message, if it is one.
pub fn parse_seq(raw: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Head>(raw).ok().map(|h| h.seq)
}

/// The same message labelled `"type":"snapshot"`, other fields kept as they are.
pub fn relabel_snapshot(raw: &[u8]) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let obj = v.as_object_mut()?;
    obj.insert("type".into(), serde_json::Value::from("snapshot"));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The snapshot of a topic nobody has published to yet (seq 0).
pub fn empty_snapshot(topic: &Topic) -> (u64, Bytes) {
    let m = UpdateMessage::empty(topic.code.clone(), topic.period, chrono::Utc::now());
    (0, Bytes::from(m.to_json()))
}

/// Parses stored updates into (seq, bytes), sorted, skipping what is not an update.
pub fn parse_batch(raw: Vec<Bytes>) -> Vec<(u64, Bytes)> {
    let mut out: Vec<(u64, Bytes)> = raw
        .into_iter()
        .filter_map(|b| parse_seq(&b).map(|s| (s, b)))
        .collect();
    out.sort_by_key(|(s, _)| *s);
    out
}

/// One topic's updates and subscribers. Who holds it, and its upstream
/// subscription, are the hub's business, not this type's.
pub struct TopicShared {
    pub topic: Topic,
    state: Mutex<TopicState>,
}

struct TopicState {
    window: usize,
    /// Contiguous recent updates, oldest first (cleared on a discontinuity).
    ring: VecDeque<(u64, Bytes)>,
    latest_seq: u64,
    latest: Option<Bytes>,
    /// The bucket of the newest non-correction update (its `bucket_start`).
    bucket: Option<String>,
    /// The newest bucket boundary or correction, for `close` subscriptions.
    latest_closing: Option<(u64, Bytes)>,
    snapshot_cache: Option<(u64, Bytes)>,
    /// Each subscriber's outbox and mode.
    subscribers: HashMap<(u64, SubId), (Outbox, Mode)>,
    /// Subscribers taking patches: patches are computed only while some do.
    delta_subscribers: usize,
    /// Subscribers with the `close` cadence: updates are classed (parsed)
    /// only while some listen, so `live` fan-out costs what it did.
    close_subscribers: usize,
}

/// What a new subscriber starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The latest value as a snapshot.
    Snapshot,
    /// A stream resuming after this seq: the updates after it if still in
    /// memory; a snapshot when they are not, or when `since` is the latest
    /// seq (the client may have seen another series, after a seq reset, and
    /// must be brought back to this one). Past the latest seq, the client
    /// saw live updates newer than what is held: it gets the next update
    /// after `since`, or a snapshot after [`AHEAD_WAIT`] if none came.
    Since(u64),
    /// A poll after this seq: as `Since`, but at exactly the latest seq the
    /// poller is up to date and waits for the next update.
    After(u64),
}

impl TopicShared {
    /// A topic keeping `window` recent updates. The hub creates them; this is
    /// public so benchmarks and tools can drive fan-out without a bus.
    pub fn new(topic: Topic, window: usize) -> Arc<Self> {
        Arc::new(TopicShared {
            topic,
            state: Mutex::new(TopicState {
                window: window.max(1),
                ring: VecDeque::new(),
                latest_seq: 0,
                latest: None,
                bucket: None,
                latest_closing: None,
                snapshot_cache: None,
                subscribers: HashMap::new(),
                delta_subscribers: 0,
                close_subscribers: 0,
            }),
        })
    }

    /// Appends updates newer than the latest, in order, fanning each out.
    /// Older or repeated ones (a republish after an aggregator restart) are dropped.
    pub fn apply(&self, batch: Vec<(u64, Bytes)>) {
        let mut st = self.state.lock();
        for (seq, bytes) in batch {
            if seq <= st.latest_seq && st.latest.is_some() {
                continue;
            }
            let follows = st.latest.is_some() && seq == st.latest_seq + 1;
            if st.latest.is_some() && !follows {
                // The missing updates are gone for good: the ring must not
                // pretend to cover them.
                st.ring.clear();
            }
            // Once per update, shared by every delta subscriber.
            let patch = match &st.latest {
                Some(base) if follows && st.delta_subscribers > 0 => {
                    patch_message(&self.topic, st.latest_seq, base, seq, &bytes)
                }
                _ => None,
            };
            st.ring.push_back((seq, bytes.clone()));
            while st.ring.len() > st.window {
                st.ring.pop_front();
            }
            st.latest_seq = seq;
            st.latest = Some(bytes.clone());
            let kind = if st.close_subscribers > 0 {
                class(&mut st.bucket, &bytes)
            } else {
                DataKind::Update
            };
            if kind == DataKind::Closing {
                st.latest_closing = Some((seq, bytes.clone()));
            }
            for ((_, sub), (outbox, _)) in st.subscribers.iter() {
                outbox.push_data(*sub, seq, bytes.clone(), kind, patch.as_ref());
            }
        }
    }

    /// True when `seq` does not directly follow what we hold.
    pub(crate) fn is_gap(&self, seq: u64) -> bool {
        let st = self.state.lock();
        st.latest.is_some() && seq > st.latest_seq + 1 || st.latest.is_none() && seq > 1
    }

    /// Registers a subscriber and queues its first messages, under the lock
    /// fan-out takes, so nothing is missed or repeated in between. (Clients
    /// go through [`crate::fanout::hub::Interest::attach`], which also holds
    /// the upstream subscription.)
    pub fn attach(self: &Arc<Self>, outbox: &Outbox, sub: SubId, start: Start) {
        self.attach_as(outbox, sub, start, Mode::default());
    }

    /// [`TopicShared::attach`] with a cadence. Under any cadence but `live`
    /// a resume gets the newest value, not the backlog: a stream a snapshot
    /// now, a poll the newest update once due. A throttled poll (`After`)
    /// is held for its interval from now: the poller was just answered, so
    /// its request loop hears at most once per interval.
    pub fn attach_as(self: &Arc<Self>, outbox: &Outbox, sub: SubId, start: Start, mode: Mode) {
        let source: Weak<dyn Source> = Arc::downgrade(self) as Weak<dyn Source>;
        let mut st = self.state.lock();
        let latest = st.latest_seq;
        let live = mode.cadence == Cadence::Live;
        if mode.cadence == Cadence::Close && st.close_subscribers == 0 {
            // Classing starts now: from the bucket of the newest update.
            st.bucket = None;
            if let Some(latest) = st.latest.clone() {
                class(&mut st.bucket, &latest);
            }
        }
        st.count(mode, 1);
        // A resubscription replaces an entry: its counts go with it.
        if let Some((_, old)) = st
            .subscribers
            .insert((outbox.id(), sub), (outbox.clone(), mode))
        {
            st.count(old, -1);
        }
        let since = match start {
            Start::Snapshot => None,
            // Up to date: nothing old to send; the next update follows.
            // Behind and not live: only the newest is owed, fetched when due.
            Start::After(since) if since == latest || !live && since < latest => {
                outbox.add_sub(sub, source, Some(since), mode, since < latest);
                outbox.hold(sub);
                return;
            }
            Start::Since(since) if since > latest => {
                outbox.add_sub(sub, source, Some(since), mode, false);
                drop(st);
                self.snapshot_later(outbox, sub, since);
                return;
            }
            Start::Since(_) if !live => None,
            Start::Since(since) | Start::After(since) => (since < latest).then_some(since),
        };
        match since {
            Some(since)
                if st
                    .ring
                    .front()
                    .is_some_and(|(first, _)| *first <= since + 1) =>
            {
                outbox.add_sub(sub, source, Some(since), mode, false);
                for (seq, bytes) in st.ring.iter().filter(|(s, _)| *s > since) {
                    outbox.push_data(sub, *seq, bytes.clone(), DataKind::Update, None);
                }
            }
            _ => {
                outbox.add_sub(sub, source, None, mode, false);
                let (seq, bytes) = snapshot_locked(&self.topic, &mut st);
                outbox.push_data(sub, seq, bytes, DataKind::Snapshot, None);
            }
        }
    }

    /// After [`AHEAD_WAIT`], a snapshot for a stream that resumed past the
    /// latest seq, unless something newer reached the topic meanwhile.
    fn snapshot_later(self: &Arc<Self>, outbox: &Outbox, sub: SubId, since: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.snapshot_if_still_ahead(outbox, sub, since);
            return;
        };
        let (topic, outbox) = (Arc::downgrade(self), outbox.clone());
        rt.spawn(async move {
            tokio::time::sleep(AHEAD_WAIT).await;
            if let Some(topic) = topic.upgrade() {
                topic.snapshot_if_still_ahead(&outbox, sub, since);
            }
        });
    }

    fn snapshot_if_still_ahead(self: &Arc<Self>, outbox: &Outbox, sub: SubId, since: u64) {
        let mut st = self.state.lock();
        let Some(mode) = st.subscribers.get(&(outbox.id(), sub)).map(|(_, m)| *m) else {
            return;
        };
        if st.latest_seq > since {
            return;
        }
        // Forget `since`: the snapshot's seq is at or below it.
        let source: Weak<dyn Source> = Arc::downgrade(self) as Weak<dyn Source>;
        outbox.add_sub(sub, source, None, mode, false);
        let (seq, bytes) = snapshot_locked(&self.topic, &mut st);
        outbox.push_data(sub, seq, bytes, DataKind::Snapshot, None);
    }

    /// Undoes [`TopicShared::attach`]: no more updates for `sub`, and its
    /// queued ones are dropped.
    pub fn detach(&self, outbox: &Outbox, sub: SubId) {
        let mut st = self.state.lock();
        if let Some((_, old)) = st.subscribers.remove(&(outbox.id(), sub)) {
            st.count(old, -1);
        }
        drop(st);
        outbox.remove_sub(sub);
    }

    /// The latest value as a snapshot message, with its seq.
    pub fn snapshot(&self) -> (u64, Bytes) {
        let mut st = self.state.lock();
        snapshot_locked(&self.topic, &mut st)
    }

    /// The latest update as published, if any.
    pub fn latest_update(&self) -> Option<(u64, Bytes)> {
        let st = self.state.lock();
        st.latest.clone().map(|b| (st.latest_seq, b))
    }

    /// The newest bucket boundary or correction, if any.
    pub fn latest_closing(&self) -> Option<(u64, Bytes)> {
        self.state.lock().latest_closing.clone()
    }

    /// Updates after `since` when the ring covers all of them contiguously.
    pub fn updates_since(&self, since: u64) -> Option<Vec<(u64, Bytes)>> {
        let st = self.state.lock();
        if since >= st.latest_seq {
            return Some(Vec::new());
        }
        let covered = st
            .ring
            .front()
            .is_some_and(|(first, _)| *first <= since + 1);
        covered.then(|| {
            st.ring
                .iter()
                .filter(|(s, _)| *s > since)
                .cloned()
                .collect()
        })
    }

    pub fn subscriber_count(&self) -> usize {
        self.state.lock().subscribers.len()
    }
}

impl TopicState {
    /// Counts a subscriber in (`1`) or out (`-1`) of the delta and close tallies.
    fn count(&mut self, mode: Mode, by: isize) {
        if mode.delta {
            self.delta_subscribers = self.delta_subscribers.saturating_add_signed(by);
        }
        if mode.cadence == Cadence::Close {
            self.close_subscribers = self.close_subscribers.saturating_add_signed(by);
        }
    }
}

impl Source for TopicShared {
    fn snapshot(&self) -> (u64, Bytes) {
        TopicShared::snapshot(self)
    }

    fn latest_update(&self, closing_only: bool) -> Option<(u64, Bytes)> {
        if closing_only {
            self.latest_closing()
        } else {
            TopicShared::latest_update(self)
        }
    }
}

/// The `patch` message turning update `base_seq` (`base`) into `seq` (`new`):
/// `{"type":"patch","kpi":..,"period":..,"base_seq":..,"seq":..,"patch":{RFC 7386}}`.
/// None when the patch would not be smaller than the message itself (a new
/// bucket changes nearly every field): delta subscribers then get the full
/// message, so `encoding=delta` never costs more bytes than full messages.
fn patch_message(topic: &Topic, base_seq: u64, base: &[u8], seq: u64, new: &[u8]) -> Option<Patch> {
    let full_len = new.len();
    let old: serde_json::Value = serde_json::from_slice(base).ok()?;
    let new: serde_json::Value = serde_json::from_slice(new).ok()?;
    let msg = serde_json::json!({
        "type": "patch",
        "kpi": topic.code.as_str(),
        "period": topic.period.as_str(),
        "base_seq": base_seq,
        "seq": seq,
        "patch": kpi_core::merge_patch::diff(&old, &new),
    });
    let bytes = serde_json::to_vec(&msg).ok()?;
    if bytes.len() >= full_len {
        return None;
    }
    Some(Patch {
        base_seq,
        bytes: Bytes::from(bytes),
    })
}

/// Classes an update against the bucket of the previous one (updating it):
/// a correction, or a first update in a later bucket, is closing. The first
/// update a topic sees opens no boundary: what closed before it is unknown.
fn class(bucket: &mut Option<String>, raw: &[u8]) -> DataKind {
    let Ok(head) = serde_json::from_slice::<BucketHead>(raw) else {
        return DataKind::Update;
    };
    if head.correction {
        return DataKind::Closing;
    }
    // RFC 3339 UTC times of one format order as strings do.
    let closing = bucket.as_ref().is_some_and(|b| head.bucket_start > *b);
    if bucket.as_ref().is_none_or(|b| head.bucket_start > *b) {
        *bucket = Some(head.bucket_start);
    }
    if closing {
        DataKind::Closing
    } else {
        DataKind::Update
    }
}

fn snapshot_locked(topic: &Topic, st: &mut TopicState) -> (u64, Bytes) {
    let Some(latest) = st.latest.as_ref() else {
        return empty_snapshot(topic);
    };
    if let Some((seq, bytes)) = &st.snapshot_cache {
        if *seq == st.latest_seq {
            return (*seq, bytes.clone());
        }
    }
    // Serialized once per new latest value, then shared by every new subscriber.
    let bytes = relabel_snapshot(latest).unwrap_or_else(|| latest.clone());
    st.snapshot_cache = Some((st.latest_seq, bytes.clone()));
    (st.latest_seq, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::outbox::Out;
    use kpi_core::{KpiCode, Period, UpdateKind};

    fn topic() -> Topic {
        Topic::new(KpiCode::parse("t").expect("code"), Period::Minute)
    }

    fn update(seq: u64) -> (u64, Bytes) {
        let mut m = UpdateMessage::empty(topic().code, Period::Minute, chrono::Utc::now());
        m.kind = UpdateKind::Update;
        m.seq = seq;
        (seq, Bytes::from(m.to_json()))
    }

    fn drain(o: &Outbox) -> Vec<(u64, String)> {
        let mut v = Vec::new();
        while let Some(Out::Data { seq, bytes }) = o.try_next() {
            let m: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            v.push((seq, m["type"].as_str().unwrap_or_default().to_string()));
        }
        v
    }

    #[test]
    fn snapshot_then_stream_without_gap_or_duplicate() {
        let t = TopicShared::new(topic(), 8);
        t.apply((1..=5).map(update).collect());
        let o = Outbox::new(100);
        t.attach(&o, 1, Start::Snapshot);
        t.apply(vec![update(5), update(6)]);
        assert_eq!(
            drain(&o),
            vec![(5, "snapshot".into()), (6, "update".into())]
        );
    }

    #[test]
    fn since_inside_the_window_gets_exactly_the_missed_updates() {
        let t = TopicShared::new(topic(), 8);
        t.apply((1..=10).map(update).collect());
        let o = Outbox::new(100);
        t.attach(&o, 1, Start::Since(7));
        let got: Vec<u64> = drain(&o).into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, vec![8, 9, 10]);
        // Older than the window (ring holds 3..=10): a snapshot instead.
        let o2 = Outbox::new(100);
        t.attach(&o2, 1, Start::Since(1));
        assert_eq!(drain(&o2), vec![(10, "snapshot".into())]);
        // At the latest: a stream gets a snapshot (it may come from another
        // series), a poll waits for the next update.
        let o3 = Outbox::new(100);
        t.attach(&o3, 1, Start::Since(10));
        assert_eq!(drain(&o3), vec![(10, "snapshot".into())]);
        let o4 = Outbox::new(100);
        t.attach(&o4, 1, Start::After(10));
        assert!(drain(&o4).is_empty());
        // Ahead of us (a seq reset): a snapshot for both.
        let o5 = Outbox::new(100);
        t.attach(&o5, 1, Start::After(12));
        assert_eq!(drain(&o5), vec![(10, "snapshot".into())]);
    }

    #[test]
    fn a_discontinuity_empties_the_ring() {
        let t = TopicShared::new(topic(), 8);
        t.apply(vec![update(1), update(2), update(5)]);
        assert!(t.updates_since(1).is_none());
        assert_eq!(t.updates_since(4).map(|v| v.len()), Some(1));
    }

    #[test]
    fn never_published_gives_the_empty_snapshot() {
        let t = TopicShared::new(topic(), 8);
        let (seq, bytes) = t.snapshot();
        assert_eq!(seq, 0);
        let m = UpdateMessage::from_json(&bytes).expect("update message");
        assert_eq!((m.kind, m.seq), (UpdateKind::Snapshot, 0));
    }
}
