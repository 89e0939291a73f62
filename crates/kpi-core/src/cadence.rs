//! How often a subscription hears about its topic: every change, at most once per interval, or on bucket close.

use std::fmt;
use std::time::Duration;

/// The longest throttle interval accepted (a day): a longer one is a typo,
/// and a bound keeps the gateway's timers meaningful.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A subscription's cadence, as `cadence=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cadence {
    /// Every coalesced change (the default).
    #[default]
    Live,
    /// At most one message per interval, always the newest, and the newest
    /// goes out within the interval of its change (trailing edge).
    Every(Duration),
    /// One message per bucket boundary (its `previous` is the closed bucket)
    /// plus corrections of closed buckets.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cadence {0:?} is not one of live, close, <N>s or <N>m with N from 1 to 86400 seconds (1440 minutes)")]
pub struct CadenceError(pub String);

impl Cadence {
    /// Parses `live`, `close`, `<N>s` or `<N>m` (N ≥ 1, at most a day).
    pub fn parse(raw: &str) -> Result<Self, CadenceError> {
        let bad = || CadenceError(raw.chars().take(32).collect());
        match raw {
            "live" => return Ok(Cadence::Live),
            "close" => return Ok(Cadence::Close),
            _ => {}
        }
        let (digits, unit) = match raw.char_indices().last() {
            Some((i, 's')) => (&raw[..i], 1),
            Some((i, 'm')) => (&raw[..i], 60),
            _ => return Err(bad()),
        };
        // Digits only: no sign, no spaces, no leading "+" that u64 would take.
        if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let interval = Duration::from_secs(n * unit);
        if n == 0 || interval > MAX_INTERVAL {
            return Err(bad());
        }
        Ok(Cadence::Every(interval))
    }

    /// An optional parameter: absent is `live`.
    pub fn parse_opt(raw: Option<&str>) -> Result<Self, CadenceError> {
        raw.map_or(Ok(Cadence::Live), Cadence::parse)
    }

    /// The throttle interval, for `Every`.
    pub fn interval(&self) -> Option<Duration> {
        match self {
            Cadence::Every(d) => Some(*d),
            _ => None,
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Live => f.write_str("live"),
            Cadence::Close => f.write_str("close"),
            Cadence::Every(d) if d.as_secs() % 60 == 0 => write!(f, "{}m", d.as_secs() / 60),
            Cadence::Every(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_forms_and_round_trips() {
        for (raw, want) in [
            ("live", Cadence::Live),
            ("close", Cadence::Close),
            ("2s", Cadence::Every(Duration::from_secs(2))),
            ("5m", Cadence::Every(Duration::from_secs(300))),
            ("1440m", Cadence::Every(MAX_INTERVAL)),
        ] {
            let c = Cadence::parse(raw).expect(raw);
            assert_eq!(c, want);
            assert_eq!(Cadence::parse(&c.to_string()), Ok(c));
        }
        assert_eq!(Cadence::parse_opt(None), Ok(Cadence::Live));
    }

    #[test]
    fn refuses_zero_unbounded_and_malformed() {
        for raw in [
            "",
            "0s",
            "0m",
            "86401s",
            "1441m",
            "s",
            "m",
            "5",
            "5h",
            "-5s",
            "+5s",
            " 5s",
            "5 s",
            "99999999999999999999s",
            "LIVE",
            "é",
            "5ms",
        ] {
            assert!(Cadence::parse(raw).is_err(), "{raw:?} was accepted");
        }
    }
}
