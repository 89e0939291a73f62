//! Settings of kpi-ingest: the binary's flags (with environment fallbacks), the flags `kpi-stack` shares, and the plain settings `run` takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kpi_bus::BusConfig;
pub use kpi_service::ConfigError;

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, problem)
}

/// The flags of the `kpi-ingest` binary: its listeners and bus, then [`IngestArgs`].
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kpi-ingest",
    version,
    about = "gRPC server publishers call: validates KPI events and stores each durably in NATS JetStream before acknowledging it"
)]
pub struct Config {
    /// gRPC address (the Ingest service, health and reflection).
    #[arg(long, env = "KPI_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// HTTP address: the HTTP ingest formats (/v1/events, /api/v2/write, /write, /v1/metrics), /metrics, /healthz and /readyz.
    #[arg(long, env = "KPI_HTTP_LISTEN", default_value = "0.0.0.0:9101")]
    pub http_listen: SocketAddr,

    /// NATS server(s), e.g. nats://127.0.0.1:4222 (comma-separated for a cluster).
    #[arg(long, env = "NATS_URL")]
    pub nats_url: String,

    /// Stream layout and retention, shared by every service.
    #[command(flatten)]
    pub bus: kpi_service::BusArgs,

    /// On shutdown, wait at most this many seconds for in-flight calls to finish.
    #[arg(long, env = "KPI_DRAIN_GRACE_SECS", default_value_t = 30)]
    pub drain_grace_secs: u64,

    #[command(flatten)]
    pub ingest: IngestArgs,
}

/// Ingest's own flags, beyond its listeners, bus and drain: what `kpi-stack`
/// flattens into its command line too, so every ingest flag reaches it.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Refuse events whose time is more than this many seconds ahead of the server clock.
    #[arg(long, env = "KPI_MAX_FUTURE_SECS", default_value_t = 300)]
    pub max_future_secs: i64,

    /// When set, publishers must send `authorization: Bearer <token>`.
    #[arg(long, env = "KPI_PUBLISHER_TOKEN", hide_env_values = true)]
    pub publisher_token: Option<String>,

    /// File of publisher tokens, one `<token> <pattern>[,<pattern>...]` per
    /// line (patterns: `ops_*`, `infra_cpu`, `*`); see `publishers.rs`.
    #[arg(long, env = "KPI_PUBLISHER_TOKENS_FILE")]
    pub publisher_tokens_file: Option<PathBuf>,

    /// Events per second each publisher token may publish; 0 = no limit.
    #[arg(long, env = "KPI_MAX_PUBLISHES_PER_TOKEN_PER_SEC", default_value_t = 0)]
    pub max_publishes_per_token_per_sec: u32,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "KPI_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "KPI_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "KPI_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Most events accepted in one Publish call.
    #[arg(long, env = "KPI_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// Most events being stored at once per PublishStream (and NDJSON lines per store).
    #[arg(long, env = "KPI_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Largest HTTP request body (JSON, line protocol, OTLP), after gzip; larger is 413.
    /// NDJSON is streamed: this bounds each line instead.
    #[arg(long, env = "KPI_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Distinct KPI codes accepted in all (a code idle for --kpi-idle-secs stops counting).
    #[arg(long, env = "KPI_MAX_KPIS", default_value_t = 100_000)]
    pub max_kpis: usize,

    /// Distinct KPI codes each publisher token may publish.
    #[arg(long, env = "KPI_MAX_KPIS_PER_TOKEN", default_value_t = 10_000)]
    pub max_kpis_per_token: usize,

    /// A KPI code with no event for this many seconds stops counting toward the caps.
    #[arg(long, env = "KPI_KPI_IDLE_SECS", default_value_t = 90_000)]
    pub kpi_idle_secs: u64,

    /// Concurrent calls (streams) per client connection (HTTP/2 max concurrent streams).
    #[arg(long, env = "KPI_MAX_CALLS_PER_CONNECTION", default_value_t = 64)]
    pub max_calls_per_connection: u32,

    /// Concurrent Ingest calls in all; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "KPI_MAX_CALLS", default_value_t = 1024)]
    pub max_calls: usize,

    /// Event ids this process remembers storing (about 32 bytes each), so a
    /// retry through it is answered DUPLICATE; others are answered ACCEPTED
    /// and still counted once.
    #[arg(long, env = "KPI_RECENT_IDS", default_value_t = 2_000_000)]
    pub recent_ids: usize,
}

impl IngestArgs {
    /// The checked settings, with `drain_grace` for how long in-flight calls
    /// may take on shutdown; `bus` is the deployment's bus layout, whose
    /// duplicate window bounds how far event times may stray.
    pub fn settings(
        &self,
        drain_grace: Duration,
        bus: &BusConfig,
    ) -> Result<IngestSettings, ConfigError> {
        let half_window = i64::try_from((bus.duplicate_window / 2).as_secs()).unwrap_or(i64::MAX);
        if self.max_future_secs > half_window {
            return Err(bad(
                "--max-future-secs",
                format!(
                    "{} is more than half the duplicate window ({half_window} s): a retry could be stored twice",
                    self.max_future_secs
                ),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(bad("--tls-cert", "--tls-cert and --tls-key go together"));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(bad(
                "--tls-client-ca",
                "client certificates need TLS: set --tls-cert and --tls-key too",
            ));
        }
        let settings = IngestSettings {
            max_future_secs: self.max_future_secs,
            publisher_token: self.publisher_token.clone(),
            publisher_tokens_file: self.publisher_tokens_file.clone(),
            max_publishes_per_token_per_sec: self.max_publishes_per_token_per_sec,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
            max_batch: self.max_batch,
            max_in_flight: self.max_in_flight,
            max_body_bytes: self.max_body_bytes,
            drain_grace,
            max_kpis: self.max_kpis,
            max_kpis_per_token: self.max_kpis_per_token,
            kpi_idle: Duration::from_secs(self.kpi_idle_secs),
            max_calls_per_connection: self.max_calls_per_connection,
            max_calls: self.max_calls,
            recent_ids: self.recent_ids,
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl Config {
    /// Checks every setting, so a bad flag fails before anything is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(|_| ())
    }

    /// What [`crate::run`] needs, checked.
    pub fn settings(&self) -> Result<IngestSettings, ConfigError> {
        if self.nats_url.trim().is_empty() {
            return Err(bad("--nats-url", "must not be empty"));
        }
        let bus = self.bus.config()?;
        self.ingest
            .settings(Duration::from_secs(self.drain_grace_secs), &bus)
    }

    /// How the bus is laid out; identical in every service of a deployment.
    pub fn bus_config(&self) -> Result<BusConfig, ConfigError> {
        self.bus.config()
    }
}

/// Certificate files for gRPC over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// What the ingest server needs beyond its listeners and bus; `kpi-stack` builds one directly.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Events timed more than this many seconds ahead of the server clock are refused.
    pub max_future_secs: i64,
    /// When set, every Ingest call must carry `authorization: Bearer <token>`.
    /// Health and reflection stay open, so probes and tooling need no secret.
    pub publisher_token: Option<String>,
    /// Publisher tokens with the KPI patterns each may publish.
    pub publisher_tokens_file: Option<PathBuf>,
    /// Events per second per publisher token; 0 = no limit.
    pub max_publishes_per_token_per_sec: u32,
    /// Serve gRPC over TLS (and require client certificates when `client_ca` is set).
    pub tls: Option<TlsFiles>,
    /// Most events accepted in one Publish call.
    pub max_batch: usize,
    /// Most stores in flight per PublishStream; NDJSON lines stored at once.
    pub max_in_flight: usize,
    /// On shutdown, how long in-flight calls may take before `run` returns anyway.
    pub drain_grace: Duration,
    /// Largest HTTP request body after decompression (an NDJSON line, for NDJSON).
    pub max_body_bytes: usize,
    /// Distinct KPI codes in all, and per publisher token.
    pub max_kpis: usize,
    pub max_kpis_per_token: usize,
    /// A code idle this long stops counting toward the caps.
    pub kpi_idle: Duration,
    /// Concurrent calls per connection, and in all.
    pub max_calls_per_connection: u32,
    pub max_calls: usize,
    /// Event ids remembered as stored by this process (see `recent.rs`).
    pub recent_ids: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_future_secs: 300,
            publisher_token: None,
            publisher_tokens_file: None,
            max_publishes_per_token_per_sec: 0,
            tls: None,
            max_batch: 10_000,
            max_in_flight: 1024,
            drain_grace: Duration::from_secs(30),
            max_body_bytes: 16 * 1024 * 1024,
            max_kpis: 100_000,
            max_kpis_per_token: 10_000,
            kpi_idle: Duration::from_secs(90_000),
            max_calls_per_connection: 64,
            max_calls: 1024,
            recent_ids: 2_000_000,
        }
    }
}

impl IngestSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_future_secs < 0 {
            return Err(bad("--max-future-secs", "must not be negative"));
        }
        if self.max_batch == 0 {
            return Err(bad("--max-batch", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(bad("--max-in-flight", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(bad("--max-body-bytes", "must be at least 1"));
        }
        for (flag, n) in [
            ("--max-kpis", self.max_kpis),
            ("--max-kpis-per-token", self.max_kpis_per_token),
            (
                "--max-calls-per-connection",
                self.max_calls_per_connection as usize,
            ),
            ("--max-calls", self.max_calls),
        ] {
            if n == 0 {
                return Err(bad(flag, "must be at least 1"));
            }
        }
        if let Some(token) = &self.publisher_token {
            // The token is compared with a header value, which can only hold
            // visible ASCII; anything else could never match.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(
                    "--publisher-token",
                    "must be non-empty printable ASCII without spaces",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["kpi-ingest", "--nats-url", "nats://127.0.0.1:4222"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_valid_and_match_the_brief() {
        let c = parse(&[]);
        assert_eq!(c.listen.port(), 50051);
        assert_eq!(c.http_listen.port(), 9101);
        assert_eq!(c.bus.partitions, 4);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn refuses_settings_that_cannot_work() {
        for args in [
            &["--partitions", "0"][..],
            &["--replicas", "6"],
            &["--max-batch", "0"],
            &["--max-in-flight", "0"],
            &["--max-body-bytes", "0"],
            &["--max-future-secs=-1"],
            &["--max-future-secs", "301"],
            &["--max-kpis", "0"],
            &["--max-calls", "0"],
            &["--duplicate-window-secs", "0"],
            &["--publisher-token", "has space"],
            &["--tls-cert", "/c"],
            &["--tls-client-ca", "/ca"],
        ] {
            assert!(parse(args).validate().is_err(), "{args:?} accepted");
        }
    }
}
