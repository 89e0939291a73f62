//! Upstream interest as a real nats-server sees it: `kpi.updates.<code>.<period>`
//! subscribed with the first local client, unsubscribed after the last leaves.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kpi_bus::{Bus, BusConfig};
use kpi_core::Period;
use kpi_test_support::NatsServer;

async fn update_subjects(nats: &NatsServer) -> Vec<String> {
    let mut subs: Vec<String> = nats
        .subscriptions()
        .await
        .into_iter()
        .filter(|s| s.starts_with("kpi.updates."))
        .collect();
    subs.sort();
    subs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_subjects_on_a_real_nats_server() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let bus = Bus::connect_nats(&nats.url(), BusConfig::default())
        .await
        .unwrap();
    let gw = start_on(bus.clone(), settings()).await;
    let t = topic("pending_approvals", Period::Minute);
    let subject = "kpi.updates.pending_approvals.minute".to_string();
    publish_range(&bus, &t, 1..=3).await;

    assert!(update_subjects(&nats).await.is_empty());
    let (_, snap) = gw.get("/api/kpi/pending_approvals").await;
    assert_eq!(snap["seq"], 3, "snapshot read from JetStream");
    assert!(
        update_subjects(&nats).await.is_empty(),
        "a snapshot request subscribes nothing"
    );

    let mut a = gw.ws("/ws/kpi/pending_approvals").await;
    assert_eq!(recv(&mut a).await["seq"], 3);
    assert_eq!(update_subjects(&nats).await, vec![subject.clone()]);
    let mut b = gw.ws("/ws/kpi/pending_approvals").await;
    assert_eq!(recv(&mut b).await["seq"], 3);
    assert_eq!(
        update_subjects(&nats).await,
        vec![subject.clone()],
        "one subscription for two clients"
    );

    publish(&bus, &t, 4).await;
    assert_eq!(recv(&mut a).await["seq"], 4);
    assert_eq!(recv(&mut b).await["seq"], 4);

    drop(a);
    drop(b);
    eventually("unsubscribed upstream", || async {
        update_subjects(&nats).await.is_empty()
    })
    .await;
    eventually("gauge at 0", || async {
        metric(&gw.metrics().await, "kpi_gateway_upstream_subscriptions") == 0.0
    })
    .await;

    // A hostile code never reaches NATS.
    assert_eq!(gw.get("/ws/kpi/%3E").await.0, 400);
    assert!(update_subjects(&nats).await.is_empty());
    gw.stop().await;
}
