//! Alerts at the edge: rendering subject and body from templates and
//! building the event a sink plugin receives. What to deliver, when, and
//! when a record is finished is decided in `qu_core::alerting` (the
//! dispatcher); the daemon's `delivery` room runs the sends.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use qu_core::alerting;
use qu_core::config::{Alert, Check, ClusterConfig, Timestamp};
use qu_core::monitor::CheckState;
use serde::Serialize;

/// Setting keys whose values are secrets: never printed or logged.
pub const SECRET_KEYS: [&str; 10] = [
    "password",
    "signing_secret",
    "secret",
    "token",
    "webhook",
    "headers",
    "routing_key",
    "api_key",
    "access_token",
    "user_key",
];

/// A copy of an alert's settings with the secrets masked: the values of
/// [`SECRET_KEYS`], and of any URL the path or query (or credentials) of
/// which may carry a token (Slack, Teams and Discord webhook URLs do),
/// shown as its scheme and host only.
pub fn masked(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config
        .iter()
        .map(|(k, v)| {
            let shown = if SECRET_KEYS.contains(&k.as_str()) {
                "********".to_string()
            } else {
                redacted_url(v).unwrap_or_else(|| v.clone())
            };
            (k.clone(), shown)
        })
        .collect()
}

/// `value` as `scheme://host[:port]/********` if it is an http(s) URL with
/// anything after its host (a path, a query, a fragment) or credentials in
/// it; `None` if it is not a URL, or is nothing but a scheme and a host.
pub fn redacted_url(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let bare = tail.is_empty() || tail == "/";
    if bare && host.len() == authority.len() {
        return None;
    }
    Some(if bare { format!("{scheme}://{host}/") } else { format!("{scheme}://{host}/********") })
}

/// What templates see.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub check: CheckContext,
    pub from: String,
    pub to: String,
    pub verb: String,
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
    pub detail: String,
    pub master: String,
    /// When the transition was committed, RFC 3339.
    pub time: String,
    pub transition: String,
    pub alert: String,
    pub test: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckContext {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub settings: BTreeMap<String, String>,
}

pub const DEFAULT_SUBJECT: &str = "{{ verb }}: {{ check.name }}";

/// The body used when an alert has none of its own, by check type.
pub fn default_body(kind: &str) -> &'static str {
    match kind {
        alerting::cluster::CLUSTER_EVENT_TYPE => {
            "{{ check.name }} is {{ verb }}\n{{ detail }}\nAt {{ time }} (sent by node {{ master }})"
        }
        "http" => {
            "{{ check.name }} is {{ verb }}: {{ check.target }}\nExpected status {{ check.settings.expect | default('2xx') }}; {{ detail }}\nReporters: {{ ok }} OK, {{ failing }} failing of {{ total }}\nAt {{ time }} (master {{ master }}, transition {{ transition }})"
        }
        "tls" => {
            "{{ check.name }} is {{ verb }}: the certificate of {{ check.target }}\n{{ detail }}\nReporters: {{ ok }} OK, {{ failing }} failing of {{ total }}\nAt {{ time }} (master {{ master }}, transition {{ transition }})"
        }
        "dns" => {
            "{{ check.name }} is {{ verb }}: {{ check.settings.record | default('A') }} record of {{ check.target }}\n{{ detail }}\nReporters: {{ ok }} OK, {{ failing }} failing of {{ total }}\nAt {{ time }} (master {{ master }}, transition {{ transition }})"
        }
        _ => {
            "{{ check.name }} is {{ verb }}: {{ check.type }} {{ check.target }}\n{{ detail }}\nReporters: {{ ok }} OK, {{ failing }} failing of {{ total }}\nAt {{ time }} (master {{ master }}, transition {{ transition }})"
        }
    }
}

/// Strict when validating (a misspelt variable is refused at add/edit),
/// lenient when sending (a setting one check lacks renders empty rather
/// than dropping the whole template).
fn environment(strict: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(if strict { UndefinedBehavior::Strict } else { UndefinedBehavior::Lenient });
    env.set_keep_trailing_newline(false);
    env
}

fn render_one(template: &str, context: &Context) -> Result<String, String> {
    render_with(template, context, false)
}

fn render_with(template: &str, context: &Context, strict: bool) -> Result<String, String> {
    environment(strict).render_str(template, context).map_err(|e| {
        let mut text = e.to_string();
        if let Some(detail) = e.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        text
    })
}

/// Subject and body for `alert`; a template that fails falls back to the
/// default rendering, and the error is returned for the log.
pub fn render(alert: &Alert, context: &Context) -> (String, String, Option<String>) {
    let mut error = None;
    let subject = alert
        .subject_template
        .as_deref()
        .and_then(|t| render_one(t, context).map_err(|e| error = Some(format!("subject template: {e}"))).ok())
        .unwrap_or_else(|| {
            render_one(DEFAULT_SUBJECT, context).unwrap_or_else(|_| format!("{} {}", context.verb, context.check.name))
        });
    let body = alert
        .body_template
        .as_deref()
        .and_then(|t| render_one(t, context).map_err(|e| error = Some(format!("body template: {e}"))).ok())
        .unwrap_or_else(|| {
            render_one(default_body(&context.check.kind), context).unwrap_or_else(|_| context.detail.clone())
        });
    let mut subject: String = subject.lines().next().unwrap_or("").trim().to_string();
    if subject.is_empty() {
        subject = format!("{}: {}", context.verb, context.check.name);
    }
    let subject = if context.test && !subject.starts_with("[TEST]") { format!("[TEST] {subject}") } else { subject };
    (subject, body, error)
}

/// Checks templates before an alert is committed: they must parse and
/// render a sample event with only known variables.
pub fn validate_templates(subject: Option<&str>, body: Option<&str>) -> Result<(), String> {
    let sample = sample_context();
    for (what, template) in [("subject", subject), ("body", body)] {
        if let Some(template) = template {
            render_with(template, &sample, true).map_err(|e| format!("{what} template: {e}"))?;
        }
    }
    Ok(())
}

fn sample_context() -> Context {
    // Every setting a native or built-in check type knows, so a template
    // may use any of them (a check without one renders it empty).
    let settings: BTreeMap<String, String> = [
        "expect",
        "body_match",
        "method",
        "insecure",
        "max_redirects",
        "record",
        "resolver",
        "timeout",
        "server_name",
        "warn_days",
        "verify_chain",
        "ca",
    ]
    .into_iter()
    .map(|k| (k.to_string(), String::new()))
    .chain([("expect".to_string(), "2xx".to_string())])
    .collect();
    Context {
        check: CheckContext {
            id: "c0000000".into(),
            name: "sample".into(),
            kind: "http".into(),
            target: "https://example.com/".into(),
            settings,
        },
        from: "up".into(),
        to: "down".into(),
        verb: "DOWN".into(),
        ok: 1,
        failing: 2,
        total: 3,
        detail: "status 503".into(),
        master: "00000000-0000-0000-0000-000000000000".into(),
        time: "2026-01-01T00:00:00.000Z".into(),
        transition: "1.2".into(),
        alert: "sample".into(),
        test: false,
    }
}

/// The context of one transition of `check` for `alert`.
#[allow(clippy::too_many_arguments)]
pub fn context(
    check: &Check,
    alert: &Alert,
    from: CheckState,
    to: CheckState,
    counts: (u32, u32, u32),
    detail: &str,
    master: &str,
    at: Timestamp,
    transition: &str,
    test: bool,
) -> Context {
    Context {
        check: CheckContext {
            id: check.id.clone(),
            name: check.name.clone(),
            kind: check.kind.clone(),
            target: check.target.clone(),
            settings: check.settings.clone(),
        },
        from: from.to_string(),
        to: to.to_string(),
        verb: alerting::verb(from, to).to_string(),
        ok: counts.0,
        failing: counts.1,
        total: counts.2,
        detail: detail.to_string(),
        master: master.to_string(),
        time: at.to_string(),
        transition: transition.to_string(),
        alert: alert.name.clone(),
        test,
    }
}

/// The event a sink receives.
pub fn event(context: &Context, alert: &Alert, key: &str, at: Timestamp) -> (qu_plugin::AlertEvent, Option<String>) {
    let (subject, body, error) = render(alert, context);
    let event = qu_plugin::AlertEvent {
        check_id: context.check.id.clone(),
        check_name: context.check.name.clone(),
        check_type: context.check.kind.clone(),
        check_target: context.check.target.clone(),
        from_state: context.from.clone(),
        to_state: context.to.clone(),
        verb: context.verb.clone(),
        ok: context.ok,
        failing: context.failing,
        total: context.total,
        detail: context.detail.clone(),
        subject,
        body,
        idempotency_key: key.to_string(),
        timestamp_ms: at.unix_millis(),
        master: context.master.clone(),
        test: context.test,
    };
    (event, error)
}

/// What a delivery record's subject is called: its check's name, or
/// `node <address>` for a member's announcement.
pub fn subject_name(config: &ClusterConfig, subject: &str) -> String {
    if let Some(node) = alerting::member_of(subject) {
        return match config.peer(&node) {
            Some(peer) => format!("node {}", peer.advertise),
            None => format!("node {node}"),
        };
    }
    config.checks.iter().find(|c| c.id == subject).map_or(subject.to_string(), |c| c.name.clone())
}

/// A cluster event dressed as a check for templates and sinks: type
/// `qu-cluster`, so a receiver can tell it from a check's transition.
pub fn cluster_subject(id: String, name: String, target: String) -> Check {
    Check {
        rounds_down: None,
        rounds_up: None,
        id,
        name,
        kind: alerting::cluster::CLUSTER_EVENT_TYPE.to_string(),
        target,
        interval: std::time::Duration::from_secs(1),
        timeout: std::time::Duration::from_secs(1),
        settings: BTreeMap::new(),
        alert_ids: Vec::new(),
        suppress_alert_ids: Vec::new(),
        disabled: false,
    }
}

/// The context of a member's committed announcement.
fn member_context(
    config: &ClusterConfig,
    record: &qu_core::config::Delivery,
    alert: &Alert,
    master: &str,
) -> Option<Context> {
    let node = alerting::member_of(&record.check_id)?;
    let target = config.peer(&node).map_or_else(String::new, |p| p.advertise.clone());
    let subject = cluster_subject(record.check_id.clone(), subject_name(config, &record.check_id), target.clone());
    let detail = if record.to == CheckState::Down {
        format!(
            "member {node} ({target}) has not been heard from by the master for {}",
            humantime::format_duration(config.settings.member_dead_after)
        )
    } else {
        format!("member {node} ({target}) is heard from again")
    };
    let members = config.peers.len() as u32;
    Some(context(
        &subject,
        alert,
        record.from,
        record.to,
        (0, 0, members),
        &detail,
        master,
        record.created,
        &record.transition,
        false,
    ))
}

/// The event of a node's own no-quorum notice (sent without quorum, so
/// from its own copy of the config and its own books).
pub fn quorum_notice(
    config: &ClusterConfig,
    me: &qu_core::NodeId,
    alert: &Alert,
    notice: &alerting::cluster::Notice,
    reachable: (usize, usize, usize),
) -> (qu_plugin::AlertEvent, Option<String>) {
    let advertise = config.peer(me).map_or_else(String::new, |p| p.advertise.clone());
    let subject = cluster_subject(format!("quorum:{me}"), format!("quorum at node {advertise}"), advertise.clone());
    let (live, members, need) = reachable;
    let (from, to, detail, at) = if notice.resolved {
        let ended = notice.ended.unwrap_or(notice.since);
        let lasted = std::time::Duration::from_millis(ended.unix_millis().saturating_sub(notice.since.unix_millis()));
        (
            CheckState::Down,
            CheckState::Up,
            format!(
                "node {me} ({advertise}) has quorum again since {ended}, after {} without",
                humantime::format_duration(std::time::Duration::from_secs(lasted.as_secs()))
            ),
            ended,
        )
    } else {
        (
            CheckState::Up,
            CheckState::Down,
            format!(
                "node {me} ({advertise}) has had no quorum since {}: {live} of {members} members reachable, \
                 {need} needed. The cluster cannot commit verdicts or send check alerts from here; this node \
                 sends this one itself.",
                notice.since
            ),
            notice.since,
        )
    };
    let master = me.to_string();
    let context =
        context(&subject, alert, from, to, (live as u32, 0, members as u32), &detail, &master, at, &notice.key, false);
    event(&context, alert, &notice.key, at)
}

/// The context of a committed delivery record (from its check's state).
pub fn delivery_context(config: &ClusterConfig, key: &str, master: &str) -> Option<(Context, Alert, Timestamp)> {
    let record = config.deliveries.get(key)?;
    let alert = config.alerts.iter().find(|a| a.id == record.alert_id)?;
    if alerting::member_of(&record.check_id).is_some() {
        let context = member_context(config, record, alert, master)?;
        return Some((context, alert.clone(), record.created));
    }
    let check = config.checks.iter().find(|c| c.id == record.check_id)?;
    let status = config.states.get(&check.id);
    // The state's counts and detail belong to this transition only while it
    // is still the latest one; otherwise say so rather than show another's.
    let (counts, detail) = match status {
        Some(s) if s.transition == record.transition => ((s.ok, s.failing, s.total), s.detail.clone()),
        _ => ((0, 0, 0), String::new()),
    };
    let mut context = context(
        check,
        alert,
        record.from,
        record.to,
        counts,
        &detail,
        master,
        record.created,
        &record.transition,
        false,
    );
    if let Some(reminder) = &record.reminder {
        // Still DOWN: since when, and which reminder this is.
        context.verb = "REMINDER".into();
        let since = status.filter(|s| s.transition == reminder.of).map(|s| s.since);
        let (ok, failing, total) = status.map_or((0, 0, 0), |s| (s.ok, s.failing, s.total));
        (context.ok, context.failing, context.total) = (ok, failing, total);
        context.detail = match since {
            Some(since) => format!(
                "still DOWN since {since} (for {}), reminder {}{}",
                humantime::format_duration(std::time::Duration::from_secs(
                    record.created.unix_millis().saturating_sub(since.unix_millis()) / 1000
                )),
                reminder.slot,
                status
                    .map(|s| if s.detail.is_empty() { String::new() } else { format!(": {}", s.detail) })
                    .unwrap_or_default()
            ),
            None => format!("still DOWN, reminder {}", reminder.slot),
        };
    }
    Some((context, alert.clone(), record.created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(subject: Option<&str>, body: Option<&str>) -> Alert {
        Alert {
            repeat: None,
            id: "a1".into(),
            name: "ops".into(),
            kind: "webhook".into(),
            config: BTreeMap::new(),
            default: false,
            disabled: false,
            subject_template: subject.map(str::to_string),
            body_template: body.map(str::to_string),
            cluster_events: false,
        }
    }

    #[test]
    fn every_variable_renders() {
        let template = "{{ check.id }}|{{ check.name }}|{{ check.type }}|{{ check.target }}|{{ check.settings.expect }}|{{ from }}|{{ to }}|{{ verb }}|{{ ok }}|{{ failing }}|{{ total }}|{{ detail }}|{{ master }}|{{ time }}|{{ transition }}|{{ alert }}|{{ test }}";
        let (_, body, error) = render(&alert(None, Some(template)), &sample_context());
        assert_eq!(error, None);
        assert_eq!(
            body,
            "c0000000|sample|http|https://example.com/|2xx|up|down|DOWN|1|2|3|status 503|00000000-0000-0000-0000-000000000000|2026-01-01T00:00:00.000Z|1.2|sample|False"
        );
    }

    #[test]
    fn defaults_are_type_aware() {
        let mut context = sample_context();
        let (subject, body, _) = render(&alert(None, None), &context);
        assert_eq!(subject, "DOWN: sample");
        assert!(body.contains("Expected status 2xx; status 503"), "{body}");
        context.check.kind = "tls".into();
        context.detail = "certificate expires in 6 day(s) (warn at 14)".into();
        let (_, body, _) = render(&alert(None, None), &context);
        assert!(body.contains("the certificate of https://example.com/\ncertificate expires in 6 day(s)"), "{body}");
        context.check.kind = "dns".into();
        context.check.settings.insert("record".into(), "MX".into());
        let (_, body, _) = render(&alert(None, None), &context);
        assert!(body.contains("MX record of"), "{body}");
        context.test = true;
        let (subject, _, _) = render(&alert(None, None), &context);
        assert_eq!(subject, "[TEST] DOWN: sample");
    }

    #[test]
    fn template_errors_are_caught_early_and_fall_back_at_send_time() {
        assert!(validate_templates(Some("{{ verb }} {{ check.name }}"), Some("{{ detail }}")).is_ok());
        let err = validate_templates(Some("{{ verbb }}"), None).unwrap_err();
        assert!(err.starts_with("subject template:"), "{err}");
        let err = validate_templates(None, Some("{% if %}")).unwrap_err();
        assert!(err.starts_with("body template:"), "{err}");
        // Hand-edited into cluster.yaml, so never validated: falls back.
        let (subject, body, error) = render(&alert(Some("{% if %}"), None), &sample_context());
        assert_eq!(subject, "DOWN: sample");
        assert!(body.starts_with("sample is DOWN"));
        assert!(error.unwrap().starts_with("subject template:"));
    }

    #[test]
    fn secrets_are_masked() {
        let mut config = BTreeMap::new();
        config.insert("password".to_string(), "hunter2".to_string());
        config.insert("host".to_string(), "smtp.example.com".to_string());
        config.insert("headers".to_string(), "Authorization: Bearer t0ken".to_string());
        config.insert("url".to_string(), "https://hooks.slack.com/services/T0/B0/s3cr3t".to_string());
        config.insert("plain".to_string(), "https://status.example.com".to_string());
        let shown = masked(&config);
        assert_eq!(shown["password"], "********");
        assert_eq!(shown["url"], "https://hooks.slack.com/********", "a token in the path");
        assert_eq!(shown["plain"], "https://status.example.com", "nothing after the host: as it is");
        assert_eq!(shown["host"], "smtp.example.com");
        assert_eq!(shown["headers"], "********");
    }

    #[test]
    fn urls_that_may_carry_tokens_are_redacted() {
        let cases = [
            ("https://discord.com/api/webhooks/1/abc", Some("https://discord.com/********")),
            ("http://h:8080/?token=x", Some("http://h:8080/********")),
            ("https://user:pass@h/", Some("https://h/")),
            ("https://h/", None),
            ("https://h", None),
            ("ftp://h/x", None),
            ("not a url", None),
        ];
        for (value, want) in cases {
            assert_eq!(redacted_url(value).as_deref(), want, "{value}");
        }
    }
}
