//! The consensus state machine. See the module documentation for the model.

use std::collections::{BTreeMap, BTreeSet};

use super::{ConfigId, Durable, Input, Msg, Output, ProposeError, Role, Snapshot, SplitMix64};
use crate::NodeId;

/// A pre-vote or an election in progress.
#[derive(Debug, Clone)]
struct Campaign {
    /// True while only asking (no term bumped yet).
    pre: bool,
    term: u64,
    granted: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// An added member must persist the snapshot before anyone else sees
    /// it, so a new node that never answers changes nothing.
    AwaitNewMember,
    /// Applied here and sent to every member; waiting for a majority.
    Committing,
}

#[derive(Debug, Clone)]
struct Inflight {
    request: u64,
    snapshot: Snapshot,
    new_member: Option<NodeId>,
    phase: Phase,
    acks: BTreeSet<NodeId>,
    deadline: u64,
}

/// One node's consensus state. Drive it with [`Core::step`].
#[derive(Debug, Clone)]
pub struct Core {
    me: NodeId,
    durable: Durable,
    config: Snapshot,
    role: Role,
    master: Option<NodeId>,
    rng: SplitMix64,
    now: u64,
    /// Last time anything arrived from each peer (liveness).
    heard: BTreeMap<NodeId, u64>,
    /// Since when each peer has been continuously live.
    live_since: BTreeMap<NodeId, u64>,
    /// The config id each peer last reported.
    peer_config: BTreeMap<NodeId, ConfigId>,
    /// Master only: per member, until when (on our clock) it has promised
    /// in this term to vote for no one else: the latest of our own send
    /// times it answered (heartbeat, vote or replicate) plus the
    /// `dead_after` it said it honours. The lease is timed from when we
    /// asked, not when the answer came back, and by the follower's value,
    /// not ours.
    acked: BTreeMap<NodeId, u64>,
    /// Until when we refuse votes (leader stickiness, which is what makes
    /// the master's lease safe): `dead_after` past the last time we heard
    /// a master of our term, granted a vote, or started. It only grows, so
    /// a shorter `dead_after` applied later never breaks a promise made.
    sticky_until: u64,
    election_due: u64,
    next_heartbeat: u64,
    pull_quiet_until: u64,
    campaign: Option<Campaign>,
    inflight: Option<Inflight>,
    fresh_commit_done: bool,
    announced: (u64, Role, Option<NodeId>),
}

impl Core {
    /// A node starting (or restarting) with what it persisted. The returned
    /// outputs must be executed before anything else.
    pub fn new(me: NodeId, durable: Durable, config: Snapshot, now: u64, seed: u64) -> (Self, Vec<Output>) {
        let config_dead_after = config.timing.dead_after_ms;
        let mut core = Self {
            me,
            durable,
            config,
            role: Role::Follower,
            master: None,
            rng: SplitMix64::new(seed ^ u64::from_le_bytes(me.as_uuid().as_bytes()[..8].try_into().expect("8 bytes"))),
            now,
            heard: BTreeMap::new(),
            live_since: BTreeMap::new(),
            peer_config: BTreeMap::new(),
            acked: BTreeMap::new(),
            // A restarted node may have forgotten a master it was serving:
            // wait out one lease before voting for anyone else.
            sticky_until: now + config_dead_after,
            election_due: now,
            next_heartbeat: now,
            pull_quiet_until: now,
            campaign: None,
            inflight: None,
            fresh_commit_done: false,
            announced: (0, Role::Follower, None),
        };
        let mut out = Vec::new();
        if core.config.id.version == 0 && core.durable.restoring.is_empty() {
            // Started on `version: 0`: restored from a backup (or a blank
            // joiner). It may have forgotten what it acknowledged, so it
            // grants no vote until it holds a config at least as new as
            // every one it could have acknowledged (`caught_up`).
            core.durable.restoring = core.config.members.clone();
            core.durable.restoring.push(me);
            core.durable.restoring.sort();
            core.durable.restoring.dedup();
            out.push(Output::PersistDurable(core.durable.clone()));
        }
        if core.config.id.term > core.durable.term {
            // A node's term is never behind the term of the config it holds
            // (e.g. after restoring a backup onto a fresh machine).
            core.durable =
                Durable { term: core.config.id.term, voted_for: None, restoring: core.durable.restoring.clone() };
            out.push(Output::PersistDurable(core.durable.clone()));
        }
        core.announced = (core.durable.term, Role::Follower, None);
        if core.is_member() && core.config.quorum() == 1 {
            // A sole member is a majority of one: it leads at once.
            core.start_election(false, &mut out);
        } else {
            core.reset_election_timer();
        }
        let state = (core.durable.term, core.role, core.master);
        if state != core.announced {
            core.announced = state;
            out.push(Output::RoleChanged { term: state.0, role: state.1, master: state.2 });
        }
        (core, out)
    }

    // ----- queries -------------------------------------------------------

    pub fn me(&self) -> NodeId {
        self.me
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> u64 {
        self.durable.term
    }
    pub fn durable(&self) -> &Durable {
        &self.durable
    }
    pub fn config(&self) -> &Snapshot {
        &self.config
    }
    /// The master of the current term, as far as this node knows.
    pub fn master(&self) -> Option<NodeId> {
        self.master
    }
    pub fn is_member(&self) -> bool {
        self.config.is_member(&self.me)
    }
    pub fn now(&self) -> u64 {
        self.now
    }
    /// When the next election timer fires (the driver may sleep until then).
    pub fn election_due(&self) -> u64 {
        self.election_due
    }

    /// Whether `node` was heard from within `dead_after` (this node always is).
    pub fn is_live(&self, node: &NodeId) -> bool {
        *node == self.me || self.heard.get(node).is_some_and(|at| at + self.config.timing.dead_after_ms > self.now)
    }

    /// The config id `node` last reported (in a heartbeat or an ack).
    pub fn peer_config(&self, node: &NodeId) -> Option<ConfigId> {
        self.peer_config.get(node).copied()
    }

    /// When `node` was last heard from, on this node's clock.
    pub fn last_heard(&self, node: &NodeId) -> Option<u64> {
        self.heard.get(node).copied()
    }

    /// Members currently live (this node included if it is a member).
    pub fn live_members(&self) -> usize {
        self.config.members.iter().filter(|m| self.is_live(m)).count()
    }

    /// Whether this node is master and heard, within `dead_after` of asking,
    /// from a majority. Everything a master does checks this first.
    pub fn has_lease(&self) -> bool {
        self.role == Role::Master && self.lease_until() > self.now
    }

    /// Whether this node's lease (if master) still holds at `now` on its own
    /// clock, even if it has not been stepped since (the simulator's view of
    /// a paused master).
    pub fn lease_valid_at(&self, now: u64) -> bool {
        self.role == Role::Master && self.lease_until() > now
    }

    /// Master, with a lease, and a version committed in its own term: the
    /// state in which it may act (verdicts, alerts, mutations).
    pub fn can_serve(&self) -> bool {
        self.has_lease() && self.fresh_commit_done
    }

    /// The id the next proposal must carry.
    pub fn next_config_id(&self) -> ConfigId {
        ConfigId { term: self.durable.term, version: self.config.id.version + 1 }
    }

    /// Whether a proposal is being committed.
    pub fn is_busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// Members (this one included) that answered this master within
    /// `dead_after` of being asked: the ones its lease stands on.
    fn lease_members(&self) -> usize {
        self.config
            .members
            .iter()
            .filter(|m| **m == self.me || self.acked.get(m).is_some_and(|until| *until > self.now))
            .count()
    }

    fn no_quorum(&self) -> ProposeError {
        ProposeError::NoQuorum {
            live: self.lease_members(),
            members: self.config.members.len(),
            need: self.config.quorum(),
        }
    }

    fn lease_until(&self) -> u64 {
        let own = self.now + self.config.timing.dead_after_ms;
        let mut times: Vec<u64> = self
            .config
            .members
            .iter()
            .filter_map(|m| if *m == self.me { Some(own) } else { self.acked.get(m).copied() })
            .collect();
        let quorum = self.config.quorum();
        if times.len() < quorum {
            return 0;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        times[quorum - 1]
    }

    /// Counts `from`'s answer to our message sent at `echo`: it refuses
    /// other candidates for `promise` ms from receiving it.
    fn count_promise(&mut self, from: NodeId, echo: u64, promise: u64) {
        let until = self.acked.entry(from).or_insert(0);
        *until = (*until).max(echo.saturating_add(promise));
    }

    /// Refuses other candidates for `dead_after` from now, and returns the
    /// promise to put in the answer.
    fn promise(&mut self) -> u64 {
        let dead_after = self.config.timing.dead_after_ms;
        self.sticky_until = self.sticky_until.max(self.now + dead_after);
        dead_after
    }

    // ----- driving -------------------------------------------------------

    /// Feeds one input at `now` (monotonic milliseconds) and returns what to
    /// do, in order.
    pub fn step(&mut self, now: u64, input: Input) -> Vec<Output> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        if self.role == Role::Master && !self.has_lease() {
            // The lease is checked before anything else at every step: a
            // master that was paused or cut off acts on nothing it receives.
            self.lose_lease(&mut out);
        }
        match input {
            Input::Tick => self.tick(&mut out),
            Input::Receive { from, msg } => self.receive(from, msg, &mut out),
            Input::Propose { request, snapshot, new_member } => self.propose(request, snapshot, new_member, &mut out),
        }
        let state = (self.durable.term, self.role, self.master);
        if state != self.announced {
            self.announced = state;
            out.push(Output::RoleChanged { term: state.0, role: state.1, master: state.2 });
        }
        out
    }

    fn others(&self) -> Vec<NodeId> {
        self.config.members.iter().copied().filter(|m| *m != self.me).collect()
    }

    /// Lower node ids wait less, so the preferred (lowest) node tends to win
    /// when everyone starts together; jitter breaks ties.
    fn election_timeout(&mut self) -> u64 {
        let timing = self.config.timing;
        let rank = self.config.members.iter().position(|m| *m == self.me).unwrap_or(0) as u64;
        let half = (timing.heartbeat_ms / 2).max(1);
        timing.dead_after_ms + 1 + rank * half + self.rng.below(half)
    }

    fn reset_election_timer(&mut self) {
        let timeout = self.election_timeout();
        self.election_due = self.now + timeout;
    }

    fn sticky(&self) -> bool {
        self.has_lease() || self.now < self.sticky_until
    }

    /// Whether this node may grant a vote or pre-vote at all: a member that
    /// is not restoring. A node restored with `version: 0` has forgotten
    /// what it acknowledged, so it votes only once it has caught up.
    fn may_vote(&self) -> bool {
        self.is_member() && self.durable.restoring.is_empty()
    }

    /// Whether a restoring node has caught up (short of taking a config
    /// from a master): of the members of every config it held since the
    /// restore, it has heard the configs of enough others that every
    /// majority of them includes one (n − quorum + 1 others: a majority
    /// may include this node, which forgot), and it holds one at least as
    /// new as all of them.
    fn caught_up(&self) -> bool {
        let known = &self.durable.restoring;
        if self.config.id.version == 0 || known.is_empty() {
            return false;
        }
        let heard: Vec<ConfigId> =
            known.iter().filter(|m| **m != self.me).filter_map(|m| self.peer_config.get(m).copied()).collect();
        let need = known.len() + 1 - (known.len() / 2 + 1);
        heard.len() >= need && heard.iter().all(|c| *c <= self.config.id)
    }

    fn check_restored(&mut self, out: &mut Vec<Output>) {
        if !self.durable.restoring.is_empty() && self.caught_up() {
            self.end_restore(out);
        }
    }

    fn end_restore(&mut self, out: &mut Vec<Output>) {
        if !self.durable.restoring.is_empty() {
            self.durable.restoring.clear();
            out.push(Output::PersistDurable(self.durable.clone()));
        }
    }

    /// A restoring node's new config widens the set it must hear from.
    fn note_restoring_members(&mut self, out: &mut Vec<Output>) {
        if self.durable.restoring.is_empty() {
            return;
        }
        let before = self.durable.restoring.len();
        self.durable.restoring.extend(self.config.members.iter().copied());
        self.durable.restoring.sort();
        self.durable.restoring.dedup();
        if self.durable.restoring.len() != before {
            out.push(Output::PersistDurable(self.durable.clone()));
        }
    }

    fn adopt_term(&mut self, term: u64, out: &mut Vec<Output>) {
        if term <= self.durable.term {
            return;
        }
        self.durable = Durable { term, voted_for: None, restoring: std::mem::take(&mut self.durable.restoring) };
        out.push(Output::PersistDurable(self.durable.clone()));
        self.become_follower(None, out);
    }

    fn become_follower(&mut self, master: Option<NodeId>, out: &mut Vec<Output>) {
        if self.role == Role::Master {
            self.fail_inflight(ProposeError::SteppedDown { term: self.durable.term }, out);
        }
        self.role = Role::Follower;
        self.master = master;
        self.campaign = None;
        self.acked.clear();
        self.fresh_commit_done = false;
    }

    /// Ends the proposal in flight with `error` — or, once the snapshot has
    /// left this node for the members, with [`ProposeError::Unknown`]: a
    /// member may hold it, and the next master may commit it.
    fn fail_inflight(&mut self, error: ProposeError, out: &mut Vec<Output>) {
        if let Some(inflight) = self.inflight.take() {
            let error = match inflight.phase {
                Phase::Committing if !error.is_unknown() => ProposeError::Unknown { cause: error.to_string() },
                _ => error,
            };
            out.push(Output::ProposalDone { request: inflight.request, result: Err(error) });
        }
    }

    fn send(&self, to: NodeId, msg: Msg, out: &mut Vec<Output>) {
        out.push(Output::Send { to, msg });
    }

    fn apply_config(&mut self, snapshot: Snapshot, out: &mut Vec<Output>) {
        if snapshot.id.term > self.durable.term {
            self.adopt_term(snapshot.id.term, out);
        }
        out.push(Output::PersistConfig(snapshot.clone()));
        self.config = snapshot;
        self.note_restoring_members(out);
        // A shorter heartbeat takes effect now, not after the old period.
        self.next_heartbeat = self.next_heartbeat.min(self.now + self.config.timing.heartbeat_ms);
        self.election_due = self.election_due.min(self.now + self.config.timing.dead_after_ms * 2);
        let removing_myself = self.inflight.as_ref().is_some_and(|i| i.snapshot.id == self.config.id);
        if !self.is_member() && self.role != Role::Follower && !removing_myself {
            self.become_follower(None, out);
        }
    }

    // ----- timers --------------------------------------------------------

    fn tick(&mut self, out: &mut Vec<Output>) {
        if self.now >= self.next_heartbeat {
            self.next_heartbeat = self.now + self.config.timing.heartbeat_ms;
            self.send_heartbeats(out);
        }
        // A non-member only heartbeats (so a member that still trusts it can
        // pull the config that removed it); it never campaigns. A master
        // committing its own removal keeps going until the removal commits.
        if !self.is_member() && self.role != Role::Master {
            return;
        }
        // Nor does a restoring node: it may lack what it acknowledged.
        if !self.durable.restoring.is_empty() {
            return;
        }
        match self.role {
            Role::Master => self.tick_master(out),
            Role::Follower | Role::Candidate => {
                if self.now >= self.election_due {
                    self.start_campaign(out);
                }
            }
        }
    }

    fn send_heartbeats(&mut self, out: &mut Vec<Output>) {
        let master = self.role == Role::Master;
        for peer in self.others() {
            let msg = Msg::Heartbeat { term: self.durable.term, config: self.config.id, master, sent_at: self.now };
            self.send(peer, msg, out);
        }
        // Retransmit an uncommitted snapshot to whoever has not acked it.
        if let (true, Some(inflight)) = (master, &self.inflight) {
            let targets: Vec<NodeId> = match inflight.phase {
                Phase::AwaitNewMember => inflight.new_member.into_iter().collect(),
                Phase::Committing => {
                    inflight.snapshot.members.iter().copied().filter(|m| !inflight.acks.contains(m)).collect()
                }
            };
            for to in targets {
                let msg =
                    Msg::Replicate { term: self.durable.term, snapshot: inflight.snapshot.clone(), sent_at: self.now };
                self.send(to, msg, out);
            }
        }
    }

    fn lose_lease(&mut self, out: &mut Vec<Output>) {
        let error = self.no_quorum();
        self.fail_inflight(error, out);
        self.become_follower(None, out);
        self.reset_election_timer();
    }

    fn tick_master(&mut self, out: &mut Vec<Output>) {
        if let Some(inflight) = &self.inflight
            && self.now >= inflight.deadline
        {
            let error = match (inflight.phase.clone(), inflight.new_member) {
                (Phase::AwaitNewMember, Some(node)) => ProposeError::NewMemberSilent { node },
                _ => ProposeError::Unknown {
                    cause: format!(
                        "not acknowledged by a majority within {} ms ({} of {} needed)",
                        self.commit_timeout(),
                        inflight.acks.len(),
                        inflight.snapshot.quorum()
                    ),
                },
            };
            self.fail_inflight(error, out);
        }
        self.maybe_hand_over(out);
    }

    /// Gives the role to the lowest live member once it has been live for
    /// `master_cooldown` and holds our config: one term bump, and this node
    /// stops acting before the other can start.
    fn maybe_hand_over(&mut self, out: &mut Vec<Output>) {
        if self.inflight.is_some() || !self.fresh_commit_done {
            return;
        }
        let Some(preferred) = self.config.members.iter().copied().find(|m| self.is_live(m)) else { return };
        if preferred == self.me {
            return;
        }
        let since = self.live_since.get(&preferred).copied().unwrap_or(u64::MAX);
        let cooled = since.saturating_add(self.config.timing.master_cooldown_ms) <= self.now;
        let current = self.peer_config.get(&preferred) == Some(&self.config.id);
        if cooled && current {
            self.send(preferred, Msg::TimeoutNow { term: self.durable.term }, out);
            self.become_follower(None, out);
            self.promise();
            self.reset_election_timer();
        }
    }

    fn commit_timeout(&self) -> u64 {
        2 * self.config.timing.dead_after_ms + self.config.timing.heartbeat_ms
    }

    // ----- elections -----------------------------------------------------

    fn start_campaign(&mut self, out: &mut Vec<Output>) {
        self.reset_election_timer();
        if self.config.quorum() == 1 {
            self.start_election(false, out);
            return;
        }
        let term = self.durable.term + 1;
        self.campaign = Some(Campaign { pre: true, term, granted: BTreeSet::from([self.me]) });
        for peer in self.others() {
            self.send(peer, Msg::PreVote { term, config: self.config.id }, out);
        }
    }

    fn start_election(&mut self, transfer: bool, out: &mut Vec<Output>) {
        let term = self.durable.term + 1;
        self.durable =
            Durable { term, voted_for: Some(self.me), restoring: std::mem::take(&mut self.durable.restoring) };
        out.push(Output::PersistDurable(self.durable.clone()));
        self.role = Role::Candidate;
        self.master = None;
        self.acked.clear();
        self.fresh_commit_done = false;
        self.campaign = Some(Campaign { pre: false, term, granted: BTreeSet::from([self.me]) });
        self.reset_election_timer();
        for peer in self.others() {
            let msg = Msg::Vote { term, config: self.config.id, transfer, sent_at: self.now };
            self.send(peer, msg, out);
        }
        if self.config.quorum() == 1 {
            self.become_master(out);
        }
    }

    fn become_master(&mut self, out: &mut Vec<Output>) {
        assert!(self.is_member(), "only a member becomes master");
        self.role = Role::Master;
        self.master = Some(self.me);
        self.campaign = None;
        self.fresh_commit_done = false;
        out.push(Output::NeedFreshCommit { next: self.next_config_id() });
        self.next_heartbeat = self.now + self.config.timing.heartbeat_ms;
        self.send_heartbeats(out);
    }

    // ----- messages ------------------------------------------------------

    fn receive(&mut self, from: NodeId, msg: Msg, out: &mut Vec<Output>) {
        // Besides members: a node being added (its acks), and the master of
        // this term while it commits its own removal.
        let joining = self.inflight.as_ref().is_some_and(|i| i.new_member == Some(from));
        let departing_master = self.master == Some(from);
        // A restoring node hears every node of the configs it held since
        // the restore: a copy it pulled may have dropped one that holds a
        // newer config (docs/ARCHITECTURE.md, "Cluster protocol").
        let restoring_peer = self.durable.restoring.contains(&from);
        if from == self.me || !(self.config.is_member(&from) || joining || departing_master || restoring_peer) {
            return;
        }
        if !self.is_live(&from) {
            self.live_since.insert(from, self.now);
        }
        self.heard.insert(from, self.now);

        if let Msg::Vote { term, transfer, sent_at, .. } = &msg
            && *term > self.durable.term
            && !*transfer
            && self.sticky()
        {
            // We still hear a master: refuse without adopting the term, so
            // a node cut off from the master cannot depose it.
            let reply = Msg::VoteReply { term: self.durable.term, granted: false, echo: *sent_at, promise: 0 };
            self.send(from, reply, out);
            return;
        }
        if let Some(term) = msg.term() {
            self.adopt_term(term, out);
        }
        match msg {
            Msg::Heartbeat { term, config, master, sent_at } => {
                self.peer_config.insert(from, config);
                self.check_restored(out);
                if term == self.durable.term && master {
                    debug_assert!(self.role != Role::Master, "two masters in term {term}");
                    if self.role != Role::Master {
                        if self.role == Role::Candidate || self.master != Some(from) {
                            self.become_follower(Some(from), out);
                        }
                        let promise = self.promise();
                        self.reset_election_timer();
                        let ack = Msg::HeartbeatAck { term, config: self.config.id, echo: sent_at, promise };
                        self.send(from, ack, out);
                    }
                }
                // A node takes a newer config from the master of its term,
                // and from another member only while it knows no master (a
                // node whose config does not list the current master learns
                // of it that way). A master never pulls (a joining node may
                // already hold the proposed one).
                if config > self.config.id && self.may_pull_from(from) && self.now >= self.pull_quiet_until {
                    self.pull_quiet_until = self.now + self.config.timing.heartbeat_ms;
                    self.send(from, Msg::Pull, out);
                }
            }
            Msg::HeartbeatAck { term, config, echo, promise } => {
                self.peer_config.insert(from, config);
                if term == self.durable.term && self.role == Role::Master {
                    self.count_promise(from, echo, promise);
                }
            }
            Msg::PreVote { term, config } => {
                let granted = term > self.durable.term && config >= self.config.id && self.may_vote() && !self.sticky();
                self.send(from, Msg::PreVoteReply { term: self.durable.term, granted }, out);
            }
            Msg::PreVoteReply { granted, .. } => {
                let quorum = self.config.quorum();
                let next = self.durable.term + 1;
                let won = match &mut self.campaign {
                    Some(c) if c.pre && c.term == next && granted => {
                        c.granted.insert(from);
                        c.granted.len() >= quorum
                    }
                    _ => false,
                };
                // Heard a master or voted since the pre-vote began: stand down.
                if won && !self.sticky() {
                    self.start_election(false, out);
                } else if won {
                    self.campaign = None;
                }
            }
            Msg::Vote { term, config, transfer, sent_at } => {
                // Leader stickiness holds whatever term the request names:
                // a node that adopted a higher term from some other message
                // still refuses while it hears a master (unless transferred).
                let granted = term == self.durable.term
                    && self.role != Role::Master
                    && self.durable.voted_for.is_none_or(|v| v == from)
                    && (transfer || self.durable.voted_for == Some(from) || !self.sticky())
                    && config >= self.config.id
                    && self.may_vote();
                let mut promise = 0;
                if granted {
                    if self.durable.voted_for != Some(from) {
                        self.durable.voted_for = Some(from);
                        out.push(Output::PersistDurable(self.durable.clone()));
                    }
                    promise = self.promise();
                    self.reset_election_timer();
                }
                let reply = Msg::VoteReply { term: self.durable.term, granted, echo: sent_at, promise };
                self.send(from, reply, out);
            }
            Msg::VoteReply { term, granted, echo, promise } => {
                let quorum = self.config.quorum();
                let won = match &mut self.campaign {
                    Some(c) if !c.pre && c.term == term && term == self.durable.term && granted => {
                        c.granted.insert(from);
                        c.granted.len() >= quorum
                    }
                    _ => false,
                };
                if granted && term == self.durable.term && self.role == Role::Candidate {
                    self.count_promise(from, echo, promise);
                }
                if won && self.role == Role::Candidate {
                    self.become_master(out);
                }
            }
            Msg::Replicate { term, snapshot, sent_at } => {
                if term < self.durable.term {
                    let ack = self.replicate_ack(sent_at, 0);
                    self.send(from, ack, out);
                    return;
                }
                debug_assert!(self.role != Role::Master, "a second master replicated in term {term}");
                if self.role == Role::Master {
                    return;
                }
                if self.master != Some(from) || self.role != Role::Follower {
                    self.become_follower(Some(from), out);
                }
                let promise = self.promise();
                self.reset_election_timer();
                if self.supersedes(&snapshot) {
                    self.apply_config(snapshot, out);
                }
                // The master's config holds everything committed.
                self.end_restore(out);
                let ack = self.replicate_ack(sent_at, promise);
                self.send(from, ack, out);
            }
            Msg::ReplicateAck { term, config, hash, echo, promise } => {
                self.peer_config.insert(from, config);
                if term == self.durable.term && self.role == Role::Master {
                    self.count_promise(from, echo, promise);
                    self.on_replicate_ack(from, config, hash, out);
                }
            }
            Msg::Pull => {
                self.send(from, Msg::PullReply { snapshot: self.config.clone() }, out);
            }
            Msg::PullReply { snapshot } => {
                self.pull_quiet_until = self.now;
                if self.may_pull_from(from) && self.supersedes(&snapshot) {
                    let from_master = self.master == Some(from);
                    self.apply_config(snapshot, out);
                    if from_master {
                        self.end_restore(out);
                    }
                    self.check_restored(out);
                }
            }
            Msg::TimeoutNow { term } => {
                if term == self.durable.term && self.master == Some(from) && self.is_member() {
                    self.start_election(true, out);
                }
            }
        }
    }

    /// Whether the master's `snapshot` replaces ours: newer, or the same
    /// id with other content (which no master made: the master's wins).
    fn supersedes(&self, snapshot: &Snapshot) -> bool {
        snapshot.id > self.config.id || (snapshot.id == self.config.id && snapshot.hash != self.config.hash)
    }

    /// Whom a newer config may come from: the master this node follows, or
    /// any member while it follows none. A peer that merely shows a higher
    /// version while a master is known may hold a copy no master made.
    fn may_pull_from(&self, from: NodeId) -> bool {
        match (self.role, self.master) {
            (Role::Master, _) => false,
            (_, Some(master)) => master == from,
            (_, None) => true,
        }
    }

    fn replicate_ack(&self, echo: u64, promise: u64) -> Msg {
        Msg::ReplicateAck { term: self.durable.term, config: self.config.id, hash: self.config.hash, echo, promise }
    }

    // ----- proposals -----------------------------------------------------

    fn propose(&mut self, request: u64, snapshot: Snapshot, new_member: Option<NodeId>, out: &mut Vec<Output>) {
        let refuse = |error, out: &mut Vec<Output>| out.push(Output::ProposalDone { request, result: Err(error) });
        if self.role != Role::Master {
            return refuse(ProposeError::NotMaster { master: self.master }, out);
        }
        if !self.has_lease() {
            return refuse(self.no_quorum(), out);
        }
        if self.inflight.is_some() {
            return refuse(ProposeError::Busy, out);
        }
        if snapshot.id != self.next_config_id() {
            let built_on = ConfigId { term: snapshot.id.term, version: snapshot.id.version.saturating_sub(1) };
            return refuse(ProposeError::Stale { built_on, current: self.config.id }, out);
        }
        let new_member = new_member.filter(|n| snapshot.is_member(n) && !self.config.is_member(n));
        let deadline = self.now + self.commit_timeout();
        let phase = if new_member.is_some() { Phase::AwaitNewMember } else { Phase::Committing };
        self.inflight =
            Some(Inflight { request, snapshot: snapshot.clone(), new_member, phase, acks: BTreeSet::new(), deadline });
        match new_member {
            Some(node) => {
                let msg = Msg::Replicate { term: self.durable.term, snapshot, sent_at: self.now };
                self.send(node, msg, out);
            }
            None => self.commit_phase(out),
        }
    }

    /// Applies the in-flight snapshot here and sends it to every member.
    fn commit_phase(&mut self, out: &mut Vec<Output>) {
        let Some(inflight) = self.inflight.as_mut() else { return };
        inflight.phase = Phase::Committing;
        let snapshot = inflight.snapshot.clone();
        if snapshot.is_member(&self.me) {
            inflight.acks.insert(self.me);
        }
        let already: BTreeSet<NodeId> = inflight.acks.clone();
        self.apply_config(snapshot.clone(), out);
        for to in snapshot.members.iter().copied().filter(|m| !already.contains(m)) {
            let msg = Msg::Replicate { term: self.durable.term, snapshot: snapshot.clone(), sent_at: self.now };
            self.send(to, msg, out);
        }
        self.check_commit(out);
    }

    fn on_replicate_ack(&mut self, from: NodeId, config: ConfigId, hash: super::Digest, out: &mut Vec<Output>) {
        let Some(inflight) = self.inflight.as_mut() else { return };
        // Exactly this snapshot, or nothing: an ack of a higher id (a hand
        // edit, a copy no master made) is not an ack of ours.
        if config != inflight.snapshot.id || hash != inflight.snapshot.hash {
            return;
        }
        inflight.acks.insert(from);
        if inflight.phase == Phase::AwaitNewMember {
            if inflight.new_member == Some(from) {
                self.commit_phase(out);
            }
            return;
        }
        self.check_commit(out);
    }

    fn check_commit(&mut self, out: &mut Vec<Output>) {
        let Some(inflight) = &self.inflight else { return };
        let snapshot = &inflight.snapshot;
        let acked = snapshot.members.iter().filter(|m| inflight.acks.contains(m)).count();
        let new_ok = inflight.new_member.is_none_or(|n| inflight.acks.contains(&n));
        // Only a master holding its lease commits; without it the proposal
        // waits for the lease to come back or for its deadline.
        if acked < snapshot.quorum() || !new_ok || inflight.phase != Phase::Committing || !self.has_lease() {
            return;
        }
        let done = self.inflight.take().expect("checked above");
        if done.snapshot.id.term == self.durable.term {
            self.fresh_commit_done = true;
        }
        out.push(Output::ProposalDone { request: done.request, result: Ok(done.snapshot.id) });
        if !self.is_member() {
            // A master that removed itself leaves once the removal is safe.
            self.become_follower(None, out);
        }
    }
}
