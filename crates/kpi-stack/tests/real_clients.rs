//! Publishers' own tools against kpistream: InfluxDB's Python client and OpenTelemetry's OTLP exporters (HTTP and gRPC), on kpi-stack over NATS and on the split services.
//!
//! The clients are PyPI's `influxdb-client`, `opentelemetry-sdk` and
//! `opentelemetry-exporter-otlp`, installed by `scripts/setup-deps`; the
//! scripts are in `tests/clients/`. Values are read back from the gateway, per
//! `day` so a bucket boundary cannot split a test's events.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{get_json, unique, Pipeline};
use kpi_test_support::{NatsServer, Stack};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/clients")
        .join(name)
}

/// Runs a client script; panics with its output when it fails.
async fn python(name: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new("python3")
        .arg(script(name))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("python3 is missing ({e}); run scripts/setup-deps"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{name} failed (missing packages? run scripts/setup-deps):\n{stdout}\n{stderr}"
    );
    stdout
}

/// The day's stats of `kpi` once its count reaches `count` (or panics after 10 s).
async fn stats_when(gateway: &str, kpi: &str, count: u64) -> serde_json::Value {
    let url = format!("{gateway}/api/kpi/{kpi}?period=day");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, snap) = get_json(&url).await;
        assert_eq!(status, 200, "{snap}");
        if snap["stats"]["count"].as_u64().unwrap_or(0) >= count {
            // A little longer, so a double count would show.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return get_json(&url).await.1["stats"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{kpi}: {snap}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// InfluxDB's client: both fields arrive, its retry counts once, a bad line is named.
async fn influx_client(ingest: &str, gateway: &str) {
    let p = unique("influx");
    let out = python("influx_write.py", &[ingest, &p]).await;
    let bad: serde_json::Value = serde_json::from_str(out.trim()).expect("the script's JSON");
    assert_eq!(bad["status"], 400, "{bad}");
    let body: serde_json::Value =
        serde_json::from_str(bad["body"].as_str().expect("a body")).expect("Influx's JSON error");
    assert_eq!(body["line"], 2, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("value=abc"),
        "{body}"
    );

    let cpu = stats_when(gateway, &format!("{p}_cpu"), 1).await;
    assert_eq!(
        (cpu["count"].as_u64(), cpu["last"].as_f64()),
        (Some(1), Some(0.5)),
        "{cpu}"
    );
    let idle = stats_when(gateway, &format!("{p}_cpu_idle"), 1).await;
    assert_eq!(
        (idle["count"].as_u64(), idle["last"].as_f64()),
        (Some(1), Some(90.0)),
        "{idle}"
    );
    let ok = stats_when(gateway, &format!("{p}_ok"), 1).await;
    assert_eq!(
        ok["count"], 1,
        "the good line of the bad batch is stored: {ok}"
    );
}

/// OpenTelemetry's exporter: the gauge's value and the delta sum's increments arrive as stated.
async fn otlp_exporter(transport: &str, endpoint: &str, gateway: &str) {
    let p = unique(&format!("otel_{transport}"));
    python("otlp_export.py", &[transport, endpoint, &p]).await;
    let depth = stats_when(gateway, &format!("{p}_queue_depth"), 1).await;
    assert_eq!(depth["last"], 7.5, "{depth}");
    // Delta temporality: one event per export, each the increment (3, then 2).
    let jobs = stats_when(gateway, &format!("{p}_jobs_done"), 2).await;
    assert_eq!(
        (jobs["count"].as_u64(), jobs["sum"].as_f64()),
        (Some(2), Some(5.0)),
        "{jobs}"
    );
    // The histogram is refused, so nothing exists under its name.
    let (_, latency) = get_json(&format!("{gateway}/api/kpi/{p}_latency?period=day")).await;
    assert_eq!(latency["stats"]["count"], 0, "{latency}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_publish_to_kpi_stack_on_nats() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats-server starts");
    let stack = Stack::start(&["--nats-url", &nats.url()], &[]).await;
    let url = &stack.http;
    influx_client(url, url).await;
    otlp_exporter("http", url, url).await;
    otlp_exporter("grpc", &stack.grpc, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_publish_to_the_split_services() {
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats-server starts");
    let p = Pipeline::start(&nats.url(), &[]).await;
    influx_client(&p.ingest_http, &p.gateway_http).await;
    otlp_exporter("http", &p.ingest_http, &p.gateway_http).await;
    let grpc = p.grpc.trim_start_matches("http://").to_owned();
    otlp_exporter("grpc", &grpc, &p.gateway_http).await;
}
