//! The PAKE of the join handshake: SPAKE2 over Ed25519 (RustCrypto's
//! `spake2`), symmetric, with the cluster secret as the password and the
//! session's [`qu_core::join::pake_identity`] as the identity. What the
//! handshake does with the key is `qu_core::join`'s (confirmations) and
//! the daemon's (`daemon/join.rs`).

use qu_core::join::{JoinSession, pake_identity};
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// Messages of the PAKE are 33 bytes; anything longer is refused unread.
pub const MESSAGE_BYTES_MAX: usize = 64;

/// One side's PAKE, started.
pub struct Pake(Spake2<Ed25519Group>);

impl Pake {
    /// Starts this side's PAKE for `session`; the message goes to the other
    /// side. Uses the system's random numbers.
    pub fn start(secret: &str, session: &JoinSession<'_>) -> (Self, Vec<u8>) {
        let (state, message) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(secret.as_bytes()),
            &Identity::new(&pake_identity(session)),
        );
        (Pake(state), message)
    }

    /// The shared key, from the other side's message. It is the same on
    /// both sides only if both used the same secret in the same session;
    /// the confirmations (`qu_core::join::confirmation`) tell.
    pub fn finish(self, theirs: &[u8]) -> Result<Vec<u8>, String> {
        if theirs.len() > MESSAGE_BYTES_MAX {
            return Err(format!("a join handshake message of {} bytes (at most {MESSAGE_BYTES_MAX})", theirs.len()));
        }
        self.0.finish(theirs).map_err(|e| format!("a malformed join handshake message ({e:?})"))
    }
}

#[cfg(test)]
mod tests {
    use qu_core::Fingerprint;
    use qu_core::join::{JoinRole, confirmation, verify_confirmation};

    use super::*;

    fn keys(inviter_secret: &str, joiner_secret: &str, joiner_exporter: [u8; 32]) -> (Vec<u8>, Vec<u8>) {
        let (a, b) = (Fingerprint::from_sha256(&[1; 32]), Fingerprint::from_sha256(&[2; 32]));
        let inviter = JoinSession { exporter: &[7; 32], inviter: &a, joiner: &b };
        let joiner = JoinSession { exporter: &joiner_exporter, inviter: &a, joiner: &b };
        let (i, i_msg) = Pake::start(inviter_secret, &inviter);
        let (j, j_msg) = Pake::start(joiner_secret, &joiner);
        (i.finish(&j_msg).unwrap(), j.finish(&i_msg).unwrap())
    }

    #[test]
    fn both_sides_agree_only_on_the_same_secret_in_the_same_session() {
        let (i, j) = keys("the-cluster-secret-0123456789abcdef", "the-cluster-secret-0123456789abcdef", [7; 32]);
        assert_eq!(i, j);
        let (i, j) = keys("the-cluster-secret-0123456789abcdef", "another-secret-0123456789abcdef0000", [7; 32]);
        assert_ne!(i, j, "another secret");
        let (i, j) = keys("the-cluster-secret-0123456789abcdef", "the-cluster-secret-0123456789abcdef", [8; 32]);
        assert_ne!(i, j, "another TLS session (a relay)");
    }

    /// An impostor that answers with a message made for a guess learns, from
    /// the honest side's confirmation, whether that one guess was right, and
    /// nothing that tells other guesses apart: a key it derives for any other
    /// secret does not verify the confirmation either.
    #[test]
    fn an_impostor_tests_one_guess_per_handshake() {
        let (a, b) = (Fingerprint::from_sha256(&[1; 32]), Fingerprint::from_sha256(&[2; 32]));
        let session = JoinSession { exporter: &[7; 32], inviter: &a, joiner: &b };
        let secret = "the-cluster-secret-0123456789abcdef";
        let (honest, honest_msg) = Pake::start(secret, &session);
        let (impostor, impostor_msg) = Pake::start("guess-1", &session);
        let honest_key = honest.finish(&impostor_msg).unwrap();
        let confirm = confirmation(&honest_key, JoinRole::Joiner, &session);
        let guessed = impostor.finish(&honest_msg).unwrap();
        assert!(!verify_confirmation(&guessed, JoinRole::Joiner, &session, &confirm), "the guess was wrong");
        // Offline, with the transcript alone, the true secret does not help
        // either: a fresh PAKE for it gives an unrelated key.
        for candidate in [secret, "guess-2"] {
            let (offline, _) = Pake::start(candidate, &session);
            let key = offline.finish(&honest_msg).unwrap();
            assert!(!verify_confirmation(&key, JoinRole::Joiner, &session, &confirm), "{candidate}");
        }
        assert!(Pake::start(secret, &session).0.finish(&[0u8; 65]).is_err(), "oversize");
    }
}
