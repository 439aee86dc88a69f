//! `qu-bench`: the cluster core's performance numbers, measured on real
//! `qu` processes on loopback (release build) and on the simulator.
//!
//! ```text
//! cargo build --release -p qu-cli
//! cargo run --release -p qu-tests --bin qu-bench            # everything
//! cargo run --release -p qu-tests --bin qu-bench -- commit  # one part: commit | failover | sim
//! ```
//!
//! The machine is shared and noisy: read medians and ratios, not single runs.

use std::path::Path;
use std::time::{Duration, Instant};

use qu_daemon::control::{self, ControlRequest, ControlResponse};
use qu_tests::Cluster;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let wants = |part: &str| which.is_empty() || which.iter().any(|w| w == part);
    qu_tests::quiet();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    println!("qu-bench: {} (2 cores shared; medians of repeated runs)\n", qu_tests::qu_bin().display());
    if wants("commit") {
        runtime.block_on(commit_latency());
    }
    if wants("failover") {
        runtime.block_on(failover("default timers (heartbeat 1s, dead_after 4s)", "1s", "4s", 1_000, 4_000, 5));
        runtime.block_on(failover("short timers (heartbeat 100ms, dead_after 500ms)", "100ms", "500ms", 100, 500, 10));
    }
    if wants("sim") {
        simulator();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn set(socket: &Path, value: u32) -> Duration {
    let started = Instant::now();
    let request = ControlRequest::SettingsSet { key: "hysteresis".into(), value: value.to_string() };
    match control::call(socket, &request, Duration::from_secs(30)).await {
        Ok(ControlResponse::Committed { .. }) => started.elapsed(),
        other => panic!("mutation failed: {other:?}"),
    }
}

/// Time from a mutation's request on the control socket to its answer, i.e.
/// until a majority has fsynced the new cluster.yaml.
async fn commit_latency() {
    const MUTATIONS: u32 = 300;
    let cluster = Cluster::with_timers(3, "1s", "4s", "2m");
    let master = cluster.wait_converged();
    let follower = (0..3).find(|i| *i != master).unwrap();
    for (label, node) in [("on the master", master), ("through a follower", follower)] {
        let socket = cluster.nodes[node].socket.clone();
        for warmup in 0..10 {
            set(&socket, 2 + warmup % 5).await;
        }
        let mut samples = Vec::new();
        for i in 0..MUTATIONS {
            samples.push(set(&socket, 2 + i % 5).await);
        }
        samples.sort();
        println!(
            "commit latency, 3 nodes, {label}: p50 {}  p90 {}  p99 {}  ({MUTATIONS} mutations)",
            ms(percentile(&samples, 0.5)),
            ms(percentile(&samples, 0.9)),
            ms(percentile(&samples, 0.99)),
        );
    }
    println!();
}

async fn is_master(socket: &Path) -> bool {
    matches!(
        control::call(socket, &ControlRequest::Status, Duration::from_millis(500)).await,
        Ok(ControlResponse::Status(view)) if view.quorum && view.master == Some(view.node_id)
    )
}

/// Time from kill -9 of the master to another node acting as master with a
/// quorum lease (polled on the control sockets every 2 ms).
async fn failover(label: &str, heartbeat: &str, dead_after: &str, heartbeat_ms: u64, dead_after_ms: u64, runs: usize) {
    let mut cluster = Cluster::with_timers(3, heartbeat, dead_after, "2m");
    let mut samples = Vec::new();
    for _ in 0..runs {
        let master = cluster.wait_converged();
        cluster.nodes[master].kill();
        let killed = Instant::now();
        let survivors: Vec<_> = (0..3).filter(|i| *i != master).map(|i| cluster.nodes[i].socket.clone()).collect();
        'poll: loop {
            for socket in &survivors {
                if is_master(socket).await {
                    break 'poll;
                }
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "no failover within 60s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(killed.elapsed());
        cluster.nodes[master].serve();
    }
    samples.sort();
    let budget = Duration::from_millis(dead_after_ms + 2 * heartbeat_ms);
    println!(
        "failover after kill -9, {label}: median {}  max {}  (budget dead_after + 2 heartbeats = {}, {runs} runs)",
        ms(percentile(&samples, 0.5)),
        ms(*samples.last().unwrap()),
        ms(budget),
    );
}

fn simulator() {
    println!();
    for nodes in [3, 5] {
        let cfg = qu_sim::SimConfig::new(nodes);
        let seeds = 2_000;
        let started = Instant::now();
        let mut steps = 0;
        for seed in 0..seeds {
            steps += qu_sim::run(seed, &cfg).expect("no violations").steps;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "simulator, {nodes} nodes: {:.0} schedules/s ({:.0} steps/s; each schedule is {} s of virtual time)",
            seeds as f64 / secs,
            steps as f64 / secs,
            (cfg.fault_ms + cfg.calm_ms) / 1000
        );
    }
}
