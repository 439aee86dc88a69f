//! `qu`: the command-line interface and daemon entry point. Parses
//! arguments, calls the daemon (or the daemon library for `init`/`serve`),
//! renders results. No business logic lives here.

mod alert;
mod check;
mod config;
mod demo;
mod plugin;
mod render;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use qu_daemon::Paths;
use qu_daemon::control::{self, ControlRequest, ControlResponse};
use qu_daemon::init::{InitOptions, init};

/// How long the CLI waits for the daemon's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "qu",
    version,
    about = "qu (quptime): a quorum-based uptime monitor",
    long_about = "qu watches HTTP, TCP and ICMP endpoints from several cooperating nodes. A check is DOWN only \
                  when a majority of nodes agree; one elected master sends the alerts; all cluster state lives \
                  in one replicated cluster.yaml.\n\nFiles live in $QUPTIME_DIR (default /etc/quptime as root, \
                  ~/.config/quptime otherwise); the daemon's control socket is $QUPTIME_SOCKET."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this node's identity, node.yaml and a one-member cluster.yaml.
    Init(InitArgs),
    /// Run the daemon in the foreground (logs to stderr; SIGTERM stops it cleanly).
    Serve,
    /// Show this node's view of the cluster: term, master, quorum, peers, checks.
    Status {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the version of this binary.
    Version {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions for qu on stdout (e.g. `qu completions bash > /etc/bash_completion.d/qu`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for qu and every subcommand (qu.1, qu-check-add.1, ...) into DIR.
    Man {
        /// The directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// Check configuration files offline (`qu config validate [FILE]`).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// List, add and remove the cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Show or change cluster-wide settings.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Add, list, edit, remove, enable and disable checks.
    #[command(subcommand)]
    Check(check::CheckCommand),
    /// Add, list, edit, remove, enable, disable and test alerts.
    #[command(subcommand)]
    Alert(alert::AlertCommand),
    /// Add, list, remove, inspect and run WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Run a local demo cluster on loopback in a temporary directory.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List the members with their liveness as this node sees it.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Invite a node that was initialised with this cluster's secret and is running.
    ///
    /// Shows the node's id and key fingerprint and asks to confirm (use --yes,
    /// or --fingerprint to pin the key in scripts), proves the cluster secret
    /// in both directions without sending it, and commits the new member.
    Add {
        /// HOST:PORT where the new node listens.
        addr: String,
        /// Add without asking.
        #[arg(long, conflicts_with = "fingerprint")]
        yes: bool,
        /// Add only if the node presents exactly this key (sha256:HEX).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a member; every node drops its trust and its connections.
    Remove {
        /// The member's node id (see `qu node list`).
        node_id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show the settings, or change one: `qu cluster settings set KEY VALUE`.
    Settings {
        #[command(subcommand)]
        set: Option<SettingsCommand>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Set a cluster setting to VALUE (every node applies it; see docs/configuration.md).
    Set {
        #[arg(help = settable_keys_help())]
        key: String,
        /// The new value: a duration (1s, 2m), a whole number, or true/false, as KEY takes.
        value: String,
    },
}

/// The help of `qu cluster settings set KEY`: every key the daemon takes.
fn settable_keys_help() -> String {
    format!("One of: {}", qu_core::config::SETTING_KEYS.join(", "))
}

#[derive(Args)]
struct InitArgs {
    /// HOST:PORT other nodes dial to reach this one, e.g. alpha.example.com:9901.
    #[arg(long, env = "QUPTIME_ADVERTISE")]
    advertise: String,
    /// Address the peer listener binds [default: 0.0.0.0].
    #[arg(long, env = "QUPTIME_BIND_ADDR")]
    bind: Option<IpAddr>,
    /// Port the peer listener binds [default: the advertised port].
    #[arg(long, env = "QUPTIME_BIND_PORT")]
    port: Option<u16>,
    /// The cluster secret of an existing cluster. Omit on the first node to generate one.
    #[arg(long, env = "QUPTIME_CLUSTER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    qu_store::crash_points_from_env();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = one_line(&error);
            eprintln!("error: {message}");
            if error.downcast_ref::<OutcomeUnknown>().is_some() {
                ExitCode::from(EXIT_UNKNOWN)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already carries (our errors embed their sources).
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message.replace('\n', " ")
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => run_init(args),
        Command::Serve => run_serve(),
        Command::Status { json } => run_status(json),
        Command::Version { json } => {
            // A build with crash points (the fault suite's) says so.
            if json && qu_store::HAS_CRASH_POINTS {
                print_json(&serde_json::json!({ "version": qu_daemon::VERSION, "crash_points": true }))?;
            } else if json {
                print_json(&serde_json::json!({ "version": qu_daemon::VERSION }))?;
            } else if qu_store::HAS_CRASH_POINTS {
                println!("qu {} (with crash points, for fault testing only)", qu_daemon::VERSION);
            } else {
                println!("qu {}", qu_daemon::VERSION);
            }
            Ok(())
        }
        Command::Node(command) => run_node(command),
        Command::Check(command) => check::run(command),
        Command::Plugin(command) => plugin::run(command),
        Command::Alert(command) => alert::run(command),
        Command::Cluster(ClusterCommand::Settings { set, json }) => run_settings(set, json),
        Command::Config(command) => config::run(command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "qu", &mut script);
            // A reader that stops early (`| head`) is not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.context("write the completions"),
            }
        }
        Command::Man { dir } => write_man_pages(&dir),
        Command::Demo(args) => demo::run(args),
    }
}

/// Calls the daemon and turns its error answer into an error.
fn call_ok(request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let paths = paths()?;
    match call(&paths.socket, request)? {
        ControlResponse::Error { message } => bail!(message),
        other => Ok(other),
    }
}

fn unexpected(answer: ControlResponse) -> anyhow::Error {
    anyhow::anyhow!("unexpected answer from the daemon: {answer:?} (is it the same version as this qu?)")
}

fn run_node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::List { json } => match call_ok(ControlRequest::NodeList)? {
            ControlResponse::Nodes { peers } => {
                if json {
                    print_json(&peers)?;
                } else {
                    print!("{}", render::peers_text(&peers));
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        NodeCommand::Add { addr, yes, fingerprint, json } => node_add(addr, yes, fingerprint, json),
        NodeCommand::Remove { node_id, json } => {
            let node_id = node_id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            match call_ok(ControlRequest::NodeRemove { node_id })? {
                ControlResponse::Committed { term, version, .. } => {
                    if json {
                        print_json(
                            &serde_json::json!({ "removed": node_id, "config_version": version, "term": term }),
                        )?;
                    } else {
                        println!("removed node {node_id}; config version {version}");
                    }
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

fn node_add(addr: String, yes: bool, fingerprint: Option<String>, json: bool) -> anyhow::Result<()> {
    let expected: Option<qu_core::Fingerprint> =
        fingerprint.map(|f| f.parse()).transpose().map_err(|e| anyhow::anyhow!("--fingerprint: {e}"))?;
    let (node_id, key) = match call_ok(ControlRequest::NodeProbe { addr: addr.clone() })? {
        ControlResponse::Probe { node_id, fingerprint, advertise, version } => {
            if !json {
                eprintln!("node         {node_id}");
                eprintln!("fingerprint  {fingerprint}");
                eprintln!("address      {addr} (advertises {advertise}), qu {version}");
            }
            (node_id, fingerprint)
        }
        other => return Err(unexpected(other)),
    };
    match expected {
        Some(expected) if expected != key => {
            bail!("the node at {addr} presents key {key}, not the expected {expected}; not adding it")
        }
        Some(_) => {}
        None if yes => {}
        None => confirm(&format!("Add node {node_id} to the cluster?"))?,
    }
    match call_ok(ControlRequest::NodeAdd { addr, fingerprint: key })? {
        ControlResponse::Committed { term, version, node_id, .. } => {
            let node_id = node_id.map(|n| n.to_string()).unwrap_or_default();
            if json {
                print_json(&serde_json::json!({ "node_id": node_id, "config_version": version, "term": term }))?;
            } else {
                println!("added node {node_id}; config version {version}");
            }
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

/// Asks on the terminal; refuses when there is none to ask on.
fn confirm(question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("not confirmed: pass --yes, or --fingerprint sha256:... to pin the key (no terminal to ask on)");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") { Ok(()) } else { bail!("not added") }
}

fn run_settings(set: Option<SettingsCommand>, json: bool) -> anyhow::Result<()> {
    match set {
        None => match call_ok(ControlRequest::Settings)? {
            ControlResponse::Settings(view) => {
                if json {
                    print_json(&view)?;
                } else {
                    print!("{}", render::settings_text(&view));
                }
                Ok(())
            }
            other => Err(unexpected(other)),
        },
        Some(SettingsCommand::Set { key, value }) => {
            match call_ok(ControlRequest::SettingsSet { key: key.clone(), value: value.clone() })? {
                ControlResponse::Committed { term, version, .. } => {
                    if json {
                        print_json(
                            &serde_json::json!({ "key": key, "value": value, "config_version": version, "term": term }),
                        )?;
                    } else {
                        println!("set {key} = {value}; config version {version}");
                    }
                    Ok(())
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

pub(crate) fn paths() -> anyhow::Result<Paths> {
    Paths::from_env().map_err(anyhow::Error::msg)
}

fn run_init(args: InitArgs) -> anyhow::Result<()> {
    let paths = paths()?;
    let options = InitOptions { advertise: args.advertise, bind: args.bind, port: args.port, secret: args.secret };
    let report = init(&paths.data, options)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if args.json {
        print_json(&render::init_json(&report, paths.data.root()))?;
    } else {
        print!("{}", render::init_text(&report, paths.data.root()));
    }
    Ok(())
}

fn run_serve() -> anyhow::Result<()> {
    init_logging();
    let paths = paths()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start runtime")?;
    runtime.block_on(qu_daemon::serve::serve(&paths)).map_err(anyhow::Error::msg)
}

fn run_status(json: bool) -> anyhow::Result<()> {
    match call_ok(ControlRequest::Status)? {
        ControlResponse::Status(view) => {
            if json {
                print_json(&view)?;
            } else {
                print!("{}", render::status_text(&view));
            }
            Ok(())
        }
        other => Err(unexpected(other)),
    }
}

pub(crate) fn call(socket: &std::path::Path, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start runtime")?;
    match runtime.block_on(control::call(socket, &request, CONTROL_TIMEOUT)) {
        Ok(ControlResponse::Unknown { message }) => Err(OutcomeUnknown(message).into()),
        Ok(answer) => Ok(answer),
        Err(error @ (control::ControlError::Timeout(_) | control::ControlError::Lost { .. })) => Err(OutcomeUnknown(format!(
            "{error}; if this was a change, its outcome is unknown: see `qu status` (its config version) and `qu check list` or `qu alert list` before retrying"
        ))
        .into()),
        Err(error) => Err(error.into()),
    }
}

/// Writes `qu.1` and a page for every subcommand (`qu-check-add.1`, ...).
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut written = 0;
    fn each(command: &clap::Command, name: String, dir: &std::path::Path, written: &mut usize) -> anyhow::Result<()> {
        // clap names are `&'static str` without its `string` feature; this
        // runs once per page of a one-shot command.
        let command = command.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
        *written += 1;
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            each(sub, format!("{name}-{}", sub.get_name()), dir, written)?;
        }
        Ok(())
    }
    let mut root = Cli::command();
    root.build();
    each(&root, "qu".into(), dir, &mut written)?;
    println!("wrote {written} man pages to {}", dir.display());
    Ok(())
}

/// Prints the answer to a change: `DONE (ID); config version N`, or with
/// `json` `{"config_version", "term", "id"}` (`id` of what it created).
pub(crate) fn committed(answer: ControlResponse, done: &str, json: bool) -> anyhow::Result<()> {
    let ControlResponse::Committed { term, version, created, .. } = answer else { return Err(unexpected(answer)) };
    if json {
        let mut doc = serde_json::json!({ "config_version": version, "term": term });
        if let Some(id) = created {
            doc["id"] = id.into();
        }
        return print_json(&doc);
    }
    match created {
        Some(id) => println!("{done} ({id}); config version {version}"),
        None => println!("{done}; config version {version}"),
    }
    Ok(())
}

/// Prints one JSON document, pretty (every `--json` output has one shape).
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A change that may or may not have been applied (exit code 3).
#[derive(Debug)]
pub(crate) struct OutcomeUnknown(String);

impl std::fmt::Display for OutcomeUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutcomeUnknown {}

/// Exit code of a change whose outcome is unknown (CLI.md, Operating).
const EXIT_UNKNOWN: u8 = 3;

/// Logs to stderr: `RUST_LOG` filters (default `info`); no colours unless
/// stderr is a terminal; no timestamp when stderr is the journal (systemd
/// sets `JOURNAL_STREAM`), which stamps every line itself. With
/// `QUPTIME_LOG_FORMAT=json`, one JSON object a line instead (timestamp,
/// level, fields), for log shippers.
pub(crate) fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match std::env::var("QUPTIME_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().with_ansi(false).init(),
        Ok(other) if other != "text" => {
            logs.init();
            tracing::warn!("QUPTIME_LOG_FORMAT={other} is neither text nor json; logging text");
        }
        _ if stderr_is_the_journal() => logs.without_time().init(),
        _ => logs.init(),
    }
}

/// Whether stderr is the stream systemd connected to the journal: its
/// `JOURNAL_STREAM` (`DEVICE:INODE`) names this very file.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

pub(crate) fn data_dir_display(path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command, subcommand, argument and flag says what it is for:
    /// `--help` never shows a bare name.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
                    missing.push(format!("{name} (the command)"));
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "qu", &mut missing);
        assert!(missing.is_empty(), "no help for:\n{}", missing.join("\n"));
    }
}
