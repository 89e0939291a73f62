//! `GET /sse/kpi/<code>?period=&since=&cadence=&encoding=`: Server-Sent Events, `id:` = seq, resumable.
//!
//! The same messages as the WebSocket, one per `data:` line. A reconnecting
//! `EventSource` sends `Last-Event-ID`, which overrides `since`, so the browser
//! resumes by itself. The connection's outbox conflates exactly as for a
//! WebSocket, so a client that stops reading holds a bounded queue.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::Stream;
use kpi_core::{ErrorMessage, Topic};
use tokio::task::AbortHandle;

use crate::close_codes;
use crate::fanout::outbox::{Out, Outbox};
use crate::fanout::topic::Start;
use crate::http::Abort;
use crate::metrics::Transport;
use crate::request::{self, ApiError, TopicQuery};
use crate::security::access::Caller;
use crate::session::{Session, Subscription};
use crate::state::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    abort: Option<Extension<Abort>>,
    TopicQuery { topic, query: q }: TopicQuery,
    headers: HeaderMap,
) -> Response {
    match open(&app, caller, abort.map(|a| a.0), topic, &q, &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn open(
    app: &AppState,
    caller: Caller,
    abort: Option<Abort>,
    topic: Topic,
    q: &request::Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    caller.may_read(&topic.code, "read_sse")?;
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
    let mode = request::mode(q)?;
    let session = Session::admit(app, caller, headers, Transport::Sse)?.open();
    let start = since.map_or(Start::Snapshot, Start::Since);
    let sub = session.subscribe(topic, 1, start, mode).await?;
    let watchdog = abort.map(|abort| {
        tokio::spawn(watch_stuck(
            session.outbox().clone(),
            abort,
            app.settings.stuck_timeout,
        ))
        .abort_handle()
    });
    let keepalive = app.settings.sse_keepalive;
    let app = app.clone();
    let stream = events(Open {
        ending: false,
        outbox: session.outbox().clone(),
        _sub: sub,
        _watchdog: watchdog.map(StopOnDrop),
        _session: session,
        closing: Box::pin(async move { app.closing().await }),
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response())
}

/// What an open SSE response holds; dropping it (client gone or shutdown) unsubscribes.
struct Open {
    /// A closing error was sent as the last event; end on the next poll.
    ending: bool,
    outbox: Outbox,
    _sub: Subscription,
    _watchdog: Option<StopOnDrop>,
    _session: Session,
    closing: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Stops a task when the stream that started it ends.
struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client that stops reading blocks the response body, so nothing of the
/// stream runs: this task watches the queue instead, and like a stuck
/// WebSocket ends the connection once it stayed unread past `stuck_timeout`.
async fn watch_stuck(outbox: Outbox, abort: Abort, stuck_timeout: Duration) {
    let mut tick = tokio::time::interval((stuck_timeout / 4).max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        if outbox.stalled_for().is_some_and(|d| d >= stuck_timeout) {
            crate::metrics::slow_consumer_closed();
            let e = ErrorMessage::new(
                "slow_consumer",
                "the stream was not read in time; reconnect with Last-Event-ID",
            );
            outbox.close(
                close_codes::SLOW_CONSUMER,
                "slow consumer",
                Some(bytes::Bytes::from(e.to_json())),
            );
            abort.fire();
            return;
        }
    }
}

fn events(open: Open) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(open, |mut open| async move {
        if open.ending {
            return None;
        }
        loop {
            // Ending the stream on shutdown lets the HTTP server drain.
            let out = tokio::select! {
                () = &mut open.closing => None,
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
