//! The one drain: after shutdown fires, in-flight work finishes within a grace period, then the process goes anyway.
//!
//! Every service serves through [`drain`]: its serving future stops
//! accepting when the [`Shutdown`] fires (each server wires that itself:
//! tonic's and axum's graceful-shutdown futures, the gateway's listener) and
//! resolves once in-flight work is done. The grace period starts when the
//! shutdown fires, covers the serving future and then the tasks spawned
//! through [`Shutdown::spawn`], and bounds them together.

use std::future::Future;
use std::time::Duration;

use crate::Shutdown;

/// How a [`drain`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained<T> {
    /// The serving future returned (by itself, or after draining) and every
    /// tracked task finished within the grace period.
    Finished(T),
    /// The serving future returned, but tracked tasks were still running
    /// when the grace period ran out.
    TasksLeft(T),
    /// The grace period ran out while the serving future was still draining;
    /// it was dropped.
    GraceOver,
}

impl<T> Drained<T> {
    /// The serving future's output, if it returned.
    pub fn output(self) -> Option<T> {
        match self {
            Drained::Finished(t) | Drained::TasksLeft(t) => Some(t),
            Drained::GraceOver => None,
        }
    }
}

/// Runs `serve` until it returns; once `shutdown` fires, gives it and the
/// tasks tracked by `shutdown` at most `grace` to finish. A serving future
/// that returns before any shutdown (a failure) ends the drain at once,
/// without waiting for tracked tasks.
pub async fn drain<F: Future>(
    shutdown: &Shutdown,
    grace: Duration,
    serve: F,
) -> Drained<F::Output> {
    tokio::pin!(serve);
    let out = tokio::select! {
        out = &mut serve => {
            if !shutdown.is_triggered() {
                return Drained::Finished(out);
            }
            out
        }
        () = shutdown.recv() => {
            let deadline = tokio::time::Instant::now() + grace;
            match tokio::time::timeout_at(deadline, &mut serve).await {
                Ok(out) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return finish_tasks(shutdown, left, out).await;
                }
                Err(_) => {
                    tracing::warn!(grace_secs = grace.as_secs_f64(), "drain grace period over; leaving in-flight work unfinished");
                    return Drained::GraceOver;
                }
            }
        }
    };
    // Shutdown fired while `serve` was returning: still bound the tasks.
    finish_tasks(shutdown, grace, out).await
}

async fn finish_tasks<T>(shutdown: &Shutdown, left: Duration, out: T) -> Drained<T> {
    if shutdown.wait_idle(left).await {
        Drained::Finished(out)
    } else {
        tracing::warn!("drain grace period over with tasks still running");
        Drained::TasksLeft(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn in_flight_work_finishes_within_the_grace() {
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let serve = async move {
            sd.recv().await;
            // Finishing in-flight work takes a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
            "done"
        };
        shutdown.spawn(async { tokio::time::sleep(Duration::from_secs(3)).await });
        shutdown.trigger();
        assert_eq!(
            drain(&shutdown, Duration::from_secs(5), serve).await,
            Drained::Finished("done")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_bounds_serving_and_tasks_together() {
        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        let slow = async move {
            sd.recv().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        };
        shutdown.trigger();
        let started = tokio::time::Instant::now();
        assert_eq!(
            drain(&shutdown, Duration::from_secs(5), slow).await,
            Drained::GraceOver
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let shutdown = Shutdown::new();
        let sd = shutdown.clone();
        shutdown.spawn(async { tokio::time::sleep(Duration::from_secs(60)).await });
        shutdown.trigger();
        let quick = async move {
            sd.recv().await;
            tokio::time::sleep(Duration::from_secs(4)).await;
        };
        let started = tokio::time::Instant::now();
        assert_eq!(
            drain(&shutdown, Duration::from_secs(5), quick).await,
            Drained::TasksLeft(())
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_before_shutdown_returns_at_once() {
        let shutdown = Shutdown::new();
        shutdown.spawn(async { tokio::time::sleep(Duration::from_secs(60)).await });
        let failing = async { Err::<(), _>("listener died") };
        assert_eq!(
            drain(&shutdown, Duration::from_secs(5), failing).await,
            Drained::Finished(Err("listener died"))
        );
    }
}
