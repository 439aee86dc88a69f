//! Driving the consensus core: stepping it, and executing its outputs in
//! the order it gives them (persisting a config applies it).

use super::*;

impl Daemon {
    pub(super) fn step(&mut self, input: Input) -> Result<(), DaemonError> {
        let now = self.now();
        let out = self.core.step(now, input);
        self.execute(out)
    }

    /// Executes the core's outputs in the order the core gave them.
    pub(super) fn execute(&mut self, outputs: Vec<Output>) -> Result<(), DaemonError> {
        for output in outputs {
            match output {
                Output::PersistDurable(durable) => self.persist_durable(&durable)?,
                // Parsing, validating and fsyncing a large cluster.yaml is
                // blocking work: let the runtime move other tasks (the probe
                // scheduler) off this thread meanwhile.
                Output::PersistConfig(snapshot) => blocking(|| self.persist_config(&snapshot))?,
                Output::Send { to, msg } => self.send(to, msg),
                Output::ProposalDone { request, result } => self.proposal_done(request, result),
                Output::RoleChanged { term, role, master } => self.log_role(term, role, master),
                Output::NeedFreshCommit { .. } => {
                    self.queue.push_front((Mutation::Restamp, Waiter::Internal));
                }
            }
        }
        Ok(())
    }

    pub(super) fn log_role(&mut self, term: u64, role: Role, master: Option<NodeId>) {
        match (role, master) {
            (Role::Master, _) => tracing::info!(term, master = %self.me(), "term {term}: this node is master"),
            (_, Some(master)) => tracing::info!(term, %master, "term {term}: master is {master}"),
            (Role::Candidate, None) => tracing::info!(term, "term {term}: election in progress"),
            (Role::Follower, None) => tracing::info!(term, "term {term}: no master"),
        }
        if role == Role::Master {
            // Start from the committed states and fresh reports only.
            self.verdicts.forget_reports();
            self.sync_verdicts();
        }
        if role != Role::Master {
            // Whatever was waiting for this master's turn must go elsewhere.
            let waiting: Vec<_> = self.queue.drain(..).collect();
            for (_, waiter) in waiting {
                waiter.finish(Err(Failure::NotNow(format!("the master stepped down (term {term}); retry"))), None);
            }
        }
    }

    pub(super) fn persist_durable(&mut self, durable: &Durable) -> Result<(), DaemonError> {
        let text = serde_yaml::to_string(durable).expect("durable state serialises");
        qu_store::write_atomic(&self.data.state_yaml(), text.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "state.yaml", source })?;
        match (durable.restoring.is_empty(), self.restore_peers.is_empty()) {
            (false, true) => {
                tracing::warn!("restoring: this node votes for no one until it has caught up with the cluster's copy");
                self.note_restore_peers();
            }
            (true, false) => {
                tracing::info!("restoring: caught up; this node votes again");
                self.restore_peers.clear();
                self.refresh_trust();
            }
            _ => {}
        }
        Ok(())
    }

    /// Remembers the peers of the config held now, while restoring.
    pub(super) fn note_restore_peers(&mut self) {
        let mut changed = false;
        for peer in &self.cluster.peers {
            if !self.restore_peers.iter().any(|p| p.node_id == peer.node_id) {
                self.restore_peers.push(peer.clone());
                changed = true;
            }
        }
        if changed {
            self.refresh_trust();
        }
    }

    /// Writes the daemon's copy with `content` and, if `operator` (the
    /// operator's part of it, when what operators own changed since
    /// cluster.yaml was written) says so, the file too: both then hold
    /// everything the log did, which is emptied. Runtime state alone leaves
    /// cluster.yaml as it is.
    pub(super) fn write_files(&mut self, content: &Arc<str>, operator: Option<Operator>) -> Result<(), DaemonError> {
        let operator = operator.filter(|o| *o.text != *self.written);
        edits::persist_both(&self.data, content, operator.as_ref().map(|o| &*o.text))?;
        self.log.clear().map_err(|source| DaemonError::Persist { what: "store/log", source })?;
        if let Some(operator) = operator {
            self.written_stamp = edits::stamp_if_holds(&self.data.cluster_yaml(), &operator.text);
            self.written = operator.text;
            self.written_id = operator.id;
            self.bad_edit = None;
        }
        self.unflushed = None;
        Ok(())
    }

    /// The operator's cluster.yaml for `cluster`, if what operators own
    /// changed since the file was written (rendered only then: at a
    /// commit that changes it, once the changes pause, not on the commit
    /// path).
    pub(super) fn operator_for(&mut self, cluster: &ClusterConfig) -> Option<Operator> {
        operator_of(&mut self.renderer, cluster, self.written_id)
    }

    /// When the files are due to follow the log (on `now`'s clock), if
    /// changes wait in it.
    pub(super) fn flush_at(&self) -> Option<u64> {
        self.unflushed.as_ref().map(|u| (u.last + FLUSH_IDLE_MS).min(u.first + FLUSH_MAX_MS))
    }

    /// Writes the files if changes wait in the log alone. A hand edit saved
    /// meanwhile is judged first if cluster.yaml is to change, as at any
    /// persist that rewrites it.
    pub(super) fn flush(&mut self) -> Result<(), DaemonError> {
        let Some(unflushed) = self.unflushed.take() else { return Ok(()) };
        // The log's last change is the config held now.
        let operator = operator_of(&mut self.renderer, &self.cluster, self.written_id);
        if operator.is_some()
            && let edits::Unreplicated::Edit { text, based_on } = self.unreplicated_edit(&self.cluster)
        {
            self.set_aside(&text, based_on);
        }
        blocking(|| self.write_files(&unflushed.content, operator))
    }

    pub(super) fn persist_config(&mut self, snapshot: &Snapshot) -> Result<(), DaemonError> {
        // The config behind this snapshot was usually parsed (received) or
        // built (proposed) a moment ago; parse again only if not.
        let cluster = match self.parsed.take() {
            Some((text, config)) if Arc::ptr_eq(&text, &snapshot.content) => config,
            _ => ClusterConfig::parse(&snapshot.content).expect("snapshots are validated before the core sees them"),
        };
        // A change made here from its parent as a log entry is persisted as
        // that entry, and the files follow within moments; anything else
        // (a whole snapshot, or a hand edit in the file to settle) is
        // written to the files now.
        let (id, hash) = self.persisted;
        let entry = self
            .pending_entry
            .take()
            .filter(|e| e.id.is(&snapshot.id) && e.hash == snapshot.hash && e.parent.is(&id) && e.parent_hash == hash);
        // Whether cluster.yaml is to change: only if what operators own
        // changed since it was written (a transition or a delivery result
        // leaves the file alone, and a hand edit in it stands).
        let file_changes = qu_core::config::edits::rewrites_file(self.written_id, cluster.content_id());
        let file_edited = match entry {
            _ if !file_changes => false,
            Some(_) if self.file_untouched() => false,
            _ => self.set_aside_unreplicated_edit(&cluster),
        };
        match entry {
            Some(entry) if !file_edited => {
                let record = serde_json::to_string(&entry).expect("entries serialise");
                self.log.append(&record).map_err(|source| DaemonError::Persist { what: "store/log", source })?;
                let now = self.now();
                let first = self.unflushed.as_ref().map_or(now, |u| u.first);
                self.unflushed = Some(Unflushed { content: snapshot.content.clone(), first, last: now });
            }
            _ => {
                let operator = self.operator_for(&cluster);
                self.write_files(&snapshot.content, operator)?
            }
        }
        self.persisted = (snapshot.id, snapshot.hash);
        let members_changed = cluster.peers != self.cluster.peers;
        // Most commits (transitions, delivery results) change neither: with
        // 10,000 checks, rebuilding the schedule costs more than comparing.
        let probing_changed = cluster.checks != self.cluster.checks
            || cluster.plugins != self.cluster.plugins
            || cluster.settings.plugin_memory_mib != self.cluster.settings.plugin_memory_mib;
        if let Some(master) = self.core.master()
            && master != self.me()
            && cluster.peer(&master).is_none()
            && let Some(peer) = self.cluster.peer(&master)
        {
            let until = self.now() + 3 * cluster.settings.dead_after.as_millis() as u64;
            self.departing = Some((peer.clone(), until));
        }
        self.cluster = cluster;
        if !self.core.durable().restoring.is_empty() {
            self.note_restore_peers();
        }
        tracing::info!(
            version = snapshot.id.version,
            term = snapshot.id.term,
            "config version {} applied (term {})",
            snapshot.id.version,
            snapshot.id.term
        );
        if members_changed {
            self.refresh_trust();
        }
        if probing_changed {
            self.plugins.sync(&self.cluster, self.peer_connections());
            self.reschedule();
            // The checks the master judges. (Committed states change only
            // through its own transitions, which `proposal_done` settles,
            // and a new master syncs them all when it takes over.)
            if self.core.role() == Role::Master {
                self.sync_verdicts();
            }
        }
        Ok(())
    }
}

/// cluster.yaml's text and the content id it shows.
pub(super) struct Operator {
    pub(super) text: Arc<str>,
    pub(super) id: (u64, u64),
}

/// [`Daemon::operator_for`], on the fields it needs (so the caller may hold
/// others).
pub(super) fn operator_of(
    renderer: &mut qu_core::config::Renderer,
    cluster: &ClusterConfig,
    written_id: (u64, u64),
) -> Option<Operator> {
    let id = cluster.content_id();
    qu_core::config::edits::rewrites_file(written_id, id)
        .then(|| Operator { text: renderer.operator_text(cluster), id })
}
