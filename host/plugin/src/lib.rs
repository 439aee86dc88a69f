//! The plugin host: runs extra check types and alert sinks as WebAssembly
//! components (contract `qu:plugin@0.1.0`, `wit/`). The only crate that
//! names wasmtime.
//!
//! Invariants:
//! - One engine; a fresh store and instance per call, dropped after it.
//! - Every call is bounded: memory (trap on growth past the cap), wall
//!   time (epoch interruption yields to tokio, a timeout cancels), and a
//!   global number of calls at once.
//! - An instance has no files, environment, stdio or name lookups; it
//!   connects only where [`rules::Rules`] allows, checked before any DNS.
//! - Nothing from the host's errors reaches the guest beyond a short
//!   message; nothing from the guest reaches the caller but a [`CallError`].
//! - Compiling happens off the async runtime and is cached on disk by
//!   sha256 + engine compatibility; cached artifacts are only ever our own.

mod bindings;
mod host;
pub mod rules;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::checker::{Checker, CheckerPre};
use crate::bindings::sink::{Sink, SinkPre};
use crate::bindings::types as wit;
use crate::bindings::v2;
use crate::host::{Denials, Hooks, HttpClients, Limiter, MemoryBudget, SocketBudget, State};
pub use crate::host::{HTTP_IN_FLIGHT_PER_CALL_MAX, SOCKETS_PER_CALL_MAX};
use crate::rules::{Call, Declarations, DestinationKind, Rules};

include!(concat!(env!("OUT_DIR"), "/built_in.rs"));

/// The contract version plugins are built against today (the SDK's).
pub const WIT_VERSION: &str = "0.2.0";
/// Every contract version this host serves.
pub const WIT_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];
/// Largest component accepted.
pub const COMPONENT_BYTES_MAX: usize = 10 * 1024 * 1024;
/// Default memory cap of one call.
pub const MEMORY_DEFAULT: usize = 64 * 1024 * 1024;
/// The highest memory cap a plugin entry may ask for.
pub const MEMORY_MAX: usize = 256 * 1024 * 1024;
/// Default wall time of a sink call.
pub const SINK_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest message or error text a plugin call returns, in characters
/// (what is kept, logged and committed of it; the rest is cut with `…`).
pub const MESSAGE_CHARS_MAX: usize = 1_024;
/// Metrics kept from one check call, and the longest metric name.
pub const METRICS_MAX: usize = 100;
pub const METRIC_NAME_CHARS_MAX: usize = 100;

/// `text` cut to `max` characters (at a character boundary, marked `…`).
fn bounded(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Default of the node-wide budget for plugin memory: every call's linear
/// memory together (`settings.plugin_memory_mib`).
pub const MEMORY_BUDGET_DEFAULT: usize = 512 * 1024 * 1024;
/// Open files the daemon keeps for itself, whatever plugins hold: plugin
/// sockets all together get at most half of what the open-file limit
/// leaves beyond these, and never more than [`SOCKETS_NODE_MAX`].
pub const DESCRIPTOR_RESERVE: u64 = 512;
pub const SOCKETS_NODE_MAX: u64 = 4_096;

/// The node-wide budget of plugin sockets under an open-file limit.
pub fn socket_budget(open_files: u64) -> usize {
    (open_files.saturating_sub(DESCRIPTOR_RESERVE) / 2).min(SOCKETS_NODE_MAX) as usize
}

/// How long an `info` or `validate-config` call waits for room in the
/// node's memory budget.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Check calls running at once on one node.
pub const CALLS_CONCURRENT_MAX: usize = 32;
/// Sink calls running at once on one node, in slots of their own: no
/// number of slow check plugins can delay an alert (the dispatcher sends at
/// most 16 at once).
pub const SINK_CALLS_CONCURRENT_MAX: usize = 16;
/// Every call a runtime may run at once.
const CALLS_ALL_MAX: u32 = (CALLS_CONCURRENT_MAX + SINK_CALLS_CONCURRENT_MAX) as u32;
/// How often the epoch advances while calls run (the granularity at which
/// a spinning guest yields).
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Check = 0,
    Sink = 1,
}

/// A budget split between check calls (three quarters) and sink calls
/// (the rest).
fn shares(total: usize) -> [usize; 2] {
    let sinks = total / 4;
    [total - sinks, sinks]
}

/// Host resources (streams, requests, sockets, pollables...) one call may
/// hold in its table.
pub const RESOURCES_PER_CALL_MAX: usize = 10_000;

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Sink => "sink",
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    pub target: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub required: bool,
    pub default: Option<String>,
    pub description: String,
    /// Whether the value names a destination (0.2.0 and later).
    pub destination: Option<DestinationKind>,
}

/// A plugin's own error, by what the host should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{message}")]
    Transient { message: String, retry_after: Option<Duration> },
    #[error("{0}")]
    Permanent(String),
}

/// Why a call produced no answer of the plugin's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin {plugin} timed out after {}", seconds(*.after))]
    Timeout { plugin: String, after: Duration },
    #[error("plugin {plugin} exceeded its memory limit of {} MiB", .limit / (1024 * 1024))]
    Memory { plugin: String, limit: usize },
    #[error("plugin {plugin} crashed: {reason}")]
    Crashed { plugin: String, reason: String },
    #[error("plugin {plugin}: {error}")]
    Plugin { plugin: String, error: PluginError },
    #[error("plugin {plugin} unavailable: {reason}")]
    Unavailable { plugin: String, reason: String },
    /// The node's budget (memory of all calls together) had no room: a
    /// matter of this node, not of the plugin or its target.
    #[error("plugin {plugin} could not run: {reason}")]
    Busy { plugin: String, reason: String },
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Why a component cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// What the probe of a check plugin found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub status: Status,
    pub latency: Duration,
    pub message: String,
    pub metrics: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    Down,
    Degraded,
}

/// An alert to deliver through a sink.
pub type AlertEvent = wit::AlertEvent;

/// Per-plugin limits (from its entry in cluster.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory: usize,
    /// Overrides the call's own deadline (a check's timeout, 10 s for sinks).
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory: MEMORY_DEFAULT, timeout: None }
    }
}

enum Pre {
    Check(CheckerPre<State>),
    Sink(SinkPre<State>),
    Check2(v2::checker::CheckerPre<State>),
    Sink2(v2::sink::SinkPre<State>),
}

/// A loaded plugin: validated against its world, ready to instantiate.
pub struct Plugin {
    pub name: String,
    pub kind: Kind,
    pub sha256: String,
    pub size: usize,
    pub info: Info,
    /// The interfaces the component imports (its requested capabilities).
    pub imports: Vec<String>,
    /// The contract version it was built against (from its exports).
    pub wit_version: String,
    pub allow: Vec<String>,
    pub limits: Limits,
    pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Plugin {
    /// What the plugin declares of its settings' destinations: a 0.1.0
    /// component cannot declare any.
    pub fn declarations(&self) -> Declarations {
        if self.wit_version == "0.1.0" {
            return Declarations::Undeclared;
        }
        Declarations::Declared(
            self.info.fields.iter().filter_map(|f| Some((f.name.clone(), f.destination.clone()?))).collect(),
        )
    }
}

/// The sha256 of a component, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The plugin runtime of one node.
pub struct Runtime {
    engine: Engine,
    checkers: Linker<State>,
    sinks: Linker<State>,
    cache_dir: Option<PathBuf>,
    /// Call slots: checks and sinks apart.
    check_permits: Semaphore,
    sink_permits: Semaphore,
    resolvers: Arc<Vec<SocketAddr>>,
    /// Per kind (checks, sinks): each its own client, counted in its own
    /// share of the socket budget.
    http: [HttpClients; 2],
    /// The node's peer port (0: not inside a daemon).
    peer_port: Arc<std::sync::atomic::AtomicU32>,
    /// Sockets of all calls together, a share per kind (checks, sinks), so
    /// that no number of check calls can leave an alert without.
    sockets: [Arc<Semaphore>; 2],
    /// Linear memory of all calls together, a share per kind likewise.
    memory: [Arc<MemoryBudget>; 2],
    ticker: Ticker,
    compiles: Arc<CompileCounts>,
    /// Per (plugin, kind): its calls since start ([`Runtime::call_stats`]).
    calls: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), CallStats>>,
}

/// How this runtime's components were compiled since it started: from
/// their bytes, or taken from the on-disk cache.
#[derive(Debug, Default)]
struct CompileCounts {
    compiled: std::sync::atomic::AtomicU64,
    from_cache: std::sync::atomic::AtomicU64,
}

/// Calls of one plugin since the runtime started ([`Runtime::call_stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    pub calls: u64,
    /// Calls that did not finish: timed out, trapped, out of memory.
    pub errors: u64,
    /// Time in calls, in seconds.
    pub seconds: f64,
    /// The most linear memory one call used, in bytes.
    pub memory_max: u64,
}

/// A snapshot of [`Runtime::compile_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    /// Components compiled from their bytes (cache misses, or no cache).
    pub compiled: u64,
    /// Components loaded from a cached artifact.
    pub from_cache: u64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish()
    }
}

/// Advances the engine's epoch while calls run, and sleeps otherwise.
struct Ticker {
    active: Arc<AtomicUsize>,
    thread: std::thread::Thread,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let active = Arc::new(AtomicUsize::new(0));
        let seen = active.clone();
        let handle = std::thread::Builder::new()
            .name("qu-plugin-epoch".into())
            .spawn(move || {
                loop {
                    if seen.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("start the plugin epoch thread");
        Self { active, thread: handle.thread().clone() }
    }

    fn enter(&self) -> TickerGuard<'_> {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        TickerGuard(self)
    }
}

struct TickerGuard<'a>(&'a Ticker);

impl Drop for TickerGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Runtime {
    /// A runtime caching compiled components under `cache_dir` (none: no
    /// cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Reserve only what the largest allowed memory needs (plus a small
        // guard) instead of wasmtime's default 4 GiB per memory: a node's
        // address space stays in the tens of GiB, at the price of explicit
        // bounds checks, which plugin calls do not notice.
        config.memory_reservation(MEMORY_MAX as u64);
        config.memory_guard_size(2 * 1024 * 1024);
        config.memory_reservation_for_growth(0);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(CALLS_ALL_MAX * 2);
        pool.total_core_instances(CALLS_ALL_MAX * 8);
        pool.total_memories(CALLS_ALL_MAX * 4);
        pool.total_tables(CALLS_ALL_MAX * 8);
        pool.total_stacks(CALLS_ALL_MAX * 2);
        pool.max_memory_size(MEMORY_MAX);
        // One component may not take a whole pool's worth by itself.
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(16);
        pool.max_core_instances_per_component(32);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError(format!("start the plugin engine: {e}")))?;

        let link = |e: wasmtime::Error| LoadError(format!("link plugin imports: {e}"));
        let mut checkers = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut checkers).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut checkers).map_err(link)?;
        budget_sockets(&mut checkers).map_err(link)?;
        Checker::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut checkers, |s| s).map_err(link)?;
        v2::checker::Checker::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut checkers, |s| s)
            .map_err(link)?;
        let mut sinks = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut sinks).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut sinks).map_err(link)?;
        budget_sockets(&mut sinks).map_err(link)?;
        Sink::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut sinks, |s| s).map_err(link)?;
        v2::sink::Sink::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut sinks, |s| s).map_err(link)?;

        let peer_port = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let sockets = shares(socket_budget(open_file_limit())).map(|n| Arc::new(Semaphore::new(n)));
        let http = [
            HttpClients::new(peer_port.clone(), sockets[0].clone()).map_err(LoadError)?,
            HttpClients::new(peer_port.clone(), sockets[1].clone()).map_err(LoadError)?,
        ];
        let memory = shares(MEMORY_BUDGET_DEFAULT).map(|n| Arc::new(MemoryBudget::new(n)));
        let ticker = Ticker::start(engine.clone());
        Ok(Arc::new(Self {
            engine,
            checkers,
            sinks,
            cache_dir,
            check_permits: Semaphore::new(CALLS_CONCURRENT_MAX),
            sink_permits: Semaphore::new(SINK_CALLS_CONCURRENT_MAX),
            resolvers: Arc::new(rules::system_resolvers()),
            http,
            peer_port,
            sockets,
            memory,
            ticker,
            compiles: Arc::default(),
            calls: Default::default(),
        }))
    }

    /// Tells the runtime the node's peer port: plugins reach it on this
    /// machine's addresses only through an exact allow-list entry.
    pub fn set_peer_port(&self, port: u16) {
        self.peer_port.store(u32::from(port), Ordering::Relaxed);
    }

    /// Sets the node-wide budget of plugin memory (every call's linear
    /// memory together); calls that would go past it fail as
    /// [`CallError::Busy`].
    pub fn set_memory_budget(&self, bytes: usize) {
        for (budget, share) in self.memory.iter().zip(shares(bytes)) {
            budget.limit.store(share, Ordering::Relaxed);
        }
    }

    /// Plugin memory in use on this node now, and the budget (both kinds).
    pub fn memory_in_use(&self) -> (usize, usize) {
        let used = self.memory.iter().map(|m| m.used.load(Ordering::Acquire)).sum();
        (used, self.memory.iter().map(|m| m.limit.load(Ordering::Relaxed)).sum())
    }

    /// Sockets plugin calls hold now, and the node-wide budget (both kinds).
    pub fn sockets_in_use(&self) -> (usize, usize) {
        let shares = shares(socket_budget(open_file_limit()));
        let free: usize = self.sockets.iter().map(|s| s.available_permits()).sum();
        (shares.iter().sum::<usize>().saturating_sub(free), shares.iter().sum())
    }

    fn peer_port(&self) -> Option<u16> {
        match self.peer_port.load(Ordering::Relaxed) {
            0 => None,
            port => u16::try_from(port).ok(),
        }
    }

    /// Per plugin and kind (`check` or `sink`), its calls since start.
    pub fn call_stats(&self) -> Vec<(String, &'static str, CallStats)> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.iter().map(|((name, kind), stats)| (name.clone(), *kind, stats.clone())).collect()
    }

    /// How many components this runtime compiled, and how many it took
    /// from the cache, since it started.
    pub fn compile_stats(&self) -> CompileStats {
        use std::sync::atomic::Ordering::Relaxed;
        CompileStats {
            compiled: self.compiles.compiled.load(Relaxed),
            from_cache: self.compiles.from_cache.load(Relaxed),
        }
    }

    /// The file name this runtime caches the compiled `sha256` under.
    pub fn cache_file_name(&self, sha256: &str) -> String {
        format!("{sha256}-{:016x}.cwasm", self.compatibility())
    }

    fn compatibility(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    /// Compiles `bytes` (off the async runtime), through the cache.
    async fn compile(self: &Arc<Self>, bytes: Arc<[u8]>, sha256: &str) -> Result<Component, LoadError> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(self.cache_file_name(sha256)));
        let engine = self.engine.clone();
        let counts = self.compiles.clone();
        tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering::Relaxed;
            if let Some(path) = &cached
                && path.is_file()
            {
                match load_cached(&engine, path) {
                    Ok(component) => {
                        counts.from_cache.fetch_add(1, Relaxed);
                        return Ok(component);
                    }
                    Err(error) => {
                        tracing::warn!(
                            "plugin: cached artifact {} unusable ({error}); compiling again",
                            path.display()
                        );
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            let component = Component::new(&engine, &bytes)
                .map_err(|e| LoadError(format!("not a valid component: {}", short(&e))))?;
            counts.compiled.fetch_add(1, Relaxed);
            if let Some(path) = &cached
                && let Err(error) = store_cached(&component, path)
            {
                tracing::warn!("plugin: could not cache the compiled artifact at {}: {error}", path.display());
            }
            Ok(component)
        })
        .await
        .map_err(|e| LoadError(format!("compile: {e}")))?
    }

    /// Loads a component: checks size and format, compiles (cached),
    /// validates it against the `checker` or `sink` world, and asks it for
    /// its info. `name` is what cluster.yaml calls it (default: its own).
    pub async fn load(
        self: &Arc<Self>,
        name: Option<&str>,
        bytes: Arc<[u8]>,
        allow: Vec<String>,
        limits: Limits,
    ) -> Result<Arc<Plugin>, LoadError> {
        if bytes.len() > COMPONENT_BYTES_MAX {
            return Err(LoadError(format!(
                "{} bytes, more than the {} MiB a plugin may have",
                bytes.len(),
                COMPONENT_BYTES_MAX / (1024 * 1024)
            )));
        }
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => {}
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
                return Err(LoadError(
                    "a core WebAssembly module, not a component: build with `--target wasm32-wasip2`".into(),
                ));
            }
            _ => return Err(LoadError("not a WebAssembly component (no `\\0asm` component header)".into())),
        }
        if limits.memory > MEMORY_MAX {
            return Err(LoadError(format!("memory limit above the {} MiB maximum", MEMORY_MAX / (1024 * 1024))));
        }
        let sha256 = sha256_hex(&bytes);
        let component = self.compile(bytes.clone(), &sha256).await?;
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(n, _)| n.to_string()).collect();
        let version_of = |interface: &str| {
            exports.iter().find_map(|e| e.strip_prefix(&format!("qu:plugin/{interface}@")).map(str::to_string))
        };
        let served = WIT_VERSIONS.join(" and ");
        let unserved = |version: &str| {
            LoadError(format!(
                "built against qu:plugin@{version}; this host serves {served}: upgrade qu, or rebuild the plugin"
            ))
        };
        let checker = |e: wasmtime::Error| world_error("checker", &e, &exports);
        let sink = |e: wasmtime::Error| world_error("sink", &e, &exports);
        let (kind, pre, wit_version) = if let Some(version) = version_of("probe") {
            let pre = self.checkers.instantiate_pre(&component).map_err(checker)?;
            let pre = match version.as_str() {
                "0.1.0" => Pre::Check(CheckerPre::new(pre).map_err(checker)?),
                "0.2.0" => Pre::Check2(v2::checker::CheckerPre::new(pre).map_err(checker)?),
                other => return Err(unserved(other)),
            };
            (Kind::Check, pre, version)
        } else if let Some(version) = version_of("notify") {
            let pre = self.sinks.instantiate_pre(&component).map_err(sink)?;
            let pre = match version.as_str() {
                "0.1.0" => Pre::Sink(SinkPre::new(pre).map_err(sink)?),
                "0.2.0" => Pre::Sink2(v2::sink::SinkPre::new(pre).map_err(sink)?),
                other => return Err(unserved(other)),
            };
            (Kind::Sink, pre, version)
        } else {
            return Err(LoadError(format!(
                "exports neither qu:plugin/probe (a check) nor qu:plugin/notify (a sink) of qu:plugin@{served}; it exports: {}",
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
            )));
        };
        let mut plugin = Plugin {
            wit_version,
            name: name.unwrap_or("").to_string(),
            kind,
            sha256,
            size: bytes.len(),
            info: Info {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                target: String::new(),
                fields: Vec::new(),
            },
            imports,
            allow,
            limits,
            pre,
        };
        let info = self.info(&plugin).await.map_err(|e| LoadError(format!("its info call failed: {e}")))?;
        let settings: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
        let declared = Declarations::Declared(
            info.fields.iter().filter_map(|f| Some((f.name.clone(), f.destination.clone()?))).collect(),
        );
        if let Some(problem) = declared.problem(&settings) {
            return Err(LoadError(format!("its info declares a destination it may not: {problem}")));
        }
        if plugin.name.is_empty() {
            plugin.name = info.name.clone();
        }
        plugin.info = info;
        Ok(Arc::new(plugin))
    }

    fn store(&self, plugin: &Plugin, rules: Rules) -> Store<State> {
        let kind = plugin.kind as usize;
        let rules = Arc::new(rules);
        let name: Arc<str> = Arc::from(plugin.name.as_str());
        let denials = Arc::new(Denials::new(name.clone()));
        let mut wasi = WasiCtxBuilder::new();
        let (check, noted) = (rules.clone(), denials.clone());
        wasi.allow_ip_name_lookup(false).allow_tcp(true).allow_udp(true).socket_addr_check(move |addr, usage| {
            let (rules, denials) = (check.clone(), noted.clone());
            Box::pin(async move {
                match usage {
                    // Only ephemeral binds: no listening on chosen ports.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    // Datagrams: out to and in from allowed addresses only.
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                        match rules.check_addr(addr).await {
                            Ok(()) => true,
                            Err(denial) => {
                                denials.note(&format_args!("socket: {denial}"));
                                false
                            }
                        }
                    }
                    // No listening, ever.
                    SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                }
            })
        });
        let mut table = ResourceTable::new();
        table.set_max_capacity(RESOURCES_PER_CALL_MAX);
        let state = State {
            wasi: wasi.build(),
            table,
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                rules: rules.clone(),
                denials: denials.clone(),
                clients: self.http[kind].clone(),
                in_flight: Arc::new(Semaphore::new(HTTP_IN_FLIGHT_PER_CALL_MAX)),
            },
            limiter: Limiter {
                memory_max: plugin.limits.memory,
                exceeded: false,
                node: self.memory[kind].clone(),
                node_exceeded: false,
                held: 0,
            },
            plugin: name,
            rules,
            denials,
            resolvers: self.resolvers.clone(),
            log_lines: 0,
            sockets: SocketBudget { created: 0, held: Vec::new(), node: self.sockets[kind].clone() },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// The destination rules of one call of `plugin`: a check's (with its
    /// `target`) or a sink's.
    pub fn rules(&self, plugin: &Plugin, target: Option<&str>, config: &[(String, String)]) -> Rules {
        let resolvers: &[SocketAddr] = match plugin.kind {
            Kind::Check => &self.resolvers,
            Kind::Sink => &[],
        };
        Rules::new(Call {
            plugin: &plugin.name,
            target,
            config,
            declared: &plugin.declarations(),
            allow: &plugin.allow,
            resolvers,
            peer_port: self.peer_port(),
        })
    }

    /// Runs `call` on a fresh instance within the plugin's limits.
    async fn call<T, F>(&self, plugin: &Plugin, rules: Rules, deadline: Duration, call: F) -> Result<T, CallError>
    where
        F: AsyncFnOnce(&mut Store<State>) -> wasmtime::Result<T>,
    {
        let deadline = plugin.limits.timeout.unwrap_or(deadline);
        let name = plugin.name.clone();
        let permits = match plugin.kind {
            Kind::Check => &self.check_permits,
            Kind::Sink => &self.sink_permits,
        };
        let _permit = permits.acquire().await.map_err(|_| CallError::Unavailable {
            plugin: name.clone(),
            reason: "the plugin runtime is shutting down".into(),
        })?;
        let _ticking = self.ticker.enter();
        let mut store = self.store(plugin, rules);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(deadline, call(&mut store)).await;
        store.data().denials.finish();
        {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let stats = calls.entry((plugin.name.clone(), plugin.kind.as_str())).or_default();
            stats.calls += 1;
            stats.errors += u64::from(!matches!(outcome, Ok(Ok(_))));
            stats.seconds += started.elapsed().as_secs_f64();
            stats.memory_max = stats.memory_max.max(store.data().limiter.held as u64);
        }
        match outcome {
            Err(_) => Err(CallError::Timeout { plugin: name, after: deadline }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if store.data().limiter.exceeded => {
                let _ = error;
                Err(CallError::Memory { plugin: name, limit: plugin.limits.memory })
            }
            Ok(Err(_)) if store.data().limiter.node_exceeded => {
                let (_, budget) = self.memory_in_use();
                let share = self.memory[plugin.kind as usize].limit.load(Ordering::Relaxed);
                let reason = format!(
                    "the {} calls' share ({} MiB) of the node's plugin memory budget ({} MiB, \
                     settings.plugin_memory_mib) is in use by other calls",
                    plugin.kind.as_str(),
                    share / (1024 * 1024),
                    budget / (1024 * 1024)
                );
                Err(CallError::Busy { plugin: name, reason })
            }
            Ok(Err(error)) => Err(CallError::Crashed { plugin: name, reason: trap_reason(&error) }),
        }
    }

    async fn info(&self, plugin: &Plugin) -> Result<Info, CallError> {
        patiently(|| self.info_once(plugin)).await
    }

    async fn info_once(&self, plugin: &Plugin) -> Result<Info, CallError> {
        let t = SINK_TIMEOUT;
        Ok(match &plugin.pre {
            Pre::Check(pre) => convert::v1::info(
                self.call(plugin, Rules::none(&plugin.name), t, async |store| {
                    pre.instantiate_async(&mut *store).await?.qu_plugin_probe().call_info(&mut *store).await
                })
                .await?,
            ),
            Pre::Sink(pre) => convert::v1::info(
                self.call(plugin, Rules::none(&plugin.name), t, async |store| {
                    pre.instantiate_async(&mut *store).await?.qu_plugin_notify().call_info(&mut *store).await
                })
                .await?,
            ),
            Pre::Check2(pre) => convert::v2::info(
                self.call(plugin, Rules::none(&plugin.name), t, async |store| {
                    pre.instantiate_async(&mut *store).await?.qu_plugin_probe().call_info(&mut *store).await
                })
                .await?,
            ),
            Pre::Sink2(pre) => convert::v2::info(
                self.call(plugin, Rules::none(&plugin.name), t, async |store| {
                    pre.instantiate_async(&mut *store).await?.qu_plugin_notify().call_info(&mut *store).await
                })
                .await?,
            ),
        })
    }

    /// Asks a check plugin whether `config` and `target` are acceptable.
    pub async fn validate_check(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        target: &str,
    ) -> Result<(), CallError> {
        patiently(|| self.validate_check_once(plugin, config, target)).await
    }

    async fn validate_check_once(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        target: &str,
    ) -> Result<(), CallError> {
        let config = config.to_vec();
        let answer = match &plugin.pre {
            Pre::Check(pre) => self
                .call(plugin, Rules::none(&plugin.name), SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_probe().call_validate_config(&mut *store, &config, target).await
                })
                .await?
                .map_err(convert::v1::error),
            Pre::Check2(pre) => self
                .call(plugin, Rules::none(&plugin.name), SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_probe().call_validate_config(&mut *store, &config, target).await
                })
                .await?
                .map_err(convert::v2::error),
            _ => return Err(not_a(plugin, Kind::Check)),
        };
        answer.map_err(|error| CallError::Plugin { plugin: plugin.name.clone(), error })
    }

    /// Probes `target` once with a check plugin, within `timeout`.
    pub async fn check(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        target: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, CallError> {
        let rules = self.rules(plugin, Some(target), config);
        let config = config.to_vec();
        let answer = match &plugin.pre {
            Pre::Check(pre) => self
                .call(plugin, rules, timeout, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_probe().call_check(&mut *store, &config, target).await
                })
                .await?
                .map(convert::v1::outcome)
                .map_err(convert::v1::error),
            Pre::Check2(pre) => self
                .call(plugin, rules, timeout, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_probe().call_check(&mut *store, &config, target).await
                })
                .await?
                .map(convert::v2::outcome)
                .map_err(convert::v2::error),
            _ => return Err(not_a(plugin, Kind::Check)),
        };
        answer.map_err(|error| CallError::Plugin { plugin: plugin.name.clone(), error })
    }

    /// Asks a sink plugin whether an alert's `config` is acceptable.
    pub async fn validate_sink(&self, plugin: &Plugin, config: &[(String, String)]) -> Result<(), CallError> {
        patiently(|| self.validate_sink_once(plugin, config)).await
    }

    async fn validate_sink_once(&self, plugin: &Plugin, config: &[(String, String)]) -> Result<(), CallError> {
        let config = config.to_vec();
        let answer = match &plugin.pre {
            Pre::Sink(pre) => self
                .call(plugin, Rules::none(&plugin.name), SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_notify().call_validate_config(&mut *store, &config).await
                })
                .await?
                .map_err(convert::v1::error),
            Pre::Sink2(pre) => self
                .call(plugin, Rules::none(&plugin.name), SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_notify().call_validate_config(&mut *store, &config).await
                })
                .await?
                .map_err(convert::v2::error),
            _ => return Err(not_a(plugin, Kind::Sink)),
        };
        answer.map_err(|error| CallError::Plugin { plugin: plugin.name.clone(), error })
    }

    /// Delivers one event through a sink plugin (10 s unless the plugin's
    /// limits say otherwise).
    pub async fn send(
        &self,
        plugin: &Plugin,
        event: &AlertEvent,
        config: &[(String, String)],
    ) -> Result<(), CallError> {
        let rules = self.rules(plugin, None, config);
        let config = config.to_vec();
        let answer = match &plugin.pre {
            Pre::Sink(pre) => self
                .call(plugin, rules, SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_notify().call_send(&mut *store, event, &config).await
                })
                .await?
                .map_err(convert::v1::error),
            Pre::Sink2(pre) => {
                let event = convert::v2::event(event);
                self.call(plugin, rules, SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_notify().call_send(&mut *store, &event, &config).await
                })
                .await?
                .map_err(convert::v2::error)
            }
            _ => return Err(not_a(plugin, Kind::Sink)),
        };
        answer.map_err(|error| CallError::Plugin { plugin: plugin.name.clone(), error })
    }
}

/// Between each contract version's generated types and the host's own.
mod convert {
    use super::*;

    /// What is the same in every version: outcomes, errors, events.
    macro_rules! common {
        () => {
            pub fn outcome(outcome: types::ProbeOutcome) -> ProbeOutcome {
                ProbeOutcome {
                    status: match outcome.status {
                        types::Status::Up => Status::Up,
                        types::Status::Down => Status::Down,
                        types::Status::Degraded => Status::Degraded,
                    },
                    latency: Duration::from_micros(outcome.latency_us),
                    message: bounded(outcome.message, MESSAGE_CHARS_MAX),
                    metrics: outcome
                        .metrics
                        .into_iter()
                        .take(METRICS_MAX)
                        .map(|m| (bounded(m.name, METRIC_NAME_CHARS_MAX), m.value))
                        .collect(),
                }
            }

            pub fn error(error: types::PluginError) -> PluginError {
                let text = |m: String| bounded(m, MESSAGE_CHARS_MAX);
                match error {
                    types::PluginError::Config(m) => PluginError::Config(text(m)),
                    types::PluginError::Transient(r) => PluginError::Transient {
                        message: text(r.message),
                        retry_after: r.after_ms.map(Duration::from_millis),
                    },
                    types::PluginError::Permanent(m) => PluginError::Permanent(text(m)),
                }
            }

            fn info_with(info: types::PluginInfo, fields: Vec<Field>) -> Info {
                Info {
                    name: info.name,
                    version: info.version,
                    description: info.description,
                    target: info.target,
                    fields,
                }
            }
        };
    }

    pub mod v1 {
        use super::*;
        use crate::bindings::types;
        common!();

        pub fn info(mut info: types::PluginInfo) -> Info {
            let fields = std::mem::take(&mut info.config)
                .into_iter()
                .map(|f| Field {
                    name: f.name,
                    required: f.required,
                    default: f.default_value,
                    description: f.description,
                    destination: None,
                })
                .collect();
            info_with(info, fields)
        }
    }

    pub mod v2 {
        use super::*;
        use crate::bindings::v2::types;
        common!();

        pub fn info(mut info: types::PluginInfo) -> Info {
            let fields = std::mem::take(&mut info.config)
                .into_iter()
                .map(|f| Field {
                    name: f.name,
                    required: f.required,
                    default: f.default_value,
                    description: f.description,
                    destination: f.destination.map(|d| match d {
                        types::Destination::Url => DestinationKind::Url,
                        types::Destination::Address(port) => DestinationKind::Address(port),
                        types::Destination::Host(p) => {
                            DestinationKind::Host { port_setting: p.setting, defaults: p.defaults }
                        }
                    }),
                })
                .collect();
            info_with(info, fields)
        }

        /// The event as 0.2.0 spells it (the host keeps 0.1.0's).
        pub fn event(e: &AlertEvent) -> types::AlertEvent {
            let e = e.clone();
            types::AlertEvent {
                check_id: e.check_id,
                check_name: e.check_name,
                check_type: e.check_type,
                check_target: e.check_target,
                from_state: e.from_state,
                to_state: e.to_state,
                verb: e.verb,
                ok: e.ok,
                failing: e.failing,
                total: e.total,
                detail: e.detail,
                subject: e.subject,
                body: e.body,
                idempotency_key: e.idempotency_key,
                timestamp_ms: e.timestamp_ms,
                master: e.master,
                test: e.test,
            }
        }
    }
}

/// Runs an `info` or `validate-config` call, which reaches nothing: an
/// operator waits for it, so when the node's memory budget has no room it
/// is tried again for up to [`PATIENCE`] rather than refused.
async fn patiently<T, F: Future<Output = Result<T, CallError>>>(
    mut attempt: impl FnMut() -> F,
) -> Result<T, CallError> {
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Err(CallError::Busy { .. }) if started.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// The process's soft limit on open files.
fn open_file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(SOCKETS_NODE_MAX * 4)
}

/// Puts the call's and the node's socket budgets in front of WASI's socket
/// creation (`State::take_socket`), over what `add_to_linker_async` added.
fn budget_sockets(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
    linker.allow_shadowing(true);
    tcp_create_socket::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    udp_create_socket::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    linker.allow_shadowing(false);
    Ok(())
}

fn not_a(plugin: &Plugin, kind: Kind) -> CallError {
    CallError::Unavailable {
        plugin: plugin.name.clone(),
        reason: format!("it is a {} plugin, not a {} plugin", plugin.kind.as_str(), kind.as_str()),
    }
}

fn world_error(world: &str, error: &wasmtime::Error, exports: &[String]) -> LoadError {
    LoadError(format!(
        "does not fit the qu:plugin `{world}` world ({}); it exports: {}",
        short(error),
        exports.join(", ")
    ))
}

/// A trap's reason without backtraces or host internals.
fn trap_reason(error: &wasmtime::Error) -> String {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::UnreachableCodeReached => "it panicked (wasm `unreachable` executed)".into(),
            wasmtime::Trap::StackOverflow => "stack overflow".into(),
            other => format!("trap: {other}"),
        };
    }
    short(error)
}

fn short(error: &wasmtime::Error) -> String {
    let text = error.root_cause().to_string();
    let line = text.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file is one this runtime wrote itself (`store_cached`),
    // in qu's private data directory (0700), named by the sha256 of the
    // component it came from and the engine's compatibility hash; cached
    // artifacts are never received from peers or users.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_cached(component: &Component, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let bytes = component.serialize().map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}
