//! The event loop: one task owns the node's state and handles a closed set
//! of events in order. It feeds the consensus core and executes what the
//! core returns, in the order returned (a config is applied as part of
//! persisting it).

mod alerting;
mod cluster_watch;
mod consensus;
mod delivery;
mod edits;
mod event;
mod join;
mod links;
mod monitor;
mod peers;
mod proposals;
mod requests;
mod views;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use qu_core::config::{CheckStatus, ClusterConfig, Mutation, NodeConfig, Stamp, Timestamp, Transition};
use qu_core::consensus::{ConfigId, Core, Durable, Input, Msg, Output, ProposeError, Role, Snapshot};
use qu_core::monitor::{CheckState, CheckSummary, Report, Verdicts};
use qu_core::wire::{Entry, PeerNotice, PeerRequest, PeerResponse};
use qu_core::{Fingerprint, NodeId};
use qu_probe::Probes;
use qu_store::{DataDir, SECRET_FILE_MODE};
use qu_transport::{Caller, Connection, Endpoint, TrustStore};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub(crate) use self::event::{ControlEvent, DeliveryEvent, Event, PeerEvent, ToEventLoop};
use self::links::Links;
use crate::control::{self, ControlRequest, ControlResponse};
use crate::load::LoadedNode;
use crate::peer::Wire;
use crate::scheduler::{self, Scheduled};
use crate::status::{CheckListItem, CheckView, PeerView, ProbeStats, SettingsView, StatusView};

/// Events queued for the loop before senders wait.
const EVENTS_MAX: usize = 4096;
/// TLS handshakes in progress at once on the peer listener.
const HANDSHAKES_MAX: usize = 64;
/// Open connections from keys that are not members (the join handshake's
/// only users): beyond, a new one is closed at once.
const STRANGER_CONNECTIONS_MAX: usize = 32;
/// Of those, from one source address (so one host cannot take them all).
const STRANGER_CONNECTIONS_PER_SOURCE_MAX: usize = 8;
/// How often a warning about refused connections may be logged.
const REFUSED_WARNING_MS: u64 = 60_000;
/// Control connections served at once.
const CONTROL_CLIENTS_MAX: usize = 64;
/// Mutations waiting for the master to be free.
const QUEUED_MUTATIONS_MAX: usize = 64;
/// How often a hand edit of cluster.yaml is looked for.
const FILE_POLL: Duration = Duration::from_secs(2);

/// The files follow the log once changes pause this long...
const FLUSH_IDLE_MS: u64 = 20;
/// ...or at the latest this long after the first change they lack.
const FLUSH_MAX_MS: u64 = 500;

/// Content persisted to the log only (see `Daemon::unflushed`).
struct Unflushed {
    content: Arc<str>,
    /// When the first and the last of the changes were persisted.
    first: u64,
    last: u64,
}

/// Already-bound listeners (tests bind port 0 and pass them in).
#[derive(Debug)]
pub struct Listeners {
    pub peer: TcpListener,
    pub control: UnixListener,
    /// Removed at shutdown if it is still our socket.
    pub control_path: Option<PathBuf>,
    /// qu's own HTTP listener (node.yaml `http_listen`), if configured.
    pub http: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("persist {what}: {source}")]
    Persist { what: &'static str, source: qu_store::StoreError },
    #[error("transport: {0}")]
    Transport(#[from] qu_transport::TransportError),
    #[error("plugins: {0}")]
    Plugins(String),
}

/// How operators (and followers, over the peer protocol's text) are told
/// that a change was refused for good.
const REFUSED: &str = "change refused: ";
/// How an unknown outcome begins ([`ProposeError::Unknown`]), on the wire too.
const UNKNOWN: &str = "outcome unknown: ";

/// Why a change did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The change itself is wrong; retrying cannot fix it.
    Refused(String),
    /// It may go through later: no master, no quorum, busy, stepped down.
    /// It was never sent, so it never applies unless sent again.
    NotNow(String),
    /// It was sent and did not commit in time, or the master lost its lease
    /// after sending it: it may still commit.
    Unknown(String),
}

impl Failure {
    /// The sentence an operator reads (and a follower receives).
    fn message(&self) -> String {
        match self {
            Failure::Refused(reason) => format!("{REFUSED}{reason}"),
            Failure::NotNow(message) => message.clone(),
            Failure::Unknown(message) => message.clone(),
        }
    }

    /// The core's answer to a proposal it did not commit.
    fn from_core(error: &ProposeError) -> Self {
        if error.is_unknown() { Failure::Unknown(error.to_string()) } else { Failure::NotNow(error.to_string()) }
    }

    /// The control answer carrying `message`.
    fn control(&self, message: String) -> ControlResponse {
        match self {
            Failure::Unknown(_) => ControlResponse::Unknown { message },
            _ => ControlResponse::Error { message },
        }
    }

    /// The master's answer to a forwarded change, mapped once, here at the
    /// wire's edge (the peer protocol carries the sentence).
    fn from_master(reason: &str) -> Self {
        match reason.strip_prefix(REFUSED) {
            Some(reason) => Failure::Refused(reason.to_string()),
            None if reason.starts_with(UNKNOWN) => Failure::Unknown(reason.to_string()),
            None => Failure::NotNow(reason.to_string()),
        }
    }

    /// A forwarded change that got no answer: lost on the way (not sent,
    /// so not now), or sent and then the connection timed out or closed
    /// (unknown).
    fn from_transport(error: &qu_transport::TransportError) -> Self {
        use qu_transport::TransportError as E;
        match error {
            E::Timeout(_) | E::Closed | E::Truncated => Failure::Unknown(
                ProposeError::Unknown { cause: format!("the master did not answer: {error}") }.to_string(),
            ),
            other => Failure::NotNow(other.to_string()),
        }
    }
}

/// Who is waiting for a mutation's outcome.
enum Waiter {
    Control(oneshot::Sender<ControlResponse>),
    Peer(oneshot::Sender<PeerResponse>),
    /// A hand edit's own bookkeeping.
    Edit(oneshot::Sender<Result<(), Failure>>),
    Internal,
}

impl Waiter {
    fn finish(self, result: Result<(u64, u64), Failure>, node_id: Option<NodeId>) {
        match (self, result) {
            (Waiter::Control(reply), Ok((term, version))) => {
                let _ = reply.send(ControlResponse::Committed { term, version, node_id, created: None });
            }
            (Waiter::Control(reply), Err(failure)) => {
                let _ = reply.send(failure.control(failure.message()));
            }
            (Waiter::Peer(reply), Ok((term, version))) => {
                let _ = reply.send(PeerResponse::Committed { term, version });
            }
            (Waiter::Peer(reply), Err(failure)) => {
                let _ = reply.send(PeerResponse::Refused { reason: failure.message() });
            }
            (Waiter::Edit(reply), result) => {
                let _ = reply.send(result.map(|_| ()));
            }
            (Waiter::Internal, _) => {}
        }
    }

    /// The outcome of a change this follower forwarded to `master`.
    fn forwarded(self, master: &NodeId, result: Result<(u64, u64), Failure>, node_id: Option<NodeId>) {
        if let Err(failure) = &result {
            tracing::warn!(%master, "propose to master: {}", failure.message());
        }
        match (self, result) {
            (Waiter::Control(reply), Err(failure)) => {
                let message = format!("propose to master: {}", failure.message());
                let _ = reply.send(failure.control(message));
            }
            (waiter, result) => waiter.finish(result, node_id),
        }
    }
}

struct Pending {
    /// When it was proposed (for the commit latency in `/metrics`).
    started: Instant,
    request: u64,
    mutation: Mutation,
    waiter: Waiter,
}

pub(crate) struct Daemon {
    data: DataDir,
    node: NodeConfig,
    fingerprint: Fingerprint,
    core: Core,
    cluster: ClusterConfig,
    trust: TrustStore,
    endpoint: Arc<Endpoint<Wire>>,
    events: mpsc::Sender<Event>,
    links: Links,
    inbound: Vec<Connection<Wire>>,
    started: Instant,
    /// The parsed config of the snapshot most recently received or proposed,
    /// with its text, so persisting it does not parse it again.
    parsed: Option<(Arc<str>, ClusterConfig)>,
    /// The text of cluster.yaml as we last wrote or loaded it: what
    /// operators own of the content (`ClusterConfig::to_operator_yaml`).
    written: Arc<str>,
    /// The content id (`ClusterConfig::content_id`) `written` shows.
    written_id: (u64, u64),
    /// cluster.yaml's `edits::FileStamp` when it last held `written`: while
    /// the file keeps it, no hand edit needs looking for (no read of the
    /// whole file at every commit).
    written_stamp: Option<edits::FileStamp>,
    /// The changes persisted since the files were last written, as log
    /// entries (`store/log`, replayed over the copy at start).
    log: qu_store::AppendLog,
    /// The id and content hash of what this node last persisted: the
    /// parent a log entry must follow to be persisted as one.
    persisted: (ConfigId, qu_core::consensus::Digest),
    /// The log entry behind the snapshot just proposed or received.
    pending_entry: Option<Entry>,
    /// What is persisted in the log only: the files are written once the
    /// changes pause (`FLUSH_IDLE_MS`) or at the latest `FLUSH_MAX_MS`
    /// after the first, and at shutdown.
    unflushed: Option<Unflushed>,
    /// A hand edit already reported as unparseable (so it is logged once).
    bad_edit: Option<String>,
    /// A hand edit waiting for a master with quorum.
    pending_edit: Option<(String, ClusterConfig)>,
    next_request: u64,
    inflight: Option<Pending>,
    queue: VecDeque<(Mutation, Waiter)>,
    /// The joiner's side of join handshakes in progress.
    join_sessions: join::JoinSessions,
    /// Connections from strangers closed for the cap, and when that was
    /// last logged.
    refused_strangers: u64,
    refused_warned: Option<u64>,
    /// A node being added, trusted for the duration of its add.
    joining: Option<qu_core::config::Peer>,
    /// A master that removed itself, still trusted (until the given time)
    /// so its removal can be acknowledged and committed.
    departing: Option<(qu_core::config::Peer, u64)>,
    /// While restoring (`Durable::restoring`): the peers of every config
    /// held since the restore, trusted too, so a copy that dropped one does
    /// not cut this node off from a newer one (see the consensus core).
    restore_peers: Vec<qu_core::config::Peer>,
    /// The last changes this master proposed, as log entries (see
    /// `PeerNotice::Entry`), to send a follower the change, not the config.
    entries: VecDeque<Entry>,
    /// The config this master last sent each follower. A follower's
    /// acknowledgement can trail the next proposal; an entry on what was
    /// sent is still one it can apply (it pulls the snapshot if it cannot).
    sent_to: HashMap<NodeId, ConfigId>,
    /// Renders snapshots, re-rendering only the checks, states and records
    /// that changed (the same bytes as `ClusterConfig::to_yaml`).
    renderer: qu_core::config::Renderer,
    replication: crate::status::ReplicationStats,
    /// The checks the scheduler runs (replaced when the config changes).
    schedule: watch::Sender<Arc<Vec<Scheduled>>>,
    /// The master's verdict state (fed only while this node is master).
    verdicts: Verdicts,
    /// This node's latest result per check, not yet delivered to the master.
    unsent: BTreeMap<String, Report>,
    next_fanin: u64,
    probes_run: u64,
    /// Rounds the scheduler skipped since start (see `scheduler::Rounds`).
    probes_skipped: u64,
    /// Start lateness of the most recent probes, in microseconds.
    lateness_us: VecDeque<u64>,
    /// Built-in and added plugins, and the runtime that runs them.
    plugins: Arc<crate::plugins::Registry>,
    /// Alert delivery: the pure dispatcher and the sends it runs.
    delivery: delivery::Delivery,
    /// Alerts about the cluster itself (see `watch`).
    watch: cluster_watch::Watch,
    /// What `/metrics` shows (fed as events happen).
    metrics: crate::metrics::Metrics,
}

/// Probes whose lateness `qu status --json` summarises.
const LATENESS_WINDOW: usize = 10_000;

/// How long a follower's `qu status` waits for the master's check view.
const STATUS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often results are batched to the master, in milliseconds.
const FANIN_MS: u64 = 200;
/// Checks whose unsent results a node keeps while no master is reachable.
const UNSENT_REPORTS_MAX: usize = qu_core::limits::CHECKS_MAX;

impl Daemon {
    /// The node's state from what was loaded, with the core's boot outputs
    /// still to execute.
    fn start(loaded: LoadedNode, events: mpsc::Sender<Event>) -> Result<(Self, Vec<Output>), DaemonError> {
        let LoadedNode { data, node, identity, cluster, durable, start, texts } = loaded;
        let quorum_books = data.root().join(cluster_watch::BOOKS_FILE);
        let written = edits::at_start(&data, &cluster, start, &texts)?;
        let written_id = cluster.content_id();
        // The copy now holds whatever the log did (start replayed it).
        qu_store::create_private_dir(&data.store_dir())
            .map_err(|source| DaemonError::Persist { what: "store/", source })?;
        let (mut log, _) = qu_store::AppendLog::open(&data.log())
            .map_err(|source| DaemonError::Persist { what: "store/log", source })?;
        log.clear().map_err(|source| DaemonError::Persist { what: "store/log", source })?;
        let mut renderer = qu_core::config::Renderer::default();
        let snapshot = renderer.snapshot(&cluster);
        let persisted = (snapshot.id, snapshot.hash);
        let written_stamp = edits::stamp_if_holds(&data.cluster_yaml(), &written);
        let trust = TrustStore::new(cluster.peers.iter().map(|p| (p.fingerprint.clone(), p.node_id)));
        let fingerprint = identity.fingerprint.clone();
        let endpoint = Arc::new(Endpoint::<Wire>::new(identity, trust.clone())?.with_source_ip(Some(node.bind)));
        let started = Instant::now();
        let (core, boot) = Core::new(node.node_id, durable, snapshot, 1, rand::random());
        let plugins = crate::plugins::Registry::new(&data).map_err(DaemonError::Plugins)?;
        plugins.clean_up(&cluster);
        plugins.load_built_in();
        let daemon = Daemon {
            links: Links::new(node.node_id),
            data,
            node,
            fingerprint,
            core,
            cluster,
            trust,
            endpoint: endpoint.clone(),
            events,
            inbound: Vec::new(),
            started,
            written_stamp,
            written_id,
            written,
            log,
            persisted,
            pending_entry: None,
            unflushed: None,
            bad_edit: None,
            pending_edit: None,
            parsed: None,
            next_request: 1,
            inflight: None,
            queue: VecDeque::new(),
            join_sessions: Default::default(),
            refused_strangers: 0,
            refused_warned: None,
            joining: None,
            departing: None,
            restore_peers: Vec::new(),
            entries: VecDeque::new(),
            sent_to: HashMap::new(),
            renderer,
            replication: Default::default(),
            schedule: watch::channel(Arc::new(Vec::new())).0,
            verdicts: Verdicts::default(),
            unsent: BTreeMap::new(),
            next_fanin: 0,
            probes_run: 0,
            probes_skipped: 0,
            lateness_us: VecDeque::new(),
            plugins,
            delivery: delivery::Delivery::new(rand::random()),
            watch: cluster_watch::Watch::load(&quorum_books),
            metrics: crate::metrics::Metrics::new(),
        };
        // Two terms: the one the loaded version was committed in, and the
        // node's own (its vote's), which may be later.
        tracing::info!(
            term = daemon.core.term(),
            version = daemon.cluster.version,
            committed_in = daemon.cluster.term,
            members = daemon.cluster.peers.len(),
            "config version {} (committed in term {}) loaded; this node is at term {}",
            daemon.cluster.version,
            daemon.cluster.term,
            daemon.core.term()
        );
        if !daemon.core.is_member() {
            tracing::warn!(
                "this node is not a member of the cluster in cluster.yaml; it answers only the join handshake"
            );
        }
        Ok((daemon, boot))
    }
}

/// Runs a node until `shutdown` resolves. Returns after the listeners are
/// closed, connections are dropped and the control socket is removed.
pub async fn run(
    loaded: LoadedNode,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let (events, mut inbox) = mpsc::channel(EVENTS_MAX);
    let (mut daemon, boot) = Daemon::start(loaded, events.clone())?;
    let endpoint = daemon.endpoint.clone();
    daemon.execute(boot)?;
    if !daemon.core.durable().restoring.is_empty() && daemon.restore_peers.is_empty() {
        // Restarted part-way through catching up after a restore.
        daemon.note_restore_peers();
    }
    daemon.refresh_links();
    // Plugins reach this node's own peer port only when allow-listed exactly.
    if let Ok(addr) = listeners.peer.local_addr() {
        daemon.plugins.runtime().set_peer_port(addr.port());
    }

    daemon.reschedule();
    daemon.plugins.sync(&daemon.cluster, daemon.peer_connections());
    let (finished, mut rounds) = mpsc::channel(scheduler::FINISHED_MAX);
    let scheduler_task = tokio::spawn(scheduler::run(
        Probes::new(),
        Some(daemon.plugins.clone()),
        daemon.schedule.subscribe(),
        finished,
    ));
    let peer_task = tokio::spawn(accept_peers(listeners.peer, endpoint, events.clone()));
    let http_task = listeners.http.map(|http| tokio::spawn(crate::http::serve(http, events.clone())));
    let control_task = tokio::spawn(accept_control(listeners.control, events));
    let mut notifier = crate::notify::Notifier::from_env();
    notifier.ready(daemon.service_status());
    let mut tick_every = daemon.tick_interval();
    let mut ticker = tokio::time::interval(tick_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut file_poll = tokio::time::interval(FILE_POLL);
    file_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    tokio::pin!(shutdown);
    let outcome = loop {
        let flush_in = daemon.flush_at().map(|at| Duration::from_millis(at.saturating_sub(daemon.now())));
        let result = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => daemon.handle(event),
                None => break Ok(()),
            },
            Some(round) = rounds.recv() => daemon.handle(Event::Probe(round)),
            _ = ticker.tick() => {
                notifier.tick(daemon.service_status());
                daemon.tick()
            }
            _ = file_poll.tick() => {
                daemon.poll_file();
                if daemon.plugins.has_unavailable() {
                    daemon.plugins.sync(&daemon.cluster, daemon.peer_connections());
                }
                Ok(())
            }
            () = tokio::time::sleep(flush_in.unwrap_or(Duration::from_secs(3_600))), if flush_in.is_some() => {
                daemon.flush()
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                notifier.stopping();
                break daemon.flush();
            }
        };
        if let Err(error) = result {
            tracing::error!(%error, "stopping: cannot persist state");
            break Err(error);
        }
        if daemon.tick_interval() != tick_every {
            tick_every = daemon.tick_interval();
            ticker = tokio::time::interval(tick_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        }
    };
    peer_task.abort();
    control_task.abort();
    if let Some(task) = http_task {
        task.abort();
    }
    scheduler_task.abort();
    daemon.links.close_all();
    for connection in daemon.inbound.drain(..) {
        connection.close();
    }
    if let Some(path) = &listeners.control_path {
        control::remove_socket(path);
    }
    outcome
}

impl Daemon {
    fn me(&self) -> NodeId {
        self.node.node_id
    }

    /// The core is ticked five times per heartbeat (5–100 ms), so timers
    /// fire close to when they are due.
    fn tick_interval(&self) -> Duration {
        Duration::from_millis((self.cluster.settings.heartbeat.as_millis() as u64 / 5).clamp(5, 100))
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn wall(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// What `systemctl status` shows (`STATUS=`): role, term, version.
    fn service_status(&self) -> String {
        let (term, version) = (self.core.term(), self.cluster.version);
        if !self.core.is_member() {
            return format!("not a member of the cluster in cluster.yaml (term {term}); waiting to be added");
        }
        let (live, members, need) = (self.core.live_members(), self.cluster.peers.len(), self.cluster.quorum_size());
        match self.core.role() {
            Role::Master => format!("master, term {term}, config version {version}, {live} of {members} members live"),
            _ if live < need => {
                format!(
                    "no quorum: {live} of {members} members reachable, {need} needed (term {term}, config version {version})"
                )
            }
            _ => match self.core.master() {
                Some(master) => format!("follower of {master}, term {term}, config version {version}"),
                None => format!("electing a master, term {term}, config version {version}"),
            },
        }
    }

    /// A scrape of `/metrics`.
    fn metrics_text(&mut self) -> String {
        use qu_core::config::DeliveryStatus;
        let count = |status| self.cluster.deliveries.values().filter(|d| d.status == status).count();
        let (memory_in_use, memory_budget) = self.plugins.runtime().memory_in_use();
        let snapshot = crate::metrics::Snapshot {
            role: match self.core.role() {
                Role::Master => "master",
                Role::Follower => "follower",
                Role::Candidate => "candidate",
            },
            term: self.core.term(),
            quorum: self.core.is_member() && self.core.live_members() >= self.cluster.quorum_size(),
            config_version: self.cluster.version,
            peers: self.cluster.peers.len(),
            peers_live: self.core.live_members(),
            checks: self
                .cluster
                .checks
                .iter()
                .map(|c| (c.name.clone(), c.id.clone(), self.cluster.check_state(&c.id).to_string()))
                .collect(),
            deliveries: [
                ("pending", count(DeliveryStatus::Pending)),
                ("delivered", count(DeliveryStatus::Delivered)),
                ("failed", count(DeliveryStatus::Failed)),
            ],
            plugin_memory_in_use: memory_in_use,
            plugin_memory_budget: memory_budget,
            plugin_calls: self.plugins.runtime().call_stats(),
        };
        self.metrics.render(snapshot)
    }

    fn tick(&mut self) -> Result<(), DaemonError> {
        if self.departing.as_ref().is_some_and(|(_, until)| self.now() >= *until) {
            self.departing = None;
            self.refresh_trust();
        }
        self.step(Input::Tick)?;
        self.fan_in();
        self.judge();
        self.deliver();
        self.watch_cluster();
        self.start_next_mutation()
    }

    // ----- events --------------------------------------------------------

    fn handle(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Control(event) => self.on_control_event(event),
            Event::Peer(event) => self.on_peer_event(event)?,
            Event::Delivery(DeliveryEvent::Attempt { key, attempt, result, took }) => {
                self.delivery_attempted(key, attempt, result, took);
            }
            Event::Delivery(DeliveryEvent::Notice { key, attempt, result }) => {
                self.notice_attempted(key, attempt, result)
            }
            Event::Delivery(DeliveryEvent::Deadman { result }) => self.deadman_called(result),
            Event::Probe(round) => {
                self.on_round(round);
                return Ok(());
            }
        }
        self.start_next_mutation()
    }

    fn on_control_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::Request { request, reply } => self.on_control(request, reply),
            ControlEvent::SubmitChecked { mutation, reply } => self.submit_checked(mutation, reply),
            ControlEvent::StatusFetched { summaries, reply } => {
                let mut view = self.status();
                if let Some(summaries) = summaries {
                    view.checks = self.check_views(&summaries, None);
                }
                let _ = reply.send(ControlResponse::Status(view));
            }
            ControlEvent::EditRefused { text } => self.edit_refused(&text),
            ControlEvent::Metrics { reply } => {
                let _ = reply.send(self.metrics_text());
            }
            ControlEvent::Invited { result, reply } => match result {
                Ok(peer) => self.submit(Mutation::AddPeer { peer }, Waiter::Control(reply)),
                Err(message) => {
                    let _ = reply.send(ControlResponse::Error { message });
                }
            },
        }
    }

    fn on_peer_event(&mut self, event: PeerEvent) -> Result<(), DaemonError> {
        match event {
            PeerEvent::Request { from, request, reply } => self.on_peer_request(from, request, reply)?,
            PeerEvent::Notice { from, notice } => self.on_peer_notice(from, notice)?,
            PeerEvent::Connected { node, connection } => self.links.connected(node, connection),
            PeerEvent::ConnectFailed { node, error } => {
                let now = self.now();
                self.links.failed(node, &error, now);
            }
            PeerEvent::Inbound { connection } => {
                self.inbound.retain(|c| !c.is_closed());
                let source = connection.remote_addr().ip();
                let strangers: Vec<_> = self.inbound.iter().filter(|c| c.peer_member().is_none()).collect();
                let from_source = strangers.iter().filter(|c| c.remote_addr().ip() == source).count();
                if connection.peer_member().is_none()
                    && (strangers.len() >= STRANGER_CONNECTIONS_MAX
                        || from_source >= STRANGER_CONNECTIONS_PER_SOURCE_MAX)
                {
                    let now = self.now();
                    self.refused_strangers += 1;
                    if self.refused_warned.is_none_or(|at| at + REFUSED_WARNING_MS <= now) {
                        tracing::warn!(
                            peer = %connection.remote_addr(),
                            "connections from keys that are not members are at their cap ({STRANGER_CONNECTIONS_MAX}, {STRANGER_CONNECTIONS_PER_SOURCE_MAX} per source address); closing new ones ({} so far)",
                            self.refused_strangers
                        );
                        self.refused_warned = Some(now);
                    }
                    connection.close();
                    return Ok(());
                }
                self.inbound.push(connection);
            }
        }
        Ok(())
    }

    fn on_peer_notice(&mut self, from: Caller, notice: PeerNotice) -> Result<(), DaemonError> {
        let Some(member) = from.node_id else { return Ok(()) };
        let msg = match notice {
            PeerNotice::Consensus(msg) => msg,
            PeerNotice::Entry(entry) => return self.on_entry(member, *entry),
            PeerNotice::Results(reports) => {
                // Timestamped on receipt, attributed to the TLS identity.
                if self.core.role() == Role::Master {
                    let now = self.now();
                    for report in &reports {
                        self.verdicts.record(member, report, now);
                    }
                }
                return Ok(());
            }
        };
        match self.verify_message(msg) {
            Ok(msg) => {
                tracing::trace!(peer = %member, kind = msg_kind(&msg), "received");
                self.step(Input::Receive { from: member, msg })?
            }
            Err(error) => tracing::warn!(peer = %member, %error, "dropped an invalid message"),
        }
        Ok(())
    }
}

fn msg_kind(msg: &Msg) -> &'static str {
    match msg {
        Msg::Heartbeat { .. } => "heartbeat",
        Msg::HeartbeatAck { .. } => "heartbeat-ack",
        Msg::PreVote { .. } => "pre-vote",
        Msg::PreVoteReply { .. } => "pre-vote-reply",
        Msg::Vote { .. } => "vote",
        Msg::VoteReply { .. } => "vote-reply",
        Msg::Replicate { .. } => "replicate",
        Msg::ReplicateAck { .. } => "replicate-ack",
        Msg::Pull => "pull",
        Msg::PullReply { .. } => "pull-reply",
        Msg::TimeoutNow { .. } => "timeout-now",
    }
}

/// Runs blocking work on the event loop's thread, on a multi-threaded
/// runtime telling it to move other tasks elsewhere first.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A check's alerts: its own plus the defaults, minus suppressed and
/// disabled ones; names, with `*` on defaults.
/// The names of `check`'s effective alerts, or of the default ones among
/// them (`defaults_only`).
fn effective_alerts(cluster: &ClusterConfig, check: &qu_core::config::Check, defaults_only: bool) -> Vec<String> {
    qu_core::alerting::effective_alerts(cluster, check)
        .into_iter()
        .filter(|a| a.default || !defaults_only)
        .map(|a| a.name.clone())
        .collect()
}

async fn accept_peers(listener: TcpListener, endpoint: Arc<Endpoint<Wire>>, events: mpsc::Sender<Event>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let handler = Arc::new(ToEventLoop { events: events.clone() });
    let (mut dropped, mut warned): (u64, Option<Instant>) = (0, None);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "peer listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            dropped += 1;
            if warned.is_none_or(|at| at.elapsed() >= Duration::from_millis(REFUSED_WARNING_MS)) {
                tracing::warn!(peer = %addr, "too many handshakes in progress; dropping connections ({dropped} so far)");
                warned = Some(Instant::now());
            }
            continue;
        };
        let (endpoint, handler, events) = (endpoint.clone(), handler.clone(), events.clone());
        tokio::spawn(async move {
            match endpoint.accept(tcp, handler).await {
                Ok(connection) => {
                    let _ = events.send(Event::Peer(PeerEvent::Inbound { connection })).await;
                }
                Err(error @ qu_transport::TransportError::Version { .. }) => {
                    tracing::warn!(peer = %addr, %error, "peer handshake refused")
                }
                Err(error) => tracing::debug!(peer = %addr, %error, "peer handshake failed"),
            }
            drop(permit);
        });
    }
}

async fn accept_control(listener: UnixListener, events: mpsc::Sender<Event>) {
    let clients = Arc::new(Semaphore::new(CONTROL_CLIENTS_MAX));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = clients.clone().acquire_owned().await else { return };
        let events = events.clone();
        tokio::spawn(async move {
            let response = match control::read_request(&mut stream).await {
                Ok(request) => {
                    let (reply, answer) = oneshot::channel();
                    if events.send(Event::Control(ControlEvent::Request { request, reply })).await.is_err() {
                        ControlResponse::Error { message: "the daemon is shutting down".into() }
                    } else {
                        answer.await.unwrap_or(ControlResponse::Error { message: "the daemon is shutting down".into() })
                    }
                }
                Err(refusal) => refusal,
            };
            control::write_response(&mut stream, &response).await;
            drop(permit);
        });
    }
}
