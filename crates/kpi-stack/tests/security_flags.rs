//! `kpi-stack` takes the services' security flags: the one-process mode can be secured like the separate services.

mod common;

use std::time::SystemTime;

use common::{event, get_json, publish, unique};
use kpi_proto::v1::ingest_client::IngestClient;
use kpi_proto::v1::PublishRequest;
use kpi_test_support::Stack;

const PUBLISHER_TOKEN: &str = "stack-publisher-token-0123456789";

#[tokio::test]
async fn anonymous_readers_and_tokenless_publishers_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hs256.secret");
    std::fs::write(&secret, "an-hs256-secret-of-at-least-32-bytes!!").expect("write secret");
    let stack = Stack::start(
        &[
            "--allow-anonymous",
            "false",
            "--jwt-hs256-secret-file",
            &secret.display().to_string(),
            "--publisher-token",
            PUBLISHER_TOKEN,
        ],
        &[],
    )
    .await;

    let code = unique("stack_secured");
    let (status, body) = get_json(&format!("{}/api/kpi/{code}?period=minute", stack.http)).await;
    assert_eq!(status, 401, "an anonymous snapshot was served: {body}");

    let mut client = IngestClient::connect(format!("http://{}", stack.grpc))
        .await
        .expect("connect to ingest");
    let refused = publish(&mut client, vec![event("", &code, 1.0, SystemTime::now())]).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unauthenticated),
        "a publisher without the token was served\n{}",
        stack.service.logs()
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
        stack.service.logs()
    );
}
