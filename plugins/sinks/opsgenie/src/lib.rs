//! The built-in `opsgenie` sink: creates an Opsgenie alert on DOWN and
//! closes it on RECOVERED, by the check's `alias`, so Opsgenie itself keeps
//! one alert per outage (a create sent again joins the open alert: its
//! count grows, nobody is paged twice). A check's first UP sends nothing.
//! 202 is delivered; 429 and 5xx are retried; the rest (401, 403, 422)
//! are permanent, with Opsgenie's `message`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut, percent_encode};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const OPSGENIE: Service = Service::new("Opsgenie");
const MESSAGE_CHARS_MAX: usize = 130;
const DESCRIPTION_CHARS_MAX: usize = 15_000;
const PRIORITIES: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];

struct Opsgenie;

impl Sink for Opsgenie {
    fn info() -> Info {
        Info::new("opsgenie", env!("CARGO_PKG_VERSION"), "creates and closes Opsgenie alerts")
            .required("api_key", "an API integration's key; a secret")
            .optional("priority", Some("P2"), "P1 (critical) to P5")
            .optional("api_url", Some("https://api.opsgenie.com"), "the API (https://api.eu.opsgenie.com in the EU)")
            .destination(Destination::Url)
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let _: String = config.required("api_key")?;
        let priority: String = config.get_or("priority", "P2".to_string())?;
        if !PRIORITIES.contains(&priority.as_str()) {
            return Err(Error::config("setting `priority`: P1 to P5"));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let api: String = config.get_or("api_url", "https://api.opsgenie.com".to_string())?;
        let api = api.trim_end_matches('/');
        let alias = alias(event);
        let (url, body) = match event.verb.as_str() {
            "DOWN" => (
                format!("{api}/v2/alerts"),
                serde_json::json!({
                    "message": cut(&event.subject, MESSAGE_CHARS_MAX),
                    "alias": alias,
                    "description": cut(&event.body, DESCRIPTION_CHARS_MAX),
                    "source": "qu",
                    "entity": event.check_name,
                    "priority": config.get_or("priority", "P2".to_string())?,
                    "details": {"target": event.check_target, "type": event.check_type, "detail": event.detail},
                }),
            ),
            "RECOVERED" => (
                format!("{api}/v2/alerts/{}/close?identifierType=alias", percent_encode(&alias)),
                serde_json::json!({ "source": "qu", "note": cut(&event.body, 25_000) }),
            ),
            _ => return Ok(()),
        };
        let response = OPSGENIE.send(
            qu_sdk::http::post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("GenieKey {}", config.required::<String>("api_key")?))
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(body.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string));
        OPSGENIE.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Opsgenie);

/// One alert per check (a test event has its own).
fn alias(event: &Event) -> String {
    if event.test { format!("qu-test-{}", event.idempotency_key) } else { format!("qu-{}", event.check_id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alias_per_check() {
        let mut event = Event::sample();
        let down = alias(&event);
        event.idempotency_key = "9.9/a1".into();
        assert_eq!(alias(&event), down);
        event.test = true;
        assert_ne!(alias(&event), down);
    }
}
