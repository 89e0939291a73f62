//! Initial loads stay fast through a NATS node failure: snapshot probes every 100 ms through the balancer across a kill -9 of each node in turn.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{unique, Publisher};
use kpi_test_support::{try_http_get, ClusterSpec, LocalCluster};

/// What a dashboard's initial load may take, node failure or not.
const LOAD_WITHIN: Duration = Duration::from_secs(2);
/// How long the probes run after each kill: past a stream leader election
/// (nats-server 2.9: 4 to 9 s) and the client's reconnect.
const PROBE_AFTER_KILL: Duration = Duration::from_secs(12);
/// Probes wait this long for an answer, so a hang is measured, not endured.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

struct Probe {
    node: usize,
    at: Duration,
    took: Duration,
    status: Option<u16>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_answer_within_two_seconds_while_each_nats_node_dies_in_turn() {
    let mut cluster = LocalCluster::start(ClusterSpec::default()).await;
    let code = unique("node_loss_reads");
    let publisher = Publisher::start(
        &cluster.grpc_url(),
        &code,
        SystemTime::now(),
        Duration::from_millis(50),
    );
    publisher.wait_acked(3).await;
    // Nobody watches the code, so no gateway holds it: every snapshot reads the bus.
    let url = format!("{}/api/kpi/{code}?period=minute", cluster.balancer_http());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((200, body)) = try_http_get(&url, PROBE_TIMEOUT).await {
            if body.contains("\"count\"") && !body.contains("\"count\":0") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no snapshot with data at {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let mut probes: Vec<Probe> = Vec::new();
    for node in 0..cluster.nats.len() {
        cluster.nats.kill_node(node);
        println!("killed NATS node n{node}");
        let until = Instant::now() + PROBE_AFTER_KILL;
        while Instant::now() < until {
            let t = Instant::now();
            let status = try_http_get(&url, PROBE_TIMEOUT).await.ok().map(|(s, _)| s);
            probes.push(Probe {
                node,
                at: started.elapsed(),
                took: t.elapsed(),
                status,
            });
            tokio::time::sleep(Duration::from_millis(100).saturating_sub(t.elapsed())).await;
        }
        cluster.nats.restart_node(node);
        // Let the node catch up before the next one dies, or the streams lose quorum.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let published = publisher.stop().await;

    let slow: Vec<String> = probes
        .iter()
        .filter(|p| p.took > LOAD_WITHIN || p.status.is_none())
        .map(|p| {
            format!(
                "n{} down, at {:?}: {:?} -> {:?}",
                p.node, p.at, p.took, p.status
            )
        })
        .collect();
    let worst = probes.iter().map(|p| p.took).max().unwrap_or_default();
    let ok = probes.iter().filter(|p| p.status == Some(200)).count();
    println!(
        "{} probes, {ok} answered 200, slowest {worst:?}, {} events acked",
        probes.len(),
        published.acked
    );
    for node in 0..cluster.nats.len() {
        let of: Vec<&Probe> = probes.iter().filter(|p| p.node == node).collect();
        let worst = of.iter().map(|p| p.took).max().unwrap_or_default();
        let not_ok = of.iter().filter(|p| p.status != Some(200)).count();
        println!(
            "n{node} down: {} probes, slowest {worst:?}, {not_ok} not 200",
            of.len()
        );
    }
    assert!(
        slow.is_empty(),
        "snapshots slower than {LOAD_WITHIN:?} or unanswered:\n{}\n{}",
        slow.join("\n"),
        cluster.all_logs()
    );
    assert!(
        probes.len() >= 3 * 50,
        "too few probes ran: {}",
        probes.len()
    );
}
