//! 10,000 distinct never-published codes polled anonymously: the gateway's
//! memory comes back and its upstream subscriptions stay under the cap, on
//! kpi-stack (in-process bus) and on the NATS stack.
//!
//! Before sessions, every such poll left about 62 KiB behind in the
//! in-process bus for good (3,000 polls: 13 MB to 199 MB). The bounds here:
//! once the topics' linger has passed, RSS is at most `bound` above its
//! start: what the topics held at once cost (the allocator keeps the freed
//! pages), at most the cap of 500, each with the in-process bus's
//! 1024-message live channel (~60 KiB) on kpi-stack: 48 MiB. A second round
//! of 10,000 new codes then adds at most 16 MiB (nothing is kept per code;
//! leaking them would add ~550 MiB a round on kpi-stack).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kpi_test_support::{free_port, NatsServer, Service, Stack};

const CODES: usize = 10_000;
const SECOND_ROUND_KIB: u64 = 16 * 1024;
/// Polls per second, over all workers.
const RATE: u64 = 500;
const WORKERS: u64 = 16;

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn gauge(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Polls `CODES` distinct codes (16 at a time, at most `RATE` a second, so
/// that how many topics linger at once does not depend on the machine's
/// speed) while a watcher samples the upstream gauge; returns its highest
/// reading.
async fn poll_them_all(base: &str, round: usize) -> u64 {
    let client = reqwest::Client::new();
    let highest = Arc::new(AtomicU64::new(0));
    let sampling = {
        let (client, highest, url) = (client.clone(), highest.clone(), format!("{base}/metrics"));
        tokio::spawn(async move {
            loop {
                if let Ok(r) = client.get(&url).send().await {
                    let page = r.text().await.unwrap_or_default();
                    let held = gauge(&page, "kpi_gateway_upstream_subscriptions");
                    highest.fetch_max(held, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (client, next, base) = (client.clone(), next.clone(), base.to_string());
        workers.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 * WORKERS / RATE));
            loop {
                pace.tick().await;
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= CODES as u64 {
                    return;
                }
                let url = format!("{base}/api/kpi/never_{round}_{i}/updates?wait=0");
                let r = client.get(&url).send().await.expect("poll");
                assert_eq!(r.status().as_u16(), 200, "{url}");
                let body: serde_json::Value = r.json().await.expect("JSON");
                assert_eq!(body["messages"][0]["seq"], 0, "{body}");
            }
        }));
    }
    for w in workers {
        w.await.expect("poller");
    }
    sampling.abort();
    highest.load(Ordering::SeqCst)
}

/// Waits until the gauge reads 0 (every topic's linger passed).
async fn wait_released(base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, page) = kpi_test_support::http_get(&format!("{base}/metrics")).await;
        if gauge(&page, "kpi_gateway_upstream_subscriptions") == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream subscriptions never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check(gateway: &Service, base: &str, cap: u64, bound_kib: u64) {
    // Warm up the paths the polls take, so the start is not measured cold.
    let _ = kpi_test_support::http_get(&format!("{base}/api/kpi/warmup/updates?wait=0")).await;
    wait_released(base).await;
    let start = rss_kib(gateway.pid());
    let mut after = Vec::new();
    for round in 0..2 {
        let highest = poll_them_all(base, round).await;
        let peak = rss_kib(gateway.pid());
        wait_released(base).await;
        let end = rss_kib(gateway.pid());
        eprintln!(
            "round {round}: RSS start {start} KiB, after {CODES} polls {peak} KiB, after the linger {end} KiB; highest upstream gauge {highest} (cap {cap})"
        );
        assert!(
            highest <= cap,
            "upstream subscriptions reached {highest}, cap {cap}"
        );
        after.push(end);
    }
    assert!(
        after[0] <= start + bound_kib,
        "RSS went from {start} KiB to {} KiB (bound: start + {bound_kib} KiB)",
        after[0]
    );
    assert!(
        after[1] <= after[0] + SECOND_ROUND_KIB,
        "10,000 more codes kept memory: {} KiB, then {} KiB",
        after[0],
        after[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kpi_stack_memory_returns_and_the_cap_holds() {
    let stack = Stack::start(
        &[
            // Below what lingers at once (2 s at 500 polls/s): lingering topics must make room.
            "--max-topics",
            "500",
            "--linger-ms",
            "2000",
        ],
        &[],
    )
    .await;
    check(&stack.service, &stack.http, 500, 48 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_nats_stack_memory_returns_and_the_cap_holds() {
    let nats = NatsServer::start();
    let http = free_port();
    let gateway = Service::spawn(
        "kpi-gateway",
        &[
            "--listen",
            &format!("127.0.0.1:{http}"),
            // Below what lingers at once (2 s at 500 polls/s): lingering topics must make room.
            "--max-topics",
            "500",
            "--linger-ms",
            "2000",
        ],
        &[("NATS_URL", &nats.url())],
    );
    let base = format!("http://127.0.0.1:{http}");
    gateway
        .wait_http_ok(&format!("{base}/readyz"), Duration::from_secs(30))
        .await;
    check(&gateway, &base, 500, 48 * 1024).await;
}
