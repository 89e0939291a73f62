//! kpistream's pipeline under load: nats-server, kpi-ingest and kpi-aggregator process(es), fed through gRPC `Publish`.
//!
//! Lag is event -> render: the loadgen subscribes on NATS to the minute
//! updates of a sample of the KPIs and announces them on `kpi.interest`, as
//! a gateway would (the aggregator renders live only watched topics), and takes each
//! update's `event_time` (the newest event it covers, stamped by the
//! loadgen when it built the event) against the moment it arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kpi_core::{interest, KpiCode, Period, Topic};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::PublishRequest;
use serde::Deserialize;
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::step::{Counters, Lag, Load, Pacer};
use super::CapacityArgs;
use crate::processes::{free_port, pid, sibling, spawn, start_nats_and_ingest, wait_http_ok};
use crate::publish::{event, run_tag};

pub struct Pipeline {
    /// Kept for the services' logs; removed with the pipeline.
    dir: tempfile::TempDir,
    children: Vec<Child>,
    processes: Vec<(u32, String)>,
    client: IngestClient<Channel>,
    codes: Arc<Vec<KpiCode>>,
    counters: Arc<Counters>,
    lag: Arc<Lag>,
    watcher: JoinHandle<()>,
    run: Arc<str>,
    next_event: u64,
    batch: usize,
    in_flight: usize,
}

/// Only the fields the lag needs; the rest of the update is not parsed.
#[derive(Deserialize)]
struct Stamp {
    seq: u64,
    event_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl Pipeline {
    /// Starts nats-server, ingest and `aggregators` aggregator processes
    /// with `partitions` partitions, and the update watcher.
    pub async fn start(
        a: &CapacityArgs,
        codes: Arc<Vec<KpiCode>>,
        partitions: u32,
        aggregators: u32,
    ) -> anyhow::Result<Pipeline> {
        let dir = tempfile::Builder::new()
            .prefix("kpi-loadgen-capacity-")
            .tempdir()?;
        let partitions_s = partitions.to_string();
        let max_bytes = a.events_max_bytes.to_string();
        let env = [
            ("RUST_LOG", "warn"),
            ("KPI_PARTITIONS", partitions_s.as_str()),
            ("KPI_EVENTS_MAX_BYTES", max_bytes.as_str()),
        ];
        let ni = start_nats_and_ingest(dir.path(), &env).await?;
        let mut processes = vec![
            (pid(&ni.nats)?, "nats-server".to_string()),
            (pid(&ni.ingest)?, "kpi-ingest".to_string()),
        ];
        let mut children = vec![ni.nats, ni.ingest];
        for i in 0..aggregators {
            let port = free_port()?;
            let mut cmd = Command::new(sibling("kpi-aggregator")?);
            cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--coalesce-ms", &a.coalesce_ms.to_string()])
                .args(["--replica-index", &i.to_string()])
                .args(["--replica-count", &aggregators.to_string()])
                .env("NATS_URL", &ni.nats_url)
                .envs(env);
            let child = spawn(dir.path(), &format!("kpi-aggregator-{i}"), cmd)?;
            processes.push((pid(&child)?, "kpi-aggregator".to_string()));
            children.push(child);
            wait_http_ok(port, "/readyz", Duration::from_secs(30)).await?;
        }
        let url = format!("http://127.0.0.1:{}", ni.grpc);
        let client = IngestClient::connect(url.clone())
            .await
            .with_context(|| format!("connecting to ingest at {url}"))?;
        let counters = Arc::new(Counters::default());
        let lag = Arc::new(Lag::default());
        let watcher = watch(&ni.nats_url, &codes, a.watch, counters.clone(), lag.clone()).await?;
        Ok(Pipeline {
            dir,
            children,
            processes,
            client,
            codes,
            counters,
            lag,
            watcher,
            run: run_tag().into(),
            next_event: 0,
            batch: a.batch.max(1),
            in_flight: a.in_flight.max(1),
        })
    }

    /// The last lines each service logged, for a failed run.
    pub fn logs(&self) -> String {
        crate::processes::log_tails(self.dir.path())
    }

    pub async fn shutdown(mut self) {
        self.watcher.abort();
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}

/// Subscribes to the minute updates of every `len / watch`-th KPI and
/// announces them as a gateway's bus does: at once, every `REFRESH`, and
/// whenever an aggregator asks.
async fn watch(
    nats_url: &str,
    codes: &[KpiCode],
    watch: usize,
    counters: Arc<Counters>,
    lag: Arc<Lag>,
) -> anyhow::Result<JoinHandle<()>> {
    let nats = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let every = codes.len().div_ceil(watch.max(1)).max(1);
    let topics: Vec<Topic> = codes
        .iter()
        .step_by(every)
        .map(|code| Topic::new(code.clone(), Period::Minute))
        .collect();
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(nats.subscribe(t.updates_subject()).await?);
    }
    let mut all = futures::stream::select_all(subs);
    let mut queries = nats.subscribe(interest::INTEREST_QUERY_SUBJECT).await?;
    let announcements: Vec<bytes::Bytes> = interest::encode(&topics)
        .into_iter()
        .map(Into::into)
        .collect();
    // Sent after the SUBs on the same connection, so what it starts reaches them.
    announce(&nats, &announcements).await?;
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + interest::REFRESH,
        interest::REFRESH,
    );
    Ok(tokio::spawn(async move {
        // Per subject, the newest seq seen: a trailing store repeats the
        // newest update up to a store interval later, and counting its age
        // would charge the pipeline with a lag no client sees.
        let mut newest: std::collections::HashMap<String, u64> = Default::default();
        loop {
            let m = tokio::select! {
                m = all.next() => m,
                // A refresh that fails is repeated at the next one.
                _ = refresh.tick() => {
                    let _ = announce(&nats, &announcements).await;
                    continue;
                }
                Some(_) = queries.next() => {
                    let _ = announce(&nats, &announcements).await;
                    continue;
                }
            };
            let Some(m) = m else { break };
            let Ok(stamp) = serde_json::from_slice::<Stamp>(&m.payload) else {
                continue;
            };
            match newest.get_mut(m.subject.as_str()) {
                Some(seen) if stamp.seq <= *seen => continue,
                Some(seen) => *seen = stamp.seq,
                None => {
                    newest.insert(m.subject.to_string(), stamp.seq);
                }
            }
            Counters::add(&counters.read, 1);
            if let Some(t) = stamp.event_time {
                lag.record_since(t.timestamp_micros());
            }
        }
    }))
}

async fn announce(nats: &async_nats::Client, announcements: &[bytes::Bytes]) -> anyhow::Result<()> {
    for a in announcements {
        nats.publish(interest::INTEREST_SUBJECT, a.clone())
            .await
            .context("announcing the watched topics")?;
    }
    Ok(())
}

impl Load for Pipeline {
    fn spawn_publisher(&mut self, rate: f64, until: Instant) -> JoinHandle<()> {
        let first = self.next_event;
        // Ids stay unique across steps: a step never sends more than this.
        self.next_event += (rate * 3600.0) as u64;
        tokio::spawn(publish(
            self.client.clone(),
            self.codes.clone(),
            self.counters.clone(),
            self.run.clone(),
            first,
            rate,
            until,
            (self.batch, self.in_flight),
        ))
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn lag(&self) -> &Lag {
        &self.lag
    }

    fn processes(&self) -> Vec<(u32, String)> {
        self.processes.clone()
    }

    fn counted(&self) -> &'static [&'static str] {
        &["nats-server", "kpi-ingest", "kpi-aggregator"]
    }
}

/// Paces events into `Publish` batches of at most `batch`, with at most
/// `in_flight` calls outstanding; when all are, the pacer falls behind and
/// the step shows it as a stored rate below the offered one.
#[allow(clippy::too_many_arguments)]
async fn publish(
    client: IngestClient<Channel>,
    codes: Arc<Vec<KpiCode>>,
    counters: Arc<Counters>,
    run: Arc<str>,
    first: u64,
    rate: f64,
    until: Instant,
    (batch, in_flight): (usize, usize),
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut pacer = Pacer::new(rate);
    let mut n = first;
    let mut events = Vec::with_capacity(batch);
    while Instant::now() < until {
        let due = pacer.due().await;
        for _ in 0..due {
            let code = &codes[(n % codes.len() as u64) as usize];
            match event(&run, n, code, (n % 1000) as f64) {
                Ok(e) => events.push(e),
                Err(_) => Counters::add(&counters.failed, 1),
            }
            n += 1;
            if events.len() >= batch {
                send(&client, &slots, &counters, std::mem::take(&mut events)).await;
            }
        }
        // Whatever is due goes out now: holding a part batch back would add lag.
        if !events.is_empty() {
            send(&client, &slots, &counters, std::mem::take(&mut events)).await;
        }
    }
    // Let the last calls finish, so their outcomes are counted.
    let all = u32::try_from(in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(20), slots.acquire_many(all)).await;
}

async fn send(
    client: &IngestClient<Channel>,
    slots: &Arc<Semaphore>,
    counters: &Arc<Counters>,
    events: Vec<kpi_proto::v1::Event>,
) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let mut client = client.clone();
    let counters = counters.clone();
    let count = events.len() as u64;
    Counters::add(&counters.sent, count);
    tokio::spawn(async move {
        let call = client.publish(PublishRequest { events });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Counters::add(
                    &counters.stored,
                    u64::from(r.accepted) + u64::from(r.duplicates),
                );
                Counters::add(&counters.refused, u64::from(r.refused));
            }
            _ => Counters::add(&counters.failed, count),
        }
        drop(slot);
    });
}
