//! The native check types (`http`, `tcp`, `icmp`): what a target and the
//! type's settings must look like, parsed into typed values once.

use std::collections::BTreeMap;
use std::fmt;

use super::HostPort;

/// Check types the host runs natively.
pub const NATIVE_TYPES: [&str; 3] = ["http", "tcp", "icmp"];
/// Check plugins built into every `qu` (usable without a `plugins:` entry;
/// an entry of the same name takes precedence).
pub const BUILT_IN_CHECK_PLUGINS: [&str; 2] = ["dns", "tls"];
/// Sink plugins built into every `qu`.
pub const BUILT_IN_SINK_PLUGINS: [&str; 14] = [
    "webhook",
    "discord",
    "email",
    "slack",
    "teams",
    "telegram",
    "pagerduty",
    "opsgenie",
    "ntfy",
    "gotify",
    "pushover",
    "matrix",
    "mattermost",
    "googlechat",
];

/// Settings each native type accepts.
pub const HTTP_SETTINGS: [&str; 5] = ["method", "expect", "body_match", "insecure", "max_redirects"];

/// HTTP methods a check may use.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

/// Redirects followed at most, whatever a check asks.
pub const REDIRECTS_MAX: u32 = 20;

/// The HTTP statuses a check accepts: codes, classes (`2xx`) and ranges,
/// comma-separated: `200`, `2xx`, `200-299,301`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatcher {
    ranges: Vec<(u16, u16)>,
    text: String,
}

impl StatusMatcher {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let range = if let Some(class) = part.strip_suffix("xx").or_else(|| part.strip_suffix("XX")) {
                let digit: u16 = class.parse().ok().filter(|d| (1..=5).contains(d)).ok_or_else(|| bad(text))?;
                (digit * 100, digit * 100 + 99)
            } else if let Some((low, high)) = part.split_once('-') {
                let (low, high) = (code(low.trim(), text)?, code(high.trim(), text)?);
                if low > high {
                    return Err(format!("expect `{text}`: range {low}-{high} runs backwards"));
                }
                (low, high)
            } else {
                let c = code(part, text)?;
                (c, c)
            };
            ranges.push(range);
        }
        Ok(Self { ranges, text: text.trim().to_string() })
    }

    pub fn matches(&self, status: u16) -> bool {
        self.ranges.iter().any(|(low, high)| (*low..=*high).contains(&status))
    }
}

impl Default for StatusMatcher {
    fn default() -> Self {
        Self::parse("2xx").expect("valid")
    }
}

impl fmt::Display for StatusMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn bad(text: &str) -> String {
    format!("expect `{text}`: use a status code (200), a class (2xx) or a range (200-299), comma-separated")
}

fn code(part: &str, text: &str) -> Result<u16, String> {
    part.parse().ok().filter(|c| (100..=599).contains(c)).ok_or_else(|| bad(text))
}

/// A fully parsed HTTP check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSpec {
    pub url: url::Url,
    pub method: String,
    pub expect: StatusMatcher,
    pub body_match: Option<String>,
    pub insecure: bool,
    pub max_redirects: u32,
}

/// A natively probed target, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeSpec {
    Http(HttpSpec),
    Tcp(HostPort),
    Icmp(String),
}

impl NativeSpec {
    /// Parses a native check's target and settings; `Ok(None)` for a type
    /// that is not native (a plugin's).
    pub fn parse(kind: &str, target: &str, settings: &BTreeMap<String, String>) -> Result<Option<Self>, Vec<String>> {
        match kind {
            "http" => parse_http(target, settings).map(|s| Some(NativeSpec::Http(s))),
            "tcp" => {
                no_settings(kind, settings)?;
                target.parse::<HostPort>().map(|hp| Some(NativeSpec::Tcp(hp))).map_err(|e| vec![format!("target: {e}")])
            }
            "icmp" => {
                no_settings(kind, settings)?;
                let host = target.trim().trim_start_matches('[').trim_end_matches(']');
                let ok = !host.is_empty()
                    && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
                if ok {
                    Ok(Some(NativeSpec::Icmp(host.to_string())))
                } else {
                    Err(vec![format!("target: `{target}` is not a host name or IP address")])
                }
            }
            _ => Ok(None),
        }
    }
}

fn no_settings(kind: &str, settings: &BTreeMap<String, String>) -> Result<(), Vec<String>> {
    if settings.is_empty() {
        Ok(())
    } else {
        let keys: Vec<&str> = settings.keys().map(String::as_str).collect();
        Err(vec![format!("settings: a {kind} check takes none (got {})", keys.join(", "))])
    }
}

fn parse_http(target: &str, settings: &BTreeMap<String, String>) -> Result<HttpSpec, Vec<String>> {
    let mut problems = Vec::new();
    let url = match url::Url::parse(target.trim()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => Some(url),
        Ok(url) => {
            problems.push(format!(
                "target: `{target}` must be an http:// or https:// URL with a host (got scheme {})",
                url.scheme()
            ));
            None
        }
        Err(e) => {
            problems.push(format!("target: `{target}` is not a URL: {e}"));
            None
        }
    };
    for key in settings.keys() {
        if !HTTP_SETTINGS.contains(&key.as_str()) {
            problems.push(format!("settings.{key}: unknown for an http check (known: {})", HTTP_SETTINGS.join(", ")));
        }
    }
    let method = settings.get("method").map(|m| m.trim().to_ascii_uppercase()).unwrap_or_else(|| "GET".into());
    if !METHODS.contains(&method.as_str()) {
        problems.push(format!("settings.method: `{method}` is not one of {}", METHODS.join(", ")));
    }
    let expect = match settings.get("expect") {
        Some(text) => StatusMatcher::parse(text).unwrap_or_else(|e| {
            problems.push(format!("settings.{e}"));
            StatusMatcher::default()
        }),
        None => StatusMatcher::default(),
    };
    let insecure = match settings.get("insecure").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            problems.push(format!("settings.insecure: `{other}` must be true or false"));
            false
        }
    };
    let max_redirects = match settings.get("max_redirects") {
        None => 5,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if n <= REDIRECTS_MAX => n,
            _ => {
                problems.push(format!("settings.max_redirects: `{text}` must be 0..={REDIRECTS_MAX}"));
                5
            }
        },
    };
    let body_match = settings.get("body_match").cloned().filter(|s| !s.is_empty());
    match (url, problems.is_empty()) {
        (Some(url), true) => Ok(HttpSpec { url, method, expect, body_match, insecure, max_redirects }),
        _ => Err(problems),
    }
}

/// The problem of an http check that asks for a HEAD and matches its body
/// (a HEAD response has none: the check would be down for ever), if it is
/// one. Refused when a check is added or edited, not when a file is read:
/// a file that held it before this rule still loads.
pub fn head_with_body_match(kind: &str, settings: &BTreeMap<String, String>) -> Option<String> {
    let head = settings.get("method").is_some_and(|m| m.trim().eq_ignore_ascii_case("HEAD"));
    let body = settings.get("body_match").is_some_and(|b| !b.is_empty());
    (kind == "http" && head && body)
        .then(|| "settings.body_match: a HEAD response has no body, so it would never match; use method GET".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_matchers() {
        let m = StatusMatcher::parse("200-299,301").unwrap();
        assert!(m.matches(200) && m.matches(299) && m.matches(301));
        assert!(!m.matches(300) && !m.matches(404));
        assert!(StatusMatcher::parse("2xx").unwrap().matches(204));
        assert!(!StatusMatcher::parse("2xx").unwrap().matches(302));
        assert!(StatusMatcher::parse("503").unwrap().matches(503));
        for bad in ["", "6xx", "abc", "300-200", "99", "2xx,", "1000"] {
            assert!(StatusMatcher::parse(bad).is_err(), "{bad}");
        }
    }

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn http_specs() {
        let spec = NativeSpec::parse(
            "http",
            "https://example.com/health",
            &settings(&[("expect", "200"), ("method", "head")]),
        )
        .unwrap()
        .unwrap();
        let NativeSpec::Http(http) = spec else { panic!() };
        assert_eq!(http.method, "HEAD");
        assert!(http.expect.matches(200) && !http.expect.matches(201));
        let errors =
            NativeSpec::parse("http", "ftp://x", &settings(&[("colour", "red"), ("insecure", "yes")])).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(NativeSpec::parse("http", "not a url", &BTreeMap::new()).is_err());
    }

    #[test]
    fn tcp_and_icmp_specs() {
        assert!(matches!(NativeSpec::parse("tcp", "db:5432", &BTreeMap::new()), Ok(Some(NativeSpec::Tcp(_)))));
        assert!(NativeSpec::parse("tcp", "db:99999", &BTreeMap::new()).is_err());
        assert!(NativeSpec::parse("tcp", "db", &BTreeMap::new()).is_err());
        assert!(
            matches!(NativeSpec::parse("icmp", "::1", &BTreeMap::new()), Ok(Some(NativeSpec::Icmp(h))) if h == "::1")
        );
        assert!(NativeSpec::parse("icmp", "a b", &BTreeMap::new()).is_err());
        assert!(NativeSpec::parse("icmp", "x", &settings(&[("a", "b")])).is_err());
        assert_eq!(NativeSpec::parse("dns", "x", &BTreeMap::new()), Ok(None));
    }
}
