//! Identifiers: node ids (UUIDs) and certificate fingerprints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A node's identity: a UUID minted at `qu init`, also the CN of its
/// certificate. Ordered by its bytes, which is the same order as its
/// lowercase text, so "the lowest NodeID" reads the same in logs and code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Uuid);

impl NodeId {
    /// Wraps a UUID minted by the caller (the daemon uses the OS RNG).
    pub fn from_uuid(uuid: Uuid) -> Result<Self, IdError> {
        if uuid.is_nil() {
            return Err(IdError::NilNodeId);
        }
        Ok(Self(uuid))
    }

    /// Builds a node id from 16 bytes (simulator and tests).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0.hyphenated())
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uuid = Uuid::parse_str(s.trim()).map_err(|_| IdError::BadNodeId(s.to_string()))?;
        Self::from_uuid(uuid)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `sha256:` followed by the lowercase hex SHA-256 of a certificate's
/// SubjectPublicKeyInfo. Pinning the key rather than the certificate means a
/// re-issued certificate for the same key keeps its identity.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub const PREFIX: &'static str = "sha256:";

    /// Builds the fingerprint from a SHA-256 digest computed by the caller.
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        let mut text = String::with_capacity(Self::PREFIX.len() + 64);
        text.push_str(Self::PREFIX);
        for byte in digest {
            text.push_str(&format!("{byte:02x}"));
        }
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for tables and prompts: the first 16 hex digits.
    pub fn short(&self) -> &str {
        &self.0[..Self::PREFIX.len() + 16]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

impl FromStr for Fingerprint {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdError::BadFingerprint(s.to_string());
        let hex = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad());
        }
        Ok(Self(s.to_string()))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{0}` is not a node id (expected a UUID like 3f2a…-…)")]
    BadNodeId(String),
    #[error("the nil UUID is not a valid node id")]
    NilNodeId,
    #[error("`{0}` is not a fingerprint (expected sha256: followed by 64 lowercase hex digits)")]
    BadFingerprint(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trips_and_orders_like_text() {
        let a: NodeId = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        let b: NodeId = "10000000-0000-4000-8000-000000000000".parse().unwrap();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<NodeId>().unwrap(), a);
        assert!("00000000-0000-0000-0000-000000000000".parse::<NodeId>().is_err());
        assert!("not-a-uuid".parse::<NodeId>().is_err());
    }

    #[test]
    fn fingerprint_format_is_strict() {
        let fp = Fingerprint::from_sha256(&[0xab; 32]);
        assert_eq!(fp.as_str().len(), 7 + 64);
        assert_eq!(fp.as_str().parse::<Fingerprint>().unwrap(), fp);
        assert!("sha256:AB".parse::<Fingerprint>().is_err());
        assert!(format!("sha1:{}", "a".repeat(64)).parse::<Fingerprint>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64)).parse::<Fingerprint>().is_err());
        assert_eq!(fp.short(), "sha256:abababababababab");
    }
}
