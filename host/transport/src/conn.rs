//! Endpoints and connections: dialling, accepting, and the per-connection
//! reader and writer tasks that carry requests, responses and notices.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qu_core::limits::{FRAME_BYTES_MAX, UNTRUSTED_FRAME_BYTES_MAX};
use qu_core::{Fingerprint, NodeId};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::frame::{read_frame, write_frame};
use crate::identity::fingerprint_of_cert_der;
use crate::tls::{client_config, server_config};
use crate::{TlsIdentity, TransportError, TrustStore};

/// Bytes of TLS exporter output each connection derives (for the join proof).
pub const EXPORTER_BYTES: usize = qu_core::join::EXPORTER_BYTES;
/// Requests one connection may have in flight at the receiver.
const INBOUND_REQUESTS_MAX: usize = 64;
/// Frames queued for one connection's writer.
const OUTBOUND_FRAMES_MAX: usize = 256;

/// The messages a protocol carries, and which requests strangers may send.
pub trait Protocol: Send + Sync + 'static {
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Notice: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Whether a peer whose key is not in the trust store may send this.
    fn open_to_untrusted(request: &Self::Request) -> bool;
}

/// Who sent a message: the TLS identity of the connection, resolved against
/// the trust store when the message arrived.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The member holding the key, or `None` for an untrusted peer.
    pub node_id: Option<NodeId>,
    pub fingerprint: Fingerprint,
    pub remote_addr: SocketAddr,
    /// TLS exporter value of this connection (binds proofs to the session).
    pub exporter: [u8; EXPORTER_BYTES],
}

/// Receives what the other side of a connection sends.
pub trait Handler<P: Protocol>: Send + Sync + 'static {
    fn on_request(&self, from: Caller, request: P::Request) -> impl Future<Output = P::Response> + Send;
    fn on_notice(&self, from: Caller, notice: P::Notice) -> impl Future<Output = ()> + Send;
}

/// Which server key a dial accepts.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Exactly this key (a member).
    Pinned(Fingerprint),
    /// Any key that proves possession; the caller must confirm it (join).
    AnyKey,
}

#[derive(Serialize, Deserialize)]
enum Envelope<Q, S, N> {
    Request { id: u64, body: Q },
    Response { id: u64, body: S },
    Refused { id: u64, reason: String },
    Notice { body: N },
}

/// Decodes a frame's payload as the transport does and encodes it again:
/// what the fuzz targets and their corpus replay run (`tests/fuzz`).
#[doc(hidden)]
pub fn decode_payload<Q, S, N>(bytes: &[u8]) -> Option<Vec<u8>>
where
    Q: Serialize + DeserializeOwned,
    S: Serialize + DeserializeOwned,
    N: Serialize + DeserializeOwned,
{
    let envelope: Envelope<Q, S, N> = postcard::from_bytes(bytes).ok()?;
    Some(postcard::to_allocvec(&envelope).expect("a decoded envelope encodes"))
}

type Pending<P> = Mutex<HashMap<u64, oneshot::Sender<Result<<P as Protocol>::Response, TransportError>>>>;

struct Shared<P: Protocol> {
    outbound: mpsc::Sender<Vec<u8>>,
    pending: Pending<P>,
    next_id: AtomicU64,
    closed: watch::Sender<bool>,
    fingerprint: Fingerprint,
    remote_addr: SocketAddr,
    exporter: [u8; EXPORTER_BYTES],
    trust: TrustStore,
}

impl<P: Protocol> Shared<P> {
    fn caller(&self) -> Caller {
        Caller {
            node_id: self.trust.member(&self.fingerprint),
            fingerprint: self.fingerprint.clone(),
            remote_addr: self.remote_addr,
            exporter: self.exporter,
        }
    }

    fn close(&self) {
        self.closed.send_replace(true);
        let drained: Vec<_> = self.pending.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (_, waiter) in drained {
            let _ = waiter.send(Err(TransportError::Closed));
        }
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    async fn send_frame(&self, envelope: &Envelope<P::Request, P::Response, P::Notice>) -> Result<(), TransportError>
    where
        Envelope<P::Request, P::Response, P::Notice>: Serialize,
    {
        let bytes = postcard::to_allocvec(envelope).map_err(|e| TransportError::Decode(e.to_string()))?;
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(TransportError::FrameTooLarge { len: bytes.len(), max: FRAME_BYTES_MAX });
        }
        self.outbound.send(bytes).await.map_err(|_| TransportError::Closed)
    }
}

/// One authenticated connection. Cheap to clone; closing one clone closes it.
pub struct Connection<P: Protocol> {
    shared: Arc<Shared<P>>,
}

impl<P: Protocol> Clone for Connection<P> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<P: Protocol> std::fmt::Debug for Connection<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote_addr", &self.shared.remote_addr)
            .field("fingerprint", &self.shared.fingerprint)
            .finish()
    }
}

impl<P: Protocol> Connection<P> {
    /// Sends a request and waits at most `timeout` for its answer.
    pub async fn request(&self, body: P::Request, timeout: Duration) -> Result<P::Response, TransportError> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        shared.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let forget = || {
            shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        };
        if shared.is_closed() {
            forget();
            return Err(TransportError::Closed);
        }
        let outcome = tokio::time::timeout(timeout, async {
            shared.send_frame(&Envelope::Request { id, body }).await?;
            rx.await.map_err(|_| TransportError::Closed)?
        })
        .await;
        match outcome {
            Ok(result) => {
                if result.is_err() {
                    forget();
                }
                result
            }
            Err(_) => {
                forget();
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    /// Sends a one-way message (queued; fails only if the connection is gone
    /// or the queue stays full for `timeout`).
    pub async fn notify(&self, body: P::Notice, timeout: Duration) -> Result<(), TransportError> {
        tokio::time::timeout(timeout, self.shared.send_frame(&Envelope::Notice { body }))
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// Queues a one-way message without waiting: fails at once if the
    /// connection is gone or its queue is full (the caller drops the message,
    /// as a lossy network would).
    pub fn try_notify(&self, body: P::Notice) -> Result<(), TransportError> {
        if self.shared.is_closed() {
            return Err(TransportError::Closed);
        }
        let envelope: Envelope<P::Request, P::Response, P::Notice> = Envelope::Notice { body };
        let bytes = postcard::to_allocvec(&envelope).map_err(|e| TransportError::Decode(e.to_string()))?;
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(TransportError::FrameTooLarge { len: bytes.len(), max: FRAME_BYTES_MAX });
        }
        self.shared.outbound.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Timeout(std::time::Duration::ZERO),
            mpsc::error::TrySendError::Closed(_) => TransportError::Closed,
        })
    }

    /// The other side's key.
    pub fn peer_fingerprint(&self) -> &Fingerprint {
        &self.shared.fingerprint
    }

    /// The member behind the other side's key, as of now.
    pub fn peer_member(&self) -> Option<NodeId> {
        self.shared.trust.member(&self.shared.fingerprint)
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.remote_addr
    }

    /// The TLS exporter value of this session (see `qu_core::join`).
    pub fn exporter(&self) -> &[u8; EXPORTER_BYTES] {
        &self.shared.exporter
    }

    pub fn close(&self) {
        self.shared.close();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Resolves when the connection has closed (either side, any reason).
    pub async fn closed(&self) {
        wait_closed(&mut self.shared.closed.subscribe()).await;
    }
}

/// This node's side of the transport: its identity, whom it trusts, and the
/// TLS configurations derived from them.
pub struct Endpoint<P: Protocol> {
    identity: TlsIdentity,
    trust: TrustStore,
    server: Arc<rustls::ServerConfig>,
    source_ip: Option<IpAddr>,
    handshake_timeout: Duration,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> std::fmt::Debug for Endpoint<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("fingerprint", &self.identity.fingerprint).finish()
    }
}

impl<P: Protocol> Endpoint<P> {
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn new(identity: TlsIdentity, trust: TrustStore) -> Result<Self, TransportError> {
        let server = server_config(&identity)?;
        Ok(Self {
            identity,
            trust,
            server,
            source_ip: None,
            handshake_timeout: Self::HANDSHAKE_TIMEOUT,
            _protocol: PhantomData,
        })
    }

    /// Dial from this address (several nodes on one host, e.g. 127.0.0.2,
    /// must bind their own source address so peers can tell them apart).
    pub fn with_source_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.source_ip = ip.filter(|ip| !ip.is_unspecified());
        self
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.identity.fingerprint
    }

    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    /// Dials `addr` (`HOST:PORT`), completes the handshake and starts the
    /// connection's tasks.
    pub async fn connect<H: Handler<P>>(
        &self,
        addr: &str,
        expect: Expect,
        handler: Arc<H>,
    ) -> Result<Connection<P>, TransportError> {
        let pinned = match expect {
            Expect::Pinned(fp) => Some(fp),
            Expect::AnyKey => None,
        };
        let config = client_config(&self.identity, pinned)?;
        let handshake = async {
            let tcp = self.dial_tcp(addr).await?;
            let remote_addr = tcp.peer_addr()?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("quptime").expect("static name is valid");
            let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| handshake_error(addr, e))?;
            Ok::<_, TransportError>((TlsStream::from(tls), remote_addr))
        };
        let (tls, remote_addr) = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| TransportError::Handshake { addr: addr.to_string(), reason: "timed out".into() })??;
        self.start(tls, remote_addr, addr, handler)
    }

    /// Completes the server side of the handshake on an accepted stream.
    pub async fn accept<H: Handler<P>>(
        &self,
        tcp: TcpStream,
        handler: Arc<H>,
    ) -> Result<Connection<P>, TransportError> {
        let remote_addr = tcp.peer_addr()?;
        tcp.set_nodelay(true)?;
        let acceptor = TlsAcceptor::from(self.server.clone());
        let label = remote_addr.to_string();
        let tls = tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| TransportError::Handshake { addr: label.clone(), reason: "timed out".into() })?
            .map_err(|e| handshake_error(&label, e))?;
        self.start(TlsStream::from(tls), remote_addr, &label, handler)
    }

    async fn dial_tcp(&self, addr: &str) -> Result<TcpStream, TransportError> {
        let connect_err = |source| TransportError::Connect { addr: addr.to_string(), source };
        let targets: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.map_err(connect_err)?.collect();
        let mut last = None;
        for target in targets {
            let attempt = async {
                let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                if let Some(ip) = self.source_ip.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
                    socket.bind(SocketAddr::new(ip, 0))?;
                }
                socket.connect(target).await
            };
            match attempt.await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(connect_err(last.unwrap_or_else(|| std::io::Error::other("the name resolved to no address"))))
    }

    fn start<H: Handler<P>>(
        &self,
        tls: TlsStream<TcpStream>,
        remote_addr: SocketAddr,
        label: &str,
        handler: Arc<H>,
    ) -> Result<Connection<P>, TransportError> {
        let handshake_err = |reason: String| TransportError::Handshake { addr: label.to_string(), reason };
        let (fingerprint, exporter) = match &tls {
            TlsStream::Client(s) => session_facts(s.get_ref().1),
            TlsStream::Server(s) => session_facts(s.get_ref().1),
        }
        .map_err(handshake_err)?;
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_FRAMES_MAX);
        let shared = Arc::new(Shared::<P> {
            outbound,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: watch::channel(false).0,
            fingerprint,
            remote_addr,
            exporter,
            trust: self.trust.clone(),
        });
        let (reader, writer) = tokio::io::split(tls);
        tokio::spawn(write_loop(shared.clone(), writer, outbound_rx));
        tokio::spawn(read_loop(shared.clone(), reader, handler));
        Ok(Connection { shared })
    }
}

/// The peer's key fingerprint and this session's exporter value.
fn session_facts<D>(connection: &rustls::ConnectionCommon<D>) -> Result<(Fingerprint, [u8; EXPORTER_BYTES]), String> {
    let cert = connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| "the peer presented no certificate".to_string())?;
    let fingerprint = fingerprint_of_cert_der(cert).map_err(|e| e.to_string())?;
    let exporter = connection
        .export_keying_material([0u8; EXPORTER_BYTES], qu_core::join::EXPORTER_LABEL, None)
        .map_err(|e| format!("TLS exporter: {e}"))?;
    Ok((fingerprint, exporter))
}

/// Resolves once the connection is marked closed.
async fn wait_closed(closed: &mut watch::Receiver<bool>) {
    while !*closed.borrow_and_update() {
        if closed.changed().await.is_err() {
            return;
        }
    }
}

async fn write_loop<P: Protocol, W: AsyncWrite + Unpin>(
    shared: Arc<Shared<P>>,
    mut writer: W,
    mut outbound: mpsc::Receiver<Vec<u8>>,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            frame = outbound.recv() => {
                let Some(frame) = frame else { break };
                if let Err(error) = write_frame(&mut writer, &frame, FRAME_BYTES_MAX).await {
                    tracing::debug!(peer = %shared.remote_addr, %error, "write failed; closing connection");
                    break;
                }
            }
            _ = wait_closed(&mut closed) => break,
        }
    }
    shared.close();
    let _ = writer.shutdown().await;
}

async fn read_loop<P: Protocol, R: AsyncRead + Unpin, H: Handler<P>>(
    shared: Arc<Shared<P>>,
    mut reader: R,
    handler: Arc<H>,
) {
    let mut closed = shared.closed.subscribe();
    let in_flight = Arc::new(Semaphore::new(INBOUND_REQUESTS_MAX));
    loop {
        // A stranger's frames are small (the join handshake): a longer
        // length prefix from a key that is not a member closes the
        // connection before anything is allocated for it.
        let trusted = shared.trust.member(&shared.fingerprint).is_some();
        let bytes_max = if trusted { FRAME_BYTES_MAX } else { UNTRUSTED_FRAME_BYTES_MAX };
        let frame = tokio::select! {
            frame = read_frame(&mut reader, bytes_max) => frame,
            _ = wait_closed(&mut closed) => break,
        };
        let bytes = match frame {
            Ok(Some(bytes)) => bytes,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(peer = %shared.remote_addr, %error, "read failed; closing connection");
                break;
            }
        };
        let envelope: Envelope<P::Request, P::Response, P::Notice> = match postcard::from_bytes(&bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(peer = %shared.remote_addr, %error, "undecodable message; closing connection");
                break;
            }
        };
        match envelope {
            Envelope::Response { id, body } => complete(&shared, id, Ok(body)),
            Envelope::Refused { id, reason } => complete(&shared, id, Err(TransportError::Refused(reason))),
            Envelope::Request { id, body } => {
                let caller = shared.caller();
                if caller.node_id.is_none() && !P::open_to_untrusted(&body) {
                    let reason = format!(
                        "key {} is not a member of this cluster; only the join handshake is open to it",
                        caller.fingerprint
                    );
                    tracing::debug!(peer = %shared.remote_addr, %reason, "refused request");
                    if shared.send_frame(&Envelope::Refused { id, reason }).await.is_err() {
                        break;
                    }
                    continue;
                }
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let (shared, handler) = (shared.clone(), handler.clone());
                tokio::spawn(async move {
                    let body = handler.on_request(caller, body).await;
                    let _ = shared.send_frame(&Envelope::Response { id, body }).await;
                    drop(permit);
                });
            }
            Envelope::Notice { body } => {
                let caller = shared.caller();
                if caller.node_id.is_none() {
                    tracing::debug!(peer = %shared.remote_addr, "dropped a notice from a non-member");
                    continue;
                }
                handler.on_notice(caller, body).await;
            }
        }
    }
    shared.close();
}

fn complete<P: Protocol>(shared: &Shared<P>, id: u64, result: Result<P::Response, TransportError>) {
    let waiter = shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    if let Some(waiter) = waiter {
        let _ = waiter.send(result);
    }
}

/// A failed handshake, told apart when the peer speaks another version of
/// the peer protocol (no common ALPN id, on either side).
fn handshake_error(addr: &str, error: std::io::Error) -> TransportError {
    let rustls_error = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::NoApplicationProtocol)
        | Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            TransportError::Version { addr: addr.to_string() }
        }
        _ => TransportError::Handshake { addr: addr.to_string(), reason: error.to_string() },
    }
}
