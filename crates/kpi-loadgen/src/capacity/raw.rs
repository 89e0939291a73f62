//! The baseline: the same events published straight into JetStream and read back, with no kpistream in between.
//!
//! What the engine alone can do with kpistream's traffic. The stream is
//! configured like `KPI_EVENTS` (kpi-bus `nats.rs`: subjects, file storage,
//! duplicate window, discard-new, direct get) on its own nats-server; each
//! event is the JSON ingest stores (`EventRecord`), on the partitioned
//! subject ingest uses, with its `event_id` as `Nats-Msg-Id`. Publishes are
//! asynchronous, their acks awaited in order with at most `--raw-window`
//! outstanding. One ordered consumer per partition reads the stream back,
//! as the aggregator's workers do, and parses each event; lag is the
//! event's time against its arrival there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use kpi_core::subject::{event_subject, partition_filter, EVENTS_WILDCARD};
use kpi_core::{partition_of, EventRecord, KpiCode};
use tokio::process::Child;
use tokio::task::JoinHandle;

use super::step::{Counters, Lag, Load, Pacer};
use crate::processes::{pid, start_nats};
use crate::publish::run_tag;

/// The stream's name: the same as kpistream's, on a server of its own.
const STREAM: &str = "KPI_EVENTS";
/// kpi-bus's defaults (`BusConfig`).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Raw {
    _dir: tempfile::TempDir,
    nats: Child,
    nats_pid: u32,
    js: jetstream::Context,
    codes: Arc<Vec<KpiCode>>,
    /// Each code's event subject, computed once as ingest would per event.
    subjects: Arc<Vec<String>>,
    counters: Arc<Counters>,
    lag: Arc<Lag>,
    readers: Vec<JoinHandle<()>>,
    run: Arc<str>,
    next_event: u64,
    window: usize,
}

impl Raw {
    pub async fn start(
        codes: Arc<Vec<KpiCode>>,
        partitions: u32,
        window: usize,
        max_bytes: i64,
    ) -> anyhow::Result<Raw> {
        let dir = tempfile::Builder::new()
            .prefix("kpi-loadgen-raw-")
            .tempdir()?;
        let store = dir.path().join("js");
        let (nats, port) = start_nats(
            dir.path(),
            &format!(
                "jetstream {{ store_dir: {:?} }}",
                store.display().to_string()
            ),
        )
        .await?;
        let nats_pid = pid(&nats)?;
        let url = format!("nats://127.0.0.1:{port}");
        let client = async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let js = jetstream::new(client);
        let events = js
            .create_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec![EVENTS_WILDCARD.to_string()],
                storage: stream::StorageType::File,
                num_replicas: 1,
                discard: stream::DiscardPolicy::New,
                allow_direct: true,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: MAX_AGE,
                max_bytes,
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("creating the raw stream of {max_bytes} bytes (on a smaller disk, lower --events-max-bytes)")
            })?;
        let counters = Arc::new(Counters::default());
        let lag = Arc::new(Lag::default());
        let mut readers = Vec::new();
        for p in 0..partitions.max(1) {
            let consumer = events
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: partition_filter(p),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .context("creating an ordered consumer")?;
            let messages = consumer.messages().await?;
            readers.push(tokio::spawn(read(messages, counters.clone(), lag.clone())));
        }
        let subjects = codes
            .iter()
            .map(|c| event_subject(partition_of(c, partitions.max(1)), c))
            .collect();
        Ok(Raw {
            _dir: dir,
            nats,
            nats_pid,
            js,
            codes,
            subjects: Arc::new(subjects),
            counters,
            lag,
            readers,
            run: run_tag().into(),
            next_event: 0,
            window: window.max(1),
        })
    }

    pub async fn shutdown(mut self) {
        for r in &self.readers {
            r.abort();
        }
        let _ = self.nats.kill().await;
    }
}

/// Reads one partition back, as an aggregator worker's feed does.
async fn read(mut messages: consumer::pull::Ordered, counters: Arc<Counters>, lag: Arc<Lag>) {
    while let Some(m) = messages.next().await {
        let Ok(m) = m else { continue };
        Counters::add(&counters.read, 1);
        if let Ok(ev) = EventRecord::from_json(&m.payload) {
            lag.record_since(ev.time.timestamp_micros());
        }
    }
}

impl Load for Raw {
    fn spawn_publisher(&mut self, rate: f64, until: Instant) -> JoinHandle<()> {
        let first = self.next_event;
        self.next_event += (rate * 3600.0) as u64;
        tokio::spawn(publish(
            self.js.clone(),
            self.codes.clone(),
            self.subjects.clone(),
            self.counters.clone(),
            self.run.clone(),
            (first, rate, until),
            self.window,
        ))
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn lag(&self) -> &Lag {
        &self.lag
    }

    fn processes(&self) -> Vec<(u32, String)> {
        vec![(self.nats_pid, "nats-server".to_string())]
    }

    fn counted(&self) -> &'static [&'static str] {
        &["nats-server"]
    }
}

/// Publishes paced events; a task awaits their acks in order through a
/// channel of `window` places, so a full window holds the publisher back.
async fn publish(
    js: jetstream::Context,
    codes: Arc<Vec<KpiCode>>,
    subjects: Arc<Vec<String>>,
    counters: Arc<Counters>,
    run: Arc<str>,
    (first, rate, until): (u64, f64, Instant),
    window: usize,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<jetstream::context::PublishAckFuture>(window);
    let acks = {
        let counters = counters.clone();
        tokio::spawn(async move {
            while let Some(ack) = rx.recv().await {
                match ack.await {
                    Ok(_) => Counters::add(&counters.stored, 1),
                    Err(e) if is_refusal(&e) => Counters::add(&counters.refused, 1),
                    Err(_) => Counters::add(&counters.failed, 1),
                }
            }
        })
    };
    let mut pacer = Pacer::new(rate);
    let mut n = first;
    while Instant::now() < until {
        let due = pacer.due().await;
        for _ in 0..due {
            let k = (n % codes.len() as u64) as usize;
            let now = chrono::Utc::now();
            let ev = EventRecord {
                event_id: format!("lg-{run}-{n}"),
                kpi: codes[k].clone(),
                value: (n % 1000) as f64,
                time: now,
                received_at: now,
                labels: Default::default(),
            };
            n += 1;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, ev.event_id.as_str());
            let sent = js
                .publish_with_headers(subjects[k].clone(), headers, Bytes::from(ev.to_json()))
                .await;
            Counters::add(&counters.sent, 1);
            match sent {
                Ok(ack) => {
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                }
                Err(_) => Counters::add(&counters.failed, 1),
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(20), acks).await;
}

/// A refusal by the stream (full, wrong subject) rather than a lost ack.
fn is_refusal(e: &jetstream::context::PublishError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::PublishErrorKind::StreamNotFound
            | jetstream::context::PublishErrorKind::Other
    )
}
