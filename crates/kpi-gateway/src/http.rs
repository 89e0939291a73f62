//! The HTTP/1.1 accept loop: axum's router on hyper, with a header-read timeout and the peer address.
//!
//! `axum::serve` configures no timer, and without one hyper's
//! `header_read_timeout` does nothing: a client sending its request head one
//! byte a second (slowloris) would hold a connection and a task forever.
//! This loop sets the timer and the timeout, puts the peer's address in each
//! request (`ConnectInfo<SocketAddr>`, for per-IP limits and the audit log),
//! keeps WebSocket upgrades working, and drains like `axum::serve`'s
//! graceful shutdown: stop accepting, let in-flight requests finish.

use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Serves `app` on `listener` until `signal` resolves, then waits for open
/// HTTP exchanges (not upgraded WebSockets, which the caller tracks) to end.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    signal: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
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
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
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
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracker.close();
    tracker.wait().await;
    Ok(())
}
