//! The HTTP formats (JSON, NDJSON, InfluxDB line protocol, OTLP/HTTP JSON) against an in-process ingest: gRPC's guarantees, each format's answers.

mod common;

use std::io::Write;

use common::Harness;
use kpi_ingest::IngestSettings;
use serde_json::{json, Value};

/// A whole second a minute ago: recent enough for the event-age rule (half
/// the duplicate window), fixed within one test so retries carry equal content.
fn a_minute_ago() -> i64 {
    chrono::Utc::now().timestamp() - 60
}

const OPS: &str = "ops-token-0123456789abcdef";

async fn post(
    h: &Harness,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    auth: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new()
        .post(h.http_url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("ingest answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("a body"))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn statuses(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status").to_owned())
        .collect()
}

fn values(stored: &[kpi_core::EventRecord]) -> Vec<f64> {
    stored.iter().map(|r| r.value).collect()
}

/// Every stored event of `kpi`, in log order (its partition holds others too).
async fn events_of(h: &Harness, kpi: &str) -> Vec<kpi_core::EventRecord> {
    let code = kpi_core::KpiCode::parse(kpi).expect("valid code");
    let partition = kpi_core::partition_of(&code, h.bus.config().partitions);
    let mut feed = h.bus.event_feed(partition, 1).await.expect("feed");
    let mut out = Vec::new();
    while let Ok(Some(Ok(next))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await
    {
        let rec = next.record.expect("decodes");
        if rec.kpi.as_str() == kpi {
            out.push(rec);
        }
    }
    out
}

#[tokio::test]
async fn json_object_array_and_ndjson_are_stored_once_each_with_per_event_outcomes() {
    let h = Harness::start().await;
    let (status, _, body) = post(
        &h,
        "/v1/events",
        "application/json",
        json!({"event_id":"j-1","kpi":"orders","value":3,"time":chrono::DateTime::from_timestamp(a_minute_ago(), 0).expect("time").to_rfc3339(),"labels":{"shop":"eu"}}).to_string(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&parse(&body)), vec!["stored"]);

    let array = json!([
        {"event_id":"j-2","kpi":"orders","value":4},
        {"event_id":"j-3","kpi":"orders","value":5},
    ])
    .to_string();
    let (status, _, body) = post(&h, "/v1/events", "application/json", array.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["accepted"], 2);
    // A retried request counts once.
    let (status, _, body) = post(&h, "/v1/events", "application/json", array, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(statuses(&parse(&body)), vec!["duplicate", "duplicate"]);

    let ndjson = "{\"event_id\":\"j-4\",\"kpi\":\"orders\",\"value\":6}\n\nnot json\r\n{\"event_id\":\"j-5\",\"kpi\":\"orders\",\"value\":7}";
    let (status, _, body) = post(&h, "/v1/events", "application/x-ndjson", ndjson, None).await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert_eq!(statuses(&v), vec!["stored", "invalid", "stored"]);
    assert!(
        v["results"][1]["reason"]
            .as_str()
            .expect("reason")
            .contains("not JSON"),
        "{body}"
    );

    let stored = events_of(&h, "orders").await;
    assert_eq!(values(&stored), vec![3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(stored[0].labels.get("shop").map(String::as_str), Some("eu"));
}

#[tokio::test]
async fn hostile_codes_are_refused_one_by_one_with_reasons() {
    let h = Harness::start().await;
    let hostile = ["a.b", "*", ">", "x y", "caf\u{e9}", "nul\u{0}", ""];
    let mut events: Vec<Value> = hostile
        .iter()
        .map(|k| json!({"kpi": k, "value": 1}))
        .collect();
    events.push(json!({"event_id":"ok-1","kpi":"fine","value":1}));
    let (status, _, body) = post(
        &h,
        "/v1/events",
        "application/json",
        Value::Array(events).to_string(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    let st = statuses(&v);
    assert_eq!(st.last().map(String::as_str), Some("stored"));
    for (i, k) in hostile.iter().enumerate() {
        assert_eq!(st[i], "invalid", "{k:?} accepted: {body}");
        assert!(
            v["results"][i]["reason"]
                .as_str()
                .expect("reason")
                .contains("invalid kpi code"),
            "{body}"
        );
    }
    // Only hostile events: 400, still one outcome each.
    let (status, _, body) = post(
        &h,
        "/v1/events",
        "application/json",
        json!([{"kpi":"a.>","value":1}]).to_string(),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(statuses(&parse(&body)), vec!["invalid"]);
}

#[tokio::test]
async fn tokens_are_checked_in_every_form_the_tools_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("publishers");
    std::fs::write(&path, format!("{OPS} ops_*\n")).expect("write tokens");
    let h = Harness::start_with(IngestSettings {
        publisher_tokens_file: Some(path),
        ..Default::default()
    })
    .await;
    let ev = json!({"kpi":"ops_disk","value":1}).to_string();
    let (status, _, body) = post(&h, "/v1/events", "application/json", ev.clone(), None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(parse(&body)["code"], "unauthorized");
    let (status, _, _) = post(
        &h,
        "/v1/events",
        "application/json",
        ev.clone(),
        Some("Bearer nope"),
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {OPS}");
    let (status, _, body) = post(&h, "/v1/events", "application/json", ev, Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(
        &h,
        "/v1/events",
        "application/json",
        json!({"kpi":"sales_eu","value":1}).to_string(),
        Some(&bearer),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("token may not publish sales_eu"), "{body}");

    // InfluxDB clients: `Token` (v2) and Basic with the token as password (v1, Telegraf).
    let token = format!("Token {OPS}");
    let (status, _, body) = post(
        &h,
        "/api/v2/write?org=o&bucket=b",
        "text/plain",
        "ops_mem value=1",
        Some(&token),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("telegraf:{OPS}"))
    );
    let (status, _, body) = post(
        &h,
        "/write?db=x",
        "text/plain",
        "ops_mem value=2",
        Some(&basic),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, _, body) = post(&h, "/write?db=x", "text/plain", "ops_mem value=2", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(parse(&body)["code"], "unauthorized");
}

#[tokio::test]
async fn limits_answer_413_and_429_with_retry_after() {
    let h = Harness::start_with(IngestSettings {
        publisher_token: Some("rate-token".into()),
        max_publishes_per_token_per_sec: 2,
        max_body_bytes: 200,
        max_batch: 3,
        ..Default::default()
    })
    .await;
    let auth = Some("Bearer rate-token");
    let big = json!([{"kpi":"k","value":1,"labels":{"pad":"x".repeat(300)}}]).to_string();
    let (status, _, body) = post(&h, "/v1/events", "application/json", big, auth).await;
    assert_eq!(status, 413, "{body}");
    // Gzip does not get past the limit: it applies to the inflated body.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(format!("k value=1 {}", " ".repeat(1000)).as_bytes())
        .expect("gzip");
    let resp = reqwest::Client::new()
        .post(h.http_url("/api/v2/write"))
        .header("authorization", "Token rate-token")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 413);

    let four = json!([{"kpi":"k","value":1},{"kpi":"k","value":1},{"kpi":"k","value":1},{"kpi":"k","value":1}]).to_string();
    let (status, _, body) = post(&h, "/v1/events", "application/json", four, auth).await;
    assert_eq!(status, 413, "more events than --max-batch: {body}");

    // The rate: the first call spends the budget, the next is refused.
    let one = json!({"kpi":"k","value":1}).to_string();
    let mut limited = None;
    for _ in 0..5 {
        let (status, headers, body) =
            post(&h, "/v1/events", "application/json", one.clone(), auth).await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
    }
    let (headers, body) = limited.expect("a 429 within five quick calls");
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(parse(&body)["code"], "rate_limited");
}

#[tokio::test]
async fn ndjson_is_streamed_and_its_answer_stays_bounded() {
    let h = Harness::start_with(IngestSettings {
        max_batch: 100,
        max_in_flight: 64,
        ..Default::default()
    })
    .await;
    // Far more lines than one batch, with a refused one near the end.
    let n = 5_000;
    let stream = futures::stream::iter((0..n).map(move |i| {
        let line = if i == n - 2 {
            "{\"kpi\":\"bad.code\",\"value\":1}\n".to_owned()
        } else {
            format!("{{\"event_id\":\"n-{i}\",\"kpi\":\"lines\",\"value\":{i}}}\n")
        };
        Ok::<_, std::io::Error>(line)
    }));
    let (status, _, body) = post(
        &h,
        "/v1/events",
        "application/x-ndjson",
        reqwest::Body::wrap_stream(stream),
        None,
    )
    .await;
    assert_eq!(status, 200, "{}", &body[..body.len().min(500)]);
    let v = parse(&body);
    assert_eq!(v["accepted"], n - 1);
    assert_eq!(v["refused"], 1);
    let results = v["results"].as_array().expect("results");
    // Every outcome of the first batch, then only what was not stored.
    assert_eq!(results.len(), 101, "{}", results.len());
    assert_eq!(results[100]["index"], n - 2);
    assert_eq!(v["results_omitted"], n - 101);
    assert_eq!(events_of(&h, "lines").await.len(), n as usize - 1);
}

#[tokio::test]
async fn line_protocol_maps_fields_counts_retries_once_and_names_a_bad_line() {
    let h = Harness::start().await;
    let t0 = a_minute_ago();
    let body = format!("cpu,host=a value=0.5,idle=90i {t0}\nmem,host=a used=12 {t0}\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).expect("gzip");
    let gz = gz.finish().expect("gzip");
    for _ in 0..2 {
        let resp = reqwest::Client::new()
            .post(h.http_url("/api/v2/write?org=o&bucket=b&precision=s"))
            .header("content-encoding", "gzip")
            .body(gz.clone())
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 204);
    }
    let cpu = events_of(&h, "cpu").await;
    assert_eq!(values(&cpu), vec![0.5]);
    let rec = &cpu[0];
    assert_eq!(rec.time.timestamp(), t0);
    assert_eq!(rec.labels.get("host").map(String::as_str), Some("a"));
    assert_eq!(values(&events_of(&h, "cpu_idle").await), vec![90.0]);
    assert_eq!(values(&events_of(&h, "mem_used").await), vec![12.0]);

    let (status, _, body) = post(
        &h,
        "/write?db=x&precision=ms",
        "text/plain",
        format!(
            "disk value=1 {ms}\ndisk value=oops {ms}\nbad.name value=2\n",
            ms = t0 * 1000
        ),
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let v = parse(&body);
    assert_eq!(v["code"], "invalid");
    assert_eq!(v["line"], 2);
    let msg = v["message"].as_str().expect("message");
    assert!(
        msg.contains("disk value=oops") && msg.contains("invalid field value"),
        "{msg}"
    );
    // The good line is stored, as InfluxDB's partial write does.
    assert_eq!(values(&events_of(&h, "disk").await), vec![1.0]);

    let (status, _, body) = post(
        &h,
        "/api/v2/write?precision=fortnight",
        "text/plain",
        "x value=1",
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn otlp_json_maps_gauges_and_sums_and_refuses_histograms_in_partial_success() {
    let h = Harness::start().await;
    let t = (i128::from(a_minute_ago()) * 1_000_000_000).to_string();
    let request = json!({"resourceMetrics":[{"scopeMetrics":[{"metrics":[
        {"name":"queue.depth","gauge":{"dataPoints":[
            {"asDouble":7.5,"timeUnixNano":t,"attributes":[{"key":"queue","value":{"stringValue":"mail"}}]}]}},
        {"name":"jobs.done","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[
            {"asInt":"3","startTimeUnixNano":t,"timeUnixNano":t}]}},
        {"name":"latency","histogram":{"aggregationTemporality":1,"dataPoints":[
            {"count":"2","timeUnixNano":t}]}},
        {"name":"bad/name","gauge":{"dataPoints":[{"asDouble":1,"timeUnixNano":t}]}}
    ]}]}]});
    for _ in 0..2 {
        let (status, _, body) = post(
            &h,
            "/v1/metrics",
            "application/json",
            request.to_string(),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v = parse(&body);
        assert_eq!(v["partialSuccess"]["rejectedDataPoints"], 2, "{body}");
        let why = v["partialSuccess"]["errorMessage"]
            .as_str()
            .expect("message");
        assert!(
            why.contains("histograms are not supported") && why.contains("bad/name"),
            "{why}"
        );
    }
    let depth = events_of(&h, "queue_depth").await;
    assert_eq!(values(&depth), vec![7.5]);
    let rec = &depth[0];
    assert_eq!(rec.labels.get("queue").map(String::as_str), Some("mail"));
    assert_eq!(values(&events_of(&h, "jobs_done").await), vec![3.0]);

    let (status, _, _) = post(&h, "/v1/metrics", "text/plain", "x", None).await;
    assert_eq!(status, 415);
}
