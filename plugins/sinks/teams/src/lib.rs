//! The built-in `teams` sink: posts the alert to a Microsoft Teams channel
//! through a Workflows (Power Automate) webhook, as an Adaptive Card with
//! the subject and body. Teams answers 202; 429 is retried after its
//! `Retry-After`; 5xx is transient; the rest are permanent. A card is at
//! most 28 KB; longer bodies are cut.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut_bytes, service_url_problem};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const TEAMS: Service = Service::new("Teams");
/// Teams refuses a message over 28 KB; leave room for the card around it.
const BODY_BYTES_MAX: usize = 24_000;
const HOSTS: [&str; 2] = [".logic.azure.com", ".api.powerplatform.com"];

struct Teams;

impl Sink for Teams {
    fn info() -> Info {
        Info::new("teams", env!("CARGO_PKG_VERSION"), "posts each alert to a Microsoft Teams channel (Workflows webhook)")
            .required("url", "the workflow's HTTP trigger URL (https://...logic.azure.com/... or ...api.powerplatform.com/...); a secret")
            .destination(Destination::Url)
            .optional("relay", Some("false"), "true when `url` is a compatible relay or stand-in: any http(s) URL")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        if let Some(problem) = service_url_problem(&url, config.get_or("relay", false)?, "Teams workflow", &HOSTS, "/")
        {
            return Err(Error::config(format!("setting `url`: {problem}")));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let response = TEAMS.send(
            qu_sdk::http::post(&url)
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(card(event).to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string));
        TEAMS.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Teams);

fn card(event: &Event) -> serde_json::Value {
    let color = match event.verb.as_str() {
        "DOWN" => "attention",
        "RECOVERED" | "UP" => "good",
        _ => "default",
    };
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": event.subject, "weight": "bolder", "size": "medium", "color": color, "wrap": true},
                    {"type": "TextBlock", "text": cut_bytes(&event.body, BODY_BYTES_MAX), "wrap": true},
                ],
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_carries_the_subject_and_a_cut_body() {
        let mut event = Event::sample();
        event.body = "é".repeat(20_000);
        let card = card(&event);
        let body = &card["attachments"][0]["content"]["body"];
        assert_eq!(body[0]["text"], event.subject.as_str());
        assert_eq!(body[0]["color"], "attention");
        assert!(body[1]["text"].as_str().unwrap().len() <= BODY_BYTES_MAX);
        assert!(card.to_string().len() < 28 * 1024);
    }
}
