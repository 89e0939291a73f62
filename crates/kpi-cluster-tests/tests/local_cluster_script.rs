//! deploy/local-cluster.sh: `up` starts a working cluster (a publish reaches a WebSocket client through the balancer), `status` and `rolling-restart` work, and `down` leaves no process running.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{event, publish_until_acked, unique, wait_all_hold, wait_all_snapshots, Watcher};
use kpi_test_support::bin_path;

/// The ports the script uses at offset 0 (see its port table).
const BASE_PORTS: &[u16] = &[
    8080, 8081, 8082, 8404, 50051, 9101, 9102, 9103, 4222, 4223, 4224, 6222, 6223, 6224, 8222,
    8223, 8224,
];

/// An offset at which every port of the script is free right now.
fn free_offset() -> u16 {
    for offset in (1000..20000).step_by(537) {
        let all_free = BASE_PORTS.iter().all(|p| {
            p.checked_add(offset)
                .is_some_and(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if all_free {
            return offset;
        }
    }
    panic!("no port offset with all local-cluster ports free");
}

struct Script {
    path: PathBuf,
    state: tempfile_dir::Dir,
    offset: u16,
    bin_dir: PathBuf,
}

/// A temp directory without adding a dev-dependency: removed on drop.
mod tempfile_dir {
    use std::path::PathBuf;
    pub struct Dir(pub PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let p = std::env::temp_dir()
                .join(format!("kpi-local-cluster-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Script {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("bash")
            .arg(&self.path)
            .args(args)
            .env("KPI_CLUSTER_DIR", &self.state.0)
            .env("KPI_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .env("KPI_BIN_DIR", &self.bin_dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.path.display()));
        println!(
            "$ local-cluster.sh {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn pids(&self) -> Vec<u32> {
        let dir = self.state.0.join("pids");
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|s| s.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // Whatever happened, leave nothing running.
        let _ = Command::new("bash")
            .arg(&self.path)
            .arg("down")
            .env("KPI_CLUSTER_DIR", &self.state.0)
            .env("KPI_CLUSTER_PORT_OFFSET", self.offset.to_string())
            .output();
    }
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_status_rolling_restart_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin_dir = bin_path("kpi-gateway")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let script = Script {
        path: root.join("deploy/local-cluster.sh"),
        state: tempfile_dir::Dir::new(),
        offset: free_offset(),
        bin_dir,
    };
    assert!(script.run(&["up"]).status.success(), "up failed");
    let started = script.pids();
    assert_eq!(
        started.len(),
        9,
        "3 NATS, ingest, 2 aggregators, 2 gateways, HAProxy: {started:?}"
    );
    assert!(
        script.run(&["status"]).status.success(),
        "status reports something not ready"
    );
    // A second `up` refuses and leaves the running cluster alone.
    assert!(
        !script.run(&["up"]).status.success(),
        "a second up succeeded"
    );
    assert!(
        script.run(&["status"]).status.success(),
        "a refused second up disturbed the cluster"
    );

    // Data flows end to end through the balancer.
    let off = script.offset;
    let grpc = format!("http://127.0.0.1:{}", 50051 + off);
    let ws = format!("ws://127.0.0.1:{}", 8080 + off);
    let code = unique("local_script");
    let mut client = None;
    let time = SystemTime::now();
    publish_until_acked(
        &grpc,
        &mut client,
        event("a", &code, 2.0, time),
        Duration::from_secs(20),
    )
    .await;
    let watchers = vec![Watcher::start(&ws, &code)];
    wait_all_snapshots(&watchers, Duration::from_secs(15)).await;
    publish_until_acked(
        &grpc,
        &mut client,
        event("b", &code, 3.0, time),
        Duration::from_secs(20),
    )
    .await;
    let behind = wait_all_hold(&watchers, 2, 5.0, Duration::from_secs(10)).await;
    assert!(behind.is_empty(), "client not current: {behind:?}");

    assert!(
        script.run(&["rolling-restart"]).status.success(),
        "rolling-restart failed"
    );
    publish_until_acked(
        &grpc,
        &mut client,
        event("c", &code, 4.0, time),
        Duration::from_secs(20),
    )
    .await;
    let behind = wait_all_hold(&watchers, 3, 9.0, Duration::from_secs(10)).await;
    assert!(
        behind.is_empty(),
        "client not current after the rolling restart: {behind:?}"
    );
    let seen = watchers[0].seen();
    assert!(
        seen.errors.is_empty() && seen.regressions.is_empty(),
        "{seen:?}"
    );
    drop(watchers);

    let all = [started, script.pids()].concat();
    assert!(script.run(&["down"]).status.success(), "down failed");
    assert!(
        script.pids().is_empty(),
        "pid files left: {:?}",
        script.pids()
    );
    let left: Vec<u32> = all.into_iter().filter(|&p| running(p)).collect();
    assert!(
        left.is_empty(),
        "processes still running after down: {left:?}"
    );
    assert!(
        !script.run(&["status"]).status.success(),
        "status says ready after down"
    );
}
