//! OpenTelemetry metrics (OTLP) as events: the mapping, and the gRPC `MetricsService/Export` on ingest's gRPC port.
//!
//! What maps, one event per data point:
//! - **gauge**: the point's value.
//! - **sum, delta temporality**: the point's value is the increment over its
//!   interval, so a bucket's `sum` is the total over the bucket.
//! - **sum, cumulative temporality**: the point's value is the running total
//!   since its start time; read it with `last` (or `max`). The bucket's `sum`
//!   of such points means nothing, which is why SDKs should be set to delta
//!   for counters whose rate matters.
//! - **histogram, exponential histogram, summary**: refused (in
//!   `partial_success`), since one bucket value cannot hold a distribution.
//!
//! The KPI code is the metric name with `.` read as `_`; a name that is still
//! not a code is refused per point. Point attributes become labels (resource
//! and scope attributes do not: they would spend the label budget on
//! `service.*` noise). `event_id` is derived from the name, attributes, times
//! and value, so an exporter's retry counts once. A point without a time gets
//! the server's clock.

use std::collections::{BTreeMap, HashMap};

use kpi_proto::v1::{Event, Status as EventStatus};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, NumberDataPoint,
};
use tonic::{Request, Response, Status};

use crate::accept::{content_id, Accept, Outcome, Refusal, Tally};
use crate::publishers::Publisher;

/// Reasons quoted in `partial_success.error_message`.
const REASONS_QUOTED: usize = 5;

/// Why a whole export is refused.
#[derive(Debug)]
pub enum ExportError {
    Refused(Refusal),
    /// Every point of the request was refused for its token.
    Denied(String),
    /// Some points were not confirmed by the bus; the exporter should retry
    /// the whole request (stored points count once).
    Unknown(String),
}

/// Maps and stores one export request.
pub async fn export(
    accept: &Accept,
    request: ExportMetricsServiceRequest,
    publisher: Option<&Publisher>,
) -> Result<ExportMetricsServiceResponse, ExportError> {
    let items = to_events(request);
    let mut tally = Tally::default();
    let mut reasons: Vec<String> = Vec::new();
    let mut rejected: i64 = 0;
    let outcomes = accept
        .publish_all(items, publisher)
        .await
        .map_err(ExportError::Refused)?;
    for o in outcomes {
        tally.add(&o);
        if matches!(o.status, EventStatus::Invalid) {
            rejected += 1;
            if reasons.len() < REASONS_QUOTED {
                reasons.push(o.reason);
            }
        } else if o.status == EventStatus::Unavailable {
            // The exporter retries the whole request; stored points count once.
            return Err(ExportError::Unknown(o.reason));
        }
    }
    if tally.all_denied() {
        return Err(ExportError::Denied(reasons.join("; ")));
    }
    let partial_success = (rejected > 0).then(|| ExportMetricsPartialSuccess {
        rejected_data_points: rejected,
        error_message: if rejected as usize > reasons.len() {
            format!(
                "{}; and {} more",
                reasons.join("; "),
                rejected as usize - reasons.len()
            )
        } else {
            reasons.join("; ")
        },
    });
    Ok(ExportMetricsServiceResponse { partial_success })
}

/// Every data point of the request as an event, or the reason it cannot be one.
pub fn to_events(request: ExportMetricsServiceRequest) -> Vec<Result<Event, Outcome>> {
    let mut out = Vec::new();
    for rm in request.resource_metrics {
        for sm in rm.scope_metrics {
            for metric in sm.metrics {
                let kpi = metric.name.replace('.', "_");
                let refuse_all = |out: &mut Vec<_>, n: usize, why: &str| {
                    for _ in 0..n {
                        out.push(Err(Outcome::refused(
                            "",
                            format!("metric {:?}: {why}", metric.name),
                        )));
                    }
                };
                match metric.data {
                    Some(Data::Gauge(g)) => {
                        out.extend(g.data_points.iter().map(|p| Ok(point(&kpi, "gauge", p))));
                    }
                    Some(Data::Sum(s)) => {
                        let kind = match AggregationTemporality::try_from(s.aggregation_temporality)
                        {
                            Ok(AggregationTemporality::Delta) => "delta",
                            Ok(AggregationTemporality::Cumulative) => "cumulative",
                            _ => {
                                refuse_all(
                                    &mut out,
                                    s.data_points.len(),
                                    "a sum needs delta or cumulative aggregation temporality",
                                );
                                continue;
                            }
                        };
                        out.extend(s.data_points.iter().map(|p| Ok(point(&kpi, kind, p))));
                    }
                    Some(Data::Histogram(h)) => refuse_all(
                        &mut out,
                        h.data_points.len(),
                        "histograms are not supported; export a gauge or a sum",
                    ),
                    Some(Data::ExponentialHistogram(h)) => refuse_all(
                        &mut out,
                        h.data_points.len(),
                        "exponential histograms are not supported; export a gauge or a sum",
                    ),
                    Some(Data::Summary(s)) => refuse_all(
                        &mut out,
                        s.data_points.len(),
                        "summaries are not supported; export a gauge or a sum",
                    ),
                    None => {}
                }
            }
        }
    }
    out
}

fn point(kpi: &str, kind: &str, p: &NumberDataPoint) -> Event {
    let value = match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        // i64 -> f64 rounds past 2^53, like every float-valued KPI.
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        // Validation refuses it with its own reason.
        None => f64::NAN,
    };
    let labels: BTreeMap<String, String> = p
        .attributes
        .iter()
        .map(|kv: &KeyValue| (kv.key.clone(), label_value(kv.value.as_ref())))
        .collect();
    let mut parts: Vec<Vec<u8>> = vec![
        kpi.as_bytes().to_vec(),
        kind.as_bytes().to_vec(),
        p.start_time_unix_nano.to_le_bytes().to_vec(),
        p.time_unix_nano.to_le_bytes().to_vec(),
        value.to_bits().to_le_bytes().to_vec(),
    ];
    for (k, v) in &labels {
        parts.push(k.as_bytes().to_vec());
        parts.push(v.as_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    // A point without a time is "now": no stable id could make its retry count once.
    let event_id = if p.time_unix_nano == 0 {
        String::new()
    } else {
        content_id("otlp", &refs)
    };
    let time = (p.time_unix_nano != 0).then_some(prost_types::Timestamp {
        seconds: (p.time_unix_nano / 1_000_000_000) as i64,
        nanos: (p.time_unix_nano % 1_000_000_000) as i32,
    });
    Event {
        event_id,
        kpi: kpi.to_owned(),
        value,
        time,
        labels: labels.into_iter().collect::<HashMap<_, _>>(),
    }
}

fn label_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// OTLP/gRPC `MetricsService` over the shared accept path.
#[derive(Clone)]
pub struct OtlpMetrics {
    accept: Accept,
}

impl OtlpMetrics {
    pub fn new(accept: Accept) -> Self {
        OtlpMetrics { accept }
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpMetrics {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let publisher = request.extensions().get::<Publisher>().cloned();
        match export(&self.accept, request.into_inner(), publisher.as_ref()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(ExportError::Refused(r)) => Err(crate::service::refusal_status(&r)),
            Err(ExportError::Denied(why)) => Err(Status::permission_denied(why)),
            // UNAVAILABLE is retryable for OTLP exporters; the retry carries the same ids.
            Err(ExportError::Unknown(why)) => Err(Status::unavailable(why)),
        }
    }
}
