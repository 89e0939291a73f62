//! Inbound message rate limit per WebSocket: a token bucket, and a wider one for abuse.

use std::time::Instant;

use kpi_service::TokenBucket;

/// What to do with one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the limit: refuse this message, keep the connection.
    Limited,
    /// Flooding at more than five times the limit: close the connection.
    Abuse,
}

/// `rate` messages per second with bursts of `2 * rate`; every message, allowed
/// or not, also draws on a bucket five times as large, whose exhaustion means
/// the client keeps flooding after being told to slow down.
pub struct RateLimiter {
    normal: TokenBucket,
    abuse: TokenBucket,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        let now = Instant::now();
        RateLimiter {
            normal: TokenBucket::new(rate, 2.0 * rate, now),
            abuse: TokenBucket::new(5.0 * rate, 10.0 * rate, now),
        }
    }

    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    pub fn check_at(&mut self, now: Instant) -> Verdict {
        if !self.abuse.try_take(1.0, now) {
            return Verdict::Abuse;
        }
        if self.normal.try_take(1.0, now) {
            Verdict::Allow
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_limited_then_abuse() {
        let mut r = RateLimiter::new(5);
        let t = Instant::now();
        let verdicts: Vec<Verdict> = (0..51).map(|_| r.check_at(t)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allow));
        assert!(verdicts[10..50].iter().all(|v| *v == Verdict::Limited));
        assert_eq!(verdicts[50], Verdict::Abuse);
    }

    #[test]
    fn refills_over_time() {
        let mut r = RateLimiter::new(5);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(r.check_at(t), Verdict::Allow);
        }
        assert_eq!(r.check_at(t), Verdict::Limited);
        assert_eq!(r.check_at(t + Duration::from_secs(1)), Verdict::Allow);
    }
}
