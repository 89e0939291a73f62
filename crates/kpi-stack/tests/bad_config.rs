//! A setting that cannot work stops `kpi-stack` before it binds a port, with a message naming the flag, whichever service the flag belongs to.

use std::time::Duration;

use kpi_test_support::{free_port, Service};

#[test]
fn each_services_bad_flag_is_refused_by_name_before_binding() {
    for (bad, named) in [
        (&["--max-batch", "0"][..], "--max-batch"),
        (&["--checkpoint-ms", "0"], "--checkpoint-ms"),
        (&["--replica-index", "first"], "--replica-index"),
        (&["--tls-cert", "/nonexistent.pem"], "--tls-cert"),
        (&["--partitions", "0"], "--partitions"),
    ] {
        let (http, grpc) = (free_port(), free_port());
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{http}"),
            "--grpc-listen".to_string(),
            format!("127.0.0.1:{grpc}"),
        ];
        args.extend(bad.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut stack = Service::spawn("kpi-stack", &args, &[]);
        let status = stack
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{bad:?} accepted: kpi-stack is running"));
        let logs = stack.logs();
        assert!(!status.success(), "{bad:?}: exit {status}\n{logs}");
        assert!(
            logs.contains("invalid configuration") && logs.contains(named),
            "{bad:?}: the message does not name {named}:\n{logs}"
        );
        assert!(
            !logs.contains("kpi-stack starting"),
            "{bad:?}: it started serving first:\n{logs}"
        );
    }
}
