//! A TLS handshake performed by the host, exposing the server's
//! certificate chain (for checks about certificates).

use std::time::Duration;

use crate::__checker::tls_inspect as wit;

pub use wit::{Certificate, Handshake};

/// Connects to `host:port`, handshakes presenting `server_name` (SNI;
/// `host` when `None`), and returns the chain the server sent, with whether
/// it verifies against the system roots plus `ca_pem`.
pub fn inspect(
    host: &str,
    port: u16,
    server_name: Option<&str>,
    ca_pem: Option<&str>,
    timeout: Duration,
) -> Result<Handshake, String> {
    wit::inspect(host, port, server_name, ca_pem, timeout.as_millis().min(u32::MAX as u128) as u32)
}
