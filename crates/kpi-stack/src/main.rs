//! `kpi-stack`: ingest, aggregator and gateway in one process, for a laptop or a demo.

mod demo;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kpi_bus::Bus;
use kpi_service::Shutdown;

#[derive(Debug, Parser)]
#[command(name = "kpi-stack", version, about = "kpistream in one process")]
struct Cli {
    /// Gateway address: HTTP, WebSocket, the page, /metrics.
    #[arg(long, env = "KPI_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Ingest gRPC address.
    #[arg(long, env = "KPI_GRPC_LISTEN", default_value = "0.0.0.0:50051")]
    grpc_listen: SocketAddr,
    /// Ingest's own /metrics address (the gateway's /metrics already shows every service).
    #[arg(long, env = "KPI_INGEST_HTTP_LISTEN", default_value = "127.0.0.1:0")]
    ingest_http_listen: SocketAddr,
    /// Use NATS at this URL instead of the in-process bus.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Feed ten demo KPIs so the dashboard is alive at once.
    #[arg(long, env = "KPI_DEMO")]
    demo: bool,
    /// Demo rounds per second (each round publishes every demo KPI once).
    #[arg(long, env = "KPI_DEMO_RATE", default_value_t = 2)]
    demo_rate: u32,
    /// Stream layout and retention (with --nats-url; the in-process bus uses the same limits).
    #[command(flatten)]
    bus: kpi_service::BusArgs,
    /// Coalescing interval of the aggregator in milliseconds.
    #[arg(long, env = "KPI_COALESCE_MS", default_value_t = 100)]
    coalesce_ms: u64,
    /// Seconds to drain on SIGTERM before giving up.
    #[arg(long, env = "KPI_DRAIN_SECS", default_value_t = 10)]
    drain_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    let bus_config = cli
        .bus
        .config()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let bus = match &cli.nats_url {
        Some(url) => Bus::connect_nats(url, bus_config)
            .await
            .context("connecting to NATS")?,
        None => Bus::memory(bus_config),
    };

    let gateway_listener = bind(cli.listen).await?;
    let grpc_listener = bind(cli.grpc_listen).await?;
    let ingest_http = bind(cli.ingest_http_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    tracing::info!(
        gateway = %gateway_listener.local_addr()?,
        grpc = %grpc_addr,
        bus = if cli.nats_url.is_some() { "nats" } else { "in-process" },
        "kpi-stack starting; open http://{}/",
        gateway_listener.local_addr()?
    );

    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let aggregator = kpi_aggregator::AggregatorSettings {
        partitions: cli.bus.partitions,
        coalesce: Duration::from_millis(cli.coalesce_ms),
        ..Default::default()
    };
    let gateway = kpi_gateway::GatewaySettings::default();
    let ingest = kpi_ingest::IngestSettings::default();
    // One accept path for ingest's gRPC and the HTTP formats on the gateway's port.
    let accept = kpi_ingest::Accept::new(bus.clone(), &ingest, shutdown.clone())?;
    let ingest_routes = kpi_ingest::http::routes(accept.clone());

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let (bus, sd) = (bus.clone(), shutdown.clone());
        async move {
            kpi_aggregator::run(None, bus, aggregator, sd)
                .await
                .context("aggregator")
        }
    });
    tasks.spawn({
        let sd = shutdown.clone();
        async move {
            kpi_ingest::run_with(accept, grpc_listener, ingest_http, ingest, sd)
                .await
                .context("ingest")
        }
    });
    tasks.spawn({
        let (bus, sd) = (bus.clone(), shutdown.clone());
        async move {
            kpi_gateway::run_with_routes(gateway_listener, bus, gateway, ingest_routes, sd)
                .await
                .context("gateway")
        }
    });
    if cli.demo {
        let connect = match grpc_addr {
            a if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port())).to_string()
            }
            a => a.to_string(),
        };
        shutdown.spawn(demo::feed(connect, cli.demo_rate, shutdown.clone()));
    }

    // Any service failing takes the stack down, so a broken demo is noticed.
    let drain = Duration::from_secs(cli.drain_secs);
    let first = tokio::select! {
        r = tasks.join_next() => r,
        _ = shutdown.recv() => None,
    };
    shutdown.trigger();
    if let Some(r) = first {
        r.context("service task panicked")??;
    }
    let rest = async {
        while let Some(r) = tasks.join_next().await {
            r.context("service task panicked")??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(drain, rest)
        .await
        .map_err(|_| anyhow::anyhow!("drain did not finish within {drain:?}"))??;
    shutdown.wait_idle(Duration::from_secs(1)).await;
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}
