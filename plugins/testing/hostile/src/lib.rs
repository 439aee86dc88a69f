//! A plugin that misbehaves on request, for the sandbox tests. The target
//! names the misdeed; each must end in a clear, specific failure of that
//! one call and nothing else.
//!
//! With `unless_reachable` (IP:PORT) the plugin first tries a TCP connect
//! there and behaves when it succeeds, so an end-to-end test can make
//! exactly one node misbehave — the one cut off from that address — while
//! the others vote normally.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use qu_sdk::{Check, Config, Destination, Error, Info, Outcome};

/// How long the `unless_reachable` connect may take. Short, so that a node
/// whose packets are dropped (rather than refused) still gets to its
/// misdeed well within the check's timeout.
const REACH_TIMEOUT_MS: u64 = 1_000;

struct Hostile;

impl Check for Hostile {
    fn info() -> Info {
        Info::new("hostile", env!("CARGO_PKG_VERSION"), "misbehaves on request (tests only)")
            .target("spin | alloc | fill | read-file | env | connect:HOST:PORT | http:URL | sockets | flood:N | deny:N | panic | ok")
            .optional(
                "unless_reachable",
                None,
                "IP:PORT; when a TCP connect there succeeds (within 1s), answer UP instead of misbehaving \
                 (give the check a timeout above 1s)",
            )
            .destination(Destination::Address { default_port: None })
            .optional("endpoint", None, "HOST:PORT the plugin declares as a destination (opens it)")
            .destination(Destination::Address { default_port: None })
            .optional("url", None, "a URL the plugin declares as a destination (opens its host and port)")
            .destination(Destination::Url)
            .optional("note", None, "free text, not a destination: whatever it holds opens nothing")
    }

    fn validate(config: &Config, _target: &str) -> Result<(), Error> {
        settings(config)?;
        Ok(())
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let settings = settings(config)?;
        let misdeed = Misdeed::parse(target)?;
        if let Some(address) = settings.unless_reachable {
            let timeout = Duration::from_millis(REACH_TIMEOUT_MS);
            if let Some(behaving) = behaves(address, connect(address, timeout))? {
                return Ok(behaving);
            }
        }
        misdeed.perform()
    }
}

qu_sdk::export_check!(Hostile);

struct Settings {
    unless_reachable: Option<SocketAddr>,
}

fn settings(config: &Config) -> Result<Settings, Error> {
    // An IP address, not a name: the sandbox resolves no names, so a name
    // would never be reachable and every node would misbehave.
    Ok(Settings { unless_reachable: config.optional("unless_reachable")? })
}

/// What the target asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misdeed<'a> {
    /// `ok`: no misdeed at all.
    Behave,
    Spin,
    Alloc,
    ReadFile,
    Env,
    Panic,
    /// `connect:HOST:PORT`
    Connect(&'a str),
    /// `sockets`: open UDP sockets until refused, and hold them.
    Sockets,
    /// `fill`: allocate memory 1 MiB at a time, touching every page, until
    /// the host stops it.
    Fill,
    /// `inspect:N:HOST:PORT`: N TLS handshakes through the host there, one
    /// after another.
    Inspect(u32, &'a str),
    /// `http:URL`
    Http(&'a str),
    /// `flood:N`: N metrics (the first ones with long names) and a long
    /// message.
    Flood(u32),
    /// `deny:N`: N HTTP requests to an address no rule allows.
    Deny(u32),
}

impl<'a> Misdeed<'a> {
    fn parse(target: &'a str) -> Result<Self, Error> {
        Ok(match target {
            "ok" => Self::Behave,
            "spin" => Self::Spin,
            "alloc" => Self::Alloc,
            "read-file" => Self::ReadFile,
            "env" => Self::Env,
            "panic" => Self::Panic,
            "sockets" => Self::Sockets,
            "fill" => Self::Fill,
            other => {
                if let Some(address) = other.strip_prefix("connect:") {
                    Self::Connect(address)
                } else if let Some(url) = other.strip_prefix("http:") {
                    Self::Http(url)
                } else if let Some(n) = other.strip_prefix("flood:").and_then(|n| n.parse().ok()) {
                    Self::Flood(n)
                } else if let Some((n, address)) = other.strip_prefix("inspect:").and_then(|r| r.split_once(':'))
                    && let Ok(n) = n.parse()
                {
                    Self::Inspect(n, address)
                } else if let Some(n) = other.strip_prefix("deny:").and_then(|n| n.parse().ok()) {
                    Self::Deny(n)
                } else {
                    return Err(Error::config(format!("unknown misdeed `{other}`")));
                }
            }
        })
    }

    fn perform(self) -> Result<Outcome, Error> {
        match self {
            Self::Behave => Ok(Outcome::up("behaving")),
            Self::Spin => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Self::Alloc => {
                let mut v: Vec<u8> = Vec::new();
                v.resize(1 << 30, 1);
                Ok(Outcome::up(format!("allocated {} bytes", std::hint::black_box(&v).len())))
            }
            Self::ReadFile => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => Ok(Outcome::up(format!("read /etc/passwd: {} bytes", text.len()))),
                Err(e) => Err(Error::permanent(format!("read /etc/passwd: {e}"))),
            },
            Self::Env => env_report(std::env::vars().map(|(k, _)| k).collect()),
            Self::Panic => panic!("hostile plugin panics on purpose"),
            Self::Fill => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    for page in chunk.iter_mut().step_by(4096) {
                        *page = 1;
                    }
                    held.push(std::hint::black_box(chunk));
                }
            }
            Self::Inspect(n, address) => {
                let (host, port) = address.rsplit_once(':').ok_or_else(|| Error::config("inspect:N:HOST:PORT"))?;
                let port: u16 = port.parse().map_err(|_| Error::config("inspect:N:HOST:PORT"))?;
                for i in 0..n {
                    if let Err(e) = qu_sdk::tls::inspect(host, port, None, None, Duration::from_millis(500))
                        && e.contains("refused")
                    {
                        return Err(Error::permanent(format!("handshake {i}: {e}")));
                    }
                }
                Ok(Outcome::up(format!("{n} handshakes")))
            }
            Self::Sockets => {
                let mut held = Vec::new();
                let error = loop {
                    match std::net::UdpSocket::bind("0.0.0.0:0") {
                        Ok(socket) => held.push(socket),
                        Err(e) => break e,
                    }
                    if held.len() >= 1_000_000 {
                        return Ok(Outcome::up(format!("opened {} sockets, never refused", held.len())));
                    }
                };
                Err(Error::permanent(format!("opened {} sockets, then: {error}", held.len())))
            }
            Self::Connect(address) => match TcpStream::connect(address) {
                Ok(_) => Ok(Outcome::up(format!("connected to {address}"))),
                Err(e) => Err(Error::permanent(format!("connect {address}: {e}"))),
            },
            Self::Http(url) => {
                let response = qu_sdk::http::get(url).send().map_err(|e| Error::permanent(e.to_string()))?;
                Ok(Outcome::up(format!("status {}", response.status)))
            }
            Self::Flood(n) => {
                let mut outcome = Outcome::up("x".repeat(1 << 20));
                for i in 0..n {
                    let name = if i < 10 { format!("m{i}_{}", "y".repeat(200)) } else { format!("m{i}") };
                    outcome = outcome.metric(name, f64::from(i));
                }
                Ok(outcome)
            }
            Self::Deny(n) => {
                let mut denied = 0;
                for _ in 0..n {
                    if qu_sdk::http::get("http://192.0.2.1/").send().is_err() {
                        denied += 1;
                    }
                }
                Err(Error::permanent(format!("{denied} requests denied; {}", "z".repeat(1 << 16))))
            }
        }
    }
}

/// The `env` misdeed's answer, from the names of the variables it saw.
fn env_report(names: Vec<String>) -> Result<Outcome, Error> {
    if names.is_empty() {
        Err(Error::permanent("no environment variables visible"))
    } else {
        Ok(Outcome::up(format!("saw {} variables: {}", names.len(), names.join(","))))
    }
}

fn connect(address: SocketAddr, timeout: Duration) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(&address, timeout)?;
    // On wasm32-wasip2 `connect_timeout` also reports success for a connect
    // that was refused (the libc's SO_ERROR stays 0); only a socket that
    // really connected has a peer address.
    stream.peer_addr().map(drop)
}

/// Whether to behave, given how the `unless_reachable` connect went: UP
/// when it connected, misbehave (`None`) when it did not. A connect the
/// sandbox refuses is a configuration problem, not a node cut off: every
/// node would misbehave.
fn behaves(address: SocketAddr, connected: io::Result<()>) -> Result<Option<Outcome>, Error> {
    match connected {
        Ok(()) => Ok(Some(Outcome::up(format!("behaving: {address} reachable")))),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(Error::config(format!("setting `unless_reachable`: the sandbox denied a connect to {address}: {e}")))
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn targets_name_misdeeds() {
        let cases: &[(&str, Result<Misdeed, Error>)] = &[
            ("ok", Ok(Misdeed::Behave)),
            ("spin", Ok(Misdeed::Spin)),
            ("alloc", Ok(Misdeed::Alloc)),
            ("read-file", Ok(Misdeed::ReadFile)),
            ("env", Ok(Misdeed::Env)),
            ("panic", Ok(Misdeed::Panic)),
            ("sockets", Ok(Misdeed::Sockets)),
            ("fill", Ok(Misdeed::Fill)),
            ("inspect:100:127.0.0.1:9", Ok(Misdeed::Inspect(100, "127.0.0.1:9"))),
            ("connect:127.0.0.1:9", Ok(Misdeed::Connect("127.0.0.1:9"))),
            ("http:http://127.0.0.1:8080/x", Ok(Misdeed::Http("http://127.0.0.1:8080/x"))),
            ("flood:500000", Ok(Misdeed::Flood(500_000))),
            ("deny:1000", Ok(Misdeed::Deny(1_000))),
            ("OK", Err(Error::config("unknown misdeed `OK`"))),
            ("", Err(Error::config("unknown misdeed ``"))),
            ("explode", Err(Error::config("unknown misdeed `explode`"))),
        ];
        for (target, expected) in cases {
            assert_eq!(&Misdeed::parse(target), expected, "target {target:?}");
        }
    }

    #[test]
    fn ok_behaves_and_an_unknown_misdeed_is_a_config_error() {
        assert_eq!(Hostile::check(&Config::default(), "ok"), Ok(Outcome::up("behaving")));
        assert_eq!(Hostile::check(&Config::default(), "fly"), Err(Error::config("unknown misdeed `fly`")));
    }

    #[test]
    fn env_reports_the_variables_it_sees() {
        assert_eq!(env_report(Vec::new()), Err(Error::permanent("no environment variables visible")));
        assert_eq!(env_report(vec!["HOME".into(), "PATH".into()]), Ok(Outcome::up("saw 2 variables: HOME,PATH")));
    }

    #[test]
    fn the_connect_outcome_decides_whether_to_behave() {
        let address: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        // (how the connect went, the decision)
        let cases = [
            (Ok(()), Ok(Some(Outcome::up("behaving: 127.0.0.1:7000 reachable")))),
            (Err(refused()), Ok(None)),
            (Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")), Ok(None)),
            (Err(io::Error::new(io::ErrorKind::HostUnreachable, "no route")), Ok(None)),
            (
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "access denied")),
                Err(Error::config(
                    "setting `unless_reachable`: the sandbox denied a connect to 127.0.0.1:7000: access denied",
                )),
            ),
        ];
        for (connected, expected) in cases {
            let shown = format!("{connected:?}");
            assert_eq!(behaves(address, connected), expected, "connect gave {shown}");
        }
    }

    #[test]
    fn a_reachable_address_stops_the_misdeed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let config = Config::from_pairs(&[("unless_reachable", &address.to_string())]);
        // `panic` would fail the test if it were performed.
        assert_eq!(Hostile::check(&config, "panic"), Ok(Outcome::up(format!("behaving: {address} reachable"))));
        // A misdeed the plugin does not know is refused all the same.
        assert_eq!(Hostile::check(&config, "fly"), Err(Error::config("unknown misdeed `fly`")));
    }

    #[test]
    fn an_unreachable_address_lets_the_misdeed_happen() {
        // A port nothing listens on any more: the connect is refused.
        let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let config = Config::from_pairs(&[("unless_reachable", &address.to_string())]);
        let error = Hostile::check(&config, &format!("connect:{address}")).unwrap_err();
        let Error::Permanent(message) = error else { panic!("expected a permanent error, got {error:?}") };
        assert!(message.starts_with(&format!("connect {address}: ")), "{message}");
        assert_eq!(Hostile::check(&config, "ok"), Ok(Outcome::up("behaving")));
    }

    #[test]
    fn unless_reachable_must_be_an_ip_address_and_port() {
        assert_eq!(Hostile::validate(&Config::from_pairs(&[("unless_reachable", "127.0.0.1:8080")]), "spin"), Ok(()));
        assert_eq!(Hostile::validate(&Config::from_pairs(&[("unless_reachable", "[::1]:8080")]), "spin"), Ok(()));
        for bad in ["localhost:8080", "127.0.0.1", "127.0.0.1:99999", ""] {
            let expected = Error::config(format!(
                "setting `unless_reachable`: expected an address such as 192.0.2.1:53 or [2001:db8::1]:53, got `{bad}`"
            ));
            assert_eq!(
                Hostile::validate(&Config::from_pairs(&[("unless_reachable", bad)]), "spin"),
                Err(expected.clone())
            );
            assert_eq!(Hostile::check(&Config::from_pairs(&[("unless_reachable", bad)]), "ok"), Err(expected));
        }
        let info = Hostile::info();
        let field = info.fields.iter().find(|f| f.name == "unless_reachable").unwrap();
        assert_eq!((field.required, field.default.as_deref()), (false, None));
        // The help text states the connect timeout the code uses.
        assert!(field.description.contains(&format!("within {}s", REACH_TIMEOUT_MS / 1_000)), "{}", field.description);
    }
}
