//! Per-KPI publish thresholds: slow-moving KPIs publish only when their value moved enough.

use kpi_core::{KpiCode, Stats};

/// A minimum move, relative or absolute, of `last` or `avg`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Percent of the previously published value.
    Percent(f64),
    Absolute(f64),
}

impl Threshold {
    /// Whether `new` differs enough from what was last published to publish it.
    pub fn significant(&self, published: &Stats, new: &Stats) -> bool {
        if published.is_empty() != new.is_empty() {
            return true;
        }
        let moved = |old: Option<f64>, new: Option<f64>| match (old, new) {
            (Some(o), Some(n)) => match self {
                Threshold::Absolute(a) => (n - o).abs() >= *a,
                Threshold::Percent(p) if o == 0.0 => n != 0.0 || *p == 0.0,
                Threshold::Percent(p) => ((n - o) / o).abs() * 100.0 >= *p,
            },
            (o, n) => o.is_some() != n.is_some(),
        };
        let (o, n) = (published.view(), new.view());
        moved(o.last, n.last) || moved(o.avg, n.avg)
    }
}

/// Rules `code=5%`, `prefix*=0.5`; the first matching rule wins. Empty = publish every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThresholdPolicy {
    rules: Vec<(String, bool, Threshold)>,
}

impl ThresholdPolicy {
    /// Parses a comma-separated list such as `pending_approvals=2%,fx_*=0.01`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for rule in raw.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (pattern, amount) = rule.split_once('=').ok_or_else(|| {
                format!("threshold rule {rule:?} is not <code or prefix*>=<amount>[%]")
            })?;
            let (prefix, is_prefix) = match pattern.strip_suffix('*') {
                Some(p) => (p, true),
                None => (pattern, false),
            };
            if !prefix.is_empty() {
                KpiCode::parse(prefix).map_err(|e| format!("threshold rule {rule:?}: {e}"))?;
            }
            let (number, percent) = match amount.strip_suffix('%') {
                Some(n) => (n, true),
                None => (amount, false),
            };
            let value: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("threshold rule {rule:?}: {number:?} is not a number"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "threshold rule {rule:?}: amount must be a non-negative number"
                ));
            }
            let t = if percent {
                Threshold::Percent(value)
            } else {
                Threshold::Absolute(value)
            };
            rules.push((prefix.to_string(), is_prefix, t));
        }
        Ok(ThresholdPolicy { rules })
    }

    pub fn for_code(&self, code: &KpiCode) -> Option<Threshold> {
        self.rules
            .iter()
            .find(|(p, is_prefix, _)| {
                if *is_prefix {
                    code.as_str().starts_with(p.as_str())
                } else {
                    code.as_str() == p
                }
            })
            .map(|(_, _, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn stats(values: &[f64]) -> Stats {
        let mut s = Stats::default();
        for v in values {
            s.apply(*v, Utc::now());
        }
        s
    }

    #[test]
    fn parses_rules_and_matches_first() {
        let p = ThresholdPolicy::parse("fx_usd=1%, fx_*=0.5").expect("valid");
        let code = |c| KpiCode::parse(c).expect("code");
        assert_eq!(p.for_code(&code("fx_usd")), Some(Threshold::Percent(1.0)));
        assert_eq!(p.for_code(&code("fx_eur")), Some(Threshold::Absolute(0.5)));
        assert_eq!(p.for_code(&code("orders")), None);
        for bad in ["x", "a.b=1", "x=-1", "x=abc%", "x=NaN"] {
            assert!(ThresholdPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_moves_are_not_significant() {
        let t = Threshold::Percent(10.0);
        assert!(!t.significant(&stats(&[100.0]), &stats(&[100.0, 100.0, 105.0])));
        assert!(t.significant(&stats(&[100.0]), &stats(&[100.0, 150.0])));
        assert!(t.significant(&Stats::default(), &stats(&[1.0])));
    }
}
