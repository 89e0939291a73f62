//! `cadence` on every transport: throttled subscriptions hear at most once
//! per interval and get the newest value; `close` hears bucket boundaries and
//! corrections only; bad values are refused clearly.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use common::*;
use kpi_core::message::BucketView;
use kpi_core::{Period, Topic, UpdateMessage};
use serde_json::{json, Value};

/// Events published: 20 a second for 10 seconds.
const EVENTS: u64 = 200;

/// What each client saw after its first message: (arrival, seq, last value).
type Seen = Vec<(Instant, u64, f64)>;

fn seen(m: &Value) -> (Instant, u64, f64) {
    (
        Instant::now(),
        m["seq"].as_u64().unwrap(),
        m["stats"]["last"].as_f64().unwrap_or(f64::NAN),
    )
}

async fn ws_client(mut ws: Ws, until: Instant) -> Seen {
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "snapshot");
    let mut out = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match try_recv(&mut ws, left).await {
            Some(m) if m["type"] == "update" || m["type"] == "snapshot" => out.push(seen(&m)),
            Some(_) => {}
            None => break,
        }
    }
    out
}

async fn sse_client(mut sse: Sse, until: Instant) -> Seen {
    assert_eq!(sse.next_data().await.1["type"], "snapshot");
    let mut out = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, sse.next_data()).await {
            Ok((_, m)) => out.push(seen(&m)),
            Err(_) => break,
        }
    }
    out
}

async fn poll_client(gw_url: String, until: Instant) -> Seen {
    let path = "/api/kpi/throttled/updates?cadence=2s";
    let (_, first) = kpi_test_support::http_get(&format!("{gw_url}{path}")).await;
    let first: Value = serde_json::from_str(&first).unwrap();
    let mut since = first["messages"][0]["seq"].as_u64().unwrap();
    let mut out = Vec::new();
    while Instant::now() < until {
        let url = format!("{gw_url}{path}&since={since}&wait=3");
        let (status, body) = kpi_test_support::http_get(&url).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let msgs = v["messages"].as_array().unwrap();
        assert!(
            msgs.len() <= 1,
            "a throttled poll carries the newest only: {v}"
        );
        for m in msgs {
            out.push(seen(m));
            since = m["seq"].as_u64().unwrap();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadence_2s_gives_5_or_6_messages_on_every_transport_ending_with_the_newest() {
    let gw = start(settings()).await;
    let t = topic("throttled", Period::Minute);
    publish(&gw.bus, &t, 1).await;
    let ws = gw.ws("/ws/kpi/throttled?cadence=2s").await;
    let mux = gw
        .mux_subscribed("throttled", json!({"cadence":"2s"}))
        .await;
    let sse = Sse::open(gw.addr, "/sse/kpi/throttled?cadence=2s", None).await;
    assert_eq!(sse.status, 200);

    // Clients read until 4 s after the publisher is done (it may run late).
    let publisher = {
        let bus = gw.bus.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for seq in 2..=EVENTS + 1 {
                tick.tick().await;
                publish(&bus, &t, seq).await;
            }
            Instant::now()
        })
    };
    let until = Instant::now() + Duration::from_secs(16);
    let clients = [
        tokio::spawn(ws_client(ws, until)),
        tokio::spawn(ws_client(mux, until)),
        tokio::spawn(sse_client(sse, until)),
        tokio::spawn(poll_client(gw.url(""), until)),
    ];
    let last_event = publisher.await.unwrap();
    for (name, client) in ["ws/kpi", "ws mux", "sse", "poll"].into_iter().zip(clients) {
        let got = client.await.unwrap();
        let updates: Vec<&(Instant, u64, f64)> = got.iter().filter(|(_, s, _)| *s > 1).collect();
        assert!(
            (5..=6).contains(&updates.len()),
            "{name}: {} messages, want 5 or 6: {:?}",
            updates.len(),
            got.iter().map(|(_, s, _)| s).collect::<Vec<_>>()
        );
        let (at, seq, last) = updates.last().unwrap();
        assert_eq!(
            (*seq, *last),
            (EVENTS + 1, (EVENTS + 1) as f64),
            "{name}: the newest comes last"
        );
        let delay = at.saturating_duration_since(last_event);
        // 2 s by contract; the margin is for a loaded machine's scheduling.
        assert!(
            delay < Duration::from_millis(3500),
            "{name}: the newest came {delay:?} after the last event"
        );
        for pair in updates.windows(2) {
            assert!(pair[0].1 < pair[1].1, "{name}: never older after newer");
        }
    }
    gw.stop().await;
}

fn minute(m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, m, 0).unwrap()
}

/// An update in bucket `minute(m)`, its `previous` the given closed bucket.
fn in_bucket(t: &Topic, seq: u64, m: u32, previous: Option<BucketView>) -> UpdateMessage {
    let mut u = update(t, seq);
    u.bucket_start = minute(m);
    u.previous = previous;
    u
}

async fn put(gw: &Gateway, t: &Topic, u: &UpdateMessage) {
    gw.bus
        .publish_update(t, Bytes::from(u.to_json()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_hears_one_message_per_boundary_with_the_closed_minute_and_its_corrections() {
    let gw = start(settings()).await;
    let t = topic("closing", Period::Minute);
    let mut ws = gw.ws("/ws/kpi/closing?cadence=close").await;
    let mut mux = gw
        .mux_subscribed("closing", json!({"cadence":"close"}))
        .await;
    assert_eq!(recv(&mut ws).await["type"], "snapshot");
    assert_eq!(recv(&mut mux).await["type"], "snapshot");

    // Minute 0 runs to seq 3 and is recorded in history as the aggregator does.
    for seq in 1..=3 {
        put(&gw, &t, &in_bucket(&t, seq, 0, None)).await;
    }
    let closed = in_bucket(&t, 3, 0, None);
    gw.bus
        .publish_history(&t, Bytes::from(closed.to_json()))
        .await
        .unwrap();
    let prev = BucketView {
        bucket_start: minute(0),
        stats: closed.stats,
    };
    for seq in 4..=6 {
        put(&gw, &t, &in_bucket(&t, seq, 1, Some(prev))).await;
    }
    // A late event revises minute 0.
    let mut correction = in_bucket(&t, 7, 0, None);
    correction.correction = true;
    put(&gw, &t, &correction).await;
    put(&gw, &t, &in_bucket(&t, 8, 1, Some(prev))).await;

    let (_, history) = gw.get("/api/kpi/closing/history").await;
    let buckets = history["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "minute 0 only: {history}");
    let recorded = &buckets[0];
    assert_eq!(recorded["seq"], 3);
    for ws in [&mut ws, &mut mux] {
        let boundary = recv(ws).await;
        assert_eq!(
            boundary["seq"], 4,
            "the first update of minute 1: {boundary}"
        );
        assert_eq!(boundary["previous"]["stats"], recorded["stats"]);
        let late = recv(ws).await;
        assert_eq!(
            (late["seq"].as_u64(), late["correction"].as_bool()),
            (Some(7), Some(true))
        );
        assert!(
            try_recv(ws, Duration::from_millis(500)).await.is_none(),
            "nothing else inside minute 1"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn bad_cadences_are_refused_with_a_clear_error_on_every_transport() {
    let gw = start(settings()).await;
    for path in [
        "/api/kpi/k/updates?cadence=0s",
        "/api/kpi/k/updates?cadence=5m",
        "/sse/kpi/k?cadence=fast",
        "/ws/kpi/k?cadence=90000s",
        "/api/kpi/k/updates?cadence=-2s",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_cadence")),
            "{path}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("cadence"),
            "{body}"
        );
    }
    let mut mux = gw.ws("/ws").await;
    send(
        &mut mux,
        json!({"type":"subscribe","kpi":"k","period":"minute","cadence":"3h"}),
    )
    .await;
    let e = recv(&mut mux).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["kpi"].as_str()),
        (Some("error"), Some("invalid_cadence"), Some("k"))
    );
    // The socket stays usable: a good cadence subscribes.
    send(
        &mut mux,
        json!({"type":"subscribe","kpi":"k","period":"minute","cadence":"5s"}),
    )
    .await;
    assert_eq!(recv(&mut mux).await["type"], "subscribed");
    gw.stop().await;
}

#[tokio::test]
async fn a_throttled_resume_gets_the_newest_not_the_backlog() {
    let gw = start(settings()).await;
    let t = topic("resumed", Period::Minute);
    publish_range(&gw.bus, &t, 1..=20).await;
    let mut ws = gw.ws("/ws/kpi/resumed?since=3&cadence=5s").await;
    let m = recv(&mut ws).await;
    assert_eq!(m["seq"], 20);
    assert!(try_recv(&mut ws, Duration::from_millis(300))
        .await
        .is_none());
    let mut sse = Sse::open(gw.addr, "/sse/kpi/resumed?cadence=close", Some(3)).await;
    assert_eq!(sse.next_data().await.1["seq"], 20);
    let (_, v) = gw
        .get("/api/kpi/resumed/updates?since=3&cadence=1s&wait=5")
        .await;
    let seqs: Vec<_> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(20)]);
    gw.stop().await;
}
