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
        bus.append_event(&event(i, &kpi, v, bucket))
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
    while let Ok(Some(Live::Message(raw))) =
        tokio::time::timeout(Duration::from_millis(50), sub.next()).await
    {
        seqs.push(UpdateMessage::from_json(&raw).expect("valid").seq);
    }
    assert!(!seqs.is_empty());
    assert!(
        seqs.len() < 100,
        "2000 events gave {} updates: not coalesced",
        seqs.len()
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
}
