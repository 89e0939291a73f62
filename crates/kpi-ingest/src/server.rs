//! Serves the Ingest service (with health, reflection and the bearer-token check) and the ops HTTP routes, and drains on shutdown.

use std::future::IntoFuture;
use std::sync::Arc;

use kpi_bus::Bus;
use kpi_proto::v1::ingest_server::IngestServer;
use kpi_service::{ops_router, Readiness, Shutdown};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{ServerTlsConfig, TcpIncoming};
use tonic::transport::{Certificate, Identity};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::config::{IngestSettings, TlsFiles};
use crate::publishers::PublisherTokens;
use crate::service::IngestService;
use crate::IngestError;

/// Batches of up to `max_batch` events with labels exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The health-check name of the Ingest service, `kpi.v1.Ingest`.
pub const SERVICE_NAME: &str = <IngestServer<IngestService> as NamedService>::NAME;

/// Serves until `shutdown` fires, then drains and returns.
///
/// gRPC (Ingest, `grpc.health.v1.Health`, reflection v1) is served on `grpc`;
/// `/healthz`, `/readyz` and `/metrics` on `http`. On shutdown, health turns
/// NOT_SERVING and `/readyz` 503 first, then new connections are refused,
/// open PublishStreams are acknowledged up to what was read and closed, and
/// in-flight calls finish, for at most `settings.drain_grace`. The HTTP side
/// keeps answering until the gRPC side is done, so probes see the drain.
pub async fn run(
    grpc: TcpListener,
    http: TcpListener,
    bus: Bus,
    settings: IngestSettings,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    settings.validate()?;
    // Install the recorder before the first event is counted, or early
    // counts would go to the no-op recorder.
    let _ = kpi_service::telemetry::prometheus();
    crate::metrics::describe();

    let grpc_addr = grpc.local_addr().map_err(IngestError::Listener)?;
    let http_addr = http.local_addr().map_err(IngestError::Listener)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kpi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let ingest = IngestServer::new(IngestService::new(bus.clone(), &settings, shutdown.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let ingest = InterceptedService::new(ingest, BearerAuth::new(publisher_tokens(&settings)?));
    // HTTP/2 tells each client how many calls it may have open on one
    // connection; a further call waits in the client until one ends.
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(settings.max_calls_per_connection);
    if let Some(files) = &settings.tls {
        builder = builder
            .tls_config(server_tls(files)?)
            .map_err(|e| IngestError::Tls(e.to_string()))?;
    }

    let readiness = Readiness::new({
        let bus = bus.clone();
        move || {
            if bus.is_connected() {
                Ok(())
            } else {
                Err("not connected to the bus".into())
            }
        }
    });

    let drain = {
        let shutdown = shutdown.clone();
        let readiness = readiness.clone();
        let health = health.clone();
        async move {
            shutdown.recv().await;
            tracing::info!("draining: refusing new calls, finishing in-flight ones");
            readiness.set_serving(false);
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
    };
    let grpc_server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ingest)
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), drain);

    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http_server = tokio::spawn(
        axum::serve(http, ops_router(readiness.clone()))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .into_future(),
    );

    readiness.set_serving(true);
    tracing::info!(%grpc_addr, %http_addr, "kpi-ingest serving");

    let grace = settings.drain_grace;
    let outcome = tokio::select! {
        r = grpc_server => r.map_err(IngestError::Grpc),
        () = async { shutdown.recv().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "drain grace period over; leaving calls unfinished");
            Ok(())
        }
        r = &mut http_server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IngestError::Http(e)),
            Err(join) => Err(IngestError::Http(std::io::Error::other(join))),
        },
    };
    readiness.set_serving(false);
    let _ = http_stop.send(());
    if !http_server.is_finished() {
        let _ = http_server.await;
    }
    tracing::info!("kpi-ingest drained");
    outcome
}

/// Bounds the Ingest calls open at once across all connections; a call
/// holds its permit until it ends (a PublishStream until its stream ends).
#[derive(Clone)]
pub struct CallLimit {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl CallLimit {
    pub fn new(max: usize) -> Self {
        CallLimit {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// A permit for one call, or RESOURCE_EXHAUSTED naming the cap.
    pub fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many concurrent calls (--max-calls {}); retry later",
                self.max
            ))
        })
    }
}

/// Checks `authorization: Bearer <token>` on Ingest calls when tokens are
/// configured, and hands the matching [`Publisher`] to the service (as a
/// request extension) so it can check each event's KPI and the rate.
#[derive(Clone)]
pub struct BearerAuth {
    tokens: Option<Arc<PublisherTokens>>,
}

impl BearerAuth {
    pub fn new(tokens: Option<PublisherTokens>) -> Self {
        BearerAuth {
            tokens: tokens.map(Arc::new),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            });
        let remote = request.remote_addr().map(|a| a.ip().to_string());
        match presented.map(|t| tokens.find(t)) {
            Some(Some(publisher)) => {
                request.extensions_mut().insert(publisher);
                Ok(request)
            }
            Some(None) => {
                audit_denied("publish", "bad_token", None, remote.as_deref());
                Err(Status::unauthenticated("invalid bearer token"))
            }
            None => {
                audit_denied("publish", "token_missing", None, remote.as_deref());
                Err(Status::unauthenticated(
                    "missing bearer token: send `authorization: Bearer <token>`",
                ))
            }
        }
    }
}

/// One `kpistream::audit` record of a refused publisher call (never the token).
pub(crate) fn audit_denied(
    action: &str,
    reason: &str,
    subject: Option<&str>,
    remote: Option<&str>,
) {
    tracing::warn!(
        target: "kpistream::audit",
        action,
        outcome = "denied",
        reason,
        subject = subject.unwrap_or(""),
        kpi = "",
        remote_ip = remote.unwrap_or(""),
        "publisher refused"
    );
}

/// The tokens of `--publisher-token` and `--publisher-tokens-file`; `None` when neither is set.
fn publisher_tokens(s: &IngestSettings) -> Result<Option<PublisherTokens>, IngestError> {
    let rate = s.max_publishes_per_token_per_sec;
    let mut all = PublisherTokens::default();
    if let Some(t) = &s.publisher_token {
        all.extend(PublisherTokens::single(t, rate));
    }
    if let Some(path) = &s.publisher_tokens_file {
        all.extend(PublisherTokens::load(path, rate)?);
    }
    Ok((!all.is_empty()).then_some(all))
}

/// The rustls configuration for `--tls-cert`, `--tls-key` and `--tls-client-ca`.
fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, IngestError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| IngestError::Tls(format!("{}: {e}", p.display())))
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}
