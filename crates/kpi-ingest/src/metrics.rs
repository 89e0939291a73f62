//! Every metric kpi-ingest records, named in one place so dashboards and code agree.

use std::time::Duration;

/// Events by outcome; label `result` is one of the `RESULT_*` values.
pub const EVENTS_TOTAL: &str = "kpi_ingest_events_total";
/// Time from handing a valid event to the bus until it is acknowledged as durable.
pub const STORE_SECONDS: &str = "kpi_ingest_store_seconds";

/// Publisher calls and events refused by access control or the rate limit, by reason.
pub const AUTH_DENIED: &str = "kpi_ingest_auth_denied_total";
/// Ingest's audit trail: every publisher refusal logged and counted in [`AUTH_DENIED`].
pub const AUDIT: kpi_service::Audit = kpi_service::Audit::new(AUTH_DENIED);

pub const RESULT_STORED: &str = "stored";
pub const RESULT_DUPLICATE: &str = "duplicate";
pub const RESULT_INVALID: &str = "invalid";
pub const RESULT_UNAVAILABLE: &str = "unavailable";

/// Registers descriptions and zero counters, so `/metrics` explains the
/// series and `rate()` has a series to work on before the first event (idempotent).
pub fn describe() {
    metrics::describe_counter!(
        EVENTS_TOTAL,
        "Events received by ingest, by result (stored, duplicate, invalid, unavailable)"
    );
    metrics::describe_histogram!(
        STORE_SECONDS,
        metrics::Unit::Seconds,
        "Time to store one event durably on the bus"
    );
    AUDIT
        .describe("Publisher calls and events refused by token, KPI permission or rate, by reason");
    for reason in [
        "token_missing",
        "bad_token",
        "forbidden_kpi",
        "rate_limited",
    ] {
        metrics::counter!(AUTH_DENIED, "reason" => reason).increment(0);
    }
    for result in [
        RESULT_STORED,
        RESULT_DUPLICATE,
        RESULT_INVALID,
        RESULT_UNAVAILABLE,
    ] {
        metrics::counter!(EVENTS_TOTAL, "result" => result).increment(0);
    }
}

pub fn event(result: &'static str) {
    events(result, 1);
}

/// `n` events with the same result; nothing is recorded for none.
pub fn events(result: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(EVENTS_TOTAL, "result" => result).increment(n as u64);
    }
}

pub fn store_time(elapsed: Duration) {
    metrics::histogram!(STORE_SECONDS).record(elapsed.as_secs_f64());
}
