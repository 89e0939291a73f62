//! The protocol documents, docs/openapi.yaml and docs/asyncapi.yaml, compiled into the binary and served at `/docs/`.
//!
//! Served by every gateway so that tools (code generators, API explorers,
//! contract tests) read the description of the very version they talk to.
//! Any origin may fetch them: they hold nothing a client could not learn by
//! using the API.

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use kpi_service::Routes;

use crate::assets::{serve, REVALIDATE};

/// The HTTP API (gateway, admin, ingest's HTTP formats), OpenAPI 3.1.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");
/// The streaming protocol (`/ws`, `/ws/kpi/{code}`, SSE), AsyncAPI 3.0.
pub const ASYNCAPI_YAML: &str = include_str!("../../../docs/asyncapi.yaml");

/// RFC 9512's media type for YAML.
const YAML: &str = "application/yaml";

pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Routes<S> {
    Routes::new()
        .get("/docs/openapi.yaml", |h: HeaderMap| async move {
            document(&h, OPENAPI_YAML)
        })
        .get("/docs/asyncapi.yaml", |h: HeaderMap| async move {
            document(&h, ASYNCAPI_YAML)
        })
}

fn document(headers: &HeaderMap, body: &'static str) -> Response {
    let mut resp = serve(headers, body, YAML, REVALIDATE);
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}
