//! `qu node add`: the probe (who is there?), the inviter's side of the
//! secret handshake, and the joiner's side.

use std::sync::Arc;
use std::time::Duration;

use qu_core::Fingerprint;
use qu_core::config::{ClusterConfig, NodeConfig, Peer};
use qu_core::consensus::Core;
use qu_core::join::{JoinRole, JoinSession, join_proof, verify_join_proof};
use qu_core::wire::{PeerRequest, PeerResponse};
use qu_transport::{Caller, Endpoint, Expect};
use tokio::sync::{mpsc, oneshot};

use super::event::{ControlEvent, Event, ToEventLoop};
use crate::control::ControlResponse;
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
    let proof = join_proof(&secret, JoinRole::Inviter, &session).to_vec();
    let answer = connection.request(PeerRequest::JoinHello { proof, cluster_yaml }, JOIN_STEP_TIMEOUT).await;
    connection.close();
    match answer.map_err(|e| format!("join handshake with {addr}: {e}"))? {
        PeerResponse::JoinHelloOk { proof, node_id, advertise, cert_pem } => {
            if !verify_join_proof(&secret, JoinRole::Joiner, &session, &proof) {
                return Err(format!("the node at {addr} could not prove it knows the cluster secret"));
            }
            let actual = qu_transport::identity::fingerprint_of_cert_pem(&cert_pem).map_err(|e| e.to_string())?;
            if actual != fingerprint {
                return Err(format!("the node at {addr} sent a certificate for {actual}, not {fingerprint}"));
            }
            Ok(Peer { node_id, advertise, fingerprint, cert_pem })
        }
        PeerResponse::Refused { reason } => Err(format!("{addr} refused to join: {reason}")),
        other => Err(format!("unexpected answer from {addr}: {other:?}")),
    }
}

/// The joiner's side: checks the inviter's proof and that this node is free
/// to join, and returns the blank config to start over with (the inviter's
/// cluster at version 0, so the master's first snapshot supersedes it) and
/// this node's own proof.
pub(super) fn accept(
    node: &NodeConfig,
    my_key: &Fingerprint,
    from: &Caller,
    proof: &[u8],
    cluster_yaml: &str,
    core: &Core,
) -> Result<(ClusterConfig, Vec<u8>), String> {
    let session = JoinSession { exporter: &from.exporter, inviter: &from.fingerprint, joiner: my_key };
    if !verify_join_proof(&node.cluster_secret, JoinRole::Inviter, &session, proof) {
        tracing::warn!(peer = %from.remote_addr, key = %from.fingerprint, "join refused: wrong cluster secret");
        return Err("cluster secret mismatch: this node was initialised with a different --secret".into());
    }
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
    let response = join_proof(&node.cluster_secret, JoinRole::Joiner, &session).to_vec();
    Ok((blank, response))
}
