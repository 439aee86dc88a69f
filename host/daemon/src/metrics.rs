//! `/metrics`: what a node knows, in the Prometheus text exposition
//! format (OpenMetrics text, which Prometheus scrapes natively), built
//! with `prometheus-client`. The event loop owns one [`Metrics`]: events
//! feed its counters and histograms as they happen, and a scrape sets the
//! gauges from the loop's state and encodes the lot, so a scrape never
//! races a change and costs the loop one render.

use std::collections::BTreeSet;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
    pub id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub check: String,
    pub id: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn commit_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What a scrape reads of the event loop's state.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub role: &'static str,
    pub term: u64,
    pub quorum: bool,
    pub config_version: u64,
    pub peers: usize,
    pub peers_live: usize,
    /// (check name, id, committed state) of every check.
    pub checks: Vec<(String, String, String)>,
    /// Delivery records by status: pending, delivered, failed.
    pub deliveries: [(&'static str, usize); 3],
    pub plugin_memory_in_use: usize,
    pub plugin_memory_budget: usize,
    pub plugin_calls: Vec<(String, &'static str, qu_plugin::CallStats)>,
}

pub struct Metrics {
    registry: Registry,
    build_info: Family<BuildLabels, Gauge>,
    role: Family<RoleLabels, Gauge>,
    term: Gauge,
    quorum: Gauge,
    config_version: Gauge,
    peers: Gauge,
    peers_live: Gauge,
    check_state: Family<StateLabels, Gauge>,
    probe_up: Family<CheckLabels, Gauge>,
    probe_seconds: Family<CheckLabels, Histogram, fn() -> Histogram>,
    probes: Family<CheckLabels, Counter>,
    probe_errors: Family<CheckLabels, Counter>,
    /// Probe series of checks seen, to drop those of removed checks.
    probed: BTreeSet<CheckLabels>,
    /// Check names by id ([`Metrics::set_names`]), so a probe's labels cost
    /// a lookup, not a scan of the checks.
    names: std::collections::HashMap<String, String>,
    transitions: Counter,
    deliveries: Family<StatusLabels, Gauge>,
    delivery_attempts: Family<StatusLabels, Counter>,
    commit_seconds: Histogram,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_errors: Family<PluginLabels, Counter>,
    plugin_seconds: Family<PluginLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// The runtime's totals at the last scrape (its counters are fed the
    /// differences).
    plugin_last: std::collections::HashMap<PluginLabels, qu_plugin::CallStats>,
    plugin_memory_max: Family<PluginLabels, Gauge>,
    plugin_memory_in_use: Gauge,
    plugin_memory_budget: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qu");
        let m = Self {
            build_info: Family::default(),
            role: Family::default(),
            term: Gauge::default(),
            quorum: Gauge::default(),
            config_version: Gauge::default(),
            peers: Gauge::default(),
            peers_live: Gauge::default(),
            check_state: Family::default(),
            probe_up: Family::default(),
            probe_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            probes: Family::default(),
            probe_errors: Family::default(),
            probed: BTreeSet::new(),
            names: Default::default(),
            transitions: Counter::default(),
            deliveries: Family::default(),
            delivery_attempts: Family::default(),
            commit_seconds: commit_histogram(),
            plugin_calls: Family::default(),
            plugin_errors: Family::default(),
            plugin_seconds: Family::default(),
            plugin_memory_max: Family::default(),
            plugin_last: Default::default(),
            plugin_memory_in_use: Gauge::default(),
            plugin_memory_budget: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("build_info", "qu's version (always 1)", m.build_info.clone());
        registry.register("role", "1 for this node's role: master, follower or candidate", m.role.clone());
        registry.register("term", "This node's term", m.term.clone());
        registry.register("quorum", "1 while this node is a member that hears from a majority", m.quorum.clone());
        registry.register("config_version", "The cluster config version this node holds", m.config_version.clone());
        registry.register("peers", "Members of the cluster", m.peers.clone());
        registry.register(
            "peers_live",
            "Members heard from within dead_after (this node included)",
            m.peers_live.clone(),
        );
        registry.register(
            "check_state",
            "1 for each check's committed state (the master's verdict, replicated): up, down or unknown",
            m.check_state.clone(),
        );
        registry.register("probe_up", "This node's last probe of each check: 1 up, 0 failed", m.probe_up.clone());
        registry.register("probe_duration_seconds", "This node's probe latency per check", m.probe_seconds.clone());
        registry.register("probes", "Probes this node ran per check", m.probes.clone());
        registry.register("probe_errors", "Probes of this node that failed or could not run", m.probe_errors.clone());
        registry.register("transitions", "Check transitions this node committed as master", m.transitions.clone());
        registry.register("deliveries", "Alert delivery records held, by status", m.deliveries.clone());
        registry.register(
            "delivery_attempts",
            "Alert delivery attempts this node made as master, by outcome",
            m.delivery_attempts.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "From proposing a change to its commit by a majority, on the master",
            m.commit_seconds.clone(),
        );
        registry.register("plugin_calls", "Plugin calls on this node since start", m.plugin_calls.clone());
        registry.register("plugin_call_errors", "Plugin calls that failed since start", m.plugin_errors.clone());
        registry.register("plugin_call_seconds", "Time in plugin calls since start", m.plugin_seconds.clone());
        registry.register(
            "plugin_call_memory_max_bytes",
            "The most linear memory one call of the plugin used",
            m.plugin_memory_max.clone(),
        );
        registry.register(
            "plugin_memory_in_use_bytes",
            "Plugin memory in use on this node",
            m.plugin_memory_in_use.clone(),
        );
        registry.register(
            "plugin_memory_budget_bytes",
            "The node's budget of plugin memory (settings.plugin_memory_mib)",
            m.plugin_memory_budget.clone(),
        );
        m.build_info.get_or_create(&BuildLabels { version: crate::VERSION.to_string() }).set(1);
        Self { registry, ..m }
    }

    /// The checks' names, by id (when the config changes).
    pub fn set_names<'a>(&mut self, checks: impl Iterator<Item = (&'a str, &'a str)>) {
        self.names = checks.map(|(id, name)| (id.to_string(), name.to_string())).collect();
    }

    /// One of this node's probes finished (of a check it knows by name).
    pub fn probed(&mut self, report: &qu_core::monitor::Report) {
        let Some(name) = self.names.get(&report.check_id) else { return };
        let labels = CheckLabels { check: name.clone(), id: report.check_id.clone() };
        let up = report.outcome == qu_core::monitor::Outcome::Up;
        self.probe_seconds.get_or_create(&labels).observe(f64::from(report.latency_ms) / 1000.0);
        self.probes.get_or_create(&labels).inc();
        if !up {
            self.probe_errors.get_or_create(&labels).inc();
        }
        self.probe_up.get_or_create(&labels).set(i64::from(up));
        self.probed.insert(labels);
    }

    pub fn committed(&mut self, took: std::time::Duration, transitions: u64) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.transitions.inc_by(transitions);
    }

    pub fn delivery_attempt(&mut self, delivered: bool) {
        let status = if delivered { "delivered" } else { "failed" };
        self.delivery_attempts.get_or_create(&StatusLabels { status: status.into() }).inc();
    }

    /// The text of a scrape, with the gauges set from `now`.
    pub fn render(&mut self, now: Snapshot) -> String {
        for role in ["master", "follower", "candidate"] {
            self.role.get_or_create(&RoleLabels { role: role.into() }).set(i64::from(now.role == role));
        }
        self.term.set(now.term as i64);
        self.quorum.set(i64::from(now.quorum));
        self.config_version.set(now.config_version as i64);
        self.peers.set(now.peers as i64);
        self.peers_live.set(now.peers_live as i64);
        self.check_state.clear();
        let mut present = BTreeSet::new();
        for (name, id, state) in &now.checks {
            for s in ["up", "down", "unknown"] {
                let labels = StateLabels { check: name.clone(), id: id.clone(), state: s.into() };
                self.check_state.get_or_create(&labels).set(i64::from(state == s));
            }
            present.insert(CheckLabels { check: name.clone(), id: id.clone() });
        }
        // A removed (or renamed) check's probe series go with it.
        for gone in self.probed.difference(&present).cloned().collect::<Vec<_>>() {
            self.probe_seconds.remove(&gone);
            self.probes.remove(&gone);
            self.probe_errors.remove(&gone);
            self.probe_up.remove(&gone);
            self.probed.remove(&gone);
        }
        for (status, count) in now.deliveries {
            self.deliveries.get_or_create(&StatusLabels { status: status.into() }).set(count as i64);
        }
        self.plugin_memory_in_use.set(now.plugin_memory_in_use as i64);
        self.plugin_memory_budget.set(now.plugin_memory_budget as i64);
        for (plugin, kind, stats) in now.plugin_calls {
            let labels = PluginLabels { plugin, kind: kind.into() };
            let last = self.plugin_last.get(&labels).cloned().unwrap_or_default();
            self.plugin_calls.get_or_create(&labels).inc_by(stats.calls.saturating_sub(last.calls));
            self.plugin_errors.get_or_create(&labels).inc_by(stats.errors.saturating_sub(last.errors));
            self.plugin_seconds.get_or_create(&labels).inc_by((stats.seconds - last.seconds).max(0.0));
            self.plugin_memory_max.get_or_create(&labels).set(stats.memory_max as i64);
            self.plugin_last.insert(labels, stats);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4), for
/// scrapers that do not ask for OpenMetrics (`curl`, `promtool check
/// metrics`): a counter family is named with its `_total` there, and there
/// is no `# EOF` or `# UNIT`. Everything else is the same in both.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_with_their_total_and_has_no_eof() {
        let mut metrics = Metrics::new();
        let report = qu_core::monitor::Report {
            check_id: "c1".into(),
            outcome: qu_core::monitor::Outcome::Down,
            latency_ms: 12,
            detail: String::new(),
        };
        metrics.set_names([("c1", "web")].into_iter());
        metrics.probed(&report);
        let checks = vec![("web".into(), "c1".into(), "down".into())];
        let open = metrics.render(Snapshot { role: "master", checks, ..Snapshot::default() });
        assert!(open.contains("# TYPE qu_probes counter\n"), "{open}");
        assert!(open.contains("qu_probes_total{check=\"web\",id=\"c1\"} 1"), "{open}");
        assert!(open.trim_end().ends_with("# EOF"));
        let classic = to_classic(&open);
        assert!(classic.contains("# TYPE qu_probes_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP qu_probes_total Probes this node ran per check.\n"), "{classic}");
        assert!(classic.contains("qu_probes_total{check=\"web\",id=\"c1\"} 1"));
        assert!(classic.contains("# TYPE qu_role gauge\n"), "gauges as they are");
        assert!(!classic.contains("# EOF"));
        assert!(classic.contains("qu_probe_up{check=\"web\",id=\"c1\"} 0"));
    }

    #[test]
    fn a_removed_check_takes_its_series_with_it() {
        let mut metrics = Metrics::new();
        let report = qu_core::monitor::Report {
            check_id: "c1".into(),
            outcome: qu_core::monitor::Outcome::Up,
            latency_ms: 3,
            detail: String::new(),
        };
        metrics.set_names([("c1", "web")].into_iter());
        metrics.probed(&report);
        let with =
            metrics.render(Snapshot { checks: vec![("web".into(), "c1".into(), "up".into())], ..Snapshot::default() });
        assert!(with.contains("qu_check_state{check=\"web\",id=\"c1\",state=\"up\"} 1"), "{with}");
        assert!(with.contains("qu_probes_total{check=\"web\""));
        let without = metrics.render(Snapshot::default());
        assert!(!without.contains("check=\"web\""), "{without}");
    }
}
