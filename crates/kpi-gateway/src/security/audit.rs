//! The gateway's audit trail: [`kpi_service::audit`] records, its denials counted in `kpi_gateway_auth_denied_total{reason}`.

use kpi_service::audit::Audit;
pub use kpi_service::audit::Who;

pub const AUTH_DENIED: &str = "kpi_gateway_auth_denied_total";

const AUDIT: Audit = Audit::new(AUTH_DENIED);

/// Registers the metric's help text; harmless to call more than once.
pub fn describe() {
    AUDIT.describe(
        "Requests, connections, subscriptions and admin calls refused by access control, by reason",
    );
}

/// A refusal: logged at `warn` and counted under `reason`.
pub fn denied(action: &str, reason: &'static str, who: Who<'_>, kpi: Option<&str>) {
    AUDIT.denied(action, reason, who, kpi);
}

/// An action that was allowed and is worth a record (admin actions, token refreshes).
pub fn allowed(action: &str, who: Who<'_>, detail: &str) {
    AUDIT.allowed(action, who, detail);
}
