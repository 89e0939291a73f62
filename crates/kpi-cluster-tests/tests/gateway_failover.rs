//! Killing a gateway: clients spread over both gateways through HAProxy; after one is SIGKILLed, every client reconnects through the balancer and holds the current values within 5 s.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{unique, wait_all_hold, wait_all_snapshots, Publisher, Watcher};
use kpi_test_support::cluster::gateway_server_name;
use kpi_test_support::{ClusterSpec, LocalCluster};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_gateway_crash_within_five_seconds() {
    let mut cluster = LocalCluster::start(ClusterSpec::default()).await;
    let code = unique("gw_failover");
    let time = SystemTime::now();
    let publisher = Publisher::start(&cluster.grpc_url(), &code, time, Duration::from_millis(50));
    // The topic exists before the clients arrive.
    publisher.wait_acked(3).await;

    let watchers: Vec<Watcher> = (0..CLIENTS)
        .map(|_| Watcher::start(&cluster.balancer_ws(), &code))
        .collect();
    wait_all_snapshots(&watchers, Duration::from_secs(15)).await;
    let before: Vec<_> = watchers.iter().map(Watcher::seen).collect();
    let (victim, survivor) = (gateway_server_name(0), gateway_server_name(1));
    let on_victim: Vec<usize> = (0..CLIENTS)
        .filter(|&i| before[i].current_gateway() == Some(victim.as_str()))
        .collect();
    assert!(
        !on_victim.is_empty() && on_victim.len() < CLIENTS,
        "the balancer did not spread clients over both gateways: {:?}",
        before
            .iter()
            .map(|s| s.current_gateway())
            .collect::<Vec<_>>()
    );

    // Crash one gateway while events keep coming.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill_gateway(0);
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let published = publisher.stop().await;

    // Everyone holds the final values within 5 s of the crash.
    let left = Duration::from_secs(5).saturating_sub(killed_at.elapsed());
    let behind = wait_all_hold(&watchers, published.acked, published.sum, left).await;
    assert!(
        behind.is_empty(),
        "{} of {CLIENTS} clients did not hold count={} sum={} within 5 s of the crash: {behind:#?}\n{}",
        behind.len(),
        published.acked,
        published.sum,
        cluster.all_logs()
    );
    println!(
        "all {CLIENTS} clients current {:?} after the crash ({} events)",
        killed_at.elapsed(),
        published.acked
    );

    for (i, w) in watchers.iter().enumerate() {
        let s = w.seen();
        s.assert_clean(i);
        assert_eq!(
            s.current_gateway(),
            Some(survivor.as_str()),
            "client {i}: {s:?}"
        );
        if on_victim.contains(&i) {
            assert!(
                s.connects >= 2,
                "client {i} was on the crashed gateway but never reconnected: {s:?}"
            );
        }
    }
}
