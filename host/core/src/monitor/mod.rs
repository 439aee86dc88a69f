//! The monitoring brain: per-check verdicts over the latest fresh reports of
//! the cluster's members, with hysteresis counted in probe rounds.
//!
//! Pure like the consensus core: time comes in as `now` (the master's
//! monotonic milliseconds); the daemon feeds reports as they arrive and asks
//! for the due verdicts once per round.

mod verdict;

use serde::{Deserialize, Serialize};

pub use verdict::{Proposal, Rounds, Tally, Tracked, Verdicts};

/// A check's state as the cluster decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Unknown,
    Up,
    Down,
}

impl std::fmt::Display for CheckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckState::Unknown => "unknown",
            CheckState::Up => "up",
            CheckState::Down => "down",
        })
    }
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The target answered as expected.
    Up,
    /// The target failed the check (a vote for DOWN).
    Down,
    /// The probe could not run here (e.g. a plugin this node lacks): the
    /// node has no opinion, and this is not a vote for DOWN.
    Unavailable,
}

/// One probe result as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub check_id: String,
    pub outcome: Outcome,
    pub latency_ms: u32,
    /// A short human detail: `status 503`, `connect refused`, `timeout after 10s`.
    pub detail: String,
}

/// A check as the master sees it now, for `qu status` on any node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSummary {
    pub id: String,
    pub state: CheckState,
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
    pub detail: String,
}
