//! Hand edits of cluster.yaml: noticed by polling the file, proposed
//! through the master, and set aside (never lost) when a newer version
//! overtakes one that was not replicated.

use qu_core::config::edits::{self as rules, LiveDecision, StartDecision};

use super::*;

/// Writes the daemon's own copy (`store/cluster.yaml`, the whole content
/// with its runtime state) and, when given, the operator's cluster.yaml.
/// The file first: a crash between them leaves a file the copy does not
/// know, which the next start takes for a hand edit made on the copy —
/// proposed, or set aside, never the truth — and the node had not
/// acknowledged it yet.
pub(super) fn persist_both(data: &DataDir, content: &str, operator: Option<&str>) -> Result<(), DaemonError> {
    let Some(operator) = operator else { return persist_copy(data, content) };
    // Side by side: the two fsyncs overlap (a large file's write is most of
    // a commit's time on every node).
    let (file, copy) = std::thread::scope(|scope| {
        let copy = scope.spawn(|| persist_copy(data, content));
        let file = qu_store::write_atomic(&data.cluster_yaml(), operator.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "cluster.yaml", source });
        (file, copy.join().expect("writing the copy does not panic"))
    });
    file.and(copy)
}

/// What tells one write of a file from any other: every write, rename or
/// change of mode moves its ctime, which no tool can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

pub(super) fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

impl Daemon {
    /// Whether cluster.yaml still is the very write this daemon made (its
    /// stamp unchanged). Cheap, for the commit path, which then only
    /// appends to the log; whatever overwrites the file looks at its
    /// content first (`set_aside_unreplicated_edit`), and the poll reads
    /// it every time, so a write the stamp cannot tell apart (the same
    /// size, in place, within the clock's tick) is still found.
    pub(super) fn file_untouched(&self) -> bool {
        self.written_stamp.is_some() && file_stamp(&self.data.cluster_yaml()) == self.written_stamp
    }
}

/// The stamp of `path` if it holds exactly `content` (read back once, so
/// a stamp is never taken of someone else's write).
pub(super) fn stamp_if_holds(path: &std::path::Path, content: &str) -> Option<FileStamp> {
    let stamp = file_stamp(path)?;
    let text = qu_store::read_text(path).ok()?;
    (text == content && file_stamp(path) == Some(stamp)).then_some(stamp)
}

/// Writes the daemon's own copy, `store/cluster.yaml`.
fn persist_copy(data: &DataDir, content: &str) -> Result<(), DaemonError> {
    qu_store::create_private_dir(&data.store_dir())
        .map_err(|source| DaemonError::Persist { what: "store/", source })?;
    qu_store::write_atomic(&data.last_cluster_yaml(), content.as_bytes(), SECRET_FILE_MODE)
        .map_err(|source| DaemonError::Persist { what: "store/cluster.yaml", source })
}

/// Carries out the start decision about cluster.yaml (`qu_core::config::edits`),
/// logs it, and returns what the daemon counts as written to cluster.yaml:
/// the operator's part of the content it runs on. An edit made while
/// stopped stays in the file, for the live path to propose or set aside.
pub(super) fn at_start(
    data: &DataDir,
    cluster: &ClusterConfig,
    start: StartDecision,
    texts: &crate::load::StartTexts,
) -> Result<Arc<str>, DaemonError> {
    let content = cluster.to_yaml();
    let operator: Arc<str> = cluster.to_operator_yaml().into();
    match start {
        StartDecision::Unchanged => {}
        StartDecision::Restamped => tracing::warn!(
            "manual-edit: only version/term of cluster.yaml were changed while the daemon was stopped; ignored (they are the cluster's to set)"
        ),
        StartDecision::Restore => tracing::warn!(
            "cluster.yaml holds version 0: running on it as a restore; this node takes the master's copy before it votes"
        ),
        StartDecision::Shrink => tracing::warn!(
            version = cluster.version,
            members = cluster.peers.len(),
            "manual-edit: cluster.yaml was edited while the daemon was stopped to remove peers and raise the version to {}: taking it as the shrink procedure ({} members)",
            cluster.version,
            cluster.peers.len()
        ),
        StartDecision::Propose { base_version } => tracing::warn!(
            "manual-edit: cluster.yaml was edited while the daemon was stopped; proposing it, based on version {base_version}"
        ),
        StartDecision::Stale { edited, current } => tracing::warn!(
            "manual-edit: cluster.yaml was edited while the daemon was stopped, on version {edited}, but this node persisted version {current}: setting it aside"
        ),
        StartDecision::Unreadable => tracing::warn!(
            version = cluster.version,
            "manual-edit: cluster.yaml does not parse or validate ({}); running on this node's last persisted copy (version {}). The file is left as it is: fix it and it is proposed, or it is set aside as cluster.yaml.unreplicated-N when a newer version is written",
            texts.unreadable.as_deref().unwrap_or("unknown error"),
            cluster.version
        ),
    }
    let copy_current = texts.copy.as_deref() == Some(&*content);
    // The file is rewritten only if it says something else (an edit
    // settled at start, or a file of an older format that still listed
    // runtime state); an edit left for the live path stays.
    let file = (!start.leaves_edit() && texts.file != *operator).then_some(&*operator);
    if file.is_some() || !copy_current {
        persist_both(data, &content, file)?;
    }
    Ok(operator)
}

/// What cluster.yaml holds besides what this node wrote there.
pub(super) enum Unreplicated {
    None,
    /// The change about to be written is this very edit, committed.
    ThisChange,
    /// A hand edit the change would overwrite, made on version `based_on`.
    Edit {
        text: String,
        based_on: u64,
    },
}

impl Daemon {
    /// A newer version is about to replace cluster.yaml while it holds a
    /// hand edit that has not been replicated: keep the edit beside it
    /// rather than lose it, and say so.
    /// Returns whether the file held an edit (set aside, or this very
    /// change), which the caller settles by writing the files now.
    pub(super) fn set_aside_unreplicated_edit(&mut self, incoming: &ClusterConfig) -> bool {
        match self.unreplicated_edit(incoming) {
            Unreplicated::None => false,
            Unreplicated::ThisChange => true,
            Unreplicated::Edit { text, based_on } => {
                self.set_aside(&text, based_on);
                true
            }
        }
    }

    /// What cluster.yaml holds that `incoming` would overwrite (see
    /// `set_aside_unreplicated_edit`), logged.
    pub(super) fn unreplicated_edit(&self, incoming: &ClusterConfig) -> Unreplicated {
        let path = self.data.cluster_yaml();
        let Ok(text) = qu_store::read_text(&path) else { return Unreplicated::None };
        if *text == *self.written || text.trim().is_empty() {
            return Unreplicated::None;
        }
        // The version the edit was made on: the one the file says, or, for
        // a hand-raised one, the one this node had written there.
        let written_version = self.written_id.1;
        let mut based_on = written_version;
        // The incoming version may be this very edit, committed.
        if let Ok(edited) = ClusterConfig::parse(&text) {
            based_on = edited.version.min(written_version);
            if edited.same_content(incoming) {
                return Unreplicated::ThisChange;
            }
        }
        if based_on < written_version {
            // Stale all along (a write-back of an old copy), whichever of
            // the poll and this persist saw it first.
            tracing::warn!(
                "manual-edit: cluster.yaml was saved on version {based_on}, but this node's cluster.yaml is at version {written_version} (was it open in an editor while the cluster changed?)"
            );
        } else {
            tracing::warn!("manual-edit: version {} arrived before the hand edit was replicated", incoming.version);
        }
        Unreplicated::Edit { text, based_on }
    }

    /// The master refused a hand edit for good: it is set aside, and the
    /// file holds what this node holds again — so a refused edit never
    /// lingers to be judged again at the next start (where an edit that
    /// removes peers and raises the version is the shrink procedure).
    pub(super) fn edit_refused(&mut self, text: &str) {
        let current = qu_store::read_text(&self.data.cluster_yaml()).unwrap_or_default();
        if current != text {
            return; // saved again meanwhile: that edit is judged on its own
        }
        let version =
            ClusterConfig::parse(text).map(|c| c.version).unwrap_or_else(|_| self.cluster.content_stamp().version);
        self.set_aside(text, version);
        self.rewrite_file();
    }

    /// Saves a hand edit that will not be replicated beside cluster.yaml,
    /// as `cluster.yaml.unreplicated-<version it was made on>`, and says so.
    pub(super) fn set_aside(&mut self, text: &str, version: u64) {
        let aside = self.data.root().join(format!("cluster.yaml.unreplicated-{version}"));
        match qu_store::write_atomic(&aside, text.as_bytes(), SECRET_FILE_MODE) {
            Ok(()) => tracing::warn!(
                saved = %aside.display(),
                "manual-edit: the edit is saved as {} — re-apply it to the current cluster.yaml",
                aside.display()
            ),
            Err(error) => tracing::warn!(%error, "manual-edit: could not save the unreplicated hand edit aside"),
        }
        self.pending_edit = None;
    }

    /// Puts what this node holds back into cluster.yaml (after an edit was
    /// ignored or set aside).
    fn rewrite_file(&mut self) {
        match self.unflushed.take() {
            // Changes wait in the log: the files get them now.
            Some(unflushed) => {
                let operator = super::consensus::operator_of(&mut self.renderer, &self.cluster, self.written_id);
                if let Err(error) = self.write_files(&unflushed.content, operator) {
                    tracing::warn!(%error, "manual-edit: could not rewrite cluster.yaml");
                }
            }
            None => {
                let path = self.data.cluster_yaml();
                if let Err(error) = qu_store::write_atomic(&path, self.written.as_bytes(), SECRET_FILE_MODE) {
                    tracing::warn!(%error, "manual-edit: could not rewrite cluster.yaml");
                }
                self.written_stamp = stamp_if_holds(&path, &self.written);
            }
        }
        self.pending_edit = None;
    }

    /// Looks for a hand edit of cluster.yaml and forwards it as a replace.
    pub(super) fn poll_file(&mut self) {
        crate::load::tighten_logged(&self.data.cluster_yaml());
        let Ok(text) = qu_store::read_text(&self.data.cluster_yaml()) else { return };
        if *text == *self.written {
            self.pending_edit = None;
            return;
        }
        if self.bad_edit.as_deref() == Some(text.as_str()) {
            return;
        }
        let edited = match ClusterConfig::parse(&text) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!("manual-edit: parse cluster.yaml: {error} — ignoring");
                self.bad_edit = Some(text);
                return;
            }
        };
        if edited.same_content(&self.cluster) {
            tracing::warn!(
                "manual-edit: only version/term of cluster.yaml were changed; ignored (they are the cluster's to set)"
            );
            self.rewrite_file();
            return;
        }
        let (base_term, content_version) = self.cluster.content_id();
        let base_version = match rules::live(edited.version, content_version) {
            LiveDecision::Propose { base_version } => base_version,
            LiveDecision::Stale { edited, current } => {
                tracing::warn!(
                    "manual-edit: cluster.yaml was saved on version {edited}, but this node's cluster.yaml is at version {current} (was it open in an editor while the cluster changed?)"
                );
                self.set_aside(&text, edited);
                self.rewrite_file();
                return;
            }
        };
        let already_pending = self.pending_edit.as_ref().is_some_and(|(t, _)| *t == text);
        if already_pending && self.inflight.is_some() {
            return;
        }
        if !already_pending {
            tracing::info!("manual-edit: cluster.yaml changed externally — replicating via master");
        }
        self.pending_edit = Some((text.clone(), edited.clone()));
        let mutation = Mutation::Replace { config: Box::new(edited), base_version, base_term };
        let (reply, answer) = oneshot::channel();
        self.submit(mutation, Waiter::Edit(reply));
        let events = self.events.clone();
        tokio::spawn(async move {
            match answer.await {
                Ok(Err(failure @ Failure::Refused(_))) => {
                    let message = failure.message();
                    tracing::warn!("manual-edit: not replicated: {message}");
                    let _ = events.send(Event::Control(ControlEvent::EditRefused { text })).await;
                }
                Ok(Err(failure)) => {
                    let message = failure.message();
                    tracing::warn!("manual-edit: not replicated yet: {message}; retrying while the edit stands");
                }
                Ok(Ok(())) | Err(_) => {}
            }
        });
    }
}
