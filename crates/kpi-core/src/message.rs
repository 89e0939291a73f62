//! The JSON messages clients receive and send; the contract in BRIEF.md, in types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::code::KpiCode;
use crate::period::Period;
pub use crate::stats::StatsView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Snapshot,
    Update,
}

/// A closed bucket: where it started and what it held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BucketView {
    #[serde(with = "crate::time")]
    pub bucket_start: DateTime<Utc>,
    pub stats: StatsView,
}

/// The one data message: the aggregator publishes it as an `update`, the
/// gateway relays those bytes untouched and re-labels a stored one as a
/// `snapshot` for a new subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateMessage {
    #[serde(rename = "type")]
    pub kind: UpdateKind,
    pub kpi: KpiCode,
    pub period: Period,
    /// Grows by one with every update of this KPI and period; 0 means "no data yet".
    pub seq: u64,
    #[serde(with = "crate::time")]
    pub bucket_start: DateTime<Utc>,
    pub stats: StatsView,
    pub previous: Option<BucketView>,
    /// Event time of the latest event applied to this KPI and period.
    #[serde(with = "crate::time::option")]
    pub event_time: Option<DateTime<Utc>>,
    /// When the aggregator published this value.
    #[serde(with = "crate::time")]
    pub updated_at: DateTime<Utc>,
    /// True when this revises a bucket older than the current one (a late event).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub correction: bool,
}

impl UpdateMessage {
    /// The message for a KPI nobody has published yet, so a dashboard can
    /// subscribe before the first event and still get a snapshot first.
    pub fn empty(kpi: KpiCode, period: Period, now: DateTime<Utc>) -> Self {
        UpdateMessage {
            kind: UpdateKind::Snapshot,
            kpi,
            period,
            seq: 0,
            bucket_start: period.bucket_start(now),
            stats: crate::stats::Stats::default().view(),
            previous: None,
            event_time: None,
            updated_at: now,
            correction: false,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Plain data with string keys and finite floats: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(raw: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

/// `{"type":"error","code":..,"message":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    #[serde(rename = "type")]
    pub kind: ErrorTag,
    pub code: String,
    pub message: String,
    /// The subscription the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ErrorTag {
    #[default]
    Error,
}

impl ErrorMessage {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorMessage {
            kind: ErrorTag::Error,
            code: code.into(),
            message: message.into(),
            kpi: None,
            period: None,
        }
    }

    pub fn about(mut self, kpi: &str, period: &str) -> Self {
        self.kpi = Some(kpi.chars().take(80).collect());
        self.period = Some(period.chars().take(16).collect());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a dashboard sends on the multiplexed `/ws` socket.
///
/// KPI and period stay plain strings here so that the gateway can answer a bad
/// one with an error about that subscription instead of a parse failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Subscribe {
        kpi: String,
        period: String,
        #[serde(default)]
        since: Option<u64>,
        /// `live` (absent), `<N>s`, `<N>m` or `close`; checked by the gateway
        /// so a bad value gets a clear error naming it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cadence: Option<String>,
        /// `full` (absent) or `delta`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoding: Option<String>,
    },
    Unsubscribe {
        kpi: String,
        period: String,
    },
    /// Without kpi/period: the whole connection.
    Pause {
        #[serde(default)]
        kpi: Option<String>,
        #[serde(default)]
        period: Option<String>,
    },
    Resume {
        #[serde(default)]
        kpi: Option<String>,
        #[serde(default)]
        period: Option<String>,
    },
    Ping {
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
    /// A fresh JWT for this connection: its KPI list replaces the old one,
    /// and its expiry becomes the connection's.
    Auth {
        token: Secret,
    },
}

/// A credential inside a message: `Debug` never shows it, so logging a
/// message cannot leak a token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The reply to a `/ws` client message: `{"type":"subscribed","kpi":..,"period":..}`,
/// or without `kpi`/`period` when it is about the whole connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(rename = "type")]
    pub kind: ReplyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi: Option<KpiCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyKind {
    Subscribed,
    Unsubscribed,
    Paused,
    Resumed,
    Authenticated,
}

impl Reply {
    /// A reply about one topic, or about the connection with `None`.
    pub fn new(kind: ReplyKind, topic: Option<(&KpiCode, Period)>) -> Self {
        Reply {
            kind,
            kpi: topic.map(|(k, _)| k.clone()),
            period: topic.map(|(_, p)| p),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Longest `id` a `/ws` ping may carry, as JSON text; the pong echoes it.
pub const MAX_PING_ID_BYTES: usize = 128;

/// `{"type":"pong","id":..}`: the answer to a `/ws` ping, with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    #[serde(rename = "type")]
    pub kind: PongTag,
    pub id: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PongTag {
    #[default]
    Pong,
}

impl Pong {
    pub fn new(id: Option<serde_json::Value>) -> Self {
        Pong {
            kind: PongTag::Pong,
            id: id.unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What an admin broadcast carries between gateways (and is stored as the
/// maintenance state): the text, when it was sent, and for maintenance its
/// new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub message: String,
    /// RFC 3339, when the admin call was made.
    pub at: String,
    /// Present on maintenance events: the new state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,
}

/// `{"type":"system","message":..,"at":..,"maintenance"?:..}`: a system event as clients receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemMessage {
    #[serde(rename = "type")]
    pub kind: SystemTag,
    #[serde(flatten)]
    pub event: SystemEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SystemTag {
    #[default]
    System,
}

impl SystemEvent {
    /// The message clients receive.
    pub fn client_json(&self) -> String {
        let m = SystemMessage {
            kind: SystemTag::System,
            event: self.clone(),
        };
        serde_json::to_string(&m).unwrap_or_default()
    }
}

/// `GET /api/kpis`: the codes with published updates the caller may read, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpiList {
    pub kpis: Vec<KpiCode>,
}

/// `{"type":"accepted","message":..,"at":..}`: an admin broadcast or maintenance call was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    #[serde(rename = "type")]
    pub kind: AcceptedTag,
    pub message: String,
    pub at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedTag {
    #[default]
    Accepted,
}

/// One closed bucket of `GET /api/kpi/<code>/history`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryBucket {
    #[serde(with = "crate::time")]
    pub bucket_start: DateTime<Utc>,
    /// The seq of the record this bucket's stats come from (the latest correction).
    pub seq: u64,
    pub stats: StatsView,
}

/// `GET /api/kpi/<code>/history`: closed buckets, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryBody {
    pub kpi: KpiCode,
    pub period: Period,
    pub buckets: Vec<HistoryBucket>,
}

/// `GET /api/kpi/<code>/updates`: the data messages a poller missed, as
/// clients parse it. (The gateway writes it with [`poll_body`], which does not
/// re-serialize the messages.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollBody {
    pub kpi: KpiCode,
    pub period: Period,
    pub messages: Vec<serde_json::Value>,
}

/// The JSON of a [`PollBody`] around `messages`, each already JSON (an
/// update or snapshot as published), copied as they are.
pub fn poll_body<M: AsRef<[u8]>>(kpi: &KpiCode, period: Period, messages: &[M]) -> Vec<u8> {
    let head = PollBody {
        kpi: kpi.clone(),
        period,
        messages: Vec::new(),
    };
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    // `...,"messages":[]}`: drop the closing `]}` and append the messages.
    out.truncate(out.len().saturating_sub(2));
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.as_ref());
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn update_has_the_brief_fields() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 25, 8, 0, 1)
            .single()
            .expect("time");
        let kpi = KpiCode::parse("pending_approvals").expect("code");
        let mut m = UpdateMessage::empty(kpi, Period::Minute, now);
        m.kind = UpdateKind::Update;
        let v: serde_json::Value = serde_json::from_slice(&m.to_json()).expect("json");
        assert_eq!(v["type"], "update");
        assert_eq!(v["kpi"], "pending_approvals");
        assert_eq!(v["period"], "minute");
        assert_eq!(v["seq"], 0);
        assert_eq!(v["bucket_start"], "2026-11-25T08:00:00Z");
        assert_eq!(v["stats"]["count"], 0);
        assert!(v["stats"]["avg"].is_null());
        assert!(v["previous"].is_null());
        assert!(v["event_time"].is_null());
        assert_eq!(v["updated_at"], "2026-11-25T08:00:01Z");
        assert_eq!(UpdateMessage::from_json(&m.to_json()).expect("parse"), m);
    }

    #[test]
    fn client_messages_parse() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","kpi":"a","period":"hour","since":4}"#)
                .expect("parse");
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                kpi: "a".into(),
                period: "hour".into(),
                since: Some(4),
                cadence: None,
                encoding: None,
            }
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"explode"}"#).is_err());
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"auth","token":"abc.def.ghi"}"#).expect("auth");
        assert_eq!(
            m,
            ClientMessage::Auth {
                token: Secret("abc.def.ghi".into())
            }
        );
        assert!(!format!("{m:?}").contains("abc"));
    }

    #[test]
    fn replies_and_bodies_have_their_wire_shape() {
        let kpi = KpiCode::parse("sales").expect("code");
        let r = Reply::new(ReplyKind::Subscribed, Some((&kpi, Period::Hour)));
        assert_eq!(
            r.to_json(),
            r#"{"type":"subscribed","kpi":"sales","period":"hour"}"#
        );
        assert_eq!(
            Reply::new(ReplyKind::Authenticated, None).to_json(),
            r#"{"type":"authenticated"}"#
        );
        assert_eq!(Pong::new(None).to_json(), r#"{"type":"pong","id":null}"#);
        let e = SystemEvent {
            message: "m".into(),
            at: "2026-12-01T00:00:00Z".into(),
            maintenance: Some(true),
        };
        let v: serde_json::Value = serde_json::from_str(&e.client_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"system","message":"m","at":"2026-12-01T00:00:00Z","maintenance":true})
        );
        let body = poll_body(
            &kpi,
            Period::Minute,
            &[br#"{"seq":1}"#.as_slice(), br#"{"seq":2}"#],
        );
        let parsed: PollBody = serde_json::from_slice(&body).expect("poll body");
        assert_eq!(parsed.messages.len(), 2);
        let empty: PollBody =
            serde_json::from_slice(&poll_body::<&[u8]>(&kpi, Period::Day, &[])).expect("empty");
        assert!(empty.messages.is_empty());
    }
}
