//! The event loop's one closed set of events, on its own so that the
//! sub-states that report through it (links, join, delivery) depend on it
//! and not on the loop.

use std::time::Duration;

use qu_core::NodeId;
use qu_core::config::Mutation;
use qu_core::monitor::CheckSummary;
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_transport::{Caller, Connection, Handler};
use tokio::sync::{mpsc, oneshot};

use crate::control::{ControlRequest, ControlResponse};
use crate::peer::Wire;
use crate::scheduler;

/// Everything the event loop handles: one closed set, grouped by where it
/// comes from. Helper tasks (joins, sends, validations, fetches, links)
/// report back through it, never through shared state.
pub(crate) enum Event {
    /// The control socket, and helper tasks finishing a control request.
    Control(ControlEvent),
    /// Peers: requests, notices and the links to them.
    Peer(PeerEvent),
    /// The delivery room's sends.
    Delivery(DeliveryEvent),
    /// The probe scheduler (through a bounded channel of its own).
    Probe(scheduler::Round),
}

pub(crate) enum ControlEvent {
    Request {
        request: ControlRequest,
        reply: oneshot::Sender<ControlResponse>,
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
    /// A scrape of `/metrics` (the HTTP listener): the text to answer.
    Metrics {
        reply: oneshot::Sender<String>,
    },
    /// A change checked off the event loop (by a plugin's validation):
    /// check it against the config again and propose it.
    SubmitChecked {
        mutation: Mutation,
        reply: oneshot::Sender<ControlResponse>,
    },
}

pub(crate) enum PeerEvent {
    Request { from: Caller, request: PeerRequest, reply: oneshot::Sender<PeerResponse> },
    Notice { from: Caller, notice: PeerNotice },
    Connected { node: NodeId, connection: Connection<Wire> },
    ConnectFailed { node: NodeId, error: String },
    Inbound { connection: Connection<Wire> },
}

pub(crate) enum DeliveryEvent {
    /// One attempt to deliver an alert finished.
    Attempt { key: String, attempt: u32, result: Result<(), qu_plugin::CallError>, took: Duration },
    /// One attempt to send this node's own no-quorum notice finished.
    Notice { key: String, attempt: u32, result: Result<(), qu_plugin::CallError> },
    /// A call of the dead man's switch finished (its status, or why not).
    Deadman { result: Result<u16, String> },
}

/// Forwards peer messages into the event loop, so all state changes happen
/// in one place.
pub(crate) struct ToEventLoop {
    pub events: mpsc::Sender<Event>,
}

impl Handler<Wire> for ToEventLoop {
    async fn on_request(&self, from: Caller, request: PeerRequest) -> PeerResponse {
        let (reply, answer) = oneshot::channel();
        if self.events.send(Event::Peer(PeerEvent::Request { from, request, reply })).await.is_err() {
            return PeerResponse::Refused { reason: "the node is shutting down".into() };
        }
        answer.await.unwrap_or(PeerResponse::Refused { reason: "the node is shutting down".into() })
    }

    async fn on_notice(&self, from: Caller, notice: PeerNotice) {
        let _ = self.events.send(Event::Peer(PeerEvent::Notice { from, notice })).await;
    }
}
