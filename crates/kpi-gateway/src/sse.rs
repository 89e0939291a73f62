//! `GET /sse/kpi/<code>?period=&since=`: Server-Sent Events, `id:` = seq, resumable.
//!
//! The same messages as the WebSocket, one per `data:` line. A reconnecting
//! `EventSource` sends `Last-Event-ID`, which overrides `since`, so the browser
//! resumes by itself. The connection's outbox conflates exactly as for a
//! WebSocket, so a client that stops reading holds a bounded queue.

use std::convert::Infallible;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use kpi_service::Shutdown;

use crate::access::{Caller, ExpiryWatch};
use crate::admin::Registered;
use crate::hub::Subscription;
use crate::limits::Permit;
use crate::metrics::Transport;
use crate::outbox::{Out, Outbox};
use crate::request::{self, ApiError};
use crate::server::AppState;
use crate::topic::Start;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<request::Query>,
    headers: HeaderMap,
) -> Response {
    match open(&app, &caller, path, &q, &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn open(
    app: &AppState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
    q: &request::Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let topic = request::topic(path, q)?;
    caller.may_read(&topic.code, "read_sse")?;
    app.security.admit(caller, headers)?;
    let mut since = request::number(q, "since")?;
    if let Some(h) = headers.get("last-event-id") {
        let parsed = h.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        since = Some(parsed.ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                "Last-Event-ID must be a seq (a non-negative integer)",
            )
        })?);
    }
    let permit = crate::ws::too_many(app.connections.try_acquire(Transport::Sse))?;
    let interest = app.hub.watch(topic).await?;
    let outbox = Outbox::new(app.settings.queue_capacity);
    let start = since.map_or(Start::Snapshot, Start::Since);
    let sub = interest.attach(&outbox, 1, start);
    let expiry = ExpiryWatch::start(
        &outbox,
        caller.access.expires_at(),
        caller.access.subject().map(str::to_owned),
    );
    let stream = events(Open {
        _listed: app.security.clients().register(&outbox),
        _expiry: expiry,
        ending: false,
        outbox,
        _sub: sub,
        _permit: permit,
        shutdown: app.shutdown.clone(),
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(app.settings.sse_keepalive))
        .into_response())
}

/// What an open SSE response holds; dropping it (client gone or shutdown) unsubscribes.
struct Open {
    _listed: Registered,
    _expiry: ExpiryWatch,
    /// A closing error was sent as the last event; end on the next poll.
    ending: bool,
    outbox: Outbox,
    _sub: Subscription,
    _permit: Permit,
    shutdown: Shutdown,
}

fn events(open: Open) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(open, |mut open| async move {
        if open.ending {
            return None;
        }
        loop {
            // Ending the stream on shutdown lets the HTTP server drain.
            let out = tokio::select! {
                _ = open.shutdown.recv() => None,
                out = open.outbox.next() => out,
            };
            match out? {
                Out::Data { seq, bytes } => {
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        continue;
                    };
                    crate::metrics::message_sent();
                    let event = Event::default().id(seq.to_string()).data(text);
                    return Some((Ok(event), open));
                }
                // System messages (admin broadcasts): an event without an id,
                // so they do not disturb Last-Event-ID resumption.
                Out::Control(bytes) => {
                    let Ok(text) = std::str::from_utf8(&bytes) else {
                        continue;
                    };
                    return Some((Ok(Event::default().data(text)), open));
                }
                Out::Ping | Out::Pong(_) => continue,
                // A close with a reason (an expired token): say why, then end.
                Out::Close { error: Some(e), .. } => {
                    let Ok(text) = std::str::from_utf8(&e) else {
                        return None;
                    };
                    let event = Event::default().data(text);
                    open.ending = true;
                    return Some((Ok(event), open));
                }
                Out::Close { .. } => return None,
            }
        }
    })
}
