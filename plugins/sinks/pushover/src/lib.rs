//! The built-in `pushover` sink: sends the alert through Pushover's
//! Messages API. Pushover answers `{"status": 1}`; 429 (the application's
//! monthly limit) and 5xx are retried; other 4xx are permanent, with
//! Pushover's `errors`. Titles are cut at 250 characters, messages at
//! 1,024.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const PUSHOVER: Service = Service::new("Pushover");
const TITLE_CHARS_MAX: usize = 250;
const MESSAGE_CHARS_MAX: usize = 1024;

struct Pushover;

impl Sink for Pushover {
    fn info() -> Info {
        Info::new("pushover", env!("CARGO_PKG_VERSION"), "sends each alert as a Pushover notification")
            .required("token", "the application's API token; a secret")
            .required("user_key", "the user or group key to notify; a secret")
            .optional(
                "priority",
                Some("1"),
                "-2 to 1 for DOWN (RECOVERED and UP go at 0); 2 (emergency) is not supported",
            )
            .optional("device", None, "only this device of the user")
            .optional("api_url", Some("https://api.pushover.net"), "the API server (a stand-in, in tests)")
            .destination(Destination::Url)
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        for key in ["token", "user_key"] {
            let value: String = config.required(key)?;
            if value.len() != 30 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(Error::config(format!("setting `{key}`: expected 30 letters and digits")));
            }
        }
        let priority: i32 = config.get_or("priority", 1)?;
        if !(-2..=1).contains(&priority) {
            return Err(Error::config("setting `priority`: -2 to 1"));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let api: String = config.get_or("api_url", "https://api.pushover.net".to_string())?;
        let priority: i32 = if event.verb == "DOWN" { config.get_or("priority", 1)? } else { 0 };
        let mut message = serde_json::json!({
            "token": config.required::<String>("token")?,
            "user": config.required::<String>("user_key")?,
            "title": cut(&event.subject, TITLE_CHARS_MAX),
            "message": cut(if event.body.is_empty() { &event.subject } else { &event.body }, MESSAGE_CHARS_MAX),
            "priority": priority,
            "timestamp": event.timestamp_ms / 1000,
        });
        if let Some(device) = config.optional::<String>("device")? {
            message["device"] = device.into();
        }
        let response = PUSHOVER.send(
            qu_sdk::http::post(format!("{}/1/messages.json", api.trim_end_matches('/')))
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body).ok().and_then(|v| {
            v["errors"].as_array().map(|e| e.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join("; "))
        });
        PUSHOVER.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Pushover);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_thirty_letters_and_digits() {
        let key = "a".repeat(30);
        assert!(Pushover::validate(&Config::from_pairs(&[("token", &key), ("user_key", &key)])).is_ok());
        let short = Config::from_pairs(&[("token", "abc"), ("user_key", &key)]);
        assert!(Pushover::validate(&short).unwrap_err().message().contains("`token`"));
    }
}
