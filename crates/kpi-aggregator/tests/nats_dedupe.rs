//! On a real nats-server: copies of an event stored in several batch messages count once, also across a kill -9 of the aggregator.

mod common;
use common::start;

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use kpi_aggregator::state::PartitionState;
use kpi_aggregator::AggregatorSettings;
use kpi_bus::{Bus, BusConfig};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};
use kpi_test_support::NatsServer;

fn config() -> BusConfig {
    BusConfig {
        partitions: 1,
        ..BusConfig::default()
    }
}

fn code() -> KpiCode {
    KpiCode::parse("copies").expect("code")
}

fn day() -> Topic {
    Topic::new(code(), Period::Day)
}

fn events(ids: std::ops::Range<usize>) -> Vec<EventRecord> {
    let now = Utc::now();
    ids.map(|i| EventRecord {
        event_id: format!("ev-{i}"),
        kpi: code(),
        value: 1.0,
        time: now,
        received_at: now,
        labels: Default::default(),
    })
    .collect()
}

async fn store(bus: &Bus, events: &[EventRecord]) {
    for r in bus.append_events(events).await {
        r.expect("stored");
    }
}

async fn connect(server: &NatsServer) -> Bus {
    Bus::connect_nats(&server.url(), config())
        .await
        .expect("bus on nats")
}

async fn count(bus: &Bus) -> Option<u64> {
    let raw = bus.last_update(&day()).await.ok()??;
    Some(
        UpdateMessage::from_json(&raw)
            .expect("valid update")
            .stats
            .count,
    )
}

/// Waits until the day's count is `want`, then checks it stays there (the
/// aggregator has read everything stored before the call by then).
async fn settles_at(bus: &Bus, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(bus).await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count never reached {want}; it is {:?}",
            count(bus).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(bus).await, Some(want), "the count moved on");
}

fn settings() -> AggregatorSettings {
    AggregatorSettings {
        partitions: 1,
        coalesce: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Two ingest processes (two connections) store overlapping batches: each
/// overlap is a new batch message, and only the aggregator can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_stored_through_two_connections_count_once() {
    let server = NatsServer::start();
    let (a, b) = (connect(&server).await, connect(&server).await);
    store(&a, &events(0..10)).await;
    store(&b, &events(5..15)).await;
    let mut reversed = events(0..10);
    reversed.reverse();
    store(&b, &reversed).await;
    let (sd, h) = start(&a, settings()).await;
    settles_at(&a, 15).await;
    sd.trigger();
    h.await.expect("clean stop");
}

/// The checkpoint does not hold the window of ids: an aggregator killed
/// with SIGKILL after a checkpoint rebuilds it from the log, so copies of
/// events it applied before the checkpoint, stored while it was down, count
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_killed_after_a_checkpoint_counts_later_copies_once() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let args = [
        "--coalesce-ms",
        "20",
        "--checkpoint-ms",
        "100",
        "--listen",
        "127.0.0.1:0",
        "--partitions",
        "1",
    ];
    let env = [("NATS_URL", server.url()), ("RUST_LOG", "warn".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut agg = kpi_test_support::Service::spawn("kpi-aggregator", &args, &env);
    store(&bus, &events(0..50)).await;
    settles_at(&bus, 50).await;
    let last = bus.last_event_seq(0).await.expect("log end");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saved = bus.load_checkpoint(0).await.expect("read checkpoint");
        let applied = saved
            .map(|raw| {
                PartitionState::from_json(&raw)
                    .expect("checkpoint")
                    .applied_seq
            })
            .unwrap_or(0);
        if applied >= last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint covers the events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agg.kill();

    // Another ingest process (nothing in common with the first) stores the
    // copies in other batches, then one new event.
    let other = connect(&server).await;
    let mut copies = events(0..50);
    copies.reverse();
    store(&other, &copies[..20]).await;
    store(&other, &copies[20..]).await;
    store(&other, &events(50..51)).await;
    let _agg = kpi_test_support::Service::spawn("kpi-aggregator", &args, &env);
    settles_at(&bus, 51).await;
}

/// A batch message with a line that is no event: the other events count,
/// and what follows is read as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_bad_line_applies_its_other_events() {
    let server = NatsServer::start();
    let bus = connect(&server).await;
    let mut payload = Vec::new();
    for (i, ev) in events(0..2).iter().enumerate() {
        if i > 0 {
            payload.extend_from_slice(b"\n{\"event_id\": 7}\n");
        }
        payload.extend_from_slice(&ev.to_json());
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Kpi-Events", "3");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    js.publish_with_headers(
        kpi_core::subject::event_batch_subject(0),
        headers,
        Bytes::from(payload),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let (sd, h) = start(&bus, settings()).await;
    settles_at(&bus, 2).await;
    store(&bus, &events(2..5)).await;
    settles_at(&bus, 5).await;
    sd.trigger();
    h.await.expect("clean stop");
}
