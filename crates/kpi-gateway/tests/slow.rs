//! Slow and stuck clients: bounded queues, conflation to the latest value, 4008 when stuck.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use kpi_core::Period;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client whose receive buffer is tiny, so that when it stops
/// reading the server's writer blocks quickly (instead of the kernel
/// absorbing megabytes).
async fn tight_ws(gw: &Gateway, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        gw.ws_url(path),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_the_latest_value_and_bounded_memory() {
    let gw = start(kpi_gateway::GatewaySettings {
        queue_capacity: 16,
        stuck_timeout: Duration::from_secs(600),
        ..settings()
    })
    .await;
    let t = topic("orders_per_minute", Period::Minute);
    let mut ws = tight_ws(&gw, "/ws/kpi/orders_per_minute").await;
    assert_eq!(recv(&mut ws).await["seq"], 0);
    // The client reads nothing while 20,000 updates flow.
    publish_range(&gw.bus, &t, 1..=20_000).await;
    eventually("updates were conflated, not queued", || async {
        metric(&gw.metrics().await, "kpi_gateway_conflated_total") > 0.0
    })
    .await;
    // Reading again: strictly increasing seqs (never older, never twice), ending at the true latest.
    let mut last = 0;
    let mut received = 0;
    while last < 20_000 {
        let m = recv(&mut ws).await;
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last, "seq {seq} after {last}");
        assert_eq!(m["stats"]["last"], seq as f64);
        last = seq;
        received += 1;
    }
    assert!(
        received < 20_000,
        "intermediate updates were conflated ({received} received)"
    );
    assert!(
        try_recv(&mut ws, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing after the latest"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stuck_past_the_timeout_is_closed_4008() {
    let gw = start(kpi_gateway::GatewaySettings {
        queue_capacity: 16,
        stuck_timeout: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        ..settings()
    })
    .await;
    let t = topic("active_users", Period::Minute);
    let mut stuck = tight_ws(&gw, "/ws/kpi/active_users").await;
    let mut healthy = gw.ws("/ws/kpi/active_users").await;
    assert_eq!(recv(&mut stuck).await["seq"], 0);
    // Updates flow while the stuck client reads nothing, until the gateway
    // has closed it (or 30 s pass): far more than the kernel's socket buffers
    // hold, so its writer blocks and its queue stays full past the 1 s stuck
    // timeout. Publishing until then, not for a fixed time, keeps this true
    // on a loaded machine where publishing is slow.
    let bus = gw.bus.clone();
    let metrics_url = gw.url("/metrics");
    let publisher = tokio::spawn(async move {
        let t = topic("active_users", Period::Minute);
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut check = tokio::time::Instant::now();
        let mut seq = 0;
        while tokio::time::Instant::now() < until {
            seq += 1;
            publish(&bus, &t, seq).await;
            if seq % 64 == 0 {
                tokio::task::yield_now().await;
            }
            if check.elapsed() >= Duration::from_millis(250) {
                check = tokio::time::Instant::now();
                let page = kpi_test_support::http_get(&metrics_url).await.1;
                if metric(&page, "kpi_gateway_slow_consumers_closed_total") >= 1.0 {
                    break;
                }
            }
        }
        seq
    });
    let reader = tokio::spawn(async move {
        let mut last = 0;
        loop {
            match try_recv(&mut healthy, Duration::from_secs(1)).await {
                Some(m) => last = m["seq"].as_u64().unwrap(),
                None => return (healthy, last),
            }
        }
    });
    let final_seq = publisher.await.unwrap();
    let (code, seen) = recv_close(&mut stuck, Duration::from_secs(10)).await;
    assert_eq!(code, Some(4008));
    let last = seen.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["code"].as_str()),
        (Some("error"), Some("slow_consumer"))
    );
    assert!(
        metric(
            &gw.metrics().await,
            "kpi_gateway_slow_consumers_closed_total"
        ) >= 1.0
    );
    // The client that kept reading is unaffected.
    let (mut healthy, last) = reader.await.unwrap();
    assert_eq!(last, final_seq, "the reading client got the latest value");
    publish(&gw.bus, &t, final_seq + 1).await;
    assert_eq!(recv(&mut healthy).await["seq"], final_seq + 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_websocket_with_1012_and_returns_within_the_drain() {
    let gw = start(settings()).await;
    let drain = Duration::from_secs(2);
    let mut clients = Vec::new();
    for path in ["/ws/kpi/a", "/ws/kpi/b?period=day", "/ws", "/ws"] {
        clients.push(gw.ws(path).await);
    }
    let mut sse = Sse::open(gw.addr, "/sse/kpi/a", None).await;
    assert_eq!(sse.next_data().await.1["seq"], 0);
    let poll_url = gw.url("/api/kpi/c/updates?since=0&wait=30");
    let poll = tokio::spawn(async move { kpi_test_support::http_get(&poll_url).await });
    eventually("the poll is waiting", || async {
        memory(&gw.bus).live_subscriptions() == 3
    })
    .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => continue,
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    gw.shutdown.trigger();
    let result = tokio::time::timeout(drain + Duration::from_secs(1), gw.task)
        .await
        .expect("run returned within the drain time")
        .unwrap();
    assert!(result.is_ok());
    assert!(
        started.elapsed() <= drain + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    for r in readers {
        assert_eq!(r.await.unwrap(), Some(1012));
    }
    let (status, _) = poll.await.unwrap();
    assert_eq!(status, 200, "the long poll was answered");
    // The SSE stream ended.
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        use tokio::io::AsyncReadExt;
        loop {
            match sse_stream(&mut sse).read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "SSE stream closed");
    // Nothing is accepted any more.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

fn sse_stream(sse: &mut Sse) -> &mut tokio::net::TcpStream {
    sse.stream_mut()
}
