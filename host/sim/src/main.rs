//! `qu-sim`: run many seeds of the simulator (consensus and alert delivery),
//! or replay one. Prints the consensus and delivery counts per node count.
//!
//! ```text
//! qu-sim                          # 1000 seeds each with 3 and with 5 nodes
//! qu-sim --seeds 20000 --from 7   # more seeds, starting at seed 7
//! qu-sim --seed 1234 --nodes 5    # replay one seed exactly
//! qu-sim --soak                   # long runs: 10x the virtual time per seed
//! ```

use std::process::ExitCode;
use std::time::Instant;

use qu_sim::{DeliveryStats, OperatorStats, SimConfig, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: qu-sim [--seed N | --seeds COUNT [--from FIRST]] [--nodes 3|5] [--soak] [--trace]");
        return ExitCode::SUCCESS;
    }
    let soak = args.iter().any(|a| a == "--soak");
    let trace = args.iter().any(|a| a == "--trace");
    let node_counts: Vec<usize> = match value("--nodes") {
        Some(n) => vec![n as usize],
        None => vec![3, 5],
    };
    let seeds: Vec<u64> = match value("--seed") {
        Some(seed) => vec![seed],
        None => {
            let from = value("--from").unwrap_or(0);
            (from..from + value("--seeds").unwrap_or(1000)).collect()
        }
    };
    let mut failed = false;
    for nodes in node_counts {
        let mut cfg = SimConfig::new(nodes);
        cfg.trace = trace;
        if soak {
            cfg.fault_ms *= 10;
        }
        let started = Instant::now();
        let (mut steps, mut commits, mut elections, mut crashes, mut max_term) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut failures = 0;
        let mut delivery = DeliveryStats::default();
        let mut operator = OperatorStats::default();
        for &seed in &seeds {
            match run(seed, &cfg) {
                Ok(stats) => {
                    steps += stats.steps;
                    commits += stats.commits;
                    elections += stats.elections;
                    crashes += stats.crashes;
                    max_term = max_term.max(stats.max_term);
                    delivery.add(&stats.delivery);
                    operator.add(&stats.operator);
                }
                Err(violation) => {
                    failures += 1;
                    eprintln!("VIOLATION {violation}");
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{nodes} nodes: {} seeds, {failures} violations, {:.0} schedules/s, {:.0} steps/s, {commits} commits, {elections} elections, {crashes} crashes, max term {max_term}",
            seeds.len(),
            seeds.len() as f64 / secs,
            steps as f64 / secs,
        );
        let d = &delivery;
        println!(
            "  deliveries: {} records committed ({} delivered, {} failed), {} sends, {} accepted; sink: {} ok, {} transient, {} transient with retry-after, {} permanent, {} hung, {} crash after accept",
            d.records_committed,
            d.delivered_committed,
            d.failed_committed,
            d.sends,
            d.accepted,
            d.succeeded,
            d.transient,
            d.transient_retry_after,
            d.permanent,
            d.hung,
            d.crash_after_accept,
        );
        println!(
            "  {} crashes between a send and its commit, {} aborted, {} raw duplicates ({} after a crash, {} after an abort, {} after a lease loss, {} after a whole-cluster restore), {} sends after the lease ran out since the core's last step, {} beside a stale sender, {} stuck behind a hang at the end",
            d.crash_between_send_and_commit,
            d.aborted,
            d.raw_duplicates,
            d.duplicates_after_crash,
            d.duplicates_after_abort,
            d.duplicates_after_lease_lost,
            d.duplicates_after_restore,
            d.sends_after_lease_ran_out,
            d.beside_a_stale_sender,
            d.stuck_behind_hang,
        );
        let o = &operator;
        println!(
            "  operators: {} live and {} stopped edits ({} stale, {} bumped versions, {} edited terms, {} unreadable), {} restores with version 0, {} whole-cluster restores, {} timer changes; {} edits committed, {} set aside, {} refused by the master, {} kept over runtime-only commits; {} proposals with an unknown outcome, {} failed definitely",
            o.live_edits,
            o.stopped_edits,
            o.stale_edits,
            o.bumped_versions,
            o.edited_terms,
            o.unreadable_edits,
            o.restores,
            o.whole_restores,
            o.timing_changes,
            o.committed,
            o.set_aside,
            o.refused,
            o.kept_over_runtime,
            o.unknown_outcomes,
            o.definite_failures,
        );
        failed |= failures > 0;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
