//! Consensus: Raft's terms, votes and leases over one replicated object, the
//! whole `cluster.yaml`, as a pure state machine.
//!
//! The driver feeds [`Core::step`] with `(now, Input)` and executes the
//! returned [`Output`]s in order: persist, then send, then apply. `now` is a
//! monotonic millisecond clock; the core reads no clock and draws its
//! randomness from a seed, so the simulator replays a run exactly.
//!
//! What is replicated is a [`Snapshot`] ordered by [`ConfigId`] = (the term
//! it was made in, version). That is Raft with a log of length one: the
//! "last entry" is the snapshot, a vote needs the candidate's snapshot to be
//! at least as new, a master commits a fresh version in its own term before
//! anything else counts, and a snapshot is committed once a majority of its
//! members has persisted it. Snapshots made in one term form a chain (only
//! that term's master makes them, each from the previous), so any snapshot
//! newer than a committed one contains it.

mod core;
mod rng;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::core::Core;
pub use self::rng::SplitMix64;
use crate::NodeId;

/// What must survive a crash: the highest term seen and the vote cast in
/// it, and whether the node is still catching up after a restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durable {
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voted_for: Option<NodeId>,
    /// Non-empty from when the node starts on `version: 0` (restored from
    /// a backup) until it has caught up: the members of every config it
    /// held meanwhile. Until then it neither votes nor campaigns, across
    /// restarts too (a copy it pulled meanwhile may still lack what it
    /// acknowledged before the restore).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restoring: Vec<NodeId>,
}

/// This node's role in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Follower,
    Candidate,
    Master,
}

/// The order of snapshots: by the term they were made in, then version.
/// Version 0 means "always superseded" whatever its term.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ConfigId {
    pub term: u64,
    pub version: u64,
}

impl ConfigId {
    pub const ZERO: ConfigId = ConfigId { term: 0, version: 0 };

    /// The very same id, term included (`==` orders: every `version: 0`
    /// equals every other).
    pub fn is(&self, other: &ConfigId) -> bool {
        self.term == other.term && self.version == other.version
    }

    fn key(&self) -> (u64, u64) {
        if self.version == 0 { (0, 0) } else { (self.term, self.version) }
    }
}

impl PartialEq for ConfigId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ConfigId {}

impl std::hash::Hash for ConfigId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for ConfigId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ConfigId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::fmt::Display for ConfigId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.term, self.version)
    }
}

/// Cluster timers the core follows, in milliseconds (from `settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub master_cooldown_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self { heartbeat_ms: 1_000, dead_after_ms: 4_000, master_cooldown_ms: 120_000 }
    }
}

/// SHA-256 of a snapshot's content: what an acknowledgement names, so an
/// ack for the same id with other content counts for nothing.
pub type Digest = [u8; 32];

/// The digest of `content`.
pub fn digest(content: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(content.as_bytes()).into()
}

/// One version of the replicated configuration. `content` is opaque to the
/// core (the daemon's canonical `cluster.yaml`); `members` and `timing` are
/// what the core needs from it, derived by whoever built the snapshot. A
/// receiver re-derives them (and the hash) from `content` before trusting
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: ConfigId,
    /// Sorted, without duplicates.
    pub members: Vec<NodeId>,
    pub timing: Timing,
    pub content: Arc<str>,
    /// What an acknowledgement names: [`digest`] of `content` for
    /// [`Snapshot::new`], the builder's content hash for
    /// [`Snapshot::with_hash`] (the daemon's, for cluster.yaml).
    pub hash: Digest,
}

impl Snapshot {
    pub fn new(id: ConfigId, mut members: Vec<NodeId>, timing: Timing, content: impl Into<Arc<str>>) -> Self {
        members.sort();
        members.dedup();
        let content = content.into();
        let hash = digest(&content);
        Self { id, members, timing, content, hash }
    }

    /// A snapshot whose content hash its builder computed (the daemon's
    /// renderer keeps it up to date piece by piece; see
    /// `config::Renderer::render`). Every node must build a given content's
    /// snapshot the same way: the core only compares hashes.
    pub fn with_hash(
        id: ConfigId,
        mut members: Vec<NodeId>,
        timing: Timing,
        content: impl Into<Arc<str>>,
        hash: Digest,
    ) -> Self {
        members.sort();
        members.dedup();
        Self { id, members, timing, content: content.into(), hash }
    }

    /// The same content under another id (a new master's fresh commit).
    pub fn restamped(&self, id: ConfigId) -> Self {
        Self { id, ..self.clone() }
    }

    pub fn is_member(&self, node: &NodeId) -> bool {
        self.members.binary_search(node).is_ok()
    }

    /// Members needed for a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// Messages between cores. Every `sent_at` is the sender's own clock,
/// echoed back so the master can time its lease by when it asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Every member to every other, each heartbeat: "I am here, in this
    /// term, holding this config" (and whether the sender is master).
    Heartbeat {
        term: u64,
        config: ConfigId,
        master: bool,
        sent_at: u64,
    },
    /// A follower's answer to its master's heartbeat. `promise` is how
    /// long, from receiving it, the follower refuses to vote for anyone
    /// else (its `dead_after`): the master's lease stands on that, not on
    /// its own value, so a change of `dead_after` never widens a lease
    /// beyond what followers honour.
    HeartbeatAck {
        term: u64,
        config: ConfigId,
        echo: u64,
        promise: u64,
    },
    /// "Would you vote for me in `term`?" — asked before bumping any term,
    /// so a node that cannot win never disturbs the cluster.
    PreVote {
        term: u64,
        config: ConfigId,
    },
    PreVoteReply {
        term: u64,
        granted: bool,
    },
    Vote {
        term: u64,
        config: ConfigId,
        transfer: bool,
        sent_at: u64,
    },
    VoteReply {
        term: u64,
        granted: bool,
        echo: u64,
        promise: u64,
    },
    /// The master's new snapshot.
    Replicate {
        term: u64,
        snapshot: Snapshot,
        sent_at: u64,
    },
    /// "I hold `config`, whose content hashes to `hash`." It counts for a
    /// proposal only if both are exactly the proposal's.
    ReplicateAck {
        term: u64,
        config: ConfigId,
        hash: Digest,
        echo: u64,
        promise: u64,
    },
    /// "Send me your snapshot" (to the master, whose heartbeat showed a
    /// newer one; a node adopts a newer config only from its master).
    Pull,
    PullReply {
        snapshot: Snapshot,
    },
    /// Leadership transfer: "start an election now".
    TimeoutNow {
        term: u64,
    },
}

impl Msg {
    /// The sender's term, if the message carries one.
    pub fn term(&self) -> Option<u64> {
        match self {
            Msg::Heartbeat { term, .. }
            | Msg::HeartbeatAck { term, .. }
            | Msg::PreVoteReply { term, .. }
            | Msg::Vote { term, .. }
            | Msg::VoteReply { term, .. }
            | Msg::Replicate { term, .. }
            | Msg::ReplicateAck { term, .. }
            | Msg::TimeoutNow { term } => Some(*term),
            Msg::PreVote { .. } | Msg::Pull | Msg::PullReply { .. } => None,
        }
    }
}

/// What the driver feeds the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed; drive timers.
    Tick,
    /// A message from a member (the driver has checked the TLS identity).
    Receive { from: NodeId, msg: Msg },
    /// A new snapshot to commit, built by the driver on the master from the
    /// current one with id [`Core::next_config_id`]. For an added member,
    /// `new_member` must also acknowledge before the change counts, so a new
    /// node that never comes up cannot wedge a small cluster.
    Propose { request: u64, snapshot: Snapshot, new_member: Option<NodeId> },
}

/// What the core asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Durably write the term and vote before anything after it.
    PersistDurable(Durable),
    /// Durably write (and then apply) this snapshot.
    PersistConfig(Snapshot),
    Send {
        to: NodeId,
        msg: Msg,
    },
    /// A proposal's outcome: committed by a majority, or why not.
    ProposalDone {
        request: u64,
        result: Result<ConfigId, ProposeError>,
    },
    /// The term, role or known master changed.
    RoleChanged {
        term: u64,
        role: Role,
        master: Option<NodeId>,
    },
    /// This node just became master: propose a fresh version in its term
    /// (same content, id `next`) before serving anything else.
    NeedFreshCommit {
        next: ConfigId,
    },
}

/// Why a proposal did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the master (master: {})", master.map(|m| m.to_string()).unwrap_or_else(|| "none".into()))]
    NotMaster { master: Option<NodeId> },
    #[error(
        "no quorum: {live} of {members} members reachable (need {need}); no changes are accepted until a majority is back"
    )]
    NoQuorum { live: usize, members: usize, need: usize },
    #[error("another change is being committed; retry")]
    Busy,
    #[error("the proposal was built on config {built_on}, but the master is at {current}; retry")]
    Stale { built_on: ConfigId, current: ConfigId },
    /// The change left this node for the other members and then did not
    /// commit in time, or the master lost its lease or stepped down: it
    /// may still be committed by this master or the next. Every other
    /// error is definite: the change was never sent, and never applies.
    #[error(
        "outcome unknown: {cause}; the change was sent to the other members and may still apply — see `qu status` (its config version) and `qu check list` or `qu alert list` before retrying"
    )]
    Unknown { cause: String },
    #[error("the new member {node} did not acknowledge the configuration; is it running and reachable?")]
    NewMemberSilent { node: NodeId },
    #[error("the master stepped down before the change committed (term {term}); retry")]
    SteppedDown { term: u64 },
}

impl ProposeError {
    /// Whether the change may still apply (see [`ProposeError::Unknown`]).
    pub fn is_unknown(&self) -> bool {
        matches!(self, ProposeError::Unknown { .. })
    }
}
