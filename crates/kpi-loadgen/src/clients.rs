//! A worker process holding a share of the client connections and measuring what they receive.
//!
//! The coordinator talks to it over stdio, one JSON line each way: the worker
//! prints a [`Connected`] line once its connections are open (or failed), then
//! counts only between `start` and `stop` on stdin, so the measurement window
//! excludes connecting and warm-up. On `stop`, end of input or its own
//! deadline it prints a [`Finished`] line and exits.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{hist_to_pairs, new_hist};

/// How a client subscribes and how messages arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `GET /ws/kpi/<code>?period=`: one JSON message per WebSocket message.
    Kpistream,
    /// The plain writer: same path, same framing.
    Plain,
    /// NATS protocol over WebSocket: CONNECT, SUB, then MSG frames.
    Nats,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Server base URLs (ws://host:port); connection i goes to url i mod count.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Global index of this worker's first connection.
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub kpis: usize,
    #[arg(long)]
    pub kpi_prefix: String,
    #[arg(long)]
    pub period: String,
    #[arg(long, default_value = "live")]
    pub cadence: String,
    #[arg(long)]
    pub source_first: u8,
    #[arg(long)]
    pub conns_per_source: usize,
    #[arg(long)]
    pub connect_concurrency: usize,
    #[arg(long)]
    pub connect_timeout: u64,
    #[arg(long, default_value_t = 0)]
    pub connect_retries: u32,
    /// The worker exits by itself after this many seconds whatever happens.
    #[arg(long)]
    pub max_secs: u64,
}

/// First line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Connected {
    pub connected: u64,
    pub failed: u64,
    /// Failed attempts that were tried again.
    #[serde(default)]
    pub retries: u64,
    /// Connect time (TCP + WebSocket handshake + subscribe sent), microseconds: (value, count).
    pub connect_us: Vec<(u64, u64)>,
    pub first_error: Option<String>,
}

/// Last line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Finished {
    /// Update messages received inside the window.
    pub deliveries: u64,
    pub snapshots: u64,
    pub unparsed: u64,
    /// Connections that ended while the worker was running.
    pub dropped: u64,
    /// End-to-end latency in microseconds: (value, count).
    pub latency_us: Vec<(u64, u64)>,
    /// From the message's `updated_at` (when it was rendered: the
    /// aggregator for kpistream, the publisher for the baselines) to
    /// receipt, microseconds: (value, count).
    #[serde(default)]
    pub fanout_us: Vec<(u64, u64)>,
    /// Deliveries per second of the window.
    pub per_sec: Vec<u64>,
    pub window_secs: f64,
}

const SHARDS: usize = 16;

struct Shared {
    kind: Kind,
    active: AtomicBool,
    /// Start of the window, microseconds since the epoch.
    t0: AtomicI64,
    deliveries: AtomicU64,
    snapshots: AtomicU64,
    unparsed: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    per_sec: Vec<AtomicU64>,
    // Sharded so connections on different threads rarely meet on one lock.
    latency: Vec<Mutex<Histogram<u64>>>,
    fanout: Vec<Mutex<Histogram<u64>>>,
    connect: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `event_time` of a message in microseconds since the epoch, found without
/// parsing the whole JSON so the client's cost is the same for every target.
pub fn event_time_micros(payload: &[u8]) -> Option<i64> {
    time_field_micros(payload, b"\"event_time\":\"")
}

/// `updated_at` of a message in microseconds since the epoch.
pub fn updated_at_micros(payload: &[u8]) -> Option<i64> {
    time_field_micros(payload, b"\"updated_at\":\"")
}

/// The RFC 3339 time after `key` (which ends with the opening quote).
fn time_field_micros(payload: &[u8], key: &[u8]) -> Option<i64> {
    let at = find(payload, key)? + key.len();
    let len = payload[at..].iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&payload[at..at + len]).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(t.timestamp_micros())
}

fn is_snapshot(payload: &[u8]) -> bool {
    let head = &payload[..payload.len().min(40)];
    find(head, b"\"type\":\"snapshot\"").is_some()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Shared {
    fn on_payload(&self, shard: usize, payload: &[u8]) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        if is_snapshot(payload) {
            self.snapshots.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(sent) = event_time_micros(payload) else {
            self.unparsed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let now = now_micros();
        let latency = (now - sent).max(1) as u64;
        if let Ok(mut h) = self.latency[shard % SHARDS].lock() {
            h.saturating_record(latency);
        }
        if let Some(rendered) = updated_at_micros(payload) {
            if let Ok(mut h) = self.fanout[shard % SHARDS].lock() {
                h.saturating_record((now - rendered).max(1) as u64);
            }
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        let sec = ((now - self.t0.load(Ordering::Relaxed)) / 1_000_000).max(0) as usize;
        if let Some(c) = self.per_sec.get(sec) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, e: String) {
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(e);
        }
    }
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.kpis > 0, "--kpis must be at least 1");
    let shared = Arc::new(Shared {
        kind: args.kind,
        active: AtomicBool::new(false),
        t0: AtomicI64::new(0),
        deliveries: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        unparsed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        per_sec: (0..=args.max_secs).map(|_| AtomicU64::new(0)).collect(),
        latency: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
        fanout: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
        connect: Mutex::new(new_hist()),
        first_error: Mutex::new(None),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_secs);
    let args = Arc::new(args);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    for idx in args.first..args.first + args.count {
        let (shared, args, gate) = (shared.clone(), args.clone(), gate.clone());
        tokio::spawn(async move { client(idx, &args, &shared, &gate).await });
    }

    // Connecting: done when every connection succeeded or failed, or at the timeout.
    let connect_deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    loop {
        let done = shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
        if done >= args.count as u64 || Instant::now() >= connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = Connected {
        connected: shared.connected.load(Ordering::Relaxed),
        failed: args.count as u64 - shared.connected.load(Ordering::Relaxed),
        retries: shared.retries.load(Ordering::Relaxed),
        connect_us: shared
            .connect
            .lock()
            .map(|h| hist_to_pairs(&h))
            .unwrap_or_default(),
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
    };
    println!("{}", serde_json::to_string(&connected)?);

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut started = None;
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l.unwrap_or(None),
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match line.as_deref().map(str::trim) {
            Some("start") => {
                shared.t0.store(now_micros(), Ordering::Relaxed);
                shared.active.store(true, Ordering::SeqCst);
                started = Some(Instant::now());
            }
            Some("stop") | None => break,
            Some(_) => {}
        }
    }
    shared.active.store(false, Ordering::SeqCst);
    let window_secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    let latency = merged(&shared.latency)?;
    let fanout = merged(&shared.fanout)?;
    let full_secs = window_secs.ceil() as usize;
    let finished = Finished {
        deliveries: shared.deliveries.load(Ordering::Relaxed),
        snapshots: shared.snapshots.load(Ordering::Relaxed),
        unparsed: shared.unparsed.load(Ordering::Relaxed),
        dropped: shared.dropped.load(Ordering::Relaxed),
        latency_us: hist_to_pairs(&latency),
        fanout_us: hist_to_pairs(&fanout),
        per_sec: shared
            .per_sec
            .iter()
            .take(full_secs)
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
        window_secs,
    };
    println!("{}", serde_json::to_string(&finished)?);
    // Connections are simply dropped with the process: the run is over.
    std::process::exit(0);
}

/// One histogram out of the per-shard ones.
fn merged(shards: &[Mutex<Histogram<u64>>]) -> anyhow::Result<Histogram<u64>> {
    let mut out = new_hist();
    for h in shards {
        if let Ok(h) = h.lock() {
            out.add(&*h).context("merging histograms")?;
        }
    }
    Ok(out)
}

async fn client(idx: usize, args: &WorkerArgs, shared: &Shared, gate: &Semaphore) {
    let mut permit = gate.acquire().await;
    let mut attempt = 0;
    // Connect time counts from the first attempt, retries included.
    let started = Instant::now();
    let ws = loop {
        match open(idx, args).await {
            Ok(ws) => break ws,
            Err(e) if attempt < args.connect_retries => {
                attempt += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                shared.error(format!("connection {idx} (retried): {e:#}"));
                // The slot goes to others while this client waits, as a
                // real dashboard's backoff would.
                drop(permit);
                let jitter = (idx % 500) as u64;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt) + jitter)).await;
                permit = gate.acquire().await;
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.error(format!("connection {idx}: {e:#}"));
                return;
            }
        }
    };
    if let Ok(mut h) = shared.connect.lock() {
        h.saturating_record(started.elapsed().as_micros() as u64);
    }
    shared.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let end = match shared.kind {
        Kind::Kpistream | Kind::Plain => read_json(idx, ws, shared).await,
        Kind::Nats => read_nats(idx, ws, shared).await,
    };
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    shared.error(format!("connection {idx} ended: {end}"));
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(idx: usize, args: &WorkerArgs) -> anyhow::Result<Ws> {
    let code = format!("{}{}", args.kpi_prefix, idx % args.kpis);
    let base = &args.url[idx % args.url.len()];
    let hostport = base
        .strip_prefix("ws://")
        .context("target URL must start with ws://")?
        .trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("target {hostport} is not ip:port"))?;
    let host = usize::from(args.source_first) + idx / args.conns_per_source.max(1);
    let host = u8::try_from(host).context("ran out of 127.0.0.x source addresses")?;
    let source = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0));
    let sock = TcpSocket::new_v4()?;
    sock.bind(source)
        .with_context(|| format!("binding {source}"))?;
    let stream = sock.connect(addr).await.context("TCP connect")?;
    stream.set_nodelay(true)?;
    let path = match args.kind {
        Kind::Kpistream if args.cadence != "live" => format!(
            "/ws/kpi/{code}?period={}&cadence={}",
            args.period, args.cadence
        ),
        Kind::Kpistream | Kind::Plain => format!("/ws/kpi/{code}?period={}", args.period),
        Kind::Nats => "/".to_string(),
    };
    // Small buffers: 15,000 clients with tungstenite's 128 KiB default would
    // cost the loadgen gigabytes.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{hostport}{path}"),
        stream,
        Some(config),
    )
    .await
    .context("WebSocket handshake")?;
    if args.kind == Kind::Nats {
        // The subject comes from kpi-core, like every subject: from a
        // validated code and period.
        let topic = kpi_core::Topic::new(
            kpi_core::KpiCode::parse(&code).with_context(|| format!("KPI code {code:?}"))?,
            kpi_core::Period::parse(&args.period)
                .with_context(|| format!("period {:?}", args.period))?,
        );
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {} 1\r\n",
            topic.updates_subject()
        );
        ws.send(Message::Binary(hello.into_bytes().into()))
            .await
            .context("sending SUB")?;
    }
    Ok(ws)
}

async fn read_json(idx: usize, mut ws: Ws, shared: &Shared) -> String {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => shared.on_payload(idx, t.as_bytes()),
            Ok(Message::Binary(b)) => shared.on_payload(idx, &b),
            Ok(Message::Close(c)) => return format!("closed by server: {c:?}"),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
    "end of stream".into()
}

async fn read_nats(idx: usize, mut ws: Ws, shared: &Shared) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(msg) = ws.next().await {
        let data = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Text(t)) => bytes::Bytes::copy_from_slice(t.as_bytes()),
            Ok(Message::Close(c)) => return format!("closed by server: {c:?}"),
            Ok(_) => continue,
            Err(e) => return e.to_string(),
        };
        buf.extend_from_slice(&data);
        let mut pong = false;
        let consumed = parse_nats(&buf, |p| shared.on_payload(idx, p), &mut pong);
        buf.drain(..consumed);
        if pong
            && ws
                .send(Message::Binary(b"PONG\r\n".to_vec().into()))
                .await
                .is_err()
        {
            return "cannot answer PING".into();
        }
    }
    "end of stream".into()
}

/// Parses whole NATS protocol operations from `buf`, calling `on_msg` with
/// each MSG payload; returns how many bytes were consumed.
pub fn parse_nats(buf: &[u8], mut on_msg: impl FnMut(&[u8]), pong: &mut bool) -> usize {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(eol) = find(rest, b"\r\n") else {
            return at;
        };
        let line = &rest[..eol];
        if line.starts_with(b"MSG ") {
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|s| s.parse::<usize>().ok());
            let Some(size) = size else {
                at += eol + 2;
                continue;
            };
            let start = eol + 2;
            if rest.len() < start + size + 2 {
                return at;
            }
            on_msg(&rest[start..start + size]);
            at += start + size + 2;
        } else {
            if line == b"PING" {
                *pong = true;
            }
            at += eol + 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_time() {
        let m = br#"{"type":"update","kpi":"a","event_time":"2026-01-01T00:00:01.5Z","x":1}"#;
        assert_eq!(event_time_micros(m), Some(1_767_225_601_500_000));
        let m = br#"{"event_time":"2026-01-01T00:00:01Z","updated_at":"2026-01-01T00:00:02.25Z"}"#;
        assert_eq!(updated_at_micros(m), Some(1_767_225_602_250_000));
        assert_eq!(
            updated_at_micros(br#"{"event_time":"2026-01-01T00:00:01Z"}"#),
            None
        );
        assert!(!is_snapshot(m));
        assert!(is_snapshot(br#"{"type":"snapshot","event_time":null}"#));
        assert_eq!(event_time_micros(br#"{"event_time":null}"#), None);
    }

    #[test]
    fn parses_nats_frames_split_anywhere() {
        let stream = b"INFO {}\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG a.b 1 3\r\nxyz\r\n";
        for cut in 0..stream.len() {
            let mut got = Vec::new();
            let mut pong = false;
            let mut buf = stream[..cut].to_vec();
            let used = parse_nats(&buf, |p| got.push(p.to_vec()), &mut pong);
            buf.drain(..used);
            buf.extend_from_slice(&stream[cut..]);
            let used = parse_nats(&buf, |p| got.push(p.to_vec()), &mut pong);
            assert_eq!(used, buf.len());
            assert_eq!(got, vec![b"hello".to_vec(), b"xyz".to_vec()]);
            assert!(pong);
        }
    }
}
