//! Property tests: aggregate merging is order-independent and bucket math matches a naive reference.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use kpi_core::{Period, Stats};
use proptest::prelude::*;

fn time(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).single().expect("in range")
}

/// The reference: truncate calendar fields, the way a person would.
fn naive_bucket(p: Period, t: DateTime<Utc>) -> DateTime<Utc> {
    let (h, m) = match p {
        Period::Minute => (t.hour(), t.minute()),
        Period::Hour => (t.hour(), 0),
        Period::Day => (0, 0),
    };
    Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), h, m, 0)
        .single()
        .expect("valid")
}

// Values are multiples of 1/8 below 2^20, so every partial sum is exact in an
// f64 and "same result" can be asserted with ==, testing the merge logic
// rather than floating-point rounding.
fn events() -> impl Strategy<Value = Vec<(f64, i64)>> {
    prop::collection::vec(
        (
            (-(1i64 << 20)..(1i64 << 20)).prop_map(|v| v as f64 / 8.0),
            0i64..1_000,
        ),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bucket_math_matches_calendar_truncation(
        secs in -5_000_000_000i64..10_000_000_000,
        nanos in 0u32..1_000_000_000,
    ) {
        let t = time(secs, nanos);
        for p in Period::ALL {
            let b = p.bucket_start(t);
            prop_assert_eq!(b, naive_bucket(p, t));
            prop_assert!(b <= t);
            prop_assert!(t.timestamp() < p.bucket_end_secs(b.timestamp()));
        }
    }

    #[test]
    fn day_boundaries_belong_to_the_new_day(day in -10_000i64..40_000) {
        let midnight = time(day * 86_400, 0);
        prop_assert_eq!(Period::Day.bucket_start(midnight), midnight);
        let before = time(day * 86_400 - 1, 999_999_999);
        prop_assert_eq!(Period::Day.bucket_start(before), time((day - 1) * 86_400, 0));
    }

    #[test]
    fn merging_in_any_order_gives_the_same_stats(evs in events(), seed in any::<u64>(), split in 0usize..60) {
        let mut forward = Stats::default();
        for (v, t) in &evs {
            forward.apply(*v, time(*t, 0));
        }
        // A deterministic shuffle from the seed.
        let mut shuffled = evs.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        // Two partial aggregates merged, as after a partition or a checkpoint.
        let cut = split.min(shuffled.len());
        let (a, b) = shuffled.split_at(cut);
        let mut left = Stats::default();
        for (v, t) in a { left.apply(*v, time(*t, 0)); }
        let mut right = Stats::default();
        for (v, t) in b { right.apply(*v, time(*t, 0)); }
        let mut merged = right;
        merged.merge(&left);
        prop_assert_eq!(merged, forward);

        let latest = evs.iter().map(|(_, t)| *t).max().expect("non-empty");
        let want_last = evs.iter().filter(|(_, t)| *t == latest).map(|(v, _)| *v).fold(f64::MIN, f64::max);
        prop_assert_eq!(forward.last, want_last);
        prop_assert_eq!(forward.count as usize, evs.len());
    }
}
