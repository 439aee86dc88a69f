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
use crate::consensus::Digest;

/// Remembers the YAML of each check, state and delivery record it rendered.
#[derive(Debug, Default)]
pub struct Renderer {
    /// The text being assembled, kept so its buffer is reused.
    buffer: String,
    checks: Pieces<Arc<Check>>,
    states: Pieces<CheckStatus>,
    deliveries: Pieces<Delivery>,
}

/// One rendered piece: its key, the value it was rendered from, its text,
/// and its digest (see [`content_hash`]) with the key of the piece before
/// it, which a check's digest covers.
#[derive(Debug)]
struct Piece<V> {
    key: String,
    value: V,
    text: String,
    before: String,
    digest: Digest,
}

/// The pieces of one part of the file, in the order last rendered. Kept in
/// order, so that a config that changed a few values is matched position
/// by position, without hashing every key; a key that moved (an insertion
/// or removal before it) is found through an index of the previous pieces,
/// built on the first miss.
#[derive(Debug)]
struct Pieces<V> {
    items: Vec<Option<Piece<V>>>,
}

impl<V> Default for Pieces<V> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

/// A sum of digests, as 256-bit numbers modulo 2^256: the same for the
/// same pieces in any order, and updated by the pieces that changed alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum([u64; 4]);

impl Sum {
    fn add(&mut self, digest: &Digest) {
        let mut carry = false;
        for (i, word) in self.0.iter_mut().enumerate() {
            let part = u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (sum, c1) = word.overflowing_add(part);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *word = sum;
            carry = c1 || c2;
        }
    }

    fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, word) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

fn piece_digest(part: &str, before: &str, text: &str) -> Digest {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    for field in [part, before, text] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

impl<V: Clone + PartialEq> Pieces<V> {
    /// Appends the text of every `(key, value)` to `out`, rendering only
    /// those not rendered last time with the same value, and returns the
    /// sum of their digests. With `ordered`, each digest covers the key of
    /// the piece before it, so the sum fixes the order too.
    fn render<'v>(
        &mut self,
        part: &str,
        ordered: bool,
        entries: impl Iterator<Item = (&'v str, &'v V)>,
        render: impl Fn(&str, &V) -> String,
        out: &mut String,
    ) -> Sum
    where
        V: 'v,
    {
        let mut sum = Sum::default();
        // The usual case, a few values changed and nothing moved: in place.
        let mut entries = entries.peekable();
        let mut position = 0;
        while let Some((key, value)) = entries.peek().copied() {
            let Some(Some(piece)) = self.items.get_mut(position) else { break };
            if piece.key != key {
                break;
            }
            if piece.value != *value {
                piece.value = value.clone();
                piece.text = render(key, value);
                piece.digest = piece_digest(part, &piece.before, &piece.text);
            }
            out.push_str(&piece.text);
            sum.add(&piece.digest);
            position += 1;
            entries.next();
        }
        if entries.peek().is_none() {
            self.items.truncate(position);
            return sum;
        }
        // Something moved: match the rest by key.
        let mut previous = std::mem::take(&mut self.items);
        let mut index: Option<HashMap<String, usize>> = None;
        let mut next: Vec<Option<Piece<V>>> = Vec::with_capacity(previous.len());
        next.extend(previous[..position].iter_mut().map(Option::take));
        for (position, (key, value)) in entries.enumerate().map(|(i, e)| (i + position, e)) {
            let same = |item: &Option<Piece<V>>| item.as_ref().is_some_and(|p| p.key == key && p.value == *value);
            let hit = if previous.get(position).is_some_and(same) {
                Some(position)
            } else {
                let index = index.get_or_insert_with(|| {
                    previous.iter().enumerate().filter_map(|(i, item)| Some((item.as_ref()?.key.clone(), i))).collect()
                });
                index.get(key).copied().filter(|i| same(&previous[*i]))
            };
            let before = match (ordered, next.last()) {
                (true, Some(Some(piece))) => piece.key.as_str(),
                _ => "",
            };
            let piece = match hit.and_then(|i| previous[i].take()) {
                Some(mut piece) => {
                    if piece.before != before {
                        piece.before = before.to_string();
                        piece.digest = piece_digest(part, before, &piece.text);
                    }
                    piece
                }
                None => {
                    let text = render(key, value);
                    let digest = piece_digest(part, before, &text);
                    Piece { key: key.to_string(), value: value.clone(), text, before: before.to_string(), digest }
                }
            };
            out.push_str(&piece.text);
            sum.add(&piece.digest);
            next.push(Some(piece));
        }
        self.items = next;
        sum
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
        self.render(config).0.to_string()
    }

    /// `config.to_yaml()` and its [`content_hash`].
    ///
    /// The hash is SHA-256 over the text outside the pieces (the settings,
    /// peers, alerts and plugins, and the section headers) and, per part,
    /// the sum modulo 2^256 of its pieces' digests: a check's digest covers
    /// its text and the id of the check before it, a state's or delivery
    /// record's its text (which holds its key; the maps are sorted). With
    /// ids unique, that fixes the whole text, and a change costs the pieces
    /// it changed: nothing hashes the whole content at every commit.
    pub fn render(&mut self, config: &ClusterConfig) -> (Arc<str>, Digest) {
        use sha2::Digest as _;
        let head = serde_yaml::to_string(&config.clone_without_bulk()).expect("cluster config always serialises");
        let mut out = std::mem::take(&mut self.buffer);
        out.clear();
        let (before, after) = split_head(&head);
        let mut frame = sha2::Sha256::new();
        let mut put = |out: &mut String, text: &str| {
            frame.update((text.len() as u64).to_le_bytes());
            frame.update(text.as_bytes());
            out.push_str(text);
        };
        put(&mut out, before);
        put(&mut out, if config.checks.is_empty() { "\nchecks: []\n" } else { "\nchecks:\n" });
        let checks = self.checks.render(
            "check",
            true,
            config.checks.iter().map(|c| (c.id.as_str(), c)),
            |_, check| serde_yaml::to_string(std::slice::from_ref(&**check)).expect("checks always serialise"),
            &mut out,
        );
        put(&mut out, after);
        put(&mut out, if config.states.is_empty() { "" } else { "states:\n" });
        let states =
            self.states.render("state", false, config.states.iter().map(|(k, v)| (k.as_str(), v)), map_entry, &mut out);
        put(&mut out, if config.deliveries.is_empty() { "" } else { "deliveries:\n" });
        let deliveries = self.deliveries.render(
            "delivery",
            false,
            config.deliveries.iter().map(|(k, v)| (k.as_str(), v)),
            map_entry,
            &mut out,
        );
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"qu cluster.yaml content, v1");
        hasher.update(frame.finalize());
        for sum in [checks, states, deliveries] {
            hasher.update(sum.bytes());
        }
        let text: Arc<str> = Arc::from(out.as_str());
        self.buffer = out;
        (text, hasher.finalize().into())
    }

    /// Exactly `config.to_operator_yaml()`: the operator's cluster.yaml,
    /// through the same cache of checks (so right after [`Renderer::render`]
    /// of the same config, it renders nothing again).
    pub fn operator_text(&mut self, config: &ClusterConfig) -> Arc<str> {
        let mut frame = config.operator_part();
        frame.checks = Default::default();
        let head = serde_yaml::to_string(&frame).expect("cluster config always serialises");
        let (before, after) = split_head(&head);
        let mut out = String::with_capacity(self.buffer.len().max(head.len()));
        out.push_str(before);
        out.push_str(if config.checks.is_empty() { "\nchecks: []\n" } else { "\nchecks:\n" });
        self.checks.render(
            "check",
            true,
            config.checks.iter().map(|c| (c.id.as_str(), c)),
            |_, check| serde_yaml::to_string(std::slice::from_ref(&**check)).expect("checks always serialise"),
            &mut out,
        );
        out.push_str(after);
        Arc::from(out)
    }

    /// [`ClusterConfig::snapshot`], rendered through this cache.
    pub fn snapshot(&mut self, config: &ClusterConfig) -> crate::consensus::Snapshot {
        let (text, hash) = self.render(config);
        crate::consensus::Snapshot::with_hash(config.config_id(), config.members(), config.timing(), text, hash)
    }
}

/// The text of a config without checks, states and deliveries, around
/// where the checks go.
fn split_head(head: &str) -> (&str, &str) {
    match head.split_once("\nchecks: []\n") {
        Some((before, after)) => (before, after),
        None => unreachable!("an empty check list renders as `checks: []`"),
    }
}

/// The content hash of `config` ([`Renderer::render`]): what a snapshot of
/// it carries and an acknowledgement names.
pub fn content_hash(config: &ClusterConfig) -> Digest {
    Renderer::default().render(config).1
}

impl ClusterConfig {
    /// Everything but the checks, states and deliveries (cheap to clone).
    fn clone_without_bulk(&self) -> ClusterConfig {
        ClusterConfig {
            version: self.version,
            term: self.term,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
            content: self.content,
            settings: self.settings.clone(),
            peers: self.peers.clone(),
            checks: Default::default(),
            alerts: self.alerts.clone(),
            plugins: self.plugins.clone(),
            states: Default::default(),
            deliveries: Default::default(),
            members_seen: self.members_seen.clone(),
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
            rounds_down: None,
            rounds_up: None,
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
            acked: None,
            reminded: Default::default(),
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
            reminder: None,
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
        if n % 2 == 1 {
            // What operators own last changed before this version.
            let at = Some(Timestamp::from_unix_millis(1_690_000_000_000));
            config.content =
                Some(crate::config::ContentStamp { version: 5, term: 1, updated_at: at, updated_by: None });
        }
        for i in 0..n {
            let odd = ODD[i % ODD.len()];
            std::sync::Arc::make_mut(&mut config.checks).push(check(i, odd).into());
            config.states.insert(format!("c{i:05}"), state(i, odd));
            if i % 2 == 0 {
                config.deliveries.insert(format!("3.{i}/a1"), delivery(i, odd));
            }
        }
        config
    }

    /// The renderer's text is `to_yaml`'s and its hash a fresh renderer's:
    /// kept up to date piece by piece, it is what hashing from scratch gives.
    fn same(renderer: &mut Renderer, config: &ClusterConfig, what: &str) -> Digest {
        let (text, hash) = renderer.render(config);
        assert_eq!(*text, *config.to_yaml(), "{what}");
        assert_eq!(hash, content_hash(config), "{what}: the hash kept up to date");
        let operator = renderer.operator_text(config);
        assert_eq!(*operator, *config.to_operator_yaml(), "{what}: the operator's file");
        hash
    }

    #[test]
    fn renders_exactly_what_to_yaml_renders_before_and_after_changes() {
        let mut renderer = Renderer::default();
        for n in [0, 1, 2, 9, 40] {
            let mut config = config(n);
            same(&mut renderer, &config, &format!("{n} checks"));
            if n == 0 {
                continue;
            }
            // Change some, add, remove: each time the same bytes.
            config.states.get_mut("c00000").unwrap().detail = "changed\nagain".into();
            std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut config.checks)[0]).name = "renamed: yes".into();
            std::sync::Arc::make_mut(&mut config.checks).push(check(1000, "new").into());
            config.deliveries.remove("3.0/a1");
            config.version += 1;
            same(&mut renderer, &config, &format!("{n} checks, changed"));
            // Moved: a key inserted before the others, checks reordered.
            config.states.insert("a-first".into(), state(1, "moved"));
            let last = config.checks.len() - 1;
            std::sync::Arc::make_mut(&mut config.checks).swap(0, last);
            same(&mut renderer, &config, &format!("{n} checks, moved"));
            config.states.remove("a-first");
            std::sync::Arc::make_mut(&mut config.checks).remove(0);
            config.states.clear();
            same(&mut renderer, &config, &format!("{n} checks, removed"));
            let parsed: ClusterConfig = serde_yaml::from_str(&renderer.to_yaml(&config)).unwrap();
            assert_eq!(parsed, config, "the text parses back to the same config");
        }
    }

    /// Any change to the text changes the hash: a value, a check's place in
    /// the list, a state, a record, a setting.
    #[test]
    fn every_change_changes_the_hash() {
        let base = config(12);
        let mut seen = std::collections::BTreeMap::new();
        let mut variants: Vec<(&str, ClusterConfig)> = vec![("base", base.clone())];
        let mut swapped = base.clone();
        std::sync::Arc::make_mut(&mut swapped.checks).swap(3, 4);
        variants.push(("two checks swapped", swapped));
        let mut moved = base.clone();
        let first = std::sync::Arc::make_mut(&mut moved.checks).remove(0);
        std::sync::Arc::make_mut(&mut moved.checks).push(first);
        variants.push(("the first check moved last", moved));
        let mut renamed = base.clone();
        std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(&mut renamed.checks)[5]).name = "other".into();
        variants.push(("a check renamed", renamed));
        let mut state = base.clone();
        state.states.get_mut("c00002").unwrap().failing = 3;
        variants.push(("a state", state));
        let mut record = base.clone();
        record.deliveries.remove("3.0/a1");
        variants.push(("a record gone", record));
        let mut setting = base.clone();
        setting.settings.hysteresis += 1;
        variants.push(("a setting", setting));
        let mut stamped = base.clone();
        stamped.content = Some(crate::config::ContentStamp { version: 6, term: 2, updated_at: None, updated_by: None });
        variants.push(("the content's stamp", stamped));
        let mut renderer = Renderer::default();
        for (what, config) in &variants {
            let hash = same(&mut renderer, config, what);
            assert!(seen.insert(hash, *what).is_none(), "{what} hashes as {:?}", seen.get(&hash));
        }
        assert_eq!(same(&mut renderer, &base, "base again"), content_hash(&base), "the same config, the same hash");
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
