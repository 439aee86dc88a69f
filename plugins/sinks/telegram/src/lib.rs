//! The built-in `telegram` sink: sends the alert as a message from a bot
//! (Bot API `sendMessage`) to a chat. Telegram answers `{"ok": true}`; a
//! 429 is retried after its `parameters.retry_after`; 5xx is transient; the
//! rest (`chat not found`, `Unauthorized`, `bot was blocked by the user`)
//! are permanent, with Telegram's `description`. Text is cut at 4,096
//! characters.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const TELEGRAM: Service = Service::new("Telegram");
const TEXT_CHARS_MAX: usize = 4096;

struct Telegram;

impl Sink for Telegram {
    fn info() -> Info {
        Info::new("telegram", env!("CARGO_PKG_VERSION"), "sends each alert from a Telegram bot to a chat")
            .required("token", "the bot's token from @BotFather (123456:ABC...); a secret")
            .required("chat_id", "the chat: a numeric id (-100... for groups and channels) or @channelname")
            .optional(
                "api_url",
                Some("https://api.telegram.org"),
                "the Bot API server (a local Bot API server, or a stand-in)",
            )
            .destination(Destination::Url)
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let token: String = config.required("token")?;
        if !token.contains(':') || token.contains('/') || token.chars().any(char::is_whitespace) {
            return Err(Error::config(
                "setting `token`: expected a bot token like 123456:ABC-DEF... (from @BotFather)",
            ));
        }
        let chat: String = config.required("chat_id")?;
        if !(chat.starts_with('@') || chat.trim_start_matches('-').chars().all(|c| c.is_ascii_digit()))
            || chat.is_empty()
        {
            return Err(Error::config("setting `chat_id`: expected a numeric chat id or @channelname"));
        }
        let api: String = config.get_or("api_url", "https://api.telegram.org".to_string())?;
        if !(api.starts_with("https://") || api.starts_with("http://")) {
            return Err(Error::config("setting `api_url`: expected an http(s) URL"));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let token: String = config.required("token")?;
        let chat: String = config.required("chat_id")?;
        let api: String = config.get_or("api_url", "https://api.telegram.org".to_string())?;
        let chat_id: serde_json::Value = chat.parse::<i64>().map_or_else(|_| chat.clone().into(), Into::into);
        let message = serde_json::json!({
            "chat_id": chat_id,
            "text": text(event),
            "disable_web_page_preview": true,
        });
        let url = format!("{}/bot{token}/sendMessage", api.trim_end_matches('/'));
        let response = TELEGRAM.send(
            qu_sdk::http::post(&url)
                .header("content-type", "application/json")
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let json = serde_json::from_slice::<serde_json::Value>(&response.body).unwrap_or_default();
        let retry_after = json["parameters"]["retry_after"].as_u64().map(Duration::from_secs);
        let error = json["description"].as_str().map(str::to_string);
        TELEGRAM.answer(&response, Answer { retry_after, error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Telegram);

fn text(event: &Event) -> String {
    let full =
        if event.body.is_empty() { event.subject.clone() } else { format!("{}\n\n{}", event.subject, event.body) };
    cut(&full, TEXT_CHARS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = Config::from_pairs(&[("token", "123:abc"), ("chat_id", "-100123")]);
        assert!(Telegram::validate(&ok).is_ok());
        let channel = Config::from_pairs(&[("token", "123:abc"), ("chat_id", "@ops")]);
        assert!(Telegram::validate(&channel).is_ok());
        let bad = Config::from_pairs(&[("token", "nocolon"), ("chat_id", "1")]);
        assert!(Telegram::validate(&bad).unwrap_err().message().contains("bot token"));
        let chat = Config::from_pairs(&[("token", "1:a"), ("chat_id", "ops")]);
        assert!(Telegram::validate(&chat).unwrap_err().message().contains("chat_id"));
    }

    #[test]
    fn text_is_cut_at_4096() {
        let mut event = Event::sample();
        event.body = "y".repeat(10_000);
        assert_eq!(text(&event).chars().count(), TEXT_CHARS_MAX);
    }
}
