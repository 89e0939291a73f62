//! The WebSocket handshake, done here so the connection gets the raw socket.
//!
//! axum's `WebSocketUpgrade` hands over a tungstenite stream behind a lock
//! shared by its two halves; the gateway writes pre-serialized frames
//! itself ([`crate::ws::frame`]), so it takes the TCP stream back from hyper
//! and splits it into owned halves. Refusals keep axum's statuses and texts,
//! in the gateway's JSON error body.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::security::auth::SUBPROTOCOL;

/// A valid WebSocket handshake request, not yet answered.
pub(crate) struct Upgrade {
    key: HeaderValue,
    /// `kpistream`, echoed when the client offered it.
    protocol: Option<HeaderValue>,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake.
#[derive(Debug)]
pub(crate) struct UpgradeRejection(StatusCode, &'static str);

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let mut resp = crate::request::ApiError::new(self.0, "not_a_websocket_handshake", self.1)
            .into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 4.2.2: name the version we speak.
            resp.headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        resp
    }
}

/// A `Sec-WebSocket-Key` is 16 bytes in base64: 22 characters of the
/// alphabet and `==` (RFC 6455 4.1).
fn valid_key(key: &[u8]) -> bool {
    let alphabet = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key.ends_with(b"==") && key[..22].iter().all(alphabet)
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let bad = |why| Err(UpgradeRejection(StatusCode::BAD_REQUEST, why));
        if parts.method != Method::GET {
            return Err(UpgradeRejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        let h = &parts.headers;
        if !has_token(h, CONNECTION, "upgrade") {
            return bad("Connection header did not include 'upgrade'");
        }
        if !has_token(h, UPGRADE, "websocket") {
            return bad("`Upgrade` header did not include 'websocket'");
        }
        if !has_token(h, SEC_WEBSOCKET_VERSION, "13") {
            return Err(UpgradeRejection(
                StatusCode::UPGRADE_REQUIRED,
                "this server speaks WebSocket version 13 only (`Sec-WebSocket-Version: 13`)",
            ));
        }
        let Some(key) = h.get(SEC_WEBSOCKET_KEY).cloned() else {
            return bad("`Sec-WebSocket-Key` header missing");
        };
        if !valid_key(key.as_bytes()) {
            return bad("`Sec-WebSocket-Key` must be 16 bytes in base64");
        }
        let protocol = has_token(h, SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
            .then(|| HeaderValue::from_static(SUBPROTOCOL));
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(UpgradeRejection(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ));
        };
        Ok(Upgrade {
            key,
            protocol,
            on_upgrade,
        })
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Upgrade {
    /// The 101 response; `serve` runs on the socket once hyper hands it over.
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(RawSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(accept) = HeaderValue::try_from(derive_accept_key(self.key.as_bytes())) else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(RawSocket::new(upgraded)).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(p) = self.protocol {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, p);
        }
        response
    }
}

/// The sending half. A TCP socket is written with `try_write` first, which
/// skips the readiness bookkeeping of `AsyncWrite::poll_write` when the
/// socket has room, as it almost always does.
pub(crate) enum SocketWriter {
    Tcp(OwnedWriteHalf),
    /// An upgraded stream hyper would not give back as TCP.
    Other(Box<dyn AsyncWrite + Send + Unpin>),
}

impl SocketWriter {
    pub(crate) async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        match self {
            SocketWriter::Tcp(w) => {
                while !buf.is_empty() {
                    match w.try_write(buf) {
                        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => buf = &buf[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            w.writable().await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            SocketWriter::Other(w) => w.write_all(buf).await,
        }
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            // Nothing is buffered above the kernel.
            SocketWriter::Tcp(_) => Ok(()),
            SocketWriter::Other(w) => w.flush().await,
        }
    }
}

/// The upgraded connection as two independently owned halves.
pub(crate) struct RawSocket {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub writer: SocketWriter,
    /// Bytes the client sent right after the handshake, already read by hyper.
    pub buffered: Bytes,
}

impl RawSocket {
    fn new(upgraded: Upgraded) -> RawSocket {
        // Our accept loop serves plain TCP streams: take the stream back and
        // split it without a lock. Anything else is split generically.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (reader, writer) = parts.io.into_inner().into_split();
                RawSocket {
                    reader: Box::new(reader),
                    writer: SocketWriter::Tcp(writer),
                    buffered: parts.read_buf,
                }
            }
            Err(upgraded) => {
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                RawSocket {
                    reader: Box::new(reader),
                    writer: SocketWriter::Other(Box::new(writer)),
                    buffered: Bytes::new(),
                }
            }
        }
    }
}
