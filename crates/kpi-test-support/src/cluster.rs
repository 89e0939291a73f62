//! A local kpistream cluster of real processes for fault tests: a NATS cluster, ingest, aggregator replicas, and gateways behind HAProxy.
//!
//! The same layout `deploy/local-cluster.sh` starts, on free loopback ports,
//! and with the balancer configured from the same template
//! (`deploy/haproxy/haproxy.cfg.tmpl`), so the tests exercise the shipped
//! balancer settings. Gateways keep their port across restarts so HAProxy's
//! server list stays valid. Everything is killed when the cluster is dropped.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::try_http_get;
use crate::nats::NatsCluster;
use crate::port::free_port;
use crate::process::{LogFile, Proc};
use crate::service::Service;

/// The balancer's config template, shared with `deploy/local-cluster.sh`.
const HAPROXY_TEMPLATE: &str = include_str!("../../../deploy/haproxy/haproxy.cfg.tmpl");
/// How long a service may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(45);

/// The shape of a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nats_nodes: usize,
    pub partitions: u32,
    pub aggregators: u32,
    pub gateways: usize,
    /// JetStream replicas of the streams (3 keeps data through a node loss).
    pub stream_replicas: usize,
    /// `--drain-secs` of the gateways.
    pub gateway_drain_secs: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nats_nodes: 3,
            partitions: 4,
            aggregators: 2,
            gateways: 2,
            stream_replicas: 3,
            gateway_drain_secs: 5,
        }
    }
}

/// One gateway slot: a fixed port and the process, when running.
struct GatewaySlot {
    port: u16,
    service: Option<Service>,
}

/// HAProxy, started from the template.
struct Balancer {
    proc: Proc,
    log: LogFile,
    port: u16,
    stats_port: u16,
    _dir: TempDir,
}

/// A running local cluster; see the module docs.
///
/// Fields drop in order: the balancer and services stop before NATS does.
pub struct LocalCluster {
    balancer: Balancer,
    gateways: Vec<GatewaySlot>,
    aggregators: Vec<Service>,
    ingest: Service,
    ingest_grpc: u16,
    spec: ClusterSpec,
    pub nats: NatsCluster,
}

/// Where to find haproxy: PATH first, then the sbin directories Debian installs to.
fn haproxy_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("haproxy not found on PATH: install it (apt-get install haproxy; scripts/setup-deps does)")
        })
}

/// The HAProxy server name of gateway `i` (as the balancer's `X-Kpi-Gateway` header reports it).
pub fn gateway_server_name(i: usize) -> String {
    format!("gw{}", i + 1)
}

/// The balancer config for gateways on `gateway_ports`.
pub fn haproxy_config(bind: &str, port: u16, stats_port: u16, gateway_ports: &[u16]) -> String {
    let servers = gateway_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server {} {bind}:{p} check", gateway_server_name(i)))
        .collect::<Vec<_>>()
        .join("\n");
    HAPROXY_TEMPLATE
        .replace("@BIND@", bind)
        .replace("@BALANCER_PORT@", &port.to_string())
        .replace("@STATS_PORT@", &stats_port.to_string())
        .replace("@SERVERS@", &servers)
}

impl LocalCluster {
    /// Starts everything and waits until every service is ready and the
    /// balancer sees every gateway up.
    pub async fn start(spec: ClusterSpec) -> LocalCluster {
        let nats = NatsCluster::start(spec.nats_nodes);
        let urls = nats.urls();
        let partitions = spec.partitions.to_string();
        let replicas = spec.stream_replicas.to_string();

        let (ingest_grpc, ingest_http) = (free_port(), free_port());
        let ingest = Service::spawn(
            "kpi-ingest",
            &[
                "--listen",
                &format!("127.0.0.1:{ingest_grpc}"),
                "--http-listen",
                &format!("127.0.0.1:{ingest_http}"),
                "--partitions",
                &partitions,
                "--replicas",
                &replicas,
            ],
            &[("NATS_URL", &urls)],
        );
        ingest
            .wait_http_ok(
                &format!("http://127.0.0.1:{ingest_http}/readyz"),
                READY_TIMEOUT,
            )
            .await;

        let mut aggregators = Vec::new();
        for i in 0..spec.aggregators {
            let port = free_port();
            // A StatefulSet-style pod name, as Kubernetes passes it.
            let index = format!("kpi-aggregator-{i}");
            let svc = Service::spawn(
                "kpi-aggregator",
                &[
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--partitions",
                    &partitions,
                    "--replica-index",
                    &index,
                    "--replica-count",
                    &spec.aggregators.to_string(),
                    "--replicas",
                    &replicas,
                    "--coalesce-ms",
                    "50",
                    "--checkpoint-ms",
                    "200",
                ],
                &[("NATS_URL", &urls)],
            );
            svc.wait_http_ok(&format!("http://127.0.0.1:{port}/readyz"), READY_TIMEOUT)
                .await;
            aggregators.push(svc);
        }

        let gateways: Vec<GatewaySlot> = (0..spec.gateways)
            .map(|_| GatewaySlot {
                port: free_port(),
                service: None,
            })
            .collect();
        let ports: Vec<u16> = gateways.iter().map(|g| g.port).collect();
        let balancer = Balancer::start(&ports);
        let mut cluster = LocalCluster {
            nats,
            spec,
            ingest,
            ingest_grpc,
            aggregators,
            gateways,
            balancer,
        };
        for i in 0..cluster.gateways.len() {
            cluster.start_gateway(i).await;
        }
        cluster
    }

    /// `http://127.0.0.1:<port>` of ingest's gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingest_grpc)
    }

    /// `ws://127.0.0.1:<port>` of the balancer.
    pub fn balancer_ws(&self) -> String {
        format!("ws://127.0.0.1:{}", self.balancer.port)
    }

    /// `http://127.0.0.1:<port>` of the balancer.
    pub fn balancer_http(&self) -> String {
        format!("http://127.0.0.1:{}", self.balancer.port)
    }

    /// `http://127.0.0.1:<port>` of gateway `i` itself.
    pub fn gateway_http(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.gateways[i].port)
    }

    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    /// Starts gateway `i` (again) on its port; waits until it is ready and the
    /// balancer routes to it.
    pub async fn start_gateway(&mut self, i: usize) {
        let slot = &mut self.gateways[i];
        assert!(slot.service.is_none(), "gateway {i} is already running");
        let svc = Service::spawn(
            "kpi-gateway",
            &[
                "--listen",
                &format!("127.0.0.1:{}", slot.port),
                "--partitions",
                &self.spec.partitions.to_string(),
                "--replicas",
                &self.spec.stream_replicas.to_string(),
                "--drain-secs",
                &self.spec.gateway_drain_secs.to_string(),
            ],
            &[("NATS_URL", &self.nats.urls())],
        );
        svc.wait_http_ok(
            &format!("http://127.0.0.1:{}/readyz", slot.port),
            READY_TIMEOUT,
        )
        .await;
        slot.service = Some(svc);
        self.wait_balancer_state(i, true, Duration::from_secs(15))
            .await;
    }

    /// SIGKILLs gateway `i`: a crash.
    pub fn kill_gateway(&mut self, i: usize) {
        let mut svc = self.gateways[i]
            .service
            .take()
            .unwrap_or_else(|| panic!("gateway {i} is not running"));
        svc.kill();
    }

    /// SIGTERMs gateway `i` and waits for it to drain and exit; returns its exit status.
    pub fn terminate_gateway(&mut self, i: usize) -> ExitStatus {
        let mut svc = self.gateways[i]
            .service
            .take()
            .unwrap_or_else(|| panic!("gateway {i} is not running"));
        svc.terminate();
        let limit = Duration::from_secs(self.spec.gateway_drain_secs + 10);
        match svc.wait_exit(limit) {
            Some(status) => status,
            None => panic!(
                "gateway {i} still running {limit:?} after SIGTERM\n--- logs ---\n{}",
                svc.logs()
            ),
        }
    }

    /// Logs of gateway `i` if it is running.
    pub fn gateway_logs(&self, i: usize) -> String {
        self.gateways[i]
            .service
            .as_ref()
            .map(Service::logs)
            .unwrap_or_default()
    }

    /// What HAProxy logged (one line per request or tunnel).
    pub fn balancer_logs(&self) -> String {
        self.balancer.log.read()
    }

    /// The balancer's view of gateway `i`: its status column ("UP", "DOWN", ...).
    pub async fn balancer_status(&self, i: usize) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/stats;csv", self.balancer.stats_port);
        let (status, body) = try_http_get(&url, Duration::from_secs(2)).await.ok()?;
        if status != 200 {
            return None;
        }
        let name = gateway_server_name(i);
        // CSV: pxname,svname,...; the status is column 17 (0-based).
        body.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|cols| cols.len() > 17 && cols[0] == "gateways" && cols[1] == name)
            .map(|cols| cols[17].to_string())
    }

    /// Waits until the balancer reports gateway `i` up (or, with `up = false`, not up).
    pub async fn wait_balancer_state(&self, i: usize, up: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.balancer_status(i).await;
            let is_up = status.as_deref().is_some_and(|s| s.starts_with("UP"));
            if is_up == up {
                return;
            }
            if self.balancer.proc.exited().is_some() {
                panic!(
                    "haproxy exited\n--- haproxy output ---\n{}",
                    self.balancer_logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "balancer did not see {} {} within {timeout:?} (status {status:?})\n--- haproxy output ---\n{}",
                    gateway_server_name(i),
                    if up { "up" } else { "down" },
                    self.balancer_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Logs of every running process, for a failing test's message.
    pub fn all_logs(&self) -> String {
        let mut out = format!("--- kpi-ingest ---\n{}\n", self.ingest.logs());
        for (i, a) in self.aggregators.iter().enumerate() {
            out += &format!("--- kpi-aggregator {i} ---\n{}\n", a.logs());
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Some(s) = &g.service {
                out += &format!("--- kpi-gateway {i} ---\n{}\n", s.logs());
            }
        }
        out + &format!("--- haproxy ---\n{}\n", self.balancer_logs())
    }
}

impl Balancer {
    fn start(gateway_ports: &[u16]) -> Balancer {
        let dir = tempfile::Builder::new()
            .prefix("kpi-haproxy-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for haproxy: {e}"));
        let (port, stats_port) = (free_port(), free_port());
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            haproxy_config("127.0.0.1", port, stats_port, gateway_ports),
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", cfg.display()));
        let log = LogFile::new();
        let mut cmd = Command::new(haproxy_binary());
        cmd.arg("-db").arg("-f").arg(&cfg);
        let proc = Proc::spawn(cmd, &log).unwrap_or_else(|e| panic!("cannot start haproxy: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = proc.exited() {
                panic!(
                    "haproxy exited ({status})\n--- haproxy output ---\n{}",
                    log.read()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "haproxy not listening on {port}\n--- haproxy output ---\n{}",
                    log.read()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Balancer {
            proc,
            log,
            port,
            stats_port,
            _dir: dir,
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- haproxy output ---\n{}", self.balancer_logs());
        }
    }
}
