//! Caps on distinct KPI codes, in all and per publisher token, so a publisher cannot grow every service's memory without end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kpi_core::KpiCode;
use parking_lot::Mutex;

/// A full table is swept for idle codes at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The codes this ingest accepted recently, in all and per token.
///
/// A code counts toward a cap from its first accepted event until it has
/// been idle for `idle`; when a table is full, idle codes are swept out
/// before a new code is refused. Memory is bounded by the caps: at most
/// `max_total` codes, plus `max_per_token` per configured token.
pub struct Cardinality {
    max_total: usize,
    max_per_token: usize,
    idle: Duration,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    all: Table,
    per_token: HashMap<String, Table>,
}

#[derive(Default)]
struct Table {
    codes: HashMap<KpiCode, Instant>,
    swept: Option<Instant>,
}

impl Table {
    /// Whether `code` is here or there is room for it (after sweeping idle
    /// codes when full); does not record it.
    fn has_room(&mut self, code: &KpiCode, cap: usize, idle: Duration, now: Instant) -> bool {
        if self.codes.contains_key(code) || self.codes.len() < cap {
            return true;
        }
        if self
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            self.swept = Some(now);
            self.codes
                .retain(|_, seen| now.duration_since(*seen) < idle);
        }
        self.codes.len() < cap
    }
}

impl Cardinality {
    pub fn new(max_total: usize, max_per_token: usize, idle: Duration) -> Self {
        Cardinality {
            max_total,
            max_per_token,
            idle,
            known: Mutex::new(Known::default()),
        }
    }

    /// Admits an event for `code` from `token` (its label; `None` without
    /// tokens), or says which cap it would exceed.
    pub fn admit(&self, code: &KpiCode, token: Option<&str>) -> Result<(), String> {
        let now = Instant::now();
        let mut known = self.known.lock();
        let Known { all, per_token } = &mut *known;
        if let Some(token) = token {
            let mine = per_token.entry(token.to_string()).or_default();
            if !mine.has_room(code, self.max_per_token, self.idle, now) {
                return Err(format!(
                    "{RESOURCE_EXHAUSTED}: this token already publishes {} distinct KPI codes (--max-kpis-per-token {}); {code} is refused",
                    mine.codes.len(),
                    self.max_per_token
                ));
            }
        }
        if !all.has_room(code, self.max_total, self.idle, now) {
            return Err(format!(
                "{RESOURCE_EXHAUSTED}: ingest already holds {} distinct KPI codes (--max-kpis {}); {code} is refused",
                all.codes.len(),
                self.max_total
            ));
        }
        all.codes.insert(code.clone(), now);
        if let Some(token) = token {
            if let Some(mine) = per_token.get_mut(token) {
                mine.codes.insert(code.clone(), now);
            }
        }
        Ok(())
    }
}

/// How a refused event's reason starts when a cap refused it.
pub const RESOURCE_EXHAUSTED: &str = "resource exhausted";

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> KpiCode {
        KpiCode::parse(s).expect("code")
    }

    #[test]
    fn idle_codes_make_room_again() {
        let caps = Cardinality::new(2, 10, Duration::from_millis(50));
        assert!(caps.admit(&code("a"), None).is_ok());
        assert!(caps.admit(&code("b"), None).is_ok());
        let err = caps.admit(&code("c"), None).expect_err("full");
        assert!(err.contains("--max-kpis 2"), "{err}");
        assert!(caps.admit(&code("a"), None).is_ok(), "a known code is fine");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            caps.admit(&code("c"), None).is_ok(),
            "idle codes were swept"
        );
    }
}
