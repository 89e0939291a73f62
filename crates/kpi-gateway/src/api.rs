//! The HTTP endpoints: snapshot, history of closed buckets, and polling.
//!
//! The snapshot and history endpoints never subscribe upstream: they read
//! what the gateway already follows, or the bus's stored values. Polling does
//! hold a subscription while it waits, since a poller is a live watcher.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use kpi_core::{StatsView, Topic, UpdateMessage};
use serde_json::json;

use crate::access::Caller;
use crate::outbox::{Out, Outbox};
use crate::request::{self, ApiError};
use crate::server::AppState;
use crate::topic::{empty_snapshot, relabel_snapshot, Start};

pub const DEFAULT_HISTORY_LIMIT: u64 = 60;
pub const MAX_HISTORY_LIMIT: u64 = 1500;

fn json_response(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /api/kpi/<code>?period=`: the current value as a snapshot message.
pub(crate) async fn snapshot(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<request::Query>,
) -> Result<Response, ApiError> {
    let topic = request::topic(path, &q)?;
    caller.may_read(&topic.code, "read_snapshot")?;
    Ok(json_response(current_snapshot(&app, &topic).await?))
}

async fn current_snapshot(app: &AppState, topic: &Topic) -> Result<Bytes, ApiError> {
    if let Some(watched) = app.hub.watched(topic) {
        return Ok(watched.snapshot().1);
    }
    match app.hub.bus().last_update(topic).await? {
        Some(raw) => Ok(relabel_snapshot(&raw).unwrap_or(raw)),
        None => Ok(empty_snapshot(topic).1),
    }
}

/// `GET /api/kpi/<code>/history?period=&limit=`: closed buckets, newest last,
/// one entry per bucket (a correction replaces the bucket's earlier record).
pub(crate) async fn history(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<request::Query>,
) -> Result<Response, ApiError> {
    let topic = request::topic(path, &q)?;
    caller.may_read(&topic.code, "read_history")?;
    let limit = request::number(&q, "limit")?.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("limit must be between 1 and {MAX_HISTORY_LIMIT}"),
        ));
    }
    // Corrections repeat buckets, so read more records than buckets wanted.
    let fetch = usize::try_from(limit.saturating_mul(2)).unwrap_or(usize::MAX);
    let records = app.hub.bus().history(&topic, fetch).await?;
    let mut buckets: BTreeMap<DateTime<Utc>, (u64, StatsView)> = BTreeMap::new();
    for raw in records {
        let Ok(m) = UpdateMessage::from_json(&raw) else {
            continue;
        };
        let newer = buckets
            .get(&m.bucket_start)
            .is_none_or(|(seq, _)| m.seq > *seq);
        if newer {
            buckets.insert(m.bucket_start, (m.seq, m.stats));
        }
    }
    let skip = buckets
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    let list: Vec<_> = buckets
        .into_iter()
        .skip(skip)
        .map(|(start, (seq, stats))| {
            json!({"bucket_start": kpi_core::time::rfc3339(&start), "seq": seq, "stats": stats})
        })
        .collect();
    let body =
        json!({"kpi": topic.code.as_str(), "period": topic.period.as_str(), "buckets": list});
    Ok(json_response(Bytes::from(body.to_string())))
}

/// `GET /api/kpi/<code>/updates?period=&since=&wait=`: what a poller missed,
/// waiting up to `wait` seconds for the first new update when there is none.
pub(crate) async fn updates(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<request::Query>,
) -> Result<Response, ApiError> {
    let topic = request::topic(path, &q)?;
    caller.may_read(&topic.code, "read_updates")?;
    let since = request::number(&q, "since")?;
    let wait = request::number(&q, "wait")?
        .map(Duration::from_secs)
        .unwrap_or_default()
        .min(app.settings.poll_max_wait);
    let interest = app.hub.watch(topic.clone()).await?;
    let outbox = Outbox::new(app.settings.queue_capacity);
    let _sub = interest.attach(&outbox, 1, since.map_or(Start::Snapshot, Start::Since));
    let mut messages = take_ready(&outbox);
    if messages.is_empty() && !wait.is_zero() {
        tokio::select! {
            out = outbox.next() => {
                if let Some(Out::Data { bytes, .. }) = out {
                    messages.push(bytes);
                }
                messages.extend(take_ready(&outbox));
            }
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.recv() => {}
        }
    }
    let mut body = BytesMut::new();
    let head = json!({"kpi": topic.code.as_str(), "period": topic.period.as_str()}).to_string();
    // `{"kpi":..,"period":..` then the messages as they are: each was
    // validated as JSON when it entered the hub, and is not re-serialized.
    body.put_slice(&head.as_bytes()[..head.len() - 1]);
    body.put_slice(b",\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(m);
    }
    body.put_slice(b"]}");
    Ok(json_response(body.freeze()))
}

fn take_ready(outbox: &Outbox) -> Vec<Bytes> {
    let mut v = Vec::new();
    while let Some(out) = outbox.try_next() {
        if let Out::Data { bytes, .. } = out {
            v.push(bytes);
        }
    }
    v
}
