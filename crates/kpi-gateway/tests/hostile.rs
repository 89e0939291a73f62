//! Codes that are not KPI codes are refused at every entry point, and subscribe nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

/// As they appear in a URL path (percent-encoded where a URL needs it) and as plain strings.
fn hostile() -> Vec<(String, String)> {
    let long = "x".repeat(65);
    vec![
        ("a.b".into(), "a.b".into()),
        ("*".into(), "*".into()),
        ("%3E".into(), ">".into()),
        ("%252A".into(), "%2A".into()),
        ("a%20b".into(), "a b".into()),
        ("%C3%A9".into(), "é".into()),
        ("a%00b".into(), "a\0b".into()),
        ("%FF".into(), "\u{fffd}".into()),
        (long.clone(), long),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_codes_are_refused_everywhere() {
    let gw = start(settings()).await;
    for (in_url, raw) in hostile() {
        for path in [
            format!("/api/kpi/{in_url}"),
            format!("/api/kpi/{in_url}/history"),
            format!("/api/kpi/{in_url}/updates?wait=1"),
            format!("/sse/kpi/{in_url}"),
            format!("/ws/kpi/{in_url}"),
        ] {
            let (status, body) = gw.get(&path).await;
            assert_eq!(status, 400, "{path}");
            assert_eq!(body["type"], "error", "{path}");
            assert_eq!(body["code"], "invalid_kpi", "{path}: {body}");
        }
        // A real WebSocket handshake is refused before the upgrade, with the same body.
        let err = tokio_tungstenite::connect_async(gw.ws_url(&format!("/ws/kpi/{in_url}")))
            .await
            .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 400);
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["code"], "invalid_kpi");
            }
            other => panic!("expected an HTTP 400, got {other}"),
        }
        let mut ws = gw.ws("/ws").await;
        send(
            &mut ws,
            json!({"type": "subscribe", "kpi": raw, "period": "minute"}),
        )
        .await;
        let reply = recv(&mut ws).await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "invalid_kpi", "{raw:?}");
        assert!(reply["kpi"].is_string() && reply["period"] == "minute");
        // The connection is still usable.
        send(&mut ws, json!({"type": "ping", "id": 7})).await;
        assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": 7}));
    }
    assert_eq!(memory(&gw.bus).live_subscriptions(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn bad_periods_and_parameters_are_400() {
    let gw = start(settings()).await;
    for path in [
        "/api/kpi/ok?period=week",
        "/api/kpi/ok/history?period=MINUTE",
        "/api/kpi/ok/updates?period=",
        "/sse/kpi/ok?period=year",
        "/ws/kpi/ok?period=second",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_period")),
            "{path}"
        );
    }
    for path in [
        "/api/kpi/ok/history?limit=0",
        "/api/kpi/ok/history?limit=1501",
        "/api/kpi/ok/history?limit=ten",
        "/api/kpi/ok/updates?since=-1",
        "/api/kpi/ok/updates?wait=soon",
        "/ws/kpi/ok?since=x",
    ] {
        let (status, body) = gw.get(path).await;
        assert_eq!(
            (status, body["type"].as_str()),
            (400, Some("error")),
            "{path}"
        );
    }
    let mut ws = gw.ws("/ws").await;
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "ok", "period": "week"}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["code"], "invalid_period");
    assert_eq!(
        (reply["kpi"].as_str(), reply["period"].as_str()),
        (Some("ok"), Some("week"))
    );
    assert_eq!(memory(&gw.bus).live_subscriptions(), 0);
    gw.stop().await;
}
