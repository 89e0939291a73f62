//! WebSockets: the handshake, frames, one connection's life, and the two kinds of socket.
//!
//! [`upgrade`] answers the handshake and hands over the raw TCP halves;
//! [`frame`] encodes the server's frames and decodes the client's;
//! [`connection`] drives one socket (writer, pings, reaping, the message
//! rate, closing); [`topic_socket`] (`/ws/kpi/<code>`) and [`mux`] (`/ws`)
//! are what a client talks to.

pub(crate) mod connection;
pub(crate) mod frame;
pub(crate) mod message_rate;
pub mod mux;
pub(crate) mod topic_socket;
pub(crate) mod upgrade;
