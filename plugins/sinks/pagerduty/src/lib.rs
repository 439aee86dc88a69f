//! The built-in `pagerduty` sink: opens an incident on DOWN (`trigger`) and
//! resolves it on RECOVERED (`resolve`) through the Events API v2, with the
//! check's `dedup_key`, so PagerDuty itself keeps one incident per outage:
//! a trigger sent again after a lost answer joins the open incident, and
//! the resolve closes it. A check's first UP sends nothing. 202 is
//! delivered; 429 and 5xx are retried; 400 (an invalid event or routing
//! key) is permanent, with PagerDuty's `errors`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const PAGERDUTY: Service = Service::new("PagerDuty");
const SUMMARY_CHARS_MAX: usize = 1024;
const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

struct PagerDuty;

impl Sink for PagerDuty {
    fn info() -> Info {
        Info::new("pagerduty", env!("CARGO_PKG_VERSION"), "opens and resolves PagerDuty incidents (Events API v2)")
            .required("routing_key", "the integration key of an Events API v2 integration; a secret")
            .optional("severity", Some("critical"), "critical, error, warning or info")
            .optional(
                "api_url",
                Some("https://events.pagerduty.com"),
                "the Events API (https://events.eu.pagerduty.com in the EU)",
            )
            .destination(Destination::Url)
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let key: String = config.required("routing_key")?;
        if key.len() != 32 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::config("setting `routing_key`: expected the 32-character integration key"));
        }
        let severity: String = config.get_or("severity", "critical".to_string())?;
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(Error::config(format!("setting `severity`: one of {}", SEVERITIES.join(", "))));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let Some(action) = action(event) else { return Ok(()) };
        let api: String = config.get_or("api_url", "https://events.pagerduty.com".to_string())?;
        let body = serde_json::json!({
            "routing_key": config.required::<String>("routing_key")?,
            "event_action": action,
            "dedup_key": dedup_key(event),
            "payload": {
                "summary": cut(&event.subject, SUMMARY_CHARS_MAX),
                "source": event.check_target,
                "severity": config.get_or("severity", "critical".to_string())?,
                "component": event.check_name,
                "class": event.check_type,
                "custom_details": {
                    "body": event.body,
                    "detail": event.detail,
                    "reporters": format!("{} OK, {} failing of {}", event.ok, event.failing, event.total),
                    "idempotency_key": event.idempotency_key,
                },
            },
            "client": "qu",
        });
        let response = PAGERDUTY.send(
            qu_sdk::http::post(format!("{}/v2/enqueue", api.trim_end_matches('/')))
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(body.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body).ok().and_then(|v| {
            let errors = v["errors"].as_array()?.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join("; ");
            Some(format!("{} {errors}", v["message"].as_str().unwrap_or("")).trim().to_string())
        });
        PAGERDUTY.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(PagerDuty);

/// `trigger` on DOWN, `resolve` on RECOVERED; nothing for a first UP.
fn action(event: &Event) -> Option<&'static str> {
    match event.verb.as_str() {
        "DOWN" => Some("trigger"),
        "RECOVERED" => Some("resolve"),
        _ => None,
    }
}

/// One incident per check (a test event has its own, never the check's).
fn dedup_key(event: &Event) -> String {
    if event.test { format!("qu-test/{}", event.idempotency_key) } else { format!("qu/{}", event.check_id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_triggers_and_recovered_resolves_the_same_incident() {
        let mut event = Event::sample();
        event.verb = "DOWN".into();
        assert_eq!(action(&event), Some("trigger"));
        let key = dedup_key(&event);
        event.verb = "RECOVERED".into();
        event.idempotency_key = "3.20/a1".into();
        assert_eq!(action(&event), Some("resolve"));
        assert_eq!(dedup_key(&event), key, "the resolve names the incident the trigger opened");
        event.verb = "UP".into();
        assert_eq!(action(&event), None, "a first UP opens nothing");
        event.test = true;
        assert!(dedup_key(&event).starts_with("qu-test/"), "a test never touches the check's incident");
    }
}
