//! Hand-written SVG plots: the line chart every scenario draws with, the latency histogram and deliveries over time.

use std::fmt::Write;

use crate::report::RunReport;

pub(crate) const W: f64 = 720.0;
pub(crate) const H: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];

pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart; `log_x` plots x on a base-10 log scale (x must be > 0).
pub(crate) fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> String {
    let fx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for (x, y) in all {
        x0 = x0.min(fx(*x));
        x1 = x1.max(fx(*x));
        y1 = y1.max(*y);
    }
    if !x0.is_finite() || x1 <= x0 {
        (x0, x1) = (0.0, 1.0);
    }
    if log_x {
        (x0, x1) = (x0.floor(), x1.ceil());
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (fx(x) - x0) / (x1 - x0) * pw;
    let px_raw = |v: f64| LEFT + (v - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - y / y1 * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
"##,
        LEFT + pw / 2.0,
        escape(title)
    );
    // Y grid: five steps.
    for i in 0..=5 {
        let v = y1 * i as f64 / 5.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    // X ticks: decades on a log axis, five steps otherwise.
    let ticks: Vec<f64> = if log_x {
        (x0 as i32..=x1 as i32).map(f64::from).collect()
    } else {
        (0..=5).map(|i| x0 + (x1 - x0) * i as f64 / 5.0).collect()
    };
    for t in ticks {
        let x = px_raw(t);
        let label = if log_x {
            short(10f64.powf(t))
        } else {
            short(t)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        LEFT + pw / 2.0,
        H - 12.0,
        escape(x_label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(y_label)
    );
    for (i, series) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = series
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        // A few measured points (a rate ladder) are marked, so a straight
        // segment between two of them is not read as measured in between.
        if series.points.len() <= 20 {
            for (x, y) in &series.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(*x),
                    py(*y)
                );
            }
        }
        let ly = TOP + 10.0 + i as f64 * 18.0;
        let lx = LEFT + pw + 12.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 6.0,
            lx + 20.0,
            escape(&series.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Share of deliveries per latency bin (ten bins per decade), one line per run.
pub fn latency_chart(title: &str, reports: &[RunReport]) -> String {
    let series: Vec<Series> = reports
        .iter()
        .map(|r| {
            let total: u64 = r.latency_us.iter().map(|(_, c)| c).sum();
            let mut bins = std::collections::BTreeMap::<i64, u64>::new();
            for (us, c) in &r.latency_us {
                let ms = (*us as f64 / 1000.0).max(1e-3);
                *bins.entry((ms.log10() * 10.0).floor() as i64).or_default() += c;
            }
            let points = bins
                .into_iter()
                .map(|(b, c)| {
                    let center = 10f64.powf((b as f64 + 0.5) / 10.0);
                    (center, 100.0 * c as f64 / total.max(1) as f64)
                })
                .collect();
            Series {
                name: format!("{} (p99 {:.1} ms)", r.target, r.latency_ms.p99),
                points,
            }
        })
        .collect();
    chart(
        title,
        "latency, event time to client receipt (ms, log scale)",
        "% of deliveries",
        &series,
        true,
    )
}

/// Deliveries in each second of the measurement window, one line per run.
pub fn deliveries_chart(title: &str, reports: &[RunReport]) -> String {
    let series: Vec<Series> = reports
        .iter()
        .map(|r| Series {
            name: r.target.clone(),
            points: r
                .per_sec
                .iter()
                .enumerate()
                .map(|(i, c)| (i as f64 + 0.5, *c as f64))
                .collect(),
        })
        .collect();
    chart(
        title,
        "second of the measurement window",
        "deliveries per second",
        &series,
        false,
    )
}
