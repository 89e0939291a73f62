//! `GET /api/kpi/<code>/history?period=&limit=`: closed buckets, newest last,
//! one entry per bucket (a correction replaces the bucket's earlier record).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use kpi_core::message::{HistoryBody, HistoryBucket};
use kpi_core::UpdateMessage;

use crate::metrics::Transport;
use crate::request::{self, ApiError, TopicQuery};
use crate::security::access::Caller;
use crate::session::Session;
use crate::state::AppState;

pub const DEFAULT_HISTORY_LIMIT: u64 = 60;
pub const MAX_HISTORY_LIMIT: u64 = 1500;

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    TopicQuery { topic, query: q }: TopicQuery,
) -> Result<Response, ApiError> {
    caller.may_read(&topic.code, "read_history")?;
    let limit = request::number(&q, "limit")?.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("limit must be between 1 and {MAX_HISTORY_LIMIT}"),
        ));
    }
    let _admitted = Session::admit(&app, caller, &headers, Transport::Read)?;
    // Corrections repeat buckets, so read more records than buckets wanted.
    let fetch = usize::try_from(limit.saturating_mul(2)).unwrap_or(usize::MAX);
    let records = app.hub.bus().history(&topic, fetch).await?;
    let mut buckets: BTreeMap<DateTime<Utc>, HistoryBucket> = BTreeMap::new();
    for raw in records {
        let Ok(m) = UpdateMessage::from_json(&raw) else {
            continue;
        };
        let newer = buckets.get(&m.bucket_start).is_none_or(|b| m.seq > b.seq);
        if newer {
            let bucket = HistoryBucket {
                bucket_start: m.bucket_start,
                seq: m.seq,
                stats: m.stats,
            };
            buckets.insert(m.bucket_start, bucket);
        }
    }
    let skip = buckets
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    let body = HistoryBody {
        kpi: topic.code,
        period: topic.period,
        buckets: buckets.into_values().skip(skip).collect(),
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| ApiError::unavailable(format!("encoding the history: {e}")))?;
    Ok(super::json_response(json))
}
