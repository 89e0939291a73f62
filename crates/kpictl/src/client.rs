//! HTTP calls to ingest and the gateway, with every failure turned into one line a person can act on.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

/// Why a command failed: the line to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

impl Failure {
    /// The command line itself is wrong (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            exit: 2,
        }
    }

    /// Anything else (exit 1).
    pub fn other(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            exit: 1,
        }
    }
}

/// Talks to one ingest and one gateway.
pub struct Client {
    http: reqwest::Client,
    ingest: String,
    gateway: String,
    token: Option<String>,
}

/// Which service a request went to, for messages.
#[derive(Clone, Copy)]
pub enum Side {
    Ingest,
    Gateway,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ingest => "ingest (KPI_INGEST_URL)",
            Side::Gateway => "the gateway (KPI_GATEWAY_URL)",
        }
    }
}

impl Client {
    pub fn new(ingest: &str, gateway: &str, token: Option<String>) -> Result<Self, Failure> {
        for (url, what) in [(ingest, "KPI_INGEST_URL"), (gateway, "KPI_GATEWAY_URL")] {
            if reqwest::Url::parse(url).map(|u| u.scheme().starts_with("http")) != Ok(true) {
                return Err(Failure::usage(format!(
                    "{what} {url:?} is not an http:// or https:// URL"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Failure::other(format!("cannot set up HTTP: {e}")))?;
        Ok(Client {
            http,
            ingest: ingest.trim_end_matches('/').to_owned(),
            gateway: gateway.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    pub fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; a network failure or an error status becomes one line.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        side: Side,
        url: &str,
    ) -> Result<reqwest::Response, Failure> {
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "nothing answers there (wrong URL, or the service is not running?)".to_owned()
            } else if e.is_timeout() {
                "timed out".to_owned()
            } else {
                root_cause(&e)
            };
            Failure::other(format!("cannot reach {} at {url}: {why}", side.name()))
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let parsed = serde_json::from_str::<Value>(&body).ok();
        let mut detail = parsed
            .as_ref()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        // A refused batch names why its first event was refused.
        if let Some(reason) = parsed
            .as_ref()
            .and_then(|v| v["results"][0]["reason"].as_str())
            .filter(|r| !r.is_empty())
        {
            detail = format!("{detail}: {reason}");
        }
        let message = match status.as_u16() {
            401 => format!(
                "{} refused the token (401 unauthorized): {detail}; set KPI_TOKEN",
                side.name()
            ),
            403 => format!(
                "{} refused the token (403 forbidden): {detail}",
                side.name()
            ),
            404 => format!(
                "{url}: not found (404); is this the right URL for {}?",
                side.name()
            ),
            code => format!("{} answered {code}: {detail}", side.name()),
        };
        Err(Failure::other(message))
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let url = self.gateway_url(path);
        let resp = self
            .send(
                self.request(reqwest::Method::GET, &url),
                Side::Gateway,
                &url,
            )
            .await?;
        resp.json()
            .await
            .map_err(|e| Failure::other(format!("{url}: the answer is not JSON: {e}")))
    }

    async fn post_events(&self, body: reqwest::Body, content_type: &str) -> Result<Value, Failure> {
        let url = format!("{}/v1/events", self.ingest);
        let req = self
            .request(reqwest::Method::POST, &url)
            .header("content-type", content_type)
            .body(body);
        let resp = self.send(req, Side::Ingest, &url).await?;
        resp.json()
            .await
            .map_err(|e| Failure::other(format!("{url}: the answer is not JSON: {e}")))
    }

    /// One event; prints `stored` / `duplicate` with its seq.
    pub async fn publish_one(&self, event: Value) -> Result<(), Failure> {
        let answer = self
            .post_events(event.to_string().into(), "application/json")
            .await?;
        let first = &answer["results"][0];
        match first["status"].as_str() {
            Some(s @ ("stored" | "duplicate")) => {
                println!(
                    "{s} {} seq {}",
                    first["event_id"].as_str().unwrap_or(""),
                    first["seq"]
                );
                Ok(())
            }
            _ => Err(Failure::other(format!(
                "refused: {}",
                first["reason"].as_str().unwrap_or("no reason given")
            ))),
        }
    }

    /// NDJSON from stdin, streamed; prints the totals and each refused line.
    pub async fn publish_stdin(&self) -> Result<(), Failure> {
        let stdin = tokio_util::io::ReaderStream::new(tokio::io::stdin());
        let body = reqwest::Body::wrap_stream(stdin.map(|r| r.map(|b| b.to_vec())));
        let answer = self.post_events(body, "application/x-ndjson").await?;
        let mut refused = 0;
        if let Some(results) = answer["results"].as_array() {
            for r in results {
                if !matches!(r["status"].as_str(), Some("stored" | "duplicate")) {
                    refused += 1;
                    eprintln!(
                        "line {}: {}",
                        r["index"].as_u64().map_or(0, |i| i + 1),
                        r["reason"].as_str().unwrap_or("")
                    );
                }
            }
        }
        println!(
            "accepted {} duplicates {} refused {}",
            answer["accepted"], answer["duplicates"], answer["refused"]
        );
        if refused > 0 || answer["refused"].as_u64().unwrap_or(0) > 0 {
            return Err(Failure::other("some events were refused (see above)"));
        }
        Ok(())
    }
}

/// The innermost error's text, which is the one that says what went wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
