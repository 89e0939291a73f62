//! The HTTP/1.1 accept loop: axum's router on hyper, with a header-read timeout and the peer address.
//!
//! `axum::serve` configures no timer, and without one hyper's
//! `header_read_timeout` does nothing: a client sending its request head one
//! byte a second (slowloris) would hold a connection and a task forever.
//! This loop sets the timer and the timeout, puts the peer's address in each
//! request (`ConnectInfo<SocketAddr>`, for per-IP limits and the audit log),
//! keeps WebSocket upgrades working, and drains like `axum::serve`'s
//! graceful shutdown: stop accepting, let in-flight requests finish. Each
//! connection's task is spawned through the process's one [`Shutdown`], and
//! each request carries an [`Abort`] that ends its connection at once (a
//! stream whose client stopped reading).

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use kpi_service::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Ends the connection a request came on, without a graceful close: for a
/// response whose client no longer reads, which nothing else would end.
#[derive(Clone)]
pub(crate) struct Abort(CancellationToken);

impl Abort {
    pub fn fire(&self) {
        self.0.cancel();
    }
}

/// Serves `app` on `listener` until `signal` resolves, then asks open HTTP
/// exchanges to finish (upgraded WebSockets are the sessions' to close).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: Shutdown,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(signal);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning; per-connection errors are not fatal.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let abort = CancellationToken::new();
        shutdown.spawn(async move {
            let kill = abort.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req.extensions_mut().insert(Abort(abort.clone()));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(error = %e, %remote, "connection ended with an error");
                    }
                    return;
                }
                () = kill.cancelled() => return,
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = conn => {}
                () = kill.cancelled() => {}
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    Ok(())
}
