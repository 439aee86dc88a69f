//! The delivery decision, sans-IO: which committed pending record to send
//! now, in which order, when to retry, when to give up, and which results
//! to propose. The daemon (and the simulator) feed it with
//! [`Dispatcher::step`] and execute what it returns; it reads no clock and
//! does no IO, so every rule below is tested on tables and under the
//! simulator.
//!
//! Rules:
//! - **Committed only.** It sends only records that are `pending` in the
//!   last [`CommittedView`] it was given — a config a majority has
//!   committed, never one that is merely applied. The view is dropped when
//!   the node stops acting, so a node that acts again waits for a commit in
//!   its new tenure before it sends anything.
//! - **Only while acting.** [`DispatchInput::MayAct`] says whether this node
//!   is master with a lease. When it stops acting, every send in flight is
//!   aborted ([`DispatchOutput::AbortAll`]); its outcome is unknown.
//! - **In transition order per (check, alert).** Records are compared
//!   numerically by their transition id (`<term>.<version>[.<index>]`); a
//!   record waits until every earlier one of its check and alert is
//!   delivered here, or failed here *and committed*, so a RECOVERED never
//!   overtakes its DOWN. (A failure known only here would be lost with this
//!   node, and the next master would send the DOWN after the RECOVERED; a
//!   delivery is safe to pass: the sink has it, and a next master that
//!   sends it again sends it first.)
//! - **Successes are remembered** until the committed view shows the
//!   record finished (or gone), across losing and regaining the lease; they
//!   are proposed again while they stay pending. Only a node that never
//!   learned of a send (a new master after a crash) sends it again.
//! - **Deadlines on one clock.** A record's deadline runs on this node's
//!   monotonic clock from the first time it could send it; wall clocks are
//!   never read, so a clock step never fails a record. Every record gets at
//!   least one attempt.
//! - Retry, backoff (with the sink's `Retry-After` capped), permanent
//!   failure, deadline and disabled or removed alerts are decided here.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{RETRY_AFTER_MAX, backoff};
use crate::config::{ClusterConfig, DeliveryResult, DeliveryStatus};
use crate::consensus::SplitMix64;

/// The order of transitions: `<term>.<version>[.<index>]` compared as
/// numbers (so `1.10` comes after `1.9`). An id that does not parse sorts
/// after every one that does, by its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransitionOrder {
    Numeric(Vec<u64>),
    Text(String),
}

impl TransitionOrder {
    pub fn of(transition: &str) -> Self {
        let parts: Option<Vec<u64>> = transition.split('.').map(|p| p.parse().ok()).collect();
        match parts {
            Some(numbers) if !numbers.is_empty() => Self::Numeric(numbers),
            _ => Self::Text(transition.to_string()),
        }
    }
}

/// One record that a committed config holds `pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRecord {
    /// The idempotency key `<transition>/<alert id>`.
    pub key: String,
    pub check_id: String,
    pub alert_id: String,
    pub order: TransitionOrder,
    /// Why it must not be sent any more (its alert was disabled or
    /// removed), if so: it is failed with this reason.
    pub blocked: Option<&'static str>,
}

/// What the dispatcher needs of a committed config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedView {
    pub pending: Vec<PendingRecord>,
    /// `settings.delivery_deadline`.
    pub deadline: Duration,
}

impl CommittedView {
    /// The pending records of a committed `config`.
    pub fn of(config: &ClusterConfig) -> Self {
        let pending = config
            .deliveries
            .iter()
            .filter(|(_, d)| d.status == DeliveryStatus::Pending)
            .map(|(key, d)| {
                let alert = config.alerts.iter().find(|a| a.id == d.alert_id);
                // A reminder of an incident that is over is never sent.
                let stale_reminder = d.reminder.as_ref().is_some_and(|r| {
                    config.states.get(&d.check_id).is_none_or(|s| s.transition != r.of || s.acked.is_some())
                });
                let blocked = match alert {
                    None => Some("the alert was removed before delivery"),
                    Some(a) if a.disabled => Some("the alert was disabled before delivery"),
                    Some(_) if stale_reminder => {
                        Some("the check changed state or was acknowledged before the reminder was sent")
                    }
                    Some(_) => None,
                };
                PendingRecord {
                    key: key.clone(),
                    check_id: d.check_id.clone(),
                    alert_id: d.alert_id.clone(),
                    order: TransitionOrder::of(&d.transition),
                    blocked,
                }
            })
            .collect();
        Self { pending, deadline: config.settings.delivery_deadline }
    }
}

/// How one attempt went, as the sink said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Delivered,
    /// Worth trying again, after `after` if the sink said so.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// It will never work (a permanent error from the sink).
    Failed {
        error: String,
    },
}

/// What the driver tells the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchInput {
    /// A config a majority has committed (on the master: after its
    /// proposal or its fresh commit was acknowledged).
    Committed(CommittedView),
    /// Whether this node may act: master, holding its lease, with a commit
    /// in its term.
    MayAct(bool),
    /// The outcome of `Send { key, attempt }`.
    Attempt { key: String, attempt: u32, outcome: SendOutcome },
    /// Time passed.
    Tick,
}

/// Why a record is finished `failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// The sink said it will never work.
    Permanent,
    /// The next retry would fall after the deadline.
    Deadline { deadline: Duration },
    /// Its alert was disabled or removed.
    Blocked(&'static str),
}

/// A decision about one record, for the driver's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    RetryIn(Duration),
    Failed(FailReason),
}

/// What the dispatcher asks the driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutput {
    /// Send record `key`, attempt number `attempt` (1 = the first).
    Send { key: String, attempt: u32 },
    /// Abort every send in flight: this node may no longer act.
    AbortAll,
    /// Propose these finished records (delivered or failed).
    Propose(Vec<DeliveryResult>),
    /// What was decided about one attempt's outcome (or a blocked record).
    Decided { key: String, attempt: u32, decision: Decision, error: String },
}

/// Knobs (the defaults are the daemon's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Sends in flight at once.
    pub concurrent_max: usize,
    /// A proposed result still pending after this long is proposed again.
    pub recommit_after: Duration,
}

impl Default for DispatchLimits {
    fn default() -> Self {
        Self { concurrent_max: 16, recommit_after: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Ready once `not_before_ms` has passed.
    Waiting {
        not_before_ms: u64,
    },
    InFlight,
    /// Known here; proposed at `proposed_ms` (none yet when it was learned
    /// while not acting).
    Finished {
        result: DeliveryResult,
        proposed_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Track {
    /// Attempts started on this node.
    attempts: u32,
    /// When this node first could send it (its monotonic clock).
    first_ready_ms: Option<u64>,
    stage: Stage,
}

/// The delivery core of one node.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    limits: DispatchLimits,
    rng: SplitMix64,
    acting: bool,
    /// The last committed view of this tenure (`None` until one arrives).
    committed: Option<BTreeMap<String, PendingRecord>>,
    /// The keys of that view's sendable records in queue order (by check,
    /// alert, then transition), sorted once per commit, not per tick.
    queued: Vec<String>,
    deadline: Duration,
    tracks: BTreeMap<String, Track>,
}

impl Dispatcher {
    /// `seed` drives the retry jitter.
    pub fn new(limits: DispatchLimits, seed: u64) -> Self {
        Self {
            limits,
            rng: SplitMix64::new(seed),
            acting: false,
            committed: None,
            queued: Vec::new(),
            deadline: Duration::from_secs(3600),
            tracks: BTreeMap::new(),
        }
    }

    /// Whether this node currently acts.
    pub fn acting(&self) -> bool {
        self.acting
    }

    /// Sends in flight.
    pub fn in_flight(&self) -> usize {
        self.tracks.values().filter(|t| t.stage == Stage::InFlight).count()
    }

    /// Whether `key` is being sent, waiting for a retry, or finished here
    /// but not yet committed.
    pub fn knows(&self, key: &str) -> bool {
        self.tracks.contains_key(key)
    }

    /// Feeds one input at `now_ms` (this node's monotonic clock).
    pub fn step(&mut self, now_ms: u64, input: DispatchInput) -> Vec<DispatchOutput> {
        let mut out = Vec::new();
        match input {
            DispatchInput::Committed(view) => self.on_committed(view),
            DispatchInput::MayAct(acting) => self.on_may_act(acting, now_ms, &mut out),
            DispatchInput::Attempt { key, attempt, outcome } => {
                self.on_attempt(now_ms, key, attempt, outcome, &mut out)
            }
            DispatchInput::Tick => {}
        }
        if self.acting {
            self.schedule(now_ms, &mut out);
        }
        out
    }

    fn on_committed(&mut self, view: CommittedView) {
        self.deadline = view.deadline;
        let pending: BTreeMap<String, PendingRecord> = view.pending.into_iter().map(|r| (r.key.clone(), r)).collect();
        // What the cluster no longer holds pending is settled: forget it,
        // except a send still in flight (its outcome is ignored then).
        self.tracks.retain(|key, track| pending.contains_key(key) || track.stage == Stage::InFlight);
        let mut order: Vec<&PendingRecord> = pending.values().filter(|r| r.blocked.is_none()).collect();
        order.sort_by(|a, b| (&a.check_id, &a.alert_id, &a.order).cmp(&(&b.check_id, &b.alert_id, &b.order)));
        self.queued = order.into_iter().map(|r| r.key.clone()).collect();
        self.committed = Some(pending);
    }

    fn on_may_act(&mut self, acting: bool, now_ms: u64, out: &mut Vec<DispatchOutput>) {
        if acting == self.acting {
            return;
        }
        self.acting = acting;
        if acting {
            // Results known from an earlier tenure go out again at once.
            for track in self.tracks.values_mut() {
                if let Stage::Finished { proposed_ms, .. } = &mut track.stage {
                    *proposed_ms = None;
                }
            }
            return;
        }
        // A new tenure must start from a commit of its own.
        self.committed = None;
        let mut aborted = false;
        for track in self.tracks.values_mut() {
            if track.stage == Stage::InFlight {
                track.stage = Stage::Waiting { not_before_ms: now_ms };
                aborted = true;
            }
        }
        if aborted {
            out.push(DispatchOutput::AbortAll);
        }
    }

    fn on_attempt(
        &mut self,
        now_ms: u64,
        key: String,
        attempt: u32,
        outcome: SendOutcome,
        out: &mut Vec<DispatchOutput>,
    ) {
        let deadline = self.deadline;
        let jitter = (self.rng.next_u64() % 1_000_000) as f64 / 1_000_000.0;
        let Some(track) = self.tracks.get_mut(&key) else { return };
        if track.attempts != attempt || matches!(track.stage, Stage::Finished { .. }) {
            return; // an older attempt's late answer
        }
        let in_flight = track.stage == Stage::InFlight;
        let finished = |delivered: bool, error: &str| DeliveryResult {
            key: key.clone(),
            delivered,
            attempts: attempt,
            error: error.to_string(),
        };
        let (decision, error) = match outcome {
            // A success is remembered even when it arrives after an abort:
            // the sink has it, and sending it again would page twice.
            SendOutcome::Delivered => {
                track.stage = Stage::Finished { result: finished(true, ""), proposed_ms: None };
                (Decision::Delivered, String::new())
            }
            _ if !in_flight => return, // aborted: its failure says nothing
            SendOutcome::Failed { error } => {
                track.stage = Stage::Finished { result: finished(false, &error), proposed_ms: None };
                (Decision::Failed(FailReason::Permanent), error)
            }
            SendOutcome::Retry { error, after } => {
                let delay = after.map_or_else(|| backoff(attempt, jitter), |d| d.min(RETRY_AFTER_MAX));
                let first = track.first_ready_ms.unwrap_or(now_ms);
                let give_up_ms = first.saturating_add(deadline.as_millis() as u64);
                if now_ms.saturating_add(delay.as_millis() as u64) > give_up_ms {
                    track.stage = Stage::Finished { result: finished(false, &error), proposed_ms: None };
                    (Decision::Failed(FailReason::Deadline { deadline }), error)
                } else {
                    track.stage = Stage::Waiting { not_before_ms: now_ms + delay.as_millis() as u64 };
                    (Decision::RetryIn(delay), error)
                }
            }
        };
        out.push(DispatchOutput::Decided { key, attempt, decision, error });
    }

    fn schedule(&mut self, now_ms: u64, out: &mut Vec<DispatchOutput>) {
        let Some(committed) = &self.committed else { return };
        Self::fail_blocked(committed, &mut self.tracks, out);
        let mut propose = Self::due_results(committed, &mut self.tracks, now_ms, self.limits.recommit_after);
        self.start_heads(now_ms, &mut propose, out);
        if !propose.is_empty() {
            out.push(DispatchOutput::Propose(propose));
        }
    }

    /// Records of disabled or removed alerts fail at once (unless a send
    /// is in flight).
    fn fail_blocked(
        committed: &BTreeMap<String, PendingRecord>,
        tracks: &mut BTreeMap<String, Track>,
        out: &mut Vec<DispatchOutput>,
    ) {
        for record in committed.values() {
            let Some(reason) = record.blocked else { continue };
            let track = tracks.entry(record.key.clone()).or_insert(Track {
                attempts: 0,
                first_ready_ms: None,
                stage: Stage::Waiting { not_before_ms: 0 },
            });
            if let Stage::Waiting { .. } = track.stage {
                let result = DeliveryResult {
                    key: record.key.clone(),
                    delivered: false,
                    attempts: track.attempts,
                    error: reason.into(),
                };
                track.stage = Stage::Finished { result, proposed_ms: None };
                out.push(DispatchOutput::Decided {
                    key: record.key.clone(),
                    attempt: track.attempts,
                    decision: Decision::Failed(FailReason::Blocked(reason)),
                    error: reason.to_string(),
                });
            }
        }
    }

    /// Results to propose: new ones, and old ones still pending after
    /// `recommit_after`.
    fn due_results(
        committed: &BTreeMap<String, PendingRecord>,
        tracks: &mut BTreeMap<String, Track>,
        now_ms: u64,
        recommit_after: Duration,
    ) -> Vec<DeliveryResult> {
        let mut propose = Vec::new();
        let recommit_ms = recommit_after.as_millis() as u64;
        for track in tracks.values_mut() {
            if let Stage::Finished { result, proposed_ms } = &mut track.stage {
                let due = proposed_ms.is_none_or(|at| now_ms >= at + recommit_ms);
                if due && committed.contains_key(&result.key) {
                    propose.push(result.clone());
                    *proposed_ms = Some(now_ms);
                }
            }
        }
        propose
    }

    /// Starts the head of each (check, alert) queue when it is due, or
    /// fails it when it waited past its deadline.
    fn start_heads(&mut self, now_ms: u64, propose: &mut Vec<DeliveryResult>, out: &mut Vec<DispatchOutput>) {
        let Some(committed) = &self.committed else { return };
        // The head of each (check, alert) queue, in transition order: the
        // first record not delivered here. The ones after it wait (behind a
        // failure until it is committed: see the module doc).
        let order = self.queued.iter().filter_map(|key| committed.get(key));
        let mut in_flight = self.tracks.values().filter(|t| t.stage == Stage::InFlight).count();
        let mut group: Option<(&str, &str)> = None;
        let mut head_taken = false;
        for record in order {
            let this = (record.check_id.as_str(), record.alert_id.as_str());
            if group != Some(this) {
                group = Some(this);
                head_taken = false;
            }
            if head_taken {
                continue;
            }
            let track = self.tracks.entry(record.key.clone()).or_insert(Track {
                attempts: 0,
                first_ready_ms: None,
                stage: Stage::Waiting { not_before_ms: 0 },
            });
            let not_before_ms = match &track.stage {
                Stage::Finished { result, .. } if result.delivered => continue,
                Stage::Finished { .. } | Stage::InFlight => {
                    head_taken = true;
                    continue;
                }
                Stage::Waiting { not_before_ms } => *not_before_ms,
            };
            head_taken = true;
            let first = *track.first_ready_ms.get_or_insert(now_ms);
            if not_before_ms > now_ms || in_flight >= self.limits.concurrent_max {
                continue;
            }
            let give_up_ms = first.saturating_add(self.deadline.as_millis() as u64);
            if track.attempts > 0 && now_ms > give_up_ms {
                // It waited past its deadline (this node stopped acting meanwhile).
                let error = "not delivered before the deadline".to_string();
                let result = DeliveryResult {
                    key: record.key.clone(),
                    delivered: false,
                    attempts: track.attempts,
                    error: error.clone(),
                };
                propose.push(result.clone());
                track.stage = Stage::Finished { result, proposed_ms: Some(now_ms) };
                out.push(DispatchOutput::Decided {
                    key: record.key.clone(),
                    attempt: track.attempts,
                    decision: Decision::Failed(FailReason::Deadline { deadline: self.deadline }),
                    error,
                });
                // The next one of this queue waits until this is committed.
                continue;
            }
            track.attempts += 1;
            track.stage = Stage::InFlight;
            in_flight += 1;
            out.push(DispatchOutput::Send { key: record.key.clone(), attempt: track.attempts });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn record(transition: &str, check: &str, alert: &str) -> PendingRecord {
        PendingRecord {
            key: format!("{transition}/{alert}"),
            check_id: check.into(),
            alert_id: alert.into(),
            order: TransitionOrder::of(transition),
            blocked: None,
        }
    }

    fn view(records: &[PendingRecord]) -> DispatchInput {
        DispatchInput::Committed(CommittedView { pending: records.to_vec(), deadline: DEADLINE })
    }

    fn sends(out: &[DispatchOutput]) -> Vec<(String, u32)> {
        out.iter()
            .filter_map(|o| match o {
                DispatchOutput::Send { key, attempt } => Some((key.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn proposed(out: &[DispatchOutput]) -> Vec<(String, bool)> {
        out.iter()
            .filter_map(|o| match o {
                DispatchOutput::Propose(results) => Some(results.iter().map(|r| (r.key.clone(), r.delivered))),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn attempt(key: &str, attempt: u32, outcome: SendOutcome) -> DispatchInput {
        DispatchInput::Attempt { key: key.into(), attempt, outcome }
    }

    fn retry() -> SendOutcome {
        SendOutcome::Retry { error: "status 503".into(), after: None }
    }

    fn acting() -> Dispatcher {
        let mut d = Dispatcher::new(DispatchLimits::default(), 7);
        assert!(d.step(0, DispatchInput::MayAct(true)).is_empty());
        d
    }

    #[test]
    fn nothing_is_sent_before_a_committed_view_or_while_not_acting() {
        let mut d = Dispatcher::new(DispatchLimits::default(), 1);
        let r = record("1.5", "c", "a");
        assert!(d.step(0, view(std::slice::from_ref(&r))).is_empty(), "not acting: nothing");
        assert_eq!(sends(&d.step(10, DispatchInput::MayAct(true))), vec![("1.5/a".into(), 1)]);

        // Acting, but a new tenure: the old view is gone until a commit.
        let mut d = acting();
        assert!(sends(&d.step(5, DispatchInput::Tick)).is_empty(), "no view yet");
        assert_eq!(sends(&d.step(6, view(std::slice::from_ref(&r)))), vec![("1.5/a".into(), 1)]);
        assert_eq!(d.step(7, DispatchInput::MayAct(false)), vec![DispatchOutput::AbortAll]);
        assert!(sends(&d.step(8, DispatchInput::MayAct(true))).is_empty(), "regained: waits for its own commit");
        assert_eq!(sends(&d.step(9, view(&[r]))), vec![("1.5/a".into(), 2)], "the aborted send goes again");
    }

    #[test]
    fn one_check_and_alert_goes_in_numeric_transition_order_one_at_a_time() {
        let mut d = acting();
        let (down, recovered) = (record("1.9", "c", "a"), record("1.10", "c", "a"));
        let other_alert = record("1.10", "c", "b");
        let out = d.step(0, view(&[recovered.clone(), down.clone(), other_alert]));
        assert_eq!(sends(&out), vec![("1.9/a".into(), 1), ("1.10/b".into(), 1)], "1.9 before 1.10; b is its own queue");
        assert!(sends(&d.step(5_000, attempt("1.9/a", 1, retry()))).is_empty(), "1.10/a waits while 1.9/a retries");
        assert_eq!(sends(&d.step(10_000, DispatchInput::Tick)), vec![("1.9/a".into(), 2)]);
        let out = d.step(10_100, attempt("1.9/a", 2, SendOutcome::Delivered));
        assert_eq!(sends(&out), vec![("1.10/a".into(), 1)], "the next goes once the one before is delivered");
        assert_eq!(proposed(&out), vec![("1.9/a".into(), true)]);
        assert!(TransitionOrder::of("2.1") > TransitionOrder::of("1.99"));
        assert!(TransitionOrder::of("x") > TransitionOrder::of("9.9"), "unparsable ids go last");
    }

    #[test]
    fn after_a_failure_the_next_of_its_queue_waits_until_the_failure_is_committed() {
        // Found by the simulator (seed 183, 3 nodes): 13.11/a1 failed on one
        // master, 14.15/a1 went at once and was delivered, the master died
        // before the failure committed, and the next master delivered the
        // older 13.11/a1 after the newer one.
        let mut d = acting();
        let (down, recovered, other) = (record("1.9", "c", "a"), record("1.10", "c", "a"), record("1.10", "c", "b"));
        let all = [down.clone(), recovered.clone(), other.clone()];
        assert_eq!(sends(&d.step(0, view(&all))), vec![("1.9/a".into(), 1), ("1.10/b".into(), 1)]);
        let out = d.step(10, attempt("1.9/a", 1, SendOutcome::Failed { error: "status 404".into() }));
        assert_eq!(proposed(&out), vec![("1.9/a".into(), false)]);
        assert!(sends(&out).is_empty(), "1.10/a waits for the failure to commit: {out:?}");
        assert!(sends(&d.step(20, view(&all))).is_empty(), "a view still holding 1.9/a pending: still waiting");
        let out = d.step(30, view(&[recovered.clone(), other.clone()]));
        assert_eq!(sends(&out), vec![("1.10/a".into(), 1)], "committed: the next goes");
        // The same behind a deadline failure decided while scheduling.
        let mut d = acting();
        d.step(0, view(&[down.clone(), recovered.clone()]));
        assert!(sends(&d.step(1, attempt("1.9/a", 1, retry()))).is_empty());
        d.step(2, DispatchInput::MayAct(false));
        d.step(3, DispatchInput::MayAct(true));
        let out = d.step(DEADLINE.as_millis() as u64 + 10, view(&[down, recovered.clone()]));
        assert_eq!(proposed(&out), vec![("1.9/a".into(), false)], "past its deadline: {out:?}");
        assert!(sends(&out).is_empty(), "1.10/a waits for that failure to commit: {out:?}");
        assert_eq!(sends(&d.step(DEADLINE.as_millis() as u64 + 20, view(&[recovered]))), vec![("1.10/a".into(), 1)]);
    }

    #[test]
    fn a_success_is_remembered_across_a_lost_lease_and_proposed_again_until_committed() {
        let mut d = acting();
        let r = record("3.4", "c", "a");
        assert_eq!(sends(&d.step(0, view(std::slice::from_ref(&r)))).len(), 1);
        assert_eq!(d.step(100, DispatchInput::MayAct(false)), vec![DispatchOutput::AbortAll]);
        // The answer was already on its way: the sink has it.
        assert!(
            d.step(101, attempt("3.4/a", 1, SendOutcome::Delivered))
                .iter()
                .all(|o| !matches!(o, DispatchOutput::Propose(_)))
        );
        d.step(200, DispatchInput::MayAct(true));
        let out = d.step(300, view(std::slice::from_ref(&r)));
        assert!(sends(&out).is_empty(), "not sent again: {out:?}");
        assert_eq!(proposed(&out), vec![("3.4/a".into(), true)]);
        assert!(proposed(&d.step(5_000, DispatchInput::Tick)).is_empty(), "not yet due again");
        assert_eq!(
            proposed(&d.step(10_300, DispatchInput::Tick)),
            vec![("3.4/a".into(), true)],
            "still pending: again"
        );
        d.step(10_400, view(&[]));
        assert!(!d.knows("3.4/a"), "forgotten once the cluster holds it finished");
        // A failure after an abort says nothing: the record goes again.
        let mut d = acting();
        d.step(0, view(std::slice::from_ref(&r)));
        d.step(1, DispatchInput::MayAct(false));
        assert!(d.step(2, attempt("3.4/a", 1, retry())).is_empty());
        d.step(3, DispatchInput::MayAct(true));
        assert_eq!(sends(&d.step(4, view(&[r]))), vec![("3.4/a".into(), 2)]);
    }

    #[test]
    fn retries_back_off_and_the_deadline_runs_on_this_nodes_clock_from_its_first_chance() {
        let mut d = acting();
        let r = record("1.2", "c", "a");
        // Records are never judged by wall time: one committed long ago
        // still gets its first attempt.
        assert_eq!(sends(&d.step(1_000_000, view(std::slice::from_ref(&r)))), vec![("1.2/a".into(), 1)]);
        let mut now = 1_000_000;
        let mut attempt_no = 1;
        loop {
            let out = d.step(now, attempt("1.2/a", attempt_no, retry()));
            match out.iter().find_map(|o| match o {
                DispatchOutput::Decided { decision, .. } => Some(decision.clone()),
                _ => None,
            }) {
                Some(Decision::RetryIn(delay)) => {
                    assert!(delay >= Duration::from_millis(1_600) && delay <= Duration::from_secs(300), "{delay:?}");
                    now += delay.as_millis() as u64;
                    attempt_no += 1;
                    assert_eq!(sends(&d.step(now, DispatchInput::Tick)), vec![("1.2/a".into(), attempt_no)]);
                }
                Some(Decision::Failed(FailReason::Deadline { deadline })) => {
                    assert_eq!(deadline, DEADLINE);
                    assert_eq!(proposed(&out), vec![("1.2/a".into(), false)]);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(now - 1_000_000 <= DEADLINE.as_millis() as u64, "gave up within the deadline");
        assert!((4..=7).contains(&attempt_no), "2, 4, 8, 16 s... within 60 s: {attempt_no} attempts");
        // A sink's Retry-After is honoured, capped at an hour.
        let mut d = acting();
        d.step(0, view(&[record("1.3", "c", "a")]));
        let asked = SendOutcome::Retry { error: "429".into(), after: Some(Duration::from_secs(30)) };
        assert!(d.step(0, attempt("1.3/a", 1, asked)).contains(&DispatchOutput::Decided {
            key: "1.3/a".into(),
            attempt: 1,
            decision: Decision::RetryIn(Duration::from_secs(30)),
            error: "429".into()
        }));
        assert!(sends(&d.step(29_999, DispatchInput::Tick)).is_empty());
        assert_eq!(sends(&d.step(30_000, DispatchInput::Tick)).len(), 1);
    }

    #[test]
    fn permanent_failures_and_blocked_alerts_finish_failed_without_a_send() {
        let mut d = acting();
        let mut blocked = record("1.2", "c", "off");
        blocked.blocked = Some("the alert was disabled before delivery");
        let out = d.step(0, view(&[blocked, record("1.2", "c", "a")]));
        assert_eq!(sends(&out), vec![("1.2/a".into(), 1)], "the disabled alert's record is not sent");
        assert_eq!(proposed(&out), vec![("1.2/off".into(), false)]);
        let out = d.step(10, attempt("1.2/a", 1, SendOutcome::Failed { error: "status 404".into() }));
        assert_eq!(proposed(&out), vec![("1.2/a".into(), false)]);
        assert!(sends(&d.step(100_000, DispatchInput::Tick)).is_empty(), "a failed record is never sent again");
        // A view without the alert at all.
        let mut config: ClusterConfig = serde_yaml::from_str("version: 1\nterm: 1\npeers: []\n").unwrap();
        config.deliveries.insert(
            "1.2/gone".into(),
            crate::config::Delivery {
                reminder: None,
                check_id: "c".into(),
                alert_id: "gone".into(),
                transition: "1.2".into(),
                from: crate::monitor::CheckState::Up,
                to: crate::monitor::CheckState::Down,
                status: DeliveryStatus::Pending,
                created: crate::config::Timestamp::from_unix_millis(0),
                finished: None,
                attempts: 0,
                error: String::new(),
            },
        );
        let view = CommittedView::of(&config);
        assert_eq!(view.pending[0].blocked, Some("the alert was removed before delivery"));
    }

    #[test]
    fn at_most_the_limit_is_in_flight() {
        let mut d = Dispatcher::new(DispatchLimits { concurrent_max: 2, ..Default::default() }, 3);
        d.step(0, DispatchInput::MayAct(true));
        let records: Vec<_> = (1..=5).map(|i| record(&format!("1.{i}"), &format!("c{i}"), "a")).collect();
        assert_eq!(sends(&d.step(0, view(&records))), vec![("1.1/a".into(), 1), ("1.2/a".into(), 1)]);
        assert!(sends(&d.step(1, DispatchInput::Tick)).is_empty(), "two in flight: the others wait");
        let out = d.step(2, attempt("1.1/a", 1, SendOutcome::Delivered));
        assert_eq!(sends(&out), vec![("1.3/a".into(), 1)], "one finished, one more starts");
        assert_eq!(d.in_flight(), 2);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Commit(Vec<(u8, u8, u8)>),
            Act(bool),
            Answer(u8, u8),
            Tick(u16),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                proptest::collection::vec((0u8..3, 0u8..2, 1u8..6), 0..6).prop_map(Op::Commit),
                any::<bool>().prop_map(Op::Act),
                (0u8..8, 0u8..3).prop_map(|(i, o)| Op::Answer(i, o)),
                (0u16..20_000).prop_map(Op::Tick),
            ]
        }

        proptest! {
            /// Whatever happens: sends only while acting and only for a
            /// record of the current tenure's committed view; per (check,
            /// alert) only the earliest record not yet decided here; never a
            /// record after it was decided delivered here.
            #[test]
            fn sends_are_committed_acting_ordered_and_never_after_a_success(ops in proptest::collection::vec(op(), 1..80)) {
                let mut d = Dispatcher::new(DispatchLimits { concurrent_max: 3, ..Default::default() }, 11);
                let mut now = 0u64;
                let mut acting = false;
                let mut view: Option<Vec<PendingRecord>> = None;
                let mut decided: BTreeMap<String, bool> = BTreeMap::new();
                let mut in_flight: Vec<(String, u32)> = Vec::new();
                // Keys that were pending and then were not: settled for good.
                let mut settled: std::collections::BTreeSet<String> = Default::default();
                let mut last_pending: Vec<String> = Vec::new();
                for op in ops {
                    let input = match op {
                        Op::Commit(rows) => {
                            let mut records: Vec<PendingRecord> = rows
                                .iter()
                                .map(|(c, a, v)| record(&format!("1.{v}"), &format!("c{c}"), &format!("a{a}")))
                                .filter(|r| !settled.contains(&r.key))
                                .collect();
                            records.sort_by(|x, y| x.key.cmp(&y.key));
                            records.dedup_by(|x, y| x.key == y.key);
                            for key in &last_pending {
                                if !records.iter().any(|r| &r.key == key) {
                                    settled.insert(key.clone());
                                }
                            }
                            last_pending = records.iter().map(|r| r.key.clone()).collect();
                            view = Some(records.clone());
                            DispatchInput::Committed(CommittedView { pending: records, deadline: DEADLINE })
                        }
                        Op::Act(a) => {
                            if acting && !a {
                                view = None;
                            }
                            acting = a;
                            DispatchInput::MayAct(a)
                        }
                        Op::Answer(i, o) => {
                            if in_flight.is_empty() {
                                continue;
                            }
                            let (key, attempt) = in_flight.remove(i as usize % in_flight.len());
                            let outcome = match o {
                                0 => SendOutcome::Delivered,
                                1 => SendOutcome::Retry { error: "busy".into(), after: None },
                                _ => SendOutcome::Failed { error: "gone".into() },
                            };
                            DispatchInput::Attempt { key, attempt, outcome }
                        }
                        Op::Tick(ms) => {
                            now += u64::from(ms);
                            DispatchInput::Tick
                        }
                    };
                    let out = d.step(now, input);
                    for o in &out {
                        match o {
                            DispatchOutput::Send { key, attempt } => {
                                prop_assert!(acting, "a send while not acting");
                                let records = view.as_ref().expect("a send without a view of this tenure");
                                let r = records.iter().find(|r| &r.key == key).expect("a send for an uncommitted record");
                                prop_assert!(decided.get(key) != Some(&true), "sent again after a success: {}", key);
                                for earlier in records.iter().filter(|e| e.check_id == r.check_id && e.alert_id == r.alert_id && e.order < r.order) {
                                    prop_assert!(decided.contains_key(&earlier.key), "{} overtook {}", key, earlier.key);
                                }
                                in_flight.push((key.clone(), *attempt));
                            }
                            DispatchOutput::AbortAll => {
                                prop_assert!(!acting);
                                in_flight.clear();
                            }
                            DispatchOutput::Decided { key, decision, .. } => match decision {
                                Decision::Delivered => { decided.insert(key.clone(), true); }
                                Decision::Failed(_) => { decided.insert(key.clone(), false); }
                                Decision::RetryIn(_) => {}
                            },
                            DispatchOutput::Propose(_) => {}
                        }
                    }
                }
            }
        }
    }
}
