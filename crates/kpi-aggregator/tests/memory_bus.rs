//! The aggregator over the in-process bus: exact stats, coalescing, and restarts that neither lose nor repeat.

mod common;
use common::start;

use std::time::Duration;

use chrono::{DateTime, Utc};
use kpi_aggregator::AggregatorSettings;
use kpi_bus::{Bus, BusConfig, Live};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};

fn event(id: usize, kpi: &KpiCode, value: f64, time: DateTime<Utc>) -> EventRecord {
    EventRecord {
        event_id: format!("ev-{id}"),
        kpi: kpi.clone(),
        value,
        time,
        received_at: Utc::now(),
        labels: Default::default(),
    }
}

fn settings() -> AggregatorSettings {
    AggregatorSettings {
        coalesce: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Waits until the topic's latest update has `count` events in `bucket`.
async fn wait_count(bus: &Bus, topic: &Topic, bucket: DateTime<Utc>, count: u64) -> UpdateMessage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(raw)) = bus.last_update(topic).await {
            let m = UpdateMessage::from_json(&raw).expect("valid update");
            let stats = if m.bucket_start == bucket {
                Some(m.stats)
            } else {
                m.previous
                    .filter(|p| p.bucket_start == bucket)
                    .map(|p| p.stats)
            };
            if stats.is_some_and(|s| s.count == count) {
                return m;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never reached count {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stats_are_exact_and_survive_restarts_without_double_counting() {
    let bus = Bus::memory(BusConfig::default());
    let kpi = KpiCode::parse("approval_rate").expect("code");
    let now = Utc::now();
    let bucket = Period::Hour.bucket_start(now);
    let hour = Topic::new(kpi.clone(), Period::Hour);

    let (sd, h) = start(&bus, settings()).await;
    let mut first = Some((sd, h));
    let mut sum = 0.0;
    for i in 0..300 {
        let v = (i % 17) as f64;
        sum += v;
        // Event times within half the duplicate window of receipt count.
        bus.append_event(&event(i, &kpi, v, now))
            .await
            .expect("append");
        if i == 150 {
            // Stop mid-stream: the checkpoint plus replay must pick up exactly here.
            if let Some((sd, h)) = first.take() {
                sd.trigger();
                h.await.expect("clean stop");
            }
        }
    }
    let (sd, h) = start(&bus, settings()).await;
    let m = wait_count(&bus, &hour, bucket, 300).await;
    assert_eq!(m.stats.sum, sum);
    assert_eq!(m.stats.min, Some(0.0));
    assert_eq!(m.stats.max, Some(16.0));
    sd.trigger();
    h.await.expect("clean stop");

    // A third run with nothing new republishes nothing older.
    let last_seq = m.seq;
    let (sd, h) = start(&bus, settings()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again =
        UpdateMessage::from_json(&bus.last_update(&hour).await.expect("bus").expect("update"))
            .expect("valid");
    assert!(again.seq >= last_seq);
    assert_eq!(again.stats.count, 300);
    sd.trigger();
    h.await.expect("clean stop");
}

#[tokio::test]
async fn a_burst_is_coalesced_and_seq_grows_by_one() {
    let bus = Bus::memory(BusConfig::default());
    let kpi = KpiCode::parse("orders").expect("code");
    let topic = Topic::new(kpi.clone(), Period::Day);
    let mut sub = bus.subscribe_updates(&topic).await.expect("subscribe");
    let (sd, h) = start(&bus, settings()).await;
    let now = Utc::now();
    for i in 0..2000 {
        bus.append_event(&event(i, &kpi, 1.0, now))
            .await
            .expect("append");
    }
    wait_count(&bus, &topic, Period::Day.bucket_start(now), 2000).await;
    sd.trigger();
    h.await.expect("clean stop");
    let mut seqs = vec![];
    let mut last: Option<bytes::Bytes> = None;
    while let Ok(Some(Live::Message(raw))) =
        tokio::time::timeout(Duration::from_millis(50), sub.next()).await
    {
        // A trailing store repeats the newest update, byte for byte.
        if last.as_ref() == Some(&raw) {
            continue;
        }
        seqs.push(UpdateMessage::from_json(&raw).expect("valid").seq);
        last = Some(raw);
    }
    assert!(!seqs.is_empty());
    assert!(
        seqs.len() < 100,
        "2000 events gave {} updates: not coalesced",
        seqs.len()
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
}

/// Retried after the duplicate window, an event is stored twice on the bus;
/// it must still count once (the event-age rule keeps every accepted copy
/// within the window of the first, and the aggregator applies no older copy).
#[tokio::test]
async fn a_retry_after_the_duplicate_window_is_counted_once() {
    let bus = Bus::memory(BusConfig {
        duplicate_window: Duration::from_secs(2),
        ..BusConfig::default()
    });
    let kpi = KpiCode::parse("retried").expect("code");
    let topic = Topic::new(kpi.clone(), Period::Day);
    let (sd, h) = start(&bus, settings()).await;
    let time = Utc::now();
    let first = EventRecord {
        event_id: "once".into(),
        received_at: time,
        ..event(0, &kpi, 1.0, time)
    };
    assert!(!bus.append_event(&first).await.expect("append").duplicate);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let retry = EventRecord {
        received_at: Utc::now(),
        ..first.clone()
    };
    let stored = bus.append_event(&retry).await.expect("append");
    assert!(!stored.duplicate, "the bus window is over: stored again");
    // A marker after the retry: once it is counted, so is everything before it.
    bus.append_event(&event(1, &kpi, 100.0, Utc::now()))
        .await
        .expect("append");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        let raw = bus.last_update(&topic).await.expect("bus");
        if let Some(m) = raw.map(|r| UpdateMessage::from_json(&r).expect("valid")) {
            if m.stats.max == Some(100.0) {
                break m;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "marker never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        m.stats.count, 2,
        "the late retry was counted: {:?}",
        m.stats
    );
    sd.trigger();
    h.await.expect("clean stop");
}

/// After a restart with a long backlog, the first update already holds the
/// whole backlog: nothing is published before it is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_before_the_backlog_is_replayed() {
    const BACKLOG: usize = 100_000;
    let bus = Bus::memory(BusConfig {
        partitions: 1,
        ..BusConfig::default()
    });
    let kpi = KpiCode::parse("backlog").expect("code");
    let topic = Topic::new(kpi.clone(), Period::Day);
    let now = Utc::now();
    for i in 0..BACKLOG {
        bus.append_event(&event(i, &kpi, 1.0, now))
            .await
            .expect("append");
    }
    let mut sub = bus.subscribe_updates(&topic).await.expect("subscribe");
    let (sd, h) = start(
        &bus,
        AggregatorSettings {
            partitions: 1,
            ..settings()
        },
    )
    .await;
    let first = tokio::time::timeout(Duration::from_secs(120), sub.next())
        .await
        .expect("an update within two minutes");
    let Some(Live::Message(raw)) = first else {
        panic!("no update: {first:?}");
    };
    let m = UpdateMessage::from_json(&raw).expect("valid");
    assert_eq!(
        m.stats.count, BACKLOG as u64,
        "published a partial count before the backlog was replayed"
    );
    sd.trigger();
    h.await.expect("clean stop");
}

/// A topic idle past `topic_idle` whose buckets are final leaves memory and
/// the checkpoint; when it returns, its seq continues where it stopped.
#[tokio::test]
async fn idle_topics_leave_memory_and_their_seq_continues() {
    let bus = Bus::memory(BusConfig {
        partitions: 1,
        ..BusConfig::default()
    });
    let settings = AggregatorSettings {
        partitions: 1,
        topic_idle: Duration::from_secs(1),
        ..settings()
    };
    let old = KpiCode::parse("gone_quiet").expect("code");
    let busy = KpiCode::parse("busy").expect("code");
    let day = Topic::new(old.clone(), Period::Day);
    let then = Utc::now() - chrono::Duration::days(2);
    let at = |id: usize, kpi: &KpiCode, t: DateTime<Utc>| EventRecord {
        received_at: t,
        ..event(id, kpi, 1.0, t)
    };
    bus.append_event(&at(0, &old, then)).await.expect("append");
    bus.append_event(&at(1, &busy, Utc::now()))
        .await
        .expect("append");
    let (sd, h) = start(&bus, settings).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let raw = bus.load_checkpoint(0).await.expect("bus");
        let topics = raw
            .map(|r| kpi_aggregator::state::PartitionState::from_json(&r).expect("checkpoint"))
            .map(|s| s.topic_count());
        if topics == Some(3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle KPI never left the checkpoint: {topics:?} topics"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = UpdateMessage::from_json(
        &bus.last_update(&day)
            .await
            .expect("bus")
            .expect("an update"),
    )
    .expect("valid")
    .seq;
    bus.append_event(&at(2, &old, Utc::now()))
        .await
        .expect("append");
    let back = wait_count(&bus, &day, Period::Day.bucket_start(Utc::now()), 1).await;
    assert_eq!(
        back.seq,
        before + 1,
        "the returning KPI's seq did not continue"
    );
    sd.trigger();
    h.await.expect("clean stop");
}
