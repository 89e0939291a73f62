//! kpistream's gateway: WebSocket, SSE and HTTP endpoints that keep dashboards live.
//!
//! Every client, whatever its transport, is a [`session`]: admitted once
//! ([`security`]: maintenance, Origin, per-IP rate, token; a connection
//! slot), given an outbox, and subscribed through the caller's and the
//! gateway's topic caps. [`fanout`] holds the topics local clients watch,
//! each with one upstream bus subscription, and a bounded, conflating
//! outbox per client, so a slow client costs a fixed amount of memory. The
//! transports ([`ws`], [`sse`], [`api`]) only translate between their wire
//! format and sessions.

mod admin;
mod api;
mod assets;
pub mod close_codes;
pub mod config;
pub mod error;
pub mod fanout;
mod http;
pub mod metrics;
mod protocol_docs;
pub mod request;
pub mod security;
mod server;
mod session;
mod sse;
mod state;
pub mod ws;

pub use config::{Cli, GatewaySettings};
pub use error::GatewayError;
pub use server::{route_table, run, run_with_routes};
