//! `GET /api/kpi/<code>?period=`: the current value as a snapshot message (a dashboard's initial load).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use kpi_core::Topic;

use crate::fanout::topic::{empty_snapshot, relabel_snapshot};
use crate::metrics::Transport;
use crate::request::{ApiError, TopicQuery};
use crate::security::access::Caller;
use crate::session::Session;
use crate::state::AppState;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    TopicQuery { topic, .. }: TopicQuery,
) -> Result<Response, ApiError> {
    caller.may_read(&topic.code, "read_snapshot")?;
    let _admitted = Session::admit(&app, caller, &headers, Transport::Read)?;
    Ok(super::json_response(current(&app, &topic).await?))
}

async fn current(app: &AppState, topic: &Topic) -> Result<Bytes, ApiError> {
    if let Some(watched) = app.hub.watched(topic) {
        return Ok(watched.snapshot().1);
    }
    match app.hub.bus().last_update(topic).await? {
        Some(raw) => Ok(relabel_snapshot(&raw).unwrap_or(raw)),
        None => Ok(empty_snapshot(topic).1),
    }
}
