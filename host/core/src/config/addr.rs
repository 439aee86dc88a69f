//! `HOST:PORT` addresses as operators write them (`delta.example.com:9901`,
//! `10.0.0.4:9901`, `[2001:db8::4]:9901`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, rest) =
                rest.split_once(']').ok_or_else(|| format!("`{s}`: missing `]` after an IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{s}`: `{host}` is not an IPv6 address"));
            }
            let port =
                rest.strip_prefix(':').ok_or_else(|| format!("`{s}`: expected HOST:PORT, e.g. [2001:db8::4]:9901"))?;
            (host, port)
        } else {
            let (host, port) =
                s.rsplit_once(':').ok_or_else(|| format!("`{s}`: expected HOST:PORT, e.g. delta.example.com:9901"))?;
            if host.contains(':') {
                return Err(format!("`{s}`: write IPv6 addresses in brackets, e.g. [::1]:9901"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(format!("`{s}`: the host is empty"));
        }
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':')) {
            return Err(format!("`{s}`: `{host}` is not a host name or address"));
        }
        let port: u16 = port.parse().map_err(|_| format!("`{s}`: `{port}` is not a port number (1-65535)"))?;
        if port == 0 {
            return Err(format!("`{s}`: port 0 cannot be advertised; pick a fixed port"));
        }
        Ok(Self { host: host.to_string(), port })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HostPort;

    #[test]
    fn parses_names_v4_and_bracketed_v6() {
        let hp: HostPort = "delta.example.com:9901".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("delta.example.com", 9901));
        let hp: HostPort = "[::1]:9901".parse().unwrap();
        assert_eq!(hp.host, "::1");
        assert_eq!(hp.to_string(), "[::1]:9901");
        assert_eq!("10.0.0.4:1".parse::<HostPort>().unwrap().to_string(), "10.0.0.4:1");
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        for bad in ["delta", ":9901", "delta:0", "delta:70000", "::1:9901", "[::1]", "[zz]:1", "a b:1"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad} accepted");
        }
    }
}
