//! Admin actions: system broadcasts and maintenance mode, carried to every gateway over the bus.
//!
//! `POST /api/admin/broadcast` and `POST /api/admin/maintenance` (admin claim
//! required) publish one [`SystemEvent`] with `bus.broadcast`. Every gateway,
//! the sender included, runs one [`listen`] task on `bus.subscribe_broadcast()`
//! that applies the event (maintenance on or off) and hands
//! `{"type":"system","message":..,"at":..}` to each of its WebSocket and SSE
//! clients, which are listed in [`Clients`]. A maintenance event is also
//! stored on the bus (state `maintenance`) before it is broadcast, and a
//! gateway applies the stored one when it starts ([`restore_maintenance`]),
//! so one started during maintenance keeps its doors closed too.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use kpi_bus::{Live, UpdateSubscription};
use kpi_core::message::{Accepted, AcceptedTag, SystemEvent};
use kpi_service::Shutdown;
use serde::Deserialize;

use crate::request::ApiError;
use crate::security::access::Caller;
use crate::security::audit;
use crate::security::Security;
use crate::session::clients::Clients;
use crate::state::AppState;

/// The bus state holding the last maintenance event.
pub const MAINTENANCE_STATE: &str = "maintenance";

/// Longest system message accepted.
pub const MAX_MESSAGE_CHARS: usize = 1000;

/// Largest admin request body (a message of `MAX_MESSAGE_CHARS` fits many times).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// An admin body must arrive within this: a client announcing one and
/// sending it slowly (or never) must not hold a request open.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies system events from the bus until shutdown.
pub(crate) async fn listen(
    mut sub: UpdateSubscription,
    security: Security,
    clients: Clients,
    shutdown: Shutdown,
) {
    loop {
        let item = tokio::select! {
            () = shutdown.recv() => return,
            item = sub.next() => item,
        };
        let bytes = match item {
            None => {
                tracing::warn!("system broadcast subscription ended; admin broadcasts will not reach this gateway");
                return;
            }
            Some(Live::Gap) => continue,
            Some(Live::Message(bytes)) => bytes,
        };
        let event: SystemEvent = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed system broadcast");
                continue;
            }
        };
        apply_maintenance(&security, &event);
        let reached = clients.push_all(&Bytes::from(event.client_json()));
        tracing::info!(reached, maintenance = ?event.maintenance, "system message delivered");
    }
}

fn apply_maintenance(security: &Security, event: &SystemEvent) {
    match event.maintenance {
        Some(true) => security.set_maintenance(Some(event.message.clone())),
        Some(false) => security.set_maintenance(None),
        None => {}
    }
}

/// Applies the stored maintenance state, at start. Call it after subscribing
/// to broadcasts and before handing the subscription to [`listen`]: the
/// admin stores before it broadcasts, so whatever the subscription holds is
/// at least as new as what this reads, and is applied after it.
pub(crate) async fn restore_maintenance(bus: &kpi_bus::Bus, security: &Security) {
    let stored = match bus.load_state(MAINTENANCE_STATE).await {
        Ok(Some(raw)) => raw,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored maintenance state; assuming none");
            return;
        }
    };
    match serde_json::from_slice::<SystemEvent>(&stored) {
        Ok(event) => {
            apply_maintenance(security, &event);
            if event.maintenance == Some(true) {
                tracing::warn!(message = %event.message, since = %event.at, "starting in maintenance mode");
            }
        }
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed stored maintenance state"),
    }
}

#[derive(Deserialize)]
struct BroadcastBody {
    message: String,
}

#[derive(Deserialize)]
struct MaintenanceBody {
    enabled: bool,
    #[serde(default)]
    message: Option<String>,
}

/// `POST /api/admin/broadcast` `{"message": ".."}`.
pub(crate) async fn broadcast(
    State(app): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require_admin("admin_broadcast")?;
    let b: BroadcastBody = parse_body(&read_body(body).await?)?;
    let message = checked_message(b.message)?;
    publish(&app, &caller, "admin_broadcast", message, None).await
}

/// `POST /api/admin/maintenance` `{"enabled": true, "message": ".."}`.
pub(crate) async fn maintenance(
    State(app): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require_admin("admin_maintenance")?;
    let b: MaintenanceBody = parse_body(&read_body(body).await?)?;
    let message = match b.message {
        Some(m) => checked_message(m)?,
        None if b.enabled => "maintenance has started".to_string(),
        None => "maintenance is over".to_string(),
    };
    publish(&app, &caller, "admin_maintenance", message, Some(b.enabled)).await
}

async fn publish(
    app: &AppState,
    caller: &Caller,
    action: &str,
    message: String,
    maintenance: Option<bool>,
) -> Result<Response, ApiError> {
    let event = SystemEvent {
        message,
        at: kpi_core::time::rfc3339(&Utc::now()),
        maintenance,
    };
    let payload = Bytes::from(
        serde_json::to_vec(&event)
            .map_err(|e| ApiError::unavailable(format!("encoding the event: {e}")))?,
    );
    if maintenance.is_some() {
        // Stored first: a gateway starting now reads it, or receives the
        // broadcast, or both.
        app.hub
            .bus()
            .save_state(MAINTENANCE_STATE, payload.clone())
            .await?;
    }
    app.hub.bus().broadcast(payload).await?;
    let detail = match maintenance {
        Some(true) => "maintenance on",
        Some(false) => "maintenance off",
        None => "broadcast",
    };
    audit::allowed(action, caller.who(), detail);
    let body = Accepted {
        kind: AcceptedTag::Accepted,
        message: event.message,
        at: event.at,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response())
}

/// The body, read only once the caller is known to be an admin: at most
/// `MAX_BODY_BYTES` (413) within `BODY_TIMEOUT` (408).
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("an admin request body is at most {MAX_BODY_BYTES} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_request", format!("invalid JSON body: {e}")))
}

fn checked_message(m: String) -> Result<String, ApiError> {
    let chars = m.chars().count();
    if chars == 0 || chars > MAX_MESSAGE_CHARS {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("message must be 1 to {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    Ok(m)
}
