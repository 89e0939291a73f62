//! A minimal HTTP/1.1 GET client, async for tests and blocking for server start-up probes.
//!
//! Hand-rolled rather than reqwest because the harness only ever GETs plain
//! `http://` URLs on localhost, and needs a blocking variant for start-up
//! waits that run inside synchronous constructors; a few dozen lines cost less
//! to build than an HTTP stack on a shared two-core machine.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest an [`http_get`] may take: long enough for a long-poll request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a GET did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL {0:?}: only http://host:port/path is supported")]
    BadUrl(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("no response from {0} within the timeout")]
    Timeout(String),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
}

/// GETs `url` and returns the status and body; panics when there is no response.
///
/// For tests that expect the server to answer; use [`try_http_get`] to poll.
pub async fn http_get(url: &str) -> (u16, String) {
    match try_http_get(url, DEFAULT_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => panic!("GET {url} failed: {e}"),
    }
}

/// GETs `url`, waiting at most `timeout` for the whole response.
pub async fn try_http_get(url: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let (addr, request) = request_for(url)?;
    let exchange = async {
        let mut stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| HttpError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let io = |source| HttpError::Io {
            addr: addr.clone(),
            source,
        };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.map_err(io)?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout(url.to_string()))?
}

/// The blocking twin of [`try_http_get`], for probes in synchronous constructors.
pub(crate) fn blocking_get(url: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let (addr, request) = request_for(url)?;
    let sock_addr = addr
        .parse()
        .map_err(|_| HttpError::BadUrl(url.to_string()))?;
    let mut stream = StdTcpStream::connect_timeout(&sock_addr, timeout).map_err(|source| {
        HttpError::Connect {
            addr: addr.clone(),
            source,
        }
    })?;
    let io = |source| HttpError::Io {
        addr: addr.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw)
}

/// Splits `http://host:port/path` into the address to dial and the request to send.
fn request_for(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::BadUrl(url.to_string()));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    // `Connection: close` lets the body end at EOF, so no keep-alive framing
    // is needed beyond chunked decoding.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    Ok((addr, request))
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), HttpError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| HttpError::Malformed("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| HttpError::Malformed("unterminated chunk size".into()))?;
        let size_line = String::from_utf8_lossy(&body[..eol]);
        // Chunk extensions (";name=value") are allowed after the size.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_hex:?}")))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err(HttpError::Malformed("truncated chunk".into()));
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            parse_response(plain).expect("plain"),
            (200, "ok".to_string())
        );
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).expect("chunked"),
            (503, "abcde".to_string())
        );
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        assert!(matches!(
            request_for("https://x/"),
            Err(HttpError::BadUrl(_))
        ));
        let (addr, req) = request_for("http://127.0.0.1:9/healthz?x=1").expect("valid");
        assert_eq!(addr, "127.0.0.1:9");
        assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"));
    }
}
