//! The built-in `ntfy` sink: publishes the alert to an ntfy topic
//! (`https://ntfy.sh/<topic>` or your own server) with a title, a priority
//! and tags; an optional access token. ntfy answers 200 with the message;
//! 429 is retried (after `Retry-After`); 5xx is transient; 413 and the
//! rest are permanent, with ntfy's `error`. A message is at most 4,096
//! bytes.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut_bytes};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const NTFY: Service = Service::new("ntfy");
const MESSAGE_BYTES_MAX: usize = 4096;
const PRIORITIES: [&str; 10] = ["1", "2", "3", "4", "5", "min", "low", "default", "high", "max"];

struct Ntfy;

impl Sink for Ntfy {
    fn info() -> Info {
        Info::new("ntfy", env!("CARGO_PKG_VERSION"), "publishes each alert to an ntfy topic")
            .required("url", "the topic's URL: https://ntfy.sh/<topic> or https://<your server>/<topic>")
            .destination(Destination::Url)
            .optional("token", None, "an access token (tk_...) for a protected topic; a secret")
            .optional(
                "priority",
                Some("high"),
                "1-5 or min, low, default, high, max (RECOVERED and UP are sent at default)",
            )
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let topic = url.split_once("://").map(|(_, rest)| rest.split_once('/').map_or("", |(_, t)| t)).unwrap_or("");
        if !(url.starts_with("https://") || url.starts_with("http://")) || topic.is_empty() || topic.contains('/') {
            return Err(Error::config("setting `url`: expected https://<server>/<topic>"));
        }
        let priority: String = config.get_or("priority", "high".to_string())?;
        if !PRIORITIES.contains(&priority.as_str()) {
            return Err(Error::config(format!(
                "setting `priority`: `{priority}` is not one of {}",
                PRIORITIES.join(", ")
            )));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let priority: String = config.get_or("priority", "high".to_string())?;
        let (priority, tags) = match event.verb.as_str() {
            "DOWN" => (priority.as_str(), "rotating_light"),
            _ => ("default", "white_check_mark"),
        };
        let message = if event.body.is_empty() { event.subject.clone() } else { event.body.clone() };
        let mut request = qu_sdk::http::post(&url)
            // ntfy's headers are text; a subject with a line break would end the header.
            .header("title", event.subject.replace(['\r', '\n'], " "))
            .header("priority", priority)
            .header("tags", tags)
            .timeout(config.get_or("timeout", Duration::from_secs(10))?)
            .redirects(0)
            .body(cut_bytes(&message, MESSAGE_BYTES_MAX));
        if let Some(token) = config.optional::<String>("token")? {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = NTFY.send(request)?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        NTFY.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Ntfy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(Ntfy::validate(&Config::from_pairs(&[("url", "https://ntfy.sh/ops-alerts")])).is_ok());
        assert!(Ntfy::validate(&Config::from_pairs(&[("url", "https://ntfy.sh/")])).is_err());
        let bad = Config::from_pairs(&[("url", "https://ntfy.sh/t"), ("priority", "urgent")]);
        assert!(Ntfy::validate(&bad).unwrap_err().message().contains("priority"));
    }
}
