//! `qu-bench`: the cluster core's performance numbers, measured on real
//! `qu` processes on loopback (release build) and on the simulator, each
//! compared in code with its goal from docs/benchmarks.md.
//!
//! ```text
//! cargo build --release -p qu-cli
//! cargo run --release -p qu-tests --bin qu-bench            # everything
//! cargo run --release -p qu-tests --bin qu-bench -- commit  # one part: commit | size | outage | failover | sim | detection | delivery | fanin | scale | plugins
//! ```
//!
//! Every figure with a goal is printed `met` or `MISSED`; the process exits
//! 1 if any goal was missed or a figure could not be measured. The machine
//! is shared and noisy: read medians and ratios, not single runs.

use std::path::Path;
use std::time::{Duration, Instant};

use qu_daemon::control::{self, ControlRequest, ControlResponse};
use qu_tests::Cluster;

use report::{Goal, Quantity, Report, field_u64};

mod load;
mod plugins;
mod report;

const PARTS: [&str; 10] =
    ["commit", "size", "outage", "failover", "sim", "detection", "delivery", "fanin", "scale", "plugins"];

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = which.iter().find(|w| !PARTS.contains(&w.as_str())) {
        eprintln!("error: no benchmark part `{unknown}`; the parts are: {}", PARTS.join(" "));
        std::process::exit(2);
    }
    let wants = |part: &str| which.is_empty() || which.iter().any(|w| w == part);
    qu_tests::quiet();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    println!("qu-bench: {} (2 cores shared; medians of repeated runs)\n", qu_tests::qu_bin().display());
    let mut report = Report::default();
    if wants("commit") {
        runtime.block_on(commit_latency(&mut report));
    }
    if wants("size") {
        runtime.block_on(load::commit_by_size(&mut report));
    }
    if wants("outage") {
        runtime.block_on(load::mass_outage(&mut report, 10_000));
    }
    if wants("failover") {
        runtime.block_on(failover(
            &mut report,
            "default timers (heartbeat 1s, dead_after 4s)",
            "1s",
            "4s",
            1_000,
            4_000,
            5,
        ));
        runtime.block_on(failover(
            &mut report,
            "short timers (heartbeat 100ms, dead_after 500ms)",
            "100ms",
            "500ms",
            100,
            500,
            10,
        ));
    }
    if wants("sim") {
        simulator(&mut report);
    }
    if wants("detection") {
        runtime.block_on(detection(&mut report));
    }
    if wants("delivery") {
        delivery(&mut report);
    }
    if wants("fanin") {
        fan_in_bytes(&mut report);
    }
    if wants("scale") {
        runtime.block_on(scale(&mut report, 10_000));
    }
    if wants("plugins") {
        let threaded =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        threaded.block_on(plugins::plugins(&mut report));
    }
    std::process::exit(report.finish());
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

/// Rounds of target down and back up, for detection and delivery.
const ROUNDS: usize = 10;
/// The check's interval in the detection and delivery benchmarks (1 s), and
/// the cluster's default hysteresis (2 rounds).
const INTERVAL: Duration = Duration::from_secs(1);
const HYSTERESIS: u32 = 2;

/// How long a flip may take to be seen: hysteresis rounds, plus 1 s for
/// the fan-in, the verdict and its commit.
fn detection_goal() -> Goal {
    Goal::AtMost(Quantity::duration(INTERVAL * HYSTERESIS + Duration::from_secs(1)))
}

/// A random point in the probe interval: flipping the target right after
/// a state change was seen would always flip at the same point of the probe
/// schedule, and every round would take the same time.
fn random_phase() -> Duration {
    Duration::from_millis(rand::random_range(0..INTERVAL.as_millis() as u64))
}

/// `min …, median …, max …` of sorted samples.
fn spread(sorted: &[Duration]) -> String {
    format!(
        "min {}, median {}, max {} ({} rounds)",
        Quantity::duration(sorted[0]),
        Quantity::duration(percentile(sorted, 0.5)),
        Quantity::duration(sorted[sorted.len() - 1]),
        sorted.len()
    )
}

/// Time from the target failing to a committed DOWN on the master
/// (interval 1 s, hysteresis 2), and back to UP.
async fn detection(report: &mut Report) {
    let cluster = Cluster::new(3, "2m");
    let qu_tests::HttpTarget { url, up } = qu_tests::http_target();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["check", "add", "http", "web", &url, "--interval", "1s", "--timeout", "500ms"]);
    let socket = cluster.nodes[master].socket.clone();
    wait_state(&socket, "up").await;
    let (mut down, mut recovered) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        tokio::time::sleep(random_phase()).await;
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        down.push(wait_state(&socket, "down").await);
        tokio::time::sleep(random_phase()).await;
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        recovered.push(wait_state(&socket, "up").await);
    }
    down.sort();
    recovered.sort();
    println!("detection, 3 nodes, interval 1s, hysteresis 2, each flip at a random phase of the interval");
    report.info("detection: target down -> committed DOWN", spread(&down));
    report.check(
        "detection: target down -> committed DOWN, max",
        Quantity::duration(down[ROUNDS - 1]),
        detection_goal(),
    );
    report.info("detection: back up -> committed UP", spread(&recovered));
    println!();
}

/// Target down -> the webhook receiver has the DOWN alert (and back up ->
/// RECOVERED), through the real webhook sink on a 3-node cluster.
fn delivery(report: &mut Report) {
    let (_cluster, receiver, target) = qu_tests::alerting_cluster();
    let wait = |verb: &str, want: usize| {
        let started = Instant::now();
        qu_tests::eventually(Duration::from_secs(30), verb, || (receiver.count(verb).0 >= want).then_some(()));
        started.elapsed()
    };
    let (mut down, mut recovered) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        std::thread::sleep(random_phase());
        target.up.store(false, std::sync::atomic::Ordering::SeqCst);
        down.push(wait("DOWN", round));
        std::thread::sleep(random_phase());
        target.up.store(true, std::sync::atomic::Ordering::SeqCst);
        recovered.push(wait("RECOVERED", round));
    }
    down.sort();
    recovered.sort();
    let (distinct, raw) = receiver.count("DOWN");
    println!("detection to delivery, 3 nodes, interval 1s, hysteresis 2, webhook sink, each flip at a random phase");
    report.info("delivery: target down -> DOWN received", spread(&down));
    report.check("delivery: target down -> DOWN received, max", Quantity::duration(down[ROUNDS - 1]), detection_goal());
    report.info("delivery: back up -> RECOVERED received", spread(&recovered));
    report.info("delivery: DOWN alerts", format!("{distinct} incidents, {raw} accepted requests"));
    // Without a crash, every incident's alert is sent once (docs/benchmarks.md: "no duplicate").
    report.check(
        "delivery: DOWN requests beyond one per incident",
        Quantity::count((raw - distinct) as u64),
        Goal::AtMost(Quantity::count(0)),
    );
    println!();
}

/// Bytes on the wire per probe result in a fan-in batch (before TLS).
fn fan_in_bytes(report: &mut Report) {
    use qu_core::monitor::Outcome;
    use qu_core::wire::PeerNotice;
    println!("fan-in (postcard, framed, before TLS's ~22 bytes per record)");
    for batch in [1usize, 100, 1_000] {
        let reports: Vec<qu_core::monitor::Report> = (0..batch)
            .map(|i| qu_core::monitor::Report {
                check_id: format!("c{:07x}", i * 7_919),
                outcome: if i % 10 == 0 { Outcome::Down } else { Outcome::Up },
                latency_ms: 3 + (i % 40) as u32,
                detail: if i % 10 == 0 { "status 503 (expected 2xx)".into() } else { "status 200".into() },
            })
            .collect();
        let bytes = postcard::to_allocvec(&PeerNotice::Results(reports)).unwrap().len() + 4 + 2;
        report.info(
            &format!("fan-in: a batch of {batch} results"),
            format!("{bytes} bytes, {:.1} bytes per result", bytes as f64 / batch as f64),
        );
    }
    println!();
}

/// A process's resident memory (`VmRSS` in `/proc/PID/status`), in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| format!("no `VmRSS` in {path}"))?;
    let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    kib.ok_or_else(|| format!("unreadable `{line}` in {path}"))
}

/// One node with `count` TCP checks at a 10 s interval against a local
/// listener: memory per check and the scheduler's lateness.
async fn scale(report: &mut Report, count: usize) {
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
            std::sync::Arc::make_mut(&mut config.checks).push(std::sync::Arc::new(qu_core::config::Check {
                rounds_down: None,
                rounds_up: None,
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
            }));
        }
        std::fs::write(&path, config.to_yaml()).unwrap();
        node.serve();
        // Three full intervals, so every check has run a few times.
        tokio::time::sleep(Duration::from_secs(32)).await;
        let status = node.status_json();
        let rss = rss_kib(node.pid().unwrap());
        results.push((rss, status));
        assert!(node.terminate().success());
    }
    println!("scale: one node, {count} tcp checks at 10s, after three intervals");
    match (&results[0].0, &results[1].0) {
        (Ok(base), Ok(full)) => {
            // Signed: a node with checks could come out smaller than an idle one.
            let per_check_kb = (*full as i64 - *base as i64) as f64 * 1024.0 / 1000.0 / count as f64;
            report.info("scale: RSS", format!("{full} KiB with the checks, {base} KiB idle"));
            report.check(
                "scale: memory per check over an idle node",
                Quantity::kilobytes(per_check_kb),
                Goal::AtMost(Quantity::kilobytes(10.0)),
            );
        }
        (Err(why), _) | (_, Err(why)) => report.check(
            "scale: memory per check over an idle node",
            Err(why.clone()),
            Goal::AtMost(Quantity::kilobytes(10.0)),
        ),
    }
    let status = &results[1].1;
    let field = |path: &str| field_u64(status, path, "qu status --json");
    // The lateness percentiles cover the last 10,000 probes: fewer would not
    // describe this load (and none would read as a lateness of 0).
    report.check(
        "scale: probes run (the lateness percentiles cover the last 10,000)",
        field("probes.run").map(Quantity::count),
        Goal::AtLeast(Quantity::count(10_000)),
    );
    report.check(
        "scale: rounds skipped",
        field("probes.skipped").map(Quantity::count),
        Goal::AtMost(Quantity::count(0)),
    );
    match field("probes.lateness_p50_us") {
        Ok(p50) => report.info("scale: lateness p50", Quantity::micros(p50)),
        Err(why) => report.error("scale: lateness p50", why),
    }
    report.check(
        "scale: lateness p99",
        field("probes.lateness_p99_us").map(Quantity::micros),
        Goal::AtMost(Quantity::millis(50.0)),
    );
    println!();
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
async fn commit_latency(report: &mut Report) {
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
        report.info(
            &format!("commit latency, 3 nodes, {label}"),
            format!(
                "p50 {}  p90 {}  p99 {}  ({MUTATIONS} mutations)",
                ms(percentile(&samples, 0.5)),
                ms(percentile(&samples, 0.9)),
                ms(percentile(&samples, 0.99)),
            ),
        );
        if node == master {
            report.check(
                "commit latency on the master, p50",
                Quantity::duration(percentile(&samples, 0.5)),
                Goal::AtMost(Quantity::millis(10.0)),
            );
        }
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
async fn failover(
    report: &mut Report,
    label: &str,
    heartbeat: &str,
    dead_after: &str,
    heartbeat_ms: u64,
    dead_after_ms: u64,
    runs: usize,
) {
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
    // The budget: dead_after + 2 heartbeats.
    let budget = Duration::from_millis(dead_after_ms + 2 * heartbeat_ms);
    report.info(&format!("failover after kill -9, {label}"), spread(&samples));
    report.check(
        &format!("failover after kill -9, {label}, max"),
        Quantity::duration(samples[runs - 1]),
        Goal::AtMost(Quantity::duration(budget)),
    );
}

/// The simulator seeds the test suite runs (host/sim/tests/seeds.rs), by
/// node count.
const SUITE_SEEDS: [(usize, u64); 2] = [(3, 2_500), (5, 1_500)];

fn simulator(report: &mut Report) {
    println!("simulator");
    let mut suite_secs = 0.0;
    for (nodes, suite_seeds) in SUITE_SEEDS {
        let cfg = qu_sim::SimConfig::new(nodes);
        let seeds = 2_000;
        let started = Instant::now();
        let mut steps = 0;
        for seed in 0..seeds {
            steps += qu_sim::run(seed, &cfg).expect("no violations").steps;
        }
        let secs = started.elapsed().as_secs_f64();
        report.info(
            &format!("simulator, {nodes} nodes"),
            format!(
                "{:.0} schedules/s ({:.0} steps/s; each schedule is {} s of virtual time)",
                seeds as f64 / secs,
                steps as f64 / secs,
                (cfg.fault_ms + cfg.calm_ms) / 1000
            ),
        );
        suite_secs += suite_seeds as f64 * secs / seeds as f64;
    }
    // "Thousands of seeds per CI run": the suite's share must stay small.
    report.check(
        "simulator: the test suite's 4,000 seeds (2,500 with 3 nodes, 1,500 with 5) at these rates",
        Quantity::millis(suite_secs * 1000.0),
        Goal::AtMost(Quantity::millis(30_000.0)),
    );
    println!();
}
