//! Caps on distinct topics: per caller (token subject, or address when
//! anonymous) and per gateway, each with a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use kpi_core::Period;
use kpi_gateway::GatewaySettings;
use serde_json::json;

/// Subscribes on `/ws` and reads the reply and the snapshot.
async fn subscribe_ok(ws: &mut Ws, code: &str) {
    send(
        ws,
        json!({"type": "subscribe", "kpi": code, "period": "minute"}),
    )
    .await;
    assert_eq!(recv(ws).await["type"], "subscribed");
    assert_eq!(recv(ws).await["type"], "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_topics_are_capped_per_caller_with_a_clear_error() {
    let gw = start(GatewaySettings {
        max_topics_per_caller: 2,
        ..settings()
    })
    .await;
    let mut ws = gw.ws("/ws").await;
    for code in ["a", "b"] {
        subscribe_ok(&mut ws, code).await;
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "c", "period": "minute"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["kpi"].as_str()),
        (Some("error"), Some("too_many_topics"), Some("c")),
        "{e}"
    );
    // The same caller (this address) on other transports: refused too.
    let sse = raw_request(gw.addr, "GET", "/sse/kpi/c", &[]).await;
    assert_eq!(
        (sse.status, sse.json()["code"].clone()),
        (429, json!("too_many_topics"))
    );
    let poll = raw_request(gw.addr, "GET", "/api/kpi/c/updates?wait=0", &[]).await;
    assert_eq!(
        (poll.status, poll.json()["code"].clone()),
        (429, json!("too_many_topics"))
    );
    // A topic already watched costs nothing more; one given up frees its place.
    let poll = raw_request(gw.addr, "GET", "/api/kpi/a/updates?wait=0", &[]).await;
    assert_eq!(poll.status, 200);
    send(
        &mut ws,
        json!({"type": "unsubscribe", "kpi": "b", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "unsubscribed");
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "c", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_holds_at_most_its_topic_cap_and_evicts_lingering_ones_first() {
    let gw = start(GatewaySettings {
        max_topics: 2,
        linger: Duration::from_secs(60),
        ..settings()
    })
    .await;
    let held = || memory(&gw.bus).live_subscriptions();
    let mut ws = gw.ws("/ws").await;
    for code in ["a", "b"] {
        subscribe_ok(&mut ws, code).await;
    }
    // Both watched: a third is refused, the gateway is full.
    let poll = raw_request(gw.addr, "GET", "/api/kpi/c/updates?wait=0", &[]).await;
    assert_eq!(
        (poll.status, poll.json()["code"].clone()),
        (503, json!("topic_limit"))
    );
    assert_eq!(held(), 2);
    // `a` is only lingering now: it makes room for new topics.
    send(
        &mut ws,
        json!({"type": "unsubscribe", "kpi": "a", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "unsubscribed");
    for code in ["c", "d", "e"] {
        let path = format!("/api/kpi/{code}/updates?wait=0");
        let poll = raw_request(gw.addr, "GET", &path, &[]).await;
        assert_eq!(poll.status, 200, "{code}: {}", poll.body);
        assert!(held() <= 2, "{} upstream subscriptions", held());
    }
    // The watched one was never evicted: it still delivers.
    publish(&gw.bus, &topic("b", Period::Minute), 1).await;
    assert_eq!(recv(&mut ws).await["seq"], 1);
    gw.stop().await;
}
