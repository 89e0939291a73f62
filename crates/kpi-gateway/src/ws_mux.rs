//! `GET /ws`: one WebSocket for a whole dashboard, driven by `ClientMessage`s.
//!
//! Every client message gets a reply or an error; a bad message never closes
//! the socket (only flooding, oversize frames and slow reading do). A reply
//! about a subscription names its `kpi` and `period`. `subscribed` is queued
//! before the subscription's snapshot, so a dashboard can set up its widget first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kpi_core::{ClientMessage, ErrorMessage, KpiCode, Period, Topic};
use serde_json::{json, Value};

use crate::access::{Access, Caller, ExpiryWatch};
use crate::admin::Registered;
use crate::audit;
use crate::close_codes;
use crate::connection::{self, error_bytes, Flow, Inbound, Timing};
use crate::hub::Subscription;
use crate::limits::Permit;
use crate::metrics::Transport;
use crate::outbox::Outbox;
use crate::rate::{RateLimiter, Verdict};
use crate::server::AppState;
use crate::topic::Start;
use crate::ws_upgrade::{RawSocket, Upgrade, UpgradeRejection};

/// At most one `rate_limited` reply per this interval: answering every
/// flooded message would make us write as fast as the flooder writes.
const RATE_REPLY_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if let Err(e) = app.security.admit(&caller, &headers) {
        return e.into_response();
    }
    let permit = match crate::ws::too_many(app.connections.try_acquire(Transport::WsMux)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    ws.on_upgrade(move |socket| serve(socket, app, permit, caller))
}

async fn serve(socket: RawSocket, app: AppState, permit: Permit, caller: Caller) {
    let outbox = Outbox::new(app.settings.queue_capacity);
    let expiry = ExpiryWatch::start(
        &outbox,
        caller.access.expires_at(),
        caller.access.subject().map(str::to_owned),
    );
    let mux = Mux {
        _listed: app.security.clients().register(&outbox),
        expiry,
        caller,
        limiter: RateLimiter::new(app.settings.max_messages_per_sec),
        last_rate_reply: None,
        subs: HashMap::new(),
        next_id: 1,
        outbox: outbox.clone(),
        app: app.clone(),
    };
    let timing = Timing::from_settings(&app.settings);
    // `mux` (and with it every subscription) is dropped when drive returns.
    connection::drive(socket, outbox, mux, timing, app.shutdown.clone()).await;
    drop(permit);
}

struct Mux {
    app: AppState,
    /// Who this connection is; replaced by a refreshing `auth` message.
    caller: Caller,
    expiry: ExpiryWatch,
    _listed: Registered,
    outbox: Outbox,
    subs: HashMap<Topic, Subscription>,
    next_id: u64,
    limiter: RateLimiter,
    last_rate_reply: Option<Instant>,
}

/// Why a message was refused: machine code, human text, and the subscription it was about.
struct Refusal {
    code: &'static str,
    message: String,
    about: Option<(String, String)>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            about: None,
        }
    }

    fn about(mut self, kpi: &str, period: &str) -> Self {
        self.about = Some((kpi.to_string(), period.to_string()));
        self
    }
}

impl Inbound for Mux {
    async fn on_text(&mut self, text: &str) -> Flow {
        if let Some(flow) = self.rate_check() {
            return flow;
        }
        let reply = match self.handle(text).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Flow::Continue,
            Err(r) => {
                crate::metrics::rejected(r.code);
                let mut e = ErrorMessage::new(r.code, r.message);
                if let Some((kpi, period)) = r.about {
                    e = e.about(&kpi, &period);
                }
                error_bytes(&e)
            }
        };
        self.send(reply)
    }

    async fn on_binary(&mut self) -> Flow {
        if let Some(flow) = self.rate_check() {
            return flow;
        }
        crate::metrics::rejected("bad_message");
        let e = ErrorMessage::new(
            "bad_message",
            "binary frames are not accepted; send JSON text",
        );
        self.send(error_bytes(&e))
    }
}

impl Mux {
    fn send(&self, reply: Bytes) -> Flow {
        if self.outbox.push_control(reply) {
            Flow::Continue
        } else {
            crate::metrics::slow_consumer_closed();
            let e = ErrorMessage::new("slow_consumer", "replies were not read");
            Flow::Close {
                code: close_codes::SLOW_CONSUMER,
                reason: "slow consumer",
                error: Some(error_bytes(&e)),
            }
        }
    }

    /// `Some` when this message must not be handled.
    fn rate_check(&mut self) -> Option<Flow> {
        match self.limiter.check() {
            Verdict::Allow => None,
            Verdict::Limited => {
                crate::metrics::rejected("rate_limited");
                let due = self
                    .last_rate_reply
                    .is_none_or(|t| t.elapsed() >= RATE_REPLY_EVERY);
                if !due {
                    return Some(Flow::Continue);
                }
                self.last_rate_reply = Some(Instant::now());
                let e = ErrorMessage::new(
                    "rate_limited",
                    format!(
                        "more than {} messages per second; this message was ignored",
                        self.app.settings.max_messages_per_sec
                    ),
                );
                Some(self.send(error_bytes(&e)))
            }
            Verdict::Abuse => {
                crate::metrics::rejected("flooding");
                let e = ErrorMessage::new("rate_limited", "kept flooding past the rate limit");
                Some(Flow::Close {
                    code: close_codes::POLICY,
                    reason: "rate limit exceeded",
                    error: Some(error_bytes(&e)),
                })
            }
        }
    }

    async fn handle(&mut self, text: &str) -> Result<Option<Bytes>, Refusal> {
        let msg = parse_client_message(text).map_err(|e| Refusal::new(e.code, e.message))?;
        match msg {
            ClientMessage::Auth { token } => self.reauthenticate(token.expose()).map(Some),
            ClientMessage::Subscribe { kpi, period, since } => {
                self.subscribe(&kpi, &period, since).await
            }
            ClientMessage::Unsubscribe { kpi, period } => {
                let topic = parse_topic(&kpi, &period)?;
                if self.subs.remove(&topic).is_none() {
                    return Err(not_subscribed(&kpi, &period));
                }
                Ok(Some(reply("unsubscribed", Some(&topic))))
            }
            ClientMessage::Pause { kpi, period } => self.pause(kpi, period, true).map(Some),
            ClientMessage::Resume { kpi, period } => self.pause(kpi, period, false).map(Some),
            ClientMessage::Ping { id } => Ok(Some(Bytes::from(
                json!({"type": "pong", "id": id.unwrap_or(Value::Null)}).to_string(),
            ))),
        }
    }

    async fn subscribe(
        &mut self,
        kpi: &str,
        period: &str,
        since: Option<u64>,
    ) -> Result<Option<Bytes>, Refusal> {
        let topic = parse_topic(kpi, period)?;
        if !self.caller.access.may_read(&topic.code) {
            audit::denied("subscribe", "forbidden_kpi", self.caller.who(), Some(kpi));
            return Err(
                Refusal::new("forbidden", format!("this token may not read KPI {kpi:?}"))
                    .about(kpi, period),
            );
        }
        // Subscribing again to the same topic restarts it (fresh snapshot or resume).
        self.subs.remove(&topic);
        if self.subs.len() >= self.app.settings.max_subscriptions {
            return Err(Refusal::new(
                "too_many_subscriptions",
                format!(
                    "at most {} subscriptions per connection",
                    self.app.settings.max_subscriptions
                ),
            )
            .about(kpi, period));
        }
        let interest = self.app.hub.watch(topic.clone()).await.map_err(|e| {
            Refusal::new("unavailable", format!("cannot subscribe right now: {e}"))
                .about(kpi, period)
        })?;
        // The ack goes out before the snapshot that attach queues.
        if let Flow::Close { .. } = self.send(reply("subscribed", Some(&topic))) {
            return Err(Refusal::new("slow_consumer", "replies were not read"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let start = since.map_or(Start::Snapshot, Start::Since);
        self.subs
            .insert(topic, interest.attach(&self.outbox, id, start));
        // The reply was queued above.
        Ok(None)
    }

    fn pause(
        &mut self,
        kpi: Option<String>,
        period: Option<String>,
        pause: bool,
    ) -> Result<Bytes, Refusal> {
        let what = if pause { "paused" } else { "resumed" };
        let topic = match (kpi, period) {
            (None, None) => None,
            (Some(kpi), period) => {
                let period = period.unwrap_or_else(|| Period::Minute.as_str().to_string());
                let topic = parse_topic(&kpi, &period)?;
                Some(topic)
            }
            (None, Some(_)) => {
                return Err(Refusal::new(
                    "bad_message",
                    "a period without a kpi; give both or neither",
                ))
            }
        };
        let sub = match &topic {
            None => None,
            Some(t) => match self.subs.get(t) {
                Some(s) => Some(s.id()),
                None => return Err(not_subscribed(t.code.as_str(), t.period.as_str())),
            },
        };
        if pause {
            self.outbox.pause(sub);
        } else {
            self.outbox.resume(sub);
        }
        Ok(reply(what, topic.as_ref()))
    }
}

impl Mux {
    /// `{"type":"auth","token":..}`: a fresh token replaces the connection's
    /// grant and expiry; subscriptions it no longer covers are dropped, each
    /// with a `forbidden` error. A bad token changes nothing.
    fn reauthenticate(&mut self, token: &str) -> Result<Bytes, Refusal> {
        let grant = self.app.security.verify(token).map_err(|e| {
            audit::denied("reauthenticate", e.reason(), self.caller.who(), None);
            Refusal::new("unauthorized", e.to_string())
        })?;
        self.expiry.set(Some(grant.expires_at));
        self.caller.access = Access::Token(grant);
        audit::allowed("reauthenticate", self.caller.who(), "token refreshed");
        let lost: Vec<Topic> = self
            .subs
            .keys()
            .filter(|t| !self.caller.access.may_read(&t.code))
            .cloned()
            .collect();
        for topic in lost {
            self.subs.remove(&topic);
            audit::denied(
                "resubscribe",
                "forbidden_kpi",
                self.caller.who(),
                Some(topic.code.as_str()),
            );
            let e = ErrorMessage::new(
                "forbidden",
                "the refreshed token may not read this KPI; the subscription was dropped",
            )
            .about(topic.code.as_str(), topic.period.as_str());
            if let Flow::Close { .. } = self.send(error_bytes(&e)) {
                return Err(Refusal::new("slow_consumer", "replies were not read"));
            }
        }
        Ok(reply("authenticated", None))
    }
}

/// Why a client message could not be parsed: a machine code and a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
}

/// Parses one `/ws` text message. Pure and total: any input yields a message
/// or a [`ParseError`] (`bad_message` or `unknown_type`), never a panic.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    let bad = |message: String| ParseError {
        code: "bad_message",
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad("a message is a JSON object with a string \"type\"".into()))?;
    if !matches!(
        kind.as_str(),
        "subscribe" | "unsubscribe" | "pause" | "resume" | "ping" | "auth"
    ) {
        let shown: String = kind.chars().take(32).collect();
        return Err(ParseError {
            code: "unknown_type",
            message: format!(
                "unknown message type {shown:?}; use subscribe, unsubscribe, pause, resume, ping or auth"
            ),
        });
    }
    serde_json::from_value(value).map_err(|e| bad(format!("malformed {kind} message: {e}")))
}

fn parse_topic(kpi: &str, period: &str) -> Result<Topic, Refusal> {
    let code = KpiCode::parse(kpi)
        .map_err(|e| Refusal::new("invalid_kpi", e.to_string()).about(kpi, period))?;
    let period_v = Period::parse(period)
        .map_err(|e| Refusal::new("invalid_period", e.to_string()).about(kpi, period))?;
    Ok(Topic::new(code, period_v))
}

fn not_subscribed(kpi: &str, period: &str) -> Refusal {
    Refusal::new("not_subscribed", "no such subscription on this connection").about(kpi, period)
}

fn reply(kind: &str, topic: Option<&Topic>) -> Bytes {
    let v = match topic {
        Some(t) => json!({"type": kind, "kpi": t.code.as_str(), "period": t.period.as_str()}),
        None => json!({"type": kind}),
    };
    Bytes::from(v.to_string())
}
