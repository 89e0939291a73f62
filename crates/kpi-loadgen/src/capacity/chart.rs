//! The capacity plot: stored rate and lag p99 against offered rate, kpistream beside raw JetStream.

use crate::svg::{chart, Series, H, W};

use super::StepRow;

/// Stored rate and lag p99 against offered rate, for kpistream's headline
/// layout and for raw JetStream: two charts stacked in one SVG. The p99
/// axis is clipped at four times the limit, so a step that ran away does
/// not flatten the others.
pub(super) fn capacity_chart(rows: &[StepRow], layout: (u32, u32), max_p99_ms: f64) -> String {
    let clip = max_p99_ms * 4.0;
    let pick = |target: &str, y: &dyn Fn(&StepRow) -> f64| -> Series {
        let mut points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| {
                r.target == target && (target == "raw" || (r.partitions, r.aggregators) == layout)
            })
            .map(|r| (r.offered_per_sec, y(r)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series {
            name: target.to_string(),
            points,
        }
    };
    let top = rows.iter().map(|r| r.offered_per_sec).fold(0.0, f64::max);
    let mut rate = vec![
        pick("kpistream", &|r| r.stored_per_sec),
        pick("raw", &|r| r.stored_per_sec),
    ];
    rate.push(Series {
        name: "offered".into(),
        points: vec![(0.0, 0.0), (top, top)],
    });
    let mut lag = vec![
        pick("kpistream", &|r| r.lag_ms.p99.min(clip)),
        pick("raw", &|r| r.lag_ms.p99.min(clip)),
    ];
    lag.push(Series {
        name: format!("limit {max_p99_ms:.0} ms"),
        points: vec![(0.0, max_p99_ms), (top, max_p99_ms)],
    });
    let (p, a) = layout;
    let upper = chart(
        &format!("stored events/s ({p} partitions, {a} aggregator(s); raw JetStream)"),
        "offered events/s",
        "stored events/s",
        &rate,
        false,
    );
    let lower = chart(
        &format!("lag p99 (clipped at {clip:.0} ms)"),
        "offered events/s",
        "p99 ms: kpistream event -> render, raw event -> read back",
        &lag,
        false,
    );
    let lower = lower.replacen("<svg ", &format!("<svg y=\"{H}\" "), 1);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">\n{upper}{lower}</svg>\n",
        2.0 * H,
        2.0 * H
    )
}
