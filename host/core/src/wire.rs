//! Messages between nodes over the mTLS transport.
//!
//! The sender of every message is the TLS identity of its connection, never
//! a field in the body. An untrusted peer (one whose key is not in
//! `cluster.yaml`) may send only the join handshake requests.

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::config::{Mutation, Stamp};
use crate::consensus::{ConfigId, Digest, Msg};
use crate::monitor::{CheckSummary, Report};

/// Requests a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Join handshake, step 1: who are you? Open to untrusted peers, so the
    /// operator can confirm the node id and fingerprint before anything else.
    Identify,
    /// Join handshake, step 2: the inviter's PAKE message, with the
    /// cluster secret as the password, bound to this TLS session (see
    /// [`crate::join`]). Open to untrusted peers.
    JoinStart { pake: Vec<u8> },
    /// Join handshake, step 3, sent only once the joiner's confirmation
    /// checked out: the inviter's own confirmation, and the cluster's
    /// membership (`ClusterConfig::membership`: settings and peers), whose
    /// members the joiner will accept its first configuration from. Open to
    /// untrusted peers.
    JoinHello { confirm: Vec<u8>, cluster_yaml: String },
    /// The joiner's confirmation did not check out: the inviter gives up
    /// (so the joiner can say so in its log). Open to untrusted peers.
    JoinFailed,
    /// Liveness probe between members.
    Ping,
    /// A mutation a member forwards to the master, as JSON: the config
    /// types omit empty fields, which only a self-describing encoding
    /// round-trips (postcard does not).
    Propose { mutation_json: String },
    /// The master's current view of every check (for `qu status`).
    CheckSummaries,
    /// A plugin component by the sha256 of its bytes (nodes fetch the blobs
    /// of `plugins:` entries they lack from any member that has them).
    PluginBlob { sha256: String },
    /// Stores a plugin component before its `plugins:` entry is proposed
    /// (`qu plugin add` on a follower ships the bytes to the master first).
    PluginPut { bytes: Vec<u8> },
}

impl PeerRequest {
    pub fn propose(mutation: &Mutation) -> Self {
        PeerRequest::Propose { mutation_json: serde_json::to_string(mutation).expect("mutations serialise") }
    }

    /// Whether a peer that is not a member may send this request.
    pub fn is_join_handshake(&self) -> bool {
        matches!(
            self,
            PeerRequest::Identify
                | PeerRequest::JoinStart { .. }
                | PeerRequest::JoinHello { .. }
                | PeerRequest::JoinFailed
        )
    }
}

/// Answers to [`PeerRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    Identity {
        node_id: NodeId,
        advertise: String,
        version: String,
    },
    /// The joiner's PAKE message and its key confirmation (which proves it
    /// holds the cluster secret, in this session).
    JoinStarted {
        pake: Vec<u8>,
        confirm: Vec<u8>,
    },
    /// What the cluster needs to list the joiner as a peer.
    JoinHelloOk {
        node_id: NodeId,
        advertise: String,
        cert_pem: String,
    },
    Pong {
        node_id: NodeId,
        term: u64,
        config_version: u64,
    },
    /// A proposal committed by a majority at this config version.
    Committed {
        term: u64,
        version: u64,
    },
    CheckSummaries {
        summaries: Vec<CheckSummary>,
    },
    /// The bytes of a plugin component (their sha256 is what was asked for;
    /// the receiver verifies it anyway).
    PluginBlob {
        bytes: Vec<u8>,
    },
    /// The component is stored under this sha256.
    PluginStored {
        sha256: String,
    },
    /// A request that was understood and refused, with a sentence saying why.
    Refused {
        reason: String,
    },
}

/// One-way messages between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerNotice {
    /// A consensus message (heartbeats, votes, replication).
    Consensus(Msg),
    /// A batch of probe results for the master (the latest per check).
    Results(Vec<Report>),
    /// The master's `Replicate` as a log entry, for a follower that holds
    /// the entry's parent: the change, not the whole config.
    Entry(Box<Entry>),
}

/// One replicated change as a log entry: the mutation and the stamp the
/// master applied to its config `parent` (whose content hashes to
/// `parent_hash`), and the id and content hash of the result. A follower
/// holding exactly `parent` applies it itself and checks the hash; any
/// other takes the master's whole snapshot instead (it pulls). `term` and
/// `sent_at` are those of the consensus `Replicate` it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: u64,
    pub sent_at: u64,
    pub id: ConfigId,
    pub parent: ConfigId,
    pub parent_hash: Digest,
    pub hash: Digest,
    /// The mutation as JSON, like a forwarded change (postcard cannot
    /// round-trip the config types' omitted empty fields).
    pub mutation_json: String,
    pub stamp: Stamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config types omit empty fields; a forwarded change must survive the
    /// wire anyway.
    #[test]
    fn forwarded_changes_round_trip_with_empty_fields() {
        let check = crate::config::Check {
            rounds_down: None,
            rounds_up: None,
            id: "c1".into(),
            name: "web".into(),
            kind: "http".into(),
            target: "http://127.0.0.1/".into(),
            interval: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_secs(10),
            settings: Default::default(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: false,
        };
        let mutation = Mutation::AddCheck { check: Box::new(check) };
        let PeerRequest::Propose { mutation_json } = PeerRequest::propose(&mutation) else { panic!() };
        assert_eq!(serde_json::from_str::<Mutation>(&mutation_json).unwrap(), mutation);
    }
}
