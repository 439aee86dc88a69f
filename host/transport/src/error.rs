//! Transport errors: what failed, with the peer named where we know it.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS handshake with {addr}: {reason}")]
    Handshake { addr: String, reason: String },
    /// The peer offered or accepted another version of the peer protocol
    /// (the ALPN id): a cluster mixing minor versions whose wire differs.
    #[error(
        "{addr} speaks another version of qu's peer protocol than this node ({}): run the same minor version of qu on every node (docs/operations.md, Upgrades)",
        String::from_utf8_lossy(crate::ALPN)
    )]
    Version { addr: String },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("no answer within {}", humanize(*.0))]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error("refused by peer: {0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}
