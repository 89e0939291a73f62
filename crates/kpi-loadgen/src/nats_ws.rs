//! The nats-server WebSocket baseline: its configuration and version.
//!
//! Debian's nats-server 2.9 turns WebSocket on only from a config file, so
//! the target writes a `websocket { }` block; clients then speak the NATS
//! protocol inside WebSocket frames (see `clients::parse_nats`).

/// The config block enabling nats-server's WebSocket listener on 127.0.0.1:`port`.
pub fn websocket_block(port: u16) -> String {
    format!("websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}")
}

/// `nats-server --version`, for the report.
pub fn version() -> String {
    crate::processes::nats_server_bin()
        .ok()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "(unknown version)".into())
}
