//! Edge defects, each pinned by the test that showed it: ping ids, ping
//! floods, stuck SSE readers, resumes past the latest seq, admin bodies,
//! close frames, handshake checks and CORS on the HTTP transports.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::SinkExt;
use kpi_core::Period;
use kpi_gateway::security::auth::JwtSettings;
use kpi_gateway::GatewaySettings;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_id_is_bounded() {
    let gw = start(settings()).await;
    let mut ws = gw.ws("/ws").await;
    send(&mut ws, json!({"type": "ping", "id": "x".repeat(10_000)})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_message")),
        "a 10 kB id must not be echoed: {} bytes back",
        reply.to_string().len()
    );
    // A short id still comes back.
    send(&mut ws, json!({"type": "ping", "id": "abc"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong", "id": "abc"}));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_frames_and_ignored_messages_count_against_the_message_rate() {
    let gw = start(GatewaySettings {
        max_messages_per_sec: 5,
        ..settings()
    })
    .await;
    for path in ["/ws", "/ws/kpi/sales_eu"] {
        let mut ws = gw.ws(path).await;
        for i in 0..200u32 {
            let m = if path == "/ws" {
                Message::Ping(i.to_be_bytes().to_vec().into())
            } else {
                Message::text("hello")
            };
            if ws.send(m).await.is_err() {
                break;
            }
        }
        let (code, _) = recv_close(&mut ws, STEP).await;
        assert_eq!(code, Some(1008), "{path}: flooding closes with 1008");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_closed() {
    let gw = start(GatewaySettings {
        queue_capacity: 4,
        stuck_timeout: Duration::from_secs(1),
        ..settings()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /sse/kpi/busy HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // Updates for 6 s while this client reads nothing: the socket buffers
    // must fill before the queue can stall, and with 3 s an unloaded machine
    // only just filled them (measured: stalled after 2.5 s).
    let t = topic("busy", Period::Minute);
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut seq = 0;
    while tokio::time::Instant::now() < until {
        seq += 1;
        publish(&gw.bus, &t, seq).await;
        if seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Now reading: what was buffered comes, then the end of the stream.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a stuck SSE client keeps its connection");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_the_latest_seq_gets_a_snapshot() {
    let gw = start(settings()).await;
    let t = topic("reset", Period::Minute);
    publish_range(&gw.bus, &t, 1..=3).await;
    // The client saw seq 10 before the aggregator's seq went back (a reset).
    let mut ws = gw.ws("/ws/kpi/reset?since=10").await;
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("snapshot"), Some(3))
    );
    let mut mux = gw.ws("/ws").await;
    send(
        &mut mux,
        json!({"type": "subscribe", "kpi": "reset", "period": "minute", "since": 10}),
    )
    .await;
    assert_eq!(recv(&mut mux).await["type"], "subscribed");
    let m = recv(&mut mux).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("snapshot"), Some(3))
    );
    let mut sse = Sse::open(gw.addr, "/sse/kpi/reset", Some(10)).await;
    let (id, m) = sse.next_data().await;
    assert_eq!((id.as_str(), m["type"].as_str()), ("3", Some("snapshot")));
    let (status, body) = gw.get("/api/kpi/reset/updates?since=10&wait=0").await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"][0]["type"], "snapshot", "{body}");
    assert_eq!(body["messages"][0]["seq"], 3, "{body}");
    gw.stop().await;
}

const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";

fn admin_token() -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "root", "exp": exp, "admin": true}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_are_read_after_the_admin_check_and_under_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let gw = start(GatewaySettings {
        jwt: JwtSettings {
            hs256_secret_file: Some(secret),
            ..JwtSettings::default()
        },
        ..settings()
    })
    .await;
    // A body announced and never sent: without a token the answer must not wait for it.
    let r = raw_request(
        gw.addr,
        "POST",
        "/api/admin/broadcast",
        &[
            ("Content-Length", "100"),
            ("Content-Type", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.head);
    // With the admin claim, a body that never comes ends with 408 (not a held connection).
    let token = format!("Bearer {}", admin_token());
    let started = std::time::Instant::now();
    let r = raw_request(
        gw.addr,
        "POST",
        "/api/admin/broadcast",
        &[("Content-Length", "100"), ("Authorization", &token)],
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (408, json!("body_timeout"))
    );
    assert!(started.elapsed() < STEP);
    gw.stop().await;
}

/// Opens `/ws` by hand and returns the socket after the 101.
async fn raw_ws(gw: &Gateway) -> TcpStream {
    let r = raw_request(gw.addr, "GET", "/ws", UPGRADE_HEADERS).await;
    assert_eq!(r.status, 101, "{}", r.head);
    r.stream
}

/// A masked client close frame with `payload`.
fn close_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x88, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The code of the server's close frame (data frames before it are skipped).
async fn server_close_code(s: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        while raw.len() >= 2 {
            let len = (raw[1] & 0x7F) as usize;
            let (head, len) = match len {
                126 if raw.len() >= 4 => (4, u16::from_be_bytes([raw[2], raw[3]]) as usize),
                126 => break,
                n => (2, n),
            };
            if raw.len() < head + len {
                break;
            }
            if raw[0] & 0x0F == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([raw[head], raw[head + 1]]));
            }
            raw.drain(..head + len);
        }
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .expect("close in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_are_validated() {
    let gw = start(settings()).await;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a one-byte payload", vec![0x03], 1002),
        ("reserved code 1005", 1005u16.to_be_bytes().to_vec(), 1002),
        ("code below 1000", 999u16.to_be_bytes().to_vec(), 1002),
        ("unassigned code 1016", 1016u16.to_be_bytes().to_vec(), 1002),
        ("code 5000", 5000u16.to_be_bytes().to_vec(), 1002),
        (
            "reason not UTF-8",
            [&1000u16.to_be_bytes()[..], &[0xff, 0xfe]].concat(),
            1007,
        ),
        (
            "a good close",
            [&4000u16.to_be_bytes()[..], b"bye"].concat(),
            1000,
        ),
        ("an empty close", vec![], 1000),
    ];
    for (what, payload, want) in cases {
        let mut s = raw_ws(&gw).await;
        s.write_all(&close_frame(&payload)).await.unwrap();
        assert_eq!(server_close_code(&mut s).await, Some(want), "{what}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_checks_the_key_and_answers_a_wrong_version_with_426() {
    let gw = start(settings()).await;
    let with = |name: &'static str, value: &'static str| {
        UPGRADE_HEADERS
            .iter()
            .map(|(k, v)| if *k == name { (*k, value) } else { (*k, *v) })
            .collect::<Vec<_>>()
    };
    for key in [
        "abc",
        "c2hvcnQga2V5IDE1Yg==",
        "not base64 at all!!!!!==",
        "",
    ] {
        let r = raw_request(gw.addr, "GET", "/ws", &with("Sec-WebSocket-Key", key)).await;
        assert_eq!(r.status, 400, "key {key:?}: {}", r.head);
        assert_eq!(r.json()["code"], "not_a_websocket_handshake");
    }
    let r = raw_request(
        gw.addr,
        "GET",
        "/ws/kpi/a",
        &with("Sec-WebSocket-Version", "8"),
    )
    .await;
    assert_eq!(r.status, 426, "{}", r.head);
    assert_eq!(r.header("sec-websocket-version").as_deref(), Some("13"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transports_send_cors_headers_for_allowed_origins() {
    let gw = start(GatewaySettings {
        allowed_origins: vec!["https://dash.example".into()],
        ..settings()
    })
    .await;
    let origin = ("Origin", "https://dash.example");
    for path in [
        "/api/kpi/a",
        "/api/kpi/a/history",
        "/api/kpi/a/updates?wait=0",
        "/sse/kpi/a",
    ] {
        let r = raw_request(gw.addr, "GET", path, &[origin]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("https://dash.example"),
            "{path}: {}",
            r.head
        );
        // A browser asks first when the request carries a token.
        let pre = raw_request(
            gw.addr,
            "OPTIONS",
            path,
            &[
                origin,
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
        .await;
        assert!(
            pre.status == 204 || pre.status == 200,
            "{path}: {}",
            pre.head
        );
        assert_eq!(
            pre.header("access-control-allow-origin").as_deref(),
            Some("https://dash.example")
        );
        let allowed = pre
            .header("access-control-allow-headers")
            .unwrap_or_default();
        assert!(allowed.contains("authorization"), "{path}: {}", pre.head);
    }
    // Another origin gets no CORS grant (and is refused outright).
    let r = raw_request(
        gw.addr,
        "GET",
        "/api/kpi/a",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert!(r.header("access-control-allow-origin").is_none());
    gw.stop().await;
    // An open gateway lets any page read.
    let gw = start(settings()).await;
    let r = raw_request(gw.addr, "GET", "/api/kpi/a", &[origin]).await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    gw.stop().await;
}
