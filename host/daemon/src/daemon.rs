//! The event loop: one task owns the node's state and handles a closed set
//! of events (control requests, peer messages, shutdown) in order. Outputs
//! are executed persist, then send, then apply.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use qu_core::config::{ClusterConfig, NodeConfig, Timestamp};
use qu_core::consensus::{Durable, Role, elect_sole_member};
use qu_core::join::{JoinRole, JoinSession, join_proof, verify_join_proof};
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_core::{Fingerprint, NodeId};
use qu_store::{DataDir, SECRET_FILE_MODE};
use qu_transport::{Caller, Connection, Endpoint, TrustStore};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::control::{self, ControlRequest, ControlResponse};
use crate::load::LoadedNode;
use crate::peer::{ToEventLoop, Wire};
use crate::status::{CheckView, PeerView, StatusView};

/// Events queued for the loop before senders wait.
const EVENTS_MAX: usize = 1024;
/// TLS handshakes in progress at once on the peer listener.
const HANDSHAKES_MAX: usize = 64;
/// Control connections served at once.
const CONTROL_CLIENTS_MAX: usize = 64;

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
}

pub(crate) enum Event {
    Control { request: ControlRequest, reply: oneshot::Sender<ControlResponse> },
    PeerRequest { from: Caller, request: PeerRequest, reply: oneshot::Sender<PeerResponse> },
    PeerNotice { from: Caller, notice: PeerNotice },
}

struct Daemon {
    data: DataDir,
    node: NodeConfig,
    fingerprint: Fingerprint,
    cluster: ClusterConfig,
    durable: Durable,
    role: Role,
    /// When each member was last heard from (wall clock, for display).
    last_seen: HashMap<NodeId, Timestamp>,
}

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
    let endpoint = Arc::new(Endpoint::<Wire>::new(identity, trust)?.with_source_ip(Some(node.bind)));
    let mut daemon =
        Daemon { data, node, fingerprint, cluster, durable, role: Role::Follower, last_seen: HashMap::new() };
    daemon.start_term()?;

    let (events, mut inbox) = mpsc::channel(EVENTS_MAX);
    let connections: Arc<Mutex<Vec<Connection<Wire>>>> = Arc::default();
    let peer_task = tokio::spawn(accept_peers(listeners.peer, endpoint, events.clone(), connections.clone()));
    let control_task = tokio::spawn(accept_control(listeners.control, events.clone()));
    drop(events);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => daemon.handle(event),
                None => break,
            },
            () = &mut shutdown => {
                tracing::info!("shutting down");
                break;
            }
        }
    }
    peer_task.abort();
    control_task.abort();
    for connection in connections.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        connection.close();
    }
    if let Some(path) = &listeners.control_path {
        control::remove_socket(path);
    }
    Ok(())
}

impl Daemon {
    fn me(&self) -> NodeId {
        self.node.node_id
    }

    /// Consensus at start. A sole member elects itself at once (a majority
    /// of one); the new term and vote are persisted before it acts as master.
    fn start_term(&mut self) -> Result<(), DaemonError> {
        let members: Vec<NodeId> = self.cluster.peers.iter().map(|p| p.node_id).collect();
        if let Some(next) = elect_sole_member(&self.durable, &members, self.me()) {
            self.persist_durable(next)?;
            self.role = Role::Master;
            tracing::info!(term = self.durable.term, master = %self.me(), "term {}: this node is master (sole member)", self.durable.term);
        } else {
            tracing::info!(
                term = self.durable.term,
                members = members.len(),
                "waiting for a majority of {} members (elections across members are not available in this build)",
                self.cluster.quorum_size()
            );
        }
        tracing::info!(version = self.cluster.version, "config version {} loaded", self.cluster.version);
        Ok(())
    }

    fn persist_durable(&mut self, next: Durable) -> Result<(), DaemonError> {
        assert!(next.term >= self.durable.term, "terms never decrease");
        let text = serde_yaml::to_string(&next).expect("durable state serialises");
        qu_store::write_atomic(&self.data.state_yaml(), text.as_bytes(), SECRET_FILE_MODE)
            .map_err(|source| DaemonError::Persist { what: "state.yaml", source })?;
        self.durable = next;
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Control { request, reply } => {
                let _ = reply.send(self.on_control(request));
            }
            Event::PeerRequest { from, request, reply } => {
                if let Some(member) = from.node_id {
                    self.last_seen.insert(member, Timestamp::from_system_time(SystemTime::now()));
                }
                let _ = reply.send(self.on_peer_request(&from, request));
            }
            Event::PeerNotice { from, notice } => {
                if let Some(member) = from.node_id {
                    self.last_seen.insert(member, Timestamp::from_system_time(SystemTime::now()));
                }
                tracing::debug!(peer = ?from.node_id, ?notice, "notice");
            }
        }
    }

    fn on_control(&self, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::Status => ControlResponse::Status(self.status()),
        }
    }

    fn on_peer_request(&self, from: &Caller, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Identify => PeerResponse::Identity {
                node_id: self.me(),
                advertise: self.node.advertise.clone(),
                version: crate::VERSION.to_string(),
            },
            PeerRequest::JoinHello { proof } => {
                let session =
                    JoinSession { exporter: &from.exporter, inviter: &from.fingerprint, joiner: &self.fingerprint };
                if !verify_join_proof(&self.node.cluster_secret, JoinRole::Inviter, &session, &proof) {
                    tracing::warn!(peer = %from.remote_addr, key = %from.fingerprint, "join refused: wrong cluster secret");
                    return PeerResponse::Refused {
                        reason: "cluster secret mismatch: this node was initialised with a different --secret".into(),
                    };
                }
                PeerResponse::JoinHelloOk {
                    proof: join_proof(&self.node.cluster_secret, JoinRole::Joiner, &session).to_vec(),
                }
            }
            PeerRequest::Ping => {
                PeerResponse::Pong { node_id: self.me(), term: self.durable.term, config_version: self.cluster.version }
            }
        }
    }

    fn live_members(&self) -> usize {
        let dead_after = self.cluster.settings.dead_after;
        let now = SystemTime::now();
        self.cluster
            .peers
            .iter()
            .filter(|p| p.node_id == self.me() || self.heard_within(&p.node_id, now, dead_after))
            .count()
    }

    fn heard_within(&self, node: &NodeId, now: SystemTime, window: Duration) -> bool {
        self.last_seen
            .get(node)
            .and_then(|at| now.duration_since(at.as_system_time()).ok())
            .is_some_and(|age| age <= window)
    }

    fn status(&self) -> StatusView {
        let now = SystemTime::now();
        let dead_after = self.cluster.settings.dead_after;
        let member = self.cluster.peer(&self.me()).is_some();
        let peers = self
            .cluster
            .peers
            .iter()
            .map(|p| {
                let this_node = p.node_id == self.me();
                PeerView {
                    node_id: p.node_id,
                    advertise: p.advertise.clone(),
                    live: this_node || self.heard_within(&p.node_id, now, dead_after),
                    last_seen: if this_node { None } else { self.last_seen.get(&p.node_id).map(|t| t.to_string()) },
                    this_node,
                }
            })
            .collect();
        let checks = self
            .cluster
            .checks
            .iter()
            .map(|c| CheckView {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: c.kind.clone(),
                target: c.target.clone(),
                state: "unknown".into(),
                ok: 0,
                total: 0,
                disabled: c.disabled,
                alerts: c.alert_ids.clone(),
                detail: if c.disabled { "disabled".into() } else { "no results yet".into() },
            })
            .collect();
        StatusView {
            node_id: self.me(),
            term: self.durable.term,
            master: (self.role == Role::Master).then_some(self.me()),
            quorum: member && self.live_members() >= self.cluster.quorum_size(),
            quorum_size: self.cluster.quorum_size(),
            config_version: self.cluster.version,
            peers,
            checks,
        }
    }
}

async fn accept_peers(
    listener: TcpListener,
    endpoint: Arc<Endpoint<Wire>>,
    events: mpsc::Sender<Event>,
    connections: Arc<Mutex<Vec<Connection<Wire>>>>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let handler = Arc::new(ToEventLoop { events });
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
        let (endpoint, handler, connections) = (endpoint.clone(), handler.clone(), connections.clone());
        tokio::spawn(async move {
            match endpoint.accept(tcp, handler).await {
                Ok(connection) => {
                    let mut all = connections.lock().unwrap_or_else(|e| e.into_inner());
                    all.retain(|c| !c.is_closed());
                    all.push(connection);
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
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
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
