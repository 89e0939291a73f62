//! The HTTP reads: a topic's snapshot, its history, polling for updates, and the list of KPIs.
//!
//! Each passes the same admission as a streaming client
//! ([`crate::session::Session::admit`]), holding a connection slot while it
//! is answered. Snapshot and history never subscribe upstream: they read
//! what the gateway already follows, or the bus's stored values. A poll is a
//! session: it subscribes while it waits, like any live watcher.

pub(crate) mod history;
pub(crate) mod kpis;
pub(crate) mod poll;
pub(crate) mod snapshot;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

fn json_response(body: impl Into<Bytes>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}
