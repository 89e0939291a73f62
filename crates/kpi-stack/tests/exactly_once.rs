//! Exactly-once through crashes: every acknowledged event counted once, whatever is killed when.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use common::*;
use kpi_proto::v1::Event;
use kpi_test_support::{free_port, NatsServer, Service};
use serde_json::Value;

const PERIODS: [(&str, u64); 3] = [("minute", 60), ("hour", 3600), ("day", 86400)];

/// A bucket as compared: (count, sum, min, max).
type Agg = (u64, f64, f64, f64);

/// Ground truth per (kpi, period, bucket start secs).
#[derive(Default)]
struct Truth(HashMap<(String, &'static str, u64), Agg>);

impl Truth {
    fn add(&mut self, e: &Event) {
        let secs = e
            .time
            .as_ref()
            .map(|t| t.seconds as u64)
            .unwrap_or_default();
        for (p, w) in PERIODS {
            let s = self.0.entry((e.kpi.clone(), p, secs / w * w)).or_insert((
                0,
                0.0,
                f64::MAX,
                f64::MIN,
            ));
            s.0 += 1;
            s.1 += e.value;
            s.2 = s.2.min(e.value);
            s.3 = s.3.max(e.value);
        }
    }

    fn kpis(&self) -> Vec<String> {
        let mut k: Vec<String> = self.0.keys().map(|(k, _, _)| k.clone()).collect();
        k.sort();
        k.dedup();
        k
    }
}

fn secs(rfc: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc.as_str().unwrap_or_default())
        .map(|t| t.timestamp() as u64)
        .unwrap_or(0)
}

/// Every bucket a client can see for a KPI and period: history (newest record
/// per bucket) plus the current snapshot and its `previous`.
async fn visible(gw: &str, kpi: &str, period: &str) -> BTreeMap<u64, Agg> {
    let mut out: BTreeMap<u64, (u64, Agg)> = BTreeMap::new();
    let mut put = |start: u64, seq: u64, stats: &Value| {
        let v = (
            stats["count"].as_u64().unwrap_or(0),
            stats["sum"].as_f64().unwrap_or(0.0),
            stats["min"].as_f64().unwrap_or(f64::MAX),
            stats["max"].as_f64().unwrap_or(f64::MIN),
        );
        if v.0 > 0 && out.get(&start).is_none_or(|(s, _)| *s <= seq) {
            out.insert(start, (seq, v));
        }
    };
    let (_, hist) = get_json(&format!(
        "{gw}/api/kpi/{kpi}/history?period={period}&limit=1500"
    ))
    .await;
    for b in hist["buckets"].as_array().into_iter().flatten() {
        put(
            secs(&b["bucket_start"]),
            b["seq"].as_u64().unwrap_or(0),
            &b["stats"],
        );
    }
    let (_, snap) = get_json(&format!("{gw}/api/kpi/{kpi}?period={period}")).await;
    let seq = snap["seq"].as_u64().unwrap_or(0);
    put(secs(&snap["bucket_start"]), seq, &snap["stats"]);
    if snap["previous"].is_object() {
        put(
            secs(&snap["previous"]["bucket_start"]),
            seq,
            &snap["previous"]["stats"],
        );
    }
    out.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Waits until everything clients can see equals the truth; returns the mismatches on timeout.
async fn converges(gw: &str, truth: &Truth, timeout: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut bad = Vec::new();
        for kpi in truth.kpis() {
            for (p, _) in PERIODS {
                let want: BTreeMap<u64, _> = truth
                    .0
                    .iter()
                    .filter(|((k, pp, _), _)| *k == kpi && *pp == p)
                    .map(|((_, _, b), s)| (*b, *s))
                    .collect();
                let got = visible(gw, &kpi, p).await;
                if got != want {
                    let (_, snap) = get_json(&format!("{gw}/api/kpi/{kpi}?period={p}")).await;
                    let (hs, hist) =
                        get_json(&format!("{gw}/api/kpi/{kpi}/history?period={p}&limit=1500"))
                            .await;
                    bad.push(format!("{kpi}/{p}: want {want:?}\n  got {got:?}\n  snapshot {snap}\n  history {hs} {hist}"));
                }
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(bad.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Events for `kpis` KPIs with integer values and times spread over the last few minutes.
fn events(n: usize, kpis: usize, tag: &str) -> Vec<Event> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("epoch")
        .as_secs();
    let codes: Vec<String> = (0..kpis).map(|k| unique(&format!("{tag}{k}"))).collect();
    (0..n)
        .map(|i| {
            let t =
                SystemTime::UNIX_EPOCH + Duration::from_secs(now - 150 + (i as u64 * 7919) % 150);
            event(
                &format!("{tag}-{i}"),
                &codes[i % kpis],
                ((i * 31) % 97) as f64,
                t,
            )
        })
        .collect()
}

struct Services {
    aggregators: Vec<(Service, Vec<String>)>,
    ingest: Service,
    _gateway: Service,
    grpc_port: u16,
    ingest_args: Vec<String>,
    gw: String,
}

fn spawn_args(name: &str, args: &[String], nats: &str) -> Service {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::spawn(name, &a, &[("NATS_URL", nats), ("RUST_LOG", "warn")])
}

async fn services(nats: &str, replicas: u32, js_replicas: usize) -> Services {
    let grpc_port = free_port();
    let r = js_replicas.to_string();
    // A 30-minute duplicate window admits events up to 15 minutes old (the
    // late-event test sends one 10 minutes old); every service must agree.
    let window = ["--duplicate-window-secs".to_string(), "1800".to_string()];
    let ingest_args = vec![
        "--listen".into(),
        format!("127.0.0.1:{grpc_port}"),
        "--http-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--replicas".into(),
        r.clone(),
        window[0].clone(),
        window[1].clone(),
    ];
    let ingest = spawn_args("kpi-ingest", &ingest_args, nats);
    let mut aggregators = Vec::new();
    for i in 0..replicas {
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--replica-index".into(),
            i.to_string(),
            "--replica-count".into(),
            replicas.to_string(),
            "--coalesce-ms".into(),
            "50".into(),
            "--checkpoint-ms".into(),
            "300".into(),
            "--lateness-minute-secs".into(),
            "3600".into(),
            "--replicas".into(),
            r.clone(),
            window[0].clone(),
            window[1].clone(),
        ];
        aggregators.push((spawn_args("kpi-aggregator", &args, nats), args));
    }
    let gw_port = free_port();
    let gateway = spawn_args(
        "kpi-gateway",
        // Every service gets the same layout: whichever connects first creates the streams.
        &[
            "--listen".into(),
            format!("127.0.0.1:{gw_port}"),
            "--replicas".into(),
            r.clone(),
            window[0].clone(),
            window[1].clone(),
        ],
        nats,
    );
    let gw = format!("http://127.0.0.1:{gw_port}");
    gateway
        .wait_http_ok(&format!("{gw}/readyz"), Duration::from_secs(30))
        .await;
    Services {
        aggregators,
        ingest,
        _gateway: gateway,
        grpc_port,
        ingest_args,
        gw,
    }
}

/// Publishes every event, retrying a batch (same event ids) until it is
/// acknowledged; returns once all are acknowledged.
async fn publish_all(grpc_port: u16, events: &[Event]) {
    let url = format!("http://127.0.0.1:{grpc_port}");
    for chunk in events.chunks(500) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let mut c = kpi_proto::v1::ingest_client::IngestClient::connect(url.clone())
                    .await
                    .ok()?;
                let r = publish(&mut c, chunk.to_vec()).await.ok()?;
                (r.accepted + r.duplicates == chunk.len() as u32).then_some(())
            };
            if tokio::time::timeout(Duration::from_secs(10), attempt)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a batch was never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_killed_ten_times_loses_and_doubles_nothing() {
    let nats = NatsServer::start();
    let mut s = services(&nats.url(), 1, 1).await;
    let evs = events(100_000, 50, "crash");
    let mut truth = Truth::default();
    evs.iter().for_each(|e| truth.add(e));
    let publisher = tokio::spawn({
        let evs = evs.clone();
        let port = s.grpc_port;
        async move { publish_all(port, &evs).await }
    });
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(300 + rng % 1200)).await;
        let (agg, args) = &mut s.aggregators[0];
        agg.kill();
        *agg = spawn_args("kpi-aggregator", args, &nats.url());
    }
    publisher.await.expect("publisher");
    if let Err(diff) = converges(&s.gw, &truth, Duration::from_secs(120)).await {
        panic!(
            "stats differ from the truth:\n{diff}\naggregator log:\n{}",
            s.aggregators[0].0.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_while_publisher_retries_counts_each_event_once() {
    let nats = NatsServer::start();
    let mut s = services(&nats.url(), 1, 1).await;
    let evs = events(20_000, 10, "retry");
    let mut truth = Truth::default();
    evs.iter().for_each(|e| truth.add(e));
    let publisher = tokio::spawn({
        let evs = evs.clone();
        let port = s.grpc_port;
        async move { publish_all(port, &evs).await }
    });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.ingest.kill();
        s.ingest = spawn_args("kpi-ingest", &s.ingest_args, &nats.url());
    }
    publisher.await.expect("publisher");
    if let Err(diff) = converges(&s.gw, &truth, Duration::from_secs(60)).await {
        panic!("stats differ from the truth:\n{diff}");
    }
}

/// Ingest stores many events per JetStream message, so only the aggregator
/// can tell copies apart: the same ids sent through two ingest processes
/// (each storing them in batches of its own) count once, and so do copies
/// stored while the aggregator is down after a checkpoint (the checkpoint
/// does not hold the ids; the restarted aggregator rebuilds them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ids_through_two_ingest_processes_count_once_even_across_an_aggregator_kill() {
    let nats = NatsServer::start();
    let mut s = services(&nats.url(), 1, 1).await;
    let mut other_args = s.ingest_args.clone();
    let other_port = free_port();
    other_args[1] = format!("127.0.0.1:{other_port}");
    other_args[3] = format!("127.0.0.1:{}", free_port());
    let _other = spawn_args("kpi-ingest", &other_args, &nats.url());
    let evs = events(3_000, 10, "twice");
    let mut truth = Truth::default();
    evs.iter().for_each(|e| truth.add(e));
    let reversed: Vec<Event> = evs.iter().rev().cloned().collect();
    publish_all(s.grpc_port, &evs).await;
    publish_all(other_port, &reversed).await;
    if let Err(diff) = converges(&s.gw, &truth, Duration::from_secs(60)).await {
        panic!("copies through a second ingest counted again:\n{diff}");
    }

    // Checkpoints every 300 ms: one covers everything by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (agg, args) = &mut s.aggregators[0];
    agg.kill();
    let mut rotated = evs.clone();
    rotated.rotate_left(777);
    publish_all(other_port, &rotated).await;
    *agg = spawn_args("kpi-aggregator", args, &nats.url());
    // Something new after the copies, so converging means they were read.
    let fresh = events(10, 1, "fresh");
    fresh.iter().for_each(|e| truth.add(e));
    publish_all(s.grpc_port, &fresh).await;
    if let Err(diff) = converges(&s.gw, &truth, Duration::from_secs(60)).await {
        panic!(
            "copies stored while the aggregator was down counted again:\n{diff}\naggregator log:\n{}",
            s.aggregators[0].0.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_aggregator_replicas_give_the_results_of_one() {
    let nats = NatsServer::start();
    let s = services(&nats.url(), 3, 1).await;
    let evs = events(20_000, 24, "repl");
    let mut truth = Truth::default();
    evs.iter().for_each(|e| truth.add(e));
    publish_all(s.grpc_port, &evs).await;
    if let Err(diff) = converges(&s.gw, &truth, Duration::from_secs(60)).await {
        panic!(
            "3 replicas differ from the truth (which 1 replica meets in the other tests):\n{diff}"
        );
    }
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_within_lateness_equals_in_order_and_too_late_is_counted_not_applied() {
    let nats = NatsServer::start();
    let mut s = services(&nats.url(), 1, 1).await;
    let ordered = events(600, 1, "inorder");
    let mut shuffled: Vec<Event> = ordered.iter().rev().cloned().collect();
    let other = unique("shuffled");
    for (i, e) in shuffled.iter_mut().enumerate() {
        e.kpi = other.clone();
        e.event_id = format!("shuf-{i}");
    }
    publish_all(s.grpc_port, &ordered).await;
    publish_all(s.grpc_port, &shuffled).await;
    let mut truth = Truth::default();
    ordered
        .iter()
        .chain(shuffled.iter())
        .for_each(|e| truth.add(e));
    converges(&s.gw, &truth, Duration::from_secs(30))
        .await
        .expect("in-order and shuffled agree with the truth");

    // Restart the aggregator with a 60 s minute lateness: an event 10 minutes
    // old is too late for its minute (but not for its hour or day).
    let (agg, args) = &mut s.aggregators[0];
    agg.terminate();
    agg.wait_exit(Duration::from_secs(15));
    let metrics_port = free_port();
    let mut late_args = args.clone();
    late_args[1] = format!("127.0.0.1:{metrics_port}");
    let pos = late_args
        .iter()
        .position(|a| a == "--lateness-minute-secs")
        .expect("flag");
    late_args[pos + 1] = "60".into();
    *agg = spawn_args("kpi-aggregator", &late_args, &nats.url());
    agg.wait_http_ok(
        &format!("http://127.0.0.1:{metrics_port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    let code = ordered[0].kpi.clone();
    let old = SystemTime::now() - Duration::from_secs(600);
    let minute_bucket = old
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("epoch")
        .as_secs()
        / 60
        * 60;
    let before = visible(&s.gw, &code, "minute").await;
    publish_all(s.grpc_port, &[event("too-late", &code, 1000.0, old)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, page) =
            kpi_test_support::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
        if metric(&page, "kpi_aggregator_events_late_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "late event not counted:\n{page}\n{}",
            agg.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = visible(&s.gw, &code, "minute").await;
    assert_eq!(before, after, "a too-late event changed the minute stats");
    assert!(
        !after.contains_key(&minute_bucket),
        "a bucket was created for a too-late event"
    );
}
