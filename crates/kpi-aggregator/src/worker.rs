//! One partition's loop: read events in log order, apply, publish what changed, checkpoint.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use kpi_bus::{Bus, BusError, EventFeed, Outbound, PartialPublish, StoredEvent};
use kpi_core::{Topic, UpdateMessage};
use kpi_service::Shutdown;
use tokio::sync::mpsc;

use crate::config::AggregatorSettings;
use crate::dedupe::Dedupe;
use crate::interest::Interest;
use crate::metrics as m;
use crate::state::{Outgoing, PartitionState};
use crate::store_policy::StorePolicy;

/// At most one log line about late events per this interval.
const LATE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause before retrying after the bus failed.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Evicted topics remembered for an exact seq when they return.
const EVICTED_REMEMBERED: usize = 100_000;
/// A checkpoint waits at least this many times what the last one took.
const CHECKPOINT_COST_SHARE: u32 = 50;
/// The longest wait between checkpoints, however costly they are.
const MAX_CHECKPOINT_GAP: Duration = Duration::from_secs(30);
/// Reads of topics' last stored seqs in flight at once.
const SYNC_READS: usize = 32;
/// Events read ahead of the worker. When full, the reader waits: the log is
/// the buffer, so nothing is dropped.
const READ_AHEAD: usize = 1024;
/// The duplicate window is rebuilt after a restart from this much before
/// the checkpoint's watermark minus the window: room for ingest processes'
/// clocks (receive times) to disagree with the bus's stored times.
const REBUILD_SLACK_SECS: i64 = 300;

/// A render on its way to the bus: its messages come back with the result,
/// so whatever was not acknowledged is retried in order.
type Publishing = Pin<Box<dyn Future<Output = Published> + Send>>;

struct Published {
    items: Vec<Outbound>,
    result: Result<(), PartialPublish>,
    took: Duration,
}

pub struct Worker {
    partition: u32,
    bus: Bus,
    settings: AggregatorSettings,
    /// Topics announced as watched: the others render only when stored.
    interest: Interest,
    state: PartitionState,
    /// Nothing is published until the backlog is replayed: a restart would
    /// otherwise republish values older than the ones clients already saw.
    caught_up: bool,
    /// Topics whose seq was checked against the bus since this process started.
    seq_synced: std::collections::HashSet<Topic>,
    /// Topics this process evicted (their final render stored) and not seen
    /// since: when one returns, its seq continues right after the bus's.
    /// Bounded by [`EVICTED_REMEMBERED`]; a forgotten one only skips seqs.
    evicted: std::collections::HashSet<Topic>,
    last_checkpoint: Instant,
    /// What the last checkpoint took to make and save: the next one waits
    /// at least [`CHECKPOINT_COST_SHARE`] times that. A checkpoint writes
    /// the whole state (and reads it back to check it), which at 10,000
    /// KPIs every second was a sixth of the aggregator's CPU.
    checkpoint_cost: Duration,
    checkpointed_seq: u64,
    last_late_log: Instant,
    late_since_log: u64,
    /// Set while publishing fails: no retry before it, so a lost stream
    /// leader costs one attempt per RETRY_DELAY rather than one per tick,
    /// and one log line per streak rather than one per attempt.
    publish_retry_at: Option<Instant>,
    publish_failures: u64,
    /// Rendered, not acknowledged and not on its way: what a failed publish
    /// left, oldest first; retried in order before anything new is rendered.
    unsent: Vec<Outbound>,
    /// The render being published. Events are applied while its acks are
    /// awaited; nothing new is rendered and no checkpoint is taken until it
    /// is done, so at most one render is ever unacknowledged.
    in_flight: Option<Publishing>,
    /// The render in flight stores something (it is not all live-only).
    in_flight_stores: bool,
    /// A tick came while a render was in flight: render as soon as it is
    /// acknowledged instead of a whole interval later.
    render_wanted: bool,
    /// Ids of events applied recently: a copy is not applied again.
    dedupe: Dedupe,
    /// The checkpoint does not hold the dedupe window: until the first event
    /// after it is read, the feed opens by time, early enough to see again
    /// every event whose copies could still come, and only records their ids.
    rebuild: bool,
    /// The last event applied was not its message's last: no checkpoint now.
    mid_message: bool,
}

impl Worker {
    /// Loads the partition's checkpoint (or starts empty).
    pub async fn load(
        partition: u32,
        bus: Bus,
        settings: AggregatorSettings,
        interest: Interest,
    ) -> Result<Worker, BusError> {
        let loaded = match bus.load_checkpoint(partition).await {
            Err(BusError::Damaged(why)) => {
                tracing::error!(partition, error = %why, "checkpoint damaged; replaying the whole log");
                None
            }
            other => other?,
        };
        let mut state = match loaded {
            Some(raw) => match PartitionState::from_json(&raw) {
                Ok(s) => s,
                Err(e) => {
                    // Refusing to start would take the partition down for good;
                    // replaying from the beginning of the retained log is the
                    // best remaining source of truth.
                    tracing::error!(partition, error = %e, "checkpoint unreadable; replaying the whole log");
                    PartitionState::default()
                }
            },
            None => PartitionState::default(),
        };
        state.set_store_policy(settings.store_policy());
        tracing::info!(
            partition,
            applied_seq = state.applied_seq,
            topics = state.topic_count(),
            "partition loaded"
        );
        let dedupe = Dedupe::new(bus.config().duplicate_window);
        Ok(Worker {
            partition,
            bus,
            settings,
            interest,
            dedupe,
            rebuild: state.applied_seq > 0,
            mid_message: false,
            checkpointed_seq: state.applied_seq,
            state,
            caught_up: false,
            seq_synced: Default::default(),
            evicted: Default::default(),
            last_checkpoint: Instant::now(),
            checkpoint_cost: Duration::ZERO,
            last_late_log: Instant::now()
                .checked_sub(LATE_LOG_INTERVAL)
                .unwrap_or_else(Instant::now),
            late_since_log: 0,
            publish_retry_at: None,
            publish_failures: 0,
            unsent: Vec::new(),
            in_flight: None,
            in_flight_stores: false,
            render_wanted: false,
        })
    }

    /// Runs until shutdown; then publishes what is pending and checkpoints.
    pub async fn run(mut self, shutdown: Shutdown) {
        let labels = [("partition", self.partition.to_string())];
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let feed = match self.open_feed().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "cannot open event feed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_DELAY) => continue,
                        _ = shutdown.recv() => break,
                    }
                }
            };
            let (mut events, _reader) = read_ahead(feed);
            let coalesce = self.settings.coalesce.max(Duration::from_millis(1));
            let mut publish_tick = tokio::time::interval(coalesce);
            publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.recv() => break,
                    done = wait(&mut self.in_flight), if self.in_flight.is_some() => {
                        self.in_flight = None;
                        self.published(done);
                        // A checkpoint waits for a moment with nothing in
                        // flight; under steady load this is that moment.
                        if self.checkpoint_due() {
                            self.maybe_checkpoint(false).await;
                        }
                        if (self.settings.coalesce.is_zero() || self.render_wanted) && self.caught_up {
                            self.start_publish().await;
                        }
                    },
                    // Before events: it is ready once per interval, so it
                    // cannot starve them, and a steady stream of events must
                    // not starve publishing.
                    _ = publish_tick.tick() => {
                        if !self.caught_up {
                            self.check_caught_up().await;
                        }
                        self.maybe_checkpoint(false).await;
                        // A due checkpoint goes first: it is taken when the
                        // render in flight is acknowledged.
                        self.render_wanted = self.caught_up;
                        let hold = self.checkpoint_due() && self.awaiting_acks();
                        if self.caught_up && !hold {
                            self.start_publish().await;
                        }
                    }
                    next = events.recv() => {
                        // Whatever else is already waiting is applied too
                        // before publishing: with coalescing off, publishing
                        // then costs one acknowledged batch per wake-up
                        // instead of one round trip per event, and adds no
                        // wait of its own.
                        let mut next = next;
                        let mut drained = 0;
                        let mut applied = 0;
                        let mut last = None;
                        let failure = loop {
                            match next {
                                Some(Ok(ev)) => {
                                    last = Some((ev.seq, ev.pending));
                                    applied += self.apply(ev);
                                }
                                Some(Err(e)) => break Some(e.to_string()),
                                None => break Some("the bus closed the feed".to_string()),
                            }
                            drained += 1;
                            // The rest of a message is already read (the
                            // feed splits a message at once): take it, so
                            // a checkpoint never waits on a half message.
                            if self.mid_message {
                                next = events.recv().await;
                                continue;
                            }
                            if drained >= READ_AHEAD {
                                break None;
                            }
                            match events.try_recv() {
                                Ok(item) => next = Some(item),
                                Err(_) => break None,
                            }
                        };
                        metrics::counter!(m::EVENTS_APPLIED).increment(applied);
                        if let Some((seq, pending)) = last {
                            metrics::gauge!(m::CONSUMER_PENDING, &labels).set(pending as f64);
                            metrics::gauge!(m::APPLIED_SEQ, &labels).set(seq as f64);
                        }
                        if self.settings.coalesce.is_zero() && self.caught_up {
                            self.start_publish().await;
                        }
                        if let Some(why) = failure {
                            tracing::warn!(partition = self.partition, error = %why, "event feed failed; reopening");
                            break;
                        }
                    },
                }
            }
            if shutdown.is_triggered() {
                break;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
        if let Some(f) = self.in_flight.take() {
            let done = f.await;
            self.published(done);
        }
        if self.caught_up {
            // Whatever is owed a store is stored now, not at the next
            // start: while no aggregator runs, gateways read the stored
            // latest, which must then be the newest.
            self.state.set_store_policy(StorePolicy::every_render());
            self.state.rescan();
            self.start_publish().await;
            if let Some(f) = self.in_flight.take() {
                let done = f.await;
                self.published(done);
            }
        }
        self.maybe_checkpoint(true).await;
        tracing::info!(
            partition = self.partition,
            applied_seq = self.state.applied_seq,
            "partition stopped"
        );
    }

    /// The partition's feed: from `applied_seq + 1`, or, while the dedupe
    /// window is still to be rebuilt, from the first event stored a window
    /// (and a slack) before the checkpoint's newest receive time. Events up
    /// to `applied_seq` then only fill the window (see `apply`).
    /// (The future owns what it needs: the worker is not `Sync`.)
    fn open_feed(&self) -> impl Future<Output = Result<EventFeed, BusError>> + Send + 'static {
        let bus = self.bus.clone();
        let partition = self.partition;
        let from_seq = self.state.applied_seq + 1;
        let since = self.rebuild.then(|| {
            let window = i64::try_from(bus.config().duplicate_window.as_secs()).unwrap_or(i64::MAX);
            let secs = self
                .state
                .watermark
                .saturating_sub(window)
                .saturating_sub(REBUILD_SLACK_SECS);
            chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
        });
        async move {
            match since {
                Some(since) => {
                    tracing::info!(partition, %since, "rebuilding the duplicate window");
                    bus.event_feed_from_time(partition, since).await
                }
                None => bus.event_feed(partition, from_seq).await,
            }
        }
    }

    /// Caught up when the log holds nothing after what was applied. (An
    /// event delivered with nothing pending behind it also says so.) Until
    /// then nothing is published: a stale checkpoint would otherwise show
    /// clients counts that go down under higher seqs.
    async fn check_caught_up(&mut self) {
        match self.bus.last_event_seq(self.partition).await {
            Ok(last) if last <= self.state.applied_seq => self.caught_up = true,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(partition = self.partition, error = %e, "cannot read the log's end yet")
            }
        }
    }

    /// Applies one event; returns how many periods it counted in. Metrics
    /// are recorded per batch by the caller: a labelled metric costs a
    /// registry lookup, which per event was a visible share of the worker.
    fn apply(&mut self, ev: StoredEvent) -> u64 {
        if ev.pending == 0 {
            self.caught_up = true;
        }
        let lateness = &self.settings.lateness;
        if ev.seq <= self.state.applied_seq {
            // Applied before the checkpoint: only its id is wanted, to know
            // a copy that comes later.
            if let Ok(record) = &ev.record {
                if !PartitionState::refuses(record, lateness) {
                    self.dedupe.check_and_insert(
                        kpi_core::id_hash::event_id_hash(&record.event_id),
                        record.received_at.timestamp(),
                    );
                }
            }
            return 0;
        }
        if self.rebuild {
            self.rebuild = false;
            tracing::info!(
                partition = self.partition,
                ids = self.dedupe.len(),
                "duplicate window rebuilt"
            );
        }
        self.mid_message = !ev.complete;
        match ev.record {
            // A refused event is not remembered: a copy of it that passes
            // the rules must still count.
            Ok(record)
                if !PartitionState::refuses(&record, lateness)
                    && self.dedupe.check_and_insert(
                        kpi_core::id_hash::event_id_hash(&record.event_id),
                        record.received_at.timestamp(),
                    ) =>
            {
                self.state.skip(ev.seq, ev.complete);
                metrics::counter!(m::EVENTS_DUPLICATE).increment(1);
                tracing::debug!(partition = self.partition, kpi = %record.kpi, event_id = %record.event_id, "copy of an applied event not applied again");
                0
            }
            Ok(record) => {
                let r = self
                    .state
                    .apply_part(ev.seq, ev.complete, &record, lateness);
                if r.refused {
                    metrics::counter!(m::EVENTS_REFUSED).increment(1);
                    tracing::debug!(partition = self.partition, kpi = %record.kpi, event_id = %record.event_id, "event outside the value or time rule not applied");
                }
                if r.late > 0 {
                    metrics::counter!(m::EVENTS_LATE).increment(u64::from(r.late));
                    self.late_since_log += u64::from(r.late);
                    // Bounded: a flood of late events must not flood the log.
                    if self.last_late_log.elapsed() >= LATE_LOG_INTERVAL {
                        tracing::warn!(
                            partition = self.partition,
                            kpi = %record.kpi,
                            event_id = %record.event_id,
                            late = self.late_since_log,
                            "events too late for their bucket were not applied (counted in {})",
                            m::EVENTS_LATE
                        );
                        self.late_since_log = 0;
                        self.last_late_log = Instant::now();
                    }
                }
                u64::from(r.applied)
            }
            Err(why) => {
                // Ingest validated it, so this is a foreign or corrupted
                // message; skip it but keep the position moving.
                self.state.skip(ev.seq, ev.complete);
                metrics::counter!(m::EVENTS_UNDECODABLE).increment(1);
                tracing::warn!(partition = self.partition, seq = ev.seq, %why, "undecodable event skipped");
                0
            }
        }
    }

    /// Renders what is due (unless a failed publish left messages to retry
    /// first) and sends it on its way; its acks are taken in `published`.
    async fn start_publish(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        if self.publish_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let now = Utc::now();
        for key in self.interest.take_fresh(self.partition) {
            self.state.watch_started(&key);
        }
        // Synced topics are a subset of the state's (both forget a topic
        // only when it is evicted), so equal counts mean none is left and
        // the list of due topics need not be made at every render.
        let unsynced: Vec<Topic> = if self.seq_synced.len() < self.state.topic_count() {
            self.state
                .due(now, &self.settings.thresholds)
                .into_iter()
                .filter(|t| !self.seq_synced.contains(t))
                .collect()
        } else {
            Vec::new()
        };
        // Concurrently: after a restart every topic is read once, and one
        // round trip after another for 30,000 topics held the first render
        // back for seconds.
        let bus = &self.bus;
        let mut reads = futures::stream::iter(unsynced)
            .map(|topic| async move {
                let last = bus.last_update(&topic).await;
                (topic, last)
            })
            .buffered(SYNC_READS);
        while let Some((topic, read)) = reads.next().await {
            match read {
                Ok(raw) => {
                    let last = raw
                        .and_then(|r| UpdateMessage::from_json(&r).ok())
                        .map(|m| m.seq);
                    if self.evicted.remove(&topic) {
                        if let Some(seq) = last {
                            self.state.bump_seq(&topic, seq);
                        }
                    } else {
                        self.state.resume_seq(&topic, last);
                    }
                    self.seq_synced.insert(topic);
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "cannot read last update; publishing later");
                    return;
                }
            }
        }
        self.render_wanted = false;
        if self.unsent.is_empty() {
            let out = self.interest.with(Instant::now(), |watched| {
                self.state
                    .render_watched(now, &self.settings.thresholds, watched)
            });
            self.unsent.extend(out.into_iter().map(outbound));
        }
        if self.unsent.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.unsent);
        self.in_flight_stores = items.iter().any(Outbound::is_stored);
        let bus = self.bus.clone();
        self.in_flight = Some(Box::pin(async move {
            let started = Instant::now();
            let result = bus.publish_all(&items).await;
            Published {
                items,
                result,
                took: started.elapsed(),
            }
        }));
    }

    /// Takes a finished publish: what the bus did not acknowledge is kept,
    /// in order, for the next attempt.
    fn published(&mut self, done: Published) {
        let Published {
            mut items,
            result,
            took,
        } = done;
        let stored = match &result {
            Ok(()) => items.len(),
            Err(p) => p.stored.min(items.len()),
        };
        let (mut live, mut kept) = (0u64, 0u64);
        for o in &items[..stored] {
            match o {
                Outbound::Live { .. } => live += 1,
                Outbound::Update { .. } => kept += 1,
                Outbound::History { .. } => {}
            }
        }
        metrics::counter!(m::UPDATES_PUBLISHED).increment(live + kept);
        metrics::counter!(m::UPDATES_STORED).increment(kept);
        items.drain(..stored);
        self.unsent = items;
        match result {
            Ok(()) => {
                metrics::histogram!(m::PUBLISH_SECONDS).record(took.as_secs_f64());
                if self.publish_failures > 0 {
                    tracing::info!(
                        partition = self.partition,
                        failures = self.publish_failures,
                        "publishing works again"
                    );
                }
                self.publish_failures = 0;
                self.publish_retry_at = None;
            }
            Err(p) => {
                metrics::counter!(m::PUBLISH_FAILURES).increment(1);
                if self.publish_failures == 0 {
                    let topic = self.unsent.first().map(|o| o.topic().to_string());
                    tracing::warn!(partition = self.partition, topic, error = %p.error, "publish failed; retrying until it succeeds");
                }
                self.publish_failures += 1;
                self.publish_retry_at = Some(Instant::now() + RETRY_DELAY);
            }
        }
    }

    /// Whether a rendered message the bus stores is not acknowledged yet.
    fn awaiting_acks(&self) -> bool {
        self.in_flight.is_some() && self.in_flight_stores
            || self.unsent.iter().any(Outbound::is_stored)
    }

    fn checkpoint_due(&self) -> bool {
        self.last_checkpoint.elapsed() >= self.checkpoint_gap()
    }

    /// `--checkpoint-ms`, or longer while checkpoints are costly: at most
    /// about 1/[`CHECKPOINT_COST_SHARE`] of the worker's time goes to them,
    /// up to [`MAX_CHECKPOINT_GAP`] between two (what a restart replays).
    fn checkpoint_gap(&self) -> Duration {
        let paced = self
            .checkpoint_cost
            .saturating_mul(CHECKPOINT_COST_SHARE)
            .min(MAX_CHECKPOINT_GAP);
        self.settings.checkpoint_interval.max(paced)
    }

    async fn maybe_checkpoint(&mut self, force: bool) {
        let age = self.last_checkpoint.elapsed();
        metrics::gauge!(m::CHECKPOINT_AGE, "partition" => self.partition.to_string())
            .set(age.as_secs_f64());
        if !force && age < self.checkpoint_gap() {
            return;
        }
        if self.state.applied_seq == self.checkpointed_seq && !force {
            self.last_checkpoint = Instant::now();
            return;
        }
        // Rendered messages the bus has not acknowledged are only in
        // `unsent` or in flight; a checkpoint now would mark them published,
        // and a crash would lose them for good. The previous checkpoint plus
        // replay renders them again. Live-only ones are never acknowledged:
        // one lost in a crash is made good by its topic's trailing store,
        // which the checkpoint records as owed.
        if self.awaiting_acks() {
            return;
        }
        // The state holds part of a message that `applied_seq` does not
        // cover yet: a restart would read that message again whole.
        if self.mid_message {
            return;
        }
        let started = Instant::now();
        self.state.prune(&self.settings.lateness);
        let evicted = self.state.evict_idle(
            Utc::now(),
            self.settings.topic_idle,
            &self.settings.lateness,
            &self.settings.thresholds,
        );
        metrics::counter!(m::TOPICS_EVICTED).increment(evicted.len() as u64);
        for topic in evicted {
            // Checked against the bus again when it returns, so its seq
            // continues where it stopped.
            self.seq_synced.remove(&topic);
            if self.evicted.len() >= EVICTED_REMEMBERED {
                self.evicted.clear();
            }
            self.evicted.insert(topic);
        }
        let labels = [("partition", self.partition.to_string())];
        metrics::gauge!(m::TOPICS, &labels).set(self.state.topic_count() as f64);
        let raw = match self.state.checkpoint() {
            Ok(raw) => raw,
            Err(why) => {
                tracing::error!(partition = self.partition, %why, "checkpoint not saved");
                return;
            }
        };
        metrics::gauge!(m::CHECKPOINT_BYTES, &labels).set(raw.len() as f64);
        match self
            .bus
            .save_checkpoint(self.partition, Bytes::from(raw))
            .await
        {
            Ok(()) => {
                self.checkpointed_seq = self.state.applied_seq;
                self.last_checkpoint = Instant::now();
                self.checkpoint_cost = started.elapsed();
            }
            Err(e) => {
                tracing::warn!(partition = self.partition, error = %e, "checkpoint failed; retrying")
            }
        }
    }
}

/// What the bus publishes for one rendered message. A closed bucket's
/// record is identified by topic, bucket and seq, so a retry stores it once.
fn outbound(o: Outgoing) -> Outbound {
    match o {
        Outgoing::Live(topic, msg) => Outbound::Live {
            topic,
            payload: Bytes::from(msg.to_json()),
        },
        Outgoing::Update(topic, msg) => Outbound::Update {
            topic,
            payload: Bytes::from(msg.to_json()),
        },
        Outgoing::History(topic, msg) => Outbound::History {
            id: format!("{topic}/{}/{}", msg.bucket_start.timestamp(), msg.seq),
            topic,
            payload: Bytes::from(msg.to_json()),
        },
    }
}

/// The render in flight's outcome; never called without one.
async fn wait(in_flight: &mut Option<Publishing>) -> Published {
    match in_flight {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Reads `feed` in its own task into a bounded channel.
///
/// The worker selects over events and its publish timer; reading the feed
/// directly there would drop `EventFeed::next` at every tick and restart its
/// stall check and reconnect each time, so a consumer lost with a NATS node
/// would never be noticed. The returned guard stops the reader when dropped.
fn read_ahead(
    mut feed: EventFeed,
) -> (
    mpsc::Receiver<Result<StoredEvent, BusError>>,
    tokio_util::task::AbortOnDropHandle<()>,
) {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(async move {
        while let Some(next) = feed.next().await {
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                break;
            }
        }
    });
    (rx, tokio_util::task::AbortOnDropHandle::new(reader))
}
