//! The gateway's guarantees over a real nats-server: same values on every transport, resume, races, slow clients, limits, drain.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use kpi_bus::{Bus, BusConfig};
use kpi_core::{Period, Topic};
use kpi_test_support::{free_port, NatsServer, Service};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn nats_bus(nats: &NatsServer) -> Bus {
    Bus::connect_nats(&nats.url(), BusConfig::default())
        .await
        .unwrap()
}

/// (seq, last) of a data message.
fn point(v: &Value) -> (u64, u64) {
    (
        v["seq"].as_u64().unwrap(),
        v["stats"]["last"].as_f64().unwrap_or(0.0) as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_delivers_the_same_sequence() {
    let nats = NatsServer::start();
    let gw = start_on(nats_bus(&nats).await, settings()).await;
    let t = topic("same_everywhere", Period::Minute);
    publish(&gw.bus, &t, 1).await;

    let mut single = gw.ws("/ws/kpi/same_everywhere?period=minute").await;
    let mut mux = gw.ws("/ws").await;
    send(
        &mut mux,
        json!({"type":"subscribe","kpi":"same_everywhere","period":"minute"}),
    )
    .await;
    assert_eq!(recv(&mut mux).await["type"], "subscribed");
    let mut sse = Sse::open(gw.addr, "/sse/kpi/same_everywhere?period=minute", None).await;

    let mut ws_seen = vec![point(&recv(&mut single).await)];
    let mut mux_seen = vec![point(&recv(&mut mux).await)];
    let mut sse_seen = vec![point(&sse.next_data().await.1)];
    // Polling starts from the same snapshot and follows with since=.
    let poll = tokio::spawn({
        let url = gw.url("/api/kpi/same_everywhere/updates?period=minute");
        async move {
            let mut seen = vec![];
            let mut since = 0;
            while since < 200 {
                let (_, body) =
                    kpi_test_support::http_get(&format!("{url}&since={since}&wait=5")).await;
                let v: Value = serde_json::from_str(&body).unwrap();
                for m in v["messages"].as_array().unwrap() {
                    let p = point(m);
                    since = p.0;
                    seen.push(p);
                }
            }
            seen
        }
    });
    publish_range(&gw.bus, &t, 2..=200).await;
    for (seen, ws) in [(&mut ws_seen, &mut single), (&mut mux_seen, &mut mux)] {
        while seen.last().unwrap().0 < 200 {
            seen.push(point(&recv(ws).await));
        }
    }
    while sse_seen.last().unwrap().0 < 200 {
        sse_seen.push(point(&sse.next_data().await.1));
    }
    let want: Vec<(u64, u64)> = (1..=200).map(|s| (s, s)).collect();
    assert_eq!(ws_seen, want, "/ws/kpi");
    assert_eq!(mux_seen, want, "/ws");
    assert_eq!(sse_seen, want, "SSE");
    assert_eq!(poll.await.unwrap(), want, "polling");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gets_exactly_what_was_missed_or_one_snapshot() {
    let nats = NatsServer::start();
    let gw = start_on(nats_bus(&nats).await, settings()).await;
    let t = topic("resumable", Period::Hour);
    publish_range(&gw.bus, &t, 1..=10).await;
    let mut ws = gw.ws("/ws/kpi/resumable?period=hour").await;
    assert_eq!(point(&recv(&mut ws).await).0, 10);
    drop(ws);
    // Long enough for the gateway to drop its subscription: the resume must
    // come from what NATS stored, not from the gateway's memory.
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish_range(&gw.bus, &t, 11..=60).await;
    let mut ws = gw.ws("/ws/kpi/resumable?period=hour&since=10").await;
    for want in 11..=60 {
        let m = recv(&mut ws).await;
        assert_eq!((m["type"].as_str(), point(&m).0), (Some("update"), want));
    }
    publish(&gw.bus, &t, 61).await;
    assert_eq!(
        point(&recv(&mut ws).await).0,
        61,
        "live after the missed ones"
    );
    drop(ws);

    tokio::time::sleep(Duration::from_millis(400)).await;
    publish_range(&gw.bus, &t, 62..=400).await; // more than the 256 kept per topic
    let mut ws = gw.ws("/ws/kpi/resumable?period=hour&since=61").await;
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(point(&first).0, 400);
    publish(&gw.bus, &t, 401).await;
    let next = recv(&mut ws).await;
    assert_eq!(
        (next["type"].as_str(), point(&next).0),
        (Some("update"), 401)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_while_a_1000_per_second_publisher_runs_never_misses_or_repeats() {
    let nats = NatsServer::start();
    let gw = start_on(nats_bus(&nats).await, settings()).await;
    let t = topic("racing", Period::Minute);
    let publisher = tokio::spawn({
        let bus = gw.bus.clone();
        let t = t.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for seq in 1..=60_000 {
                tick.tick().await;
                publish(&bus, &t, seq).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for round in 0..100 {
        let mut ws = gw.ws("/ws/kpi/racing?period=minute").await;
        let snap = recv(&mut ws).await;
        assert_eq!(snap["type"], "snapshot");
        let mut last = point(&snap).0;
        for _ in 0..15 {
            let m = recv(&mut ws).await;
            let seq = point(&m).0;
            assert_eq!(seq, last + 1, "round {round}: after {last} came {seq}");
            last = seq;
        }
    }
    publisher.abort();
    gw.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The stated bound: a client that stops reading costs the gateway at most this much, whatever the rate.
const SLOW_CLIENT_RSS_BOUND_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_keeps_gateway_memory_bounded_and_ends_on_the_latest() {
    let nats = NatsServer::start();
    let bus = nats_bus(&nats).await;
    let port = free_port();
    let gw = Service::spawn(
        "kpi-gateway",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--stuck-timeout-secs",
            "60",
        ],
        &[("NATS_URL", &nats.url())],
    );
    gw.wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    let topics: Vec<Topic> = (0..10)
        .map(|i| topic(&format!("slow_{i}"), Period::Minute))
        .collect();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    for t in &topics {
        send(
            &mut ws,
            json!({"type":"subscribe","kpi":t.code.as_str(),"period":"minute"}),
        )
        .await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        assert_eq!(recv(&mut ws).await["type"], "snapshot");
    }
    let baseline = rss_kib(gw.pid());
    let started = Instant::now();
    let mut peak = baseline;
    // 20,000 updates with large-ish payloads while the client reads nothing.
    for seq in 1..=2000u64 {
        for t in &topics {
            publish(&bus, t, seq).await;
        }
        if seq % 100 == 0 {
            peak = peak.max(rss_kib(gw.pid()));
        }
    }
    while started.elapsed() < Duration::from_secs(10) {
        peak = peak.max(rss_kib(gw.pid()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < SLOW_CLIENT_RSS_BOUND_KIB,
        "gateway RSS grew by {growth} KiB (baseline {baseline} KiB) for one stuck client"
    );
    // Reading again: every subscription ends on the true latest value.
    let mut latest: std::collections::HashMap<String, u64> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while latest.len() < topics.len() || latest.values().any(|s| *s < 2000) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("caught up in time")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if let Some(seq) = v["seq"].as_u64() {
                let prev = latest
                    .insert(v["kpi"].as_str().unwrap().to_string(), seq)
                    .unwrap_or(0);
                assert!(seq > prev, "{} went from {prev} to {seq}", v["kpi"]);
                assert_eq!(v["stats"]["last"].as_f64(), Some(seq as f64));
            }
        }
    }
    eprintln!("slow client: gateway RSS baseline {baseline} KiB, peak growth {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_answers_with_its_error_and_others_keep_receiving() {
    let nats = NatsServer::start();
    let s = kpi_gateway::GatewaySettings {
        max_subscriptions: 2,
        max_messages_per_sec: 5,
        max_frame_bytes: 1024,
        max_connections: 4,
        ..settings()
    };
    let gw = start_on(nats_bus(&nats).await, s).await;
    let t = topic("bystander", Period::Minute);
    let mut bystander = gw.ws("/ws/kpi/bystander?period=minute").await;
    recv(&mut bystander).await;

    let mut c = gw.ws("/ws").await;
    for k in ["a1", "a2", "a3"] {
        send(
            &mut c,
            json!({"type":"subscribe","kpi":k,"period":"minute"}),
        )
        .await;
    }
    let mut codes = vec![];
    while codes.is_empty() {
        let m = recv(&mut c).await;
        if m["type"] == "error" {
            codes.push(m["code"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(codes, ["too_many_subscriptions"]);
    send(&mut c, json!({"type":"launch_missiles"})).await;
    loop {
        let m = recv(&mut c).await;
        if m["type"] == "error" {
            assert_eq!(m["code"], "unknown_type");
            break;
        }
    }
    for _ in 0..30 {
        send(&mut c, json!({"type":"ping"})).await;
    }
    loop {
        let m = recv(&mut c).await;
        if m["type"] == "error" {
            assert_eq!(m["code"], "rate_limited");
            break;
        }
    }
    let mut big = gw.ws("/ws").await;
    big.send(Message::text("x".repeat(4096))).await.unwrap();
    let (code, _) = recv_close(&mut big, STEP).await;
    assert_eq!(code, Some(1009));

    // Fill the connection limit: bystander + c + two more; the next is refused.
    let _x = gw.ws("/ws").await;
    let _y = gw.ws("/ws").await;
    let refused = tokio_tungstenite::connect_async(gw.ws_url("/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!(
            "connection over the limit accepted: {:?}",
            other.map(|_| ())
        ),
    }
    publish(&gw.bus, &t, 1).await;
    let m = recv(&mut bystander).await;
    assert_eq!(point(&m).0, 1, "the bystander stopped receiving");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_500_clients_closes_all_with_1012_and_exits_0() {
    let nats = NatsServer::start();
    let port = free_port();
    let mut gw = Service::spawn(
        "kpi-gateway",
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--drain-secs",
            "10",
        ],
        &[("NATS_URL", &nats.url()), ("RUST_LOG", "warn")],
    );
    gw.wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(20),
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..500 {
        let url = format!(
            "ws://127.0.0.1:{port}/ws/kpi/drain_{}?period=minute",
            i % 20
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        recv(&mut ws).await;
        clients.push(ws);
    }
    let started = Instant::now();
    gw.terminate();
    // Readiness must fail while the clients are still connected, so a
    // balancer stops sending new ones here before these are sent away.
    let unready = tokio::spawn(async move {
        loop {
            let r = kpi_test_support::try_http_get(
                &format!("http://127.0.0.1:{port}/readyz"),
                Duration::from_secs(1),
            )
            .await;
            if !matches!(r, Ok((200, _))) {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let closes = futures::future::join_all(clients.iter_mut().map(|ws| async move {
        let r = recv_close(ws, Duration::from_secs(15)).await;
        let at = Instant::now();
        // Finish the closing handshake as a browser would, so the drain can
        // complete instead of running out its time.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while ws.next().await.is_some() {}
        })
        .await;
        (r, at)
    }))
    .await;
    let first_close = closes.iter().map(|(_, at)| *at).min().expect("500 clients");
    let unready_at = unready.await.unwrap();
    assert!(
        unready_at < first_close,
        "/readyz still passed when the first client was closed"
    );
    let codes: Vec<Option<u16>> = closes.into_iter().map(|((c, _), _)| c).collect();
    assert!(
        codes.iter().all(|c| *c == Some(1012)),
        "close codes: {:?}",
        codes
            .iter()
            .filter(|c| **c != Some(1012))
            .collect::<Vec<_>>()
    );
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("gateway exited");
    assert!(status.success(), "exit status {status:?}\n{}", gw.logs());
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    // The drain is 10 s: finishing well before it means every connection
    // really closed, rather than being dropped when time ran out.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "drain took {:?}",
        started.elapsed()
    );
}
