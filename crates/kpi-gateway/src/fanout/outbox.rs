//! A connection's bounded outgoing queue that conflates instead of growing.
//!
//! Fan-out pushes into an outbox while holding its source's lock, so pushing
//! never waits: when the queue holds `capacity` data messages, a new update is
//! not queued, its subscription is only marked dirty. When the writer has
//! drained the queue it sends the source's *current* latest value for every
//! dirty subscription. The writer remembers the last `seq` it sent per
//! subscription and never sends one that is not greater, so a client never
//! sees an older value after a newer one nor the same one twice, and memory
//! per connection is bounded by `capacity` whatever the publish rate.
//!
//! Pausing (one subscription or the whole connection) uses the same path:
//! updates are not queued but mark the subscription dirty, and resuming sends
//! the latest value if it is newer than what the client last saw.
//!
//! A subscription's cadence rides on the same path too. A throttled one
//! (`cadence=<N>s`) is held for N after each message it was sent: updates
//! meanwhile only mark it dirty, and the writer (one timer per connection,
//! armed for the earliest held subscription) sends the newest value when
//! the hold ends: trailing edge, never lost. A `close` subscription ignores
//! updates inside a bucket and hears only boundaries and corrections.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kpi_core::Cadence;
use parking_lot::{Mutex, MutexGuard};

/// Identifies one subscription within one connection.
pub type SubId = u64;

/// Where a subscription's newest value is read from when its updates were
/// conflated (a topic, for the gateway). Held weakly: the source holds the
/// outbox, a strong link back would be a cycle.
pub trait Source: Send + Sync {
    /// The value to start from: its seq and the snapshot message.
    fn snapshot(&self) -> (u64, Bytes);
    /// The newest update as published, if any; with `closing_only`, the
    /// newest bucket boundary or correction (what a `close` cadence hears).
    fn latest_update(&self, closing_only: bool) -> Option<(u64, Bytes)>;
}

/// How a subscription hears: its cadence, and whether it takes merge
/// patches (`encoding=delta`) when it already holds their base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode {
    pub cadence: Cadence,
    pub delta: bool,
}

/// An update's merge patch message against the update just before it.
#[derive(Debug, Clone)]
pub struct Patch {
    pub base_seq: u64,
    pub bytes: Bytes,
}

/// What a data message is to the cadences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// A subscription's first message.
    Snapshot,
    /// A change inside the current bucket.
    Update,
    /// The first update of a new bucket (its `previous` is the bucket that
    /// closed), or a correction of a closed bucket.
    Closing,
}

/// Replies and errors allowed beyond the data capacity. They are produced
/// only in answer to (rate-limited) client messages, so a client that sends
/// requests and never reads hits this and is closed as a slow consumer.
const CONTROL_SLACK: usize = 64;

/// What the writer sends next.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A snapshot or update of one subscription; `seq` is its `seq`.
    Data { seq: u64, bytes: Bytes },
    /// A reply or error message, already JSON.
    Control(Bytes),
    /// A WebSocket ping (transports without pings ignore it).
    Ping,
    /// The answer to a client's ping, with its payload.
    Pong(Bytes),
    /// Send `error` (if any), then close with `code` and `reason`, then stop.
    Close {
        code: u16,
        reason: &'static str,
        error: Option<Bytes>,
    },
}

enum Item {
    Data {
        sub: SubId,
        seq: u64,
        bytes: Bytes,
        kind: DataKind,
        /// Kept only for a delta subscription.
        patch: Option<Patch>,
    },
    Control(Bytes),
    Ping,
    Pong(Bytes),
}

struct SubState {
    source: Weak<dyn Source>,
    /// Highest seq written for this subscription; `None` until its snapshot
    /// (a plain subscription must start with one).
    last_sent: Option<u64>,
    /// An update was not queued (full or paused): send the latest when possible.
    dirty: bool,
    paused: bool,
    cadence: Cadence,
    delta: bool,
    /// Throttled: nothing more goes out before this instant.
    hold_until: Option<Instant>,
}

impl SubState {
    /// Whether a message of `kind` is held back now (it marks the
    /// subscription dirty instead).
    fn held(&self, kind: DataKind) -> bool {
        kind != DataKind::Snapshot && self.hold_until.is_some_and(|t| Instant::now() < t)
    }

    /// Records that a message went out: a throttled subscription holds.
    fn sent(&mut self, seq: u64) {
        self.last_sent = Some(seq);
        if let Some(d) = self.cadence.interval() {
            self.hold_until = Some(Instant::now() + d);
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    /// Data items in `queue` (control items are counted apart).
    data_len: usize,
    ping_queued: bool,
    /// Values already checked against `last_sent`, to go out before the queue.
    ready: VecDeque<(u64, Bytes)>,
    subs: HashMap<SubId, SubState>,
    /// Some subscription may be dirty: without this the writer would scan
    /// every subscription each time it finds the queue empty.
    maybe_dirty: bool,
    /// When the earliest held, dirty subscription is due (the writer's timer).
    next_due: Option<Instant>,
    paused: bool,
    /// Since when the oldest queued item has waited without the writer taking
    /// anything: the writer is blocked on a client that does not read.
    waiting_since: Option<Instant>,
    /// Boxed: a close is rare, and inline it made every outbox's state a
    /// cache line longer.
    close: Option<Box<Out>>,
    finished: bool,
    /// The writer, waiting for something to send. Kept under the same lock
    /// as the queue (rather than a separate `Notify`) so a push and its
    /// wake-up take one lock, not three.
    waker: Option<Waker>,
}

/// What one [`Outbox::fill`] handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Data messages among them (for the sent counter).
    pub data: u64,
    /// The last was the close: nothing follows.
    pub last: bool,
}

struct Shared {
    id: u64,
    capacity: usize,
    state: Mutex<State>,
}

/// Releases the lock, then wakes the writer if it waits.
fn wake(mut st: MutexGuard<'_, State>) {
    let waker = st.waker.take();
    drop(st);
    if let Some(w) = waker {
        w.wake();
    }
}

/// One connection's queue; clones share it. One task consumes it
/// ([`Outbox::fill`] or [`Outbox::next`]).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Shared>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            inner: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                capacity: capacity.max(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Unique per outbox, so a source can key subscribers by (outbox, sub).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Adds a subscription whose conflated values come from `source`. A
    /// `dirty` one fetches its source's newest value when the writer next looks.
    pub fn add_sub(
        &self,
        sub: SubId,
        source: Weak<dyn Source>,
        last_sent: Option<u64>,
        mode: Mode,
        dirty: bool,
    ) {
        let mut st = self.inner.state.lock();
        st.subs.insert(
            sub,
            SubState {
                source,
                last_sent,
                dirty,
                paused: false,
                cadence: mode.cadence,
                delta: mode.delta,
                hold_until: None,
            },
        );
        st.maybe_dirty |= dirty;
    }

    /// Holds a throttled subscription for its interval from now, as if a
    /// message had just gone out (a poll that carries `since` was just
    /// answered). No effect on other cadences.
    pub fn hold(&self, sub: SubId) {
        if let Some(s) = self.inner.state.lock().subs.get_mut(&sub) {
            if let Some(d) = s.cadence.interval() {
                s.hold_until = Some(Instant::now() + d);
            }
        }
    }

    /// When the earliest held subscription with something newer is due.
    fn next_due(&self) -> Option<Instant> {
        self.inner.state.lock().next_due
    }

    pub fn remove_sub(&self, sub: SubId) {
        // Queued items of a removed subscription are skipped by the writer.
        self.inner.state.lock().subs.remove(&sub);
    }

    /// Queues a data message, or marks its subscription dirty when the queue
    /// is full or the subscription is paused. Never blocks, never grows past capacity.
    /// `patch`, when given, goes out instead of `bytes` to a delta
    /// subscription whose last message was the patch's base.
    pub fn push_data(
        &self,
        sub: SubId,
        seq: u64,
        bytes: Bytes,
        kind: DataKind,
        patch: Option<&Patch>,
    ) {
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        if st.close.is_some() || st.finished {
            return;
        }
        let Some(s) = st.subs.get_mut(&sub) else {
            return;
        };
        if s.cadence == Cadence::Close && kind == DataKind::Update {
            return;
        }
        if s.held(kind) {
            // The first update held since the last send wakes the writer to
            // arm its timer; later ones find it armed.
            let first = !s.dirty;
            s.dirty = true;
            st.maybe_dirty = true;
            if first {
                wake(guard);
            }
            return;
        }
        if st.paused || s.paused || st.data_len >= self.inner.capacity {
            s.dirty = true;
            st.maybe_dirty = true;
            crate::metrics::conflated();
            return;
        }
        // Whatever was missed before is older than this one, which will go out.
        if s.last_sent.is_some() {
            s.dirty = false;
        }
        st.waiting_since.get_or_insert_with(Instant::now);
        let patch = patch.filter(|_| s.delta).cloned();
        st.queue.push_back(Item::Data {
            sub,
            seq,
            bytes,
            kind,
            patch,
        });
        st.data_len += 1;
        wake(guard);
    }

    /// Queues a reply. False when the client has left too many unread, in
    /// which case the caller should close it as a slow consumer.
    pub fn push_control(&self, bytes: Bytes) -> bool {
        let mut st = self.inner.state.lock();
        if st.close.is_some() || st.finished {
            return true;
        }
        if st.queue.len() - st.data_len >= CONTROL_SLACK {
            return false;
        }
        st.waiting_since.get_or_insert_with(Instant::now);
        st.queue.push_back(Item::Control(bytes));
        wake(st);
        true
    }

    /// Queues the answer to a client's ping. A client pinging faster than it
    /// reads gets answers to some pings only, as RFC 6455 allows.
    pub fn push_pong(&self, payload: Bytes) {
        let mut st = self.inner.state.lock();
        if st.close.is_some() || st.finished || st.queue.len() - st.data_len >= CONTROL_SLACK {
            return;
        }
        st.waiting_since.get_or_insert_with(Instant::now);
        st.queue.push_back(Item::Pong(payload));
        wake(st);
    }

    /// Queues a ping unless one is already waiting.
    pub fn push_ping(&self) {
        let mut st = self.inner.state.lock();
        if st.ping_queued || st.close.is_some() || st.finished {
            return;
        }
        st.ping_queued = true;
        st.waiting_since.get_or_insert_with(Instant::now);
        st.queue.push_back(Item::Ping);
        wake(st);
    }

    /// Asks the writer to close; queued messages are dropped. The first request wins.
    pub fn close(&self, code: u16, reason: &'static str, error: Option<Bytes>) {
        let mut st = self.inner.state.lock();
        if st.close.is_none() && !st.finished {
            st.close = Some(Box::new(Out::Close {
                code,
                reason,
                error,
            }));
        }
        wake(st);
    }

    pub fn is_closing(&self) -> bool {
        let st = self.inner.state.lock();
        st.close.is_some() || st.finished
    }

    /// Pauses one subscription, or the whole connection with `None`.
    /// False when that subscription does not exist.
    pub fn pause(&self, sub: Option<SubId>) -> bool {
        self.set_paused(sub, true)
    }

    /// Resumes; the latest value goes out if newer than the last one sent.
    pub fn resume(&self, sub: Option<SubId>) -> bool {
        self.set_paused(sub, false)
    }

    fn set_paused(&self, sub: Option<SubId>, paused: bool) -> bool {
        let mut st = self.inner.state.lock();
        if !paused {
            st.maybe_dirty = true;
        }
        let found = match sub {
            None => {
                st.paused = paused;
                if !paused {
                    // Anything that arrived meanwhile was marked dirty; also
                    // recheck everything in case the marks were consumed.
                    st.subs.values_mut().for_each(|s| s.dirty = true);
                }
                true
            }
            Some(id) => match st.subs.get_mut(&id) {
                Some(s) => {
                    s.paused = paused;
                    if !paused {
                        s.dirty = true;
                    }
                    true
                }
                None => false,
            },
        };
        if paused {
            drop(st);
        } else {
            wake(st);
        }
        found
    }

    /// How long queued messages have waited without the writer taking any:
    /// the time a client has not been reading while it had something to read.
    /// (A writer blocked on a full socket takes nothing, so this grows while
    /// the queue fills up and then conflates.)
    pub fn stalled_for(&self) -> Option<Duration> {
        self.inner.state.lock().waiting_since.map(|t| t.elapsed())
    }

    /// Data messages queued now (for tests and bounds checks).
    pub fn queued(&self) -> usize {
        self.inner.state.lock().data_len
    }

    /// Waits for something to send, then passes up to `max` messages to
    /// `f`, in order, all taken under one lock. `None` once a close was
    /// handed out.
    pub async fn fill(&self, max: usize, mut f: impl FnMut(Out)) -> Option<Filled> {
        // The connection's one timer: armed only while a throttled
        // subscription holds something newer, for the earliest of them.
        let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| loop {
            if let Poll::Ready(r) = self.poll_fill(Some(cx.waker()), max, &mut f) {
                return Poll::Ready(r);
            }
            let Some(due) = self.next_due() else {
                return Poll::Pending;
            };
            let due = tokio::time::Instant::from_std(due);
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if t.deadline() != due {
                t.as_mut().reset(due);
            }
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Due: look again, the hold is over.
        })
        .await
    }

    /// The next thing to send; waits for one. `None` once a close was handed out.
    pub async fn next(&self) -> Option<Out> {
        let mut got = None;
        self.fill(1, |out| got = Some(out)).await?;
        got
    }

    /// The next thing to send if there is one now.
    pub fn try_next(&self) -> Option<Out> {
        let mut got = None;
        match self.poll_fill(None, 1, &mut |out| got = Some(out)) {
            Poll::Ready(Some(_)) => got,
            _ => None,
        }
    }

    /// Takes what is ready; with nothing ready, leaves `waker` to be woken
    /// by the next push and returns `Pending`.
    fn poll_fill(
        &self,
        waker: Option<&Waker>,
        max: usize,
        f: &mut dyn FnMut(Out),
    ) -> Poll<Option<Filled>> {
        loop {
            let dirty = {
                let mut guard = self.inner.state.lock();
                let st = &mut *guard;
                if st.finished {
                    return Poll::Ready(None);
                }
                let mut filled = Filled {
                    data: 0,
                    last: false,
                };
                let mut taken = 0;
                while taken < max.max(1) {
                    let Some(out) = pop(st) else { break };
                    taken += 1;
                    match &out {
                        Out::Data { .. } => filled.data += 1,
                        Out::Close { .. } => filled.last = true,
                        _ => {}
                    }
                    f(out);
                    if filled.last {
                        break;
                    }
                }
                if taken > 0 {
                    // The writer is taking: the clock restarts for what remains.
                    st.waiting_since = (!st.queue.is_empty()).then(Instant::now);
                    return Poll::Ready(Some(filled));
                }
                let dirty = take_dirty(st);
                if dirty.is_empty() {
                    if let Some(w) = waker {
                        if !st.waker.as_ref().is_some_and(|old| old.will_wake(w)) {
                            st.waker = Some(w.clone());
                        }
                    }
                    return Poll::Pending;
                }
                dirty
            };
            self.fetch_latest(dirty);
        }
    }

    /// Reads the latest value of each dirty subscription's source and readies
    /// those newer than what was sent.
    fn fetch_latest(&self, dirty: Vec<Dirty>) {
        // Read the sources without holding our lock: a source locks itself
        // then pushes here, so the reverse order could deadlock.
        let mut found = Vec::new();
        for (id, source, last, cadence) in dirty {
            let Some(source) = source.upgrade() else {
                continue;
            };
            let candidate = match last {
                None => Some(source.snapshot()),
                Some(last) => source
                    .latest_update(cadence == Cadence::Close)
                    .filter(|(seq, _)| *seq > last),
            };
            if let Some(c) = candidate {
                found.push((id, c));
            }
        }
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        for (id, (seq, bytes)) in found {
            let paused = st.paused;
            let Some(s) = st.subs.get_mut(&id) else {
                continue;
            };
            if paused || s.paused {
                s.dirty = true;
                st.maybe_dirty = true;
                continue;
            }
            // Re-checked: the writer is the only one moving last_sent, but a
            // resubscription could have replaced the entry meanwhile.
            if s.last_sent.is_none_or(|last| seq > last) {
                s.sent(seq);
                st.ready.push_back((seq, bytes));
            }
        }
    }
}

/// The next message from the close, the readied values or the queue.
fn pop(st: &mut State) -> Option<Out> {
    if let Some(close) = st.close.take() {
        st.finished = true;
        st.queue.clear();
        st.waiting_since = None;
        st.ready.clear();
        st.data_len = 0;
        st.waker = None;
        return Some(*close);
    }
    if let Some((seq, bytes)) = st.ready.pop_front() {
        return Some(Out::Data { seq, bytes });
    }
    while let Some(item) = st.queue.pop_front() {
        match item {
            Item::Control(b) => return Some(Out::Control(b)),
            Item::Pong(p) => return Some(Out::Pong(p)),
            Item::Ping => {
                st.ping_queued = false;
                return Some(Out::Ping);
            }
            Item::Data {
                sub,
                seq,
                bytes,
                kind,
                patch,
            } => {
                st.data_len -= 1;
                let Some(s) = st.subs.get_mut(&sub) else {
                    continue;
                };
                if st.paused || s.paused || s.held(kind) {
                    s.dirty = true;
                    st.maybe_dirty = true;
                    continue;
                }
                match s.last_sent {
                    // The first message of a subscription must be a
                    // snapshot; the dirty path will fetch one.
                    None if kind != DataKind::Snapshot => {
                        s.dirty = true;
                        st.maybe_dirty = true;
                        continue;
                    }
                    Some(last) if seq <= last => continue,
                    _ => {}
                }
                // The patch only if the client holds its base; a full
                // message otherwise (after a gap, a conflation, a resume).
                let bytes = match patch {
                    Some(p) if s.last_sent == Some(p.base_seq) => p.bytes,
                    _ => bytes,
                };
                s.sent(seq);
                return Some(Out::Data { seq, bytes });
            }
        }
    }
    None
}

/// A dirty subscription to look up: its id, source, last seq sent and cadence.
type Dirty = (SubId, Weak<dyn Source>, Option<u64>, Cadence);

/// Dirty subscriptions neither paused nor held (their marks cleared), to
/// look up; notes when the earliest held one is due.
fn take_dirty(st: &mut State) -> Vec<Dirty> {
    let mut dirty = Vec::new();
    st.next_due = None;
    if st.paused || !st.maybe_dirty {
        return dirty;
    }
    let mut left = false;
    let now = Instant::now();
    let mut next_due: Option<Instant> = None;
    for (id, s) in st.subs.iter_mut() {
        let hold = s.hold_until.filter(|t| *t > now);
        if s.dirty && !s.paused && hold.is_none() {
            s.dirty = false;
            dirty.push((*id, s.source.clone(), s.last_sent, s.cadence));
        } else if s.dirty {
            left = true;
            if let Some(t) = hold.filter(|_| !s.paused) {
                next_due = Some(next_due.map_or(t, |n| n.min(t)));
            }
        }
    }
    st.maybe_dirty = left;
    st.next_due = next_due;
    dirty
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::topic::{Start, TopicShared};
    use kpi_core::{KpiCode, Period, Topic, UpdateKind, UpdateMessage};

    fn topic() -> Arc<TopicShared> {
        TopicShared::new(
            Topic::new(KpiCode::parse("k").expect("code"), Period::Minute),
            64,
        )
    }

    fn update(seq: u64) -> (u64, Bytes) {
        let mut m = UpdateMessage::empty(
            KpiCode::parse("k").expect("code"),
            Period::Minute,
            chrono::Utc::now(),
        );
        m.kind = UpdateKind::Update;
        m.seq = seq;
        (seq, Bytes::from(m.to_json()))
    }

    fn seqs(o: &Outbox) -> Vec<u64> {
        let mut v = Vec::new();
        while let Some(out) = o.try_next() {
            if let Out::Data { seq, .. } = out {
                v.push(seq);
            }
        }
        v
    }

    #[test]
    fn a_full_queue_conflates_to_the_latest_and_stays_bounded() {
        let t = topic();
        let o = Outbox::new(4);
        t.attach(&o, 1, Start::Snapshot);
        for s in 1..=20_000 {
            t.apply(vec![update(s)]);
            assert!(o.queued() <= 4);
        }
        assert_eq!(seqs(&o), vec![0, 1, 2, 3, 20_000]);
        t.apply(vec![update(20_001)]);
        assert_eq!(seqs(&o), vec![20_001]);
    }

    #[test]
    fn the_first_message_is_a_snapshot_even_when_it_was_conflated() {
        let t = topic();
        t.apply(vec![update(1)]);
        let o = Outbox::new(1);
        o.push_control(Bytes::from_static(b"{}"));
        let other = topic();
        other.attach(&o, 9, Start::Snapshot); // fills the one data slot
        t.attach(&o, 1, Start::Snapshot); // its snapshot finds no room
        t.apply(vec![update(2)]);
        let mut got = Vec::new();
        while let Some(out) = o.try_next() {
            if let Out::Data { bytes, .. } = out {
                let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                got.push((
                    v["kpi"].to_string(),
                    v["type"].to_string(),
                    v["seq"].as_u64(),
                ));
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, "\"snapshot\"");
        assert_eq!(got[1].2, Some(2));
    }

    #[test]
    fn pause_holds_back_and_resume_sends_only_the_latest() {
        let t = topic();
        let o = Outbox::new(16);
        t.attach(&o, 1, Start::Snapshot);
        assert_eq!(seqs(&o), vec![0]);
        o.pause(Some(1));
        t.apply((1..=5).map(update).collect());
        assert!(seqs(&o).is_empty());
        o.resume(Some(1));
        assert_eq!(seqs(&o), vec![5]);
        o.resume(Some(1));
        assert!(seqs(&o).is_empty(), "nothing newer, nothing sent");
        assert!(!o.pause(Some(42)), "unknown subscription");
    }

    #[test]
    fn never_an_older_value_after_a_newer_one() {
        let t = topic();
        let o = Outbox::new(2);
        t.attach(&o, 1, Start::After(0));
        t.apply((1..=10).map(update).collect());
        // Queue holds 1, 2; 3..=10 conflated. Drained: 1, 2, then latest 10.
        assert_eq!(seqs(&o), vec![1, 2, 10]);
        // A stale republish never goes out.
        o.push_data(1, 7, update(7).1, DataKind::Update, None);
        assert!(seqs(&o).is_empty());
    }

    fn data_seqs(outs: &[Out]) -> Vec<u64> {
        outs.iter()
            .filter_map(|o| match o {
                Out::Data { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn fill_takes_a_batch_in_order_up_to_max() {
        let t = topic();
        let o = Outbox::new(16);
        t.attach(&o, 1, Start::Snapshot);
        t.apply((1..=5).map(update).collect());
        o.push_ping();
        let mut got = Vec::new();
        let filled = o.fill(4, |out| got.push(out)).await.expect("not finished");
        assert_eq!((filled.data, filled.last), (4, false));
        assert_eq!(data_seqs(&got), vec![0, 1, 2, 3]);
        got.clear();
        let filled = o.fill(64, |out| got.push(out)).await.expect("more");
        assert_eq!((filled.data, filled.last), (2, false));
        assert!(matches!(
            got.as_slice(),
            [
                Out::Data { seq: 4, .. },
                Out::Data { seq: 5, .. },
                Out::Ping
            ]
        ));
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_push_a_resume_and_a_close() {
        let t = topic();
        let o = Outbox::new(16);
        t.attach(&o, 1, Start::Snapshot);
        assert_eq!(seqs(&o), vec![0]);
        let writer = {
            let o = o.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(out) = o.next().await {
                    got.push(out);
                }
                got
            })
        };
        // One runtime thread: each pause lets the writer run if it was woken.
        let pause = || tokio::time::sleep(Duration::from_millis(20));
        pause().await;
        t.apply(vec![update(1)]);
        pause().await;
        o.pause(None);
        t.apply(vec![update(2)]);
        pause().await;
        assert_eq!(o.queued(), 0, "paused: marked, not queued");
        o.resume(None);
        pause().await;
        o.close(1000, "", None);
        let got = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer was woken each time")
            .expect("writer task");
        assert_eq!(data_seqs(&got), vec![1, 2]);
        assert!(matches!(got.last(), Some(Out::Close { code: 1000, .. })));
    }

    #[tokio::test]
    async fn close_wins_over_queued_data() {
        let t = topic();
        let o = Outbox::new(8);
        t.attach(&o, 1, Start::Snapshot);
        o.close(4008, "slow consumer", None);
        assert!(matches!(
            o.next().await,
            Some(Out::Close { code: 4008, .. })
        ));
        assert_eq!(o.next().await, None);
    }
}
