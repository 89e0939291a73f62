//! `kpi-stack` takes the services' security flags: the one-process mode can be secured like the separate services.

mod common;

use std::time::{Duration, SystemTime};

use common::{event, get_json, publish, unique};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::PublishRequest;
use kpi_test_support::{free_port, Service};

const PUBLISHER_TOKEN: &str = "stack-publisher-token-0123456789";

#[tokio::test]
async fn anonymous_readers_and_tokenless_publishers_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, "an-hs256-secret-of-at-least-32-bytes!!").expect("write secret");
    let (http, grpc) = (free_port(), free_port());
    let stack = Service::spawn(
        "kpi-stack",
        &[
            "--listen",
            &format!("127.0.0.1:{http}"),
            "--grpc-listen",
            &format!("127.0.0.1:{grpc}"),
            "--allow-anonymous",
            "false",
            "--jwt-hs256-secret-file",
            &secret.display().to_string(),
            "--publisher-token",
            PUBLISHER_TOKEN,
        ],
        &[],
    );
    stack
        .wait_http_ok(
            &format!("http://127.0.0.1:{http}/readyz"),
            Duration::from_secs(30),
        )
        .await;

    let code = unique("stack_secured");
    let (status, body) = get_json(&format!(
        "http://127.0.0.1:{http}/api/kpi/{code}?period=minute"
    ))
    .await;
    assert_eq!(status, 401, "an anonymous snapshot was served: {body}");

    let mut client = IngestClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect to ingest");
    let refused = publish(&mut client, vec![event("", &code, 1.0, SystemTime::now())]).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unauthenticated),
        "a publisher without the token was served\n{}",
        stack.logs()
    );
    let mut request = tonic::Request::new(PublishRequest {
        events: vec![event("", &code, 1.0, SystemTime::now())],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {PUBLISHER_TOKEN}")
            .parse()
            .expect("header value"),
    );
    let accepted = client.publish(request).await;
    assert!(
        accepted.is_ok(),
        "the configured publisher token was refused: {accepted:?}\n{}",
        stack.logs()
    );
}
