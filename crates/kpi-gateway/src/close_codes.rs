//! WebSocket close codes the gateway sends, spelled in one place.

/// The peer went away or was silent past the idle timeout.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol (an unmasked frame, a bad opcode).
pub const PROTOCOL: u16 = 1002;
/// A text frame that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation: sustained flooding past the rate limit.
pub const POLICY: u16 = 1008;
/// A frame or message larger than `max_frame_bytes`.
pub const TOO_BIG: u16 = 1009;
/// Something broke inside the gateway.
pub const INTERNAL: u16 = 1011;
/// The gateway is draining: reconnect (to another instance).
pub const RESTART: u16 = 1012;
/// The connection's token expired (an `error` with code `token_expired` comes first).
pub const TOKEN_EXPIRED: u16 = 4001;
/// The client's queue stayed full past the stuck timeout.
pub const SLOW_CONSUMER: u16 = 4008;

/// The reason sent with [`RESTART`].
pub const RESTART_REASON: &str = "service restart, reconnect elsewhere";

/// Normal closure, answering a client's close.
pub const NORMAL: u16 = 1000;
