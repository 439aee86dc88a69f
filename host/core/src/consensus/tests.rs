//! Scripted scenarios on a perfect in-memory network. Randomized faults are
//! the simulator's job (`qu-sim`); these pin down behaviour by example.

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::NodeId;

const TIMING: Timing = Timing { heartbeat_ms: 100, dead_after_ms: 400, master_cooldown_ms: 2_000 };
const TICK: u64 = 10;

fn id(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

struct Net {
    now: u64,
    cores: BTreeMap<NodeId, Core>,
    down: Vec<NodeId>,
    queue: VecDeque<(NodeId, NodeId, Msg)>,
    results: BTreeMap<u64, Result<ConfigId, ProposeError>>,
    disk: BTreeMap<NodeId, (Durable, Snapshot)>,
    role_changes: Vec<(NodeId, u64, Role)>,
    /// Nodes cut off from everyone: every message from or to them is lost.
    isolated: Vec<NodeId>,
}

impl Net {
    fn new(members: &[u8]) -> Self {
        let ids: Vec<NodeId> = members.iter().map(|n| id(*n)).collect();
        let genesis = Snapshot::new(ConfigId { term: 0, version: 1 }, ids.clone(), TIMING, "v1");
        let mut net = Net {
            now: 0,
            cores: BTreeMap::new(),
            down: Vec::new(),
            queue: VecDeque::new(),
            results: BTreeMap::new(),
            disk: BTreeMap::new(),
            role_changes: Vec::new(),
            isolated: Vec::new(),
        };
        for node in ids {
            net.disk.insert(node, (Durable::default(), genesis.clone()));
            net.start(node);
        }
        net
    }

    /// A node outside the cluster, holding only its own blank config.
    fn add_outsider(&mut self, n: u8, knows: &[u8]) {
        let members: Vec<NodeId> = knows.iter().map(|k| id(*k)).collect();
        let blank = Snapshot::new(ConfigId::ZERO, members, TIMING, "blank");
        self.disk.insert(id(n), (Durable::default(), blank));
        self.start(id(n));
    }

    fn start(&mut self, node: NodeId) {
        let (durable, config) = self.disk[&node].clone();
        let (core, out) = Core::new(node, durable, config, self.now, 7);
        self.cores.insert(node, core);
        self.down.retain(|d| *d != node);
        self.execute(node, out);
    }

    fn stop(&mut self, node: NodeId) {
        self.cores.remove(&node);
        self.down.push(node);
    }

    fn execute(&mut self, node: NodeId, out: Vec<Output>) {
        for output in out {
            match output {
                Output::PersistDurable(d) => self.disk.get_mut(&node).unwrap().0 = d,
                Output::PersistConfig(s) => self.disk.get_mut(&node).unwrap().1 = s,
                Output::Send { to, msg } => self.queue.push_back((node, to, msg)),
                Output::ProposalDone { request, result } => {
                    self.results.insert(request, result);
                }
                Output::RoleChanged { term, role, .. } => self.role_changes.push((node, term, role)),
                Output::NeedFreshCommit { next } => {
                    let current = self.cores[&node].config().clone();
                    let snapshot =
                        Snapshot::new(next, current.members.clone(), current.timing, current.content.clone());
                    self.propose_snapshot(node, 1_000_000 + next.term, snapshot, None);
                }
            }
        }
    }

    fn step(&mut self, node: NodeId, input: Input) {
        let now = self.now;
        let Some(core) = self.cores.get_mut(&node) else { return };
        let out = core.step(now, input);
        self.execute(node, out);
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += TICK;
            let nodes: Vec<NodeId> = self.cores.keys().copied().collect();
            for node in nodes {
                self.step(node, Input::Tick);
            }
            while let Some((from, to, msg)) = self.queue.pop_front() {
                let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
                if self.cores.contains_key(&to) && !cut {
                    self.step(to, Input::Receive { from, msg });
                }
            }
        }
    }

    fn masters(&self) -> Vec<NodeId> {
        self.cores.values().filter(|c| c.has_lease()).map(|c| c.me()).collect()
    }

    fn master(&self) -> NodeId {
        let masters = self.masters();
        assert_eq!(masters.len(), 1, "expected one master, found {masters:?}");
        masters[0]
    }

    fn propose_snapshot(&mut self, node: NodeId, request: u64, snapshot: Snapshot, new_member: Option<NodeId>) {
        self.step(node, Input::Propose { request, snapshot, new_member });
    }

    /// Proposes `content` (same members) on `node`.
    fn propose(&mut self, node: NodeId, request: u64, content: &str) {
        let core = &self.cores[&node];
        let snapshot = Snapshot::new(core.next_config_id(), core.config().members.clone(), TIMING, content);
        self.propose_snapshot(node, request, snapshot, None);
    }

    /// Puts `backup` on stopped `node`'s disk with `version: 0`, keeping its
    /// term and vote: the operations guide's one-node restore.
    fn restore(&mut self, node: NodeId, backup: &Snapshot) {
        assert!(!self.cores.contains_key(&node), "restore a stopped node");
        let durable = self.disk[&node].0.clone();
        self.disk.insert(node, (durable, backup.restamped(ConfigId { term: backup.id.term, version: 0 })));
    }

    fn propose_members(&mut self, node: NodeId, request: u64, members: &[u8], new_member: Option<u8>) {
        let core = &self.cores[&node];
        let members = members.iter().map(|m| id(*m)).collect();
        let snapshot = Snapshot::new(core.next_config_id(), members, TIMING, format!("members r{request}"));
        self.propose_snapshot(node, request, snapshot, new_member.map(id));
    }
}

#[test]
fn a_sole_member_elects_itself_at_once_and_each_restart_is_a_new_term() {
    let mut net = Net::new(&[1]);
    net.run_for(TICK);
    assert_eq!(net.master(), id(1));
    assert_eq!(net.cores[&id(1)].term(), 1);
    net.run_for(100);
    assert!(net.cores[&id(1)].can_serve(), "the fresh commit in term 1 is done");
    net.stop(id(1));
    net.start(id(1));
    net.run_for(TICK);
    assert_eq!(net.cores[&id(1)].term(), 2);
}

#[test]
fn at_bootstrap_the_lowest_id_becomes_master_directly() {
    let mut net = Net::new(&[3, 1, 2]);
    net.run_for(2_000);
    assert_eq!(net.master(), id(1));
    assert_eq!(net.cores[&id(1)].term(), 1, "one election, no churn");
    for core in net.cores.values() {
        assert_eq!(core.master(), Some(id(1)));
        assert_eq!(core.config().id, ConfigId { term: 1, version: 2 }, "the fresh commit reached everyone");
    }
}

#[test]
fn mutations_commit_on_a_majority_and_replicate_to_all() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.propose(id(1), 1, "v1,a");
    net.run_for(50);
    assert_eq!(net.results[&1], Ok(ConfigId { term: 1, version: 3 }));
    for core in net.cores.values() {
        assert_eq!(&*core.config().content, "v1,a");
    }
    // A follower cannot commit; it names the master.
    net.propose(id(2), 2, "v1,a,b");
    assert_eq!(net.results[&2], Err(ProposeError::NotMaster { master: Some(id(1)) }));
    // A proposal built on an old version is refused.
    let stale = Snapshot::new(ConfigId { term: 1, version: 3 }, vec![id(1), id(2), id(3)], TIMING, "stale");
    net.propose_snapshot(id(1), 3, stale, None);
    assert!(matches!(net.results[&3], Err(ProposeError::Stale { .. })));
}

#[test]
fn killing_the_master_elects_another_within_dead_after_plus_two_heartbeats() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.stop(id(1));
    let killed_at = net.now;
    let mut elected_at = None;
    while elected_at.is_none() && net.now < killed_at + 5_000 {
        net.run_for(TICK);
        if net.masters().len() == 1 {
            elected_at = Some(net.now);
        }
    }
    let took = elected_at.expect("a new master") - killed_at;
    assert!(took <= TIMING.dead_after_ms + 2 * TIMING.heartbeat_ms, "failover took {took} ms");
    assert_eq!(net.master(), id(2), "the next-lowest id is preferred");
}

#[test]
fn the_preferred_node_takes_the_role_back_only_after_the_cooldown() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.stop(id(1));
    net.run_for(1_000);
    assert_eq!(net.master(), id(2));
    let term_before = net.cores[&id(2)].term();
    net.start(id(1));
    let back_at = net.now;
    net.run_for(TIMING.master_cooldown_ms - 300);
    assert_eq!(net.master(), id(2), "the current master keeps the role during the cooldown");
    while net.masters() != [id(1)] && net.now < back_at + TIMING.master_cooldown_ms + 2_000 {
        net.run_for(TICK);
        assert!(net.masters().len() <= 1, "never two masters: {:?}", net.masters());
    }
    assert_eq!(net.master(), id(1));
    assert_eq!(net.cores[&id(1)].term(), term_before + 1, "the hand-over bumps the term once");
    let handover = net.now - back_at;
    assert!(handover >= TIMING.master_cooldown_ms, "handed over after {handover} ms");
}

#[test]
fn two_of_three_down_means_no_master_and_no_commits() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.stop(id(2));
    net.stop(id(3));
    net.run_for(TIMING.dead_after_ms + 50);
    assert!(net.masters().is_empty(), "a master without a majority steps down within dead_after");
    net.propose(id(1), 1, "x");
    assert!(matches!(net.results[&1], Err(ProposeError::NotMaster { .. })));
    assert_eq!(net.cores[&id(1)].term(), 1, "pre-vote keeps the term from climbing while alone");
    net.run_for(3_000);
    assert_eq!(net.cores[&id(1)].term(), 1);
    net.start(id(2));
    net.run_for(1_500);
    let master = net.master();
    net.propose(master, 2, "x");
    net.run_for(50);
    assert!(net.results[&2].is_ok(), "mutations succeed the moment quorum is back");
    net.run_for(TIMING.master_cooldown_ms + 500);
    assert_eq!(net.master(), id(1), "and the preferred node has the role after the cooldown");
}

#[test]
fn adding_a_silent_node_to_a_one_node_cluster_changes_nothing() {
    let mut net = Net::new(&[1]);
    net.run_for(100);
    let before = net.cores[&id(1)].config().clone();
    net.propose_members(id(1), 1, &[1, 2], Some(2));
    net.run_for(3 * TIMING.dead_after_ms);
    assert_eq!(net.results[&1], Err(ProposeError::NewMemberSilent { node: id(2) }));
    assert_eq!(net.cores[&id(1)].config(), &before, "nothing applied");
    assert!(net.cores[&id(1)].can_serve(), "the cluster is not wedged");
    net.propose(id(1), 2, "still works");
    assert!(net.results[&2].is_ok());
}

#[test]
fn a_master_never_pulls_the_config_it_is_still_proposing_to_a_new_member() {
    let mut net = Net::new(&[1]);
    net.run_for(100);
    net.add_outsider(2, &[1]);
    net.propose_members(id(1), 1, &[1, 2], Some(2));
    // Deliver only the Replicate to the new member; its ack is lost.
    let (from, to, msg) = net.queue.pop_front().expect("the replicate");
    net.queue.clear();
    net.step(to, Input::Receive { from, msg });
    net.queue.retain(|(_, _, m)| !matches!(m, Msg::ReplicateAck { .. }));
    // The new member, now holding the proposed config, heartbeats the master.
    let hb = Msg::Heartbeat { term: 1, config: net.cores[&id(2)].config().id, master: false, sent_at: 0 };
    net.step(id(1), Input::Receive { from: id(2), msg: hb });
    assert!(!net.queue.iter().any(|(_, _, m)| matches!(m, Msg::Pull)), "the master asked to pull");
    net.run_for(300);
    assert!(net.results[&1].is_ok(), "{:?}", net.results.get(&1));
    assert!(net.cores[&id(1)].can_serve());
}

#[test]
fn a_node_that_acknowledges_is_added_and_a_removed_node_is_ignored() {
    let mut net = Net::new(&[1]);
    net.run_for(100);
    net.add_outsider(2, &[1]);
    net.propose_members(id(1), 1, &[1, 2], Some(2));
    net.run_for(100);
    assert!(net.results[&1].is_ok(), "{:?}", net.results.get(&1));
    assert_eq!(net.cores[&id(2)].config().members, vec![id(1), id(2)]);
    assert_eq!(net.cores[&id(2)].master(), Some(id(1)));
    net.add_outsider(3, &[1, 2]);
    net.propose_members(id(1), 2, &[1, 2, 3], Some(3));
    net.run_for(200);
    assert!(net.results[&2].is_ok());
    assert!(net.cores.values().all(|c| c.config().members.len() == 3));

    net.propose_members(id(1), 3, &[1, 2], None);
    net.run_for(200);
    assert!(net.results[&3].is_ok());
    // Node 3 keeps running on its old config but counts for nothing.
    net.run_for(3_000);
    assert_eq!(net.master(), id(1));
    assert!(!net.cores[&id(1)].is_live(&id(3)), "a removed node is not counted live");
    assert_eq!(net.cores[&id(1)].term(), net.cores[&id(2)].term());
}

#[test]
fn a_master_can_remove_itself_and_the_rest_elect_a_new_one() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    assert_eq!(net.master(), id(1));
    net.propose_members(id(1), 1, &[2, 3], None);
    net.run_for(50);
    assert!(net.results[&1].is_ok(), "{:?}", net.results.get(&1));
    net.run_for(2_000);
    let master = net.master();
    assert!(master == id(2) || master == id(3));
    assert!(!net.cores[&id(1)].is_member());
    assert_eq!(net.cores[&master].config().members, vec![id(2), id(3)]);
}

#[test]
fn a_lagging_node_pulls_the_newer_version_within_a_heartbeat() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.stop(id(3));
    for r in 1..=5 {
        net.propose(id(1), r, &format!("v1,{r}"));
        net.run_for(20);
    }
    net.start(id(3));
    net.run_for(2 * TIMING.heartbeat_ms + 50);
    assert_eq!(&*net.cores[&id(3)].config().content, "v1,5");
}

#[test]
fn version_zero_is_always_superseded() {
    let zero = ConfigId { term: 99, version: 0 };
    assert!(zero < ConfigId { term: 0, version: 1 });
    assert_eq!(zero, ConfigId::ZERO);
    assert!(ConfigId { term: 2, version: 1 } > ConfigId { term: 1, version: 50 });
}

#[test]
fn votes_are_persisted_before_they_are_sent() {
    let mut net = Net::new(&[1, 2, 3]);
    let mut core = net.cores.remove(&id(2)).unwrap();
    let out = core.step(
        10_000,
        Input::Receive {
            from: id(1),
            msg: Msg::Vote { term: 1, config: ConfigId { term: 0, version: 1 }, transfer: false, sent_at: 0 },
        },
    );
    let persist = out.iter().position(|o| matches!(o, Output::PersistDurable(d) if d.voted_for == Some(id(1))));
    let reply = out.iter().position(|o| matches!(o, Output::Send { msg: Msg::VoteReply { granted: true, .. }, .. }));
    assert!(persist.is_some() && reply.is_some() && persist < reply, "{out:?}");
}

/// Node 3, stopped, has its config edited by hand: same term, a version
/// 50 higher, other content. Nobody may take that copy for the cluster's,
/// and its acknowledgement counts for no proposal of the master's.
#[test]
fn an_ack_names_the_exact_config_and_a_hand_bumped_copy_counts_for_nothing() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    assert_eq!(net.master(), id(1));
    net.stop(id(3));
    let (durable, config) = net.disk[&id(3)].clone();
    let id_bumped = ConfigId { term: config.id.term, version: config.id.version + 50 };
    let bumped = Snapshot::new(id_bumped, config.members.clone(), TIMING, "bumped by hand");
    net.disk.insert(id(3), (durable, bumped));
    net.start(id(3));
    net.run_for(1_000);
    assert_ne!(&*net.cores[&id(2)].config().content, "bumped by hand", "node 2 took the copy from a non-master");
    assert_ne!(&*net.cores[&id(1)].config().content, "bumped by hand");

    net.stop(id(2));
    net.propose(id(1), 1, "needs a real majority");
    net.run_for(3 * TIMING.dead_after_ms);
    let result = net.results.get(&1).expect("an answer");
    assert!(matches!(result, Err(ProposeError::Unknown { .. })), "committed on a bumped copy's ack: {result:?}");
}

/// Three nodes, all stopped: C (node 3) stopped first; a change was
/// acknowledged by A and B; B was then restored from C's older copy with
/// `version: 0` (it forgot the change); A, the other holder, stopped last.
fn restored_after_an_acknowledged_change() -> Net {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    net.stop(id(3));
    let old = net.disk[&id(3)].1.clone();
    net.propose(id(1), 1, "acknowledged");
    net.run_for(50);
    assert!(net.results[&1].is_ok(), "{:?}", net.results.get(&1));
    net.stop(id(2));
    net.restore(id(2), &old);
    net.stop(id(1));
    net
}

/// B is restored from a backup with `version: 0` after it acknowledged a
/// change C never saw; A, the other holder, is down. B must not vote C in:
/// C's config lacks the acknowledged change.
#[test]
fn a_node_restored_at_version_zero_votes_for_nobody_until_it_has_caught_up() {
    let mut net = restored_after_an_acknowledged_change();
    net.start(id(2));
    net.start(id(3));
    net.run_for(3_000);
    assert!(net.masters().is_empty(), "a master was elected on a copy without the acknowledged change");
    net.start(id(1));
    net.run_for(3_000);
    let master = net.master();
    assert_eq!(&*net.cores[&master].config().content, "acknowledged");
    for core in net.cores.values() {
        assert_eq!(&*core.config().content, "acknowledged", "on {}", core.me());
    }
}

/// The master raises `dead_after` from 400 ms to 3 s and is cut off before
/// any follower applies it. Its lease must end when the followers' old
/// promise does, or two nodes hold a lease at once.
#[test]
fn raising_dead_after_never_widens_the_lease_beyond_what_followers_honour() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    assert_eq!(net.master(), id(1));
    let core = &net.cores[&id(1)];
    let raised = Timing { dead_after_ms: 3_000, ..TIMING };
    let snapshot = Snapshot::new(core.next_config_id(), core.config().members.clone(), raised, "raised");
    net.propose_snapshot(id(1), 1, snapshot, None);
    net.isolated.push(id(1));
    let mut elected = false;
    for _ in 0..400 {
        net.run_for(TICK);
        let masters = net.masters();
        assert!(masters.len() <= 1, "two leases at {} ms: {masters:?}", net.now);
        elected |= masters.iter().any(|m| *m != id(1));
    }
    assert!(elected, "the other two elected a master");
}

/// Once a proposal has left the master, a failure is "outcome unknown" —
/// and rightly so: here the next master commits it. A proposal refused
/// before it left (no lease) never appears.
#[test]
fn a_failure_after_the_change_left_the_master_is_unknown_and_a_definite_one_never_applies() {
    let mut net = Net::new(&[1, 2, 3]);
    net.run_for(1_000);
    assert_eq!(net.master(), id(1));
    net.propose(id(1), 1, "sent to node 2 only");
    // Node 2 gets the snapshot, its acknowledgement and everything else is lost.
    let at = net.queue.iter().position(|(_, to, m)| *to == id(2) && matches!(m, Msg::Replicate { .. })).unwrap();
    let (from, to, msg) = net.queue.remove(at).unwrap();
    net.queue.clear();
    net.step(to, Input::Receive { from, msg });
    net.queue.clear();
    net.isolated.push(id(1));
    net.run_for(2 * TIMING.dead_after_ms);
    let result = net.results.get(&1).expect("an answer");
    assert!(matches!(result, Err(ProposeError::Unknown { .. })), "{result:?}");
    assert!(result.as_ref().unwrap_err().to_string().contains("may still apply"));
    // Refused before it left: the old master has no lease now.
    net.propose(id(1), 2, "refused");
    let refused = net.results.get(&2).expect("an answer");
    assert!(!refused.as_ref().unwrap_err().is_unknown(), "{refused:?}");
    net.run_for(1_000);
    net.isolated.clear();
    net.run_for(3_000);
    for core in net.cores.values() {
        assert_eq!(&*core.config().content, "sent to node 2 only", "on {}", core.me());
    }
}

/// Of two members, one is restored at `version: 0` while the other lives:
/// no master can exist without the restored one's vote, so it must catch
/// up from the other member itself (every majority of two includes it),
/// and then vote.
#[test]
fn a_restored_node_of_two_catches_up_from_the_other_member_and_votes_again() {
    let mut net = Net::new(&[1, 2]);
    net.run_for(1_000);
    net.propose(net.master(), 1, "acknowledged");
    net.run_for(100);
    assert!(net.results[&1].is_ok());
    net.stop(id(2));
    let own = net.disk[&id(2)].1.clone();
    net.restore(id(2), &own);
    net.start(id(2));
    assert!(!net.disk[&id(2)].0.restoring.is_empty(), "restoring is persisted");
    net.run_for(3_000);
    let master = net.master();
    assert_eq!(&*net.cores[&master].config().content, "acknowledged");
    assert!(net.disk[&id(2)].0.restoring.is_empty(), "caught up");
}

/// A restored node that crashes before it caught up is still restoring
/// when it comes back, though its config no longer says `version: 0`.
#[test]
fn restoring_survives_a_restart_until_caught_up() {
    let mut net = restored_after_an_acknowledged_change();
    net.start(id(3));
    net.start(id(2));
    net.run_for(500);
    assert_ne!(net.disk[&id(2)].1.id.version, 0, "it pulled node 3's copy");
    net.stop(id(2));
    net.start(id(2));
    net.run_for(3_000);
    assert!(net.masters().is_empty(), "a master was elected without the acknowledged change");
    net.start(id(1));
    net.run_for(3_000);
    for core in net.cores.values() {
        assert_eq!(&*core.config().content, "acknowledged", "on {}", core.me());
    }
}
