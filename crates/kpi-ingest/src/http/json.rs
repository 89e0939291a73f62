//! `POST /v1/events`: one JSON event, an array of them, or NDJSON streamed line by line.
//!
//! An event is `{"event_id"?, "kpi", "value", "time"? (RFC 3339), "labels"?}`,
//! the fields of the gRPC `Event`. The answer is `Publish`'s, as JSON:
//! `{"accepted","duplicates","refused","results":[{"index","event_id","status","reason","seq"}]}`.
//!
//! NDJSON (`application/x-ndjson`) is read as it arrives and stored in
//! batches, so a body of any length is never held whole; each line may be at
//! most `--max-body-bytes`. Its answer lists every outcome of the first
//! `max_batch` lines and after that only the ones not stored, at most
//! `max_batch` of those (`results_omitted` counts the rest); the totals
//! count every line.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::DateTime;
use kpi_proto::v1::{Event, Status as EventStatus};
use serde::Deserialize;

use super::{Line, Lines, Refused};
use crate::accept::{Accept, Outcome, Refusal, Tally};
use crate::publishers::Publisher;

/// One event as JSON. Unknown fields are refused, so a misspelt `vaule`
/// is an error rather than a silently missing value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    #[serde(default)]
    event_id: String,
    kpi: String,
    value: f64,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// A JSON value as an event, or the reason it is not one.
fn to_event(value: serde_json::Value) -> Result<Event, Outcome> {
    let id_hint = value
        .get("event_id")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let ev: JsonEvent = serde_json::from_value(value)
        .map_err(|e| Outcome::refused(id_hint.clone(), format!("not an event: {e}")))?;
    let time = match ev.time {
        None => None,
        Some(t) => {
            let t = DateTime::parse_from_rfc3339(&t).map_err(|e| {
                Outcome::refused(id_hint.clone(), format!("time {t:?} is not RFC 3339: {e}"))
            })?;
            Some(prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
            })
        }
    };
    Ok(Event {
        event_id: ev.event_id,
        kpi: ev.kpi,
        value: ev.value,
        time,
        labels: ev.labels,
    })
}

fn parse_line(line: &[u8]) -> Result<Event, Outcome> {
    serde_json::from_slice::<serde_json::Value>(line)
        .map_err(|e| Outcome::refused("", format!("not JSON: {e}")))
        .and_then(to_event)
}

/// Collects a request's outcomes within a bound, and its totals.
struct Answer {
    tally: Tally,
    results: Vec<serde_json::Value>,
    omitted: usize,
    /// Outcomes listed in full before only the unstored ones are.
    full: usize,
    cap: usize,
}

impl Answer {
    fn new(full: usize, cap: usize) -> Self {
        Answer {
            tally: Tally::default(),
            results: Vec::new(),
            omitted: 0,
            full,
            cap,
        }
    }

    fn add(&mut self, index: usize, o: Outcome) {
        self.tally.add(&o);
        let stored = matches!(o.status, EventStatus::Stored | EventStatus::Duplicate);
        if index >= self.full && (stored || self.results.len() >= self.full + self.cap) {
            self.omitted += 1;
            return;
        }
        self.results.push(serde_json::json!({
            "index": index,
            "event_id": o.event_id,
            "status": status_name(o.status),
            "reason": o.reason,
            "seq": o.seq,
        }));
    }

    /// The status code: 403 when the token may publish none of it, 400 when
    /// all was refused, 503 when nothing valid is confirmed, else 200.
    fn respond(self, stopped: Option<Refused>) -> Response {
        let t = self.tally;
        let (status, retry, message) = if let Some(r) = stopped {
            (r.status, r.retry_after, Some(r.message))
        } else if t.all_denied() {
            (
                StatusCode::FORBIDDEN,
                None,
                Some("this token may not publish these KPIs".to_owned()),
            )
        } else if t.all_refused() {
            (
                StatusCode::BAD_REQUEST,
                None,
                Some("every event was refused".to_owned()),
            )
        } else if t.all_unknown() {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some(super::RETRY_AFTER_BUS_SECS),
                Some(
                    "outcome unknown: the bus did not confirm these events, some may be stored; retry with the same event_ids, each counts once"
                        .to_owned(),
                ),
            )
        } else {
            (StatusCode::OK, None, None)
        };
        let mut body = serde_json::json!({
            "accepted": t.stored,
            "duplicates": t.duplicates,
            "refused": t.refused + t.unavailable,
            "results": self.results,
        });
        if self.omitted > 0 {
            body["results_omitted"] = self.omitted.into();
        }
        if let Some(m) = message {
            body["message"] = m.into();
        }
        super::respond(status, retry, "application/json", body.to_string())
    }
}

pub fn status_name(s: EventStatus) -> &'static str {
    match s {
        EventStatus::Stored => "stored",
        EventStatus::Duplicate => "duplicate",
        EventStatus::Unavailable => "unavailable",
        _ => "invalid",
    }
}

pub async fn handler(State(accept): State<Accept>, headers: HeaderMap, body: Body) -> Response {
    let publisher = match super::admit(&accept, &headers, None) {
        Ok(p) => p,
        Err(r) => return Refused::from(r).json(),
    };
    if super::content_type(&headers) == "application/x-ndjson" {
        return ndjson(&accept, &headers, body, publisher.as_ref()).await;
    }
    let bytes = match super::read_body(&headers, body, accept.max_body_bytes()).await {
        Ok(b) => b,
        Err(r) => return r.json(),
    };
    let items: Vec<Result<Event, Outcome>> = match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Array(values)) => values.into_iter().map(to_event).collect(),
        Ok(value @ serde_json::Value::Object(_)) => vec![to_event(value)],
        Ok(_) => {
            return Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected an event object or an array of them",
            )
            .json()
        }
        Err(e) => {
            return Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body is not JSON: {e} (send NDJSON as application/x-ndjson)"),
            )
            .json()
        }
    };
    let n = items.len();
    match accept.publish(items, publisher.as_ref()).await {
        Ok(outcomes) => {
            let mut answer = Answer::new(n, 0);
            for (i, o) in outcomes.into_iter().enumerate() {
                answer.add(i, o);
            }
            answer.respond(None)
        }
        Err(r) => Refused::from(r).json(),
    }
}

/// Reads NDJSON as it arrives and stores it `max_in_flight` lines at a time.
async fn ndjson(
    accept: &Accept,
    headers: &HeaderMap,
    body: Body,
    publisher: Option<&Publisher>,
) -> Response {
    use futures::StreamExt;

    let mut chunks = match super::body_chunks(headers, body, accept.max_body_bytes()).await {
        Ok(c) => c,
        Err(r) => return r.json(),
    };
    let mut lines = Lines::new(accept.max_body_bytes());
    let mut answer = Answer::new(accept.max_batch(), accept.max_batch());
    let mut pending: Vec<Result<Event, Outcome>> = Vec::new();
    let mut next_index = 0usize;
    let batch = accept.max_in_flight().min(accept.max_batch());
    let mut stopped = None;
    let mut ended = false;
    while !ended && stopped.is_none() {
        let got = match chunks.next().await {
            Some(Ok(chunk)) => lines.push(&chunk),
            Some(Err(e)) => {
                stopped = Some(Refused::new(StatusCode::BAD_REQUEST, "bad_body", e));
                break;
            }
            None => {
                ended = true;
                std::mem::replace(&mut lines, Lines::new(0))
                    .end()
                    .into_iter()
                    .collect()
            }
        };
        for line in got {
            match line {
                Line::TooLong => pending.push(Err(Outcome::refused(
                    "",
                    format!(
                        "line is longer than the limit of {} bytes",
                        accept.max_body_bytes()
                    ),
                ))),
                Line::Text(t) if t.iter().all(u8::is_ascii_whitespace) => {}
                Line::Text(t) => pending.push(parse_line(&t)),
            }
        }
        while pending.len() >= batch || (ended && !pending.is_empty()) {
            let take = pending.len().min(batch);
            let chunk: Vec<_> = pending.drain(..take).collect();
            match accept.publish(chunk, publisher).await {
                Ok(outcomes) => {
                    for o in outcomes {
                        answer.add(next_index, o);
                        next_index += 1;
                    }
                }
                Err(r) => {
                    let mut refused = Refused::from(r.clone());
                    if r == Refusal::RateLimited {
                        refused.message = format!(
                            "{}; lines from index {next_index} on were not stored",
                            refused.message
                        );
                    }
                    stopped = Some(refused);
                    break;
                }
            }
        }
    }
    answer.respond(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_of_event_and_refuses_strangers() {
        let ev = parse_line(
            br#"{"event_id":"a","kpi":"k","value":2.5,"time":"2026-01-02T03:04:05.5Z","labels":{"x":"y"}}"#,
        )
        .expect("an event");
        assert_eq!(ev.kpi, "k");
        assert_eq!(
            ev.time.map(|t| (t.seconds, t.nanos)),
            Some((1_767_323_045, 500_000_000))
        );
        assert_eq!(ev.labels.get("x").map(String::as_str), Some("y"));
        let bad = parse_line(br#"{"kpi":"k","vaule":1}"#).expect_err("refused");
        assert!(bad.reason.contains("vaule"), "{}", bad.reason);
        let bad = parse_line(br#"{"kpi":"k","value":1,"time":"yesterday"}"#).expect_err("refused");
        assert!(bad.reason.contains("RFC 3339"), "{}", bad.reason);
    }
}
