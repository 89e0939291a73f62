//! The capacity scenario end to end at a tiny rate: it starts its own
//! nats-servers and the pipeline, climbs two short steps for kpistream and
//! for raw JetStream, and writes its report. Only that a report comes out is
//! asserted; the figures belong in benches/README.md, never in a test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn capacity_reports_kpistream_and_raw_rows() {
    // The scenario spawns these next to itself; the harness says clearly
    // which one is missing and how to build it.
    for bin in ["kpi-ingest", "kpi-aggregator"] {
        kpi_test_support::bin_path(bin);
    }
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpi-loadgen"))
        .args(["capacity", "--steps", "50,100", "--refine", "0"])
        .args(["--step-secs", "1", "--warmup-secs", "1"])
        .args(["--kpis", "5", "--partitions", "2", "--drain-secs", "5"])
        // A CI machine's disk may be smaller than the default stream.
        .args(["--events-max-bytes", "268435456"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kpi-loadgen starts");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kpi-loadgen capacity did not finish within 120 s:\n{}",
                reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = reader.join().unwrap_or_default();
    // A missing nats-server fails here, with the loadgen's
    // "nats-server not found (apt-get install nats-server)" in the message.
    assert!(status.success(), "kpi-loadgen capacity failed:\n{stderr}");

    let raw = std::fs::read_to_string(out.path().join("capacity.json"))
        .unwrap_or_else(|e| panic!("no capacity.json ({e}):\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(&raw).expect("report is JSON");
    let rows = report["rows"].as_array().expect("rows");
    for target in ["kpistream", "raw"] {
        assert!(
            rows.iter().any(|r| r["target"] == target),
            "no {target} row in {report:#}"
        );
        assert!(
            report["ceilings"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["target"] == target)),
            "no {target} ceiling in {report:#}"
        );
    }
    assert!(out.path().join("capacity.svg").is_file());
    assert!(out.path().join("capacity.md").is_file());
}
