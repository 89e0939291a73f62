//! Child processes of a run: free ports, the workspace's sibling binaries, nats-server, readiness probes.
//!
//! Every child is spawned with `kill_on_drop` and logs to a file in the
//! run's temp dir, so a finished or failed run leaves nothing behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A binary of this workspace, next to the running loadgen.
pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("loadgen has no directory")?.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found; build it first (cargo build --release -p {name})",
        path.display()
    );
    Ok(path)
}

pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .context("nats-server not found (apt-get install nats-server)")
}

pub(crate) fn spawn(dir: &Path, name: &str, mut cmd: Command) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    cmd.stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.spawn().with_context(|| format!("starting {name}"))
}

pub(crate) fn pid(c: &Child) -> anyhow::Result<u32> {
    c.id().context("child exited at once")
}

/// Waits until `GET path` on 127.0.0.1:port answers 200.
pub async fn wait_http_ok(port: u16, path: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(200) = http_status(port, path).await {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "127.0.0.1:{port}{path} did not answer 200 within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut head)).await??;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")
}

pub(crate) async fn wait_tcp(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "port {port} never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// nats-server with JetStream and a ready kpi-ingest on it.
pub(crate) struct NatsIngest {
    pub nats: Child,
    pub nats_url: String,
    pub ingest: Child,
    /// Ingest's gRPC and HTTP ports.
    pub grpc: u16,
    pub http: u16,
}

/// Starts nats-server (JetStream stored under `dir`) and kpi-ingest with `env`.
pub(crate) async fn start_nats_and_ingest(
    dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<NatsIngest> {
    let store = dir.join("js");
    let (nats, nats_port) = start_nats(
        dir,
        &format!(
            "jetstream {{ store_dir: {:?} }}",
            store.display().to_string()
        ),
    )
    .await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let (grpc, http) = (free_port()?, free_port()?);
    let mut cmd = Command::new(sibling("kpi-ingest")?);
    cmd.args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .env("NATS_URL", &nats_url)
        .envs(env.iter().copied());
    let ingest = spawn(dir, "kpi-ingest", cmd)?;
    wait_http_ok(http, "/readyz", Duration::from_secs(30)).await?;
    Ok(NatsIngest {
        nats,
        nats_url,
        ingest,
        grpc,
        http,
    })
}

/// Starts nats-server from a config file; returns it and its client port.
pub(crate) async fn start_nats(dir: &Path, extra: &str) -> anyhow::Result<(Child, u16)> {
    let port = free_port()?;
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!("listen: \"127.0.0.1:{port}\"\nmax_payload: 1048576\n{extra}\n"),
    )?;
    let mut cmd = Command::new(nats_server_bin()?);
    cmd.arg("-c").arg(&conf);
    let child = spawn(dir, "nats-server", cmd)?;
    wait_tcp(port, Duration::from_secs(15)).await?;
    Ok((child, port))
}

/// The last 20 lines of every log in `dir`, each under its file name.
pub(crate) fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            out.push_str(&format!("--- {} ---\n{tail}\n", e.path().display()));
        }
    }
    out
}
