//! The JSON messages clients receive and send; the contract in BRIEF.md, in types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::code::KpiCode;
use crate::period::Period;

/// Aggregates as clients see them: `avg`, `min`, `max`, `last` are `null` for an empty bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub count: u64,
    pub sum: f64,
    pub avg: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub last: Option<f64>,
}

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
                since: Some(4)
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
}
