//! Clients for the cluster tests: a reconnecting WebSocket watcher that records what it saw, and a publisher that retries until acked.

#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, PublishRequest, Status};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The period the tests watch: a day bucket never rolls over during a test
/// (except across midnight UTC), so counts only grow.
pub const PERIOD: &str = "day";

/// A unique KPI code per test run.
pub fn unique(prefix: &str) -> String {
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}", n % 1_000_000_000_000)
}

/// What one watcher saw, across all its connections.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Successful handshakes (1 = never reconnected).
    pub connects: u32,
    /// The gateway (HAProxy server name) of each connection, in order.
    pub served_by: Vec<String>,
    /// Data messages received.
    pub messages: u64,
    pub last_seq: Option<u64>,
    pub last_count: Option<f64>,
    pub last_sum: Option<f64>,
    pub last_value: Option<f64>,
    /// When the latest data message arrived.
    pub last_message_at: Option<Instant>,
    /// Close codes the server sent.
    pub close_codes: Vec<u16>,
    /// Connections that ended without a close frame (a crash, a reset).
    pub dropped: u32,
    /// Handshakes that failed.
    pub failed_connects: Vec<String>,
    /// `{"type":"error"}` messages and anything unparseable.
    pub errors: Vec<String>,
    /// A value older than one already seen (seq or count went back).
    pub regressions: Vec<String>,
}

impl Seen {
    /// The gateway the watcher is on now (or was on last).
    pub fn current_gateway(&self) -> Option<&str> {
        self.served_by.last().map(String::as_str)
    }

    /// What every fault test demands of client `i`: no error message and no
    /// value older than one it already had.
    pub fn assert_clean(&self, i: usize) {
        assert!(
            self.errors.is_empty(),
            "client {i} got errors: {:?}",
            self.errors
        );
        assert!(
            self.regressions.is_empty(),
            "client {i} saw older values: {:?}",
            self.regressions
        );
    }
}

/// A WebSocket client on `/ws/kpi/<code>?period=day` that reconnects with
/// `since=<last seq>` whenever its connection ends, until dropped.
pub struct Watcher {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Watcher {
    pub fn start(base_ws: &str, code: &str) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let url = format!("{base_ws}/ws/kpi/{code}?period={PERIOD}");
        let task = tokio::spawn(watch(url, seen.clone()));
        Watcher { seen, task }
    }

    pub fn seen(&self) -> Seen {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(url: String, seen: Arc<Mutex<Seen>>) {
    let lock = || seen.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let resume = lock().last_seq;
        let target = match resume {
            Some(seq) => format!("{url}&since={seq}"),
            None => url.clone(),
        };
        let (mut ws, resp) = match tokio_tungstenite::connect_async(&target).await {
            Ok(ok) => ok,
            Err(e) => {
                lock().failed_connects.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        {
            let mut s = lock();
            s.connects += 1;
            let by = resp
                .headers()
                .get("x-kpi-gateway")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            s.served_by.push(by);
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => record(&mut lock(), text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    lock()
                        .close_codes
                        .push(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    lock().dropped += 1;
                    break;
                }
            }
        }
        // Reconnect at once, as a dashboard would after close 1012.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record(s: &mut Seen, text: &str) {
    let msg: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            s.errors.push(format!("not JSON ({e}): {text}"));
            return;
        }
    };
    match msg["type"].as_str() {
        Some("snapshot") | Some("update") => {}
        _ => {
            s.errors.push(text.to_string());
            return;
        }
    }
    let Some(seq) = msg["seq"].as_u64() else {
        s.errors.push(format!("no seq: {text}"));
        return;
    };
    let count = msg["stats"]["count"].as_f64();
    if let Some(last) = s.last_seq {
        let is_update = msg["type"] == "update";
        if seq < last || (is_update && seq == last) {
            s.regressions
                .push(format!("seq {seq} after {last}: {text}"));
        }
    }
    if let (Some(c), Some(prev)) = (count, s.last_count) {
        if c < prev {
            s.regressions
                .push(format!("count {c} after {prev}: {text}"));
        }
    }
    s.messages += 1;
    s.last_seq = Some(s.last_seq.map_or(seq, |l| l.max(seq)));
    s.last_count = count.or(s.last_count);
    s.last_sum = msg["stats"]["sum"].as_f64().or(s.last_sum);
    s.last_value = msg["stats"]["last"].as_f64().or(s.last_value);
    s.last_message_at = Some(Instant::now());
}

/// One event for `code` at `time` with value `value`.
pub fn event(id: &str, code: &str, value: f64, time: SystemTime) -> Event {
    Event {
        event_id: id.to_string(),
        kpi: code.to_string(),
        value,
        time: Some(prost_types::Timestamp::from(time)),
        labels: Default::default(),
    }
}

/// Publishes one event, retrying (same event_id, so it counts once) until
/// ingest acknowledges it as stored or duplicate; panics after `give_up`.
/// Returns how many attempts failed first.
pub async fn publish_until_acked(
    grpc: &str,
    client: &mut Option<IngestClient<tonic::transport::Channel>>,
    ev: Event,
    give_up: Duration,
) -> u32 {
    let deadline = Instant::now() + give_up;
    let mut failures = 0;
    loop {
        let outcome = async {
            if client.is_none() {
                *client = Some(
                    IngestClient::connect(grpc.to_string())
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            let c = client.as_mut().ok_or("no client")?;
            let resp = tokio::time::timeout(
                Duration::from_secs(5),
                c.publish(PublishRequest {
                    events: vec![ev.clone()],
                }),
            )
            .await
            .map_err(|_| "publish timed out".to_string())?
            .map_err(|s| s.to_string())?
            .into_inner();
            let status = resp
                .results
                .first()
                .map(|r| r.status)
                .unwrap_or(Status::Stored as i32);
            if status == Status::Stored as i32 || status == Status::Duplicate as i32 {
                Ok(())
            } else {
                Err(format!("status {status}: {:?}", resp.results))
            }
        }
        .await;
        match outcome {
            Ok(()) => return failures,
            Err(why) => {
                failures += 1;
                if Instant::now() >= deadline {
                    panic!(
                        "event {} not acknowledged within {give_up:?}: {why}",
                        ev.event_id
                    );
                }
                if why.contains("transport") {
                    *client = None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Events published and acknowledged so far by a [`Publisher`].
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub acked: u64,
    pub sum: f64,
    pub last_value: f64,
    pub failed_attempts: u32,
    pub ids: BTreeSet<String>,
    /// When the latest acknowledgement came, and the longest wait between two.
    pub last_ack_at: Option<Instant>,
    pub longest_gap: Duration,
}

/// Publishes events 1, 2, 3, ... (value = number) to `code` every `every`
/// until stopped, each one retried until acknowledged.
pub struct Publisher {
    published: Arc<Mutex<Published>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Publisher {
    pub fn start(grpc: &str, code: &str, time: SystemTime, every: Duration) -> Publisher {
        let published = Arc::new(Mutex::new(Published::default()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (grpc, code, p) = (grpc.to_string(), code.to_string(), published.clone());
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut n: u64 = 0;
            while !*stopped.borrow() {
                n += 1;
                let id = format!("{code}-{n}");
                let ev = event(&id, &code, n as f64, time);
                let failed =
                    publish_until_acked(&grpc, &mut client, ev, Duration::from_secs(60)).await;
                {
                    let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
                    p.acked += 1;
                    p.sum += n as f64;
                    p.last_value = n as f64;
                    p.failed_attempts += failed;
                    p.ids.insert(id);
                    let now = Instant::now();
                    if let Some(prev) = p.last_ack_at {
                        p.longest_gap = p.longest_gap.max(now - prev);
                    }
                    p.last_ack_at = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Publisher {
            published,
            stop,
            task,
        }
    }

    /// Waits until at least `n` events are acknowledged (the topic exists).
    pub async fn wait_acked(&self, n: u64) {
        while self.published().acked < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn published(&self) -> Published {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops after the event in flight is acknowledged; returns the totals.
    pub async fn stop(self) -> Published {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            panic!("publisher task failed: {e}");
        }
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Waits until every watcher holds `count` events with value sum `sum`;
/// returns the watchers that did not, with what they hold, after `timeout`.
pub async fn wait_all_hold(
    watchers: &[Watcher],
    count: u64,
    sum: f64,
    timeout: Duration,
) -> Vec<(usize, Seen)> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind: Vec<(usize, Seen)> = watchers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, w.seen()))
            .filter(|(_, s)| s.last_count != Some(count as f64) || s.last_sum != Some(sum))
            .collect();
        if behind.is_empty() || Instant::now() >= deadline {
            return behind;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every watcher got at least one data message.
pub async fn wait_all_snapshots(watchers: &[Watcher], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while watchers.iter().any(|w| w.seen().messages == 0) {
        if Instant::now() >= deadline {
            let seen: Vec<Seen> = watchers.iter().map(Watcher::seen).collect();
            panic!("not every watcher got a snapshot within {timeout:?}: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
