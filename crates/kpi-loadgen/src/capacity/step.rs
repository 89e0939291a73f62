//! One step of the ladder: publish at a fixed rate, then measure a window of it.
//!
//! Both loads (the pipeline and raw JetStream) expose the same counters and
//! lag recorder, so one function measures either the same way: counters,
//! lag and CPU are read at the start and at the end of the same window, after
//! a warm-up at the step's rate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kpi_core::KpiCode;
use tokio::task::JoinHandle;

use crate::procstat;
use crate::report::{new_hist, Percentiles};

/// What a load's publisher and reader count, shared with their tasks.
#[derive(Default)]
pub struct Counters {
    /// Events handed to the system under test.
    pub sent: AtomicU64,
    /// Events it acknowledged as stored.
    pub stored: AtomicU64,
    /// Events it refused (invalid, unavailable, full).
    pub refused: AtomicU64,
    /// Events whose call or acknowledgement failed or timed out.
    pub failed: AtomicU64,
    /// Messages the reader saw: updates (pipeline) or events read back (raw).
    pub read: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    sent: u64,
    stored: u64,
    refused: u64,
    failed: u64,
    read: u64,
}

impl Counters {
    fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: get(&self.sent),
            stored: get(&self.stored),
            refused: get(&self.refused),
            failed: get(&self.failed),
            read: get(&self.read),
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Lag samples in microseconds, kept only while a window is open.
#[derive(Default)]
pub struct Lag {
    window: Mutex<Option<LagWindow>>,
    /// The latest sample, in or out of a window, and when it came (µs since
    /// the epoch): what [`drain`] watches.
    latest_us: AtomicU64,
    latest_at: AtomicU64,
}

struct LagWindow {
    opened: Instant,
    hist: Histogram<u64>,
    /// The worst lag seen in each second of the window: shows whether a
    /// high p99 is a steady climb (falling behind) or periodic stalls.
    max_by_second: Vec<u64>,
}

impl Lag {
    /// Records `event_micros` (an event's time, µs since the epoch) against now.
    pub fn record_since(&self, event_micros: i64) {
        let lag = u64::try_from(crate::clients::now_micros() - event_micros)
            .unwrap_or(0)
            .max(1);
        self.latest_us.store(lag, Ordering::Relaxed);
        self.latest_at.store(
            u64::try_from(crate::clients::now_micros()).unwrap_or(0),
            Ordering::Relaxed,
        );
        if let Ok(mut w) = self.window.lock() {
            if let Some(w) = w.as_mut() {
                w.hist.saturating_record(lag);
                let sec = w.opened.elapsed().as_secs() as usize;
                if w.max_by_second.len() <= sec {
                    w.max_by_second.resize(sec + 1, 0);
                }
                w.max_by_second[sec] = w.max_by_second[sec].max(lag);
            }
        }
    }

    fn open(&self) {
        if let Ok(mut w) = self.window.lock() {
            *w = Some(LagWindow {
                opened: Instant::now(),
                hist: new_hist(),
                max_by_second: Vec::new(),
            });
        }
    }

    fn close(&self) -> (Histogram<u64>, Vec<u64>) {
        self.window
            .lock()
            .ok()
            .and_then(|mut w| w.take())
            .map_or_else(|| (new_hist(), Vec::new()), |w| (w.hist, w.max_by_second))
    }
}

/// Spreads `rate` events per second evenly over time in small ticks.
pub struct Pacer {
    rate: f64,
    started: Instant,
    emitted: u64,
    tick: tokio::time::Interval,
}

impl Pacer {
    /// Events are handed out every 5 ms: often enough that batching adds
    /// little lag, rarely enough that a tick is not mostly timer overhead.
    pub fn new(rate: f64) -> Pacer {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Pacer {
            rate,
            started: Instant::now(),
            emitted: 0,
            tick,
        }
    }

    /// Waits for the next tick and says how many events are due by now.
    /// A publisher that fell behind gets its whole backlog, so it catches
    /// up as fast as the system lets it, and a shortfall shows as a lower
    /// stored rate rather than as a silently lower offered one.
    pub async fn due(&mut self) -> u64 {
        self.tick.tick().await;
        let due = (self.started.elapsed().as_secs_f64() * self.rate) as u64;
        let n = due.saturating_sub(self.emitted);
        self.emitted = due;
        n
    }
}

/// The KPI codes of the load, `<prefix>0` ... `<prefix><n-1>`.
pub fn codes(prefix: &str, n: usize) -> anyhow::Result<Arc<Vec<KpiCode>>> {
    let codes = (0..n)
        .map(|i| KpiCode::parse(&format!("{prefix}{i}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("bad KPI prefix {prefix:?}: {e}"))?;
    Ok(Arc::new(codes))
}

/// What a load gives the step runner.
pub trait Load {
    /// Publishes `rate` events per second until `until`.
    fn spawn_publisher(&mut self, rate: f64, until: Instant) -> JoinHandle<()>;
    fn counters(&self) -> &Counters;
    fn lag(&self) -> &Lag;
    /// Every process whose CPU the report shows, with its label.
    fn processes(&self) -> Vec<(u32, String)>;
    /// The labels whose CPU is the cost of the system under test.
    fn counted(&self) -> &'static [&'static str];
}

/// One measured window.
pub struct Measured {
    pub offered: f64,
    pub window_secs: f64,
    pub sent: u64,
    pub stored: u64,
    pub refused: u64,
    pub failed: u64,
    pub read: u64,
    pub lag: Percentiles,
    /// The worst lag of each second of the window, ms.
    pub lag_max_ms_by_second: Vec<f64>,
    pub cpu_secs_by_process: BTreeMap<String, f64>,
    pub counted_cpu_secs: f64,
    pub loadgen_cpu_secs: f64,
    /// CPU the rest of the machine used in the window (other builds and
    /// benchmarks on this shared box): what the step competed with.
    pub other_cpu_secs: f64,
    /// The machine's 1-minute load average at the end of the window.
    pub loadavg: f64,
}

/// Publishes at `rate` for `warmup` and then measures `secs` of it.
pub async fn run(load: &mut dyn Load, rate: f64, warmup: Duration, secs: Duration) -> Measured {
    let until = Instant::now() + warmup + secs;
    let publisher = load.spawn_publisher(rate, until);
    tokio::time::sleep(warmup).await;
    let mut procs = load.processes();
    procs.push((std::process::id(), "kpi-loadgen".to_string()));
    let cpu0 = procstat::cpu_each(&procs);
    let busy0 = procstat::machine_busy_secs().unwrap_or(f64::NAN);
    let c0 = load.counters().snapshot();
    load.lag().open();
    let started = Instant::now();
    tokio::time::sleep(secs).await;
    let c1 = load.counters().snapshot();
    let (lag, max_by_second) = load.lag().close();
    let cpu1 = procstat::cpu_each(&procs);
    let busy1 = procstat::machine_busy_secs().unwrap_or(f64::NAN);
    let window_secs = started.elapsed().as_secs_f64();
    // The publisher stops at `until`; what it still awaits is outside the window.
    let _ = tokio::time::timeout(Duration::from_secs(30), publisher).await;
    let by_name = procstat::cpu_by_name(&cpu0, &cpu1);
    let counted = load.counted();
    let ours: f64 = by_name.values().sum();
    Measured {
        offered: rate,
        window_secs,
        sent: c1.sent - c0.sent,
        stored: c1.stored - c0.stored,
        refused: c1.refused - c0.refused,
        failed: c1.failed - c0.failed,
        read: c1.read - c0.read,
        lag: Percentiles::of(&lag),
        lag_max_ms_by_second: max_by_second.iter().map(|us| *us as f64 / 1000.0).collect(),
        counted_cpu_secs: by_name
            .iter()
            .filter(|(n, _)| counted.contains(&n.as_str()))
            .map(|(_, s)| s)
            .sum(),
        loadgen_cpu_secs: by_name.get("kpi-loadgen").copied().unwrap_or(f64::NAN),
        other_cpu_secs: (busy1 - busy0 - ours).max(0.0),
        cpu_secs_by_process: by_name,
        loadavg: loadavg(),
    }
}

/// Waits until what a failed step left queued is worked off, so the next
/// step does not inherit it: a trickle of fresh events (200/s) goes in behind
/// the backlog until one comes out with a lag under `max_lag`. Gives up after
/// `limit` and says so; the next step's figures then carry the backlog.
pub async fn drain(load: &mut dyn Load, max_lag: Duration, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let probe_start = crate::clients::now_micros();
        let probe = load.spawn_publisher(200.0, Instant::now() + Duration::from_secs(1));
        let _ = tokio::time::timeout(Duration::from_secs(30), probe).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lag = load.lag();
        let fresh =
            i64::try_from(lag.latest_at.load(Ordering::Relaxed)).is_ok_and(|at| at > probe_start);
        let latest = Duration::from_micros(lag.latest_us.load(Ordering::Relaxed));
        if fresh && latest < max_lag {
            return true;
        }
    }
    false
}

/// The 1-minute load average, NaN where /proc/loadavg cannot be read.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
