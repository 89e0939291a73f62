//! The router and `run`: serve until shutdown, then drain.
//!
//! Drain order: `/readyz` turns false first (balancers stop sending new
//! clients), the listener stops accepting, every WebSocket is closed with
//! 1012 so its client reconnects elsewhere, SSE streams and long polls end,
//! and `run` waits for connections to finish, at most `drain`.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use kpi_bus::Bus;
use kpi_service::{Readiness, Shutdown};
use tokio::net::TcpListener;

use crate::hub::Hub;
use crate::limits::Connections;
use crate::{GatewayError, GatewaySettings};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub hub: Hub,
    pub settings: Arc<GatewaySettings>,
    pub connections: Connections,
    /// Fires when draining starts; connections end on it.
    pub shutdown: Shutdown,
    /// Tokens, the anonymous policy, origins, per-IP limits, maintenance, open clients.
    pub security: crate::access::Security,
}

fn router(state: AppState, readiness: Readiness) -> Router {
    Router::new()
        // The dashboard page, its assets, /kpistream.js and /api/kpis.
        .merge(crate::assets::routes())
        .route("/ws", get(crate::ws_mux::handler))
        .route("/ws/kpi/{code}", get(crate::ws::handler))
        .route("/sse/kpi/{code}", get(crate::sse::handler))
        .route("/api/kpi/{code}", get(crate::api::snapshot))
        .route("/api/kpi/{code}/history", get(crate::api::history))
        .route("/api/kpi/{code}/updates", get(crate::api::updates))
        .route("/api/admin/broadcast", post(crate::admin::broadcast))
        .route("/api/admin/maintenance", post(crate::admin::maintenance))
        .with_state(state)
        .merge(kpi_service::ops_router(readiness))
}

/// Serves the gateway on `listener` until `shutdown` fires, then drains
/// (bounded by `settings.drain`) and returns.
pub async fn run(
    listener: TcpListener,
    bus: Bus,
    settings: GatewaySettings,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    run_with_routes(listener, bus, settings, Router::new(), shutdown).await
}

/// [`run`], also serving `extra` routes on the same port (kpi-stack puts
/// ingest's HTTP formats there). They pass none of the gateway's admission.
pub async fn run_with_routes(
    listener: TcpListener,
    bus: Bus,
    settings: GatewaySettings,
    extra: Router,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    settings.validate()?;
    // Installs the recorder before the first metric is touched.
    let _ = kpi_service::telemetry::prometheus();
    crate::metrics::describe();
    crate::audit::describe();
    let verifier = crate::auth::Verifier::from_settings(&settings.jwt)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let security = crate::access::Security::new(
        verifier,
        settings.allow_anonymous,
        crate::origin::OriginPolicy::new(&settings.allowed_origins),
        crate::ip_rate::IpRate::new(settings.max_connections_per_ip_per_sec),
    );
    // Subscribed before serving, so no admin broadcast is missed once we are up.
    // Then the stored maintenance state: broadcasts after it queue meanwhile.
    let broadcasts = bus.subscribe_broadcast().await;
    crate::admin::restore_maintenance(&bus, &security).await;
    match broadcasts {
        Ok(sub) => {
            tokio::spawn(crate::admin::listen(
                sub,
                security.clone(),
                shutdown.clone(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "cannot receive admin broadcasts"),
    }
    let settings = Arc::new(settings);
    let hub = Hub::new(bus.clone(), settings.linger, settings.resume_window);
    let connections = Connections::new(settings.max_connections);
    let ready_bus = bus.clone();
    let readiness = Readiness::new(move || {
        if ready_bus.is_connected() {
            Ok(())
        } else {
            Err("bus disconnected".to_string())
        }
    });
    // Connections and the listener follow `drain`, which fires
    // `unready_delay` after `shutdown`: readiness fails first, so balancers
    // move new clients elsewhere before existing ones are sent away.
    let drain = Shutdown::new();
    let state = AppState {
        hub: hub.clone(),
        settings: settings.clone(),
        connections: connections.clone(),
        shutdown: drain.clone(),
        security,
    };
    let app = router(state, readiness.clone()).merge(extra);
    let local = listener.local_addr()?;
    let stop = drain.clone();
    let not_ready = readiness.clone();
    let header_timeout = settings.header_read_timeout;
    let mut server = tokio::spawn(async move {
        // Not axum::serve: it sets no header-read timeout (see http.rs).
        crate::http::serve(listener, app, header_timeout, async move {
            stop.recv().await;
            not_ready.set_serving(false);
        })
        .await
    });
    readiness.set_serving(true);
    tracing::info!(%local, "gateway listening");

    tokio::select! {
        _ = shutdown.recv() => {}
        res = &mut server => {
            // The server stopped without being asked to.
            hub.close();
            return match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(GatewayError::Io(e)),
                Err(e) => Err(GatewayError::Io(std::io::Error::other(e))),
            };
        }
    }
    readiness.set_serving(false);
    tracing::info!(open = connections.open(), delay = ?settings.unready_delay, "unready; draining after the delay");
    tokio::time::sleep(settings.unready_delay).await;
    drain.trigger();
    let drained = tokio::time::timeout(settings.drain, async {
        let _ = (&mut server).await;
        connections.wait_idle().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.open(),
            "drain time ran out; dropping the rest"
        );
        server.abort();
    }
    hub.close();
    Ok(())
}
