//! One WebSocket's life: a writer fed by the outbox, pings, reaping, closing.
//!
//! The socket is split: a writer task owns the sending half and only ever
//! takes from the connection's [`Outbox`], so a client that stops reading
//! blocks nothing but its own writer. The connection task reads frames, pings,
//! watches for silence and for a queue stuck full, and on any ending asks the
//! writer (through the outbox) to send the close frame, then waits a bounded
//! time for the close handshake.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use kpi_core::ErrorMessage;
use kpi_service::Shutdown;
use tokio::time::Instant;

use crate::close_codes;
use crate::outbox::{Out, Outbox};

/// Messages written before one flush, so a burst costs few syscalls.
const MAX_BATCH: usize = 64;

/// tungstenite's per-connection read buffer. Small because an idle dashboard
/// connection must cost little memory and clients send only short messages.
pub(crate) const READ_BUFFER_BYTES: usize = 1024;

/// What the reading side decided.
pub(crate) enum Flow {
    Continue,
    Close {
        code: u16,
        reason: &'static str,
        error: Option<Bytes>,
    },
}

/// Handles what a client sends; the single-topic socket ignores it, `/ws` parses it.
pub(crate) trait Inbound: Send {
    fn on_text(&mut self, text: &str) -> impl Future<Output = Flow> + Send;
    fn on_binary(&mut self) -> impl Future<Output = Flow> + Send;
}

/// Timing of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub stuck_timeout: Duration,
    /// Longest wait for the close handshake once a close is decided.
    pub close_grace: Duration,
}

impl Timing {
    pub fn from_settings(s: &crate::GatewaySettings) -> Self {
        Timing {
            ping_interval: s.ping_interval,
            idle_timeout: s.idle_timeout,
            stuck_timeout: s.stuck_timeout,
            close_grace: s
                .drain
                .clamp(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

/// JSON of an error message, for queues and close paths.
pub(crate) fn error_bytes(e: &ErrorMessage) -> Bytes {
    Bytes::from(e.to_json())
}

enum End {
    Close(u16, &'static str, Option<Bytes>),
    /// The peer sent a close frame; tungstenite answers it.
    PeerClosed,
    /// The socket broke or the writer stopped: nothing more can be said.
    Gone,
}

/// Runs a connection until it ends. Returns when the socket is finished with.
pub(crate) async fn drive<H: Inbound>(
    socket: WebSocket,
    outbox: Outbox,
    mut inbound: H,
    timing: Timing,
    shutdown: Shutdown,
) {
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone()));
    let mut ping =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
    let check_every = (timing.stuck_timeout.min(timing.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(check_every);
    let mut last_heard = Instant::now();
    let end = loop {
        tokio::select! {
            _ = shutdown.recv() => {
                break End::Close(close_codes::RESTART, close_codes::RESTART_REASON, None);
            }
            _ = &mut writer => break End::Gone,
            frame = stream.next() => {
                let msg = match frame {
                    None => break End::Gone,
                    Some(Err(e)) => match read_error(e) {
                        ReadError::TooBig => {
                            crate::metrics::rejected("frame_too_big");
                            break End::Close(close_codes::TOO_BIG, "message too big", None);
                        }
                        ReadError::BadUtf8 => {
                            crate::metrics::rejected("invalid_utf8");
                            break End::Close(close_codes::INVALID_PAYLOAD, "text frame is not UTF-8", None);
                        }
                        ReadError::Other => break End::Gone,
                    },
                    Some(Ok(msg)) => msg,
                };
                last_heard = Instant::now();
                let flow = match msg {
                    Message::Text(t) => inbound.on_text(t.as_str()).await,
                    Message::Binary(_) => inbound.on_binary().await,
                    Message::Close(_) => break End::PeerClosed,
                    Message::Ping(_) | Message::Pong(_) => Flow::Continue,
                };
                if let Flow::Close { code, reason, error } = flow {
                    break End::Close(code, reason, error);
                }
            }
            _ = ping.tick() => outbox.push_ping(),
            _ = watchdog.tick() => {
                if last_heard.elapsed() > timing.idle_timeout {
                    tracing::debug!("reaping a silent peer");
                    break End::Close(close_codes::GOING_AWAY, "idle timeout", None);
                }
                if outbox.stalled_for().is_some_and(|d| d >= timing.stuck_timeout) {
                    crate::metrics::slow_consumer_closed();
                    let e = ErrorMessage::new(
                        "slow_consumer",
                        "the connection did not read its messages in time; reconnect with the last seq",
                    );
                    break End::Close(close_codes::SLOW_CONSUMER, "slow consumer", Some(error_bytes(&e)));
                }
            }
        }
    };
    match end {
        End::Close(code, reason, error) => {
            outbox.close(code, reason, error);
            // Bounded: a peer that never reads must not keep us forever.
            let _ = tokio::time::timeout(timing.close_grace, async {
                let _ = (&mut writer).await;
                // The handshake: wait for the peer's close so it reads ours
                // before the TCP connection goes away.
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        End::PeerClosed => {
            // tungstenite queued the reply; let the writer flush it.
            outbox.close(close_codes::NORMAL, "", None);
            let _ = tokio::time::timeout(timing.close_grace, &mut writer).await;
        }
        End::Gone => outbox.close(close_codes::GOING_AWAY, "", None),
    }
    writer.abort();
}

enum ReadError {
    TooBig,
    /// A text frame that is not UTF-8: the client gets 1007, not a dropped socket.
    BadUtf8,
    Other,
}

fn read_error(e: axum::Error) -> ReadError {
    use tokio_tungstenite::tungstenite::Error;
    match e.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => ReadError::TooBig,
        Some(Error::Utf8(_)) => ReadError::BadUtf8,
        _ => ReadError::Other,
    }
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: Outbox) {
    // Looked up once and counted once per batch: a registry lookup per
    // message showed up in profiles at 100k deliveries/s (benches/README.md).
    let sent = metrics::counter!(crate::metrics::MESSAGES_SENT);
    while let Some(first) = outbox.next().await {
        let mut next = Some(first);
        let mut batch = 0;
        let mut data = 0;
        while let Some(out) = next.take() {
            let last = matches!(out, Out::Close { .. });
            data += u64::from(matches!(out, Out::Data { .. }));
            if let Out::Close { error: Some(e), .. } = &out {
                if let Ok(text) = Utf8Bytes::try_from(e.clone()) {
                    let _ = sink.feed(Message::Text(text)).await;
                }
            }
            if let Some(msg) = to_message(out) {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if last {
                let _ = sink.flush().await;
                sent.increment(data);
                return;
            }
            batch += 1;
            if batch < MAX_BATCH {
                next = outbox.try_next();
            }
        }
        let flushed = sink.flush().await;
        sent.increment(data);
        if flushed.is_err() {
            return;
        }
    }
}

fn to_message(out: Out) -> Option<Message> {
    match out {
        Out::Data { bytes, .. } => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        Out::Control(bytes) => Utf8Bytes::try_from(bytes).ok().map(Message::Text),
        Out::Ping => Some(Message::Ping(Bytes::new())),
        Out::Close { code, reason, .. } => Some(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }))),
    }
}
