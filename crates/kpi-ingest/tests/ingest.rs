//! The Ingest contract end to end over gRPC, against the in-process bus.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{event, Harness};
use kpi_ingest::IngestSettings;
use kpi_proto::v1::{Event, PublishRequest, Status as EventStatus};
use tonic::Code;

fn batch(events: Vec<Event>) -> PublishRequest {
    PublishRequest { events }
}

fn ts(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn a_valid_batch_is_stored_with_its_values() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let t = Utc::now() - chrono::Duration::seconds(30);
    let mut first = event("b-1", "sales_eu", 12.5);
    first.time = Some(ts(t));
    first.labels.insert("region".into(), "eu".into());
    let resp = client
        .publish(batch(vec![first, event("b-2", "sales_eu", -3.0)]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!((resp.accepted, resp.duplicates, resp.refused), (2, 0, 0));
    assert_eq!(resp.results.len(), 2);
    for (i, r) in resp.results.iter().enumerate() {
        assert_eq!(r.index as usize, i);
        assert_eq!(r.status(), EventStatus::Stored);
        assert!(r.seq > 0);
    }

    let stored = h.read_events("sales_eu", 2).await;
    let rec = stored[0].record.as_ref().expect("decodes");
    assert_eq!(rec.event_id, "b-1");
    assert_eq!(rec.kpi.as_str(), "sales_eu");
    assert_eq!(rec.value, 12.5);
    assert_eq!(rec.time.timestamp_micros(), t.timestamp_micros());
    assert_eq!(rec.labels.get("region").map(String::as_str), Some("eu"));
    let rec = stored[1].record.as_ref().expect("decodes");
    assert_eq!((rec.event_id.as_str(), rec.value), ("b-2", -3.0));
    // Unset time = received now.
    assert!((Utc::now() - rec.time).num_seconds().abs() < 10);
}

#[tokio::test]
async fn an_empty_event_id_is_assigned_by_the_server() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let resp = client
        .publish(batch(vec![event("", "orders", 1.0)]))
        .await
        .expect("publish")
        .into_inner();
    let assigned = &resp.results[0].event_id;
    assert_eq!(assigned.len(), 36, "{assigned}");
    let stored = h.read_events("orders", 1).await;
    assert_eq!(
        &stored[0].record.as_ref().expect("decodes").event_id,
        assigned
    );
}

#[tokio::test]
async fn the_same_event_id_twice_counts_once() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let first = client
        .publish(batch(vec![event("dup-1", "visits", 1.0)]))
        .await
        .expect("publish")
        .into_inner();
    let second = client
        .publish(batch(vec![event("dup-1", "visits", 1.0)]))
        .await
        .expect("publish again")
        .into_inner();
    assert_eq!(first.results[0].status(), EventStatus::Stored);
    assert_eq!(
        (second.accepted, second.duplicates, second.refused),
        (0, 1, 0)
    );
    assert_eq!(second.results[0].status(), EventStatus::Duplicate);
    assert_eq!(second.results[0].seq, first.results[0].seq);

    h.read_events("visits", 1).await;
    assert!(h.no_more_events("visits", 1).await, "duplicate was stored");
}

const HOSTILE: &[&str] = &["a.b", "*", ">", "%2A", "a b", "é", "a\0b", ""];

#[tokio::test]
async fn hostile_codes_are_refused_one_by_one_with_a_reason() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let long = "x".repeat(65);
    let mut codes: Vec<&str> = HOSTILE.to_vec();
    codes.push(&long);
    let mut events: Vec<Event> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| event(&format!("h-{i}"), c, 1.0))
        .collect();
    events.push(event("h-ok", "fine", 1.0));
    let resp = client
        .publish(batch(events))
        .await
        .expect("a batch with one valid event succeeds")
        .into_inner();
    assert_eq!((resp.accepted, resp.refused), (1, codes.len() as u32));
    for (i, code) in codes.iter().enumerate() {
        let r = &resp.results[i];
        assert_eq!(r.status(), EventStatus::Invalid, "{code:?} accepted");
        assert!(r.reason.contains("kpi code"), "{code:?}: {}", r.reason);
        if !code.is_empty() && code.is_ascii() && !code.contains('\0') {
            let shown = if code.len() > 64 { &code[..64] } else { code };
            assert!(r.reason.contains(shown), "{code:?}: {}", r.reason);
        }
    }
    assert_eq!(resp.results[codes.len()].status(), EventStatus::Stored);
}

#[tokio::test]
async fn a_single_bad_event_is_a_clean_invalid_argument() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    for code in HOSTILE {
        let err = client
            .publish(batch(vec![event("x", code, 1.0)]))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{code:?}");
        assert!(err.message().contains("kpi code"), "{}", err.message());
    }
}

#[tokio::test]
async fn non_finite_values_are_refused() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let resp = client
        .publish(batch(vec![
            event("nan", "temp", f64::NAN),
            event("inf", "temp", f64::INFINITY),
            event("-inf", "temp", f64::NEG_INFINITY),
            event("ok", "temp", 21.0),
        ]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!((resp.accepted, resp.refused), (1, 3));
    for r in &resp.results[..3] {
        assert_eq!(r.status(), EventStatus::Invalid);
        assert!(r.reason.contains("finite"), "{}", r.reason);
    }
    let err = client
        .publish(batch(vec![event("nan", "temp", f64::NAN)]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_event_an_hour_in_the_future_is_refused() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut ev = event("future", "temp", 1.0);
    ev.time = Some(ts(Utc::now() + chrono::Duration::hours(1)));
    let err = client.publish(batch(vec![ev])).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("future"), "{}", err.message());

    // Within the allowed skew is fine.
    let mut ev = event("soon", "temp", 1.0);
    ev.time = Some(ts(Utc::now() + chrono::Duration::seconds(60)));
    let resp = client.publish(batch(vec![ev])).await.expect("accepted");
    assert_eq!(resp.into_inner().accepted, 1);
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole() {
    let h = Harness::start_with(IngestSettings {
        max_batch: 3,
        ..Default::default()
    })
    .await;
    let mut client = h.client().await;
    let events = (0..4).map(|i| event(&format!("o-{i}"), "k", 1.0)).collect();
    let err = client.publish(batch(events)).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(h.no_more_events("k", 0).await);
}

#[tokio::test]
async fn publish_stream_acks_every_event_in_order() {
    let h = Harness::start_with(IngestSettings {
        max_in_flight: 4,
        ..Default::default()
    })
    .await;
    let mut client = h.client().await;
    let events: Vec<Event> = (0..50)
        .map(|i| {
            if i % 7 == 3 {
                event(&format!("s-{i}"), "bad.code", 1.0)
            } else if i % 11 == 5 {
                event(&format!("s-{i}"), "stream_kpi", f64::NAN)
            } else {
                event(&format!("s-{i}"), "stream_kpi", i as f64)
            }
        })
        .collect();
    let expected: Vec<EventStatus> = (0..50)
        .map(|i| {
            if i % 7 == 3 || i % 11 == 5 {
                EventStatus::Invalid
            } else {
                EventStatus::Stored
            }
        })
        .collect();
    let mut acks = client
        .publish_stream(tokio_stream::iter(events))
        .await
        .expect("stream opens")
        .into_inner();
    let mut got = Vec::new();
    while let Some(ack) = acks.message().await.expect("ack") {
        got.push(ack);
    }
    assert_eq!(got.len(), 50);
    for (i, ack) in got.iter().enumerate() {
        assert_eq!(ack.index, i as u64);
        assert_eq!(ack.event_id, format!("s-{i}"));
        assert_eq!(ack.status(), expected[i], "event {i}: {}", ack.reason);
        if expected[i] == EventStatus::Invalid {
            assert!(!ack.reason.is_empty());
        }
    }
    let stored_count = expected
        .iter()
        .filter(|s| **s == EventStatus::Stored)
        .count();
    let stored = h.read_events("stream_kpi", stored_count).await;
    let values: Vec<f64> = stored
        .iter()
        .map(|s| s.record.as_ref().expect("decodes").value)
        .collect();
    let want: Vec<f64> = (0..50)
        .filter(|i| expected[*i] == EventStatus::Stored)
        .map(|i| i as f64)
        .collect();
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(sorted, want);
}

#[tokio::test]
async fn a_configured_token_is_required() {
    let h = Harness::start_with(IngestSettings {
        publisher_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let mut client = h.client().await;
    let err = client
        .publish(batch(vec![event("t-1", "k", 1.0)]))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let with = |token: &str| {
        let mut req = tonic::Request::new(batch(vec![event("t-1", "k", 1.0)]));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        req
    };
    let err = client
        .publish(with("wrong"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let ok = client.publish(with("s3cret")).await.expect("right token");
    assert_eq!(ok.into_inner().accepted, 1);

    let err = client
        .publish_stream(tokio_stream::iter(vec![event("t-2", "k", 1.0)]))
        .await
        .expect_err("streams need the token too");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel().await);
    for service in ["kpi.v1.Ingest", ""] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "{service:?}");
    }
    assert_eq!(kpi_ingest::server::SERVICE_NAME, "kpi.v1.Ingest");
}

#[tokio::test]
async fn reflection_lists_the_ingest_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let h = Harness::start().await;
    let mut reflection = ServerReflectionClient::new(h.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = responses
        .message()
        .await
        .expect("response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection response: {resp:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"kpi.v1.Ingest"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn ops_endpoints_answer_on_the_http_listener() {
    let h = Harness::start().await;
    // Count something first, so /metrics has an ingest series to show.
    let mut client = h.client().await;
    client
        .publish(batch(vec![event("m-1", "metered", 1.0)]))
        .await
        .expect("publish");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = kpi_test_support::http_get(&h.http_url(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        if path == "/metrics" {
            assert!(body.contains("kpi_ingest_events_total"), "{body}");
        }
    }
}

#[tokio::test]
async fn shutdown_drains_open_streams_and_returns() {
    use tonic_health::pb::health_client::HealthClient;

    let h = Harness::start().await;
    let mut client = h.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    tx.send(event("d-1", "drain", 1.0)).await.expect("send");
    let first = acks.message().await.expect("ack").expect("one ack");
    assert_eq!(first.status(), EventStatus::Stored);

    let mut health = HealthClient::new(h.channel().await);
    h.shutdown.trigger();
    // The stream is ended by the server although the client keeps it open.
    let end = tokio::time::timeout(Duration::from_secs(5), acks.message())
        .await
        .expect("stream ends promptly");
    assert_eq!(
        end.expect_err("ends with a status").code(),
        Code::Unavailable
    );
    let result = tokio::time::timeout(Duration::from_secs(10), h.server)
        .await
        .expect("run returns after the drain")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    drop(tx);
    // Nothing serves any more.
    let probe = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(probe.is_err());
}

#[tokio::test]
async fn draining_turns_health_not_serving_and_readyz_503() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

    let h = Harness::start_with(IngestSettings {
        drain_grace: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let mut health = HealthClient::new(h.channel().await);
    // A Watch is an open call, so it keeps the server draining (up to the
    // grace period) while this test looks at what probes see.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "kpi.v1.Ingest".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("one status");
    assert_eq!(first.status(), ServingStatus::Serving);

    h.shutdown.trigger();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("status change")
        .expect("status")
        .expect("one status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let (status, _) = kpi_test_support::http_get(&h.http_url("/readyz")).await;
    assert_eq!(status, 503);

    let result = tokio::time::timeout(Duration::from_secs(10), h.server)
        .await
        .expect("run returns by the end of the grace period")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}
