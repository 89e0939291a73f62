//! Hostile clients: huge frames, floods, unknown messages, invalid UTF-8 and
//! slowloris each get their own answer, and a bystander keeps receiving.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::SinkExt;
use kpi_core::Period;
use kpi_gateway::GatewaySettings;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// The bystander still gets the next update.
async fn bystander_receives(gw: &Gateway, ws: &mut Ws, seq: u64) {
    publish(&gw.bus, &topic("sales_eu", Period::Minute), seq).await;
    let v = recv(ws).await;
    assert_eq!(v["seq"], seq, "bystander missed an update: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_their_error_and_others_keep_receiving() {
    let gw = start(GatewaySettings {
        header_read_timeout: Duration::from_secs(2),
        ..settings()
    })
    .await;
    let mut bystander = gw.ws("/ws/kpi/sales_eu").await;
    assert_eq!(recv(&mut bystander).await["type"], "snapshot");

    // A 16 MiB frame: closed 1009 (the limit is 64 KiB).
    let mut big = gw.ws("/ws").await;
    let _ = big.send(Message::text("x".repeat(16 << 20))).await;
    let (code, _) = recv_close(&mut big, STEP).await;
    assert_eq!(code, Some(1009));
    bystander_receives(&gw, &mut bystander, 1).await;

    // An unknown type and garbage: an error each, the socket stays.
    let mut odd = gw.ws("/ws").await;
    send(&mut odd, json!({"type": "explode", "kpi": "sales_eu"})).await;
    assert_eq!(recv(&mut odd).await["code"], "unknown_type");
    odd.send(Message::text("{not json")).await.unwrap();
    assert_eq!(recv(&mut odd).await["code"], "bad_message");
    odd.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(recv(&mut odd).await["code"], "bad_message");
    send(&mut odd, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv(&mut odd).await["type"], "pong");

    // Invalid UTF-8 in a text frame: closed 1007.
    let mut utf = gw.ws("/ws").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let _ = utf.send(Message::Frame(frame)).await;
    let (code, _) = recv_close(&mut utf, STEP).await;
    assert_eq!(code, Some(1007));
    bystander_receives(&gw, &mut bystander, 2).await;

    // 10,000 subscribes at once: told `rate_limited`, then closed 1008.
    let mut flood = gw.ws("/ws").await;
    let sub = json!({"type": "subscribe", "kpi": "sales_eu", "period": "minute"}).to_string();
    for _ in 0..10_000 {
        if flood.feed(Message::text(sub.clone())).await.is_err() {
            break;
        }
    }
    let _ = flood.flush().await;
    let (code, seen) = recv_close(&mut flood, STEP).await;
    // Which limit trips first depends on timing: the flood rate (1008, after
    // `rate_limited` errors) or the unread replies piling up (4008
    // `slow_consumer`). Either way the flooder is told and cut off.
    let last = seen.last().map(|m| m["code"].clone());
    match code {
        Some(1008) => assert!(seen.iter().any(|m| m["code"] == "rate_limited")),
        Some(4008) => assert_eq!(last, Some(json!("slow_consumer"))),
        other => panic!("flood closed with {other:?}, last message {last:?}"),
    }
    bystander_receives(&gw, &mut bystander, 3).await;

    // Slowloris: a request head trickling in one byte a second is cut off
    // by the header-read timeout (2 s here) long before it is complete.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = tokio::time::Instant::now();
    let mut cut = false;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => {} // a 408 before the close is fine too
            Err(_) => {}
        }
    }
    assert!(cut, "the server waited for the whole slow header");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut only after {:?}",
        started.elapsed()
    );
    bystander_receives(&gw, &mut bystander, 4).await;
    gw.stop().await;
}

/// Reads from a raw socket until `\r\n\r\n`; returns the response head.
async fn read_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, sock.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "connection closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_pings_fragments_and_violations() {
    let gw = start(settings()).await;

    // A client ping is answered with the same payload; a message sent in
    // fragments (with a ping between them) arrives whole.
    let mut ws = gw.ws("/ws").await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(STEP, async {
        loop {
            match futures::StreamExt::next(&mut ws).await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"are you there");
    let text = json!({"type": "ping", "id": 7}).to_string();
    let (a, b) = text.as_bytes().split_at(5);
    let first = Frame::message(a.to_vec(), OpCode::Data(Data::Text), false);
    let rest = Frame::message(b.to_vec(), OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Ping(Vec::new().into())).await.unwrap();
    ws.send(Message::Frame(rest)).await.unwrap();
    let reply = recv(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64()),
        (Some("pong"), Some(7))
    );

    // An unmasked client frame breaks RFC 6455: closed 1002.
    let mut raw = TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The accept key of RFC 6455's own example.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    raw.write_all(&[0x81, 0x01, b'x']).await.unwrap();
    let mut close = [0u8; 4];
    tokio::time::timeout(STEP, raw.read_exact(&mut close))
        .await
        .expect("close frame in time")
        .unwrap();
    assert_eq!(close[0], 0x88, "expected a close frame: {close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1002);

    // A plain GET is not a handshake: refused before any upgrade.
    let (status, body) = gw.get("/ws").await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "not_a_websocket_handshake", "{body}");
    gw.stop().await;
}
