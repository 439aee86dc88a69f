//! `qu node add`: the probe (who is there?), the inviter's side of the
//! secret handshake, and the joiner's side (see `qu_core::join` for why the
//! order of the messages keeps the secret and `cluster.yaml` from anyone
//! who has not proven it).

use std::sync::Arc;
use std::time::Duration;

use qu_core::Fingerprint;
use qu_core::config::{ClusterConfig, NodeConfig, Peer};
use qu_core::consensus::Core;
use qu_core::join::{JoinRole, JoinSession, confirmation, verify_confirmation};
use qu_core::wire::{PeerRequest, PeerResponse};
use qu_transport::{Caller, Endpoint, Expect};
use tokio::sync::{mpsc, oneshot};

use super::event::{ControlEvent, Event, ToEventLoop};
use crate::control::ControlResponse;
use crate::pake::Pake;
use crate::peer::Wire;

/// How long each step of the handshake may take.
const JOIN_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `addr`, accepting any key, and reports who answered.
pub(super) fn probe(
    endpoint: Arc<Endpoint<Wire>>,
    events: mpsc::Sender<Event>,
    addr: String,
    reply: oneshot::Sender<ControlResponse>,
) {
    tokio::spawn(async move {
        let answer = async {
            let handler = Arc::new(ToEventLoop { events });
            let connection = endpoint.connect(&addr, Expect::AnyKey, handler).await.map_err(|e| e.to_string())?;
            let response = connection.request(PeerRequest::Identify, JOIN_STEP_TIMEOUT).await;
            let fingerprint = connection.peer_fingerprint().clone();
            connection.close();
            match response.map_err(|e| e.to_string())? {
                PeerResponse::Identity { node_id, advertise, version } => {
                    Ok(ControlResponse::Probe { node_id, fingerprint, advertise, version })
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        };
        let response = answer.await.unwrap_or_else(|e: String| ControlResponse::Error {
            message: format!("cannot reach a qu node at {addr}: {e}"),
        });
        let _ = reply.send(response);
    });
}

pub(super) struct Invite {
    pub endpoint: Arc<Endpoint<Wire>>,
    pub events: mpsc::Sender<Event>,
    pub secret: String,
    pub cluster_yaml: String,
    pub addr: String,
    pub fingerprint: Fingerprint,
}

/// Runs the inviter's side of the handshake on a helper task, then hands the
/// new peer to the event loop to be committed.
pub(super) fn invite(invite: Invite, reply: oneshot::Sender<ControlResponse>) {
    tokio::spawn(async move {
        let events = invite.events.clone();
        let result = handshake(invite).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "node add failed");
        }
        let _ = events.send(Event::Control(ControlEvent::Invited { result, reply })).await;
    });
}

async fn handshake(invite: Invite) -> Result<Peer, String> {
    let Invite { endpoint, events, secret, cluster_yaml, addr, fingerprint } = invite;
    let handler = Arc::new(ToEventLoop { events });
    let connection = endpoint
        .connect(&addr, Expect::Pinned(fingerprint.clone()), handler)
        .await
        .map_err(|e| format!("cannot reach {addr} with key {fingerprint}: {e}"))?;
    let exporter = *connection.exporter();
    let session = JoinSession { exporter: &exporter, inviter: endpoint.fingerprint(), joiner: &fingerprint };
    let result = async {
        // Step 2: the PAKE. Nothing of the cluster goes out before the
        // joiner has proven it derived the same key.
        let (pake, message) = Pake::start(&secret, &session);
        let answer = connection.request(PeerRequest::JoinStart { pake: message }, JOIN_STEP_TIMEOUT).await;
        let (theirs, confirm) = match answer.map_err(|e| format!("join handshake with {addr}: {e}"))? {
            PeerResponse::JoinStarted { pake, confirm } => (pake, confirm),
            PeerResponse::Refused { reason } => return Err(format!("{addr} refused to join: {reason}")),
            other => return Err(format!("unexpected answer from {addr}: {}", short(&other))),
        };
        let key = pake.finish(&theirs).map_err(|e| format!("the node at {addr} answered the join with {e}"))?;
        if !verify_confirmation(&key, JoinRole::Joiner, &session, &confirm) {
            let _ = connection.request(PeerRequest::JoinFailed, JOIN_STEP_TIMEOUT).await;
            return Err(format!(
                "cluster secret mismatch: the node at {addr} could not prove it knows this cluster's secret \
                 (was it initialised with another --secret, or is it not the node you meant?); nothing about \
                 the cluster was sent to it"
            ));
        }
        // Step 3: the joiner has proven it; now the cluster's file.
        let confirm = confirmation(&key, JoinRole::Inviter, &session).to_vec();
        let answer = connection.request(PeerRequest::JoinHello { confirm, cluster_yaml }, JOIN_STEP_TIMEOUT).await;
        match answer.map_err(|e| format!("join handshake with {addr}: {e}"))? {
            PeerResponse::JoinHelloOk { node_id, advertise, cert_pem } => {
                let actual = qu_transport::identity::fingerprint_of_cert_pem(&cert_pem).map_err(|e| e.to_string())?;
                if actual != fingerprint {
                    return Err(format!("the node at {addr} sent a certificate for {actual}, not {fingerprint}"));
                }
                Ok(Peer { node_id, advertise, fingerprint: fingerprint.clone(), cert_pem })
            }
            PeerResponse::Refused { reason } => Err(format!("{addr} refused to join: {reason}")),
            other => Err(format!("unexpected answer from {addr}: {}", short(&other))),
        }
    }
    .await;
    connection.close();
    result
}

/// An unexpected answer, named without its content.
fn short(response: &PeerResponse) -> String {
    let text = format!("{response:?}");
    text.split([' ', '{', '(']).next().unwrap_or_default().to_string()
}

/// The joiner's half-done handshakes, by TLS session (exporter): the key
/// each derived, until its inviter confirms or the entry expires; and, per
/// source address, the handshakes started lately and when it was last
/// warned about, so a flood costs a lookup per attempt and a log line a
/// minute.
#[derive(Default)]
pub(super) struct JoinSessions {
    keys: std::collections::HashMap<[u8; 32], (Vec<u8>, u64)>,
    sources: std::collections::HashMap<std::net::IpAddr, Source>,
}

/// What a joiner remembers of one source address.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// When the current window of attempts began, and how many it had.
    window_start: u64,
    attempts: u32,
    /// When a warning about it was last logged, and how many were not.
    warned: Option<u64>,
    unlogged: u32,
}

/// How long a joiner waits for the inviter's confirmation.
const JOIN_SESSION_MS: u64 = 30_000;
/// Handshakes a joiner keeps open at once; more are refused until one ends.
const JOIN_SESSIONS_MAX: usize = 16;
/// Handshakes one source address may start per window (`qu node add` starts
/// one; a typo or two and retries stay well inside).
const JOIN_ATTEMPTS_PER_WINDOW: u32 = 10;
const JOIN_WINDOW_MS: u64 = 60_000;
/// Source addresses remembered at once (beyond, the stalest are forgotten).
const JOIN_SOURCES_MAX: usize = 4_096;

impl JoinSessions {
    /// The joiner's answer to an inviter's PAKE message (`JoinStart`): its
    /// own message and its confirmation, and the key kept for step 3.
    pub(super) fn start(
        &mut self,
        node: &NodeConfig,
        my_key: &Fingerprint,
        from: &Caller,
        theirs: &[u8],
        now: u64,
    ) -> PeerResponse {
        self.keys.retain(|_, (_, expires)| *expires > now);
        if !self.admit(from.remote_addr.ip(), now) {
            if self.may_warn(from.remote_addr.ip(), now) {
                tracing::warn!(peer = %from.remote_addr, "join refused: too many join attempts from {}", from.remote_addr.ip());
            }
            return PeerResponse::Refused {
                reason: format!(
                    "too many join attempts from {} (at most {JOIN_ATTEMPTS_PER_WINDOW} a minute); retry in a minute",
                    from.remote_addr.ip()
                ),
            };
        }
        if self.keys.len() >= JOIN_SESSIONS_MAX && !self.keys.contains_key(&from.exporter) {
            return PeerResponse::Refused { reason: "too many join handshakes in progress; retry in a minute".into() };
        }
        let session = JoinSession { exporter: &from.exporter, inviter: &from.fingerprint, joiner: my_key };
        let (pake, message) = Pake::start(&node.cluster_secret, &session);
        let key = match pake.finish(theirs) {
            Ok(key) => key,
            Err(reason) => return PeerResponse::Refused { reason },
        };
        let confirm = confirmation(&key, JoinRole::Joiner, &session).to_vec();
        self.keys.insert(from.exporter, (key, now + JOIN_SESSION_MS));
        PeerResponse::JoinStarted { pake: message, confirm }
    }

    /// What is remembered of `ip`, from now if nothing was.
    fn source(&mut self, ip: std::net::IpAddr, now: u64) -> &mut Source {
        self.sources.entry(ip).or_insert(Source { window_start: now, attempts: 0, warned: None, unlogged: 0 })
    }

    /// Counts an attempt from `ip`; whether it is within the budget.
    fn admit(&mut self, ip: std::net::IpAddr, now: u64) -> bool {
        if self.sources.len() >= JOIN_SOURCES_MAX && !self.sources.contains_key(&ip) {
            self.sources.retain(|_, s| s.window_start + JOIN_WINDOW_MS > now);
            if self.sources.len() >= JOIN_SOURCES_MAX {
                return false;
            }
        }
        let source = self.source(ip, now);
        if source.window_start + JOIN_WINDOW_MS <= now {
            (source.window_start, source.attempts) = (now, 0);
        }
        source.attempts += 1;
        source.attempts <= JOIN_ATTEMPTS_PER_WINDOW
    }

    /// Whether a warning about `ip` may be logged now (one a minute per
    /// source; the ones held back are counted in the next).
    pub(super) fn may_warn(&mut self, ip: std::net::IpAddr, now: u64) -> bool {
        let source = self.source(ip, now);
        match source.warned {
            Some(at) if at + JOIN_WINDOW_MS > now => {
                source.unlogged += 1;
                false
            }
            _ => {
                if source.unlogged > 0 {
                    tracing::warn!("join: {} warnings about {ip} were not logged in the last minute", source.unlogged);
                }
                (source.warned, source.unlogged) = (Some(now), 0);
                true
            }
        }
    }

    /// The inviter gave up: the joiner's confirmation did not verify.
    pub(super) fn failed(&mut self, from: &Caller, now: u64) {
        if self.keys.remove(&from.exporter).is_some() && self.may_warn(from.remote_addr.ip(), now) {
            tracing::warn!(
                peer = %from.remote_addr,
                key = %from.fingerprint,
                "join refused: wrong cluster secret (the inviter holds another one)"
            );
        }
    }

    /// Step 3: whether the inviter's confirmation is right for the key this
    /// session derived (used once).
    pub(super) fn confirmed(&mut self, my_key: &Fingerprint, from: &Caller, confirm: &[u8], now: u64) -> bool {
        let Some((key, expires)) = self.keys.remove(&from.exporter) else { return false };
        let session = JoinSession { exporter: &from.exporter, inviter: &from.fingerprint, joiner: my_key };
        expires > now && verify_confirmation(&key, JoinRole::Inviter, &session, confirm)
    }
}

/// The joiner's side, once the inviter has confirmed (`JoinSessions::
/// confirmed`): checks that this node is free to join, and returns the
/// blank config to start over with (the inviter's cluster at version 0, so
/// the master's first snapshot supersedes it).
pub(super) fn accept(
    node: &NodeConfig,
    from: &Caller,
    cluster_yaml: &str,
    core: &Core,
) -> Result<ClusterConfig, String> {
    let members = &core.config().members;
    if core.is_member() && members.as_slice() != [node.node_id] {
        return Err(format!(
            "this node is already a member of a cluster of {} nodes; remove it there (qu node remove) first",
            members.len()
        ));
    }
    let mut blank = ClusterConfig::parse(cluster_yaml).map_err(|e| format!("the inviter's {e}"))?;
    if !blank.peers.iter().any(|p| p.fingerprint == from.fingerprint) {
        return Err("the inviter is not a member of the cluster it invites to".into());
    }
    blank.version = 0;
    Ok(blank)
}
