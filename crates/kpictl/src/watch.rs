//! `kpictl watch`: one SSE stream per KPI, shown as a table redrawn in place (value, change, age) or as JSON lines.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kpi_core::{KpiCode, Period};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::{Client, Failure, Side};

/// Messages waiting to be shown; the streams wait when it is full.
const QUEUE: usize = 256;
/// The table is redrawn at least this often, so ages stay true.
const TICK: Duration = Duration::from_secs(1);
/// Longest SSE line kept; a longer one is a broken stream.
const MAX_LINE: usize = 1024 * 1024;

pub async fn run(
    client: &Client,
    kpis: Vec<KpiCode>,
    period: Period,
    cadence: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let (tx, mut rx) = mpsc::channel::<Result<Value, Failure>>(QUEUE);
    for kpi in &kpis {
        let mut url = client.gateway_url(&format!("/sse/kpi/{kpi}?period={period}"));
        if let Some(c) = &cadence {
            url.push_str(&format!("&cadence={c}"));
        }
        // Opened here, so a wrong URL or a refused token fails before anything is drawn.
        let resp = client
            .send(
                client
                    .request(reqwest::Method::GET, &url)
                    .header("accept", "text/event-stream"),
                Side::Gateway,
                &url,
            )
            .await?;
        tokio::spawn(read_sse(resp, url, tx.clone()));
    }
    drop(tx);

    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    let mut drawn_lines = 0usize;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Ok(msg)) => {
                    if json {
                        if !emit(&format!("{msg}\n")) {
                            return Ok(());
                        }
                        continue;
                    }
                    if let Some(kpi) = msg.get("kpi").and_then(Value::as_str) {
                        latest.insert(kpi.to_owned(), msg.clone());
                    }
                }
                Some(Err(f)) => return Err(f),
                None => return Err(Failure::other("every stream ended")),
            },
            _ = tick.tick() => {}
        }
        if !json {
            match redraw(&kpis, &latest, drawn_lines) {
                Some(n) => drawn_lines = n,
                // The reader went away (`| head`): done, quietly.
                None => return Ok(()),
            }
        }
    }
}

/// Writes to stdout; false once nobody reads it any more.
fn emit(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).is_ok() && out.flush().is_ok()
}

/// Redraws the table over the previous one (ANSI: cursor up, clear to end);
/// the lines drawn, or `None` when stdout is gone.
fn redraw(kpis: &[KpiCode], latest: &BTreeMap<String, Value>, previous: usize) -> Option<usize> {
    let mut out = String::new();
    if previous > 0 {
        out.push_str(&format!("\x1b[{previous}A\x1b[J"));
    }
    let now = Utc::now();
    for kpi in kpis {
        match latest.get(kpi.as_str()) {
            Some(msg) => out.push_str(&describe(msg, now)),
            None => out.push_str(&format!("{kpi:<24} waiting for data")),
        }
        out.push('\n');
    }
    emit(&out).then_some(kpis.len())
}

/// `kpi  period  value  change  age` for one message.
pub fn describe(msg: &Value, now: DateTime<Utc>) -> String {
    let kpi = msg["kpi"].as_str().unwrap_or("?");
    let period = msg["period"].as_str().unwrap_or("?");
    let last = msg["stats"]["last"].as_f64();
    let prev = msg["previous"]["stats"]["last"].as_f64();
    let value = last.map_or("-".to_owned(), |v| format!("{v}"));
    let change = match (last, prev) {
        (Some(l), Some(p)) => format!("{:+}", l - p),
        _ => "".to_owned(),
    };
    let age = msg["event_time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
            format!("{secs}s ago")
        })
        .unwrap_or_else(|| "no data".to_owned());
    format!(
        "{kpi:<24} {period:<6} {value:>14} {change:>12}  {age}  (count {})",
        msg["stats"]["count"]
    )
}

pub fn print_history(msg: &Value) {
    let empty = Vec::new();
    let buckets = msg["buckets"].as_array().unwrap_or(&empty);
    if buckets.is_empty() {
        println!("no closed buckets yet");
    }
    for b in buckets {
        let s = &b["stats"];
        println!(
            "{}  count {}  sum {}  avg {}  min {}  max {}  last {}",
            b["bucket_start"].as_str().unwrap_or("?"),
            s["count"],
            s["sum"],
            s["avg"],
            s["min"],
            s["max"],
            s["last"]
        );
    }
}

/// Reads one SSE stream and forwards each `data:` message.
async fn read_sse(resp: reqwest::Response, url: String, tx: mpsc::Sender<Result<Value, Failure>>) {
    let mut body = resp.bytes_stream();
    let mut line = Vec::new();
    let mut data = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx
                    .send(Err(Failure::other(format!("{url}: stream broke: {e}"))))
                    .await;
                return;
            }
        };
        for &b in chunk.iter() {
            if b != b'\n' {
                if line.len() < MAX_LINE {
                    line.push(b);
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            line.clear();
            if let Some(d) = text.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            } else if text.is_empty() && !data.is_empty() {
                let msg = std::mem::take(&mut data);
                match serde_json::from_str::<Value>(&msg) {
                    Ok(v) if v["type"] == "error" => {
                        let _ = tx
                            .send(Err(Failure::other(format!(
                                "{url}: {}",
                                v["message"].as_str().unwrap_or("error")
                            ))))
                            .await;
                        return;
                    }
                    Ok(v) => {
                        if tx.send(Ok(v)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }
    let _ = tx
        .send(Err(Failure::other(format!(
            "{url}: the gateway closed the stream"
        ))))
        .await;
}
