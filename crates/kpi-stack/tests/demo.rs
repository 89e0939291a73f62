//! `kpi-stack --demo`: alive the moment it starts, with no NATS.

mod common;

use std::time::Duration;

use common::get_json;
use kpi_test_support::Stack;

#[tokio::test]
async fn the_demo_serves_values_that_change() {
    let stack = Stack::start(&["--demo"], &[]).await;
    let url = format!("{}/api/kpi/pending_approvals?period=minute", stack.http);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, snap) = get_json(&url).await;
        assert_eq!(status, 200, "{snap}");
        let seq = snap["seq"].as_u64().unwrap_or(0);
        if seq > 0 && seen.last().is_none_or(|(s, _)| *s != seq) {
            seen.push((seq, snap["stats"].clone()));
        }
        if seen.len() >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo values did not change: {seen:?}\n{}",
            stack.service.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 != w[1].1),
        "{seen:?}"
    );
    let (status, page) = kpi_test_support::http_get(&format!("{}/", stack.http)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") || page.contains("<!doctype") || page.contains("<!DOCTYPE"),
        "{page}"
    );
}
