//! The Helm chart renders, lints and validates offline, and keeps what operators rely on (runs helm/check_chart.py).

use std::path::Path;
use std::process::Command;

#[test]
fn chart_renders_validates_and_keeps_the_operator_contract() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("helm/check_chart.py");
    let out = Command::new("python3")
        .arg(&script)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e} (install python3; scripts/setup-deps installs the packages)", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "helm/check_chart.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(" passed, 0 failed"),
        "no summary line:\n{stdout}"
    );
}
