//! The HTTP ingest formats' router and what they share: the publisher's token from headers, bounded (and gzip) bodies, refusals as status codes.
//!
//! Served by kpi-ingest on `--http-listen` and by kpi-stack on the gateway's
//! port. Every handler ends in [`crate::accept::Accept`], the path gRPC takes.

pub mod influx;
pub mod json;
pub mod otlp;

use std::io::Read;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::FromRef;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use kpi_service::Routes;

use crate::accept::{Accept, Refusal};
use crate::publishers::Publisher;

/// Seconds a client is told to wait after a rate limit.
pub const RETRY_AFTER_RATE_SECS: u64 = 1;
/// Seconds a client is told to wait while the bus is unavailable.
pub const RETRY_AFTER_BUS_SECS: u64 = 5;
/// Size of the pieces a gzip body is inflated in.
const INFLATE_CHUNK: usize = 64 * 1024;

/// `POST /v1/events`, `/api/v2/write`, `/write` and `/v1/metrics`, for a
/// router whose state holds the [`Accept`] path.
pub fn routes<S>() -> Routes<S>
where
    S: Clone + Send + Sync + 'static,
    Accept: FromRef<S>,
{
    Routes::new()
        .post("/v1/events", json::handler)
        .post("/api/v2/write", influx::write_handler)
        .post("/write", influx::write_handler)
        .post("/v1/metrics", otlp::handler)
}

/// A whole-request refusal: its status, `Retry-After` when there is one, and the message.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refused {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refused {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// `body` with this refusal's status and `Retry-After`.
    pub fn respond(&self, content_type: &'static str, body: impl Into<Body>) -> Response {
        respond(self.status, self.retry_after, content_type, body)
    }

    /// The gateway's error shape: `{"type":"error","code":..,"message":..}`.
    pub fn json(&self) -> Response {
        let body = serde_json::json!({"type": "error", "code": self.code, "message": self.message});
        self.respond("application/json", body.to_string())
    }
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        let msg = r.to_string();
        match r {
            Refusal::TokenMissing | Refusal::TokenInvalid => {
                Refused::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
            }
            Refusal::RateLimited => {
                Refused::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg)
                    .retry_after(RETRY_AFTER_RATE_SECS)
            }
            Refusal::TooMany { .. } => {
                Refused::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg)
            }
            Refusal::BusDown => Refused::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
                .retry_after(RETRY_AFTER_BUS_SECS),
            Refusal::TooManyCalls { .. } => {
                Refused::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg)
                    .retry_after(RETRY_AFTER_RATE_SECS)
            }
        }
    }
}

pub fn respond(
    status: StatusCode,
    retry_after: Option<u64>,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The token a client presented, in any of the forms publishers' tools send:
/// `Authorization: Bearer <t>`, `Token <t>` (InfluxDB v2 clients), `Basic`
/// with the token as password (InfluxDB v1 clients, Telegraf), or the v1
/// query parameter `p`.
pub fn presented_token(headers: &HeaderMap, query_password: Option<&str>) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
                Some(rest.to_owned())
            } else if scheme.eq_ignore_ascii_case("basic") {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                let (_user, password) = text.split_once(':')?;
                Some(password.to_owned())
            } else {
                None
            }
        });
    from_header.or_else(|| query_password.map(str::to_owned))
}

/// Token and bus checks every HTTP format makes before reading a body.
pub fn admit(
    accept: &Accept,
    headers: &HeaderMap,
    query_password: Option<&str>,
) -> Result<Option<Publisher>, Refusal> {
    let token = presented_token(headers, query_password);
    let publisher = accept.authenticate(token.as_deref(), None)?;
    accept.check_bus()?;
    Ok(publisher)
}

fn is_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

/// The request's media type, lowercased, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn too_large(limit: usize) -> Refused {
    Refused::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("request body is larger than the limit of {limit} bytes; split it"),
    )
}

/// Reads a whole body of at most `limit` bytes (after inflating gzip); 413 past it.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Refused> {
    let raw = read_raw(body, limit).await?;
    if !is_gzip(headers) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_encoding",
                format!("body is not valid gzip: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

async fn read_raw(body: Body, limit: usize) -> Result<Bytes, Refused> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the body: {e}"),
            )
        })?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A body as it arrives, in pieces, inflated when it is gzip. Only the
/// compressed bytes of a gzip body are held (at most `limit`), so a plain
/// body of any length passes through in bounded memory.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

pub async fn body_chunks(headers: &HeaderMap, body: Body, limit: usize) -> Result<Chunks, Refused> {
    if !is_gzip(headers) {
        return Ok(Box::pin(
            body.into_data_stream()
                .map(|r| r.map_err(|e| format!("reading the body: {e}"))),
        ));
    }
    let raw = read_raw(body, limit).await?;
    let decoder = flate2::read::GzDecoder::new(std::io::Cursor::new(raw));
    Ok(Box::pin(futures::stream::unfold(
        Some(decoder),
        |decoder| async move {
            let mut decoder = decoder?;
            let mut buf = vec![0u8; INFLATE_CHUNK];
            match decoder.read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(decoder)))
                }
                Err(e) => Some((Err(format!("body is not valid gzip: {e}")), None)),
            }
        },
    )))
}

/// Splits pieces of a body into lines (without `\n` or `\r\n`), holding at
/// most `max` bytes of one line; a longer line is reported as too long and
/// skipped to its end.
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
    overlong: bool,
}

/// One line of a body, or a line that was too long to hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(Vec<u8>),
    TooLong,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Lines {
            buf: Vec::new(),
            max,
            overlong: false,
        }
    }

    /// The lines `chunk` completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.take(&rest[..pos]);
            out.push(self.finish());
            rest = &rest[pos + 1..];
        }
        self.take(rest);
        out
    }

    /// The last line, when the body does not end in a newline.
    pub fn end(mut self) -> Option<Line> {
        (self.overlong || !self.buf.is_empty()).then(|| self.finish())
    }

    fn take(&mut self, piece: &[u8]) {
        if self.overlong {
            return;
        }
        if self.buf.len() + piece.len() > self.max {
            self.overlong = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(piece);
        }
    }

    fn finish(&mut self) -> Line {
        if std::mem::take(&mut self.overlong) {
            return Line::TooLong;
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Line::Text(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_bound_each_line() {
        let mut l = Lines::new(5);
        assert_eq!(l.push(b"ab"), vec![]);
        assert_eq!(l.push(b"c\r\nabcdefgh"), vec![Line::Text(b"abc".to_vec())]);
        assert_eq!(
            l.push(b"ij\nxy\n"),
            vec![Line::TooLong, Line::Text(b"xy".to_vec())]
        );
        assert_eq!(l.push(b"z"), vec![]);
        assert_eq!(l.end(), Some(Line::Text(b"z".to_vec())));
    }

    #[test]
    fn tokens_come_from_every_scheme_influx_clients_use() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            presented_token(&h, None)
        };
        assert_eq!(with("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("Token abc").as_deref(), Some("abc"));
        // "user:abc"
        assert_eq!(with("Basic dXNlcjphYmM=").as_deref(), Some("abc"));
        assert_eq!(with("Digest x"), None);
        assert_eq!(
            presented_token(&HeaderMap::new(), Some("p")).as_deref(),
            Some("p")
        );
    }
}
