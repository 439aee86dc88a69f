//! `qu-bench`: the cluster core's performance numbers, measured on real
//! `qu` processes on loopback (release build) and on the simulator.
//!
//! ```text
//! cargo build --release -p qu-cli
//! cargo run --release -p qu-tests --bin qu-bench            # everything
//! cargo run --release -p qu-tests --bin qu-bench -- commit  # one part: commit | failover | sim | detection | delivery | fanin | scale | plugins
//! ```
//!
//! The machine is shared and noisy: read medians and ratios, not single runs.

use std::path::Path;
use std::time::{Duration, Instant};

use qu_daemon::control::{self, ControlRequest, ControlResponse};
use qu_tests::Cluster;

mod plugins;

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
    if wants("detection") {
        runtime.block_on(detection());
    }
    if wants("delivery") {
        delivery();
    }
    if wants("fanin") {
        fan_in_bytes();
    }
    if wants("scale") {
        runtime.block_on(scale(10_000));
    }
    if wants("plugins") {
        let threaded =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        threaded.block_on(plugins::plugins());
    }
}

async fn check_state(socket: &Path) -> Option<String> {
    match control::call(socket, &ControlRequest::Status, Duration::from_secs(2)).await {
        Ok(ControlResponse::Status(view)) => view.checks.first().map(|c| c.state.clone()),
        _ => None,
    }
}

async fn wait_state(socket: &Path, want: &str) -> Duration {
    let started = Instant::now();
    while check_state(socket).await.as_deref() != Some(want) {
        assert!(started.elapsed() < Duration::from_secs(60), "the check never became {want}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Time from the target failing to a committed DOWN on the master
/// (interval 1 s, hysteresis 2), and back to UP.
async fn detection() {
    let cluster = Cluster::new(3, "2m");
    let qu_tests::HttpTarget { url, up } = qu_tests::http_target();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["check", "add", "http", "web", &url, "--interval", "1s", "--timeout", "500ms"]);
    let socket = cluster.nodes[master].socket.clone();
    wait_state(&socket, "up").await;
    let (mut down, mut recovered) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        down.push(wait_state(&socket, "down").await);
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        recovered.push(wait_state(&socket, "up").await);
    }
    down.sort();
    recovered.sort();
    println!(
        "detection, 3 nodes, interval 1s, hysteresis 2: target down -> committed DOWN median {}, max {}; back up -> UP median {} (goal <= 3 s)",
        ms(percentile(&down, 0.5)),
        ms(*down.last().unwrap()),
        ms(percentile(&recovered, 0.5)),
    );
}

/// Target down -> the webhook receiver has the DOWN alert (and back up ->
/// RECOVERED), through the real webhook sink on a 3-node cluster.
fn delivery() {
    let (_cluster, receiver, target) = qu_tests::alerting_cluster();
    let wait = |verb: &str, want: usize| {
        let started = Instant::now();
        qu_tests::eventually(Duration::from_secs(30), verb, || (receiver.count(verb).0 >= want).then_some(()));
        started.elapsed()
    };
    let (mut down, mut recovered) = (Vec::new(), Vec::new());
    for round in 1..=7 {
        target.up.store(false, std::sync::atomic::Ordering::SeqCst);
        down.push(wait("DOWN", round));
        target.up.store(true, std::sync::atomic::Ordering::SeqCst);
        recovered.push(wait("RECOVERED", round));
    }
    down.sort();
    recovered.sort();
    let (distinct, raw) = receiver.count("DOWN");
    println!(
        "detection to delivery, 3 nodes, interval 1s, hysteresis 2, webhook sink: target down -> DOWN received median {}, max {}; back up -> RECOVERED received median {} ({distinct} DOWN incidents, {raw} DOWN requests; goal <= 3 s)",
        ms(percentile(&down, 0.5)),
        ms(*down.last().unwrap()),
        ms(percentile(&recovered, 0.5)),
    );
}

/// Bytes on the wire per probe result in a fan-in batch (before TLS).
fn fan_in_bytes() {
    use qu_core::monitor::{Outcome, Report};
    use qu_core::wire::PeerNotice;
    for batch in [1usize, 100, 1_000] {
        let reports: Vec<Report> = (0..batch)
            .map(|i| Report {
                check_id: format!("c{:07x}", i * 7_919),
                outcome: if i % 10 == 0 { Outcome::Down } else { Outcome::Up },
                latency_ms: 3 + (i % 40) as u32,
                detail: if i % 10 == 0 { "status 503 (expected 2xx)".into() } else { "status 200".into() },
            })
            .collect();
        let bytes = postcard::to_allocvec(&PeerNotice::Results(reports)).unwrap().len() + 4 + 2;
        println!(
            "fan-in: a batch of {batch} results is {bytes} bytes framed ({:.1} bytes per result, before TLS's ~22 bytes per record)",
            bytes as f64 / batch as f64
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One node with `count` TCP checks at a 10 s interval against a local
/// listener: memory per check and the scheduler's lateness.
async fn scale(count: usize) {
    use qu_tests::Node;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let mut results = Vec::new();
    for checks in [0, count] {
        let mut node = Node::new(&format!("scale{checks}"));
        node.init(qu_tests::free_port(), &[]);
        let path = node.file("cluster.yaml");
        let mut config: qu_core::config::ClusterConfig =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for i in 0..checks {
            config.checks.push(qu_core::config::Check {
                id: format!("c{i:07x}"),
                name: format!("port-{i}"),
                kind: "tcp".into(),
                target: target.clone(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(5),
                settings: Default::default(),
                alert_ids: vec![],
                suppress_alert_ids: vec![],
                disabled: false,
            });
        }
        std::fs::write(&path, config.to_yaml()).unwrap();
        node.serve();
        // Three full intervals, so every check has run a few times.
        tokio::time::sleep(Duration::from_secs(32)).await;
        let status = node.status_json();
        let rss = rss_kib(node.pid().unwrap());
        results.push((checks, rss, status["probes"].clone()));
        assert!(node.terminate().success());
    }
    let (base, full) = (results[0].1, results[1].1);
    let probes = &results[1].2;
    println!(
        "scale: {count} tcp checks at 10s: RSS {full} KiB vs {base} KiB idle = {:.1} KB per check; {} probes run, lateness p50 {:.2} ms, p99 {:.2} ms (goals: <= 10 KB per check, p99 <= 50 ms)",
        (full.saturating_sub(base)) as f64 * 1024.0 / 1000.0 / count as f64,
        probes["run"],
        probes["lateness_p50_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
        probes["lateness_p99_us"].as_u64().unwrap_or(0) as f64 / 1000.0,
    );
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
