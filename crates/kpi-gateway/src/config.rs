//! Settings: the clap command line of the binary and the plain struct `run` takes.
//!
//! `kpi-stack` builds a [`GatewaySettings`] itself (it has its own flags), so
//! only [`Cli`] knows about clap; [`GatewaySettings::validate`] runs before
//! anything is bound so a bad value stops the process with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::security::auth::JwtSettings;

use crate::GatewayError;

/// `kpi-gateway`'s flags; each has a `KPI_...` environment fallback.
#[derive(Debug, Clone, Parser)]
#[command(name = "kpi-gateway", about = "kpistream WebSocket/SSE/HTTP gateway")]
pub struct Cli {
    /// HTTP and WebSocket address.
    #[arg(long, env = "KPI_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// NATS server(s) the aggregator publishes to.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: String,
    /// Stream layout and retention, shared by every service.
    #[command(flatten)]
    pub bus: kpi_service::BusArgs,
    #[command(flatten)]
    pub args: GatewayArgs,
}

/// The gateway's own flags, beyond its listener and bus: what `kpi-stack`
/// flattens into its command line too, so every gateway flag reaches it.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// How long a topic nobody watches keeps its upstream subscription, in ms.
    #[arg(long, env = "KPI_LINGER_MS", default_value_t = 5000)]
    pub linger_ms: u64,
    /// Messages queued per connection before updates are conflated.
    #[arg(long, env = "KPI_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    #[arg(long, env = "KPI_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// Subscriptions per `/ws` connection.
    #[arg(long, env = "KPI_MAX_SUBSCRIPTIONS", default_value_t = 200)]
    pub max_subscriptions: usize,
    /// Distinct topics (KPI and period) one caller may watch at once, over
    /// all its connections and polls; a caller is a token's subject, or the
    /// client address when anonymous.
    #[arg(long, env = "KPI_MAX_TOPICS_PER_CALLER", default_value_t = 5_000)]
    pub max_topics_per_caller: usize,
    /// Distinct topics this gateway holds at once (each one upstream
    /// subscription); lingering ones make room for new ones.
    #[arg(long, env = "KPI_MAX_TOPICS", default_value_t = 10_000)]
    pub max_topics: usize,
    /// Inbound messages per second per connection (bursts of twice that).
    #[arg(long, env = "KPI_MAX_MESSAGES_PER_SEC", default_value_t = 50)]
    pub max_messages_per_sec: u32,
    #[arg(long, env = "KPI_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,
    #[arg(long, env = "KPI_PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u64,
    /// A peer silent (no pong, no frame) this long is dropped.
    #[arg(long, env = "KPI_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// A client whose queue stays full this long is closed (4008).
    #[arg(long, env = "KPI_STUCK_TIMEOUT_SECS", default_value_t = 30)]
    pub stuck_timeout_secs: u64,
    /// On shutdown, how long connections get to finish.
    #[arg(long, env = "KPI_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
    /// On shutdown, how long /readyz fails while clients are still served, so
    /// a balancer stops routing here before clients are told to reconnect.
    #[arg(long, env = "KPI_UNREADY_DELAY_MS", default_value_t = 1000)]
    pub unready_delay_ms: u64,
    #[arg(long, env = "KPI_SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,
    #[arg(long, env = "KPI_POLL_MAX_WAIT_SECS", default_value_t = 30)]
    pub poll_max_wait_secs: u64,
    /// Updates kept per topic in memory for `since` resumes.
    #[arg(long, env = "KPI_RESUME_WINDOW", default_value_t = 256)]
    pub resume_window: usize,
    /// Serve clients without a token. Default: true when no JWT key is
    /// configured, false when one is.
    #[arg(long, env = "KPI_ALLOW_ANONYMOUS", action = ArgAction::Set)]
    pub allow_anonymous: Option<bool>,
    /// File holding the HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "KPI_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with the RSA public key for RS256 tokens.
    #[arg(long, env = "KPI_JWT_RSA_PUBLIC_KEY_FILE")]
    pub jwt_rsa_public_key_file: Option<PathBuf>,
    /// PEM file with the Ed25519 public key for EdDSA tokens.
    #[arg(long, env = "KPI_JWT_ED25519_PUBLIC_KEY_FILE")]
    pub jwt_ed25519_public_key_file: Option<PathBuf>,
    /// JWK set file; a token's `kid` selects the key.
    #[arg(long, env = "KPI_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Required `aud` claim.
    #[arg(long, env = "KPI_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "KPI_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "KPI_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,
    /// Origins whose pages may open WebSockets and SSE streams
    /// (comma-separated, e.g. `https://a.example,https://b.example`); empty allows all.
    #[arg(long, env = "KPI_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// New WebSocket/SSE connections per second per client IP (bursts of
    /// twice that); 0 = no limit. Off by default: behind a balancer every
    /// client has the balancer's address, and load generators share one.
    #[arg(long, env = "KPI_MAX_CONNECTIONS_PER_IP_PER_SEC", default_value_t = 0)]
    pub max_connections_per_ip_per_sec: u32,
    /// A client must send its whole request head within this many seconds.
    #[arg(long, env = "KPI_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
}

impl Cli {
    /// The part of the flags `run` needs.
    pub fn settings(&self) -> GatewaySettings {
        self.args.settings()
    }
}

impl GatewayArgs {
    /// What `run` needs, unchecked ([`GatewaySettings::validate`] checks it).
    pub fn settings(&self) -> GatewaySettings {
        let jwt = JwtSettings {
            hs256_secret_file: self.jwt_hs256_secret_file.clone(),
            rsa_public_key_file: self.jwt_rsa_public_key_file.clone(),
            ed25519_public_key_file: self.jwt_ed25519_public_key_file.clone(),
            jwks_file: self.jwks_file.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
        };
        GatewaySettings {
            linger: Duration::from_millis(self.linger_ms),
            queue_capacity: self.queue_capacity,
            max_connections: self.max_connections,
            max_subscriptions: self.max_subscriptions,
            max_topics_per_caller: self.max_topics_per_caller,
            max_topics: self.max_topics,
            max_messages_per_sec: self.max_messages_per_sec,
            max_frame_bytes: self.max_frame_bytes,
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            stuck_timeout: Duration::from_secs(self.stuck_timeout_secs),
            drain: Duration::from_secs(self.drain_secs),
            unready_delay: Duration::from_millis(self.unready_delay_ms),
            sse_keepalive: Duration::from_secs(self.sse_keepalive_secs),
            poll_max_wait: Duration::from_secs(self.poll_max_wait_secs),
            resume_window: self.resume_window,
            allow_anonymous: self.allow_anonymous.unwrap_or(!jwt.any_key()),
            jwt,
            allowed_origins: self
                .allowed_origins
                .iter()
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            max_connections_per_ip_per_sec: self.max_connections_per_ip_per_sec,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
        }
    }
}

/// Everything [`crate::run`] needs besides a listener, a bus and a shutdown signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Upstream subscription kept this long after the last local subscriber leaves.
    pub linger: Duration,
    /// Queued messages per connection before conflation.
    pub queue_capacity: usize,
    /// Open sessions: WebSockets (both kinds), SSE streams, waiting polls and
    /// snapshot, history and list reads being answered.
    pub max_connections: usize,
    /// Subscriptions per `/ws` connection.
    pub max_subscriptions: usize,
    /// Distinct topics one caller (token subject, or address) watches at once.
    pub max_topics_per_caller: usize,
    /// Distinct topics (upstream subscriptions) this gateway holds at once.
    pub max_topics: usize,
    /// Inbound client messages per second per connection; bursts of twice that.
    pub max_messages_per_sec: u32,
    /// Largest inbound WebSocket frame and message.
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    /// A peer silent this long (no pong, no frame) is dropped.
    pub idle_timeout: Duration,
    /// A connection whose queue stays full this long is closed with 4008.
    pub stuck_timeout: Duration,
    /// How long `run` waits for connections to finish on shutdown.
    pub drain: Duration,
    /// On shutdown, /readyz fails this long before connections are closed.
    pub unready_delay: Duration,
    pub sse_keepalive: Duration,
    /// Upper bound of `wait` on the polling endpoint.
    pub poll_max_wait: Duration,
    /// Updates kept per topic in memory for `since` resumes.
    pub resume_window: usize,
    /// Serve clients that present no token (they may read every KPI). The
    /// binary turns this off by default when a JWT key is configured.
    pub allow_anonymous: bool,
    /// Where JWT verification keys come from; none configured = no tokens.
    pub jwt: JwtSettings,
    /// Origins allowed to open WebSockets and SSE streams; empty allows all.
    pub allowed_origins: Vec<String>,
    /// New WebSocket/SSE connections per second per client IP; 0 = no limit.
    pub max_connections_per_ip_per_sec: u32,
    /// Longest time a client may take to send its request head (slowloris).
    pub header_read_timeout: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            linger: Duration::from_millis(5000),
            queue_capacity: 256,
            max_connections: 20_000,
            max_subscriptions: 200,
            max_topics_per_caller: 5_000,
            max_topics: 10_000,
            max_messages_per_sec: 50,
            max_frame_bytes: 65_536,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            stuck_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(10),
            unready_delay: Duration::from_millis(1000),
            sse_keepalive: Duration::from_secs(15),
            poll_max_wait: Duration::from_secs(30),
            resume_window: 256,
            allow_anonymous: true,
            jwt: JwtSettings::default(),
            allowed_origins: Vec::new(),
            max_connections_per_ip_per_sec: 0,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl GatewaySettings {
    /// Refuses values that would make the gateway misbehave rather than fail.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |why: &str| Err(GatewayError::Config(why.to_string()));
        if self.queue_capacity == 0 {
            return bad("queue capacity must be at least 1");
        }
        if self.max_connections == 0 {
            return bad("max connections must be at least 1");
        }
        if self.max_subscriptions == 0 {
            return bad("max subscriptions must be at least 1");
        }
        if self.max_topics_per_caller == 0 || self.max_topics == 0 {
            return bad("max topics (per caller and per gateway) must be at least 1");
        }
        if self.max_messages_per_sec == 0 {
            return bad("max messages per second must be at least 1");
        }
        if self.max_frame_bytes < 256 {
            return bad("max frame bytes must be at least 256");
        }
        if self.ping_interval.is_zero() || self.sse_keepalive.is_zero() {
            return bad("ping interval and SSE keep-alive must be positive");
        }
        if self.idle_timeout <= self.ping_interval {
            return bad(
                "idle timeout must be longer than the ping interval, or every peer is reaped",
            );
        }
        if self.stuck_timeout.is_zero() {
            return bad("stuck timeout must be positive");
        }
        if self.resume_window == 0 || self.resume_window > 100_000 {
            return bad("resume window must be between 1 and 100000");
        }
        if !self.allow_anonymous && !self.jwt.any_key() {
            // Nobody could read anything: surely a missing flag.
            return bad(
                "anonymous access is off but no JWT key is configured (--jwt-hs256-secret-file, --jwt-rsa-public-key-file, --jwt-ed25519-public-key-file or --jwks-file)",
            );
        }
        if self.header_read_timeout.is_zero() {
            return bad("header read timeout must be positive");
        }
        for o in &self.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return bad(&format!(
                    "allowed origin {o:?} must look like https://host[:port]"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_flags() {
        let cli =
            Cli::try_parse_from(["kpi-gateway", "--nats-url", "nats://x:4222"]).expect("parse");
        assert_eq!(cli.settings(), GatewaySettings::default());
        assert_eq!(cli.listen.port(), 8080);
        assert!(GatewaySettings::default().validate().is_ok());
    }

    #[test]
    fn nonsense_is_refused() {
        let s = GatewaySettings {
            queue_capacity: 0,
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let s = GatewaySettings {
            idle_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let s = GatewaySettings {
            allow_anonymous: false,
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn allow_anonymous_takes_a_value() {
        let cli = Cli::try_parse_from(["g", "--nats-url", "n", "--allow-anonymous", "false"])
            .expect("parse");
        assert_eq!(cli.args.allow_anonymous, Some(false));
        assert!(
            cli.settings().validate().is_err(),
            "no key and no anonymous"
        );
    }

    #[test]
    fn a_jwt_key_turns_anonymous_off_unless_asked_for() {
        let base = ["g", "--nats-url", "n", "--jwt-hs256-secret-file", "/k"];
        let cli = Cli::try_parse_from(base).expect("parse");
        assert!(!cli.settings().allow_anonymous);
        assert!(cli.settings().validate().is_ok());
        let mut with = base.to_vec();
        with.extend(["--allow-anonymous", "true"]);
        assert!(
            Cli::try_parse_from(with)
                .expect("parse")
                .settings()
                .allow_anonymous
        );
        let cli = Cli::try_parse_from([
            "g",
            "--nats-url",
            "n",
            "--allowed-origins",
            "https://a.example, https://b.example",
        ])
        .expect("parse");
        assert_eq!(
            cli.settings().allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }
}
