//! Hot path of the aggregator: applying events to a partition's aggregates, and rendering updates.

use std::hint::black_box;

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kpi_aggregator::state::PartitionState;
use kpi_aggregator::{Lateness, ThresholdPolicy};
use kpi_core::{EventRecord, KpiCode};

/// `n` events over `kpis` KPIs, one millisecond apart, all on time.
fn events(n: usize, kpis: usize) -> Vec<EventRecord> {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 25, 8, 0, 0)
        .single()
        .expect("valid time");
    let codes: Vec<KpiCode> = (0..kpis)
        .map(|i| KpiCode::parse(&format!("kpi-{i}")).expect("valid code"))
        .collect();
    (0..n)
        .map(|i| {
            let t = start + Duration::milliseconds(i as i64);
            EventRecord {
                event_id: format!("e{i}"),
                kpi: codes[i % kpis].clone(),
                value: (i % 97) as f64,
                time: t,
                received_at: t,
                labels: Default::default(),
            }
        })
        .collect()
}

fn apply(c: &mut Criterion) {
    let lateness = Lateness::default();
    let mut g = c.benchmark_group("aggregator");
    for kpis in [10usize, 1000] {
        let evs = events(10_000, kpis);
        g.throughput(Throughput::Elements(evs.len() as u64));
        g.bench_function(format!("apply_10k_events_{kpis}_kpis"), |b| {
            b.iter_batched_ref(
                PartitionState::default,
                |state| {
                    for (i, ev) in evs.iter().enumerate() {
                        black_box(state.apply(i as u64 + 1, ev, &lateness));
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    // One event then one render per KPI: the coalescing-off path (publish after every event).
    let evs = events(1000, 100);
    let policy = ThresholdPolicy::default();
    let now = evs[evs.len() - 1].time;
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("apply_and_render_each_1k_events_100_kpis", |b| {
        b.iter_batched_ref(
            PartitionState::default,
            |state| {
                for (i, ev) in evs.iter().enumerate() {
                    state.apply(i as u64 + 1, ev, &lateness);
                    for out in state.render(now, &policy) {
                        black_box(out);
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The same, in a partition that already holds 3,000 KPIs (9,000 topics)
    // of which the events touch 100: a render must not cost per topic held.
    let mut held = PartitionState::default();
    for (i, ev) in events(3000, 3000).iter().enumerate() {
        held.apply(i as u64 + 1, ev, &lateness);
    }
    held.render(now, &policy);
    let base = held.applied_seq;
    g.bench_function("apply_and_render_each_1k_events_100_of_3000_kpis", |b| {
        b.iter_batched_ref(
            || held.clone(),
            |state| {
                for (i, ev) in evs.iter().enumerate() {
                    state.apply(base + i as u64 + 1, ev, &lateness);
                    for out in state.render(now, &policy) {
                        black_box(out);
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
