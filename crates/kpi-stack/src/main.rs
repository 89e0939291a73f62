//! `kpi-stack`: ingest, aggregator and gateway in one process, for a laptop or a demo.
//!
//! Its command line is the three services' own flag sets
//! ([`kpi_ingest::IngestArgs`], [`kpi_aggregator::AggregatorArgs`],
//! [`kpi_gateway::config::GatewayArgs`]) flattened beside its listeners, so
//! every flag a service gains reaches the one-process mode too, its security
//! flags included. `--drain-secs` (the gateway's) bounds the whole drain.

mod demo;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use kpi_bus::Bus;
use kpi_service::{connect_bus, Drained, Shutdown, CONNECT_PATIENCE};

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
    /// Feed ten demo KPIs so the dashboard is alive at once (with
    /// `--publisher-token`, the demo publishes with it).
    #[arg(long, env = "KPI_DEMO")]
    demo: bool,
    /// Demo rounds per second (each round publishes every demo KPI once).
    #[arg(long, env = "KPI_DEMO_RATE", default_value_t = 2)]
    demo_rate: u32,
    /// Stream layout and retention (with --nats-url; the in-process bus uses the same limits).
    #[command(flatten)]
    bus: kpi_service::BusArgs,
    #[command(flatten)]
    ingest: kpi_ingest::IngestArgs,
    #[command(flatten)]
    aggregator: kpi_aggregator::AggregatorArgs,
    #[command(flatten)]
    gateway: kpi_gateway::config::GatewayArgs,
}

/// The three services' checked settings.
struct Settings {
    ingest: kpi_ingest::IngestSettings,
    aggregator: kpi_aggregator::AggregatorSettings,
    gateway: kpi_gateway::GatewaySettings,
}

impl Cli {
    fn settings(&self) -> anyhow::Result<Settings> {
        let gateway = self.gateway.settings();
        gateway.validate()?;
        Ok(Settings {
            // One drain for the process: the gateway's, after its unready delay.
            ingest: self
                .ingest
                .settings(gateway.drain + gateway.unready_delay, &self.bus.config()?)?,
            aggregator: {
                let mut a = self.aggregator.settings(&self.bus)?;
                // Sparse stores spare JetStream; the in-process bus stores an
                // update for nothing, and every store keeps snapshots current.
                if self.nats_url.is_none() && self.aggregator.store_interval_ms.is_none() {
                    a.store_interval = std::time::Duration::ZERO;
                }
                a
            },
            gateway,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kpi_service::telemetry::init_logging();
    // Typed and checked before any port is bound or NATS is dialled.
    let settings = cli.settings().context("invalid configuration")?;
    let bus_config = cli.bus.config().context("invalid configuration")?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let bus = match &cli.nats_url {
        Some(url) => match connect_bus(url, bus_config, CONNECT_PATIENCE, &shutdown).await? {
            Some(bus) => bus,
            None => return Ok(()),
        },
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

    let Settings {
        ingest,
        aggregator,
        gateway,
    } = settings;
    let drain = gateway.drain + gateway.unready_delay;
    // One accept path for ingest's gRPC and the HTTP formats on the gateway's port.
    let accept = kpi_ingest::Accept::new(bus.clone(), &ingest, shutdown.clone())?;
    let ingest_routes = kpi_ingest::http::routes().with_state(accept.clone());
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
        shutdown.spawn(demo::feed(
            connect,
            cli.demo_rate,
            cli.ingest.publisher_token.clone(),
            shutdown.clone(),
        ));
    }

    // Any service ending takes the stack down, so a broken demo is noticed.
    let services = async {
        while let Some(r) = tasks.join_next().await {
            shutdown.trigger();
            r.context("service task panicked")??;
        }
        anyhow::Ok(())
    };
    match kpi_service::drain(&shutdown, drain, services).await {
        Drained::Finished(r) | Drained::TasksLeft(r) => r,
        Drained::GraceOver => anyhow::bail!("drain did not finish within {drain:?}"),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory;

    use super::*;

    /// The three services' flag sets share one command line: a flag name
    /// that two of them use would make clap refuse to start.
    #[test]
    fn the_flattened_flags_do_not_collide() {
        Cli::command().debug_assert();
    }

    #[test]
    fn security_flags_reach_the_services() {
        let cli = Cli::try_parse_from([
            "kpi-stack",
            "--allow-anonymous",
            "false",
            "--jwt-hs256-secret-file",
            "/k",
            "--allowed-origins",
            "https://a.example",
            "--max-connections-per-ip-per-sec",
            "3",
            "--publisher-token",
            "tok",
            "--lateness-minute-secs",
            "7",
            "--recent-ids",
            "1000",
        ])
        .expect("parse");
        let s = cli.settings().expect("valid");
        assert!(!s.gateway.allow_anonymous);
        assert_eq!(s.gateway.allowed_origins, vec!["https://a.example"]);
        assert_eq!(s.gateway.max_connections_per_ip_per_sec, 3);
        assert_eq!(s.ingest.publisher_token.as_deref(), Some("tok"));
        assert_eq!(s.aggregator.lateness.minute, Duration::from_secs(7));
        assert_eq!(s.ingest.recent_ids, 1000);
    }

    #[test]
    fn the_store_interval_reaches_the_aggregator() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["kpi-stack"], args].concat()).expect("parse");
            cli.settings().expect("valid").aggregator.store_interval
        };
        // In-process bus: every update stored unless asked otherwise.
        assert_eq!(parse(&[]), Duration::ZERO);
        assert_eq!(
            parse(&["--nats-url", "nats://127.0.0.1:4222"]),
            Duration::from_millis(1000)
        );
        assert_eq!(
            parse(&["--store-interval-ms", "250"]),
            Duration::from_millis(250)
        );
        assert_eq!(parse(&["--store-interval-ms", "0"]), Duration::ZERO);
    }

    #[test]
    fn the_store_budget_reaches_the_aggregator() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["kpi-stack"], args].concat()).expect("parse");
            let s = cli.settings().expect("valid").aggregator;
            (s.max_stores_per_sec, s.store_policy().budget())
        };
        // 5,000 a second over 4 partitions, one render per 100 ms each.
        assert_eq!(parse(&[]), (5000, 125));
        assert_eq!(
            parse(&["--max-stores-per-sec", "800", "--coalesce-ms", "250"]),
            (800, 50)
        );
        assert_eq!(parse(&["--max-stores-per-sec", "0"]), (0, usize::MAX));
        assert!(Cli::try_parse_from(["kpi-stack", "--max-stores-per-sec", "-1"]).is_err());
    }

    #[test]
    fn live_all_reaches_the_aggregator() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["kpi-stack"], args].concat()).expect("parse");
            cli.settings().expect("valid").aggregator.live_all
        };
        assert!(!parse(&[]), "watched topics only by default");
        assert!(parse(&["--live-all"]));
    }
}
