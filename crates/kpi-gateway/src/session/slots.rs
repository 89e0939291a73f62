//! The connection limit: a slot per open session, and the count `run` waits on to drain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::{self, Transport};

/// Counts open sessions (every transport, while it is served) against `max`.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    open: AtomicUsize,
    idle: Notify,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Connections {
            inner: Arc::new(Inner {
                max,
                open: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// A slot, or `None` when `max` are open.
    pub fn try_acquire(&self, transport: Transport) -> Option<Permit> {
        let prev = self.inner.open.fetch_add(1, Ordering::SeqCst);
        if prev >= self.inner.max {
            self.release_slot();
            return None;
        }
        metrics::connection_opened(transport);
        Some(Permit {
            owner: self.clone(),
            transport,
        })
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn release_slot(&self) {
        if self.inner.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// One open connection; dropping it frees the slot.
pub struct Permit {
    owner: Connections,
    transport: Transport,
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::connection_closed(self.transport);
        self.owner.release_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_past_max_and_reports_idle() {
        let c = Connections::new(2);
        let a = c.try_acquire(Transport::Ws);
        let b = c.try_acquire(Transport::Sse);
        assert!(a.is_some() && b.is_some());
        assert!(c.try_acquire(Transport::WsMux).is_none());
        assert_eq!(c.open(), 2);
        drop((a, b));
        tokio::time::timeout(std::time::Duration::from_secs(1), c.wait_idle())
            .await
            .expect("idle");
    }
}
