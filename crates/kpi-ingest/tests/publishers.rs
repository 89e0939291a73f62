//! Publisher access: per-token KPI prefixes, the per-token publish rate, and gRPC over (mutual) TLS.

mod common;

use std::time::Duration;

use common::{event, Harness};
use kpi_ingest::{IngestSettings, TlsFiles};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::{PublishRequest, Status as EventStatus};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

const OPS: &str = "ops-token-0123456789abcdef";
const ALL: &str = "all-token-0123456789abcdef";

fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

fn batch(events: Vec<kpi_proto::v1::Event>) -> PublishRequest {
    PublishRequest { events }
}

fn tokens_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("publishers");
    std::fs::write(
        &path,
        format!("# test tokens\n{OPS} ops_*,infra_cpu\n{ALL} *\n"),
    )
    .expect("write tokens");
    path
}

#[tokio::test]
async fn an_ops_token_cannot_publish_sales() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(IngestSettings {
        publisher_tokens_file: Some(tokens_file(&dir)),
        publisher_token: Some("legacy-flag-token".into()),
        ..Default::default()
    })
    .await;
    let mut client = h.client().await;

    // A single refused event: the whole call is PERMISSION_DENIED.
    let err = client
        .publish(with(OPS, batch(vec![event("p-1", "sales_eu", 1.0)])))
        .await
        .expect_err("ops may not publish sales");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("permission denied: token may not publish sales_eu"),
        "{}",
        err.message()
    );

    // In a batch, only the foreign event is refused, with its reason.
    let resp = client
        .publish(with(
            OPS,
            batch(vec![
                event("p-2", "ops_disk", 1.0),
                event("p-3", "sales_eu", 1.0),
                event("p-4", "infra_cpu", 1.0),
            ]),
        ))
        .await
        .expect("mixed batch")
        .into_inner();
    assert_eq!((resp.accepted, resp.refused), (2, 1));
    let refused = &resp.results[1];
    assert_eq!(refused.status(), EventStatus::Invalid);
    assert_eq!(
        refused.reason,
        "permission denied: token may not publish sales_eu"
    );

    // The same on a stream, event by event.
    let acks: Vec<_> = client
        .publish_stream(with(
            OPS,
            tokio_stream::iter(vec![
                event("s-1", "sales_eu", 1.0),
                event("s-2", "ops_net", 1.0),
            ]),
        ))
        .await
        .expect("stream")
        .into_inner()
        .collect_acks()
        .await;
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].status(), EventStatus::Invalid);
    assert!(acks[0].reason.starts_with("permission denied"));
    assert_eq!(acks[1].status(), EventStatus::Stored);

    // The `*` token and the single --publisher-token may publish anything.
    for token in [ALL, "legacy-flag-token"] {
        let ok = client
            .publish(with(token, batch(vec![event(token, "sales_eu", 1.0)])))
            .await
            .expect("any KPI");
        assert_eq!(ok.into_inner().accepted, 1);
    }
    let err = client
        .publish(with(
            "not-a-token-at-all",
            batch(vec![event("x", "ops_a", 1.0)]),
        ))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Every refusal is counted by reason (the recorder is per process, so
    // other tests' refusals may add to these).
    let (status, page) = kpi_test_support::http_get(&h.http_url("/metrics")).await;
    assert_eq!(status, 200);
    let denied = |reason: &str| -> f64 {
        let series = format!("kpi_ingest_auth_denied_total{{reason=\"{reason}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert!(denied("forbidden_kpi") >= 3.0, "{page}");
    assert!(denied("bad_token") >= 1.0, "{page}");
}

#[tokio::test]
async fn publishes_per_token_are_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(IngestSettings {
        publisher_tokens_file: Some(tokens_file(&dir)),
        max_publishes_per_token_per_sec: 5,
        ..Default::default()
    })
    .await;
    let mut client = h.client().await;
    let five: Vec<_> = (0..5)
        .map(|i| event(&format!("r-{i}"), "ops_a", 1.0))
        .collect();
    client
        .publish(with(OPS, batch(five)))
        .await
        .expect("within the rate");
    let err = client
        .publish(with(OPS, batch(vec![event("r-x", "ops_a", 1.0)])))
        .await
        .expect_err("over the rate");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("rate_limited"));
    // Another token has its own budget.
    client
        .publish(with(ALL, batch(vec![event("r-y", "ops_a", 1.0)])))
        .await
        .expect("other token");

    // A stream past the budget ends RESOURCE_EXHAUSTED after acking what it took.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let events: Vec<_> = (0..50)
        .map(|i| event(&format!("st-{i}"), "ops_a", 1.0))
        .collect();
    let mut stream = client
        .publish_stream(with(OPS, tokio_stream::iter(events)))
        .await
        .expect("stream")
        .into_inner();
    let mut acked = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => acked += 1,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(end.map(|s| s.code()), Some(Code::ResourceExhausted));
    assert!((1..50).contains(&acked), "acked {acked}");
}

/// A CA, a server certificate for `localhost` and a client certificate, made at test time.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kpistream test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("publisher-1", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

async fn tls_client(
    h: &Harness,
    pki: &Pki,
    client_cert: bool,
) -> Result<IngestClient<Channel>, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    let channel = Channel::from_shared(format!("https://{}", h.grpc))
        .expect("uri")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(IngestClient::new(channel))
}

#[tokio::test]
async fn grpc_over_tls_and_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let files = TlsFiles {
        cert: write("server.pem", &pki.server.0),
        key: write("server.key", &pki.server.1),
        client_ca: None,
    };

    // TLS: a client that trusts the CA publishes; a plaintext one cannot.
    let h = Harness::start_with(IngestSettings {
        tls: Some(files.clone()),
        ..Default::default()
    })
    .await;
    let mut client = tls_client(&h, &pki, false).await.expect("TLS connect");
    let ok = client
        .publish(batch(vec![event("tls-1", "k", 1.0)]))
        .await
        .expect("publish over TLS");
    assert_eq!(ok.into_inner().accepted, 1);
    let mut plain = h.client().await;
    assert!(plain
        .publish(batch(vec![event("tls-2", "k", 1.0)]))
        .await
        .is_err());
    h.shutdown.trigger();

    // mTLS: without a client certificate the call fails; with one it works.
    let h = Harness::start_with(IngestSettings {
        tls: Some(TlsFiles {
            client_ca: Some(write("ca.pem", &pki.ca)),
            ..files
        }),
        ..Default::default()
    })
    .await;
    let refused = match tls_client(&h, &pki, false).await {
        Err(_) => true,
        Ok(mut c) => c
            .publish(batch(vec![event("m-1", "k", 1.0)]))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let mut client = tls_client(&h, &pki, true).await.expect("mTLS connect");
    let ok = client
        .publish(batch(vec![event("m-2", "k", 1.0)]))
        .await
        .expect("publish over mTLS");
    assert_eq!(ok.into_inner().accepted, 1);
    h.shutdown.trigger();
}

trait CollectAcks {
    async fn collect_acks(self) -> Vec<kpi_proto::v1::PublishAck>;
}

impl CollectAcks for tonic::Streaming<kpi_proto::v1::PublishAck> {
    async fn collect_acks(mut self) -> Vec<kpi_proto::v1::PublishAck> {
        let mut out = Vec::new();
        while let Ok(Some(ack)) = self.message().await {
            out.push(ack);
        }
        out
    }
}

/// OTLP/gRPC on the gRPC port passes the same token check and KPI patterns as Ingest.
#[tokio::test]
async fn otlp_grpc_export_needs_a_token_that_may_publish_the_metric() {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let h = Harness::start_with(IngestSettings {
        publisher_tokens_file: Some(tokens_file(&dir)),
        ..Default::default()
    })
    .await;
    let gauge = |name: &str| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            value: Some(Value::AsDouble(1.0)),
                            time_unix_nano: u64::try_from(chrono::Utc::now().timestamp() - 60)
                                .expect("after 1970")
                                * 1_000_000_000,
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut client = MetricsServiceClient::new(h.channel().await);
    let err = client
        .export(gauge("ops.disk"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let ok = client
        .export(with(OPS, gauge("ops.disk")))
        .await
        .expect("ops may publish ops_disk")
        .into_inner();
    assert!(ok.partial_success.is_none(), "{ok:?}");
    let err = client
        .export(with(OPS, gauge("sales.eu")))
        .await
        .expect_err("ops may not publish sales_eu");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("token may not publish sales_eu"),
        "{}",
        err.message()
    );
}
