//! docs/openapi.yaml and docs/asyncapi.yaml match the routers: every route kpi-gateway, the HTTP ports of kpi-ingest and kpi-aggregator, and kpi-stack serve is documented, nothing else is, and a running stack serves both documents.
//!
//! The routers' own route tables (`kpi_service::Routes`) are the truth on
//! the code side; an OpenAPI operation names the binaries that serve it in
//! `x-services`. The streaming routes are also asyncapi.yaml's channels.

use std::collections::BTreeSet;

use kpi_core::message::{Pong, Reply, SystemMessage};
use kpi_core::{ClientMessage, ErrorMessage, KpiCode, Period, UpdateKind, UpdateMessage};
use kpi_service::Endpoint;
use kpi_test_support::Stack;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");
const ASYNCAPI: &str = include_str!("../../../docs/asyncapi.yaml");

/// The binaries an operation's `x-services` may name.
const SERVICES: [&str; 4] = ["kpi-gateway", "kpi-ingest", "kpi-aggregator", "kpi-stack"];

/// `"GET /api/kpis"`-style lines, sorted, for readable differences.
type RouteSet = BTreeSet<String>;

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("a protocol document is not YAML")
}

fn served(table: &[Endpoint]) -> RouteSet {
    let set: RouteSet = table.iter().map(ToString::to_string).collect();
    assert_eq!(set.len(), table.len(), "a route is listed twice: {table:?}");
    set
}

/// Every documented operation: `(route, its x-services)`.
fn operations() -> Vec<(String, Vec<String>)> {
    let doc = yaml(OPENAPI);
    let paths = doc["paths"].as_mapping().expect("openapi.yaml has paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("a path is a string");
        let item = item.as_mapping().expect("a path item is a mapping");
        for (method, op) in item {
            let method = method.as_str().expect("a method is a string");
            let route = format!("{} {path}", method.to_uppercase());
            let services: Vec<String> = op["x-services"]
                .as_sequence()
                .unwrap_or_else(|| panic!("{route} has no x-services list"))
                .iter()
                .map(|s| s.as_str().expect("a service name").to_string())
                .collect();
            for s in &services {
                assert!(
                    SERVICES.contains(&s.as_str()),
                    "{route}: unknown service {s}"
                );
            }
            out.push((route, services));
        }
    }
    out
}

fn documented(service: &str) -> RouteSet {
    operations()
        .into_iter()
        .filter(|(_, services)| services.iter().any(|s| s == service))
        .map(|(route, _)| route)
        .collect()
}

fn assert_same(service: &str, served: &RouteSet) {
    let documented = documented(service);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(served).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "{service}: served but not in docs/openapi.yaml: {undocumented:?}; \
         in docs/openapi.yaml (x-services) but not served: {missing:?}"
    );
}

#[test]
fn openapi_lists_exactly_the_gateways_routes() {
    assert_same("kpi-gateway", &served(&kpi_gateway::route_table()));
}

#[test]
fn openapi_lists_exactly_the_routes_of_ingests_http_port() {
    assert_same("kpi-ingest", &served(&kpi_ingest::http_route_table()));
}

#[test]
fn openapi_lists_exactly_the_routes_of_the_aggregators_http_port() {
    assert_same(
        "kpi-aggregator",
        &served(&kpi_aggregator::http_route_table()),
    );
}

/// kpi-stack serves the gateway's router with ingest's HTTP formats merged
/// in (`kpi_gateway::run_with_routes`); ingest's own port there only adds
/// ops routes the gateway already has.
#[test]
fn openapi_lists_exactly_the_routes_of_the_stack() {
    let mut table = kpi_gateway::route_table();
    table.extend_from_slice(kpi_ingest::http::routes::<kpi_ingest::Accept>().table());
    assert_same("kpi-stack", &served(&table));
}

#[test]
fn the_streaming_routes_are_the_asyncapi_channels() {
    let doc = yaml(ASYNCAPI);
    let channels: RouteSet = doc["channels"]
        .as_mapping()
        .expect("asyncapi.yaml has channels")
        .values()
        .map(|c| format!("GET {}", c["address"].as_str().expect("an address")))
        .collect();
    let gateway = served(&kpi_gateway::route_table());
    let streaming: RouteSet = yaml(OPENAPI)["paths"]
        .as_mapping()
        .expect("paths")
        .iter()
        .filter(|(_, item)| {
            item["get"]["tags"]
                .as_sequence()
                .is_some_and(|t| t.contains(&Value::from("stream")))
        })
        .map(|(path, _)| format!("GET {}", path.as_str().expect("a path")))
        .collect();
    assert_eq!(
        channels, streaming,
        "asyncapi channels against openapi's `stream` routes"
    );
    assert!(
        channels.is_subset(&gateway),
        "channels the gateway does not serve: {:?}",
        channels.difference(&gateway).collect::<Vec<_>>()
    );
    assert_eq!(channels.len(), 3, "{channels:?}");
}

#[test]
fn asyncapi_names_every_close_code_the_gateway_sends() {
    use kpi_gateway::close_codes::*;
    let sent: BTreeSet<u64> = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL,
        INVALID_PAYLOAD,
        POLICY,
        TOO_BIG,
        INTERNAL,
        RESTART,
        TOKEN_EXPIRED,
        SLOW_CONSUMER,
    ]
    .into_iter()
    .map(u64::from)
    .collect();
    let doc = yaml(ASYNCAPI);
    for name in ["multiplexed", "topicSocket"] {
        let listed: BTreeSet<u64> = doc["channels"][name]["x-close-codes"]
            .as_sequence()
            .unwrap_or_else(|| panic!("channel {name} has no x-close-codes"))
            .iter()
            .map(|c| c.as_u64().expect("a close code"))
            .collect();
        assert_eq!(listed, sent, "channel {name}");
    }
}

/// The data message the aggregator publishes has exactly the fields both
/// documents require (`correction` is only present when true).
#[test]
fn the_documented_data_message_is_the_one_the_code_writes() {
    let kpi = KpiCode::parse("docs_check").expect("code");
    let msg = UpdateMessage::empty(kpi, Period::Minute, chrono::Utc::now());
    let json: serde_json::Value = serde_json::from_slice(&msg.to_json()).expect("json");
    let fields = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    };
    let required = |v: &Value| -> BTreeSet<String> {
        v["required"]
            .as_sequence()
            .expect("a required list")
            .iter()
            .map(|f| f.as_str().expect("a field name").to_string())
            .collect()
    };
    let openapi = yaml(OPENAPI);
    let asyncapi = yaml(ASYNCAPI);
    let schemas = [
        (
            &openapi["components"]["schemas"]["DataMessage"],
            &openapi["components"]["schemas"]["Stats"],
        ),
        (
            &asyncapi["components"]["schemas"]["dataMessage"],
            &asyncapi["components"]["schemas"]["stats"],
        ),
    ];
    for (message, stats) in schemas {
        assert_eq!(fields(&json), required(message));
        assert_eq!(fields(&json["stats"]), required(stats));
    }
}

/// JSON as both sides may spell it: numbers as `f64` (`4` and `4.0` alike)
/// and no `null` members (a type may write an absent option as `null`).
fn canonical(v: &serde_json::Value) -> serde_json::Value {
    match kpi_core::merge_patch::strip_nulls(v) {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(a) => a.iter().map(canonical).collect(),
        serde_json::Value::Object(m) => m.iter().map(|(k, x)| (k.clone(), canonical(x))).collect(),
        other => other,
    }
}

/// `payload` read as the code's type `T` and written back.
fn through<T: DeserializeOwned + Serialize>(
    name: &str,
    payload: &serde_json::Value,
) -> serde_json::Value {
    let parsed: T = serde_json::from_value(payload.clone())
        .unwrap_or_else(|e| panic!("the {name} example is not one the code reads: {e}\n{payload}"));
    serde_json::to_value(parsed).expect("serializes")
}

/// Every message asyncapi.yaml documents has an example, and every example
/// is one the code reads and writes unchanged; a patch example turns the
/// snapshot example of its `base_seq` into a valid message of its `seq`.
#[test]
fn every_asyncapi_example_is_a_message_the_code_reads_and_writes() {
    let doc = yaml(ASYNCAPI);
    let messages = doc["components"]["messages"]
        .as_mapping()
        .expect("messages");
    let mut data = Vec::new();
    let mut patches = Vec::new();
    for (name, message) in messages {
        let name = name.as_str().expect("a message name");
        let examples = message["examples"]
            .as_sequence()
            .unwrap_or_else(|| panic!("message {name} has no example"));
        for example in examples {
            let payload = serde_json::to_value(&example["payload"]).expect("YAML as JSON");
            if name != "reply" {
                assert_eq!(payload["type"], name, "the type of a {name} example");
            }
            let written = match name {
                "subscribe" | "unsubscribe" | "pause" | "resume" | "ping" | "auth" => {
                    through::<ClientMessage>(name, &payload)
                }
                "snapshot" | "update" => {
                    let m: UpdateMessage =
                        serde_json::from_value(payload.clone()).expect("a data message");
                    let kind = if name == "snapshot" {
                        UpdateKind::Snapshot
                    } else {
                        UpdateKind::Update
                    };
                    assert_eq!(m.kind, kind);
                    data.push(m.clone());
                    serde_json::to_value(m).expect("serializes")
                }
                "reply" => through::<Reply>(name, &payload),
                "pong" => through::<Pong>(name, &payload),
                "error" => through::<ErrorMessage>(name, &payload),
                "system" => through::<SystemMessage>(name, &payload),
                // No Rust type: the gateway builds it as JSON; checked below.
                "patch" => {
                    patches.push(payload.clone());
                    payload.clone()
                }
                other => panic!("no check for message {other}: add its type here"),
            };
            assert_eq!(canonical(&written), canonical(&payload), "message {name}");
        }
    }
    assert!(!patches.is_empty());
    for patch in patches {
        let base = data
            .iter()
            .find(|m| Some(m.seq) == patch["base_seq"].as_u64())
            .expect("a data example with the patch's base_seq");
        let mut patched = serde_json::to_value(base).expect("serializes");
        kpi_core::merge_patch::apply(&mut patched, &patch["patch"]);
        let patched: UpdateMessage =
            serde_json::from_value(patched).expect("a patched message is a data message");
        assert_eq!(Some(patched.seq), patch["seq"].as_u64());
        assert_eq!(patched.kpi.as_str(), patch["kpi"]);
    }
}

/// A route the router does not have is a 404 with an empty body (axum's
/// fallback); a route with the wrong method a 405. Every handler answers
/// anything else, so a documented route the binary lacks is caught here.
async fn answered_by_a_route(client: &reqwest::Client, method: &str, url: &str) -> bool {
    let req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        other => panic!("no probe for method {other}"),
    };
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    match resp.status().as_u16() {
        405 => false,
        // Only a 404's body is read: an SSE stream's never ends.
        404 => !resp.bytes().await.map(|b| b.is_empty()).unwrap_or(true),
        _ => true,
    }
}

#[tokio::test]
async fn a_running_stack_serves_both_documents_and_every_documented_route() {
    let stack = Stack::start(&[], &[]).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        ("/docs/openapi.yaml", OPENAPI),
        ("/docs/asyncapi.yaml", ASYNCAPI),
    ] {
        let resp = client
            .get(format!("{}{path}", stack.http))
            .send()
            .await
            .expect("GET a document");
        assert_eq!(resp.status(), 200, "{path}");
        let content_type = resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(content_type, "application/yaml", "{path}");
        assert_eq!(resp.text().await.expect("body"), body, "{path}");
    }

    for route in documented("kpi-stack") {
        let (method, path) = route.split_once(' ').expect("METHOD path");
        let path = path
            .replace("{code}", "docs_probe")
            .replace("{name}", "app.js");
        let url = format!("{}{path}?period=minute&wait=0", stack.http);
        assert!(
            answered_by_a_route(&client, method, &url).await,
            "kpi-stack does not serve the documented {route}"
        );
    }
    // The probe can tell: an undocumented route is not answered.
    let url = format!("{}/api/not_a_route", stack.http);
    assert!(!answered_by_a_route(&client, "GET", &url).await);
}
