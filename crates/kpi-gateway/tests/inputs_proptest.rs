//! Arbitrary input into the gateway's pure parsers: never a panic, always a clean error.
//!
//! The same functions the cargo-fuzz targets in `fuzz/` drive, with a bounded
//! number of cases so this runs in CI on stable.
#![allow(clippy::unwrap_used)]

use axum::http::{HeaderMap, HeaderValue};
use kpi_gateway::request::{parse_query, parse_target};
use kpi_gateway::security::auth::{token_from_request, Verifier};
use kpi_gateway::security::origin::OriginPolicy;
use kpi_gateway::ws::mux::parse_client_message;
use proptest::prelude::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that look like what the parsers expect, mutated.
fn messageish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\{\"type\":\"(subscribe|unsubscribe|pause|resume|ping|auth|x)\"(,\"kpi\":\"[a-z_*.>\\\\ ]{0,8}\")?(,\"period\":\"[a-z]{0,7}\")?(,\"since\":-?[0-9]{0,22})?(,\"token\":[0-9a-z\"]{0,9})?\\}",
        proptest::collection::vec(any::<u8>(), 0..256)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_messages_parse_or_fail_cleanly(text in messageish()) {
        match parse_client_message(&text) {
            Ok(_) => {}
            Err(e) => {
                prop_assert!(e.code == "bad_message" || e.code == "unknown_type");
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn queries_and_targets_parse_or_fail_cleanly(
        code in "[a-zA-Z0-9_%*.>\\- ]{0,70}",
        query in "((period|since|wait|limit|token)=[a-z0-9%+&=-]{0,12}&?){0,4}",
        raw in any::<String>(),
    ) {
        for q in [&query, &raw] {
            if let Err(e) = parse_query(q) {
                prop_assert_eq!(e.status.as_u16(), 400);
            }
            match parse_target(&code, q) {
                Ok((topic, _)) => prop_assert_eq!(topic.code.as_str(), code.as_str()),
                Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
            }
        }
    }

    #[test]
    fn tokens_verify_or_fail_cleanly(
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,40}",
            "eyJ[A-Za-z0-9_-]{0,40}\\.eyJ[A-Za-z0-9_-]{0,60}\\.?[A-Za-z0-9_-]{0,10}",
        ],
        header in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let v = Verifier::hs256(SECRET);
        prop_assert!(v.verify(&token).is_err());
        let mut h = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&header) {
            h.insert("authorization", value.clone());
            h.insert("sec-websocket-protocol", value.clone());
            h.insert("origin", value);
        }
        let _ = token_from_request(&h, Some(&token));
        let _ = OriginPolicy::new(&["https://a.example".into()]).check(&h);
    }
}
