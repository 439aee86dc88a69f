//! Consensus state: terms, votes and the master role.
//!
//! Raft's rules, as a pure state machine the daemon drives. A node's term and
//! vote are durable: the daemon persists [`Durable`] before it acts on a new
//! term or answers a vote, so a restart can never vote twice in one term.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// What must survive a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durable {
    /// The highest term this node has seen.
    pub term: u64,
    /// Whom this node voted for in `term`, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voted_for: Option<NodeId>,
}

/// This node's role in its current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Follower,
    Candidate,
    Master,
}

/// Election in a cluster whose only member is `me`: a majority of one is this
/// node's own vote, so it starts a new term, votes for itself and leads.
/// Returns the state to persist before acting as master, or `None` when `me`
/// is not the sole member.
pub fn elect_sole_member(durable: &Durable, members: &[NodeId], me: NodeId) -> Option<Durable> {
    if members != [me] {
        return None;
    }
    let next = Durable { term: durable.term + 1, voted_for: Some(me) };
    assert!(next.term > durable.term, "terms only grow");
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sole_member_elects_itself_in_a_new_term() {
        let me = NodeId::from_bytes([1; 16]);
        let other = NodeId::from_bytes([2; 16]);
        let durable = Durable { term: 4, voted_for: Some(other) };
        let next = elect_sole_member(&durable, &[me], me).unwrap();
        assert_eq!(next, Durable { term: 5, voted_for: Some(me) });
        assert_eq!(elect_sole_member(&durable, &[me, other], me), None);
        assert_eq!(elect_sole_member(&durable, &[other], me), None);
    }
}
