//! Upstream interest follows local clients exactly, and the gauge agrees.
//!
//! Alone in its test binary: the gauge is process-wide.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kpi_core::Period;

async fn gauge(gw: &Gateway) -> f64 {
    metric(&gw.metrics().await, "kpi_gateway_upstream_subscriptions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_subscriptions_follow_local_clients() {
    let gw = start(settings()).await;
    let live = || memory(&gw.bus).live_subscriptions();
    assert_eq!(live(), 0);
    assert_eq!(gauge(&gw).await, 0.0);
    assert!(gw
        .metrics()
        .await
        .contains("kpi_gateway_upstream_subscriptions 0"));

    // HTTP snapshot and history take no upstream subscription.
    assert_eq!(gw.get("/api/kpi/pending_approvals").await.0, 200);
    assert_eq!(gw.get("/api/kpi/pending_approvals/history").await.0, 200);
    assert_eq!(live(), 0);

    let mut a = gw.ws("/ws/kpi/pending_approvals").await;
    recv(&mut a).await;
    assert_eq!(live(), 1);
    assert_eq!(gauge(&gw).await, 1.0);

    let mut b = gw.ws("/ws/kpi/pending_approvals").await;
    recv(&mut b).await;
    assert_eq!(
        live(),
        1,
        "two clients of one topic share one upstream subscription"
    );
    assert_eq!(gauge(&gw).await, 1.0);

    // Another period is another topic.
    let mut c = gw.ws("/ws/kpi/pending_approvals?period=hour").await;
    recv(&mut c).await;
    assert_eq!(live(), 2);
    assert_eq!(gauge(&gw).await, 2.0);
    drop(c);
    eventually("hour topic released", || async { live() == 1 }).await;

    // One leaves: still watched.
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(live(), 1);

    // Both gone: released after the 100 ms linger, gauge back to 0.
    drop(b);
    eventually("upstream released", || async { live() == 0 }).await;
    eventually("gauge at 0", || async { gauge(&gw).await == 0.0 }).await;

    // Coming back within the linger cancels the release.
    let mut d = gw.ws("/ws/kpi/pending_approvals").await;
    recv(&mut d).await;
    d.close(None).await.unwrap();
    drop(d);
    let mut e = gw.ws("/ws/kpi/pending_approvals").await;
    recv(&mut e).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(live(), 1);
    assert_eq!(gauge(&gw).await, 1.0);
    // And it still receives updates.
    publish(&gw.bus, &topic("pending_approvals", Period::Minute), 1).await;
    assert_eq!(recv(&mut e).await["seq"], 1);
    drop(e);
    eventually("released again", || async { live() == 0 }).await;
    eventually("gauge at 0 again", || async { gauge(&gw).await == 0.0 }).await;
    gw.stop().await;
}
