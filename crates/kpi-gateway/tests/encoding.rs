//! `encoding=delta` on the wire: patches after a full message, on the
//! WebSocket, `/ws` and SSE; a client that never asks sees no change.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kpi_core::Period;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_subscribers_get_patches_and_others_full_messages() {
    let gw = start(settings()).await;
    let t = topic("deltas", Period::Minute);
    publish(&gw.bus, &t, 1).await;
    let mut plain = gw.ws("/ws/kpi/deltas").await;
    let mut ws = gw.ws("/ws/kpi/deltas?encoding=delta").await;
    let mut mux = gw
        .mux_subscribed("deltas", json!({"encoding":"delta"}))
        .await;
    let mut sse = Sse::open(gw.addr, "/sse/kpi/deltas?encoding=delta", None).await;
    for c in [&mut plain, &mut ws, &mut mux] {
        assert_eq!(recv(c).await["type"], "snapshot");
    }
    assert_eq!(sse.next_data().await.1["type"], "snapshot");
    publish_range(&gw.bus, &t, 2..=3).await;
    for seq in 2..=3u64 {
        let full = recv(&mut plain).await;
        assert_eq!(
            (full["type"].as_str(), full["seq"].as_u64()),
            (Some("update"), Some(seq))
        );
        for c in [&mut ws, &mut mux] {
            let p = recv(c).await;
            assert_eq!(
                (
                    p["type"].as_str(),
                    p["base_seq"].as_u64(),
                    p["seq"].as_u64(),
                    p["kpi"].as_str()
                ),
                (Some("patch"), Some(seq - 1), Some(seq), Some("deltas")),
                "{p}"
            );
            assert_eq!(p["patch"]["stats"]["last"], json!(seq as f64));
            assert!(p["patch"].get("kpi").is_none(), "only what changed: {p}");
        }
        let (id, p) = sse.next_data().await;
        assert_eq!((id, p["type"].as_str()), (seq.to_string(), Some("patch")));
    }
    let (status, body) = gw.get("/sse/kpi/deltas?encoding=gzip").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_encoding"))
    );
    gw.stop().await;
}
