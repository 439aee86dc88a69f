//! Changes to `cluster.yaml`, as values: built by the CLI or a node,
//! applied by the master to its current config, validated as a whole.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ClusterConfig, Peer, Settings, Timestamp};
use crate::NodeId;
use crate::consensus::ConfigId;

/// One change. Membership changes add or remove exactly one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// The same content in a new term (a new master's first commit).
    Restamp,
    AddPeer {
        peer: Peer,
    },
    RemovePeer {
        node_id: NodeId,
    },
    /// `qu cluster settings set KEY VALUE`.
    SetSetting {
        key: String,
        value: String,
    },
    /// A hand edit of cluster.yaml, built on `base_version`.
    Replace {
        config: Box<ClusterConfig>,
        base_version: u64,
    },
}

/// What the master stamps on every version it makes.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub id: ConfigId,
    pub at: Timestamp,
    pub by: NodeId,
}

impl Mutation {
    /// The peer a change adds, who must acknowledge before it counts.
    pub fn new_member(&self) -> Option<NodeId> {
        match self {
            Mutation::AddPeer { peer } => Some(peer.node_id),
            _ => None,
        }
    }

    /// A few words for logs.
    pub fn describe(&self) -> String {
        match self {
            Mutation::Restamp => "re-stamp in a new term".into(),
            Mutation::AddPeer { peer } => format!("add node {} ({})", peer.node_id, peer.advertise),
            Mutation::RemovePeer { node_id } => format!("remove node {node_id}"),
            Mutation::SetSetting { key, value } => format!("set {key} = {value}"),
            Mutation::Replace { base_version, .. } => format!("replace (hand edit of version {base_version})"),
        }
    }

    /// The next config, or why the change is refused. The result is fully
    /// validated; nothing partial ever comes out.
    pub fn apply(&self, current: &ClusterConfig, stamp: &Stamp) -> Result<ClusterConfig, String> {
        let mut next = current.clone();
        match self {
            Mutation::Restamp => {}
            Mutation::AddPeer { peer } => {
                if current.peer(&peer.node_id).is_some() {
                    return Err(format!("node {} is already a member", peer.node_id));
                }
                if let Some(other) = current.peers.iter().find(|p| p.fingerprint == peer.fingerprint) {
                    return Err(format!("key {} already belongs to member {}", peer.fingerprint, other.node_id));
                }
                next.peers.push(peer.clone());
            }
            Mutation::RemovePeer { node_id } => {
                if current.peer(node_id).is_none() {
                    return Err(format!("no member has id {node_id} (see `qu node list`)"));
                }
                if current.peers.len() == 1 {
                    return Err("cannot remove the last member of a cluster".into());
                }
                next.peers.retain(|p| p.node_id != *node_id);
            }
            Mutation::SetSetting { key, value } => set_setting(&mut next.settings, key, value)?,
            Mutation::Replace { config, base_version } => {
                if *base_version != current.version {
                    return Err(format!(
                        "the edit was made on version {base_version}, but the cluster is at version {}; \
                         re-apply it to the current cluster.yaml",
                        current.version
                    ));
                }
                if config.members() != current.members()
                    || config.peers.iter().any(|p| current.peer(&p.node_id) != Some(p))
                {
                    return Err("a hand edit may not change peers while the cluster runs; use `qu node add` / \
                                `qu node remove` (editing peers is only for the offline shrink procedure)"
                        .into());
                }
                next = (**config).clone();
            }
        }
        next.version = stamp.id.version;
        next.term = stamp.id.term;
        next.updated_at = Some(stamp.at);
        next.updated_by = Some(stamp.by);
        let problems = next.validate();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(next)
    }
}

/// Names `qu cluster settings set` accepts.
pub const SETTING_KEYS: [&str; 4] = ["heartbeat", "dead_after", "master_cooldown", "hysteresis"];

fn set_setting(settings: &mut Settings, key: &str, value: &str) -> Result<(), String> {
    let duration = || -> Result<Duration, String> {
        humantime::parse_duration(value).map_err(|e| format!("{key}: `{value}` is not a duration like 1s or 2m: {e}"))
    };
    match key {
        "heartbeat" => settings.heartbeat = duration()?,
        "dead_after" => settings.dead_after = duration()?,
        "master_cooldown" => settings.master_cooldown = duration()?,
        "hysteresis" => {
            settings.hysteresis = value.parse().map_err(|_| format!("hysteresis: `{value}` is not a whole number"))?
        }
        other => return Err(format!("unknown setting `{other}`; settable: {}", SETTING_KEYS.join(", "))),
    }
    let problems = settings.validate();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fingerprint;

    fn peer(n: u8) -> Peer {
        Peer {
            node_id: NodeId::from_bytes([n; 16]),
            advertise: format!("n{n}:9901"),
            fingerprint: Fingerprint::from_sha256(&[n; 32]),
            cert_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
        }
    }

    fn stamp(version: u64) -> Stamp {
        Stamp { id: ConfigId { term: 3, version }, at: Timestamp::from_unix_millis(1), by: NodeId::from_bytes([1; 16]) }
    }

    #[test]
    fn membership_changes_one_peer_at_a_time_with_clear_refusals() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let two = Mutation::AddPeer { peer: peer(2) }.apply(&base, &stamp(2)).unwrap();
        assert_eq!(two.members().len(), 2);
        assert_eq!((two.term, two.version), (3, 2));
        assert!(Mutation::AddPeer { peer: peer(2) }.apply(&two, &stamp(3)).unwrap_err().contains("already a member"));
        let one = Mutation::RemovePeer { node_id: peer(2).node_id }.apply(&two, &stamp(3)).unwrap();
        assert_eq!(one.members(), vec![peer(1).node_id]);
        let err = Mutation::RemovePeer { node_id: peer(1).node_id }.apply(&one, &stamp(4)).unwrap_err();
        assert!(err.contains("last member"), "{err}");
        let err = Mutation::RemovePeer { node_id: peer(9).node_id }.apply(&one, &stamp(4)).unwrap_err();
        assert!(err.contains("no member"), "{err}");
    }

    #[test]
    fn settings_are_validated_as_a_whole() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let set = |k: &str, v: &str| Mutation::SetSetting { key: k.into(), value: v.into() }.apply(&base, &stamp(2));
        assert_eq!(set("heartbeat", "200ms").unwrap().settings.heartbeat, Duration::from_millis(200));
        assert!(set("dead_after", "2s").unwrap_err().contains("3 × heartbeat"));
        assert!(set("hysteresis", "x").unwrap_err().contains("whole number"));
        assert!(set("colour", "1").unwrap_err().contains("unknown setting"));
    }

    #[test]
    fn hand_edits_need_the_current_base_and_keep_peers() {
        let base = ClusterConfig::bootstrap(peer(1), Timestamp::from_unix_millis(0));
        let mut edited = base.clone();
        edited.settings.hysteresis = 3;
        let replace =
            |config: &ClusterConfig, base_version| Mutation::Replace { config: Box::new(config.clone()), base_version };
        let next = replace(&edited, 1).apply(&base, &stamp(2)).unwrap();
        assert_eq!(next.settings.hysteresis, 3);
        assert!(replace(&edited, 0).apply(&base, &stamp(2)).unwrap_err().contains("version 0"));
        edited.peers.push(peer(2));
        assert!(replace(&edited, 1).apply(&base, &stamp(2)).unwrap_err().contains("may not change peers"));
    }
}
