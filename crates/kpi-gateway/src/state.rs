//! What every handler shares: [`AppState`].

use std::sync::Arc;

use axum::extract::FromRef;
use kpi_service::{Readiness, Shutdown};

use crate::fanout::hub::Hub;
use crate::security::Security;
use crate::session::clients::Clients;
use crate::session::quota::TopicQuota;
use crate::session::slots::Connections;
use crate::GatewaySettings;

#[derive(Clone)]
pub(crate) struct AppState {
    pub hub: Hub,
    pub settings: Arc<GatewaySettings>,
    /// One slot per open session, against `max_connections`.
    pub slots: Connections,
    /// The process's one shutdown signal, delayed by `unready_delay`
    /// ([`Shutdown::delayed`]): when sessions end.
    pub closing: Shutdown,
    /// Tokens, the anonymous policy, origins, per-IP rate, maintenance.
    pub security: Security,
    /// Open sessions, for admin broadcasts.
    pub clients: Clients,
    /// Distinct topics per caller.
    pub quota: TopicQuota,
    /// What `/readyz` answers.
    pub readiness: Readiness,
}

impl AppState {
    /// Resolves when sessions must end: `unready_delay` after shutdown
    /// began, so balancers stop sending new clients before existing ones are
    /// sent away.
    pub async fn closing(&self) {
        self.closing.recv().await;
    }
}

impl FromRef<AppState> for Security {
    fn from_ref(app: &AppState) -> Security {
        app.security.clone()
    }
}

impl FromRef<AppState> for Readiness {
    fn from_ref(app: &AppState) -> Readiness {
        app.readiness.clone()
    }
}
