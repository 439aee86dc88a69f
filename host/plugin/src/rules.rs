//! Where a plugin call may connect: the destinations its check or alert
//! names (the target, URLs and addresses in its settings), the plugin
//! entry's allow list, and — for check plugins — the node's DNS resolvers
//! on port 53. Names are compared before any lookup, so a denied
//! destination is never even resolved. The unspecified addresses
//! (`0.0.0.0`, `::`) are never destinations, whatever names them: a
//! connect to one reaches the node's own loopback services.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// One allowed destination; `port: None` means any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: Option<u16>,
}

impl Destination {
    /// Parses `https://host:port/path`, `host:port`, `[v6]:port`, an IP
    /// address or a bare host name (any port).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || text.contains(char::is_whitespace) {
            return None;
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let default = match scheme.to_ascii_lowercase().as_str() {
                "http" => 80,
                "https" => 443,
                "smtp" => 25,
                "smtps" => 465,
                _ => return None,
            };
            let authority = rest.split(['/', '?', '#']).next()?;
            let authority = authority.rsplit('@').next()?;
            let mut d = Self::parse_authority(authority)?;
            d.port.get_or_insert(default);
            return Some(d);
        }
        Self::parse_authority(text)
    }

    fn parse_authority(text: &str) -> Option<Self> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return (!ip.is_unspecified()).then(|| Self { host: ip.to_string(), port: None });
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return (!addr.ip().is_unspecified())
                .then(|| Self { host: addr.ip().to_string(), port: Some(addr.port()) });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
            None => (text, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        valid.then_some(Self { host, port })
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.host == normalise(host)
    }
}

fn normalise(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// The destinations of one call.
#[derive(Debug, Default)]
pub struct Rules {
    allowed: Vec<Destination>,
    /// Addresses the allowed names resolved to, for socket-level checks.
    resolved: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl Rules {
    /// For a check: its target, address-like settings, the allow list and
    /// the node's resolvers.
    pub fn for_check(target: &str, config: &[(String, String)], allow: &[String], resolvers: &[SocketAddr]) -> Self {
        let mut allowed: Vec<Destination> = Destination::parse(target).into_iter().collect();
        allowed.extend(from_settings(config));
        allowed.extend(allow.iter().filter_map(|a| Destination::parse(a)));
        allowed.extend(resolvers.iter().map(|r| Destination { host: r.ip().to_string(), port: Some(r.port()) }));
        Self { allowed, resolved: Mutex::default() }
    }

    /// For a sink: address-like settings (its URL, SMTP host) and the
    /// allow list.
    pub fn for_sink(config: &[(String, String)], allow: &[String]) -> Self {
        let mut allowed: Vec<Destination> = from_settings(config).collect();
        allowed.extend(allow.iter().filter_map(|a| Destination::parse(a)));
        Self { allowed, resolved: Mutex::default() }
    }

    /// Whether `host:port` (a name or an address, as the plugin gave it)
    /// may be reached.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        if normalise(host).parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            return false;
        }
        self.allowed.iter().any(|d| d.matches(host, port))
    }

    /// Whether a socket address may be reached: an allowed address, or an
    /// address an allowed name resolves to.
    pub async fn allows_addr(&self, addr: SocketAddr) -> bool {
        if addr.ip().is_unspecified() {
            return false;
        }
        if self.allows(&addr.ip().to_string(), addr.port()) {
            return true;
        }
        for d in self.allowed.iter().filter(|d| d.port.is_none_or(|p| p == addr.port())) {
            if d.host.parse::<IpAddr>().is_ok() {
                continue;
            }
            let cached = self.resolved.lock().unwrap_or_else(|e| e.into_inner()).get(&d.host).cloned();
            let ips = match cached {
                Some(ips) => ips,
                None => {
                    let ips: Vec<IpAddr> = tokio::net::lookup_host((d.host.as_str(), addr.port()))
                        .await
                        .map(|it| it.map(|a| a.ip()).collect())
                        .unwrap_or_default();
                    self.resolved.lock().unwrap_or_else(|e| e.into_inner()).insert(d.host.clone(), ips.clone());
                    ips
                }
            };
            if ips.contains(&addr.ip()) {
                return true;
            }
        }
        false
    }
}

/// Settings whose values name a destination: URLs, `host:port`, IP
/// addresses, and the value of a `host` key.
fn from_settings(config: &[(String, String)]) -> impl Iterator<Item = Destination> + '_ {
    config.iter().filter_map(|(key, value)| {
        let looks_like_address = value.contains("://")
            || value.parse::<IpAddr>().is_ok()
            || value.parse::<SocketAddr>().is_ok()
            || key == "host"
            || (value.contains(':') && value.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()));
        if looks_like_address { Destination::parse(value) } else { None }
    })
}

/// The node's DNS resolvers from `/etc/resolv.conf`.
pub fn system_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            Destination::parse("https://Example.com/x"),
            Some(Destination { host: "example.com".into(), port: Some(443) })
        );
        assert_eq!(Destination::parse("http://h:8080"), Some(Destination { host: "h".into(), port: Some(8080) }));
        assert_eq!(Destination::parse("[::1]:53"), Some(Destination { host: "::1".into(), port: Some(53) }));
        assert_eq!(Destination::parse("127.0.0.1"), Some(Destination { host: "127.0.0.1".into(), port: None }));
        assert_eq!(Destination::parse("api.test:99999"), None);
        assert_eq!(Destination::parse("ftp://x"), None);
        assert_eq!(Destination::parse("two words"), None);
        for unspecified in ["0.0.0.0", "0.0.0.0:80", "::", "[::]:443", "http://0.0.0.0:8080/x", "http://[::]/"] {
            assert_eq!(Destination::parse(unspecified), None, "{unspecified} is never a destination");
        }
    }

    #[tokio::test]
    async fn the_unspecified_addresses_are_never_reached() {
        let rules = Rules::for_check(
            "0.0.0.0:80",
            &pairs(&[("bind", "0.0.0.0"), ("v6", "[::]:443")]),
            &["0.0.0.0".into(), "[::]:8080".into()],
            &[],
        );
        for (host, port) in [("0.0.0.0", 80), ("0.0.0.0", 9), ("::", 443), ("[::]", 8080), ("0:0:0:0:0:0:0:0", 1)] {
            assert!(!rules.allows(host, port), "{host}:{port}");
        }
        for addr in ["0.0.0.0:80", "[::]:443", "[::]:8080"] {
            assert!(!rules.allows_addr(addr.parse().unwrap()).await, "{addr}");
        }
    }

    #[test]
    fn check_rules_cover_target_settings_allow_list_and_resolvers() {
        let resolvers = ["10.0.0.53:53".parse().unwrap()];
        let rules = Rules::for_check(
            "https://api.test/health",
            &pairs(&[("resolver", "192.0.2.1:5353"), ("record", "A")]),
            &["metrics.test:9100".into()],
            &resolvers,
        );
        assert!(rules.allows("api.test", 443));
        assert!(rules.allows("API.test.", 443));
        assert!(!rules.allows("api.test", 80));
        assert!(rules.allows("192.0.2.1", 5353));
        assert!(!rules.allows("192.0.2.1", 53));
        assert!(rules.allows("metrics.test", 9100));
        assert!(rules.allows("10.0.0.53", 53));
        assert!(!rules.allows("evil.test", 443));
    }

    #[tokio::test]
    async fn socket_addresses_match_allowed_ips_and_names() {
        let rules = Rules::for_sink(&pairs(&[("host", "localhost"), ("port", "587")]), &[]);
        assert!(rules.allows_addr("127.0.0.1:25".parse().unwrap()).await);
        assert!(!rules.allows_addr("192.0.2.7:25".parse().unwrap()).await);
        let rules = Rules::for_sink(&pairs(&[("url", "http://127.0.0.1:8080/hook")]), &[]);
        assert!(rules.allows_addr("127.0.0.1:8080".parse().unwrap()).await);
        assert!(!rules.allows_addr("127.0.0.1:8081".parse().unwrap()).await);
    }
}
