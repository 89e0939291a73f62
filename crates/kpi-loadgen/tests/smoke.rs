//! The loadgen end to end at tiny scale against kpi-stack: it connects,
//! measures deliveries and latency, and reports sane numbers. The real
//! benchmark runs are not tests (see benches/README.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn measures_kpi_stack_at_tiny_scale() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpi-loadgen"))
        .args(["kpistream", "--stack", "single", "--coalesce-ms", "0"])
        .args(["--connections", "20", "--kpis", "2", "--rate", "20"])
        .args(["--duration", "2", "--warmup", "1", "--settle", "0"])
        .args(["--connect-timeout", "10"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kpi-loadgen starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kpi-loadgen did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = child
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    assert!(status.success(), "kpi-loadgen failed: {stderr}");

    let raw = std::fs::read_to_string(out.path().join("kpistream.json")).expect("report written");
    let r: serde_json::Value = serde_json::from_str(&raw).expect("report is JSON");
    assert_eq!(r["connections_open"], 20, "{stderr}");
    assert!(
        r["deliveries"].as_u64().unwrap_or(0) > 0,
        "no deliveries: {stderr}"
    );
    let lat = &r["latency_ms"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().unwrap_or(-1.0),
        lat["p99"].as_f64().unwrap_or(-1.0),
        lat["max"].as_f64().unwrap_or(-1.0),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "percentiles {lat}");
    assert!(
        max < 10_000.0,
        "latency over 10 s is not a measurement: {lat}"
    );
    // Where the CPU went, per process, for the README's breakdown.
    let by_process = r["cpu_secs_by_process"]
        .as_object()
        .expect("cpu by process");
    // This run is the single-process stack.
    for name in ["kpi-stack", "kpi-loadgen"] {
        let secs = by_process.get(name).and_then(|v| v.as_f64());
        assert!(
            secs.is_some_and(|s| s >= 0.0),
            "no CPU for {name}: {by_process:?}"
        );
    }
    assert!(out.path().join("kpistream-latency.svg").is_file());
    assert!(out.path().join("kpistream-deliveries.svg").is_file());
}
