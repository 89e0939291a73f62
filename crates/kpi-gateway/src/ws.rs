//! `GET /ws/kpi/<code>?period=&since=`: one topic per WebSocket, snapshot first, then updates.
//!
//! Everything that can be refused is refused before the upgrade, as a plain
//! HTTP error with a JSON body, so a browser's failed handshake carries the reason.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::access::{Access, Caller, ExpiryWatch};
use crate::connection::{self, Flow, Inbound, Timing};
use crate::hub::Interest;
use crate::limits::Permit;
use crate::metrics::Transport;
use crate::outbox::Outbox;
use crate::request::{self, ApiError};
use crate::server::AppState;
use crate::topic::Start;
use crate::ws_upgrade::{RawSocket, Upgrade, UpgradeRejection};

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    Query(q): Query<request::Query>,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    match prepare(&app, &caller, &headers, path, &q, ws).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn prepare(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    q: &request::Query,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Result<Response, ApiError> {
    let topic = request::topic(path, q)?;
    caller.may_read(&topic.code, "read_ws")?;
    app.security.admit(caller, headers)?;
    let start = match request::number(q, "since")? {
        Some(since) => Start::Since(since),
        None => Start::Snapshot,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let permit = too_many(app.connections.try_acquire(Transport::Ws))?;
    // Subscribed before the upgrade: a bus failure is still a clean 503.
    let interest = app.hub.watch(topic).await?;
    let app = app.clone();
    let access = caller.access.clone();
    Ok(ws.on_upgrade(move |socket| serve(socket, app, interest, start, permit, access)))
}

/// The 503 for a full gateway.
pub(crate) fn too_many(permit: Option<Permit>) -> Result<Permit, ApiError> {
    permit.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this gateway is at its connection limit; retry later or elsewhere",
        )
    })
}

async fn serve(
    socket: RawSocket,
    app: AppState,
    interest: Interest,
    start: Start,
    permit: Permit,
    access: Access,
) {
    let outbox = Outbox::new(app.settings.queue_capacity);
    let _listed = app.security.clients().register(&outbox);
    let _expiry = ExpiryWatch::start(
        &outbox,
        access.expires_at(),
        access.subject().map(str::to_owned),
    );
    let sub = interest.attach(&outbox, 1, start);
    connection::drive(
        socket,
        outbox,
        Ignore,
        Timing::from_settings(&app.settings),
        app.shutdown.clone(),
    )
    .await;
    drop(sub);
    drop(permit);
}

/// This socket only sends; what a client sends is read (for liveness) and dropped.
struct Ignore;

impl Inbound for Ignore {
    async fn on_text(&mut self, _text: &str) -> Flow {
        Flow::Continue
    }

    async fn on_binary(&mut self) -> Flow {
        Flow::Continue
    }
}
