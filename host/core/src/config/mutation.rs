//! Changes to `cluster.yaml`, as values: built by the CLI or a node,
//! applied by the master (and, from a log entry, by each follower) to its
//! current config, and validated as far as the change can have made it
//! invalid (`Mutation::validation_scope`): runtime state alone is valid by
//! construction, a setting is checked with the settings, a check alone with
//! the rest of the checks' ids and names.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Alert, Check, CheckStatus, ClusterConfig, Delivery, DeliveryStatus, MemberStatus, Peer, PluginEntry, Settings,
    Timestamp,
};
use crate::NodeId;
use crate::consensus::ConfigId;
use crate::monitor::CheckState;

/// What of a changed config validation looks at ([`Mutation::validation_scope`]).
enum Scope {
    Nothing,
    Settings,
    Peers,
    Check(usize),
    Whole,
}

/// One change. Membership changes add or remove exactly one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// The same content in a new term (a new master's first commit).
    Restamp,
    AddPeer {
        peer: Peer,
    },
    RemovePeer {
        node_id: NodeId,
    },
    /// `qu cluster settings set KEY VALUE`.
    SetSetting {
        key: String,
        value: String,
    },
    /// A hand edit of cluster.yaml, built on the node's copy whose content
    /// ([`ClusterConfig::content_id`]) is (`base_term`, `base_version`): it
    /// applies only to exactly that content (two terms can each have made
    /// a version of the same number); runtime state committed since does
    /// not matter, as the edit keeps the cluster's.
    Replace {
        config: Box<ClusterConfig>,
        base_version: u64,
        base_term: u64,
    },
    /// `qu check add`. Alert references may be ids or names.
    AddCheck {
        check: Box<Check>,
    },
    /// `qu check edit`: only the given fields change.
    EditCheck {
        check: String,
        changes: Box<CheckChanges>,
    },
    RemoveCheck {
        check: String,
    },
    SetCheckDisabled {
        check: String,
        disabled: bool,
    },
    /// The master commits the verdicts of one tick, all in one version (so
    /// thousands of checks changing at once cost one commit). A transition
    /// whose `from` is no longer the committed state is stale and skipped.
    RecordTransitions {
        transitions: Vec<Transition>,
    },
    /// `qu plugin add`: a new plugin, or a new version (sha256) of one.
    /// The blob is stored on the proposing node and the master first.
    AddPlugin {
        plugin: PluginEntry,
    },
    /// `qu plugin remove`: refused while a check or alert uses it.
    RemovePlugin {
        name: String,
    },
    /// `qu alert add`.
    AddAlert {
        alert: Box<Alert>,
    },
    /// `qu alert edit`, `enable`, `disable`, `default on|off`: only the
    /// given fields change.
    EditAlert {
        alert: String,
        changes: Box<AlertChanges>,
    },
    /// `qu alert remove`: also drops it from checks' alert lists and its
    /// pending deliveries.
    RemoveAlert {
        alert: String,
    },
    /// The master finished deliveries (delivered, or failed for good).
    FinishDeliveries {
        results: Vec<DeliveryResult>,
    },
    /// The master announces members dead (`down: true`) or back, with a
    /// delivery record per alert marked for cluster events
    /// ([`crate::alerting::cluster::MemberWatch`]). A change that is no
    /// change (already announced so, or not a member) is skipped.
    RecordMembers {
        changes: Vec<MemberChange>,
    },
    /// The master commits reminders that checks are still DOWN
    /// ([`crate::alerting::reminders_due`]), a delivery record each. One
    /// whose check is no longer DOWN in that transition, is acknowledged,
    /// or whose slot was committed already, is skipped.
    RecordReminders {
        reminders: Vec<ReminderDue>,
    },
    /// `qu alert ack`: no more reminders for the check's current incident.
    Acknowledge {
        check: String,
        reason: String,
        /// The node the operator asked on.
        by: NodeId,
    },
}

/// A reminder due: of alert `alert_id`, for check `check_id`'s DOWN
/// transition `of`, slot `slot` (1 = the first, `repeat` after the DOWN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderDue {
    pub check_id: String,
    pub alert_id: String,
    pub of: String,
    pub slot: u32,
}

/// One member announced dead or back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub node_id: NodeId,
    pub down: bool,
}

/// The fields `qu alert edit` may change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertChanges {
    /// Sink settings to set; an empty value removes the key.
    pub config: std::collections::BTreeMap<String, String>,
    pub default: Option<bool>,
    pub disabled: Option<bool>,
    /// `Some("")` removes the template (back to the default).
    pub subject_template: Option<String>,
    pub body_template: Option<String>,
    #[serde(default)]
    pub cluster_events: Option<bool>,
    /// `Some(ZERO)` turns reminders off.
    #[serde(default, with = "humantime_serde")]
    pub repeat: Option<Duration>,
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub key: String,
    pub delivered: bool,
    pub attempts: u32,
    /// Why it failed (empty when delivered).
    pub error: String,
}

/// One check's new committed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub check_id: String,
    pub status: CheckStatus,
}

/// The fields `qu check edit` may change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckChanges {
    pub target: Option<String>,
    pub interval: Option<std::time::Duration>,
    pub timeout: Option<std::time::Duration>,
    /// Settings to set; an empty value removes the key.
    pub settings: std::collections::BTreeMap<String, String>,
    pub alert_ids: Option<Vec<String>>,
    pub suppress_alert_ids: Option<Vec<String>>,
    /// `Some(0)` goes back to `settings.hysteresis`.
    #[serde(default)]
    pub rounds_down: Option<u32>,
    #[serde(default)]
    pub rounds_up: Option<u32>,
}

/// What the master stamps on every version it makes (replicated with the
/// mutation in a log entry, so a follower applies exactly the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub id: ConfigId,
    pub at: Timestamp,
    pub by: NodeId,
}

impl Mutation {
    /// What of `next` (this change applied to `current`, a valid config)
    /// can be invalid, so validation costs the change and not the config:
    /// with 10,000 checks the whole check costs milliseconds on every node
    /// at every commit. Changes to alerts and plugins, which checks refer
    /// to, and whole replacements are validated whole.
    fn validation_scope(&self, current: &ClusterConfig, next: &ClusterConfig) -> Scope {
        match self {
            Mutation::Restamp
            | Mutation::RecordTransitions { .. }
            | Mutation::FinishDeliveries { .. }
            | Mutation::RecordMembers { .. }
            | Mutation::RecordReminders { .. }
            | Mutation::Acknowledge { .. }
            // A check goes with its states and delivery records; nothing
            // else refers to checks.
            | Mutation::RemoveCheck { .. } => Scope::Nothing,
            Mutation::SetSetting { .. } => Scope::Settings,
            Mutation::AddPeer { .. } | Mutation::RemovePeer { .. } => Scope::Peers,
            Mutation::AddCheck { .. } => Scope::Check(next.checks.len().saturating_sub(1)),
            Mutation::EditCheck { check, .. } | Mutation::SetCheckDisabled { check, .. } => {
                match check_index(current, check) {
                    Ok(index) => Scope::Check(index),
                    Err(_) => Scope::Whole,
                }
            }
            Mutation::Replace { .. }
            | Mutation::AddPlugin { .. }
            | Mutation::RemovePlugin { .. }
            | Mutation::AddAlert { .. }
            | Mutation::EditAlert { .. }
            | Mutation::RemoveAlert { .. } => Scope::Whole,
        }
    }

    /// Whether this changes what operators own (and so the operator's
    /// `cluster.yaml`): everything but a new master's re-stamp and the
    /// runtime state the master records (transitions, delivery results).
    pub fn changes_content(&self) -> bool {
        !matches!(
            self,
            Mutation::Restamp
                | Mutation::RecordTransitions { .. }
                | Mutation::FinishDeliveries { .. }
                | Mutation::RecordMembers { .. }
                | Mutation::RecordReminders { .. }
                | Mutation::Acknowledge { .. }
        )
    }

    /// The peer a change adds, who must acknowledge before it counts.
    pub fn new_member(&self) -> Option<NodeId> {
        match self {
            Mutation::AddPeer { peer } => Some(peer.node_id),
            _ => None,
        }
    }

    /// A few words for logs.
    pub fn describe(&self) -> String {
        match self {
            Mutation::Restamp => "re-stamp in a new term".into(),
            Mutation::AddPeer { peer } => format!("add node {} ({})", peer.node_id, peer.advertise),
            Mutation::RemovePeer { node_id } => format!("remove node {node_id}"),
            Mutation::SetSetting { key, value } => format!("set {key} = {value}"),
            Mutation::Replace { base_version, .. } => format!("replace (hand edit of version {base_version})"),
            Mutation::AddCheck { check } => format!("add check {} ({} {})", check.name, check.kind, check.target),
            Mutation::EditCheck { check, .. } => format!("edit check {check}"),
            Mutation::RemoveCheck { check } => format!("remove check {check}"),
            Mutation::SetCheckDisabled { check, disabled } => {
                format!("{} check {check}", if *disabled { "disable" } else { "enable" })
            }
            Mutation::RecordTransitions { transitions } => match transitions.as_slice() {
                [one] => format!("check {}: {} -> {}", one.check_id, one.status.from, one.status.state),
                many => format!("{} check transitions", many.len()),
            },
            Mutation::AddPlugin { plugin } => format!("add plugin {} (sha256 {})", plugin.name, plugin.sha256),
            Mutation::RemovePlugin { name } => format!("remove plugin {name}"),
            Mutation::AddAlert { alert } => format!("add alert {} ({})", alert.name, alert.kind),
            Mutation::EditAlert { alert, .. } => format!("edit alert {alert}"),
            Mutation::RemoveAlert { alert } => format!("remove alert {alert}"),
            Mutation::FinishDeliveries { results } => format!("finish {} deliveries", results.len()),
            Mutation::RecordMembers { changes } => changes
                .iter()
                .map(|c| format!("node {} {}", c.node_id, if c.down { "dead" } else { "back" }))
                .collect::<Vec<_>>()
                .join(", "),
            Mutation::RecordReminders { reminders } => format!("{} reminder(s)", reminders.len()),
            Mutation::Acknowledge { check, .. } => format!("acknowledge check {check}"),
        }
    }

    /// The next config, or why the change is refused. The result is valid
    /// (validated as a whole, or by construction for a runtime-only
    /// change); nothing partial ever comes out.
    pub fn apply(&self, current: &ClusterConfig, stamp: &Stamp) -> Result<ClusterConfig, String> {
        let mut next = current.clone();
        match self {
            Mutation::Restamp => {}
            Mutation::AddPeer { peer } => add_peer(current, &mut next, peer)?,
            Mutation::RemovePeer { node_id } => remove_peer(current, &mut next, node_id)?,
            Mutation::SetSetting { key, value } => set_setting(&mut next.settings, key, value)?,
            Mutation::Replace { config, base_version, base_term } => {
                replace(current, &mut next, config, (*base_term, *base_version))?
            }
            Mutation::AddCheck { check } => add_check(current, &mut next, check)?,
            Mutation::EditCheck { check, changes } => edit_check(current, &mut next, check, changes)?,
            Mutation::RemoveCheck { check } => remove_check(current, &mut next, check)?,
            Mutation::SetCheckDisabled { check, disabled } => set_check_disabled(current, &mut next, check, disabled)?,
            Mutation::RecordTransitions { transitions } => record_transitions(current, &mut next, transitions, stamp)?,
            Mutation::AddPlugin { plugin } => add_plugin(current, &mut next, plugin)?,
            Mutation::AddAlert { alert } => add_alert(current, &mut next, alert)?,
            Mutation::EditAlert { alert, changes } => edit_alert(current, &mut next, alert, changes)?,
            Mutation::RemoveAlert { alert } => remove_alert(current, &mut next, alert)?,
            Mutation::FinishDeliveries { results } => finish_deliveries(current, &mut next, results, stamp)?,
            Mutation::RemovePlugin { name } => remove_plugin(current, &mut next, name)?,
            Mutation::RecordMembers { changes } => record_members(current, &mut next, changes, stamp)?,
            Mutation::RecordReminders { reminders } => record_reminders(current, &mut next, reminders, stamp)?,
            Mutation::Acknowledge { check, reason, by } => acknowledge(current, &mut next, check, reason, *by, stamp)?,
        }
        // What operators own keeps the stamp of its last change, which the
        // operator's file shows and a hand edit is based on.
        next.content = if self.changes_content() { None } else { Some(current.content_stamp()) };
        next.version = stamp.id.version;
        next.term = stamp.id.term;
        next.updated_at = Some(stamp.at);
        next.updated_by = Some(stamp.by);
        let problems = match self.validation_scope(current, &next) {
            // Valid by construction: what operators own is `current`'s, which
            // was valid, and these only record states and deliveries of
            // checks and alerts that exist. Skipping the whole-config check
            // matters in an outage: a commit per tick, on every node.
            Scope::Nothing => Vec::new(),
            Scope::Settings => next.settings.validate(),
            Scope::Peers => {
                let mut problems = Vec::new();
                next.validate_peers(&mut problems);
                problems
            }
            Scope::Check(index) => next.validate_check_at(index),
            Scope::Whole => next.validate(),
        };
        // The scope finds what the whole check finds, on a valid `current`.
        debug_assert!(
            !current.validate().is_empty() || problems.is_empty() == next.validate().is_empty(),
            "{}: the scoped validation found {problems:?}, the whole one {:?}",
            self.describe(),
            next.validate()
        );
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(next)
    }
}

fn add_peer(current: &ClusterConfig, next: &mut ClusterConfig, peer: &Peer) -> Result<(), String> {
    if current.peer(&peer.node_id).is_some() {
        return Err(format!("node {} is already a member", peer.node_id));
    }
    if let Some(other) = current.peers.iter().find(|p| p.fingerprint == peer.fingerprint) {
        return Err(format!("key {} already belongs to member {}", peer.fingerprint, other.node_id));
    }
    next.peers.push(peer.clone());
    Ok(())
}
fn remove_peer(current: &ClusterConfig, next: &mut ClusterConfig, node_id: &NodeId) -> Result<(), String> {
    if current.peer(node_id).is_none() {
        return Err(format!("no member has id {node_id} (see `qu node list`)"));
    }
    if current.peers.len() == 1 {
        return Err("cannot remove the last member of a cluster".into());
    }
    next.peers.retain(|p| p.node_id != *node_id);
    next.members_seen.remove(node_id);
    Ok(())
}
fn replace(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    config: &ClusterConfig,
    base: (u64, u64),
) -> Result<(), String> {
    let (term, version) = current.content_id();
    if !super::edits::base_matches(base, (term, version)) {
        return Err(format!(
            "the edit was made on version {} (term {}), but cluster.yaml is at version {version} (term {term}); \
                 re-apply it to the current cluster.yaml",
            base.1, base.0
        ));
    }
    if config.members() != current.members() || config.peers.iter().any(|p| current.peer(&p.node_id) != Some(p)) {
        return Err("a hand edit may not change peers while the cluster runs; use `qu node add` / \
                        `qu node remove` (editing peers is only for the offline shrink procedure)"
            .into());
    }
    // An edit changes what operators own; the runtime state (committed
    // check states, deliveries) stays the cluster's, whatever the file
    // says, so an old copy can never roll a committed DOWN back.
    *next = config.clone();
    next.states = current.states.clone();
    next.deliveries = current.deliveries.clone();
    next.drop_runtime_state_of_removed();
    Ok(())
}
fn add_check(current: &ClusterConfig, next: &mut ClusterConfig, check: &Check) -> Result<(), String> {
    if current.check(&check.name).is_some() {
        return Err(format!("a check named `{}` already exists; use `qu check edit`", check.name));
    }
    if current.checks.iter().any(|c| c.id == check.id) {
        return Err(format!("check id `{}` is taken; retry", check.id));
    }
    if let Some(problem) = super::checks::head_with_body_match(&check.kind, &check.settings) {
        return Err(problem);
    }
    let mut check = check.clone();
    check.alert_ids = resolve_alerts(current, &check.alert_ids)?;
    check.suppress_alert_ids = resolve_alerts(current, &check.suppress_alert_ids)?;
    std::sync::Arc::make_mut(&mut next.checks).push(std::sync::Arc::new(check));
    Ok(())
}
fn edit_check(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    check: &str,
    changes: &CheckChanges,
) -> Result<(), String> {
    let index = check_index(current, check)?;
    let alert_ids = changes.alert_ids.as_ref().map(|a| resolve_alerts(current, a)).transpose()?;
    let suppress = changes.suppress_alert_ids.as_ref().map(|a| resolve_alerts(current, a)).transpose()?;
    let edited = std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut next.checks)[index]);
    if let Some(target) = &changes.target {
        edited.target = target.clone();
    }
    if let Some(interval) = changes.interval {
        edited.interval = interval;
    }
    if let Some(timeout) = changes.timeout {
        edited.timeout = timeout;
    }
    merge_settings(&mut edited.settings, &changes.settings);
    if let Some(alert_ids) = alert_ids {
        edited.alert_ids = alert_ids;
    }
    if let Some(suppress) = suppress {
        edited.suppress_alert_ids = suppress;
    }
    if let Some(n) = changes.rounds_down {
        edited.rounds_down = (n > 0).then_some(n);
    }
    if let Some(n) = changes.rounds_up {
        edited.rounds_up = (n > 0).then_some(n);
    }
    if let Some(problem) = super::checks::head_with_body_match(&edited.kind, &edited.settings) {
        return Err(problem);
    }
    if *edited == *current.checks[index] {
        return Err(format!(
            "nothing to change: check `{}` already is as the edit says (give the flags to change)",
            edited.name
        ));
    }
    Ok(())
}
fn remove_check(current: &ClusterConfig, next: &mut ClusterConfig, check: &str) -> Result<(), String> {
    let index = check_index(current, check)?;
    let removed = std::sync::Arc::make_mut(&mut next.checks).remove(index);
    next.states.remove(&removed.id);
    next.deliveries.retain(|_, d| d.check_id != removed.id);
    Ok(())
}
fn set_check_disabled(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    check: &str,
    disabled: &bool,
) -> Result<(), String> {
    let index = check_index(current, check)?;
    std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut next.checks)[index]).disabled = *disabled;
    Ok(())
}
fn record_transitions(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    transitions: &[Transition],
    stamp: &Stamp,
) -> Result<(), String> {
    // A map, not a scan per transition: a mass outage records thousands of
    // transitions in one commit.
    let checks: std::collections::HashMap<&str, &Check> =
        current.checks.iter().map(|c| (c.id.as_str(), &**c)).collect();
    let mut applied = 0;
    for t in transitions {
        let Some(check) = checks.get(t.check_id.as_str()) else { continue };
        if current.check_state(&t.check_id) != t.status.from {
            continue;
        }
        let mut status = t.status.clone();
        status.transition = crate::alerting::transition_id(stamp.id, applied);
        status.since = stamp.at;
        // The transition's deliveries commit with it.
        next.deliveries.extend(crate::alerting::deliveries_for(current, check, &status));
        next.states.insert(t.check_id.clone(), status);
        applied += 1;
    }
    if applied == 0 {
        return Err("every transition is stale (the checks changed or were removed)".into());
    }
    Ok(())
}
fn record_members(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    changes: &[MemberChange],
    stamp: &Stamp,
) -> Result<(), String> {
    let mut applied = 0;
    for change in changes {
        if current.peer(&change.node_id).is_none()
            || crate::alerting::member_announced_down(current, &change.node_id) == change.down
        {
            continue;
        }
        let (from, to) =
            if change.down { (CheckState::Up, CheckState::Down) } else { (CheckState::Down, CheckState::Up) };
        let status =
            MemberStatus { state: to, since: stamp.at, transition: crate::alerting::transition_id(stamp.id, applied) };
        next.deliveries.extend(crate::alerting::member_deliveries(current, &change.node_id, from, &status));
        next.members_seen.insert(change.node_id, status);
        applied += 1;
    }
    if applied == 0 {
        return Err("every member change is stale (already announced, or no longer a member)".into());
    }
    Ok(())
}
fn record_reminders(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    reminders: &[ReminderDue],
    stamp: &Stamp,
) -> Result<(), String> {
    let mut applied = 0;
    for due in reminders {
        let Some(status) = current.states.get(&due.check_id) else { continue };
        let slot_taken =
            next.states.get(&due.check_id).and_then(|s| s.reminded.get(&due.alert_id)).copied().unwrap_or(0);
        let alert_repeats = current.alerts.iter().any(|a| a.id == due.alert_id && a.repeat.is_some() && !a.disabled);
        if status.state != CheckState::Down
            || status.transition != due.of
            || status.acked.is_some()
            || slot_taken >= due.slot
            || !alert_repeats
        {
            continue;
        }
        let transition = crate::alerting::transition_id(stamp.id, applied);
        let record = Delivery {
            check_id: due.check_id.clone(),
            alert_id: due.alert_id.clone(),
            transition: transition.clone(),
            from: CheckState::Down,
            to: CheckState::Down,
            status: DeliveryStatus::Pending,
            created: stamp.at,
            finished: None,
            attempts: 0,
            error: String::new(),
            reminder: Some(super::Reminder { of: due.of.clone(), slot: due.slot }),
        };
        next.deliveries.insert(crate::alerting::key(&transition, &due.alert_id), record);
        if let Some(state) = next.states.get_mut(&due.check_id) {
            state.reminded.insert(due.alert_id.clone(), due.slot);
        }
        applied += 1;
    }
    if applied == 0 {
        return Err("every reminder is stale (the check changed, was acknowledged, or was reminded already)".into());
    }
    Ok(())
}
fn acknowledge(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    check: &str,
    reason: &str,
    by: NodeId,
    stamp: &Stamp,
) -> Result<(), String> {
    let index = check_index(current, check)?;
    let check = &current.checks[index];
    let Some(status) = current.states.get(&check.id).filter(|s| s.state == CheckState::Down) else {
        return Err(format!("check {} is not DOWN: there is no incident to acknowledge", check.name));
    };
    if let Some(ack) = &status.acked {
        return Err(format!("check {}'s incident was acknowledged already, at {}", check.name, ack.at));
    }
    let ack = super::Ack { at: stamp.at, by, reason: reason.chars().take(500).collect() };
    if let Some(state) = next.states.get_mut(&check.id) {
        state.acked = Some(ack);
    }
    Ok(())
}
fn add_plugin(current: &ClusterConfig, next: &mut ClusterConfig, plugin: &PluginEntry) -> Result<(), String> {
    if let Some(existing) = next.plugins.iter_mut().find(|p| p.name == plugin.name) {
        if existing.kind != plugin.kind {
            let users = current.plugin_users(&plugin.name);
            if !users.is_empty() {
                return Err(format!(
                    "plugin {} is a {:?} plugin used by {}; a new version must be of the same kind",
                    plugin.name,
                    existing.kind,
                    users.join(", ")
                ));
            }
        }
        *existing = plugin.clone();
    } else {
        next.plugins.push(plugin.clone());
    }
    Ok(())
}
fn add_alert(current: &ClusterConfig, next: &mut ClusterConfig, alert: &Alert) -> Result<(), String> {
    if current.alerts.iter().any(|a| a.name == alert.name) {
        return Err(format!("an alert named `{}` already exists; use `qu alert edit`", alert.name));
    }
    if current.alerts.iter().any(|a| a.id == alert.id) {
        return Err(format!("alert id `{}` is taken; retry", alert.id));
    }
    next.alerts.push(alert.clone());
    Ok(())
}
fn edit_alert(
    current: &ClusterConfig,
    next: &mut ClusterConfig,
    alert: &str,
    changes: &AlertChanges,
) -> Result<(), String> {
    let index = alert_index(current, alert)?;
    changes.apply_to(&mut next.alerts[index]);
    Ok(())
}
fn remove_alert(current: &ClusterConfig, next: &mut ClusterConfig, alert: &str) -> Result<(), String> {
    let index = alert_index(current, alert)?;
    let removed = next.alerts.remove(index);
    let refers =
        |check: &Check| check.alert_ids.contains(&removed.id) || check.suppress_alert_ids.contains(&removed.id);
    for check in std::sync::Arc::make_mut(&mut next.checks).iter_mut().filter(|c| refers(c)) {
        let check = std::sync::Arc::make_mut(check);
        check.alert_ids.retain(|id| *id != removed.id);
        check.suppress_alert_ids.retain(|id| *id != removed.id);
    }
    next.deliveries.retain(|_, d| d.alert_id != removed.id);
    Ok(())
}
fn finish_deliveries(
    _current: &ClusterConfig,
    next: &mut ClusterConfig,
    results: &[DeliveryResult],
    stamp: &Stamp,
) -> Result<(), String> {
    let mut finished = 0;
    for result in results {
        let Some(record) = next.deliveries.get_mut(&result.key) else { continue };
        if record.status != DeliveryStatus::Pending {
            continue;
        }
        record.status = if result.delivered { DeliveryStatus::Delivered } else { DeliveryStatus::Failed };
        record.finished = Some(stamp.at);
        record.attempts = result.attempts;
        record.error = result.error.chars().take(500).collect();
        finished += 1;
    }
    if finished == 0 {
        return Err("every delivery result is stale (already finished or removed)".into());
    }
    crate::alerting::prune(&mut next.deliveries, stamp.at);
    Ok(())
}
fn remove_plugin(current: &ClusterConfig, next: &mut ClusterConfig, name: &str) -> Result<(), String> {
    if !current.plugins.iter().any(|p| p.name == *name) {
        return Err(if super::BUILT_IN_CHECK_PLUGINS.contains(&name) || super::BUILT_IN_SINK_PLUGINS.contains(&name) {
            format!("plugin {name} is built in; it cannot be removed")
        } else {
            format!("no plugin named {name} (see `qu plugin list`)")
        });
    }
    // A built-in of the same name takes over again; only
    // refuse when nothing would be left to run the users.
    let users = current.plugin_users(name);
    let built_in = super::BUILT_IN_CHECK_PLUGINS.contains(&name) || super::BUILT_IN_SINK_PLUGINS.contains(&name);
    if !users.is_empty() && !built_in {
        return Err(format!("plugin {name} is still used by {}; remove or change them first", users.join(", ")));
    }
    next.plugins.retain(|p| p.name != *name);
    Ok(())
}

/// Applies settings changes to `settings`: a key with an empty value is
/// removed, any other is set.
pub fn merge_settings(
    settings: &mut std::collections::BTreeMap<String, String>,
    changes: &std::collections::BTreeMap<String, String>,
) {
    for (key, value) in changes {
        if value.is_empty() {
            settings.remove(key);
        } else {
            settings.insert(key.clone(), value.clone());
        }
    }
}

impl AlertChanges {
    /// The edited alert: settings merged, flags and templates replaced (an
    /// empty template removes it).
    pub fn apply_to(&self, alert: &mut Alert) {
        merge_settings(&mut alert.config, &self.config);
        if let Some(default) = self.default {
            alert.default = default;
        }
        if let Some(disabled) = self.disabled {
            alert.disabled = disabled;
        }
        if let Some(subject) = &self.subject_template {
            alert.subject_template = (!subject.is_empty()).then(|| subject.clone());
        }
        if let Some(body) = &self.body_template {
            alert.body_template = (!body.is_empty()).then(|| body.clone());
        }
        if let Some(cluster_events) = self.cluster_events {
            alert.cluster_events = cluster_events;
        }
        if let Some(repeat) = self.repeat {
            alert.repeat = (!repeat.is_zero()).then_some(repeat);
        }
    }
}

fn alert_index(config: &ClusterConfig, id_or_name: &str) -> Result<usize, String> {
    config
        .alerts
        .iter()
        .position(|a| a.id == id_or_name || a.name == id_or_name)
        .ok_or_else(|| format!("no alert has the name or id `{id_or_name}` (see `qu alert list`)"))
}

fn check_index(config: &ClusterConfig, id_or_name: &str) -> Result<usize, String> {
    config
        .checks
        .iter()
        .position(|c| c.id == id_or_name || c.name == id_or_name)
        .ok_or_else(|| format!("no check has the name or id `{id_or_name}` (see `qu check list`)"))
}

/// Alert references (names or ids) as ids. Empty ones are skipped, so an empty list
/// (`--alerts ''`) clears a check's list.
fn resolve_alerts(config: &ClusterConfig, refs: &[String]) -> Result<Vec<String>, String> {
    refs.iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|r| {
            config
                .alerts
                .iter()
                .find(|a| a.id == *r || a.name == *r)
                .map(|a| a.id.clone())
                .ok_or_else(|| format!("no alert has the name or id `{r}` (see `qu alert list`)"))
        })
        .collect()
}

/// Names `qu cluster settings set` accepts.
pub const SETTING_KEYS: [&str; 11] = [
    "heartbeat",
    "dead_after",
    "master_cooldown",
    "hysteresis",
    "announce_first_up",
    "delivery_deadline",
    "plugin_memory_mib",
    "no_quorum_after",
    "member_dead_after",
    "deadman_url",
    "deadman_interval",
];

fn set_setting(settings: &mut Settings, key: &str, value: &str) -> Result<(), String> {
    let duration = || -> Result<Duration, String> {
        humantime::parse_duration(value).map_err(|e| format!("{key}: `{value}` is not a duration like 1s or 2m: {e}"))
    };
    match key {
        "heartbeat" => settings.heartbeat = duration()?,
        "dead_after" => settings.dead_after = duration()?,
        "master_cooldown" => settings.master_cooldown = duration()?,
        "hysteresis" => {
            settings.hysteresis = value.parse().map_err(|_| format!("hysteresis: `{value}` is not a whole number"))?
        }
        "announce_first_up" => {
            settings.announce_first_up =
                value.parse().map_err(|_| format!("announce_first_up: `{value}` is not true or false"))?
        }
        "delivery_deadline" => settings.delivery_deadline = duration()?,
        "plugin_memory_mib" => {
            settings.plugin_memory_mib =
                value.parse().map_err(|_| format!("plugin_memory_mib: `{value}` is not a whole number of MiB"))?
        }
        // `default`: 2 × dead_after + 10 s, following dead_after.
        "no_quorum_after" => settings.no_quorum_after = if value == "default" { None } else { Some(duration()?) },
        "member_dead_after" => settings.member_dead_after = duration()?,
        // Empty: the dead man's switch is off.
        "deadman_url" => settings.deadman_url = value.trim().to_string(),
        "deadman_interval" => settings.deadman_interval = duration()?,
        other => return Err(format!("unknown setting `{other}`; settable: {}", SETTING_KEYS.join(", "))),
    }
    let problems = settings.validate();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fingerprint;

    fn peer(n: u8) -> Peer {
        Peer {
            node_id: NodeId::from_bytes([n; 16]),
            advertise: format!("n{n}:9901"),
            fingerprint: Fingerprint::from_sha256(&[n; 32]),
            cert_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
        }
    }

    fn stamp(version: u64) -> Stamp {
        Stamp { id: ConfigId { term: 3, version }, at: Timestamp::from_unix_millis(1), by: NodeId::from_bytes([1; 16]) }
    }

    #[test]
    fn membership_changes_one_peer_at_a_time_with_clear_refusals() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let two = Mutation::AddPeer { peer: peer(2) }.apply(&base, &stamp(2)).unwrap();
        assert_eq!(two.members().len(), 2);
        assert_eq!((two.term, two.version), (3, 2));
        assert!(Mutation::AddPeer { peer: peer(2) }.apply(&two, &stamp(3)).unwrap_err().contains("already a member"));
        let one = Mutation::RemovePeer { node_id: peer(2).node_id }.apply(&two, &stamp(3)).unwrap();
        assert_eq!(one.members(), vec![peer(1).node_id]);
        let err = Mutation::RemovePeer { node_id: peer(1).node_id }.apply(&one, &stamp(4)).unwrap_err();
        assert!(err.contains("last member"), "{err}");
        let err = Mutation::RemovePeer { node_id: peer(9).node_id }.apply(&one, &stamp(4)).unwrap_err();
        assert!(err.contains("no member"), "{err}");
    }

    #[test]
    fn settings_are_validated_as_a_whole() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let set = |k: &str, v: &str| Mutation::SetSetting { key: k.into(), value: v.into() }.apply(&base, &stamp(2));
        assert_eq!(set("heartbeat", "200ms").unwrap().settings.heartbeat, Duration::from_millis(200));
        assert!(set("dead_after", "2s").unwrap_err().contains("3 × heartbeat"));
        assert!(set("hysteresis", "x").unwrap_err().contains("whole number"));
        assert!(set("colour", "1").unwrap_err().contains("unknown setting"));
    }

    #[test]
    fn hand_edits_need_the_current_base_and_keep_peers() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let mut edited = base.clone();
        edited.settings.hysteresis = 3;
        let replace = |config: &ClusterConfig, base_version| Mutation::Replace {
            config: Box::new(config.clone()),
            base_version,
            base_term: base.term,
        };
        let next = replace(&edited, 1).apply(&base, &stamp(2)).unwrap();
        assert_eq!(next.settings.hysteresis, 3);
        assert!(replace(&edited, 0).apply(&base, &stamp(2)).unwrap_err().contains("version 0"));
        edited.peers.push(peer(2));
        assert!(replace(&edited, 1).apply(&base, &stamp(2)).unwrap_err().contains("may not change peers"));
    }

    fn plugin(name: &str, sha: char) -> super::super::PluginEntry {
        super::super::PluginEntry {
            name: name.into(),
            kind: super::super::PluginKind::Check,
            sha256: sha.to_string().repeat(64),
            size: 1000,
            allow: vec![],
            limits: Default::default(),
        }
    }

    #[test]
    fn plugins_are_added_replaced_and_removed_only_when_unused() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        // A check of an unknown plugin type is refused; built-ins are known.
        let mut echo_check = check("greet");
        echo_check.kind = "echo".into();
        let err = Mutation::AddCheck { check: Box::new(echo_check.clone()) }.apply(&base, &stamp(2)).unwrap_err();
        assert!(err.contains("unknown check type `echo`"), "{err}");
        let mut dns_check = check("resolve");
        dns_check.kind = "dns".into();
        dns_check.target = "example.com".into();
        dns_check.settings.insert("record".into(), "MX".into());
        Mutation::AddCheck { check: Box::new(dns_check) }.apply(&base, &stamp(2)).unwrap();

        let with = Mutation::AddPlugin { plugin: plugin("echo", 'a') }.apply(&base, &stamp(2)).unwrap();
        let used = Mutation::AddCheck { check: Box::new(echo_check) }.apply(&with, &stamp(3)).unwrap();
        // A new version replaces the entry under the same name.
        let upgraded = Mutation::AddPlugin { plugin: plugin("echo", 'b') }.apply(&used, &stamp(4)).unwrap();
        assert_eq!(upgraded.plugins.len(), 1);
        assert_eq!(upgraded.plugins[0].sha256, "b".repeat(64));
        let err = Mutation::RemovePlugin { name: "echo".into() }.apply(&upgraded, &stamp(5)).unwrap_err();
        assert!(err.contains("still used by check greet"), "{err}");
        let unused = Mutation::RemoveCheck { check: "greet".into() }.apply(&upgraded, &stamp(5)).unwrap();
        let gone = Mutation::RemovePlugin { name: "echo".into() }.apply(&unused, &stamp(6)).unwrap();
        assert!(gone.plugins.is_empty());
        let err = Mutation::RemovePlugin { name: "dns".into() }.apply(&gone, &stamp(7)).unwrap_err();
        assert!(err.contains("built in"), "{err}");

        // Entries are validated: hash, size, name, limits.
        let mut bad = plugin("http", 'c');
        bad.sha256 = "XYZ".into();
        bad.size = 0;
        bad.limits.memory_mib = Some(1024);
        let err = Mutation::AddPlugin { plugin: bad }.apply(&base, &stamp(2)).unwrap_err();
        for part in ["sha256: expected 64", "size: 0 bytes", "is a native check type", "memory_mib: from 1 to 256"] {
            assert!(err.contains(part), "{part} in {err}");
        }
    }

    /// Check `id`'s first verdict: DOWN, 3 of 3 failing.
    fn went_down(id: &str) -> Transition {
        Transition {
            check_id: id.to_string(),
            status: CheckStatus {
                acked: None,
                reminded: Default::default(),
                state: crate::monitor::CheckState::Down,
                from: crate::monitor::CheckState::Unknown,
                since: Timestamp::from_unix_millis(0),
                transition: String::new(),
                ok: 0,
                failing: 3,
                total: 3,
                detail: String::new(),
            },
        }
    }

    fn check(name: &str) -> Check {
        Check {
            rounds_down: None,
            rounds_up: None,
            id: format!("id-{name}"),
            name: name.into(),
            kind: "http".into(),
            target: "http://127.0.0.1:8080/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            settings: Default::default(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: false,
        }
    }

    #[test]
    fn checks_are_added_edited_disabled_and_removed_by_name_or_id() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let add =
            |c: &ClusterConfig, check: Check, v| Mutation::AddCheck { check: Box::new(check) }.apply(c, &stamp(v));
        let one = add(&base, check("web"), 2).unwrap();
        assert!(add(&one, check("web"), 3).unwrap_err().contains("already exists"));
        let mut bad = check("bad");
        bad.target = "not a url".into();
        assert!(add(&one, bad, 3).unwrap_err().contains("is not a URL"), "the whole config is validated");
        let mut with_alert = check("alerting");
        with_alert.alert_ids = vec!["pager".into()];
        assert!(add(&one, with_alert, 3).unwrap_err().contains("no alert"));

        let changes = CheckChanges {
            interval: Some(Duration::from_secs(5)),
            timeout: Some(Duration::from_secs(2)),
            settings: [("expect".to_string(), "200".to_string())].into(),
            ..Default::default()
        };
        let edit = Mutation::EditCheck { check: "id-web".into(), changes: Box::new(changes) };
        let edited = edit.apply(&one, &stamp(3)).unwrap();
        assert_eq!(edited.checks[0].interval, Duration::from_secs(5));
        assert_eq!(edited.checks[0].settings["expect"], "200");
        let off = Mutation::SetCheckDisabled { check: "web".into(), disabled: true }.apply(&edited, &stamp(4)).unwrap();
        assert!(off.checks[0].disabled);
        let gone = Mutation::RemoveCheck { check: "web".into() }.apply(&off, &stamp(5)).unwrap();
        assert!(gone.checks.is_empty());
        assert!(
            Mutation::RemoveCheck { check: "web".into() }.apply(&gone, &stamp(6)).unwrap_err().contains("no check")
        );
    }

    #[test]
    fn an_edit_clears_alert_lists_with_an_empty_list_and_one_that_changes_nothing_is_refused() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let alert = Alert {
            repeat: None,
            id: "a-pager".into(),
            name: "pager".into(),
            kind: "webhook".into(),
            config: [("url".to_string(), "https://hooks.example/x".to_string())].into(),
            default: false,
            disabled: false,
            subject_template: None,
            body_template: None,
            cluster_events: false,
        };
        let with_alert = Mutation::AddAlert { alert: Box::new(alert) }.apply(&base, &stamp(2)).unwrap();
        let mut web = check("web");
        web.alert_ids = vec!["pager".into()];
        web.suppress_alert_ids = vec!["pager".into()];
        let one = Mutation::AddCheck { check: Box::new(web) }.apply(&with_alert, &stamp(3)).unwrap();
        assert_eq!(one.checks[0].alert_ids, vec!["a-pager".to_string()]);
        let edit = |c: &ClusterConfig, changes: CheckChanges, v| {
            Mutation::EditCheck { check: "web".into(), changes: Box::new(changes) }.apply(c, &stamp(v))
        };
        // `--alerts ''` arrives as one empty name: the list is cleared.
        let cleared = edit(
            &one,
            CheckChanges {
                alert_ids: Some(vec![String::new()]),
                suppress_alert_ids: Some(vec![" ".into()]),
                ..Default::default()
            },
            4,
        )
        .unwrap();
        assert!(cleared.checks[0].alert_ids.is_empty() && cleared.checks[0].suppress_alert_ids.is_empty());
        // No flags, or flags that leave it as it is: refused, nothing committed.
        assert!(edit(&cleared, CheckChanges::default(), 5).unwrap_err().contains("nothing to change"));
        let same = CheckChanges { interval: Some(Duration::from_secs(30)), ..Default::default() };
        assert!(edit(&cleared, same, 5).unwrap_err().contains("nothing to change"));
    }

    #[test]
    fn a_head_request_with_a_body_match_is_refused_when_made_but_a_file_holding_one_still_loads() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let mut head = check("head");
        head.settings =
            [("method".to_string(), "head".to_string()), ("body_match".to_string(), "ok".to_string())].into();
        let add = |c: &ClusterConfig, check: Check| Mutation::AddCheck { check: Box::new(check) }.apply(c, &stamp(2));
        assert!(add(&base, head.clone()).unwrap_err().contains("a HEAD response has no body"));
        let plain = add(&base, check("head")).unwrap();
        let changes = CheckChanges {
            settings: [("method".to_string(), "HEAD".to_string()), ("body_match".to_string(), "ok".to_string())].into(),
            ..Default::default()
        };
        let edit = Mutation::EditCheck { check: "head".into(), changes: Box::new(changes) }.apply(&plain, &stamp(3));
        assert!(edit.unwrap_err().contains("a HEAD response has no body"));
        // A file written before the rule, holding one, still parses.
        let mut old = plain.clone();
        std::sync::Arc::make_mut(&mut old.checks)[0] = std::sync::Arc::new(head);
        assert!(ClusterConfig::parse(&old.to_yaml()).is_ok(), "an upgrade must not stop on it");
    }

    /// Several checks change in one commit (an outage): each transition
    /// has its own id, so each gets its own delivery record — one check's
    /// page must never overwrite another's.
    #[test]
    fn transitions_committed_together_each_get_their_own_id_and_records() {
        let mut base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        base.alerts.push(
            serde_yaml::from_str(
                "id: a1\nname: hook\ntype: webhook\nconfig:\n  url: http://127.0.0.1:9/\ndefault: true\n",
            )
            .unwrap(),
        );
        for name in ["web", "db", "dns"] {
            std::sync::Arc::make_mut(&mut base.checks).push(check(name).into());
        }
        let transitions: Vec<Transition> = ["id-web", "id-db", "id-dns"].iter().map(|id| went_down(id)).collect();
        let next = Mutation::RecordTransitions { transitions }.apply(&base, &stamp(2)).unwrap();
        let ids: std::collections::BTreeSet<&str> = next.states.values().map(|s| s.transition.as_str()).collect();
        assert_eq!(ids.len(), 3, "one id per transition: {ids:?}");
        assert_eq!(next.deliveries.len(), 3, "one record per check: {:?}", next.deliveries.keys());
        let checks: std::collections::BTreeSet<&str> = next.deliveries.values().map(|d| d.check_id.as_str()).collect();
        assert_eq!(checks.len(), 3);
        for (key, delivery) in &next.deliveries {
            assert_eq!(next.states[&delivery.check_id].transition, delivery.transition);
            assert_eq!(*key, crate::alerting::key(&delivery.transition, "a1"));
        }
    }

    #[test]
    fn transitions_commit_once_and_stale_ones_are_refused() {
        use crate::monitor::CheckState;
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let one = Mutation::AddCheck { check: Box::new(check("web")) }.apply(&base, &stamp(2)).unwrap();
        let status = |from, state| CheckStatus {
            acked: None,
            reminded: Default::default(),
            state,
            from,
            since: Timestamp::from_unix_millis(0),
            transition: String::new(),
            ok: 0,
            failing: 3,
            total: 3,
            detail: "status 503".into(),
        };
        let record = |c: &ClusterConfig, s: CheckStatus, v| {
            let transitions = vec![Transition { check_id: "id-web".into(), status: s }];
            Mutation::RecordTransitions { transitions }.apply(c, &stamp(v))
        };
        let down = record(&one, status(CheckState::Unknown, CheckState::Down), 3).unwrap();
        assert_eq!(down.check_state("id-web"), CheckState::Down);
        assert_eq!(down.states["id-web"].transition, "3.3");
        let err = record(&down, status(CheckState::Unknown, CheckState::Down), 4).unwrap_err();
        assert!(err.contains("stale"), "{err}");
        let gone = Mutation::RemoveCheck { check: "web".into() }.apply(&down, &stamp(4)).unwrap();
        assert!(gone.states.is_empty(), "a removed check's state goes with it");

        // A hand edit of an old copy (the check still unknown, no states)
        // changes what it edits and never the committed state.
        let mut edited = one.clone();
        edited.settings.hysteresis = 5;
        let replace = |config: &ClusterConfig, base: &ClusterConfig| {
            let (base_term, base_version) = base.content_id();
            Mutation::Replace { config: Box::new(config.clone()), base_version, base_term }
        };
        // The DOWN changed runtime state only: what operators own, and what
        // an edit is based on, is still `one`'s.
        assert_eq!(down.content_id(), one.content_id());
        assert_eq!(down.content_stamp().version, one.version);
        let next = replace(&edited, &one).apply(&down, &stamp(4)).unwrap();
        assert_eq!(next.settings.hysteresis, 5);
        assert_eq!(next.states, down.states, "the committed DOWN stays");
        assert_eq!(next.content, None, "the edit changed what operators own");
        let mut other_term = one.clone();
        other_term.term += 1;
        let err = replace(&edited, &other_term).apply(&down, &stamp(4)).unwrap_err();
        assert!(err.contains("re-apply it"), "same version, other term: {err}");
        replace(&edited, &next).apply(&next, &stamp(5)).expect("an edit of the edited copy applies to it");
        let err = replace(&edited, &one).apply(&next, &stamp(5)).unwrap_err();
        assert!(err.contains("re-apply it"), "an edit of the copy before an edit is stale: {err}");
        std::sync::Arc::make_mut(&mut edited.checks).clear();
        let removed = replace(&edited, &down).apply(&down, &stamp(4)).unwrap();
        assert!(removed.states.is_empty(), "removing the check by hand removes its state");
    }

    #[test]
    fn alert_settings_are_validated() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let set = |key: &str, value: &str| {
            Mutation::SetSetting { key: key.into(), value: value.into() }.apply(&base, &stamp(2))
        };
        assert!(set("delivery_deadline", "10s").unwrap_err().contains("outside 1m..7days"));
        assert!(set("plugin_memory_mib", "64").unwrap_err().contains("outside 256..=65536"));
        assert!(set("plugin_memory_mib", "lots").unwrap_err().contains("not a whole number of MiB"));
        assert!(set("delivery_deadline", "30days").unwrap_err().contains("outside 1m..7days"));
        assert_eq!(set("delivery_deadline", "2h").unwrap().settings.delivery_deadline, Duration::from_secs(7_200));
        assert!(!set("announce_first_up", "false").unwrap().settings.announce_first_up);
        assert!(set("announce_first_up", "maybe").unwrap_err().contains("not true or false"));
    }

    #[test]
    fn deliveries_commit_with_their_transition_and_finish_once() {
        use crate::monitor::CheckState;
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let alert = |id: &str, default: bool| Alert {
            repeat: None,
            id: id.into(),
            name: format!("n-{id}"),
            kind: "webhook".into(),
            config: Default::default(),
            default,
            disabled: false,
            subject_template: None,
            body_template: None,
            cluster_events: false,
        };
        let a = Mutation::AddAlert { alert: Box::new(alert("a1", true)) }.apply(&base, &stamp(2)).unwrap();
        let b = Mutation::AddAlert { alert: Box::new(alert("a2", false)) }.apply(&a, &stamp(3)).unwrap();
        let mut named_twice = alert("a3", false);
        named_twice.name = "n-a1".into();
        assert!(
            Mutation::AddAlert { alert: Box::new(named_twice) }
                .apply(&b, &stamp(4))
                .unwrap_err()
                .contains("already exists")
        );
        let mut pager = alert("a4", false);
        pager.kind = "pager".into();
        assert!(
            Mutation::AddAlert { alert: Box::new(pager) }
                .apply(&b, &stamp(4))
                .unwrap_err()
                .contains("unknown sink `pager`")
        );
        let mut web = check("web");
        web.alert_ids = vec!["n-a2".into()];
        let c = Mutation::AddCheck { check: Box::new(web) }.apply(&b, &stamp(4)).unwrap();
        assert_eq!(c.checks[0].alert_ids, vec!["a2".to_string()], "names resolve to ids");

        let down = Mutation::RecordTransitions { transitions: vec![went_down("id-web")] }.apply(&c, &stamp(5)).unwrap();
        // One pending record per effective alert (a2 explicit, a1 default), in the same version.
        let keys: Vec<&String> = down.deliveries.keys().collect();
        assert_eq!(keys, vec!["3.5/a1", "3.5/a2"]);
        assert!(down.deliveries.values().all(|d| d.status == DeliveryStatus::Pending && d.to == CheckState::Down));

        let finish =
            |key: &str, delivered| DeliveryResult { key: key.into(), delivered, attempts: 2, error: "boom".into() };
        let done =
            Mutation::FinishDeliveries { results: vec![finish("3.5/a1", true)] }.apply(&down, &stamp(6)).unwrap();
        assert_eq!(done.deliveries["3.5/a1"].status, DeliveryStatus::Delivered);
        assert_eq!(done.deliveries["3.5/a1"].attempts, 2);
        // Finishing again (a re-proposal after a lost answer) changes nothing and is refused as stale.
        let again = Mutation::FinishDeliveries { results: vec![finish("3.5/a1", false)] }.apply(&done, &stamp(7));
        assert!(again.unwrap_err().contains("stale"));
        let failed =
            Mutation::FinishDeliveries { results: vec![finish("3.5/a2", false)] }.apply(&done, &stamp(7)).unwrap();
        assert_eq!(failed.deliveries["3.5/a2"].status, DeliveryStatus::Failed);
        assert_eq!(failed.deliveries["3.5/a2"].error, "boom");

        // Removing an alert drops its records and the checks' references.
        let removed = Mutation::RemoveAlert { alert: "n-a2".into() }.apply(&down, &stamp(8)).unwrap();
        assert!(removed.checks[0].alert_ids.is_empty());
        assert_eq!(removed.deliveries.keys().collect::<Vec<_>>(), vec!["3.5/a1"]);
        // Edits change only what they name; disabled alerts get nothing.
        let changes = AlertChanges { disabled: Some(true), ..Default::default() };
        let off =
            Mutation::EditAlert { alert: "a1".into(), changes: Box::new(changes) }.apply(&removed, &stamp(9)).unwrap();
        assert!(off.alerts[0].disabled && off.alerts[0].default);
    }
}
