//! Alerts about the cluster itself, executed: the pure
//! [`qu_core::alerting::cluster`] decides (a member dead long enough, a
//! node without quorum long enough, when the dead man's switch is due);
//! this room proposes the master's announcements, runs this node's own
//! no-quorum notices through the sinks, persists their books, and calls
//! the dead man's switch.

use std::collections::HashMap;
use std::time::Duration;

use qu_core::alerting::SendOutcome;
use qu_core::alerting::cluster::{MemberWatch, QuorumBooks, QuorumOutput, QuorumWatch, cluster_alerts, deadman_due};

use super::*;

/// The books of this node's no-quorum notices, beside its identity.
pub(super) const BOOKS_FILE: &str = "quorum-notices.yaml";
/// A call of the dead man's switch may take this long.
const DEADMAN_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Watch {
    members: MemberWatch,
    quorum: QuorumWatch,
    sends: HashMap<String, tokio::task::JoinHandle<()>>,
    deadman_last: Option<u64>,
    deadman_busy: bool,
    /// Consecutive failed calls (logged on the first, and when it works again).
    deadman_failing: u32,
}

impl Watch {
    /// The books persisted at `path` (a node that cannot read them starts
    /// with none, and says so: it may send a notice twice).
    pub fn load(path: &std::path::Path) -> Self {
        let books = match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml::from_str::<QuorumBooks>(&text).unwrap_or_else(|error| {
                tracing::warn!(file = %path.display(), %error, "cluster alerts: unreadable no-quorum books ignored");
                QuorumBooks::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => QuorumBooks::default(),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cluster alerts: no-quorum books unreadable, ignored");
                QuorumBooks::default()
            }
        };
        if let Some(open) = &books.open {
            tracing::warn!(
                incident = %open.id,
                "cluster alerts: resuming an incident without quorum since {}", open.since
            );
        }
        Self {
            members: MemberWatch::default(),
            quorum: QuorumWatch::new(books, rand::random()),
            sends: HashMap::new(),
            deadman_last: None,
            deadman_busy: false,
            deadman_failing: 0,
        }
    }
}

impl Daemon {
    /// Every tick: member announcements (master), this node's quorum, and
    /// the dead man's switch (master).
    pub(super) fn watch_cluster(&mut self) {
        let now = self.now();
        let acting = self.may_act();
        let me = self.me();
        let live: Vec<(NodeId, bool)> = self
            .cluster
            .peers
            .iter()
            .filter(|p| p.node_id != me)
            .map(|p| (p.node_id, self.core.is_live(&p.node_id)))
            .collect();
        let changes = self.watch.members.step(now, acting, &live, &self.cluster);
        if !changes.is_empty() && self.queue.len() < QUEUED_MUTATIONS_MAX / 2 {
            for change in &changes {
                let name = crate::alerts::subject_name(
                    &self.cluster,
                    &qu_core::alerting::cluster::member_subject(&change.node_id),
                );
                if change.down {
                    tracing::warn!(node = %change.node_id, "cluster: {name} dead for {}; announcing it",
                        humantime::format_duration(self.cluster.settings.member_dead_after));
                } else {
                    tracing::info!(node = %change.node_id, "cluster: {name} is back; announcing it");
                }
            }
            self.queue.push_back((Mutation::RecordMembers { changes }, Waiter::Internal));
        }
        if self.core.is_member() {
            let quorum = self.core.live_members() >= self.cluster.quorum_size();
            let alerts: Vec<String> = cluster_alerts(&self.cluster).into_iter().map(|a| a.id.clone()).collect();
            let settings = &self.cluster.settings;
            let (after, deadline) = (settings.no_quorum_alert_after(), settings.delivery_deadline);
            let out = self.watch.quorum.tick(now, self.wall(), &me, quorum, &alerts, after, deadline);
            self.execute_quorum(out);
        }
        let url = self.cluster.settings.deadman_url.clone();
        let interval = self.cluster.settings.deadman_interval;
        if !self.watch.deadman_busy && deadman_due(acting, !url.is_empty(), self.watch.deadman_last, now, interval) {
            self.watch.deadman_last = Some(now);
            self.watch.deadman_busy = true;
            let events = self.events.clone();
            tokio::spawn(async move {
                let result = qu_probe::ping(&url, DEADMAN_TIMEOUT).await;
                let _ = events.send(Event::Delivery(DeliveryEvent::Deadman { result })).await;
            });
        }
    }

    pub(super) fn deadman_called(&mut self, result: Result<u16, String>) {
        self.watch.deadman_busy = false;
        match result {
            Ok(_) if self.watch.deadman_failing > 0 => {
                tracing::info!("dead man's switch: called again after {} failed call(s)", self.watch.deadman_failing);
                self.watch.deadman_failing = 0;
            }
            Ok(status) => tracing::debug!(status, "dead man's switch called"),
            Err(error) => {
                self.watch.deadman_failing += 1;
                if self.watch.deadman_failing == 1 {
                    tracing::warn!(%error, "dead man's switch: call failed: {error}; trying again in {}",
                        humantime::format_duration(self.cluster.settings.deadman_interval));
                }
            }
        }
    }

    pub(super) fn notice_attempted(&mut self, key: String, attempt: u32, result: Result<(), qu_plugin::CallError>) {
        self.watch.sends.remove(&key);
        let outcome: SendOutcome = super::delivery::outcome_of(result);
        let out = self.watch.quorum.attempted(self.now(), &key, attempt, outcome);
        self.execute_quorum(out);
    }

    fn execute_quorum(&mut self, out: Vec<QuorumOutput>) {
        for output in out {
            match output {
                QuorumOutput::Persist(books) => {
                    let text = serde_yaml::to_string(&books).expect("books always serialise");
                    let path = self.data.root().join(BOOKS_FILE);
                    if let Err(error) = qu_store::write_atomic(&path, text.as_bytes(), SECRET_FILE_MODE) {
                        // Sent anyway: a page twice after a restart beats none.
                        tracing::error!(file = %path.display(), %error, "cluster alerts: cannot persist the no-quorum books");
                    }
                }
                QuorumOutput::Send { notice, attempt } => self.send_notice(notice, attempt),
                QuorumOutput::Finished { key, delivered: true, attempt, .. } => {
                    tracing::info!(key = %key, attempt, "cluster alert {key} delivered (attempt {attempt})")
                }
                QuorumOutput::Finished { key, error, .. } => {
                    tracing::error!(key = %key, "cluster alert {key} FAILED for good: {error}")
                }
                QuorumOutput::Retry { key, attempt, delay, error } => tracing::warn!(
                    key = %key, attempt,
                    "cluster alert {key} not delivered (attempt {attempt}): {error}; retrying in {}",
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                ),
            }
        }
    }

    fn send_notice(&mut self, notice: qu_core::alerting::cluster::Notice, attempt: u32) {
        let me = self.me();
        let key = notice.key.clone();
        let events = self.events.clone();
        let Some(alert) = self.cluster.alerts.iter().find(|a| a.id == notice.alert_id).cloned() else {
            let result = Err(qu_plugin::CallError::Unavailable {
                plugin: "alert".into(),
                reason: format!("alert {} is not in this node's config", notice.alert_id),
            });
            tokio::spawn(async move {
                let _ = events.send(Event::Delivery(DeliveryEvent::Notice { key, attempt, result })).await;
            });
            return;
        };
        if attempt == 1 {
            let what = if notice.resolved { "quorum is back" } else { "no quorum" };
            tracing::warn!(key = %key, alert = %alert.name, "cluster: {what} on this node; telling alert {}", alert.name);
        }
        let reachable = (self.core.live_members(), self.cluster.peers.len(), self.cluster.quorum_size());
        let (event, template_error) = crate::alerts::quorum_notice(&self.cluster, &me, &alert, &notice, reachable);
        if let Some(error) = template_error {
            tracing::warn!(alert = %alert.name, "alert {}: {error}; sending the default rendering", alert.name);
        }
        let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
        let (registry, kind, task_key) = (self.plugins.clone(), alert.kind.clone(), key.clone());
        let task = tokio::spawn(async move {
            let result = match registry.get_ready(&kind, Duration::from_secs(30)).await {
                Ok(plugin) => registry.runtime().send(&plugin, &event, &settings).await,
                Err(reason) => Err(qu_plugin::CallError::Unavailable { plugin: kind, reason: reason.to_string() }),
            };
            let _ = events.send(Event::Delivery(DeliveryEvent::Notice { key: task_key, attempt, result })).await;
        });
        if let Some(old) = self.watch.sends.insert(key, task) {
            old.abort();
        }
    }
}
