//! `qu-l3`: the fault suite on real processes. Release `qu` binaries, 3 or
//! 5 nodes, each in a network namespace of its own behind a bridge
//! ([`net::Hub`]); TCP targets whose up/down the harness flips (the ground
//! truth); a webhook receiver recording every request with its idempotency
//! key; a workload of mutations against random nodes recording invoke time,
//! completion time and result; every node's `qu status` polled. A seeded
//! nemesis (or the named scenarios) injects faults; afterwards
//! [`history::check`] judges what happened, and a failure keeps every
//! node's directory and log and prints the seed, the scenario and a short
//! timeline.
//!
//! ```text
//! qu-l3 scenarios [--nodes 3]                 the named scenarios, one after another
//! qu-l3 nemesis [--nodes 5] [--seconds 120] [--seed N]   random faults for that long
//! ```
//! `QU_L3_TIMELINE=1` prints the timeline of a run that passed, too.
//! Build it with `cargo build --release -p qu-cli -p qu-tests --bin qu --bin qu-l3
//! --features qu-cli/failpoints` (`.ci/test` does); it drives the `qu` next
//! to it, built with the store's crash points. Root only; it needs
//! nftables, libfaketime, fiu-utils and e2fsprogs (`.ci/setup`).

mod cluster;
mod history;
mod nemesis;
mod net;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let nodes: usize = value("--nodes").map(|v| v.parse().expect("--nodes N")).unwrap_or(0);
    let seconds: u64 = value("--seconds").map(|v| v.parse().expect("--seconds N")).unwrap_or(120);
    let seed: u64 = value("--seed").map(|v| v.parse().expect("--seed N")).unwrap_or_else(seed_from_commit);
    assert!(rustix::process::geteuid().is_root(), "qu-l3 creates network namespaces: run it as root");
    qu_tests::quiet();
    // The store's crash points (`Fault::CrashPoint`).
    qu_tests::qu_features("qu-cli/failpoints");
    let outcome = match args.first().map(String::as_str) {
        Some("scenarios") => nemesis::scenarios(if nodes == 0 { 3 } else { nodes }),
        Some("nemesis") => nemesis::random(if nodes == 0 { 5 } else { nodes }, Duration::from_secs(seconds), seed),
        _ => {
            eprintln!("usage: qu-l3 scenarios [--nodes N] | qu-l3 nemesis [--nodes N] [--seconds S] [--seed N]");
            std::process::exit(2);
        }
    };
    match outcome {
        Ok(summary) => println!("{summary}"),
        Err(failure) => {
            eprintln!("{failure}");
            std::process::exit(1);
        }
    }
}

/// The seed of a run that names none: from the commit being tested, so a
/// CI run is repeatable from its commit.
fn seed_from_commit() -> u64 {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    u64::from_str_radix(head.get(..15).unwrap_or("0"), 16).unwrap_or(0)
}
