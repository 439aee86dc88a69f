//! Rendering `cluster.yaml` without re-rendering what did not change.
//!
//! [`ClusterConfig::to_yaml`] is canonical and linear in the whole config;
//! at 10,000 checks with their committed states it takes tens of
//! milliseconds, on every node, at every commit. [`Renderer`] gives the
//! same bytes (the tests compare them on every kind of config) while
//! rendering only the checks, states and delivery records that changed
//! since its last call: each is rendered on its own by the same serializer,
//! and kept with the value it was rendered from.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Check, CheckStatus, ClusterConfig, Delivery};

/// Remembers the YAML of each check, state and delivery record it rendered.
#[derive(Debug, Default)]
pub struct Renderer {
    checks: Pieces<Arc<Check>>,
    states: Pieces<CheckStatus>,
    deliveries: Pieces<Delivery>,
}

/// The pieces of one part of the file, in the order last rendered: each
/// `(key, value, text)`. Kept in order, so that a config that changed a few
/// values is matched position by position, without hashing every key; a
/// key that moved (an insertion or removal before it) is found through an
/// index of the previous pieces, built on the first miss.
#[derive(Debug)]
struct Pieces<V> {
    items: Vec<Option<(String, V, String)>>,
}

impl<V> Default for Pieces<V> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<V: Clone + PartialEq> Pieces<V> {
    /// Appends the text of every `(key, value)` to `out`, rendering only
    /// those not rendered last time with the same value.
    fn render<'v>(
        &mut self,
        entries: impl Iterator<Item = (&'v str, &'v V)>,
        render: impl Fn(&str, &V) -> String,
        out: &mut String,
    ) where
        V: 'v,
    {
        let mut previous = std::mem::take(&mut self.items);
        let mut index: Option<HashMap<String, usize>> = None;
        let mut next = Vec::with_capacity(previous.len());
        for (position, (key, value)) in entries.enumerate() {
            let same =
                |item: &Option<(String, V, String)>| item.as_ref().is_some_and(|(k, v, _)| k == key && v == value);
            let hit = if previous.get(position).is_some_and(same) {
                Some(position)
            } else {
                let index = index.get_or_insert_with(|| {
                    previous.iter().enumerate().filter_map(|(i, item)| Some((item.as_ref()?.0.clone(), i))).collect()
                });
                index.get(key).copied().filter(|i| same(&previous[*i]))
            };
            let item = match hit.and_then(|i| previous[i].take()) {
                Some(item) => item,
                None => (key.to_string(), value.clone(), render(key, value)),
            };
            out.push_str(&item.2);
            next.push(Some(item));
        }
        self.items = next;
    }
}

/// The text of `key: value` as one entry of a top-level map, indented the
/// way the whole map renders it.
fn map_entry<V: serde::Serialize>(key: &str, value: &V) -> String {
    let one = std::collections::BTreeMap::from([(key, value)]);
    let text = serde_yaml::to_string(&one).expect("config values always serialise");
    indent(&text)
}

fn indent(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive('\n') {
        if line != "\n" {
            out.push_str("  ");
        }
        out.push_str(line);
    }
    out
}

impl Renderer {
    /// Exactly `config.to_yaml()`.
    pub fn to_yaml(&mut self, config: &ClusterConfig) -> String {
        let head = serde_yaml::to_string(&config.clone_without_bulk()).expect("cluster config always serialises");
        let mut out = String::with_capacity(head.len() + 300 * (config.checks.len() + config.states.len()));
        let (before, after) = match head.split_once("\nchecks: []\n") {
            Some((before, after)) => (before, after),
            None => unreachable!("an empty check list renders as `checks: []`"),
        };
        out.push_str(before);
        if config.checks.is_empty() {
            out.push_str("\nchecks: []\n");
        } else {
            out.push_str("\nchecks:\n");
        }
        self.checks.render(
            config.checks.iter().map(|c| (c.id.as_str(), c)),
            |_, check| serde_yaml::to_string(std::slice::from_ref(&**check)).expect("checks always serialise"),
            &mut out,
        );
        out.push_str(after);
        if !config.states.is_empty() {
            out.push_str("states:\n");
        }
        self.states.render(config.states.iter().map(|(k, v)| (k.as_str(), v)), map_entry, &mut out);
        if !config.deliveries.is_empty() {
            out.push_str("deliveries:\n");
        }
        self.deliveries.render(config.deliveries.iter().map(|(k, v)| (k.as_str(), v)), map_entry, &mut out);
        out
    }

    /// [`ClusterConfig::snapshot`], rendered through this cache.
    pub fn snapshot(&mut self, config: &ClusterConfig) -> crate::consensus::Snapshot {
        crate::consensus::Snapshot::new(config.config_id(), config.members(), config.timing(), self.to_yaml(config))
    }
}

impl ClusterConfig {
    /// Everything but the checks, states and deliveries (cheap to clone).
    fn clone_without_bulk(&self) -> ClusterConfig {
        ClusterConfig {
            version: self.version,
            term: self.term,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
            settings: self.settings.clone(),
            peers: self.peers.clone(),
            checks: Vec::new(),
            alerts: self.alerts.clone(),
            plugins: self.plugins.clone(),
            states: Default::default(),
            deliveries: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{DeliveryStatus, Timestamp};
    use crate::monitor::CheckState;

    fn check(i: usize, odd: &str) -> Check {
        Check {
            id: format!("c{i:05}"),
            name: format!("port-{i}{odd}"),
            kind: "tcp".into(),
            target: format!("127.0.0.1:{}", 1000 + i),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            settings: [("note".to_string(), odd.to_string())].into_iter().filter(|(_, v)| !v.is_empty()).collect(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: i.is_multiple_of(3),
        }
    }

    fn state(i: usize, detail: &str) -> CheckStatus {
        CheckStatus {
            state: if i.is_multiple_of(2) { CheckState::Down } else { CheckState::Up },
            from: CheckState::Unknown,
            since: Timestamp::from_unix_millis(1_700_000_000_000 + i as u64),
            transition: format!("3.{i}"),
            ok: 1,
            failing: 2,
            total: 3,
            detail: detail.to_string(),
        }
    }

    fn delivery(i: usize, error: &str) -> Delivery {
        Delivery {
            check_id: format!("c{i:05}"),
            alert_id: "a1".into(),
            transition: format!("3.{i}"),
            from: CheckState::Up,
            to: CheckState::Down,
            status: if i.is_multiple_of(2) { DeliveryStatus::Pending } else { DeliveryStatus::Failed },
            created: Timestamp::from_unix_millis(1_700_000_000_000),
            finished: None,
            attempts: i as u32,
            error: error.to_string(),
        }
    }

    /// Strings that YAML quotes, escapes or writes as blocks.
    const ODD: [&str; 9] = [
        "",
        "connect refused",
        "status 503: \"down\"",
        "line one\nline two\n",
        "  leading spaces",
        "key: value # not a comment",
        "'quoted'",
        "1.5",
        "ünïcödé ✓",
    ];

    fn config(n: usize) -> ClusterConfig {
        let text = format!("version: 7\nterm: 2\npeers: []\nsettings:\n  hysteresis: {}\n", 2 + n % 3);
        let mut config: ClusterConfig = serde_yaml::from_str(&text).unwrap();
        for i in 0..n {
            let odd = ODD[i % ODD.len()];
            config.checks.push(check(i, odd).into());
            config.states.insert(format!("c{i:05}"), state(i, odd));
            if i % 2 == 0 {
                config.deliveries.insert(format!("3.{i}/a1"), delivery(i, odd));
            }
        }
        config
    }

    #[test]
    fn renders_exactly_what_to_yaml_renders_before_and_after_changes() {
        let mut renderer = Renderer::default();
        for n in [0, 1, 2, 9, 40] {
            let mut config = config(n);
            assert_eq!(renderer.to_yaml(&config), config.to_yaml(), "{n} checks");
            if n == 0 {
                continue;
            }
            // Change some, add, remove: each time the same bytes.
            config.states.get_mut("c00000").unwrap().detail = "changed\nagain".into();
            std::sync::Arc::make_mut(&mut config.checks[0]).name = "renamed: yes".into();
            config.checks.push(check(1000, "new").into());
            config.deliveries.remove("3.0/a1");
            config.version += 1;
            assert_eq!(renderer.to_yaml(&config), config.to_yaml(), "{n} checks, changed");
            // Moved: a key inserted before the others, checks reordered.
            config.states.insert("a-first".into(), state(1, "moved"));
            let last = config.checks.len() - 1;
            config.checks.swap(0, last);
            assert_eq!(renderer.to_yaml(&config), config.to_yaml(), "{n} checks, moved");
            config.states.remove("a-first");
            config.checks.remove(0);
            config.states.clear();
            assert_eq!(renderer.to_yaml(&config), config.to_yaml(), "{n} checks, removed");
            let parsed: ClusterConfig = serde_yaml::from_str(&renderer.to_yaml(&config)).unwrap();
            assert_eq!(parsed, config, "the text parses back to the same config");
        }
    }

    /// A real file: peers with certificates, alerts, states, deliveries.
    #[test]
    fn renders_a_real_cluster_yaml_exactly() {
        let text = include_str!("../../../../tests/fixtures/datadir-0.1/cluster.yaml");
        let config = ClusterConfig::parse(text).unwrap();
        let mut renderer = Renderer::default();
        assert_eq!(renderer.to_yaml(&config), config.to_yaml());
        assert_eq!(renderer.to_yaml(&config), text, "canonical: the file is what to_yaml wrote");
    }
}
