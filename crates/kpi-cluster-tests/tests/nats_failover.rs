//! Killing a NATS node while publishing: with R3 streams, every acknowledged event is counted exactly once and updates keep reaching clients.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{unique, wait_all_hold, wait_all_snapshots, Publisher, Watcher};
use kpi_test_support::{try_http_get, ClusterSpec, LocalCluster};

/// How soon after publishing stops every client must hold every acknowledged
/// event. Measured on a loaded 2-core machine: clients were current 6 to 17 s
/// after the kill (leader election included), publishing stops 6 to 9 s
/// after it.
const CURRENT_WITHIN: Duration = Duration::from_secs(20);

/// The server name (n0, n1, ...) leading the KPI_EVENTS stream, per `/jsz`.
async fn events_stream_leader(cluster: &LocalCluster) -> Option<String> {
    for i in 0..cluster.nats.len() {
        let url = format!("{}/jsz?streams=true", cluster.nats.node(i).monitor_url());
        let Ok((200, body)) = try_http_get(&url, Duration::from_secs(2)).await else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let leader = json["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == "KPI_EVENTS")
            .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_string));
        if leader.is_some() {
            return leader;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_when_a_nats_node_dies() {
    let mut cluster = LocalCluster::start(ClusterSpec::default()).await;
    let code = unique("nats_failover");
    let time = SystemTime::now();
    let publisher = Publisher::start(&cluster.grpc_url(), &code, time, Duration::from_millis(20));
    publisher.wait_acked(3).await;
    let watchers = vec![
        Watcher::start(&cluster.balancer_ws(), &code),
        Watcher::start(&cluster.balancer_ws(), &code),
    ];
    wait_all_snapshots(&watchers, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill the node that leads the event stream: the worst one to lose.
    let leader = events_stream_leader(&cluster).await;
    let victim = leader
        .as_deref()
        .and_then(|n| n.strip_prefix('n'))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let acked_before = publisher.published().acked;
    cluster.nats.kill_node(victim);
    let killed_at = Instant::now();
    println!("killed NATS node n{victim} (KPI_EVENTS leader: {leader:?}) after {acked_before} acked events");
    let seq_at_kill: Vec<Option<u64>> = watchers.iter().map(|w| w.seen().last_seq).collect();

    // JetStream needs a few seconds to elect a new stream leader (nats-server
    // 2.9's election timeout is 4 to 9 s); meanwhile ingest refuses and the
    // publisher retries. Publishing must resume: 30 more events within 40 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    while publisher.published().acked < acked_before + 30 {
        assert!(
            Instant::now() < deadline,
            "publishing did not resume after the node died: {acked_before} acked before, {} now\n{}",
            publisher.published().acked,
            cluster.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = publisher.stop().await;

    // Clients must be current soon after publishing stops. Wait longer than
    // the limit so a failure says how long updates actually stalled.
    let stopped_at = Instant::now();
    let behind = wait_all_hold(
        &watchers,
        published.acked,
        published.sum,
        Duration::from_secs(120),
    )
    .await;
    let took = stopped_at.elapsed();
    assert!(
        behind.is_empty(),
        "acknowledged events lost or counted twice: expected count={} sum={}, clients hold {behind:#?}\n{}",
        published.acked,
        published.sum,
        cluster.all_logs()
    );
    assert!(
        took <= CURRENT_WITHIN,
        "updates stalled: clients became current {took:?} after publishing stopped ({:?} after the node died), limit {CURRENT_WITHIN:?}\n{}",
        killed_at.elapsed(),
        cluster.all_logs()
    );
    for (i, w) in watchers.iter().enumerate() {
        let s = w.seen();
        s.assert_clean(i);
        assert!(
            s.last_seq > seq_at_kill[i],
            "client {i} got no update after the node died: {s:?}"
        );
    }

    // The snapshot endpoint agrees.
    let url = format!("{}/api/kpi/{code}?period=day", cluster.balancer_http());
    let (status, body) = kpi_test_support::http_get(&url).await;
    assert_eq!(status, 200, "{url}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("snapshot JSON");
    assert_eq!(
        json["stats"]["count"].as_f64(),
        Some(published.acked as f64),
        "{body}"
    );
    println!(
        "{} events acked ({} refused attempts retried, longest wait between acks {:?}), all counted once; clients current {:?} after the kill",
        published.acked,
        published.failed_attempts,
        published.longest_gap,
        killed_at.elapsed()
    );
}
