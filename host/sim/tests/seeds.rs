//! The simulator in the test suite: thousands of seeds with 3 and 5 nodes.
//! A failure prints the seed and the command that replays it.

use qu_sim::{SimConfig, run};

fn sweep(nodes: usize, seeds: std::ops::Range<u64>) {
    let cfg = SimConfig::new(nodes);
    let mut violations = Vec::new();
    let mut commits = 0;
    for seed in seeds.clone() {
        match run(seed, &cfg) {
            Ok(stats) => commits += stats.commits,
            Err(violation) => violations.push(violation.to_string()),
        }
    }
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    // The runs must do real work: commits happen despite the faults.
    assert!(commits > seeds.count() as u64 * 5, "suspiciously few commits: {commits}");
}

#[test]
fn three_nodes_thousands_of_seeds() {
    sweep(3, 0..2_500);
}

#[test]
fn five_nodes_thousands_of_seeds() {
    sweep(5, 10_000..11_500);
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::new(3);
    let a = run(42, &cfg).unwrap();
    let b = run(42, &cfg).unwrap();
    assert_eq!((a.steps, a.messages, a.commits, a.elections), (b.steps, b.messages, b.commits, b.elections));
}
