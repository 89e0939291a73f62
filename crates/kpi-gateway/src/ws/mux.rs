//! `GET /ws`: one WebSocket for a whole dashboard, driven by `ClientMessage`s.
//!
//! Every client message gets a reply or an error; a bad message never closes
//! the socket (only flooding, oversize frames and slow reading do). A reply
//! about a subscription names its `kpi` and `period`. `subscribed` is queued
//! before the subscription's snapshot, so a dashboard can set up its widget first.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use kpi_core::message::{Pong, Reply, ReplyKind, MAX_PING_ID_BYTES};
use kpi_core::{Cadence, ClientMessage, ErrorMessage, KpiCode, Period, Topic};
use serde_json::Value;

use crate::fanout::outbox::Mode;
use crate::fanout::topic::Start;
use crate::metrics::Transport;
use crate::security::access::{Access, Caller};
use crate::security::audit;
use crate::session::{Session, Subscription};
use crate::state::AppState;
use crate::ws::connection::{self, error_bytes, push_reply, Flow, Inbound, Timing};
use crate::ws::upgrade::{Upgrade, UpgradeRejection};

pub(crate) async fn handler(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let admitted = match Session::admit(&app, caller, &headers, Transport::WsMux) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let session = admitted.open();
    ws.on_upgrade(move |socket| async move {
        let app = session.app().clone();
        let outbox = session.outbox().clone();
        let mux = Mux {
            session,
            subs: HashMap::new(),
            next_id: 1,
        };
        // `mux` (and with it every subscription, then the session) is
        // dropped when drive returns.
        connection::drive(
            socket,
            outbox,
            mux,
            Timing::from_settings(&app.settings),
            app.closing(),
        )
        .await;
    })
}

struct Mux {
    // Declared first: subscriptions go before the session that holds the slot.
    subs: HashMap<Topic, Subscription>,
    session: Session,
    next_id: u64,
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
        push_reply(self.session.outbox(), reply)
    }

    async fn handle(&mut self, text: &str) -> Result<Option<Bytes>, Refusal> {
        let msg = parse_client_message(text).map_err(|e| Refusal::new(e.code, e.message))?;
        match msg {
            ClientMessage::Auth { token } => self.reauthenticate(token.expose()).map(Some),
            ClientMessage::Subscribe {
                kpi,
                period,
                since,
                cadence,
                encoding,
            } => {
                let cadence = Cadence::parse_opt(cadence.as_deref()).map_err(|e| {
                    Refusal::new("invalid_cadence", e.to_string()).about(&kpi, &period)
                })?;
                let delta = crate::request::delta(encoding.as_deref())
                    .map_err(|m| Refusal::new("invalid_encoding", m).about(&kpi, &period))?;
                self.subscribe(&kpi, &period, since, Mode { cadence, delta })
                    .await
            }
            ClientMessage::Unsubscribe { kpi, period } => {
                let topic = parse_topic(&kpi, &period)?;
                if self.subs.remove(&topic).is_none() {
                    return Err(not_subscribed(&kpi, &period));
                }
                Ok(Some(reply(ReplyKind::Unsubscribed, Some(&topic))))
            }
            ClientMessage::Pause { kpi, period } => self.pause(kpi, period, true).map(Some),
            ClientMessage::Resume { kpi, period } => self.pause(kpi, period, false).map(Some),
            ClientMessage::Ping { id } => {
                // Echoed: an id of any size would make us write what a client
                // sends, as fast as it sends it.
                let size = id.as_ref().map_or(0, |v| v.to_string().len());
                if size > MAX_PING_ID_BYTES {
                    return Err(Refusal::new(
                        "bad_message",
                        format!("a ping id is at most {MAX_PING_ID_BYTES} bytes of JSON"),
                    ));
                }
                Ok(Some(Bytes::from(Pong::new(id).to_json())))
            }
        }
    }

    async fn subscribe(
        &mut self,
        kpi: &str,
        period: &str,
        since: Option<u64>,
        mode: Mode,
    ) -> Result<Option<Bytes>, Refusal> {
        let topic = parse_topic(kpi, period)?;
        let caller = self.session.caller();
        if !caller.access.may_read(&topic.code) {
            audit::denied("subscribe", "forbidden_kpi", caller.who(), Some(kpi));
            return Err(
                Refusal::new("forbidden", format!("this token may not read KPI {kpi:?}"))
                    .about(kpi, period),
            );
        }
        // Subscribing again to the same topic restarts it (fresh snapshot or
        // resume), which is also how a client switches its cadence.
        self.subs.remove(&topic);
        let max = self.session.app().settings.max_subscriptions;
        if self.subs.len() >= max {
            return Err(Refusal::new(
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            )
            .about(kpi, period));
        }
        let watch = self
            .session
            .watch(topic.clone())
            .await
            .map_err(|e| Refusal::new(e.code(), e.message()).about(kpi, period))?;
        // The ack goes out before the snapshot that attaching queues.
        if let Flow::Close { .. } = self.send(reply(ReplyKind::Subscribed, Some(&topic))) {
            return Err(Refusal::new("slow_consumer", "replies were not read"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let start = since.map_or(Start::Snapshot, Start::Since);
        self.subs
            .insert(topic, watch.attach(&self.session, id, start, mode));
        // The reply was queued above.
        Ok(None)
    }

    fn pause(
        &mut self,
        kpi: Option<String>,
        period: Option<String>,
        pause: bool,
    ) -> Result<Bytes, Refusal> {
        let what = if pause {
            ReplyKind::Paused
        } else {
            ReplyKind::Resumed
        };
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
            self.session.outbox().pause(sub);
        } else {
            self.session.outbox().resume(sub);
        }
        Ok(reply(what, topic.as_ref()))
    }
}

impl Mux {
    /// `{"type":"auth","token":..}`: a fresh token replaces the connection's
    /// grant and expiry; subscriptions it no longer covers are dropped, each
    /// with a `forbidden` error. A bad token changes nothing.
    fn reauthenticate(&mut self, token: &str) -> Result<Bytes, Refusal> {
        let grant = self.session.app().security.verify(token).map_err(|e| {
            audit::denied(
                "reauthenticate",
                e.reason(),
                self.session.caller().who(),
                None,
            );
            Refusal::new("unauthorized", e.to_string())
        })?;
        self.session.reauthenticate(Access::Token(grant));
        let caller = self.session.caller();
        audit::allowed("reauthenticate", caller.who(), "token refreshed");
        let lost: Vec<Topic> = self
            .subs
            .keys()
            .filter(|t| !caller.access.may_read(&t.code))
            .cloned()
            .collect();
        for topic in lost {
            self.subs.remove(&topic);
            audit::denied(
                "resubscribe",
                "forbidden_kpi",
                self.session.caller().who(),
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
        Ok(reply(ReplyKind::Authenticated, None))
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

fn reply(kind: ReplyKind, topic: Option<&Topic>) -> Bytes {
    Bytes::from(Reply::new(kind, topic.map(|t| (&t.code, t.period))).to_json())
}
