//! The dashboard scenario end to end, briefly: it starts `kpi-stack --demo`,
//! measures the six cadence x encoding dashboards and writes their report.
//! The real figures come from a two-minute run (see benches/README.md).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dashboard_reports_six_variants() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpi-loadgen"))
        .args(["dashboard", "--duration", "3", "--warmup", "1"])
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
            panic!("kpi-loadgen dashboard did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(status.success(), "kpi-loadgen dashboard failed: {stderr}");

    let raw = std::fs::read_to_string(out.path().join("dashboard.json")).expect("report written");
    let r: serde_json::Value = serde_json::from_str(&raw).expect("report is JSON");
    assert_eq!(r["subscriptions"], 20, "{r}");
    let variants: Vec<(String, String)> = r["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| {
            (
                v["cadence"].as_str().unwrap_or("?").to_string(),
                v["encoding"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for c in ["live", "5s", "close"] {
        for e in ["full", "delta"] {
            want.push((c.to_string(), e.to_string()));
        }
    }
    assert_eq!(variants, want, "{r}");
    // The demo publishes every 500 ms, so a live dashboard hears something in 3 s.
    assert!(
        r["variants"][0]["messages"].as_u64().unwrap_or(0) > 0,
        "live dashboard received nothing: {r}"
    );
}
