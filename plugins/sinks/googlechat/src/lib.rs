//! The built-in `googlechat` sink: posts the alert to a Google Chat space's
//! incoming webhook (`https://chat.googleapis.com/v1/spaces/.../messages?
//! key=...&token=...`). Each message is created with a client-assigned
//! `messageId` derived from the idempotency key, so a retry after a lost
//! answer is answered 409 ALREADY_EXISTS (counted as delivered) instead of
//! posting twice. 429 (RESOURCE_EXHAUSTED) and 5xx are retried; the rest
//! are permanent, with Google's `error.message`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut, service_url_problem};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const CHAT: Service = Service::new("Google Chat");
/// Google Chat's limit on a message's text is 4,096 characters.
const TEXT_CHARS_MAX: usize = 4096;

struct GoogleChat;

impl Sink for GoogleChat {
    fn info() -> Info {
        Info::new("googlechat", env!("CARGO_PKG_VERSION"), "posts each alert to a Google Chat space")
            .required("url", "the space's webhook URL (https://chat.googleapis.com/v1/spaces/...); a secret")
            .destination(Destination::Url)
            .optional("relay", Some("false"), "true when `url` is a compatible relay or stand-in: any http(s) URL")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let relay = config.get_or("relay", false)?;
        if let Some(problem) = service_url_problem(&url, relay, "Google Chat", &["chat.googleapis.com"], "/v1/spaces/")
        {
            return Err(Error::config(format!("setting `url`: {problem}")));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let separator = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{separator}messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD&messageId={}",
            message_id(&event.idempotency_key)
        );
        let message = serde_json::json!({ "text": text(event) });
        let response = CHAT.send(
            qu_sdk::http::post(&url)
                .header("content-type", "application/json; charset=UTF-8")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let error = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string));
        CHAT.answer(&response, Answer { error, also_delivered: &[409], ..Answer::default() })
    }
}

qu_sdk::export_sink!(GoogleChat);

fn text(event: &Event) -> String {
    let full = if event.body.is_empty() {
        format!("*{}*", event.subject)
    } else {
        format!("*{}*\n{}", event.subject, event.body)
    };
    cut(&full, TEXT_CHARS_MAX)
}

/// A client-assigned message id: `client-` and at most 56 more of
/// `a-z 0-9 -`, the same for every attempt of one delivery.
fn message_id(key: &str) -> String {
    let mut id: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if id.len() > 56 {
        // Long keys keep their end (the alert id) and a hash of the whole.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        id = format!("{hash:016x}-{}", &id[id.len() - 39..]);
    }
    format!("client-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_valid() {
        assert_eq!(message_id("3.14/a1b2"), "client-3-14-a1b2");
        let long =
            message_id(&format!("quorum.{}.1700000000000.lost/a1b2c3d4", "7a1e0c3e-1111-4222-8333-444455556666"));
        assert!(long.len() <= 63, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{long}");
        assert_eq!(
            long,
            message_id(&format!("quorum.{}.1700000000000.lost/a1b2c3d4", "7a1e0c3e-1111-4222-8333-444455556666"))
        );
    }
}
