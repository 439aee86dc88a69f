//! The simulator's replicated content: the mutations a snapshot contains
//! and its delivery records. The consensus core treats content as opaque
//! bytes; only the simulator builds and reads it, the way the daemon
//! builds and reads `cluster.yaml`.
//!
//! Format (one line, canonical, so one logical content has one spelling):
//!
//! ```text
//! genesis,m1,m2,r7@3.6|3.7/a0=c1:p;3.7/a1=c1:d;4.2/a0=c2:f
//! ```
//!
//! Before `|`: every mutation the snapshot contains, in commit order
//! (`r<n>` for those that change runtime state only: transitions and
//! delivery results; the others change what operators own), and after `@`
//! the id of the snapshot that last changed what operators own, when that
//! is not this snapshot itself (the daemon's `ClusterConfig::content`).
//! After `|` (absent when there are no records): the delivery records,
//! sorted by key, each `<key>=<check>:<status>` with status `p` (pending),
//! `d` (delivered) or `f` (failed). The key is `<term>.<version>/<alert>`,
//! the id of the snapshot that created the record and the alert it goes to.

use std::collections::BTreeMap;
use std::time::Duration;

use qu_core::alerting::{CommittedView, PendingRecord, TransitionOrder};
use qu_core::config::DeliveryResult;
use qu_core::consensus::ConfigId;

/// The checks a transition may be for, and the alerts every check has.
pub const CHECKS: u64 = 3;
pub const ALERTS: [&str; 2] = ["a0", "a1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub check: String,
    pub alert: String,
    /// `<term>.<version>`: the transition, and the record's order.
    pub transition: String,
    pub status: Status,
}

/// A parsed snapshot content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub mutations: Vec<String>,
    /// The id of the snapshot that last changed what operators own, if
    /// that was an earlier one.
    pub stamp: Option<ConfigId>,
    pub records: BTreeMap<String, Record>,
}

/// Whether mutation `name` changes runtime state only.
pub fn is_runtime(name: &str) -> bool {
    name.starts_with('r')
}

/// The id of what operators own in the snapshot `id` with `content`: what
/// its operator's file says as its version, and a hand edit is based on.
pub fn content_id(id: ConfigId, content: &str) -> ConfigId {
    Content::parse(content).stamp.unwrap_or(id)
}

/// What operators own of `content`: its mutations that are not runtime
/// state (what a node's cluster.yaml shows).
pub fn operator_part(content: &str) -> Vec<&str> {
    mutations(content).filter(|m| !is_runtime(m)).collect()
}

/// What a client or the dispatcher asks to change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Nothing but the mutation's name.
    Plain,
    /// These checks changed state in one commit (an outage takes several
    /// at once): a pending record for each alert of each, keyed by each
    /// transition's own id (`qu_core::alerting::transition_id`).
    Transition { checks: Vec<u64> },
    /// The dispatcher's results. A record that is not pending stays as it is.
    Finish(Vec<DeliveryResult>),
}

/// The mutation names of `content`, without parsing its records.
pub fn mutations(content: &str) -> impl Iterator<Item = &str> {
    let names = content.split('|').next().unwrap_or("");
    names.split('@').next().unwrap_or("").split(',')
}

impl Content {
    pub fn parse(text: &str) -> Self {
        let (mutations, records) = text.split_once('|').unwrap_or((text, ""));
        let (mutations, stamp) = match mutations.split_once('@') {
            Some((mutations, stamp)) => {
                let (term, version) = stamp.split_once('.').expect("stamp term.version");
                let id = ConfigId { term: term.parse().expect("term"), version: version.parse().expect("version") };
                (mutations, Some(id))
            }
            None => (mutations, None),
        };
        let records = records
            .split(';')
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (key, rest) = r.split_once('=').expect("record key");
                let (check, status) = rest.split_once(':').expect("record status");
                let (transition, alert) = key.split_once('/').expect("key transition");
                let status = match status {
                    "p" => Status::Pending,
                    "d" => Status::Delivered,
                    "f" => Status::Failed,
                    other => panic!("unknown record status {other:?} in {r:?}"),
                };
                let record = Record { check: check.into(), alert: alert.into(), transition: transition.into(), status };
                (key.to_string(), record)
            })
            .collect();
        Self { mutations: mutations.split(',').map(str::to_string).collect(), stamp, records }
    }

    pub fn render(&self) -> String {
        let mut text = self.mutations.join(",");
        if let Some(stamp) = self.stamp {
            text.push_str(&format!("@{}.{}", stamp.term, stamp.version));
        }
        if !self.records.is_empty() {
            text.push('|');
            let records: Vec<String> = self
                .records
                .iter()
                .map(|(key, r)| {
                    let status = match r.status {
                        Status::Pending => 'p',
                        Status::Delivered => 'd',
                        Status::Failed => 'f',
                    };
                    format!("{key}={}:{status}", r.check)
                })
                .collect();
            text.push_str(&records.join(";"));
        }
        text
    }

    /// `text` (the content of snapshot `parent`) with mutation `name`
    /// applied, for the snapshot with id `id`. A runtime mutation
    /// ([`is_runtime`]) keeps the stamp of what operators own; any other
    /// changes it, so the new snapshot is its own stamp.
    pub fn apply(text: &str, parent: ConfigId, id: ConfigId, name: &str, change: &Change) -> String {
        let mut content = Self::parse(text);
        content.mutations.push(name.to_string());
        content.stamp = if is_runtime(name) { Some(content.stamp.unwrap_or(parent)) } else { None };
        match change {
            Change::Plain => {}
            Change::Transition { checks } => {
                for (index, check) in checks.iter().enumerate() {
                    let transition = qu_core::alerting::transition_id(id, index);
                    for alert in ALERTS {
                        let record = Record {
                            check: format!("c{check}"),
                            alert: alert.into(),
                            transition: transition.clone(),
                            status: Status::Pending,
                        };
                        content.records.insert(qu_core::alerting::key(&transition, alert), record);
                    }
                }
            }
            Change::Finish(results) => {
                for result in results {
                    if let Some(record) = content.records.get_mut(&result.key)
                        && record.status == Status::Pending
                    {
                        record.status = if result.delivered { Status::Delivered } else { Status::Failed };
                    }
                }
            }
        }
        content.render()
    }

    /// The same content re-stamped in a new term (a new master's first
    /// commit, the daemon's `Mutation::Restamp`): what operators own keeps
    /// the stamp of `parent`'s.
    pub fn restamp(text: &str, parent: ConfigId) -> String {
        let mut content = Self::parse(text);
        content.stamp = Some(content.stamp.unwrap_or(parent));
        content.render()
    }

    /// A hand edit of `file` (a copy some node held) applied on `current`
    /// the way `Mutation::Replace` does: what operators own (here, the
    /// mutations that are not runtime state) comes from the file, plus the
    /// edit itself; the runtime state (the records, and the mutations that
    /// made them) stays `current`'s.
    pub fn edit(file: &str, current: &str, name: &str) -> String {
        let current = Self::parse(current);
        let mut content = Self::parse(file);
        content.mutations.retain(|m| !is_runtime(m));
        content.mutations.extend(current.mutations.iter().filter(|m| is_runtime(m)).cloned());
        content.mutations.push(name.to_string());
        content.records = current.records;
        content.stamp = None;
        content.render()
    }

    /// What the dispatcher is told of this content once it is committed.
    pub fn view(&self, deadline: Duration) -> CommittedView {
        let pending = self
            .records
            .iter()
            .filter(|(_, r)| r.status == Status::Pending)
            .map(|(key, r)| PendingRecord {
                key: key.clone(),
                check_id: r.check.clone(),
                alert_id: r.alert.clone(),
                order: TransitionOrder::of(&r.transition),
                blocked: None,
            })
            .collect();
        CommittedView { pending, deadline }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_and_finishing_only_touches_pending_records() {
        assert_eq!(
            Content::parse("genesis"),
            Content { mutations: vec!["genesis".into()], stamp: None, records: BTreeMap::new() }
        );
        let (parent, id) = (ConfigId { term: 3, version: 6 }, ConfigId { term: 3, version: 7 });
        let text = Content::apply("genesis,m1", parent, id, "r2", &Change::Transition { checks: vec![1] });
        assert_eq!(text, "genesis,m1,r2@3.6|3.7/a0=c1:p;3.7/a1=c1:p");
        assert_eq!(Content::parse(&text).render(), text);
        assert_eq!(mutations(&text).collect::<Vec<_>>(), ["genesis", "m1", "r2"]);
        assert_eq!(operator_part(&text), ["genesis", "m1"]);
        assert_eq!(content_id(id, &text), parent, "a runtime change keeps the operator's stamp");
        let result =
            |key: &str, delivered| DeliveryResult { key: key.into(), delivered, attempts: 1, error: String::new() };
        let next = ConfigId { term: 3, version: 8 };
        let text = Content::apply(
            &text,
            id,
            next,
            "r3",
            &Change::Finish(vec![result("3.7/a0", true), result("9.9/a0", true)]),
        );
        assert_eq!(text, "genesis,m1,r2,r3@3.6|3.7/a0=c1:d;3.7/a1=c1:p");
        let text = Content::apply(&text, next, next, "r4", &Change::Finish(vec![result("3.7/a0", false)]));
        assert_eq!(text, "genesis,m1,r2,r3,r4@3.6|3.7/a0=c1:d;3.7/a1=c1:p", "a finished record stays finished");
        let edited = Content::edit("genesis,m1,r2@3.6", &text, "e5");
        assert_eq!(edited, "genesis,m1,r2,r3,r4,e5|3.7/a0=c1:d;3.7/a1=c1:p", "runtime state stays the cluster's");
        assert_eq!(content_id(next, &edited), next, "an edit changes what operators own");
        assert_eq!(Content::restamp(&edited, next), "genesis,m1,r2,r3,r4,e5@3.8|3.7/a0=c1:d;3.7/a1=c1:p");
        let view = Content::parse(&text).view(Duration::from_secs(5));
        assert_eq!(view.pending.len(), 1);
        assert_eq!((view.pending[0].key.as_str(), view.pending[0].check_id.as_str()), ("3.7/a1", "c1"));
    }
}
