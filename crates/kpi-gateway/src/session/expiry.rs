//! Closing a session when its token expires, unless a fresh token moved the deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kpi_core::ErrorMessage;
use tokio::sync::watch;

use crate::close_codes;
use crate::fanout::outbox::Outbox;
use crate::security::audit::{self, Who};

/// Closes a connection with 4001 `token_expired` when its token's `exp`
/// passes. The deadline can be moved (a refreshed token) or removed; dropping
/// the watch stops it.
pub(crate) struct ExpiryWatch {
    deadline: watch::Sender<Option<u64>>,
    task: tokio::task::AbortHandle,
}

impl ExpiryWatch {
    pub fn start(outbox: &Outbox, expires_at: Option<u64>, subject: Option<String>) -> Self {
        let (deadline, mut rx) = watch::channel(expires_at);
        let outbox = outbox.clone();
        let task = tokio::spawn(async move {
            loop {
                let current = *rx.borrow_and_update();
                let Some(exp) = current else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                tokio::select! {
                    () = tokio::time::sleep(until(exp)) => {
                        audit::denied(
                            "connection",
                            "token_expired",
                            Who { subject: subject.as_deref(), remote_ip: None },
                            None,
                        );
                        let e = ErrorMessage::new(
                            "token_expired",
                            "the token expired; reconnect with a fresh one (or send {\"type\":\"auth\",\"token\":..} before it expires)",
                        );
                        outbox.close(close_codes::TOKEN_EXPIRED, "token expired", Some(Bytes::from(e.to_json())));
                        return;
                    }
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .abort_handle();
        ExpiryWatch { deadline, task }
    }

    pub fn set(&self, expires_at: Option<u64>) {
        self.deadline.send_replace(expires_at);
    }
}

impl Drop for ExpiryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Time from now until `exp` (seconds since the epoch); zero when past.
fn until(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).saturating_sub(now)
}
