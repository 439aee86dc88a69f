//! Mutations on their way to a commit: one in flight at the core, a
//! bounded queue behind it, forwarded to the master from a follower, and
//! their waiters answered when the core says how it went.

use super::*;

impl Daemon {
    /// Takes a mutation from a local operator or a member: the master queues
    /// it; a follower forwards an operator's mutation to the master.
    pub(super) fn submit(&mut self, mutation: Mutation, waiter: Waiter) {
        if self.core.role() == Role::Master {
            if self.queue.len() >= QUEUED_MUTATIONS_MAX {
                waiter.finish(Err(Failure::NotNow("the master has too many changes queued; retry".into())), None);
            } else {
                self.queue.push_back((mutation, waiter));
            }
            return;
        }
        if !matches!(waiter, Waiter::Control(_) | Waiter::Edit(_)) {
            waiter.finish(Err(Failure::NotNow(self.not_master_reason())), None);
            return;
        }
        let new_member = mutation.new_member();
        match self.core.master().filter(|m| self.core.is_live(m)).and_then(|m| self.connection_to(&m).map(|c| (m, c))) {
            Some((master, connection)) => {
                let timeout = self.commit_wait();
                tokio::spawn(async move {
                    let result = match connection.request(PeerRequest::propose(&mutation), timeout).await {
                        Ok(PeerResponse::Committed { term, version }) => Ok((term, version)),
                        Ok(PeerResponse::Refused { reason }) => Err(Failure::from_master(&reason)),
                        Ok(other) => Err(Failure::NotNow(format!("unexpected answer {other:?}"))),
                        Err(error) => Err(Failure::from_transport(&error)),
                    };
                    waiter.forwarded(&master, result, new_member);
                });
            }
            None => {
                let reason = self.not_master_reason();
                tracing::warn!("propose to master: {reason}");
                waiter.finish(Err(Failure::NotNow(format!("propose to master: {reason}"))), None);
            }
        }
    }

    pub(super) fn commit_wait(&self) -> Duration {
        self.cluster.settings.dead_after * 3 + self.cluster.settings.heartbeat * 2
    }

    /// Starts the next queued mutation when this master is free to commit.
    pub(super) fn start_next_mutation(&mut self) -> Result<(), DaemonError> {
        while self.inflight.is_none() && self.core.role() == Role::Master && !self.core.is_busy() {
            let Some((mutation, waiter)) = self.queue.pop_front() else { break };
            let restamp = mutation == Mutation::Restamp;
            if !restamp && !self.core.can_serve() {
                // Not settled yet (no fresh commit in this term): keep waiting.
                self.queue.push_front((mutation, waiter));
                break;
            }
            let stamp = Stamp { id: self.core.next_config_id(), at: self.wall(), by: self.me() };
            let next = match mutation.apply(&self.cluster, &stamp) {
                Ok(next) => next,
                Err(reason) => {
                    tracing::warn!(change = %mutation.describe(), %reason, "change refused");
                    waiter.finish(Err(Failure::Refused(reason.to_string())), None);
                    continue;
                }
            };
            let request = self.next_request;
            self.next_request += 1;
            let new_member = mutation.new_member();
            if let Mutation::AddPeer { peer } = &mutation {
                // Trust and dial the newcomer for the length of its add.
                self.joining = Some(peer.clone());
                self.refresh_trust();
            }
            let snapshot = self.renderer.snapshot(&next);
            self.pending_entry = Some(self.remember_entry(&mutation, &stamp, &snapshot));
            self.inflight = Some(Pending { started: Instant::now(), request, mutation, waiter });
            self.parsed = Some((snapshot.content.clone(), next));
            self.step(Input::Propose { request, snapshot, new_member })?;
        }
        Ok(())
    }

    pub(super) fn proposal_done(&mut self, request: u64, result: Result<qu_core::consensus::ConfigId, ProposeError>) {
        let Some(pending) = self.inflight.take_if(|p| p.request == request) else { return };
        let new_member = pending.mutation.new_member();
        if new_member.is_some() {
            self.joining = None;
            self.refresh_trust();
        }
        let mut committed_transitions = 0;
        if let Mutation::RecordTransitions { transitions } = &pending.mutation {
            let names: std::collections::HashMap<&str, &str> =
                self.cluster.checks.iter().map(|c| (c.id.as_str(), c.name.as_str())).collect();
            for Transition { check_id, status } in transitions {
                let committed = self.cluster.check_state(check_id);
                self.verdicts.settled(check_id, committed);
                if result.is_err() || committed != status.state {
                    continue;
                }
                committed_transitions += 1;
                let name = names.get(check_id.as_str()).copied().unwrap_or(check_id.as_str());
                tracing::info!(
                    check = %name,
                    from = %status.from,
                    to = %status.state,
                    "check {name}: {} -> {} ({} of {} failing{}{})",
                    status.from,
                    status.state,
                    status.failing,
                    status.total,
                    if status.detail.is_empty() { "" } else { ": " },
                    status.detail
                );
            }
        }
        match result {
            Ok(id) => {
                self.metrics.committed(pending.started.elapsed(), committed_transitions);
                tracing::info!(version = id.version, term = id.term, change = %pending.mutation.describe(), "config version {} committed", id.version);
                pending.waiter.finish(Ok((id.term, id.version)), new_member);
                self.delivery_committed(id);
            }
            Err(error) => {
                tracing::warn!(change = %pending.mutation.describe(), %error, "change not committed");
                pending.waiter.finish(Err(Failure::from_core(&error)), None);
            }
        }
        if let Some((text, _)) = &self.pending_edit
            && **text == *self.written
        {
            self.pending_edit = None;
        }
    }
}
