//! The peer side: messages checked against the committed membership,
//! peer requests answered, links kept to every member, and this node
//! joining a cluster.

use super::*;

impl Daemon {
    /// A snapshot from the network is re-derived from its content: it must
    /// parse, validate, carry the id it claims and be in canonical form.
    pub(super) fn verify_message(&mut self, msg: Msg) -> Result<Msg, String> {
        Ok(match msg {
            Msg::Replicate { term, snapshot, sent_at } => {
                Msg::Replicate { term, snapshot: self.verify_snapshot(snapshot)?, sent_at }
            }
            Msg::PullReply { snapshot } => Msg::PullReply { snapshot: self.verify_snapshot(snapshot)? },
            other => other,
        })
    }

    pub(super) fn verify_snapshot(&mut self, snapshot: Snapshot) -> Result<Snapshot, String> {
        let config = ClusterConfig::parse(&snapshot.content).map_err(|e| e.to_string())?;
        let rebuilt = self.renderer.snapshot(&config);
        if rebuilt.id != snapshot.id || (snapshot.id.version != 0 && rebuilt.content != snapshot.content) {
            return Err(format!("snapshot {} does not match its content", snapshot.id));
        }
        self.parsed = Some((rebuilt.content.clone(), config));
        Ok(rebuilt)
    }

    pub(super) fn on_peer_request(
        &mut self,
        from: Caller,
        request: PeerRequest,
        reply: oneshot::Sender<PeerResponse>,
    ) -> Result<(), DaemonError> {
        let response = match request {
            PeerRequest::Identify => PeerResponse::Identity {
                node_id: self.me(),
                advertise: self.node.advertise.clone(),
                version: crate::VERSION.to_string(),
            },
            PeerRequest::JoinStart { pake } => {
                let now = self.now();
                self.join_sessions.start(&self.node, &self.fingerprint, &from, &pake, now)
            }
            PeerRequest::JoinHello { confirm, cluster_yaml } => self.on_join_hello(&from, &confirm, &cluster_yaml)?,
            PeerRequest::JoinFailed => {
                let now = self.now();
                self.join_sessions.failed(&from, now);
                PeerResponse::Refused { reason: "join handshake ended".into() }
            }
            PeerRequest::Ping => {
                PeerResponse::Pong { node_id: self.me(), term: self.core.term(), config_version: self.cluster.version }
            }
            PeerRequest::CheckSummaries => {
                if self.core.role() == Role::Master {
                    PeerResponse::CheckSummaries { summaries: self.summaries() }
                } else {
                    PeerResponse::Refused { reason: self.not_master_reason() }
                }
            }
            PeerRequest::PluginBlob { sha256 } => match self.plugins.read_blob(&sha256) {
                Ok(Some(bytes)) => PeerResponse::PluginBlob { bytes },
                Ok(None) => {
                    PeerResponse::Refused { reason: format!("component {sha256} is not stored on {}", self.me()) }
                }
                Err(reason) => PeerResponse::Refused { reason },
            },
            PeerRequest::PluginPut { bytes } => match self.plugins.store_blob(&bytes) {
                Ok(sha256) => PeerResponse::PluginStored { sha256 },
                Err(reason) => PeerResponse::Refused { reason: format!("store plugin component: {reason}") },
            },
            PeerRequest::Propose { mutation_json } => match serde_json::from_str::<Mutation>(&mutation_json) {
                Ok(mutation) if self.core.role() == Role::Master => {
                    self.submit(mutation, Waiter::Peer(reply));
                    return Ok(());
                }
                Ok(_) => PeerResponse::Refused { reason: self.not_master_reason() },
                Err(error) => PeerResponse::Refused {
                    reason: format!("unreadable change (is this node the same version?): {error}"),
                },
            },
        };
        let _ = reply.send(response);
        Ok(())
    }

    pub(super) fn not_master_reason(&self) -> String {
        match self.core.master() {
            Some(master) if self.core.is_live(&master) => format!("this node is not the master (master is {master})"),
            _ => {
                let (live, members, need) =
                    (self.core.live_members(), self.cluster.peers.len(), self.cluster.quorum_size());
                if self.core.is_member() && live >= need {
                    format!(
                        "no master yet: an election is in progress ({live} of {members} members reachable); retry in a few seconds"
                    )
                } else {
                    ProposeError::NoQuorum { live, members, need }.to_string()
                }
            }
        }
    }

    pub(super) fn on_join_hello(
        &mut self,
        from: &Caller,
        confirm: &[u8],
        cluster_yaml: &str,
    ) -> Result<PeerResponse, DaemonError> {
        let now = self.now();
        if !self.join_sessions.confirmed(&self.fingerprint, from, confirm, now) {
            if self.join_sessions.may_warn(from.remote_addr.ip(), now) {
                tracing::warn!(peer = %from.remote_addr, key = %from.fingerprint, "join refused: wrong cluster secret");
            }
            return Ok(PeerResponse::Refused {
                reason: "cluster secret mismatch: this node was initialised with a different --secret \
                         (or the handshake did not start on this connection)"
                    .into(),
            });
        }
        let blank = match join::accept(&self.node, from, cluster_yaml, &self.core) {
            Ok(blank) => blank,
            Err(reason) => return Ok(PeerResponse::Refused { reason }),
        };
        let cert_pem = qu_store::read_text(&self.data.cert())
            .map_err(|source| DaemonError::Persist { what: "keys/cert.pem", source })?;
        // Start over as a blank node that trusts the inviter's cluster and
        // takes the master's first configuration.
        let durable = Durable::default();
        self.persist_durable(&durable)?;
        let snapshot = blank.snapshot();
        // Both files, and a log emptied of the changes of the cluster this
        // node leaves (nothing of it may be written or replayed later).
        let operator = self.operator_for(&blank);
        self.write_files(&snapshot.content, operator)?;
        self.persisted = (snapshot.id, snapshot.hash);
        self.pending_entry = None;
        let (core, out) = Core::new(self.me(), durable, snapshot, self.now(), rand::random());
        self.core = core;
        self.cluster = blank;
        self.refresh_trust();
        self.execute(out)?;
        tracing::info!(inviter = %from.remote_addr, "join accepted: waiting for the master's configuration");
        Ok(PeerResponse::JoinHelloOk { node_id: self.me(), advertise: self.node.advertise.clone(), cert_pem })
    }

    /// Trust exactly the members (and a node being added), and close every
    /// connection to a key that is no longer trusted.
    pub(super) fn refresh_trust(&mut self) {
        let mut trusted: Vec<(Fingerprint, NodeId)> =
            self.cluster.peers.iter().map(|p| (p.fingerprint.clone(), p.node_id)).collect();
        if let Some(peer) = &self.joining {
            trusted.push((peer.fingerprint.clone(), peer.node_id));
        }
        if let Some((peer, _)) = &self.departing {
            trusted.push((peer.fingerprint.clone(), peer.node_id));
        }
        let restoring = &self.core.durable().restoring;
        for peer in self.restore_peers.iter().filter(|p| restoring.contains(&p.node_id)) {
            trusted.push((peer.fingerprint.clone(), peer.node_id));
        }
        self.trust.replace(trusted);
        self.inbound.retain(|c| {
            let keep = !c.is_closed() && c.peer_member().is_some();
            if !keep {
                c.close();
            }
            keep
        });
        self.refresh_links();
    }

    pub(super) fn refresh_links(&mut self) {
        let mut peers: Vec<qu_core::config::Peer> = self.cluster.peers.clone();
        peers.extend(self.joining.clone());
        peers.extend(self.departing.as_ref().map(|(peer, _)| peer.clone()));
        self.links.set_peers(&peers);
    }

    pub(super) fn send(&mut self, to: NodeId, msg: Msg) {
        let now = self.now();
        let pulling = matches!(msg, Msg::Pull);
        let kind = msg_kind(&msg);
        let notice = match msg {
            Msg::Replicate { term, snapshot, sent_at } => self.replicate_notice(to, term, snapshot, sent_at),
            other => PeerNotice::Consensus(other),
        };
        // Our own link first (dialled if it is down); else whichever
        // authenticated connection that peer opened to us, so a node whose
        // dials are blocked one way still hears its answers.
        let sent = match self.links.send(to, notice.clone(), now, &self.endpoint, &self.events) {
            Err(error) => match self.inbound_from(&to) {
                Some(connection) => connection.try_notify(notice).map_err(|e| e.to_string()),
                None => Err(error),
            },
            ok => ok,
        };
        match sent {
            Err(error) if pulling => tracing::warn!(peer = %to, "replicate: pull from {to}: {error}"),
            Err(error) => tracing::debug!(peer = %to, kind, %error, "message dropped"),
            Ok(()) => tracing::trace!(peer = %to, kind, "sent"),
        }
    }

    /// Connections to the other members (to fetch plugin blobs from).
    pub(super) fn peer_connections(&self) -> Vec<qu_transport::Connection<crate::peer::Wire>> {
        self.cluster
            .peers
            .iter()
            .filter(|p| p.node_id != self.me())
            .filter_map(|p| self.connection_to(&p.node_id))
            .collect()
    }

    /// An open connection to `node`: our own link, else one it opened to us
    /// (authenticated by its key like ours: replies and requests may use
    /// either, so a one-way firewall does not cut a peer off).
    pub(super) fn connection_to(&self, node: &NodeId) -> Option<qu_transport::Connection<crate::peer::Wire>> {
        self.links.connection(node).or_else(|| self.inbound_from(node))
    }

    fn inbound_from(&self, node: &NodeId) -> Option<qu_transport::Connection<crate::peer::Wire>> {
        self.inbound.iter().find(|c| !c.is_closed() && c.peer_member() == Some(*node)).cloned()
    }
}

/// How many of this master's latest proposals it keeps as log entries.
const ENTRIES_KEPT: usize = 8;

impl Daemon {
    /// Keeps the change just proposed as a log entry on the config it was
    /// applied to (the core's current one).
    pub(super) fn remember_entry(&mut self, mutation: &Mutation, stamp: &Stamp, snapshot: &Snapshot) -> Entry {
        let parent = self.core.config();
        let entry = Entry {
            term: 0,
            sent_at: 0,
            id: snapshot.id,
            parent: parent.id,
            parent_hash: parent.hash,
            hash: snapshot.hash,
            mutation_json: serde_json::to_string(mutation).expect("mutations serialise"),
            stamp: *stamp,
        };
        self.entries.push_back(entry.clone());
        while self.entries.len() > ENTRIES_KEPT {
            self.entries.pop_front();
        }
        entry
    }

    /// The master's `Replicate` to `to`: the change as a log entry when `to`
    /// last reported holding its parent or was last sent it, else the whole
    /// snapshot.
    fn replicate_notice(&mut self, to: NodeId, term: u64, snapshot: Snapshot, sent_at: u64) -> PeerNotice {
        let holds = self.core.peer_config(&to);
        let sent = self.sent_to.insert(to, snapshot.id);
        let has_parent = |parent: &ConfigId| [holds, sent].iter().flatten().any(|h| h.is(parent));
        let entry =
            self.entries.iter().rev().find(|e| e.id == snapshot.id && e.hash == snapshot.hash && has_parent(&e.parent));
        match entry {
            Some(entry) => {
                self.replication.entries_sent += 1;
                PeerNotice::Entry(Box::new(Entry { term, sent_at, ..entry.clone() }))
            }
            None => {
                self.replication.snapshots_sent += 1;
                PeerNotice::Consensus(Msg::Replicate { term, snapshot, sent_at })
            }
        }
    }

    /// A log entry from the master: applied here if this node holds exactly
    /// its parent, and handed to the core as the `Replicate` it stands for
    /// once the result's hash matches the master's; otherwise this node
    /// asks for the whole snapshot.
    pub(super) fn on_entry(&mut self, from: NodeId, entry: Entry) -> Result<(), DaemonError> {
        let current = self.core.config().clone();
        let replicate = |snapshot| Msg::Replicate { term: entry.term, snapshot, sent_at: entry.sent_at };
        if current.id.is(&entry.id) && current.hash == entry.hash {
            // Held already (a retransmission): let the core acknowledge it.
            return self.step(Input::Receive { from, msg: replicate(current) });
        }
        let parent_held = current.id.is(&entry.parent) && current.hash == entry.parent_hash;
        let applied = if parent_held {
            blocking(|| self.apply_entry(&entry))
        } else {
            Err("this node holds another config".into())
        };
        match applied {
            Ok((snapshot, config)) => {
                self.replication.entries_applied += 1;
                self.parsed = Some((snapshot.content.clone(), config));
                self.pending_entry = Some(entry.clone());
                self.step(Input::Receive { from, msg: replicate(snapshot) })
            }
            Err(why) => {
                self.replication.entries_refused += 1;
                tracing::debug!(peer = %from, entry = %entry.id, %why, "replicate: pulling the master's copy instead of an entry");
                self.send(from, Msg::Pull);
                Ok(())
            }
        }
    }

    /// Applies `entry` to this node's config, as the master did.
    fn apply_entry(&mut self, entry: &Entry) -> Result<(Snapshot, ClusterConfig), String> {
        let mutation: Mutation =
            serde_json::from_str(&entry.mutation_json).map_err(|e| format!("unreadable change: {e}"))?;
        let next = mutation.apply(&self.cluster, &entry.stamp)?;
        let snapshot = self.renderer.snapshot(&next);
        if snapshot.id != entry.id || snapshot.hash != entry.hash {
            return Err(format!("entry {} gave other content here than on the master", entry.id));
        }
        Ok((snapshot, next))
    }
}
