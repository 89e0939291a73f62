//! `/healthz`, `/readyz` and `/metrics`, the routes every service serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;

use crate::routes::Routes;

/// What `/readyz` reports. A service marks itself ready once its bus is
/// connected and its listeners are up, and unready first thing when draining,
/// so a balancer stops sending new clients before existing ones are closed.
#[derive(Clone)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl Readiness {
    /// `check` is asked on every probe (e.g. "is the NATS connection up").
    pub fn new(check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Readiness {
            serving: Arc::new(AtomicBool::new(false)),
            check: Arc::new(check),
        }
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }

    pub fn status(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::SeqCst) {
            return Err("not serving (starting or draining)".into());
        }
        (self.check)()
    }
}

/// The three operational routes, for a router whose state holds the [`Readiness`].
pub fn ops_routes<S>() -> Routes<S>
where
    S: Clone + Send + Sync + 'static,
    Readiness: FromRef<S>,
{
    Routes::new()
        .get("/healthz", || async { "ok\n" })
        .get("/readyz", readyz)
        .get("/metrics", metrics)
}

async fn readyz(State(r): State<Readiness>) -> (StatusCode, String) {
    match r.status() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics() -> String {
    crate::telemetry::prometheus().render()
}
