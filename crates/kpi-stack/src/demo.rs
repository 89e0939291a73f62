//! The demo feeder: ten realistically behaving KPIs published over gRPC, so the page is alive at once.

use std::time::{Duration, SystemTime};

use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{Event, PublishRequest};
use kpi_service::Shutdown;

/// A KPI of the demo: where it starts, how far it wanders per step, and its bounds.
struct DemoKpi {
    code: &'static str,
    value: f64,
    step: f64,
    min: f64,
    max: f64,
    /// Counts are whole numbers.
    integer: bool,
}

const fn kpi(
    code: &'static str,
    value: f64,
    step: f64,
    min: f64,
    max: f64,
    integer: bool,
) -> DemoKpi {
    DemoKpi {
        code,
        value,
        step,
        min,
        max,
        integer,
    }
}

/// The codes the demo publishes; the page shows these by default.
pub const DEMO_CODES: [&str; 10] = [
    "perfect_order_fulfillment",
    "pending_approvals",
    "orders_per_minute",
    "revenue_eur",
    "cart_abandonment_rate",
    "avg_ticket_resolution_min",
    "active_users",
    "failed_payments",
    "inventory_turnover",
    "on_time_delivery_rate",
];

fn catalogue() -> Vec<DemoKpi> {
    vec![
        kpi(DEMO_CODES[0], 94.0, 0.6, 80.0, 100.0, false),
        kpi(DEMO_CODES[1], 37.0, 3.0, 0.0, 200.0, true),
        kpi(DEMO_CODES[2], 120.0, 12.0, 10.0, 400.0, true),
        kpi(DEMO_CODES[3], 850.0, 120.0, 50.0, 5000.0, false),
        kpi(DEMO_CODES[4], 68.0, 1.5, 40.0, 90.0, false),
        kpi(DEMO_CODES[5], 42.0, 4.0, 5.0, 180.0, false),
        kpi(DEMO_CODES[6], 1250.0, 60.0, 100.0, 5000.0, true),
        kpi(DEMO_CODES[7], 3.0, 1.0, 0.0, 40.0, true),
        kpi(DEMO_CODES[8], 5.2, 0.08, 2.0, 9.0, false),
        kpi(DEMO_CODES[9], 91.0, 0.8, 70.0, 100.0, false),
    ]
}

/// Publishes a value for every demo KPI `rate` times per second until shutdown,
/// with `token` as its bearer token when ingest requires one.
/// Failures are logged and retried: the demo must not take the stack down.
pub async fn feed(grpc_addr: String, rate: u32, token: Option<String>, shutdown: Shutdown) {
    let auth = token.and_then(|t| {
        tonic::metadata::MetadataValue::try_from(format!("Bearer {t}"))
            .inspect_err(|_| {
                tracing::warn!("demo feeder: the publisher token is not a header value")
            })
            .ok()
    });
    let mut kpis = catalogue();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ nanos());
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let mut client = None;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tick.tick() => {}
        }
        if client.is_none() {
            match IngestClient::connect(format!("http://{grpc_addr}")).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "demo feeder: ingest not reachable yet");
                    continue;
                }
            }
        }
        let events = kpis
            .iter_mut()
            .map(|k| {
                let walk = (rng.unit() * 2.0 - 1.0) * k.step;
                k.value = (k.value + walk).clamp(k.min, k.max);
                let value = if k.integer {
                    k.value.round()
                } else {
                    (k.value * 100.0).round() / 100.0
                };
                Event {
                    event_id: String::new(),
                    kpi: k.code.to_string(),
                    value,
                    time: Some(prost_types::Timestamp::from(SystemTime::now())),
                    labels: [("source".to_string(), "demo".to_string())].into(),
                }
            })
            .collect();
        if let Some(c) = client.as_mut() {
            let mut request = tonic::Request::new(PublishRequest { events });
            if let Some(auth) = &auth {
                request.metadata_mut().insert("authorization", auth.clone());
            }
            if let Err(e) = c.publish(request).await {
                tracing::warn!(error = %e, "demo feeder: publish failed");
                client = None;
            }
        }
    }
}

fn nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// A tiny PRNG: the demo needs wandering values, not cryptography.
struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
