//! Admin broadcasts cross processes: two `kpi-gateway` binaries on one real
//! nats-server; a message posted to one reaches clients of both.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use kpi_test_support::{free_port, NatsServer, Service};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";

fn token(admin: bool) -> String {
    let claims = json!({
        "sub": if admin { "ops-admin" } else { "viewer" },
        "exp": jsonwebtoken::get_current_timestamp() + 600,
        "kpis": ["*"],
        "admin": admin,
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn post(port: u16, path: &str, token: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&raw)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// A gateway process on `port`, ready.
async fn gateway(nats_url: &str, secret_file: &str, port: u16) -> Service {
    let listen = format!("127.0.0.1:{port}");
    let g = Service::spawn(
        "kpi-gateway",
        &[
            "--listen",
            &listen,
            "--nats-url",
            nats_url,
            "--jwt-hs256-secret-file",
            secret_file,
            "--allow-anonymous",
            "true",
        ],
        &[("RUST_LOG", "info,kpistream::audit=info")],
    );
    g.wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(30),
    )
    .await;
    g
}

async fn assert_refused_for_maintenance(port: u16) {
    match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!(
            "gateway {port} accepted a connection in maintenance: {:?}",
            other.map(|_| ())
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_broadcast_reaches_clients_of_every_gateway_process() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let secret = secret.to_str().unwrap().to_string();
    let ports = [free_port(), free_port()];
    let mut gateways = Vec::new();
    for port in ports {
        gateways.push(gateway(&nats.url(), &secret, port).await);
    }
    let mut clients = Vec::new();
    for port in ports {
        let (mux, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap();
        let (single, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws/kpi/sales_eu"))
                .await
                .unwrap();
        clients.push(mux);
        clients.push(single);
    }
    // The single-topic sockets start with their snapshot.
    for ws in clients.iter_mut().skip(1).step_by(2) {
        assert_eq!(next_text(ws).await["type"], "snapshot");
    }

    let body = r#"{"message":"gateway upgrade at 17:00"}"#;
    let admin = token(true);
    let viewer = token(false);
    assert_eq!(
        post(ports[0], "/api/admin/broadcast", &viewer, body).await,
        403
    );
    assert_eq!(
        post(ports[0], "/api/admin/broadcast", "not-a-jwt", body).await,
        401
    );
    assert_eq!(
        post(ports[0], "/api/admin/broadcast", &admin, body).await,
        202
    );
    for ws in clients.iter_mut() {
        let m = next_text(ws).await;
        assert_eq!(m["type"], "system", "{m}");
        assert_eq!(m["message"], "gateway upgrade at 17:00");
    }

    // Maintenance posted to the second gateway closes the doors of both.
    let on = r#"{"enabled":true,"message":"back at 17:30"}"#;
    assert_eq!(
        post(ports[1], "/api/admin/maintenance", &admin, on).await,
        202
    );
    for ws in clients.iter_mut() {
        assert_eq!(next_text(ws).await["maintenance"], true);
    }
    for port in ports {
        assert_refused_for_maintenance(port).await;
    }
    // A gateway started during maintenance reads the stored state.
    let late_port = free_port();
    let late = gateway(&nats.url(), &secret, late_port).await;
    assert_refused_for_maintenance(late_port).await;
    // Maintenance off, posted to the first: every door opens, the late one's too.
    let off = r#"{"enabled":false}"#;
    assert_eq!(
        post(ports[0], "/api/admin/maintenance", &admin, off).await,
        202
    );
    for ws in clients.iter_mut() {
        assert_eq!(next_text(ws).await["maintenance"], false);
    }
    for port in [ports[0], ports[1], late_port] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway {port} still refuses after maintenance ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(late);
    let logs = gateways[0].logs() + &gateways[1].logs();
    assert!(
        logs.contains("kpistream::audit"),
        "no audit record in the logs"
    );
    for t in [&admin, &viewer] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token reached the logs");
    }
}
