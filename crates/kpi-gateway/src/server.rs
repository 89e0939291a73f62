//! The router and `run`: serve until shutdown, then drain.
//!
//! Drain order: `/readyz` turns false first (balancers stop sending new
//! clients); `unready_delay` later ([`AppState::closing`]) the listener
//! stops accepting, every WebSocket is closed with 1012 so its client
//! reconnects elsewhere, SSE streams and long polls end; and `run` waits for
//! every session to end, at most `drain`.

use std::sync::Arc;

use kpi_bus::Bus;
use kpi_service::{Endpoint, Readiness, Routes, Shutdown};
use tokio::net::TcpListener;

use crate::fanout::hub::Hub;
use crate::security::connect_rate::ConnectRate;
use crate::security::origin::OriginPolicy;
use crate::security::Security;
use crate::session::clients::Clients;
use crate::session::quota::TopicQuota;
use crate::session::slots::Connections;
use crate::state::AppState;
use crate::{GatewayError, GatewaySettings};

/// Every route the gateway serves, added in this one place; `cors` wraps the
/// reads a page on another (allowed) origin may make.
fn routes(cors: impl FnOnce(Routes<AppState>) -> Routes<AppState>) -> Routes<AppState> {
    let cross_origin = Routes::new()
        .get("/sse/kpi/{code}", crate::sse::handler)
        .get("/api/kpi/{code}", crate::api::snapshot::handler)
        .get("/api/kpi/{code}/history", crate::api::history::handler)
        .get("/api/kpi/{code}/updates", crate::api::poll::handler)
        .get("/api/kpis", crate::api::kpis::handler);
    Routes::new()
        // The dashboard page, its assets and /kpistream.js.
        .merge(crate::assets::routes())
        .merge(crate::protocol_docs::routes())
        .merge(cors(cross_origin))
        .get("/ws", crate::ws::mux::handler)
        .get("/ws/kpi/{code}", crate::ws::topic_socket::handler)
        .post("/api/admin/broadcast", crate::admin::broadcast)
        .post("/api/admin/maintenance", crate::admin::maintenance)
        .merge(kpi_service::ops_routes())
}

/// What the gateway serves: the endpoints of [`run`]'s router (and of
/// [`run_with_routes`]'s, before its `extra`). docs/openapi.yaml lists the
/// same. The CORS layer adds no route, so it is left out here, where there
/// is no state to build it from.
pub fn route_table() -> Vec<Endpoint> {
    routes(|reads| reads).table().to_vec()
}

fn router(state: AppState) -> Routes {
    let security = state.security.clone();
    routes(|reads| {
        reads.layer(axum::middleware::from_fn_with_state(
            security,
            crate::security::cors::layer,
        ))
    })
    .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown` fires, then drains
/// (bounded by `settings.drain`) and returns.
pub async fn run(
    listener: TcpListener,
    bus: Bus,
    settings: GatewaySettings,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    run_with_routes(listener, bus, settings, Routes::new(), shutdown).await
}

/// [`run`], also serving `extra` routes on the same port (kpi-stack puts
/// ingest's HTTP formats there). They pass none of the gateway's admission.
pub async fn run_with_routes(
    listener: TcpListener,
    bus: Bus,
    settings: GatewaySettings,
    extra: Routes,
    shutdown: Shutdown,
) -> Result<(), GatewayError> {
    settings.validate()?;
    // Installs the recorder before the first metric is touched.
    let _ = kpi_service::telemetry::prometheus();
    crate::metrics::describe();
    crate::security::audit::describe();
    let verifier = crate::security::auth::Verifier::from_settings(&settings.jwt)
        .map_err(|e| GatewayError::Config(e.to_string()))?;
    let security = Security::new(
        verifier,
        settings.allow_anonymous,
        OriginPolicy::new(&settings.allowed_origins),
        ConnectRate::new(settings.max_connections_per_ip_per_sec),
    );
    let clients = Clients::default();
    // Subscribed before serving, so no admin broadcast is missed once we are up.
    // Then the stored maintenance state: broadcasts after it queue meanwhile.
    let broadcasts = bus.subscribe_broadcast().await;
    crate::admin::restore_maintenance(&bus, &security).await;
    match broadcasts {
        Ok(sub) => {
            shutdown.spawn(crate::admin::listen(
                sub,
                security.clone(),
                clients.clone(),
                shutdown.clone(),
            ));
        }
        Err(e) => tracing::warn!(error = %e, "cannot receive admin broadcasts"),
    }
    let settings = Arc::new(settings);
    let hub = Hub::new(
        bus.clone(),
        settings.linger,
        settings.resume_window,
        settings.max_topics,
    );
    let slots = Connections::new(settings.max_connections);
    let ready_bus = bus.clone();
    let readiness = Readiness::new(move || {
        if ready_bus.is_connected() {
            Ok(())
        } else {
            Err("bus disconnected".to_string())
        }
    });
    let state = AppState {
        hub: hub.clone(),
        settings: settings.clone(),
        slots: slots.clone(),
        closing: shutdown.delayed(settings.unready_delay),
        security,
        clients,
        quota: TopicQuota::new(settings.max_topics_per_caller),
        readiness: readiness.clone(),
    };
    let app = router(state.clone()).merge(extra).into_router();
    let local = listener.local_addr()?;
    let header_timeout = settings.header_read_timeout;
    let mut server = tokio::spawn({
        let state = state.clone();
        // Not axum::serve: it sets no header-read timeout (see http.rs).
        crate::http::serve(
            listener,
            app,
            header_timeout,
            shutdown.clone(),
            async move { state.closing().await },
        )
    });
    readiness.set_serving(true);
    tracing::info!(%local, "gateway listening");

    tokio::select! {
        () = shutdown.recv() => {}
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
    tracing::info!(open = slots.open(), delay = ?settings.unready_delay, "unready; draining after the delay");
    let drained = tokio::time::timeout(settings.unready_delay + settings.drain, async {
        let _ = (&mut server).await;
        slots.wait_idle().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(open = slots.open(), "drain time ran out; dropping the rest");
        server.abort();
    }
    hub.close();
    Ok(())
}
