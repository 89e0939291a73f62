//! Serves the Ingest service (with health, reflection and the bearer-token check) and the ops HTTP routes, and drains on shutdown.

use std::future::IntoFuture;
use std::sync::Arc;

use kpi_bus::Bus;
use kpi_proto::v1::ingest_server::IngestServer;
use kpi_service::{ops_router, Readiness, Shutdown};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use crate::config::IngestSettings;
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
    let ingest = InterceptedService::new(ingest, BearerAuth::new(settings.publisher_token.clone()));

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
    let grpc_server = tonic::transport::Server::builder()
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

/// Checks `authorization: Bearer <token>` on Ingest calls when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<str>>,
}

impl BearerAuth {
    pub fn new(token: Option<String>) -> Self {
        BearerAuth {
            expected: token.map(Arc::from),
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
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
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => {
                tracing::debug!("publisher call refused: wrong bearer token");
                Err(Status::unauthenticated("invalid bearer token"))
            }
            None => {
                tracing::debug!("publisher call refused: no bearer token");
                Err(Status::unauthenticated(
                    "missing bearer token: send `authorization: Bearer <token>`",
                ))
            }
        }
    }
}

/// Equality whose time does not reveal where two tokens first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
