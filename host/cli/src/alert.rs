//! `qu alert ...` and `qu check test`: build the change or test from flags,
//! send it, render the answer. Secrets are never printed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use qu_core::config::{Alert, AlertChanges};
use qu_daemon::control::{ControlRequest, ControlResponse, TestResult};

use crate::{call_ok, render, unexpected};

#[derive(Subcommand)]
pub enum AlertCommand {
    /// Add an alert: `qu alert add discord|email|webhook|PLUGIN NAME [flags]`.
    Add {
        /// Sink: discord, email, webhook, or a sink plugin added with `qu plugin add`.
        kind: String,
        /// A unique name.
        name: String,
        #[command(flatten)]
        flags: AlertFlags,
    },
    /// List the alerts, with their last delivery and pending ones (secrets masked).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change an alert: only the flags given change.
    Edit {
        /// The alert's name or id.
        alert: String,
        #[command(flatten)]
        flags: AlertFlags,
    },
    /// Remove an alert (checks stop referring to it).
    Remove {
        /// The alert's name or id.
        alert: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deliver again through a disabled alert.
    Enable {
        /// The alert's name or id.
        alert: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering through an alert (its settings are kept).
    Disable {
        /// The alert's name or id.
        alert: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make an alert a default one (every check gets it unless it suppresses it), or not.
    Default {
        /// The alert's name or id.
        alert: String,
        /// on: every check gets it unless it suppresses it; off: only checks that name it.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a check's current incident: no more reminders for it (committed, shown in `qu status`).
    Ack {
        /// The check's name or id (it must be DOWN).
        check: String,
        /// Why, or who is on it; shown with the acknowledgement.
        #[arg(long, default_value = "")]
        reason: String,
        /// Print JSON (the config version) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a clearly marked test event through the alert's sink from this node (no quorum needed).
    Test {
        /// The alert's name or id.
        alert: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `add` and `edit`. Sink flags map to the sink's settings.
#[derive(Args, Default)]
pub struct AlertFlags {
    /// Print JSON (the config version, and the id of a new alert) instead of text.
    #[arg(long)]
    json: bool,
    /// discord: the channel's webhook URL.
    #[arg(long)]
    webhook: Option<String>,
    /// webhook: the URL to POST to.
    #[arg(long)]
    url: Option<String>,
    /// webhook: an extra header `Name:value` (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    header: Vec<String>,
    /// webhook: HMAC-SHA256 signing secret (X-Qu-Signature).
    #[arg(long)]
    signing_secret: Option<String>,
    /// email: SMTP server.
    #[arg(long)]
    host: Option<String>,
    /// email: SMTP port [default: 587; 465 with --tls implicit; 25 with --tls none].
    #[arg(long)]
    port: Option<u16>,
    /// email: sender address.
    #[arg(long)]
    from: Option<String>,
    /// email: recipients, comma-separated.
    #[arg(long)]
    to: Option<String>,
    /// email: SMTP AUTH user.
    #[arg(long)]
    user: Option<String>,
    /// email: SMTP AUTH password.
    #[arg(long)]
    password: Option<String>,
    /// email: starttls, implicit or none [default: starttls].
    #[arg(long)]
    tls: Option<String>,
    /// Any sink setting KEY=VALUE (repeatable); an empty VALUE removes it on edit.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Every check gets this alert unless it suppresses it.
    #[arg(long)]
    default: bool,
    /// Also send alerts about the cluster itself here: a node without quorum, a member dead, and their recovery.
    #[arg(long)]
    cluster_events: bool,
    /// edit: stop sending alerts about the cluster itself here.
    #[arg(long, conflicts_with = "cluster_events")]
    no_cluster_events: bool,
    /// Remind every DURATION (e.g. 30m) while a check stays DOWN, until it recovers or is acknowledged; `off` stops it.
    #[arg(long, value_name = "DURATION|off")]
    repeat: Option<String>,
    /// Subject template (minijinja), e.g. '{{ verb }}: {{ check.name }}'; empty resets to the default.
    #[arg(long, conflicts_with = "subject_file")]
    subject: Option<String>,
    /// Read the subject template from FILE.
    #[arg(long, value_name = "FILE")]
    subject_file: Option<PathBuf>,
    /// Body template (minijinja); empty resets to the default.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Read the body template from FILE.
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
}

impl AlertFlags {
    fn config(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut config = BTreeMap::new();
        for pair in &self.set {
            let Some((key, value)) = pair.split_once('=') else { bail!("--set {pair}: expected KEY=VALUE") };
            config.insert(key.trim().to_string(), value.to_string());
        }
        let mut put = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                config.insert(key.to_string(), value);
            }
        };
        put("webhook", self.webhook.clone());
        put("url", self.url.clone());
        put("signing_secret", self.signing_secret.clone());
        put("host", self.host.clone());
        put("port", self.port.map(|p| p.to_string()));
        put("from", self.from.clone());
        put("to", self.to.clone());
        put("user", self.user.clone());
        put("password", self.password.clone());
        put("tls", self.tls.clone());
        if !self.header.is_empty() {
            let mut lines = Vec::new();
            for header in &self.header {
                let Some((name, value)) = header.split_once(':') else {
                    bail!("--header {header}: expected NAME:VALUE")
                };
                lines.push(format!("{}: {}", name.trim(), value.trim()));
            }
            config.insert("headers".into(), lines.join("\n"));
        }
        Ok(config)
    }

    fn template(text: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
        Ok(match (text, file) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(path)) => Some(std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?),
            (None, None) => None,
        })
    }
}

/// `--repeat`: a duration, or `off` (zero: reminders off).
fn repeat(value: &Option<String>) -> anyhow::Result<Option<std::time::Duration>> {
    match value.as_deref() {
        None => Ok(None),
        Some("off" | "0" | "") => Ok(Some(std::time::Duration::ZERO)),
        Some(text) => humantime::parse_duration(text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--repeat: `{text}` is not a duration like 30m or 2h, or off: {e}")),
    }
}

fn edit(alert: String, changes: AlertChanges, done: &str, json: bool) -> anyhow::Result<()> {
    crate::committed(call_ok(ControlRequest::AlertEdit { alert, changes: Box::new(changes) })?, done, json)
}

pub fn run(command: AlertCommand) -> anyhow::Result<()> {
    match command {
        AlertCommand::Add { kind, name, flags } => {
            let alert = Alert {
                id: String::new(),
                name: name.clone(),
                kind,
                config: flags.config()?,
                default: flags.default,
                disabled: false,
                subject_template: AlertFlags::template(&flags.subject, &flags.subject_file)?.filter(|t| !t.is_empty()),
                body_template: AlertFlags::template(&flags.body, &flags.body_file)?.filter(|t| !t.is_empty()),
                cluster_events: flags.cluster_events,
                repeat: repeat(&flags.repeat)?.filter(|r| !r.is_zero()),
            };
            let done = format!("alert {name} added");
            crate::committed(call_ok(ControlRequest::AlertAdd { alert: Box::new(alert) })?, &done, flags.json)
        }
        AlertCommand::Edit { alert, flags } => {
            let changes = AlertChanges {
                config: flags.config()?,
                default: flags.default.then_some(true),
                disabled: None,
                subject_template: AlertFlags::template(&flags.subject, &flags.subject_file)?,
                body_template: AlertFlags::template(&flags.body, &flags.body_file)?,
                cluster_events: if flags.cluster_events {
                    Some(true)
                } else if flags.no_cluster_events {
                    Some(false)
                } else {
                    None
                },
                repeat: repeat(&flags.repeat)?,
            };
            let done = format!("alert {alert} changed");
            edit(alert, changes, &done, flags.json)
        }
        AlertCommand::Remove { alert, json } => {
            let done = format!("alert {alert} removed");
            crate::committed(call_ok(ControlRequest::AlertRemove { alert })?, &done, json)
        }
        AlertCommand::Enable { alert, json } => {
            let done = format!("alert {alert} enabled");
            edit(alert, AlertChanges { disabled: Some(false), ..Default::default() }, &done, json)
        }
        AlertCommand::Disable { alert, json } => {
            let done = format!("alert {alert} disabled");
            edit(alert, AlertChanges { disabled: Some(true), ..Default::default() }, &done, json)
        }
        AlertCommand::Default { alert, state, json } => {
            let done = format!("alert {alert} default {state}");
            edit(alert, AlertChanges { default: Some(state == "on"), ..Default::default() }, &done, json)
        }
        AlertCommand::Ack { check, reason, json } => {
            let done = format!("check {check}'s incident acknowledged: no more reminders for it");
            crate::committed(call_ok(ControlRequest::AlertAck { check, reason })?, &done, json)
        }
        AlertCommand::List { json } => list(json),
        AlertCommand::Test { alert, json } => tested(call_ok(ControlRequest::AlertTest { alert })?, json),
    }
}

fn list(json: bool) -> anyhow::Result<()> {
    let ControlResponse::Alerts { alerts } = call_ok(ControlRequest::AlertList)? else {
        bail!("unexpected answer from the daemon");
    };
    if json {
        crate::print_json(&alerts)?;
        return Ok(());
    }
    let mut rows = vec![
        ["ID", "NAME", "TYPE", "DEFAULT", "CLUSTER EVENTS", "REPEAT", "ENABLED", "PENDING", "LAST DELIVERY"]
            .map(String::from)
            .to_vec(),
    ];
    for a in &alerts {
        let last = a.last.as_ref().map_or("-".to_string(), |d| {
            let mut text = format!("{} {} {} ({} attempt(s))", d.status, d.verb, d.check, d.attempts);
            if !d.error.is_empty() {
                text.push_str(&format!(": {}", d.error));
            }
            text
        });
        rows.push(vec![
            a.id.clone(),
            a.name.clone(),
            a.kind.clone(),
            a.default.to_string(),
            a.cluster_events.to_string(),
            a.repeat.clone().unwrap_or_else(|| "-".into()),
            (!a.disabled).to_string(),
            a.pending.to_string(),
            last,
        ]);
    }
    print!("{}", render::table(&rows));
    Ok(())
}

/// Prints test results; fails (exit 1) if any delivery failed.
pub fn tested(answer: ControlResponse, json: bool) -> anyhow::Result<()> {
    let ControlResponse::Tested { results } = answer else { return Err(unexpected(answer)) };
    if json {
        crate::print_json(&results)?;
    } else {
        for TestResult { alert, ok, error, millis } in &results {
            if *ok {
                println!(
                    "{alert}: delivered ({millis} ms){}",
                    if error.is_empty() { String::new() } else { format!("; {error}") }
                );
            } else {
                println!("{alert}: FAILED: {error}");
            }
        }
    }
    if results.iter().all(|r| r.ok) { Ok(()) } else { std::process::exit(1) }
}
