//! The join handshake's binding and key confirmation.
//!
//! `qu node add` runs a balanced PAKE (SPAKE2, in `qu_daemon::pake`) with
//! the cluster secret as the password, bound to this very TLS session:
//! both sides put [`pake_identity`] (the protocol, a TLS keying-material
//! export of the session, and both keys) into it. Each side then proves it
//! derived the same key by sending [`confirmation`]: the joiner first, and
//! only once the inviter has checked it does the inviter send its own, with
//! `cluster.yaml`. So:
//! - nothing of `cluster.yaml` reaches a node that has not proven the
//!   secret in this session;
//! - neither side, honest or not, receives anything it could test secret
//!   guesses against offline: an impostor learns whether the one guess it
//!   put into its own PAKE message was right, and nothing more (an online
//!   guess per handshake, which the joiner rate-limits);
//! - a relay in the middle has two TLS sessions, so its two PAKE runs bind
//!   different exporters and their keys differ.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Fingerprint;

/// Label for the TLS exporter (RFC 8446 §7.5) of a join session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-qu-join-v1";
/// Bytes of exporter output bound into the handshake.
pub const EXPORTER_BYTES: usize = 32;

/// Which side of the handshake a confirmation speaks for. The inviter is
/// the member running `qu node add` (the TLS client); the joiner is the new
/// node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    Inviter,
    Joiner,
}

impl JoinRole {
    fn tag(self) -> &'static [u8] {
        match self {
            JoinRole::Inviter => b"qu-join-v2 inviter confirms",
            JoinRole::Joiner => b"qu-join-v2 joiner confirms",
        }
    }
}

/// The session a handshake is bound to.
#[derive(Debug, Clone)]
pub struct JoinSession<'a> {
    pub exporter: &'a [u8; EXPORTER_BYTES],
    pub inviter: &'a Fingerprint,
    pub joiner: &'a Fingerprint,
}

/// What both sides bind into the PAKE: the protocol version, the TLS
/// exporter of this session, and the two keys, in order.
pub fn pake_identity(session: &JoinSession<'_>) -> Vec<u8> {
    let mut id = b"qu-join-v2".to_vec();
    id.push(0);
    id.extend_from_slice(session.exporter);
    id.extend_from_slice(session.inviter.as_str().as_bytes());
    id.push(0);
    id.extend_from_slice(session.joiner.as_str().as_bytes());
    id
}

fn mac(key: &[u8], role: JoinRole, session: &JoinSession<'_>) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(role.tag());
    mac.update(&[0]);
    mac.update(&pake_identity(session));
    mac
}

/// The key confirmation `role` sends, keyed by the PAKE's shared key.
pub fn confirmation(key: &[u8], role: JoinRole, session: &JoinSession<'_>) -> [u8; 32] {
    mac(key, role, session).finalize().into_bytes().into()
}

/// Checks a confirmation received from the other side, in constant time.
pub fn verify_confirmation(key: &[u8], role: JoinRole, session: &JoinSession<'_>, confirm: &[u8]) -> bool {
    mac(key, role, session).verify_slice(confirm).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_bind_key_role_and_session() {
        let (a, b) = (Fingerprint::from_sha256(&[1; 32]), Fingerprint::from_sha256(&[2; 32]));
        let session = JoinSession { exporter: &[7; 32], inviter: &a, joiner: &b };
        let key = [9u8; 32];
        let confirm = confirmation(&key, JoinRole::Inviter, &session);
        assert!(verify_confirmation(&key, JoinRole::Inviter, &session, &confirm));
        assert!(!verify_confirmation(&[8; 32], JoinRole::Inviter, &session, &confirm), "another key");
        assert!(!verify_confirmation(&key, JoinRole::Joiner, &session, &confirm), "a reflected confirmation");
        let relayed = JoinSession { exporter: &[8; 32], ..session.clone() };
        assert!(!verify_confirmation(&key, JoinRole::Inviter, &relayed, &confirm), "another TLS session");
        let swapped = JoinSession { inviter: &b, joiner: &a, ..session.clone() };
        assert!(!verify_confirmation(&key, JoinRole::Inviter, &swapped, &confirm), "the keys swapped");
        assert_ne!(pake_identity(&session), pake_identity(&swapped));
    }
}
