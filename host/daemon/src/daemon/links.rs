//! Outbound connections to the other members: dialled on demand, pinned to
//! each member's key, redialled with a capped backoff. Consensus messages
//! are sent without waiting; a message for a peer that is not connected is
//! dropped (the core retransmits what matters every heartbeat).

use std::collections::BTreeMap;
use std::sync::Arc;

use qu_core::config::Peer;
use qu_core::wire::PeerNotice;
use qu_core::{Fingerprint, NodeId};
use qu_transport::{Connection, Endpoint, Expect};
use tokio::sync::mpsc;

use super::event::{Event, PeerEvent, ToEventLoop};
use crate::peer::Wire;

/// Longest wait between dial attempts, in milliseconds.
const REDIAL_MS_MAX: u64 = 1_000;
/// Shortest time between two warnings about the same unreachable peer.
const WARN_EVERY_MS: u64 = 30_000;

struct Link {
    advertise: String,
    fingerprint: Fingerprint,
    connection: Option<Connection<Wire>>,
    dialling: bool,
    next_dial: u64,
    failures: u32,
    warned_at: Option<u64>,
}

pub(super) struct Links {
    me: NodeId,
    links: BTreeMap<NodeId, Link>,
}

impl Links {
    pub(super) fn new(me: NodeId) -> Self {
        Self { me, links: BTreeMap::new() }
    }

    /// Keeps a link per peer; drops (and closes) links to anyone else, and
    /// re-creates a link whose address or key changed.
    pub(super) fn set_peers(&mut self, peers: &[Peer]) {
        let wanted: BTreeMap<NodeId, &Peer> =
            peers.iter().filter(|p| p.node_id != self.me).map(|p| (p.node_id, p)).collect();
        self.links.retain(|node, link| {
            let keep =
                wanted.get(node).is_some_and(|p| p.fingerprint == link.fingerprint && p.advertise == link.advertise);
            if !keep && let Some(connection) = &link.connection {
                connection.close();
            }
            keep
        });
        for (node, peer) in wanted {
            self.links.entry(node).or_insert_with(|| Link {
                advertise: peer.advertise.clone(),
                fingerprint: peer.fingerprint.clone(),
                connection: None,
                dialling: false,
                next_dial: 0,
                failures: 0,
                warned_at: None,
            });
        }
    }

    /// An open connection to `node`, if there is one.
    pub(super) fn connection(&self, node: &NodeId) -> Option<Connection<Wire>> {
        self.links.get(node)?.connection.clone().filter(|c| !c.is_closed())
    }

    pub(super) fn send(
        &mut self,
        to: NodeId,
        notice: PeerNotice,
        now: u64,
        endpoint: &Arc<Endpoint<Wire>>,
        events: &mpsc::Sender<Event>,
    ) -> Result<(), String> {
        let Some(link) = self.links.get_mut(&to) else { return Err("not a peer of this node".into()) };
        if let Some(connection) = &link.connection {
            if !connection.is_closed() {
                return connection.try_notify(notice).map_err(|e| e.to_string());
            }
            link.connection = None;
        }
        if !link.dialling && now >= link.next_dial {
            link.dialling = true;
            let (endpoint, events) = (endpoint.clone(), events.clone());
            let (advertise, fingerprint) = (link.advertise.clone(), link.fingerprint.clone());
            tokio::spawn(async move {
                let handler = Arc::new(ToEventLoop { events: events.clone() });
                let event = match endpoint.connect(&advertise, Expect::Pinned(fingerprint), handler).await {
                    Ok(connection) => Event::Peer(PeerEvent::Connected { node: to, connection }),
                    Err(error) => Event::Peer(PeerEvent::ConnectFailed { node: to, error: error.to_string() }),
                };
                let _ = events.send(event).await;
            });
        }
        Err(format!("not connected to {} yet", link.advertise))
    }

    pub(super) fn connected(&mut self, node: NodeId, connection: Connection<Wire>) {
        match self.links.get_mut(&node) {
            Some(link) if *connection.peer_fingerprint() == link.fingerprint => {
                if link.warned_at.is_some() {
                    tracing::info!(peer = %node, addr = %link.advertise, "connected to peer again");
                }
                link.connection = Some(connection);
                link.dialling = false;
                link.failures = 0;
                link.warned_at = None;
            }
            _ => connection.close(),
        }
    }

    pub(super) fn failed(&mut self, node: NodeId, error: &str, now: u64) {
        let Some(link) = self.links.get_mut(&node) else { return };
        link.dialling = false;
        link.failures = link.failures.saturating_add(1);
        link.next_dial = now + (50u64 << link.failures.min(5)).min(REDIAL_MS_MAX);
        if link.warned_at.is_none_or(|at| now >= at + WARN_EVERY_MS) {
            tracing::warn!(peer = %node, addr = %link.advertise, %error, "cannot reach peer");
            link.warned_at = Some(now);
        } else {
            tracing::debug!(peer = %node, %error, "cannot reach peer");
        }
    }

    pub(super) fn close_all(&mut self) {
        for link in self.links.values() {
            if let Some(connection) = &link.connection {
                connection.close();
            }
        }
    }
}
