//! `/ws/kpi/<code>`: snapshot first, then every update, no gap and no duplicate; resume with `since`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use kpi_core::Period;

fn seq(v: &serde_json::Value) -> u64 {
    v["seq"].as_u64().unwrap()
}

/// A client that joins after 5 updates sees the 5th as a snapshot, then 6, 7, ... in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_first_then_updates_without_gap_or_duplicate() {
    let gw = start(settings()).await;
    let t = topic("orders_per_minute", Period::Minute);
    publish_range(&gw.bus, &t, 1..=5).await;
    let mut ws = gw.ws("/ws/kpi/orders_per_minute").await;
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(seq(&first), 5);
    assert_eq!(first["kpi"], "orders_per_minute");
    assert_eq!(first["period"], "minute");
    assert_eq!(first["stats"]["last"], 5.0);
    publish_range(&gw.bus, &t, 6..=20).await;
    for want in 6..=20 {
        let m = recv(&mut ws).await;
        assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), want));
    }
    // Republished old seqs (an aggregator restart) are dropped.
    publish_range(&gw.bus, &t, 18..=21).await;
    let m = recv(&mut ws).await;
    assert_eq!(seq(&m), 21);
    gw.stop().await;
}

/// A KPI nobody published yet: a seq 0 snapshot, then the first update.
#[tokio::test]
async fn unpublished_kpi_gets_an_empty_snapshot() {
    let gw = start(settings()).await;
    let mut ws = gw.ws("/ws/kpi/brand_new?period=hour").await;
    let first = recv(&mut ws).await;
    assert_eq!((first["type"].as_str(), seq(&first)), (Some("snapshot"), 0));
    assert_eq!(first["period"], "hour");
    assert_eq!(first["stats"]["count"], 0);
    publish(&gw.bus, &topic("brand_new", Period::Hour), 1).await;
    assert_eq!(seq(&recv(&mut ws).await), 1);
    gw.stop().await;
}

/// 100 times: a publisher sends 1,000 updates as fast as it can while a
/// client joins at some point; from its snapshot on, the client sees
/// strictly consecutive seqs up to 1,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_during_a_burst_sees_consecutive_seqs() {
    // A queue larger than the burst: this test is about the join, not conflation.
    let gw = start(kpi_gateway::GatewaySettings {
        queue_capacity: 4096,
        ..settings()
    })
    .await;
    for round in 0..100u64 {
        let code = format!("burst_{round}");
        let t = topic(&code, Period::Minute);
        let bus = gw.bus.clone();
        let publisher = tokio::spawn(async move {
            for s in 1..=1000 {
                publish(&bus, &t, s).await;
                if s % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        // Join at a different moment each round.
        for _ in 0..(round % 7) {
            tokio::task::yield_now().await;
        }
        let mut ws = gw.ws(&format!("/ws/kpi/{code}")).await;
        let first = recv(&mut ws).await;
        assert_eq!(first["type"], "snapshot", "round {round}");
        let mut last = seq(&first);
        while last < 1000 {
            let m = recv(&mut ws).await;
            assert_eq!(m["type"], "update", "round {round}");
            assert_eq!(
                seq(&m),
                last + 1,
                "round {round}: gap or duplicate after {last}"
            );
            last = seq(&m);
        }
        publisher.await.unwrap();
        drop(ws);
    }
    gw.stop().await;
}

/// Reconnecting with the last seq seen gets exactly the 50 missed updates, in order, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_gets_exactly_the_missed_updates() {
    let gw = start(settings()).await;
    let t = topic("revenue_eur", Period::Minute);
    publish_range(&gw.bus, &t, 1..=10).await;
    let mut ws = gw.ws("/ws/kpi/revenue_eur").await;
    assert_eq!(seq(&recv(&mut ws).await), 10);
    drop(ws);
    publish_range(&gw.bus, &t, 11..=60).await;
    let mut ws = gw.ws("/ws/kpi/revenue_eur?since=10").await;
    for want in 11..=60 {
        let m = recv(&mut ws).await;
        assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), want));
    }
    assert!(
        try_recv(&mut ws, Duration::from_millis(200))
            .await
            .is_none(),
        "nothing more"
    );
    publish(&gw.bus, &t, 61).await;
    assert_eq!(seq(&recv(&mut ws).await), 61);
    // At the latest seq: one snapshot of it (the client may hold another
    // series' 61, after a seq reset), then live updates.
    let mut ws2 = gw.ws("/ws/kpi/revenue_eur?since=61").await;
    let m = recv(&mut ws2).await;
    assert_eq!((m["type"].as_str(), seq(&m)), (Some("snapshot"), 61));
    assert!(try_recv(&mut ws2, Duration::from_millis(200))
        .await
        .is_none());
    publish(&gw.bus, &t, 62).await;
    assert_eq!(seq(&recv(&mut ws2).await), 62);
    gw.stop().await;
}

/// `since` older than the resume window: one snapshot (the latest), then live updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_the_window_gets_a_snapshot() {
    let gw = start(kpi_gateway::GatewaySettings {
        resume_window: 16,
        ..settings()
    })
    .await;
    let t = topic("active_users", Period::Day);
    publish_range(&gw.bus, &t, 1..=100).await;
    let mut ws = gw.ws("/ws/kpi/active_users?period=day&since=3").await;
    let first = recv(&mut ws).await;
    assert_eq!(
        (first["type"].as_str(), seq(&first)),
        (Some("snapshot"), 100)
    );
    assert!(try_recv(&mut ws, Duration::from_millis(200))
        .await
        .is_none());
    publish(&gw.bus, &t, 101).await;
    let m = recv(&mut ws).await;
    assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), 101));
    gw.stop().await;
}
