//! What most sinks do, once: send a request to a service, and say what its
//! answer means for the delivery (delivered, retry — after how long — or
//! never), check that a URL is the service's own, and cut text to the
//! service's limit. The built-in sinks use it; so can yours.
//!
//! ```no_run
//! use qu_sdk::deliver::{Answer, Service};
//! # fn f(url: &str) -> Result<(), qu_sdk::Error> {
//! let slack = Service::new("Slack");
//! let response = slack.send(qu_sdk::http::post(url).body("{}"))?;
//! slack.answer(&response, Answer::default())
//! # }
//! ```

use std::time::Duration;

use crate::Error;
use crate::http::{HttpError, Request, Response};

/// A service a sink talks to, by the name its errors carry.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
}

/// How a service's answer is read, beyond the status.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// How long the service asks to wait, read from its body (a 429's
    /// `retry_after`, for those that put it there); `Retry-After` headers
    /// are read anyway.
    pub retry_after: Option<Duration>,
    /// The service's own error text from the body, if it has a shape for
    /// it (otherwise the first 200 characters of the body are quoted).
    pub error: Option<String>,
    /// Statuses that mean "delivered" besides 2xx (e.g. 409 for a message
    /// the service already has, by its idempotency id).
    pub also_delivered: &'static [u16],
}

impl Service {
    pub const fn new(name: &'static str) -> Self {
        Self { name }
    }

    /// Sends `request`; a failure to get any answer is worth retrying,
    /// except a destination the host refused or a URL it cannot use.
    pub fn send(&self, request: Request) -> Result<Response, Error> {
        request.send().map_err(|e| match e {
            HttpError::Denied(_) | HttpError::InvalidUrl(_) => Error::permanent(format!("{}: {e}", self.name)),
            other => Error::transient(format!("{}: {other}", self.name)),
        })
    }

    /// What `response` means: 2xx (and `also_delivered`) delivered; 408,
    /// 425, 429 and 5xx retried, after the service's `Retry-After` (header,
    /// in seconds or an HTTP date is not read) or `answer.retry_after`;
    /// anything else is permanent, with the service's words.
    pub fn answer(&self, response: &Response, answer: Answer) -> Result<(), Error> {
        let status = response.status;
        if (200..300).contains(&status) || answer.also_delivered.contains(&status) {
            return Ok(());
        }
        let said = answer.error.unwrap_or_else(|| response.text().chars().take(200).collect::<String>());
        let said = said.trim();
        let message = if said.is_empty() {
            format!("{} answered {status}", self.name)
        } else {
            format!("{} answered {status}: {said}", self.name)
        };
        if matches!(status, 408 | 425 | 429 | 500..=599) {
            let wait = answer.retry_after.or_else(|| retry_after_header(response.header("retry-after")));
            return Err(match wait {
                Some(wait) => Error::retry_after(message, wait),
                None => Error::transient(message),
            });
        }
        Err(Error::permanent(message))
    }
}

/// A `Retry-After` header in seconds (fractions allowed), capped at an hour.
pub fn retry_after_header(value: Option<&str>) -> Option<Duration> {
    let seconds: f64 = value?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_millis((seconds.min(3600.0) * 1000.0).ceil() as u64))
}

/// `text` cut to at most `max` characters at a character boundary, with an
/// ellipsis when it was cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` cut to at most `max` bytes of UTF-8 at a character boundary,
/// with an ellipsis when it was cut.
pub fn cut_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What is wrong with `url` as a URL of a service on `hosts` (exactly, or a
/// subdomain of an entry that starts with `.`) under `path` — if anything.
/// With `relay` any http(s) URL is taken (a proxy, a self-hosted
/// compatible server, a test stand-in). The URL is never quoted: its path
/// or query often holds the token.
pub fn service_url_problem(url: &str, relay: bool, service: &str, hosts: &[&str], path: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("expected a {service} URL (https://{}{path}...)", hosts.first().unwrap_or(&"")));
    };
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("").split(':').next().unwrap_or("").to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || host.is_empty() {
        return Some(format!("expected an http(s) URL, got a {scheme} one"));
    }
    if relay {
        return None;
    }
    if scheme != "https" {
        return Some(format!("{service} URLs are https, not {scheme} (set relay=true for a compatible relay)"));
    }
    let known = hosts.iter().any(|h| match h.strip_prefix('.') {
        Some(domain) => host.ends_with(&format!(".{domain}")) || host == domain,
        None => host == *h,
    });
    if !known {
        return Some(format!(
            "{host} is not a {service} host ({}); set relay=true for a compatible relay",
            hosts.join(", ")
        ));
    }
    let rest_path = &rest[authority.len()..];
    (!rest_path.starts_with(path)).then(|| format!("a {service} URL starts https://{host}{path}"))
}

/// `text` with `%XX` escapes for everything but unreserved characters, for
/// a path segment or a query value.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_mean_delivered_retry_or_never() {
        let s = Service::new("Svc");
        assert!(s.answer(&response(202, &[], ""), Answer::default()).is_ok());
        assert_eq!(
            s.answer(&response(429, &[("Retry-After", "7")], "slow"), Answer::default()).unwrap_err(),
            Error::retry_after("Svc answered 429: slow", Duration::from_secs(7))
        );
        let from_body = Answer { retry_after: Some(Duration::from_millis(1500)), ..Answer::default() };
        assert_eq!(
            s.answer(&response(429, &[], ""), from_body).unwrap_err(),
            Error::retry_after("Svc answered 429", Duration::from_millis(1500))
        );
        assert_eq!(
            s.answer(&response(503, &[], ""), Answer::default()).unwrap_err(),
            Error::transient("Svc answered 503")
        );
        let said = Answer { error: Some("channel_not_found".into()), ..Answer::default() };
        assert_eq!(
            s.answer(&response(404, &[], "{...}"), said).unwrap_err(),
            Error::permanent("Svc answered 404: channel_not_found")
        );
        let dup = Answer { also_delivered: &[409], ..Answer::default() };
        assert!(s.answer(&response(409, &[], ""), dup).is_ok());
    }

    #[test]
    fn text_is_cut_at_character_boundaries() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut(&"é".repeat(10), 4).chars().count(), 4);
        let bytes = cut_bytes(&"é".repeat(100), 11);
        assert!(bytes.len() <= 11 && bytes.ends_with('…'), "{bytes}");
        assert_eq!(cut_bytes("short", 100), "short");
    }

    #[test]
    fn only_the_services_urls_unless_relay() {
        let hosts = ["hooks.slack.com"];
        assert_eq!(
            service_url_problem("https://hooks.slack.com/services/T/B/x", false, "Slack", &hosts, "/services/"),
            None
        );
        let http =
            service_url_problem("http://hooks.slack.com/services/T", false, "Slack", &hosts, "/services/").unwrap();
        assert!(http.contains("https, not http"), "{http}");
        let other =
            service_url_problem("https://evil.example/services/secret", false, "Slack", &hosts, "/services/").unwrap();
        assert!(other.contains("evil.example is not a Slack host") && !other.contains("secret"), "{other}");
        assert!(service_url_problem("https://hooks.slack.com/x", false, "Slack", &hosts, "/services/").is_some());
        assert_eq!(service_url_problem("http://127.0.0.1:9/x", true, "Slack", &hosts, "/services/"), None);
        assert!(service_url_problem("ftp://x/", true, "Slack", &hosts, "/").is_some());
        let sub = [".logic.azure.com"];
        assert_eq!(
            service_url_problem("https://prod-1.westus.logic.azure.com/workflows/x", false, "Teams", &sub, "/"),
            None
        );
        assert!(service_url_problem("https://logic.azure.com.evil/x", false, "Teams", &sub, "/").is_some());
    }

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(percent_encode("3.14/a1"), "3.14%2Fa1");
        assert_eq!(percent_encode("!room:example.org"), "%21room%3Aexample.org");
    }
}
