//! The sessions admin broadcasts reach: every open outbox, listed while its session lives.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::fanout::outbox::Outbox;

/// Outboxes of this gateway's open sessions.
#[derive(Clone, Default)]
pub(crate) struct Clients {
    inner: Arc<Mutex<HashMap<u64, Outbox>>>,
}

impl Clients {
    /// Lists `outbox` until the returned guard is dropped.
    pub fn register(&self, outbox: &Outbox) -> Registered {
        self.inner.lock().insert(outbox.id(), outbox.clone());
        Registered {
            clients: self.clone(),
            id: outbox.id(),
        }
    }

    /// Queues `message` for every client; returns how many got it.
    pub fn push_all(&self, message: &Bytes) -> usize {
        let outboxes: Vec<Outbox> = self.inner.lock().values().cloned().collect();
        outboxes
            .iter()
            .filter(|o| o.push_control(message.clone()))
            .count()
    }
}

/// A listed connection; dropping it unlists.
pub(crate) struct Registered {
    clients: Clients,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients.inner.lock().remove(&self.id);
    }
}
