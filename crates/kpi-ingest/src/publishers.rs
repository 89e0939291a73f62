//! Publisher tokens: which KPI codes each bearer token may publish, and how fast.
//!
//! `--publisher-tokens-file` holds one token per line, then the KPI patterns
//! it may publish, comma-separated (same syntax as the gateway's `kpis`
//! claim: exact codes, `prefix*`, or `*`):
//!
//! ```text
//! # token                          patterns
//! 3f9a0c...e1                      ops_*,infra_cpu
//! 77b2d4...0a                      *
//! ```
//!
//! Blank lines and `#` comments are skipped. The single `--publisher-token`
//! flag still works and means "every KPI". A token is never logged: records
//! name the publisher by its line (`tokens-file:3`) instead.
//!
//! Rate: `--max-publishes-per-token-per-sec` events per second per token, in a
//! [`TokenBucket`] holding one second's worth, taken on credit: a batch
//! larger than the rate still goes through once, and the debt is paid back
//! before the next call is allowed, so the average is what is enforced.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kpi_core::{KpiCode, KpiGrants};
use kpi_service::TokenBucket;

use crate::config::ConfigError;

/// Every token the ingest server accepts.
#[derive(Debug, Clone, Default)]
pub struct PublisherTokens {
    entries: Vec<Publisher>,
}

/// One accepted token: what it may publish. Put in the request's extensions
/// by the auth interceptor and read by the service.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Entry>,
}

struct Entry {
    token: String,
    label: String,
    grants: KpiGrants,
    bucket: Option<Mutex<TokenBucket>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No token here, on purpose.
        f.debug_struct("Publisher")
            .field("label", &self.inner.label)
            .finish()
    }
}

impl Publisher {
    fn new(token: String, label: String, grants: KpiGrants, per_sec: u32) -> Self {
        let bucket = (per_sec > 0).then(|| {
            let rate = f64::from(per_sec);
            Mutex::new(TokenBucket::new(rate, rate, Instant::now()))
        });
        Publisher {
            inner: Arc::new(Entry {
                token,
                label,
                grants,
                bucket,
            }),
        }
    }

    /// Where the token was configured (`publisher-token`, `tokens-file:<line>`), for logs.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Who this publisher is in an audit record: its label, never its token.
    pub fn audit_who(&self) -> kpi_service::Who<'_> {
        kpi_service::Who {
            subject: Some(self.label()),
            remote_ip: None,
        }
    }

    pub fn may_publish(&self, kpi: &KpiCode) -> bool {
        self.inner.grants.allows(kpi)
    }

    /// Spends `events` from the rate budget; false (nothing spent) when the
    /// budget is in debt.
    pub fn try_take(&self, events: usize) -> bool {
        self.try_take_at(events, Instant::now())
    }

    pub fn try_take_at(&self, events: usize, now: Instant) -> bool {
        let Some(bucket) = &self.inner.bucket else {
            return true;
        };
        // A poisoned lock only means another call panicked mid-update; the
        // numbers are still usable.
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        // usize -> f64 loses precision only past 2^53 events.
        b.take_on_credit(events as f64, now)
    }
}

impl PublisherTokens {
    /// The single `--publisher-token`: every KPI.
    pub fn single(token: &str, per_sec: u32) -> Self {
        PublisherTokens {
            entries: vec![Publisher::new(
                token.to_owned(),
                "publisher-token".into(),
                KpiGrants::all(),
                per_sec,
            )],
        }
    }

    /// Parses the tokens file's text.
    pub fn parse(text: &str, per_sec: u32) -> Result<Self, ConfigError> {
        let mut entries: Vec<Publisher> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| ConfigError {
                setting: "--publisher-tokens-file",
                problem: format!("line {n}: {problem}"),
            };
            let mut parts = line.split_whitespace();
            let (Some(token), Some(patterns)) = (parts.next(), parts.next()) else {
                return Err(bad("expected `<token> <pattern>[,<pattern>...]`".into()));
            };
            if parts.next().is_some() {
                return Err(bad(
                    "expected `<token> <pattern>[,<pattern>...]` with no spaces between patterns"
                        .into(),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) || token.len() < 16 {
                return Err(bad(
                    "a token must be at least 16 printable ASCII characters".into(),
                ));
            }
            let grants = KpiGrants::parse(patterns.split(',')).map_err(|e| bad(format!("{e}")))?;
            if entries.iter().any(|p| p.inner.token == token) {
                return Err(bad("this token is listed twice".into()));
            }
            entries.push(Publisher::new(
                token.to_owned(),
                format!("tokens-file:{n}"),
                grants,
                per_sec,
            ));
        }
        if entries.is_empty() {
            return Err(ConfigError {
                setting: "--publisher-tokens-file",
                problem: "the file lists no token".into(),
            });
        }
        Ok(PublisherTokens { entries })
    }

    pub fn load(path: &Path, per_sec: u32) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            setting: "--publisher-tokens-file",
            problem: format!("{}: {e}", path.display()),
        })?;
        Self::parse(&text, per_sec)
    }

    /// Adds `other`'s tokens (the flag next to the file).
    pub fn extend(&mut self, other: PublisherTokens) {
        self.entries.extend(other.entries);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The publisher whose token is `presented`. Every entry is compared in
    /// full, so the time taken does not tell which prefix matched.
    pub fn find(&self, presented: &str) -> Option<Publisher> {
        let mut found = None;
        for p in &self.entries {
            if constant_time_eq(presented.as_bytes(), p.inner.token.as_bytes()) {
                found = Some(p.clone());
            }
        }
        found
    }
}

/// Equality whose time does not reveal where two tokens first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn code(s: &str) -> KpiCode {
        KpiCode::parse(s).expect("code")
    }

    #[test]
    fn parses_tokens_and_patterns() {
        let t = PublisherTokens::parse(
            "# comment\n\nops-token-0123456789 ops_*,infra_cpu\nall-token-0123456789 *\n",
            0,
        )
        .expect("parse");
        let ops = t.find("ops-token-0123456789").expect("ops");
        assert_eq!(ops.label(), "tokens-file:3");
        assert!(ops.may_publish(&code("ops_disk")) && ops.may_publish(&code("infra_cpu")));
        assert!(!ops.may_publish(&code("sales_eu")));
        assert!(t
            .find("all-token-0123456789")
            .expect("all")
            .may_publish(&code("x")));
        assert!(t.find("ops-token-012345678").is_none());
        assert!(!format!("{ops:?}").contains("ops-token"));
    }

    #[test]
    fn refuses_bad_files() {
        for bad in [
            "",
            "# only a comment",
            "short ops_*",
            "ops-token-0123456789",
            "ops-token-0123456789 ops_*, infra",
            "ops-token-0123456789 o*s",
            "ops-token-0123456789 a\nops-token-0123456789 b",
        ] {
            assert!(PublisherTokens::parse(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rate_allows_a_second_worth_then_waits_for_the_debt() {
        let p = PublisherTokens::single("t", 10).find("t").expect("token");
        let t0 = Instant::now();
        assert!(p.try_take_at(25, t0), "a big batch goes through once");
        assert!(!p.try_take_at(1, t0));
        assert!(!p.try_take_at(1, t0 + Duration::from_secs(1)));
        assert!(p.try_take_at(1, t0 + Duration::from_millis(1700)));
        assert!(PublisherTokens::single("u", 0)
            .find("u")
            .expect("u")
            .try_take(1_000_000));
    }
}
