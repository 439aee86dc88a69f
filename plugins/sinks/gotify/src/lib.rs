//! The built-in `gotify` sink: posts the alert to a Gotify server
//! (`POST /message` with an application token). Gotify answers 200; 429
//! and 5xx are retried; 400, 401 and 403 are permanent, with Gotify's
//! `errorDescription`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const GOTIFY: Service = Service::new("Gotify");

struct Gotify;

impl Sink for Gotify {
    fn info() -> Info {
        Info::new("gotify", env!("CARGO_PKG_VERSION"), "posts each alert to a Gotify server")
            .required("url", "the server's URL (https://gotify.example.com)")
            .destination(Destination::Url)
            .required("token", "an application token (Apps > Create application); a secret")
            .optional("priority", Some("8"), "0-10 for DOWN (RECOVERED and UP go at 4)")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(Error::config("setting `url`: expected the server's http(s) URL"));
        }
        let _: String = config.required("token")?;
        let priority: u8 = config.get_or("priority", 8)?;
        if priority > 10 {
            return Err(Error::config("setting `priority`: 0-10"));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let token: String = config.required("token")?;
        let priority: u8 = if event.verb == "DOWN" { config.get_or("priority", 8)? } else { 4 };
        let message = serde_json::json!({
            "title": event.subject,
            "message": if event.body.is_empty() { &event.subject } else { &event.body },
            "priority": priority,
        });
        let response = GOTIFY.send(
            qu_sdk::http::post(format!("{}/message", url.trim_end_matches('/')))
                .header("content-type", "application/json")
                .header("x-gotify-key", token)
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["errorDescription"].as_str().map(str::to_string));
        GOTIFY.answer(&response, Answer { error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Gotify);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = Config::from_pairs(&[("url", "https://gotify.example.com"), ("token", "AbC")]);
        assert!(Gotify::validate(&ok).is_ok());
        let bad = Config::from_pairs(&[("url", "https://g"), ("token", "t"), ("priority", "11")]);
        assert!(Gotify::validate(&bad).is_err());
    }
}
