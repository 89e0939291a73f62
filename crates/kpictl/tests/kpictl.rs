//! `kpictl` against a running kpi-stack (and kpi-ingest for tokens): publish, get, watch, and its one-line errors.

use std::process::Output;
use std::time::Duration;

use kpi_test_support::{free_port, NatsServer, Service, Stack};
use tokio::io::{AsyncBufReadExt, BufReader};

/// kpi-stack on free ports; its `--listen` serves both ingest's HTTP and the gateway.
async fn stack() -> (Stack, String) {
    let stack = Stack::start(&[], &[]).await;
    let url = stack.http.clone();
    (stack, url)
}

async fn kpictl(url: &str, args: &[&str]) -> Output {
    kpictl_as(url, None, args).await
}

async fn kpictl_as(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kpictl"));
    cmd.args(args)
        .env("KPI_INGEST_URL", url)
        .env("KPI_GATEWAY_URL", url)
        .env_remove("KPI_TOKEN");
    if let Some(t) = token {
        cmd.env("KPI_TOKEN", t);
    }
    cmd.output().await.expect("kpictl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn publish_then_get_round_trips() {
    let (stack, url) = stack().await;
    let out = kpictl(
        &url,
        &[
            "publish",
            "orders",
            "42.5",
            "--label",
            "shop=eu",
            "--event-id",
            "k-1",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).starts_with("stored k-1"),
        "{}",
        text(&out.stdout)
    );
    // The same id again counts once.
    let out = kpictl(&url, &["publish", "orders", "42.5", "--event-id", "k-1"]).await;
    assert!(
        text(&out.stdout).starts_with("duplicate k-1"),
        "{}",
        text(&out.stdout)
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = kpictl(&url, &["get", "orders", "--period", "minute", "--json"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        if v["stats"]["count"] == 1 {
            assert_eq!(v["stats"]["last"], 42.5);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{v}\n{}",
            stack.service.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = kpictl(&url, &["get", "orders"]).await;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("orders") && shown.contains("42.5"),
        "{shown}"
    );

    // NDJSON from stdin.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kpictl"))
        .args(["publish", "-"])
        .env("KPI_INGEST_URL", &url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kpictl runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"{\"kpi\":\"orders\",\"value\":1}\n{\"kpi\":\"bad.code\",\"value\":2}\n")
            .await
            .expect("write");
    }
    let out = child.wait_with_output().await.expect("exits");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused line fails the command"
    );
    assert!(
        text(&out.stdout).contains("accepted 1 duplicates 0 refused 1"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("line 2: invalid kpi code"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn watch_json_sees_an_update_published_after_it_starts() {
    let (_stack, url) = stack().await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_kpictl"))
        .args([
            "watch",
            "signups",
            "--period",
            "minute",
            "--json",
            "--cadence",
            "live",
        ])
        .env("KPI_GATEWAY_URL", &url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kpictl runs");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a snapshot within 10 s")
        .expect("read")
        .expect("a line");
    let first: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(first["type"], "snapshot");

    let out = kpictl(&url, &["publish", "signups", "7"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            if v["stats"]["last"] == 7.0 {
                return v;
            }
        }
        panic!("watch ended without the update");
    })
    .await
    .expect("the update within 10 s");
    assert_eq!(seen["type"], "update");
    assert_eq!(seen["kpi"], "signups");
}

#[tokio::test]
async fn wrong_url_invalid_code_and_refused_token_each_get_one_clear_line() {
    let nothing = format!("http://127.0.0.1:{}", free_port());
    let out = kpictl(&nothing, &["publish", "orders", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach ingest") && err.contains(&nothing),
        "{err}"
    );

    let out = kpictl(&nothing, &["get", "a.b"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid kpi code \"a.b\""), "{err}");

    let out = kpictl("not a url", &["get", "orders"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A refused token: kpi-ingest with a publisher token, on NATS.
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .expect("nats-server starts");
    let (grpc, http) = (free_port(), free_port());
    let ingest = Service::spawn(
        "kpi-ingest",
        &[
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--http-listen",
            &format!("127.0.0.1:{http}"),
            "--publisher-token",
            "right-token",
        ],
        &[("NATS_URL", &nats.url())],
    );
    let url = format!("http://127.0.0.1:{http}");
    ingest
        .wait_http_ok(&format!("{url}/readyz"), Duration::from_secs(30))
        .await;
    let out = kpictl_as(&url, Some("wrong-token"), &["publish", "orders", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("refused the token (401"), "{err}");
    let out = kpictl_as(&url, Some("right-token"), &["publish", "orders", "1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}
