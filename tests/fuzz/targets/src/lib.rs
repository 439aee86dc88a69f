//! The bodies of the fuzz targets in `tests/fuzz/fuzz_targets/`: each takes
//! arbitrary bytes and must neither panic nor hang, and where a decoder has
//! an encoder, what it decodes must encode to something that decodes to
//! the same. The fuzzer runs them on nightly (`tests/fuzz/run`); the
//! committed corpora are replayed on stable by `tests/replay.rs`, so every
//! input that once found a bug stays a test.
//!
//! The SDK's config parsing and the dns plugin's wire parser live in their
//! own workspaces (built for WebAssembly); their targets are in
//! `tests/fuzz/fuzz_targets/` too, and their corpora are replayed by those
//! crates' own tests.

use qu_core::config::{ClusterConfig, Mutation, NodeConfig};
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};

/// What a target does with one input.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("cluster_yaml", cluster_yaml),
    ("node_yaml", node_yaml),
    ("frame", frame),
    ("envelope", envelope),
    ("mutation", mutation),
    ("control", control),
];

/// `cluster.yaml`: parsing (which validates), and what parses renders to
/// text that parses to the same configuration.
pub fn cluster_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = ClusterConfig::parse(text) else { return };
    let _ = config.validate();
    let again = ClusterConfig::parse(&config.to_yaml()).expect("a parsed cluster.yaml renders to one that parses");
    assert_eq!(again, config, "cluster.yaml round trip");
    let _ = ClusterConfig::parse(&config.to_operator_yaml());
}

/// `node.yaml`: parsing and validation, and the round trip.
pub fn node_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(node) = NodeConfig::parse(text) else { return };
    let _ = node.validate();
    let again = NodeConfig::parse(&node.to_yaml()).expect("a parsed node.yaml renders to one that parses");
    assert_eq!(again, node, "node.yaml round trip");
}

/// A frame off the wire from a stranger: the length prefix is checked
/// before anything is allocated, and a frame never exceeds the limit.
pub fn frame(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let mut reader = data;
    let max = qu_core::limits::UNTRUSTED_FRAME_BYTES_MAX;
    while let Ok(Some(payload)) = runtime.block_on(qu_transport::frame::read_frame(&mut reader, max)) {
        assert!(payload.len() <= max);
    }
}

/// A frame's payload as the transport decodes it: peer requests, responses
/// and notices (the join handshake among them), and its re-encoding.
pub fn envelope(data: &[u8]) {
    let Some(encoded) = qu_transport::decode_payload::<PeerRequest, PeerResponse, PeerNotice>(data) else { return };
    let again = qu_transport::decode_payload::<PeerRequest, PeerResponse, PeerNotice>(&encoded)
        .expect("what decodes encodes to something that decodes");
    assert_eq!(again, encoded, "envelope round trip");
}

/// A `Propose`'s mutation JSON, as the master decodes it, and applying it
/// to a fresh configuration (whose validation must refuse, not panic).
pub fn mutation(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mutation) = serde_json::from_str::<Mutation>(text) else { return };
    let json = serde_json::to_string(&mutation).expect("a mutation serialises");
    let again: Mutation = serde_json::from_str(&json).expect("what serialises parses");
    assert_eq!(again, mutation, "mutation round trip");
    let config = base();
    let stamp = qu_core::config::Stamp {
        id: qu_core::consensus::ConfigId { term: config.term, version: config.version + 1 },
        at: qu_core::config::Timestamp::from_system_time(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        ),
        by: config.peers[0].node_id,
    };
    let _ = mutation.apply(&config, &stamp);
}

/// A real cluster.yaml (the recorded 0.1 data directory's) to apply
/// mutations to.
fn base() -> ClusterConfig {
    static BASE: std::sync::OnceLock<ClusterConfig> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        ClusterConfig::parse(include_str!("../../../fixtures/datadir-0.1/cluster.yaml")).expect("the fixture parses")
    })
    .clone()
}

/// A control request line, as the daemon reads one from its socket.
pub fn control(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.lines() {
        let _ = serde_json::from_str::<qu_daemon::control::ControlRequest>(line);
    }
}
