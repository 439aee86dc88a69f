//! `qu plugin ...`: add, list, remove (through the daemon), and inspect and
//! run components locally, for plugin authors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use qu_daemon::control::{ControlRequest, ControlResponse};
use qu_plugin::{CallError, Limits, Plugin, Runtime, Status};

use crate::{call_ok, paths, render};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Add a plugin to the cluster (or a new version of one): validates the
    /// component here, stores it by sha256, replicates it to every node.
    Add {
        /// The name checks (`type: NAME`) and alerts use.
        name: String,
        /// The component, built with `cargo build --target wasm32-wasip2 --release`.
        file: PathBuf,
        /// A destination the plugin may reach besides the ones its checks or
        /// alerts name (repeatable): HOST or HOST:PORT.
        #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
        allow_host: Vec<String>,
        /// Memory cap of one call, in MiB (default 64, at most 256).
        #[arg(long, value_name = "MIB")]
        memory_mib: Option<u32>,
        /// Wall-time cap of one call, overriding the check's timeout (10 s for sinks).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the built-in and added plugins with their state on this node.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove an added plugin (refused while a check or alert uses it).
    Remove {
        /// The plugin's name.
        name: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what a component is: kind, WIT version, settings, requested capabilities.
    Inspect {
        /// The component file (.wasm).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a check plugin once from this machine, without a daemon (exit 0 when up).
    Run {
        /// A component file, or the name of a built-in or added plugin.
        plugin: String,
        /// What the check probes, as `qu check add` takes it (a host, a URL, ...).
        #[arg(long)]
        target: String,
        /// A setting of the check (repeatable): KEY=VALUE.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A destination the plugin may reach besides the target (repeatable).
        #[arg(long = "allow-host", value_name = "HOST[:PORT]")]
        allow_host: Vec<String>,
        /// Wall-time cap of the call.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Add { name, file, allow_host, memory_mib, timeout, json } => {
            let path = std::fs::canonicalize(&file).with_context(|| format!("{}", file.display()))?;
            let request =
                ControlRequest::PluginAdd { name: name.clone(), path, allow: allow_host, memory_mib, timeout };
            crate::committed(call_ok(request)?, &format!("plugin {name} added"), json)
        }
        PluginCommand::Remove { name, json } => crate::committed(
            call_ok(ControlRequest::PluginRemove { name: name.clone() })?,
            &format!("plugin {name} removed"),
            json,
        ),
        PluginCommand::List { json } => {
            let ControlResponse::Plugins { plugins } = call_ok(ControlRequest::PluginList)? else {
                bail!("unexpected answer from the daemon");
            };
            if json {
                crate::print_json(&plugins)?;
                return Ok(());
            }
            let mut rows = vec![["NAME", "KIND", "VERSION", "SOURCE", "SHA256", "STATUS"].map(String::from).to_vec()];
            for p in &plugins {
                rows.push(vec![
                    p.name.clone(),
                    p.kind.clone(),
                    if p.version.is_empty() { "-".into() } else { p.version.clone() },
                    if p.built_in { "built-in".into() } else { "added".into() },
                    p.sha256.chars().take(16).collect::<String>(),
                    p.status.clone(),
                ]);
            }
            print!("{}", render::table(&rows));
            Ok(())
        }
        PluginCommand::Inspect { file, json } => inspect(&file, json),
        PluginCommand::Run { plugin, target, set, allow_host, timeout, json } => {
            run_once(&plugin, &target, &set, allow_host, timeout, json)
        }
    }
}

fn block_on<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(future))
}

fn load(runtime: &Arc<Runtime>, name: Option<&str>, bytes: Vec<u8>, allow: Vec<String>) -> anyhow::Result<Arc<Plugin>> {
    block_on(runtime.load(name, Arc::from(bytes), allow, Limits::default()))?.map_err(|e| anyhow::anyhow!(e))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    qu_daemon::plugins::read_component(path).map_err(anyhow::Error::msg)
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes = read(file)?;
    let runtime = Runtime::new(None)?;
    let plugin = load(&runtime, None, bytes, Vec::new()).with_context(|| format!("{}", file.display()))?;
    let info = &plugin.info;
    let capabilities: Vec<&String> = plugin.imports.iter().filter(|i| !is_baseline(i)).collect();
    if json {
        let fields: Vec<serde_json::Value> = info
            .fields
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "required": f.required, "default": f.default, "description": f.description,
                    "destination": f.destination.as_ref().map(destination_text),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "name": info.name, "kind": plugin.kind.as_str(), "version": info.version,
            "wit_version": plugin.wit_version, "description": info.description, "target": info.target,
            "sha256": plugin.sha256, "size": plugin.size, "settings": fields, "imports": plugin.imports,
        });
        crate::print_json(&doc)?;
        return Ok(());
    }
    println!("name        {}", info.name);
    println!("kind        {}", plugin.kind.as_str());
    println!("version     {}", info.version);
    println!("wit         qu:plugin@{}", plugin.wit_version);
    println!("sha256      {}", plugin.sha256);
    println!("size        {} bytes", plugin.size);
    println!("about       {}", info.description);
    if !info.target.is_empty() {
        println!("target      {}", info.target);
    }
    println!("\nSETTINGS");
    if info.fields.is_empty() {
        println!("(none)");
    }
    for f in &info.fields {
        let need = if f.required {
            "required".to_string()
        } else {
            f.default.as_ref().map_or("optional".to_string(), |d| format!("default {d}"))
        };
        match &f.destination {
            Some(kind) => {
                println!("{:<14} {:<16} {} [destination: {}]", f.name, need, f.description, destination_text(kind))
            }
            None => println!("{:<14} {:<16} {}", f.name, need, f.description),
        }
    }
    if plugin.wit_version == "0.1.0" {
        println!(
            "(built against qu:plugin@0.1.0, which declares no destinations: only settings whose value is a URL open it)"
        );
    }
    println!("\nCAPABILITIES (beyond clocks, random and logging; all limited to allowed destinations)");
    if capabilities.is_empty() {
        println!("(none)");
    }
    for c in capabilities {
        println!("{c}");
    }
    Ok(())
}

/// How `qu plugin inspect` names what a setting opens.
fn destination_text(kind: &qu_plugin::rules::DestinationKind) -> String {
    use qu_plugin::rules::DestinationKind;
    match kind {
        DestinationKind::Url => "url".into(),
        DestinationKind::Address(Some(port)) => format!("host:port, port {port} by default"),
        DestinationKind::Address(None) => "host:port".into(),
        DestinationKind::Host { port_setting, defaults } => {
            let defaults: Vec<String> = defaults.iter().map(u16::to_string).collect();
            format!("host, port from `{port_setting}` (default {})", defaults.join(" or "))
        }
    }
}

/// Imports every Rust component has (std's runtime) or that grant nothing.
fn is_baseline(import: &str) -> bool {
    ["wasi:cli/", "wasi:clocks/", "wasi:random/", "wasi:io/", "wasi:filesystem/", "qu:plugin/log@", "qu:plugin/types@"]
        .iter()
        .any(|p| import.starts_with(p))
}

fn run_once(
    plugin: &str,
    target: &str,
    set: &[String],
    allow: Vec<String>,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let mut settings = Vec::new();
    for pair in set {
        let Some((key, value)) = pair.split_once('=') else { bail!("--set {pair}: expected KEY=VALUE") };
        settings.push((key.trim().to_string(), value.to_string()));
    }
    let (name, bytes, entry) = locate(plugin)?;
    // What the sandbox refuses is logged as a warning, with how to allow it.
    quiet_logging();
    let runtime = Runtime::new(None)?;
    if let Some(port) = this_node_peer_port() {
        runtime.set_peer_port(port);
    }
    // An added plugin runs with its entry's allow list and limits, as on the cluster.
    let (allow, limits) = match &entry {
        Some(entry) => {
            let mut all = entry.allow.clone();
            all.extend(allow);
            (all, qu_daemon::plugins::limits_of(&entry.limits))
        }
        None => (allow, Limits::default()),
    };
    let plugin =
        block_on(runtime.load(name.as_deref(), Arc::from(bytes), allow, limits))?.map_err(|e| anyhow::anyhow!(e))?;
    if plugin.kind != qu_plugin::Kind::Check {
        bail!("{} is a sink plugin; `qu plugin run` runs check plugins", plugin.name);
    }
    let validated = block_on(runtime.validate_check(&plugin, &settings, target))?;
    if let Err(error) = validated {
        bail!("{}", error_text(&error));
    }
    let answer = block_on(runtime.check(&plugin, &settings, target, timeout))?;
    let (state, latency, detail, up) = match &answer {
        Ok(found) => {
            let state = match found.status {
                Status::Up => "up",
                Status::Down => "down",
                Status::Degraded => "degraded",
            };
            (state, found.latency.as_millis(), found.message.clone(), found.status == Status::Up)
        }
        Err(error) => ("down", 0, error_text(error), false),
    };
    if json {
        let metrics: Vec<serde_json::Value> = match &answer {
            Ok(found) => found.metrics.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect(),
            Err(_) => Vec::new(),
        };
        let doc = serde_json::json!({"state": state, "latency_ms": latency, "detail": detail, "metrics": metrics});
        crate::print_json(&doc)?;
    } else {
        println!("{state}  {latency} ms  {detail}");
    }
    if up { Ok(()) } else { std::process::exit(1) }
}

/// Warnings and errors to stderr (`RUST_LOG` overrides): the sandbox's
/// denials, each naming what it refused and how to allow it.
fn quiet_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The peer port of the node whose data directory this is, if it is one:
/// a plugin run here reaches it only as a daemon's plugins would.
fn this_node_peer_port() -> Option<u16> {
    let paths = paths().ok()?;
    let text = std::fs::read_to_string(paths.data.node_yaml()).ok()?;
    Some(qu_core::config::NodeConfig::parse(&text).ok()?.port)
}

fn error_text(error: &CallError) -> String {
    error.to_string()
}

/// A component file, or a plugin by name: built-in, or added (its blob in
/// this node's data directory).
fn locate(plugin: &str) -> anyhow::Result<(Option<String>, Vec<u8>, Option<qu_core::config::PluginEntry>)> {
    let path = Path::new(plugin);
    if plugin.ends_with(".wasm") || path.is_file() {
        return Ok((None, read(path)?, None));
    }
    let paths = paths()?;
    if let Ok(text) = qu_store::read_text(&paths.data.cluster_yaml())
        && let Ok(config) = qu_core::config::ClusterConfig::parse(&text)
        && let Some(entry) = config.plugins.iter().find(|p| p.name == plugin)
    {
        let blob = paths.data.plugin_blob(&entry.sha256);
        let bytes = std::fs::read(&blob).with_context(|| format!("plugin {plugin}: {}", blob.display()))?;
        if qu_plugin::sha256_hex(&bytes) != entry.sha256 {
            bail!("plugin {plugin}: {} does not match its sha256; the daemon fetches it again", blob.display());
        }
        return Ok((Some(plugin.to_string()), bytes, Some(entry.clone())));
    }
    match qu_plugin::BUILT_IN.iter().find(|(name, _)| *name == plugin) {
        Some((name, bytes)) => Ok((Some(name.to_string()), bytes.to_vec(), None)),
        None => bail!(
            "no plugin named {plugin} (built-in: {}) and no such file",
            qu_plugin::BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ),
    }
}
