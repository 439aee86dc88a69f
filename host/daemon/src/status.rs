//! What `qu status` shows, as data: built by the daemon, rendered by the CLI.

use qu_core::NodeId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub node_id: NodeId,
    pub term: u64,
    pub master: Option<NodeId>,
    pub quorum: bool,
    pub quorum_size: usize,
    pub config_version: u64,
    /// Restored with `version: 0` and not caught up yet: this node votes
    /// for no one (wait for `false` before restarting or restoring another).
    #[serde(default)]
    pub restoring: bool,
    pub peers: Vec<PeerView>,
    pub checks: Vec<CheckView>,
    /// This node's probe scheduler, over its most recent probes.
    #[serde(default)]
    pub probes: ProbeStats,
    /// How this node sent and took replicated changes since it started.
    #[serde(default)]
    pub replication: ReplicationStats,
}

/// Replication since the daemon started: changes sent and taken as log
/// entries (the change alone) or as whole snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationStats {
    /// As master: entries sent, to followers holding their parent.
    pub entries_sent: u64,
    /// As master: whole snapshots sent in a `Replicate`, to followers that
    /// did not (pull answers not counted).
    pub snapshots_sent: u64,
    /// As follower: entries applied here, their hash checked.
    pub entries_applied: u64,
    /// As follower: entries not applied (another parent here, or a result
    /// whose hash differed), each answered with a pull.
    pub entries_refused: u64,
    /// Changes persisted to `store/log` only, not yet to cluster.yaml and
    /// the daemon's copy (written within moments of the last change).
    #[serde(default)]
    pub log_entries: u64,
}

/// How punctually this node starts its probes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStats {
    /// Probes run since the daemon started.
    pub run: u64,
    /// Rounds not probed since the daemon started: the check's previous
    /// probe was still running (or waiting for one of the node's probe
    /// slots) when the next came due, or the scheduler fell a whole interval
    /// behind. Anything but 0 means checks are probed less often than their
    /// interval says. (Absent from daemons before it was added: 0.)
    #[serde(default)]
    pub skipped: u64,
    /// Start lateness against the fixed-rate schedule, in microseconds,
    /// over the last (up to) 10,000 probes: from the time a probe was due
    /// to the time it started, after waiting for a probe slot.
    pub lateness_p50_us: u64,
    pub lateness_p99_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node_id: NodeId,
    pub advertise: String,
    pub live: bool,
    /// RFC 3339 time the peer was last heard from; `None` for this node and
    /// for peers never heard since start.
    pub last_seen: Option<String>,
    pub this_node: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    pub ok: u32,
    pub total: u32,
    pub disabled: bool,
    /// The names of its effective alerts (its own and the defaults it does
    /// not suppress).
    pub alerts: Vec<String>,
    /// Which of `alerts` it gets as default alerts (`qu status` marks them
    /// with `*`).
    #[serde(default)]
    pub default_alerts: Vec<String>,
    pub detail: String,
    /// The current incident's acknowledgement (`qu alert ack`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<AckView>,
}

/// Who acknowledged an incident, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckView {
    pub at: String,
    pub by: String,
    pub reason: String,
}

/// `qu cluster settings`: durations as text (`1s`, `2m`), and each also in
/// seconds (`*_secs`) for programs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingsView {
    pub heartbeat: String,
    #[serde(default)]
    pub heartbeat_secs: f64,
    pub dead_after: String,
    #[serde(default)]
    pub dead_after_secs: f64,
    pub master_cooldown: String,
    #[serde(default)]
    pub master_cooldown_secs: f64,
    pub hysteresis: u32,
    pub announce_first_up: bool,
    pub delivery_deadline: String,
    #[serde(default)]
    pub delivery_deadline_secs: f64,
    /// Linear memory of all plugin calls on a node together.
    #[serde(default)]
    pub plugin_memory_mib: u32,
    /// How long a node goes without quorum before it sends its own
    /// cluster alert (`default` follows dead_after).
    #[serde(default)]
    pub no_quorum_after: String,
    #[serde(default)]
    pub no_quorum_after_secs: f64,
    #[serde(default)]
    pub member_dead_after: String,
    #[serde(default)]
    pub member_dead_after_secs: f64,
    /// The dead man's switch, masked like alert URLs (empty: off).
    #[serde(default)]
    pub deadman_url: String,
    #[serde(default)]
    pub deadman_interval: String,
    #[serde(default)]
    pub deadman_interval_secs: f64,
    pub config_version: u64,
}

// The seconds are whole milliseconds of a `Duration`, never NaN.
impl Eq for SettingsView {}

/// One row of `qu check list`: durations as text, and in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckListItem {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub interval: String,
    #[serde(default)]
    pub interval_secs: f64,
    pub timeout: String,
    #[serde(default)]
    pub timeout_secs: f64,
    pub settings: std::collections::BTreeMap<String, String>,
    pub alerts: Vec<String>,
    pub suppressed: Vec<String>,
    pub disabled: bool,
    /// The committed state: `up`, `down` or `unknown`.
    pub state: String,
    /// Rounds to go DOWN and to come back UP: its own, or the cluster's.
    #[serde(default)]
    pub rounds_down: u32,
    #[serde(default)]
    pub rounds_up: u32,
}

// As for `SettingsView`.
impl Eq for CheckListItem {}

/// A duration in seconds, to the millisecond, for JSON.
pub fn seconds(duration: std::time::Duration) -> f64 {
    duration.as_millis() as f64 / 1000.0
}
