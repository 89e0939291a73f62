//! The page, its assets and `/api/kpis`: content types, cache headers, revalidation, and the KPI list.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kpi_core::Period;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 GET: (status, lower-cased headers, body). Raw, because
/// the headers are what these tests are about.
async fn raw_get(gw: &Gateway, path: &str, extra: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_client_are_served_from_the_binary_with_cache_headers() {
    let gw = start(settings()).await;
    let (status, h, body) = raw_get(&gw, "/", "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&h, "cache-control"), Some("no-cache"));
    assert!(header(&h, "content-security-policy").is_some());
    let etag = header(&h, "etag").unwrap().to_string();

    // Revalidation: the same ETag gives a 304 without a body.
    let (status, _, body304) = raw_get(&gw, "/", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body304.as_str()), (304, ""));

    // The page pins its script to a content hash, which may be cached for good.
    let v = body
        .split("/assets/app.js?v=")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let (status, h, js) = raw_get(&gw, &format!("/assets/app.js?v={v}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(header(&h, "cache-control").unwrap().contains("immutable"));
    assert!(js.contains("/kpistream.js"));
    // Another version's URL is served, but only revalidated.
    let (_, h, _) = raw_get(&gw, "/assets/app.js?v=old", "").await;
    assert_eq!(header(&h, "cache-control"), Some("no-cache"));

    let (status, h, css) = raw_get(&gw, &format!("/assets/app.css?v={v}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-type"), Some("text/css; charset=utf-8"));
    assert!(css.contains(".widget"));

    // The client library: a stable URL, always revalidated, importable cross-origin.
    let (status, h, client) = raw_get(&gw, "/kpistream.js", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(header(&h, "cache-control"), Some("no-cache"));
    assert_eq!(header(&h, "access-control-allow-origin"), Some("*"));
    assert!(client.contains("var KpiStream = class"));

    let (status, _, _) = raw_get(&gw, "/assets/../../etc/passwd", "").await;
    assert_eq!(status, 404);
    let (status, _, _) = raw_get(&gw, "/assets/secret.js", "").await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_kpis_lists_the_codes_with_published_updates() {
    let gw = start(settings()).await;
    let (status, v) = gw.get("/api/kpis").await;
    assert_eq!(status, 200);
    assert_eq!(v, serde_json::json!({"kpis": []}));
    publish(&gw.bus, &topic("revenue_eur", Period::Minute), 1).await;
    publish(&gw.bus, &topic("revenue_eur", Period::Hour), 1).await;
    publish(&gw.bus, &topic("active_users", Period::Day), 1).await;
    let (status, v) = gw.get("/api/kpis").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        serde_json::json!({"kpis": ["active_users", "revenue_eur"]})
    );
    gw.stop().await;
}
