//! Real `nats-server` processes for tests: a single JetStream server, or a routed cluster, with restarts.
//!
//! Written against the nats-server Debian ships (2.9.10). Every server listens
//! on 127.0.0.1 only, on ports picked at start-up, with its own temp store
//! directory, so tests run in parallel without sharing state, and a restart
//! reuses the ports and the store so JetStream data survives it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::{blocking_get, try_http_get};
use crate::port::free_port;
use crate::process::{LogFile, Proc};

/// How long a single server may take to accept clients and report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// A cluster also has to elect a JetStream meta leader, which takes a few
/// election timeouts after the routes connect.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(45);
/// How long `stop` waits for a graceful exit before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh starts retry with new ports this often: a port found free can be
/// taken by another process before nats-server binds it.
const PORT_RETRIES: usize = 3;

/// Where to find nats-server: PATH first, then the sbin directories Debian
/// installs it to, which are not on a regular user's PATH.
fn nats_server_binary() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server not found on PATH: install it (apt-get install nats-server)")
        })
}

/// Everything needed to (re)start one server the same way.
#[derive(Clone)]
struct Spec {
    port: u16,
    monitor_port: u16,
    server_name: Option<String>,
    cluster: Option<ClusterSpec>,
}

#[derive(Clone)]
struct ClusterSpec {
    name: String,
    port: u16,
    /// Route URLs of the other nodes.
    routes: Vec<String>,
}

/// One nats-server with JetStream; killed when dropped.
pub struct NatsServer {
    spec: Spec,
    proc: Option<Proc>,
    log: LogFile,
    store: TempDir,
}

impl NatsServer {
    /// Starts a JetStream server on free ports and waits until it is healthy.
    pub fn start() -> NatsServer {
        Self::start_with_name(None)
    }

    /// Like [`NatsServer::start`], with a server name (shown in `/varz` and logs).
    pub fn start_named(name: &str) -> NatsServer {
        Self::start_with_name(Some(name.to_string()))
    }

    fn start_with_name(server_name: Option<String>) -> NatsServer {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let spec = Spec {
                port: free_port(),
                monitor_port: free_port(),
                server_name: server_name.clone(),
                cluster: None,
            };
            let mut server = NatsServer::spawn(spec);
            match server.wait_ready(Instant::now() + START_TIMEOUT, false) {
                Ok(()) => return server,
                Err(_) if attempt < PORT_RETRIES && server.lost_a_port() => {
                    server.kill();
                }
                Err(why) => server.fail(&why),
            }
        }
    }

    /// Spawns the process without waiting for it.
    fn spawn(spec: Spec) -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("kpi-nats-store-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp store dir for nats-server: {e}"));
        let mut server = NatsServer {
            spec,
            proc: None,
            log: LogFile::new(),
            store,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(self.args(self.store.path()));
        let proc = Proc::spawn(cmd, &self.log).unwrap_or_else(|e| {
            panic!("cannot run nats-server ({e}); nats-server not found on PATH: install it (apt-get install nats-server)")
        });
        self.proc = Some(proc);
    }

    fn args(&self, store: &Path) -> Vec<String> {
        let s = &self.spec;
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            s.port.to_string(),
            "-m".into(),
            s.monitor_port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
        ];
        if let Some(name) = &s.server_name {
            args.extend(["--server_name".into(), name.clone()]);
        }
        if let Some(c) = &s.cluster {
            args.extend([
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", c.port),
                "--cluster_name".into(),
                c.name.clone(),
            ]);
            if !c.routes.is_empty() {
                args.extend(["--routes".into(), c.routes.join(",")]);
            }
        }
        args
    }

    /// Waits until the client port accepts TCP and `/healthz` answers 200;
    /// in a cluster, also until `/jsz` names a meta leader.
    fn wait_ready(&self, deadline: Instant, clustered: bool) -> Result<(), String> {
        let client_addr = SocketAddr::from(([127, 0, 0, 1], self.spec.port));
        loop {
            if let Some(status) = self.proc.as_ref().and_then(Proc::exited) {
                return Err(format!("nats-server exited early ({status})"));
            }
            let probe = (|| {
                TcpStream::connect_timeout(&client_addr, Duration::from_millis(500))
                    .map_err(|e| format!("client port {}: {e}", self.spec.port))?;
                let health = format!("{}/healthz", self.monitor_url());
                match blocking_get(&health, Duration::from_secs(2)) {
                    Ok((200, _)) => {}
                    Ok((status, body)) => return Err(format!("/healthz {status}: {body}")),
                    Err(e) => return Err(format!("/healthz: {e}")),
                }
                if clustered {
                    let jsz = format!("{}/jsz", self.monitor_url());
                    let body = match blocking_get(&jsz, Duration::from_secs(2)) {
                        Ok((200, body)) => body,
                        Ok((status, body)) => return Err(format!("/jsz {status}: {body}")),
                        Err(e) => return Err(format!("/jsz: {e}")),
                    };
                    if meta_leader(&body).is_none() {
                        return Err("no JetStream meta leader yet".into());
                    }
                }
                Ok(())
            })();
            let last = match probe {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready in time (last probe: {last})"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server died because a port it was given was taken meanwhile.
    fn lost_a_port(&self) -> bool {
        self.log.read().contains("address already in use")
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "nats-server (client port {}, monitor port {}) failed to start: {why}\n--- nats-server output ---\n{}",
            self.spec.port,
            self.spec.monitor_port,
            self.log.read()
        )
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    /// `http://127.0.0.1:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.monitor_port)
    }

    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// The JetStream store directory; it survives restarts.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Everything the server logged, across restarts.
    pub fn logs(&self) -> String {
        self.log.read()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILL: the server dies without flushing anything.
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait for a clean exit (SIGKILL after a grace period).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.terminate();
            if p.wait_exit(STOP_TIMEOUT).is_none() {
                p.kill();
            }
        }
    }

    /// Stops the server if it runs, then starts it again on the same ports
    /// with the same store directory, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
        if let Err(why) = self.wait_ready(Instant::now() + START_TIMEOUT, false) {
            self.fail(&format!("after restart: {why}"));
        }
    }

    /// Every subject that any client connection subscribes to, from
    /// `/connz?subs=1`. Lets a test observe upstream interest as NATS sees it.
    pub async fn subscriptions(&self) -> Vec<String> {
        let url = format!("{}/connz?subs=1&limit=100000", self.monitor_url());
        let body = match try_http_get(&url, Duration::from_secs(5)).await {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET {url}: status {status}: {body}"),
            Err(e) => panic!("GET {url}: {e}"),
        };
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"));
        json["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["subscriptions_list"].as_array().into_iter().flatten())
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The meta leader's name from a `/jsz` body, if one is elected.
fn meta_leader(jsz: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(jsz).ok()?;
    let leader = json["meta_cluster"]["leader"].as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}

/// A cluster of JetStream servers with routes between every pair; killed when dropped.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until every one is healthy and JetStream has
    /// a meta leader.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n >= 1, "a cluster needs at least one node");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cluster_name = format!("kpi-test-{}", free_port());
            let ports: Vec<(u16, u16, u16)> = (0..n)
                .map(|_| (free_port(), free_port(), free_port()))
                .collect();
            let nodes: Vec<NatsServer> = ports
                .iter()
                .enumerate()
                .map(|(i, &(port, monitor_port, cluster_port))| {
                    let routes = ports
                        .iter()
                        .filter(|p| p.2 != cluster_port)
                        .map(|p| format!("nats://127.0.0.1:{}", p.2))
                        .collect();
                    NatsServer::spawn(Spec {
                        port,
                        monitor_port,
                        server_name: Some(format!("n{i}")),
                        cluster: Some(ClusterSpec {
                            name: cluster_name.clone(),
                            port: cluster_port,
                            routes,
                        }),
                    })
                })
                .collect();
            let cluster = NatsCluster { nodes };
            let deadline = Instant::now() + CLUSTER_TIMEOUT;
            let failed = cluster
                .nodes
                .iter()
                .find_map(|node| node.wait_ready(deadline, true).err().map(|why| (node, why)));
            match failed {
                None => return cluster,
                Some(_)
                    if attempt < PORT_RETRIES
                        && cluster.nodes.iter().any(NatsServer::lost_a_port) =>
                {
                    // Dropping the cluster kills every node; try again on new ports.
                }
                Some((node, why)) => {
                    for other in &cluster.nodes {
                        eprintln!(
                            "--- nats-server {} output ---\n{}",
                            other.spec.server_name.as_deref().unwrap_or("?"),
                            other.logs()
                        );
                    }
                    node.fail(&format!("cluster of {n}: {why}"));
                }
            }
        }
    }

    /// The client URLs of every node, comma-separated (what NATS clients accept).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// SIGKILLs node `i`; the others keep serving (and elect a new leader if needed).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with its ports and store, and waits until it is
    /// healthy and sees a meta leader.
    pub fn restart_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.stop();
        node.launch();
        if let Err(why) = node.wait_ready(Instant::now() + CLUSTER_TIMEOUT, true) {
            node.fail(&format!("after restart: {why}"));
        }
    }
}
