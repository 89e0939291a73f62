//! The plain baseline: a WebSocket fan-out writer with no logic at all.
//!
//! It accepts `/ws/kpi/<code>` subscribers and one `/feed` publisher. Each fed
//! message is framed once and the same bytes are handed to every subscriber's
//! writer task through a bounded channel (a full channel drops the message:
//! no conflation, no ordering, no snapshot, no resume). This is about the
//! least work a tokio WebSocket server can do per delivery, which is what
//! makes it a useful yardstick for the gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Messages queued per subscriber before new ones are dropped.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Exits by itself after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub max_secs: u64,
}

type Subscribers = Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Bytes>)>>>;

struct Server {
    subs: Subscribers,
    next_id: AtomicU64,
    queue: usize,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    // The coordinator reads the port from this line.
    println!("listening {}", listener.local_addr()?);
    let server = Arc::new(Server {
        subs: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        queue: args.queue.max(1),
    });
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of files or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let _ = handle(stream, &server).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {}
    }
    Ok(())
}

/// A server-to-client text frame (unmasked, final) around `payload`.
pub fn frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x81);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= 0xFFFF => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.extend_from_slice(payload);
    b.freeze()
}

async fn handle(mut stream: TcpStream, server: &Server) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        anyhow::ensure!(buf.len() < 8192, "request head too long");
    };
    let head = std::str::from_utf8(&buf[..head_len])?;
    let path = head
        .split_whitespace()
        .nth(1)
        .context("no request path")?
        .to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .context("no Sec-WebSocket-Key")?;
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(reply.as_bytes()).await?;

    if path == "/feed" {
        let mut ws = tokio_tungstenite::WebSocketStream::from_partially_read(
            stream,
            buf[head_len..].to_vec(),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(b) = msg {
                fan_out(server, &b);
            }
        }
        return Ok(());
    }
    let code = path
        .strip_prefix("/ws/kpi/")
        .context("unknown path")?
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(server.queue);
    if let Ok(mut subs) = server.subs.lock() {
        subs.entry(code.clone()).or_default().push((id, tx));
    }
    let (mut read, write) = stream.into_split();
    let writer = tokio::spawn(write_loop(write, rx));
    // Read and discard until the client goes away.
    let mut sink = [0u8; 256];
    while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
    if let Ok(mut subs) = server.subs.lock() {
        if let Some(v) = subs.get_mut(&code) {
            v.retain(|(i, _)| *i != id);
        }
    }
    writer.abort();
    Ok(())
}

/// Feed message: `<code>\n<json>`. Framed once, shared by every subscriber.
fn fan_out(server: &Server, msg: &[u8]) {
    let Some(nl) = msg.iter().position(|b| *b == b'\n') else {
        return;
    };
    let Ok(code) = std::str::from_utf8(&msg[..nl]) else {
        return;
    };
    let framed = frame(&msg[nl + 1..]);
    if let Ok(subs) = server.subs.lock() {
        for (_, tx) in subs.get(code).into_iter().flatten() {
            let _ = tx.try_send(framed.clone());
        }
    }
}

async fn write_loop(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut out = Vec::with_capacity(4096);
    while let Some(first) = rx.recv().await {
        // Whatever else is already queued goes out in the same write.
        out.extend_from_slice(&first);
        while out.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        if w.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        // Keep idle connections small.
        out.shrink_to(4096);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_right_length_encoding() {
        assert_eq!(&frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
    }
}
