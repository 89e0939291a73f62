//! On a real nats-server: a partition whose checkpoint outgrows one NATS message still checkpoints, and restarts from it.

mod common;
use common::start;

use std::time::Duration;

use chrono::Utc;
use kpi_aggregator::state::PartitionState;
use kpi_aggregator::AggregatorSettings;
use kpi_bus::{Bus, BusConfig};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};
use kpi_test_support::NatsServer;

/// Enough KPIs (three periods each) that one partition's checkpoint is well
/// over nats-server's default `max_payload` of 1 MiB.
const KPIS: usize = 2_500;

fn code(i: usize) -> KpiCode {
    KpiCode::parse(&format!("kpi_{i}")).expect("code")
}

fn settings() -> AggregatorSettings {
    AggregatorSettings {
        partitions: 1,
        coalesce: Duration::from_millis(20),
        checkpoint_interval: Duration::from_secs(3600),
        ..Default::default()
    }
}

async fn wait_count(bus: &Bus, topic: &Topic, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(raw)) = bus.last_update(topic).await {
            let m = UpdateMessage::from_json(&raw).expect("valid update");
            if m.stats.count == count {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never reached count {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_larger_than_a_nats_message_is_saved_and_restored() {
    let server = NatsServer::start();
    let config = BusConfig {
        partitions: 1,
        ..BusConfig::default()
    };
    let bus = Bus::connect_nats(&server.url(), config)
        .await
        .expect("bus on nats");
    let now = Utc::now();
    for i in 0..KPIS {
        let ev = EventRecord {
            event_id: format!("ev-{i}"),
            kpi: code(i),
            value: i as f64,
            time: now,
            received_at: now,
            labels: Default::default(),
        };
        bus.append_event(&ev).await.expect("append");
    }
    let last = Topic::new(code(KPIS - 1), Period::Day);
    let (sd, h) = start(&bus, settings()).await;
    wait_count(&bus, &last, 1).await;
    // Stopping checkpoints whatever the interval.
    sd.trigger();
    h.await.expect("clean stop");

    let raw = bus
        .load_checkpoint(0)
        .await
        .expect("checkpoint readable")
        .expect("a checkpoint was saved");
    assert!(
        raw.len() > 1024 * 1024,
        "the test needs a checkpoint over 1 MiB, got {} bytes",
        raw.len()
    );
    let state = PartitionState::from_json(&raw).expect("the checkpoint decodes whole");
    assert_eq!(state.applied_seq, KPIS as u64);
    assert_eq!(state.topic_count(), KPIS * 3);

    // A restart starts from it: one more event counts on top, not alone.
    let again = Topic::new(code(0), Period::Day);
    let (sd, h) = start(&bus, settings()).await;
    let ev = EventRecord {
        event_id: "ev-again".into(),
        kpi: code(0),
        value: 1.0,
        time: now,
        received_at: now,
        labels: Default::default(),
    };
    bus.append_event(&ev).await.expect("append");
    wait_count(&bus, &again, 2).await;
    sd.trigger();
    h.await.expect("clean stop");

    // Parts lost from under the manifest: the aggregator still starts, from
    // the whole log, and counts every event once.
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .get_stream(kpi_bus::nats::CHECKPOINT_STREAM)
        .await
        .expect("checkpoint stream")
        .purge()
        .filter("kpi.checkpoint.0.parts.>")
        .await
        .expect("purge the parts");
    let (sd, h) = start(&bus, settings()).await;
    let ev = EventRecord {
        event_id: "ev-third".into(),
        ..ev
    };
    bus.append_event(&ev).await.expect("append");
    wait_count(&bus, &again, 3).await;
    sd.trigger();
    h.await.expect("clean stop");
}

/// A checkpoint never covers a render the bus did not acknowledge: with
/// updates failing to store while checkpoints still succeed, an aggregator
/// killed with SIGKILL publishes the missing value after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_never_covers_an_unacknowledged_render() {
    let server = NatsServer::start();
    let bus = Bus::connect_nats(&server.url(), BusConfig::default())
        .await
        .expect("bus on nats");
    let args = [
        "--coalesce-ms",
        "20",
        "--checkpoint-ms",
        "100",
        "--listen",
        "127.0.0.1:0",
    ];
    let env = [("NATS_URL", server.url()), ("RUST_LOG", "warn".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let now = Utc::now();
    let ev = |id: &str| EventRecord {
        event_id: id.into(),
        kpi: code(7),
        value: 1.0,
        time: now,
        received_at: now,
        labels: Default::default(),
    };
    let day = Topic::new(code(7), Period::Day);
    let mut agg = kpi_test_support::Service::spawn("kpi-aggregator", &args, &env);
    bus.append_event(&ev("a")).await.expect("append");
    wait_count(&bus, &day, 1).await;

    // Updates and closed buckets can no longer be stored; checkpoints can.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    for s in [kpi_bus::nats::UPDATES_STREAM, kpi_bus::nats::HISTORY_STREAM] {
        js.delete_stream(s).await.expect("delete stream");
    }
    bus.append_event(&ev("b")).await.expect("append");
    // Many checkpoint intervals pass while the render of "b" is unacknowledged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agg.kill();

    // A new connection recreates the streams; the restarted aggregator must
    // publish the count that includes "b".
    let bus = Bus::connect_nats(&server.url(), BusConfig::default())
        .await
        .expect("bus on nats");
    let _agg = kpi_test_support::Service::spawn("kpi-aggregator", &args, &env);
    wait_count(&bus, &day, 2).await;
}
