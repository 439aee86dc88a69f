//! `qu check ...`: build the change from flags, send it, render the answer.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use qu_core::config::{Check, CheckChanges};
use qu_daemon::control::{ControlRequest, ControlResponse};

use crate::call_ok;

#[derive(Subcommand)]
pub enum CheckCommand {
    /// Add a check: `qu check add http|tcp|icmp|PLUGIN NAME TARGET [flags]`.
    Add {
        /// Check type: http, tcp, icmp, or a check plugin (built in: dns, tls;
        /// or one added with `qu plugin add`), whose settings go in --set.
        kind: String,
        /// A unique name.
        name: String,
        /// URL (http), HOST:PORT (tcp) or host (icmp).
        target: String,
        #[command(flatten)]
        flags: CheckFlags,
    },
    /// List the checks and their committed states.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a check: only the flags given change.
    Edit {
        /// The check's name or id.
        check: String,
        /// A new target.
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        flags: CheckFlags,
    },
    /// Remove a check.
    Remove {
        /// The check's name or id.
        check: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Probe a target once from this machine, without a daemon (exit 0 when up).
    Run {
        /// Check type: http, tcp or icmp.
        kind: String,
        /// URL (http), HOST:PORT (tcp) or host (icmp).
        target: String,
        #[command(flatten)]
        flags: ProbeFlags,
        /// Print JSON (outcome, latency_ms, detail) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start probing a disabled check again.
    Enable {
        /// The check's name or id.
        check: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop probing a check (its state is kept).
    Disable {
        /// The check's name or id.
        check: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a synthetic transition of a real check through every effective alert (its state is unchanged).
    Test {
        /// The check's name or id.
        check: String,
        /// The transition to send: down, up, or recovered (an up after a down).
        #[arg(long, default_value = "down", value_parser = ["down", "up", "recovered"])]
        state: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// How a probe runs: flags of `add`, `edit` and `run`. The defaults named
/// are what a new check (or a run) gets; `edit` changes only what it is
/// given.
#[derive(Args, Default)]
pub struct ProbeFlags {
    /// Expected HTTP status: a code (200), a class (2xx) or ranges (200-299,301); a new check expects 2xx.
    #[arg(long)]
    expect: Option<String>,
    /// Text the HTTP body must contain (within its first 1 MiB); not with --method HEAD.
    #[arg(long)]
    body_match: Option<String>,
    /// HTTP method: GET, HEAD, POST, PUT, DELETE, OPTIONS or PATCH; a new check uses GET.
    #[arg(long)]
    method: Option<String>,
    /// Skip TLS certificate verification for HTTPS.
    #[arg(long)]
    insecure: bool,
    /// Redirects to follow (0-20); a new check follows 5.
    #[arg(long)]
    max_redirects: Option<u32>,
    /// Time a probe may take, below the interval; a new check gets 10s, or half its interval if that is shorter.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Type setting KEY=VALUE (repeatable); an empty VALUE removes it on edit.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Flags of `add` and `edit`: the probe's, its schedule and its alerts.
#[derive(Args, Default)]
pub struct CheckFlags {
    #[command(flatten)]
    probe: ProbeFlags,
    /// Time between probes; a new check gets 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Alerts to notify (names or ids, comma-separated; '' clears the list on edit).
    #[arg(long, value_delimiter = ',')]
    alerts: Option<Vec<String>>,
    /// Default alerts not to notify for this check (comma-separated; '' clears the list on edit).
    #[arg(long, value_delimiter = ',')]
    suppress: Option<Vec<String>>,
    /// Rounds a DOWN verdict must hold before it commits, for this check (1-100; 0 on edit: the cluster's hysteresis).
    #[arg(long, value_name = "N")]
    rounds_down: Option<u32>,
    /// Rounds an UP verdict must hold before it commits, for this check (1-100; 0 on edit: the cluster's hysteresis).
    #[arg(long, value_name = "N")]
    rounds_up: Option<u32>,
    /// Print JSON (the config version, and the id of a new check) instead of text.
    #[arg(long)]
    json: bool,
}

impl ProbeFlags {
    fn settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut settings = BTreeMap::new();
        for pair in &self.set {
            let Some((key, value)) = pair.split_once('=') else { bail!("--set {pair}: expected KEY=VALUE") };
            settings.insert(key.trim().to_string(), value.to_string());
        }
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                settings.insert(key.to_string(), value);
            }
        };
        put("expect", self.expect.clone());
        put("body_match", self.body_match.clone());
        put("method", self.method.clone());
        put("max_redirects", self.max_redirects.map(|n| n.to_string()));
        put("insecure", self.insecure.then(|| "true".to_string()));
        Ok(settings)
    }
}

pub fn run(command: CheckCommand) -> anyhow::Result<()> {
    let (request, done, json) = match command {
        CheckCommand::List { json } => return list(json),
        CheckCommand::Run { kind, target, flags, json } => return run_once(&kind, &target, &flags, json),
        CheckCommand::Test { check, state, json } => {
            return crate::alert::tested(call_ok(ControlRequest::CheckTest { check, state })?, json);
        }
        CheckCommand::Add { kind, name, target, flags } => {
            let interval = flags.interval.unwrap_or(Duration::from_secs(30));
            let check = Check {
                id: String::new(),
                name: name.clone(),
                kind,
                target,
                interval,
                timeout: flags.probe.timeout.unwrap_or_else(|| (interval / 2).min(Duration::from_secs(10))),
                settings: flags.probe.settings()?,
                alert_ids: flags.alerts.clone().unwrap_or_default(),
                suppress_alert_ids: flags.suppress.clone().unwrap_or_default(),
                disabled: false,
                rounds_down: flags.rounds_down.filter(|n| *n > 0),
                rounds_up: flags.rounds_up.filter(|n| *n > 0),
            };
            (ControlRequest::CheckAdd { check: Box::new(check) }, format!("added check {name}"), flags.json)
        }
        CheckCommand::Edit { check, target, flags } => {
            let changes = CheckChanges {
                target,
                interval: flags.interval,
                timeout: flags.probe.timeout,
                settings: flags.probe.settings()?,
                alert_ids: flags.alerts.clone(),
                suppress_alert_ids: flags.suppress.clone(),
                rounds_down: flags.rounds_down,
                rounds_up: flags.rounds_up,
            };
            (
                ControlRequest::CheckEdit { check: check.clone(), changes: Box::new(changes) },
                format!("edited check {check}"),
                flags.json,
            )
        }
        CheckCommand::Remove { check, json } => {
            (ControlRequest::CheckRemove { check: check.clone() }, format!("removed check {check}"), json)
        }
        CheckCommand::Enable { check, json } => (
            ControlRequest::CheckSetDisabled { check: check.clone(), disabled: false },
            format!("enabled check {check}"),
            json,
        ),
        CheckCommand::Disable { check, json } => (
            ControlRequest::CheckSetDisabled { check: check.clone(), disabled: true },
            format!("disabled check {check}"),
            json,
        ),
    };
    crate::committed(call_ok(request)?, &done, json)
}

fn run_once(kind: &str, target: &str, flags: &ProbeFlags, json: bool) -> anyhow::Result<()> {
    let spec = match qu_core::config::NativeSpec::parse(kind, target, &flags.settings()?) {
        Ok(Some(spec)) => spec,
        Ok(None) => bail!("`{kind}` is not a native check type (http, tcp, icmp)"),
        Err(problems) => bail!(problems.join("; ")),
    };
    let timeout = flags.timeout.unwrap_or(Duration::from_secs(10));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(qu_probe::Probes::new().run("run", &spec, timeout));
    let outcome = match result.outcome {
        qu_core::monitor::Outcome::Up => "up",
        qu_core::monitor::Outcome::Down => "down",
        qu_core::monitor::Outcome::Unavailable => "unavailable",
    };
    if json {
        crate::print_json(
            &serde_json::json!({ "outcome": outcome, "latency_ms": result.latency_ms, "detail": result.detail }),
        )?;
    } else {
        println!("{outcome}  {} ms  {}", result.latency_ms, result.detail);
    }
    if result.outcome == qu_core::monitor::Outcome::Up { Ok(()) } else { std::process::exit(1) }
}

fn list(json: bool) -> anyhow::Result<()> {
    let ControlResponse::Checks { checks } = call_ok(ControlRequest::CheckList)? else {
        bail!("unexpected answer from the daemon");
    };
    if json {
        crate::print_json(&checks)?;
        return Ok(());
    }
    let mut rows = vec![["ID", "NAME", "TYPE", "TARGET", "INTERVAL", "STATE", "ENABLED"].map(String::from).to_vec()];
    for c in &checks {
        rows.push(vec![
            c.id.clone(),
            c.name.clone(),
            c.kind.clone(),
            c.target.clone(),
            c.interval.clone(),
            c.state.clone(),
            if c.disabled { "no".into() } else { "yes".into() },
        ]);
    }
    print!("{}", crate::render::table(&rows));
    Ok(())
}
