//! `qu-sim`: run many seeds of the consensus simulator, or replay one.
//!
//! ```text
//! qu-sim                          # 1000 seeds each with 3 and with 5 nodes
//! qu-sim --seeds 20000 --from 7   # more seeds, starting at seed 7
//! qu-sim --seed 1234 --nodes 5    # replay one seed exactly
//! qu-sim --soak                   # long runs: 10x the virtual time per seed
//! ```

use std::process::ExitCode;
use std::time::Instant;

use qu_sim::{SimConfig, run};

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
        let (mut steps, mut commits, mut elections, mut max_term) = (0u64, 0u64, 0u64, 0u64);
        let mut failures = 0;
        for &seed in &seeds {
            match run(seed, &cfg) {
                Ok(stats) => {
                    steps += stats.steps;
                    commits += stats.commits;
                    elections += stats.elections;
                    max_term = max_term.max(stats.max_term);
                }
                Err(violation) => {
                    failures += 1;
                    eprintln!("VIOLATION {violation}");
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{nodes} nodes: {} seeds, {failures} violations, {:.0} schedules/s, {:.0} steps/s, {commits} commits, {elections} elections, max term {max_term}",
            seeds.len(),
            seeds.len() as f64 / secs,
            steps as f64 / secs,
        );
        failed |= failures > 0;
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
