//! How the cluster core's cost grows with its work: commit latency and
//! bytes per commit at 0, 1,000 and 10,000 checks, and a mass outage of
//! 10,000 checks. Checks are added the way the issue that asked for these
//! numbers did: one hand edit of the master's cluster.yaml.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qu_core::config::{Check, ClusterConfig};
use qu_tests::{Cluster, eventually};

use crate::report::{Goal, Quantity, Report};
use crate::{ms, percentile, set};

/// A TCP target on loopback that accepts while `up`, and refuses (its
/// listener closed) once it is set down.
struct Target {
    addr: String,
    up: Arc<AtomicBool>,
}

fn target() -> Target {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    std::thread::spawn(move || {
        while flag.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        // Dropping the listener: every connect is refused from now on.
    });
    Target { addr, up }
}

fn checks(count: usize, target: &str, interval: Duration) -> Vec<Check> {
    (0..count)
        .map(|i| Check {
            rounds_down: None,
            rounds_up: None,
            id: format!("c{i:07x}"),
            name: format!("port-{i}"),
            kind: "tcp".into(),
            target: target.to_string(),
            interval,
            timeout: Duration::from_secs(2),
            settings: Default::default(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: false,
        })
        .collect()
}

/// Adds `checks` to the cluster by one hand edit of `node`'s cluster.yaml
/// and waits until every node holds them.
fn add_by_hand_edit(cluster: &Cluster, node: usize, checks: Vec<Check>) {
    let count = checks.len();
    let path = cluster.nodes[node].file("cluster.yaml");
    let mut config = ClusterConfig::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::sync::Arc::make_mut(&mut config.checks).extend(checks.into_iter().map(std::sync::Arc::new));
    std::fs::write(&path, config.to_yaml()).unwrap();
    for other in &cluster.nodes {
        eventually(Duration::from_secs(120), "every node holds the checks", || {
            let text = std::fs::read_to_string(other.file("cluster.yaml")).ok()?;
            let config = ClusterConfig::parse(&text).ok()?;
            (config.checks.len() >= count).then_some(())
        });
    }
}

/// `(bytes written by write(2) and friends — files and sockets, bytes to
/// storage)` so far by process `pid`, from /proc/PID/io.
fn io_of(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (field("wchar:"), field("write_bytes:"))
}

/// Commit latency and bytes per commit with `count` checks in the config.
async fn commit_at(report: &mut Report, count: usize, empty_p50: &mut Option<Duration>) {
    const MUTATIONS: u32 = 100;
    let cluster = Cluster::with_timers(3, "1s", "4s", "2m");
    let master = cluster.wait_converged();
    if count > 0 {
        // Disabled: the probes would load the machine; the config is what is measured.
        let mut added = checks(count, "127.0.0.1:9", Duration::from_secs(60));
        added.iter_mut().for_each(|c| c.disabled = true);
        add_by_hand_edit(&cluster, master, added);
    }
    let master = cluster.wait_converged();
    let socket = cluster.nodes[master].socket.clone();
    for warmup in 0..5 {
        set(&socket, 2 + warmup % 5).await;
    }
    let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.pid().unwrap()).collect();
    let before: Vec<(u64, u64)> = pids.iter().map(|p| io_of(*p)).collect();
    let mut samples = Vec::new();
    for i in 0..MUTATIONS {
        samples.push(set(&socket, 2 + i % 5).await);
    }
    // The daemons write their files once the changes pause: count that too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<(u64, u64)> = pids.iter().map(|p| io_of(*p)).collect();
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    let size = std::fs::metadata(cluster.nodes[master].file("cluster.yaml")).map(|m| m.len()).unwrap_or(0);
    report.info(
        &format!("commit, {count} checks"),
        format!(
            "cluster.yaml {:.1} KB; p50 {}  p90 {}  p99 {}  ({MUTATIONS} `settings set` on the master)",
            size as f64 / 1000.0,
            ms(p50),
            ms(percentile(&samples, 0.9)),
            ms(percentile(&samples, 0.99)),
        ),
    );
    let per = |f: fn(&(u64, u64)) -> u64| {
        let total: u64 = before.iter().zip(&after).map(|(b, a)| f(a).saturating_sub(f(b))).sum();
        total as f64 / MUTATIONS as f64 / 1000.0
    };
    report.info(
        &format!("bytes per commit, {count} checks (3 nodes together)"),
        format!(
            "{:.1} KB written by the daemons (files and sockets), {:.1} KB to storage, with the files written once the changes paused",
            per(|io| io.0),
            per(|io| io.1)
        ),
    );
    match empty_p50 {
        None => {
            *empty_p50 = Some(p50);
            report.check("commit p50, empty cluster", Quantity::duration(p50), Goal::AtMost(Quantity::millis(10.0)));
        }
        Some(empty) => report.check(
            &format!("commit p50 at {count} checks, within 2x of an empty cluster"),
            Quantity::duration(p50),
            Goal::AtMost(Quantity::duration(*empty * 2)),
        ),
    }
}

pub async fn commit_by_size(report: &mut Report) {
    let mut empty = None;
    for count in [0, 1_000, 10_000] {
        commit_at(report, count, &mut empty).await;
    }
    println!();
}

/// How many checks the daemon's copy at `path` holds committed `down`.
fn down_in(path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else { return 0 };
    let Ok(config) = ClusterConfig::parse(&text) else { return 0 };
    config.states.values().filter(|s| s.state == qu_core::monitor::CheckState::Down).count()
}

/// `count` TCP checks at 10 s, hysteresis 2, on 3 nodes; the target goes
/// away at once: every check must be DOWN on every node within
/// hysteresis × interval + 1 s.
pub async fn mass_outage(report: &mut Report, count: usize) {
    const INTERVAL: Duration = Duration::from_secs(10);
    let budget = INTERVAL * 2 + Duration::from_secs(1);
    let target = target();
    let cluster = Cluster::with_timers(3, "1s", "4s", "2m");
    let master = cluster.wait_converged();
    add_by_hand_edit(&cluster, master, checks(count, &target.addr, INTERVAL));
    let paths: Vec<_> = cluster.nodes.iter().map(|n| n.copy_path()).collect();
    eventually(Duration::from_secs(120), "every check up on every node", || {
        paths
            .iter()
            .all(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                ClusterConfig::parse(&text).is_ok_and(|c| c.states.len() >= count)
            })
            .then_some(())
    });
    // Let a full interval of UP reports settle.
    tokio::time::sleep(INTERVAL).await;
    let cpu_before: Vec<u64> = cluster.nodes.iter().map(|n| cpu_ticks(n.pid().unwrap())).collect();
    target.up.store(false, Ordering::SeqCst);
    let gone = Instant::now();
    let mut master_at = None;
    let mut all_at = None;
    while gone.elapsed() < budget * 3 && all_at.is_none() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let downs: Vec<usize> = paths.iter().map(|p| down_in(p)).collect();
        if master_at.is_none() && downs[master] >= count {
            master_at = Some(gone.elapsed());
        }
        if downs.iter().all(|d| *d >= count) {
            all_at = Some(gone.elapsed());
        }
    }
    let cpu: u64 = cluster.nodes.iter().zip(&cpu_before).map(|(n, b)| cpu_ticks(n.pid().unwrap()) - b).sum();
    report.info(
        &format!("mass outage, {count} checks: CPU across the cluster"),
        format!("{:.1} s of CPU from the outage until all DOWN everywhere", cpu as f64 / USER_HZ),
    );
    let measured = |at: Option<Duration>, what: &str| match at {
        Some(at) => Ok(Quantity::duration(at)),
        None => Err(format!("not all {count} checks DOWN {what} within {:?}", budget * 3)),
    };
    report.check(
        &format!("mass outage, {count} checks: all DOWN on the master"),
        measured(master_at, "on the master"),
        Goal::AtMost(Quantity::duration(budget)),
    );
    report.check(
        &format!("mass outage, {count} checks: all DOWN on every node"),
        measured(all_at, "on every node"),
        Goal::AtMost(Quantity::duration(budget)),
    );
    println!();
}

/// User + system CPU ticks of process `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// The unit of /proc CPU times: 100 on every architecture Linux qu runs on.
const USER_HZ: f64 = 100.0;
