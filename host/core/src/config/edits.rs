//! What an operator's hand on `cluster.yaml` means: the rules that decide,
//! at start and while the daemon runs, whether a copy of the file is the
//! truth, a proposal, a restore or stale. Pure, so the simulator drives the
//! same rules the daemon does.
//!
//! The node's own copy of the last content it persisted (the daemon keeps
//! it apart from `cluster.yaml`, which is the operator's) is what the file
//! is compared with. Versions here are those of what operators own
//! ([`ClusterConfig::content_stamp`]): the version `cluster.yaml` shows is
//! that of its content's last change, and the runtime state committed
//! since (check states, delivery records, which the file does not hold)
//! leaves an edit of it fresh. The rules:
//! - A node never takes a `term:` from the file: the term of what it holds
//!   is the one its own copy records (or, with no copy, the file's, capped
//!   at the node's persisted term).
//! - A `version:` higher than the node's on a node that is not the master
//!   is an edit proposal, never the truth; it is based on the node's own
//!   version.
//! - An edit based on an older version than the node holds is stale: set
//!   aside as `cluster.yaml.unreplicated-N`, never applied.
//! - `version: 0` is a restore: the node runs on the file, takes the
//!   master's copy before it votes ([`crate::consensus`]), and never
//!   proposes it.
//! - The shrink procedure is the one edit made while stopped that is the
//!   truth: it removes peers (the rest unchanged and this node among them)
//!   and raises the version above the node's own. Every survivor must make
//!   the same edit; where two differ, the master's copy wins.

use super::ClusterConfig;
use crate::NodeId;

/// What the node sees of one copy of `cluster.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub version: u64,
    /// The peers' node ids, sorted.
    pub members: Vec<NodeId>,
}

/// The facts about cluster.yaml at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtStart {
    /// The file as the operator left it.
    pub file: Copy,
    /// The node's copy of what it last persisted; `None` on a first start,
    /// after an upgrade from a version without one, or on a machine
    /// restored from a backup of cluster.yaml alone.
    pub last: Option<Copy>,
    /// Whether the file says anything other than `last` of what operators
    /// own (ignoring the stamps, and any runtime state an old file lists).
    pub changed: bool,
    /// Whether every peer the file keeps is listed in `last` exactly as
    /// there (same key and address).
    pub peers_unchanged_apart_from_removals: bool,
    pub me: NodeId,
}

/// What the node runs on, and what it does with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartDecision {
    /// The file is what the node last persisted (or there is no copy): run
    /// on it.
    Unchanged,
    /// Only the stamp differs (a hand-bumped version or term without any
    /// other change): run on the last persisted copy and rewrite the file.
    Restamped,
    /// `version: 0`: a restore from a backup. Run on the file.
    Restore,
    /// The offline shrink procedure: run on the file, as the truth.
    Shrink,
    /// An edit made while stopped: run on the last persisted copy and
    /// propose the file, based on that copy's version.
    Propose { base_version: u64 },
    /// An edit based on an older version than the node persisted: run on the
    /// last copy, set the file aside, rewrite it.
    Stale { edited: u64, current: u64 },
    /// The file does not parse or validate (a typo in a hand edit): run on
    /// the last copy and leave the file as it is, for the live rules (which
    /// ignore it with a warning, and set it aside when a newer version is
    /// written).
    Unreadable,
}

impl AtStart {
    /// The facts about `file` against the node's `last` persisted copy.
    pub fn of(file: &ClusterConfig, last: Option<&ClusterConfig>, me: NodeId) -> Self {
        let copy = |c: &ClusterConfig| Copy { version: c.content_stamp().version, members: c.members() };
        let (changed, peers_kept) = match last {
            Some(last) => (!file.same_content(last), file.peers.iter().all(|p| last.peer(&p.node_id) == Some(p))),
            None => (false, true),
        };
        Self { file: copy(file), last: last.map(copy), changed, peers_unchanged_apart_from_removals: peers_kept, me }
    }
}

impl StartDecision {
    /// Whether the node runs on the file (a restore, the shrink) rather
    /// than on its own last copy.
    pub fn runs_on_file(self) -> bool {
        matches!(self, StartDecision::Restore | StartDecision::Shrink)
    }

    /// Whether the file keeps an edit for the live rules to propose or set
    /// aside ([`live`] judges it again), instead of being rewritten now.
    pub fn leaves_edit(self) -> bool {
        matches!(self, StartDecision::Propose { .. } | StartDecision::Stale { .. } | StartDecision::Unreadable)
    }
}

/// What start does with a cluster.yaml that does not parse or validate:
/// with a copy of its own (`has_last`) the node runs on that, as it does
/// while running ([`StartDecision::Unreadable`]), so a typo never keeps a
/// node down; with none (a first start, a machine restored from the file
/// alone) there is nothing else to run on, and start refuses (`None`).
pub fn at_start_unreadable(has_last: bool) -> Option<StartDecision> {
    has_last.then_some(StartDecision::Unreadable)
}

/// Decides what start does with cluster.yaml (see the module rules).
pub fn at_start(facts: &AtStart) -> StartDecision {
    let Some(last) = &facts.last else { return StartDecision::Unchanged };
    let file = &facts.file;
    if file.version == 0 {
        return StartDecision::Restore;
    }
    let same_members = file.members == last.members;
    if !facts.changed && same_members {
        return if file.version == last.version { StartDecision::Unchanged } else { StartDecision::Restamped };
    }
    if file.version < last.version {
        return StartDecision::Stale { edited: file.version, current: last.version };
    }
    let removes_peers = file.members.len() < last.members.len()
        && file.members.iter().all(|m| last.members.binary_search(m).is_ok())
        && facts.peers_unchanged_apart_from_removals;
    if removes_peers && file.version > last.version && file.members.binary_search(&facts.me).is_ok() {
        return StartDecision::Shrink;
    }
    StartDecision::Propose { base_version: last.version }
}

/// The start decision once the daemon's log was replayed over its copy:
/// `replayed` is the content version the log brought the node to, if it
/// held changes to what operators own that the copy (and so the file) did
/// not; runtime state alone leaves the file as fresh as it was. The file was then written
/// before those changes, so an edit of it is based on an older version
/// than the node holds: stale, the shrink included (run it again on the
/// file as the daemon rewrites it). A restore stays a restore, and a file
/// left alone still is.
pub fn after_replay(decision: StartDecision, file_version: u64, replayed: Option<u64>) -> StartDecision {
    match (decision, replayed) {
        (StartDecision::Propose { .. } | StartDecision::Shrink | StartDecision::Stale { .. }, Some(current)) => {
            StartDecision::Stale { edited: file_version, current }
        }
        (decision, _) => decision,
    }
}

/// What a live hand edit (the daemon running) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveDecision {
    /// Propose it through the master, based on `base_version`.
    Propose { base_version: u64 },
    /// Written on an older version than the node holds (a `sudoedit` that
    /// saved the copy it took before the daemon wrote a newer one): set it
    /// aside and rewrite the file.
    Stale { edited: u64, current: u64 },
}

/// Decides what a live edit of a file that says `edited` is, on a node
/// whose content is at version `current`. A version above the node's is a proposal
/// based on the node's own version, not a claim to be newer.
pub fn live(edited: u64, current: u64) -> LiveDecision {
    if edited < current {
        LiveDecision::Stale { edited, current }
    } else {
        LiveDecision::Propose { base_version: current }
    }
}

/// Whether persisting a config whose content id is `next` rewrites the
/// operator's cluster.yaml, which shows the content `written`: only a
/// change of what operators own does. Runtime state alone (a transition, a
/// delivery result, a re-stamp) leaves the file — and a hand edit standing
/// in it — as it is, so the edit is neither set aside nor overwritten.
pub fn rewrites_file(written: (u64, u64), next: (u64, u64)) -> bool {
    written != next
}

/// Whether an edit made on the content `base` = (term, version) applies to
/// the master's `current` content: exactly the same, term included.
pub fn base_matches(base: (u64, u64), current: (u64, u64)) -> bool {
    base == current && base.1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn copy(version: u64, members: &[u8]) -> Copy {
        Copy { version, members: members.iter().map(|n| id(*n)).collect() }
    }

    fn facts(file: Copy, last: Option<Copy>, changed: bool) -> AtStart {
        AtStart { file, last, changed, peers_unchanged_apart_from_removals: true, me: id(1) }
    }

    #[test]
    fn an_unreadable_file_runs_on_the_copy_and_is_left_for_the_live_rules() {
        let decision = at_start_unreadable(true).unwrap();
        assert_eq!(decision, StartDecision::Unreadable);
        assert!(decision.leaves_edit() && !decision.runs_on_file());
        assert_eq!(after_replay(decision, 0, Some(9)), StartDecision::Unreadable, "a log replayed changes nothing");
        assert_eq!(at_start_unreadable(false), None, "without a copy there is nothing else to run on");
    }

    #[test]
    fn start_rules() {
        let last = Some(copy(20, &[1, 2, 3]));
        let cases = [
            (facts(copy(20, &[1, 2, 3]), None, true), StartDecision::Unchanged),
            (facts(copy(20, &[1, 2, 3]), last.clone(), false), StartDecision::Unchanged),
            (facts(copy(70, &[1, 2, 3]), last.clone(), false), StartDecision::Restamped),
            (facts(copy(0, &[1, 2, 3]), last.clone(), true), StartDecision::Restore),
            (facts(copy(0, &[1, 2, 3]), last.clone(), false), StartDecision::Restore),
            (facts(copy(20, &[1, 2, 3]), last.clone(), true), StartDecision::Propose { base_version: 20 }),
            (facts(copy(70, &[1, 2, 3]), last.clone(), true), StartDecision::Propose { base_version: 20 }),
            (facts(copy(12, &[1, 2, 3]), last.clone(), true), StartDecision::Stale { edited: 12, current: 20 }),
            (facts(copy(21, &[1, 2]), last.clone(), true), StartDecision::Shrink),
            (facts(copy(21, &[1, 2]), last.clone(), false), StartDecision::Shrink),
            // Shrinking without raising the version is not the procedure.
            (facts(copy(20, &[1, 2]), last.clone(), true), StartDecision::Propose { base_version: 20 }),
            // Nor is removing this node, adding one, or an older version.
            (facts(copy(21, &[2, 3]), last.clone(), true), StartDecision::Propose { base_version: 20 }),
            (facts(copy(21, &[1, 2, 3, 4]), last.clone(), true), StartDecision::Propose { base_version: 20 }),
            (facts(copy(19, &[1, 2]), last.clone(), true), StartDecision::Stale { edited: 19, current: 20 }),
        ];
        for (facts, want) in cases {
            assert_eq!(at_start(&facts), want, "{facts:?}");
        }
        let mut altered = facts(copy(21, &[1, 2]), last, true);
        altered.peers_unchanged_apart_from_removals = false;
        assert_eq!(at_start(&altered), StartDecision::Propose { base_version: 20 }, "a kept peer was altered");
    }

    #[test]
    fn an_edit_of_a_file_the_log_had_moved_past_is_stale() {
        let propose = StartDecision::Propose { base_version: 20 };
        assert_eq!(after_replay(propose, 20, None), propose, "nothing replayed: as decided");
        assert_eq!(after_replay(propose, 20, Some(23)), StartDecision::Stale { edited: 20, current: 23 });
        assert_eq!(after_replay(StartDecision::Shrink, 21, Some(23)), StartDecision::Stale { edited: 21, current: 23 });
        assert_eq!(
            after_replay(StartDecision::Stale { edited: 12, current: 20 }, 12, Some(23)),
            StartDecision::Stale { edited: 12, current: 23 }
        );
        for kept in [StartDecision::Unchanged, StartDecision::Restamped, StartDecision::Restore] {
            assert_eq!(after_replay(kept, 20, Some(23)), kept);
        }
    }

    #[test]
    fn only_a_change_of_what_operators_own_rewrites_the_file() {
        assert!(!rewrites_file((3, 40), (3, 40)), "runtime state alone: the file and an edit in it stand");
        assert!(rewrites_file((3, 40), (3, 41)), "a new version of the content");
        assert!(rewrites_file((3, 40), (4, 40)), "the same number from another term is other content");
    }

    #[test]
    fn live_rules() {
        assert_eq!(live(20, 20), LiveDecision::Propose { base_version: 20 });
        assert_eq!(live(70, 20), LiveDecision::Propose { base_version: 20 }, "a bumped version is a proposal");
        assert_eq!(live(19, 20), LiveDecision::Stale { edited: 19, current: 20 });
        assert_eq!(live(0, 20), LiveDecision::Stale { edited: 0, current: 20 });
    }
}
