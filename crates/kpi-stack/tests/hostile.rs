//! Mixed hostile publishing against a real nats-server, then kill -9 of the aggregator: legitimate KPIs stay exact, memory and checkpoints bounded.
//!
//! For `KPI_HOSTILE_SECS` (default 60) legitimate publishers send integer
//! values to a few KPIs (retrying some batches at once) while hostile ones
//! send values a sum cannot hold, times a day ahead and a day behind, 100k
//! distinct codes, and retries of legitimate events after the (20 s)
//! duplicate window. The aggregator is killed with SIGKILL midway and at
//! the end. Then every legitimate KPI's buckets, as stored on the bus (the
//! history and the current update), must equal the ground truth, no stats
//! field may be null where `count > 0`, and the aggregator's peak RSS and
//! the checkpoints' total size must stay under the bounds below.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use kpi_bus::{Bus, BusConfig};
use kpi_core::{KpiCode, Period, Topic, UpdateMessage};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, PublishRequest, Status as EventStatus};
use kpi_test_support::{free_port, NatsServer, Service};
use tokio::sync::Mutex;

/// Short, so that retries after the window happen within the test.
const WINDOW_SECS: u64 = 20;
/// Distinct codes the sprayer tries; ingest admits `MAX_KPIS` in all.
const SPRAYED_CODES: usize = 100_000;
const MAX_KPIS: usize = 20_000;
const LEGIT_KPIS: usize = 5;
/// Bounds asserted. A 600 s run (debug build) measured a peak aggregator RSS
/// of 164 MiB and checkpoints of 24 MiB in all, with the cap's 20k codes.
const MAX_AGGREGATOR_RSS_BYTES: u64 = 512 << 20;
const MAX_CHECKPOINT_BYTES: u64 = 48 << 20;

const PERIODS: [Period; 3] = [Period::Minute, Period::Hour, Period::Day];

/// A bucket as compared: (count, sum, min, max).
type Agg = (u64, f64, f64, f64);
/// Per (kpi, period, bucket start).
type Truth = HashMap<(String, Period, i64), Agg>;

fn duration() -> Duration {
    let secs = std::env::var("KPI_HOSTILE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn at_secs(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn add(truth: &mut Truth, e: &Event) {
    let secs = e.time.as_ref().map(|t| t.seconds).unwrap_or_default();
    for p in PERIODS {
        let w = p.seconds();
        let s = truth
            .entry((e.kpi.clone(), p, secs.div_euclid(w) * w))
            .or_insert((0, 0.0, f64::MAX, f64::MIN));
        s.0 += 1;
        s.1 += e.value;
        s.2 = s.2.min(e.value);
        s.3 = s.3.max(e.value);
    }
}

/// Sends a batch; returns per-event statuses, or None when the call failed as a whole.
async fn send(
    client: &mut IngestClient<tonic::transport::Channel>,
    events: Vec<Event>,
) -> Result<Vec<EventStatus>, tonic::Status> {
    let r = client.publish(PublishRequest { events }).await?;
    Ok(r.into_inner().results.iter().map(|r| r.status()).collect())
}

struct Shared {
    truth: Mutex<Truth>,
    /// Ids counted in the truth.
    counted: Mutex<HashSet<String>>,
    /// Legitimate batches sent, for late retries.
    sent: Mutex<Vec<(f64, Vec<Event>)>>,
    /// Late retries that were stored again (must stay 0).
    restored: std::sync::atomic::AtomicU64,
    refused_hostile: std::sync::atomic::AtomicU64,
    accepted_hostile: std::sync::atomic::AtomicU64,
}

/// One legitimate publisher: batches of integer values, each acknowledged
/// batch sometimes sent again at once (a retry inside the window).
async fn legit(url: String, codes: Vec<String>, until: Instant, shared: std::sync::Arc<Shared>) {
    let mut client = IngestClient::connect(url).await.expect("connect");
    let mut n = 0u64;
    while Instant::now() < until {
        let now = unix_now();
        let batch: Vec<Event> = (0..20)
            .map(|i| {
                n += 1;
                let code = &codes[(n as usize) % codes.len()];
                // Up to 5 s old: well inside half the window.
                let t = now - ((n * 7919) % 5000) as f64 / 1000.0;
                event(
                    &format!("legit-{code}-{n}"),
                    code,
                    ((n * 31 + i) % 97) as f64,
                    at_secs(t),
                )
            })
            .collect();
        loop {
            match send(&mut client, batch.clone()).await {
                Ok(statuses) => {
                    let mut truth = shared.truth.lock().await;
                    let mut counted = shared.counted.lock().await;
                    for (e, s) in batch.iter().zip(&statuses) {
                        match s {
                            EventStatus::Stored | EventStatus::Duplicate => {
                                if counted.insert(e.event_id.clone()) {
                                    add(&mut truth, e);
                                }
                            }
                            other => panic!("a legitimate event was refused: {other:?}"),
                        }
                    }
                    break;
                }
                Err(status) => {
                    assert!(
                        status.code() == tonic::Code::Unavailable,
                        "legitimate batch failed: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if n.is_multiple_of(60) {
            // A retry of an acknowledged batch: duplicates, counted once.
            let statuses = send(&mut client, batch.clone()).await.expect("retry");
            assert!(statuses.iter().all(|s| *s == EventStatus::Duplicate));
        }
        shared.sent.lock().await.push((unix_now(), batch));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything a careless or hostile publisher sends, refused or harmless.
async fn hostile(url: String, legit: Vec<String>, until: Instant, shared: std::sync::Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut client = IngestClient::connect(url).await.expect("connect");
    let mut sprayed = 0usize;
    let mut round = 0u64;
    while Instant::now() < until {
        round += 1;
        let now = unix_now();
        // Huge values and far times on legitimate codes: each refused.
        let bad: Vec<Event> = legit
            .iter()
            .enumerate()
            .flat_map(|(i, code)| {
                [
                    event(&format!("huge-{round}-{i}"), code, 1e308, at_secs(now)),
                    event(&format!("neg-{round}-{i}"), code, -1e300, at_secs(now)),
                    event(
                        &format!("future-{round}-{i}"),
                        code,
                        1.0,
                        at_secs(now + 86_400.0),
                    ),
                    event(
                        &format!("past-{round}-{i}"),
                        code,
                        1.0,
                        at_secs(now - 86_400.0),
                    ),
                ]
            })
            .collect();
        match send(&mut client, bad).await {
            Err(s) if s.code() == tonic::Code::InvalidArgument => {}
            other => panic!("hostile values were not all refused: {other:?}"),
        }
        // Retries of legitimate batches sent more than a window ago.
        let old: Vec<Vec<Event>> = {
            let sent = shared.sent.lock().await;
            sent.iter()
                .filter(|(at, _)| now - at > WINDOW_SECS as f64 + 2.0)
                .rev()
                .take(2)
                .map(|(_, b)| b.clone())
                .collect()
        };
        for batch in old {
            match send(&mut client, batch).await {
                Ok(statuses) => {
                    let again = statuses
                        .iter()
                        .filter(|s| **s == EventStatus::Stored)
                        .count();
                    shared.restored.fetch_add(again as u64, Relaxed);
                }
                Err(s) => assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s}"),
            }
        }
        // Distinct codes, near-future and near-past times within the rule.
        if sprayed < SPRAYED_CODES {
            let batch: Vec<Event> = (0..2000)
                .map(|i| {
                    let k = sprayed + i;
                    let skew = (k % 17) as f64 - 8.0;
                    event(
                        &format!("spray-{k}"),
                        &format!("spray_{k}"),
                        k as f64,
                        at_secs(now + skew),
                    )
                })
                .collect();
            sprayed += batch.len();
            match send(&mut client, batch).await {
                Ok(statuses) => {
                    let ok = statuses
                        .iter()
                        .filter(|s| **s == EventStatus::Stored)
                        .count();
                    shared.accepted_hostile.fetch_add(ok as u64, Relaxed);
                    shared
                        .refused_hostile
                        .fetch_add((statuses.len() - ok) as u64, Relaxed);
                }
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s}");
                    assert!(s.message().contains("--max-kpis"), "{}", s.message());
                    shared.refused_hostile.fetch_add(2000, Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn checkpoint_bytes(bus: &Bus) -> u64 {
    let mut total = 0;
    for p in 0..bus.config().partitions {
        if let Ok(Some(raw)) = bus.load_checkpoint(p).await {
            total += raw.len() as u64;
        }
    }
    total
}

/// Every bucket of a topic as stored: history, then the current update and
/// its `previous` (newest seq wins). Fails on a null field where count > 0.
async fn stored(bus: &Bus, topic: &Topic) -> Result<BTreeMap<i64, Agg>, String> {
    let mut out: BTreeMap<i64, (u64, Agg)> = BTreeMap::new();
    let mut put = |start: i64, seq: u64, s: &kpi_core::StatsView| -> Result<(), String> {
        if s.count == 0 {
            return Ok(());
        }
        let (Some(avg), Some(min), Some(max), Some(last)) = (s.avg, s.min, s.max, s.last) else {
            return Err(format!(
                "{topic} bucket {start}: a null field with count {}",
                s.count
            ));
        };
        if ![s.sum, avg, min, max, last].iter().all(|v| v.is_finite()) {
            return Err(format!("{topic} bucket {start}: not finite {s:?}"));
        }
        if out.get(&start).is_none_or(|(q, _)| *q <= seq) {
            out.insert(start, (seq, (s.count, s.sum, min, max)));
        }
        Ok(())
    };
    for raw in bus.history(topic, 1500).await.map_err(|e| e.to_string())? {
        let m = UpdateMessage::from_json(&raw).map_err(|e| format!("{topic}: {e}"))?;
        put(m.bucket_start.timestamp(), m.seq, &m.stats)?;
    }
    if let Some(raw) = bus.last_update(topic).await.map_err(|e| e.to_string())? {
        let m = UpdateMessage::from_json(&raw).map_err(|e| format!("{topic}: {e}"))?;
        put(m.bucket_start.timestamp(), m.seq, &m.stats)?;
        if let Some(p) = &m.previous {
            put(p.bucket_start.timestamp(), m.seq, &p.stats)?;
        }
    }
    Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

async fn mismatches(bus: &Bus, truth: &Truth, codes: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for code in codes {
        for p in PERIODS {
            let want: BTreeMap<i64, _> = truth
                .iter()
                .filter(|((k, pp, _), _)| k == code && *pp == p)
                .map(|((_, _, b), s)| (*b, *s))
                .collect();
            let topic = Topic::new(KpiCode::parse(code).expect("code"), p);
            match stored(bus, &topic).await {
                Ok(got) if got == want => {}
                Ok(got) => bad.push(format!("{topic}: want {want:?}\n  got {got:?}")),
                Err(e) => bad.push(e),
            }
        }
    }
    bad
}

fn spawn(name: &str, args: &[String], nats: &str) -> Service {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::spawn(name, &a, &[("NATS_URL", nats), ("RUST_LOG", "warn")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_publishers_and_a_killed_aggregator_leave_legitimate_kpis_exact() {
    let nats = NatsServer::start();
    let url = nats.url();
    let window = [
        "--duplicate-window-secs".to_string(),
        WINDOW_SECS.to_string(),
    ];
    let grpc = free_port();
    let ingest_http = free_port();
    let mut ingest_args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{grpc}"),
        "--http-listen".into(),
        format!("127.0.0.1:{ingest_http}"),
        "--max-future-secs".into(),
        (WINDOW_SECS / 2).to_string(),
        "--max-kpis".into(),
        MAX_KPIS.to_string(),
    ];
    ingest_args.extend(window.iter().cloned());
    let ingest = spawn("kpi-ingest", &ingest_args, &url);
    let agg_http = free_port();
    let mut agg_args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{agg_http}"),
        "--checkpoint-ms".into(),
        "2000".into(),
        "--topic-idle-secs".into(),
        "30".into(),
    ];
    agg_args.extend(window.iter().cloned());
    let mut aggregator = spawn("kpi-aggregator", &agg_args, &url);
    let wait = Duration::from_secs(30);
    ingest
        .wait_http_ok(&format!("http://127.0.0.1:{ingest_http}/readyz"), wait)
        .await;
    aggregator
        .wait_http_ok(&format!("http://127.0.0.1:{agg_http}/readyz"), wait)
        .await;
    let bus = Bus::connect_nats(
        &url,
        BusConfig {
            duplicate_window: Duration::from_secs(WINDOW_SECS),
            ..BusConfig::default()
        },
    )
    .await
    .expect("bus");

    let codes: Vec<String> = (0..LEGIT_KPIS)
        .map(|i| unique(&format!("legit{i}")))
        .collect();
    let shared = std::sync::Arc::new(Shared {
        truth: Mutex::new(Truth::new()),
        counted: Mutex::new(HashSet::new()),
        sent: Mutex::new(Vec::new()),
        restored: Default::default(),
        refused_hostile: Default::default(),
        accepted_hostile: Default::default(),
    });
    let run = duration();
    let started = Instant::now();
    let until = started + run;
    let grpc_url = format!("http://127.0.0.1:{grpc}");
    let legit_task = tokio::spawn(legit(
        grpc_url.clone(),
        codes.clone(),
        until,
        shared.clone(),
    ));
    // The legitimate codes are known before the sprayer fills the cap.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hostile_task = tokio::spawn(hostile(grpc_url, codes.clone(), until, shared.clone()));

    let mut peak_rss = 0u64;
    let mut peak_checkpoint = 0u64;
    let mut killed_midway = false;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(rss_bytes(aggregator.pid()));
        if started.elapsed().as_secs().is_multiple_of(10) {
            peak_checkpoint = peak_checkpoint.max(checkpoint_bytes(&bus).await);
        }
        if !killed_midway && started.elapsed() > run * 2 / 3 {
            killed_midway = true;
            aggregator.kill();
            aggregator = spawn("kpi-aggregator", &agg_args, &url);
        }
    }
    legit_task.await.expect("legitimate publisher");
    hostile_task.await.expect("hostile publisher");
    peak_rss = peak_rss.max(rss_bytes(aggregator.pid()));
    aggregator.kill();
    let _aggregator = spawn("kpi-aggregator", &agg_args, &url);

    let truth = shared.truth.lock().await.clone();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let bad = mismatches(&bus, &truth, &codes).await;
        if bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "legitimate KPIs differ from the truth after the kill:\n{}",
            bad.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A sample of the sprayed codes: whatever was stored has no null field.
    for k in (0..MAX_KPIS).step_by(997) {
        for p in PERIODS {
            let topic = Topic::new(KpiCode::parse(&format!("spray_{k}")).expect("code"), p);
            // The bus bounds each read (about a second) so a loaded server
            // can refuse one; only a bad field is a failure.
            let mut tries = 0;
            while let Err(e) = stored(&bus, &topic).await {
                tries += 1;
                if !e.starts_with("bus unavailable") || tries >= 20 {
                    panic!("{e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    peak_checkpoint = peak_checkpoint.max(checkpoint_bytes(&bus).await);
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "hostile run {} s: legitimate events {}, hostile stored {} refused {}, late retries stored again {}, aggregator peak RSS {} MiB, checkpoints peak {} KiB",
        run.as_secs(),
        shared.counted.lock().await.len(),
        shared.accepted_hostile.load(Relaxed),
        shared.refused_hostile.load(Relaxed),
        shared.restored.load(Relaxed),
        peak_rss >> 20,
        peak_checkpoint >> 10
    );
    assert_eq!(
        shared.restored.load(Relaxed),
        0,
        "a retry after the window was stored again"
    );
    assert!(
        shared.accepted_hostile.load(Relaxed) <= MAX_KPIS as u64,
        "the distinct-code cap let more through"
    );
    assert!(
        peak_rss < MAX_AGGREGATOR_RSS_BYTES,
        "aggregator RSS {peak_rss} bytes"
    );
    assert!(
        peak_checkpoint < MAX_CHECKPOINT_BYTES,
        "checkpoints {peak_checkpoint} bytes"
    );
}
