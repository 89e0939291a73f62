//! A rolling restart of both gateways (SIGTERM, drain, start again, one at a time): clients see only reconnects (close 1012), never an error or an older value, and end up current.

mod common;

use std::time::{Duration, SystemTime};

use common::{unique, wait_all_hold, wait_all_snapshots, Publisher, Watcher};
use kpi_test_support::{ClusterSpec, LocalCluster};

const CLIENTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_shows_clients_only_reconnects() {
    let mut cluster = LocalCluster::start(ClusterSpec {
        gateway_drain_secs: 3,
        ..ClusterSpec::default()
    })
    .await;
    let code = unique("rolling");
    let publisher = Publisher::start(
        &cluster.grpc_url(),
        &code,
        SystemTime::now(),
        Duration::from_millis(50),
    );
    publisher.wait_acked(3).await;
    let watchers: Vec<Watcher> = (0..CLIENTS)
        .map(|_| Watcher::start(&cluster.balancer_ws(), &code))
        .collect();
    wait_all_snapshots(&watchers, Duration::from_secs(15)).await;

    for i in 0..cluster.gateway_count() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = cluster.terminate_gateway(i);
        assert!(
            status.success(),
            "gateway {i} did not exit 0 after SIGTERM: {status}"
        );
        cluster.start_gateway(i).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = publisher.stop().await;

    let behind = wait_all_hold(
        &watchers,
        published.acked,
        published.sum,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        behind.is_empty(),
        "clients not current after the rolling restart (count={} sum={}): {behind:#?}\n{}",
        published.acked,
        published.sum,
        cluster.all_logs()
    );
    let mut reconnects = 0;
    for (i, w) in watchers.iter().enumerate() {
        let s = w.seen();
        s.assert_clean(i);
        assert!(
            s.failed_connects.is_empty(),
            "client {i} could not reconnect: {:?}",
            s.failed_connects
        );
        assert_eq!(
            s.dropped, 0,
            "client {i} lost a connection without a close frame: {s:?}"
        );
        assert!(
            s.close_codes.iter().all(|&c| c == 1012),
            "client {i} was closed with something other than 1012 (service restart): {:?}",
            s.close_codes
        );
        assert!(
            s.connects >= 2,
            "client {i} was never moved by the restart: {s:?}"
        );
        reconnects += s.connects - 1;
    }
    println!(
        "{CLIENTS} clients, {reconnects} reconnects, no errors, {} events",
        published.acked
    );
}
