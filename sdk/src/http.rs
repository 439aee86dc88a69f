//! A small blocking HTTP client over `wasi:http`.
//!
//! ```no_run
//! # fn main() -> Result<(), qu_sdk::http::HttpError> {
//! let response = qu_sdk::http::get("https://example.com/health")
//!     .header("accept", "application/json")
//!     .timeout(std::time::Duration::from_secs(5))
//!     .send()?;
//! assert_eq!(response.status, 200);
//! # Ok(())
//! # }
//! ```
//!
//! The host decides where a plugin may connect: a destination outside the
//! check's target, the alert's configured URL and the plugin's allow list
//! fails with [`HttpError::Denied`] before any lookup or connection, and so
//! does a redirect towards one.

use std::fmt;
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// Response bodies larger than this are refused unless raised with
/// [`Request::max_response_bytes`].
pub const RESPONSE_BYTES_DEFAULT: usize = 1024 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the destination (not in the allow list).
    Denied(String),
    /// The URL cannot be used.
    InvalidUrl(String),
    /// No answer within the timeout.
    Timeout,
    /// Name resolution failed.
    Dns(String),
    /// The connection failed (refused, reset, unreachable).
    Connect(String),
    /// The TLS handshake failed (certificate, protocol).
    Tls(String),
    /// The response body exceeded the cap.
    TooLarge(usize),
    /// Anything else the transport reported.
    Other(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(to) => write!(f, "denied by allow-list: {to}"),
            Self::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Dns(why) => write!(f, "DNS lookup failed: {why}"),
            Self::Connect(why) => write!(f, "connect failed: {why}"),
            Self::Tls(why) => write!(f, "TLS failed: {why}"),
            Self::TooLarge(cap) => write!(f, "response body larger than {cap} bytes"),
            Self::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HttpError {}

/// A response, body read in full (up to the cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Duration,
    max_response_bytes: usize,
    redirects: u8,
}

/// A GET request.
pub fn get(url: impl Into<String>) -> Request {
    request("GET", url)
}

/// A POST request.
pub fn post(url: impl Into<String>) -> Request {
    request("POST", url)
}

/// A request with any method.
pub fn request(method: &str, url: impl Into<String>) -> Request {
    Request {
        method: method.to_ascii_uppercase(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout: Duration::from_secs(10),
        max_response_bytes: RESPONSE_BYTES_DEFAULT,
        redirects: 5,
    }
}

impl Request {
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Bounds connecting, the first response byte, and each gap between
    /// body bytes (the host's wall-clock limit bounds the whole call).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Redirects followed (default 5; 0 returns the 3xx response itself).
    pub fn redirects(mut self, max: u8) -> Self {
        self.redirects = max;
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let mut method = self.method.clone();
        let mut body = self.body.clone();
        let mut url = self.url.clone();
        for _ in 0..=self.redirects {
            let response = self.send_once(&method, &url, &body)?;
            let redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
            match response.header("location") {
                Some(location) if redirect && self.redirects > 0 => {
                    url = resolve(&url, location)?;
                    if response.status == 303 || (response.status != 307 && response.status != 308 && method == "POST")
                    {
                        method = "GET".into();
                        body.clear();
                    }
                }
                _ => return Ok(response),
            }
        }
        Err(HttpError::Other(format!("more than {} redirects", self.redirects)))
    }

    fn send_once(&self, method: &str, url: &str, body: &[u8]) -> Result<Response, HttpError> {
        let parts = Url::parse(url)?;
        let mut fields: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("content-length"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into_bytes()))
            .collect();
        // A known length, not chunked encoding: many receivers (and small
        // servers) do not read chunked request bodies.
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            fields.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        let headers = Fields::from_list(&fields).map_err(|e| HttpError::Other(format!("bad header: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let method = match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let invalid = |what: &str| HttpError::InvalidUrl(format!("{what} rejected: {}", shown(url)));
        request.set_method(&method).map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&if parts.https { Scheme::Https } else { Scheme::Http }))
            .map_err(|()| invalid("scheme"))?;
        request.set_authority(Some(&parts.authority)).map_err(|()| invalid("authority"))?;
        request.set_path_with_query(Some(&parts.path)).map_err(|()| invalid("path"))?;

        let options = RequestOptions::new();
        let nanos = self.timeout.as_nanos().min(u64::MAX as u128) as u64;
        // Hosts may not support every option; the call's deadline still holds.
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));

        let outgoing = request.body().map_err(|()| HttpError::Other("request body unavailable".into()))?;
        let future = outgoing_handler::handle(request, Some(options)).map_err(map_code)?;
        {
            let stream = outgoing.write().map_err(|()| HttpError::Other("request body stream unavailable".into()))?;
            for chunk in body.chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(|e| stream_error("write request body", e))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(map_code)?;

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(map_code(code)),
            Some(Err(())) | None => return Err(HttpError::Other("response lost".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|()| HttpError::Other("response body unavailable".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(|()| HttpError::Other("response body unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        if body.len() + chunk.len() > self.max_response_bytes {
                            return Err(HttpError::TooLarge(self.max_response_bytes));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error("read response body", e)),
                }
            }
        }
        let _ = IncomingBody::finish(incoming);
        Ok(Response { status, headers, body })
    }
}

fn stream_error(what: &str, error: StreamError) -> HttpError {
    match error {
        StreamError::Closed => HttpError::Other(format!("{what}: stream closed")),
        StreamError::LastOperationFailed(e) => HttpError::Other(format!("{what}: {}", e.to_debug_string())),
    }
}

fn map_code(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied("destination not allowed".into()),
        ErrorCode::DnsTimeout => HttpError::Timeout,
        ErrorCode::DnsError(e) => HttpError::Dns(e.rcode.unwrap_or_else(|| "no such host".into())),
        ErrorCode::ConnectionRefused => HttpError::Connect("connection refused".into()),
        ErrorCode::ConnectionTerminated => HttpError::Connect("connection closed".into()),
        ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Timeout,
        ErrorCode::DestinationUnavailable | ErrorCode::DestinationIpUnroutable => {
            HttpError::Connect("destination unreachable".into())
        }
        ErrorCode::TlsProtocolError => HttpError::Tls("protocol error".into()),
        ErrorCode::TlsCertificateError => HttpError::Tls("certificate not trusted".into()),
        ErrorCode::TlsAlertReceived(a) => HttpError::Tls(a.alert_message.unwrap_or_else(|| "alert received".into())),
        ErrorCode::InternalError(Some(m)) => HttpError::Other(m),
        other => HttpError::Other(format!("{other:?}")),
    }
}

/// `url` as errors and logs may show it: its scheme and host, never the
/// path, query or credentials, which may carry a token (Slack, Teams and
/// Discord webhook URLs do).
pub fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let scheme: String = scheme.chars().take(16).collect();
    if tail.is_empty() || tail == "/" { format!("{scheme}://{host}/") } else { format!("{scheme}://{host}/…") }
}

struct Url {
    https: bool,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = |why: &str| HttpError::InvalidUrl(format!("{why}: `{}`", shown(url)));
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported; use a header"));
        }
        let mut path = rest[end..].split('#').next().unwrap_or("").to_string();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Ok(Self { https, authority: authority.to_string(), path })
    }
}

/// Resolves a `Location` header against the URL it came from.
fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let parts = Url::parse(base)?;
    let scheme = if parts.https { "https" } else { "http" };
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{}{location}", parts.authority));
    }
    let dir = parts.path.split('?').next().unwrap_or("/");
    let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
    Ok(format!("{scheme}://{}{dir}{location}", parts.authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redirect_targets() {
        let u = Url::parse("https://example.com:8443/a/b?x=1#frag").unwrap();
        assert!(u.https);
        assert_eq!(u.authority, "example.com:8443");
        assert_eq!(u.path, "/a/b?x=1");
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert!(Url::parse("ftp://h").is_err());
        assert!(Url::parse("http://u:p@h/").is_err());
        assert_eq!(resolve("http://h/a/b", "/c").unwrap(), "http://h/c");
        assert_eq!(resolve("http://h/a/b", "c").unwrap(), "http://h/a/c");
        assert_eq!(resolve("http://h/a/b", "https://o/x").unwrap(), "https://o/x");
        assert_eq!(resolve("https://h/a", "//o/x").unwrap(), "https://o/x");
    }

    #[test]
    fn errors_never_quote_a_path_query_or_credentials() {
        let errors = [
            Url::parse("ftp://h/secret-path").err(),
            Url::parse("http://user:pa55@h/secret-path").err(),
            Url::parse("https:///secret-path").err(),
        ];
        for error in errors {
            let text = error.expect("refused").to_string();
            assert!(!text.contains("secret-path") && !text.contains("pa55"), "{text}");
        }
        assert_eq!(shown("https://discord.com/api/webhooks/1/t0ken"), "https://discord.com/…");
        assert_eq!(shown("http://u:p@h:8080"), "http://h:8080/");
        assert_eq!(shown("no url here"), "(not a URL)");
    }
}
