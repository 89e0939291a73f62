//! On a real nats-server: topics a holder of an update subscription announces go out at every render; the others only when stored, yet end at their true value.

mod common;
use common::start;

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kpi_aggregator::AggregatorSettings;
use kpi_bus::{Bus, BusConfig, Live};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};
use kpi_test_support::NatsServer;

const EVENTS: u64 = 40;

fn config() -> BusConfig {
    BusConfig {
        partitions: 1,
        ..BusConfig::default()
    }
}

fn minute(code: &str) -> Topic {
    Topic::new(KpiCode::parse(code).expect("code"), Period::Minute)
}

fn settings(live_all: bool) -> AggregatorSettings {
    AggregatorSettings {
        partitions: 1,
        coalesce: Duration::from_millis(50),
        store_interval: Duration::from_secs(1),
        live_all,
        ..Default::default()
    }
}

/// Updates seen on one topic: distinct seqs, and the newest count.
#[derive(Default, Debug)]
struct Seen {
    seqs: std::collections::BTreeSet<u64>,
    newest: Option<(u64, u64)>,
}

impl Seen {
    fn add(&mut self, raw: &[u8]) {
        let m = UpdateMessage::from_json(raw).expect("an update");
        self.seqs.insert(m.seq);
        if self.newest.is_none_or(|(seq, _)| m.seq > seq) {
            self.newest = Some((m.seq, m.stats.count));
        }
    }
}

/// Events on `watched` and `other` every 75 ms while one connection holds
/// `watched` through the bus (which announces it) and another subscribes
/// to `other` raw, as a tool that does not announce would; returns what
/// each saw once a store interval after the last event passed.
async fn run(live_all: bool) -> (Seen, Seen) {
    let server = NatsServer::start();
    let bus = Bus::connect_nats(&server.url(), config())
        .await
        .expect("bus on nats");
    let (sd, h) = start(&bus, settings(live_all)).await;
    let holder = Bus::connect_nats(&server.url(), config())
        .await
        .expect("bus on nats");
    let mut watched = holder
        .subscribe_updates(&minute("watched"))
        .await
        .expect("subscribe");
    let raw = async_nats::connect(server.url()).await.expect("connect");
    let mut other = raw
        .subscribe(minute("other").updates_subject())
        .await
        .expect("subscribe");
    // The subscription and its announcement are on their way.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let collect = tokio::spawn(async move {
        let (mut a, mut b) = (Seen::default(), Seen::default());
        let until = tokio::time::Instant::now()
            + Duration::from_millis(75 * EVENTS)
            + Duration::from_secs(3);
        loop {
            tokio::select! {
                Some(Live::Message(m)) = watched.next() => a.add(&m),
                Some(m) = other.next() => b.add(&m.payload),
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        (a, b)
    });
    for i in 0..EVENTS {
        let now = Utc::now();
        let events: Vec<EventRecord> = ["watched", "other"]
            .iter()
            .map(|code| EventRecord {
                event_id: format!("{code}-{i}"),
                kpi: KpiCode::parse(code).expect("code"),
                value: 1.0,
                time: now,
                received_at: now,
                labels: Default::default(),
            })
            .collect();
        for r in bus.append_events(&events).await {
            r.expect("stored");
        }
        tokio::time::sleep(Duration::from_millis(75)).await;
    }
    let seen = collect.await.expect("collector");
    sd.trigger();
    h.await.expect("clean stop");
    seen
}

/// 40 events over 3 s: the watched topic goes out at nearly every one; the
/// unwatched one at most once per store interval (plus its first render),
/// and both end at the full count. A minute boundary inside the run adds
/// one render to each, which the margins allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_topics_go_out_only_when_stored() {
    let (watched, other) = run(false).await;
    assert!(
        watched.seqs.len() >= 20,
        "the watched topic rendered {} times",
        watched.seqs.len()
    );
    assert!(
        (1..=7).contains(&other.seqs.len()),
        "the unwatched topic went out {} times: {:?}",
        other.seqs.len(),
        other.seqs
    );
    // The minute may have turned during the run: then the newest count is
    // of the new minute, and no smaller than what came after the turn.
    for (name, seen) in [("watched", &watched), ("other", &other)] {
        let (_, count) = seen.newest.expect("some update");
        assert!(count > 0 && count <= EVENTS, "{name}: {count}");
    }
    assert_eq!(
        watched.newest.map(|(_, c)| c),
        other.newest.map(|(_, c)| c),
        "both end at the same count: nothing of the unwatched one is lost"
    );
}

/// `--live-all`: a subscriber that announces nothing gets every render.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_all_renders_every_topic_live() {
    let (_, other) = run(true).await;
    assert!(
        other.seqs.len() >= 20,
        "with --live-all the unannounced topic rendered {} times",
        other.seqs.len()
    );
}
