//! Publishing the load: gRPC into kpistream, a feed socket into the plain writer, NATS for nats-ws.
//!
//! Event j of the run goes out at start + j / (kpis x rate) to KPI j mod kpis,
//! stamped with the time it is sent, so the stamp is when the event exists
//! for the system under test: the end-to-end latency clients measure starts there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use kpi_core::{KpiCode, Period, UpdateKind, UpdateMessage};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, Status};
use tokio_tungstenite::tungstenite::Message;

use crate::LoadArgs;

/// How events reach the target.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// kpistream's ingest, http://host:port.
    Grpc(String),
    /// The plain writer's /feed WebSocket.
    Feed(String),
    /// A NATS server; payloads go to kpi.updates.<code>.<period>.
    Nats(String),
}

/// Counters the coordinator reads while publishing runs.
#[derive(Default)]
pub struct PubStats {
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
}

/// An update message as the aggregator would publish it, for the baselines.
pub fn baseline_payload(code: &KpiCode, period: Period, seq: u64, value: f64) -> Vec<u8> {
    let now = chrono::Utc::now();
    let mut m = UpdateMessage::empty(code.clone(), period, now);
    m.kind = UpdateKind::Update;
    m.seq = seq;
    let mut stats = kpi_core::Stats::of(value, now);
    stats.apply(value + 1.0, now);
    m.stats = stats.view();
    m.event_time = Some(now);
    m.to_json()
}

/// A tag that keeps this run's event ids apart from any earlier run's, so
/// JetStream's duplicate window never swallows them.
pub fn run_tag() -> String {
    format!("{:x}", crate::clients::now_micros())
}

/// Event `n` of run `run` for ingest, stamped with the current time: the
/// moment it exists for the system under test, where latency starts.
pub fn event(run: &str, n: u64, code: &KpiCode, value: f64) -> anyhow::Result<Event> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(Event {
        event_id: format!("lg-{run}-{n}"),
        kpi: code.as_str().to_string(),
        value,
        time: Some(prost_types::Timestamp {
            seconds: i64::try_from(now.as_secs())?,
            nanos: i32::try_from(now.subsec_nanos())?,
        }),
        labels: Default::default(),
    })
}

/// Publishes until `stats.stop` is set. Runs on the coordinator's runtime.
pub async fn run(publisher: Publisher, load: LoadArgs, stats: Arc<PubStats>) -> anyhow::Result<()> {
    let period = Period::parse(&load.period).map_err(|e| anyhow::anyhow!("{e}"))?;
    let codes: Vec<KpiCode> = (0..load.kpis)
        .map(|i| KpiCode::parse(&format!("{}{i}", load.kpi_prefix)))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("bad --kpi-prefix: {e}"))?;
    let total_rate = load.rate * load.kpis as f64;
    anyhow::ensure!(total_rate > 0.0, "nothing to publish at rate 0");
    let mut sink = Sink::open(&publisher, &stats).await?;
    let started = Instant::now();
    let mut seqs = vec![0u64; codes.len()];
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stats.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * total_rate) as u64;
        while n < due {
            let k = (n % codes.len() as u64) as usize;
            seqs[k] += 1;
            if let Err(e) = sink.send(&codes[k], period, seqs[k], n).await {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if stats.errors.load(Ordering::Relaxed) == 1 {
                    eprintln!("kpi-loadgen: publishing failed: {e:#}");
                }
            } else {
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
    }
    Ok(())
}

enum Sink {
    Grpc(tokio::sync::mpsc::Sender<Event>, String),
    Feed(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
    Nats(async_nats::Client),
}

impl Sink {
    async fn open(p: &Publisher, stats: &Arc<PubStats>) -> anyhow::Result<Sink> {
        Ok(match p {
            Publisher::Grpc(url) => {
                let mut client = IngestClient::connect(url.clone())
                    .await
                    .with_context(|| format!("connecting to ingest at {url}"))?;
                let (tx, rx) = tokio::sync::mpsc::channel::<Event>(100_000);
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut acks = client
                    .publish_stream(stream)
                    .await
                    .context("opening PublishStream")?
                    .into_inner();
                let stats = stats.clone();
                tokio::spawn(async move {
                    while let Some(ack) = acks.next().await {
                        match ack {
                            Ok(a) if a.status == Status::Stored as i32 => {}
                            _ => {
                                stats.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
                Sink::Grpc(tx, run_tag())
            }
            Publisher::Feed(url) => {
                let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                Sink::Feed(Box::new(ws))
            }
            Publisher::Nats(url) => Sink::Nats(
                async_nats::connect(url.as_str())
                    .await
                    .with_context(|| format!("connecting to {url}"))?,
            ),
        })
    }

    async fn send(
        &mut self,
        code: &KpiCode,
        period: Period,
        seq: u64,
        n: u64,
    ) -> anyhow::Result<()> {
        let value = (n % 1000) as f64;
        match self {
            Sink::Grpc(tx, run) => {
                tx.send(event(run, n, code, value)?)
                    .await
                    .context("PublishStream closed")?;
            }
            Sink::Feed(ws) => {
                let mut msg = format!("{}\n", code.as_str()).into_bytes();
                msg.extend(baseline_payload(code, period, seq, value));
                ws.send(Message::Binary(msg.into())).await?;
            }
            Sink::Nats(client) => {
                let subject = kpi_core::Topic::new(code.clone(), period).updates_subject();
                let payload = baseline_payload(code, period, seq, value);
                client.publish(subject, payload.into()).await?;
            }
        }
        Ok(())
    }
}
