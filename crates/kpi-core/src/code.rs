//! The validated KPI code: the only way a client string becomes part of a subject.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest KPI code accepted anywhere.
pub const MAX_CODE_LEN: usize = 64;

/// Why a string is not a KPI code. The messages are shown to clients as-is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("KPI code is empty")]
    Empty,
    #[error("KPI code is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    #[error("KPI code contains {0:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar(char),
}

/// A KPI code of 1 to 64 characters of `A-Z a-z 0-9 _ -`.
///
/// A code becomes a NATS subject token, so a dot, `*` or `>` in it would let a
/// client subscribe to other KPIs. Holding a `KpiCode` proves the check ran;
/// nothing builds a subject from a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KpiCode(String);

impl KpiCode {
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        if raw.is_empty() {
            return Err(CodeError::Empty);
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(CodeError::BadChar(bad));
        }
        // All characters are ASCII here, so bytes == characters.
        if raw.len() > MAX_CODE_LEN {
            return Err(CodeError::TooLong(raw.len()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KpiCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for KpiCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for KpiCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KpiCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        KpiCode::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_brief_charset() {
        for ok in ["a", "sales_eu", "A-9_z", &"x".repeat(64)] {
            assert!(KpiCode::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_that_could_be_a_subject_wildcard_or_separator() {
        let long = "x".repeat(65);
        for bad in [
            "",
            "a.b",
            "*",
            ">",
            "a b",
            "%2A",
            "é",
            "a\0b",
            "a\nb",
            long.as_str(),
        ] {
            assert!(KpiCode::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<KpiCode>("\"a.b\"").is_err());
        let ok: KpiCode = serde_json::from_str("\"ok\"").expect("valid code");
        assert_eq!(ok.as_str(), "ok");
    }
}
