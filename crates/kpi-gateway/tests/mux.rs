//! `/ws`: the dashboard socket's protocol, its errors and its limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::SinkExt;
use kpi_core::Period;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_switch_period_pause_resume_ping() {
    let gw = start(settings()).await;
    let minute = topic("failed_payments", Period::Minute);
    let hour = topic("failed_payments", Period::Hour);
    publish_range(&gw.bus, &minute, 1..=3).await;
    publish_range(&gw.bus, &hour, 1..=7).await;
    let mut ws = gw.ws("/ws").await;

    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "failed_payments", "period": "minute"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "kpi": "failed_payments", "period": "minute"})
    );
    let snap = recv(&mut ws).await;
    assert_eq!(
        (snap["type"].as_str(), snap["seq"].as_u64()),
        (Some("snapshot"), Some(3))
    );
    publish(&gw.bus, &minute, 4).await;
    assert_eq!(recv(&mut ws).await["seq"], 4);

    // Period switch on the same socket: unsubscribe + subscribe.
    send(
        &mut ws,
        json!({"type": "unsubscribe", "kpi": "failed_payments", "period": "minute"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "unsubscribed", "kpi": "failed_payments", "period": "minute"})
    );
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "failed_payments", "period": "hour"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    let snap = recv(&mut ws).await;
    assert_eq!(
        (snap["period"].as_str(), snap["seq"].as_u64()),
        (Some("hour"), Some(7))
    );
    publish(&gw.bus, &minute, 5).await;
    publish(&gw.bus, &hour, 8).await;
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["period"].as_str(), m["seq"].as_u64()),
        (Some("hour"), Some(8)),
        "no minute update after unsubscribe"
    );

    // Pause one subscription: nothing arrives; resume: the latest, once.
    send(
        &mut ws,
        json!({"type": "pause", "kpi": "failed_payments", "period": "hour"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "paused", "kpi": "failed_payments", "period": "hour"})
    );
    publish_range(&gw.bus, &hour, 9..=15).await;
    assert!(try_recv(&mut ws, QUIET).await.is_none(), "paused");
    send(
        &mut ws,
        json!({"type": "resume", "kpi": "failed_payments", "period": "hour"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "resumed");
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("update"), Some(15))
    );
    assert!(try_recv(&mut ws, QUIET).await.is_none());

    // Pause the whole connection.
    send(&mut ws, json!({"type": "pause"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "paused"}));
    publish(&gw.bus, &hour, 16).await;
    // Control replies still flow while paused.
    send(&mut ws, json!({"type": "ping", "id": "abc"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": "abc"}));
    send(&mut ws, json!({"type": "resume"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "resumed"}));
    assert_eq!(recv(&mut ws).await["seq"], 16);
    // Resuming with nothing new sends nothing.
    send(&mut ws, json!({"type": "resume"})).await;
    assert_eq!(recv(&mut ws).await["type"], "resumed");
    assert!(try_recv(&mut ws, QUIET).await.is_none());

    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": null}));

    // Resume with since on the mux socket.
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "failed_payments", "period": "minute", "since": 3}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["seq"], 4);
    assert_eq!(recv(&mut ws).await["seq"], 5);
    gw.stop().await;
}

#[tokio::test]
async fn errors_keep_the_connection_open() {
    let gw = start(kpi_gateway::GatewaySettings {
        max_subscriptions: 2,
        ..settings()
    })
    .await;
    let mut ws = gw.ws("/ws").await;
    let expect = async |ws: &mut Ws, code: &str| {
        let m = recv(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["code"].as_str()),
            (Some("error"), Some(code)),
            "{m}"
        );
        m
    };
    ws.send(Message::text("{not json")).await.unwrap();
    expect(&mut ws, "bad_message").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    expect(&mut ws, "bad_message").await;
    send(&mut ws, json!({"type": "explode"})).await;
    expect(&mut ws, "unknown_type").await;
    send(&mut ws, json!({"kpi": "a"})).await;
    expect(&mut ws, "bad_message").await;
    send(&mut ws, json!({"type": "subscribe", "kpi": "a"})).await;
    expect(&mut ws, "bad_message").await;
    let m = {
        send(
            &mut ws,
            json!({"type": "unsubscribe", "kpi": "a", "period": "day"}),
        )
        .await;
        expect(&mut ws, "not_subscribed").await
    };
    assert_eq!(
        (m["kpi"].as_str(), m["period"].as_str()),
        (Some("a"), Some("day"))
    );
    send(
        &mut ws,
        json!({"type": "pause", "kpi": "a", "period": "day"}),
    )
    .await;
    expect(&mut ws, "not_subscribed").await;

    for code in ["s1", "s2"] {
        send(
            &mut ws,
            json!({"type": "subscribe", "kpi": code, "period": "minute"}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        assert_eq!(recv(&mut ws).await["type"], "snapshot");
    }
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "s3", "period": "minute"}),
    )
    .await;
    let m = expect(&mut ws, "too_many_subscriptions").await;
    assert_eq!(m["kpi"], "s3");
    assert_eq!(memory(&gw.bus).live_subscriptions(), 2);
    // Subscribing again to a held topic is not a third subscription.
    send(
        &mut ws,
        json!({"type": "subscribe", "kpi": "s2", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["type"], "snapshot");
    send(&mut ws, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    drop(ws);
    eventually("subscriptions released with the socket", || async {
        memory(&gw.bus).live_subscriptions() == 0
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_then_flooding_closes_1008() {
    let gw = start(kpi_gateway::GatewaySettings {
        max_messages_per_sec: 5,
        ..settings()
    })
    .await;
    let mut ws = gw.ws("/ws").await;
    // Burst of 10 allowed, the 11th and 12th refused (one rate_limited reply per second).
    for i in 0..12 {
        send(&mut ws, json!({"type": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(m) = try_recv(&mut ws, QUIET).await {
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if m["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    assert_eq!((pongs, limited), (10, 1));
    // Still open after a pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut ws, json!({"type": "ping", "id": "later"})).await;
    assert_eq!(recv(&mut ws).await["id"], "later");

    // Flooding far beyond the limit: closed with 1008.
    let mut flood = gw.ws("/ws").await;
    for i in 0..200 {
        if flood
            .send(Message::text(json!({"type": "ping", "id": i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, _) = recv_close(&mut flood, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1008));
    // The first client is unaffected.
    send(&mut ws, json!({"type": "ping", "id": "after"})).await;
    assert_eq!(recv(&mut ws).await["id"], "after");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_1009_and_spares_others() {
    let gw = start(kpi_gateway::GatewaySettings {
        max_frame_bytes: 1024,
        ..settings()
    })
    .await;
    let t = topic("inventory_turnover", Period::Minute);
    let mut other = gw.ws("/ws").await;
    send(
        &mut other,
        json!({"type": "subscribe", "kpi": "inventory_turnover", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut other).await["type"], "subscribed");
    assert_eq!(recv(&mut other).await["type"], "snapshot");

    let mut big = gw.ws("/ws").await;
    let huge = json!({"type": "ping", "id": "x".repeat(4096)}).to_string();
    big.send(Message::text(huge)).await.unwrap();
    let (code, _) = recv_close(&mut big, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1009));

    publish(&gw.bus, &t, 1).await;
    assert_eq!(recv(&mut other).await["seq"], 1);
    send(&mut other, json!({"type": "ping", "id": 2})).await;
    assert_eq!(recv(&mut other).await["type"], "pong");
    gw.stop().await;
}

#[tokio::test]
async fn connection_limit_is_503_before_the_upgrade() {
    let gw = start(kpi_gateway::GatewaySettings {
        max_connections: 1,
        ..settings()
    })
    .await;
    let _first = gw.ws("/ws").await;
    for path in ["/ws", "/ws/kpi/abc"] {
        match tokio_tungstenite::connect_async(gw.ws_url(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["code"], "too_many_connections");
            }
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
    }
    let (status, body) = gw.get("/sse/kpi/abc").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("too_many_connections"))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_together_are_not_pinged_together() {
    let gw = start(kpi_gateway::GatewaySettings {
        ping_interval: Duration::from_secs(1),
        ..settings()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..40 {
        let ws = gw.ws("/ws").await;
        clients.push((tokio::time::Instant::now(), ws));
    }
    // Each client's first ping, counted from when that client connected.
    let firsts = futures::future::join_all(clients.iter_mut().map(|(opened, ws)| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(ws)).await {
                Ok(Some(Ok(Message::Ping(_)))) => return opened.elapsed(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no ping within 5 s: {other:?}"),
            }
        }
    }))
    .await;
    let (earliest, latest) = (
        firsts.iter().min().copied().unwrap_or_default(),
        firsts.iter().max().copied().unwrap_or_default(),
    );
    // First pings fall in the second half of the interval, spread out.
    assert!(
        latest - earliest >= Duration::from_millis(250),
        "first pings within {:?} of each other",
        latest - earliest
    );
    assert!(
        latest <= Duration::from_millis(2500),
        "a first ping came late: {latest:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_and_reaps_silent_peers() {
    let gw = start(kpi_gateway::GatewaySettings {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..settings()
    })
    .await;
    // A reading client answers pings (tungstenite pongs while reading) and stays.
    let mut alive = gw.ws("/ws").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout_at(until, futures::StreamExt::next(&mut alive)).await
    {
        if matches!(msg, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "server pings every interval ({pings})");
    send(&mut alive, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv(&mut alive).await["type"], "pong");

    // A client that reads nothing never pongs: reaped after the idle timeout.
    let mut silent = gw.ws("/ws/kpi/x").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (code, _) = recv_close(&mut silent, Duration::from_secs(5)).await;
    assert_eq!(code, Some(1001));
    gw.stop().await;
}
