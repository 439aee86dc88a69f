//! The join handshake's proof of the cluster secret.
//!
//! Both sides prove they know the secret without sending it: each sends
//! HMAC-SHA256(secret, role ‖ exporter ‖ inviter fingerprint ‖ joiner
//! fingerprint), where `exporter` is a TLS keying-material export of this
//! very session. A relay in the middle has two different TLS sessions, so a
//! proof it forwards does not verify on the other side, and it learns nothing
//! about the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Fingerprint;

/// Label for the TLS exporter (RFC 8446 §7.5) of a join session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-qu-join-v1";
/// Bytes of exporter output bound into the proof.
pub const EXPORTER_BYTES: usize = 32;

/// Which side of the handshake a proof speaks for. The inviter is the member
/// running `qu node add` (the TLS client); the joiner is the new node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    Inviter,
    Joiner,
}

impl JoinRole {
    fn tag(self) -> &'static [u8] {
        match self {
            JoinRole::Inviter => b"qu-join-v1 inviter",
            JoinRole::Joiner => b"qu-join-v1 joiner",
        }
    }
}

/// The session this proof is bound to.
#[derive(Debug, Clone)]
pub struct JoinSession<'a> {
    pub exporter: &'a [u8; EXPORTER_BYTES],
    pub inviter: &'a Fingerprint,
    pub joiner: &'a Fingerprint,
}

fn mac(secret: &str, role: JoinRole, session: &JoinSession<'_>) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(role.tag());
    mac.update(&[0]);
    mac.update(session.exporter);
    mac.update(session.inviter.as_str().as_bytes());
    mac.update(&[0]);
    mac.update(session.joiner.as_str().as_bytes());
    mac
}

/// The proof `role` sends in `session`.
pub fn join_proof(secret: &str, role: JoinRole, session: &JoinSession<'_>) -> [u8; 32] {
    mac(secret, role, session).finalize().into_bytes().into()
}

/// Checks a proof received from the other side, in constant time.
pub fn verify_join_proof(secret: &str, role: JoinRole, session: &JoinSession<'_>, proof: &[u8]) -> bool {
    mac(secret, role, session).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_and_session() {
        let (a, b) = (Fingerprint::from_sha256(&[1; 32]), Fingerprint::from_sha256(&[2; 32]));
        let session = JoinSession { exporter: &[7; 32], inviter: &a, joiner: &b };
        let proof = join_proof("correct horse battery", JoinRole::Inviter, &session);
        assert!(verify_join_proof("correct horse battery", JoinRole::Inviter, &session, &proof));
        assert!(!verify_join_proof("wrong secret value!!", JoinRole::Inviter, &session, &proof));
        assert!(!verify_join_proof("correct horse battery", JoinRole::Joiner, &session, &proof));
        let relayed = JoinSession { exporter: &[8; 32], ..session.clone() };
        assert!(!verify_join_proof("correct horse battery", JoinRole::Inviter, &relayed, &proof));
        let swapped = JoinSession { inviter: &b, joiner: &a, ..session };
        assert!(!verify_join_proof("correct horse battery", JoinRole::Inviter, &swapped, &proof));
    }
}
