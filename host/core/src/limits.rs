//! Hard limits, in one place, named with the unit last.

/// Largest frame the transport accepts; a larger length prefix closes the
/// connection before anything is allocated. Sized for a full `cluster.yaml`
/// snapshot and a plugin blob (at most 10 MiB) with room to spare.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The longest frame read from a key that is not a member (the join
/// handshake's messages; the membership a joiner gets is at most 15 peers'
/// certificates): a stranger cannot make a node allocate more before it
/// is trusted.
pub const UNTRUSTED_FRAME_BYTES_MAX: usize = 64 * 1024;

/// Members of one cluster. qu is built for 3–7 nodes; the cap keeps
/// per-peer state and fan-out bounded.
pub const PEERS_MAX: usize = 15;

/// Checks in one cluster.
pub const CHECKS_MAX: usize = 100_000;

/// Alerts in one cluster.
pub const ALERTS_MAX: usize = 1_000;

/// Plugins in one cluster.
pub const PLUGINS_MAX: usize = 256;
/// Largest plugin component, in bytes.
pub const PLUGIN_BYTES_MAX: u64 = 10 * 1024 * 1024;

/// Shortest cluster secret accepted from an operator, in characters.
pub const CLUSTER_SECRET_CHARS_MIN: usize = 16;

/// Largest `cluster.yaml` we parse, in bytes.
pub const CLUSTER_YAML_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest `node.yaml` we parse, in bytes.
pub const NODE_YAML_BYTES_MAX: usize = 64 * 1024;
