//! New connections per client IP: a token bucket per address, pruned as it goes.
//!
//! The address is the TCP peer's. Behind a balancer that is the balancer, so
//! the limit should then be set at the balancer instead (or high here).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use kpi_service::TokenBucket;
use parking_lot::Mutex;

/// Buckets kept before idle (full) ones are dropped; bounds memory under a
/// scan from many addresses.
const PRUNE_AT: usize = 10_000;

#[derive(Clone)]
pub struct ConnectRate {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl ConnectRate {
    /// `per_sec` new connections per second per address, bursts of twice
    /// that; 0 turns the limit off.
    pub fn new(per_sec: u32) -> Self {
        if per_sec == 0 {
            return ConnectRate { inner: None };
        }
        let rate = f64::from(per_sec);
        ConnectRate {
            inner: Some(Arc::new(Inner {
                rate,
                burst: 2.0 * rate,
                buckets: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// True when `ip` may open one more connection now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    pub fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let mut buckets = inner.buckets.lock();
        if buckets.len() >= PRUNE_AT {
            // A full bucket answers like a new one: dropping it changes nothing.
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(inner.rate, inner.burst, now))
            .try_take(1.0, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_limits_per_address_and_refills() {
        let r = ConnectRate::new(2);
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let t = Instant::now();
        assert!((0..4).all(|_| r.allow_at(a, t)));
        assert!(!r.allow_at(a, t));
        assert!(r.allow_at(b, t));
        assert!(r.allow_at(a, t + Duration::from_secs(1)));
        assert!(ConnectRate::new(0).allow_at(a, t));
    }
}
