//! OTLP/HTTP `POST /v1/metrics`: protobuf (`application/x-protobuf`) or JSON (`application/json`), mapped by `crate::otlp`.
//!
//! Success is 200 with an `ExportMetricsServiceResponse` in the request's
//! encoding (its `partial_success` lists refused points); a whole-request
//! failure carries a `google.rpc.Status`-shaped body, 503 and 429 with
//! `Retry-After` so exporters retry.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;

use super::Refused;
use crate::accept::Accept;
use crate::otlp::ExportError;

/// `google.rpc.Status`, the body OTLP/HTTP sends with an error status.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn error(r: &Refused, enc: Encoding) -> Response {
    // gRPC codes of the same failures, as google.rpc.Status carries them.
    let code = match r.status {
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::FORBIDDEN => 7,
        StatusCode::TOO_MANY_REQUESTS => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 3,
    };
    match enc {
        Encoding::Protobuf => r.respond(
            "application/x-protobuf",
            RpcStatus {
                code,
                message: r.message.clone(),
            }
            .encode_to_vec(),
        ),
        Encoding::Json => r.respond(
            "application/json",
            serde_json::json!({"code": code, "message": r.message}).to_string(),
        ),
    }
}

pub async fn handler(State(accept): State<Accept>, headers: HeaderMap, body: Body) -> Response {
    let enc = match super::content_type(&headers).as_str() {
        "application/json" => Encoding::Json,
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        other => {
            return error(
                &Refused::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!(
                        "content type {other:?}: send application/x-protobuf or application/json"
                    ),
                ),
                Encoding::Json,
            )
        }
    };
    let publisher = match super::admit(&accept, &headers, None) {
        Ok(p) => p,
        Err(r) => return error(&r.into(), enc),
    };
    let bytes = match super::read_body(&headers, body, accept.max_body_bytes()).await {
        Ok(b) => b,
        Err(r) => return error(&r, enc),
    };
    let request = match enc {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return error(
                &Refused::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("not an OTLP metrics export request: {e}"),
                ),
                enc,
            )
        }
    };
    match crate::otlp::export(&accept, request, publisher.as_ref()).await {
        Ok(response) => match enc {
            Encoding::Protobuf => super::respond(
                StatusCode::OK,
                None,
                "application/x-protobuf",
                response.encode_to_vec(),
            ),
            Encoding::Json => super::respond(
                StatusCode::OK,
                None,
                "application/json",
                serde_json::to_string(&response).unwrap_or_else(|_| "{}".into()),
            ),
        },
        Err(ExportError::Refused(r)) => error(&r.into(), enc),
        Err(ExportError::Denied(why)) => {
            error(&Refused::new(StatusCode::FORBIDDEN, "forbidden", why), enc)
        }
        Err(ExportError::Unknown(why)) => error(
            &Refused::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
                .retry_after(super::RETRY_AFTER_BUS_SECS),
            enc,
        ),
    }
}
