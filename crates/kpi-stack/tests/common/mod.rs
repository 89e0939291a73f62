//! Helpers of the end-to-end tests: the three binaries against one nats-server, clients for each side.

#![allow(dead_code)] // Each test file uses a different subset.

use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, PublishRequest, PublishResponse};
use kpi_test_support::{free_port, Service};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// ingest, aggregator and gateway as separate processes on free ports.
pub struct Pipeline {
    pub ingest: Service,
    pub aggregator: Service,
    pub gateway: Service,
    pub grpc: String,
    /// Ingest's HTTP formats (JSON, line protocol, OTLP/HTTP) and its /metrics.
    pub ingest_http: String,
    pub gateway_http: String,
    pub gateway_ws: String,
}

impl Pipeline {
    pub async fn start(nats_url: &str, gateway_args: &[&str]) -> Pipeline {
        let (grpc, ingest_http, agg_http, gw) =
            (free_port(), free_port(), free_port(), free_port());
        let ingest = Service::spawn(
            "kpi-ingest",
            &[
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--http-listen",
                &format!("127.0.0.1:{ingest_http}"),
            ],
            &[("NATS_URL", nats_url)],
        );
        let aggregator = Service::spawn(
            "kpi-aggregator",
            &[
                "--listen",
                &format!("127.0.0.1:{agg_http}"),
                "--coalesce-ms",
                "20",
                "--checkpoint-ms",
                "200",
            ],
            &[("NATS_URL", nats_url)],
        );
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{gw}")];
        args.extend(gateway_args.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let gateway = Service::spawn("kpi-gateway", &args, &[("NATS_URL", nats_url)]);
        let wait = Duration::from_secs(30);
        ingest
            .wait_http_ok(&format!("http://127.0.0.1:{ingest_http}/readyz"), wait)
            .await;
        aggregator
            .wait_http_ok(&format!("http://127.0.0.1:{agg_http}/readyz"), wait)
            .await;
        gateway
            .wait_http_ok(&format!("http://127.0.0.1:{gw}/readyz"), wait)
            .await;
        Pipeline {
            ingest,
            aggregator,
            gateway,
            grpc: format!("http://127.0.0.1:{grpc}"),
            ingest_http: format!("http://127.0.0.1:{ingest_http}"),
            gateway_http: format!("http://127.0.0.1:{gw}"),
            gateway_ws: format!("ws://127.0.0.1:{gw}"),
        }
    }

    pub async fn client(&self) -> IngestClient<tonic::transport::Channel> {
        IngestClient::connect(self.grpc.clone())
            .await
            .expect("connect to ingest")
    }
}

pub fn event(id: &str, kpi: &str, value: f64, time: SystemTime) -> Event {
    Event {
        event_id: id.to_string(),
        kpi: kpi.to_string(),
        value,
        time: Some(prost_types::Timestamp::from(time)),
        labels: Default::default(),
    }
}

pub async fn publish(
    client: &mut IngestClient<tonic::transport::Channel>,
    events: Vec<Event>,
) -> Result<PublishResponse, tonic::Status> {
    client
        .publish(PublishRequest { events })
        .await
        .map(|r| r.into_inner())
}

/// A unique KPI code, so tests sharing nothing but the code's prefix never collide.
pub fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}", n % 1_000_000_000_000)
}

/// The start of a minute with at least 25 s left, so a test's events all land in it.
pub async fn roomy_minute() -> SystemTime {
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970");
        let into = now.as_secs() % 60;
        if into < 35 {
            return SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() - into);
        }
        tokio::time::sleep(Duration::from_secs(60 - into)).await;
    }
}

pub async fn ws_connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
    ws
}

/// The next JSON text message, skipping pings; panics after `timeout`.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a WebSocket message")
            .expect("WebSocket ended")
            .expect("WebSocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON message"),
            Message::Ping(p) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            Message::Close(c) => panic!("WebSocket closed: {c:?}"),
            _ => {}
        }
    }
}

pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let (status, body) = kpi_test_support::http_get(url).await;
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, json)
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
