//! `GET /ws/kpi/<code>?period=&since=`: one topic per WebSocket, snapshot first, then updates.
//!
//! Everything that can be refused is refused before the upgrade, as a plain
//! HTTP error with a JSON body, so a browser's failed handshake carries the reason.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use kpi_core::Topic;

use crate::fanout::topic::Start;
use crate::metrics::Transport;
use crate::request::{self, ApiError, TopicQuery};
use crate::security::access::Caller;
use crate::session::Session;
use crate::state::AppState;
use crate::ws::connection::{self, Flow, Inbound, Timing};
use crate::ws::upgrade::{Upgrade, UpgradeRejection};

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    TopicQuery { topic, query: q }: TopicQuery,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    match prepare(&app, caller, &headers, topic, &q, ws).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn prepare(
    app: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    topic: Topic,
    q: &request::Query,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.may_read(&topic.code, "read_ws")?;
    let start = match request::number(q, "since")? {
        Some(since) => Start::Since(since),
        None => Start::Snapshot,
    };
    let mode = request::mode(q)?;
    let session = Session::admit(app, caller, headers, Transport::Ws)?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let session = session.open();
    // Subscribed before the upgrade: a refusal is still a clean HTTP error.
    let sub = session.subscribe(topic, 1, start, mode).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let app = session.app().clone();
        let outbox = session.outbox().clone();
        let timing = Timing::from_settings(&app.settings);
        connection::drive(socket, outbox, Ignore, timing, app.closing()).await;
        drop(sub);
        drop(session);
    }))
}

/// This socket only sends; what a client sends is read (for liveness and
/// the message rate) and dropped.
struct Ignore;

impl Inbound for Ignore {
    async fn on_text(&mut self, _text: &str) -> Flow {
        Flow::Continue
    }

    async fn on_binary(&mut self) -> Flow {
        Flow::Continue
    }
}
