//! The read side: what `qu status`, `qu check list`, `qu alert list` and
//! `qu cluster settings` show, built from the committed config, the
//! verdicts and the probe statistics. Nothing here changes state.

use super::*;

impl Daemon {
    pub(super) fn check_list(&self) -> Vec<CheckListItem> {
        let names = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .map(|id| {
                    self.cluster.alerts.iter().find(|a| a.id == *id).map(|a| a.name.clone()).unwrap_or(id.clone())
                })
                .collect()
        };
        self.cluster
            .checks
            .iter()
            .map(|c| CheckListItem {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: c.kind.clone(),
                target: c.target.clone(),
                interval: humantime::format_duration(c.interval).to_string(),
                interval_secs: crate::status::seconds(c.interval),
                timeout: humantime::format_duration(c.timeout).to_string(),
                timeout_secs: crate::status::seconds(c.timeout),
                settings: c.settings.clone(),
                alerts: names(&c.alert_ids),
                suppressed: names(&c.suppress_alert_ids),
                disabled: c.disabled,
                state: self.cluster.check_state(&c.id).to_string(),
                rounds_down: c.rounds_down.unwrap_or(self.cluster.settings.hysteresis),
                rounds_up: c.rounds_up.unwrap_or(self.cluster.settings.hysteresis),
            })
            .collect()
    }

    pub(super) fn settings_view(&self) -> SettingsView {
        let s = &self.cluster.settings;
        SettingsView {
            heartbeat: humantime::format_duration(s.heartbeat).to_string(),
            heartbeat_secs: crate::status::seconds(s.heartbeat),
            dead_after: humantime::format_duration(s.dead_after).to_string(),
            dead_after_secs: crate::status::seconds(s.dead_after),
            master_cooldown: humantime::format_duration(s.master_cooldown).to_string(),
            master_cooldown_secs: crate::status::seconds(s.master_cooldown),
            hysteresis: s.hysteresis,
            announce_first_up: s.announce_first_up,
            delivery_deadline: humantime::format_duration(s.delivery_deadline).to_string(),
            delivery_deadline_secs: crate::status::seconds(s.delivery_deadline),
            plugin_memory_mib: s.plugin_memory_mib,
            no_quorum_after: match s.no_quorum_after {
                Some(after) => humantime::format_duration(after).to_string(),
                None => {
                    format!("{} (default: 2 × dead_after + 10s)", humantime::format_duration(s.no_quorum_alert_after()))
                }
            },
            no_quorum_after_secs: crate::status::seconds(s.no_quorum_alert_after()),
            member_dead_after: humantime::format_duration(s.member_dead_after).to_string(),
            member_dead_after_secs: crate::status::seconds(s.member_dead_after),
            deadman_url: crate::alerts::redacted_url(&s.deadman_url).unwrap_or_else(|| s.deadman_url.clone()),
            deadman_interval: humantime::format_duration(s.deadman_interval).to_string(),
            deadman_interval_secs: crate::status::seconds(s.deadman_interval),
            config_version: self.cluster.version,
        }
    }

    pub(super) fn peer_views(&self) -> Vec<PeerView> {
        let now = self.now();
        let wall_now = SystemTime::now();
        self.cluster
            .peers
            .iter()
            .map(|p| {
                let this_node = p.node_id == self.me();
                let last_seen = (!this_node).then(|| self.core.last_heard(&p.node_id)).flatten().map(|at| {
                    Timestamp::from_system_time(wall_now - Duration::from_millis(now.saturating_sub(at))).to_string()
                });
                PeerView {
                    node_id: p.node_id,
                    advertise: p.advertise.clone(),
                    live: self.core.is_live(&p.node_id),
                    last_seen,
                    this_node,
                }
            })
            .collect()
    }

    pub(super) fn status(&self) -> StatusView {
        let master = match self.core.role() {
            Role::Master if self.core.has_lease() => Some(self.me()),
            Role::Master => None,
            _ => self.core.master().filter(|m| self.core.is_live(m)),
        };
        let checks = if self.core.role() == Role::Master {
            self.check_views(&self.summaries(), None)
        } else {
            self.check_views(&[], Some("stale: the master's view could not be fetched"))
        };
        StatusView {
            node_id: self.me(),
            term: self.core.term(),
            master,
            quorum: self.core.is_member() && self.core.live_members() >= self.cluster.quorum_size(),
            quorum_size: self.cluster.quorum_size(),
            config_version: self.cluster.version,
            restoring: !self.core.durable().restoring.is_empty(),
            peers: self.peer_views(),
            checks,
            probes: self.probe_stats(),
            replication: crate::status::ReplicationStats {
                log_entries: self.log.len() as u64,
                ..self.replication.clone()
            },
        }
    }

    pub(super) fn probe_stats(&self) -> ProbeStats {
        let mut sorted: Vec<u64> = self.lateness_us.iter().copied().collect();
        sorted.sort_unstable();
        let at =
            |p: f64| sorted.get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0);
        ProbeStats {
            run: self.probes_run,
            skipped: self.probes_skipped,
            lateness_p50_us: at(0.5),
            lateness_p99_us: at(0.99),
        }
    }

    /// The master's view of every check: committed state, current counts.
    pub(super) fn summaries(&self) -> Vec<CheckSummary> {
        let members = self.core.config().members.clone();
        let now = self.now();
        self.cluster
            .checks
            .iter()
            .map(|c| {
                let tally = self.verdicts.tally(&c.id, &members, now);
                let committed = self.cluster.states.get(&c.id);
                let detail = self
                    .verdicts
                    .detail(&c.id, &members, now)
                    .or_else(|| committed.map(|s| s.detail.clone()))
                    .unwrap_or_default();
                CheckSummary {
                    id: c.id.clone(),
                    state: self.cluster.check_state(&c.id),
                    ok: tally.ok,
                    failing: tally.failing,
                    total: tally.total,
                    detail,
                }
            })
            .collect()
    }

    /// CHECKS rows: from the master's summaries, or, when they are missing,
    /// from the committed states marked as stale.
    pub(super) fn check_views(&self, summaries: &[CheckSummary], stale: Option<&str>) -> Vec<CheckView> {
        let summaries: std::collections::HashMap<&str, &CheckSummary> =
            summaries.iter().map(|s| (s.id.as_str(), s)).collect();
        self.cluster
            .checks
            .iter()
            .map(|c| {
                let summary = summaries.get(c.id.as_str()).copied();
                let state = summary.map(|s| s.state).unwrap_or_else(|| self.cluster.check_state(&c.id));
                let mut detail = match (summary, self.cluster.states.get(&c.id)) {
                    (Some(s), _) => s.detail.clone(),
                    (None, Some(committed)) => committed.detail.clone(),
                    (None, None) => String::new(),
                };
                if c.disabled {
                    detail = "disabled".into();
                } else if let Some(stale) = stale.filter(|_| summary.is_none()) {
                    detail = if detail.is_empty() { format!("({stale})") } else { format!("{detail} ({stale})") };
                } else if detail.is_empty() {
                    detail = "no results yet".into();
                }
                CheckView {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    kind: c.kind.clone(),
                    target: c.target.clone(),
                    state: state.to_string(),
                    ok: summary.map(|s| s.ok).unwrap_or(0),
                    total: summary.map(|s| s.total).unwrap_or(0),
                    disabled: c.disabled,
                    alerts: effective_alerts(&self.cluster, c, false),
                    default_alerts: effective_alerts(&self.cluster, c, true),
                    detail,
                    acked: self.cluster.states.get(&c.id).and_then(|s| s.acked.as_ref()).map(|a| {
                        crate::status::AckView { at: a.at.to_string(), by: a.by.to_string(), reason: a.reason.clone() }
                    }),
                }
            })
            .collect()
    }

    pub(super) fn alert_list(&self) -> Vec<crate::control::AlertListItem> {
        use qu_core::config::DeliveryStatus;
        self.cluster
            .alerts
            .iter()
            .map(|a| {
                let mine: Vec<(&String, &qu_core::config::Delivery)> =
                    self.cluster.deliveries.iter().filter(|(_, d)| d.alert_id == a.id).collect();
                let pending = mine.iter().filter(|(_, d)| d.status == DeliveryStatus::Pending).count();
                let last = mine
                    .iter()
                    .filter(|(_, d)| d.status != DeliveryStatus::Pending)
                    .max_by_key(|(_, d)| d.finished.map(|f| f.unix_millis()))
                    .map(|(key, d)| crate::control::DeliveryView {
                        key: (*key).clone(),
                        check: crate::alerts::subject_name(&self.cluster, &d.check_id),
                        verb: qu_core::alerting::verb(d.from, d.to).to_string(),
                        status: if d.status == DeliveryStatus::Delivered {
                            "delivered".into()
                        } else {
                            "failed".into()
                        },
                        attempts: d.attempts,
                        error: d.error.clone(),
                        finished: d.finished.map(|f| f.to_string()),
                    });
                crate::control::AlertListItem {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    kind: a.kind.clone(),
                    config: crate::alerts::masked(&a.config),
                    default: a.default,
                    disabled: a.disabled,
                    subject_template: a.subject_template.clone(),
                    body_template: a.body_template.clone(),
                    cluster_events: a.cluster_events,
                    repeat: a.repeat.map(|r| humantime::format_duration(r).to_string()),
                    repeat_secs: a.repeat.map(crate::status::seconds),
                    pending,
                    last,
                }
            })
            .collect()
    }
}
