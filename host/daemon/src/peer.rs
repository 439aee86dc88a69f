//! qu's peer protocol on the transport: which requests strangers may send,
//! and a handler that hands every message to the event loop.

use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_transport::{Caller, Handler, Protocol};
use tokio::sync::{mpsc, oneshot};

use crate::daemon::{Event, PeerEvent};

pub(crate) struct Wire;

impl Protocol for Wire {
    type Request = PeerRequest;
    type Response = PeerResponse;
    type Notice = PeerNotice;

    fn open_to_untrusted(request: &PeerRequest) -> bool {
        request.is_join_handshake()
    }
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
