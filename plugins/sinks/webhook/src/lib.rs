//! The built-in `webhook` sink: POSTs a JSON document (payload version 1,
//! documented in docs/alerting.md) to `url`, with an `Idempotency-Key`
//! header, optional extra headers and an optional HMAC-SHA256 signature.
//!
//! 2xx is delivered; 408, 429 and 5xx are transient (honouring
//! `Retry-After` in seconds); any other status is permanent.

use std::time::Duration;

use hmac::{Hmac, Mac};
use qu_sdk::http::HttpError;
use qu_sdk::{Config, Destination, Error, Event, Info, Sink};
use sha2::Sha256;

struct Webhook;

impl Sink for Webhook {
    fn info() -> Info {
        Info::new("webhook", env!("CARGO_PKG_VERSION"), "POSTs each alert as JSON to a URL")
            .required("url", "http:// or https:// URL to POST to")
            .destination(Destination::Url)
            .optional("headers", None, "extra headers, one `Name: value` per line")
            .optional("signing_secret", None, "HMAC-SHA256 key; the signature goes in X-Qu-Signature")
            .optional("timeout", Some("10s"), "request timeout")
    }

    fn validate(config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::config(format!("setting `url`: expected an http:// or https:// URL, got `{url}`")));
        }
        headers(config)?;
        config.get_or("timeout", Duration::from_secs(10))?;
        Ok(())
    }

    fn send(event: &Event, config: &Config) -> Result<(), Error> {
        let url: String = config.required("url")?;
        let body = payload(event).to_string();
        let mut request = qu_sdk::http::post(&url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("qu-webhook/", env!("CARGO_PKG_VERSION")))
            .header("idempotency-key", &event.idempotency_key)
            .timeout(config.get_or("timeout", Duration::from_secs(10))?)
            .redirects(0);
        for (name, value) in headers(config)? {
            request = request.header(name, value);
        }
        if let Some(secret) = config.optional::<String>("signing_secret")? {
            request = request.header("x-qu-signature", format!("sha256={}", sign(&secret, body.as_bytes())));
        }
        let response = request.body(body).send().map_err(|e| match e {
            HttpError::Denied(_) | HttpError::InvalidUrl(_) => Error::permanent(e.to_string()),
            other => Error::transient(other.to_string()),
        })?;
        classify(response.status, response.header("retry-after"), &response.text())
    }
}

qu_sdk::export_sink!(Webhook);

/// The documented payload, version 1.
fn payload(e: &Event) -> serde_json::Value {
    let transition = e.idempotency_key.split('/').next().unwrap_or("");
    serde_json::json!({
        "version": 1,
        "test": e.test,
        "idempotency_key": e.idempotency_key,
        "timestamp_ms": e.timestamp_ms,
        "master": e.master,
        "check": {"id": e.check_id, "name": e.check_name, "type": e.check_type, "target": e.check_target},
        "transition": {"id": transition, "from": e.from_state, "to": e.to_state, "verb": e.verb},
        "counts": {"ok": e.ok, "failing": e.failing, "total": e.total},
        "detail": e.detail,
        "subject": e.subject,
        "body": e.body,
    })
}

fn headers(config: &Config) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for line in config.get("headers").unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::config(format!("setting `headers`: `{line}` is not `Name: value`")));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::config(format!("setting `headers`: `{name}` is not a header name")));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a status means for the delivery.
fn classify(status: u16, retry_after: Option<&str>, body: &str) -> Result<(), Error> {
    let snippet: String = body.chars().take(200).collect();
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => {
            let message =
                format!("status {status}{}", if snippet.is_empty() { String::new() } else { format!(": {snippet}") });
            match retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(seconds) => Err(Error::retry_after(message, Duration::from_secs(seconds))),
                None => Err(Error::transient(message)),
            }
        }
        _ => Err(Error::permanent(format!(
            "status {status}{}",
            if snippet.is_empty() { String::new() } else { format!(": {snippet}") }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(classify(204, None, "").is_ok());
        assert_eq!(
            classify(429, Some("7"), "slow down").unwrap_err(),
            Error::retry_after("status 429: slow down", Duration::from_secs(7))
        );
        assert_eq!(classify(503, None, "").unwrap_err(), Error::transient("status 503"));
        assert_eq!(classify(404, None, "no").unwrap_err(), Error::permanent("status 404: no"));
    }

    #[test]
    fn the_signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
