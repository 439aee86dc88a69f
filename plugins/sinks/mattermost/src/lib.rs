//! The built-in `mattermost` sink: posts the alert to a Mattermost incoming
//! webhook (`https://<your server>/hooks/<key>`) as Markdown `text`,
//! optionally to another channel or under another name. 2xx is delivered;
//! 429 and 5xx are retried (after `X-Ratelimit-Reset` or `Retry-After`);
//! the rest are permanent,
//! with Mattermost's `message`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const MATTERMOST: Service = Service::new("Mattermost");
/// Mattermost's default post size limit (16,383 characters).
const TEXT_CHARS_MAX: usize = 16_383;

struct Mattermost;

impl Sink for Mattermost {
    fn info() -> Info {
        Info::new("mattermost", env!("CARGO_PKG_VERSION"), "posts each alert to a Mattermost incoming webhook")
            .required("url", "the incoming webhook URL (https://chat.example.com/hooks/...); a secret")
            .destination(Destination::Url)
            .optional("channel", None, "post to this channel instead of the webhook's (its name, e.g. town-square)")
            .optional("username", None, "name the post is made under (if the server allows overriding it)")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(Error::config("setting `url`: expected https://<server>/hooks/<key>"));
        };
        if !matches!(scheme, "http" | "https") || !rest.contains("/hooks/") {
            return Err(Error::config(
                "setting `url`: expected http(s)://<server>/hooks/<key> (Integrations > Incoming Webhooks)",
            ));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let mut message = serde_json::json!({ "text": text(event) });
        if let Some(channel) = config.optional::<String>("channel")? {
            message["channel"] = channel.into();
        }
        if let Some(username) = config.optional::<String>("username")? {
            message["username"] = username.into();
        }
        let response = MATTERMOST.send(
            qu_sdk::http::post(&url)
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string));
        // Mattermost's rate limiter says when its window resets, in seconds.
        let retry_after = qu_sdk::deliver::retry_after_header(response.header("x-ratelimit-reset"));
        MATTERMOST.answer(&response, Answer { error, retry_after, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Mattermost);

fn text(event: &Event) -> String {
    let full = if event.body.is_empty() {
        format!("**{}**", event.subject)
    } else {
        format!("**{}**\n{}", event.subject, event.body)
    };
    cut(&full, TEXT_CHARS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_bold() {
        let mut event = Event::sample();
        event.subject = "DOWN: web".into();
        event.body = String::new();
        assert_eq!(text(&event), "**DOWN: web**");
    }
}
