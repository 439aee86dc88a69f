//! The built-in `matrix` sink: sends the alert to a Matrix room through the
//! client-server API (`PUT /_matrix/client/v3/rooms/<room>/send/
//! m.room.message/<txnId>`), with the idempotency key as the transaction
//! id, so a retry after a lost answer is the same event, not a second one.
//! 200 is delivered; 429 (`M_LIMIT_EXCEEDED`) is retried after its
//! `retry_after_ms`; 5xx is transient; the rest (`M_FORBIDDEN`,
//! `M_UNKNOWN_TOKEN`) are permanent, with the server's `error`.

use std::time::Duration;

use qu_sdk::deliver::{Answer, Service, cut_bytes, percent_encode};
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};

const MATRIX: Service = Service::new("Matrix");
/// An event is at most 65,536 bytes; leave room for the envelope.
const BODY_BYTES_MAX: usize = 60_000;

struct Matrix;

impl Sink for Matrix {
    fn info() -> Info {
        Info::new("matrix", env!("CARGO_PKG_VERSION"), "sends each alert to a Matrix room")
            .required("homeserver", "the homeserver's client URL (https://matrix.example.org)")
            .destination(Destination::Url)
            .required("access_token", "an access token of the bot's account; a secret")
            .required("room_id", "the room's id (!abc123:example.org); the account must have joined it")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let server: String = config.required("homeserver")?;
        if !(server.starts_with("https://") || server.starts_with("http://")) {
            return Err(Error::config("setting `homeserver`: expected the homeserver's http(s) URL"));
        }
        let _: String = config.required("access_token")?;
        let room: String = config.required("room_id")?;
        if !room.starts_with('!') || !room.contains(':') {
            return Err(Error::config(
                "setting `room_id`: expected a room id like !abc123:example.org (not an #alias)",
            ));
        }
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let server: String = config.required("homeserver")?;
        let room: String = config.required("room_id")?;
        let text =
            if event.body.is_empty() { event.subject.clone() } else { format!("{}\n{}", event.subject, event.body) };
        let message = serde_json::json!({ "msgtype": "m.text", "body": cut_bytes(&text, BODY_BYTES_MAX) });
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            server.trim_end_matches('/'),
            percent_encode(&room),
            percent_encode(&transaction_id(event))
        );
        let response = MATRIX.send(
            qu_sdk::http::request("PUT", url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", config.required::<String>("access_token")?))
                .timeout(config.get_or("timeout", Duration::from_secs(10))?)
                .redirects(0)
                .body(message.to_string()),
        )?;
        let json = serde_json::from_slice::<serde_json::Value>(&response.body).unwrap_or_default();
        let retry_after = json["retry_after_ms"].as_u64().map(Duration::from_millis);
        let error = json["error"]
            .as_str()
            .map(|e| format!("{} {e}", json["errcode"].as_str().unwrap_or("")).trim().to_string());
        MATRIX.answer(&response, Answer { retry_after, error, ..Answer::default() })
    }
}

qu_sdk::export_sink!(Matrix);

/// The same for every attempt of one delivery; a test event's own.
fn transaction_id(event: &Event) -> String {
    format!("qu-{}{}", if event.test { "test-" } else { "" }, event.idempotency_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transaction_id_is_the_idempotency_key() {
        let mut event = Event::sample();
        event.idempotency_key = "3.14/a1".into();
        assert_eq!(transaction_id(&event), "qu-3.14/a1");
        assert_eq!(percent_encode(&transaction_id(&event)), "qu-3.14%2Fa1");
        let room = Config::from_pairs(&[
            ("homeserver", "https://m.example.org"),
            ("access_token", "t"),
            ("room_id", "#ops:example.org"),
        ]);
        assert!(Matrix::validate(&room).unwrap_err().message().contains("room id"));
    }
}
