//! Serves the Ingest service (with health, reflection and the bearer-token check) and the ops HTTP routes, and drains on shutdown.

use std::future::IntoFuture;

use axum::extract::FromRef;
use kpi_bus::Bus;
use kpi_proto::v1::ingest_server::IngestServer;
use kpi_service::{ops_routes, Endpoint, Readiness, Routes, Shutdown};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{ServerTlsConfig, TcpIncoming};
use tonic::transport::{Certificate, Identity};
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::accept::Accept;
use crate::config::{IngestSettings, TlsFiles};
use crate::service::IngestService;
use crate::IngestError;

/// Batches of up to `max_batch` events with labels exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The health-check name of the Ingest service, `kpi.v1.Ingest`.
pub const SERVICE_NAME: &str = <IngestServer<IngestService> as NamedService>::NAME;

/// What the HTTP port's handlers share.
#[derive(Clone)]
struct HttpState {
    accept: Accept,
    readiness: Readiness,
}

impl FromRef<HttpState> for Accept {
    fn from_ref(s: &HttpState) -> Accept {
        s.accept.clone()
    }
}

impl FromRef<HttpState> for Readiness {
    fn from_ref(s: &HttpState) -> Readiness {
        s.readiness.clone()
    }
}

/// Everything the HTTP port serves: the publishers' formats and the ops routes.
fn http_routes() -> Routes<HttpState> {
    crate::http::routes().merge(ops_routes())
}

/// The endpoints of the HTTP port (`--http-listen`). docs/openapi.yaml lists the same.
pub fn http_route_table() -> Vec<Endpoint> {
    http_routes().table().to_vec()
}

/// Serves until `shutdown` fires, then drains and returns.
///
/// gRPC (Ingest, OTLP `MetricsService`, `grpc.health.v1.Health`, reflection
/// v1) is served on `grpc`; the HTTP formats ([`crate::http::routes`]) and
/// `/healthz`, `/readyz`, `/metrics` on `http`. On shutdown, health turns
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
    let accept = Accept::new(bus, &settings, shutdown.clone())?;
    run_with(accept, grpc, http, settings, shutdown).await
}

/// [`run`] over an accept path built by the caller, which may also serve
/// [`crate::http::routes`] of the same `accept` elsewhere (kpi-stack does, on
/// the gateway's port), so tokens and rates are shared.
pub async fn run_with(
    accept: Accept,
    grpc: TcpListener,
    http: TcpListener,
    settings: IngestSettings,
    shutdown: Shutdown,
) -> Result<(), IngestError> {
    settings.validate()?;
    let bus = accept.bus().clone();
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

    let auth = BearerAuth::new(accept.clone());
    let ingest = IngestServer::new(IngestService::new(accept.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let ingest = InterceptedService::new(ingest, auth.clone());
    let otlp = MetricsServiceServer::new(crate::otlp::OtlpMetrics::new(accept.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let otlp = InterceptedService::new(otlp, auth);
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
        .add_service(otlp)
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), drain);

    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http_server = tokio::spawn(
        axum::serve(
            http,
            http_routes()
                .with_state(HttpState {
                    accept,
                    readiness: readiness.clone(),
                })
                .into_router(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stopped.await;
        })
        .into_future(),
    );

    readiness.set_serving(true);
    tracing::info!(%grpc_addr, %http_addr, "kpi-ingest serving");

    // The one drain: gRPC stops accepting on shutdown and finishes its
    // calls, tracked stream tasks end, all within the grace period.
    let serving = async {
        tokio::select! {
            r = grpc_server => r.map_err(IngestError::Grpc),
            r = &mut http_server => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(IngestError::Http(e)),
                Err(join) => Err(IngestError::Http(std::io::Error::other(join))),
            },
        }
    };
    let outcome = kpi_service::drain(&shutdown, settings.drain_grace, serving)
        .await
        .output()
        .unwrap_or(Ok(()));
    readiness.set_serving(false);
    let _ = http_stop.send(());
    if !http_server.is_finished() {
        let _ = http_server.await;
    }
    tracing::info!("kpi-ingest drained");
    outcome
}

/// Checks `authorization: Bearer <token>` on Ingest and OTLP calls when
/// tokens are configured, and hands the matching [`Publisher`] to the service
/// (as a request extension) so it can check each event's KPI and the rate.
#[derive(Clone)]
pub struct BearerAuth {
    accept: Accept,
}

impl BearerAuth {
    pub fn new(accept: Accept) -> Self {
        BearerAuth { accept }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
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
        let remote = request.remote_addr().map(|a| a.ip());
        match self.accept.authenticate(presented, remote) {
            Ok(Some(publisher)) => {
                request.extensions_mut().insert(publisher);
                Ok(request)
            }
            Ok(None) => Ok(request),
            Err(r) => Err(crate::service::refusal_status(&r)),
        }
    }
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
