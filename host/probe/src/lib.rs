//! Native probes: HTTP(S) with reqwest (connection reuse per check), TCP
//! connect, and ICMP echo with surge-ping (raw socket when permitted,
//! unprivileged datagram socket otherwise).
//!
//! Every probe ends in a value, never an error: an outcome, a latency and a
//! short human detail (`status 503`, `connect refused`, `timeout after 10s`,
//! `no reply`). A probe that cannot run on this node (no ICMP socket) is
//! `Unavailable`, which is no vote for DOWN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use qu_core::config::{HttpSpec, NativeSpec};
use qu_core::monitor::Outcome;

/// Bytes of an HTTP body searched for `body_match`.
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Longest detail text kept.
const DETAIL_CHARS_MAX: usize = 160;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    pub latency_ms: u32,
    pub detail: String,
}

impl ProbeResult {
    fn new(outcome: Outcome, started: Instant, detail: impl Into<String>) -> Self {
        let detail = short_detail(&detail.into());
        Self { outcome, latency_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32, detail }
    }
}

/// A probe's detail as `qu status` shows it: one line, whitespace
/// collapsed, at most 160 characters (cut with `…`). Plugin checks' details
/// go through it too.
/// One call of a dead man's switch (healthchecks.io style): a GET of
/// `url`; any 2xx answer counts. Returns the status, or why it failed.
pub async fn ping(url: &str, timeout: Duration) -> Result<u16, String> {
    let tls = qu_transport::probe_client_config(false).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::limited(3))
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("qu/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let response = client.get(url).send().await.map_err(|e| http_error(&e, timeout))?;
    let status = response.status();
    if status.is_success() { Ok(status.as_u16()) } else { Err(format!("status {}", status.as_u16())) }
}

pub fn short_detail(text: &str) -> String {
    let mut detail: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if detail.chars().count() > DETAIL_CHARS_MAX {
        detail = detail.chars().take(DETAIL_CHARS_MAX - 1).collect::<String>() + "…";
    }
    detail
}

/// The probe engine of one node: HTTP clients kept per check (so
/// connections are reused between probes), ICMP sockets per family.
#[derive(Default)]
pub struct Probes {
    http: Mutex<HashMap<String, (HttpSpec, Duration, reqwest::Client)>>,
    icmp_v4: OnceLock<Result<surge_ping::Client, String>>,
    icmp_v6: OnceLock<Result<surge_ping::Client, String>>,
    sequence: AtomicU16,
}

impl Probes {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Runs one probe of `spec` within `timeout`.
    pub async fn run(&self, check_id: &str, spec: &NativeSpec, timeout: Duration) -> ProbeResult {
        let started = Instant::now();
        let probe = async {
            match spec {
                NativeSpec::Http(http) => self.http(check_id, http, timeout, started).await,
                NativeSpec::Tcp(target) => tcp(&target.host, target.port, started).await,
                NativeSpec::Icmp(host) => self.icmp(host, timeout, started).await,
            }
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(result) => result,
            Err(_) => ProbeResult::new(Outcome::Down, started, format!("timeout after {}", seconds(timeout))),
        }
    }

    /// Drops the HTTP clients of checks that are gone.
    pub fn retain(&self, check_ids: &std::collections::HashSet<&str>) {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| check_ids.contains(id.as_str()));
    }

    fn http_client(&self, check_id: &str, spec: &HttpSpec, timeout: Duration) -> Result<reqwest::Client, String> {
        let mut clients = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, known_timeout, client)) = clients.get(check_id)
            && known == spec
            && *known_timeout == timeout
        {
            return Ok(client.clone());
        }
        let tls = qu_transport::probe_client_config(spec.insecure).map_err(|e| e.to_string())?;
        let redirects = redirect_policy(spec);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(redirects)
            .dns_resolver(Arc::new(RedirectResolver::for_target(&spec.url)))
            // A probe measures the target, not a proxy the environment names
            // (and a proxy would resolve the names past the resolver above).
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("qu/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(2)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        clients.insert(check_id.to_string(), (spec.clone(), timeout, client.clone()));
        Ok(client)
    }

    async fn http(&self, check_id: &str, spec: &HttpSpec, timeout: Duration, started: Instant) -> ProbeResult {
        let client = match self.http_client(check_id, spec, timeout) {
            Ok(client) => client,
            Err(detail) => return ProbeResult::new(Outcome::Unavailable, started, detail),
        };
        let method = reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut response = match client.request(method, spec.url.clone()).send().await {
            Ok(response) => response,
            Err(error) => return ProbeResult::new(Outcome::Down, started, http_error(&error, timeout)),
        };
        let status = response.status().as_u16();
        // The body is always read (up to the cap): only a connection whose
        // response was read to the end goes back to the pool for reuse.
        let body = read_body(&mut response, spec.body_match.is_some()).await;
        if !spec.expect.matches(status) {
            return ProbeResult::new(Outcome::Down, started, format!("status {status} (expected {})", spec.expect));
        }
        let Some(needle) = &spec.body_match else {
            return ProbeResult::new(Outcome::Up, started, format!("status {status}"));
        };
        match body {
            Ok(body) if String::from_utf8_lossy(&body).contains(needle.as_str()) => {
                ProbeResult::new(Outcome::Up, started, format!("status {status}, body matches"))
            }
            Ok(_) => ProbeResult::new(Outcome::Down, started, format!("status {status}, body lacks {needle:?}")),
            Err(error) => ProbeResult::new(Outcome::Down, started, http_error(&error, timeout)),
        }
    }

    fn icmp_client(&self, v6: bool) -> Result<surge_ping::Client, String> {
        let cell = if v6 { &self.icmp_v6 } else { &self.icmp_v4 };
        cell.get_or_init(|| open_icmp(v6)).clone()
    }

    async fn icmp(&self, host: &str, timeout: Duration, started: Instant) -> ProbeResult {
        let ip: IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) => match tokio::net::lookup_host((host, 0)).await.map(|mut a| a.next()) {
                Ok(Some(addr)) => addr.ip(),
                Ok(None) => return ProbeResult::new(Outcome::Down, started, format!("no address for {host}")),
                Err(e) => return ProbeResult::new(Outcome::Down, started, format!("resolve {host}: {e}")),
            },
        };
        let client = match self.icmp_client(ip.is_ipv6()) {
            Ok(client) => client,
            Err(detail) => return ProbeResult::new(Outcome::Unavailable, started, detail),
        };
        let ident = surge_ping::PingIdentifier(rand_ident());
        let mut pinger = client.pinger(ip, ident).await;
        pinger.timeout(timeout);
        let sequence = surge_ping::PingSequence(self.sequence.fetch_add(1, Ordering::Relaxed));
        match pinger.ping(sequence, &[0u8; 16]).await {
            Ok((_, rtt)) => {
                ProbeResult::new(Outcome::Up, started, format!("reply in {:.1} ms", rtt.as_secs_f64() * 1e3))
            }
            Err(surge_ping::SurgeError::Timeout { .. }) => ProbeResult::new(Outcome::Down, started, "no reply"),
            Err(error) => ProbeResult::new(Outcome::Down, started, format!("ping: {error}")),
        }
    }
}

/// Opens an ICMP socket: raw when permitted (root or CAP_NET_RAW), an
/// unprivileged datagram socket otherwise.
fn open_icmp(v6: bool) -> Result<surge_ping::Client, String> {
    let kind = if v6 { surge_ping::ICMP::V6 } else { surge_ping::ICMP::V4 };
    let raw = surge_ping::Config::builder().kind(kind).build();
    let raw_error = match surge_ping::Client::new(&raw) {
        Ok(client) => return Ok(client),
        Err(error) => error,
    };
    tracing::debug!(error = %raw_error, "no raw ICMP socket; trying a datagram socket");
    let dgram = surge_ping::Config::builder().kind(kind).sock_type_hint(socket2::Type::DGRAM).build();
    surge_ping::Client::new(&dgram).map_err(|dgram_error| {
        tracing::debug!(error = %dgram_error, "no datagram ICMP socket either");
        "ICMP unavailable: raw sockets need root or CAP_NET_RAW, and datagram ICMP sockets need this user's group \
         in net.ipv4.ping_group_range"
            .to_string()
    })
}

fn rand_ident() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() as u16).wrapping_mul(31);
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Reads a response body up to `BODY_BYTES_MAX`, keeping the bytes only
/// when `keep` (a body match needs them).
async fn read_body(response: &mut reqwest::Response, keep: bool) -> Result<Vec<u8>, reqwest::Error> {
    let (mut body, mut seen) = (Vec::new(), 0usize);
    while let Some(chunk) = response.chunk().await? {
        let room = BODY_BYTES_MAX - seen;
        if keep {
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        seen += chunk.len().min(room);
        if seen >= BODY_BYTES_MAX {
            break;
        }
    }
    Ok(body)
}

async fn tcp(host: &str, port: u16, started: Instant) -> ProbeResult {
    match tokio::net::TcpStream::connect((host, port)).await {
        Ok(stream) => {
            // Close with a reset: a connect check leaves no TIME_WAIT socket
            // behind on this node, however often it runs.
            let _ = stream.set_zero_linger();
            ProbeResult::new(Outcome::Up, started, "connected")
        }
        Err(error) => ProbeResult::new(Outcome::Down, started, io_detail(&error)),
    }
}

fn io_detail(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        std::io::ErrorKind::TimedOut => "connect timed out".into(),
        _ => format!("connect: {error}"),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Where an HTTP check's redirects may go: at most `max_redirects` hops
/// (`0`: none followed, the 3xx is the answer); never from `https` to
/// `http`; never to an unspecified address (`0.0.0.0`, `::`); and to a
/// loopback or link-local address (the cloud metadata service at
/// 169.254.169.254 among them) only if the check's target is one of that
/// kind itself. An address in the `Location` is judged here; a name is
/// judged by the addresses it resolves to ([`RedirectResolver`]).
fn redirect_policy(spec: &HttpSpec) -> reqwest::redirect::Policy {
    let max = spec.max_redirects as usize;
    if max == 0 {
        return reqwest::redirect::Policy::none();
    }
    let target_kind = spec.url.host().and_then(|h| special_address(&h.to_string()));
    let https = spec.url.scheme() == "https";
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error("too many redirects");
        }
        let next = attempt.url();
        if https && next.scheme() == "http" {
            let shown = shown_url(next);
            return attempt.error(format!("redirect from https to {shown} refused (no downgrade to plain http)"));
        }
        let host = next.host().map(|h| h.to_string()).unwrap_or_default();
        match special_address(&host) {
            Some(kind @ "unspecified") => attempt.error(format!("redirect to {host} refused: an {kind} address")),
            Some(kind) if Some(kind) != target_kind => attempt
                .error(format!("redirect to {host} refused: a {kind} address, and the check's target is not one")),
            _ => attempt.follow(),
        }
    })
}

/// Resolves the names of an HTTP check's requests: the target's own name
/// to whatever it resolves to (the operator chose it), and any other name —
/// one a redirect brought in — to its addresses without the special ones
/// the redirect policy refuses, so a name that resolves to loopback or to
/// 169.254.169.254 is refused like the address itself.
struct RedirectResolver {
    target_host: String,
    target_kind: Option<&'static str>,
}

impl RedirectResolver {
    fn for_target(url: &reqwest::Url) -> Self {
        let target_host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let target_kind = special_address(target_host).or((target_host == "localhost").then_some("loopback"));
        Self { target_host: target_host.to_ascii_lowercase(), target_kind }
    }
}

impl reqwest::dns::Resolve for RedirectResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_ascii_lowercase();
        let own = name == self.target_host;
        let target_kind = self.target_kind;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if own {
                return Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match special_address(&addr.ip().to_string()) {
                    Some(kind) if kind == "unspecified" || Some(kind) != target_kind => {
                        refused.get_or_insert((addr.ip(), kind));
                        false
                    }
                    _ => true,
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some((ip, kind))) => Err(format!(
                    "redirect to {name} refused: it resolves to {ip}, a{} {kind} address, and the check's target is not one",
                    if kind == "unspecified" { "n" } else { "" }
                )
                .into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The kind of an IP-literal `host` that a redirect may not reach unless
/// the target is of the same kind (IPv4-mapped forms count as the IPv4
/// address; the cloud metadata addresses count as link-local).
fn special_address(host: &str) -> Option<&'static str> {
    use qu_transport::net::{Special, special};
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    match special(ip)? {
        Special::Unspecified => Some("unspecified"),
        Special::Loopback => Some("loopback"),
        Special::LinkLocal | Special::Metadata => Some("link-local"),
    }
}

/// A URL as a probe detail may show it: scheme and host, not the path.
fn shown_url(url: &reqwest::Url) -> String {
    format!("{}://{}/…", url.scheme(), url.host_str().unwrap_or(""))
}

/// A short detail for a failed request: what went wrong, from the deepest
/// cause that says something.
fn http_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timeout after {}", seconds(timeout));
    }
    if let Some(refused) = redirect_refused_by_resolver(error) {
        return refused;
    }
    if error.is_redirect() {
        // The policy's own refusal (`redirect_policy`), said as it is.
        let mut cause: &dyn std::error::Error = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        return cause.to_string();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    if let Some(io) = find_io(error) {
        return io_detail(io);
    }
    if text.contains("certificate") || text.contains("Certificate") {
        return format!("TLS: {text}");
    }
    if error.is_connect() { format!("connect: {text}") } else { text }
}

/// The resolver's refusal of a redirect's name, if that is why it failed.
fn redirect_refused_by_resolver(error: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        if text.starts_with("redirect to ") && text.contains(" refused: it resolves to ") {
            return Some(text);
        }
        cause = current.source();
    }
    None
}

fn find_io(error: &reqwest::Error) -> Option<&std::io::Error> {
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut)
        {
            return Some(io);
        }
        cause = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::short_detail;

    /// A name a redirect brings in is judged by what it resolves to:
    /// `localhost` (really resolved) is loopback, refused for a target that
    /// is not, followed for one that is; the target's own name is never
    /// filtered.
    #[test]
    fn special_addresses_in_every_form() {
        for (host, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("[::1]", Some("loopback")),
            ("[::ffff:127.0.0.1]", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("[::ffff:169.254.169.254]", Some("link-local")),
            ("[::ffff:a9fe:a9fe]", Some("link-local")),
            ("[fd00:ec2::254]", Some("link-local")),
            ("100.100.100.200", Some("link-local")),
            ("[fe80::1]", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("[::ffff:0.0.0.0]", Some("unspecified")),
            ("0.1.2.3", Some("unspecified")),
            ("10.0.0.1", None),
            ("example.test", None),
        ] {
            assert_eq!(super::special_address(host), kind, "{host}");
        }
    }

    #[tokio::test]
    async fn a_redirect_to_a_name_that_resolves_to_loopback_is_refused() {
        use reqwest::dns::Resolve;
        let name = |n: &str| n.parse::<reqwest::dns::Name>().unwrap();
        let public = super::RedirectResolver::for_target(&"http://192.0.2.1/health".parse().unwrap());
        let refused = public.resolve(name("localhost")).await.err().expect("refused").to_string();
        assert!(refused.starts_with("redirect to localhost refused: it resolves to "), "{refused}");
        assert!(refused.ends_with("a loopback address, and the check's target is not one"), "{refused}");
        let local = super::RedirectResolver::for_target(&"http://127.0.0.1:8080/".parse().unwrap());
        assert!(local.resolve(name("localhost")).await.is_ok(), "a loopback target may be redirected to loopback");
        let own = super::RedirectResolver::for_target(&"http://localhost:8080/".parse().unwrap());
        let addrs: Vec<_> = own.resolve(name("localhost")).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty(), "{addrs:?}");
    }

    #[test]
    fn details_are_one_short_line() {
        assert_eq!(short_detail("status 503\n  (expected\t2xx)"), "status 503 (expected 2xx)");
        let long = short_detail(&"é".repeat(500));
        assert_eq!(long.chars().count(), 160);
        assert!(long.ends_with('…'));
    }
}
