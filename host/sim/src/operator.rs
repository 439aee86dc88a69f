//! An operator's hands on the simulated cluster, judged by the same rules
//! the daemon follows (`qu_core::config::edits`): hand edits of a node's
//! `cluster.yaml` (fresh, stale, with a bumped version or an edited term,
//! made while the node runs or while it is stopped), restores of one node
//! from an older copy with `version: 0`, and changes of the cluster's
//! timers. What the daemon does with the rules' answer — run on the node's
//! own copy or on the file, forward a proposal to the master, set the file
//! aside — the simulator does too; the invariants then judge the outcome
//! (an acknowledged change lost, two contents for one id, two leases).

use std::sync::Arc;

use qu_core::config::edits::{self, AtStart, Copy, LiveDecision, StartDecision};
use qu_core::consensus::{ConfigId, Input, Role, Snapshot, Timing};

use super::content::{self, Content};
use super::{Sim, Violation};

/// How often a running node looks at its file (the daemon polls every 2 s;
/// the simulator's time scale is about ten times shorter).
const POLL_MS: u64 = 200;
/// Share of operator actions that restore the whole cluster.
const WHOLE_RESTORE_PERCENT: u64 = 4;
/// Persisted configs a node remembers as its "backups".
pub(crate) const HISTORY_MAX: usize = 8;

/// A node's cluster.yaml as the operator left it, when it differs from what
/// the node persisted.
#[derive(Debug, Clone)]
pub(crate) struct FileEdit {
    /// The version the file says. (A `term:` it says is never read: the
    /// daemon takes a node's term from its own copy, and so does this
    /// model; an edited term is an edit that changes nothing else.)
    pub version: u64,
    /// The copy the operator opened.
    pub content: Arc<str>,
    /// The edit's mutation name; empty when only the stamp was changed.
    pub edit: String,
    /// The operator left a typo: the file does not parse. Never proposed;
    /// a node starts on its own copy, and a newer version sets it aside.
    pub unreadable: bool,
}

/// What the operators did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorStats {
    pub live_edits: u64,
    pub stopped_edits: u64,
    pub stale_edits: u64,
    pub bumped_versions: u64,
    pub edited_terms: u64,
    /// Edits that left the file unreadable (a typo).
    pub unreadable_edits: u64,
    pub restores: u64,
    /// Whole-cluster restores: every node from the same backup.
    pub whole_restores: u64,
    pub timing_changes: u64,
    /// Edits set aside (stale, or overtaken by a newer version).
    pub set_aside: u64,
    /// Times an edit in a file stood while its node persisted runtime
    /// state only (which leaves cluster.yaml, and the edit, as they were).
    pub kept_over_runtime: u64,
    /// Edits the master refused (made on another copy than its own).
    pub refused: u64,
    /// Edits that committed.
    pub committed: u64,
    /// Proposals that failed with an unknown outcome, and definitely.
    pub unknown_outcomes: u64,
    pub definite_failures: u64,
}

impl OperatorStats {
    pub fn add(&mut self, other: &OperatorStats) {
        self.live_edits += other.live_edits;
        self.stopped_edits += other.stopped_edits;
        self.stale_edits += other.stale_edits;
        self.bumped_versions += other.bumped_versions;
        self.edited_terms += other.edited_terms;
        self.unreadable_edits += other.unreadable_edits;
        self.restores += other.restores;
        self.whole_restores += other.whole_restores;
        self.timing_changes += other.timing_changes;
        self.set_aside += other.set_aside;
        self.kept_over_runtime += other.kept_over_runtime;
        self.refused += other.refused;
        self.committed += other.committed;
        self.unknown_outcomes += other.unknown_outcomes;
        self.definite_failures += other.definite_failures;
    }
}

impl Sim {
    /// An operator edits node `i`'s file: while it runs when it does,
    /// otherwise while it is stopped; or restores a stopped node.
    pub(crate) fn operator_action(&mut self) {
        if self.rng.chance(WHOLE_RESTORE_PERCENT) {
            self.restore_whole_cluster();
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(disk) = self.current_copy(i) else { return };
        let running = self.nodes[i].core.is_some();
        if !running && self.rng.chance(30) {
            self.restore(i);
            return;
        }
        let name = format!("e{}", self.next_mutation);
        self.next_mutation += 1;
        // The file shows the version of what operators own (runtime state
        // committed since leaves it, and an edit of it, as it was).
        let version = content::content_id(disk.id, &disk.content).version;
        let edit = match self.rng.below(5) {
            // Fresh: the file as the node wrote it, plus the edit.
            0 => FileEdit { version, content: disk.content.clone(), edit: name, unreadable: false },
            // Stale: a copy the node held before (an editor open meanwhile);
            // only runtime state may have changed since, and then it is not.
            1 => {
                let Some(old) = self.older_copy(i, &disk) else { return };
                self.stats.operator.stale_edits += 1;
                let version = content::content_id(old.id, &old.content).version;
                FileEdit { version, content: old.content, edit: name, unreadable: false }
            }
            // The version bumped by hand.
            2 => {
                self.stats.operator.bumped_versions += 1;
                FileEdit { version: version + 50, content: disk.content.clone(), edit: name, unreadable: false }
            }
            // Only the term edited.
            3 => {
                self.stats.operator.edited_terms += 1;
                FileEdit { version, content: disk.content.clone(), edit: String::new(), unreadable: false }
            }
            // An edit with a typo: the file does not parse.
            _ => {
                self.stats.operator.unreadable_edits += 1;
                FileEdit { version, content: disk.content.clone(), edit: name, unreadable: true }
            }
        };
        if running {
            self.stats.operator.live_edits += 1;
        } else {
            self.stats.operator.stopped_edits += 1;
        }
        if self.cfg.trace {
            let when = if running { "running" } else { "stopped" };
            eprintln!(
                "{:>6} n{i} ({when}) file edited: version {} edit {:?} on {}",
                self.now, edit.version, edit.edit, edit.content
            );
        }
        self.nodes[i].file = Some(edit);
    }

    /// What node `i` persisted, if it is a member holding a real version.
    fn current_copy(&self, i: usize) -> Option<Snapshot> {
        let disk = &self.nodes[i].disk_config;
        (disk.id.version != 0 && disk.is_member(&self.nodes[i].id)).then(|| disk.clone())
    }

    /// An older copy node `i` persisted, with the same members.
    fn older_copy(&mut self, i: usize, than: &Snapshot) -> Option<Snapshot> {
        let older: Vec<Snapshot> = self.nodes[i]
            .history
            .iter()
            .filter(|s| s.id < than.id && s.id.version != 0 && s.members == than.members)
            .cloned()
            .collect();
        if older.is_empty() {
            return None;
        }
        Some(older[self.rng.below(older.len() as u64) as usize].clone())
    }

    /// Restores stopped node `i` from one of its older copies with
    /// `version: 0` (the operations guide's one-node restore). One node at a
    /// time: restoring a majority is the whole-cluster restore, which
    /// forgets what it forgets by the operator's choice.
    fn restore(&mut self, i: usize) {
        let restoring = self.nodes.iter().any(|n| {
            !n.disk_durable.restoring.is_empty()
                || (n.disk_config.id.version == 0 && n.disk_config.is_member(&n.id))
                || n.file.as_ref().is_some_and(|f| f.version == 0)
        });
        if restoring {
            return;
        }
        // A backup of the current peers: none was added or removed since
        // it was taken (the guide restores a node of a cluster that lives;
        // a backup from before a membership change names other peers).
        let disk = self.nodes[i].disk_config.clone();
        let history = &self.nodes[i].history;
        let same_peers_since = history.iter().rposition(|s| s.members != disk.members).map_or(0, |p| p + 1);
        let backups: Vec<Snapshot> =
            history.iter().skip(same_peers_since).filter(|s| s.id < disk.id && s.id.version != 0).cloned().collect();
        if backups.is_empty() {
            return;
        }
        let backup = backups[self.rng.below(backups.len() as u64) as usize].clone();
        self.stats.operator.restores += 1;
        self.nodes[i].file =
            Some(FileEdit { version: 0, content: backup.content, edit: String::new(), unreadable: false });
    }

    /// Every node is lost and rebuilt from the same backup — its
    /// `cluster.yaml` and `store/` — as the operations guide's whole-cluster
    /// restore does: each node's disk holds the backup, and its `state.yaml`
    /// is its own or gone. A deliberate step back: what was committed or
    /// acknowledged after the backup is forgotten by choice, and the
    /// invariants restart from the backup (acknowledged changes it holds
    /// must stay, every later one must hold them; its delivery records are
    /// the truth, and one it holds pending may be sent again). Messages in
    /// flight die with the old cluster.
    fn restore_whole_cluster(&mut self) {
        let mut everyone: Vec<_> = self.nodes.iter().map(|n| n.id).collect();
        everyone.sort();
        let restoring = self.nodes.iter().any(|n| !n.disk_durable.restoring.is_empty() || n.file.is_some());
        if restoring {
            return;
        }
        // A backup listing every node as it is now (one from before a
        // member was replaced names an identity that is gone).
        let backups: Vec<Snapshot> = self
            .nodes
            .iter()
            .flat_map(|n| n.history.iter())
            .filter(|s| s.id.version != 0 && s.members == everyone)
            .cloned()
            .collect();
        if backups.is_empty() {
            return;
        }
        let backup = backups[self.rng.below(backups.len() as u64) as usize].clone();
        self.stats.operator.whole_restores += 1;
        if self.cfg.trace {
            eprintln!("{:>6} whole-cluster restore from {}: {}", self.now, backup.id, backup.content);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_some() {
                self.crash(i);
            }
            let keep_state = self.rng.chance(50);
            let node = &mut self.nodes[i];
            node.disk_config = backup.clone();
            if !keep_state {
                node.disk_durable = qu_core::consensus::Durable::default();
            }
            node.last_seen = (node.disk_durable.term, backup.id);
            node.file = None;
            // The hosts were lost: no copy an editor held survives them.
            node.history.clear();
            node.history.push_back(backup.clone());
            let back = self.now + 50 + self.rng.below(1_000);
            self.schedule(back, super::Event::Restart(i));
        }
        self.messages.iter_mut().for_each(|m| *m = None);
        let kept: std::collections::BTreeSet<String> =
            content::mutations(&backup.content).map(str::to_string).collect();
        self.acknowledged.retain(|(m, _)| kept.contains(m));
        self.acknowledged.iter_mut().for_each(|(_, at)| *at = (*at).min(backup.id));
        self.refused.retain(|m| !kept.contains(m));
        self.contents.retain(|id, _| *id <= backup.id);
        let term = backup.id.term;
        self.masters.retain(|t, _| *t <= term);
        self.votes.retain(|(_, t), _| *t <= term);
        self.book.restored(&Content::parse(&backup.content));
    }

    /// At a restart: what the daemon's start does with the file.
    pub(crate) fn file_at_start(&mut self, i: usize) -> Result<(), Violation> {
        let Some(file) = self.nodes[i].file.clone() else { return Ok(()) };
        if file.unreadable {
            // The node has its own copy: it runs on that, and the file is
            // left for the live rules (the daemon's load does the same).
            return match edits::at_start_unreadable(true) {
                Some(StartDecision::Unreadable) => Ok(()),
                other => Err(self.violation(format!("node {i}: an unreadable file at start gave {other:?}"))),
            };
        }
        let disk = self.nodes[i].disk_config.clone();
        let copy = |version| Copy { version, members: disk.members.clone() };
        let facts = AtStart {
            file: copy(file.version),
            last: Some(copy(content::content_id(disk.id, &disk.content).version)),
            changed: !file.edit.is_empty()
                || content::operator_part(&file.content) != content::operator_part(&disk.content),
            peers_unchanged_apart_from_removals: true,
            me: self.nodes[i].id,
        };
        match edits::at_start(&facts) {
            StartDecision::Unchanged | StartDecision::Restamped => {
                if facts.changed {
                    let what = format!("node {i}: the edit {:?} made while stopped was dropped at start", file.edit);
                    return Err(self.violation(what));
                }
                self.nodes[i].file = None;
            }
            StartDecision::Restore => {
                // The file, under the node's own term, at version 0. A
                // deliberate restore: its config may go back.
                let id = ConfigId { term: disk.id.term, version: 0 };
                self.nodes[i].disk_config = Snapshot::new(id, disk.members.clone(), disk.timing, file.content);
                self.nodes[i].last_seen.1 = id;
                self.nodes[i].file = None;
            }
            StartDecision::Shrink => unreachable!("the simulator's edits keep the members"),
            // The node runs on its own copy; the live poll proposes it.
            StartDecision::Propose { .. } => {}
            StartDecision::Stale { .. } => {
                self.stats.operator.set_aside += 1;
                self.nodes[i].file = None;
            }
            StartDecision::Unreadable => unreachable!("a file that parses is never unreadable"),
        }
        Ok(())
    }

    /// The daemon's poll of a running node's file.
    pub(crate) fn poll_file(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].next_poll > self.now {
            return Ok(());
        }
        self.nodes[i].next_poll = self.now + POLL_MS;
        let Some(file) = self.nodes[i].file.clone() else { return Ok(()) };
        if file.unreadable {
            return Ok(()); // ignored with a warning, as the daemon's poll does
        }
        let Some(core) = self.nodes[i].core.as_ref() else { return Ok(()) };
        let current = core.config().clone();
        if file.edit.is_empty() && content::operator_part(&file.content) == content::operator_part(&current.content) {
            self.nodes[i].file = None; // only the stamp: ignored, rewritten
            return Ok(());
        }
        let current_content = content::content_id(current.id, &current.content);
        let base_version = match edits::live(file.version, current_content.version) {
            LiveDecision::Stale { .. } => {
                self.stats.operator.set_aside += 1;
                self.nodes[i].file = None;
                return Ok(());
            }
            LiveDecision::Propose { base_version } => base_version,
        };
        let base = (current_content.term, base_version);
        // Forwarded to the master this node follows, if it can reach it.
        let Some(m) = core.master().and_then(|id| self.nodes.iter().position(|n| n.id == id)) else { return Ok(()) };
        if self.blocked[i][m] || self.blocked[m][i] || self.nodes[m].paused_until > self.now {
            return Ok(());
        }
        let Some(master) = self.nodes[m].core.as_ref() else { return Ok(()) };
        if master.role() != Role::Master || !master.can_serve() || master.is_busy() {
            return Ok(());
        }
        let on = master.config().clone();
        let on_content = content::content_id(on.id, &on.content);
        if !edits::base_matches(base, (on_content.term, on_content.version)) {
            // Refused for good, as the daemon's `edit_refused` does: the
            // edit is set aside and the file rewritten.
            self.stats.operator.refused += 1;
            self.stats.operator.set_aside += 1;
            self.nodes[i].file = None;
            return Ok(());
        }
        let next = master.next_config_id();
        let content = Content::edit(&file.content, &on.content, &file.edit);
        if self.cfg.trace {
            eprintln!("{:>6} n{i} proposes its file's edit {:?} to n{m} as {next}: {content}", self.now, file.edit);
        }
        let snapshot = Snapshot::new(next, on.members.clone(), on.timing, content);
        let request = self.seq_request(m, file.edit.clone());
        self.step(m, Input::Propose { request, snapshot, new_member: None })
    }

    /// Node `i` persisted `snapshot` over what it held: if that changed
    /// what operators own, its file now holds it (an edit it held was
    /// replicated in it, or is set aside); runtime state alone leaves the
    /// file, and an edit in it, as it was. The snapshot is remembered.
    pub(crate) fn persisted(&mut self, i: usize, snapshot: &Snapshot) {
        let node = &mut self.nodes[i];
        let before = content::content_id(node.disk_config.id, &node.disk_config.content);
        let after = content::content_id(snapshot.id, &snapshot.content);
        let runtime_only = !edits::rewrites_file((before.term, before.version), (after.term, after.version));
        // The same content id is the same content, whichever snapshot.
        debug_assert!(
            !runtime_only
                || content::operator_part(&snapshot.content) == content::operator_part(&node.disk_config.content),
            "content {after} with two operator parts"
        );
        if runtime_only {
            if node.file.as_ref().is_some_and(|f| !f.edit.is_empty()) {
                self.stats.operator.kept_over_runtime += 1;
            }
        } else if let Some(file) = node.file.take()
            && !content::mutations(&snapshot.content).any(|m| m == file.edit)
        {
            self.stats.operator.set_aside += 1;
        }
        node.history.push_back(snapshot.clone());
        if node.history.len() > HISTORY_MAX {
            node.history.pop_front();
        }
    }

    /// A client changes the cluster's timers (`qu cluster settings set
    /// heartbeat|dead_after`): dead_after 3-10 heartbeats, so a change may
    /// widen or narrow the lease several times over.
    pub(crate) fn draw_timing(&mut self, current: Timing) -> Timing {
        self.stats.operator.timing_changes += 1;
        let heartbeat_ms = 50 + self.rng.below(100);
        Timing { heartbeat_ms, dead_after_ms: heartbeat_ms * (3 + self.rng.below(8)), ..current }
    }
}
