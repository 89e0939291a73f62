//! CORS for the HTTP transports (SSE, polling, history, snapshots), following the Origin allow-list.
//!
//! A dashboard served from another origin imports `/kpistream.js` and then
//! reads over SSE and HTTP; without these headers its browser would refuse
//! to hand it the answers. An allowed origin is echoed (every origin is
//! answered `*` when the list is empty); a preflight for a request with a
//! token is answered here. A foreign origin gets no CORS headers, and the
//! request itself is refused by admission.

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::security::Security;

/// Request headers a cross-origin page may send: its token and SSE's resume point.
const ALLOWED_HEADERS: &str = "authorization, last-event-id, content-type";

/// Middleware: answers preflights and adds `Access-Control-Allow-Origin`.
pub async fn layer(State(security): State<Security>, req: Request, next: Next) -> Response {
    let allow = allowed_origin(&security, req.headers());
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut resp = if preflight {
        match allow {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => StatusCode::FORBIDDEN.into_response(),
        }
    } else {
        next.run(req).await
    };
    let Some(allow) = allow else {
        return resp;
    };
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.append(VARY, HeaderValue::from_static("origin"));
    if preflight {
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    resp
}

/// What to answer in `Access-Control-Allow-Origin`, if the request's Origin may read.
fn allowed_origin(security: &Security, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    if security.origins().is_open() {
        return Some(HeaderValue::from_static("*"));
    }
    security
        .origins()
        .check(headers)
        .ok()
        .map(|()| origin.clone())
}
