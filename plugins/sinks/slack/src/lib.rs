//! The built-in `slack` sink: posts the alert to a Slack incoming webhook
//! (`https://hooks.slack.com/services/...`) as `text` (mrkdwn: the subject
//! in bold). Slack answers `ok`; a 429 is retried after its `Retry-After`;
//! 5xx is transient; its other errors (`invalid_payload`,
//! `channel_not_found`, `invalid_token`, ...) are permanent.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut, service_url_problem};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const SLACK: Service = Service::new("Slack");
/// Slack truncates `text` past 40,000 characters; stay well inside.
const TEXT_CHARS_MAX: usize = 39_000;

struct Slack;

impl Sink for Slack {
    fn info() -> Info {
        Info::new("slack", env!("CARGO_PKG_VERSION"), "posts each alert to a Slack channel's incoming webhook")
            .required("url", "the incoming webhook URL (https://hooks.slack.com/services/...); a secret")
            .destination(Destination::Url)
            .optional(
                "relay",
                Some("false"),
                "true when `url` is a Slack-compatible relay or stand-in: any http(s) URL",
            )
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        if let Some(problem) =
            service_url_problem(&url, config.get_or("relay", false)?, "Slack", &["hooks.slack.com"], "/services/")
        {
            return Err(Error::config(format!("setting `url`: {problem}")));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let message = serde_json::json!({ "text": text(event) });
        let response = SLACK.send(
            qu_sdk::http::post(&url)
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        // Slack's errors are a bare word in the body (`channel_not_found`).
        SLACK.answer(&response, Answer { error: Some(response.text()), ..Answer::default() })
    }
}

qu_sdk::export_sink!(Slack);

fn text(event: &Event) -> String {
    let full = if event.body.is_empty() {
        format!("*{}*", event.subject)
    } else {
        format!("*{}*\n{}", event.subject, event.body)
    };
    cut(&full, TEXT_CHARS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_bold_and_long_text_is_cut() {
        let mut event = Event::sample();
        event.subject = "DOWN: web".into();
        event.body = "status 503".into();
        assert_eq!(text(&event), "*DOWN: web*\nstatus 503");
        event.body = "x".repeat(50_000);
        assert_eq!(text(&event).chars().count(), TEXT_CHARS_MAX);
    }
}
