//! The one shutdown signal passed down to every task (mini-redis's `Shutdown`, with a task tracker).
//!
//! `Shutdown` is cheap to clone. The process root owns it, fires it on
//! SIGTERM/SIGINT, and then waits on [`Shutdown::wait_idle`] for every task
//! that registered with [`Shutdown::spawn`] to finish, bounded by a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has started.
    pub async fn recv(&self) {
        self.token.cancelled().await
    }

    /// A child signal: fires with this one, and can also be fired alone
    /// (a single connection or subscription being torn down).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    /// A signal that fires `delay` after this one, sharing its task tracker:
    /// the gateway reports unready at once and sends clients away only after
    /// the delay, with one shutdown tree and one set of tracked tasks.
    pub fn delayed(&self, delay: Duration) -> Shutdown {
        let later = Shutdown {
            token: CancellationToken::new(),
            tasks: self.tasks.clone(),
        };
        let (parent, fire) = (self.token.clone(), later.token.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = parent.cancelled() => tokio::time::sleep(delay).await,
                // Fired directly: nothing left to wait for.
                () = fire.cancelled() => return,
            }
            fire.cancel();
        });
        later
    }

    /// Spawns a task that [`Shutdown::wait_idle`] will wait for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(fut)
    }

    /// Waits until every tracked task has finished, at most `grace`.
    /// Returns false when the grace period ran out first.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Fires this signal on SIGTERM or Ctrl-C. Call once, from the binary.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, draining");
            this.trigger();
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_delayed_signal_fires_after_its_parent() {
        let root = Shutdown::new();
        let later = root.delayed(Duration::from_secs(1));
        root.trigger();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!later.is_triggered());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(later.is_triggered());
    }
}
