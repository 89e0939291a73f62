//! kpistream's gateway: WebSocket, SSE and HTTP endpoints that keep dashboards live.
//!
//! One [`hub::Hub`] per process holds the topics local clients watch, each
//! with one upstream bus subscription, a ring of recent updates and the list
//! of connections to fan out to. Every connection owns an [`outbox::Outbox`]:
//! a bounded queue that conflates instead of growing, so a slow client costs a
//! fixed amount of memory. Transports (`ws`, `ws_mux`, `sse`, `api`) only
//! translate between their wire format and hub subscriptions.

mod access;
mod admin;
pub mod api;
mod assets;
pub mod audit;
pub mod auth;
pub mod close_codes;
pub mod config;
mod connection;
pub mod error;
mod http;
pub mod hub;
pub mod ip_rate;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod rate;
pub mod request;
pub mod server;
pub mod sse;
pub mod topic;
pub mod ws;
mod ws_frame;
pub mod ws_mux;
mod ws_upgrade;

pub use config::{Cli, GatewaySettings};
pub use error::GatewayError;
pub use server::{run, run_with_routes};
