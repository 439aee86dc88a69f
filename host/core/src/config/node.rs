//! `node.yaml`: this node's identity and addresses. Never replicated.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HostPort, parse_yaml};
use crate::NodeId;
use crate::limits::{CLUSTER_SECRET_CHARS_MIN, NODE_YAML_BYTES_MAX};

pub const DEFAULT_BIND: &str = "0.0.0.0";
pub const DEFAULT_PORT: u16 = 9901;
const FILE: &str = "node.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; also the CN of `keys/cert.pem`.
    pub node_id: NodeId,
    /// Address the peer listener binds.
    pub bind: IpAddr,
    /// Port the peer listener binds.
    pub port: u16,
    /// `HOST:PORT` other members dial to reach this node.
    pub advertise: String,
    /// Shared secret proven (never sent) when a node joins.
    pub cluster_secret: String,
    /// `ADDR:PORT` of qu's own HTTP listener (`/metrics`); absent: off.
    /// It has no authentication: keep it on loopback or a private network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<std::net::SocketAddr>,
}

/// Values from the environment (`QUPTIME_ADVERTISE`, ...) that win over the
/// file. The daemon reads the environment; this type keeps the rule pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    pub advertise: Option<String>,
    pub bind: Option<String>,
    pub port: Option<String>,
    pub cluster_secret: Option<String>,
}

impl NodeConfig {
    /// Parses and validates `node.yaml`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = parse_yaml(FILE, text, NODE_YAML_BYTES_MAX)?;
        config.check()?;
        Ok(config)
    }

    /// Serialises to YAML (a fixed field order, so files diff cleanly).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("node config always serialises")
    }

    /// Applies environment overrides (env > file) and validates the result.
    pub fn with_overrides(mut self, env: &NodeOverrides) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        if let Some(advertise) = &env.advertise {
            self.advertise = advertise.clone();
        }
        if let Some(bind) = &env.bind {
            match bind.parse() {
                Ok(ip) => self.bind = ip,
                Err(_) => problems.push(format!("QUPTIME_BIND_ADDR: `{bind}` is not an IP address")),
            }
        }
        if let Some(port) = &env.port {
            match port.parse() {
                Ok(port) => self.port = port,
                Err(_) => problems.push(format!("QUPTIME_BIND_PORT: `{port}` is not a port number")),
            }
        }
        if let Some(secret) = &env.cluster_secret {
            self.cluster_secret = secret.clone();
        }
        if !problems.is_empty() {
            return Err(ConfigError::new("environment", problems));
        }
        self.check()?;
        Ok(self)
    }

    /// Every problem at once.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.port == 0 {
            problems.push("port: 0 is not a fixed port; pick one such as 9901".to_string());
        }
        if let Err(e) = self.advertise.parse::<HostPort>() {
            problems.push(format!("advertise: {e}"));
        }
        if let Some(problem) = secret_problem(&self.cluster_secret) {
            problems.push(format!("cluster_secret: {problem}"));
        }
        if let Some(listen) = self.http_listen {
            if listen.port() == 0 {
                problems.push("http_listen: port 0 is not a fixed port; pick one such as 9902".to_string());
            }
            if listen.port() == self.port
                && (listen.ip() == self.bind || listen.ip().is_unspecified() || self.bind.is_unspecified())
            {
                problems.push(format!("http_listen: {listen} is the peer listener's port"));
            }
        }
        problems
    }

    fn check(&self) -> Result<(), ConfigError> {
        let problems = self.validate();
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::new(FILE, problems)) }
    }
}

/// Why a cluster secret is unacceptable, if it is.
pub fn secret_problem(secret: &str) -> Option<String> {
    if secret.chars().count() < CLUSTER_SECRET_CHARS_MIN {
        return Some(format!(
            "too short ({} characters; use at least {CLUSTER_SECRET_CHARS_MIN}, or let `qu init` generate one)",
            secret.chars().count()
        ));
    }
    if secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("must not contain spaces or control characters".to_string());
    }
    None
}

/// A rough upper bound on the entropy of `secret`, in bits: its length
/// times the bits of the smallest alphabet it is drawn from (hex, or the
/// classes it uses of lower case, upper case, digits and the rest). A
/// secret of words scores higher than it deserves; one that scores low is
/// weak for sure.
pub fn secret_bits(secret: &str) -> u32 {
    let chars: Vec<char> = secret.chars().collect();
    let hex = chars.iter().all(|c| c.is_ascii_hexdigit()) && !chars.iter().any(|c| c.is_ascii_uppercase());
    let pool: u32 = if hex {
        16
    } else {
        let uses = |class: fn(&char) -> bool, size: u32| if chars.iter().any(class) { size } else { 0 };
        uses(char::is_ascii_lowercase, 26)
            + uses(char::is_ascii_uppercase, 26)
            + uses(char::is_ascii_digit, 10)
            + uses(|c| !c.is_ascii_alphanumeric(), 32)
    };
    (chars.len() as f64 * f64::from(pool.max(1)).log2()).floor() as u32
}

/// Below this, `qu init` warns about a custom secret ([`secret_bits`]).
pub const SECRET_BITS_MIN: u32 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_strength_is_estimated_from_length_and_alphabet() {
        assert_eq!(secret_bits(&"ab12".repeat(16)), 256, "64 hex digits");
        assert_eq!(secret_bits("0123456789abcdef0123456789abcdef"), 128, "32 hex digits");
        assert!(secret_bits("s3cret-s3cret-s3cret") < SECRET_BITS_MIN, "20 characters of three classes");
        assert!(secret_bits("correct-horse-battery-staple-x") >= SECRET_BITS_MIN);
        assert_eq!(secret_bits("aaaaaaaaaaaaaaaa"), 64, "16 hex-looking letters");
    }

    fn sample() -> NodeConfig {
        NodeConfig {
            node_id: "7a1e0c3e-1111-4222-8333-444455556666".parse().unwrap(),
            bind: "0.0.0.0".parse().unwrap(),
            port: 9901,
            advertise: "alpha.example.com:9901".into(),
            cluster_secret: "s3cret-s3cret-s3cret".into(),
            http_listen: None,
        }
    }

    #[test]
    fn round_trips() {
        let node = sample();
        assert_eq!(NodeConfig::parse(&node.to_yaml()).unwrap(), node);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!("{}colour: blue\n", sample().to_yaml());
        let err = NodeConfig::parse(&text).unwrap_err();
        assert_eq!(err.file, "node.yaml");
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut node = sample();
        node.port = 0;
        node.advertise = "nohost".into();
        node.cluster_secret = "short".into();
        let problems = node.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn env_wins_over_file() {
        let env = NodeOverrides {
            advertise: Some("beta:9902".into()),
            bind: Some("127.0.0.1".into()),
            port: Some("9902".into()),
            cluster_secret: Some("another-secret-value".into()),
        };
        let node = sample().with_overrides(&env).unwrap();
        assert_eq!(node.advertise, "beta:9902");
        assert_eq!(node.port, 9902);
        assert_eq!(node.bind.to_string(), "127.0.0.1");
        assert_eq!(node.cluster_secret, "another-secret-value");
        let bad = NodeOverrides { port: Some("x".into()), ..Default::default() };
        assert!(sample().with_overrides(&bad).unwrap_err().to_string().contains("QUPTIME_BIND_PORT"));
    }
}
