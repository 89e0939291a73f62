//! `kpictl`: publish KPI values, read snapshots and history, and watch KPIs live, from a terminal or a script.
//!
//! Ingest is reached over its HTTP JSON format (`KPI_INGEST_URL`, default
//! kpi-stack's `http://127.0.0.1:8080`), the gateway over its HTTP API and
//! SSE (`KPI_GATEWAY_URL`, same default); `KPI_TOKEN` is sent as a bearer
//! token to both. Every failure is one line on stderr and a non-zero exit:
//! 2 for a usage error (an invalid code, a bad `--label`), 1 for anything else.

mod client;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kpi_core::{KpiCode, Period};

use client::{Client, Failure};

#[derive(Debug, Parser)]
#[command(
    name = "kpictl",
    version,
    about = "Publish, read and watch kpistream KPIs"
)]
struct Cli {
    /// Ingest's HTTP address (kpi-stack's --listen, or kpi-ingest's --http-listen).
    #[arg(
        long,
        env = "KPI_INGEST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    ingest_url: String,
    /// The gateway's HTTP address.
    #[arg(
        long,
        env = "KPI_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    gateway_url: String,
    /// Bearer token: a publisher token for ingest, a JWT for the gateway.
    #[arg(long, env = "KPI_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish one value, or NDJSON events from stdin with `publish -`.
    Publish {
        /// KPI code, or `-` to read NDJSON events (one `{"kpi","value",...}` per line) from stdin.
        kpi: String,
        /// The value (not with `-`).
        value: Option<f64>,
        /// Event time, RFC 3339 (default: now).
        #[arg(long)]
        time: Option<String>,
        /// A label, `key=value`; repeat for more.
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Idempotency key: publishing again with the same id counts once.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// The current value of a KPI.
    Get {
        kpi: String,
        #[arg(long, default_value = "minute")]
        period: String,
        /// Print the gateway's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// The latest closed buckets of a KPI, oldest first.
    History {
        kpi: String,
        #[arg(long, default_value = "minute")]
        period: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Watch KPIs live: a table redrawn in place, or JSON lines with `--json`.
    Watch {
        #[arg(required = true)]
        kpis: Vec<String>,
        #[arg(long, default_value = "minute")]
        period: String,
        /// `live`, `<N>s`, `<N>m` or `close`; passed to the gateway.
        #[arg(long)]
        cadence: Option<String>,
        /// One JSON message per line instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kpictl: {}", f.message);
            ExitCode::from(f.exit)
        }
    }
}

fn code(raw: &str) -> Result<KpiCode, Failure> {
    KpiCode::parse(raw).map_err(|e| Failure::usage(format!("invalid kpi code {raw:?}: {e}")))
}

fn period(raw: &str) -> Result<Period, Failure> {
    Period::parse(raw).map_err(|e| Failure::usage(format!("invalid period {raw:?}: {e}")))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = Client::new(&cli.ingest_url, &cli.gateway_url, cli.token.clone())?;
    match cli.command {
        Command::Publish {
            kpi,
            value,
            time,
            labels,
            event_id,
        } => {
            if kpi == "-" {
                if value.is_some() {
                    return Err(Failure::usage(
                        "`publish -` reads values from stdin; give no value",
                    ));
                }
                return client.publish_stdin().await;
            }
            let kpi = code(&kpi)?;
            let value = value.ok_or_else(|| {
                Failure::usage("publish needs a value: kpictl publish <kpi> <value>")
            })?;
            if !value.is_finite() {
                return Err(Failure::usage(format!(
                    "value {value} is not a finite number"
                )));
            }
            let mut event = serde_json::json!({"kpi": kpi.as_str(), "value": value});
            if let Some(t) = time {
                chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| Failure::usage(format!("--time {t:?} is not RFC 3339: {e}")))?;
                event["time"] = t.into();
            }
            if let Some(id) = event_id {
                event["event_id"] = id.into();
            }
            let mut map = serde_json::Map::new();
            for l in labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| Failure::usage(format!("--label {l:?}: expected key=value")))?;
                map.insert(k.to_owned(), v.into());
            }
            if !map.is_empty() {
                event["labels"] = map.into();
            }
            client.publish_one(event).await
        }
        Command::Get {
            kpi,
            period: p,
            json,
        } => {
            let (kpi, p) = (code(&kpi)?, period(&p)?);
            let msg = client
                .get_json(&format!("/api/kpi/{kpi}?period={p}"))
                .await?;
            if json {
                println!("{msg}");
            } else {
                println!("{}", watch::describe(&msg, chrono::Utc::now()));
            }
            Ok(())
        }
        Command::History {
            kpi,
            period: p,
            limit,
            json,
        } => {
            let (kpi, p) = (code(&kpi)?, period(&p)?);
            let msg = client
                .get_json(&format!("/api/kpi/{kpi}/history?period={p}&limit={limit}"))
                .await?;
            if json {
                println!("{msg}");
            } else {
                watch::print_history(&msg);
            }
            Ok(())
        }
        Command::Watch {
            kpis,
            period: p,
            cadence,
            json,
        } => {
            let codes = kpis
                .iter()
                .map(|k| code(k))
                .collect::<Result<Vec<_>, _>>()?;
            watch::run(&client, codes, period(&p)?, cadence, json).await
        }
    }
}
