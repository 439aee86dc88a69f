//! What happened in a run, and the checker that judges it.
//!
//! The checker fails the run when:
//! - two nodes were master in the same term;
//! - an acknowledged mutation is missing on a node at the end, or the
//!   nodes' copies differ;
//! - a mutation refused definitely was applied;
//! - an alert was accepted for a transition that is not committed, a
//!   committed delivery that says `delivered` was never accepted, or a
//!   check's first deliveries arrived out of transition order;
//! - a node's term or config version went backwards;
//! - real-time order broke: an acknowledged change that completed before
//!   another was invoked was committed at a later version;
//! - the cluster did not converge after the faults stopped (the caller's
//!   bound).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

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
                Event::Fault(what) => out.push_str(&format!("{t:8.2}s  {what}\n")),
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
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} faults; operations: {} acknowledged, {} refused, {} unknown; {} terms; {} committed transitions; \
             {} deliveries accepted; 0 violations",
            self.faults,
            self.ops_ok,
            self.ops_definite,
            self.ops_unknown,
            self.terms,
            self.transitions,
            self.deliveries
        )
    }
}

/// Judges a run from its history, every node's final copy (all converged)
/// and what the receiver got. Every violation found, or the figures.
pub fn check(history: &History, copies: &[ClusterConfig], received: &[Received]) -> Result<Figures, Vec<String>> {
    let mut violations = Vec::new();
    let events = history.events();
    let mut figures = Figures::default();

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
    figures.faults = events.iter().filter(|(_, e)| matches!(e, Event::Fault(_))).count();
    if violations.is_empty() { Ok(figures) } else { Err(violations) }
}

/// A transition id `<term>.<version>[.<index>]` as a sortable triple.
fn order(id: &str) -> (u64, u64, u64) {
    let mut parts = id.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(check(&history, &[copy.clone(), copy], &[]).is_ok());
    }

    #[test]
    fn two_masters_in_a_term_fail_the_run() {
        let history = History::new();
        history.record(Event::Status { node: 0, term: 3, is_master: true, version: 1 });
        history.record(Event::Status { node: 2, term: 3, is_master: true, version: 1 });
        let violations = check(&history, &[fixture()], &[]).unwrap_err();
        assert!(violations[0].contains("term 3 had 2 masters"), "{violations:?}");
    }

    #[test]
    fn a_lost_acknowledged_change_and_an_applied_refusal_fail_the_run() {
        let history = History::new();
        let copy = fixture();
        op(&history, "acked-but-lost", OpResult::Ok, None);
        op(&history, &copy.checks[0].name, OpResult::Definite, None);
        let violations = check(&history, &[copy], &[]).unwrap_err();
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
        let violations = check(&history, &[a, b], &[]).unwrap_err();
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
        };
        let violations = check(&history, &[fixture()], &[received]).unwrap_err();
        assert!(violations.iter().any(|v| v.contains("9.99/a1 was accepted, but no such delivery is committed")));
    }
}
