//! The fake alert sink and the delivery invariants judged from what it
//! saw: every request the nodes' dispatchers sent, what the sink did with
//! it, and what the cluster committed about each record.
//!
//! A request is *accepted* when the sink took the alert (it would page
//! someone): the outcomes [`Behaviour::Succeed`] and
//! [`Behaviour::CrashAfterAccept`]. The sink decides at the instant of the
//! request; the answer travels back after a delay (never, for a hang).

use std::collections::{BTreeMap, BTreeSet};

use qu_core::alerting::TransitionOrder;

use crate::content::{Content, Status};

/// What the sink does with one request (drawn from the run's RNG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Succeed,
    /// A transient failure, optionally with a `Retry-After`.
    Transient {
        retry_after_ms: Option<u64>,
    },
    Permanent,
    /// Never answers; only an abort (or the sender's crash) ends it.
    Hang,
    /// Accepts the alert, then the sender crashes before it learns so.
    CrashAfterAccept,
}

impl Behaviour {
    pub fn accepted(self) -> bool {
        matches!(self, Behaviour::Succeed | Behaviour::CrashAfterAccept)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Sent, not answered, not aborted.
    InFlight,
    /// The answer reached the sender's process (it may be paused).
    Answered,
    /// The sender's dispatcher said `AbortAll` before the answer came.
    Aborted,
    /// The sender crashed before the answer came.
    SenderCrashed,
}

/// One entry of the sink's log.
#[derive(Debug, Clone)]
pub struct Request {
    pub at_ms: u64,
    pub node: usize,
    /// The sender's incarnation (bumped at each restart).
    pub incarnation: u64,
    pub key: String,
    pub attempt: u32,
    /// `role == Master && can_serve()` on the sender at that instant.
    pub lease: bool,
    pub behaviour: Behaviour,
    pub state: RequestState,
    /// Set by [`Book::send`]: where it falls among the key events.
    pub seq: u64,
}

/// Something that happened to a record's sends, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    Accepted {
        request: usize,
    },
    Aborted {
        node: usize,
    },
    SenderCrashed {
        node: usize,
    },
    /// The sender's dispatcher stopped acting, or (seen at a later send)
    /// its lease had run out on its own clock.
    LeaseLost {
        node: usize,
    },
    /// The whole cluster was restored from a backup that holds the record
    /// pending: what happened to it since the backup is forgotten.
    Restored,
}

/// Why a raw duplicate was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excuse {
    Crash,
    Abort,
    LeaseLost,
    Restore,
}

/// Delivery counts of one run (or a sweep, summed with [`DeliveryStats::add`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Distinct records a commit contained.
    pub records_committed: u64,
    pub delivered_committed: u64,
    pub failed_committed: u64,
    pub sends: u64,
    pub accepted: u64,
    pub succeeded: u64,
    pub transient: u64,
    pub transient_retry_after: u64,
    pub permanent: u64,
    pub hung: u64,
    /// Sink-induced crashes: accepted, then the sender died before the answer.
    pub crash_after_accept: u64,
    /// Crashes (of any cause) of a node holding an accepted send whose
    /// result was not committed yet.
    pub crash_between_send_and_commit: u64,
    pub aborted: u64,
    /// Sends by a node whose lease ran out on its own clock since its core
    /// was last stepped (`can_serve()` still said yes; it learns at its next
    /// step).
    pub sends_after_lease_ran_out: u64,
    /// Sends made while another node still had one in flight, that node's
    /// lease having run out on its own clock since its dispatcher was last
    /// told it may act (it is paused, or has not ticked since).
    pub beside_a_stale_sender: u64,
    /// The same key accepted again.
    pub raw_duplicates: u64,
    pub duplicates_after_crash: u64,
    pub duplicates_after_abort: u64,
    pub duplicates_after_lease_lost: u64,
    /// The same key accepted again after a whole-cluster restore from a
    /// backup that held it pending (the guide says so: the receiver drops
    /// the repeat by its idempotency key).
    pub duplicates_after_restore: u64,
    /// Records still undelivered at the end because a hung send of their
    /// (check, alert) was still in flight (only an abort ends a hang).
    pub stuck_behind_hang: u64,
}

impl DeliveryStats {
    pub fn add(&mut self, other: &Self) {
        let pairs = [
            (&mut self.records_committed, other.records_committed),
            (&mut self.delivered_committed, other.delivered_committed),
            (&mut self.failed_committed, other.failed_committed),
            (&mut self.sends, other.sends),
            (&mut self.accepted, other.accepted),
            (&mut self.succeeded, other.succeeded),
            (&mut self.transient, other.transient),
            (&mut self.transient_retry_after, other.transient_retry_after),
            (&mut self.permanent, other.permanent),
            (&mut self.hung, other.hung),
            (&mut self.crash_after_accept, other.crash_after_accept),
            (&mut self.crash_between_send_and_commit, other.crash_between_send_and_commit),
            (&mut self.aborted, other.aborted),
            (&mut self.sends_after_lease_ran_out, other.sends_after_lease_ran_out),
            (&mut self.beside_a_stale_sender, other.beside_a_stale_sender),
            (&mut self.raw_duplicates, other.raw_duplicates),
            (&mut self.duplicates_after_crash, other.duplicates_after_crash),
            (&mut self.duplicates_after_abort, other.duplicates_after_abort),
            (&mut self.duplicates_after_lease_lost, other.duplicates_after_lease_lost),
            (&mut self.duplicates_after_restore, other.duplicates_after_restore),
            (&mut self.stuck_behind_hang, other.stuck_behind_hang),
        ];
        for (mine, theirs) in pairs {
            *mine += theirs;
        }
    }
}

#[derive(Debug, Clone)]
struct CommittedRecord {
    check: String,
    alert: String,
    order: TransitionOrder,
    /// `Some(delivered)` once a committed snapshot holds it finished.
    finished: Option<bool>,
}

/// The sink's log and everything the delivery invariants are judged by.
#[derive(Debug, Clone, Default)]
pub struct Book {
    pub requests: Vec<Request>,
    pub stats: DeliveryStats,
    /// Per node, the requests in flight.
    in_flight: Vec<BTreeSet<usize>>,
    /// Every record a committed snapshot contained.
    committed: BTreeMap<String, CommittedRecord>,
    /// Per key, the accepted requests.
    accepted: BTreeMap<String, Vec<usize>>,
    /// Per (check, alert), the order of the latest key accepted first.
    order_max: BTreeMap<(String, String), TransitionOrder>,
    events: BTreeMap<String, Vec<(u64, KeyEvent)>>,
    /// Per node, keys it had accepted whose result is not committed.
    unsettled: Vec<BTreeSet<String>>,
    /// Records committed (and so sendable) before a whole-cluster restore
    /// from a backup that did not hold them.
    forgotten: BTreeSet<String>,
    seq: u64,
}

impl Book {
    pub fn new(nodes: usize) -> Self {
        Self { in_flight: vec![BTreeSet::new(); nodes], unsettled: vec![BTreeSet::new(); nodes], ..Self::default() }
    }

    fn event(&mut self, key: &str, event: KeyEvent) {
        self.seq += 1;
        self.events.entry(key.to_string()).or_default().push((self.seq, event));
    }

    /// The nodes other than `node` with a send in flight, each with one of
    /// its requests.
    pub fn other_senders(&self, node: usize) -> Vec<(usize, &Request)> {
        self.in_flight
            .iter()
            .enumerate()
            .filter(|(j, set)| *j != node && !set.is_empty())
            .map(|(j, set)| (j, &self.requests[*set.iter().next().expect("not empty")]))
            .collect()
    }

    /// One of `node`'s requests in flight, if any.
    pub fn first_in_flight(&self, node: usize) -> Option<&Request> {
        self.in_flight[node].iter().next().map(|i| &self.requests[*i])
    }

    /// The record `key` may be sent: a committed snapshot holds it, and
    /// none holds it finished.
    pub fn check_send(&self, key: &str) -> Result<(), String> {
        match self.committed.get(key) {
            None => Err("no snapshot a majority committed holds this record".into()),
            Some(r) if r.finished.is_some() => Err(format!("its result ({:?}) was already committed", r.finished)),
            Some(_) => Ok(()),
        }
    }

    /// The latest accepted request for `key`.
    pub fn last_accepted(&self, key: &str) -> Option<&Request> {
        self.accepted.get(key).and_then(|list| list.last()).map(|i| &self.requests[*i])
    }

    /// Logs a request. For an accepted one, checks the order per (check,
    /// alert) and that a repeat of an accepted key has an excuse;
    /// `previous_sender_holds_lease` says whether the sender of the latest
    /// earlier accepted request of this key still holds its lease now (same
    /// incarnation, lease valid on its own clock).
    pub fn send(&mut self, mut request: Request, previous_sender_holds_lease: Option<bool>) -> Result<usize, String> {
        let index = self.requests.len();
        self.seq += 1;
        request.seq = self.seq;
        let (key, node, behaviour) = (request.key.clone(), request.node, request.behaviour);
        self.requests.push(request);
        self.in_flight[node].insert(index);
        self.count(behaviour);
        if !behaviour.accepted() {
            return Ok(index);
        }
        let record = self.committed.get(&key).expect("checked before the send");
        match self.accepted.get(&key).and_then(|list| list.last()).copied() {
            None => {
                let queue = (record.check.clone(), record.alert.clone());
                if let Some(max) = self.order_max.get(&queue)
                    && *max >= record.order
                {
                    return Err(format!(
                        "{key} accepted after a later record of {}/{} ({max:?}): out of transition order\n{}",
                        queue.0,
                        queue.1,
                        self.history_of_queue(&queue)
                    ));
                }
                self.order_max.insert(queue, record.order.clone());
            }
            Some(previous) => {
                let excuse = self.excuse(&key, previous, previous_sender_holds_lease == Some(false));
                let Some(excuse) = excuse else {
                    return Err(format!(
                        "{key} accepted twice with no crash, abort or lease loss of the earlier sender in between\n{}",
                        self.history(&key)
                    ));
                };
                self.stats.raw_duplicates += 1;
                match excuse {
                    Excuse::Crash => self.stats.duplicates_after_crash += 1,
                    Excuse::Abort => self.stats.duplicates_after_abort += 1,
                    Excuse::LeaseLost => self.stats.duplicates_after_lease_lost += 1,
                    Excuse::Restore => self.stats.duplicates_after_restore += 1,
                }
            }
        }
        self.stats.accepted += 1;
        self.accepted.entry(key.clone()).or_default().push(index);
        self.event(&key, KeyEvent::Accepted { request: index });
        self.unsettled[node].insert(key);
        Ok(index)
    }

    fn count(&mut self, behaviour: Behaviour) {
        self.stats.sends += 1;
        match behaviour {
            Behaviour::Succeed => self.stats.succeeded += 1,
            Behaviour::Transient { retry_after_ms: None } => self.stats.transient += 1,
            Behaviour::Transient { retry_after_ms: Some(_) } => self.stats.transient_retry_after += 1,
            Behaviour::Permanent => self.stats.permanent += 1,
            Behaviour::Hang => self.stats.hung += 1,
            Behaviour::CrashAfterAccept => {}
        }
    }

    /// Why `key` may be accepted again after request `previous`: its
    /// sender aborted it, crashed, or lost its lease since (the most
    /// specific of these is named).
    fn excuse(&mut self, key: &str, previous: usize, lease_expired_now: bool) -> Option<Excuse> {
        let (since, sender) = (self.requests[previous].seq, self.requests[previous].node);
        let after: Vec<KeyEvent> =
            self.events.get(key).into_iter().flatten().filter(|(seq, _)| *seq > since).map(|(_, e)| *e).collect();
        let found = |wanted: KeyEvent| after.contains(&wanted);
        if found(KeyEvent::Aborted { node: sender }) {
            return Some(Excuse::Abort);
        }
        if found(KeyEvent::SenderCrashed { node: sender }) {
            return Some(Excuse::Crash);
        }
        if found(KeyEvent::LeaseLost { node: sender }) {
            return Some(Excuse::LeaseLost);
        }
        if found(KeyEvent::Restored) {
            return Some(Excuse::Restore);
        }
        if lease_expired_now {
            // The sender is paused or has not ticked since its lease ran out.
            self.event(key, KeyEvent::LeaseLost { node: sender });
            return Some(Excuse::LeaseLost);
        }
        None
    }

    /// The sink answered request `index` (or will never: it was aborted or
    /// its sender crashed). Returns whether the answer goes back.
    pub fn answer(&mut self, index: usize) -> bool {
        let request = &mut self.requests[index];
        if request.state != RequestState::InFlight {
            return false;
        }
        request.state = RequestState::Answered;
        let node = request.node;
        self.in_flight[node].remove(&index);
        true
    }

    /// `node`'s dispatcher aborted everything it had in flight.
    pub fn abort_all(&mut self, node: usize) {
        for index in std::mem::take(&mut self.in_flight[node]) {
            self.requests[index].state = RequestState::Aborted;
            self.stats.aborted += 1;
            let key = self.requests[index].key.clone();
            self.event(&key, KeyEvent::Aborted { node });
        }
    }

    /// `node`'s dispatcher stopped acting.
    pub fn lease_lost(&mut self, node: usize) {
        for key in self.unsettled[node].clone() {
            self.event(&key, KeyEvent::LeaseLost { node });
        }
    }

    /// `node` crashed: its sends die with it, and so does what it knew.
    pub fn crashed(&mut self, node: usize) {
        for index in std::mem::take(&mut self.in_flight[node]) {
            self.requests[index].state = RequestState::SenderCrashed;
        }
        let unsettled = std::mem::take(&mut self.unsettled[node]);
        if !unsettled.is_empty() {
            self.stats.crash_between_send_and_commit += 1;
        }
        for key in unsettled {
            self.event(&key, KeyEvent::SenderCrashed { node });
        }
    }

    /// Every node was restored from a backup with `content` (the
    /// whole-cluster restore): it is the truth now. Records it does not
    /// hold are gone; those it holds have the status it says, and one it
    /// holds pending may be sent again. The order per check and alert
    /// starts again.
    pub fn restored(&mut self, content: &Content) {
        let gone: Vec<String> = self.committed.keys().filter(|k| !content.records.contains_key(*k)).cloned().collect();
        for key in gone {
            self.committed.remove(&key);
            self.forgotten.insert(key);
        }
        for (key, record) in &content.records {
            let finished = match record.status {
                Status::Pending => None,
                Status::Delivered => Some(true),
                Status::Failed => Some(false),
            };
            self.committed.insert(
                key.clone(),
                CommittedRecord {
                    check: record.check.clone(),
                    alert: record.alert.clone(),
                    order: TransitionOrder::of(&record.transition),
                    finished,
                },
            );
            if finished.is_none() {
                self.event(key, KeyEvent::Restored);
            }
        }
        // A backup may hold pending an older record than one the sink took
        // since (it is sent, as the guide says): the order starts again.
        self.order_max.clear();
    }

    /// A snapshot with `content` was committed. A record committed
    /// `delivered` must have been accepted by the sink.
    pub fn committed(&mut self, content: &Content) -> Result<(), String> {
        for (key, record) in &content.records {
            let entry = self.committed.entry(key.clone()).or_insert_with(|| {
                self.stats.records_committed += 1;
                CommittedRecord {
                    check: record.check.clone(),
                    alert: record.alert.clone(),
                    order: TransitionOrder::of(&record.transition),
                    finished: None,
                }
            });
            if (entry.check.as_str(), entry.alert.as_str()) != (record.check.as_str(), record.alert.as_str()) {
                return Err(format!("record {key} changed from {}/{} to {record:?}", entry.check, entry.alert));
            }
            let finished = match record.status {
                Status::Pending => continue,
                Status::Delivered => true,
                Status::Failed => false,
            };
            match entry.finished {
                Some(before) if before != finished => {
                    return Err(format!("record {key} committed finished twice: delivered {before}, then {finished}"));
                }
                Some(_) => continue,
                None => entry.finished = Some(finished),
            }
            if finished {
                self.stats.delivered_committed += 1;
                if !self.accepted.contains_key(key) {
                    return Err(format!("{key} committed delivered, but the sink never accepted it"));
                }
            } else {
                self.stats.failed_committed += 1;
            }
            for set in &mut self.unsettled {
                set.remove(key);
            }
        }
        Ok(())
    }

    /// After the calm phase: every committed record was accepted at least
    /// once or committed failed (unless a hung send of its check and alert
    /// is still in flight), and nothing uncommitted was ever sent.
    pub fn check_end(&mut self) -> Result<(), String> {
        let hung: BTreeSet<(String, String)> = self
            .requests
            .iter()
            .filter(|r| r.state == RequestState::InFlight && r.behaviour == Behaviour::Hang)
            .filter_map(|r| self.committed.get(&r.key).map(|c| (c.check.clone(), c.alert.clone())))
            .collect();
        let mut stuck = 0;
        for (key, record) in &self.committed {
            if self.accepted.contains_key(key) || record.finished == Some(false) {
                continue;
            }
            if hung.contains(&(record.check.clone(), record.alert.clone())) {
                stuck += 1;
                continue;
            }
            return Err(format!(
                "committed record {key} ({}/{}) never delivered nor committed failed\n{}",
                record.check,
                record.alert,
                self.history(key)
            ));
        }
        self.stats.stuck_behind_hang = stuck;
        if let Some(r) =
            self.requests.iter().find(|r| !self.committed.contains_key(&r.key) && !self.forgotten.contains(&r.key))
        {
            return Err(format!("node {} sent {} (at {} ms), which was never committed", r.node, r.key, r.at_ms));
        }
        Ok(())
    }

    /// Everything the sink saw of `key`, for a violation's message.
    fn history(&self, key: &str) -> String {
        let mut lines: Vec<String> = self
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key == key)
            .map(|(i, r)| format!("  request {i}: {}", describe(r)))
            .collect();
        for (seq, event) in self.events.get(key).into_iter().flatten() {
            lines.push(format!("  event #{seq}: {event:?}"));
        }
        lines.join("\n")
    }

    fn history_of_queue(&self, queue: &(String, String)) -> String {
        self.requests
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                self.committed.get(&r.key).is_some_and(|c| (c.check.as_str(), c.alert.as_str()) == (&queue.0, &queue.1))
            })
            .map(|(i, r)| format!("  request {i}: {}", describe(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One request as a line of the sink's log.
pub fn describe(r: &Request) -> String {
    format!(
        "{} ms n{} (incarnation {}) {} attempt {} lease {} -> {:?} [{:?}]",
        r.at_ms, r.node, r.incarnation, r.key, r.attempt, r.lease, r.behaviour, r.state
    )
}
