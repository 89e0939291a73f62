//! Every metric the gateway exports, each name spelled once.

use metrics::{counter, describe_counter, describe_gauge, gauge};

pub const UPSTREAM_SUBSCRIPTIONS: &str = "kpi_gateway_upstream_subscriptions";
pub const CONNECTIONS: &str = "kpi_gateway_connections";
pub const MESSAGES_SENT: &str = "kpi_gateway_messages_sent_total";
pub const CONFLATED: &str = "kpi_gateway_conflated_total";
pub const REJECTED: &str = "kpi_gateway_rejected_total";
pub const SLOW_CONSUMERS_CLOSED: &str = "kpi_gateway_slow_consumers_closed_total";

/// Which kind of client a connection gauge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws/kpi/<code>`: one topic per socket.
    Ws,
    /// `/ws`: many topics per socket.
    WsMux,
    Sse,
    /// `/api/kpi/<code>/updates`, while it waits.
    Poll,
    /// `/api/kpi/<code>`, `/api/kpi/<code>/history` and `/api/kpis`, while answered.
    Read,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::WsMux => "ws_mux",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Read => "read",
        }
    }
}

/// Registers help texts; harmless to call more than once.
pub fn describe() {
    describe_gauge!(
        UPSTREAM_SUBSCRIPTIONS,
        "Upstream bus subscriptions this gateway holds"
    );
    describe_gauge!(CONNECTIONS, "Open client connections by transport");
    describe_counter!(MESSAGES_SENT, "Data messages written to clients");
    describe_counter!(CONFLATED, "Updates not queued because a client's queue was full or paused (it gets the latest instead)");
    describe_counter!(REJECTED, "Requests or client messages refused, by reason");
    describe_counter!(
        SLOW_CONSUMERS_CLOSED,
        "Connections closed because their queue stayed full"
    );
    // Touch the gauge so /metrics shows 0 before the first subscription.
    gauge!(UPSTREAM_SUBSCRIPTIONS).increment(0.0);
}

pub fn upstream_held(delta: f64) {
    gauge!(UPSTREAM_SUBSCRIPTIONS).increment(delta);
}

pub fn connection_opened(t: Transport) {
    gauge!(CONNECTIONS, "transport" => t.as_str()).increment(1.0);
}

pub fn connection_closed(t: Transport) {
    gauge!(CONNECTIONS, "transport" => t.as_str()).decrement(1.0);
}

pub fn message_sent() {
    counter!(MESSAGES_SENT).increment(1);
}

pub fn conflated() {
    counter!(CONFLATED).increment(1);
}

pub fn rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

pub fn slow_consumer_closed() {
    counter!(SLOW_CONSUMERS_CLOSED).increment(1);
}
