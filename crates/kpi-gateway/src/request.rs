//! Turning URL parts into a validated topic, and errors into JSON responses.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kpi_core::{Cadence, ErrorMessage, KpiCode, Period, Topic};

use crate::fanout::outbox::Mode;

/// An HTTP error answered as `{"type":"error","code":..,"message":..}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorMessage,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        crate::metrics::rejected(code);
        ApiError {
            status,
            body: ErrorMessage::new(code, message),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body.to_json(),
        )
            .into_response()
    }
}

impl From<crate::GatewayError> for ApiError {
    fn from(e: crate::GatewayError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<kpi_bus::BusError> for ApiError {
    fn from(e: kpi_bus::BusError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

pub type Query = HashMap<String, String>;

/// A topic endpoint's request: the topic from the path and `period`, and
/// the rest of the query. Refused as a JSON 400 before the handler runs.
pub struct TopicQuery {
    pub topic: Topic,
    pub query: Query,
}

impl<S: Send + Sync> FromRequestParts<S> for TopicQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let path = Path::<String>::from_request_parts(parts, state).await;
        let query = parse_query(parts.uri.query().unwrap_or(""))?;
        let topic = topic(path, &query)?;
        Ok(TopicQuery { topic, query })
    }
}

/// The KPI code from the path; a path that is not even UTF-8 is an invalid code too.
pub fn code(path: Result<Path<String>, PathRejection>) -> Result<KpiCode, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request("invalid_kpi", e.body_text()))?;
    parse_code(&raw)
}

pub fn parse_code(raw: &str) -> Result<KpiCode, ApiError> {
    KpiCode::parse(raw).map_err(|e| ApiError::bad_request("invalid_kpi", e.to_string()))
}

/// `period` from the query, `minute` when absent.
pub fn period(q: &Query) -> Result<Period, ApiError> {
    match q.get("period") {
        None => Ok(Period::Minute),
        Some(p) => {
            Period::parse(p).map_err(|e| ApiError::bad_request("invalid_period", e.to_string()))
        }
    }
}

pub fn topic(path: Result<Path<String>, PathRejection>, q: &Query) -> Result<Topic, ApiError> {
    let code = code(path)?;
    Ok(Topic::new(code, period(q)?))
}

/// `cadence` and `encoding` from the query (`live` and full messages when
/// absent); a 400 `invalid_cadence` or `invalid_encoding` otherwise.
pub fn mode(q: &Query) -> Result<Mode, ApiError> {
    let cadence = Cadence::parse_opt(q.get("cadence").map(String::as_str))
        .map_err(|e| ApiError::bad_request("invalid_cadence", e.to_string()))?;
    let delta = delta(q.get("encoding").map(String::as_str))
        .map_err(|m| ApiError::bad_request("invalid_encoding", m))?;
    Ok(Mode { cadence, delta })
}

/// `encoding`: `delta` asks for patches, `full` (or nothing) does not.
pub fn delta(raw: Option<&str>) -> Result<bool, String> {
    match raw {
        None | Some("full") => Ok(false),
        Some("delta") => Ok(true),
        Some(other) => Err(format!(
            "encoding {:?} is not full or delta",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// An optional unsigned number parameter.
pub fn number(q: &Query, name: &str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(
                "bad_request",
                format!("{name} must be a non-negative integer"),
            )
        }),
    }
}

/// Parses a raw query string (`period=hour&since=4`) the way the handlers'
/// `Query` extractor does. Pure and total: any input yields a map or a 400.
pub fn parse_query(raw: &str) -> Result<Query, ApiError> {
    let uri: axum::http::Uri = format!("/?{raw}")
        .parse()
        .map_err(|_| ApiError::bad_request("bad_request", "the query string is malformed"))?;
    axum::extract::Query::<Query>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request("bad_request", e.body_text()))
}

/// A topic endpoint's inputs, as its handler reads them: the code from the
/// path (already percent-decoded) and `period` and `since` from the query.
pub fn parse_target(code: &str, raw_query: &str) -> Result<(Topic, Option<u64>), ApiError> {
    let q = parse_query(raw_query)?;
    let topic = Topic::new(parse_code(code)?, period(&q)?);
    Ok((topic, number(&q, "since")?))
}
