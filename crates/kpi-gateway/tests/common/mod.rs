//! Shared test harness: an in-process gateway on a memory bus, a simulated aggregator, clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kpi_bus::{Bus, BusConfig};
use kpi_core::{KpiCode, Period, Topic, UpdateKind, UpdateMessage};
use kpi_gateway::GatewaySettings;
use kpi_service::Shutdown;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const STEP: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub addr: SocketAddr,
    pub bus: Bus,
    pub shutdown: Shutdown,
    pub task: JoinHandle<Result<(), kpi_gateway::GatewayError>>,
}

/// Settings for tests: short linger so interest changes are quick to observe.
pub fn settings() -> GatewaySettings {
    GatewaySettings {
        linger: Duration::from_millis(100),
        drain: Duration::from_secs(2),
        unready_delay: Duration::ZERO,
        ..GatewaySettings::default()
    }
}

pub async fn start(settings: GatewaySettings) -> Gateway {
    start_on(Bus::memory(BusConfig::default()), settings).await
}

pub async fn start_on(bus: Bus, settings: GatewaySettings) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(kpi_gateway::run(
        listener,
        bus.clone(),
        settings,
        shutdown.clone(),
    ));
    Gateway {
        addr,
        bus,
        shutdown,
        task,
    }
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = kpi_test_support::http_get(&self.url(path)).await;
        let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, v)
    }

    pub async fn metrics(&self) -> String {
        kpi_test_support::http_get(&self.url("/metrics")).await.1
    }

    pub async fn ws(&self, path: &str) -> Ws {
        let (ws, _) =
            tokio::time::timeout(STEP, tokio_tungstenite::connect_async(self.ws_url(path)))
                .await
                .expect("connect in time")
                .expect("connect");
        ws
    }

    /// A `/ws` socket subscribed to `kpi` (minute) with extra subscribe
    /// fields (`cadence`, `encoding`), its `subscribed` reply read.
    pub async fn mux_subscribed(&self, kpi: &str, extra: Value) -> Ws {
        let mut ws = self.ws("/ws").await;
        let mut msg = serde_json::json!({"type":"subscribe","kpi":kpi,"period":"minute"});
        if let (Some(m), Value::Object(extra)) = (msg.as_object_mut(), extra) {
            m.extend(extra);
        }
        send(&mut ws, msg).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        ws
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

pub fn topic(code: &str, period: Period) -> Topic {
    Topic::new(KpiCode::parse(code).unwrap(), period)
}

/// What the aggregator would publish: an update with this seq, `last` = seq.
pub fn update(topic: &Topic, seq: u64) -> UpdateMessage {
    let mut m = UpdateMessage::empty(topic.code.clone(), topic.period, chrono::Utc::now());
    m.kind = UpdateKind::Update;
    m.seq = seq;
    m.stats.count = seq;
    m.stats.last = Some(seq as f64);
    m
}

pub async fn publish(bus: &Bus, topic: &Topic, seq: u64) {
    bus.publish_update(topic, Bytes::from(update(topic, seq).to_json()))
        .await
        .unwrap();
}

pub async fn publish_range(bus: &Bus, topic: &Topic, seqs: std::ops::RangeInclusive<u64>) {
    for s in seqs {
        publish(bus, topic, s).await;
    }
}

/// The next text message as JSON (pings/pongs skipped); panics on close or timeout.
pub async fn recv(ws: &mut Ws) -> Value {
    match try_recv(ws, STEP).await {
        Some(v) => v,
        None => panic!("no message within {STEP:?}"),
    }
}

pub async fn try_recv(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("JSON")),
            Ok(Message::Close(f)) => panic!("closed: {f:?}"),
            Ok(_) => continue,
            Err(e) => panic!("socket error: {e}"),
        }
    }
}

/// Reads until the server closes; returns the close code and the text messages before it.
pub async fn recv_close(ws: &mut Ws, wait: Duration) -> (Option<u16>, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!(
                "not closed within {wait:?}; saw {} messages, last {:?}",
                seen.len(),
                seen.last()
            ),
            Ok(None) => return (None, seen),
            Ok(Some(Err(_))) => return (None, seen),
            Ok(Some(Ok(Message::Close(f)))) => return (f.map(|f| u16::from(f.code)), seen),
            Ok(Some(Ok(Message::Text(t)))) => {
                seen.push(serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

pub fn code_of(c: CloseCode) -> u16 {
    u16::from(c)
}

/// Polls `cond` every 20 ms until true, for at most `STEP`.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn memory(bus: &Bus) -> &kpi_bus::memory::MemoryBus {
    match bus {
        Bus::Memory(m) => m,
        Bus::Nats(_) => panic!("not a memory bus"),
    }
}

/// A metric's value from a Prometheus text page (0 when absent).
pub fn metric(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A minimal Server-Sent Events client over HTTP/1.1 (chunked body decoded).
pub struct Sse {
    stream: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    pub status: u16,
}

impl Sse {
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            status: 0,
        };
        loop {
            if let Some(end) = find(&sse.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&sse.raw[..end]).to_string();
                sse.status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                sse.raw.drain(..end + 4);
                break;
            }
            sse.fill().await;
        }
        sse
    }

    async fn fill(&mut self) {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(STEP, self.stream.read(&mut buf))
            .await
            .expect("SSE data in time")
            .unwrap();
        assert!(n > 0, "SSE stream ended");
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size_hex = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_hex.trim(), 16).unwrap();
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.body.extend_from_slice(&data);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event as (id, data JSON); comments (keep-alives) are returned as `None` ids with Null.
    pub async fn next_event(&mut self) -> (Option<String>, Value) {
        loop {
            self.dechunk();
            if let Some(end) = find(&self.body, b"\n\n") {
                let text = String::from_utf8_lossy(&self.body[..end]).to_string();
                self.body.drain(..end + 2);
                let mut id = None;
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                let v = if data.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&data).unwrap()
                };
                return (id, v);
            }
            self.fill().await;
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The next event that carries data.
    pub async fn next_data(&mut self) -> (String, Value) {
        loop {
            if let (Some(id), v) = self.next_event().await {
                return (id, v);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response read off a raw socket: status, head (lower-cased) and the body
/// that arrived with it (all of it when `Content-Length` says how much).
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// Still open: a WebSocket or an SSE stream keeps its slot while this lives.
    pub stream: TcpStream,
}

impl RawResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let name = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(&name).map(|v| v.trim().to_string()))
    }
}

/// The headers of a valid WebSocket handshake.
pub const UPGRADE_HEADERS: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// Sends one request on a fresh connection and reads the answer's head (and
/// its body when it has a length); the connection stays open.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(STEP, stream.read(&mut buf))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "closed before a response head: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = raw[end + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    if let Some(length) = length {
        while body.len() < length {
            let n = tokio::time::timeout(STEP, stream.read(&mut buf))
                .await
                .expect("response body in time")
                .unwrap();
            assert!(n > 0, "closed inside the body");
            body.extend_from_slice(&buf[..n]);
        }
    }
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
        stream,
    }
}
