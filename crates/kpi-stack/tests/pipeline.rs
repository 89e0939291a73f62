//! The core pipeline end to end: real nats-server, the three binaries as separate processes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::*;
use futures::SinkExt;
use kpi_proto::v1::Status;
use kpi_test_support::NatsServer;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_time: Option<SystemTime>,
}

impl Expected {
    fn add(&mut self, v: f64, t: SystemTime) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        }
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if self.last_time.is_none_or(|lt| t > lt) {
            self.last = v;
            self.last_time = Some(t);
        }
    }

    fn assert_matches(&self, stats: &Value, what: &str) {
        assert_eq!(
            stats["count"].as_u64(),
            Some(self.count),
            "{what}: count in {stats}"
        );
        assert_eq!(
            stats["sum"].as_f64(),
            Some(self.sum),
            "{what}: sum in {stats}"
        );
        assert_eq!(
            stats["min"].as_f64(),
            Some(self.min),
            "{what}: min in {stats}"
        );
        assert_eq!(
            stats["max"].as_f64(),
            Some(self.max),
            "{what}: max in {stats}"
        );
        assert_eq!(
            stats["last"].as_f64(),
            Some(self.last),
            "{what}: last in {stats}"
        );
        assert_eq!(
            stats["avg"].as_f64(),
            Some(self.sum / self.count as f64),
            "{what}: avg in {stats}"
        );
    }
}

/// The stats of `bucket` in a snapshot/update message: the current bucket or the previous one.
fn stats_of(msg: &Value, bucket: &str) -> Option<Value> {
    if msg["bucket_start"] == bucket {
        return Some(msg["stats"].clone());
    }
    (msg["previous"]["bucket_start"] == bucket).then(|| msg["previous"]["stats"].clone())
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_events_give_exact_stats_on_websocket_and_snapshot_for_every_period() {
    let nats = NatsServer::start();
    let p = Pipeline::start(&nats.url(), &[]).await;
    let codes: Vec<String> = (0..3).map(|i| unique(&format!("exact{i}"))).collect();
    let minute = roomy_minute().await;
    let bucket = rfc3339(minute);

    let mut sockets = Vec::new();
    for code in &codes {
        let mut ws = ws_connect(&format!("{}/ws/kpi/{code}?period=minute", p.gateway_ws)).await;
        let first = next_json(&mut ws, Duration::from_secs(10)).await;
        assert_eq!(
            first["type"], "snapshot",
            "first message must be the snapshot: {first}"
        );
        sockets.push(ws);
    }

    let mut expected: HashMap<String, Expected> = HashMap::new();
    let mut events = Vec::new();
    for i in 0..1000u64 {
        let code = &codes[(i % 3) as usize];
        let value = ((i * 37) % 101) as f64 - 50.0;
        let time = minute + Duration::from_millis(i * 50);
        expected.entry(code.clone()).or_default().add(value, time);
        events.push(event(&format!("{code}-{i}"), code, value, time));
    }
    let mut client = p.client().await;
    for chunk in events.chunks(100) {
        let r = publish(&mut client, chunk.to_vec()).await.expect("publish");
        assert_eq!(r.accepted as usize, chunk.len(), "{r:?}");
    }

    for (code, ws) in codes.iter().zip(sockets.iter_mut()) {
        let want = &expected[code];
        let mut last_seq = 0;
        loop {
            let msg = next_json(ws, Duration::from_secs(15)).await;
            assert_eq!(msg["type"], "update", "{msg}");
            let seq = msg["seq"].as_u64().expect("seq");
            assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
            last_seq = seq;
            if let Some(stats) = stats_of(&msg, &bucket) {
                if stats["count"].as_u64() == Some(want.count) {
                    want.assert_matches(&stats, &format!("{code} over WebSocket"));
                    break;
                }
            }
        }
        for period in ["minute", "hour", "day"] {
            let bucket = rfc3339(match period {
                "minute" => minute,
                "hour" => {
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs(
                            minute
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .expect("epoch")
                                .as_secs()
                                / 3600
                                * 3600,
                        )
                }
                _ => {
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs(
                            minute
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .expect("epoch")
                                .as_secs()
                                / 86400
                                * 86400,
                        )
                }
            });
            // No gateway holds the hour and day topics: their snapshot is
            // the stored latest, which the store policy brings up to the
            // live one within one store interval (1 s).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let (snap, stats) = loop {
                let (status, snap) = get_json(&format!(
                    "{}/api/kpi/{code}?period={period}",
                    p.gateway_http
                ))
                .await;
                assert_eq!(status, 200, "{snap}");
                assert_eq!(snap["type"], "snapshot");
                assert_eq!(snap["period"], period);
                let stats = stats_of(&snap, &bucket)
                    .unwrap_or_else(|| panic!("{code}/{period}: bucket {bucket} not in {snap}"));
                if stats["count"].as_u64() == Some(want.count)
                    || tokio::time::Instant::now() >= deadline
                {
                    break (snap, stats);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            want.assert_matches(&stats, &format!("{code} snapshot {period}"));
            assert!(
                snap["updated_at"].is_string() && snap["event_time"].is_string(),
                "{snap}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_twice_counts_once() {
    let nats = NatsServer::start();
    let p = Pipeline::start(&nats.url(), &[]).await;
    let code = unique("dup");
    let mut client = p.client().await;
    let now = SystemTime::now();
    let first = publish(&mut client, vec![event("same-id", &code, 5.0, now)])
        .await
        .expect("publish");
    assert_eq!(first.results[0].status(), Status::Stored);
    let again = publish(&mut client, vec![event("same-id", &code, 7.0, now)])
        .await
        .expect("publish");
    assert_eq!(again.results[0].status(), Status::Duplicate, "{again:?}");
    // A later, distinct event proves the aggregator has processed past the duplicate.
    publish(&mut client, vec![event("other-id", &code, 1.0, now)])
        .await
        .expect("publish");
    let url = format!("{}/api/kpi/{code}?period=day", p.gateway_http);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, snap) = get_json(&url).await;
        if snap["stats"]["count"].as_u64() == Some(2) {
            assert_eq!(snap["stats"]["sum"].as_f64(), Some(6.0), "{snap}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never counted: {snap}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, snap) = get_json(&url).await;
    assert_eq!(
        snap["stats"]["count"].as_u64(),
        Some(2),
        "the duplicate was counted: {snap}"
    );
}

async fn upstream(nats: &NatsServer) -> Vec<String> {
    let mut subs: Vec<String> = nats
        .subscriptions()
        .await
        .into_iter()
        .filter(|s| s.starts_with("kpi.updates"))
        .collect();
    subs.sort();
    subs
}

async fn gauge(p: &Pipeline) -> Option<f64> {
    let (_, page) = kpi_test_support::http_get(&format!("{}/metrics", p.gateway_http)).await;
    metric(&page, "kpi_gateway_upstream_subscriptions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_subscribes_upstream_only_while_a_client_watches() {
    let nats = NatsServer::start();
    let p = Pipeline::start(&nats.url(), &["--linger-ms", "300"]).await;
    let code = unique("interest");
    assert_eq!(upstream(&nats).await, Vec::<String>::new());
    assert_eq!(gauge(&p).await.unwrap_or(0.0), 0.0);

    let url = format!("{}/ws/kpi/{code}?period=minute", p.gateway_ws);
    let mut a = ws_connect(&url).await;
    next_json(&mut a, Duration::from_secs(10)).await;
    let want = vec![format!("kpi.updates.{code}.minute")];
    assert_eq!(upstream(&nats).await, want);
    assert_eq!(gauge(&p).await, Some(1.0));

    let mut b = ws_connect(&url).await;
    next_json(&mut b, Duration::from_secs(10)).await;
    assert_eq!(
        upstream(&nats).await,
        want,
        "a second client must share the subscription"
    );
    assert_eq!(gauge(&p).await, Some(1.0));

    a.close(None).await.expect("close a");
    b.close(None).await.expect("close b");
    drop((a, b));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !upstream(&nats).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream subscription kept after the last client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(&p).await, Some(0.0));
}

const HOSTILE: [&str; 8] = ["a.b", "*", ">", "%2A", "a b", "é", "kpi.>", "x"];

fn hostile_codes() -> Vec<String> {
    let mut v: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    v.pop();
    v.push("x".repeat(65));
    v
}

fn encode(code: &str) -> String {
    code.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' || b == b'*' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_codes_are_refused_everywhere_and_never_reach_nats() {
    let nats = NatsServer::start();
    let p = Pipeline::start(&nats.url(), &[]).await;
    let mut client = p.client().await;
    for code in hostile_codes() {
        let err = publish(&mut client, vec![event("", &code, 1.0, SystemTime::now())])
            .await
            .expect_err(&format!("ingest accepted {code:?}"));
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{code:?}: {err:?}"
        );
        assert!(!err.message().is_empty());

        let path = encode(&code);
        for url in [
            format!("{}/api/kpi/{path}?period=minute", p.gateway_http),
            format!("{}/api/kpi/{path}/history?period=minute", p.gateway_http),
            format!(
                "{}/api/kpi/{path}/updates?period=minute&since=0&wait=0",
                p.gateway_http
            ),
            format!("{}/sse/kpi/{path}?period=minute", p.gateway_http),
        ] {
            let (status, body) = get_json(&url).await;
            assert!((400..500).contains(&status), "{url}: {status} {body}");
            assert_eq!(body["type"], "error", "{url}: {body}");
        }
        let ws = tokio_tungstenite::connect_async(format!(
            "{}/ws/kpi/{path}?period=minute",
            p.gateway_ws
        ))
        .await;
        match ws {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 400, "{code:?}")
            }
            other => panic!("/ws/kpi accepted {code:?}: {:?}", other.map(|_| ())),
        }
        let mut mux = ws_connect(&format!("{}/ws", p.gateway_ws)).await;
        let sub = serde_json::json!({"type":"subscribe","kpi":code,"period":"minute"});
        mux.send(Message::text(sub.to_string()))
            .await
            .expect("send");
        let reply = next_json(&mut mux, Duration::from_secs(5)).await;
        assert_eq!(reply["type"], "error", "{code:?}: {reply}");
        assert_eq!(reply["code"], "invalid_kpi", "{reply}");
    }
    let subs = nats.subscriptions().await;
    assert!(
        subs.iter()
            .all(|s| !s.starts_with("kpi.") || !(s.contains('*') || s.contains('>'))),
        "a wildcard KPI subscription reached NATS: {subs:?}"
    );
    assert!(upstream(&nats).await.is_empty(), "{subs:?}");
}
