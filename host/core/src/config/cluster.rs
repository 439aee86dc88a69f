//! `cluster.yaml`: the replicated state of the whole cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BUILT_IN_CHECK_PLUGINS, ConfigError, HostPort, NATIVE_TYPES, NativeSpec, Timestamp, parse_yaml};
use crate::consensus::{ConfigId, Snapshot, Timing};
use crate::limits::{ALERTS_MAX, CHECKS_MAX, CLUSTER_YAML_BYTES_MAX, PEERS_MAX, PLUGINS_MAX};
use crate::monitor::CheckState;
use crate::{Fingerprint, NodeId};

const FILE: &str = "cluster.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Grows by one with every committed change. `0` means "always
    /// superseded": a node holding version 0 takes any peer's copy. In the
    /// operator's `cluster.yaml` ([`ClusterConfig::to_operator_yaml`]) this
    /// is the version of [`ClusterConfig::content`] instead.
    pub version: u64,
    /// The term of the master that committed this version. With `version`
    /// it orders copies: a newer term wins, then a higher version.
    #[serde(default)]
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<NodeId>,
    /// When what operators own (settings, peers, checks, alerts, plugins)
    /// last changed, if that was before this version: the commits since
    /// changed runtime state only. `None` when this very version changed
    /// it (or in the operator's file, whose stamp is the content's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentStamp>,
    #[serde(default)]
    pub settings: Settings,
    pub peers: Vec<Peer>,
    #[serde(default)]
    /// Shared twice over: a config that changed no check shares the whole
    /// list, and one that changed some shares the checks it did not touch;
    /// `Arc`'s `==` is pointer-first for `Eq` types, so comparing them costs
    /// pointers too. Change through `Arc::make_mut`.
    pub checks: Arc<Vec<Arc<Check>>>,
    #[serde(default)]
    pub alerts: Vec<Alert>,
    #[serde(default)]
    pub plugins: Vec<PluginEntry>,
    /// Committed check states, by check id: what the cluster last decided.
    /// Written by the master when a transition commits; a new master
    /// resumes from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<String, CheckStatus>,
    /// Alert deliveries, by idempotency key `<transition>/<alert id>`:
    /// committed before the master sends, finished after (see
    /// [`crate::alerting`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deliveries: BTreeMap<String, Delivery>,
    /// Members the master announced dead, and those announced back, by
    /// node id ([`crate::alerting::cluster`]): runtime state, like
    /// `states`, so the announcement is made once by whichever master
    /// holds the lease, never again by the next.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members_seen: BTreeMap<NodeId, MemberStatus>,
}

/// What the cluster last announced of one member: dead (`down`) or back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberStatus {
    pub state: CheckState,
    /// When the master committed the announcement.
    pub since: Timestamp,
    /// The transition id of the announcement ([`crate::alerting::transition_id`]).
    pub transition: String,
}

/// The stamp of the commit that last changed what operators own: what
/// `cluster.yaml` says as its `version`, `term` and `updated_*`, and what a
/// hand edit of it is based on ([`super::edits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentStamp {
    pub version: u64,
    #[serde(default)]
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<NodeId>,
}

/// One alert of one transition: committed `pending` before anything is
/// sent, `delivered` or `failed` after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub check_id: String,
    pub alert_id: String,
    /// The transition id (`<term>.<version>[.<index>]`,
    /// [`crate::alerting::transition_id`]).
    pub transition: String,
    pub from: CheckState,
    pub to: CheckState,
    pub status: DeliveryStatus,
    /// When the transition was committed.
    pub created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// A reminder that the check is still DOWN: of which transition, and
    /// which slot (1 = the first reminder, `repeat` after the DOWN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reminder: Option<Reminder>,
}

/// What a reminder record reminds of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reminder {
    /// The DOWN transition it belongs to.
    pub of: String,
    pub slot: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

/// A check's committed state and the transition that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckStatus {
    pub state: CheckState,
    /// The state before the transition.
    pub from: CheckState,
    /// When the master committed the transition.
    pub since: Timestamp,
    /// Unique id of the transition: `<term>.<version>` of the commit, and
    /// `.<index>` for the second and later transitions committed with it
    /// ([`crate::alerting::transition_id`]).
    pub transition: String,
    /// Reporters at the time: OK, failing, total.
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// While DOWN: the last reminder slot committed, per alert id
    /// ([`crate::alerting::reminders_due`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reminded: BTreeMap<String, u32>,
    /// Someone acknowledged this incident (`qu alert ack`): no more
    /// reminders for it. A new transition starts without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<Ack>,
}

/// An acknowledgement of a check's current incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub at: Timestamp,
    /// The node the operator asked on.
    pub by: NodeId,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Cluster-wide timers and thresholds. Defaults match the seed (1 s, 4 s,
/// 2 min, 2); tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    #[serde(with = "humantime_serde")]
    pub master_cooldown: Duration,
    /// Consecutive probe rounds a new verdict must hold before it commits.
    pub hysteresis: u32,
    /// Whether a check's first verdict `unknown -> up` is announced (as UP).
    pub announce_first_up: bool,
    /// How long a failing delivery is retried before it is marked failed.
    #[serde(with = "humantime_serde")]
    pub delivery_deadline: Duration,
    /// Linear memory of all plugin calls on a node together, in MiB.
    #[serde(skip_serializing_if = "Settings::is_default_plugin_memory")]
    pub plugin_memory_mib: u32,
    /// How long a node goes without quorum before it sends its own
    /// cluster alert; unset: 2 × `dead_after` + 10 s
    /// ([`Settings::no_quorum_alert_after`]).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub no_quorum_after: Option<Duration>,
    /// How long the master sees a member dead before it announces it.
    #[serde(with = "humantime_serde", skip_serializing_if = "Settings::is_default_member_dead")]
    pub member_dead_after: Duration,
    /// The dead man's switch: a URL the master calls every
    /// `deadman_interval` while it holds its lease (empty: off).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub deadman_url: String,
    #[serde(with = "humantime_serde", skip_serializing_if = "Settings::is_default_deadman_interval")]
    pub deadman_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(4),
            master_cooldown: Duration::from_secs(120),
            hysteresis: 2,
            announce_first_up: true,
            delivery_deadline: Duration::from_secs(3600),
            plugin_memory_mib: Self::PLUGIN_MEMORY_MIB_DEFAULT,
            no_quorum_after: None,
            member_dead_after: Self::MEMBER_DEAD_AFTER_DEFAULT,
            deadman_url: String::new(),
            deadman_interval: Self::DEADMAN_INTERVAL_DEFAULT,
        }
    }
}

impl Settings {
    pub const HEARTBEAT_MIN: Duration = Duration::from_millis(10);
    pub const HEARTBEAT_MAX: Duration = Duration::from_secs(60);
    pub const MASTER_COOLDOWN_MAX: Duration = Duration::from_secs(24 * 3600);
    pub const HYSTERESIS_MAX: u32 = 100;
    pub const PLUGIN_MEMORY_MIB_DEFAULT: u32 = 512;
    /// At least one call at the largest cap a plugin may have.
    pub const PLUGIN_MEMORY_MIB_MIN: u32 = 256;
    pub const PLUGIN_MEMORY_MIB_MAX: u32 = 65_536;

    pub const MEMBER_DEAD_AFTER_DEFAULT: Duration = Duration::from_secs(60);
    pub const DEADMAN_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
    /// The dead man's switch is called at most this often.
    pub const DEADMAN_INTERVAL_MIN: Duration = Duration::from_secs(1);

    fn is_default_plugin_memory(mib: &u32) -> bool {
        *mib == Self::PLUGIN_MEMORY_MIB_DEFAULT
    }
    fn is_default_member_dead(after: &Duration) -> bool {
        *after == Self::MEMBER_DEAD_AFTER_DEFAULT
    }
    fn is_default_deadman_interval(every: &Duration) -> bool {
        *every == Self::DEADMAN_INTERVAL_DEFAULT
    }

    /// How long a node is without quorum before it alerts:
    /// `no_quorum_after`, or 2 × `dead_after` + 10 s.
    pub fn no_quorum_alert_after(&self) -> Duration {
        self.no_quorum_after.unwrap_or(self.dead_after * 2 + Duration::from_secs(10))
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.delivery_deadline < Duration::from_secs(60) || self.delivery_deadline > Duration::from_secs(7 * 86_400)
        {
            problems.push(format!(
                "settings.delivery_deadline: {} is outside 1m..7days",
                humantime::format_duration(self.delivery_deadline)
            ));
        }
        if self.heartbeat < Self::HEARTBEAT_MIN || self.heartbeat > Self::HEARTBEAT_MAX {
            problems.push(format!(
                "settings.heartbeat: {} is outside {}..{}",
                humantime::format_duration(self.heartbeat),
                humantime::format_duration(Self::HEARTBEAT_MIN),
                humantime::format_duration(Self::HEARTBEAT_MAX),
            ));
        }
        if self.dead_after < self.heartbeat * 3 {
            problems.push(format!(
                "settings.dead_after: {} must be at least 3 × heartbeat ({})",
                humantime::format_duration(self.dead_after),
                humantime::format_duration(self.heartbeat * 3),
            ));
        }
        if self.master_cooldown > Self::MASTER_COOLDOWN_MAX {
            problems.push(format!(
                "settings.master_cooldown: {} is longer than {}",
                humantime::format_duration(self.master_cooldown),
                humantime::format_duration(Self::MASTER_COOLDOWN_MAX),
            ));
        }
        if self.hysteresis == 0 || self.hysteresis > Self::HYSTERESIS_MAX {
            problems.push(format!("settings.hysteresis: {} is outside 1..={}", self.hysteresis, Self::HYSTERESIS_MAX));
        }
        // Shorter than `dead_after`, every election would page.
        if let Some(after) = self.no_quorum_after
            && after < self.dead_after
        {
            problems.push(format!(
                "settings.no_quorum_after: {} is shorter than dead_after ({})",
                humantime::format_duration(after),
                humantime::format_duration(self.dead_after),
            ));
        }
        if self.member_dead_after < self.dead_after {
            problems.push(format!(
                "settings.member_dead_after: {} is shorter than dead_after ({})",
                humantime::format_duration(self.member_dead_after),
                humantime::format_duration(self.dead_after),
            ));
        }
        if !self.deadman_url.is_empty() {
            match url::Url::parse(&self.deadman_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => problems.push("settings.deadman_url: not an http(s) URL".to_string()),
            }
        }
        if self.deadman_interval < Self::DEADMAN_INTERVAL_MIN || self.deadman_interval > Duration::from_secs(86_400) {
            problems.push(format!(
                "settings.deadman_interval: {} is outside {}..1day",
                humantime::format_duration(self.deadman_interval),
                humantime::format_duration(Self::DEADMAN_INTERVAL_MIN),
            ));
        }
        if !(Self::PLUGIN_MEMORY_MIB_MIN..=Self::PLUGIN_MEMORY_MIB_MAX).contains(&self.plugin_memory_mib) {
            problems.push(format!(
                "settings.plugin_memory_mib: {} is outside {}..={} (MiB of all plugin calls on a node together)",
                self.plugin_memory_mib,
                Self::PLUGIN_MEMORY_MIB_MIN,
                Self::PLUGIN_MEMORY_MIB_MAX
            ));
        }
        problems
    }
}

/// A member of the cluster. Its certificate rides here, so every member
/// trusts exactly the members listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub node_id: NodeId,
    pub advertise: String,
    pub fingerprint: Fingerprint,
    pub cert_pem: String,
}

/// A check. The type-specific options live in `settings` (validated by the
/// probe or plugin that runs the type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    #[serde(with = "humantime_serde", default = "Check::default_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "Check::default_timeout")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppress_alert_ids: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    /// Consecutive rounds a DOWN verdict must hold before it commits, for
    /// this check (unset: `settings.hysteresis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_down: Option<u32>,
    /// The same for coming back UP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_up: Option<u32>,
}

impl Check {
    pub const INTERVAL_MIN: Duration = Duration::from_secs(1);

    fn default_interval() -> Duration {
        Duration::from_secs(30)
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// An alert: a sink plugin plus its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub id: String,
    pub name: String,
    /// The sink plugin's name (`discord`, `email`, `webhook`, or an added one).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_template: Option<String>,
    /// A destination for alerts about the cluster itself: a node without
    /// quorum, a member dead, and their recovery (`--cluster-events`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_events: bool,
    /// Remind every `repeat` while a check stays DOWN (unset: never).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Duration>,
}

impl Alert {
    /// The shortest reminder interval.
    pub const REPEAT_MIN: Duration = Duration::from_secs(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Check,
    Sink,
}

/// Per-call sandbox limits of a plugin; unset fields take the host defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A WebAssembly plugin, pinned by the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    pub name: String,
    pub kind: PluginKind,
    pub sha256: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default_limits")]
    pub limits: PluginLimits,
}

fn is_default_limits(limits: &PluginLimits) -> bool {
    *limits == PluginLimits::default()
}

impl ClusterConfig {
    /// A fresh one-member cluster, as `qu init` writes it.
    pub fn bootstrap(peer: Peer, at: Timestamp) -> Self {
        Self {
            version: 1,
            term: 0,
            updated_at: Some(at),
            updated_by: Some(peer.node_id),
            content: None,
            settings: Settings::default(),
            peers: vec![peer],
            checks: Default::default(),
            alerts: Vec::new(),
            plugins: Vec::new(),
            states: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            members_seen: BTreeMap::new(),
        }
    }

    /// A check by id or by name.
    pub fn check(&self, id_or_name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id_or_name || c.name == id_or_name).map(|c| &**c)
    }

    /// The committed state of a check (`unknown` until its first transition).
    pub fn check_state(&self, id: &str) -> CheckState {
        self.states.get(id).map(|s| s.state).unwrap_or(CheckState::Unknown)
    }

    /// Parses and validates `cluster.yaml`, reporting every problem at once.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = parse_yaml(FILE, text, CLUSTER_YAML_BYTES_MAX)?;
        let problems = config.validate();
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::new(FILE, problems)) }
    }

    /// The canonical text. Every node writes exactly these bytes for the same
    /// value, which is what makes "byte-identical on every node" checkable.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("cluster config always serialises")
    }

    /// The operator's `cluster.yaml`: what operators own, under the stamp
    /// of its last change ([`ClusterConfig::content_stamp`]), without the
    /// runtime state (check states, delivery records), which the daemon
    /// keeps in its own store. So the file changes only when someone
    /// changes what it holds.
    pub fn to_operator_yaml(&self) -> String {
        serde_yaml::to_string(&self.operator_part()).expect("cluster config always serialises")
    }

    /// What a node joining the cluster is given before it is a member: the
    /// settings and the peers (whose keys it then trusts, and from whom it
    /// takes the master's first configuration), under the content's stamp.
    /// Checks, alerts and plugins — and the credentials alerts hold — reach
    /// it only by replication, once it is a member.
    pub fn membership(&self) -> ClusterConfig {
        let mut membership = self.operator_part();
        membership.checks = Default::default();
        membership.alerts = Vec::new();
        membership.plugins = Vec::new();
        membership
    }

    /// This config's operator part alone, as [`ClusterConfig::to_operator_yaml`]
    /// writes it (stamped with the content's stamp, without runtime state).
    pub fn operator_part(&self) -> ClusterConfig {
        let stamp = self.content_stamp();
        ClusterConfig {
            version: stamp.version,
            term: stamp.term,
            updated_at: stamp.updated_at,
            updated_by: stamp.updated_by,
            content: None,
            settings: self.settings.clone(),
            peers: self.peers.clone(),
            checks: self.checks.clone(),
            alerts: self.alerts.clone(),
            plugins: self.plugins.clone(),
            states: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            members_seen: BTreeMap::new(),
        }
    }

    /// The id that orders this copy against others.
    pub fn config_id(&self) -> ConfigId {
        ConfigId { term: self.term, version: self.version }
    }

    /// The stamp of what operators own: [`ClusterConfig::content`], or
    /// this version's own stamp when this version changed it.
    pub fn content_stamp(&self) -> ContentStamp {
        self.content.unwrap_or(ContentStamp {
            version: self.version,
            term: self.term,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
        })
    }

    /// `(term, version)` of [`ClusterConfig::content_stamp`]: what a hand
    /// edit of cluster.yaml is based on.
    pub fn content_id(&self) -> (u64, u64) {
        let stamp = self.content_stamp();
        (stamp.term, stamp.version)
    }

    /// Whether `other` says the same of what operators own (settings,
    /// peers, checks, alerts, plugins), whatever the stamps and the runtime
    /// state: a hand edit that only bumped the version changes nothing, and
    /// the states an old file may still list are the cluster's, not the
    /// file's.
    pub fn same_content(&self, other: &ClusterConfig) -> bool {
        self.settings == other.settings
            && self.peers == other.peers
            && self.checks == other.checks
            && self.alerts == other.alerts
            && self.plugins == other.plugins
    }

    /// Drops the states and delivery records of checks it no longer has
    /// (after what operators own was replaced).
    pub fn drop_runtime_state_of_removed(&mut self) {
        let ids: std::collections::HashSet<&str> = self.checks.iter().map(|c| c.id.as_str()).collect();
        self.states.retain(|id, _| ids.contains(id.as_str()));
        self.deliveries
            .retain(|_, d| ids.contains(d.check_id.as_str()) || crate::alerting::member_of(&d.check_id).is_some());
        let members: BTreeSet<NodeId> = self.peers.iter().map(|p| p.node_id).collect();
        self.members_seen.retain(|id, _| members.contains(id));
    }

    /// Member ids, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self.peers.iter().map(|p| p.node_id).collect();
        members.sort();
        members
    }

    /// The consensus timers in `settings`.
    pub fn timing(&self) -> Timing {
        Timing {
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
            dead_after_ms: self.settings.dead_after.as_millis() as u64,
            master_cooldown_ms: self.settings.master_cooldown.as_millis() as u64,
        }
    }

    /// This config as the consensus core replicates it, with its content
    /// hash ([`super::Renderer::render`]).
    pub fn snapshot(&self) -> Snapshot {
        super::Renderer::default().snapshot(self)
    }

    pub fn peer(&self, node_id: &NodeId) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.node_id == node_id)
    }

    /// Members needed for a majority.
    pub fn quorum_size(&self) -> usize {
        self.peers.len() / 2 + 1
    }

    /// Every problem in the file, each prefixed with where it is.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.settings.validate();
        self.validate_peers(&mut problems);
        let alert_ids = self.validate_alerts(&mut problems);
        self.validate_checks(&alert_ids, &mut problems);
        self.validate_plugins(&mut problems);
        self.validate_states(&mut problems);
        self.validate_deliveries(&mut problems);
        problems
    }

    fn validate_deliveries(&self, problems: &mut Vec<String>) {
        // Sets, not scans: a mass outage leaves a record per check and alert
        // (10,000 checks: 10,000 records), validated at every commit.
        let alerts: BTreeSet<&str> = self.alerts.iter().map(|a| a.id.as_str()).collect();
        let checks: BTreeSet<&str> = self.checks.iter().map(|c| c.id.as_str()).collect();
        for (key, delivery) in &self.deliveries {
            if !alerts.contains(delivery.alert_id.as_str()) {
                problems.push(format!("deliveries.{key}: no alert has id `{}`", delivery.alert_id));
            }
            // A member's announcement names the member, not a check.
            if !checks.contains(delivery.check_id.as_str()) && crate::alerting::member_of(&delivery.check_id).is_none()
            {
                problems.push(format!("deliveries.{key}: no check has id `{}`", delivery.check_id));
            }
        }
    }

    /// Whether `name` is a sink plugin here (an entry of kind sink, or a
    /// built-in one not overridden).
    pub fn has_sink_plugin(&self, name: &str) -> bool {
        match self.plugins.iter().find(|p| p.name == name) {
            Some(entry) => entry.kind == PluginKind::Sink,
            None => super::BUILT_IN_SINK_PLUGINS.contains(&name),
        }
    }

    pub(crate) fn validate_peers(&self, problems: &mut Vec<String>) {
        if self.peers.is_empty() {
            problems.push("peers: the list is empty; a cluster has at least one member".into());
        }
        if self.peers.len() > PEERS_MAX {
            problems.push(format!("peers: {} members, more than the {PEERS_MAX} supported", self.peers.len()));
        }
        let mut ids = BTreeSet::new();
        let mut fingerprints = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if !ids.insert(peer.node_id) {
                problems.push(format!("peers[{i}].node_id: {} is listed twice", peer.node_id));
            }
            if !fingerprints.insert(&peer.fingerprint) {
                problems.push(format!("peers[{i}].fingerprint: {} is listed twice", peer.fingerprint));
            }
            if let Err(e) = peer.advertise.parse::<HostPort>() {
                problems.push(format!("peers[{i}].advertise: {e}"));
            }
            if !peer.cert_pem.trim_start().starts_with("-----BEGIN CERTIFICATE-----") {
                problems.push(format!("peers[{i}].cert_pem: not a PEM certificate"));
            }
        }
    }

    fn validate_alerts(&self, problems: &mut Vec<String>) -> BTreeSet<&str> {
        if self.alerts.len() > ALERTS_MAX {
            problems.push(format!("alerts: {} alerts, more than the {ALERTS_MAX} supported", self.alerts.len()));
        }
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, alert) in self.alerts.iter().enumerate() {
            check_token(|| format!("alerts[{i}].id"), &alert.id, problems);
            check_name(|| format!("alerts[{i}].name"), &alert.name, problems);
            check_token(|| format!("alerts[{i}].type"), &alert.kind, problems);
            if !ids.insert(alert.id.as_str()) {
                problems.push(format!("alerts[{i}].id: `{}` is used twice", alert.id));
            }
            if !names.insert(alert.name.as_str()) {
                problems.push(format!("alerts[{i}].name: `{}` is used twice", alert.name));
            }
            if let Some(repeat) = alert.repeat
                && !(Alert::REPEAT_MIN..=Duration::from_secs(7 * 86_400)).contains(&repeat)
            {
                problems
                    .push(format!("alerts[{i}].repeat: {} is outside 1s..7days", humantime::format_duration(repeat)));
            }
            if !self.has_sink_plugin(&alert.kind) {
                problems.push(format!(
                    "alerts[{i}].type: unknown sink `{}` (built in: {}; or a sink plugin listed in plugins)",
                    alert.kind,
                    super::BUILT_IN_SINK_PLUGINS.join(", ")
                ));
            }
        }
        ids
    }

    fn validate_checks(&self, alert_ids: &BTreeSet<&str>, problems: &mut Vec<String>) {
        if self.checks.len() > CHECKS_MAX {
            problems.push(format!("checks: {} checks, more than the {CHECKS_MAX} supported", self.checks.len()));
        }
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            if !ids.insert(check.id.as_str()) {
                problems.push(format!("checks[{i}].id: `{}` is used twice", check.id));
            }
            if !names.insert(check.name.as_str()) {
                problems.push(format!("checks[{i}].name: `{}` is used twice", check.name));
            }
            self.validate_check(i, check, alert_ids, problems);
        }
    }

    /// The problems of `checks[index]` alone, and of its id or name being
    /// another check's too: all [`ClusterConfig::validate`] can find after a
    /// change to that one check of a config that was valid.
    pub fn validate_check_at(&self, index: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(check) = self.checks.get(index) else { return vec![format!("checks[{index}]: no such check")] };
        if self.checks.len() > CHECKS_MAX {
            problems.push(format!("checks: {} checks, more than the {CHECKS_MAX} supported", self.checks.len()));
        }
        for (i, other) in self.checks.iter().enumerate().filter(|(i, _)| *i != index) {
            if other.id == check.id {
                problems.push(format!("checks[{}].id: `{}` is used twice", i.max(index), check.id));
            }
            if other.name == check.name {
                problems.push(format!("checks[{}].name: `{}` is used twice", i.max(index), check.name));
            }
        }
        let alert_ids: BTreeSet<&str> = self.alerts.iter().map(|a| a.id.as_str()).collect();
        self.validate_check(index, check, &alert_ids, &mut problems);
        problems
    }

    /// One check's own problems (not whether its id or name is unique).
    fn validate_check(&self, i: usize, check: &Check, alert_ids: &BTreeSet<&str>, problems: &mut Vec<String>) {
        // Formatted only for a problem: this runs for every check.
        let at = || format!("checks[{i}]");
        check_token(|| format!("{}.id", at()), &check.id, problems);
        check_name(|| format!("{}.name", at()), &check.name, problems);
        check_token(|| format!("{}.type", at()), &check.kind, problems);
        if check.target.trim().is_empty() {
            problems.push(format!("{}.target: empty", at()));
        }
        for (field, rounds) in [("rounds_down", check.rounds_down), ("rounds_up", check.rounds_up)] {
            if let Some(n) = rounds
                && (n == 0 || n > Settings::HYSTERESIS_MAX)
            {
                problems.push(format!("{}.{field}: {n} is outside 1..={}", at(), Settings::HYSTERESIS_MAX));
            }
        }
        if check.interval < Check::INTERVAL_MIN {
            problems.push(format!(
                "{}.interval: {} is shorter than 1s",
                at(),
                humantime::format_duration(check.interval)
            ));
        }
        if let Err(errors) = NativeSpec::parse(&check.kind, &check.target, &check.settings) {
            problems.extend(errors.into_iter().map(|e| format!("{}.{e}", at())));
        } else if !NATIVE_TYPES.contains(&check.kind.as_str()) && !self.has_check_plugin(&check.kind) {
            problems.push(format!(
                "{}.type: unknown check type `{}` (native: {}; built-in plugins: {}; or a check plugin listed in plugins)",
                at(),
                check.kind,
                NATIVE_TYPES.join(", "),
                BUILT_IN_CHECK_PLUGINS.join(", ")
            ));
        }
        if check.timeout.is_zero() || check.timeout >= check.interval {
            problems.push(format!(
                "{}.timeout: {} must be above zero and shorter than the interval ({})",
                at(),
                humantime::format_duration(check.timeout),
                humantime::format_duration(check.interval)
            ));
        }
        for (field, list) in [("alert_ids", &check.alert_ids), ("suppress_alert_ids", &check.suppress_alert_ids)] {
            for id in list {
                if !alert_ids.contains(id.as_str()) {
                    problems.push(format!("{}.{field}: no alert has id `{id}`", at()));
                }
            }
        }
    }

    fn validate_states(&self, problems: &mut Vec<String>) {
        let ids: BTreeSet<&str> = self.checks.iter().map(|c| c.id.as_str()).collect();
        for id in self.states.keys() {
            if !ids.contains(id.as_str()) {
                problems.push(format!("states.{id}: no check has this id"));
            }
        }
    }

    /// Whether `name` is a check plugin here: an entry of kind check, or a
    /// built-in one not overridden by an entry of another kind.
    pub fn has_check_plugin(&self, name: &str) -> bool {
        match self.plugins.iter().find(|p| p.name == name) {
            Some(entry) => entry.kind == PluginKind::Check,
            None => BUILT_IN_CHECK_PLUGINS.contains(&name),
        }
    }

    /// The checks and alerts that use plugin `name`, by name.
    pub fn plugin_users(&self, name: &str) -> Vec<String> {
        let checks = self.checks.iter().filter(|c| c.kind == name).map(|c| format!("check {}", c.name));
        let alerts = self.alerts.iter().filter(|a| a.kind == name).map(|a| format!("alert {}", a.name));
        checks.chain(alerts).collect()
    }

    fn validate_plugins(&self, problems: &mut Vec<String>) {
        if self.plugins.len() > PLUGINS_MAX {
            problems.push(format!("plugins: {} plugins, more than the {PLUGINS_MAX} supported", self.plugins.len()));
        }
        let mut names = BTreeSet::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            check_token(|| format!("plugins[{i}].name"), &plugin.name, problems);
            if !names.insert(plugin.name.as_str()) {
                problems.push(format!("plugins[{i}].name: `{}` is used twice", plugin.name));
            }
            let hex_ok = plugin.sha256.len() == 64
                && plugin.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                problems.push(format!("plugins[{i}].sha256: expected 64 lowercase hex digits"));
            }
            if plugin.size == 0 || plugin.size > crate::limits::PLUGIN_BYTES_MAX {
                problems.push(format!(
                    "plugins[{i}].size: {} bytes; a plugin has 1 to {} bytes",
                    plugin.size,
                    crate::limits::PLUGIN_BYTES_MAX
                ));
            }
            if NATIVE_TYPES.contains(&plugin.name.as_str()) {
                problems.push(format!("plugins[{i}].name: `{}` is a native check type", plugin.name));
            }
            if plugin.limits.memory_mib.is_some_and(|m| m == 0 || m > 256) {
                problems.push(format!("plugins[{i}].limits.memory_mib: from 1 to 256"));
            }
            if plugin.limits.timeout.is_some_and(|t| t < Duration::from_millis(100) || t > Duration::from_secs(600)) {
                problems.push(format!("plugins[{i}].limits.timeout: from 100ms to 10m"));
            }
            for host in &plugin.allow {
                if host.trim().is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
                    problems.push(format!("plugins[{i}].allow: `{host}` is not HOST or HOST:PORT"));
                }
            }
        }
    }
}

/// Ids, type and plugin names: short, lowercase, safe in file names and URLs.
fn check_token(at: impl FnOnce() -> String, value: &str, problems: &mut Vec<String>) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        problems.push(format!("{}: `{value}` must be 1-64 characters of a-z, 0-9, `-`, `_`, `.`", at()));
    }
}

/// Names operators type: printable, no surrounding space, bounded.
fn check_name(at: impl FnOnce() -> String, value: &str, problems: &mut Vec<String>) {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.trim() == value
        && !value.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        problems.push(format!("{}: `{value}` must be 1-128 printable characters without spaces", at()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn peer(n: u8) -> Peer {
        Peer {
            node_id: NodeId::from_bytes([n; 16]),
            advertise: format!("node{n}.example.com:9901"),
            fingerprint: Fingerprint::from_sha256(&[n; 32]),
            cert_pem: CERT.to_string(),
        }
    }

    fn sample() -> ClusterConfig {
        let mut config = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(1_790_000_000_000));
        config.peers.push(peer(2));
        config.alerts.push(Alert {
            repeat: None,
            id: "a1".into(),
            name: "oncall".into(),
            kind: "webhook".into(),
            config: [("url".to_string(), "https://hooks.example.com/x".to_string())].into(),
            default: true,
            disabled: false,
            subject_template: Some("{{ check.name }} is {{ verb }}".into()),
            body_template: None,
            cluster_events: false,
        });
        std::sync::Arc::make_mut(&mut config.checks).push(Arc::new(Check {
            rounds_down: None,
            rounds_up: None,
            id: "c1".into(),
            name: "homepage".into(),
            kind: "http".into(),
            target: "https://example.com/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            settings: [("expect".to_string(), "2xx".to_string())].into(),
            alert_ids: vec!["a1".into()],
            suppress_alert_ids: vec![],
            disabled: false,
        }));
        config.plugins.push(PluginEntry {
            name: "dns".into(),
            kind: PluginKind::Check,
            sha256: "ab".repeat(32),
            size: 1234,
            allow: vec!["1.1.1.1:53".into()],
            limits: PluginLimits { memory_mib: Some(32), timeout: None },
        });
        config
    }

    #[test]
    fn round_trips_byte_identically() {
        let config = sample();
        let text = config.to_yaml();
        let parsed = ClusterConfig::parse(&text).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.to_yaml(), text);
    }

    #[test]
    fn defaults_fill_missing_optional_parts() {
        let p = peer(1);
        let text = format!(
            "version: 0\npeers:\n- node_id: {}\n  advertise: a:1\n  fingerprint: {}\n  cert_pem: |\n    -----BEGIN CERTIFICATE-----\n    x\n    -----END CERTIFICATE-----\n",
            p.node_id, p.fingerprint
        );
        let config = ClusterConfig::parse(&text).unwrap();
        assert_eq!(config.version, 0, "version 0 is accepted");
        assert_eq!(config.settings, Settings::default());
        assert!(config.checks.is_empty() && config.alerts.is_empty() && config.plugins.is_empty());
    }

    #[test]
    fn unknown_fields_are_named_at_every_level() {
        let text = sample().to_yaml();
        for (needle, extra) in [
            ("version: 1\n", "version: 1\nfuture_top: 1\n"),
            ("settings:\n", "settings:\n  future_setting: 1\n"),
            ("  timeout: 10s\n", "  timeout: 10s\n  future_check_field: x\n"),
        ] {
            let edited = text.replacen(needle, extra, 1);
            assert_ne!(edited, text, "fixture did not contain {needle:?}");
            let err = ClusterConfig::parse(&edited).unwrap_err();
            assert_eq!(err.file, "cluster.yaml");
            let field = extra.lines().last().unwrap().trim().split(':').next().unwrap();
            assert!(err.to_string().contains(&format!("unknown field `{field}`")), "{err}");
        }
    }

    #[test]
    fn every_validation_problem_is_reported() {
        let mut config = sample();
        config.settings.dead_after = Duration::from_millis(1500);
        config.settings.hysteresis = 0;
        config.peers[1].node_id = config.peers[0].node_id;
        config.peers[1].advertise = "nope".into();
        std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut config.checks)[0]).interval =
            Duration::from_millis(500);
        std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut config.checks)[0]).alert_ids =
            vec!["missing".into()];
        let first = config.checks[0].clone();
        std::sync::Arc::make_mut(&mut config.checks).push(first);
        config.plugins[0].sha256 = "xyz".into();
        let problems = config.validate();
        let expect = [
            "settings.dead_after",
            "settings.hysteresis",
            "peers[1].node_id",
            "peers[1].advertise",
            "checks[0].interval",
            "checks[0].timeout",
            "checks[0].alert_ids: no alert has id `missing`",
            "checks[1].id: `c1` is used twice",
            "checks[1].name: `homepage` is used twice",
            "plugins[0].sha256",
        ];
        for needle in expect {
            assert!(problems.iter().any(|p| p.contains(needle)), "missing {needle} in {problems:#?}");
        }
        let err = ClusterConfig::parse(&config.to_yaml()).unwrap_err();
        assert_eq!(err.problems, problems);
    }

    #[test]
    fn empty_and_garbage_files_are_clear_errors() {
        assert!(ClusterConfig::parse("").unwrap_err().to_string().contains("empty"));
        assert!(ClusterConfig::parse("version: [").is_err());
        assert!(ClusterConfig::parse("- a\n- b\n").is_err());
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        let mut config = sample();
        assert_eq!(config.quorum_size(), 2);
        config.peers.truncate(1);
        assert_eq!(config.quorum_size(), 1);
        for n in 3..=5 {
            config.peers.push(peer(n));
        }
        assert_eq!(config.peers.len(), 4);
        assert_eq!(config.quorum_size(), 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn parsing_never_panics(text in ".{0,400}") {
            let _ = ClusterConfig::parse(&text);
            let _ = super::super::NodeConfig::parse(&text);
        }

        #[test]
        fn parsing_mutated_valid_files_never_panics(cut in 0usize..2000, byte in proptest::num::u8::ANY) {
            let mut bytes = sample().to_yaml().into_bytes();
            let at = cut % bytes.len();
            bytes[at] = byte;
            if let Ok(text) = String::from_utf8(bytes) {
                let _ = ClusterConfig::parse(&text);
            }
        }
    }
}
