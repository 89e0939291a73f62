//! The audit trail of every service: denials and notable allowed actions as `kpistream::audit` events, each denial counted.
//!
//! One structured `tracing` event per decision, with the fields an operator
//! filters on (`action`, `outcome`, `reason`, `subject`, `kpi`, `remote_ip`),
//! so `RUST_LOG=kpistream::audit=info` yields exactly the trail of every
//! service alike. A token is never a field: only who it names (a JWT's `sub`,
//! a publisher token's configured label). Each service counts its denials
//! in its own counter (`kpi_gateway_auth_denied_total{reason}`,
//! `kpi_ingest_auth_denied_total{reason}`).

use std::net::IpAddr;

/// The `tracing` target of every audit record.
pub const TARGET: &str = "kpistream::audit";

/// Who did what, as far as the service knows it. Never a token.
#[derive(Debug, Default, Clone, Copy)]
pub struct Who<'a> {
    /// A JWT's `sub`, or a publisher token's label (`tokens-file:3`).
    pub subject: Option<&'a str>,
    pub remote_ip: Option<IpAddr>,
}

/// One service's audit trail: its records and its denial counter.
#[derive(Debug, Clone, Copy)]
pub struct Audit {
    denied_metric: &'static str,
}

impl Audit {
    /// `denied_metric` counts this service's denials by `reason`.
    pub const fn new(denied_metric: &'static str) -> Self {
        Audit { denied_metric }
    }

    pub fn denied_metric(&self) -> &'static str {
        self.denied_metric
    }

    /// Registers the counter's help text; harmless to call more than once.
    pub fn describe(&self, help: &'static str) {
        metrics::describe_counter!(self.denied_metric, help);
    }

    /// A refusal: logged at `warn` and counted under `reason`.
    pub fn denied(&self, action: &str, reason: &'static str, who: Who<'_>, kpi: Option<&str>) {
        metrics::counter!(self.denied_metric, "reason" => reason).increment(1);
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
    pub fn allowed(&self, action: &str, who: Who<'_>, detail: &str) {
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
}
