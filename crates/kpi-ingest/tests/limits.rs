//! Limits a careless or hostile publisher meets: values a sum cannot hold, times outside the duplicate window, distinct-code caps, concurrent calls.

mod common;

use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use common::{event, Harness};
use kpi_ingest::{Config, IngestSettings};
use kpi_proto::v1::{Event, PublishRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn batch(events: Vec<Event>) -> PublishRequest {
    PublishRequest { events }
}

/// Settings as the binary would build them from these flags.
fn settings(args: &[&str]) -> IngestSettings {
    let mut all = vec!["kpi-ingest", "--nats-url", "nats://127.0.0.1:4222"];
    all.extend_from_slice(args);
    let config = Config::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"));
    config.settings().unwrap_or_else(|e| panic!("{e}"))
}

fn at(ev: Event, t: chrono::DateTime<Utc>) -> Event {
    Event {
        time: Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }),
        ..ev
    }
}

#[tokio::test]
async fn a_value_a_sum_could_overflow_is_refused_with_a_reason() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let err = client
        .publish(batch(vec![event("huge", "fx", 1e308)]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("magnitude"), "{}", err.message());
    let ok = client
        .publish(batch(vec![event("big", "fx", -1e100)]))
        .await
        .expect("a large but safe value is stored")
        .into_inner();
    assert_eq!(ok.accepted, 1);
}

#[tokio::test]
async fn an_event_older_than_half_the_duplicate_window_is_refused() {
    // Default window 600 s: events may be at most 300 s old or ahead.
    let h = Harness::start().await;
    let mut client = h.client().await;
    let old = at(
        event("old", "fx", 1.0),
        Utc::now() - chrono::Duration::seconds(400),
    );
    let err = client.publish(batch(vec![old])).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("in the past"), "{}", err.message());
    let recent = at(
        event("recent", "fx", 1.0),
        Utc::now() - chrono::Duration::seconds(200),
    );
    client
        .publish(batch(vec![recent]))
        .await
        .expect("a recent event is stored");
}

#[tokio::test]
async fn distinct_kpi_caps_answer_resource_exhausted_naming_the_cap() {
    let dir = std::env::temp_dir().join(format!(
        "kpi-caps-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tokens");
    std::fs::write(
        &file,
        "tok-a-0123456789abcdef *\ntok-b-0123456789abcdef *\n",
    )
    .expect("tokens file");
    let h = Harness::start_with(settings(&[
        "--max-kpis",
        "3",
        "--max-kpis-per-token",
        "2",
        "--publisher-tokens-file",
        file.to_str().expect("utf-8 path"),
    ]))
    .await;
    let mut client = h.client().await;
    let send = |token: &'static str, evs: Vec<Event>| {
        let mut req = tonic::Request::new(batch(evs));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        req
    };
    let ok = client
        .publish(send(
            "tok-a-0123456789abcdef",
            vec![event("a1", "k1", 1.0), event("a2", "k2", 1.0)],
        ))
        .await
        .expect("two codes fit")
        .into_inner();
    assert_eq!(ok.accepted, 2);
    // A known code is always fine; a third new one is over tok-a's cap.
    let err = client
        .publish(send("tok-a-0123456789abcdef", vec![event("a3", "k3", 1.0)]))
        .await
        .expect_err("over the per-token cap");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-kpis-per-token"),
        "{}",
        err.message()
    );
    let mixed = client
        .publish(send(
            "tok-a-0123456789abcdef",
            vec![event("a4", "k1", 2.0), event("a5", "k9", 1.0)],
        ))
        .await
        .expect("partly accepted")
        .into_inner();
    assert_eq!((mixed.accepted, mixed.refused), (1, 1));
    assert!(mixed.results[1].reason.contains("--max-kpis-per-token"));
    // tok-b adds a third code in all; a fourth is over the global cap.
    client
        .publish(send("tok-b-0123456789abcdef", vec![event("b1", "k3", 1.0)]))
        .await
        .expect("third code in all");
    let err = client
        .publish(send("tok-b-0123456789abcdef", vec![event("b2", "k4", 1.0)]))
        .await
        .expect_err("over the global cap");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("--max-kpis "), "{}", err.message());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens a PublishStream on `channel`, sends one event, and reports its first ack.
fn stream_one(
    channel: tonic::transport::Channel,
    id: &'static str,
) -> (mpsc::Sender<Event>, tokio::sync::oneshot::Receiver<String>) {
    let (tx, rx) = mpsc::channel(4);
    let (acked, ack) = tokio::sync::oneshot::channel();
    let first = tx.clone();
    tokio::spawn(async move {
        let _ = first.send(event(id, "streams", 1.0)).await;
        drop(first);
        let mut client = kpi_proto::v1::ingest_client::IngestClient::new(channel);
        if let Ok(resp) = client.publish_stream(ReceiverStream::new(rx)).await {
            let mut acks = resp.into_inner();
            if let Ok(Some(a)) = acks.message().await {
                let _ = acked.send(a.event_id);
            }
            // Hold the call open until the client side ends it.
            while let Ok(Some(_)) = acks.message().await {}
        }
    });
    (tx, ack)
}

#[tokio::test]
async fn concurrent_calls_per_connection_are_bounded() {
    let h = Harness::start_with(settings(&["--max-calls-per-connection", "2"])).await;
    let channel = h.channel().await;
    let (s1, a1) = stream_one(channel.clone(), "s1");
    let (_s2, a2) = stream_one(channel.clone(), "s2");
    let within = Duration::from_secs(5);
    assert_eq!(
        tokio::time::timeout(within, a1)
            .await
            .expect("ack 1")
            .expect("ack"),
        "s1"
    );
    assert_eq!(
        tokio::time::timeout(within, a2)
            .await
            .expect("ack 2")
            .expect("ack"),
        "s2"
    );
    let (_s3, mut a3) = stream_one(channel.clone(), "s3");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        a3.try_recv().is_err(),
        "a third concurrent call on one connection was served"
    );
    // Ending the first call makes room for the third.
    drop(s1);
    assert_eq!(
        tokio::time::timeout(within, a3)
            .await
            .expect("ack 3")
            .expect("ack"),
        "s3"
    );
}

#[tokio::test]
async fn concurrent_calls_in_all_are_bounded() {
    let h = Harness::start_with(settings(&["--max-calls", "1"])).await;
    let (open, ack) = stream_one(h.channel().await, "held");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), ack)
            .await
            .expect("ack")
            .expect("ack"),
        "held"
    );
    // Another connection: refused while the stream holds the only call.
    let mut other = h.client().await;
    let err = other
        .publish(batch(vec![event("x", "fx", 1.0)]))
        .await
        .expect_err("over the global bound");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("--max-calls 1"), "{}", err.message());
    drop(open);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while other
        .publish(batch(vec![event("y", "fx", 1.0)]))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
