//! KPI access lists: which codes a reader's JWT or a publisher's token covers.
//!
//! One syntax for both sides: an entry is an exact KPI code (`hr_payroll`),
//! a prefix ending in one `*` (`sales_*` covers every code starting with
//! `sales_`), or `*` alone (every code). `*` anywhere else is not a pattern:
//! it is refused, so `sa*es` can never be read as more than it says.

use std::fmt;

use crate::code::{KpiCode, MAX_CODE_LEN};

/// Why an entry of an access list is not a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty KPI pattern")]
    Empty,
    #[error("KPI pattern is longer than {MAX_CODE_LEN} characters")]
    TooLong,
    #[error("`*` is allowed only once, as the last character of a KPI pattern")]
    MisplacedWildcard,
    #[error("KPI pattern contains {0:?}; only A-Z a-z 0-9 _ - and a trailing * are allowed")]
    BadChar(char),
}

/// One entry: an exact code or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KpiPattern {
    /// `prefix*`; an empty prefix (`*`) covers every code.
    Prefix(String),
    Exact(KpiCode),
}

impl KpiPattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PatternError::Empty);
        }
        let (body, prefix) = match raw.strip_suffix('*') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        if let Some(bad) = body
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(if bad == '*' {
                PatternError::MisplacedWildcard
            } else {
                PatternError::BadChar(bad)
            });
        }
        if body.len() > MAX_CODE_LEN {
            return Err(PatternError::TooLong);
        }
        if prefix {
            Ok(KpiPattern::Prefix(body.to_owned()))
        } else {
            // The charset and length were checked above, so this cannot fail.
            KpiCode::parse(body)
                .map(KpiPattern::Exact)
                .map_err(|_| PatternError::Empty)
        }
    }

    pub fn matches(&self, code: &KpiCode) -> bool {
        match self {
            KpiPattern::Prefix(p) => code.as_str().starts_with(p.as_str()),
            KpiPattern::Exact(c) => c == code,
        }
    }
}

impl fmt::Display for KpiPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KpiPattern::Prefix(p) => write!(f, "{p}*"),
            KpiPattern::Exact(c) => f.write_str(c.as_str()),
        }
    }
}

/// A whole access list. Empty grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KpiGrants {
    patterns: Vec<KpiPattern>,
}

impl KpiGrants {
    /// Every code.
    pub fn all() -> Self {
        KpiGrants {
            patterns: vec![KpiPattern::Prefix(String::new())],
        }
    }

    /// Parses every entry; the first bad one is the error.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, PatternError> {
        let patterns = entries
            .into_iter()
            .map(KpiPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KpiGrants { patterns })
    }

    /// Keeps the valid entries and returns how many were dropped: for lists
    /// from a signed token, where a bad entry should grant nothing rather
    /// than void the entries next to it.
    pub fn parse_lenient<'a>(entries: impl IntoIterator<Item = &'a str>) -> (Self, usize) {
        let mut dropped = 0;
        let patterns = entries
            .into_iter()
            .filter_map(|e| KpiPattern::parse(e).inspect_err(|_| dropped += 1).ok())
            .collect();
        (KpiGrants { patterns }, dropped)
    }

    pub fn allows(&self, code: &KpiCode) -> bool {
        self.patterns.iter().any(|p| p.matches(code))
    }

    pub fn patterns(&self) -> &[KpiPattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> KpiCode {
        KpiCode::parse(s).expect("code")
    }

    #[test]
    fn prefixes_exact_codes_and_all() {
        let g = KpiGrants::parse(["sales_*", "hr_payroll"]).expect("parse");
        assert!(g.allows(&code("sales_eu")));
        assert!(g.allows(&code("sales_")));
        assert!(g.allows(&code("hr_payroll")));
        assert!(!g.allows(&code("hr_payroll2")));
        assert!(!g.allows(&code("sale")));
        assert!(KpiGrants::parse(["*"]).expect("all").allows(&code("x")));
        assert!(!KpiGrants::default().allows(&code("x")));
    }

    #[test]
    fn a_star_anywhere_but_the_end_is_refused() {
        for bad in ["sa*es", "**", "*x", "a.b*", "", " ", "a b", "é*"] {
            assert!(KpiPattern::parse(bad).is_err(), "{bad:?}");
        }
        let (g, dropped) = KpiGrants::parse_lenient(["s*x", "ok"]);
        assert_eq!(dropped, 1);
        assert!(g.allows(&code("ok")) && !g.allows(&code("sx")));
    }
}
