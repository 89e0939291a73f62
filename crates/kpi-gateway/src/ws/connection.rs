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

use bytes::{Bytes, BytesMut};
use kpi_core::ErrorMessage;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use crate::close_codes;
use crate::fanout::outbox::{Out, Outbox};
use crate::ws::frame::{self, Decoder, FrameError, Incoming};
use crate::ws::message_rate::{RateLimiter, Verdict};
use crate::ws::upgrade::{RawSocket, SocketWriter};

/// At most one `rate_limited` reply per this interval: answering every
/// flooded message would make us write as fast as the flooder writes.
const RATE_REPLY_EVERY: Duration = Duration::from_secs(1);

/// Messages written in one syscall, so a burst costs few of them.
const MAX_BATCH: usize = 64;

/// Initial read buffer per connection. Small because an idle dashboard
/// connection must cost little memory and clients send only short messages;
/// a larger message grows it while it arrives.
pub(crate) const READ_BUFFER_BYTES: usize = 1024;
/// `messages_sent` is updated after this many messages or this long,
/// whichever comes first (and when the connection ends).
const COUNT_EVERY: u64 = 32;
const COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// A write buffer that grew past this (a burst) is freed after the write,
/// so idle connections do not keep it.
const KEEP_WRITE_BUFFER: usize = 4096;

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
    /// Largest message (and frame) a client may send.
    pub max_message: usize,
    /// Inbound messages (text, binary, pings) per second; bursts of twice that.
    pub max_messages_per_sec: u32,
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
            max_message: s.max_frame_bytes,
            max_messages_per_sec: s.max_messages_per_sec,
        }
    }
}

/// JSON of an error message, for queues and close paths.
pub(crate) fn error_bytes(e: &ErrorMessage) -> Bytes {
    Bytes::from(e.to_json())
}

enum End {
    Close(u16, &'static str, Option<Bytes>),
    /// The peer sent a close frame; the writer answers it.
    PeerClosed,
    /// The socket broke or the writer stopped: nothing more can be said.
    Gone,
}

/// The inbound message rate of one connection: every text, binary and
/// ping frame draws on it, whatever the socket does with it.
struct MessageRate {
    limiter: RateLimiter,
    per_sec: u32,
    last_reply: Option<Instant>,
}

impl MessageRate {
    /// `None` when the message may be handled; otherwise what to do instead
    /// (a throttled `rate_limited` error, or closing a flooder with 1008).
    fn check(&mut self, outbox: &Outbox) -> Option<Flow> {
        match self.limiter.check() {
            Verdict::Allow => None,
            Verdict::Limited => {
                crate::metrics::rejected("rate_limited");
                let due = self
                    .last_reply
                    .is_none_or(|t| t.elapsed() >= RATE_REPLY_EVERY);
                if due {
                    self.last_reply = Some(Instant::now());
                    let e = ErrorMessage::new(
                        "rate_limited",
                        format!(
                            "more than {} messages per second; this message was ignored",
                            self.per_sec
                        ),
                    );
                    return Some(push_reply(outbox, error_bytes(&e)));
                }
                Some(Flow::Continue)
            }
            Verdict::Abuse => {
                crate::metrics::rejected("flooding");
                let e = ErrorMessage::new("rate_limited", "kept flooding past the rate limit");
                Some(Flow::Close {
                    code: close_codes::POLICY,
                    reason: "rate limit exceeded",
                    error: Some(error_bytes(&e)),
                })
            }
        }
    }
}

/// Queues a reply, or closes a client that leaves its replies unread.
pub(crate) fn push_reply(outbox: &Outbox, reply: Bytes) -> Flow {
    if outbox.push_control(reply) {
        Flow::Continue
    } else {
        crate::metrics::slow_consumer_closed();
        let e = ErrorMessage::new("slow_consumer", "replies were not read");
        Flow::Close {
            code: close_codes::SLOW_CONSUMER,
            reason: "slow consumer",
            error: Some(error_bytes(&e)),
        }
    }
}

/// Runs a connection until it ends (or `closing` resolves: the gateway
/// drains). Returns when the socket is finished with.
pub(crate) async fn drive<H: Inbound>(
    socket: RawSocket,
    outbox: Outbox,
    mut inbound: H,
    timing: Timing,
    closing: impl Future<Output = ()> + Send,
) {
    tokio::pin!(closing);
    let mut rate = MessageRate {
        limiter: RateLimiter::new(timing.max_messages_per_sec),
        per_sec: timing.max_messages_per_sec,
        last_reply: None,
    };
    let RawSocket {
        mut reader,
        writer,
        buffered,
    } = socket;
    let mut writer = tokio::spawn(write_loop(writer, outbox.clone()));
    // Copied out so hyper's request buffer, which `buffered` may share,
    // is freed now rather than held for the connection's life.
    let mut input = Input {
        buf: BytesMut::from(&buffered[..]),
        decoder: Decoder::new(timing.max_message),
    };
    drop(buffered);
    // Connections opened together (a deploy, a reconnect storm) would ping
    // together forever, a burst of writes and pongs every interval: the
    // first ping comes somewhere in the second half of the interval.
    let first_ping = timing
        .ping_interval
        .mul_f64(0.5 + 0.5 * spread(outbox.id()));
    let mut ping = tokio::time::interval_at(Instant::now() + first_ping, timing.ping_interval);
    // A quarter of the shorter timeout: a close comes at most 25% late. Not
    // capped at a second: with the defaults (30 s, 60 s) that woke every
    // connection once a second, 60,000 wake-ups/s on four gateways.
    let check_every =
        (timing.stuck_timeout.min(timing.idle_timeout) / 4).max(Duration::from_millis(10));
    let mut watchdog = tokio::time::interval(check_every);
    let mut last_heard = Instant::now();
    let end = loop {
        tokio::select! {
            () = &mut closing => {
                break End::Close(close_codes::RESTART, close_codes::RESTART_REASON, None);
            }
            _ = &mut writer => break End::Gone,
            incoming = input.next(&mut reader) => {
                let msg = match incoming {
                    Ok(Some(m)) => m,
                    Ok(None) => break End::Gone,
                    Err(ReadError::Frame(FrameError::TooBig)) => {
                        crate::metrics::rejected("frame_too_big");
                        break End::Close(close_codes::TOO_BIG, "message too big", None);
                    }
                    Err(ReadError::Frame(FrameError::BadUtf8)) => {
                        crate::metrics::rejected("invalid_utf8");
                        break End::Close(close_codes::INVALID_PAYLOAD, "text frame is not UTF-8", None);
                    }
                    Err(ReadError::Frame(FrameError::Protocol(why))) => {
                        crate::metrics::rejected("protocol_error");
                        break End::Close(close_codes::PROTOCOL, why, None);
                    }
                    Err(ReadError::Io) => break End::Gone,
                };
                last_heard = Instant::now();
                let limited = match msg {
                    Incoming::Text(_) | Incoming::Binary | Incoming::Ping(_) => rate.check(&outbox),
                    Incoming::Pong | Incoming::Close => None,
                };
                let flow = match (limited, msg) {
                    (Some(flow), _) => flow,
                    (None, Incoming::Text(t)) => inbound.on_text(&t).await,
                    (None, Incoming::Binary) => inbound.on_binary().await,
                    (None, Incoming::Close) => break End::PeerClosed,
                    (None, Incoming::Ping(payload)) => {
                        outbox.push_pong(payload);
                        Flow::Continue
                    }
                    (None, Incoming::Pong) => Flow::Continue,
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
                while let Ok(Some(m)) = input.next(&mut reader).await {
                    if m == Incoming::Close {
                        break;
                    }
                }
            })
            .await;
        }
        End::PeerClosed => {
            outbox.close(close_codes::NORMAL, "", None);
            let _ = tokio::time::timeout(timing.close_grace, &mut writer).await;
        }
        End::Gone => outbox.close(close_codes::GOING_AWAY, "", None),
    }
    writer.abort();
}

/// A fraction in [0, 1) for a connection number; consecutive numbers land
/// far apart (multiplication by the golden ratio), so connections opened one
/// after another are spread evenly without a random number generator.
fn spread(n: u64) -> f64 {
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

enum ReadError {
    /// The client broke the protocol or a limit: answered with a close code.
    Frame(FrameError),
    /// The socket failed: nothing more can be said.
    Io,
}

/// The reading side: bytes read so far and the message being reassembled.
struct Input {
    buf: BytesMut,
    decoder: Decoder,
}

impl Input {
    /// The next whole message; `None` at end of stream. Cancel-safe: bytes
    /// are kept in `buf` and a partial message in the decoder.
    async fn next(
        &mut self,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(m) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(ReadError::Frame)?
            {
                return Ok(Some(m));
            }
            if self.buf.capacity() - self.buf.len() < READ_BUFFER_BYTES / 2 {
                self.buf.reserve(READ_BUFFER_BYTES);
            }
            match reader.read_buf(&mut self.buf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(_) => return Err(ReadError::Io),
            }
        }
    }
}

async fn write_loop(mut w: SocketWriter, outbox: Outbox) {
    // Looked up once and counted once per batch: a registry lookup per
    // message showed up in profiles at 100k deliveries/s (benches/README.md).
    let sent = metrics::counter!(crate::metrics::MESSAGES_SENT);
    let mut uncounted = 0u64;
    let mut counted_at = Instant::now();
    let mut buf = Vec::new();
    while let Some(filled) = outbox.fill(MAX_BATCH, |out| encode(&mut buf, out)).await {
        let written = w.write_all(&buf).await;
        // Added to the shared counter in lumps: at 10 messages/s on 10,000
        // connections, one atomic add per write was 2.5% of the gateway's CPU.
        uncounted += filled.data;
        let done = written.is_err() || filled.last;
        if done || uncounted >= COUNT_EVERY || counted_at.elapsed() >= COUNT_INTERVAL {
            sent.increment(uncounted);
            uncounted = 0;
            counted_at = Instant::now();
        }
        if done {
            let _ = w.flush().await;
            return;
        }
        buf.clear();
        if buf.capacity() > KEEP_WRITE_BUFFER {
            buf = Vec::new();
        }
    }
    sent.increment(uncounted);
}

/// Appends `out` as WebSocket frames.
fn encode(buf: &mut Vec<u8>, out: Out) {
    match out {
        Out::Data { bytes, .. } | Out::Control(bytes) => frame::encode(buf, frame::TEXT, &bytes),
        Out::Ping => frame::encode(buf, frame::PING, &[]),
        Out::Pong(payload) => frame::encode(buf, frame::PONG, &payload),
        Out::Close {
            code,
            reason,
            error,
        } => {
            if let Some(e) = error {
                frame::encode(buf, frame::TEXT, &e);
            }
            frame::encode_close(buf, code, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn consecutive_connections_spread_over_the_whole_range() {
        let mut buckets = [0u32; 10];
        for n in 1..=1000 {
            let f = spread(n);
            assert!((0.0..1.0).contains(&f));
            buckets[(f * 10.0) as usize] += 1;
        }
        // 1,000 consecutive ids: every tenth of the range gets close to 100.
        assert!(
            buckets.iter().all(|b| (90..=110).contains(b)),
            "{buckets:?}"
        );
    }
}
