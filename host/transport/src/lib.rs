//! Peer transport: TCP + TLS 1.3 with mutual authentication pinned by SPKI
//! fingerprint, length-prefixed frames with a hard size limit, and
//! request/response plus one-way messages over one connection.
//!
//! The only crate that names rustls. Invariants:
//! - every message's sender is the TLS identity of its connection, looked up
//!   in the [`TrustStore`] when the message arrives (so a revoked key stops
//!   counting at once);
//! - an untrusted peer reaches only requests its [`Protocol`] opens to it;
//! - a frame longer than `FRAME_BYTES_MAX` closes the connection before any
//!   buffer of that size is allocated.

pub mod client;
mod conn;
mod error;
pub mod frame;
pub mod identity;
pub mod net;
mod tls;

pub use tls::probe_client_config;
mod trust;

pub use conn::{Caller, Connection, Endpoint, Expect, Handler, Protocol, decode_payload};
pub use error::TransportError;
pub use identity::{GeneratedIdentity, IdentityError, TlsIdentity};
pub use trust::TrustStore;

/// ALPN protocol id of qu's peer protocol: the wire's version, bumped with
/// every change a node of the previous version could not read (`qu/2`
/// since 0.2: snapshots carry their hash, acknowledgements their promise).
/// A node refuses a peer that speaks another at the handshake.
pub const ALPN: &[u8] = b"qu/2";

#[cfg(test)]
mod tests;
