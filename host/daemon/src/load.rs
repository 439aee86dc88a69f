//! Loading a node at start: every file read, parsed, validated and
//! cross-checked, or one clear error saying which file and what to do.

use qu_core::config::edits::{self, AtStart, StartDecision};
use qu_core::config::{ClusterConfig, ConfigError, NodeConfig, NodeOverrides};
use qu_core::consensus::Durable;
use qu_core::{Fingerprint, NodeId};
use qu_store::{DataDir, StoreError};
use qu_transport::TlsIdentity;

/// Everything a node needs to run, validated.
#[derive(Debug, Clone)]
pub struct LoadedNode {
    pub data: DataDir,
    pub node: NodeConfig,
    pub identity: TlsIdentity,
    /// What the node runs on: its last persisted copy, or cluster.yaml as
    /// `start` decided.
    pub cluster: ClusterConfig,
    pub durable: Durable,
    /// What was decided about cluster.yaml at start.
    pub start: StartDecision,
    /// cluster.yaml and the daemon's copy as read, so start need not read
    /// them again.
    pub texts: StartTexts,
}

/// The texts of cluster.yaml and of `store/cluster.yaml` (if any) at start.
#[derive(Debug, Clone)]
pub struct StartTexts {
    pub file: String,
    pub copy: Option<String>,
    /// Why cluster.yaml did not parse or validate, when the node runs on
    /// its copy instead.
    pub unreadable: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "{path} not found: run qu init first (`qu init --advertise HOST:PORT`), or point QUPTIME_DIR at the data directory"
    )]
    NotInitialised { path: String },
    #[error("{path} not found: the node's files are incomplete; restore it from your backup")]
    Missing { path: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{0}")]
    Store(StoreError),
}

impl LoadedNode {
    /// Reads a node's files; `env` holds `QUPTIME_*` overrides of node.yaml.
    pub fn load(data: &DataDir, env: &NodeOverrides) -> Result<Self, LoadError> {
        let removed = data.remove_stale_temps().map_err(LoadError::Store)?;
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an interrupted write");
        }
        let node_text = qu_store::read_text(&data.node_yaml()).map_err(|e| match e {
            StoreError::NotFound { path } => LoadError::NotInitialised { path: path.display().to_string() },
            other => LoadError::Store(other),
        })?;
        let node = NodeConfig::parse(&node_text)?.with_overrides(env)?;
        let identity = load_identity(data)?;
        let cluster_path = data.cluster_yaml();
        let file_text = read(&cluster_path)?;
        let parsed = ClusterConfig::parse(&file_text);
        if let Err(error) = parsed {
            // With a copy of its own the node runs on that (what the rules
            // decide, below); without one, this is the error to show, even
            // if the copy is broken too.
            if !data.last_cluster_yaml().exists() {
                return Err(error.into());
            }
            return Self::load_with_unreadable_file(data, node, identity, file_text, error.to_string());
        }
        let file = parsed?;
        keep_copy_if_upgrading(data)?;
        let durable = load_durable(data)?;
        let (copy_text, last) = load_last(data)?.unzip();
        // The file is written with the copy, so an edit is judged against
        // the copy as it was written; the node then runs on the copy with
        // its log replayed over it.
        let start = edits::at_start(&AtStart::of(&file, last.as_ref(), node.node_id));
        let (last, replayed) = match last {
            Some(last) => {
                let (last, replayed) = replay_log(data, last)?;
                (Some(last), replayed)
            }
            None => (None, None),
        };
        let start = edits::after_replay(start, file.version, replayed);
        let cluster = match (start, last) {
            (StartDecision::Shrink, Some(last)) => {
                // The file is the truth of what operators own, under the term
                // the node recorded, at a version above any it held; the
                // runtime state is the node's own (the file holds none).
                let mut shrunk = ClusterConfig {
                    term: last.term.min(durable.term),
                    version: file.version.max(last.version + 1),
                    content: None,
                    states: last.states.clone(),
                    deliveries: last.deliveries.clone(),
                    ..file
                };
                shrunk.drop_runtime_state_of_removed();
                shrunk
            }
            (start, Some(last)) if start.runs_on_file() => {
                // The file is the truth, under the term the node recorded.
                ClusterConfig { term: last.term.min(durable.term), content: None, ..file }
            }
            (_, Some(last)) => last,
            (_, None) => {
                // No copy (a first start, an upgrade, a machine restored
                // from a backup): the file, but never a term the node has
                // not persisted itself.
                ClusterConfig { term: file.term.min(durable.term), content: None, ..file }
            }
        };
        let texts = StartTexts { file: file_text, copy: copy_text, unreadable: None };
        let loaded = Self { data: data.clone(), node, identity, cluster, durable, start, texts };
        loaded.cross_check()?;
        loaded.warn_about_loose_modes();
        Ok(loaded)
    }

    /// cluster.yaml does not parse or validate (a typo in a hand edit) and
    /// the node has its own copy: what the rules decide
    /// (`edits::at_start_unreadable`) — run on the copy, with its log
    /// replayed, and leave the file for the live rules.
    fn load_with_unreadable_file(
        data: &DataDir,
        node: NodeConfig,
        identity: TlsIdentity,
        file_text: String,
        error: String,
    ) -> Result<Self, LoadError> {
        keep_copy_if_upgrading(data)?;
        let durable = load_durable(data)?;
        let Some((copy_text, last)) = load_last(data)? else {
            return Err(LoadError::Invalid { path: data.cluster_yaml().display().to_string(), reason: error });
        };
        let Some(start) = edits::at_start_unreadable(true) else {
            return Err(LoadError::Invalid { path: data.cluster_yaml().display().to_string(), reason: error });
        };
        let (cluster, _) = replay_log(data, last)?;
        let texts = StartTexts { file: file_text, copy: Some(copy_text), unreadable: Some(error) };
        let loaded = Self { data: data.clone(), node, identity, cluster, durable, start, texts };
        loaded.cross_check()?;
        loaded.warn_about_loose_modes();
        Ok(loaded)
    }

    pub fn node_id(&self) -> NodeId {
        self.node.node_id
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.identity.fingerprint
    }

    /// The files must describe one node: the certificate's CN is the node
    /// id, and if cluster.yaml lists this node, with this key.
    fn cross_check(&self) -> Result<(), LoadError> {
        let cert_path = self.data.cert().display().to_string();
        let cert_pem = qu_store::read_text(&self.data.cert()).map_err(LoadError::Store)?;
        let cn = qu_transport::identity::common_name_of_cert_pem(&cert_pem)
            .map_err(|e| LoadError::Invalid { path: cert_path.clone(), reason: e.to_string() })?;
        if cn != self.node.node_id.to_string() {
            return Err(LoadError::Invalid {
                path: cert_path,
                reason: format!("issued to {cn}, but node.yaml says this node is {}", self.node.node_id),
            });
        }
        let cluster_path = self.data.cluster_yaml().display().to_string();
        for (i, peer) in self.cluster.peers.iter().enumerate() {
            let actual = qu_transport::identity::fingerprint_of_cert_pem(&peer.cert_pem).map_err(|e| {
                LoadError::Invalid { path: cluster_path.clone(), reason: format!("peers[{i}].cert_pem: {e}") }
            })?;
            if actual != peer.fingerprint {
                return Err(LoadError::Invalid {
                    path: cluster_path,
                    reason: format!(
                        "peers[{i}].fingerprint {} does not match its cert_pem ({actual})",
                        peer.fingerprint
                    ),
                });
            }
            if peer.node_id == self.node.node_id && peer.fingerprint != self.identity.fingerprint {
                return Err(LoadError::Invalid {
                    path: cluster_path,
                    reason: format!(
                        "lists this node ({}) with key {}, but keys/private.pem is {}",
                        peer.node_id, peer.fingerprint, self.identity.fingerprint
                    ),
                });
            }
        }
        if self.cluster.peer(&self.node.node_id).is_none() {
            tracing::warn!(
                node = %self.node.node_id,
                "this node is not a member in cluster.yaml; it will answer only the join handshake until a member adds it"
            );
        }
        Ok(())
    }

    fn warn_about_loose_modes(&self) {
        for path in [self.data.node_yaml(), self.data.private_key(), self.data.cluster_yaml()] {
            tighten_logged(&path);
        }
    }
}

fn read(path: &std::path::Path) -> Result<String, LoadError> {
    qu_store::read_text(path).map_err(|e| match e {
        StoreError::NotFound { path } => LoadError::Missing { path: path.display().to_string() },
        other => LoadError::Store(other),
    })
}

fn load_identity(data: &DataDir) -> Result<TlsIdentity, LoadError> {
    let key = read(&data.private_key())?;
    let cert = read(&data.cert())?;
    TlsIdentity::from_pem(&cert, &key)
        .map_err(|e| LoadError::Invalid { path: data.keys_dir().display().to_string(), reason: e.to_string() })
}

/// A data directory without `store/` was written by qu 0.1 (`qu init`
/// creates it since 0.2): its files are copied, as they are, to
/// `store/from-0.1/` before anything else is written. The files themselves
/// need no conversion (cluster.yaml's and state.yaml's formats are
/// unchanged); what 0.2 adds — its own copy of cluster.yaml — is written at
/// this first start.
fn keep_copy_if_upgrading(data: &DataDir) -> Result<(), LoadError> {
    if data.store_dir().exists() {
        return Ok(());
    }
    let copies = data.upgrade_copy_dir();
    qu_store::create_private_dir(&copies).map_err(LoadError::Store)?;
    for path in [data.cluster_yaml(), data.state_yaml()] {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let name = path.file_name().expect("a file name");
        qu_store::write_atomic(&copies.join(name), &bytes, qu_store::SECRET_FILE_MODE).map_err(LoadError::Store)?;
    }
    tracing::warn!(
        copies = %copies.display(),
        "upgrade: a data directory from qu 0.1: its cluster.yaml and state.yaml are kept as they were in {}",
        copies.display()
    );
    Ok(())
}

/// The daemon's own copy of what it last persisted, if it has one.
fn load_last(data: &DataDir) -> Result<Option<(String, ClusterConfig)>, LoadError> {
    let path = data.last_cluster_yaml();
    match qu_store::read_text(&path) {
        Ok(text) => ClusterConfig::parse(&text).map(|c| Some((text, c))).map_err(|e| LoadError::Invalid {
            path: path.display().to_string(),
            reason: format!(
                "{e}; this is the daemon's own copy of the last cluster.yaml it persisted: move it away to run on cluster.yaml as it is"
            ),
        }),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(other) => Err(LoadError::Store(other)),
    }
}

/// The daemon's copy with its log (`store/log`) replayed over it, and the
/// content version (of what operators own) the log brought it to if it
/// changed that: runtime state alone does not make an edit of the file,
/// which holds none, stale.
fn replay_log(data: &DataDir, last: ClusterConfig) -> Result<(ClusterConfig, Option<u64>), LoadError> {
    let path = data.log();
    let opened = qu_store::read_log(&path).map_err(LoadError::Store)?;
    if opened.cut_bytes > 0 {
        tracing::warn!(
            path = %path.display(),
            bytes = opened.cut_bytes,
            "log: dropping an incomplete last record (an append interrupted by a crash; it was never acknowledged)"
        );
    }
    if opened.records.is_empty() {
        return Ok((last, None));
    }
    let from = last.version;
    let last_content = last.content_stamp().version;
    let hash = qu_core::config::content_hash(&last);
    let done = qu_core::config::replay(last, hash, &opened.records);
    if let Some(why) = &done.stopped {
        tracing::warn!(
            path = %path.display(),
            "log: replay stopped at {why}; running on version {} and catching up from the master",
            done.config.version
        );
    }
    if done.applied == 0 {
        return Ok((done.config, None));
    }
    tracing::info!(
        applied = done.applied,
        "log: replayed {} changes persisted after store/cluster.yaml was last written (version {from} -> {})",
        done.applied,
        done.config.version
    );
    let content = done.config.content_stamp().version;
    let advanced = (content != last_content).then_some(content);
    Ok((done.config, advanced))
}

/// The term and vote. A missing file is a node that never voted; a corrupt
/// one is refused, because guessing could vote twice in one term.
fn load_durable(data: &DataDir) -> Result<Durable, LoadError> {
    let path = data.state_yaml();
    match qu_store::read_text(&path) {
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| LoadError::Invalid {
            path: path.display().to_string(),
            reason: format!("{e}; this file holds the node's term and vote: restore it from backup"),
        }),
        Err(StoreError::NotFound { .. }) => Ok(Durable::default()),
        Err(other) => Err(LoadError::Store(other)),
    }
}

/// Makes a file holding secrets 0600 again if something left it wider (an
/// editor that saved a copy with the umask's mode, a `cp` without `-a`),
/// and says so.
pub(crate) fn tighten_logged(path: &std::path::Path) {
    match qu_store::tighten(path) {
        Ok(Some(mode)) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "{} holds secrets but was readable by others (mode {mode:o}); made it 0600",
            path.display()
        ),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "{} holds secrets and may be readable by others: chmod 600 it", path.display())
        }
    }
}
