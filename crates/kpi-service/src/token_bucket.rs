//! The one token bucket behind every rate limit: publishers per token, client messages per connection, connections per IP.

use std::time::Instant;

/// `rate` tokens per second, holding at most `burst`; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate: rate_per_sec,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        // Never backwards: a caller's stale `now` must not earn tokens twice.
        self.at = self.at.max(now);
    }

    /// Takes `n` tokens if that many are there; otherwise takes nothing.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens if at least one is there, going into debt for the
    /// rest: a batch larger than the burst still goes through once, and the
    /// debt is paid back before the next is allowed, so the average rate is
    /// what is enforced.
    pub fn take_on_credit(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Full again at `now`: an idle bucket that can be dropped and recreated
    /// (full) without changing any answer.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refuses_then_refills() {
        let t = Instant::now();
        let mut b = TokenBucket::new(5.0, 10.0, t);
        assert!((0..10).all(|_| b.try_take(1.0, t)));
        assert!(!b.try_take(1.0, t));
        assert!(!b.is_full(t));
        assert!(b.try_take(1.0, t + Duration::from_millis(200)));
        assert!(!b.try_take(1.0, t + Duration::from_millis(200)));
        assert!(b.is_full(t + Duration::from_secs(3)));
    }

    #[test]
    fn credit_lets_one_big_batch_through_then_waits_for_the_debt() {
        let t = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0, t);
        assert!(b.take_on_credit(25.0, t), "a big batch goes through once");
        assert!(!b.take_on_credit(1.0, t));
        assert!(!b.take_on_credit(1.0, t + Duration::from_secs(1)));
        assert!(b.take_on_credit(1.0, t + Duration::from_millis(1700)));
    }

    #[test]
    fn a_clock_read_out_of_order_earns_nothing() {
        let t = Instant::now();
        let mut b = TokenBucket::new(1.0, 1.0, t + Duration::from_secs(5));
        assert!(b.try_take(1.0, t + Duration::from_secs(5)));
        assert!(!b.try_take(1.0, t), "earlier than the last read");
        assert!(!b.try_take(1.0, t + Duration::from_millis(5500)));
        assert!(b.try_take(1.0, t + Duration::from_secs(6)));
    }
}
