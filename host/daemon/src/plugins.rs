//! The node's plugins: the built-in ones embedded in `qu`, and those the
//! cluster's `plugins:` entries name, whose components are stored by
//! sha256 under `plugins/` and fetched from peers when missing. A plugin
//! is used only once its bytes match the sha256 its entry pins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qu_core::config::{ClusterConfig, PluginEntry};
use qu_core::monitor::{Outcome, Report};
use qu_core::wire::{PeerRequest, PeerResponse};
use qu_plugin::{CallError, Limits, Plugin, PluginError, Runtime, Status};
use qu_store::DataDir;
use qu_transport::Connection;

use crate::peer::Wire;

/// How long fetching a blob from one peer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a plugin cannot take a call on this node right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// It is still being compiled or fetched.
    #[error("loading")]
    Loading,
    /// Its last load failed, with why.
    #[error("{0}")]
    Unavailable(String),
    #[error("no such plugin on this node")]
    Missing,
}

/// Where a plugin stands on this node.
#[derive(Clone)]
enum Slot {
    Ready(Arc<Plugin>),
    Loading {
        sha256: String,
    },
    Unavailable {
        sha256: String,
        reason: String,
    },
    /// A built-in nothing has used yet: compiled on first use (a check or
    /// an alert of its type, a test, a validation), so a node pays only
    /// for the plugins it needs.
    Dormant {
        sha256: String,
    },
}

/// What `qu plugin list` shows of one plugin on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginView {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub built_in: bool,
    pub allow: Vec<String>,
    /// `ready`, `loading`, or `unavailable: <why>` on this node.
    pub status: String,
    pub description: String,
}

/// How long a plugin that failed to load waits before the next attempt:
/// 1 s, doubling to at most 30 s (a node that just started has no peer
/// links yet to fetch from; a component that never loads is not retried
/// every poll).
fn retry_after(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// The plugins of `plugins:` entries on this node.
#[derive(Default)]
struct Added {
    /// What serves each name now.
    slots: HashMap<String, Slot>,
    /// Entries being fetched and loaded.
    inflight: HashMap<String, PluginEntry>,
    /// Entries that failed to load: when, and how many times in a row.
    failed: HashMap<String, (PluginEntry, Instant, u32)>,
}

fn matches_entry(plugin: &Plugin, entry: &PluginEntry) -> bool {
    plugin.sha256 == entry.sha256 && plugin.allow == entry.allow && plugin.limits == limits_of(&entry.limits)
}

pub struct Registry {
    runtime: Arc<Runtime>,
    data: DataDir,
    built_in: Mutex<HashMap<String, Slot>>,
    added: Mutex<Added>,
}

impl Registry {
    pub fn new(data: &DataDir) -> Result<Arc<Self>, String> {
        let runtime = Runtime::new(Some(data.plugin_cache_dir())).map_err(|e| e.to_string())?;
        Ok(Arc::new(Self { runtime, data: data.clone(), built_in: Mutex::default(), added: Mutex::default() }))
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Removes what no plugin needs any more: compiled artifacts of other
    /// components or engine versions, leftovers of interrupted writes, and
    /// blobs no entry pins (after an hour, so a blob shipped for an add
    /// that is still being committed is never taken away).
    pub fn clean_up(&self, config: &ClusterConfig) {
        let mut wanted: std::collections::HashSet<String> =
            qu_plugin::BUILT_IN.iter().map(|(_, bytes)| qu_plugin::sha256_hex(bytes)).collect();
        wanted.extend(config.plugins.iter().map(|p| p.sha256.clone()));
        let mut removed = 0;
        if let Ok(entries) = std::fs::read_dir(self.data.plugin_cache_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = name
                    .split_once('-')
                    .is_some_and(|(sha, _)| wanted.contains(sha) && name == self.runtime.cache_file_name(sha));
                if !keep && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.data.plugins_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pinned = name.strip_suffix(".wasm").is_some_and(|sha| wanted.contains(sha));
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3_600)));
                if !pinned && old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!("plugins: removed {removed} unused file(s) (old blobs, stale compiled artifacts)");
        }
    }

    /// Registers the built-in plugins, dormant: each is compiled (in the
    /// background; checks using it report `loading` meanwhile) when the
    /// config uses it ([`Registry::sync`]) or something asks for it.
    pub fn load_built_in(self: &Arc<Self>) {
        let mut built_in = self.built_in.lock().unwrap_or_else(|e| e.into_inner());
        for (name, bytes) in qu_plugin::BUILT_IN {
            built_in.insert(name.to_string(), Slot::Dormant { sha256: qu_plugin::sha256_hex(bytes) });
        }
    }

    /// Starts compiling the built-in `name` if it is dormant.
    fn wake(self: &Arc<Self>, name: &str) {
        let Some((name, bytes)) = qu_plugin::BUILT_IN.iter().find(|(n, _)| *n == name).copied() else { return };
        {
            let mut built_in = self.built_in.lock().unwrap_or_else(|e| e.into_inner());
            match built_in.get(name) {
                Some(Slot::Dormant { sha256 }) => {
                    let sha256 = sha256.clone();
                    built_in.insert(name.to_string(), Slot::Loading { sha256 });
                }
                _ => return,
            }
        }
        {
            let this = self.clone();
            tokio::spawn(async move {
                let slot = match this.runtime.load(Some(name), Arc::from(bytes), Vec::new(), Limits::default()).await {
                    Ok(plugin) => Slot::Ready(plugin),
                    Err(error) => {
                        tracing::error!("plugin {name}: the built-in component does not load: {error}");
                        Slot::Unavailable { sha256: qu_plugin::sha256_hex(bytes), reason: error.to_string() }
                    }
                };
                this.built_in.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), slot);
            });
        }
    }

    /// Wakes every built-in the config uses (checks' and alerts' types not
    /// overridden by an added plugin).
    fn wake_used(self: &Arc<Self>, config: &ClusterConfig) {
        let added = |name: &str| config.plugins.iter().any(|p| p.name == name);
        let used = config.checks.iter().map(|c| c.kind.as_str()).chain(config.alerts.iter().map(|a| a.kind.as_str()));
        for kind in used {
            if !added(kind) {
                self.wake(kind);
            }
        }
    }

    /// Brings the added plugins in line with `config`: keeps those whose
    /// entry is unchanged, loads new versions from the local store or from
    /// `peers`, forgets removed ones.
    pub(crate) fn sync(self: &Arc<Self>, config: &ClusterConfig, peers: Vec<Connection<Wire>>) {
        self.runtime.set_memory_budget(config.settings.plugin_memory_mib as usize * 1024 * 1024);
        self.wake_used(config);
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let known = |name: &String| config.plugins.iter().any(|p| p.name == *name);
        added.slots.retain(|name, _| known(name));
        added.inflight.retain(|name, _| known(name));
        added.failed.retain(|name, _| known(name));
        for entry in &config.plugins {
            let serving = matches!(added.slots.get(&entry.name), Some(Slot::Ready(p)) if matches_entry(p, entry));
            let loading = added.inflight.get(&entry.name) == Some(entry);
            let backing_off = added
                .failed
                .get(&entry.name)
                .is_some_and(|(failed, at, n)| failed == entry && at.elapsed() < retry_after(*n));
            if serving || loading || backing_off {
                continue;
            }
            added.inflight.insert(entry.name.clone(), entry.clone());
            // A new version replaces the old one only once it is ready:
            // until then (and for calls already running) the old one serves.
            if !matches!(added.slots.get(&entry.name), Some(Slot::Ready(_))) {
                added.slots.insert(entry.name.clone(), Slot::Loading { sha256: entry.sha256.clone() });
            }
            let (this, entry, peers) = (self.clone(), entry.clone(), peers.clone());
            tokio::spawn(async move {
                let result = this.activate(&entry, &peers).await;
                let mut added = this.added.lock().unwrap_or_else(|e| e.into_inner());
                if added.inflight.get(&entry.name) != Some(&entry) {
                    return; // the entry changed or went away meanwhile
                }
                added.inflight.remove(&entry.name);
                match result {
                    Ok(plugin) => {
                        tracing::info!("plugin {}: sha256 {} active", entry.name, entry.sha256);
                        added.failed.remove(&entry.name);
                        added.slots.insert(entry.name.clone(), Slot::Ready(plugin));
                    }
                    Err(reason) => {
                        let failures = match added.failed.get(&entry.name) {
                            Some((failed, _, n)) if *failed == entry => n + 1,
                            _ => 1,
                        };
                        tracing::warn!(
                            "plugin {}: unavailable: {reason} (retrying in {}s)",
                            entry.name,
                            retry_after(failures).as_secs()
                        );
                        added.failed.insert(entry.name.clone(), (entry.clone(), Instant::now(), failures));
                        added
                            .slots
                            .insert(entry.name.clone(), Slot::Unavailable { sha256: entry.sha256.clone(), reason });
                    }
                }
            });
        }
    }

    /// Whether some added plugin failed to load and its retry is due.
    pub fn has_unavailable(&self) -> bool {
        let added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        added.failed.values().any(|(_, at, n)| at.elapsed() >= retry_after(*n))
    }

    async fn activate(&self, entry: &PluginEntry, peers: &[Connection<Wire>]) -> Result<Arc<Plugin>, String> {
        let bytes = match self.read_blob(&entry.sha256) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => self.fetch(&entry.sha256, peers).await?,
            Err(reason) => {
                tracing::warn!("plugin {}: {reason}; fetching it again", entry.name);
                self.fetch(&entry.sha256, peers).await?
            }
        };
        self.runtime
            .load(Some(&entry.name), Arc::from(bytes), entry.allow.clone(), limits_of(&entry.limits))
            .await
            .map_err(|e| e.to_string())
    }

    /// The stored blob with this sha256: `Ok(None)` if absent, `Err` if
    /// present but corrupt (it is then removed).
    pub fn read_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.data.plugin_blob(sha256);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        if qu_plugin::sha256_hex(&bytes) != sha256 {
            let _ = std::fs::remove_file(&path);
            let why = format!("{} does not match its sha256 (corrupt or tampered with); removed", path.display());
            tracing::warn!("plugin: {why}");
            return Err(why);
        }
        Ok(Some(bytes))
    }

    /// Stores a component under its sha256 (atomically, 0600).
    pub fn store_blob(&self, bytes: &[u8]) -> Result<String, String> {
        if bytes.len() as u64 > qu_core::limits::PLUGIN_BYTES_MAX {
            return Err(format!("{} bytes, more than the 10 MiB a plugin may have", bytes.len()));
        }
        let sha256 = qu_plugin::sha256_hex(bytes);
        qu_store::create_private_dir(&self.data.plugins_dir()).map_err(|e| e.to_string())?;
        qu_store::write_atomic(&self.data.plugin_blob(&sha256), bytes, 0o600).map_err(|e| e.to_string())?;
        Ok(sha256)
    }

    async fn fetch(&self, sha256: &str, peers: &[Connection<Wire>]) -> Result<Vec<u8>, String> {
        let mut why = Vec::new();
        for peer in peers {
            match peer.request(PeerRequest::PluginBlob { sha256: sha256.to_string() }, FETCH_TIMEOUT).await {
                Ok(PeerResponse::PluginBlob { bytes }) if qu_plugin::sha256_hex(&bytes) == sha256 => {
                    self.store_blob(&bytes)?;
                    return Ok(bytes);
                }
                Ok(PeerResponse::PluginBlob { .. }) => why.push("a peer sent bytes with another sha256".to_string()),
                Ok(PeerResponse::Refused { reason }) => why.push(reason),
                Ok(other) => why.push(format!("unexpected answer {other:?}")),
                Err(error) => why.push(error.to_string()),
            }
        }
        Err(if why.is_empty() {
            format!("component {sha256} is not stored here and no peer is reachable to fetch it from")
        } else {
            format!("component {sha256} could not be fetched: {}", why.join("; "))
        })
    }

    /// The plugin named `name` as the cluster defines it: an added one
    /// (kept in line with `plugins:` by [`Registry::sync`]) wins over a
    /// built-in of the same name.
    pub fn get(self: &Arc<Self>, name: &str) -> Result<Arc<Plugin>, NotReady> {
        let added = self.added.lock().unwrap_or_else(|e| e.into_inner()).slots.get(name).cloned();
        if added.is_none() {
            self.wake(name);
        }
        let slot = match added {
            Some(slot) => Some(slot),
            None => self.built_in.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned(),
        };
        match slot {
            Some(Slot::Ready(plugin)) => Ok(plugin),
            Some(Slot::Loading { .. } | Slot::Dormant { .. }) => Err(NotReady::Loading),
            Some(Slot::Unavailable { reason, .. }) => Err(NotReady::Unavailable(reason)),
            None => Err(NotReady::Missing),
        }
    }

    /// Like [`Registry::get`], but waits (up to `within`) for a plugin that
    /// is still loading — a node that just started compiles its built-ins.
    pub async fn get_ready(self: &Arc<Self>, name: &str, within: Duration) -> Result<Arc<Plugin>, NotReady> {
        let deadline = Instant::now() + within;
        loop {
            match self.get(name) {
                Err(NotReady::Loading) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Every plugin this node knows, for `qu plugin list`.
    pub fn views(&self, config: &ClusterConfig) -> Vec<PluginView> {
        let mut out = Vec::new();
        let view = |name: &str, slot: Option<&Slot>, entry: Option<&PluginEntry>, built_in: bool| {
            let (status, plugin, sha) = match slot {
                Some(Slot::Ready(p)) => ("ready".to_string(), Some(p.clone()), p.sha256.clone()),
                Some(Slot::Loading { sha256 }) => ("loading".to_string(), None, sha256.clone()),
                Some(Slot::Dormant { sha256 }) => ("idle: loads when used".to_string(), None, sha256.clone()),
                Some(Slot::Unavailable { sha256, reason }) => (format!("unavailable: {reason}"), None, sha256.clone()),
                None => ("unavailable: not loaded".to_string(), None, String::new()),
            };
            PluginView {
                name: name.to_string(),
                kind: entry
                    .map(|e| format!("{:?}", e.kind).to_lowercase())
                    .or_else(|| plugin.as_ref().map(|p| p.kind.as_str().to_string()))
                    // A built-in not loaded yet: its kind is known all the same.
                    .or_else(|| {
                        let config = qu_core::config::BUILT_IN_CHECK_PLUGINS.contains(&name).then_some("check");
                        config
                            .or_else(|| qu_core::config::BUILT_IN_SINK_PLUGINS.contains(&name).then_some("sink"))
                            .filter(|_| built_in)
                            .map(str::to_string)
                    })
                    .unwrap_or_default(),
                version: plugin.as_ref().map(|p| p.info.version.clone()).unwrap_or_default(),
                sha256: entry.map(|e| e.sha256.clone()).unwrap_or(sha),
                size: entry.map(|e| e.size).or_else(|| plugin.as_ref().map(|p| p.size as u64)).unwrap_or(0),
                built_in,
                allow: entry.map(|e| e.allow.clone()).unwrap_or_default(),
                status,
                description: plugin.as_ref().map(|p| p.info.description.clone()).unwrap_or_default(),
            }
        };
        let built_in = self.built_in.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = built_in.keys().collect();
        names.sort();
        for name in names {
            if !config.plugins.iter().any(|p| p.name == *name) {
                out.push(view(name, built_in.get(name), None, true));
            }
        }
        let added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        for entry in &config.plugins {
            out.push(view(&entry.name, added.slots.get(&entry.name), Some(entry), false));
        }
        out
    }
}

/// Reads a component file for `qu plugin add`, refusing what is too big
/// before reading it.
pub fn read_component(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > qu_core::limits::PLUGIN_BYTES_MAX {
        return Err(format!("{}: {size} bytes, more than the 10 MiB a plugin may have", path.display()));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The sandbox limits a `plugins:` entry asks for (unset: the defaults).
pub fn limits_of(limits: &qu_core::config::PluginLimits) -> Limits {
    Limits {
        memory: limits.memory_mib.map_or(qu_plugin::MEMORY_DEFAULT, |m| m as usize * 1024 * 1024),
        timeout: limits.timeout,
    }
}

/// A check plugin's probe as a report: a plugin's own failure (crash,
/// memory, bad config, missing) is no vote; the target's is DOWN.
pub async fn probe(
    plugin: Result<Arc<Plugin>, (String, String)>,
    runtime: &Runtime,
    check_id: &str,
    target: &str,
    settings: &[(String, String)],
    timeout: Duration,
) -> Report {
    let report = |outcome, latency: Duration, detail: String| Report {
        check_id: check_id.to_string(),
        outcome,
        latency_ms: latency.as_millis().min(u32::MAX as u128) as u32,
        detail: qu_probe::short_detail(&detail),
    };
    let plugin = match plugin {
        Ok(plugin) => plugin,
        Err((name, reason)) => {
            return report(Outcome::Unavailable, Duration::ZERO, format!("plugin {name} unavailable: {reason}"));
        }
    };
    let started = std::time::Instant::now();
    match runtime.check(&plugin, settings, target, timeout).await {
        Ok(found) => {
            let outcome = match found.status {
                Status::Up => Outcome::Up,
                Status::Down | Status::Degraded => Outcome::Down,
            };
            report(outcome, found.latency, found.message)
        }
        Err(CallError::Timeout { after, .. }) => {
            report(Outcome::Down, started.elapsed(), format!("timeout after {}", humantime::format_duration(after)))
        }
        Err(CallError::Plugin { error: PluginError::Config(message), .. }) => {
            report(Outcome::Unavailable, started.elapsed(), format!("plugin {} configuration: {message}", plugin.name))
        }
        Err(CallError::Plugin { error, .. }) => report(Outcome::Down, started.elapsed(), error.to_string()),
        Err(error) => report(Outcome::Unavailable, started.elapsed(), error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use qu_core::config::{ClusterConfig, PluginEntry, PluginKind};

    use super::*;

    /// The pure core's lists of built-ins (which validate `cluster.yaml`)
    /// are what the binary embeds (qu_wasm_build's lists), kind for kind.
    #[test]
    fn the_cores_built_in_lists_are_what_is_embedded() {
        let embedded: Vec<&str> = qu_plugin::BUILT_IN.iter().map(|(name, _)| *name).collect();
        let core: Vec<&str> = qu_core::config::BUILT_IN_CHECK_PLUGINS
            .iter()
            .chain(qu_core::config::BUILT_IN_SINK_PLUGINS.iter())
            .copied()
            .collect();
        assert_eq!(core, embedded);
    }

    #[tokio::test]
    async fn start_up_removes_only_what_no_plugin_needs() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let registry = Registry::new(&data).unwrap();
        let pinned = registry.store_blob(b"pinned component bytes").unwrap();
        let fresh = registry.store_blob(b"just shipped, entry not committed yet").unwrap();
        let old = registry.store_blob(b"an old version nobody pins").unwrap();
        let an_hour_ago = SystemTime::now() - Duration::from_secs(7_200);
        for sha in [&pinned, &old] {
            std::fs::File::options()
                .write(true)
                .open(data.plugin_blob(sha))
                .unwrap()
                .set_modified(an_hour_ago)
                .unwrap();
        }
        let cache = data.plugin_cache_dir();
        std::fs::create_dir_all(&cache).unwrap();
        let current = registry.runtime().cache_file_name(&pinned);
        for name in [current.clone(), format!("{pinned}-0000000000000000.cwasm"), format!("{old}-x.cwasm.partial")] {
            std::fs::write(cache.join(name), b"compiled").unwrap();
        }
        let mut config: ClusterConfig = serde_yaml::from_str("version: 1\nterm: 1\npeers: []\n").unwrap();
        config.plugins.push(PluginEntry {
            name: "mine".into(),
            kind: PluginKind::Check,
            sha256: pinned.clone(),
            size: 22,
            allow: vec![],
            limits: Default::default(),
        });
        registry.clean_up(&config);
        assert!(data.plugin_blob(&pinned).exists(), "a pinned blob stays");
        assert!(data.plugin_blob(&fresh).exists(), "a recent unpinned blob stays (its add may be committing)");
        assert!(!data.plugin_blob(&old).exists(), "an old unpinned blob goes");
        let left: Vec<String> =
            std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec![current], "only this engine's artifact of a wanted component stays");
    }
}
