//! Updates as the aggregator's store policy sends them: live-only ones, a trailing store repeating the newest, and a seq jump after an aggregator restart, all seen by a client as plain newer (or dropped) messages.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kpi_bus::Outbound;
use kpi_core::{Period, Topic};

fn seq(v: &serde_json::Value) -> u64 {
    v["seq"].as_u64().unwrap()
}

fn live(t: &Topic, seq: u64) -> Outbound {
    Outbound::Live {
        topic: t.clone(),
        payload: Bytes::from(update(t, seq).to_json()),
    }
}

fn stored(t: &Topic, seq: u64) -> Outbound {
    Outbound::Update {
        topic: t.clone(),
        payload: Bytes::from(update(t, seq).to_json()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_only_updates_trailing_stores_and_a_seq_jump_reach_a_client_once_each() {
    let gw = start(settings()).await;
    let t = topic("store_policy", Period::Minute);
    gw.bus
        .publish_all(&[stored(&t, 1), live(&t, 2), live(&t, 3)])
        .await
        .unwrap();
    // The gateway takes the topic up now: it only finds the stored seq 1.
    let mut ws = gw.ws("/ws/kpi/store_policy").await;
    let first = recv(&mut ws).await;
    assert_eq!((first["type"].as_str(), seq(&first)), (Some("snapshot"), 1));
    // The trailing store of seq 3 brings the current value.
    gw.bus.publish_all(&[stored(&t, 3)]).await.unwrap();
    let m = recv(&mut ws).await;
    assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), 3));
    gw.bus.publish_all(&[live(&t, 4)]).await.unwrap();
    assert_eq!(seq(&recv(&mut ws).await), 4);
    // A trailing store of what the client holds is dropped.
    gw.bus.publish_all(&[stored(&t, 4)]).await.unwrap();
    // An aggregator restart continues 32 seqs above the last stored one.
    let jumped = 4 + 32 + 1;
    gw.bus
        .publish_all(&[stored(&t, jumped), live(&t, jumped + 1)])
        .await
        .unwrap();
    let m = recv(&mut ws).await;
    assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), jumped));
    assert_eq!(seq(&recv(&mut ws).await), jumped + 1);
    // Nothing else: no repeat, no refetched snapshot.
    if let Some(extra) = try_recv(&mut ws, Duration::from_millis(300)).await {
        panic!("unexpected message {extra}");
    }
    // A client resuming from before the jump gets the newest as a snapshot.
    let mut resumed = gw.ws("/ws/kpi/store_policy?since=4").await;
    let m = recv(&mut resumed).await;
    assert_eq!(
        (m["type"].as_str(), seq(&m)),
        (Some("snapshot"), jumped + 1)
    );
    gw.stop().await;
}

/// A client that saw live updates on another gateway resumes here, where
/// the topic is taken up from the stored updates, which trail the live
/// ones: it gets no older value, only what comes after what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_ahead_of_the_stored_updates_never_goes_back() {
    let gw = start(settings()).await;
    let t = topic("failed_over", Period::Minute);
    gw.bus
        .publish_all(&[stored(&t, 1), live(&t, 2), live(&t, 3)])
        .await
        .unwrap();
    let mut ws = gw.ws("/ws/kpi/failed_over?since=3").await;
    // The trailing store of 3: the client holds it already.
    gw.bus.publish_all(&[stored(&t, 3)]).await.unwrap();
    gw.bus.publish_all(&[live(&t, 4)]).await.unwrap();
    let m = recv(&mut ws).await;
    assert_eq!((m["type"].as_str(), seq(&m)), (Some("update"), 4));
    if let Some(extra) = try_recv(&mut ws, Duration::from_millis(300)).await {
        panic!("unexpected message {extra}");
    }
    gw.stop().await;
}
