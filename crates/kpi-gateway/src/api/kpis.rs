//! `GET /api/kpis`: `{"kpis":[..]}`, the codes with published updates that the caller may read, sorted.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use kpi_core::message::KpiList;

use crate::metrics::Transport;
use crate::request::ApiError;
use crate::security::access::Caller;
use crate::session::Session;
use crate::state::AppState;

/// At most this many codes: a picker, not an export.
pub const MAX_LISTED_KPIS: usize = 1000;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admitted = Session::admit(&app, caller, &headers, Transport::Read)?;
    let codes = app.hub.bus().known_kpis(MAX_LISTED_KPIS).await?;
    // Only the codes this caller may read: a KPI's name can be a secret too.
    let list = KpiList {
        kpis: codes
            .into_iter()
            .filter(|c| admitted.caller().access.may_read(c))
            .collect(),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::to_string(&list).unwrap_or_default(),
    )
        .into_response())
}
