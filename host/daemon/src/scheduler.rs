//! The probe scheduler: every enabled check probed at a fixed rate (the next
//! probe is due one interval after the previous was *due*, whatever the
//! probe took), first probes spread over the interval by a hash of the
//! check id, at most `PROBES_CONCURRENT_MAX` at once, and a check never
//! overlapping itself (a round that comes due while the previous probe of
//! the check still runs is skipped, and counted). Results go to the event
//! loop.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qu_core::config::{ClusterConfig, NativeSpec};
use qu_core::monitor::{Outcome, Report};
use qu_probe::Probes;

use crate::plugins::Registry;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Probes running at once on one node.
pub const PROBES_CONCURRENT_MAX: usize = 512;

/// One check as the scheduler runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub id: String,
    pub kind: String,
    /// `None` for a check type this node cannot run natively (a plugin's).
    pub spec: Option<NativeSpec>,
    /// Target and settings, as given (what a plugin check receives).
    pub target: String,
    pub settings: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The checks this node should probe, from a config.
pub fn scheduled(config: &ClusterConfig) -> Vec<Scheduled> {
    config
        .checks
        .iter()
        .filter(|c| !c.disabled)
        .map(|c| Scheduled {
            id: c.id.clone(),
            kind: c.kind.clone(),
            spec: NativeSpec::parse(&c.kind, &c.target, &c.settings).ok().flatten(),
            target: c.target.clone(),
            settings: c.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            interval: c.interval,
            timeout: c.timeout,
        })
        .collect()
}

/// Where in its interval a check's probes fall (stable per check id).
fn offset(id: &str, interval: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    let millis = interval.as_millis().max(1) as u64;
    Duration::from_millis(hasher.finish() % millis)
}

/// What the scheduler tells the event loop, through a bounded channel.
#[derive(Debug)]
pub enum Round {
    /// A finished probe: its report, and how late it started (once it had
    /// its concurrency permit) against the time it was due.
    Probed(Report, Duration),
    /// Rounds that came due and were not probed: the check's previous probe
    /// was still running (or waiting for a permit), or the scheduler fell
    /// more than a whole interval behind.
    Skipped(u64),
}

/// The scheduler's end of the channel; the event loop holds the receiver.
/// A finished probe that finds it full waits for room (it is never
/// dropped); a count of skipped rounds that finds it full is lost.
pub type Finished = mpsc::Sender<Round>;

/// Room in the channel: reports waiting for the event loop.
pub const FINISHED_MAX: usize = 4_096;

/// Runs until `checks` is dropped.
/// Plugin checks run through `plugins` (none: reported unavailable).
pub async fn run(
    probes: Arc<Probes>,
    plugins: Option<Arc<Registry>>,
    mut checks: watch::Receiver<Arc<Vec<Scheduled>>>,
    finished: Finished,
) {
    let permits = Arc::new(Semaphore::new(PROBES_CONCURRENT_MAX));
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut known: HashMap<String, (Instant, Scheduled)> = HashMap::new();
    let mut queue: BTreeSet<(Instant, String)> = BTreeSet::new();
    let mut reconcile = true;
    loop {
        if reconcile {
            let wanted = checks.borrow_and_update().clone();
            let now = Instant::now();
            // A set, not a list: with 10,000 checks a linear `contains` per
            // check would stall the scheduler for a noticeable time.
            let ids: HashSet<&str> = wanted.iter().map(|c| c.id.as_str()).collect();
            probes.retain(&ids);
            known.retain(|id, (due, _)| {
                let keep = ids.contains(id.as_str());
                if !keep {
                    queue.remove(&(*due, id.clone()));
                }
                keep
            });
            for check in wanted.iter() {
                // Same interval: keep the slot, take the new target/timeout.
                if let Some((_, current)) = known.get_mut(&check.id)
                    && current.interval == check.interval
                {
                    *current = check.clone();
                    continue;
                }
                if let Some((due, _)) = known.remove(&check.id) {
                    queue.remove(&(due, check.id.clone()));
                }
                let due = now + offset(&check.id, check.interval);
                queue.insert((due, check.id.clone()));
                known.insert(check.id.clone(), (due, check.clone()));
            }
            reconcile = false;
        }
        let next = queue.first().map(|(due, _)| *due);
        tokio::select! {
            changed = checks.changed() => {
                if changed.is_err() {
                    return;
                }
                reconcile = true;
            }
            _ = sleep_until(next) => {
                let now = Instant::now();
                while let Some((due, id)) = queue.first().cloned() {
                    if due > now {
                        break;
                    }
                    queue.remove(&(due, id.clone()));
                    let Some((slot, check)) = known.get_mut(&id) else { continue };
                    // Fixed rate: the next one is due an interval after this one was;
                    // rounds the scheduler fell behind on are skipped, and counted.
                    let mut next_due = due + check.interval;
                    let mut behind = 0;
                    while next_due <= now {
                        next_due += check.interval;
                        behind += 1;
                    }
                    *slot = next_due;
                    queue.insert((next_due, id.clone()));
                    if behind > 0 {
                        let _ = finished.try_send(Round::Skipped(behind));
                    }
                    start_probe(&probes, &plugins, &permits, &running, &finished, check.clone(), due);
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn start_probe(
    probes: &Arc<Probes>,
    plugins: &Option<Arc<Registry>>,
    permits: &Arc<Semaphore>,
    running: &Arc<Mutex<HashSet<String>>>,
    finished: &Finished,
    check: Scheduled,
    due: Instant,
) {
    if !running.lock().unwrap_or_else(|e| e.into_inner()).insert(check.id.clone()) {
        tracing::debug!(check = %check.id, "previous probe still running; skipping this round");
        let _ = finished.try_send(Round::Skipped(1));
        return;
    }
    let (probes, permits, running, finished) = (probes.clone(), permits.clone(), running.clone(), finished.clone());
    let plugins = plugins.clone();
    tokio::spawn(async move {
        // Lateness is taken when the probe really starts, after its wait for
        // a permit: that wait is part of how late it is.
        let late = || Instant::now().saturating_duration_since(due);
        let (report, lateness) = match &check.spec {
            Some(spec) => {
                let Ok(_permit) = permits.acquire().await else { return };
                let lateness = late();
                let result = probes.run(&check.id, spec, check.timeout).await;
                let report = Report {
                    check_id: check.id.clone(),
                    outcome: result.outcome,
                    latency_ms: result.latency_ms,
                    detail: result.detail,
                };
                (report, lateness)
            }
            None => match &plugins {
                Some(registry) => {
                    let plugin = registry.get(&check.kind).map_err(|reason| (check.kind.clone(), reason.to_string()));
                    let Ok(_permit) = permits.acquire().await else { return };
                    let lateness = late();
                    let report = crate::plugins::probe(
                        plugin,
                        registry.runtime(),
                        &check.id,
                        &check.target,
                        &check.settings,
                        check.timeout,
                    )
                    .await;
                    (report, lateness)
                }
                None => {
                    let report = Report {
                        check_id: check.id.clone(),
                        outcome: Outcome::Unavailable,
                        latency_ms: 0,
                        detail: format!("plugin {} unavailable: no plugin runtime here", check.kind),
                    };
                    (report, late())
                }
            },
        };
        running.lock().unwrap_or_else(|e| e.into_inner()).remove(&check.id);
        let _ = finished.send(Round::Probed(report, lateness)).await;
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A loopback listener that counts the connections it gets.
    async fn counter() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        (addr, count)
    }

    fn tcp(id: &str, target: &str, interval_ms: u64) -> Scheduled {
        Scheduled {
            id: id.into(),
            kind: "tcp".into(),
            spec: NativeSpec::parse("tcp", target, &Default::default()).unwrap(),
            target: target.into(),
            settings: Vec::new(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms / 2),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edits_and_removals_apply_within_an_interval_without_disturbing_others() {
        let (a, a_count) = counter().await;
        let (b, b_count) = counter().await;
        let (c, c_count) = counter().await;
        let (finished, mut rounds) = mpsc::channel(FINISHED_MAX);
        let (checks, watch_rx) = watch::channel(Arc::new(vec![tcp("one", &a, 200), tcp("two", &b, 200)]));
        let task = tokio::spawn(run(Probes::new(), None, watch_rx, finished));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let (a1, b1) = (a_count.load(Ordering::SeqCst), b_count.load(Ordering::SeqCst));
        assert!((3..=6).contains(&a1) && (3..=6).contains(&b1), "fixed rate: {a1} and {b1} probes in 1.1 s at 200 ms");

        // Point "two" elsewhere and add nothing else: "one" keeps its rhythm.
        checks.send_replace(Arc::new(vec![tcp("one", &a, 200), tcp("two", &c, 200)]));
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let (a2, b2, c2) =
            (a_count.load(Ordering::SeqCst), b_count.load(Ordering::SeqCst), c_count.load(Ordering::SeqCst));
        assert!(b2 <= b1 + 1, "the old target is left within one interval ({b1} -> {b2})");
        assert!(c2 >= 3, "the new target is probed ({c2})");
        assert!((a1 + 3..=a1 + 6).contains(&a2), "the other check is undisturbed ({a1} -> {a2})");

        // Remove "two": it stops; "one" goes on.
        checks.send_replace(Arc::new(vec![tcp("one", &a, 200)]));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c3 = c_count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(c_count.load(Ordering::SeqCst), c3, "a removed check is not probed");
        assert!(a_count.load(Ordering::SeqCst) >= a2 + 3);

        drop(checks);
        task.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // probes still in flight report
        let (probed, _) = drain(&mut rounds);
        assert!(probed.len() >= a2 + c3, "every probe reported: {}", probed.len());
        assert!(probed.iter().all(|(report, _)| report.outcome == Outcome::Up));
    }

    /// A loopback HTTP server that accepts connections and never answers.
    async fn silent() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_that_outlasts_its_interval_skips_rounds_and_counts_them() {
        let url = silent().await;
        let check = Scheduled {
            id: "slow".into(),
            kind: "http".into(),
            spec: NativeSpec::parse("http", &url, &Default::default()).unwrap(),
            target: url,
            settings: Vec::new(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(400),
        };
        let (finished, mut rounds) = mpsc::channel(FINISHED_MAX);
        let (checks, watch_rx) = watch::channel(Arc::new(vec![check]));
        let task = tokio::spawn(run(Probes::new(), None, watch_rx, finished));
        // The first probe waits out its timeout; the rounds that come due
        // meanwhile (every 50 ms) start no second probe, and are counted.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut probed, mut skipped) = (Vec::new(), 0);
        while probed.is_empty() {
            assert!(Instant::now() < deadline, "the slow probe never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (more, skips) = drain(&mut rounds);
            probed.extend(more);
            skipped += skips;
        }
        drop(checks);
        task.await.unwrap();
        skipped += drain(&mut rounds).1;
        assert!(skipped >= 1, "rounds due while the probe ran are counted: {skipped}");
        assert!(probed.iter().all(|(report, _)| report.outcome == Outcome::Down), "{probed:?}");
    }

    /// Everything the scheduler reported so far: (probes, skipped rounds).
    fn drain(rounds: &mut mpsc::Receiver<Round>) -> (Vec<(Report, Duration)>, u64) {
        let (mut probed, mut skipped) = (Vec::new(), 0);
        while let Ok(round) = rounds.try_recv() {
            match round {
                Round::Probed(report, lateness) => probed.push((report, lateness)),
                Round::Skipped(n) => skipped += n,
            }
        }
        (probed, skipped)
    }

    #[test]
    fn offsets_spread_checks_over_the_interval() {
        let interval = Duration::from_secs(10);
        let offsets: Vec<Duration> = (0..1000).map(|i| offset(&format!("c{i:07x}"), interval)).collect();
        assert!(offsets.iter().all(|o| *o < interval));
        // Every tenth of the interval gets some checks.
        for bucket in 0..10 {
            let low = Duration::from_secs(bucket);
            let high = Duration::from_secs(bucket + 1);
            let n = offsets.iter().filter(|o| **o >= low && **o < high).count();
            assert!((50..=150).contains(&n), "bucket {bucket}: {n}");
        }
        assert_eq!(offset("web", interval), offset("web", interval), "stable per id");
    }
}
