//! The event loop: one task owns the node's state and handles a closed set
//! of events in order. It feeds the consensus core and executes what the
//! core returns, in the order returned (a config is applied as part of
//! persisting it).

mod delivery;
mod join;
mod links;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use qu_core::config::{CheckStatus, ClusterConfig, Mutation, NodeConfig, Stamp, Timestamp, Transition};
use qu_core::consensus::{Core, Durable, Input, Msg, Output, ProposeError, Role, Snapshot};
use qu_core::monitor::{CheckState, CheckSummary, Report, Verdicts};
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_core::{Fingerprint, NodeId};
use qu_probe::Probes;
use qu_store::{DataDir, SECRET_FILE_MODE};
use qu_transport::{Caller, Connection, Endpoint, TrustStore};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use self::links::Links;
use crate::control::{self, ControlRequest, ControlResponse};
use crate::load::LoadedNode;
use crate::peer::{ToEventLoop, Wire};
use crate::scheduler::{self, Scheduled};
use crate::status::{CheckListItem, CheckView, PeerView, ProbeStats, SettingsView, StatusView};

/// Events queued for the loop before senders wait.
const EVENTS_MAX: usize = 4096;
/// TLS handshakes in progress at once on the peer listener.
const HANDSHAKES_MAX: usize = 64;
/// Control connections served at once.
const CONTROL_CLIENTS_MAX: usize = 64;
/// Mutations waiting for the master to be free.
const QUEUED_MUTATIONS_MAX: usize = 64;
/// Alert deliveries running at once (per master).
/// How often a hand edit of cluster.yaml is looked for.
const FILE_POLL: Duration = Duration::from_secs(2);

/// Already-bound listeners (tests bind port 0 and pass them in).
#[derive(Debug)]
pub struct Listeners {
    pub peer: TcpListener,
    pub control: UnixListener,
    /// Removed at shutdown if it is still our socket.
    pub control_path: Option<PathBuf>,
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

pub(crate) enum Event {
    Control {
        request: ControlRequest,
        reply: oneshot::Sender<ControlResponse>,
    },
    PeerRequest {
        from: Caller,
        request: PeerRequest,
        reply: oneshot::Sender<PeerResponse>,
    },
    PeerNotice {
        from: Caller,
        notice: PeerNotice,
    },
    Connected {
        node: NodeId,
        connection: Connection<Wire>,
    },
    ConnectFailed {
        node: NodeId,
        error: String,
    },
    Inbound {
        connection: Connection<Wire>,
    },
    /// A node passed the join handshake (run on a helper task): add it.
    Invited {
        result: Result<qu_core::config::Peer, String>,
        reply: oneshot::Sender<ControlResponse>,
    },
    /// The master refused a hand edit for good (not for want of quorum).
    EditRefused {
        text: String,
    },
    /// The master's check summaries, fetched for a `qu status` on a follower.
    StatusFetched {
        summaries: Option<Vec<CheckSummary>>,
        reply: oneshot::Sender<ControlResponse>,
    },
    /// A change checked off the event loop (by a plugin's validation):
    /// check it against the config again and propose it.
    SubmitChecked {
        mutation: Mutation,
        reply: oneshot::Sender<ControlResponse>,
    },
    /// One attempt to deliver an alert finished.
    DeliveryAttempt {
        key: String,
        attempt: u32,
        result: Result<(), qu_plugin::CallError>,
        took: Duration,
    },
}

/// Prefix of refusals that retrying cannot fix (the change itself is wrong).
const REFUSED: &str = "change refused: ";

/// Who is waiting for a mutation's outcome.
enum Waiter {
    Control(oneshot::Sender<ControlResponse>),
    Peer(oneshot::Sender<PeerResponse>),
    Internal,
}

impl Waiter {
    fn finish(self, result: Result<(u64, u64), String>, node_id: Option<NodeId>) {
        match (self, result) {
            (Waiter::Control(reply), Ok((term, version))) => {
                let _ = reply.send(ControlResponse::Committed { term, version, node_id });
            }
            (Waiter::Control(reply), Err(message)) => {
                let _ = reply.send(ControlResponse::Error { message });
            }
            (Waiter::Peer(reply), Ok((term, version))) => {
                let _ = reply.send(PeerResponse::Committed { term, version });
            }
            (Waiter::Peer(reply), Err(reason)) => {
                let _ = reply.send(PeerResponse::Refused { reason });
            }
            (Waiter::Internal, _) => {}
        }
    }
}

struct Pending {
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
    /// The text of cluster.yaml as we last wrote or loaded it.
    written: Arc<str>,
    /// A hand edit already reported as unparseable (so it is logged once).
    bad_edit: Option<String>,
    /// A hand edit waiting for a master with quorum.
    pending_edit: Option<(String, ClusterConfig)>,
    next_request: u64,
    inflight: Option<Pending>,
    queue: VecDeque<(Mutation, Waiter)>,
    /// A node being added, trusted for the duration of its add.
    joining: Option<qu_core::config::Peer>,
    /// A master that removed itself, still trusted (until the given time)
    /// so its removal can be acknowledged and committed.
    departing: Option<(qu_core::config::Peer, u64)>,
    /// The checks the scheduler runs (replaced when the config changes).
    schedule: watch::Sender<Arc<Vec<Scheduled>>>,
    /// The master's verdict state (fed only while this node is master).
    verdicts: Verdicts,
    /// This node's latest result per check, not yet delivered to the master.
    unsent: BTreeMap<String, Report>,
    next_fanin: u64,
    /// Probes finished since the last tick (filled by the scheduler).
    finished: scheduler::Finished,
    probes_run: u64,
    /// Rounds the scheduler skipped since start (see `scheduler::Rounds`).
    probes_skipped: u64,
    /// Start lateness of the most recent probes, in microseconds.
    lateness_us: VecDeque<u64>,
    /// Built-in and added plugins, and the runtime that runs them.
    plugins: Arc<crate::plugins::Registry>,
    /// Alert delivery: the pure dispatcher and the sends it runs.
    delivery: delivery::Delivery,
}

/// Probes whose lateness `qu status --json` summarises.
const LATENESS_WINDOW: usize = 10_000;

/// How long a follower's `qu status` waits for the master's check view.
const STATUS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often results are batched to the master, in milliseconds.
const FANIN_MS: u64 = 200;
/// Checks whose unsent results a node keeps while no master is reachable.
const UNSENT_REPORTS_MAX: usize = qu_core::limits::CHECKS_MAX;

/// Runs a node until `shutdown` resolves. Returns after the listeners are
/// closed, connections are dropped and the control socket is removed.
pub async fn run(
    loaded: LoadedNode,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    let LoadedNode { data, node, identity, cluster, durable } = loaded;
    let trust = TrustStore::new(cluster.peers.iter().map(|p| (p.fingerprint.clone(), p.node_id)));
    let fingerprint = identity.fingerprint.clone();
    let endpoint = Arc::new(Endpoint::<Wire>::new(identity, trust.clone())?.with_source_ip(Some(node.bind)));
    let (events, mut inbox) = mpsc::channel(EVENTS_MAX);
    let started = Instant::now();
    let (core, boot) = Core::new(node.node_id, durable, cluster.snapshot(), 1, rand::random());
    let written: Arc<str> = qu_store::read_text(&data.cluster_yaml()).unwrap_or_default().into();
    let plugins = crate::plugins::Registry::new(&data).map_err(DaemonError::Plugins)?;
    plugins.clean_up(&cluster);
    plugins.load_built_in();
    let mut daemon = Daemon {
        links: Links::new(node.node_id),
        data,
        node,
        fingerprint,
        core,
        cluster,
        trust,
        endpoint: endpoint.clone(),
        events: events.clone(),
        inbound: Vec::new(),
        started,
        written,
        bad_edit: None,
        pending_edit: None,
        parsed: None,
        next_request: 1,
        inflight: None,
        queue: VecDeque::new(),
        joining: None,
        departing: None,
        schedule: watch::channel(Arc::new(Vec::new())).0,
        verdicts: Verdicts::default(),
        unsent: BTreeMap::new(),
        next_fanin: 0,
        finished: scheduler::Finished::default(),
        probes_run: 0,
        probes_skipped: 0,
        lateness_us: VecDeque::new(),
        plugins,
        delivery: delivery::Delivery::new(rand::random()),
    };
    tracing::info!(
        term = daemon.core.term(),
        version = daemon.cluster.version,
        members = daemon.cluster.peers.len(),
        "config version {} loaded (term {})",
        daemon.cluster.version,
        daemon.cluster.term
    );
    if !daemon.core.is_member() {
        tracing::warn!("this node is not a member of the cluster in cluster.yaml; it answers only the join handshake");
    }
    daemon.execute(boot)?;
    daemon.refresh_links();

    daemon.schedule.send_replace(Arc::new(scheduler::scheduled(&daemon.cluster)));
    daemon.plugins.sync(&daemon.cluster, daemon.peer_connections());
    let scheduler_task = tokio::spawn(scheduler::run(
        Probes::new(),
        Some(daemon.plugins.clone()),
        daemon.schedule.subscribe(),
        daemon.finished.clone(),
    ));
    let peer_task = tokio::spawn(accept_peers(listeners.peer, endpoint, events.clone()));
    let control_task = tokio::spawn(accept_control(listeners.control, events));
    let mut tick_every = daemon.tick_interval();
    let mut ticker = tokio::time::interval(tick_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut file_poll = tokio::time::interval(FILE_POLL);
    file_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    tokio::pin!(shutdown);
    let outcome = loop {
        let result = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => daemon.handle(event),
                None => break Ok(()),
            },
            _ = ticker.tick() => daemon.tick(),
            _ = file_poll.tick() => {
                daemon.poll_file();
                if daemon.plugins.has_unavailable() {
                    daemon.plugins.sync(&daemon.cluster, daemon.peer_connections());
                }
                Ok(())
            }
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break Ok(());
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

    fn step(&mut self, input: Input) -> Result<(), DaemonError> {
        let now = self.now();
        let out = self.core.step(now, input);
        self.execute(out)
    }

    fn tick(&mut self) -> Result<(), DaemonError> {
        if self.departing.as_ref().is_some_and(|(_, until)| self.now() >= *until) {
            self.departing = None;
            self.refresh_trust();
        }
        self.step(Input::Tick)?;
        self.collect_probes();
        self.fan_in();
        self.judge();
        self.deliver();
        self.start_next_mutation()
    }

    // ----- alerts --------------------------------------------------------

    /// Whether this node may send alerts: master with a lease. (The
    /// dispatcher sends nothing until a commit of this tenure, so a master
    /// that has not made its fresh commit yet sends nothing either.)
    fn may_act(&self) -> bool {
        // The lease as of now, not only as of the core's last step.
        self.core.role() == Role::Master && self.core.can_serve() && self.core.lease_valid_at(self.now())
    }

    /// Every tick: tells the dispatcher whether this node may act (it
    /// aborts sends on the edge) and lets it start what is due.
    fn deliver(&mut self) {
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        let results = self.delivery.may_act(now, acting, &cx);
        self.propose_results(results);
    }

    /// A proposal of this master committed: the applied config is now
    /// the committed one, the only one the dispatcher acts on.
    fn delivery_committed(&mut self, id: qu_core::consensus::ConfigId) {
        if self.cluster.version != id.version || self.cluster.term != id.term {
            return;
        }
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        let mut results = self.delivery.may_act(now, acting, &cx);
        results.extend(self.delivery.committed(now, &cx));
        self.propose_results(results);
    }

    fn delivery_attempted(
        &mut self,
        key: String,
        attempt: u32,
        result: Result<(), qu_plugin::CallError>,
        took: Duration,
    ) {
        let (now, acting, master) = (self.now(), self.may_act(), self.me());
        let cx = delivery::Context { cluster: &self.cluster, master, plugins: &self.plugins, events: &self.events };
        // Whether it may still act first: an answer between two ticks must
        // not start the next send on a lease that ran out meanwhile.
        let mut results = self.delivery.may_act(now, acting, &cx);
        results.extend(self.delivery.attempted(now, key, attempt, result, took, &cx));
        self.propose_results(results);
    }

    /// Proposes finished deliveries at once (the shorter the time between a
    /// send and its commit, the rarer a re-send after a crash). With the
    /// queue full they wait: the dispatcher proposes them again.
    fn propose_results(&mut self, results: Vec<qu_core::config::DeliveryResult>) {
        if !results.is_empty() && self.queue.len() < QUEUED_MUTATIONS_MAX / 2 {
            self.queue.push_back((Mutation::FinishDeliveries { results }, Waiter::Internal));
        }
    }

    fn alert_list(&self) -> Vec<crate::control::AlertListItem> {
        use qu_core::config::DeliveryStatus;
        let check_name =
            |id: &str| self.cluster.checks.iter().find(|c| c.id == id).map_or(id.to_string(), |c| c.name.clone());
        self.cluster
            .alerts
            .iter()
            .map(|a| {
                let mine: Vec<(&String, &qu_core::config::Delivery)> =
                    self.cluster.deliveries.iter().filter(|(_, d)| d.alert_id == a.id).collect();
                let pending = mine.iter().filter(|(_, d)| d.status == DeliveryStatus::Pending).count();
                let last = mine
                    .iter()
                    .filter(|(_, d)| d.status != DeliveryStatus::Pending)
                    .max_by_key(|(_, d)| d.finished.map(|f| f.unix_millis()))
                    .map(|(key, d)| crate::control::DeliveryView {
                        key: (*key).clone(),
                        check: check_name(&d.check_id),
                        verb: qu_core::alerting::verb(d.from, d.to).to_string(),
                        status: if d.status == DeliveryStatus::Delivered {
                            "delivered".into()
                        } else {
                            "failed".into()
                        },
                        attempts: d.attempts,
                        error: d.error.clone(),
                        finished: d.finished.map(|f| f.to_string()),
                    });
                crate::control::AlertListItem {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    kind: a.kind.clone(),
                    config: crate::alerts::masked(&a.config),
                    default: a.default,
                    disabled: a.disabled,
                    subject_template: a.subject_template.clone(),
                    body_template: a.body_template.clone(),
                    pending,
                    last,
                }
            })
            .collect()
    }

    /// Validates an alert's templates and, with its sink plugin (off the
    /// event loop), its settings; then proposes the change.
    fn submit_alert(
        &mut self,
        mutation: Mutation,
        alert: qu_core::config::Alert,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let templates =
            crate::alerts::validate_templates(alert.subject_template.as_deref(), alert.body_template.as_deref());
        if let Err(problem) = templates {
            let _ = reply.send(ControlResponse::Error { message: format!("{REFUSED}{problem}") });
            return;
        }
        if !self.cluster.has_sink_plugin(&alert.kind) {
            // The config's own validation words the refusal.
            self.submit_checked(mutation, reply);
            return;
        }
        let (registry, events) = (self.plugins.clone(), self.events.clone());
        tokio::spawn(async move {
            let plugin = match registry.get_ready(&alert.kind, Duration::from_secs(30)).await {
                Ok(plugin) => plugin,
                Err(reason) => {
                    let message = format!("{REFUSED}sink {} is not usable on this node: {reason}", alert.kind);
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                }
            };
            let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
            let message = match registry.runtime().validate_sink(&plugin, &settings).await {
                Ok(()) => {
                    let _ = events.send(Event::SubmitChecked { mutation, reply }).await;
                    return;
                }
                Err(qu_plugin::CallError::Plugin { plugin, error }) => format!("{REFUSED}{plugin}: {error}"),
                Err(other) => format!("{REFUSED}{other}"),
            };
            let _ = reply.send(ControlResponse::Error { message });
        });
    }

    /// Sends synthetic test events through real sinks from this node (no
    /// quorum needed, nothing committed).
    fn send_tests(
        &self,
        sends: Vec<(qu_core::config::Alert, crate::alerts::Context)>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let registry = self.plugins.clone();
        let at = self.wall();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for (alert, mut context) in sends {
                context.transition = format!("test-{}", at.unix_millis());
                let key = format!("{}/{}", context.transition, alert.id);
                let (event, template_error) = crate::alerts::event(&context, &alert, &key, at);
                let started = std::time::Instant::now();
                let sent = match registry.get_ready(&alert.kind, Duration::from_secs(30)).await {
                    Ok(plugin) => {
                        let settings: Vec<(String, String)> = alert.config.clone().into_iter().collect();
                        registry.runtime().send(&plugin, &event, &settings).await.map_err(|e| e.to_string())
                    }
                    Err(reason) => Err(format!("sink {} is not usable on this node: {reason}", alert.kind)),
                };
                let ok = sent.is_ok();
                let mut error = sent.err().unwrap_or_default();
                if let Some(problem) = template_error {
                    let note = format!("the default rendering was used: {problem}");
                    error = if error.is_empty() { note } else { format!("{error}; {note}") };
                }
                if ok {
                    tracing::info!(alert = %alert.name, "alert {}: test event delivered", alert.name);
                } else {
                    tracing::warn!(alert = %alert.name, "alert {}: test event not delivered: {error}", alert.name);
                }
                results.push(crate::control::TestResult {
                    alert: alert.name.clone(),
                    ok,
                    error,
                    millis: started.elapsed().as_millis() as u64,
                });
            }
            let _ = reply.send(ControlResponse::Tested { results });
        });
    }

    /// Executes the core's outputs in the order the core gave them.
    fn execute(&mut self, outputs: Vec<Output>) -> Result<(), DaemonError> {
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

    fn log_role(&mut self, term: u64, role: Role, master: Option<NodeId>) {
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
                waiter.finish(Err(format!("the master stepped down (term {term}); retry")), None);
            }
        }
    }

    fn persist_durable(&mut self, durable: &Durable) -> Result<(), DaemonError> {
        let text = serde_yaml::to_string(durable).expect("durable state serialises");
        qu_store::write_atomic(&self.data.state_yaml(), text.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "state.yaml", source })
    }

    fn persist_config(&mut self, snapshot: &Snapshot) -> Result<(), DaemonError> {
        // The config behind this snapshot was usually parsed (received) or
        // built (proposed) a moment ago; parse again only if not.
        let cluster = match self.parsed.take() {
            Some((text, config)) if Arc::ptr_eq(&text, &snapshot.content) => config,
            _ => ClusterConfig::parse(&snapshot.content).expect("snapshots are validated before the core sees them"),
        };
        self.set_aside_unreplicated_edit(&cluster);
        qu_store::write_atomic(&self.data.cluster_yaml(), snapshot.content.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "cluster.yaml", source })?;
        self.written = snapshot.content.clone();
        self.bad_edit = None;
        let members_changed = cluster.peers != self.cluster.peers;
        if let Some(master) = self.core.master()
            && master != self.me()
            && cluster.peer(&master).is_none()
            && let Some(peer) = self.cluster.peer(&master)
        {
            let until = self.now() + 3 * cluster.settings.dead_after.as_millis() as u64;
            self.departing = Some((peer.clone(), until));
        }
        self.cluster = cluster;
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
        self.plugins.sync(&self.cluster, self.peer_connections());
        self.schedule.send_replace(Arc::new(scheduler::scheduled(&self.cluster)));
        if self.core.role() == Role::Master {
            self.sync_verdicts();
        }
        Ok(())
    }

    /// Connections to the other members (to fetch plugin blobs from).
    fn peer_connections(&self) -> Vec<qu_transport::Connection<crate::peer::Wire>> {
        self.cluster
            .peers
            .iter()
            .filter(|p| p.node_id != self.me())
            .filter_map(|p| self.links.connection(&p.node_id))
            .collect()
    }

    fn sync_verdicts(&mut self) {
        let checks: Vec<(String, u64, CheckState)> = self
            .cluster
            .checks
            .iter()
            .filter(|c| !c.disabled)
            .map(|c| (c.id.clone(), c.interval.as_millis() as u64, self.cluster.check_state(&c.id)))
            .collect();
        let now = self.now();
        self.verdicts.sync(&checks, now);
    }

    /// Sends this node's latest results to the master (or, on the master,
    /// hands them to its verdicts). Undelivered results stay for the next try.
    fn fan_in(&mut self) {
        let now = self.now();
        if now < self.next_fanin || self.unsent.is_empty() {
            return;
        }
        self.next_fanin = now + FANIN_MS;
        if self.core.role() == Role::Master {
            let me = self.me();
            for report in std::mem::take(&mut self.unsent).into_values() {
                self.verdicts.record(me, &report, now);
            }
            return;
        }
        let Some(master) = self.core.master().filter(|m| self.core.is_live(m)) else { return };
        let batch: Vec<Report> = self.unsent.values().cloned().collect();
        let endpoint = self.endpoint.clone();
        match self.links.send(master, PeerNotice::Results(batch), now, &endpoint, &self.events) {
            Ok(()) => self.unsent.clear(),
            Err(error) => tracing::debug!(%master, %error, "results not delivered yet"),
        }
    }

    /// Takes the probes that finished since the last tick.
    fn collect_probes(&mut self) {
        let rounds = std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()));
        self.probes_skipped += rounds.skipped;
        for (report, lateness) in rounds.probed {
            self.probes_run += 1;
            if self.lateness_us.len() >= LATENESS_WINDOW {
                self.lateness_us.pop_front();
            }
            self.lateness_us.push_back(lateness.as_micros().min(u64::MAX as u128) as u64);
            if lateness > Duration::from_millis(50) {
                tracing::debug!(check = %report.check_id, lateness_ms = lateness.as_millis() as u64, "probe started late");
            }
            if self.unsent.len() < UNSENT_REPORTS_MAX || self.unsent.contains_key(&report.check_id) {
                self.unsent.insert(report.check_id.clone(), report);
            }
        }
    }

    /// The master turns verdicts that held for `hysteresis` rounds into
    /// committed transitions.
    fn judge(&mut self) {
        if !self.core.can_serve() {
            return;
        }
        let members = self.core.config().members.clone();
        let now = self.now();
        let since = self.wall();
        let transitions: Vec<Transition> = self
            .verdicts
            .evaluate(&members, self.cluster.settings.hysteresis, now)
            .into_iter()
            .map(|proposal| Transition {
                check_id: proposal.check_id,
                status: CheckStatus {
                    state: proposal.to,
                    from: proposal.from,
                    since,
                    transition: String::new(),
                    ok: proposal.ok,
                    failing: proposal.failing,
                    total: proposal.total,
                    detail: proposal.detail,
                },
            })
            .collect();
        if !transitions.is_empty() {
            self.queue.push_back((Mutation::RecordTransitions { transitions }, Waiter::Internal));
        }
    }

    /// Trust exactly the members (and a node being added), and close every
    /// connection to a key that is no longer trusted.
    fn refresh_trust(&mut self) {
        let mut trusted: Vec<(Fingerprint, NodeId)> =
            self.cluster.peers.iter().map(|p| (p.fingerprint.clone(), p.node_id)).collect();
        if let Some(peer) = &self.joining {
            trusted.push((peer.fingerprint.clone(), peer.node_id));
        }
        if let Some((peer, _)) = &self.departing {
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

    fn refresh_links(&mut self) {
        let mut peers: Vec<qu_core::config::Peer> = self.cluster.peers.clone();
        peers.extend(self.joining.clone());
        peers.extend(self.departing.as_ref().map(|(peer, _)| peer.clone()));
        self.links.set_peers(&peers);
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        let now = self.now();
        let pulling = matches!(msg, Msg::Pull);
        let kind = msg_kind(&msg);
        match self.links.send(to, PeerNotice::Consensus(msg), now, &self.endpoint, &self.events) {
            Err(error) if pulling => tracing::warn!(peer = %to, "replicate: pull from {to}: {error}"),
            Err(error) => tracing::debug!(peer = %to, kind, %error, "message dropped"),
            Ok(()) => tracing::trace!(peer = %to, kind, "sent"),
        }
    }

    // ----- events --------------------------------------------------------

    fn handle(&mut self, event: Event) -> Result<(), DaemonError> {
        match event {
            Event::Control { request, reply } => self.on_control(request, reply),
            Event::PeerRequest { from, request, reply } => self.on_peer_request(from, request, reply)?,
            Event::PeerNotice { from, notice } => {
                let Some(member) = from.node_id else { return Ok(()) };
                let msg = match notice {
                    PeerNotice::Consensus(msg) => msg,
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
            }
            Event::Connected { node, connection } => self.links.connected(node, connection),
            Event::ConnectFailed { node, error } => {
                let now = self.now();
                self.links.failed(node, &error, now);
            }
            Event::Inbound { connection } => {
                self.inbound.retain(|c| !c.is_closed());
                self.inbound.push(connection);
            }
            Event::SubmitChecked { mutation, reply } => self.submit_checked(mutation, reply),
            Event::DeliveryAttempt { key, attempt, result, took } => {
                self.delivery_attempted(key, attempt, result, took);
                if self.core.can_serve() {
                    self.start_next_mutation()?;
                }
            }
            Event::StatusFetched { summaries, reply } => {
                let mut view = self.status();
                if let Some(summaries) = summaries {
                    view.checks = self.check_views(&summaries, None);
                }
                let _ = reply.send(ControlResponse::Status(view));
            }
            Event::EditRefused { text } => {
                self.pending_edit = None;
                self.bad_edit = Some(text);
            }
            Event::Invited { result, reply } => match result {
                Ok(peer) => self.submit(Mutation::AddPeer { peer }, Waiter::Control(reply)),
                Err(message) => {
                    let _ = reply.send(ControlResponse::Error { message });
                }
            },
        }
        self.start_next_mutation()
    }

    /// A snapshot from the network is re-derived from its content: it must
    /// parse, validate, carry the id it claims and be in canonical form.
    fn verify_message(&mut self, msg: Msg) -> Result<Msg, String> {
        Ok(match msg {
            Msg::Replicate { term, snapshot, sent_at } => {
                Msg::Replicate { term, snapshot: self.verify_snapshot(snapshot)?, sent_at }
            }
            Msg::PullReply { snapshot } => Msg::PullReply { snapshot: self.verify_snapshot(snapshot)? },
            other => other,
        })
    }

    fn verify_snapshot(&mut self, snapshot: Snapshot) -> Result<Snapshot, String> {
        let config = ClusterConfig::parse(&snapshot.content).map_err(|e| e.to_string())?;
        let rebuilt = config.snapshot();
        if rebuilt.id != snapshot.id || (snapshot.id.version != 0 && rebuilt.content != snapshot.content) {
            return Err(format!("snapshot {} does not match its content", snapshot.id));
        }
        self.parsed = Some((rebuilt.content.clone(), config));
        Ok(rebuilt)
    }

    fn on_peer_request(
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
            PeerRequest::JoinHello { proof, cluster_yaml } => self.on_join_hello(&from, &proof, &cluster_yaml)?,
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

    fn not_master_reason(&self) -> String {
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

    // ----- mutations -----------------------------------------------------

    /// Takes a mutation from a local operator or a member: the master queues
    /// it; a follower forwards an operator's mutation to the master.
    fn submit(&mut self, mutation: Mutation, waiter: Waiter) {
        if self.core.role() == Role::Master {
            if self.queue.len() >= QUEUED_MUTATIONS_MAX {
                waiter.finish(Err("the master has too many changes queued; retry".into()), None);
            } else {
                self.queue.push_back((mutation, waiter));
            }
            return;
        }
        let Waiter::Control(reply) = waiter else {
            waiter.finish(Err(self.not_master_reason()), None);
            return;
        };
        let new_member = mutation.new_member();
        match self
            .core
            .master()
            .filter(|m| self.core.is_live(m))
            .and_then(|m| self.links.connection(&m).map(|c| (m, c)))
        {
            Some((master, connection)) => {
                let timeout = self.commit_wait();
                tokio::spawn(async move {
                    let answer = match connection.request(PeerRequest::propose(&mutation), timeout).await {
                        Ok(PeerResponse::Committed { term, version }) => {
                            ControlResponse::Committed { term, version, node_id: new_member }
                        }
                        Ok(PeerResponse::Refused { reason }) => propose_failed(&master, reason),
                        Ok(other) => propose_failed(&master, format!("unexpected answer {other:?}")),
                        Err(error) => propose_failed(&master, error.to_string()),
                    };
                    let _ = reply.send(answer);
                });
            }
            None => {
                let reason = self.not_master_reason();
                tracing::warn!("propose to master: {reason}");
                let _ = reply.send(ControlResponse::Error { message: format!("propose to master: {reason}") });
            }
        }
    }

    fn commit_wait(&self) -> Duration {
        self.cluster.settings.dead_after * 3 + self.cluster.settings.heartbeat * 2
    }

    /// Starts the next queued mutation when this master is free to commit.
    fn start_next_mutation(&mut self) -> Result<(), DaemonError> {
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
                    waiter.finish(Err(format!("{REFUSED}{reason}")), None);
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
            self.inflight = Some(Pending { request, mutation, waiter });
            let snapshot = next.snapshot();
            self.parsed = Some((snapshot.content.clone(), next));
            self.step(Input::Propose { request, snapshot, new_member })?;
        }
        Ok(())
    }

    fn proposal_done(&mut self, request: u64, result: Result<qu_core::consensus::ConfigId, ProposeError>) {
        let Some(pending) = self.inflight.take_if(|p| p.request == request) else { return };
        let new_member = pending.mutation.new_member();
        if new_member.is_some() {
            self.joining = None;
            self.refresh_trust();
        }
        if let Mutation::RecordTransitions { transitions } = &pending.mutation {
            let names: std::collections::HashMap<&str, &str> =
                self.cluster.checks.iter().map(|c| (c.id.as_str(), c.name.as_str())).collect();
            for Transition { check_id, status } in transitions {
                let committed = self.cluster.check_state(check_id);
                self.verdicts.settled(check_id, committed);
                if result.is_err() || committed != status.state {
                    continue;
                }
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
                tracing::info!(version = id.version, term = id.term, change = %pending.mutation.describe(), "config version {} committed", id.version);
                pending.waiter.finish(Ok((id.term, id.version)), new_member);
                self.delivery_committed(id);
            }
            Err(error) => {
                tracing::warn!(change = %pending.mutation.describe(), %error, "change not committed");
                pending.waiter.finish(Err(error.to_string()), None);
            }
        }
        if let Some((text, _)) = &self.pending_edit
            && **text == *self.written
        {
            self.pending_edit = None;
        }
    }

    // ----- hand edits ----------------------------------------------------

    /// A newer version is about to replace cluster.yaml while it holds a
    /// hand edit that has not been replicated: keep the edit beside it
    /// rather than lose it, and say so.
    fn set_aside_unreplicated_edit(&mut self, incoming: &ClusterConfig) {
        let path = self.data.cluster_yaml();
        let Ok(text) = qu_store::read_text(&path) else { return };
        if *text == *self.written || text.trim().is_empty() {
            return;
        }
        // The incoming version may be this very edit, committed.
        if let Ok(mut edited) = ClusterConfig::parse(&text) {
            edited.version = incoming.version;
            edited.term = incoming.term;
            edited.updated_at = incoming.updated_at;
            edited.updated_by = incoming.updated_by;
            if edited == *incoming {
                return;
            }
        }
        let incoming = incoming.version;
        let aside = self.data.root().join(format!("cluster.yaml.unreplicated-{}", self.cluster.version));
        match qu_store::write_atomic(&aside, text.as_bytes(), SECRET_FILE_MODE) {
            Ok(()) => tracing::warn!(
                saved = %aside.display(),
                "manual-edit: version {incoming} arrived before the hand edit was replicated; the edit is saved as {} — re-apply it to the new cluster.yaml",
                aside.display()
            ),
            Err(error) => tracing::warn!(%error, "manual-edit: could not save the unreplicated hand edit aside"),
        }
        self.pending_edit = None;
    }

    /// Looks for a hand edit of cluster.yaml and forwards it as a replace.
    fn poll_file(&mut self) {
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
        let already_pending = self.pending_edit.as_ref().is_some_and(|(t, _)| *t == text);
        if already_pending && self.inflight.is_some() {
            return;
        }
        if !already_pending {
            tracing::info!("manual-edit: cluster.yaml changed externally — replicating via master");
        }
        self.pending_edit = Some((text.clone(), edited.clone()));
        let mutation = Mutation::Replace { config: Box::new(edited), base_version: self.cluster.version };
        let (reply, answer) = oneshot::channel();
        self.submit(mutation, Waiter::Control(reply));
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Ok(ControlResponse::Error { message }) = answer.await {
                if message.contains(REFUSED) {
                    tracing::warn!("manual-edit: not replicated: {message}; fix cluster.yaml and save again");
                    let _ = events.send(Event::EditRefused { text }).await;
                } else {
                    tracing::warn!("manual-edit: not replicated yet: {message}; retrying while the edit stands");
                }
            }
        });
    }

    // ----- control -------------------------------------------------------

    fn on_control(&mut self, request: ControlRequest, reply: oneshot::Sender<ControlResponse>) {
        let answer = match request {
            ControlRequest::Status => {
                // A follower shows the master's view of the checks.
                let master = self.core.master().filter(|m| *m != self.me() && self.core.is_live(m));
                let connection = master.and_then(|m| self.links.connection(&m));
                match connection {
                    Some(connection) if !self.cluster.checks.is_empty() => {
                        let events = self.events.clone();
                        tokio::spawn(async move {
                            let answer = connection.request(PeerRequest::CheckSummaries, STATUS_FETCH_TIMEOUT).await;
                            let summaries = match answer {
                                Ok(PeerResponse::CheckSummaries { summaries }) => Some(summaries),
                                _ => None,
                            };
                            let _ = events.send(Event::StatusFetched { summaries, reply }).await;
                        });
                        return;
                    }
                    _ => ControlResponse::Status(self.status()),
                }
            }
            ControlRequest::NodeList => ControlResponse::Nodes { peers: self.peer_views() },
            ControlRequest::Settings => ControlResponse::Settings(self.settings_view()),
            ControlRequest::SettingsSet { key, value } => {
                self.submit_checked(Mutation::SetSetting { key, value }, reply);
                return;
            }
            ControlRequest::CheckList => ControlResponse::Checks { checks: self.check_list() },
            ControlRequest::CheckAdd { mut check } => {
                check.id = format!("c{:07x}", rand::random::<u32>() & 0x0fff_ffff);
                let (kind, target, settings) = (check.kind.clone(), check.target.clone(), check.settings.clone());
                self.submit_validated(Mutation::AddCheck { check }, &kind, target, settings, reply);
                return;
            }
            ControlRequest::CheckEdit { check, changes } => {
                let existing = self.cluster.checks.iter().find(|c| c.id == check || c.name == check).cloned();
                let mutation = Mutation::EditCheck { check, changes: changes.clone() };
                match existing {
                    Some(existing) => {
                        let target = changes.target.clone().unwrap_or(existing.target.clone());
                        let mut settings = existing.settings.clone();
                        for (key, value) in &changes.settings {
                            if value.is_empty() {
                                settings.remove(key);
                            } else {
                                settings.insert(key.clone(), value.clone());
                            }
                        }
                        self.submit_validated(mutation, &existing.kind, target, settings, reply);
                    }
                    None => self.submit_checked(mutation, reply),
                }
                return;
            }
            ControlRequest::AlertList => ControlResponse::Alerts { alerts: self.alert_list() },
            ControlRequest::AlertAdd { mut alert } => {
                alert.id = format!("a{:07x}", rand::random::<u32>() & 0x0fff_ffff);
                let checked = (*alert).clone();
                self.submit_alert(Mutation::AddAlert { alert }, checked, reply);
                return;
            }
            ControlRequest::AlertEdit { alert, changes } => {
                let Some(mut merged) = self.cluster.alerts.iter().find(|a| a.id == alert || a.name == alert).cloned()
                else {
                    self.submit_checked(Mutation::EditAlert { alert, changes }, reply);
                    return;
                };
                for (key, value) in &changes.config {
                    if value.is_empty() {
                        merged.config.remove(key);
                    } else {
                        merged.config.insert(key.clone(), value.clone());
                    }
                }
                if let Some(subject) = &changes.subject_template {
                    merged.subject_template = (!subject.is_empty()).then(|| subject.clone());
                }
                if let Some(body) = &changes.body_template {
                    merged.body_template = (!body.is_empty()).then(|| body.clone());
                }
                self.submit_alert(Mutation::EditAlert { alert, changes }, merged, reply);
                return;
            }
            ControlRequest::AlertRemove { alert } => {
                self.submit_checked(Mutation::RemoveAlert { alert }, reply);
                return;
            }
            ControlRequest::AlertTest { alert } => {
                let Some(alert) = self.cluster.alerts.iter().find(|a| a.id == alert || a.name == alert).cloned() else {
                    let message = format!("no alert has the name or id `{alert}` (see `qu alert list`)");
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                };
                let check = qu_core::config::Check {
                    id: "test".into(),
                    name: "qu-alert-test".into(),
                    kind: "test".into(),
                    target: format!("alert {}", alert.name),
                    interval: Duration::from_secs(30),
                    timeout: Duration::from_secs(10),
                    settings: BTreeMap::new(),
                    alert_ids: vec![],
                    suppress_alert_ids: vec![],
                    disabled: false,
                };
                let detail = "a test event from `qu alert test`; nothing is wrong";
                let (master, at) = (self.me().to_string(), self.wall());
                let context = crate::alerts::context(
                    &check,
                    &alert,
                    CheckState::Up,
                    CheckState::Down,
                    (0, 0, 0),
                    detail,
                    &master,
                    at,
                    "test",
                    true,
                );
                self.send_tests(vec![(alert, context)], reply);
                return;
            }
            ControlRequest::CheckTest { check, state } => {
                let Some(check) = self.cluster.check(&check).cloned() else {
                    let message = format!("no check has the name or id `{check}` (see `qu check list`)");
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                };
                let (from, to) = match state.as_str() {
                    "down" => (CheckState::Up, CheckState::Down),
                    "up" => (CheckState::Unknown, CheckState::Up),
                    "recovered" => (CheckState::Down, CheckState::Up),
                    other => {
                        let message = format!("--state {other}: expected down, up or recovered");
                        let _ = reply.send(ControlResponse::Error { message });
                        return;
                    }
                };
                let alerts: Vec<qu_core::config::Alert> =
                    qu_core::alerting::effective_alerts(&self.cluster, &check).into_iter().cloned().collect();
                if alerts.is_empty() {
                    let message = format!(
                        "check {} has no effective alerts (none attached or default, or all suppressed or disabled)",
                        check.name
                    );
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                }
                let detail = "a test transition from `qu check test`; the check's real state is unchanged";
                let (master, at) = (self.me().to_string(), self.wall());
                let sends = alerts
                    .into_iter()
                    .map(|alert| {
                        let context = crate::alerts::context(
                            &check,
                            &alert,
                            from,
                            to,
                            (0, 0, 0),
                            detail,
                            &master,
                            at,
                            "test",
                            true,
                        );
                        (alert, context)
                    })
                    .collect();
                self.send_tests(sends, reply);
                return;
            }
            ControlRequest::PluginList => ControlResponse::Plugins { plugins: self.plugins.views(&self.cluster) },
            ControlRequest::PluginRemove { name } => {
                self.submit_checked(Mutation::RemovePlugin { name }, reply);
                return;
            }
            ControlRequest::PluginAdd { name, path, allow, memory_mib, timeout } => {
                self.plugin_add(name, path, allow, memory_mib, timeout, reply);
                return;
            }
            ControlRequest::CheckRemove { check } => {
                self.submit_checked(Mutation::RemoveCheck { check }, reply);
                return;
            }
            ControlRequest::CheckSetDisabled { check, disabled } => {
                self.submit_checked(Mutation::SetCheckDisabled { check, disabled }, reply);
                return;
            }
            ControlRequest::NodeRemove { node_id } => {
                self.submit_checked(Mutation::RemovePeer { node_id }, reply);
                return;
            }
            ControlRequest::NodeProbe { addr } => {
                join::probe(self.endpoint.clone(), self.events.clone(), addr, reply);
                return;
            }
            ControlRequest::NodeAdd { addr, fingerprint } => {
                if !self.core.is_member() {
                    ControlResponse::Error {
                        message: "this node is not a member of a cluster; run `qu node add` on a member".into(),
                    }
                } else {
                    let invite = join::Invite {
                        endpoint: self.endpoint.clone(),
                        events: self.events.clone(),
                        secret: self.node.cluster_secret.clone(),
                        cluster_yaml: self.written.to_string(),
                        addr,
                        fingerprint,
                    };
                    join::invite(invite, reply);
                    return;
                }
            }
        };
        let _ = reply.send(answer);
    }

    /// Like `submit_checked`, but a check of a plugin type is first shown to
    /// the plugin's `validate-config` on this node (off the event loop).
    fn submit_validated(
        &mut self,
        mutation: Mutation,
        kind: &str,
        target: String,
        settings: BTreeMap<String, String>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        if qu_core::config::NATIVE_TYPES.contains(&kind) || !self.cluster.has_check_plugin(kind) {
            self.submit_checked(mutation, reply);
            return;
        }
        let (registry, events, kind) = (self.plugins.clone(), self.events.clone(), kind.to_string());
        tokio::spawn(async move {
            let plugin = match registry.get_ready(&kind, Duration::from_secs(30)).await {
                Ok(plugin) => plugin,
                Err(reason) => {
                    let message = format!("{REFUSED}plugin {kind} is not usable on this node: {reason}");
                    let _ = reply.send(ControlResponse::Error { message });
                    return;
                }
            };
            let settings: Vec<(String, String)> = settings.into_iter().collect();
            match registry.runtime().validate_check(&plugin, &settings, &target).await {
                Ok(()) => {
                    let _ = events.send(Event::SubmitChecked { mutation, reply }).await;
                }
                Err(error) => {
                    let message = match error {
                        qu_plugin::CallError::Plugin { plugin, error } => format!("{REFUSED}{plugin}: {error}"),
                        other => format!("{REFUSED}{other}"),
                    };
                    let _ = reply.send(ControlResponse::Error { message });
                }
            }
        });
    }

    /// `qu plugin add`: validate the component here, store it, ship it to
    /// the master, then commit its entry.
    fn plugin_add(
        &mut self,
        name: String,
        path: std::path::PathBuf,
        allow: Vec<String>,
        memory_mib: Option<u32>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<ControlResponse>,
    ) {
        let master = self.core.master().filter(|m| self.core.is_live(m) && *m != self.me());
        let master_link = master.and_then(|m| self.links.connection(&m));
        if master.is_some() && master_link.is_none() {
            let _ = reply.send(ControlResponse::Error { message: self.not_master_reason() });
            return;
        }
        let (registry, events) = (self.plugins.clone(), self.events.clone());
        tokio::spawn(async move {
            let fail = |message: String| ControlResponse::Error { message };
            let answer = async {
                let bytes = crate::plugins::read_component(&path)?;
                let limits = qu_core::config::PluginLimits { memory_mib, timeout };
                let entry_limits = crate::plugins::limits_of(&limits);
                let plugin = registry
                    .runtime()
                    .load(Some(&name), Arc::from(bytes.clone()), allow.clone(), entry_limits)
                    .await
                    .map_err(|e| format!("{REFUSED}{}: {e}", path.display()))?;
                let sha256 = registry.store_blob(&bytes).map_err(|e| format!("store the component: {e}"))?;
                if let Some(link) = master_link {
                    match link.request(PeerRequest::PluginPut { bytes }, Duration::from_secs(30)).await {
                        Ok(PeerResponse::PluginStored { sha256: stored }) if stored == sha256 => {}
                        Ok(PeerResponse::Refused { reason }) => {
                            return Err(format!("the master refused the component: {reason}"));
                        }
                        Ok(other) => return Err(format!("the master answered {other:?}")),
                        Err(error) => return Err(format!("ship the component to the master: {error}")),
                    }
                }
                let kind = match plugin.kind {
                    qu_plugin::Kind::Check => qu_core::config::PluginKind::Check,
                    qu_plugin::Kind::Sink => qu_core::config::PluginKind::Sink,
                };
                let size = plugin.size as u64;
                Ok(Mutation::AddPlugin {
                    plugin: qu_core::config::PluginEntry { name, kind, sha256, size, allow, limits },
                })
            }
            .await;
            match answer {
                Ok(mutation) => {
                    let _ = events.send(Event::SubmitChecked { mutation, reply }).await;
                }
                Err(message) => {
                    let _ = reply.send(fail(message));
                }
            }
        });
    }

    /// Checks a change against this node's config first, so bad input gets
    /// its error at once and nothing is sent; then proposes it.
    fn submit_checked(&mut self, mutation: Mutation, reply: oneshot::Sender<ControlResponse>) {
        let stamp = Stamp { id: self.core.next_config_id(), at: self.wall(), by: self.me() };
        if let Err(reason) = mutation.apply(&self.cluster, &stamp) {
            let _ = reply.send(ControlResponse::Error { message: format!("{REFUSED}{reason}") });
            return;
        }
        self.submit(mutation, Waiter::Control(reply));
    }

    fn check_list(&self) -> Vec<CheckListItem> {
        let names = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .map(|id| {
                    self.cluster.alerts.iter().find(|a| a.id == *id).map(|a| a.name.clone()).unwrap_or(id.clone())
                })
                .collect()
        };
        self.cluster
            .checks
            .iter()
            .map(|c| CheckListItem {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: c.kind.clone(),
                target: c.target.clone(),
                interval: humantime::format_duration(c.interval).to_string(),
                timeout: humantime::format_duration(c.timeout).to_string(),
                settings: c.settings.clone(),
                alerts: names(&c.alert_ids),
                suppressed: names(&c.suppress_alert_ids),
                disabled: c.disabled,
                state: self.cluster.check_state(&c.id).to_string(),
            })
            .collect()
    }

    fn settings_view(&self) -> SettingsView {
        let s = &self.cluster.settings;
        SettingsView {
            heartbeat: humantime::format_duration(s.heartbeat).to_string(),
            dead_after: humantime::format_duration(s.dead_after).to_string(),
            master_cooldown: humantime::format_duration(s.master_cooldown).to_string(),
            hysteresis: s.hysteresis,
            announce_first_up: s.announce_first_up,
            delivery_deadline: humantime::format_duration(s.delivery_deadline).to_string(),
            config_version: self.cluster.version,
        }
    }

    fn peer_views(&self) -> Vec<PeerView> {
        let now = self.now();
        let wall_now = SystemTime::now();
        self.cluster
            .peers
            .iter()
            .map(|p| {
                let this_node = p.node_id == self.me();
                let last_seen = (!this_node).then(|| self.core.last_heard(&p.node_id)).flatten().map(|at| {
                    Timestamp::from_system_time(wall_now - Duration::from_millis(now.saturating_sub(at))).to_string()
                });
                PeerView {
                    node_id: p.node_id,
                    advertise: p.advertise.clone(),
                    live: self.core.is_live(&p.node_id),
                    last_seen,
                    this_node,
                }
            })
            .collect()
    }

    fn status(&self) -> StatusView {
        let master = match self.core.role() {
            Role::Master if self.core.has_lease() => Some(self.me()),
            Role::Master => None,
            _ => self.core.master().filter(|m| self.core.is_live(m)),
        };
        let checks = if self.core.role() == Role::Master {
            self.check_views(&self.summaries(), None)
        } else {
            self.check_views(&[], Some("stale: the master's view could not be fetched"))
        };
        StatusView {
            node_id: self.me(),
            term: self.core.term(),
            master,
            quorum: self.core.is_member() && self.core.live_members() >= self.cluster.quorum_size(),
            quorum_size: self.cluster.quorum_size(),
            config_version: self.cluster.version,
            peers: self.peer_views(),
            checks,
            probes: self.probe_stats(),
        }
    }

    fn probe_stats(&self) -> ProbeStats {
        let mut sorted: Vec<u64> = self.lateness_us.iter().copied().collect();
        sorted.sort_unstable();
        let at =
            |p: f64| sorted.get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize).copied().unwrap_or(0);
        ProbeStats {
            run: self.probes_run,
            skipped: self.probes_skipped,
            lateness_p50_us: at(0.5),
            lateness_p99_us: at(0.99),
        }
    }

    /// The master's view of every check: committed state, current counts.
    fn summaries(&self) -> Vec<CheckSummary> {
        let members = self.core.config().members.clone();
        let now = self.now();
        self.cluster
            .checks
            .iter()
            .map(|c| {
                let tally = self.verdicts.tally(&c.id, &members, now);
                let committed = self.cluster.states.get(&c.id);
                let detail = self
                    .verdicts
                    .detail(&c.id, &members, now)
                    .or_else(|| committed.map(|s| s.detail.clone()))
                    .unwrap_or_default();
                CheckSummary {
                    id: c.id.clone(),
                    state: self.cluster.check_state(&c.id),
                    ok: tally.ok,
                    failing: tally.failing,
                    total: tally.total,
                    detail,
                }
            })
            .collect()
    }

    /// CHECKS rows: from the master's summaries, or, when they are missing,
    /// from the committed states marked as stale.
    fn check_views(&self, summaries: &[CheckSummary], stale: Option<&str>) -> Vec<CheckView> {
        let summaries: std::collections::HashMap<&str, &CheckSummary> =
            summaries.iter().map(|s| (s.id.as_str(), s)).collect();
        self.cluster
            .checks
            .iter()
            .map(|c| {
                let summary = summaries.get(c.id.as_str()).copied();
                let state = summary.map(|s| s.state).unwrap_or_else(|| self.cluster.check_state(&c.id));
                let mut detail = match (summary, self.cluster.states.get(&c.id)) {
                    (Some(s), _) => s.detail.clone(),
                    (None, Some(committed)) => committed.detail.clone(),
                    (None, None) => String::new(),
                };
                if c.disabled {
                    detail = "disabled".into();
                } else if let Some(stale) = stale.filter(|_| summary.is_none()) {
                    detail = if detail.is_empty() { format!("({stale})") } else { format!("{detail} ({stale})") };
                } else if detail.is_empty() {
                    detail = "no results yet".into();
                }
                CheckView {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    kind: c.kind.clone(),
                    target: c.target.clone(),
                    state: state.to_string(),
                    ok: summary.map(|s| s.ok).unwrap_or(0),
                    total: summary.map(|s| s.total).unwrap_or(0),
                    disabled: c.disabled,
                    alerts: effective_alerts(&self.cluster, c),
                    detail,
                }
            })
            .collect()
    }

    // ----- joining (this node as the new one) ----------------------------

    fn on_join_hello(&mut self, from: &Caller, proof: &[u8], cluster_yaml: &str) -> Result<PeerResponse, DaemonError> {
        let verdict = join::accept(&self.node, &self.fingerprint, from, proof, cluster_yaml, &self.core);
        let (blank, response) = match verdict {
            Ok(accepted) => accepted,
            Err(reason) => return Ok(PeerResponse::Refused { reason }),
        };
        let cert_pem = qu_store::read_text(&self.data.cert())
            .map_err(|source| DaemonError::Persist { what: "keys/cert.pem", source })?;
        // Start over as a blank node that trusts the inviter's cluster and
        // takes the master's first configuration.
        let durable = Durable::default();
        self.persist_durable(&durable)?;
        let snapshot = blank.snapshot();
        qu_store::write_atomic(&self.data.cluster_yaml(), snapshot.content.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "cluster.yaml", source })?;
        self.written = snapshot.content.clone();
        let (core, out) = Core::new(self.me(), durable, snapshot, self.now(), rand::random());
        self.core = core;
        self.cluster = blank;
        self.refresh_trust();
        self.execute(out)?;
        tracing::info!(inviter = %from.remote_addr, "join accepted: waiting for the master's configuration");
        Ok(PeerResponse::JoinHelloOk {
            proof: response,
            node_id: self.me(),
            advertise: self.node.advertise.clone(),
            cert_pem,
        })
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
fn effective_alerts(cluster: &ClusterConfig, check: &qu_core::config::Check) -> Vec<String> {
    qu_core::alerting::effective_alerts(cluster, check)
        .into_iter()
        .map(|a| if a.default { format!("{}*", a.name) } else { a.name.clone() })
        .collect()
}

fn propose_failed(master: &NodeId, reason: String) -> ControlResponse {
    tracing::warn!(%master, "propose to master: {reason}");
    ControlResponse::Error { message: format!("propose to master: {reason}") }
}

async fn accept_peers(listener: TcpListener, endpoint: Arc<Endpoint<Wire>>, events: mpsc::Sender<Event>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let handler = Arc::new(ToEventLoop { events: events.clone() });
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
            tracing::warn!(peer = %addr, "too many handshakes in progress; dropping connection");
            continue;
        };
        let (endpoint, handler, events) = (endpoint.clone(), handler.clone(), events.clone());
        tokio::spawn(async move {
            match endpoint.accept(tcp, handler).await {
                Ok(connection) => {
                    let _ = events.send(Event::Inbound { connection }).await;
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
                    if events.send(Event::Control { request, reply }).await.is_err() {
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
