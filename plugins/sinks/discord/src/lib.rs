//! The built-in `discord` sink: posts the alert as a Discord webhook
//! message (`content`, at most 2,000 characters, cut at a character
//! boundary with an ellipsis). A 429 is retried after Discord's
//! `retry_after`; 5xx is transient; other failures are permanent.

use std::time::Duration;

use qu_sdk::http::HttpError;
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

/// Discord's limit on a message's `content`.
const CONTENT_CHARS_MAX: usize = 2000;

struct Discord;

impl Sink for Discord {
    fn info() -> Info {
        Info::new("discord", env!("CARGO_PKG_VERSION"), "posts each alert to a Discord channel webhook")
            .required("webhook", "the channel's webhook URL (https://discord.com/api/webhooks/...)")
            .destination(Destination::Url)
            .optional("username", None, "name the message is posted under")
            .optional(
                "relay",
                Some("false"),
                "true when `webhook` is a Discord-compatible relay (or a test stand-in), not Discord: any http(s) URL is taken",
            )
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("webhook")?;
        if let Some(problem) = webhook_problem(&url, config.get_or("relay", false)?) {
            return Err(Error::config(format!("setting `webhook`: {problem}")));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("webhook")?;
        let mut message = serde_json::json!({ "content": content(event) });
        if let Some(username) = config.optional::<String>("username")? {
            message["username"] = username.into();
        }
        let response = qu_sdk::http::post(&url)
            .header("content-type", "application/json")
            .timeout(config.get_or("timeout", Duration::from_secs(10))?)
            .redirects(0)
            .body(message.to_string())
            .send()
            .map_err(|e| match e {
                HttpError::Denied(_) | HttpError::InvalidUrl(_) => Error::permanent(e.to_string()),
                other => Error::transient(other.to_string()),
            })?;
        match response.status {
            200..=299 => Ok(()),
            429 => {
                // Discord says how long to wait, in seconds (fractional), in the body.
                let wait = serde_json::from_slice::<serde_json::Value>(&response.body)
                    .ok()
                    .and_then(|v| v["retry_after"].as_f64())
                    .or_else(|| response.header("retry-after").and_then(|v| v.trim().parse::<f64>().ok()))
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| Duration::from_millis((s * 1000.0).ceil() as u64));
                match wait {
                    Some(wait) => Err(Error::retry_after("rate limited by Discord (429)", wait)),
                    None => Err(Error::transient("rate limited by Discord (429)")),
                }
            }
            408 | 500..=599 => Err(Error::transient(format!("Discord answered {}", response.status))),
            status => {
                let text: String = response.text().chars().take(200).collect();
                Err(Error::permanent(format!("Discord refused the message ({status}): {text}")))
            }
        }
    }
}

qu_sdk::export_sink!(Discord);

/// Subject and body, cut to Discord's limit at a character boundary.
fn content(event: &Event) -> String {
    let full =
        if event.body.is_empty() { event.subject.clone() } else { format!("**{}**\n{}", event.subject, event.body) };
    if full.chars().count() <= CONTENT_CHARS_MAX {
        return full;
    }
    let mut cut: String = full.chars().take(CONTENT_CHARS_MAX - 1).collect();
    cut.push('…');
    cut
}

/// The hosts Discord serves webhooks on.
const DISCORD_HOSTS: [&str; 4] = ["discord.com", "discordapp.com", "ptb.discord.com", "canary.discord.com"];

/// What is wrong with `url` as a Discord webhook, if anything: https on a
/// Discord host under `/api/webhooks/`, unless `relay` takes any http(s)
/// URL. The URL is never quoted (its path holds the webhook's token).
fn webhook_problem(url: &str, relay: bool) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some("expected a webhook URL (https://discord.com/api/webhooks/...)".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("").split(':').next().unwrap_or("").to_ascii_lowercase();
    let path = &rest[authority.len()..];
    if relay {
        return (!matches!(scheme.as_str(), "http" | "https") || host.is_empty())
            .then(|| format!("expected an http(s) URL, got a {scheme} one"));
    }
    if scheme != "https" {
        return Some(format!(
            "Discord webhooks are https, not {scheme} (set relay=true for a Discord-compatible relay)"
        ));
    }
    if !DISCORD_HOSTS.contains(&host.as_str()) {
        return Some(format!(
            "{host} is not a Discord host ({}); set relay=true for a Discord-compatible relay",
            DISCORD_HOSTS.join(", ")
        ));
    }
    (!path.starts_with("/api/webhooks/")).then(|| {
        format!("a Discord webhook URL is https://{host}/api/webhooks/ID/TOKEN (see the channel's Integrations)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_discord_webhook_urls_are_taken_unless_it_is_a_relay() {
        assert_eq!(webhook_problem("https://discord.com/api/webhooks/1/secret-token", false), None);
        assert_eq!(webhook_problem("https://canary.discord.com/api/webhooks/1/t", false), None);
        let http = webhook_problem("http://example.com/", false).unwrap();
        assert!(http.contains("https, not http"), "{http}");
        let other = webhook_problem("https://example.com/api/webhooks/1/t", false).unwrap();
        assert!(other.contains("example.com is not a Discord host"), "{other}");
        let path = webhook_problem("https://discord.com/channels/1", false).unwrap();
        assert!(path.contains("/api/webhooks/ID/TOKEN"), "{path}");
        assert!(webhook_problem("discord.com/api/webhooks/1/t", false).is_some());
        // A relay or stand-in: any http(s) URL.
        assert_eq!(webhook_problem("http://127.0.0.1:8080/api/webhooks/1/t", true), None);
        assert!(webhook_problem("ftp://relay.example/", true).is_some());
        // The token never appears in a problem.
        for url in ["http://example.com/api/webhooks/1/secret-token", "https://discord.com/x/secret-token"] {
            assert!(!webhook_problem(url, false).unwrap().contains("secret-token"));
        }
    }

    fn event(subject: &str, body: &str) -> Event {
        Event {
            check_id: "c1".into(),
            check_name: "web".into(),
            check_type: "http".into(),
            check_target: "https://example.com".into(),
            from_state: "up".into(),
            to_state: "down".into(),
            verb: "DOWN".into(),
            ok: 1,
            failing: 2,
            total: 3,
            detail: "status 503".into(),
            subject: subject.into(),
            body: body.into(),
            idempotency_key: "3.14/a1".into(),
            timestamp_ms: 0,
            master: "n1".into(),
            test: false,
        }
    }

    #[test]
    fn content_is_cut_cleanly_at_2000_characters() {
        assert_eq!(content(&event("DOWN web", "status 503")), "**DOWN web**\nstatus 503");
        let long = content(&event("s", &"é".repeat(5000)));
        assert_eq!(long.chars().count(), 2000);
        assert!(long.ends_with('…'));
    }
}
