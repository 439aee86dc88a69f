//! Alert bookkeeping, pure: which alerts a check's transition goes to,
//! the delivery records committed for them, how retries back off, and how
//! finished records are pruned; and the [`Dispatcher`], which decides
//! what the master sends when. The sends themselves live at the edge (the
//! daemon); everything they are decided from is here.
//!
//! Invariants:
//! - A transition's delivery records are created in the same committed
//!   version as the transition itself, one per effective alert, keyed by
//!   the idempotency key `<transition>/<alert id>`.
//! - A record only ever goes `pending -> delivered` or `pending -> failed`;
//!   finishing a record that is not pending changes nothing.
//! - Nothing is sent for a record that is not committed `pending`.

pub mod cluster;
mod dispatcher;

use std::time::Duration;

pub use self::cluster::{member_announced_down, member_deliveries, member_of};
pub use self::dispatcher::{
    CommittedView, Decision, DispatchInput, DispatchLimits, DispatchOutput, Dispatcher, FailReason, PendingRecord,
    SendOutcome, TransitionOrder,
};
use crate::config::{Alert, Check, CheckStatus, ClusterConfig, Delivery, DeliveryStatus, Timestamp};
use crate::monitor::CheckState;

/// Finished records are kept this long (for `qu alert list`), then pruned.
pub const FINISHED_KEEP: Duration = Duration::from_secs(24 * 3600);
/// At most this many records are kept; the oldest finished go first.
pub const DELIVERIES_MAX: usize = 10_000;
/// First retry delay; doubles per attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The longest wait a sink's `Retry-After` may ask for.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// The alerts a check's transitions go to: its own, plus the defaults,
/// minus the suppressed and the disabled ones, in `alerts:` order.
pub fn effective_alerts<'a>(config: &'a ClusterConfig, check: &Check) -> Vec<&'a Alert> {
    config
        .alerts
        .iter()
        .filter(|a| check.alert_ids.contains(&a.id) || a.default)
        .filter(|a| !check.suppress_alert_ids.contains(&a.id))
        .filter(|a| !a.disabled)
        .collect()
}

/// `DOWN`, `RECOVERED` or `UP`.
pub fn verb(from: CheckState, to: CheckState) -> &'static str {
    match (from, to) {
        (_, CheckState::Down) => "DOWN",
        (CheckState::Down, CheckState::Up) => "RECOVERED",
        _ => "UP",
    }
}

/// The idempotency key of one alert of one transition.
/// The id of the `index`-th transition (from 0) committed in version `id`:
/// `<term>.<version>` for the first, `<term>.<version>.<index>` for the
/// others. Transitions committed together (an outage: thousands in one
/// commit) each get their own, so each check's delivery record has its
/// own key. [`TransitionOrder`] orders them.
pub fn transition_id(id: crate::consensus::ConfigId, index: usize) -> String {
    if index == 0 { format!("{}.{}", id.term, id.version) } else { format!("{}.{}.{index}", id.term, id.version) }
}

pub fn key(transition: &str, alert_id: &str) -> String {
    format!("{transition}/{alert_id}")
}

/// Whether a transition is announced at all: a check's first verdict
/// `unknown -> up` only when the cluster says so.
pub fn announced(config: &ClusterConfig, status: &CheckStatus) -> bool {
    !(status.from == CheckState::Unknown && status.state == CheckState::Up && !config.settings.announce_first_up)
        && status.state != CheckState::Unknown
}

/// The pending records a committed transition creates.
pub fn deliveries_for(config: &ClusterConfig, check: &Check, status: &CheckStatus) -> Vec<(String, Delivery)> {
    if !announced(config, status) {
        return Vec::new();
    }
    effective_alerts(config, check)
        .into_iter()
        .map(|alert| {
            let record = Delivery {
                check_id: check.id.clone(),
                alert_id: alert.id.clone(),
                transition: status.transition.clone(),
                from: status.from,
                to: status.state,
                status: DeliveryStatus::Pending,
                created: status.since,
                finished: None,
                attempts: 0,
                error: String::new(),
                reminder: None,
            };
            (key(&status.transition, &alert.id), record)
        })
        .collect()
}

/// Reminders due now: for each check that is DOWN and not acknowledged,
/// and each of its effective alerts with a `repeat`, the current slot
/// (`(now - since) / repeat`, from 1) if it is later than the last one
/// committed. Only the current slot: a master that was away for several
/// sends one, not a burst. A wall-clock step moves a slot, never repeats
/// one (the committed `reminded` slot only grows).
pub fn reminders_due(config: &ClusterConfig, now: Timestamp) -> Vec<crate::config::ReminderDue> {
    let repeating: Vec<&Alert> = config.alerts.iter().filter(|a| a.repeat.is_some() && !a.disabled).collect();
    if repeating.is_empty() {
        return Vec::new();
    }
    let checks: std::collections::HashMap<&str, &Check> = config.checks.iter().map(|c| (c.id.as_str(), &**c)).collect();
    let mut due = Vec::new();
    for (check_id, status) in &config.states {
        if status.state != CheckState::Down || status.acked.is_some() {
            continue;
        }
        let Some(check) = checks.get(check_id.as_str()).filter(|c| !c.disabled) else { continue };
        let elapsed = now.unix_millis().saturating_sub(status.since.unix_millis());
        for alert in effective_alerts(config, check) {
            let Some(repeat) = alert.repeat.filter(|r| !r.is_zero()) else { continue };
            let slot = (elapsed / repeat.as_millis().max(1) as u64).min(u64::from(u32::MAX)) as u32;
            if slot >= 1 && slot > status.reminded.get(&alert.id).copied().unwrap_or(0) {
                due.push(crate::config::ReminderDue {
                    check_id: check_id.clone(),
                    alert_id: alert.id.clone(),
                    of: status.transition.clone(),
                    slot,
                });
            }
        }
    }
    due
}

/// The delay before retry number `attempt` (1 = the first retry), with
/// `jitter` in `[0, 1)` spreading it by ±20 %.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = BACKOFF_FIRST.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(BACKOFF_MAX);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// Drops finished records older than [`FINISHED_KEEP`] and, beyond
/// [`DELIVERIES_MAX`], the oldest finished ones. Pending records stay.
pub fn prune(deliveries: &mut std::collections::BTreeMap<String, Delivery>, now: Timestamp) {
    let keep_after = now.unix_millis().saturating_sub(FINISHED_KEEP.as_millis() as u64);
    deliveries
        .retain(|_, d| d.status == DeliveryStatus::Pending || d.finished.is_none_or(|f| f.unix_millis() >= keep_after));
    if deliveries.len() > DELIVERIES_MAX {
        let mut finished: Vec<(u64, String)> = deliveries
            .iter()
            .filter(|(_, d)| d.status != DeliveryStatus::Pending)
            .map(|(k, d)| (d.finished.map_or(0, |f| f.unix_millis()), k.clone()))
            .collect();
        finished.sort();
        let excess = deliveries.len() - DELIVERIES_MAX;
        for (_, key) in finished.into_iter().take(excess) {
            deliveries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, default: bool, disabled: bool) -> Alert {
        Alert {
            repeat: None,
            id: id.into(),
            name: format!("n-{id}"),
            kind: "webhook".into(),
            config: Default::default(),
            default,
            disabled,
            subject_template: None,
            body_template: None,
            cluster_events: false,
        }
    }

    fn config_with(alerts: Vec<Alert>) -> ClusterConfig {
        let mut config: ClusterConfig = serde_yaml::from_str("version: 1\nterm: 1\npeers: []\n").unwrap();
        config.alerts = alerts;
        config
    }

    fn check(alert_ids: &[&str], suppress: &[&str]) -> Check {
        Check {
            rounds_down: None,
            rounds_up: None,
            id: "c1".into(),
            name: "web".into(),
            kind: "http".into(),
            target: "http://x/".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            settings: Default::default(),
            alert_ids: alert_ids.iter().map(|s| s.to_string()).collect(),
            suppress_alert_ids: suppress.iter().map(|s| s.to_string()).collect(),
            disabled: false,
        }
    }

    #[test]
    fn the_effective_alert_set() {
        let config = config_with(vec![
            alert("a", false, false), // explicit only
            alert("d", true, false),  // default
            alert("s", true, false),  // default, suppressed below
            alert("x", false, true),  // explicit but disabled
            alert("y", true, true),   // default but disabled
            alert("z", false, false), // neither
        ]);
        let ids = |c: &Check| effective_alerts(&config, c).iter().map(|a| a.id.as_str()).collect::<Vec<_>>();
        // (explicit, suppressed) -> effective
        let table: [(&[&str], &[&str], &[&str]); 5] = [
            (&[], &[], &["d", "s"]),
            (&["a"], &[], &["a", "d", "s"]),
            (&["a"], &["s"], &["a", "d"]),
            (&["x", "z"], &["d", "s"], &["z"]),
            (&["a", "d"], &["a", "d", "s"], &[]),
        ];
        for (explicit, suppressed, want) in table {
            assert_eq!(ids(&check(explicit, suppressed)), want, "explicit {explicit:?} suppressed {suppressed:?}");
        }
    }

    #[test]
    fn verbs_and_first_up() {
        assert_eq!(verb(CheckState::Up, CheckState::Down), "DOWN");
        assert_eq!(verb(CheckState::Unknown, CheckState::Down), "DOWN");
        assert_eq!(verb(CheckState::Down, CheckState::Up), "RECOVERED");
        assert_eq!(verb(CheckState::Unknown, CheckState::Up), "UP");
        let mut config = config_with(vec![alert("d", true, false)]);
        let status = CheckStatus {
            acked: None,
            reminded: Default::default(),
            state: CheckState::Up,
            from: CheckState::Unknown,
            since: Timestamp::from_unix_millis(5),
            transition: "1.7".into(),
            ok: 3,
            failing: 0,
            total: 3,
            detail: String::new(),
        };
        let made = deliveries_for(&config, &check(&[], &[]), &status);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].0, "1.7/d");
        config.settings.announce_first_up = false;
        assert!(deliveries_for(&config, &check(&[], &[]), &status).is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_ceiling() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(backoff(30, 0.5), BACKOFF_MAX);
        assert_eq!(backoff(1, 0.0), Duration::from_millis(1600));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(2400));
    }

    #[test]
    fn reminders_come_once_per_slot_only_while_down_and_not_acknowledged() {
        use crate::config::{Mutation, Stamp};
        use crate::consensus::ConfigId;
        let mut config = config_with(vec![alert("d", true, false)]);
        config.alerts[0].repeat = Some(Duration::from_secs(1800));
        std::sync::Arc::make_mut(&mut config.checks).push(std::sync::Arc::new(check(&[], &[])));
        let t0 = 1_000_000u64;
        let down = CheckStatus {
            state: CheckState::Down,
            from: CheckState::Up,
            since: Timestamp::from_unix_millis(t0),
            transition: "2.5".into(),
            ok: 0,
            failing: 3,
            total: 3,
            detail: "status 503".into(),
            reminded: Default::default(),
            acked: None,
        };
        config.states.insert("c1".into(), down);
        let at = |minutes: u64| Timestamp::from_unix_millis(t0 + minutes * 60_000);
        assert!(reminders_due(&config, at(29)).is_empty(), "not before the first slot");
        let due = reminders_due(&config, at(30));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].slot, due[0].of.as_str(), due[0].alert_id.as_str()), (1, "2.5", "d"));
        let stamp =
            |v| Stamp { id: ConfigId { term: 2, version: v }, at: at(30), by: crate::NodeId::from_bytes([1; 16]) };
        let reminded = Mutation::RecordReminders { reminders: due.clone() }.apply(&config, &stamp(6)).unwrap();
        let record = &reminded.deliveries["2.6/d"];
        assert_eq!(record.reminder.as_ref().map(|r| (r.of.as_str(), r.slot)), Some(("2.5", 1)));
        assert_eq!(record.status, crate::config::DeliveryStatus::Pending);
        assert!(reminders_due(&reminded, at(59)).is_empty(), "slot 1 is taken");
        let again = Mutation::RecordReminders { reminders: due.clone() }.apply(&reminded, &stamp(7));
        assert!(again.unwrap_err().contains("stale"), "a slot is committed once, whoever proposes it");
        // Away for hours: the current slot only, not a burst.
        let late = reminders_due(&reminded, at(200));
        assert_eq!(late.iter().map(|d| d.slot).collect::<Vec<_>>(), vec![6]);
        // Acknowledged: none.
        let acked = Mutation::Acknowledge {
            check: "web".into(),
            reason: "on it".into(),
            by: crate::NodeId::from_bytes([2; 16]),
        }
        .apply(&reminded, &stamp(7))
        .unwrap();
        assert_eq!(acked.states["c1"].acked.as_ref().unwrap().reason, "on it");
        assert!(reminders_due(&acked, at(200)).is_empty());
        assert!(Mutation::RecordReminders { reminders: late.clone() }.apply(&acked, &stamp(8)).is_err());
        let twice = Mutation::Acknowledge {
            check: "web".into(),
            reason: String::new(),
            by: crate::NodeId::from_bytes([2; 16]),
        };
        assert!(twice.apply(&acked, &stamp(8)).unwrap_err().contains("acknowledged already"));
        // A pending reminder of an incident that is over is blocked, not sent.
        let view = CommittedView::of(&acked);
        assert_eq!(view.pending.len(), 1);
        assert!(view.pending[0].blocked.is_some(), "acknowledged before it was sent");
        let mut recovered = reminded.clone();
        let state = recovered.states.get_mut("c1").unwrap();
        state.state = CheckState::Up;
        state.transition = "2.9".into();
        assert!(reminders_due(&recovered, at(300)).is_empty(), "never after RECOVERED");
        assert!(CommittedView::of(&recovered).pending[0].blocked.is_some());
        assert!(Mutation::RecordReminders { reminders: late }.apply(&recovered, &stamp(10)).is_err());
        let up = Mutation::Acknowledge {
            check: "web".into(),
            reason: String::new(),
            by: crate::NodeId::from_bytes([2; 16]),
        };
        assert!(up.apply(&recovered, &stamp(10)).unwrap_err().contains("is not DOWN"));
    }
}
