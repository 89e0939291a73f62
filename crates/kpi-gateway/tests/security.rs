//! Access control end to end: JWT per KPI on every transport, token failures,
//! expiry and refresh, the Origin allow-list, admin broadcasts and maintenance.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use kpi_core::Period;
use kpi_gateway::security::auth::JwtSettings;
use kpi_gateway::GatewaySettings;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "test-only-secret-0123456789abcdef0123456789";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A gateway that accepts HS256 (secret in a temp file), RS256, EdDSA and the JWKS fixture.
struct Keys {
    _dir: tempfile::TempDir,
    jwt: JwtSettings,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    Keys {
        jwt: JwtSettings {
            hs256_secret_file: Some(secret),
            rsa_public_key_file: Some(fixture("rsa_public.pem")),
            ed25519_public_key_file: Some(fixture("ed25519_public.pem")),
            jwks_file: Some(fixture("jwks.json")),
            ..JwtSettings::default()
        },
        _dir: dir,
    }
}

fn secured(keys: &Keys) -> GatewaySettings {
    GatewaySettings {
        allow_anonymous: false,
        jwt: keys.jwt.clone(),
        ..settings()
    }
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &key).unwrap()
}

fn reader(kpis: &[&str], exp_in: u64) -> String {
    hs256(json!({"sub": "alice", "exp": now() + exp_in, "kpis": kpis}))
}

/// A raw HTTP/1.1 exchange (`Connection: close`), for requests with headers or a body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Opens a WebSocket with extra headers; `Err((status, body))` when refused before the upgrade.
async fn ws_with(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), (u16, Value)> {
    let mut req = gw.ws_url(path).into_client_request().unwrap();
    for (k, v) in headers {
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut()
            .insert(name, HeaderValue::from_str(v).unwrap());
    }
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
    {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sales_token_reads_sales_and_nothing_else_on_every_transport() {
    let keys = keys();
    let gw = start(secured(&keys)).await;
    let sales = topic("sales_eu", Period::Minute);
    publish(&gw.bus, &sales, 1).await;
    publish(&gw.bus, &topic("hr_payroll", Period::Minute), 1).await;
    let token = reader(&["sales_*"], 600);
    let auth = bearer(&token);
    let h = [("Authorization", auth.as_str())];

    // Snapshot, history, polling: header and ?token= both work; hr_payroll is 403.
    for (path, ok) in [
        ("/api/kpi/sales_eu".to_string(), true),
        ("/api/kpi/sales_eu/history".to_string(), true),
        ("/api/kpi/sales_eu/updates?since=0".to_string(), true),
        ("/api/kpi/hr_payroll".to_string(), false),
        ("/api/kpi/hr_payroll/history".to_string(), false),
        ("/api/kpi/hr_payroll/updates?wait=1".to_string(), false),
    ] {
        let (status, body) = http(gw.addr, "GET", &path, &h, "").await;
        let sep = if path.contains('?') { '&' } else { '?' };
        let (q_status, _) = gw.get(&format!("{path}{sep}token={token}")).await;
        if ok {
            assert_eq!((status, q_status), (200, 200), "{path}: {body}");
        } else {
            assert_eq!((status, q_status), (403, 403), "{path}");
            assert_eq!(body["type"], "error");
            assert_eq!(body["code"], "forbidden", "{path}: {body}");
        }
        // Without a token: 401 everywhere.
        let (status, body) = gw.get(&path).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(body["code"], "unauthorized");
    }

    // SSE.
    let (status, _) = http(gw.addr, "GET", "/sse/kpi/hr_payroll", &h, "").await;
    assert_eq!(status, 403);
    let mut sse = Sse::open(gw.addr, &format!("/sse/kpi/sales_eu?token={token}"), None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_data().await.1["kpi"], "sales_eu");

    // /ws/kpi: refused before the upgrade; allowed with the header or the subprotocol.
    let (status, body) = ws_with(&gw, "/ws/kpi/hr_payroll", &h).await.err().unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (mut ws, _) = ws_with(&gw, "/ws/kpi/sales_eu", &h).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "snapshot");
    let proto = format!("kpistream, bearer.{token}");
    let (mut ws2, echoed) = ws_with(
        &gw,
        "/ws/kpi/sales_eu",
        &[("Sec-WebSocket-Protocol", proto.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(echoed.as_deref(), Some("kpistream"));
    assert_eq!(recv(&mut ws2).await["type"], "snapshot");
    let (status, _) = ws_with(&gw, "/ws/kpi/sales_eu", &[]).await.err().unwrap();
    assert_eq!(status, 401);

    // /ws: forbidden per subscription, and the connection stays.
    let (mut mux, _) = ws_with(&gw, &format!("/ws?token={token}"), &[])
        .await
        .unwrap();
    send(
        &mut mux,
        json!({"type": "subscribe", "kpi": "hr_payroll", "period": "minute"}),
    )
    .await;
    let e = recv(&mut mux).await;
    assert_eq!(
        (e["code"].as_str(), e["kpi"].as_str()),
        (Some("forbidden"), Some("hr_payroll"))
    );
    send(
        &mut mux,
        json!({"type": "subscribe", "kpi": "sales_eu", "period": "minute"}),
    )
    .await;
    assert_eq!(recv(&mut mux).await["type"], "subscribed");
    assert_eq!(recv(&mut mux).await["type"], "snapshot");
    publish(&gw.bus, &sales, 2).await;
    assert_eq!(recv(&mut mux).await["seq"], 2);
    assert_eq!(recv(&mut ws).await["seq"], 2);

    let page = gw.metrics().await;
    assert!(
        metric(
            &page,
            "kpi_gateway_auth_denied_total{reason=\"forbidden_kpi\"}"
        ) >= 8.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_401_with_a_clear_reason() {
    let keys = keys();
    let gw = start(secured(&keys)).await;
    let claims = |exp: u64| json!({"sub": "bob", "exp": exp, "kpis": ["*"]});
    // Good tokens of every kind first, so the refusals below are about the token alone.
    for good in [
        hs256(claims(now() + 60)),
        signed(
            Algorithm::RS256,
            None,
            "rsa_private.pem",
            claims(now() + 60),
        ),
        signed(
            Algorithm::EdDSA,
            None,
            "ed25519_private.pem",
            claims(now() + 60),
        ),
        signed(
            Algorithm::RS256,
            Some("rsa-1"),
            "rsa_private.pem",
            claims(now() + 60),
        ),
        signed(
            Algorithm::EdDSA,
            Some("ed-1"),
            "ed25519_private.pem",
            claims(now() + 60),
        ),
    ] {
        let (status, body) = gw.get(&format!("/api/kpi/x?token={good}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let b64 = |v: Value| {
        use std::fmt::Write;
        // base64url without padding, by hand: the test should not trust the library it checks.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let rsa_public = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let bad = vec![
        ("expired", hs256(claims(now() - 120)), "expired"),
        (
            "not yet valid",
            hs256(json!({"exp": now() + 600, "nbf": now() + 300, "kpis": ["*"]})),
            "not valid yet",
        ),
        (
            "wrong secret",
            encode(
                &Header::default(),
                &claims(now() + 60),
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            )
            .unwrap(),
            "signature",
        ),
        (
            "wrong RSA key",
            signed(
                Algorithm::RS256,
                None,
                "rsa_other_private.pem",
                claims(now() + 60),
            ),
            "signature",
        ),
        (
            "unknown kid",
            signed(
                Algorithm::RS256,
                Some("nope"),
                "rsa_other_private.pem",
                claims(now() + 60),
            ),
            "signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(claims(now() + 60))
            ),
            "well-formed",
        ),
        (
            "HS256 keyed with the RSA public key",
            encode(
                &Header::new(Algorithm::HS256),
                &claims(now() + 60),
                &EncodingKey::from_secret(&rsa_public),
            )
            .unwrap(),
            "signature",
        ),
        (
            "RS384 not configured",
            signed(
                Algorithm::RS384,
                None,
                "rsa_private.pem",
                claims(now() + 60),
            ),
            "algorithm",
        ),
        ("no exp", hs256(json!({"kpis": ["*"]})), "exp"),
        ("malformed", "abc".to_string(), "well-formed"),
        ("three dots", "a.b.c".to_string(), "well-formed"),
    ];
    for (what, token, says) in &bad {
        let (status, body) = gw.get(&format!("/api/kpi/x?token={token}")).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["code"], "unauthorized", "{what}");
        let msg = body["message"].as_str().unwrap();
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(!msg.contains(token.as_str()), "{what}: the token is echoed");
        let auth = bearer(token);
        let (status, _) = ws_with(&gw, "/ws", &[("Authorization", auth.as_str())])
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401, "{what} on /ws");
    }
    let (status, _) = http(
        gw.addr,
        "GET",
        "/api/kpi/x",
        &[("Authorization", "Basic dTpw")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    gw.stop().await;

    // A gateway with only public keys: an HS256 token made with the RSA public
    // key as its secret (the classic confusion) is refused as the wrong algorithm.
    let only_rsa = GatewaySettings {
        allow_anonymous: false,
        jwt: JwtSettings {
            rsa_public_key_file: Some(fixture("rsa_public.pem")),
            ..JwtSettings::default()
        },
        ..settings()
    };
    let gw = start(only_rsa).await;
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(now() + 60),
        &EncodingKey::from_secret(&rsa_public),
    )
    .unwrap();
    let (status, body) = gw.get(&format!("/api/kpi/x?token={confused}")).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("algorithm"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_closes_when_its_token_expires_unless_refreshed() {
    let keys = keys();
    let gw = start(secured(&keys)).await;
    let short = reader(&["sales_*", "hr_*"], 4);

    let (mut single, _) = ws_with(&gw, &format!("/ws/kpi/sales_eu?token={short}"), &[])
        .await
        .unwrap();
    assert_eq!(recv(&mut single).await["type"], "snapshot");
    let mut sse = Sse::open(gw.addr, &format!("/sse/kpi/sales_eu?token={short}"), None).await;
    assert_eq!(sse.next_data().await.1["type"], "snapshot");

    let (mut kept, _) = ws_with(&gw, &format!("/ws?token={short}"), &[])
        .await
        .unwrap();
    for kpi in ["sales_eu", "hr_payroll"] {
        send(
            &mut kept,
            json!({"type": "subscribe", "kpi": kpi, "period": "minute"}),
        )
        .await;
        assert_eq!(recv(&mut kept).await["type"], "subscribed");
        assert_eq!(recv(&mut kept).await["type"], "snapshot");
    }
    // A bad refresh changes nothing and says why.
    send(&mut kept, json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(recv(&mut kept).await["code"], "unauthorized");
    // A good one without hr_* drops that subscription with `forbidden`.
    send(
        &mut kept,
        json!({"type": "auth", "token": reader(&["sales_*"], 600)}),
    )
    .await;
    let mut got = [recv(&mut kept).await, recv(&mut kept).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap_or("").to_string());
    assert_eq!(got[0]["type"], "authenticated");
    assert_eq!(
        (got[1]["code"].as_str(), got[1]["kpi"].as_str()),
        (Some("forbidden"), Some("hr_payroll"))
    );

    let (code, before) = recv_close(&mut single, Duration::from_secs(10)).await;
    assert_eq!(code, Some(4001));
    assert_eq!(before.last().unwrap()["code"], "token_expired");
    let (_, last) = sse.next_data_or_error().await;
    assert_eq!(last["code"], "token_expired");

    // Past the first token's exp the refreshed connection still works.
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish(&gw.bus, &topic("sales_eu", Period::Minute), 1).await;
    publish(&gw.bus, &topic("hr_payroll", Period::Minute), 1).await;
    let v = recv(&mut kept).await;
    assert_eq!(
        (v["kpi"].as_str(), v["seq"].as_u64()),
        (Some("sales_eu"), Some(1))
    );
    send(&mut kept, json!({"type": "ping", "id": 1})).await;
    assert_eq!(recv(&mut kept).await["type"], "pong");
    assert!(
        metric(
            &gw.metrics().await,
            "kpi_gateway_auth_denied_total{reason=\"token_expired\"}"
        ) >= 2.0
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_cannot_open_a_websocket_or_stream() {
    let gw = start(GatewaySettings {
        allowed_origins: vec!["https://dash.example".into()],
        ..settings()
    })
    .await;
    for path in ["/ws", "/ws/kpi/sales_eu"] {
        let (status, body) = ws_with(&gw, path, &[("Origin", "https://evil.example")])
            .await
            .err()
            .unwrap();
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("origin_not_allowed")),
            "{path}"
        );
        let (mut ws, _) = ws_with(&gw, path, &[("Origin", "https://dash.example")])
            .await
            .unwrap();
        send(&mut ws, json!({"type": "ping", "id": 1})).await;
        assert!(try_recv(&mut ws, STEP).await.is_some());
    }
    let (status, body) = http(
        gw.addr,
        "GET",
        "/sse/kpi/sales_eu",
        &[("Origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("origin_not_allowed"))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_are_rate_limited() {
    let gw = start(GatewaySettings {
        max_connections_per_ip_per_sec: 2,
        ..settings()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(match ws_with(&gw, "/ws", &[]).await {
            Ok(_) => 101,
            Err((status, body)) => {
                assert_eq!(body["code"], "rate_limited");
                status
            }
        });
    }
    assert!(
        statuses.contains(&101) && statuses.contains(&429),
        "{statuses:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_broadcast_and_maintenance_need_the_admin_claim_and_reach_every_client() {
    let keys = keys();
    let gw = start(GatewaySettings {
        allow_anonymous: true,
        ..secured(&keys)
    })
    .await;
    let admin = bearer(&hs256(
        json!({"sub": "root", "exp": now() + 600, "admin": true}),
    ));
    let user = bearer(&reader(&["*"], 600));
    let body = r#"{"message":"deploy at 17:00"}"#;

    let (status, b) = http(gw.addr, "POST", "/api/admin/broadcast", &[], body).await;
    assert_eq!((status, b["code"].as_str()), (401, Some("unauthorized")));
    let (status, b) = http(
        gw.addr,
        "POST",
        "/api/admin/broadcast",
        &[("Authorization", user.as_str())],
        body,
    )
    .await;
    assert_eq!((status, b["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = http(
        gw.addr,
        "POST",
        "/api/admin/broadcast",
        &[("Authorization", admin.as_str())],
        "{",
    )
    .await;
    assert_eq!(status, 400);

    let mut single = gw.ws("/ws/kpi/sales_eu").await;
    assert_eq!(recv(&mut single).await["type"], "snapshot");
    let mut mux = gw.ws("/ws").await;
    let mut sse = Sse::open(gw.addr, "/sse/kpi/sales_eu", None).await;
    assert_eq!(sse.next_data().await.1["type"], "snapshot");

    let (status, b) = http(
        gw.addr,
        "POST",
        "/api/admin/broadcast",
        &[("Authorization", admin.as_str())],
        body,
    )
    .await;
    assert_eq!(status, 202, "{b}");
    for ws in [&mut single, &mut mux] {
        let m = recv(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["message"].as_str()),
            (Some("system"), Some("deploy at 17:00"))
        );
        assert!(m["at"].is_string());
    }
    let (_, m) = sse.next_data_or_error().await;
    assert_eq!(m["type"], "system");

    let on = r#"{"enabled":true,"message":"upgrading"}"#;
    let (status, _) = http(
        gw.addr,
        "POST",
        "/api/admin/maintenance",
        &[("Authorization", admin.as_str())],
        on,
    )
    .await;
    assert_eq!(status, 202);
    let m = recv(&mut mux).await;
    assert_eq!(
        (m["type"].as_str(), m["maintenance"].as_bool()),
        (Some("system"), Some(true))
    );
    eventually("maintenance refuses new connections", || async {
        matches!(ws_with(&gw, "/ws", &[]).await, Err((503, ref b)) if b["code"] == "maintenance")
    })
    .await;
    let (status, b) = http(gw.addr, "GET", "/sse/kpi/sales_eu", &[], "").await;
    assert_eq!((status, b["code"].as_str()), (503, Some("maintenance")));
    // Every transport passes the same door: plain HTTP reads too. Connected clients stay.
    let (status, b) = gw.get("/api/kpi/sales_eu").await;
    assert_eq!((status, b["code"].as_str()), (503, Some("maintenance")));
    let off = r#"{"enabled":false}"#;
    let (status, _) = http(
        gw.addr,
        "POST",
        "/api/admin/maintenance",
        &[("Authorization", admin.as_str())],
        off,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(recv(&mut mux).await["maintenance"], false);
    eventually("connections open again", || async {
        ws_with(&gw, "/ws", &[]).await.is_ok()
    })
    .await;
    gw.stop().await;
}

/// Reads a closed SSE stream's last event, or the next data event.
trait SseExt {
    async fn next_data_or_error(&mut self) -> (Option<String>, Value);
}

impl SseExt for Sse {
    async fn next_data_or_error(&mut self) -> (Option<String>, Value) {
        loop {
            let (id, v) = self.next_event().await;
            if !v.is_null() {
                return (id, v);
            }
        }
    }
}

#[allow(dead_code)]
async fn drain(ws: &mut Ws) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), ws.next()).await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kpi_list_shows_only_what_the_token_may_read() {
    let keys = keys();
    let gw = start(secured(&keys)).await;
    for code in ["sales_eu", "sales_us", "hr_payroll"] {
        publish(&gw.bus, &topic(code, Period::Minute), 1).await;
    }
    assert_eq!(gw.get("/api/kpis").await.0, 401);
    let token = reader(&["sales_*"], 600);
    let (status, body) = gw.get(&format!("/api/kpis?token={token}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kpis"], json!(["sales_eu", "sales_us"]));
    gw.stop().await;
}
