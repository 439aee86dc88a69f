//! Where a plugin call may connect. Only what the operator named opens
//! anything:
//! - the check's target (a bare host or address: any port);
//! - the settings the plugin declares as destinations in its `info()`
//!   (`qu:plugin@0.2.0`), each as the exact host and port its value gives;
//!   a 0.1.0 component declares nothing, and only its settings whose whole
//!   value is a URL count, as that URL's host and port;
//! - the plugin entry's allow list (`HOST` any port, `HOST:PORT` exactly);
//! - for check plugins, the node's DNS resolvers on port 53.
//!
//! Names are compared before any lookup, so a denied destination is never
//! even resolved. Every address actually connected to is checked after
//! resolution, on every path (wasi:sockets, wasi:http, tls-inspect, sink
//! TCP), and the connection goes to exactly the address that was checked:
//! - the unspecified addresses (`0.0.0.0`, `::`) are never reached;
//! - loopback, link-local and cloud-metadata addresses are reached only
//!   through a destination written as such an address (or `localhost`), or
//!   through an exact `HOST:PORT` in the plugin's allow list — never
//!   because a name happened to resolve there;
//! - the node's own peer port only through an exact allow-list entry.
//!
//! Every refusal is a [`Denial`], whose text names what was refused and how
//! the operator allows it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// What kind of destination a declared setting names (`qu:plugin@0.2.0`
/// `config-field.destination`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationKind {
    /// A URL: its host and its port (or the scheme's default).
    Url,
    /// `host:port`; a bare host means this port (none: the value must
    /// name one).
    Address(Option<u16>),
    /// A bare host whose port is another setting's value, or one of
    /// `defaults` when that setting is absent.
    Host { port_setting: String, defaults: Vec<u16> },
}

/// What a plugin declares of its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declarations {
    /// `qu:plugin@0.2.0` and later: these settings name destinations, and
    /// no other setting opens anything.
    Declared(Vec<(String, DestinationKind)>),
    /// A `qu:plugin@0.1.0` component, which cannot declare: a setting
    /// counts only when its whole value is a URL.
    Undeclared,
}

/// Most default ports a `host` destination may declare: a protocol's few
/// (SMTP's three), not a range.
pub const DEFAULT_PORTS_MAX: usize = 4;

impl Declarations {
    /// Why these declarations are not acceptable, if they are not: a `host`
    /// destination's port setting must be one of the plugin's settings, and
    /// it may name at most [`DEFAULT_PORTS_MAX`] default ports.
    pub fn problem(&self, settings: &[&str]) -> Option<String> {
        let Self::Declared(fields) = self else { return None };
        fields.iter().find_map(|(name, kind)| match kind {
            DestinationKind::Host { port_setting, .. } if !settings.contains(&port_setting.as_str()) => {
                Some(format!("setting `{name}` takes its port from `{port_setting}`, which is not one of its settings"))
            }
            DestinationKind::Host { defaults, .. } if defaults.len() > DEFAULT_PORTS_MAX => Some(format!(
                "setting `{name}` declares {} default ports; a destination may have at most {DEFAULT_PORTS_MAX}",
                defaults.len()
            )),
            _ => None,
        })
    }
}

impl Default for Declarations {
    fn default() -> Self {
        Self::Declared(Vec::new())
    }
}

/// Where an allowed destination came from (for denial messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Target,
    Setting(String),
    AllowList,
    Resolver,
}

/// One allowed destination; `port: None` means any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: Option<u16>,
    pub source: Source,
}

impl Destination {
    /// Parses `https://host:port/path`, `host:port`, `[v6]:port`, an IP
    /// address or a bare host name (any port).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.contains("://") { Self::parse_url(text) } else { parse_authority(text).map(Self::new) }
    }

    fn new((host, port): (String, Option<u16>)) -> Self {
        Self { host, port, source: Source::Target }
    }

    /// An `http(s)://` or `smtp(s)://` URL: its host and port (or the
    /// scheme's default).
    pub fn parse_url(text: &str) -> Option<Self> {
        let (scheme, rest) = text.trim().split_once("://")?;
        let default = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            "smtp" => 25,
            "smtps" => 465,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit('@').next()?;
        let (host, port) = parse_authority(authority)?;
        Some(Self::new((host, Some(port.unwrap_or(default)))))
    }

    fn from(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.host == host
    }

    fn exact_allow(&self) -> bool {
        self.source == Source::AllowList && self.port.is_some()
    }
}

/// `host`, `host:port`, `[v6]:port` or an address, as (canonical host,
/// port). Unspecified addresses are never destinations.
fn parse_authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return (!ip.is_unspecified()).then(|| (ip.to_string(), None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        let ip = addr.ip().to_canonical();
        return (!ip.is_unspecified()).then(|| (ip.to_string(), Some(addr.port())));
    }
    let (host, port) = match text.rsplit_once(':') {
        _ if text.starts_with('[') && text.ends_with(']') => (text, None),
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => (host, Some(port.parse::<u16>().ok()?)),
        Some(_) => return None,
        None => (text, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        return (!ip.is_unspecified()).then(|| (ip.to_string(), port));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    valid.then_some((host, port))
}

/// A host as the plugin gave it, in the form destinations are kept in.
fn normalise(host: &str) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

fn is_localhost(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

pub use qu_transport::net::{Special, special};

/// Whether `ip` is one of this machine's own addresses (binding to it
/// succeeds only then).
fn is_own(ip: IpAddr) -> bool {
    special(ip).is_some_and(|s| matches!(s, Special::Loopback | Special::Unspecified))
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `host:port` as an allow-list entry writes it (IPv6 in brackets).
fn entry(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Why a connection was refused. Its text names what and how to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "denied by allow-list: {} is not a destination of this call (not its target, not a setting \
         plugin `{plugin}` declares as a destination, not in its allow list); allow it with \
         `qu plugin add {plugin} FILE --allow-host {}`",
        entry(host, *port), entry(host, *port)
    )]
    NotNamed { plugin: String, host: String, port: u16 },
    #[error("denied: {addr} is {}, which is never a destination", Special::Unspecified.as_str())]
    Unspecified { addr: SocketAddr },
    #[error(
        "denied: `{name}` resolves to {ip}, {}, which a plugin reaches only when the operator names it; \
         allow it with `qu plugin add {plugin} FILE --allow-host {}` (or name the address itself)",
        kind.as_str(), entry(name, addr.port()), ip = addr.ip()
    )]
    Special { plugin: String, name: String, addr: SocketAddr, kind: Special },
    #[error(
        "denied: {addr} is this node's own peer port; allow it with \
         `qu plugin add {plugin} FILE --allow-host {}`",
        entry(via, addr.port())
    )]
    PeerPort {
        plugin: String,
        addr: SocketAddr,
        /// The host as the plugin asked for it (a name, or the address).
        via: String,
    },
}

impl Denial {
    /// The same denial, naming `plugin` in how to allow it.
    pub fn for_plugin(mut self, name: &str) -> Self {
        match &mut self {
            Self::NotNamed { plugin, .. } | Self::Special { plugin, .. } | Self::PeerPort { plugin, .. } => {
                *plugin = name.to_string();
            }
            Self::Unspecified { .. } => {}
        }
        self
    }
}

/// Why [`Rules::resolve`] gave no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("{0}")]
    Lookup(String),
}

/// The destinations of one call.
#[derive(Debug, Default)]
pub struct Rules {
    plugin: String,
    allowed: Vec<Destination>,
    /// The node's peer port, when the plugin runs inside the daemon.
    peer_port: Option<u16>,
    /// Addresses the allowed names resolved to in this call (one lookup
    /// per name, so a name cannot answer differently within a call).
    resolved: Mutex<HashMap<String, Vec<IpAddr>>>,
}

/// What a call is: a check (its target) or a sink.
pub struct Call<'a> {
    pub plugin: &'a str,
    pub target: Option<&'a str>,
    pub config: &'a [(String, String)],
    pub declared: &'a Declarations,
    pub allow: &'a [String],
    pub resolvers: &'a [SocketAddr],
    pub peer_port: Option<u16>,
}

impl Rules {
    /// The rules of one call.
    pub fn new(call: Call<'_>) -> Self {
        let mut allowed: Vec<Destination> = call.target.and_then(Destination::parse).into_iter().collect();
        allowed.extend(from_settings(call.config, call.declared));
        allowed.extend(call.allow.iter().filter_map(|a| Destination::parse(a)).map(|d| d.from(Source::AllowList)));
        allowed.extend(call.resolvers.iter().map(|r| Destination {
            host: r.ip().to_canonical().to_string(),
            port: Some(r.port()),
            source: Source::Resolver,
        }));
        Self { plugin: call.plugin.to_string(), allowed, peer_port: call.peer_port, resolved: Mutex::default() }
    }

    /// No destination at all (info and validation calls).
    pub fn none(plugin: &str) -> Self {
        Self { plugin: plugin.to_string(), ..Self::default() }
    }

    /// The rules the HTTP connector applies to `host:port`, a name a call's
    /// rules already allowed: `named_exactly` when the call's allow list
    /// names it as `HOST:PORT` ([`Rules::names_exactly`]), which lets it
    /// reach special addresses.
    pub(crate) fn for_name(host: &str, port: u16, named_exactly: bool) -> Self {
        let source = if named_exactly { Source::AllowList } else { Source::Target };
        let allowed = vec![Destination { host: normalise(host), port: Some(port), source }];
        Self { plugin: "NAME".into(), allowed, ..Self::default() }
    }

    pub(crate) fn set_peer_port(&mut self, port: Option<u16>) {
        self.peer_port = port;
    }

    /// Whether the allow list names `host:port` exactly.
    pub fn names_exactly(&self, host: &str, port: u16) -> bool {
        let host = normalise(host);
        self.allowed.iter().any(|d| d.exact_allow() && d.matches(&host, port))
    }

    fn not_named(&self, host: &str, port: u16) -> Denial {
        Denial::NotNamed { plugin: self.plugin.clone(), host: host.to_string(), port }
    }

    /// Whether `host:port` (a name or an address, as the plugin gave it)
    /// may be asked for, before any lookup. A name still has its addresses
    /// checked when it is resolved ([`Rules::resolved`]).
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Denial> {
        let host = normalise(host);
        let Ok(ip) = host.parse::<IpAddr>() else {
            return match self.allowed.iter().any(|d| d.matches(&host, port)) {
                true => Ok(()),
                false => Err(self.not_named(&host, port)),
            };
        };
        self.check_literal(SocketAddr::new(ip, port))
    }

    /// An address the plugin gave itself.
    fn check_literal(&self, addr: SocketAddr) -> Result<(), Denial> {
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        if special(ip) == Some(Special::Unspecified) {
            return Err(Denial::Unspecified { addr });
        }
        let text = ip.to_string();
        let mut matching = self.allowed.iter().filter(|d| d.matches(&text, addr.port())).peekable();
        if matching.peek().is_none() {
            return Err(self.not_named(&text, addr.port()));
        }
        let exact = matching.any(|d| d.exact_allow());
        if !exact && self.is_own_peer(addr) {
            return Err(Denial::PeerPort { plugin: self.plugin.clone(), addr, via: ip.to_string() });
        }
        Ok(())
    }

    fn is_own_peer(&self, addr: SocketAddr) -> bool {
        self.peer_port == Some(addr.port()) && is_own(addr.ip().to_canonical())
    }

    /// Whether `addr`, an address the allowed name `name` resolved to, may
    /// be connected to.
    pub fn check_resolved(&self, name: &str, addr: SocketAddr) -> Result<(), Denial> {
        let name = normalise(name);
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        let named: Vec<&Destination> = self.allowed.iter().filter(|d| d.matches(&name, addr.port())).collect();
        if named.is_empty() {
            return Err(self.not_named(&name, addr.port()));
        }
        let exact = named.iter().any(|d| d.exact_allow());
        match special(ip) {
            Some(Special::Unspecified) => return Err(Denial::Unspecified { addr }),
            Some(Special::Loopback) if is_localhost(&name) => {}
            Some(kind) if !exact => {
                return Err(Denial::Special { plugin: self.plugin.clone(), name, addr, kind });
            }
            _ => {}
        }
        if !exact && self.is_own_peer(addr) {
            return Err(Denial::PeerPort { plugin: self.plugin.clone(), addr, via: name });
        }
        Ok(())
    }

    /// Resolves `host:port` for a connection the host makes (tls-inspect,
    /// sink TCP): the checked addresses, in the resolver's order. The
    /// connection must go to one of these and nowhere else.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Unreachable> {
        self.check_name(host, port)?;
        let name = normalise(host);
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.lookup(&name, port).await.map_err(|e| Unreachable::Lookup(format!("resolve {name}: {e}")))?;
        let mut first_denial = None;
        let mut addrs = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(ip, port);
            match self.check_resolved(&name, addr) {
                Ok(()) => addrs.push(addr),
                Err(denial) => {
                    first_denial.get_or_insert(denial);
                }
            }
        }
        match (addrs.is_empty(), first_denial) {
            (true, Some(denial)) => Err(Unreachable::Denied(denial)),
            (true, None) => Err(Unreachable::Lookup(format!("resolve {name}: no addresses"))),
            (false, _) => Ok(addrs),
        }
    }

    async fn lookup(&self, name: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        if let Some(ips) = self.resolved.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(ips.clone());
        }
        let ips: Vec<IpAddr> = tokio::net::lookup_host((name, port)).await?.map(|a| a.ip().to_canonical()).collect();
        self.resolved.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), ips.clone());
        Ok(ips)
    }

    /// Whether a socket address a plugin connects or sends to itself
    /// (wasi:sockets) may be reached: an allowed address, or an address an
    /// allowed name resolves to in this call and that passes
    /// [`Rules::check_resolved`].
    pub async fn check_addr(&self, addr: SocketAddr) -> Result<(), Denial> {
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        let literal = self.check_literal(addr);
        if !matches!(literal, Err(Denial::NotNamed { .. })) {
            return literal;
        }
        let names: Vec<String> = self
            .allowed
            .iter()
            .filter(|d| d.port.is_none_or(|p| p == addr.port()) && d.host.parse::<IpAddr>().is_err())
            .map(|d| d.host.clone())
            .collect();
        let mut denial = literal.unwrap_err();
        for name in names {
            if !self.lookup(&name, addr.port()).await.unwrap_or_default().contains(&ip) {
                continue;
            }
            match self.check_resolved(&name, addr) {
                Ok(()) => return Ok(()),
                Err(d) => denial = d,
            }
        }
        Err(denial)
    }
}

/// The destinations the settings name, by what the plugin declares.
fn from_settings<'a>(config: &'a [(String, String)], declared: &'a Declarations) -> Vec<Destination> {
    let value = |key: &str| config.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let mut found = Vec::new();
    match declared {
        Declarations::Undeclared => {
            for (key, value) in config {
                found.extend(Destination::parse_url(value).map(|d| d.from(Source::Setting(key.clone()))));
            }
        }
        Declarations::Declared(fields) => {
            for (key, kind) in fields {
                let Some(text) = value(key) else { continue };
                let source = Source::Setting(key.clone());
                match kind {
                    DestinationKind::Url => found.extend(Destination::parse_url(text).map(|d| d.from(source))),
                    DestinationKind::Address(default) => {
                        if let Some((host, port)) = parse_authority(text)
                            && let Some(port) = port.or(*default)
                        {
                            found.push(Destination { host, port: Some(port), source });
                        }
                    }
                    DestinationKind::Host { port_setting, defaults } => {
                        let Some((host, None)) = parse_authority(text) else { continue };
                        let ports = match value(port_setting) {
                            Some(port) => port.trim().parse::<u16>().ok().into_iter().collect(),
                            None => defaults.clone(),
                        };
                        for port in ports {
                            found.push(Destination { host: host.clone(), port: Some(port), source: source.clone() });
                        }
                    }
                }
            }
        }
    }
    found
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

    fn declared(fields: &[(&str, DestinationKind)]) -> Declarations {
        Declarations::Declared(fields.iter().map(|(k, d)| (k.to_string(), d.clone())).collect())
    }

    fn rules(target: Option<&str>, config: &[(&str, &str)], declared: &Declarations, allow: &[&str]) -> Rules {
        let allow: Vec<String> = allow.iter().map(|a| a.to_string()).collect();
        Rules::new(Call {
            plugin: "p",
            target,
            config: &pairs(config),
            declared,
            allow: &allow,
            resolvers: &[],
            peer_port: None,
        })
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn destinations_parse() {
        let d = |host: &str, port| Some(Destination { host: host.into(), port, source: Source::Target });
        assert_eq!(Destination::parse("https://Example.com/x"), d("example.com", Some(443)));
        assert_eq!(Destination::parse("http://h:8080"), d("h", Some(8080)));
        assert_eq!(Destination::parse("http://user:pw@h:8080/x?y"), d("h", Some(8080)));
        assert_eq!(Destination::parse("[::1]:53"), d("::1", Some(53)));
        assert_eq!(Destination::parse("127.0.0.1"), d("127.0.0.1", None));
        assert_eq!(Destination::parse("[::ffff:127.0.0.1]:80"), d("127.0.0.1", Some(80)), "mapped is the IPv4 address");
        assert_eq!(Destination::parse("api.test:99999"), None);
        assert_eq!(Destination::parse("ftp://x"), None);
        assert_eq!(Destination::parse("two words"), None);
        assert_eq!(Destination::parse("a:b:c"), None);
        for unspecified in ["0.0.0.0", "0.0.0.0:80", "::", "[::]:443", "http://0.0.0.0:8080/x", "http://[::]/"] {
            assert_eq!(Destination::parse(unspecified), None, "{unspecified} is never a destination");
        }
    }

    #[test]
    fn special_addresses_in_every_form() {
        let kind = |ip: &str| special(ip.parse().unwrap());
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "::127.0.0.1"] {
            assert_eq!(kind(ip), Some(Special::Loopback), "{ip}");
        }
        for ip in ["0.0.0.0", "0.1.2.3", "::", "::ffff:0.0.0.0"] {
            assert_eq!(kind(ip), Some(Special::Unspecified), "{ip}");
        }
        for ip in ["169.254.1.1", "fe80::1", "::ffff:169.254.3.4"] {
            assert_eq!(kind(ip), Some(Special::LinkLocal), "{ip}");
        }
        for ip in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "168.63.129.16", "::ffff:169.254.169.254"] {
            assert_eq!(kind(ip), Some(Special::Metadata), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "fd00::1", "::ffff:10.1.2.3"] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn only_declared_settings_open_anything_and_exactly() {
        let declarations = declared(&[
            ("url", DestinationKind::Url),
            ("resolver", DestinationKind::Address(Some(53))),
            ("relay", DestinationKind::Address(None)),
            ("host", DestinationKind::Host { port_setting: "port".into(), defaults: vec![587, 465] }),
        ]);
        let r = rules(
            None,
            &[
                ("url", "https://hooks.test/x"),
                ("resolver", "192.0.2.1"),
                ("relay", "192.0.2.9"),
                ("host", "smtp.test"),
                ("expect", "127.0.0.1"),
                ("note", "10.0.0.1:80"),
                ("other", "http://elsewhere.test/"),
            ],
            &declarations,
            &[],
        );
        assert!(r.check_name("hooks.test", 443).is_ok());
        assert!(r.check_name("hooks.test", 80).is_err(), "a URL opens its own port only");
        assert!(r.check_name("192.0.2.1", 53).is_ok());
        assert!(r.check_name("192.0.2.1", 5353).is_err());
        assert!(r.check_name("192.0.2.9", 1).is_err(), "an address without a port and no default opens nothing");
        assert!(r.check_name("smtp.test", 587).is_ok() && r.check_name("smtp.test", 465).is_ok());
        assert!(r.check_name("smtp.test", 25).is_err());
        for (host, port) in [("127.0.0.1", 22), ("127.0.0.1", 80), ("10.0.0.1", 80), ("elsewhere.test", 80)] {
            let denial = r.check_name(host, port).unwrap_err();
            assert!(matches!(denial, Denial::NotNamed { .. }), "{host}:{port}: {denial}");
        }
        let with_port = rules(None, &[("host", "smtp.test"), ("port", "2525")], &declarations, &[]);
        assert!(with_port.check_name("smtp.test", 2525).is_ok());
        assert!(with_port.check_name("smtp.test", 587).is_err(), "the port setting replaces the defaults");
        let with_port = rules(None, &[("relay", "relay.test:2525")], &declarations, &[]);
        assert!(with_port.check_name("relay.test", 2525).is_ok());
    }

    #[test]
    fn declarations_may_not_open_a_range() {
        let settings = ["host", "port"];
        let host = |defaults: Vec<u16>| DestinationKind::Host { port_setting: "port".into(), defaults };
        assert_eq!(declared(&[("host", host(vec![587, 465, 25]))]).problem(&settings), None);
        let wide = declared(&[("host", host((1..=100).collect()))]).problem(&settings).unwrap();
        assert!(wide.contains("declares 100 default ports; a destination may have at most 4"), "{wide}");
        let odd = DestinationKind::Host { port_setting: "nope".into(), defaults: vec![25] };
        let odd = declared(&[("host", odd)]).problem(&settings).unwrap();
        assert!(odd.contains("takes its port from `nope`, which is not one of its settings"), "{odd}");
    }

    #[test]
    fn denials_say_an_entry_that_allows_them() {
        let r = rules(None, &[], &Declarations::default(), &[]);
        let text = r.check_name("::1", 8080).unwrap_err().to_string();
        assert!(text.contains("--allow-host [::1]:8080"), "IPv6 in brackets: {text}");
        let allowed = rules(None, &[], &Declarations::default(), &["[::1]:8080", "[2001:db8::2]"]);
        assert!(allowed.check_name("::1", 8080).is_ok());
        assert!(allowed.check_name("2001:db8::2", 1).is_ok(), "a bracketed address without a port");
        let named = rules(Some("svc.test"), &[], &Declarations::default(), &[]);
        let text = named.check_resolved("svc.test", addr("127.0.0.1:8080")).unwrap_err().to_string();
        assert!(text.contains("--allow-host svc.test:8080"), "the entry that lets the name through: {text}");
        let exact = rules(Some("svc.test"), &[], &Declarations::default(), &["svc.test:8080"]);
        assert!(exact.check_resolved("svc.test", addr("127.0.0.1:8080")).is_ok(), "and it does");
    }

    #[test]
    fn a_0_1_0_plugin_opens_only_url_settings() {
        let r = rules(
            None,
            &[("url", "http://hooks.test:8080/x"), ("host", "127.0.0.1"), ("addr", "192.0.2.1:53")],
            &Declarations::Undeclared,
            &[],
        );
        assert!(r.check_name("hooks.test", 8080).is_ok());
        assert!(r.check_name("127.0.0.1", 25).is_err());
        assert!(r.check_name("192.0.2.1", 53).is_err());
    }

    #[test]
    fn the_target_and_the_allow_list_stay_allowed() {
        let r =
            rules(Some("https://api.test/health"), &[], &Declarations::default(), &["metrics.test:9100", "any.test"]);
        assert!(r.check_name("api.test", 443).is_ok());
        assert!(r.check_name("API.test.", 443).is_ok());
        assert!(r.check_name("api.test", 80).is_err());
        assert!(r.check_name("metrics.test", 9100).is_ok());
        assert!(r.check_name("any.test", 1234).is_ok());
        assert!(r.check_name("evil.test", 443).is_err());
    }

    #[test]
    fn a_name_never_reaches_a_special_address_unless_named_exactly() {
        let r = rules(Some("svc.test"), &[], &Declarations::default(), &["exact.test:8080", "loose.test"]);
        for (ip, kind) in [
            ("127.0.0.1", Special::Loopback),
            ("[::1]", Special::Loopback),
            ("[::ffff:127.0.0.1]", Special::Loopback),
            ("169.254.169.254", Special::Metadata),
            ("169.254.7.7", Special::LinkLocal),
            ("[fe80::1]", Special::LinkLocal),
        ] {
            let denial = r.check_resolved("svc.test", addr(&format!("{ip}:8080"))).unwrap_err();
            assert!(matches!(denial, Denial::Special { kind: k, .. } if k == kind), "{ip}: {denial}");
            let text = denial.to_string();
            assert!(text.contains("svc.test") && text.contains("--allow-host"), "{text}");
            assert!(r.check_resolved("loose.test", addr(&format!("{ip}:8080"))).is_err(), "a bare allow-list name");
            assert!(r.check_resolved("exact.test", addr(&format!("{ip}:8080"))).is_ok(), "an exact allow-list entry");
        }
        assert!(r.check_resolved("svc.test", addr("192.0.2.10:8080")).is_ok());
        assert!(r.check_resolved("svc.test", addr("0.0.0.0:8080")).is_err());
        let local = rules(Some("localhost"), &[], &Declarations::default(), &[]);
        assert!(local.check_resolved("localhost", addr("127.0.0.1:80")).is_ok(), "localhost names loopback");
        assert!(local.check_resolved("localhost", addr("[::1]:80")).is_ok());
        assert!(local.check_resolved("localhost", addr("169.254.169.254:80")).is_err());
    }

    #[test]
    fn literal_special_addresses_pass_only_when_written_so() {
        let declarations = declared(&[("endpoint", DestinationKind::Address(None))]);
        let r = rules(None, &[("endpoint", "127.0.0.1:8080"), ("note", "169.254.169.254")], &declarations, &[]);
        assert!(r.check_name("127.0.0.1", 8080).is_ok());
        assert!(r.check_name("[::ffff:127.0.0.1]", 8080).is_ok(), "the same address in IPv6 form");
        for (host, port) in [("127.0.0.1", 8081), ("::1", 8080), ("169.254.169.254", 80), ("fe80::1", 8080)] {
            assert!(r.check_name(host, port).is_err(), "{host}:{port}");
        }
    }

    #[tokio::test]
    async fn the_unspecified_addresses_are_never_reached() {
        let r = rules(
            Some("0.0.0.0:80"),
            &[("bind", "0.0.0.0"), ("v6", "[::]:443")],
            &declared(&[("v6", DestinationKind::Address(None))]),
            &["0.0.0.0", "[::]:8080"],
        );
        for (host, port) in [("0.0.0.0", 80), ("0.0.0.0", 9), ("::", 443), ("[::]", 8080), ("0:0:0:0:0:0:0:0", 1)] {
            assert!(r.check_name(host, port).is_err(), "{host}:{port}");
        }
        for a in ["0.0.0.0:80", "[::]:443", "[::]:8080", "[::ffff:0.0.0.0]:80"] {
            let denial = r.check_addr(addr(a)).await.unwrap_err();
            assert!(matches!(denial, Denial::Unspecified { .. } | Denial::NotNamed { .. }), "{a}: {denial}");
        }
    }

    #[tokio::test]
    async fn the_nodes_own_peer_port_needs_an_exact_allow_list_entry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let allow: Vec<String> = Vec::new();
        let call = |allow: &[String]| {
            Rules::new(Call {
                plugin: "p",
                target: Some("127.0.0.1"),
                config: &[],
                declared: &Declarations::default(),
                allow,
                resolvers: &[],
                peer_port: Some(port),
            })
        };
        let r = call(&allow);
        let denial = r.check_name("127.0.0.1", port).unwrap_err();
        assert!(matches!(denial, Denial::PeerPort { .. }), "{denial}");
        assert!(denial.to_string().contains(&format!("--allow-host 127.0.0.1:{port}")), "{denial}");
        assert!(r.check_addr(addr(&format!("127.0.0.1:{port}"))).await.is_err());
        assert!(r.check_name("127.0.0.1", port.wrapping_add(1)).is_ok(), "the target's other ports stay open");
        let r = call(&[format!("127.0.0.1:{port}")]);
        assert!(r.check_name("127.0.0.1", port).is_ok());
        assert!(r.check_addr(addr(&format!("127.0.0.1:{port}"))).await.is_ok());
    }

    #[tokio::test]
    async fn resolving_checks_every_address_and_keeps_one_answer_per_call() {
        let r = rules(Some("localhost"), &[], &Declarations::default(), &[]);
        let addrs = r.resolve("localhost", 8080).await.unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{addrs:?}");
        assert!(r.resolve("elsewhere.test", 80).await.unwrap_err().to_string().starts_with("denied by allow-list"));
        assert!(r.check_addr(addr("127.0.0.1:8080")).await.is_ok(), "an address localhost resolved to");
        assert!(r.check_addr(addr("127.0.0.2:8080")).await.is_err(), "one it did not");
    }
}
