//! One admission for every transport: maintenance, Origin, per-IP rate and the
//! connection limit refuse a WebSocket, `/ws`, SSE, a long poll, a snapshot
//! and a history read alike; and the caps on distinct topics per caller and
//! per gateway.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use kpi_bus::{Bus, BusConfig};
use kpi_gateway::GatewaySettings;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Every way a client reaches a topic: (name, path, extra headers).
/// A transport: its name, a path, and the headers it needs.
type Transport = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn transports() -> Vec<Transport> {
    vec![
        ("ws_topic", "/ws/kpi/sales_eu", UPGRADE_HEADERS.to_vec()),
        ("ws_mux", "/ws", UPGRADE_HEADERS.to_vec()),
        (
            "sse",
            "/sse/kpi/sales_eu",
            vec![("Accept", "text/event-stream")],
        ),
        ("poll", "/api/kpi/sales_eu/updates?wait=0", vec![]),
        ("snapshot", "/api/kpi/sales_eu", vec![]),
        ("history", "/api/kpi/sales_eu/history", vec![]),
    ]
}

#[derive(Debug, Clone, Copy)]
enum Case {
    Maintenance,
    ForeignOrigin,
    PerIpRate,
    ConnectionLimit,
}

impl Case {
    fn settings(self) -> GatewaySettings {
        let base = settings();
        match self {
            Case::Maintenance => base,
            Case::ForeignOrigin => GatewaySettings {
                allowed_origins: vec!["https://dash.example".into()],
                ..base
            },
            Case::PerIpRate => GatewaySettings {
                max_connections_per_ip_per_sec: 1,
                ..base
            },
            Case::ConnectionLimit => GatewaySettings {
                max_connections: 1,
                ..base
            },
        }
    }

    fn expected(self) -> (u16, &'static str) {
        match self {
            Case::Maintenance => (503, "maintenance"),
            Case::ForeignOrigin => (403, "origin_not_allowed"),
            Case::PerIpRate => (429, "rate_limited"),
            Case::ConnectionLimit => (503, "too_many_connections"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_is_refused_the_same_way() {
    let cases = [
        Case::Maintenance,
        Case::ForeignOrigin,
        Case::PerIpRate,
        Case::ConnectionLimit,
    ];
    let mut failures = Vec::new();
    for case in cases {
        for (name, path, headers) in transports() {
            let bus = Bus::memory(BusConfig::default());
            if let Case::Maintenance = case {
                // As an admin's maintenance call leaves it; read at start.
                let event = json!({"message": "upgrading", "at": "2026-12-01T04:00:00Z", "maintenance": true});
                bus.save_state("maintenance", Bytes::from(event.to_string()))
                    .await
                    .unwrap();
            }
            let gw = start_on(bus, case.settings()).await;
            let mut headers = headers.clone();
            if let Case::ForeignOrigin = case {
                headers.push(("Origin", "https://evil.example"));
            }
            // What takes the allowance first, and stays open meanwhile.
            let mut held = Vec::new();
            let mut waiting = Vec::new();
            match case {
                Case::PerIpRate => {
                    // A burst of two per second is allowed, the third is not.
                    for _ in 0..2 {
                        let r = raw_request(gw.addr, "GET", path, &headers).await;
                        assert!(r.status < 300, "{case:?} {name}: {}", r.status);
                        held.push(r);
                    }
                }
                Case::ConnectionLimit => {
                    // A long poll waiting for its first update holds the one slot.
                    let mut poll = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
                    poll.write_all(
                        b"GET /api/kpi/holder/updates?since=0&wait=30 HTTP/1.1\r\nHost: t\r\n\r\n",
                    )
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    waiting.push(poll);
                }
                _ => {}
            }
            let r = raw_request(gw.addr, "GET", path, &headers).await;
            let got = (
                r.status,
                r.json()["code"].as_str().unwrap_or("").to_string(),
            );
            let (status, code) = case.expected();
            if got != (status, code.to_string()) {
                failures.push(format!(
                    "{case:?} {name}: got {got:?}, want ({status}, {code})"
                ));
            }
            drop((held, waiting));
            gw.stop().await;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
