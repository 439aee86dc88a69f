//! What happened in a run, and the checker that judges it.
//!
//! The checker fails the run when:
//! - two nodes were master in the same term;
//! - an acknowledged mutation is missing on a node at the end, or the
//!   nodes' copies differ;
//! - a mutation refused definitely was applied;
//! - an alert was accepted for a transition that is not committed, a
//!   committed delivery that says `delivered` was never accepted, one was
//!   given up (the receiver only ever refuses for a while), or a check's
//!   first deliveries arrived out of transition order;
//! - a node's term or config version went backwards;
//! - real-time order broke: an acknowledged change that completed before
//!   another was invoked was committed at a later version;
//! - the cluster did not converge after the faults stopped (the caller's
//!   bound);
//! - a node sent an alert while cut off from a majority for longer than a
//!   lease lasts;
//! - a target's outage (or recovery) that a healthy majority watched was
//!   not committed within hysteresis × interval + dead_after (plus the
//!   poller's slack);
//! - a node stopped by itself where no fault may stop it, or stopped
//!   without saying why (the run records those as [`Event::Violation`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qu_core::config::ClusterConfig;
use qu_tests::Received;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    Ok,
    Definite,
    Unknown,
}

#[derive(Debug, Clone)]
pub enum Event {
    Status {
        node: usize,
        term: u64,
        is_master: bool,
        version: u64,
    },
    Op {
        name: String,
        node: usize,
        invoked: Instant,
        completed: Instant,
        result: OpResult,
        /// The config version an acknowledged one was committed at.
        version: Option<u64>,
    },
    Target {
        name: String,
        up: bool,
    },
    Fault(String),
    /// A fault begins: one that `disrupts` may leave the cluster without a
    /// master or a majority for a while.
    Begin {
        what: String,
        disrupts: bool,
    },
    /// The fault that began last has healed.
    End,
    /// `nodes` are cut off from any majority (`on`), or no longer.
    Isolated {
        nodes: Vec<usize>,
        on: bool,
    },
    /// Node `node` sends from `ip`.
    Node {
        node: usize,
        ip: IpAddr,
    },
    /// Something the run itself saw break (a node that stopped by itself).
    Violation(String),
    /// The operator replaced node `node`'s state (a restore with
    /// `version: 0`): its term and version start over from there.
    Reset {
        node: usize,
    },
}

/// The timing the checker holds the cluster to.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// hysteresis × interval + dead_after: from a target's change to the
    /// committed verdict.
    pub verdict: Duration,
    /// What the measurement adds: the poller's period, a probe round's
    /// scheduling.
    pub slack: Duration,
    /// After a disruptive fault heals, how long before the cluster counts
    /// as healthy again (an election, a probe round).
    pub recovery: Duration,
    /// How long a master cut off may still send (its lease, and a request
    /// in flight).
    pub lease: Duration,
}

pub struct History {
    started: Instant,
    events: Mutex<Vec<(Instant, Event)>>,
}

impl History {
    pub fn new() -> Self {
        Self { started: Instant::now(), events: Mutex::default() }
    }

    pub fn record(&self, event: Event) {
        self.events.lock().unwrap().push((Instant::now(), event));
    }

    /// Seconds from the start of the run to `at`.
    pub fn at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// The faults and target flips, with their times: the short timeline a
    /// failure prints.
    pub fn timeline(&self) -> String {
        let mut out = String::new();
        for (at, event) in self.events() {
            let t = at.duration_since(self.started).as_secs_f64();
            match event {
                Event::Fault(what) | Event::Begin { what, .. } => out.push_str(&format!("{t:8.2}s  {what}\n")),
                Event::End => out.push_str(&format!("{t:8.2}s  healed\n")),
                Event::Violation(what) => out.push_str(&format!("{t:8.2}s  VIOLATION {what}\n")),
                Event::Target { name, up } => {
                    out.push_str(&format!("{t:8.2}s  target {name} {}\n", if up { "up" } else { "down" }))
                }
                _ => {}
            }
        }
        out
    }
}

/// Figures of a run that passed.
#[derive(Debug, Default)]
pub struct Figures {
    pub faults: usize,
    pub ops_ok: usize,
    pub ops_definite: usize,
    pub ops_unknown: usize,
    pub transitions: usize,
    pub deliveries: usize,
    pub terms: usize,
    /// Target changes a healthy majority watched, each committed in time.
    pub verdicts_timed: usize,
    /// The slowest of those, from the change to the commit.
    pub verdict_slowest: Duration,
    /// Requests from nodes while they were cut off (none sent after their
    /// lease).
    pub sent_while_cut_off: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults; operations: {} acknowledged, {} refused, {} unknown; {} terms; {} committed transitions; \
             {} deliveries accepted; {} verdicts timed (slowest {:.1}s); {} alerts from cut-off nodes, all \
             within their lease; 0 violations",
            self.faults,
            self.ops_ok,
            self.ops_definite,
            self.ops_unknown,
            self.terms,
            self.transitions,
            self.deliveries,
            self.verdicts_timed,
            self.verdict_slowest.as_secs_f64(),
            self.sent_while_cut_off
        )
    }
}

/// Judges a run from its history, every node's final copy (all converged)
/// and what the receiver got. Every violation found, or the figures.
pub fn check(
    history: &History,
    copies: &[ClusterConfig],
    received: &[Received],
    bounds: Bounds,
) -> Result<Figures, Vec<String>> {
    let mut violations = Vec::new();
    let events = history.events();
    let mut figures = Figures::default();

    // What the run itself saw break.
    for (_, event) in &events {
        if let Event::Violation(what) = event {
            violations.push(what.clone());
        }
    }

    // At most one master per term.
    let mut masters: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    for (_, event) in &events {
        if let Event::Status { node, term, is_master: true, .. } = event {
            masters.entry(*term).or_default().insert(*node);
        }
    }
    figures.terms = masters.len();
    for (term, nodes) in &masters {
        if nodes.len() > 1 {
            violations.push(format!("term {term} had {} masters: {nodes:?}", nodes.len()));
        }
    }

    // A node's term and version never go backwards.
    let mut last: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for (_, event) in &events {
        if let Event::Reset { node } = event {
            last.remove(node);
        }
        if let Event::Status { node, term, version, .. } = event {
            if let Some((t, v)) = last.get(node)
                && (term < t || version < v)
            {
                violations
                    .push(format!("n{node} went from term {t} version {v} back to term {term} version {version}"));
            }
            last.insert(*node, (*term, *version));
        }
    }

    // Real-time order of acknowledged changes.
    let acked: Vec<(Instant, Instant, u64, &str)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Op { name, invoked, completed, result: OpResult::Ok, version: Some(v), .. } => {
                Some((*invoked, *completed, *v, name.as_str()))
            }
            _ => None,
        })
        .collect();
    for a in &acked {
        for b in &acked {
            if a.1 < b.0 && a.2 >= b.2 {
                violations.push(format!(
                    "{} completed before {} was invoked but was committed at version {} >= {}",
                    a.3, b.3, a.2, b.2
                ));
            }
        }
    }

    // Identical copies at the end.
    let first = &copies[0];
    for (i, copy) in copies.iter().enumerate().skip(1) {
        if copy.to_yaml() != first.to_yaml() {
            violations
                .push(format!("n{i}'s copy (version {}) differs from n0's (version {})", copy.version, first.version));
        }
    }

    // Acknowledged mutations everywhere; definite refusals nowhere.
    for (_, event) in &events {
        let Event::Op { name, node, result, .. } = event else { continue };
        match result {
            OpResult::Ok => figures.ops_ok += 1,
            OpResult::Definite => figures.ops_definite += 1,
            OpResult::Unknown => figures.ops_unknown += 1,
        }
        for (i, copy) in copies.iter().enumerate() {
            let present = copy.checks.iter().any(|c| c.name == *name);
            match result {
                OpResult::Ok if !present => {
                    violations.push(format!("{name}, acknowledged by n{node}, is missing on n{i}"))
                }
                OpResult::Definite if present => {
                    violations.push(format!("{name}, refused by n{node}, was applied (on n{i})"))
                }
                _ => {}
            }
        }
    }

    // Deliveries: only committed transitions, each delivered one accepted,
    // and a check's first acceptances in transition order.
    let committed = &first.deliveries;
    figures.transitions = committed.len();
    let accepted: Vec<&Received> = received.iter().filter(|r| !r.test && r.accepted()).collect();
    let keys: BTreeSet<&str> = accepted.iter().map(|r| r.key.as_str()).collect();
    figures.deliveries = keys.len();
    for key in &keys {
        if !committed.contains_key(*key) {
            violations.push(format!("alert {key} was accepted, but no such delivery is committed"));
        }
    }
    for (key, delivery) in committed {
        let delivered = delivery.status == qu_core::config::DeliveryStatus::Delivered;
        if delivered && !keys.contains(key.as_str()) {
            violations.push(format!("{key} is committed as delivered but the receiver never accepted it"));
        }
        // The receiver refuses only for a while (503s), well within the
        // deadline: every page must get through in the end.
        if delivery.status == qu_core::config::DeliveryStatus::Failed {
            violations.push(format!("{key} was given up ({}): a page lost", delivery.error));
        }
    }
    let mut first_seen: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in &accepted {
        if !seen.insert(r.key.clone()) {
            continue;
        }
        let Some(delivery) = committed.get(&r.key) else { continue };
        first_seen
            .entry(format!("{}/{}", delivery.check_id, delivery.alert_id))
            .or_default()
            .push(order(&delivery.transition));
    }
    for (check, order) in &first_seen {
        if order.windows(2).any(|w| w[0] > w[1]) {
            violations.push(format!("{check}: deliveries arrived out of transition order: {order:?}"));
        }
    }
    no_alert_without_majority(history, &events, received, bounds, &mut figures, &mut violations);
    verdicts_in_time(history, &events, first, bounds, &mut figures, &mut violations);
    figures.faults = events.iter().filter(|(_, e)| matches!(e, Event::Begin { .. })).count();
    if violations.is_empty() { Ok(figures) } else { Err(violations) }
}

/// Nothing is sent by a node cut off from every majority once its lease
/// has run out: each request's source address names its node.
fn no_alert_without_majority(
    history: &History,
    events: &[(Instant, Event)],
    received: &[Received],
    bounds: Bounds,
    figures: &mut Figures,
    violations: &mut Vec<String>,
) {
    let ips: BTreeMap<IpAddr, usize> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Node { node, ip } => Some((*ip, *node)),
            _ => None,
        })
        .collect();
    // Each node's windows cut off: (from, until).
    let mut windows: BTreeMap<usize, Vec<(Instant, Option<Instant>)>> = BTreeMap::new();
    for (at, event) in events {
        let Event::Isolated { nodes, on } = event else { continue };
        for node in nodes {
            let list = windows.entry(*node).or_default();
            match (on, list.last_mut()) {
                (true, _) => list.push((*at, None)),
                (false, Some((_, until @ None))) => *until = Some(*at),
                (false, _) => {}
            }
        }
    }
    for r in received {
        let Some(node) = r.from.and_then(|ip| ips.get(&ip)) else { continue };
        let Some(list) = windows.get(node) else { continue };
        for (from, until) in list {
            if r.at < *from || until.is_some_and(|u| r.at > u) {
                continue;
            }
            figures.sent_while_cut_off += 1;
            if r.at.duration_since(*from) > bounds.lease {
                violations.push(format!(
                    "n{node} sent {} ({} {}) at {:.2}s, cut off from every majority since {:.2}s",
                    r.key,
                    r.verb,
                    r.check,
                    history.at(r.at),
                    history.at(*from)
                ));
            }
        }
    }
}

/// Every target change a healthy cluster watched is committed within the
/// bound: the change lasted past it, the cluster had no disruptive fault
/// from `recovery` before the change to the end of the bound, and the
/// check's committed state before the change was the other one. A
/// transition's id names the version it was committed at; the first time
/// the poller saw any node at that version is when it was committed.
fn verdicts_in_time(
    history: &History,
    events: &[(Instant, Event)],
    config: &ClusterConfig,
    bounds: Bounds,
    figures: &mut Figures,
    violations: &mut Vec<String>,
) {
    use qu_core::monitor::CheckState;
    let within = bounds.verdict + bounds.slack;
    // When each version was first seen (versions only grow on one node,
    // but take the earliest over all).
    let mut seen: Vec<(u64, Instant)> = events
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Status { version, .. } => Some((*version, *at)),
            _ => None,
        })
        .collect();
    seen.sort_by_key(|(v, at)| (*v, *at));
    let committed_at = |version: u64| -> Option<Instant> {
        let start = seen.partition_point(|(v, _)| *v < version);
        seen[start..].iter().map(|(_, at)| *at).min()
    };
    // Disruptive faults as windows, open ones until the end.
    let end = events.last().map(|(at, _)| *at).unwrap_or_else(Instant::now);
    let mut disrupted: Vec<(Instant, Instant)> = Vec::new();
    let mut open: Option<(Instant, bool)> = None;
    for (at, event) in events {
        match event {
            Event::Begin { disrupts, .. } => open = Some((*at, *disrupts)),
            Event::End => {
                if let Some((from, true)) = open.take() {
                    disrupted.push((from, *at));
                }
            }
            _ => {}
        }
    }
    if let Some((from, true)) = open {
        disrupted.push((from, end));
    }
    let healthy =
        |from: Instant, until: Instant| disrupted.iter().all(|(a, b)| *b + bounds.recovery < from || *a > until);
    // Each flip target's changes, in order.
    let mut changes: BTreeMap<&str, Vec<(Instant, bool)>> = BTreeMap::new();
    for (at, event) in events {
        if let Event::Target { name, up } = event {
            let list = changes.entry(name.as_str()).or_default();
            if list.last().is_none_or(|(_, last)| last != up) {
                list.push((*at, *up));
            }
        }
    }
    for (name, list) in &changes {
        let Some(check) = config.checks.iter().find(|c| c.name == *name) else { continue };
        // The check's committed transitions, with when each was committed.
        let mut transitions: Vec<(Instant, CheckState, CheckState)> = config
            .deliveries
            .values()
            .filter(|d| d.check_id == check.id)
            .filter_map(|d| Some((committed_at(order(&d.transition).1)?, d.from, d.to)))
            .collect();
        transitions.sort_by_key(|(at, ..)| *at);
        transitions.dedup_by_key(|(at, ..)| *at);
        for (k, (at, up)) in list.iter().enumerate() {
            let lasted = list.get(k + 1).map(|(next, _)| *next).unwrap_or(end).duration_since(*at);
            if lasted < within || !healthy(*at, *at + within) {
                continue;
            }
            let want = if *up { CheckState::Up } else { CheckState::Down };
            let before = transitions.iter().rev().find(|(t, ..)| t < at).map(|(_, _, to)| *to);
            if before != Some(if *up { CheckState::Down } else { CheckState::Up }) {
                continue;
            }
            let verdict = transitions.iter().find(|(t, _, to)| t > at && *to == want).map(|(t, ..)| *t);
            match verdict.map(|t| t.duration_since(*at)) {
                Some(took) if took <= within => {
                    figures.verdicts_timed += 1;
                    figures.verdict_slowest = figures.verdict_slowest.max(took);
                }
                took => violations.push(format!(
                    "{name} went {} at {:.2}s with the cluster healthy, but {} was committed {} (bound {:.1}s)",
                    if *up { "up" } else { "down" },
                    history.at(*at),
                    want,
                    match took {
                        Some(took) => format!("after {:.2}s", took.as_secs_f64()),
                        None => "never".to_string(),
                    },
                    within.as_secs_f64()
                )),
            }
        }
    }
}

/// A transition id `<term>.<version>[.<index>]` as a sortable triple.
fn order(id: &str) -> (u64, u64, u64) {
    let mut parts = id.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        verdict: Duration::from_secs(3),
        slack: Duration::from_secs(1),
        recovery: Duration::from_secs(4),
        lease: Duration::from_secs(2),
    };

    fn fixture() -> ClusterConfig {
        ClusterConfig::parse(include_str!("../fixtures/datadir-0.1/cluster.yaml")).unwrap()
    }

    fn op(history: &History, name: &str, result: OpResult, version: Option<u64>) {
        let now = Instant::now();
        history.record(Event::Op { name: name.into(), node: 0, invoked: now, completed: now, result, version });
    }

    #[test]
    fn a_clean_history_passes() {
        let history = History::new();
        history.record(Event::Status { node: 0, term: 1, is_master: true, version: 1 });
        history.record(Event::Status { node: 1, term: 2, is_master: true, version: 2 });
        let mut copy = fixture();
        copy.deliveries.clear();
        let name = copy.checks[0].name.clone();
        op(&history, &name, OpResult::Ok, Some(copy.version));
        op(&history, "never-added", OpResult::Definite, None);
        assert!(check(&history, &[copy.clone(), copy], &[], BOUNDS).is_ok());
    }

    #[test]
    fn two_masters_in_a_term_fail_the_run() {
        let history = History::new();
        history.record(Event::Status { node: 0, term: 3, is_master: true, version: 1 });
        history.record(Event::Status { node: 2, term: 3, is_master: true, version: 1 });
        let violations = check(&history, &[fixture()], &[], BOUNDS).unwrap_err();
        assert!(violations[0].contains("term 3 had 2 masters"), "{violations:?}");
    }

    #[test]
    fn a_lost_acknowledged_change_and_an_applied_refusal_fail_the_run() {
        let history = History::new();
        let copy = fixture();
        op(&history, "acked-but-lost", OpResult::Ok, None);
        op(&history, &copy.checks[0].name, OpResult::Definite, None);
        let violations = check(&history, &[copy], &[], BOUNDS).unwrap_err();
        assert!(
            violations.iter().any(|v| v.contains("acked-but-lost, acknowledged by n0, is missing")),
            "{violations:?}"
        );
        assert!(violations.iter().any(|v| v.contains("was applied")), "{violations:?}");
    }

    #[test]
    fn a_version_going_backwards_and_different_copies_fail_the_run() {
        let history = History::new();
        history.record(Event::Status { node: 1, term: 2, is_master: false, version: 9 });
        history.record(Event::Status { node: 1, term: 2, is_master: false, version: 8 });
        let (a, mut b) = (fixture(), fixture());
        b.version += 1;
        let violations = check(&history, &[a, b], &[], BOUNDS).unwrap_err();
        assert!(violations.iter().any(|v| v.contains("back to term 2 version 8")), "{violations:?}");
        assert!(violations.iter().any(|v| v.contains("n1's copy")), "{violations:?}");
    }

    #[test]
    fn an_alert_for_an_uncommitted_transition_fails_the_run() {
        let history = History::new();
        let received = Received {
            key: "9.99/a1".into(),
            verb: "DOWN".into(),
            check: "web".into(),
            test: false,
            json: serde_json::Value::Null,
            status: Some(204),
            at: Instant::now(),
            from: None,
        };
        let violations = check(&history, &[fixture()], &[received], BOUNDS).unwrap_err();
        assert!(violations.iter().any(|v| v.contains("9.99/a1 was accepted, but no such delivery is committed")));
    }

    #[test]
    fn an_alert_from_a_node_cut_off_past_its_lease_fails_the_run() {
        let history = History::new();
        let ip: IpAddr = "10.0.0.10".parse().unwrap();
        history.record(Event::Node { node: 0, ip });
        history.record(Event::Isolated { nodes: vec![0], on: true });
        let cut = Instant::now();
        let request = |after: Duration| Received {
            key: "1.2/a1".into(),
            verb: "DOWN".into(),
            check: "web".into(),
            test: false,
            json: serde_json::Value::Null,
            status: Some(204),
            at: cut + after,
            from: Some(ip),
        };
        let early = check(&history, &[fixture()], &[request(Duration::from_millis(500))], BOUNDS);
        assert!(early.is_err_and(|v| v.iter().all(|v| !v.contains("cut off"))), "within the lease it may send");
        let violations = check(&history, &[fixture()], &[request(Duration::from_secs(3))], BOUNDS).unwrap_err();
        assert!(violations.iter().any(|v| v.contains("n0 sent 1.2/a1") && v.contains("cut off")), "{violations:?}");
    }

    #[test]
    fn an_outage_a_healthy_cluster_committed_late_fails_the_run() {
        use qu_core::config::{Delivery, DeliveryStatus};
        use qu_core::monitor::CheckState;
        let mut copy = fixture();
        copy.deliveries.clear();
        let check_id = copy.checks[0].id.clone();
        let name = copy.checks[0].name.clone();
        let delivery = |transition: &str, from, to| Delivery {
            reminder: None,
            check_id: check_id.clone(),
            alert_id: "a1".into(),
            transition: transition.into(),
            from,
            to,
            status: DeliveryStatus::Pending,
            created: qu_core::config::Timestamp::from_system_time(std::time::SystemTime::now()),
            finished: None,
            attempts: 1,
            error: String::new(),
        };
        copy.deliveries.insert("1.2/a1".into(), delivery("1.2", CheckState::Unknown, CheckState::Up));
        copy.deliveries.insert("1.3/a1".into(), delivery("1.3", CheckState::Up, CheckState::Down));
        let run = |down_committed_after: Duration| {
            let history = History::new();
            history.record(Event::Status { node: 0, term: 1, is_master: true, version: 2 });
            std::thread::sleep(Duration::from_millis(20));
            history.record(Event::Target { name: name.clone(), up: false });
            std::thread::sleep(down_committed_after);
            history.record(Event::Status { node: 0, term: 1, is_master: true, version: 3 });
            // The outage lasts past the bound.
            std::thread::sleep(Duration::from_millis(200));
            let last = Instant::now() + Duration::from_secs(5);
            history.events.lock().unwrap().push((last, Event::Fault("end".into())));
            check(
                &history,
                &[copy.clone()],
                &[],
                Bounds { verdict: Duration::from_millis(100), slack: Duration::ZERO, ..BOUNDS },
            )
        };
        let in_time = run(Duration::from_millis(10)).unwrap();
        assert_eq!(in_time.verdicts_timed, 1);
        let late = run(Duration::from_millis(150)).unwrap_err();
        assert!(late.iter().any(|v| v.contains("but down was committed after")), "{late:?}");
    }

    #[test]
    fn a_page_given_up_fails_the_run() {
        let mut copy = fixture();
        let Some(delivery) = copy.deliveries.values_mut().next() else { panic!("the fixture has a delivery") };
        delivery.status = qu_core::config::DeliveryStatus::Failed;
        delivery.error = "not delivered before the deadline".into();
        let violations = check(&History::new(), &[copy], &[], BOUNDS).unwrap_err();
        assert!(violations.iter().any(|v| v.contains("a page lost")), "{violations:?}");
    }
}
