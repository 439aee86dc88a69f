//! The simulator in the test suite: thousands of seeds with 3 and 5 nodes,
//! the consensus invariants and the alert dispatcher's together. A failure
//! prints the seed and the command that replays it.

use qu_sim::{DeliveryStats, OperatorStats, SimConfig, run};

/// Runs `seeds`, fails on any violation, checks the operators' actions were
/// exercised, and returns the sweep's delivery counts.
fn sweep(nodes: usize, seeds: std::ops::Range<u64>) -> DeliveryStats {
    let cfg = SimConfig::new(nodes);
    let mut violations = Vec::new();
    let mut commits = 0;
    let mut delivery = DeliveryStats::default();
    let mut operator = OperatorStats::default();
    for seed in seeds.clone() {
        match run(seed, &cfg) {
            Ok(stats) => {
                commits += stats.commits;
                delivery.add(&stats.delivery);
                operator.add(&stats.operator);
            }
            Err(violation) => violations.push(violation.to_string()),
        }
    }
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    // The runs must do real work: commits happen despite the faults.
    assert!(commits > seeds.count() as u64 * 5, "suspiciously few commits: {commits}");
    assert_operators_exercised(&operator);
    delivery
}

/// The operators' invariants are not vacuous either: every kind of hand
/// edit, restore and timer change happened, edits committed, were set
/// aside and refused, and proposals failed both ways.
fn assert_operators_exercised(o: &OperatorStats) {
    let counts = [
        ("live edits", o.live_edits),
        ("edits while stopped", o.stopped_edits),
        ("stale edits", o.stale_edits),
        ("bumped versions", o.bumped_versions),
        ("edited terms", o.edited_terms),
        ("restores with version 0", o.restores),
        ("whole-cluster restores", o.whole_restores),
        ("timer changes", o.timing_changes),
        ("edits committed", o.committed),
        ("edits set aside", o.set_aside),
        ("edits refused by the master", o.refused),
        ("edits standing over runtime-only commits", o.kept_over_runtime),
        ("unknown outcomes", o.unknown_outcomes),
        ("definite failures", o.definite_failures),
    ];
    assert_all_seen(&counts, o);
}

/// Fails naming every count of `counts` that stayed 0 over the sweep.
fn assert_all_seen(counts: &[(&str, u64)], stats: &dyn std::fmt::Debug) {
    let missing: Vec<&str> = counts.iter().filter(|(_, n)| *n == 0).map(|(what, _)| *what).collect();
    assert!(missing.is_empty(), "the sweep never saw: {}\n{stats:?}", missing.join(", "));
}

/// The delivery invariants are not vacuous: over a sweep, the sink showed
/// every behaviour, senders crashed between a send and its commit, and the
/// same key reached the sink twice (each time excused).
fn assert_deliveries_exercised(d: &DeliveryStats) {
    let counts = [
        ("records committed", d.records_committed),
        ("records committed delivered", d.delivered_committed),
        ("records committed failed", d.failed_committed),
        ("successful sends", d.succeeded),
        ("transient failures", d.transient),
        ("transient failures with a retry-after", d.transient_retry_after),
        ("permanent failures", d.permanent),
        ("hung sends", d.hung),
        ("crashes after the sink accepted", d.crash_after_accept),
        ("crashes between a send and its commit", d.crash_between_send_and_commit),
        ("aborted sends", d.aborted),
        ("raw duplicates", d.raw_duplicates),
        ("duplicates after a crash", d.duplicates_after_crash),
        ("duplicates after an abort", d.duplicates_after_abort),
        ("duplicates after a lease loss", d.duplicates_after_lease_lost),
        ("duplicates after a whole-cluster restore", d.duplicates_after_restore),
    ];
    assert_all_seen(&counts, d);
}

#[test]
fn three_nodes_thousands_of_seeds() {
    assert_deliveries_exercised(&sweep(3, 0..2_500));
}

#[test]
fn five_nodes_thousands_of_seeds() {
    assert_deliveries_exercised(&sweep(5, 10_000..11_500));
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::new(3);
    let a = run(42, &cfg).unwrap();
    let b = run(42, &cfg).unwrap();
    assert_eq!((a.steps, a.messages, a.commits, a.elections), (b.steps, b.messages, b.commits, b.elections));
    assert_eq!(a.delivery, b.delivery, "the sink and the dispatchers replay too");
    assert_eq!(a.operator, b.operator, "and the operators");
}
