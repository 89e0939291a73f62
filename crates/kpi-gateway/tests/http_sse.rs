//! SSE (ids, Last-Event-ID resume) and the HTTP endpoints: snapshot, history, polling.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use common::*;
use kpi_core::Period;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_snapshot_then_updates_and_resumes_from_last_event_id() {
    let gw = start(settings()).await;
    let t = topic("on_time_delivery_rate", Period::Minute);
    publish_range(&gw.bus, &t, 1..=4).await;
    let mut sse = Sse::open(gw.addr, "/sse/kpi/on_time_delivery_rate", None).await;
    assert_eq!(sse.status, 200);
    let (id, m) = sse.next_data().await;
    assert_eq!((id.as_str(), m["type"].as_str()), ("4", Some("snapshot")));
    publish_range(&gw.bus, &t, 5..=6).await;
    for want in 5..=6u64 {
        let (id, m) = sse.next_data().await;
        assert_eq!(id, want.to_string());
        assert_eq!(
            (m["type"].as_str(), m["seq"].as_u64()),
            (Some("update"), Some(want))
        );
    }
    drop(sse);
    publish_range(&gw.bus, &t, 7..=9).await;
    // The bus hands updates to the gateway's subscription asynchronously:
    // resume only once the gateway has 9, else a resume at exactly its
    // latest seq (6) gets a snapshot, which is this test's race, not its point.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, snap) = gw.get("/api/kpi/on_time_delivery_rate?period=minute").await;
        if snap["seq"].as_u64() == Some(9) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Last-Event-ID overrides since.
    let mut sse = Sse::open(gw.addr, "/sse/kpi/on_time_delivery_rate?since=1", Some(6)).await;
    for want in 7..=9u64 {
        let (id, m) = sse.next_data().await;
        assert_eq!((id, m["type"].as_str()), (want.to_string(), Some("update")));
    }
    gw.stop().await;
}

#[tokio::test]
async fn sse_sends_keepalive_comments() {
    let gw = start(kpi_gateway::GatewaySettings {
        sse_keepalive: Duration::from_millis(200),
        ..settings()
    })
    .await;
    let mut sse = Sse::open(gw.addr, "/sse/kpi/quiet", None).await;
    assert_eq!(sse.next_data().await.1["seq"], 0);
    let (id, data) = sse.next_event().await;
    assert_eq!(
        (id, data),
        (None, serde_json::Value::Null),
        "a comment, no data"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_endpoint_reads_the_bus_or_the_watched_topic() {
    let gw = start(settings()).await;
    let (status, empty) = gw.get("/api/kpi/cart_abandonment_rate?period=hour").await;
    assert_eq!(status, 200);
    assert_eq!(
        (empty["type"].as_str(), empty["seq"].as_u64()),
        (Some("snapshot"), Some(0))
    );
    assert_eq!(empty["period"], "hour");
    let t = topic("cart_abandonment_rate", Period::Hour);
    publish_range(&gw.bus, &t, 1..=3).await;
    let (_, snap) = gw.get("/api/kpi/cart_abandonment_rate?period=hour").await;
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(3))
    );
    assert_eq!(memory(&gw.bus).live_subscriptions(), 0);
    // While watched, the local copy answers (same value).
    let mut ws = gw.ws("/ws/kpi/cart_abandonment_rate?period=hour").await;
    recv(&mut ws).await;
    publish(&gw.bus, &t, 4).await;
    assert_eq!(recv(&mut ws).await["seq"], 4);
    let (_, snap) = gw.get("/api/kpi/cart_abandonment_rate?period=hour").await;
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(4))
    );
    gw.stop().await;
}

#[tokio::test]
async fn history_is_newest_last_and_deduplicated() {
    let gw = start(settings()).await;
    let t = topic("revenue_eur", Period::Minute);
    let bucket = |minute: u32, seq: u64, count: u64| {
        let mut m = update(&t, seq);
        m.bucket_start = Utc.with_ymd_and_hms(2026, 1, 1, 8, minute, 0).unwrap();
        m.stats.count = count;
        Bytes::from(m.to_json())
    };
    // The bus keeps each bucket's latest record; the aggregator writes a
    // topic's records in seq order, so the latest is the highest seq.
    for (minute, seq, count) in [
        (0, 10, 1),
        (1, 20, 2),
        (2, 30, 3),
        (1, 33, 7),
        (3, 40, 4),
        (1, 35, 9),
    ] {
        gw.bus
            .publish_history(&t, bucket(minute, seq, count))
            .await
            .unwrap();
    }
    let (status, h) = gw.get("/api/kpi/revenue_eur/history").await;
    assert_eq!(status, 200);
    assert_eq!(
        (h["kpi"].as_str(), h["period"].as_str()),
        (Some("revenue_eur"), Some("minute"))
    );
    let got: Vec<(String, u64, u64)> = h["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["bucket_start"].as_str().unwrap().to_string(),
                b["seq"].as_u64().unwrap(),
                b["stats"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-01-01T08:00:00Z".into(), 10, 1),
            ("2026-01-01T08:01:00Z".into(), 35, 9),
            ("2026-01-01T08:02:00Z".into(), 30, 3),
            ("2026-01-01T08:03:00Z".into(), 40, 4),
        ]
    );
    let (_, h) = gw.get("/api/kpi/revenue_eur/history?limit=2").await;
    let starts: Vec<&str> = h["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket_start"].as_str().unwrap())
        .collect();
    assert_eq!(starts, vec!["2026-01-01T08:02:00Z", "2026-01-01T08:03:00Z"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_returns_missed_updates_and_long_polls() {
    let gw = start(settings()).await;
    let t = topic("avg_ticket_resolution_min", Period::Minute);
    let base = "/api/kpi/avg_ticket_resolution_min/updates";
    // No since: a snapshot.
    let (_, r) = gw.get(base).await;
    assert_eq!(r["kpi"], "avg_ticket_resolution_min");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(
        (
            msgs.len(),
            msgs[0]["type"].as_str(),
            msgs[0]["seq"].as_u64()
        ),
        (1, Some("snapshot"), Some(0))
    );

    publish_range(&gw.bus, &t, 1..=12).await;
    // Delivery to the gateway is asynchronous: a poll racing it would find
    // the gateway behind the client (since=5 > 0) and get nothing yet.
    eventually("the gateway has update 12", || async {
        gw.get(base).await.1["messages"][0]["seq"] == 12
    })
    .await;
    let (_, r) = gw.get(&format!("{base}?since=5")).await;
    let seqs: Vec<u64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=12).collect::<Vec<_>>());
    assert!(r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["type"] == "update"));

    // Up to date, no wait: empty at once.
    let (_, r) = gw.get(&format!("{base}?since=12")).await;
    assert_eq!(r["messages"], serde_json::json!([]));

    // Long poll: held until the next update arrives, holding interest meanwhile.
    let url = gw.url(&format!("{base}?since=12&wait=10"));
    let started = Instant::now();
    let poll = tokio::spawn(async move { kpi_test_support::http_get(&url).await });
    eventually("the poll holds a subscription", || async {
        memory(&gw.bus).live_subscriptions() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&gw.bus, &t, 13).await;
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, 200);
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["messages"][0]["seq"], 13);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing comes: returns empty after `wait` (capped by poll-max-wait).
    let started = Instant::now();
    let (_, r) = gw.get(&format!("{base}?since=13&wait=1")).await;
    assert_eq!(r["messages"], serde_json::json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.stop().await;
}
