//! Replaying the daemon's log over its copy at start: the changes a node
//! persisted (and acknowledged) after it last wrote its whole copy.
//!
//! Pure: the records are the log's, read by the store. An entry applies
//! only on exactly its parent (id and content hash), and only if the result
//! hashes to what the master's did; the first entry that does not ends the
//! replay, and the node runs on what it replayed until then (and catches up
//! from the master like any node that is behind). Entries the copy already
//! holds (a crash after the copy was written, before the log was emptied)
//! are skipped.

use super::{ClusterConfig, Mutation, Renderer};
use crate::consensus::{ConfigId, Digest};
use crate::wire::Entry;

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub config: ClusterConfig,
    /// The content hash of `config` as rendered.
    pub hash: Digest,
    /// Entries applied.
    pub applied: usize,
    /// Why the replay stopped before the end of the log, if it did.
    pub stopped: Option<String>,
}

/// Applies the log's `records` (JSON [`Entry`]s, oldest first) to `copy`,
/// whose content hash ([`super::content_hash`]) is `copy_hash`.
pub fn replay(copy: ClusterConfig, copy_hash: Digest, records: &[String]) -> Replayed {
    let mut renderer = Renderer::default();
    let mut done = Replayed { config: copy, hash: copy_hash, applied: 0, stopped: None };
    for record in records {
        match step(&mut renderer, &done, record) {
            Ok(Some((config, hash))) => {
                done.config = config;
                done.hash = hash;
                done.applied += 1;
            }
            Ok(None) => {}
            Err(why) => {
                done.stopped = Some(why);
                break;
            }
        }
    }
    done
}

fn step(renderer: &mut Renderer, at: &Replayed, record: &str) -> Result<Option<(ClusterConfig, Digest)>, String> {
    let entry: Entry = serde_json::from_str(record).map_err(|e| format!("an unreadable entry ({e})"))?;
    let current: ConfigId = at.config.config_id();
    if entry.id <= current && current.version != 0 {
        return Ok(None);
    }
    if !entry.parent.is(&current) || entry.parent_hash != at.hash {
        return Err(format!("entry {} follows {}, not this node's {current}", entry.id, entry.parent));
    }
    let mutation: Mutation = serde_json::from_str(&entry.mutation_json)
        .map_err(|e| format!("entry {}: unreadable change ({e})", entry.id))?;
    let next = mutation.apply(&at.config, &entry.stamp).map_err(|e| format!("entry {}: {e}", entry.id))?;
    let snapshot = renderer.snapshot(&next);
    if !snapshot.id.is(&entry.id) || snapshot.hash != entry.hash {
        return Err(format!("entry {} gave other content than when it was persisted", entry.id));
    }
    Ok(Some((next, snapshot.hash)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use crate::config::Stamp;
    use crate::config::content_hash;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn base() -> ClusterConfig {
        let text = format!(
            "version: 7\nterm: 2\npeers:\n- node_id: {}\n  advertise: 127.0.0.1:9901\n  fingerprint: sha256:{}\n  cert_pem: |\n    {}\n",
            NodeId::from_bytes([1; 16]),
            "ab".repeat(32),
            CERT.trim_end().replace('\n', "\n    ")
        );
        ClusterConfig::parse(&text).unwrap()
    }

    /// The entries of `n` settings changes on `from`, as the master logs them.
    fn entries(from: &ClusterConfig, n: u64) -> (Vec<String>, ClusterConfig) {
        let mut renderer = Renderer::default();
        let mut current = from.clone();
        let mut hash = content_hash(&current);
        let mut records = Vec::new();
        for i in 0..n {
            let id = ConfigId { term: current.term, version: current.version + 1 };
            let stamp = Stamp {
                id,
                at: crate::config::Timestamp::from_unix_millis(1_700_000_000_000 + i),
                by: NodeId::from_bytes([1; 16]),
            };
            let mutation = Mutation::SetSetting { key: "hysteresis".into(), value: (2 + i % 3).to_string() };
            let next = mutation.apply(&current, &stamp).unwrap();
            let snapshot = renderer.snapshot(&next);
            let entry = Entry {
                term: id.term,
                sent_at: 0,
                id,
                parent: current.config_id(),
                parent_hash: hash,
                hash: snapshot.hash,
                mutation_json: serde_json::to_string(&mutation).unwrap(),
                stamp,
            };
            records.push(serde_json::to_string(&entry).unwrap());
            current = next;
            hash = snapshot.hash;
        }
        (records, current)
    }

    #[test]
    fn the_log_brings_the_copy_to_the_last_persisted_change() {
        let copy = base();
        let (records, last) = entries(&copy, 3);
        let done = replay(copy.clone(), content_hash(&copy), &records);
        assert_eq!((done.applied, done.stopped.clone()), (3, None));
        assert_eq!(done.config, last);
        assert_eq!(done.hash, content_hash(&last));
    }

    #[test]
    fn entries_the_copy_holds_are_skipped() {
        let copy = base();
        let (records, last) = entries(&copy, 3);
        // The copy was written at the second entry, the log not yet emptied.
        let middle = replay(copy.clone(), content_hash(&copy), &records[..2]).config;
        let done = replay(middle.clone(), content_hash(&middle), &records);
        assert_eq!((done.applied, done.stopped), (1, None));
        assert_eq!(done.config, last);
    }

    #[test]
    fn a_gap_or_other_content_ends_the_replay_where_it_is() {
        let copy = base();
        let (records, _) = entries(&copy, 3);
        let done = replay(copy.clone(), content_hash(&copy), &[records[0].clone(), records[2].clone()]);
        assert_eq!(done.applied, 1);
        assert!(done.stopped.as_deref().is_some_and(|s| s.contains("follows")), "{:?}", done.stopped);
        // A copy with other content under the same id: nothing applies.
        let mut other = copy.clone();
        other.settings.hysteresis = 4;
        let done = replay(other.clone(), content_hash(&other), &records);
        assert_eq!((done.applied, done.config), (0, other));
        let done = replay(copy.clone(), content_hash(&copy), &["garbage".to_string()]);
        assert!(done.stopped.is_some_and(|s| s.contains("unreadable")));
    }
}
