//! Tests of the harness itself: servers start, restart with their data, and clusters survive a lost node.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use kpi_test_support::{free_port, http_get, NatsCluster, NatsServer};

/// Retries a JetStream call while a cluster elects a new leader after a kill.
const ELECTION_GRACE: Duration = Duration::from_secs(20);

/// Connects to one URL or a comma-separated list (async-nats parses only
/// single URLs from a string, so the list is split here).
async fn connect(url: &str) -> async_nats::Client {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| {
            u.trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad NATS URL {u:?}: {e}"))
        })
        .collect();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

#[test]
fn free_ports_are_distinct() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
}

#[tokio::test]
async fn server_starts_serves_clients_and_reports_their_subscriptions() {
    let server = NatsServer::start_named("harness-single");
    let (status, body) = http_get(&format!("{}/healthz", server.monitor_url())).await;
    assert_eq!(status, 200, "{body}");

    let client = connect(&server.url()).await;
    let mut sub = client.subscribe("harness.ping").await.expect("subscribe");
    client
        .publish("harness.ping", "hi".into())
        .await
        .expect("publish");
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("subscription open");
    assert_eq!(&msg.payload[..], b"hi");
    assert!(
        server
            .subscriptions()
            .await
            .iter()
            .any(|s| s == "harness.ping"),
        "connz does not list harness.ping"
    );

    drop(sub);
    // Unsubscribing is asynchronous: the client sends UNSUB on its own time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server
        .subscriptions()
        .await
        .iter()
        .any(|s| s == "harness.ping")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "harness.ping still subscribed after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn restart_keeps_jetstream_data() {
    let mut server = NatsServer::start();
    let url = server.url();
    {
        let js = jetstream::new(connect(&url).await);
        js.create_stream(stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream");
        js.publish("harness.a", "kept".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    // A crash, not a clean shutdown: what was acknowledged must be on disk.
    server.kill();
    assert!(!server.is_running());
    server.restart();
    assert_eq!(server.url(), url, "restart must keep the client port");

    let js = jetstream::new(connect(&url).await);
    let mut s = js
        .get_stream("HARNESS")
        .await
        .expect("stream survives restart");
    assert_eq!(s.info().await.expect("info").state.messages, 1);
    let last = s
        .get_last_raw_message_by_subject("harness.a")
        .await
        .expect("message survives restart");
    assert_eq!(&last.payload[..], b"kept");
}

#[tokio::test]
async fn cluster_forms_and_survives_a_killed_node() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.len(), 3);
    let client = connect(&cluster.urls()).await;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "HARNESS_R3".into(),
        subjects: vec!["harness3.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("create an R3 stream");
    js.publish("harness3.a", "1".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    // The client may be connected to the killed node; it reconnects to another.
    cluster.kill_node(0);
    let deadline = tokio::time::Instant::now() + ELECTION_GRACE;
    loop {
        let ack = match js.publish("harness3.a", "2".into()).await {
            Ok(pending) => pending.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match ack {
            Ok(ack) => {
                assert_eq!(ack.sequence, 2);
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("publish while a node is down: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the cluster did not accept a publish with one node down: {e}"),
        }
    }

    cluster.restart_node(0);
    let node0 = jetstream::new(connect(&cluster.node(0).url()).await);
    let deadline = tokio::time::Instant::now() + ELECTION_GRACE;
    loop {
        let messages = match node0.get_stream("HARNESS_R3").await {
            Ok(mut s) => s
                .info()
                .await
                .map(|i| i.state.messages)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match messages {
            Ok(2) => break,
            other if tokio::time::Instant::now() < deadline => {
                eprintln!("restarted node not caught up yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => panic!("restarted node never saw both messages: {other:?}"),
        }
    }
}
