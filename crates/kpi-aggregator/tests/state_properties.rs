//! Property: a partition that checkpoints and restarts anywhere in the log ends with exactly the stats of one that never stopped.

use chrono::{DateTime, TimeZone, Utc};
use kpi_aggregator::state::PartitionState;
use kpi_aggregator::Lateness;
use kpi_core::{EventRecord, KpiCode, Period, Topic};
use proptest::prelude::*;

fn at(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + s, 0)
        .single()
        .expect("time")
}

/// (kpi index, value, seconds since the previous receive, event delay, ingest clock skew).
type Raw = (u8, i32, i64, i64, i64);

fn log() -> impl Strategy<Value = Vec<Raw>> {
    prop::collection::vec(
        (0u8..3, -1000i32..1000, 0i64..40, 0i64..400, 0i64..60),
        1..200,
    )
}

/// A realistic log: receive times follow the log order (several ingest
/// instances whose clocks disagree by up to a minute), and events arrive
/// up to ~7 minutes after they happened, so some are late for `minute`.
fn records(raw: &[Raw]) -> Vec<EventRecord> {
    let mut clock = 0;
    raw.iter()
        .enumerate()
        .map(|(i, (k, v, step, delay, skew))| {
            clock += step;
            let received = clock - skew;
            EventRecord {
                event_id: format!("e{i}"),
                kpi: KpiCode::parse(&format!("kpi_{k}")).expect("code"),
                value: f64::from(*v),
                time: at(received - delay),
                received_at: at(received),
                labels: Default::default(),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn checkpoint_and_replay_equals_uninterrupted(events in log(), cuts in prop::collection::vec(0usize..200, 0..5)) {
        let lateness = Lateness::default();
        let records = records(&events);

        let mut straight = PartitionState::default();
        for (i, r) in records.iter().enumerate() {
            straight.apply(i as u64 + 1, r, &lateness);
        }

        // The restarted run: at each cut, checkpoint, "crash" (re-deliver a few
        // events already applied, as a consumer would after a restart), reload.
        let mut state = PartitionState::default();
        let mut i = 0usize;
        let mut cuts = cuts;
        cuts.sort();
        while i < records.len() {
            state.apply(i as u64 + 1, &records[i], &lateness);
            i += 1;
            if cuts.first() == Some(&i) {
                cuts.remove(0);
                state.prune(&lateness);
                state = PartitionState::from_json(&state.to_json()).expect("checkpoint decodes");
                let replay_from = i.saturating_sub(3);
                for (j, r) in records.iter().enumerate().take(i).skip(replay_from) {
                    state.apply(j as u64 + 1, r, &lateness);
                }
            }
        }
        prop_assert_eq!(state.applied_seq, straight.applied_seq);
        for k in 0..3u8 {
            let code = KpiCode::parse(&format!("kpi_{k}")).expect("code");
            for p in Period::ALL {
                let topic = Topic::new(code.clone(), p);
                for t in (-600..9000).step_by(60) {
                    let b = p.bucket_start_secs(at(t));
                    // Pruned buckets are gone from memory (they live on in
                    // history); any bucket still held must be exact, which
                    // also catches a bucket pruned too early and recreated
                    // by a later event.
                    if let Some(got) = state.stats(&topic, b) {
                        prop_assert_eq!(Some(got), straight.stats(&topic, b), "{} {}", topic, b);
                    }
                }
            }
        }
    }
}
