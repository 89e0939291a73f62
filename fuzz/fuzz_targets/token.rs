//! Fuzzes token handling: JWT verification and finding a token in request headers and query.
#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let verifier = kpi_gateway::security::auth::Verifier::hs256(b"fuzz-secret-fuzz-secret-fuzz-sec");
    // Without the secret nothing can verify: every input must be a clean error.
    assert!(verifier.verify(&text).is_err());
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        headers.insert("authorization", v.clone());
        headers.insert("sec-websocket-protocol", v);
    }
    let _ = kpi_gateway::security::auth::token_from_request(&headers, Some(&text));
});
