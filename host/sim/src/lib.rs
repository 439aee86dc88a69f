//! Deterministic simulator of the consensus core and of the alert
//! dispatcher it drives.
//!
//! N cores (3 or 5) run on one thread against a seeded network that drops,
//! delays, duplicates and reorders messages and partitions nodes (one-way
//! too); nodes crash (in the middle of executing their outputs: whatever was
//! not yet persisted is lost), restart from what they persisted, pause (as
//! under SIGSTOP) and run with skewed clocks; clients propose random
//! mutations. Invariants are checked as the run goes: some after every
//! event, some at each persist, commit or send, the rest once at the end
//! (docs/ARCHITECTURE.md, "What the simulator checks", lists the consensus
//! ones; the delivery ones are listed below). A violation reports the seed,
//! and `qu-sim --seed N` replays the same run exactly.
//!
//! Clocks: each node's monotonic clock runs at the true rate with its own
//! offset, and pauses stand in for jumps (a paused node sees time leap
//! forward). Wall-clock jumps do not exist here because the core never reads
//! wall time. A monotonic clock running fast would break any lease; that is
//! the one timing assumption qu makes (see docs/ARCHITECTURE.md).
//!
//! # Alert delivery
//!
//! Every node runs a [`Dispatcher`] beside its core; it is created when the
//! node starts and lost when it crashes. The simulator drives it the way the
//! daemon does: `MayAct(role == Master && can_serve() && lease valid now)`
//! at every tick (a resumed node ticks first) and before every sink answer
//! (see `Sim::attempted` for the seed that showed why), and when one of the
//! master's own proposals commits (its fresh commit included), `MayAct` and
//! then `Committed` with the pending records of that snapshot. The dispatcher's `Propose` results wait in a
//! queue (the daemon's) and go out as "finish" mutations whenever the master
//! can serve and is idle; a finish that does not commit is lost, and the
//! dispatcher proposes it again. 30 % of the other client proposals are a
//! check's transition: a pending record per alert of one check, keyed
//! `<term>.<version>/<alert>` by the id of the snapshot that adds them (the
//! content format is in `content.rs`).
//!
//! A fake sink (`sink.rs`) answers each send after a random delay, with a
//! behaviour drawn from the run's RNG: success, a transient failure (a third
//! of them with a `Retry-After`), a permanent failure, a hang (never
//! answered; only an abort or the sender's crash ends it), or "accept, then
//! the sender crashes before it learns so". An answer reaches only the
//! incarnation that sent it, and not after an `AbortAll`; one that reaches a
//! paused node waits for it to resume. Once the faults stop, the sink always
//! succeeds. Per seed: how flaky the sink is (0-60 % of sends), its slowest
//! answer (20 ms-1 s) and the delivery deadline (2-8 s).
//!
//! What is checked, and when (a violation names the record and, for the
//! sink invariants, the sink's log of it):
//!
//! - **At each `Send`** (`sink_send`, `check_sole_sender`, `Book::send`):
//!   - the record is in a snapshot whose commit the simulator recorded (a
//!     `ProposalDone` with `Ok`), and no committed snapshot holds it finished;
//!   - the sender may act: master and `can_serve()` (its core's view as of
//!     its last step, as the daemon reads it). A send after the lease ran
//!     out on the sender's own clock since that step is counted
//!     (`sends_after_lease_ran_out`), not failed;
//!   - no other node holds a lease on its own clock, and no other node has
//!     a send in flight (sent, not answered, aborted or ended by a crash) —
//!     unless that node's lease ran out on its own clock while its
//!     dispatcher was last told it may act (it is paused or has not ticked
//!     since; counted in `beside_a_stale_sender`);
//!   - per (check, alert), the first accepted request of each key comes in
//!     increasing transition order;
//!   - a key accepted again has an excuse: since its latest accepted
//!     request, that request's sender aborted it, crashed, or lost its lease
//!     (its dispatcher stopped acting, or its lease has run out on its own
//!     clock by now).
//! - **At each commit** (`on_commit`, `Book::committed`): a record committed
//!   `delivered` was accepted by the sink; a record's check and alert never
//!   change, and it is never committed finished two ways.
//! - **After every event** (`check_global`): a node whose dispatcher may
//!   not act has no send in flight (its `AbortAll` was executed).
//! - **At the end** (`Book::check_end`, after `check_converged`): every
//!   record a commit contained was accepted at least once or committed
//!   `failed` — except while a hung send of its (check, alert) is still in
//!   flight on a node that keeps its lease (nothing but an abort ends a hang,
//!   and the dispatcher keeps the rest of that queue behind it; counted in
//!   `stuck_behind_hang`); and no request was for a record never committed.

mod content;
mod operator;
mod sink;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::time::Duration;

use qu_core::NodeId;
use qu_core::alerting::{DispatchInput, DispatchLimits, DispatchOutput, Dispatcher, SendOutcome};
use qu_core::config::DeliveryResult;
use qu_core::consensus::{ConfigId, Core, Durable, Input, Msg, Output, Role, Snapshot, SplitMix64, Timing};

use self::content::{CHECKS, Change, Content};
use self::operator::FileEdit;
pub use self::operator::OperatorStats;
pub use self::sink::DeliveryStats;
use self::sink::{Behaviour, Book, Request, RequestState, describe};

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    /// Print every output of every node to stderr (for replaying one seed).
    pub trace: bool,
    /// Virtual milliseconds with faults, then a calm phase to converge.
    pub fault_ms: u64,
    /// Long enough for a record that was retrying when the faults stopped
    /// to be sent again or fail (the delivery deadline, at most 8 s) and for
    /// a lost result to be proposed again (2 s); clients stop half-way.
    pub calm_ms: u64,
}

impl SimConfig {
    pub fn new(nodes: usize) -> Self {
        Self { nodes, trace: false, fault_ms: 20_000, calm_ms: 12_000 }
    }
}

/// What a run did, for throughput numbers and sanity checks.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub steps: u64,
    pub messages: u64,
    pub commits: u64,
    pub elections: u64,
    pub crashes: u64,
    pub max_term: u64,
    pub delivery: DeliveryStats,
    pub operator: OperatorStats,
}

/// An invariant that failed, with the seed that replays it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub nodes: usize,
    pub at_ms: u64,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} nodes) at {} ms: {}\nreplay: cargo run -p qu-sim --release -- --seed {} --nodes {}",
            self.seed, self.nodes, self.at_ms, self.what, self.seed, self.nodes
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Tick(usize),
    Deliver {
        to: usize,
        from: usize,
        msg_index: usize,
    },
    Resume(usize),
    Restart(usize),
    /// The sink's answer to request `.0` reaches its sender.
    SinkAnswer(usize),
}

struct Node {
    id: NodeId,
    core: Option<Core>,
    disk_durable: Durable,
    disk_config: Snapshot,
    clock_offset: u64,
    paused_until: u64,
    /// Messages that arrived while paused, delivered on resume.
    backlog: Vec<(usize, Msg)>,
    last_seen: (u64, ConfigId),
    /// Lives and dies with `core`, like the daemon process that holds both.
    dispatcher: Option<Dispatcher>,
    /// Bumped at each crash: an answer to an earlier life is never delivered.
    incarnation: u64,
    /// The dispatcher's results waiting to be proposed (the daemon's queue).
    finish_queue: VecDeque<Vec<DeliveryResult>>,
    /// Sink answers that arrived while paused, handled on resume.
    sink_backlog: Vec<DispatchInput>,
    /// cluster.yaml as an operator left it, when it differs from
    /// `disk_config`.
    file: Option<FileEdit>,
    /// The configs it persisted lately: its backups, and the copies a stale
    /// editor held.
    history: VecDeque<Snapshot>,
    /// When its daemon next looks at the file.
    next_poll: u64,
}

struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: SplitMix64,
    now: u64,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    messages: Vec<Option<Msg>>,
    /// blocked[from][to]
    blocked: Vec<Vec<bool>>,
    drop_percent: u64,
    dup_percent: u64,
    delay_max_ms: u64,
    faults: bool,
    // history for invariants
    masters: BTreeMap<u64, usize>,
    votes: BTreeMap<(NodeId, u64), NodeId>,
    contents: BTreeMap<ConfigId, std::sync::Arc<str>>,
    acknowledged: Vec<(String, ConfigId)>,
    /// Mutations whose proposal failed definitely: none may ever commit.
    refused: BTreeSet<String>,
    /// Transition mutations and how many checks changed in each.
    transitions: BTreeMap<String, usize>,
    next_mutation: u64,
    pending: BTreeMap<u64, (usize, String)>,
    stats: Stats,
    // delivery
    book: Book,
    delivery_deadline: Duration,
    sink_flaky_percent: u64,
    sink_delay_max_ms: u64,
}

const TICK_MS: u64 = 10;
/// Share of client proposals that add or remove a member.
const MEMBERSHIP_PERCENT: u64 = 10;
/// Share of the other client proposals that also change the cluster's
/// timers (heartbeat, dead_after).
const TIMING_PERCENT: u64 = 10;
/// Share of the other client proposals that are a check's transition (and
/// add a pending delivery record per alert of that check).
const TRANSITION_PERCENT: u64 = 30;
/// The daemon queues results while fewer than this many changes wait.
const FINISH_QUEUE_MAX: usize = 32;
/// The daemon's limits, but with re-proposals on the simulator's compressed
/// time scale (its heartbeats are 50-149 ms, not a second).
const DISPATCH_LIMITS: DispatchLimits =
    DispatchLimits { concurrent_max: 16, recommit_after: Duration::from_millis(2_000) };

/// Runs one seed; `Err` carries the first violated invariant.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Stats, Violation> {
    let mut sim = Sim::new(seed, cfg.clone());
    sim.run()
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = SplitMix64::new(seed);
        let heartbeat_ms = 50 + rng.below(100);
        let timing = Timing {
            heartbeat_ms,
            dead_after_ms: heartbeat_ms * (3 + rng.below(3)),
            master_cooldown_ms: [0, 500, 2_000][rng.below(3) as usize],
        };
        let ids: Vec<NodeId> = (0..cfg.nodes)
            .map(|i| {
                let mut bytes = [0u8; 16];
                bytes[0] = (i as u8 + 1) * 16;
                bytes[15] = rng.below(256) as u8;
                NodeId::from_bytes(bytes)
            })
            .collect();
        let genesis = Snapshot::new(ConfigId { term: 0, version: 1 }, ids.clone(), timing, "genesis");
        let mut contents = BTreeMap::new();
        contents.insert(genesis.id, genesis.content.clone());
        let nodes = ids
            .iter()
            .map(|id| Node {
                id: *id,
                core: None,
                disk_durable: Durable::default(),
                disk_config: genesis.clone(),
                clock_offset: rng.below(10_000),
                paused_until: 0,
                backlog: Vec::new(),
                last_seen: (0, genesis.id),
                dispatcher: None,
                incarnation: 0,
                finish_queue: VecDeque::new(),
                sink_backlog: Vec::new(),
                file: None,
                history: VecDeque::new(),
                next_poll: 0,
            })
            .collect();
        // The sink's temper and the delivery deadline, per seed.
        let sink_flaky_percent = [0, 10, 30, 60][rng.below(4) as usize];
        let sink_delay_max_ms = [20, 200, 1_000][rng.below(3) as usize];
        let delivery_deadline = Duration::from_millis([2_000, 4_000, 8_000][rng.below(3) as usize]);
        let n = cfg.nodes;
        let mut sim = Self {
            seed,
            cfg,
            rng,
            now: 0,
            nodes,
            queue: BinaryHeap::new(),
            seq: 0,
            messages: Vec::new(),
            blocked: vec![vec![false; n]; n],
            drop_percent: 0,
            dup_percent: 0,
            delay_max_ms: 5,
            faults: true,
            masters: BTreeMap::new(),
            votes: BTreeMap::new(),
            contents,
            acknowledged: Vec::new(),
            refused: BTreeSet::new(),
            transitions: BTreeMap::new(),
            next_mutation: 1,
            pending: BTreeMap::new(),
            stats: Stats::default(),
            book: Book::new(n),
            delivery_deadline,
            sink_flaky_percent,
            sink_delay_max_ms,
        };
        for i in 0..n {
            let at = sim.rng.below(200);
            sim.schedule(at, Event::Restart(i));
        }
        sim
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation { seed: self.seed, nodes: self.cfg.nodes, at_ms: self.now, what: what.into() }
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    fn local_now(&self, i: usize) -> u64 {
        self.now + self.nodes[i].clock_offset
    }

    fn run(&mut self) -> Result<Stats, Violation> {
        let end = self.cfg.fault_ms + self.cfg.calm_ms;
        let mut next_chaos = 0;
        let mut next_proposal = 100;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            if self.faults && self.now >= self.cfg.fault_ms {
                self.calm();
            }
            if self.faults && self.now >= next_chaos {
                self.chaos();
                next_chaos = self.now + 50 + self.rng.below(400);
            }
            // Clients stop half-way through the calm phase so the last change
            // has time to reach everyone before convergence is checked.
            if self.now >= next_proposal && self.now < self.cfg.fault_ms + self.cfg.calm_ms / 2 {
                self.client_proposal()?;
                next_proposal = self.now + 20 + self.rng.below(200);
            }
            self.handle(event)?;
            self.stats.steps += 1;
            self.check_global()?;
        }
        self.check_converged()?;
        self.book.check_end().map_err(|what| self.violation(what))?;
        self.stats.max_term = self.nodes.iter().map(|n| n.disk_durable.term).max().unwrap_or(0);
        self.stats.delivery = self.book.stats.clone();
        Ok(self.stats.clone())
    }

    /// Faults stop: heal the network, wake and restart everyone.
    fn calm(&mut self) {
        self.faults = false;
        self.drop_percent = 0;
        self.dup_percent = 0;
        self.delay_max_ms = 5;
        for row in &mut self.blocked {
            row.iter_mut().for_each(|b| *b = false);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused_until > self.now {
                self.nodes[i].paused_until = self.now;
                self.schedule(self.now, Event::Resume(i));
            }
            if self.nodes[i].core.is_none() {
                self.schedule(self.now + 1, Event::Restart(i));
            }
        }
    }

    fn chaos(&mut self) {
        let n = self.nodes.len();
        match self.rng.below(10) {
            0 => {
                // Symmetric partition into two random groups.
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(50)).collect();
                for a in 0..n {
                    for b in 0..n {
                        self.blocked[a][b] = side[a] != side[b];
                    }
                }
            }
            1 => {
                // One-way cut.
                let (a, b) = (self.rng.below(n as u64) as usize, self.rng.below(n as u64) as usize);
                if a != b {
                    self.blocked[a][b] = true;
                }
            }
            2 | 3 => {
                for row in &mut self.blocked {
                    row.iter_mut().for_each(|x| *x = false);
                }
            }
            4 => {
                let i = self.rng.below(n as u64) as usize;
                if self.nodes[i].core.is_some() {
                    self.crash(i);
                    let back = self.now + 50 + self.rng.below(3_000);
                    self.schedule(back, Event::Restart(i));
                }
            }
            5 => {
                let i = self.rng.below(n as u64) as usize;
                if self.nodes[i].core.is_some() && self.nodes[i].paused_until <= self.now {
                    let until = self.now + 100 + self.rng.below(2_000);
                    self.nodes[i].paused_until = until;
                    self.schedule(until, Event::Resume(i));
                }
            }
            6 => {
                self.drop_percent = [0, 5, 20, 50][self.rng.below(4) as usize];
                self.dup_percent = [0, 5, 20][self.rng.below(3) as usize];
                self.delay_max_ms = [5, 50, 300][self.rng.below(3) as usize];
            }
            7 => self.operator_action(),
            _ => {}
        }
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.core = None;
        node.backlog.clear();
        node.dispatcher = None;
        node.incarnation += 1;
        node.finish_queue.clear();
        node.sink_backlog.clear();
        self.book.crashed(i);
        self.stats.crashes += 1;
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        if self.cfg.trace {
            match &event {
                Event::Deliver { to, from, msg_index } => {
                    let msg: String = format!("{:?}", self.messages[*msg_index]).chars().take(140).collect();
                    eprintln!(
                        "{:>6} n{to} <- n{from} {msg}{}",
                        self.now,
                        if self.nodes[*to].paused_until > self.now { " (paused)" } else { "" }
                    );
                }
                Event::Tick(_) | Event::SinkAnswer(_) => {}
                other => eprintln!("{:>6} {other:?}", self.now),
            }
        }
        let node = match event {
            Event::Tick(i) | Event::Resume(i) | Event::Restart(i) | Event::Deliver { to: i, .. } => i,
            Event::SinkAnswer(request) => self.book.requests[request].node,
        };
        self.handle_event(event)?;
        // Like the daemon, start the next queued change after every event.
        self.start_finish(node)
    }

    fn handle_event(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Restart(i) => {
                if self.nodes[i].core.is_some() {
                    return Ok(());
                }
                self.file_at_start(i)?;
                let node = &self.nodes[i];
                let seed = self.rng.next_u64();
                let (core, out) =
                    Core::new(node.id, node.disk_durable.clone(), node.disk_config.clone(), self.local_now(i), seed);
                self.nodes[i].core = Some(core);
                self.nodes[i].dispatcher = Some(Dispatcher::new(DISPATCH_LIMITS, self.rng.next_u64()));
                self.nodes[i].paused_until = 0;
                self.execute(i, out, false)?;
                self.schedule(self.now + TICK_MS, Event::Tick(i));
            }
            Event::Tick(i) => {
                if self.nodes[i].core.is_none() {
                    return Ok(());
                }
                if self.nodes[i].paused_until <= self.now {
                    self.tick(i)?;
                }
                if self.nodes[i].core.is_some() {
                    self.schedule(self.now + TICK_MS, Event::Tick(i));
                }
            }
            Event::Resume(i) => {
                if self.nodes[i].core.is_some() && self.nodes[i].paused_until <= self.now {
                    let backlog = std::mem::take(&mut self.nodes[i].backlog);
                    // The first thing a resumed process does is notice time.
                    self.tick(i)?;
                    for (from, msg) in backlog {
                        if self.nodes[i].core.is_none() {
                            break;
                        }
                        let from = self.nodes[from].id;
                        self.step(i, Input::Receive { from, msg })?;
                    }
                    for input in std::mem::take(&mut self.nodes[i].sink_backlog) {
                        self.attempted(i, input)?;
                    }
                }
            }
            Event::SinkAnswer(request) => self.sink_answer(request)?,
            Event::Deliver { to, from, msg_index } => {
                let Some(msg) = self.messages[msg_index].clone() else { return Ok(()) };
                if self.nodes[to].core.is_none() {
                    return Ok(());
                }
                if self.nodes[to].paused_until > self.now {
                    self.nodes[to].backlog.push((from, msg));
                    return Ok(());
                }
                let from = self.nodes[from].id;
                self.step(to, Input::Receive { from, msg })?;
            }
        }
        Ok(())
    }

    fn step(&mut self, i: usize, input: Input) -> Result<(), Violation> {
        let now = self.local_now(i);
        let Some(core) = self.nodes[i].core.as_mut() else { return Ok(()) };
        let out = core.step(now, input);
        // Now and then the process dies part-way through its outputs: what
        // was persisted stays, the rest is lost.
        let crash_midway = self.faults && self.rng.chance(1) && !out.is_empty();
        self.execute(i, out, crash_midway)
    }

    fn execute(&mut self, i: usize, out: Vec<Output>, crash_midway: bool) -> Result<(), Violation> {
        let cut = if crash_midway { self.rng.below(out.len() as u64) as usize } else { out.len() };
        for (k, output) in out.into_iter().enumerate() {
            if self.cfg.trace {
                let shown = match &output {
                    Output::Send { to, msg } => {
                        format!("send to {} {:?}", self.index(*to), msg).chars().take(160).collect()
                    }
                    Output::PersistConfig(s) => format!("persist config {} members {}", s.id, s.members.len()),
                    other => format!("{other:?}"),
                };
                eprintln!("{:>6} n{i} {}", self.now, shown);
            }
            if k == cut {
                self.crash(i);
                let back = self.now + 50 + self.rng.below(2_000);
                self.schedule(back, Event::Restart(i));
                break;
            }
            match output {
                Output::PersistDurable(durable) => {
                    if let Some(voted) = durable.voted_for {
                        match self.votes.insert((self.nodes[i].id, durable.term), voted) {
                            Some(previous) if previous != voted => {
                                return Err(self.violation(format!(
                                    "node {i} voted twice in term {}: {previous} then {voted}",
                                    durable.term
                                )));
                            }
                            _ => {}
                        }
                    }
                    if durable.term < self.nodes[i].disk_durable.term {
                        return Err(self.violation(format!("node {i} persisted a lower term {}", durable.term)));
                    }
                    self.nodes[i].disk_durable = durable;
                }
                Output::PersistConfig(snapshot) => {
                    // A joining node persists the proposed snapshot before
                    // the cluster does; if the add then fails, that copy is
                    // an orphan only the newcomer holds (it counts for
                    // nothing: no member listens to it). Its content is not
                    // registered as the one content of that id.
                    let joining = !self.nodes[i].disk_config.is_member(&self.nodes[i].id);
                    if !joining {
                        self.check_snapshot(i, &snapshot)?;
                    }
                    self.persisted(i, &snapshot);
                    self.nodes[i].disk_config = snapshot;
                }
                Output::Send { to, msg } => self.send(i, to, msg),
                Output::ProposalDone { request, result } => {
                    let (node, mutation) = self.pending.remove(&request).expect("known request");
                    match result {
                        Ok(id) => {
                            debug_assert_eq!(node, i);
                            if mutation.starts_with('e') {
                                self.stats.operator.committed += 1;
                            }
                            self.on_commit(i, id, mutation)?;
                            self.delivery_committed(i, id)?;
                        }
                        Err(error) if error.is_unknown() => self.stats.operator.unknown_outcomes += 1,
                        Err(_) => {
                            self.stats.operator.definite_failures += 1;
                            // A hand edit still in its file is proposed
                            // again (the daemon retries while the edit
                            // stands): as a new proposal, under a new name,
                            // so that this one is still checked never to
                            // commit.
                            let retry = format!("e{}", self.next_mutation);
                            if let Some(file) = self
                                .nodes
                                .iter_mut()
                                .find_map(|n| n.file.as_mut().filter(|f| f.edit == mutation && !mutation.is_empty()))
                            {
                                file.edit = retry;
                                self.next_mutation += 1;
                            }
                            if !mutation.is_empty() {
                                self.refused.insert(mutation);
                            }
                        }
                    }
                }
                Output::RoleChanged { term, role, .. } => {
                    if role != Role::Master {
                        // The daemon fails what waited for this master's turn.
                        self.nodes[i].finish_queue.clear();
                    }
                    if role == Role::Master {
                        self.stats.elections += 1;
                        if let Some(other) = self.masters.insert(term, i)
                            && other != i
                        {
                            return Err(self.violation(format!("two masters in term {term}: nodes {other} and {i}")));
                        }
                    }
                }
                Output::NeedFreshCommit { next } => {
                    // The driver re-stamps the current content in the new term.
                    let core = self.nodes[i].core.as_ref().expect("running");
                    let current = core.config().clone();
                    let content = Content::restamp(&current.content, current.id);
                    let snapshot = Snapshot::new(next, current.members.clone(), current.timing, content);
                    let request = self.seq_request(i, String::new());
                    let now = self.local_now(i);
                    let out = self.nodes[i]
                        .core
                        .as_mut()
                        .expect("running")
                        .step(now, Input::Propose { request, snapshot, new_member: None });
                    self.execute(i, out, false)?;
                }
            }
        }
        Ok(())
    }

    fn index(&self, id: NodeId) -> String {
        self.nodes.iter().position(|n| n.id == id).map(|i| format!("n{i}")).unwrap_or_else(|| id.to_string())
    }

    fn seq_request(&mut self, node: usize, mutation: String) -> u64 {
        self.seq += 1;
        self.pending.insert(self.seq, (node, mutation));
        self.seq
    }

    fn send(&mut self, from: usize, to_id: NodeId, msg: Msg) {
        let Some(to) = self.nodes.iter().position(|n| n.id == to_id) else { return };
        self.stats.messages += 1;
        if self.blocked[from][to] || self.rng.chance(self.drop_percent) {
            return;
        }
        let copies = if self.rng.chance(self.dup_percent) { 2 } else { 1 };
        self.messages.push(Some(msg));
        let msg_index = self.messages.len() - 1;
        for _ in 0..copies {
            let at = self.now + self.rng.below(self.delay_max_ms + 1);
            self.schedule(at, Event::Deliver { to, from, msg_index });
        }
    }

    /// A client asks a random running node that believes it can serve.
    fn client_proposal(&mut self) -> Result<(), Violation> {
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        if self.nodes[i].paused_until > self.now {
            return Ok(());
        }
        let Some(core) = self.nodes[i].core.as_ref() else { return Ok(()) };
        if core.role() != Role::Master || core.is_busy() {
            return Ok(());
        }
        let current = core.config().clone();
        let next_id = core.next_config_id();
        let mutation = format!("m{}", self.next_mutation);
        self.next_mutation += 1;
        // Operators do not add or remove nodes while a restored one is
        // still catching up (docs/operations.md): it could not tell which
        // peers' copies count.
        let restoring = self.nodes.iter().any(|n| !n.disk_durable.restoring.is_empty() || n.file.is_some());
        if self.faults && !restoring && self.rng.chance(MEMBERSHIP_PERCENT) {
            return self.membership_change(i, current, next_id, mutation);
        }
        let (mutation, change) = if self.rng.chance(TRANSITION_PERCENT) {
            // One check, or several at once (an outage): distinct ones. A
            // runtime change: what operators own stays as it was.
            let first = self.rng.below(CHECKS);
            let count = 1 + self.rng.below(CHECKS);
            let checks: Vec<u64> = (0..count).map(|k| (first + k) % CHECKS).collect();
            let mutation = format!("r{}", &mutation[1..]);
            self.transitions.insert(mutation.clone(), checks.len());
            (mutation, Change::Transition { checks })
        } else {
            (mutation, Change::Plain)
        };
        let content = Content::apply(&current.content, current.id, next_id, &mutation, &change);
        let timing = if self.rng.chance(TIMING_PERCENT) { self.draw_timing(current.timing) } else { current.timing };
        let snapshot = Snapshot::new(next_id, current.members.clone(), timing, content);
        let request = self.seq_request(i, mutation);
        self.step(i, Input::Propose { request, snapshot, new_member: None })
    }

    /// Removes a member, or replaces a removed one with a fresh identity the
    /// way `qu node remove` / `qu init` + `qu node add` do: the newcomer
    /// starts blank (term 0, the cluster's members at version 0) and must
    /// acknowledge before the add counts.
    fn membership_change(
        &mut self,
        master: usize,
        current: Snapshot,
        next_id: ConfigId,
        mutation: String,
    ) -> Result<(), Violation> {
        let outside: Vec<usize> = (0..self.nodes.len()).filter(|j| !current.is_member(&self.nodes[*j].id)).collect();
        if let Some(&j) = outside.first() {
            // Replace node j: a new identity, blank state, then the add.
            let mut bytes = *self.nodes[j].id.as_uuid().as_bytes();
            bytes[14] = bytes[14].wrapping_add(1);
            let new_id = NodeId::from_bytes(bytes);
            self.crash(j);
            self.nodes[j].id = new_id;
            self.nodes[j].disk_durable = Durable::default();
            self.nodes[j].disk_config = Snapshot::new(ConfigId::ZERO, current.members.clone(), current.timing, "blank");
            self.nodes[j].last_seen = (0, ConfigId::ZERO);
            self.nodes[j].file = None;
            self.nodes[j].history.clear();
            self.handle(Event::Restart(j))?;
            let mut members = current.members.clone();
            members.push(new_id);
            let content = Content::apply(&current.content, current.id, next_id, &mutation, &Change::Plain);
            let snapshot = Snapshot::new(next_id, members, current.timing, content);
            let request = self.seq_request(master, mutation);
            return self.step(master, Input::Propose { request, snapshot, new_member: Some(new_id) });
        }
        if current.members.len() < 3 {
            return Ok(());
        }
        // Any member may go, the master included (it commits its own removal
        // and then steps down).
        let candidates: Vec<NodeId> = current.members.clone();
        let removed = candidates[self.rng.below(candidates.len() as u64) as usize];
        let members: Vec<NodeId> = current.members.iter().copied().filter(|m| *m != removed).collect();
        let content = Content::apply(&current.content, current.id, next_id, &mutation, &Change::Plain);
        let snapshot = Snapshot::new(next_id, members, current.timing, content);
        let request = self.seq_request(master, mutation);
        self.step(master, Input::Propose { request, snapshot, new_member: None })
    }

    fn on_commit(&mut self, i: usize, id: ConfigId, mutation: String) -> Result<(), Violation> {
        self.stats.commits += 1;
        let now = self.now;
        // No other node may hold a lease while this master commits.
        let committer_term = self.nodes[i].core.as_ref().map(|c| c.term()).unwrap_or(0);
        for (j, node) in self.nodes.iter().enumerate() {
            if j == i {
                continue;
            }
            if let Some(core) = &node.core
                && core.lease_valid_at(now + node.clock_offset)
            {
                return Err(self.violation(format!(
                    "node {i} committed {id} in term {committer_term} while node {j} held a lease in term {}",
                    core.term()
                )));
            }
        }
        // Every check a committed transition names has its own record per
        // alert (two checks changing in one commit must not share a key).
        if let Some(&checks) = self.transitions.get(&mutation) {
            let text = match self.contents.get(&id) {
                Some(text) => text.clone(),
                None => self.nodes[i].core.as_ref().expect("running").config().content.clone(),
            };
            let content = Content::parse(&text);
            let ids: BTreeSet<String> = (0..checks).map(|k| qu_core::alerting::transition_id(id, k)).collect();
            let records = content.records.values().filter(|r| ids.contains(&r.transition)).count();
            if records != checks * content::ALERTS.len() {
                return Err(self.violation(format!(
                    "{id} committed {checks} transitions ({mutation}) but holds {records} delivery records for them"
                )));
            }
        }
        if !mutation.is_empty() {
            self.acknowledged.push((mutation, id));
        }
        // A definite failure never applies later.
        if let Some(text) = self.contents.get(&id)
            && let Some(refused) = content::mutations(text).find(|m| self.refused.contains(*m))
        {
            return Err(self.violation(format!("{id} committed {refused}, whose proposal had failed definitely")));
        }
        // What this snapshot holds is committed now, records included.
        let text = match self.contents.get(&id) {
            Some(text) => text.clone(),
            None => self.nodes[i].core.as_ref().expect("running").config().content.clone(),
        };
        self.book.committed(&Content::parse(&text)).map_err(|what| self.violation(what))
    }

    // ----- alert delivery, driven as the daemon drives it --------------

    /// The daemon's tick: the core's, then the dispatcher's `MayAct`.
    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        self.step(i, Input::Tick)?;
        if self.nodes[i].core.is_none() {
            return Ok(());
        }
        self.poll_file(i)?;
        if self.nodes[i].core.is_none() {
            return Ok(());
        }
        self.dispatch(i, DispatchInput::MayAct(self.may_act(i)))
    }

    /// What the daemon feeds `MayAct`: master, with a commit in its term
    /// and a lease that holds now on its own clock.
    fn may_act(&self, i: usize) -> bool {
        let now = self.local_now(i);
        self.nodes[i].core.as_ref().is_some_and(|c| c.role() == Role::Master && c.can_serve() && c.lease_valid_at(now))
    }

    /// Whether `node`, still in `incarnation`, holds a lease on its own
    /// clock right now (even if it has not been stepped since).
    fn holds_lease(&self, node: usize, incarnation: u64) -> bool {
        let n = &self.nodes[node];
        n.incarnation == incarnation && n.core.as_ref().is_some_and(|c| c.lease_valid_at(self.local_now(node)))
    }

    /// This master's own proposal committed `id`: `MayAct`, then the
    /// committed view (the daemon's `delivery_committed`).
    fn delivery_committed(&mut self, i: usize, id: ConfigId) -> Result<(), Violation> {
        let Some(core) = self.nodes[i].core.as_ref() else { return Ok(()) };
        if core.config().id != id {
            return Ok(());
        }
        let view = Content::parse(&core.config().content).view(self.delivery_deadline);
        self.dispatch(i, DispatchInput::MayAct(self.may_act(i)))?;
        self.dispatch(i, DispatchInput::Committed(view))
    }

    /// Feeds node `i`'s dispatcher and executes what it asks.
    fn dispatch(&mut self, i: usize, input: DispatchInput) -> Result<(), Violation> {
        let now = self.local_now(i);
        let Some(dispatcher) = self.nodes[i].dispatcher.as_mut() else { return Ok(()) };
        let was_acting = dispatcher.acting();
        let out = dispatcher.step(now, input);
        if was_acting && !dispatcher.acting() {
            self.book.lease_lost(i);
        }
        for output in out {
            if self.cfg.trace {
                eprintln!("{:>6} n{i} dispatch {output:?}", self.now);
            }
            match output {
                DispatchOutput::Send { key, attempt } => self.sink_send(i, key, attempt)?,
                DispatchOutput::AbortAll => self.book.abort_all(i),
                DispatchOutput::Propose(results) => {
                    if self.nodes[i].finish_queue.len() < FINISH_QUEUE_MAX {
                        self.nodes[i].finish_queue.push_back(results);
                    }
                }
                DispatchOutput::Decided { .. } => {}
            }
        }
        Ok(())
    }

    /// Proposes the dispatcher's next queued results, as the daemon's
    /// `start_next_mutation` does: on a master that can serve and is idle.
    fn start_finish(&mut self, i: usize) -> Result<(), Violation> {
        if self.nodes[i].paused_until > self.now || self.nodes[i].finish_queue.is_empty() {
            return Ok(());
        }
        let Some(core) = self.nodes[i].core.as_ref() else { return Ok(()) };
        if core.role() != Role::Master || core.is_busy() || !core.can_serve() {
            return Ok(());
        }
        let (current, next_id) = (core.config().clone(), core.next_config_id());
        let results = self.nodes[i].finish_queue.pop_front().expect("not empty");
        let mutation = format!("r{}", self.next_mutation);
        self.next_mutation += 1;
        let content = Content::apply(&current.content, current.id, next_id, &mutation, &Change::Finish(results));
        let snapshot = Snapshot::new(next_id, current.members.clone(), current.timing, content);
        let request = self.seq_request(i, mutation);
        self.step(i, Input::Propose { request, snapshot, new_member: None })
    }

    /// Node `i` sends `key`: checked, logged by the sink, answered later.
    fn sink_send(&mut self, i: usize, key: String, attempt: u32) -> Result<(), Violation> {
        if let Err(why) = self.book.check_send(&key) {
            return Err(self.violation(format!("node {i} sent {key} (attempt {attempt}): {why}")));
        }
        let lease = self.may_act(i);
        if !lease {
            let role = self.nodes[i].core.as_ref().map(|c| c.role());
            return Err(self.violation(format!(
                "node {i} sent {key} (attempt {attempt}) while it may not act: role {role:?}, can_serve false"
            )));
        }
        if !self.holds_lease(i, self.nodes[i].incarnation) {
            // `can_serve()` is the core's view as of its last step; the lease
            // ran out on the node's own clock since, and it learns at its
            // next step. Counted, not failed: the daemon reads it the same way.
            self.book.stats.sends_after_lease_ran_out += 1;
        }
        self.check_sole_sender(i, &key, attempt)?;
        let behaviour = self.draw_behaviour();
        let previous = self.book.last_accepted(&key).map(|p| (p.node, p.incarnation));
        let previous_holds_lease = previous.map(|(node, incarnation)| self.holds_lease(node, incarnation));
        let request = Request {
            at_ms: self.now,
            node: i,
            incarnation: self.nodes[i].incarnation,
            key,
            attempt,
            lease,
            behaviour,
            state: RequestState::InFlight,
            seq: 0,
        };
        if self.cfg.trace {
            eprintln!("{:>6} sink <- {}", self.now, describe(&request));
        }
        let index = self.book.send(request, previous_holds_lease).map_err(|what| self.violation(what))?;
        if behaviour != Behaviour::Hang {
            let delay = 1 + self.rng.below(self.sink_delay_max_ms);
            self.schedule(self.now + delay, Event::SinkAnswer(index));
        }
        Ok(())
    }

    /// No other node holds a lease on its own clock, and none has a send in
    /// flight, except one that cannot know yet that it must abort: its
    /// dispatcher was last told it may act, and its lease has run out on its
    /// own clock since (it is paused, or has not ticked since). Its request
    /// reached the sink while it held the lease.
    fn check_sole_sender(&mut self, i: usize, key: &str, attempt: u32) -> Result<(), Violation> {
        for (j, node) in self.nodes.iter().enumerate() {
            if j != i && node.core.as_ref().is_some_and(|c| c.lease_valid_at(self.now + node.clock_offset)) {
                return Err(
                    self.violation(format!("node {i} sent {key} (attempt {attempt}) while node {j} held a lease"))
                );
            }
        }
        let mut stale = 0;
        for (j, other) in self.book.other_senders(i) {
            let told_to_act = self.nodes[j].dispatcher.as_ref().is_some_and(|d| d.acting());
            if told_to_act && !self.holds_lease(j, other.incarnation) {
                stale += 1;
                continue;
            }
            return Err(self.violation(format!(
                "node {i} sent {key} (attempt {attempt}) while node {j} (acting {told_to_act}) still had a send in flight: {}",
                describe(other)
            )));
        }
        self.book.stats.beside_a_stale_sender += stale;
        Ok(())
    }

    /// How the sink treats the next request: always well once faults stop.
    fn draw_behaviour(&mut self) -> Behaviour {
        if !self.faults || !self.rng.chance(self.sink_flaky_percent) {
            return Behaviour::Succeed;
        }
        match self.rng.below(100) {
            0..40 => Behaviour::Transient { retry_after_ms: None },
            40..60 => Behaviour::Transient { retry_after_ms: Some(100 + self.rng.below(3_000)) },
            60..72 => Behaviour::Permanent,
            72..86 => Behaviour::Hang,
            _ => Behaviour::CrashAfterAccept,
        }
    }

    /// The sink's answer to request `index` reaches its sender, unless the
    /// send was aborted or the sender crashed (then it is dropped).
    fn sink_answer(&mut self, index: usize) -> Result<(), Violation> {
        if !self.book.answer(index) {
            return Ok(());
        }
        let request = &self.book.requests[index];
        let (node, key, attempt, behaviour) = (request.node, request.key.clone(), request.attempt, request.behaviour);
        let outcome = match behaviour {
            Behaviour::CrashAfterAccept if self.faults => {
                // The sink has the alert; its sender dies before it knows.
                self.book.stats.crash_after_accept += 1;
                self.crash(node);
                let back = self.now + 50 + self.rng.below(2_000);
                self.schedule(back, Event::Restart(node));
                return Ok(());
            }
            Behaviour::Succeed | Behaviour::CrashAfterAccept => SendOutcome::Delivered,
            Behaviour::Transient { retry_after_ms } => {
                SendOutcome::Retry { error: "status 503".into(), after: retry_after_ms.map(Duration::from_millis) }
            }
            Behaviour::Permanent => SendOutcome::Failed { error: "status 404".into() },
            Behaviour::Hang => unreachable!("a hung request is never answered"),
        };
        if self.cfg.trace {
            eprintln!("{:>6} sink -> n{node} {key} attempt {attempt}: {outcome:?}", self.now);
        }
        let input = DispatchInput::Attempt { key, attempt, outcome };
        if self.nodes[node].paused_until > self.now {
            self.nodes[node].sink_backlog.push(input);
            return Ok(());
        }
        self.attempted(node, input)
    }

    /// A sink's answer reaches node `i`: `MayAct` first, then the answer.
    ///
    /// Fed per tick only, a dispatcher may act on a stale "yes" between two
    /// ticks: seed 17404 (3 nodes, 20,000-seed sweep) had a master apply its
    /// own membership change, lose `can_serve()` at once, and then start the
    /// next record of a queue when an answer came in before its next tick.
    /// The daemon's `delivery_attempted` feeds `MayAct` first in the same way.
    fn attempted(&mut self, i: usize, answer: DispatchInput) -> Result<(), Violation> {
        self.dispatch(i, DispatchInput::MayAct(self.may_act(i)))?;
        self.dispatch(i, answer)
    }

    fn check_snapshot(&mut self, i: usize, snapshot: &Snapshot) -> Result<(), Violation> {
        match self.contents.get(&snapshot.id) {
            Some(content) if *content != snapshot.content && snapshot.id.version != 0 => {
                return Err(self.violation(format!(
                    "two contents for config {} (node {i}): {content:?} vs {:?}",
                    snapshot.id, snapshot.content
                )));
            }
            None => {
                self.contents.insert(snapshot.id, snapshot.content.clone());
            }
            _ => {}
        }
        self.check_acknowledged(i, snapshot)?;
        let node = &self.nodes[i];
        if snapshot.id < node.last_seen.1 {
            return Err(
                self.violation(format!("node {i} went back from config {} to {}", node.last_seen.1, snapshot.id))
            );
        }
        Ok(())
    }

    /// Every acknowledged mutation is in every snapshot at least as new.
    fn check_acknowledged(&self, i: usize, snapshot: &Snapshot) -> Result<(), Violation> {
        let contained: BTreeSet<&str> = content::mutations(&snapshot.content).collect();
        for (mutation, at) in &self.acknowledged {
            if snapshot.id >= *at && !contained.contains(mutation.as_str()) {
                return Err(self.violation(format!(
                    "node {i} persisted {} without acknowledged mutation {mutation} (acked at {at})",
                    snapshot.id
                )));
            }
        }
        Ok(())
    }

    fn check_global(&mut self) -> Result<(), Violation> {
        // At most one node holds a valid lease, each on its own clock (the
        // simulator's true clock plus the node's offset).
        let leases: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].core.as_ref().is_some_and(|c| c.lease_valid_at(self.local_now(*i))))
            .collect();
        if leases.len() > 1 {
            let terms: Vec<u64> = leases.iter().map(|i| self.nodes[*i].core.as_ref().map_or(0, |c| c.term())).collect();
            let what = format!("two leases at once: nodes {leases:?} in terms {terms:?}");
            return Err(self.violation(what));
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let term = node.disk_durable.term;
            let config = node.disk_config.id;
            if term < node.last_seen.0 || config < node.last_seen.1 {
                let what = format!(
                    "node {i} went back: term {} -> {term}, config {} -> {config}",
                    node.last_seen.0, node.last_seen.1
                );
                return Err(Violation { seed: self.seed, nodes: self.cfg.nodes, at_ms: self.now, what });
            }
            node.last_seen = (term, config);
            // A dispatcher that stopped acting aborted its sends.
            let acting = node.dispatcher.as_ref().is_some_and(|d| d.acting());
            if !acting && let Some(request) = self.book.first_in_flight(i) {
                let what = format!("node {i} may not act but has a send in flight: {}", describe(request));
                return Err(Violation { seed: self.seed, nodes: self.cfg.nodes, at_ms: self.now, what });
            }
        }
        Ok(())
    }

    /// After the calm phase: one master with a lease, everyone on the same
    /// bytes, and every acknowledged mutation in them.
    fn check_converged(&mut self) -> Result<(), Violation> {
        let masters: Vec<usize> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.core.as_ref().is_some_and(|c| c.lease_valid_at(self.now + n.clock_offset)))
            .map(|(i, _)| i)
            .collect();
        if masters.len() != 1 {
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.core {
                    Some(c) => format!(
                        "{}: {:?} term {} config {} members {} member {}",
                        n.id,
                        c.role(),
                        c.term(),
                        c.config().id,
                        c.config().members.len(),
                        c.is_member()
                    ),
                    None => format!("{}: down", n.id),
                })
                .collect();
            return Err(self.violation(format!(
                "after calm, expected one master with a lease, found {masters:?}; nodes: {}",
                nodes.join("; ")
            )));
        }
        // Every member of the master's config holds its bytes (a removed
        // node, or a newcomer whose add failed, keeps its own copy).
        let master = masters[0];
        let first = self.nodes[master].disk_config.clone();
        for (i, node) in self.nodes.iter().enumerate() {
            if first.is_member(&node.id) && node.disk_config != first {
                return Err(self.violation(format!(
                    "no convergence: master {master} holds {} but member {i} holds {}",
                    first.id, node.disk_config.id
                )));
            }
        }
        let contained: BTreeSet<&str> = content::mutations(&first.content).collect();
        for (mutation, at) in &self.acknowledged {
            if !contained.contains(mutation.as_str()) {
                return Err(self.violation(format!("acknowledged mutation {mutation} (at {at}) lost")));
            }
        }
        Ok(())
    }
}
