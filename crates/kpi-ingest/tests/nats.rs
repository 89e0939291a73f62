//! Ingest against a real nats-server: a repeated event_id is answered DUPLICATE through the same ingest, stored again through another.

mod common;

use common::{event, Harness};
use kpi_bus::{Bus, BusConfig};
use kpi_ingest::IngestSettings;
use kpi_proto::v1::{PublishRequest, Status as EventStatus};
use kpi_test_support::NatsServer;

/// A nats-server and an ingest server on it.
async fn on_nats() -> (NatsServer, Harness) {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats-server starts");
    let bus = Bus::connect_nats(&nats.url(), BusConfig::default())
        .await
        .expect("connect to NATS");
    let h = Harness::start_on(bus, IngestSettings::default()).await;
    (nats, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stores_a_repeated_event_id_once() {
    let (nats, h) = on_nats().await;
    let mut client = h.client().await;

    let publish = |id: &str| PublishRequest {
        events: vec![event(id, "js_kpi", 7.0)],
    };
    let first = client
        .publish(publish("js-1"))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(first.results[0].status(), EventStatus::Stored);
    let again = client
        .publish(publish("js-1"))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(again.results[0].status(), EventStatus::Duplicate);
    assert_eq!(again.duplicates, 1);

    // Through the stream API too.
    let acks = client
        .publish_stream(tokio_stream::iter(vec![
            event("js-1", "js_kpi", 7.0),
            event("js-2", "js_kpi", 8.0),
        ]))
        .await
        .expect("stream")
        .into_inner();
    use futures::StreamExt;
    let acks: Vec<_> = acks.collect().await;
    let statuses: Vec<EventStatus> = acks
        .iter()
        .map(|a| a.as_ref().expect("ack").status())
        .collect();
    assert_eq!(statuses, vec![EventStatus::Duplicate, EventStatus::Stored]);

    let stored = h.read_events("js_kpi", 2).await;
    let ids: Vec<&str> = stored
        .iter()
        .map(|s| s.record.as_ref().expect("decodes").event_id.as_str())
        .collect();
    assert_eq!(ids, vec!["js-1", "js-2"]);
    assert!(
        h.no_more_events("js_kpi", 2).await,
        "a duplicate reached the log"
    );

    let (status, _) = kpi_test_support::http_get(&h.http_url("/readyz")).await;
    assert_eq!(status, 200);
    h.shutdown.trigger();
    drop(nats);
}

/// Ingest stores a call's events in batch messages, so JetStream no longer
/// knows single ids: a retry through another ingest process (or after a
/// restart) is stored again and answered STORED (the aggregator counts it
/// once: `kpi-stack/tests/exactly_once.rs`), while a retry through the same
/// process is still answered DUPLICATE from its table of recent ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_duplicate_through_the_same_ingest_and_stored_through_another() {
    let (nats, first) = on_nats().await;
    let bus = Bus::connect_nats(&nats.url(), BusConfig::default())
        .await
        .expect("connect to NATS");
    let second = Harness::start_on(bus, IngestSettings::default()).await;
    let batch = |ids: &[&str]| PublishRequest {
        events: ids.iter().map(|id| event(id, "twice_kpi", 1.0)).collect(),
    };
    let mut c1 = first.client().await;
    let mut c2 = second.client().await;
    let stored = c1
        .publish(batch(&["t-1", "t-2", "t-3"]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(stored.accepted, 3);

    let same = c1
        .publish(batch(&["t-3", "t-1", "t-4"]))
        .await
        .expect("publish")
        .into_inner();
    let statuses: Vec<EventStatus> = same.results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses,
        vec![
            EventStatus::Duplicate,
            EventStatus::Duplicate,
            EventStatus::Stored
        ]
    );
    assert_eq!(
        same.results[0].seq, stored.results[2].seq,
        "the original's seq"
    );

    let other = c2
        .publish(batch(&["t-2", "t-1"]))
        .await
        .expect("publish")
        .into_inner();
    assert_eq!((other.accepted, other.duplicates), (2, 0));
    // Three messages: the first batch, "t-4" alone, and the copies.
    let log = first.read_events("twice_kpi", 6).await;
    let ids: Vec<&str> = log
        .iter()
        .map(|s| s.record.as_ref().expect("decodes").event_id.as_str())
        .collect();
    assert_eq!(ids, vec!["t-1", "t-2", "t-3", "t-4", "t-2", "t-1"]);

    // The same id twice in one call: stored once, the second a duplicate.
    let twice = c2
        .publish(batch(&["t-5", "t-5"]))
        .await
        .expect("publish")
        .into_inner();
    let statuses: Vec<EventStatus> = twice.results.iter().map(|r| r.status()).collect();
    assert_eq!(statuses, vec![EventStatus::Stored, EventStatus::Duplicate]);
    assert!(
        first.no_more_events("twice_kpi", 7).await,
        "a copy from one call reached the log"
    );
    first.shutdown.trigger();
    second.shutdown.trigger();
    drop(nats);
}

/// With NATS gone mid-flight the store may still have happened (the client
/// library resends its buffer on reconnect), so the answer must not claim
/// that nothing was stored: it says the outcome is unknown and how to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_timeout_says_the_outcome_is_unknown_and_to_retry_with_the_same_ids() {
    let (mut nats, h) = on_nats().await;
    let mut client = h.client().await;
    nats.kill();

    let refused = client
        .publish(PublishRequest {
            events: vec![event("t-1", "timeout_kpi", 1.0)],
        })
        .await
        .expect_err("nothing confirmed");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let msg = refused.message();
    assert!(
        msg.contains("outcome unknown") && msg.contains("retry with the same event_id"),
        "{msg}"
    );
    assert!(!msg.contains("no event could be stored"), "{msg}");
    h.shutdown.trigger();
}

/// While the bus is down, every HTTP format refuses whole with 503 and
/// `Retry-After` before storing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_formats_answer_503_with_retry_after_while_the_bus_is_down() {
    let (mut nats, h) = on_nats().await;
    nats.kill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.bus.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bus never noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for (path, ct, body) in [
        ("/v1/events", "application/json", r#"{"kpi":"k","value":1}"#),
        ("/api/v2/write", "text/plain", "k value=1 1"),
        ("/v1/metrics", "application/json", "{}"),
    ] {
        let resp = reqwest::Client::new()
            .post(h.http_url(path))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 503, "{path}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("5"),
            "{path}"
        );
    }
    h.shutdown.trigger();
}

/// A PublishStream stores the events that have already arrived together:
/// a publisher that streams fast gets batch messages (a few stream
/// sequences for many events), not one JetStream message per event, and
/// still an ack per event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_publish_stream_is_stored_in_batch_messages() {
    let (nats, h) = on_nats().await;
    let mut client = h.client().await;
    let events: Vec<_> = (0..200)
        .map(|i| event(&format!("fs-{i}"), "stream_kpi", f64::from(i)))
        .collect();
    let acks = client
        .publish_stream(tokio_stream::iter(events))
        .await
        .expect("stream")
        .into_inner();
    use futures::StreamExt;
    let acks: Vec<_> = acks.map(|a| a.expect("ack")).collect::<Vec<_>>().await;
    let indexes: Vec<u64> = acks.iter().map(|a| a.index).collect();
    assert_eq!(
        indexes,
        (0..200).collect::<Vec<u64>>(),
        "one ack per event, in order"
    );
    assert!(acks.iter().all(|a| a.status() == EventStatus::Stored));
    let seqs: std::collections::BTreeSet<u64> = acks.iter().map(|a| a.seq).collect();
    assert!(
        seqs.len() <= 50,
        "200 streamed events took {} stored messages",
        seqs.len()
    );
    h.shutdown.trigger();
    drop(nats);
}
