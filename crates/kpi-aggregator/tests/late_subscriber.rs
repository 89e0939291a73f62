//! A subscriber that arrives after a live-only update (a gateway taking a topic up: subscribe, then read the stored latest) still gets the current value, from the trailing store.

mod common;
use common::start;

use std::time::Duration;

use chrono::Utc;
use kpi_aggregator::AggregatorSettings;
use kpi_bus::{Bus, BusConfig, Live, UpdateSubscription};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};
use kpi_test_support::NatsServer;

/// Wide enough that the late subscriber arrives well inside it.
const STORE_INTERVAL: Duration = Duration::from_secs(3);

fn settings() -> AggregatorSettings {
    AggregatorSettings {
        partitions: 1,
        coalesce: Duration::from_millis(20),
        store_interval: STORE_INTERVAL,
        ..Default::default()
    }
}

async fn append(bus: &Bus, kpi: &KpiCode, from: usize, n: usize) {
    for i in from..from + n {
        let now = Utc::now();
        let ev = EventRecord {
            event_id: format!("ev-{i}"),
            kpi: kpi.clone(),
            value: 1.0,
            time: now,
            received_at: now,
            labels: Default::default(),
        };
        bus.append_event(&ev).await.expect("append");
    }
}

/// The next update on `sub` with `count` events, skipping older ones.
async fn live_count(sub: &mut UpdateSubscription, count: u64) -> UpdateMessage {
    let deadline = tokio::time::Instant::now() + 4 * STORE_INTERVAL;
    loop {
        let next = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no update with count {count} in time"));
        if let Some(Live::Message(raw)) = next {
            let m = UpdateMessage::from_json(&raw).expect("valid update");
            if m.stats.count == count {
                return m;
            }
        }
    }
}

async fn a_late_subscriber_gets_the_current_value(bus: Bus) {
    let kpi = KpiCode::parse("late_comer").expect("code");
    let topic = Topic::new(kpi.clone(), Period::Day);
    let mut early = bus.subscribe_updates(&topic).await.expect("subscribe");
    let (sd, h) = start(&bus, settings()).await;
    append(&bus, &kpi, 0, 10).await;
    live_count(&mut early, 10).await;
    // Within the store interval of the first (stored) render: the next one
    // goes out live only.
    append(&bus, &kpi, 10, 5).await;
    let current = live_count(&mut early, 15).await;

    // A gateway taking the topic up now: subscribe, then read the stored latest.
    let mut late = bus.subscribe_updates(&topic).await.expect("subscribe");
    let stored = bus
        .last_update(&topic)
        .await
        .expect("bus")
        .map(|raw| UpdateMessage::from_json(&raw).expect("valid update"))
        .expect("the first render is stored");
    assert!(
        stored.seq < current.seq,
        "stored seq {} is not older than the live {}: the second render came \
         a whole store interval after the first?",
        stored.seq,
        current.seq
    );
    // It holds an older value: the trailing store brings the current one.
    let got = live_count(&mut late, 15).await;
    assert_eq!(got, current, "the trailing store is the same message");
    // And the bus's stored latest is now the current value.
    let stored = bus.last_update(&topic).await.expect("bus").expect("stored");
    assert_eq!(
        UpdateMessage::from_json(&stored).expect("valid update"),
        current
    );
    sd.trigger();
    h.await.expect("clean stop");
}

#[tokio::test]
async fn on_the_memory_bus() {
    let bus = Bus::memory(BusConfig {
        partitions: 1,
        ..BusConfig::default()
    });
    a_late_subscriber_gets_the_current_value(bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats() {
    let server = NatsServer::start();
    let bus = Bus::connect_nats(
        &server.url(),
        BusConfig {
            partitions: 1,
            ..BusConfig::default()
        },
    )
    .await
    .expect("bus on nats");
    a_late_subscriber_gets_the_current_value(bus).await;
}

/// A clean stop stores what is owed: while no aggregator runs, the stored
/// latest (what a gateway taking the topic up reads) is the newest.
#[tokio::test]
async fn a_clean_stop_stores_the_newest_update() {
    let bus = Bus::memory(BusConfig {
        partitions: 1,
        ..BusConfig::default()
    });
    let kpi = KpiCode::parse("stopping").expect("code");
    let topic = Topic::new(kpi.clone(), Period::Day);
    let mut sub = bus.subscribe_updates(&topic).await.expect("subscribe");
    let (sd, h) = start(&bus, settings()).await;
    append(&bus, &kpi, 0, 10).await;
    live_count(&mut sub, 10).await;
    append(&bus, &kpi, 10, 5).await;
    let newest = live_count(&mut sub, 15).await;
    let stored = |raw: Option<bytes::Bytes>| {
        UpdateMessage::from_json(&raw.expect("stored")).expect("valid update")
    };
    assert!(
        stored(bus.last_update(&topic).await.expect("bus")).seq < newest.seq,
        "the newest is stored already: nothing to show"
    );
    sd.trigger();
    h.await.expect("clean stop");
    assert_eq!(stored(bus.last_update(&topic).await.expect("bus")), newest);
}
