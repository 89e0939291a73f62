//! Hot paths of the gateway: one update serialized once and handed to 10,000
//! subscribers' outboxes, the writers draining them, and finding a topic among 10,000.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kpi_bus::{Bus, BusConfig};
use kpi_core::{KpiCode, Period, Topic, UpdateKind, UpdateMessage};
use kpi_gateway::fanout::hub::Hub;
use kpi_gateway::fanout::outbox::Outbox;
use kpi_gateway::fanout::topic::{Start, TopicShared};

const SUBSCRIBERS: usize = 10_000;

fn topic(i: usize) -> Topic {
    Topic::new(
        KpiCode::parse(&format!("kpi-{i}")).expect("valid code"),
        Period::Minute,
    )
}

fn message(seq: u64) -> UpdateMessage {
    let now = chrono::Utc::now();
    let mut m = UpdateMessage::empty(topic(0).code, Period::Minute, now);
    m.kind = UpdateKind::Update;
    m.seq = seq;
    m.event_time = Some(now);
    m
}

/// A topic with `n` subscribers, each on its own outbox (one connection each).
fn subscribed(n: usize) -> (Arc<TopicShared>, Vec<Outbox>) {
    let t = TopicShared::new(topic(0), 256);
    let outboxes: Vec<Outbox> = (0..n).map(|_| Outbox::new(256)).collect();
    for o in &outboxes {
        t.attach(o, 1, Start::Snapshot);
        while o.try_next().is_some() {}
    }
    (t, outboxes)
}

fn drain(outboxes: &[Outbox]) -> usize {
    let mut n = 0;
    for o in outboxes {
        while o.try_next().is_some() {
            n += 1;
        }
    }
    n
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway_fanout");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let (t, outboxes) = subscribed(SUBSCRIBERS);
    let mut seq = 0;
    // Serialize once, push the same bytes into every outbox; the writers'
    // draining is done outside the timed part.
    g.bench_function("serialize_once_and_push_to_10k_outboxes", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                seq += 1;
                let m = message(seq);
                let start = Instant::now();
                let bytes = Bytes::from(m.to_json());
                t.apply(vec![(seq, bytes)]);
                spent += start.elapsed();
                black_box(drain(&outboxes));
            }
            spent
        })
    });
    // What the 10,000 writer tasks do for that update, summed: take it from the outbox.
    g.bench_function("writers_take_one_update_from_10k_outboxes", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                seq += 1;
                t.apply(vec![(seq, Bytes::from(message(seq).to_json()))]);
                let start = Instant::now();
                black_box(drain(&outboxes));
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let hub = Hub::new(
        Bus::memory(BusConfig::default()),
        Duration::from_secs(60),
        16,
        10_000,
    );
    let topics: Vec<Topic> = (0..10_000).map(topic).collect();
    let interests = rt.block_on(async {
        let mut v = Vec::new();
        for t in &topics {
            v.push(hub.watch(t.clone()).await.expect("watch"));
        }
        v
    });
    let mut g = c.benchmark_group("gateway_hub");
    let mut i = 0;
    g.bench_function("lookup_one_of_10k_topics", |b| {
        b.iter(|| {
            i = (i + 7919) % topics.len();
            black_box(hub.watched(&topics[i]))
        })
    });
    g.finish();
    drop(interests);
    drop(rt);
}

criterion_group!(benches, fanout, lookup);
criterion_main!(benches);
