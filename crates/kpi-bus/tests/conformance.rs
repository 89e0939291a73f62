//! One behaviour suite run against both bus implementations: the in-memory bus and NATS JetStream.
//!
//! Every check is an async function taking a [`Fixture`]; the `conformance!`
//! macro at the bottom instantiates each one twice, as `memory::<name>` and
//! `nats::<name>`, so the two implementations cannot drift apart unnoticed.
//! The NATS half runs against a real nats-server (the version Debian ships),
//! one per test so that streams created with the test's limits never leak
//! into another test.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use kpi_bus::{Bus, BusConfig, EventFeed, Live, Outbound, StoredEvent, UpdateSubscription};
use kpi_core::{partition_of, EventRecord, KpiCode, Period, Topic};
use kpi_test_support::{NatsCluster, NatsServer};

const PARTITIONS: u32 = 4;
const UPDATES_KEPT: i64 = 5;
const HISTORY_KEPT: i64 = 4;
/// Anything the bus should deliver arrives well within this.
const DELIVERY: Duration = Duration::from_secs(5);
/// How long to watch for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

fn config() -> BusConfig {
    BusConfig {
        partitions: PARTITIONS,
        duplicate_window: Duration::from_secs(60),
        events_max_age: Duration::from_secs(3600),
        updates_per_topic: UPDATES_KEPT,
        history_per_topic: HISTORY_KEPT,
        replicas: 1,
        ..BusConfig::default()
    }
}

/// A bus under test, with whatever is needed to observe it from outside.
struct Fixture {
    bus: Bus,
    /// Held so the server lives as long as the test; `None` for the memory bus.
    server: Option<NatsServer>,
}

impl Fixture {
    fn memory() -> Fixture {
        Fixture {
            bus: Bus::memory(config()),
            server: None,
        }
    }

    async fn nats() -> Fixture {
        let server = NatsServer::start();
        let bus = Bus::connect_nats(&server.url(), config())
            .await
            .unwrap_or_else(|e| panic!("connecting the bus to {}: {e}", server.url()));
        Fixture {
            bus,
            server: Some(server),
        }
    }

    /// A fresh bus of the same kind with other limits (a NATS fixture gets
    /// its own server, since streams keep the limits they were created with).
    async fn with(self, config: BusConfig) -> Fixture {
        match self.server {
            None => Fixture {
                bus: Bus::memory(config),
                server: None,
            },
            Some(_) => {
                let server = NatsServer::start();
                let bus = Bus::connect_nats(&server.url(), config)
                    .await
                    .unwrap_or_else(|e| panic!("connecting the bus to {}: {e}", server.url()));
                Fixture {
                    bus,
                    server: Some(server),
                }
            }
        }
    }

    /// Whether anyone holds upstream interest in `subject`, as the transport
    /// sees it: NATS's own subscription list, or the memory bus's live topics
    /// (a count only, so tests using this subscribe to a single topic).
    async fn has_interest(&self, subject: &str) -> bool {
        match (&self.server, &self.bus) {
            (Some(server), _) => server.subscriptions().await.iter().any(|s| s == subject),
            (None, Bus::Memory(m)) => m.live_subscriptions() > 0,
            (None, Bus::Nats(_)) => unreachable!("a NATS fixture always holds its server"),
        }
    }
}

fn code(raw: &str) -> KpiCode {
    KpiCode::parse(raw).unwrap_or_else(|e| panic!("{raw:?} is not a KPI code: {e}"))
}

/// `n` codes that land in `n` different partitions.
fn codes_in_distinct_partitions(n: usize) -> Vec<KpiCode> {
    let mut seen = Vec::new();
    let mut codes = Vec::new();
    for i in 0.. {
        let c = code(&format!("kpi_{i}"));
        let p = partition_of(&c, PARTITIONS);
        if !seen.contains(&p) {
            seen.push(p);
            codes.push(c);
            if codes.len() == n {
                break;
            }
        }
    }
    codes
}

fn event(id: &str, kpi: &KpiCode, value: f64) -> EventRecord {
    let now = Utc::now();
    EventRecord {
        event_id: id.to_string(),
        kpi: kpi.clone(),
        value,
        time: now,
        received_at: now,
        labels: Default::default(),
    }
}

async fn append(bus: &Bus, ev: &EventRecord) -> kpi_bus::Appended {
    bus.append_event(ev)
        .await
        .unwrap_or_else(|e| panic!("append {}: {e}", ev.event_id))
}

async fn feed(bus: &Bus, kpi: &KpiCode, from: u64) -> EventFeed {
    bus.event_feed(partition_of(kpi, PARTITIONS), from)
        .await
        .unwrap_or_else(|e| panic!("event feed of {kpi}: {e}"))
}

async fn next_event(feed: &mut EventFeed) -> StoredEvent {
    tokio::time::timeout(DELIVERY, feed.next())
        .await
        .expect("an event within the delivery time")
        .expect("the feed is open")
        .unwrap_or_else(|e| panic!("reading the feed: {e}"))
}

/// Reads `n` events and returns (seq, pending, event_id, value) of each.
async fn read_events(feed: &mut EventFeed, n: usize) -> Vec<(u64, u64, String, f64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = next_event(feed).await;
        let rec = e
            .record
            .unwrap_or_else(|err| panic!("undecodable event at {}: {err}", e.seq));
        out.push((e.seq, e.pending, rec.event_id, rec.value));
    }
    out
}

async fn assert_feed_quiet(feed: &mut EventFeed) {
    if let Ok(Some(e)) = tokio::time::timeout(QUIET, feed.next()).await {
        panic!("unexpected event on the feed: {e:?}");
    }
}

async fn next_live(sub: &mut UpdateSubscription) -> Bytes {
    match tokio::time::timeout(DELIVERY, sub.next()).await {
        Ok(Some(Live::Message(b))) => b,
        Ok(Some(Live::Gap)) => panic!("unexpected gap on a subscription that kept up"),
        Ok(None) => panic!("subscription closed"),
        Err(_) => panic!("no live message within {DELIVERY:?}"),
    }
}

fn topic(kpi: &str, period: Period) -> Topic {
    Topic::new(code(kpi), period)
}

fn bytes_of(items: &[&str]) -> Vec<Bytes> {
    items
        .iter()
        .map(|s| Bytes::copy_from_slice(s.as_bytes()))
        .collect()
}

// ---- the suite ----

async fn append_assigns_increasing_seqs_and_reports_duplicates(fx: Fixture) {
    let bus = &fx.bus;
    assert!(bus.is_connected());
    let kpi = code("orders");
    let first = append(bus, &event("e1", &kpi, 1.0)).await;
    let second = append(bus, &event("e2", &kpi, 2.0)).await;
    assert!(!first.duplicate && !second.duplicate);
    assert!(second.seq > first.seq, "{second:?} after {first:?}");

    // A retry of e1, even with a different payload, is recognised by its id
    // and points at the original.
    let retry = append(bus, &event("e1", &kpi, 99.0)).await;
    assert!(
        retry.duplicate,
        "a repeated event_id must be reported as duplicate"
    );
    assert_eq!(
        retry.seq, first.seq,
        "a duplicate reports where the original landed"
    );

    // Nothing new was stored: the log holds e1 (with its first value) and e2.
    let mut f = feed(bus, &kpi, 1).await;
    let got = read_events(&mut f, 2).await;
    assert_eq!(got[0], (first.seq, 1, "e1".into(), 1.0));
    assert_eq!(got[1], (second.seq, 0, "e2".into(), 2.0));
    assert_feed_quiet(&mut f).await;

    let third = append(bus, &event("e3", &kpi, 3.0)).await;
    assert!(!third.duplicate && third.seq > second.seq);
}

async fn event_feed_reads_one_partition_in_order_with_pending(fx: Fixture) {
    let bus = &fx.bus;
    let codes = codes_in_distinct_partitions(2);
    let (a, b) = (&codes[0], &codes[1]);
    let a1 = append(bus, &event("a1", a, 1.0)).await;
    let b1 = append(bus, &event("b1", b, 10.0)).await;
    let a2 = append(bus, &event("a2", a, 2.0)).await;
    let a3 = append(bus, &event("a3", a, 3.0)).await;
    let b2 = append(bus, &event("b2", b, 20.0)).await;

    let mut fa = feed(bus, a, 1).await;
    let got = read_events(&mut fa, 3).await;
    assert_eq!(
        got,
        vec![
            (a1.seq, 2, "a1".into(), 1.0),
            (a2.seq, 1, "a2".into(), 2.0),
            (a3.seq, 0, "a3".into(), 3.0),
        ],
        "partition A in log order, pending counting down to 0, no B events"
    );
    assert_feed_quiet(&mut fa).await;

    // The feed keeps following the log.
    let a4 = append(bus, &event("a4", a, 4.0)).await;
    assert_eq!(
        read_events(&mut fa, 1).await,
        vec![(a4.seq, 0, "a4".into(), 4.0)]
    );

    let mut fb = feed(bus, b, 1).await;
    assert_eq!(
        read_events(&mut fb, 2).await,
        vec![
            (b1.seq, 1, "b1".into(), 10.0),
            (b2.seq, 0, "b2".into(), 20.0)
        ]
    );
    assert_feed_quiet(&mut fb).await;
}

async fn event_feed_resumes_from_a_seq(fx: Fixture) {
    let bus = &fx.bus;
    let codes = codes_in_distinct_partitions(2);
    let (a, b) = (&codes[0], &codes[1]);
    let _a1 = append(bus, &event("a1", a, 1.0)).await;
    let a2 = append(bus, &event("a2", a, 2.0)).await;
    let b1 = append(bus, &event("b1", b, 10.0)).await;
    let a3 = append(bus, &event("a3", a, 3.0)).await;
    let a4 = append(bus, &event("a4", a, 4.0)).await;

    // Resuming after a checkpoint: from the position after the last one seen.
    let mut f = feed(bus, a, a2.seq + 1).await;
    assert_eq!(
        read_events(&mut f, 2).await,
        vec![(a3.seq, 1, "a3".into(), 3.0), (a4.seq, 0, "a4".into(), 4.0)]
    );
    assert_feed_quiet(&mut f).await;

    // A start position that belongs to another partition's event is fine.
    let mut f = feed(bus, a, b1.seq).await;
    assert_eq!(read_events(&mut f, 1).await[0].0, a3.seq);

    // Past the end: nothing until something new arrives.
    let mut f = feed(bus, a, a4.seq + 1).await;
    assert_feed_quiet(&mut f).await;
    let a5 = append(bus, &event("a5", a, 5.0)).await;
    assert_eq!(
        read_events(&mut f, 1).await,
        vec![(a5.seq, 0, "a5".into(), 5.0)]
    );
}

async fn append_events(bus: &Bus, events: &[EventRecord]) -> Vec<kpi_bus::Appended> {
    bus.append_events(events)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("append_events, event {i}: {e}")))
        .collect()
}

/// Reads `n` events and returns (seq, event_id, complete) of each.
async fn read_with_flags(feed: &mut EventFeed, n: usize) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = next_event(feed).await;
        let rec = e
            .record
            .unwrap_or_else(|err| panic!("undecodable event at {}: {err}", e.seq));
        out.push((e.seq, rec.event_id, e.complete));
    }
    out
}

/// Whatever a bus groups into one stored message, a reader sees the events
/// in order with each message's last event, and only that one, complete.
fn assert_complete_ends_each_message(got: &[(u64, String, bool)]) {
    for (i, (seq, id, complete)) in got.iter().enumerate() {
        let last_of_message = got.get(i + 1).is_none_or(|next| next.0 != *seq);
        assert_eq!(*complete, last_of_message, "{id} at {seq} in {got:?}");
    }
}

async fn append_events_round_trips_across_partitions_in_order(fx: Fixture) {
    let bus = &fx.bus;
    let codes = codes_in_distinct_partitions(2);
    let (a, b) = (&codes[0], &codes[1]);
    let single = append(bus, &event("a0", a, 0.0)).await;
    let batch = [
        event("a1", a, 1.0),
        event("b1", b, 10.0),
        event("a2", a, 2.0),
        event("a3", a, 3.0),
        event("b2", b, 20.0),
    ];
    let stored = append_events(bus, &batch).await;
    assert_eq!(stored.len(), batch.len(), "one outcome per event");
    assert!(stored.iter().all(|s| !s.duplicate && s.seq > single.seq));

    let mut fa = feed(bus, a, 1).await;
    let got = read_with_flags(&mut fa, 4).await;
    let ids: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(
        ids,
        ["a0", "a1", "a2", "a3"],
        "old and new messages, in order"
    );
    assert_eq!(got[0].0, single.seq);
    for (g, i) in got[1..].iter().zip([0, 2, 3]) {
        assert_eq!(g.0, stored[i].seq, "{} at the seq its append reported", g.1);
    }
    assert_complete_ends_each_message(&got);
    assert_feed_quiet(&mut fa).await;

    let mut fb = feed(bus, b, 1).await;
    let got = read_with_flags(&mut fb, 2).await;
    assert_eq!(
        got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
        ["b1", "b2"]
    );
    assert_complete_ends_each_message(&got);

    // An exact retry of the call is reported as duplicate and stores nothing.
    let again = append_events(bus, &batch).await;
    assert!(again.iter().all(|s| s.duplicate), "{again:?}");
    assert_feed_quiet(&mut fa).await;
    assert_feed_quiet(&mut fb).await;
}

async fn event_feed_from_time_starts_at_the_first_event_stored_then(fx: Fixture) {
    let bus = &fx.bus;
    let kpi = code("since_kpi");
    let partition = partition_of(&kpi, PARTITIONS);
    append(bus, &event("old", &kpi, 1.0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    append_events(bus, &[event("n1", &kpi, 2.0), event("n2", &kpi, 3.0)]).await;

    let mut f = bus
        .event_feed_from_time(partition, since)
        .await
        .expect("feed from a time");
    let got = read_with_flags(&mut f, 2).await;
    assert_eq!(
        got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    assert_feed_quiet(&mut f).await;

    // A time after everything stored: nothing, then what comes next.
    let mut f = bus
        .event_feed_from_time(partition, Utc::now())
        .await
        .expect("feed from now");
    assert_feed_quiet(&mut f).await;
    // Idle past the NATS feed's stall check (2 s), which reopens by sequence:
    // it must reopen where the time put it, not at the log's start.
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(2500), f.next()).await {
        panic!("unexpected event on an idle feed: {e:?}");
    }
    let next = append(bus, &event("n3", &kpi, 4.0)).await;
    let got = read_with_flags(&mut f, 1).await;
    assert_eq!(got, vec![(next.seq, "n3".to_string(), true)]);
}

async fn publish_update_reaches_a_live_subscription(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("revenue", Period::Minute);
    let other = topic("revenue", Period::Hour);
    let mut sub = bus.subscribe_updates(&t).await.expect("subscribe");
    let mut other_sub = bus
        .subscribe_updates(&other)
        .await
        .expect("subscribe other");
    bus.publish_update(&t, Bytes::from_static(b"u1"))
        .await
        .expect("publish");
    bus.publish_update(&t, Bytes::from_static(b"u2"))
        .await
        .expect("publish");
    assert_eq!(next_live(&mut sub).await, "u1");
    assert_eq!(next_live(&mut sub).await, "u2");
    // Another period of the same KPI is another topic.
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, other_sub.next()).await {
        panic!("an update of {t} reached a subscriber of {other}: {m:?}");
    }
}

async fn publish_all_keeps_order_and_stores_a_history_record_once(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("orders_batch", Period::Minute);
    let mut sub = bus.subscribe_updates(&t).await.expect("subscribe");
    // More than one acknowledgement window of the NATS bus.
    let mut items: Vec<Outbound> = (1..=600)
        .map(|i| Outbound::Update {
            topic: t.clone(),
            payload: Bytes::from(format!("u{i}")),
        })
        .collect();
    let closed = Outbound::History {
        topic: t.clone(),
        payload: record(&t, 60, 7, 3),
        id: "orders_batch/minute/60/7".into(),
    };
    items.insert(300, closed.clone());
    bus.publish_all(&items).await.expect("publish all");
    for i in 1..=600 {
        assert_eq!(next_live(&mut sub).await, format!("u{i}"));
    }
    assert_eq!(
        bus.last_update(&t).await.expect("last"),
        Some(Bytes::from_static(b"u600"))
    );
    // A retry after a partial failure resends the record with its id.
    bus.publish_all(&[closed]).await.expect("republish");
    assert_eq!(
        buckets_of(&bus.history(&t, 10).await.expect("history")),
        [(60, 7)]
    );
}

/// A live-only item reaches subscribers and is never stored; an update is
/// both; live subscribers see a mix in item order.
async fn live_items_are_delivered_in_order_and_not_stored(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("live_only", Period::Minute);
    let mut sub = bus.subscribe_updates(&t).await.expect("subscribe");
    let live = |p: &str| Outbound::Live {
        topic: t.clone(),
        payload: Bytes::from(p.to_string()),
    };
    let update = |p: &str| Outbound::Update {
        topic: t.clone(),
        payload: Bytes::from(p.to_string()),
    };
    bus.publish_all(&[live("l1")]).await.expect("publish");
    assert_eq!(next_live(&mut sub).await, "l1");
    assert_eq!(bus.last_update(&t).await.expect("last"), None);
    assert!(bus.recent_updates(&t, 10).await.expect("recent").is_empty());
    assert!(
        bus.known_kpis(10).await.expect("known").is_empty(),
        "a live-only update made its code known"
    );

    // More than one acknowledgement window of the NATS bus, mixed.
    let items: Vec<Outbound> = (1..=600)
        .map(|i| {
            if i % 3 == 0 {
                update(&format!("u{i}"))
            } else {
                live(&format!("u{i}"))
            }
        })
        .chain([live("l2")])
        .collect();
    bus.publish_all(&items).await.expect("publish all");
    for i in 1..=600 {
        assert_eq!(next_live(&mut sub).await, format!("u{i}"));
    }
    assert_eq!(next_live(&mut sub).await, "l2");
    assert_eq!(
        bus.last_update(&t).await.expect("last").as_deref(),
        Some(&b"u600"[..]),
        "the newest stored update, not the newer live-only one"
    );
    assert_eq!(
        bus.recent_updates(&t, 3).await.expect("recent"),
        bytes_of(&["u594", "u597", "u600"])
    );
    let names: Vec<String> = bus
        .known_kpis(10)
        .await
        .expect("known")
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(names, ["live_only"]);
}

async fn last_and_recent_updates_return_the_newest(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("signups", Period::Minute);
    assert_eq!(bus.last_update(&t).await.expect("last"), None);
    assert!(bus.recent_updates(&t, 10).await.expect("recent").is_empty());

    for u in ["u1", "u2", "u3"] {
        bus.publish_update(&t, Bytes::from(u))
            .await
            .expect("publish");
    }
    assert_eq!(
        bus.last_update(&t).await.expect("last").as_deref(),
        Some(&b"u3"[..])
    );
    assert_eq!(
        bus.recent_updates(&t, 2).await.expect("recent"),
        bytes_of(&["u2", "u3"])
    );
    assert_eq!(
        bus.recent_updates(&t, 10).await.expect("recent"),
        bytes_of(&["u1", "u2", "u3"])
    );
    assert!(bus.recent_updates(&t, 0).await.expect("recent").is_empty());

    // Topics do not share storage, nor do updates and history.
    let hour = topic("signups", Period::Hour);
    assert_eq!(bus.last_update(&hour).await.expect("last"), None);
    assert!(bus.history(&t, 10).await.expect("history").is_empty());
}

async fn updates_kept_per_topic_are_bounded(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("clicks", Period::Day);
    let other = topic("views", Period::Day);
    bus.publish_update(&other, Bytes::from_static(b"v1"))
        .await
        .expect("publish");
    let all: Vec<String> = (1..=8).map(|i| format!("u{i}")).collect();
    for u in &all {
        bus.publish_update(&t, Bytes::from(u.clone()))
            .await
            .expect("publish");
    }
    let kept = bus.recent_updates(&t, 100).await.expect("recent");
    let want: Vec<&str> = all[all.len() - UPDATES_KEPT as usize..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        kept,
        bytes_of(&want),
        "only the newest {UPDATES_KEPT} are kept, oldest first"
    );
    assert_eq!(
        bus.last_update(&t).await.expect("last").as_deref(),
        Some(&b"u8"[..])
    );
    // The bound is per topic: another topic's update was not pushed out.
    assert_eq!(
        bus.recent_updates(&other, 100).await.expect("recent"),
        bytes_of(&["v1"])
    );
}

async fn history_is_bounded_and_newest_last(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("latency_ms", Period::Minute);
    assert!(bus.history(&t, 10).await.expect("history").is_empty());
    for i in 1..=6 {
        bus.publish_history(&t, record(&t, i * 60, i as u64, 1))
            .await
            .expect("publish history");
    }
    assert_eq!(
        buckets_of(&bus.history(&t, 100).await.expect("history")),
        [(180, 3), (240, 4), (300, 5), (360, 6)]
    );
    assert_eq!(
        buckets_of(&bus.history(&t, 2).await.expect("history")),
        [(300, 5), (360, 6)]
    );
    // A record that is not an update message names no bucket: refused.
    assert!(matches!(
        bus.publish_history(&t, Bytes::from_static(b"h7")).await,
        Err(kpi_bus::BusError::Invalid(_))
    ));
    // Closed buckets are not live updates.
    assert_eq!(bus.last_update(&t).await.expect("last"), None);
    assert!(bus
        .history(&topic("latency_ms", Period::Hour), 10)
        .await
        .expect("history")
        .is_empty());
}

async fn checkpoints_are_saved_loaded_and_replaced(fx: Fixture) {
    let bus = &fx.bus;
    assert_eq!(bus.load_checkpoint(0).await.expect("load"), None);
    bus.save_checkpoint(0, Bytes::from_static(b"p0-a"))
        .await
        .expect("save");
    bus.save_checkpoint(1, Bytes::from_static(b"p1-a"))
        .await
        .expect("save");
    bus.save_checkpoint(0, Bytes::from_static(b"p0-b"))
        .await
        .expect("save");
    assert_eq!(
        bus.load_checkpoint(0).await.expect("load").as_deref(),
        Some(&b"p0-b"[..])
    );
    assert_eq!(
        bus.load_checkpoint(1).await.expect("load").as_deref(),
        Some(&b"p1-a"[..])
    );
    assert_eq!(bus.load_checkpoint(2).await.expect("load"), None);
}

/// `len` bytes that do not repeat in any short cycle, varied by `salt`.
fn noise(len: usize, salt: u8) -> Bytes {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ salt)
        .collect::<Vec<u8>>()
        .into()
}

/// Over nats-server's default `max_payload` (1 MiB) more than twice.
const LARGE_CHECKPOINT: usize = 2_621_440;

async fn checkpoints_larger_than_one_message_round_trip(fx: Fixture) {
    let bus = &fx.bus;
    let same = |got: Option<Bytes>, want: &Bytes| {
        let got = got.expect("a checkpoint");
        assert!(
            got == *want,
            "got {} bytes, not the {} saved",
            got.len(),
            want.len()
        );
    };
    let a = noise(LARGE_CHECKPOINT, 1);
    bus.save_checkpoint(0, a.clone()).await.expect("save large");
    bus.save_checkpoint(1, Bytes::from_static(b"p1"))
        .await
        .expect("save");
    same(bus.load_checkpoint(0).await.expect("load"), &a);
    let b = noise(LARGE_CHECKPOINT + 7, 2);
    bus.save_checkpoint(0, b.clone())
        .await
        .expect("replace large");
    same(bus.load_checkpoint(0).await.expect("load"), &b);
    let small = Bytes::from_static(b"p0-small");
    bus.save_checkpoint(0, small.clone())
        .await
        .expect("replace with small");
    same(bus.load_checkpoint(0).await.expect("load"), &small);
    same(
        bus.load_checkpoint(1).await.expect("load"),
        &Bytes::from_static(b"p1"),
    );
}

async fn named_state_is_saved_replaced_and_names_are_checked(fx: Fixture) {
    let bus = &fx.bus;
    assert_eq!(bus.load_state("maintenance").await.expect("load"), None);
    bus.save_state("maintenance", Bytes::from_static(b"on"))
        .await
        .expect("save");
    bus.save_state("other_1", Bytes::from_static(b"x"))
        .await
        .expect("save");
    bus.save_state("maintenance", Bytes::from_static(b"off"))
        .await
        .expect("replace");
    assert_eq!(
        bus.load_state("maintenance")
            .await
            .expect("load")
            .as_deref(),
        Some(&b"off"[..])
    );
    assert_eq!(
        bus.load_state("other_1").await.expect("load").as_deref(),
        Some(&b"x"[..])
    );
    for bad in ["", "a.b", "a>", "Upper", "with space"] {
        assert!(
            bus.save_state(bad, Bytes::new()).await.is_err(),
            "{bad:?} accepted as a name"
        );
    }
}

async fn dropping_a_subscription_removes_interest(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("conversions", Period::Hour);
    let subject = t.updates_subject();
    assert!(!fx.has_interest(&subject).await);
    let sub = bus.subscribe_updates(&t).await.expect("subscribe");
    // NATS processes SUB asynchronously too; wait for it to show.
    wait_for_interest(&fx, &subject, true).await;
    drop(sub);
    wait_for_interest(&fx, &subject, false).await;
}

async fn wait_for_interest(fx: &Fixture, subject: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    while fx.has_interest(subject).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "interest in {subject} should be {want} within {DELIVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn broadcast_reaches_every_broadcast_subscriber(fx: Fixture) {
    let bus = &fx.bus;
    let mut s1 = bus
        .subscribe_broadcast()
        .await
        .expect("subscribe broadcast");
    let mut s2 = bus
        .subscribe_broadcast()
        .await
        .expect("subscribe broadcast");
    let mut updates = bus
        .subscribe_updates(&topic("x", Period::Minute))
        .await
        .expect("subscribe");
    bus.broadcast(Bytes::from_static(b"drain"))
        .await
        .expect("broadcast");
    assert_eq!(next_live(&mut s1).await, "drain");
    assert_eq!(next_live(&mut s2).await, "drain");
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, updates.next()).await {
        panic!("a broadcast reached an update subscription: {m:?}");
    }
    // Broadcasts are not stored: a later subscriber sees only later ones.
    let mut late = bus
        .subscribe_broadcast()
        .await
        .expect("subscribe broadcast");
    bus.broadcast(Bytes::from_static(b"second"))
        .await
        .expect("broadcast");
    assert_eq!(next_live(&mut late).await, "second");
}

/// NATS only (the memory bus has no server to lose): a feed keeps going across
/// a nats-server crash and restart, handing out the next event exactly once.
/// The server forgets the feed's ephemeral consumer; the feed must notice and
/// reopen it from where it was, which is what the aggregator relies on.
#[tokio::test]
async fn nats_event_feed_survives_a_server_restart() {
    let mut fx = Fixture::nats().await;
    let kpi = code("restart_kpi");
    let before = append(&fx.bus, &event("r1", &kpi, 1.0)).await;
    let mut f = feed(&fx.bus, &kpi, 1).await;
    assert_eq!(read_events(&mut f, 1).await[0].0, before.seq);

    let server = fx.server.as_mut().expect("a NATS fixture holds its server");
    server.kill();
    server.restart();

    // The client reconnects on its own schedule; retry the append meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        match fx.bus.append_event(&event("r2", &kpi, 2.0)).await {
            Ok(a) => break a,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("append while reconnecting: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the bus did not come back after a server restart: {e}"),
        }
    };
    assert!(after.seq > before.seq);

    // Errors while the consumer is reopened are reported, then the feed
    // continues with exactly the next event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, f.next()).await {
            Ok(Some(Ok(e))) => {
                assert_eq!(
                    (e.seq, e.pending),
                    (after.seq, 0),
                    "the event after the restart, once"
                );
                break;
            }
            Ok(Some(Err(e))) => eprintln!("feed error while the server restarted: {e}"),
            Ok(None) => panic!("the feed ended after a server restart"),
            Err(_) => panic!("the feed did not resume within 40 s of a server restart"),
        }
    }
    assert_feed_quiet(&mut f).await;
}

/// NATS only (the memory bus stores events one by one): a line of a batch
/// message that does not decode is reported on its own, and the message's
/// other events are still delivered, the last one complete.
#[tokio::test]
async fn nats_a_batch_with_a_bad_line_still_delivers_its_other_events() {
    let fx = Fixture::nats().await;
    let server = fx.server.as_ref().expect("a NATS fixture");
    let kpi = code("bad_line_kpi");
    let partition = partition_of(&kpi, PARTITIONS);
    let mut payload = event("g1", &kpi, 1.0).to_json();
    payload.extend_from_slice(b"\n{\"not\": an event}\n");
    payload.extend_from_slice(&event("g2", &kpi, 2.0).to_json());
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Kpi-Events", "3");
    let seq = async_nats::jetstream::new(client)
        .publish_with_headers(
            kpi_core::subject::event_batch_subject(partition),
            headers,
            Bytes::from(payload),
        )
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence;

    let mut f = feed(&fx.bus, &kpi, 1).await;
    let first = next_event(&mut f).await;
    let bad = next_event(&mut f).await;
    let last = next_event(&mut f).await;
    assert_eq!((first.seq, bad.seq, last.seq), (seq, seq, seq));
    assert_eq!(first.record.expect("g1 decodes").event_id, "g1");
    assert!(bad.record.is_err(), "the bad line is reported");
    assert_eq!(last.record.expect("g2 decodes").event_id, "g2");
    assert_eq!(
        (first.complete, bad.complete, last.complete),
        (false, false, true)
    );
    assert_feed_quiet(&mut f).await;
}

/// NATS only: the bus takes a cluster's comma-separated URL list and lays its
/// streams out with three replicas.
#[tokio::test]
async fn nats_bus_runs_on_a_three_node_cluster() {
    let cluster = NatsCluster::start(3);
    let bus = Bus::connect_nats(
        &cluster.urls(),
        BusConfig {
            replicas: 3,
            ..config()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connecting the bus to {}: {e}", cluster.urls()));
    let kpi = code("clustered");
    let a = append(&bus, &event("c1", &kpi, 1.0)).await;
    assert!(append(&bus, &event("c1", &kpi, 1.0)).await.duplicate);
    let mut f = feed(&bus, &kpi, 1).await;
    assert_eq!(
        read_events(&mut f, 1).await,
        vec![(a.seq, 0, "c1".into(), 1.0)]
    );
    let t = topic("clustered", Period::Minute);
    bus.publish_update(&t, Bytes::from_static(b"u1"))
        .await
        .expect("publish");
    assert_eq!(
        bus.recent_updates(&t, 5).await.expect("recent"),
        bytes_of(&["u1"])
    );
}

async fn known_kpis_lists_codes_with_stored_updates_sorted_and_bounded(fx: Fixture) {
    let bus = &fx.bus;
    assert!(bus.known_kpis(100).await.expect("known kpis").is_empty());
    // Two periods of one code count once; history and events alone do not
    // make a code known, since a dashboard could not show it.
    for (kpi, period) in [
        ("zeta", Period::Minute),
        ("alpha", Period::Minute),
        ("alpha", Period::Hour),
        ("mid-1", Period::Day),
    ] {
        bus.publish_update(&topic(kpi, period), Bytes::from_static(b"u"))
            .await
            .expect("publish");
    }
    let only = topic("only_history", Period::Minute);
    bus.publish_history(&only, record(&only, 60, 1, 1))
        .await
        .expect("history");
    append(bus, &event("k1", &code("only_events"), 1.0)).await;

    let names = |codes: Vec<KpiCode>| codes.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(bus.known_kpis(100).await.expect("known kpis")),
        ["alpha", "mid-1", "zeta"]
    );
    // The bound keeps the first codes in order, so a page of them is stable.
    assert_eq!(
        names(bus.known_kpis(2).await.expect("known kpis")),
        ["alpha", "mid-1"]
    );
    assert!(bus.known_kpis(0).await.expect("known kpis").is_empty());
}

/// A closed-bucket record as the aggregator writes it: bucket start, seq, count.
fn record(t: &Topic, bucket: i64, seq: u64, count: u64) -> Bytes {
    let m = kpi_core::UpdateMessage {
        kind: kpi_core::UpdateKind::Update,
        kpi: t.code.clone(),
        period: t.period,
        seq,
        bucket_start: kpi_core::period::secs_to_time(bucket),
        stats: kpi_core::message::StatsView {
            count,
            sum: count as f64,
            avg: Some(1.0),
            min: Some(1.0),
            max: Some(1.0),
            last: Some(1.0),
        },
        previous: None,
        event_time: None,
        updated_at: Utc::now(),
        correction: false,
    };
    Bytes::from(m.to_json())
}

/// (bucket start, seq) of each record.
fn buckets_of(records: &[Bytes]) -> Vec<(i64, u64)> {
    records
        .iter()
        .map(|r| {
            let m = kpi_core::UpdateMessage::from_json(r).expect("a history record");
            (m.bucket_start.timestamp(), m.seq)
        })
        .collect()
}

async fn corrections_keep_one_history_record_per_bucket(fx: Fixture) {
    let bus = &fx.bus;
    let t = topic("late_clock", Period::Minute);
    let mut seq = 0;
    let mut items = Vec::new();
    for b in 1..=4i64 {
        seq += 1;
        items.push(Outbound::History {
            topic: t.clone(),
            payload: record(&t, b * 60, seq, 1),
            id: format!("{t}/{}/{seq}", b * 60),
        });
    }
    // A publisher whose clock is behind: the closed minute 3 corrected 40 times.
    for c in 0..40u64 {
        seq += 1;
        items.push(Outbound::History {
            topic: t.clone(),
            payload: record(&t, 180, seq, 2 + c),
            id: format!("{t}/180/{seq}"),
        });
    }
    bus.publish_all(&items).await.expect("publish all");
    assert_eq!(
        buckets_of(&bus.history(&t, 3).await.expect("history")),
        [(120, 2), (180, seq), (240, 4)],
        "three distinct buckets, newest last, the corrected one at its latest"
    );
    assert_eq!(
        buckets_of(&bus.history(&t, 10).await.expect("history")),
        [(60, 1), (120, 2), (180, seq), (240, 4)]
    );
}

async fn events_past_their_max_age_leave_the_log(fx: Fixture) {
    let fx = fx
        .with(BusConfig {
            events_max_age: Duration::from_secs(1),
            duplicate_window: Duration::from_secs(1),
            ..config()
        })
        .await;
    let bus = &fx.bus;
    let k = code("aging");
    append(bus, &event("old", &k, 1.0)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    append(bus, &event("new", &k, 2.0)).await;
    let mut f = feed(bus, &k, 1).await;
    let got = read_events(&mut f, 1).await;
    assert_eq!(got[0].2, "new", "an event older than the max age was kept");
}

async fn a_full_event_log_refuses_new_events(fx: Fixture) {
    let fx = fx
        .with(BusConfig {
            events_max_bytes: 4096,
            ..config()
        })
        .await;
    let bus = &fx.bus;
    let k = code("bounded");
    let mut stored = 0;
    let refused = loop {
        match bus
            .append_event(&event(&format!("e{stored}"), &k, 1.0))
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "4096 bytes held {stored} events");
    };
    assert!(stored > 0, "{refused}");
    assert!(
        matches!(
            refused,
            kpi_bus::BusError::Full(_) | kpi_bus::BusError::Unavailable(_)
        ),
        "{refused}"
    );
    // The log's end is the last event acknowledged. (nats-server 2.9 may
    // still have dropped the oldest to make room; see ARCHITECTURE.md.)
    let last = bus
        .last_event_seq(partition_of(&k, PARTITIONS))
        .await
        .expect("last");
    assert_eq!(last, stored as u64);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::memory()).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Fixture::nats().await).await;
                }
            )*
        }
    };
}

conformance!(
    append_assigns_increasing_seqs_and_reports_duplicates,
    event_feed_reads_one_partition_in_order_with_pending,
    event_feed_resumes_from_a_seq,
    append_events_round_trips_across_partitions_in_order,
    event_feed_from_time_starts_at_the_first_event_stored_then,
    publish_update_reaches_a_live_subscription,
    publish_all_keeps_order_and_stores_a_history_record_once,
    live_items_are_delivered_in_order_and_not_stored,
    last_and_recent_updates_return_the_newest,
    updates_kept_per_topic_are_bounded,
    history_is_bounded_and_newest_last,
    checkpoints_are_saved_loaded_and_replaced,
    checkpoints_larger_than_one_message_round_trip,
    named_state_is_saved_replaced_and_names_are_checked,
    dropping_a_subscription_removes_interest,
    broadcast_reaches_every_broadcast_subscriber,
    known_kpis_lists_codes_with_stored_updates_sorted_and_bounded,
    corrections_keep_one_history_record_per_bucket,
    events_past_their_max_age_leave_the_log,
    a_full_event_log_refuses_new_events,
);

/// Messages in the checkpoint stream: manifests, whole checkpoints and parts.
async fn checkpoint_messages(server: &NatsServer) -> u64 {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(kpi_bus::nats::CHECKPOINT_STREAM)
        .await
        .expect("checkpoint stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn nats_large_checkpoints_survive_an_interrupted_save_and_leave_no_parts_behind() {
    let fx = Fixture::nats().await;
    let server = fx.server.as_ref().expect("a NATS fixture");
    let a = noise(LARGE_CHECKPOINT, 3);
    fx.bus.save_checkpoint(0, a.clone()).await.expect("save");
    // Three parts of up to ~1 MiB, and the manifest.
    assert_eq!(checkpoint_messages(server).await, 4);

    // A save that died after writing a part but before its manifest.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.publish("kpi.checkpoint.0.parts.1.0", Bytes::from_static(b"{\"half"))
        .await
        .expect("publish")
        .await
        .expect("stored");
    let loaded = fx.bus.load_checkpoint(0).await.expect("load");
    assert!(loaded == Some(a), "the previous checkpoint is still whole");

    // The next save removes the stray part and the replaced ones.
    let b = noise(LARGE_CHECKPOINT, 4);
    fx.bus.save_checkpoint(0, b.clone()).await.expect("save");
    assert_eq!(checkpoint_messages(server).await, 4);
    fx.bus
        .save_checkpoint(0, Bytes::from_static(b"small"))
        .await
        .expect("save");
    assert_eq!(checkpoint_messages(server).await, 1);

    // Parts lost from under a manifest: reported as damage, not as "no checkpoint".
    fx.bus.save_checkpoint(0, b).await.expect("save");
    js.get_stream(kpi_bus::nats::CHECKPOINT_STREAM)
        .await
        .expect("stream")
        .purge()
        .filter("kpi.checkpoint.0.parts.>")
        .await
        .expect("purge");
    match fx.bus.load_checkpoint(0).await {
        Err(kpi_bus::BusError::Damaged(why)) => assert!(why.contains("gone"), "{why}"),
        other => panic!(
            "expected damage, got {:?}",
            other.map(|o| o.map(|b| b.len()))
        ),
    }
}

/// NATS only: a stream made by an older version, without direct gets and
/// capturing the live subjects, gets direct gets turned on and captures the
/// stored subjects instead at connect, keeping the operator's limits and
/// what it holds (old messages stay in the stream, unread).
#[tokio::test]
async fn nats_bus_updates_existing_streams_made_by_older_versions() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: kpi_bus::nats::UPDATES_STREAM.to_string(),
        subjects: vec![kpi_core::subject::UPDATES_WILDCARD.to_string()],
        max_messages_per_subject: UPDATES_KEPT,
        allow_direct: false,
        ..Default::default()
    })
    .await
    .expect("create an old-style stream");
    let t = topic("older", Period::Minute);
    js.publish(t.updates_subject(), Bytes::from_static(b"old"))
        .await
        .expect("publish")
        .await
        .expect("ack");

    let bus = Bus::connect_nats(&server.url(), config())
        .await
        .expect("connect the bus");
    let mut stream = js
        .get_stream(kpi_bus::nats::UPDATES_STREAM)
        .await
        .expect("stream");
    let info = stream.info().await.expect("info").clone();
    assert!(info.config.allow_direct, "direct gets still off");
    assert_eq!(
        info.config.subjects,
        [kpi_core::subject::STORED_WILDCARD.to_string()]
    );
    assert_eq!(info.config.max_messages_per_subject, UPDATES_KEPT);
    assert_eq!(info.state.messages, 1, "the old message was dropped");
    assert_eq!(bus.last_update(&t).await.expect("last"), None);
    bus.publish_update(&t, Bytes::from_static(b"new"))
        .await
        .expect("publish");
    assert_eq!(
        bus.last_update(&t).await.expect("last"),
        Some(Bytes::from_static(b"new"))
    );
}
