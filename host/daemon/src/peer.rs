//! qu's peer protocol on the transport: which requests strangers may send.
//! (The handler that hands every message to the event loop is
//! `daemon::event::ToEventLoop`.)

use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_transport::Protocol;

pub(crate) struct Wire;

impl Protocol for Wire {
    type Request = PeerRequest;
    type Response = PeerResponse;
    type Notice = PeerNotice;

    fn open_to_untrusted(request: &PeerRequest) -> bool {
        request.is_join_handshake()
    }
}
