//! The audit trail: denials, token failures and admin actions as `kpistream::audit` events.
//!
//! One structured `tracing` event per decision, with the fields an operator
//! filters on (`action`, `outcome`, `reason`, `subject`, `kpi`, `remote_ip`),
//! so `RUST_LOG=kpistream::audit=info` yields exactly the trail. A token is
//! never a field: only its `sub` claim is. Every denial is also counted in
//! `kpi_gateway_auth_denied_total{reason}`.

use std::net::IpAddr;

use metrics::{counter, describe_counter};

pub const AUTH_DENIED: &str = "kpi_gateway_auth_denied_total";

/// Registers the metric's help text; harmless to call more than once.
pub fn describe() {
    describe_counter!(
        AUTH_DENIED,
        "Requests, connections, subscriptions and admin calls refused by access control, by reason"
    );
}

/// Who did what, as far as the gateway knows it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Who<'a> {
    pub subject: Option<&'a str>,
    pub remote_ip: Option<IpAddr>,
}

/// A refusal: logged at `warn` and counted under `reason`.
pub fn denied(action: &str, reason: &'static str, who: Who<'_>, kpi: Option<&str>) {
    counter!(AUTH_DENIED, "reason" => reason).increment(1);
    tracing::warn!(
        target: "kpistream::audit",
        action,
        outcome = "denied",
        reason,
        subject = who.subject.unwrap_or(""),
        kpi = kpi.unwrap_or(""),
        remote_ip = %who.remote_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "access denied"
    );
}

/// An action that was allowed and is worth a record (admin actions, token refreshes).
pub fn allowed(action: &str, who: Who<'_>, detail: &str) {
    tracing::info!(
        target: "kpistream::audit",
        action,
        outcome = "allowed",
        reason = detail,
        subject = who.subject.unwrap_or(""),
        kpi = "",
        remote_ip = %who.remote_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "access allowed"
    );
}
