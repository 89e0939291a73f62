//! Running a measurement: workers connect, idle memory is read, publishing warms up, the window is measured.
//!
//! Server CPU and the client counters cover the same window: CPU is read just
//! before the workers are told `start` and just after `stop`. A run ends by
//! itself: workers and baseline servers have deadlines, and the coordinator
//! gives up on a worker that does not answer in time.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::clients::{Connected, Finished};
use crate::procstat;
use crate::publish::{self, PubStats};
use crate::report::{add_pairs, new_hist, Percentiles, RunReport};
use crate::svg;
use crate::targets::{self, Target};
use crate::{CompareArgs, LoadArgs};

/// Longest a whole run of one target may take, in seconds.
pub fn run_bound_secs(load: &LoadArgs) -> u64 {
    load.connect_timeout + load.settle + load.warmup + load.duration + 60
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("worker did not answer in time")??
            .context("worker exited without answering")
    }

    async fn say(&mut self, what: &str) {
        let _ = self.stdin.write_all(format!("{what}\n").as_bytes()).await;
        let _ = self.stdin.flush().await;
    }
}

fn spawn_workers(load: &LoadArgs, target: &Target) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe()?;
    let per = load.conns_per_worker.clamp(1, 19_000);
    let kind = match target.kind {
        crate::clients::Kind::Kpistream => "kpistream",
        crate::clients::Kind::Plain => "plain",
        crate::clients::Kind::Nats => "nats",
    };
    let mut workers = Vec::new();
    let mut first = 0;
    while first < load.connections {
        let count = per.min(load.connections - first);
        let mut cmd = Command::new(&exe);
        cmd.arg("clients").args(["--kind", kind]);
        for u in &target.urls {
            cmd.args(["--url", u]);
        }
        cmd.args(["--first", &first.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--kpis", &load.kpis.to_string()])
            .args(["--kpi-prefix", &load.kpi_prefix])
            .args(["--period", &load.period])
            .args(["--cadence", &load.cadence])
            .args(["--source-first", &load.source_first.to_string()])
            .args(["--conns-per-source", &load.conns_per_source.to_string()])
            .args([
                "--connect-concurrency",
                &load.connect_concurrency.to_string(),
            ])
            .args(["--connect-timeout", &load.connect_timeout.to_string()])
            .args(["--connect-retries", &load.connect_retries.to_string()])
            .args(["--max-secs", &run_bound_secs(load).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting a client worker")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
        first += count;
    }
    Ok(workers)
}

/// CPU seconds of `pids` in one [`procstat::cpu_each`] reading; NaN when
/// one of them could not be read (a process that died is not a measurement).
fn cpu_of(each: &[(u32, String, f64)], pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| {
            each.iter()
                .find(|(p, _, _)| p == pid)
                .map_or(f64::NAN, |(_, _, c)| *c)
        })
        .sum()
}

/// Measures one target under `load`.
pub async fn measure(load: &LoadArgs, target: &Target) -> anyhow::Result<RunReport> {
    anyhow::ensure!(
        load.kpis > 0 && load.connections > 0,
        "need connections and KPIs"
    );
    let rss_before = procstat::total_rss(&target.server_pids).unwrap_or(0);
    eprintln!(
        "kpi-loadgen: {}: opening {} connections over {} KPIs",
        target.name, load.connections, load.kpis
    );
    let connect_started = Instant::now();
    let mut workers = spawn_workers(load, target)?;
    let mut connect = new_hist();
    let (mut open, mut failed, mut retries, mut first_error) = (0, 0, 0, None);
    for w in &mut workers {
        let line = w
            .line(Duration::from_secs(load.connect_timeout + 30))
            .await?;
        let c: Connected = serde_json::from_str(&line).context("worker's connected line")?;
        open += c.connected;
        failed += c.failed;
        retries += c.retries;
        add_pairs(&mut connect, &c.connect_us);
        if first_error.is_none() {
            first_error = c.first_error;
        }
    }
    let connect_wall_secs = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "kpi-loadgen: {}: {open} open, {failed} failed in {connect_wall_secs:.1} s",
        target.name
    );
    tokio::time::sleep(Duration::from_secs(load.settle)).await;
    let rss_idle = procstat::total_rss(&target.server_pids).unwrap_or(0);

    let stats = Arc::new(PubStats::default());
    let publishing = (load.rate > 0.0).then(|| {
        tokio::spawn(publish::run(
            target.publisher.clone(),
            load.clone(),
            stats.clone(),
        ))
    });
    if publishing.is_some() {
        tokio::time::sleep(Duration::from_secs(load.warmup)).await;
    }
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let mut me = vec![std::process::id()];
    me.extend(&worker_pids);
    // Labelled by process name; the loadgen's own processes apart from a
    // target that is also a `kpi-loadgen` process (the plain server).
    let everyone: Vec<(u32, String)> = target
        .all_pids
        .iter()
        .map(|&p| {
            let name = procstat::name(p).unwrap_or_else(|_| format!("pid {p}"));
            (p, name.replace("kpi-loadgen", "serve-plain"))
        })
        .chain(me.iter().map(|&p| (p, "kpi-loadgen".to_string())))
        .collect();
    let each0 = procstat::cpu_each(&everyone);
    let (server0, total0, lg0) = (
        cpu_of(&each0, &target.server_pids),
        cpu_of(&each0, &target.all_pids),
        cpu_of(&each0, &me),
    );
    let sent0 = stats.sent.load(Ordering::Relaxed);
    for w in &mut workers {
        w.say("start").await;
    }
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(load.duration)).await;
    for w in &mut workers {
        w.say("stop").await;
    }
    let window_secs = window_started.elapsed().as_secs_f64();
    let each1 = procstat::cpu_each(&everyone);
    let (server1, total1, lg1) = (
        cpu_of(&each1, &target.server_pids),
        cpu_of(&each1, &target.all_pids),
        cpu_of(&each1, &me),
    );
    let cpu_secs_by_process = procstat::cpu_by_name(&each0, &each1);
    let sent_in_window = stats.sent.load(Ordering::Relaxed) - sent0;
    let rss_end = procstat::total_rss(&target.server_pids).unwrap_or(0);
    stats.stop.store(true, Ordering::Relaxed);
    if let Some(p) = publishing {
        match tokio::time::timeout(Duration::from_secs(10), p).await {
            Ok(Ok(Err(e))) => eprintln!("kpi-loadgen: publisher: {e:#}"),
            Ok(Err(e)) => eprintln!("kpi-loadgen: publisher panicked: {e}"),
            _ => {}
        }
    }

    let mut latency = new_hist();
    let mut fanout = new_hist();
    let (mut deliveries, mut dropped, mut unparsed) = (0, 0, 0);
    let mut per_sec: Vec<u64> = Vec::new();
    for w in &mut workers {
        let line = w.line(Duration::from_secs(30)).await?;
        let f: Finished = serde_json::from_str(&line).context("worker's finished line")?;
        deliveries += f.deliveries;
        dropped += f.dropped;
        unparsed += f.unparsed;
        add_pairs(&mut latency, &f.latency_us);
        add_pairs(&mut fanout, &f.fanout_us);
        if per_sec.len() < f.per_sec.len() {
            per_sec.resize(f.per_sec.len(), 0);
        }
        for (i, c) in f.per_sec.iter().enumerate() {
            per_sec[i] += c;
        }
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
    }
    let server_cpu = server1 - server0;
    let total_cpu = total1 - total0;
    let subs_per_kpi = open as f64 / load.kpis as f64;
    let expected = sent_in_window as f64 * subs_per_kpi;
    Ok(RunReport {
        target: target.name.to_string(),
        setup: format!("{}; cadence={}", target.setup, load.cadence),
        connections_wanted: load.connections,
        connections_open: open,
        connect_failures: failed,
        connect_retries: retries,
        first_error,
        connect_ms: Percentiles::of(&connect),
        connect_wall_secs,
        kpis: load.kpis,
        rate_per_kpi: load.rate,
        events_published: sent_in_window,
        publish_errors: stats.errors.load(Ordering::Relaxed),
        window_secs,
        deliveries,
        deliveries_per_sec: deliveries as f64 / window_secs,
        delivery_ratio: if expected > 0.0 {
            deliveries as f64 / expected
        } else {
            0.0
        },
        dropped_connections: dropped,
        unparsed,
        latency_ms: Percentiles::of(&latency),
        latency_us: crate::report::hist_to_pairs(&latency),
        fanout_ms: Percentiles::of(&fanout),
        per_sec,
        server_cpu_secs: server_cpu,
        total_cpu_secs: total_cpu,
        loadgen_cpu_secs: lg1 - lg0,
        cpu_secs_by_process,
        deliveries_per_server_cpu_sec: deliveries as f64 / server_cpu.max(0.01),
        deliveries_per_total_cpu_sec: deliveries as f64 / total_cpu.max(0.01),
        server_rss_before: rss_before,
        server_rss_idle: rss_idle,
        server_rss_end: rss_end,
        rss_per_idle_connection: if open > 0 {
            (rss_idle as f64 - rss_before as f64) / open as f64
        } else {
            0.0
        },
    })
}

/// Measures one target, prints the JSON, writes plots when asked.
pub async fn run_one(load: &LoadArgs, target: Target) -> anyhow::Result<()> {
    let result = measure(load, &target).await;
    if result.is_err() {
        if let Some(dir) = target.log_dir() {
            print_logs(dir);
        }
    }
    target.shutdown().await;
    let report = result?;
    eprintln!("{}", summary_line(&report));
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(out) = &load.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join(format!("{}.json", report.target)), &json)?;
        write_plots(out, &report.target, std::slice::from_ref(&report))?;
    }
    Ok(())
}

fn print_logs(dir: &std::path::Path) {
    eprintln!("{}", crate::processes::log_tails(dir));
}

pub fn summary_line(r: &RunReport) -> String {
    let by_process: Vec<String> = r
        .cpu_secs_by_process
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.2}"))
        .collect();
    let line = summary_figures(r);
    format!(
        "{line}\n{:<9} CPU-s by process: {}",
        "",
        by_process.join(", ")
    )
}

fn summary_figures(r: &RunReport) -> String {
    format!(
        "{:<9} conns {}/{} deliveries/s {:.0} (ratio {:.3}) p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms (from render: p50 {:.2} p99 {:.2}) | server CPU {:.2} s -> {:.0} deliveries/CPU-s | total CPU {:.2} s | RSS idle/conn {:.0} B",
        r.target,
        r.connections_open,
        r.connections_wanted,
        r.deliveries_per_sec,
        r.delivery_ratio,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max,
        r.fanout_ms.p50,
        r.fanout_ms.p99,
        r.server_cpu_secs,
        r.deliveries_per_server_cpu_sec,
        r.total_cpu_secs,
        r.rss_per_idle_connection,
    )
}

fn write_plots(out: &std::path::Path, name: &str, reports: &[RunReport]) -> anyhow::Result<()> {
    std::fs::write(
        out.join(format!("{name}-latency.svg")),
        svg::latency_chart(&format!("{name}: end-to-end latency"), reports),
    )?;
    std::fs::write(
        out.join(format!("{name}-deliveries.svg")),
        svg::deliveries_chart(&format!("{name}: deliveries per second"), reports),
    )?;
    Ok(())
}

/// The three targets under one load, one after the other, with ratios.
pub async fn compare(a: &CompareArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    // Each target gets its own client source addresses: the previous target's
    // ports sit in TIME_WAIT for a minute and would refuse new binds.
    let sources_each = a.load.connections.div_ceil(a.load.conns_per_source.max(1));
    for (i, which) in ["kpistream", "plain", "nats-ws"].into_iter().enumerate() {
        let mut load = a.load.clone();
        let first = usize::from(a.load.source_first) + i * sources_each;
        load.source_first = u8::try_from(first).context("too many source addresses")?;
        let load = &load;
        let target = match which {
            "kpistream" => targets::kpistream(load, &a.stack).await?,
            "plain" => targets::plain(run_bound_secs(load)).await?,
            _ => targets::nats_ws(load).await?,
        };
        let result = measure(load, &target).await;
        if result.is_err() {
            if let Some(dir) = target.log_dir() {
                print_logs(dir);
            }
        }
        target.shutdown().await;
        let r = result.with_context(|| format!("measuring {which}"))?;
        eprintln!("{}", summary_line(&r));
        reports.push(r);
        // Let sockets in TIME_WAIT and the previous server's memory go.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let per_cpu = |t: &str| {
        reports
            .iter()
            .find(|r| r.target == t)
            .map(|r| r.deliveries_per_server_cpu_sec)
            .unwrap_or(f64::NAN)
    };
    let k = per_cpu("kpistream");
    let load = &a.load;
    let out = serde_json::json!({
        "scenario": a.name,
        "load": {
            "connections": load.connections,
            "kpis": load.kpis,
            "rate_per_kpi": load.rate,
            "period": load.period,
            "duration_secs": load.duration,
            "warmup_secs": load.warmup,
            "coalesce_ms": a.stack.coalesce_ms,
            "stack": a.stack.stack,
            "gateways": a.stack.gateways,
        },
        "ratios": {
            "kpistream_vs_plain_deliveries_per_server_cpu_sec": k / per_cpu("plain"),
            "kpistream_vs_nats_ws_deliveries_per_server_cpu_sec": k / per_cpu("nats-ws"),
        },
        "runs": reports,
    });
    eprintln!(
        "kpi-loadgen: {}: deliveries per server-CPU-second, kpistream/plain = {:.2}, kpistream/nats-ws = {:.2}",
        a.name,
        k / per_cpu("plain"),
        k / per_cpu("nats-ws")
    );
    let json = serde_json::to_string_pretty(&out)?;
    println!("{json}");
    if let Some(dir) = &load.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{}.json", a.name)), &json)?;
        write_plots(dir, &a.name, &reports)?;
    }
    Ok(())
}
