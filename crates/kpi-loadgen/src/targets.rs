//! Starting what is measured: kpistream (split or single process), the plain writer, nats-server.
//!
//! Every child is spawned with `kill_on_drop` (see `processes`), so a
//! finished or failed run leaves nothing behind; logs go to files in a temp
//! dir that is removed too.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::clients::Kind;
use crate::nats_ws;
use crate::processes::{
    free_port, pid, sibling, spawn, start_nats, start_nats_and_ingest, wait_http_ok, wait_tcp,
};
use crate::publish::Publisher;
use crate::{LoadArgs, StackArgs};

/// A started target: where clients connect, what publishes, whose CPU counts.
pub struct Target {
    pub name: &'static str,
    pub kind: Kind,
    pub setup: String,
    /// ws://ip:port of each server; connections are spread over them.
    pub urls: Vec<String>,
    /// Processes counted as "the server" (the fan-out tier).
    pub server_pids: Vec<u32>,
    /// Every process of the target, including its NATS, ingest and aggregator.
    pub all_pids: Vec<u32>,
    pub publisher: Publisher,
    children: Vec<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Target {
    /// The services' log directory (deleted with the target).
    pub fn log_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Stops every child now.
    pub async fn shutdown(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}

pub async fn kpistream(load: &LoadArgs, s: &StackArgs) -> anyhow::Result<Target> {
    let _ = load;
    if !s.target_url.is_empty() {
        let grpc = s
            .grpc
            .clone()
            .context("--target-url needs --grpc (ingest's gRPC address)")?;
        return Ok(Target {
            name: "kpistream",
            kind: Kind::Kpistream,
            setup: format!(
                "running gateway(s) {:?}, pids {:?}",
                s.target_url, s.target_pid
            ),
            urls: s.target_url.clone(),
            server_pids: s.target_pid.clone(),
            all_pids: s.target_pid.clone(),
            publisher: Publisher::Grpc(grpc),
            children: Vec::new(),
            dir: None,
        });
    }
    let dir = tempfile::Builder::new().prefix("kpi-loadgen-").tempdir()?;
    // Quiet logs, and no per-address connection rate limit: every client of
    // the benchmark comes from a handful of loopback addresses.
    let quiet = [
        ("RUST_LOG", "warn"),
        ("KPI_MAX_CONNECTIONS_PER_IP_PER_SEC", "0"),
    ];
    if s.stack == "single" {
        let (http, grpc) = (free_port()?, free_port()?);
        let mut cmd = Command::new(sibling("kpi-stack")?);
        cmd.args(["--listen", &format!("127.0.0.1:{http}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--coalesce-ms", &s.coalesce_ms.to_string()])
            .envs(quiet);
        let child = spawn(dir.path(), "kpi-stack", cmd)?;
        let p = pid(&child)?;
        wait_http_ok(http, "/readyz", Duration::from_secs(30)).await?;
        return Ok(Target {
            name: "kpistream",
            kind: Kind::Kpistream,
            setup: format!(
                "kpi-stack (one process, in-process bus), coalesce {} ms",
                s.coalesce_ms
            ),
            urls: vec![format!("ws://127.0.0.1:{http}")],
            server_pids: vec![p],
            all_pids: vec![p],
            publisher: Publisher::Grpc(format!("http://127.0.0.1:{grpc}")),
            children: vec![child],
            dir: Some(dir),
        });
    }
    anyhow::ensure!(s.stack == "split", "--stack is split or single");
    let ni = start_nats_and_ingest(dir.path(), &quiet).await?;
    let nats_url = ni.nats_url.clone();
    let env = [("NATS_URL", nats_url.as_str()), quiet[0], quiet[1]];
    let grpc = ni.grpc;
    let mut all = vec![pid(&ni.nats)?];
    let mut children = vec![ni.nats, ni.ingest];

    let agg_http = free_port()?;
    let mut cmd = Command::new(sibling("kpi-aggregator")?);
    cmd.args(["--listen", &format!("127.0.0.1:{agg_http}")])
        .args(["--coalesce-ms", &s.coalesce_ms.to_string()])
        .envs(env);
    children.push(spawn(dir.path(), "kpi-aggregator", cmd)?);
    wait_http_ok(agg_http, "/readyz", Duration::from_secs(30)).await?;

    let mut urls = Vec::new();
    let mut gateways = Vec::new();
    for g in 0..s.gateways.max(1) {
        let port = free_port()?;
        let mut cmd = Command::new(sibling("kpi-gateway")?);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--max-connections", "19000"])
            .envs(env);
        if let Some(q) = s.queue_capacity {
            cmd.args(["--queue-capacity", &q.to_string()]);
        }
        let child = spawn(dir.path(), &format!("kpi-gateway-{g}"), cmd)?;
        gateways.push(pid(&child)?);
        children.push(child);
        wait_http_ok(port, "/readyz", Duration::from_secs(30)).await?;
        urls.push(format!("ws://127.0.0.1:{port}"));
    }
    for c in &children[1..] {
        all.push(pid(c)?);
    }
    Ok(Target {
        name: "kpistream",
        kind: Kind::Kpistream,
        setup: format!(
            "nats-server -js + kpi-ingest + kpi-aggregator (coalesce {} ms) + {} kpi-gateway; RUST_LOG=warn; server = the gateway process(es)",
            s.coalesce_ms,
            gateways.len()
        ),
        urls,
        server_pids: gateways,
        all_pids: all,
        publisher: Publisher::Grpc(format!("http://127.0.0.1:{grpc}")),
        children,
        dir: Some(dir),
    })
}

/// The plain writer, which stops by itself after `max_secs`.
pub async fn plain(max_secs: u64) -> anyhow::Result<Target> {
    let dir = tempfile::Builder::new().prefix("kpi-loadgen-").tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve-plain", "--listen", "127.0.0.1:0"])
        .args(["--max-secs", &max_secs.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting serve-plain")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("serve-plain did not start")??
        .context("serve-plain exited")?;
    let addr = line
        .strip_prefix("listening ")
        .context("unexpected serve-plain output")?
        .trim()
        .to_string();
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let p = pid(&child)?;
    Ok(Target {
        name: "plain",
        kind: Kind::Plain,
        setup: "kpi-loadgen serve-plain: frame once, write to every socket, no logic".into(),
        urls: vec![format!("ws://{addr}")],
        server_pids: vec![p],
        all_pids: vec![p],
        publisher: Publisher::Feed(format!("ws://{addr}/feed")),
        children: vec![child],
        dir: Some(dir),
    })
}

pub async fn nats_ws(load: &LoadArgs) -> anyhow::Result<Target> {
    let _ = load;
    let dir = tempfile::Builder::new().prefix("kpi-loadgen-").tempdir()?;
    let ws_port = free_port()?;
    let (child, port) = start_nats(dir.path(), &nats_ws::websocket_block(ws_port)).await?;
    wait_tcp(ws_port, Duration::from_secs(10)).await?;
    let p = pid(&child)?;
    Ok(Target {
        name: "nats-ws",
        kind: Kind::Nats,
        setup: format!(
            "nats-server {} with its WebSocket listener (no TLS); clients speak NATS over WebSocket",
            nats_ws::version()
        ),
        urls: vec![format!("ws://127.0.0.1:{ws_port}")],
        server_pids: vec![p],
        all_pids: vec![p],
        publisher: Publisher::Nats(format!("nats://127.0.0.1:{port}")),
        children: vec![child],
        dir: Some(dir),
    })
}
