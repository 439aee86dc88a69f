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
use crate::host::{Hooks, Limiter, State};
use crate::rules::Rules;

include!(concat!(env!("OUT_DIR"), "/built_in.rs"));

/// The contract version this host serves.
pub const WIT_VERSION: &str = "0.1.0";
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
    Check,
    Sink,
}

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
    http: host::HttpClient,
    ticker: Ticker,
    compiles: Arc<CompileCounts>,
}

/// How this runtime's components were compiled since it started: from
/// their bytes, or taken from the on-disk cache.
#[derive(Debug, Default)]
struct CompileCounts {
    compiled: std::sync::atomic::AtomicU64,
    from_cache: std::sync::atomic::AtomicU64,
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
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError(format!("start the plugin engine: {e}")))?;

        let link = |e: wasmtime::Error| LoadError(format!("link plugin imports: {e}"));
        let mut checkers = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut checkers).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut checkers).map_err(link)?;
        Checker::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut checkers, |s| s).map_err(link)?;
        let mut sinks = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut sinks).map_err(link)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut sinks).map_err(link)?;
        Sink::add_to_linker::<_, wasmtime::component::HasSelf<State>>(&mut sinks, |s| s).map_err(link)?;

        let connector = qu_transport::client::https_connector(Duration::from_secs(10)).map_err(LoadError)?;
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(8)
            .build(connector);
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
            ticker,
            compiles: Arc::default(),
        }))
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
        let wants = |interface: &str| exports.iter().any(|e| e.starts_with(&format!("qu:plugin/{interface}@")));
        let (kind, pre) = if wants("probe") {
            let pre = self.checkers.instantiate_pre(&component).map_err(|e| world_error("checker", &e, &exports))?;
            (Kind::Check, Pre::Check(CheckerPre::new(pre).map_err(|e| world_error("checker", &e, &exports))?))
        } else if wants("notify") {
            let pre = self.sinks.instantiate_pre(&component).map_err(|e| world_error("sink", &e, &exports))?;
            (Kind::Sink, Pre::Sink(SinkPre::new(pre).map_err(|e| world_error("sink", &e, &exports))?))
        } else {
            return Err(LoadError(format!(
                "exports neither qu:plugin/probe@{WIT_VERSION} (a check) nor qu:plugin/notify@{WIT_VERSION} (a sink); it exports: {}",
                if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
            )));
        };
        let wit_version = exports
            .iter()
            .find_map(|e| e.strip_prefix("qu:plugin/probe@").or_else(|| e.strip_prefix("qu:plugin/notify@")))
            .unwrap_or(WIT_VERSION)
            .to_string();
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
        if plugin.name.is_empty() {
            plugin.name = info.name.clone();
        }
        plugin.info = info;
        Ok(Arc::new(plugin))
    }

    fn store(&self, plugin: &Plugin, rules: Rules) -> Store<State> {
        let rules = Arc::new(rules);
        let mut wasi = WasiCtxBuilder::new();
        let check = rules.clone();
        wasi.allow_ip_name_lookup(false).allow_tcp(true).allow_udp(true).socket_addr_check(move |addr, usage| {
            let rules = check.clone();
            Box::pin(async move {
                match usage {
                    // Only ephemeral binds: no listening on chosen ports.
                    SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    // Datagrams: out to and in from allowed addresses only.
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
                        rules.allows_addr(addr).await
                    }
                    // No listening, ever.
                    SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
                }
            })
        });
        let name: Arc<str> = Arc::from(plugin.name.as_str());
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: Hooks { rules: rules.clone(), plugin: name.clone(), client: self.http.clone(), denied: 0 },
            limiter: Limiter { memory_max: plugin.limits.memory, exceeded: false },
            plugin: name,
            rules,
            resolvers: self.resolvers.clone(),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
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
        let outcome = tokio::time::timeout(deadline, call(&mut store)).await;
        match outcome {
            Err(_) => Err(CallError::Timeout { plugin: name, after: deadline }),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if store.data().limiter.exceeded => {
                let _ = error;
                Err(CallError::Memory { plugin: name, limit: plugin.limits.memory })
            }
            Ok(Err(error)) => Err(CallError::Crashed { plugin: name, reason: trap_reason(&error) }),
        }
    }

    async fn info(&self, plugin: &Plugin) -> Result<Info, CallError> {
        let rules = Rules::default();
        let info = match &plugin.pre {
            Pre::Check(pre) => {
                self.call(plugin, rules, SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_probe().call_info(&mut *store).await
                })
                .await?
            }
            Pre::Sink(pre) => {
                self.call(plugin, rules, SINK_TIMEOUT, async |store| {
                    let instance = pre.instantiate_async(&mut *store).await?;
                    instance.qu_plugin_notify().call_info(&mut *store).await
                })
                .await?
            }
        };
        Ok(Info {
            name: info.name,
            version: info.version,
            description: info.description,
            target: info.target,
            fields: info
                .config
                .into_iter()
                .map(|f| Field {
                    name: f.name,
                    required: f.required,
                    default: f.default_value,
                    description: f.description,
                })
                .collect(),
        })
    }

    /// Asks a check plugin whether `config` and `target` are acceptable.
    pub async fn validate_check(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        target: &str,
    ) -> Result<(), CallError> {
        let Pre::Check(pre) = &plugin.pre else { return Err(not_a(plugin, Kind::Check)) };
        let rules = Rules::default();
        let config = config.to_vec();
        let answer = self
            .call(plugin, rules, SINK_TIMEOUT, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance.qu_plugin_probe().call_validate_config(&mut *store, &config, target).await
            })
            .await?;
        answer.map_err(|e| plugin_error(plugin, e))
    }

    /// Probes `target` once with a check plugin, within `timeout`.
    pub async fn check(
        &self,
        plugin: &Plugin,
        config: &[(String, String)],
        target: &str,
        timeout: Duration,
    ) -> Result<ProbeOutcome, CallError> {
        let Pre::Check(pre) = &plugin.pre else { return Err(not_a(plugin, Kind::Check)) };
        let rules = Rules::for_check(target, config, &plugin.allow, &self.resolvers);
        let config = config.to_vec();
        let answer = self
            .call(plugin, rules, timeout, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance.qu_plugin_probe().call_check(&mut *store, &config, target).await
            })
            .await?;
        let outcome = answer.map_err(|e| plugin_error(plugin, e))?;
        Ok(ProbeOutcome {
            status: match outcome.status {
                wit::Status::Up => Status::Up,
                wit::Status::Down => Status::Down,
                wit::Status::Degraded => Status::Degraded,
            },
            latency: Duration::from_micros(outcome.latency_us),
            message: bounded(outcome.message, MESSAGE_CHARS_MAX),
            metrics: outcome
                .metrics
                .into_iter()
                .take(METRICS_MAX)
                .map(|m| (bounded(m.name, METRIC_NAME_CHARS_MAX), m.value))
                .collect(),
        })
    }

    /// Asks a sink plugin whether an alert's `config` is acceptable.
    pub async fn validate_sink(&self, plugin: &Plugin, config: &[(String, String)]) -> Result<(), CallError> {
        let Pre::Sink(pre) = &plugin.pre else { return Err(not_a(plugin, Kind::Sink)) };
        let config = config.to_vec();
        let answer = self
            .call(plugin, Rules::default(), SINK_TIMEOUT, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance.qu_plugin_notify().call_validate_config(&mut *store, &config).await
            })
            .await?;
        answer.map_err(|e| plugin_error(plugin, e))
    }

    /// Delivers one event through a sink plugin (10 s unless the plugin's
    /// limits say otherwise).
    pub async fn send(
        &self,
        plugin: &Plugin,
        event: &AlertEvent,
        config: &[(String, String)],
    ) -> Result<(), CallError> {
        let Pre::Sink(pre) = &plugin.pre else { return Err(not_a(plugin, Kind::Sink)) };
        let rules = Rules::for_sink(config, &plugin.allow);
        let config = config.to_vec();
        let answer = self
            .call(plugin, rules, SINK_TIMEOUT, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance.qu_plugin_notify().call_send(&mut *store, event, &config).await
            })
            .await?;
        answer.map_err(|e| plugin_error(plugin, e))
    }
}

fn not_a(plugin: &Plugin, kind: Kind) -> CallError {
    CallError::Unavailable {
        plugin: plugin.name.clone(),
        reason: format!("it is a {} plugin, not a {} plugin", plugin.kind.as_str(), kind.as_str()),
    }
}

fn plugin_error(plugin: &Plugin, error: wit::PluginError) -> CallError {
    let text = |m: String| bounded(m, MESSAGE_CHARS_MAX);
    let error = match error {
        wit::PluginError::Config(m) => PluginError::Config(text(m)),
        wit::PluginError::Transient(r) => {
            PluginError::Transient { message: text(r.message), retry_after: r.after_ms.map(Duration::from_millis) }
        }
        wit::PluginError::Permanent(m) => PluginError::Permanent(text(m)),
    };
    CallError::Plugin { plugin: plugin.name.clone(), error }
}

fn world_error(world: &str, error: &wasmtime::Error, exports: &[String]) -> LoadError {
    LoadError(format!(
        "does not fit the qu:plugin@{WIT_VERSION} `{world}` world ({}); it exports: {}",
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
