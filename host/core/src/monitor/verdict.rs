//! Verdicts: majority of fresh reports, tie is UP, no change without a
//! majority of members reporting, and a new verdict must hold for
//! `hysteresis` consecutive rounds before it is proposed.

use std::collections::BTreeMap;

use super::{CheckState, Outcome, Report};
use crate::NodeId;

/// A fresh report is one received within max(3 × interval, 30 s).
const FRESH_MIN_MS: u64 = 30_000;

#[derive(Debug, Clone)]
struct Received {
    outcome: Outcome,
    detail: String,
    at: u64,
}

#[derive(Debug, Clone)]
struct Track {
    /// This check's own hysteresis, if it has one.
    rounds: Rounds,
    interval_ms: u64,
    latest: BTreeMap<NodeId, Received>,
    /// The committed state (from cluster.yaml).
    committed: CheckState,
    /// A differing verdict and for how many consecutive rounds it held.
    candidate: Option<(CheckState, u32)>,
    /// When the candidate's next round is due (one interval after the
    /// last; meaningless without a candidate).
    next_round: u64,
    /// A report arrived since the last evaluation.
    fresh: bool,
    /// A proposal is being committed; no new one until it settles.
    proposing: bool,
}

/// A transition the master should commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub check_id: String,
    pub from: CheckState,
    pub to: CheckState,
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
    /// The detail of a failing reporter (for DOWN) or an OK one (for UP).
    pub detail: String,
}

/// A check's own hysteresis: rounds to go DOWN and to come back UP
/// (`None`: the cluster's `hysteresis`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rounds {
    pub down: Option<u32>,
    pub up: Option<u32>,
}

/// (check id, interval in ms, committed state, its own rounds).
pub type Tracked = (String, u64, CheckState, Rounds);

/// What the master knows about every check.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    tracks: BTreeMap<String, Track>,
}

/// Counts of the fresh reports from members, for status and proposals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: u32,
    pub failing: u32,
    pub total: u32,
}

impl Verdicts {
    /// Makes the tracked set match the configured checks: new checks start
    /// from their committed state, removed ones are forgotten, a changed
    /// interval applies from the next round.
    pub fn sync(&mut self, checks: &[(String, u64, CheckState)]) {
        let with_rounds: Vec<Tracked> =
            checks.iter().map(|(id, interval, state)| (id.clone(), *interval, *state, Rounds::default())).collect();
        self.sync_with_rounds(&with_rounds);
    }

    /// [`Verdicts::sync`] with each check's own hysteresis.
    pub fn sync_with_rounds(&mut self, checks: &[Tracked]) {
        let wanted: std::collections::BTreeSet<&str> = checks.iter().map(|(id, _, _, _)| id.as_str()).collect();
        self.tracks.retain(|id, _| wanted.contains(id.as_str()));
        for (id, interval_ms, committed, rounds) in checks {
            let interval_ms = (*interval_ms).max(1);
            let track = self.tracks.entry(id.clone()).or_insert_with(|| Track {
                rounds: *rounds,
                interval_ms,
                latest: BTreeMap::new(),
                committed: *committed,
                candidate: None,
                next_round: 0,
                fresh: false,
                proposing: false,
            });
            track.interval_ms = interval_ms;
            track.rounds = *rounds;
            if !track.proposing {
                track.committed = *committed;
            }
        }
    }

    /// Records a report from a member, timestamped on receipt.
    pub fn record(&mut self, from: NodeId, report: &Report, now: u64) {
        if let Some(track) = self.tracks.get_mut(&report.check_id) {
            track.latest.insert(from, Received { outcome: report.outcome, detail: report.detail.clone(), at: now });
            track.fresh = true;
        }
    }

    /// The counts behind a check's verdict right now.
    pub fn tally(&self, check_id: &str, members: &[NodeId], now: u64) -> Tally {
        self.tracks.get(check_id).map(|t| tally(t, members, now)).unwrap_or_default()
    }

    /// The detail to show for a check: a failing reporter's if any fails.
    pub fn detail(&self, check_id: &str, members: &[NodeId], now: u64) -> Option<String> {
        let track = self.tracks.get(check_id)?;
        let fresh = fresh_reports(track, members, now);
        fresh
            .iter()
            .find(|r| r.outcome == Outcome::Down)
            .or_else(|| fresh.iter().find(|r| r.outcome == Outcome::Up))
            .or_else(|| fresh.first())
            .map(|r| r.detail.clone())
    }

    /// Runs every round that is due: returns the transitions to propose.
    /// Call about once per tick.
    ///
    /// A check's verdict is looked at when reports arrived since the last
    /// evaluation, and when its candidate's next round is due. The first
    /// evaluation that sees a verdict other than the committed state is its
    /// round 1; round k comes k − 1 intervals later, at a fixed rate. So the
    /// rounds follow the probes' phase (each node's own), and a target that
    /// fails at T is proposed DOWN by T + hysteresis × interval plus the
    /// probes' and the reports' latency. A verdict that goes back to the
    /// committed state, or loses its majority of reporters, drops the
    /// candidate at once.
    pub fn evaluate(&mut self, members: &[NodeId], hysteresis: u32, now: u64) -> Vec<Proposal> {
        let need = members.len() / 2 + 1;
        let mut proposals = Vec::new();
        for (id, track) in &mut self.tracks {
            let due = track.candidate.is_some() && now >= track.next_round;
            if track.proposing || !(due || track.fresh) {
                continue;
            }
            track.fresh = false;
            let counts = tally(track, members, now);
            if (counts.total as usize) < need {
                // Not enough vantage points: no verdict.
                track.candidate = None;
                continue;
            }
            let verdict = if counts.failing > counts.ok { CheckState::Down } else { CheckState::Up };
            if verdict == track.committed {
                track.candidate = None;
                continue;
            }
            let rounds = match track.candidate {
                Some((state, rounds)) if state == verdict => {
                    if !due {
                        continue;
                    }
                    // Fixed rate: a late evaluation does not shift later rounds.
                    while track.next_round <= now {
                        track.next_round += track.interval_ms;
                    }
                    rounds + 1
                }
                _ => {
                    track.next_round = now + track.interval_ms;
                    1
                }
            };
            track.candidate = Some((verdict, rounds));
            let needed = match verdict {
                CheckState::Down => track.rounds.down,
                _ => track.rounds.up,
            };
            if rounds >= needed.unwrap_or(hysteresis).max(1) {
                let fresh = fresh_reports(track, members, now);
                let wanted = if verdict == CheckState::Down { Outcome::Down } else { Outcome::Up };
                let detail = fresh.iter().find(|r| r.outcome == wanted).map(|r| r.detail.clone()).unwrap_or_default();
                track.proposing = true;
                proposals.push(Proposal {
                    check_id: id.clone(),
                    from: track.committed,
                    to: verdict,
                    ok: counts.ok,
                    failing: counts.failing,
                    total: counts.total,
                    detail,
                });
            }
        }
        proposals
    }

    /// A proposed transition committed (or failed: `committed` is then the
    /// unchanged state). Either way the check may propose again.
    pub fn settled(&mut self, check_id: &str, committed: CheckState) {
        if let Some(track) = self.tracks.get_mut(check_id) {
            track.proposing = false;
            track.candidate = None;
            track.committed = committed;
        }
    }

    /// Forgets every report (a new master starts from what it receives).
    pub fn forget_reports(&mut self) {
        for track in self.tracks.values_mut() {
            track.latest.clear();
            track.fresh = false;
            track.candidate = None;
            track.proposing = false;
        }
    }
}

fn fresh_reports<'a>(track: &'a Track, members: &[NodeId], now: u64) -> Vec<&'a Received> {
    let window = (3 * track.interval_ms).max(FRESH_MIN_MS);
    members.iter().filter_map(|m| track.latest.get(m)).filter(|r| now.saturating_sub(r.at) <= window).collect()
}

fn tally(track: &Track, members: &[NodeId], now: u64) -> Tally {
    let fresh = fresh_reports(track, members, now);
    let ok = fresh.iter().filter(|r| r.outcome == Outcome::Up).count() as u32;
    let failing = fresh.iter().filter(|r| r.outcome == Outcome::Down).count() as u32;
    Tally { ok, failing, total: ok + failing }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: u64 = 10_000;

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 16])
    }

    fn members(n: u8) -> Vec<NodeId> {
        (1..=n).map(node).collect()
    }

    fn report(outcome: Outcome) -> Report {
        Report { check_id: "c".into(), outcome, latency_ms: 1, detail: format!("{outcome:?}") }
    }

    fn verdicts(committed: CheckState) -> Verdicts {
        let mut v = Verdicts::default();
        v.sync(&[("c".into(), INTERVAL, committed)]);
        v
    }

    /// Feeds one round of reports (one per listed outcome, from nodes 1..)
    /// and evaluates at the round's time.
    fn round(v: &mut Verdicts, now: u64, outcomes: &[Outcome], members: &[NodeId], hysteresis: u32) -> Vec<Proposal> {
        for (i, outcome) in outcomes.iter().enumerate() {
            v.record(node(i as u8 + 1), &report(*outcome), now);
        }
        v.evaluate(members, hysteresis, now)
    }

    use Outcome::{Down as D, Unavailable as X, Up as U};

    #[test]
    fn majority_table() {
        // (reports, members, expected verdict or None for "no verdict")
        let table: &[(&[Outcome], u8, Option<CheckState>)] = &[
            (&[U, U, U], 3, Some(CheckState::Up)),
            (&[D, D, U], 3, Some(CheckState::Down)),
            (&[D, U, U], 3, Some(CheckState::Up)),
            (&[D, D, D], 3, Some(CheckState::Down)),
            (&[D, U], 3, Some(CheckState::Up)), // tie is UP
            (&[D, D, U, U], 4, Some(CheckState::Up)),
            (&[D, D, D, U], 4, Some(CheckState::Down)),
            (&[D], 3, None),       // one reporter of three: no verdict
            (&[D, X, X], 3, None), // unavailable is no report, and no DOWN vote
            (&[D, D, X], 3, Some(CheckState::Down)),
            (&[D, D, D, D, U], 5, Some(CheckState::Down)),
            (&[D, D, U, U, U], 5, Some(CheckState::Up)),
            (&[D, D], 5, None),
        ];
        for (outcomes, n, expected) in table {
            let mut v = verdicts(CheckState::Unknown);
            let mut got = None;
            for r in 1..=2 {
                if let Some(p) = round(&mut v, r * INTERVAL + 1, outcomes, &members(*n), 2).pop() {
                    got = Some(p.to);
                }
            }
            assert_eq!(got, *expected, "{outcomes:?} of {n}");
        }
    }

    #[test]
    fn hysteresis_counts_rounds_not_messages() {
        let m = members(3);
        let mut v = verdicts(CheckState::Up);
        // Many failing messages inside one round count once.
        for _ in 0..10 {
            v.record(node(1), &report(D), INTERVAL);
            v.record(node(2), &report(D), INTERVAL);
        }
        assert!(v.evaluate(&m, 3, INTERVAL + 1).is_empty());
        assert!(v.evaluate(&m, 3, INTERVAL + 2).is_empty(), "same round again: not due");
        assert!(round(&mut v, 2 * INTERVAL + 1, &[D, D, U], &m, 3).is_empty());
        let p = round(&mut v, 3 * INTERVAL + 1, &[D, D, U], &m, 3);
        assert_eq!(p.len(), 1, "third consecutive round");
        assert_eq!(
            (p[0].from, p[0].to, p[0].ok, p[0].failing, p[0].total),
            (CheckState::Up, CheckState::Down, 1, 2, 3)
        );
        assert_eq!(p[0].detail, "Down");
    }

    #[test]
    fn a_flap_resets_the_candidate() {
        let m = members(3);
        let mut v = verdicts(CheckState::Up);
        assert!(round(&mut v, INTERVAL + 1, &[D, D, D], &m, 2).is_empty());
        assert!(round(&mut v, 2 * INTERVAL + 1, &[U, U, U], &m, 2).is_empty());
        assert!(round(&mut v, 3 * INTERVAL + 1, &[D, D, D], &m, 2).is_empty(), "the count started over");
        assert_eq!(round(&mut v, 4 * INTERVAL + 1, &[D, D, D], &m, 2).len(), 1);
    }

    #[test]
    fn unknown_at_start_and_one_proposal_until_settled() {
        let m = members(3);
        let mut v = verdicts(CheckState::Unknown);
        assert!(round(&mut v, INTERVAL + 1, &[U, U, U], &m, 2).is_empty());
        let p = round(&mut v, 2 * INTERVAL + 1, &[U, U, U], &m, 2);
        assert_eq!((p[0].from, p[0].to), (CheckState::Unknown, CheckState::Up));
        assert!(
            round(&mut v, 3 * INTERVAL + 1, &[U, U, U], &m, 2).is_empty(),
            "no second proposal while one is pending"
        );
        v.settled("c", CheckState::Up);
        assert!(round(&mut v, 4 * INTERVAL + 1, &[U, U, U], &m, 2).is_empty(), "already up");
    }

    #[test]
    fn stale_reports_do_not_count() {
        let m = members(3);
        let mut v = verdicts(CheckState::Up);
        v.record(node(1), &report(D), 0);
        v.record(node(2), &report(D), 0);
        // 30 s freshness floor (3 × 10 s = 30 s): at 40 s both are stale.
        assert!(v.evaluate(&m, 1, 40_001).is_empty());
        assert_eq!(v.tally("c", &m, 40_001).total, 0);
        v.record(node(3), &report(D), 40_002);
        assert_eq!(v.tally("c", &m, 40_002), Tally { ok: 0, failing: 1, total: 1 });
    }

    #[test]
    fn removed_members_stop_counting() {
        let mut v = verdicts(CheckState::Up);
        v.record(node(4), &report(D), INTERVAL);
        v.record(node(5), &report(D), INTERVAL);
        v.record(node(1), &report(U), INTERVAL);
        // Nodes 4 and 5 were removed: only 1..3 are members.
        assert_eq!(v.tally("c", &members(3), INTERVAL), Tally { ok: 1, failing: 0, total: 1 });
        assert!(v.evaluate(&members(3), 1, INTERVAL + 1).is_empty(), "one of three is no majority");
    }

    /// The first round is the evaluation that first sees the new verdict
    /// (the reports that make it), not a round of the master's own phase:
    /// the probes run at each node's phase, and a master that evaluated at
    /// another would add up to an interval to every detection.
    #[test]
    fn the_first_round_comes_with_the_reports_that_make_the_verdict() {
        let m = members(3);
        let mut v = verdicts(CheckState::Up);
        v.record(node(1), &report(D), 5 * INTERVAL / 10);
        assert!(v.evaluate(&m, 2, 5 * INTERVAL / 10 + 1).is_empty());
        v.record(node(2), &report(D), 7 * INTERVAL / 10);
        assert!(v.evaluate(&m, 2, 7 * INTERVAL / 10 + 1).is_empty(), "round 1 of 2");
        assert!(v.evaluate(&m, 2, 17 * INTERVAL / 10).is_empty(), "not an interval yet");
        let p = v.evaluate(&m, 2, 17 * INTERVAL / 10 + 1);
        assert_eq!(p.len(), 1, "round 2, one interval after the first");
        assert_eq!((p[0].from, p[0].to, p[0].failing), (CheckState::Up, CheckState::Down, 2));
    }

    /// Between rounds a verdict that goes back to the committed state drops
    /// the candidate at once.
    #[test]
    fn a_verdict_that_goes_back_between_rounds_starts_over() {
        let m = members(3);
        let mut v = verdicts(CheckState::Up);
        assert!(round(&mut v, 1_000, &[D, D, U], &m, 2).is_empty());
        assert!(round(&mut v, 6_000, &[U, U, U], &m, 2).is_empty());
        assert!(round(&mut v, 11_000, &[D, D, U], &m, 2).is_empty(), "round 1 again");
        assert_eq!(round(&mut v, 21_000, &[D, D, U], &m, 2).len(), 1);
    }

    #[test]
    fn rounds_are_fixed_rate() {
        let m = members(1);
        let mut v = verdicts(CheckState::Unknown);
        // A late evaluation does not shift later rounds.
        v.record(node(1), &report(U), 0);
        assert!(v.evaluate(&m, 5, 500).is_empty());
        assert!(v.evaluate(&m, 5, 2 * INTERVAL + 900).is_empty(), "rounds 2 and 3 at once count as one");
        assert_eq!(v.tracks["c"].candidate, Some((CheckState::Up, 2)));
        assert_eq!(v.tracks["c"].next_round, 3 * INTERVAL + 500);
    }

    proptest::proptest! {
        /// Whatever the reports, a proposal always has a majority of
        /// members reporting and follows the majority rule.
        #[test]
        fn proposals_follow_the_majority(rounds in proptest::collection::vec(proptest::collection::vec(0u8..3, 0..6), 1..12), n in 1u8..6, h in 1u32..4) {
            let m = members(n);
            let mut v = verdicts(CheckState::Unknown);
            for (r, outcomes) in rounds.iter().enumerate() {
                let outcomes: Vec<Outcome> = outcomes.iter().take(n as usize).map(|o| [U, D, X][*o as usize]).collect();
                for p in round(&mut v, (r as u64 + 1) * INTERVAL + 1, &outcomes, &m, h) {
                    proptest::prop_assert!(p.total as usize > m.len() / 2);
                    proptest::prop_assert_eq!(p.to == CheckState::Down, p.failing > p.ok);
                    v.settled(&p.check_id, p.to);
                }
            }
        }
    }

    #[test]
    fn a_check_with_its_own_rounds_goes_down_and_comes_back_by_them() {
        let mut v = Verdicts::default();
        let rounds = Rounds { down: Some(4), up: Some(1) };
        v.sync_with_rounds(&[("c".into(), INTERVAL, CheckState::Up, rounds)]);
        let members = [node(1), node(2), node(3)];
        let mut now = 0;
        let mut went_down = None;
        for round in 1..=6 {
            now += INTERVAL;
            for m in &members {
                v.record(*m, &report(Outcome::Down), now);
            }
            if let Some(p) = v.evaluate(&members, 2, now).into_iter().next() {
                went_down = Some((round, p.to));
                break;
            }
        }
        assert_eq!(went_down, Some((4, CheckState::Down)), "four rounds, not the cluster's two");
        v.sync_with_rounds(&[("c".into(), INTERVAL, CheckState::Down, rounds)]);
        v.settled("c", CheckState::Down);
        now += INTERVAL;
        for m in &members {
            v.record(*m, &report(Outcome::Up), now);
        }
        let up = v.evaluate(&members, 2, now);
        assert_eq!(up.len(), 1, "back up after one round");
        assert_eq!(up[0].to, CheckState::Up);
    }
}
