//! The built-in `dns` check: asks a resolver for a record of TARGET (a
//! DNS name) and is UP when an answer of that type comes back (containing
//! `expect`, when given).
//!
//! Settings: `record` (A, AAAA, CNAME, MX, TXT, NS; default A),
//! `resolver` (IP[:port]; default: the node's first resolver), `expect`
//! (a substring one of the answers must contain), `timeout` (per attempt,
//! default 2s). Queries go over UDP, and over TCP when the answer is
//! truncated. A CNAME check is UP only if the name really is a CNAME.

mod wire;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use qu_sdk::{Check, Config, Destination, Error, Info, Outcome};
use wire::{Answer, RecordType};

struct Dns;

impl Check for Dns {
    fn info() -> Info {
        Info::new("dns", env!("CARGO_PKG_VERSION"), "a DNS record resolves (to what you expect)")
            .target("a DNS name, e.g. example.com")
            .optional("record", Some("A"), "record type: A, AAAA, CNAME, MX, TXT or NS")
            .optional("resolver", None, "resolver IP[:port]; default: the node's first resolver")
            .destination(Destination::Address { default_port: Some(53) })
            .optional("expect", None, "a substring one of the answers must contain")
            .optional("timeout", Some("2s"), "time per attempt (two attempts)")
    }

    fn validate(config: &Config, target: &str) -> Result<(), Error> {
        settings(config)?;
        wire::encode_name(target).map_err(Error::config)?;
        Ok(())
    }

    fn check(config: &Config, target: &str) -> Result<Outcome, Error> {
        let settings = settings(config)?;
        let resolver = match settings.resolver {
            Some(resolver) => resolver,
            None => system_resolver()?,
        };
        let started = Instant::now();
        let response = query(target, settings.record, resolver, settings.timeout)?;
        let latency = started.elapsed();
        judge(target, &settings, &response).map(|o| o.latency(latency))
    }
}

qu_sdk::export_check!(Dns);

struct Settings {
    record: RecordType,
    resolver: Option<SocketAddr>,
    expect: Option<String>,
    timeout: Duration,
}

fn settings(config: &Config) -> Result<Settings, Error> {
    let record = config.get_or("record", "A".to_string())?;
    let record = RecordType::parse(&record).ok_or_else(|| {
        Error::config(format!("setting `record`: `{record}` is not one of A, AAAA, CNAME, MX, TXT, NS"))
    })?;
    let resolver = match config.get("resolver") {
        None => None,
        Some(text) => Some(parse_resolver(text).ok_or_else(|| {
            Error::config(format!("setting `resolver`: expected an IP address with an optional port, got `{text}`"))
        })?),
    };
    let timeout = config.get_or("timeout", Duration::from_secs(2))?;
    if timeout.is_zero() {
        return Err(Error::config("setting `timeout`: must be more than 0"));
    }
    Ok(Settings { record, resolver, expect: config.optional("expect")?, timeout })
}

fn parse_resolver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| text.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

fn system_resolver() -> Result<SocketAddr, Error> {
    qu_sdk::system::resolvers()
        .iter()
        .find_map(|r| parse_resolver(r))
        .ok_or_else(|| Error::config("this node has no resolver configured; set `resolver`"))
}

fn query(name: &str, record: RecordType, resolver: SocketAddr, timeout: Duration) -> Result<wire::Response, Error> {
    // A random query id (the standard library's hasher keys come from wasi:random).
    let id = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), name) as u16;
    let packet = wire::query(id, name, record).map_err(Error::config)?;
    let mut last = String::new();
    for _ in 0..2 {
        match udp(&packet, resolver, timeout) {
            Ok(bytes) => {
                let response = wire::parse(&bytes, id).map_err(Error::transient)?;
                if !response.truncated {
                    return Ok(response);
                }
                let bytes =
                    tcp(&packet, resolver, timeout).map_err(|e| Error::transient(format!("TCP to {resolver}: {e}")))?;
                return wire::parse(&bytes, id).map_err(Error::transient);
            }
            Err(e) => last = e,
        }
    }
    Err(Error::transient(format!("no answer from {resolver}: {last}")))
}

fn udp(packet: &[u8], resolver: SocketAddr, timeout: Duration) -> Result<Vec<u8>, String> {
    let bind = if resolver.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    socket.connect(resolver).map_err(|e| e.to_string())?;
    socket.send(packet).map_err(|e| e.to_string())?;
    // WASI sockets have no receive timeout: poll a non-blocking socket
    // until the deadline (the host's wall-time limit bounds it too).
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 4096];
    loop {
        match socket.recv(&mut buffer) {
            Ok(n) => {
                buffer.truncate(n);
                return Ok(buffer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(format!("timeout after {}ms", timeout.as_millis()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn tcp(packet: &[u8], resolver: SocketAddr, timeout: Duration) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    // Bounded by the host's wall-time limit of the call.
    let _ = timeout;
    let mut stream = TcpStream::connect(resolver).map_err(|e| e.to_string())?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).map_err(|e| e.to_string())?;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

fn judge(name: &str, settings: &Settings, response: &wire::Response) -> Result<Outcome, Error> {
    match response.rcode {
        0 => {}
        3 => return Ok(Outcome::down("NXDOMAIN")),
        2 => return Ok(Outcome::down("SERVFAIL")),
        5 => return Ok(Outcome::down("REFUSED")),
        other => return Ok(Outcome::down(format!("rcode {other}"))),
    }
    // Answers of the asked type; for CNAME, only one owned by the name itself.
    let wanted: Vec<&Answer> = response
        .answers
        .iter()
        .filter(|a| a.kind == settings.record)
        .filter(|a| settings.record != RecordType::Cname || wire::same_name(&a.owner, name))
        .collect();
    if wanted.is_empty() {
        let other: Vec<String> = response.answers.iter().map(|a| a.kind.name().to_string()).collect();
        return Ok(Outcome::down(if other.is_empty() {
            format!("no {} record", settings.record.name())
        } else {
            format!("no {} record (answer has {})", settings.record.name(), other.join(", "))
        }));
    }
    let values: Vec<&str> = wanted.iter().map(|a| a.value.as_str()).collect();
    let shown = summary(&values);
    match &settings.expect {
        Some(expect) if !values.iter().any(|v| v.contains(expect.as_str())) => {
            Ok(Outcome::down(format!("no answer contains `{expect}`: {shown}")))
        }
        _ => Ok(Outcome::up(shown).metric("answers", values.len() as f64)),
    }
}

fn summary(values: &[&str]) -> String {
    let mut text = values.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    if values.len() > 3 {
        text.push_str(&format!(" (+{} more)", values.len() - 3));
    }
    text
}
