//! The store policy as clients would notice it: every render live, few stored, and the stored latest never more than an interval behind.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use kpi_aggregator::state::{Outgoing, PartitionState};
use kpi_aggregator::store_policy::{StorePolicy, STORE_EVERY};
use kpi_aggregator::{Lateness, ThresholdPolicy};
use kpi_core::{EventRecord, KpiCode, Period, Topic, UpdateMessage};
use proptest::prelude::*;

/// A time `ms` after the start of a minute (1.8e12 ms is a whole minute).
fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
        .single()
        .expect("time")
}

fn event(seq: u64, kpi: &str, value: f64, now: DateTime<Utc>) -> EventRecord {
    EventRecord {
        event_id: format!("e{seq}"),
        kpi: KpiCode::parse(kpi).expect("code"),
        value,
        time: now,
        received_at: now,
        labels: Default::default(),
    }
}

fn state(store: StorePolicy) -> PartitionState {
    let mut st = PartitionState::default();
    st.set_store_policy(store);
    st
}

fn minute(kpi: &str) -> Topic {
    Topic::new(KpiCode::parse(kpi).expect("code"), Period::Minute)
}

/// What a live subscriber and a reader of the stored updates of each topic
/// saw: every message in order, and the newest stored one with when.
#[derive(Default)]
struct Seen {
    live: HashMap<Topic, Vec<UpdateMessage>>,
    stored: HashMap<Topic, (UpdateMessage, i64)>,
    stores: HashMap<Topic, usize>,
}

impl Seen {
    /// Takes one render's output at `now_ms`; checks that each topic's
    /// seqs go up by one, and that a repeated seq is a store of the very
    /// same message.
    fn take(&mut self, out: Vec<Outgoing>, now_ms: i64) -> Result<(), String> {
        for o in out {
            let (topic, m, stored) = match o {
                Outgoing::Live(t, m) => (t, m, false),
                Outgoing::Update(t, m) => (t, m, true),
                Outgoing::History(..) => continue,
            };
            let live = self.live.entry(topic.clone()).or_default();
            if let Some(prev) = live.last() {
                let repeat = m.seq == prev.seq && stored && m == *prev;
                if m.seq != prev.seq + 1 && !repeat {
                    return Err(format!(
                        "{topic}: seq {} after {}: {m:?} after {prev:?}",
                        m.seq, prev.seq
                    ));
                }
            }
            if stored {
                self.stored.insert(topic.clone(), (m.clone(), now_ms));
                *self.stores.entry(topic).or_default() += 1;
            }
            live.push(m);
        }
        Ok(())
    }

    fn newest(&self, topic: &Topic) -> Option<&UpdateMessage> {
        self.live.get(topic).and_then(|l| l.last())
    }
}

/// Ten events a second and a render every 100 ms, for 5 s from 1 s into a
/// minute.
fn hot_for_five_seconds(st: &mut PartitionState) -> Seen {
    let l = Lateness::default();
    let mut seen = Seen::default();
    for tick in 0..50u64 {
        let now = at(1_000 + tick as i64 * 100);
        st.apply(tick + 1, &event(tick + 1, "hot", tick as f64, now), &l);
        seen.take(
            st.render(now, &ThresholdPolicy::default()),
            now.timestamp_millis(),
        )
        .expect("seqs go up by one");
    }
    seen
}

#[test]
fn a_hot_topic_is_stored_once_per_interval_and_its_final_value_within_one() {
    let mut st = state(StorePolicy::new(Duration::from_millis(1000)));
    let topic = minute("hot");
    let mut seen = hot_for_five_seconds(&mut st);
    assert_eq!(seen.live[&topic].len(), 50, "every render goes out live");
    // The first render at 1.0 s, then 2.0, 3.0, 4.0 and 5.0 s.
    assert_eq!(seen.stores[&topic], 5, "one store per second");
    let (last_stored, stored_at) = seen.stored[&topic].clone();
    assert_eq!(stored_at, at(5_000).timestamp_millis());
    assert!(
        last_stored.seq < 50,
        "the newest (seq 50) is not stored yet"
    );

    // Quiet from 5.9 s: nothing until the interval since the last store...
    let out = st.render(at(5_950), &ThresholdPolicy::default());
    assert!(out.is_empty(), "{out:?}");
    // ...then the newest render again, stored: same seq, same contents.
    let out = st.render(at(6_000), &ThresholdPolicy::default());
    assert!(out
        .iter()
        .any(|o| matches!(o, Outgoing::Update(t, _) if *t == topic)));
    seen.take(out, at(6_000).timestamp_millis())
        .expect("a repeat of the same message");
    let newest = seen.newest(&topic).expect("newest");
    assert_eq!((newest.seq, newest.stats.count), (50, 50));
    assert_eq!(&seen.stored[&topic].0, newest);
    // Stored: a quiet topic costs nothing more.
    assert!(st
        .render(at(59_999), &ThresholdPolicy::default())
        .is_empty());
}

#[test]
fn a_store_interval_of_zero_stores_every_render() {
    let mut st = state(StorePolicy::new(Duration::ZERO));
    let seen = hot_for_five_seconds(&mut st);
    let topic = minute("hot");
    assert_eq!(seen.live[&topic].len(), 50);
    assert_eq!(seen.stores[&topic], 50);
}

#[test]
fn a_restart_continues_above_what_may_have_gone_out_live() {
    let mut st = state(StorePolicy::new(Duration::from_millis(1000)));
    let topic = minute("hot");
    let seen = hot_for_five_seconds(&mut st);
    let stored = seen.stored[&topic].0.seq;
    // The process dies; its successor loads the checkpoint and finds the
    // last stored seq on the bus.
    let mut st = PartitionState::from_json(&st.to_json()).expect("checkpoint");
    st.set_store_policy(StorePolicy::new(Duration::from_millis(1000)));
    st.resume_seq(&topic, Some(stored));
    let l = Lateness::default();
    st.apply(51, &event(51, "hot", 1.0, at(5_920)), &l);
    let out = st.render(at(5_920), &ThresholdPolicy::default());
    let next = out
        .iter()
        .find_map(|o| match o {
            Outgoing::Update(t, m) if *t == topic => Some(m.seq),
            _ => None,
        })
        .expect("the first render after a restart is stored");
    assert_eq!(next, stored + STORE_EVERY + 1);
    assert!(next > 50, "a seq already published live came again");
}

/// A checkpoint written before the store policy: it loads, and each topic
/// is stored again at the first render (its old stored copies are on a
/// subject no longer read), under the seq raised after the restart.
#[test]
fn a_checkpoint_from_before_the_store_policy_stores_every_topic_again() {
    let mut st = state(StorePolicy::every_render());
    let l = Lateness::default();
    st.apply(1, &event(1, "old", 3.0, at(1_000)), &l);
    st.render(at(1_000), &ThresholdPolicy::default());
    let mut raw: serde_json::Value = serde_json::from_slice(&st.to_json()).expect("json");
    for ts in raw["topics"].as_object_mut().expect("topics").values_mut() {
        let ts = ts.as_object_mut().expect("topic");
        assert!(ts.remove("store").is_some(), "the field this test removes");
    }
    let mut old = PartitionState::from_json(&serde_json::to_vec(&raw).expect("json"))
        .expect("an old checkpoint loads");
    old.set_store_policy(StorePolicy::new(Duration::from_millis(1000)));
    let topic = minute("old");
    old.resume_seq(&topic, None);
    let out = old.render(at(1_100), &ThresholdPolicy::default());
    let stored: Vec<&UpdateMessage> = out
        .iter()
        .filter_map(|o| match o {
            Outgoing::Update(_, m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 3, "one per period: {out:?}");
    let m = stored
        .iter()
        .find(|m| m.period == Period::Minute)
        .expect("minute");
    assert_eq!((m.seq, m.stats.count), (1 + STORE_EVERY, 1));
    assert!(old
        .render(at(1_200), &ThresholdPolicy::default())
        .is_empty());
}

mod properties {
    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// An event for KPI `kpi` at the clock.
        Event { kpi: u8, value: i8 },
        /// The clock moves on by this many ms, then a render.
        Render { after: u16 },
        /// Checkpoint and reload.
        Reload,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..3, any::<i8>()).prop_map(|(kpi, value)| Step::Event { kpi, value }),
            4 => (0u16..700).prop_map(|after| Step::Render { after }),
            1 => Just(Step::Reload),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the events and render times: every seq goes out live
        /// once (a repeat only as the same message, stored); the live seq is
        /// never `STORE_EVERY` or more past the stored one; a topic's stored
        /// latest is its newest live one by one interval after its last
        /// store; a topic stores at most once per interval apart from bucket
        /// boundaries and `STORE_EVERY`; and an interval of 0 stores all.
        #[test]
        fn stored_latest_trails_live_by_at_most_one_interval(
            steps in prop::collection::vec(step(), 1..150),
            interval_ms in prop_oneof![Just(0i64), 200i64..3000],
        ) {
            let policy = StorePolicy::new(Duration::from_millis(interval_ms as u64));
            let thresholds = ThresholdPolicy::default();
            let lateness = Lateness::default();
            let mut st = state(policy);
            let mut seen = Seen::default();
            let mut clock = 0i64;
            let mut log = 0u64;
            for step in steps {
                match step {
                    Step::Event { kpi, value } => {
                        log += 1;
                        let e = event(log, &format!("k{kpi}"), f64::from(value), at(clock));
                        st.apply(log, &e, &lateness);
                    }
                    Step::Render { after } => {
                        clock += i64::from(after);
                        let now = at(clock);
                        let out = st.render(now, &thresholds);
                        for o in &out {
                            if let Outgoing::Update(t, m) = o {
                                // A store that is not a repeat, a boundary or the first.
                                let prev = seen.live.get(t).and_then(|l| l.last());
                                let last = seen.stored.get(t);
                                if let (Some(prev), Some((last, last_at))) = (prev, last) {
                                    let routine = m.seq == prev.seq + 1
                                        && m.bucket_start == prev.bucket_start
                                        && !m.correction
                                        && !prev.correction;
                                    if routine {
                                        prop_assert!(
                                            clock - last_at >= interval_ms
                                                || m.seq - last.seq >= STORE_EVERY,
                                            "{} stored again after {} ms, {} seqs",
                                            t, clock - last_at, m.seq - last.seq
                                        );
                                    }
                                }
                            }
                            if interval_ms == 0 {
                                prop_assert!(!matches!(o, Outgoing::Live(..)), "{:?}", o);
                            }
                        }
                        seen.take(out, clock).map_err(TestCaseError::fail)?;
                        for (topic, live) in &seen.live {
                            let newest = live.last().expect("non-empty");
                            let (stored, stored_at) = &seen.stored[topic];
                            prop_assert!(newest.seq - stored.seq < STORE_EVERY);
                            if stored != newest {
                                prop_assert!(
                                    clock < stored_at + interval_ms,
                                    "{} not stored {} ms after its last store",
                                    topic, clock - stored_at
                                );
                            }
                        }
                    }
                    Step::Reload => {
                        st = PartitionState::from_json(&st.to_json()).expect("decode");
                        st.set_store_policy(policy);
                    }
                }
            }
        }
    }
}
