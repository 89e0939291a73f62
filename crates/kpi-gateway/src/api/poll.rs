//! `GET /api/kpi/<code>/updates?period=&since=&wait=`: what a poller missed,
//! waiting up to `wait` seconds for the first new update when there is none.
//!
//! A poll is a session like a socket: admitted, holding a connection slot
//! and a topic of its caller's allowance while it waits, and answered early
//! by an admin broadcast (which it carries among its messages).

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;

use crate::fanout::outbox::{Out, Outbox};
use crate::fanout::topic::Start;
use crate::metrics::Transport;
use crate::request::{self, ApiError, TopicQuery};
use crate::security::access::Caller;
use crate::session::Session;
use crate::state::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    TopicQuery { topic, query: q }: TopicQuery,
) -> Result<Response, ApiError> {
    caller.may_read(&topic.code, "read_updates")?;
    let since = request::number(&q, "since")?;
    let wait = request::number(&q, "wait")?
        .map(Duration::from_secs)
        .unwrap_or_default()
        .min(app.settings.poll_max_wait);
    let mode = request::mode(&q)?;
    let cadence = mode.cadence;
    if cadence
        .interval()
        .is_some_and(|n| n > app.settings.poll_max_wait)
    {
        return Err(ApiError::bad_request(
            "invalid_cadence",
            format!(
                "a poll waits at most {} s, so it cannot hold an answer for cadence {cadence}; use SSE or a WebSocket, or poll at that interval without a cadence",
                app.settings.poll_max_wait.as_secs()
            ),
        ));
    }
    let session = Session::admit(&app, caller, &headers, Transport::Poll)?.open();
    let start = since.map_or(Start::Snapshot, Start::After);
    let _sub = session.subscribe(topic.clone(), 1, start, mode).await?;
    let outbox = session.outbox();
    // A throttled poller that already holds a value is answered no sooner
    // than its interval after asking (the topic holds it), with the newest
    // value; it waits at least that long.
    let wait = match (since, cadence.interval()) {
        (Some(_), Some(n)) => wait.max(n).min(app.settings.poll_max_wait),
        _ => wait,
    };
    let mut messages = take_ready(outbox);
    if messages.is_empty() && !wait.is_zero() {
        tokio::select! {
            out = outbox.next() => {
                if let Some(Out::Data { bytes, .. } | Out::Control(bytes)) = out {
                    messages.push(bytes);
                }
                messages.extend(take_ready(outbox));
            }
            _ = tokio::time::sleep(wait) => {}
            _ = app.closing() => {}
        }
    }
    // Each message was validated as JSON when it entered the hub and is
    // copied, not re-serialized.
    let body = kpi_core::message::poll_body(&topic.code, topic.period, &messages);
    Ok(super::json_response(body))
}

fn take_ready(outbox: &Outbox) -> Vec<Bytes> {
    let mut v = Vec::new();
    while let Some(out) = outbox.try_next() {
        if let Out::Data { bytes, .. } | Out::Control(bytes) = out {
            v.push(bytes);
        }
    }
    v
}
