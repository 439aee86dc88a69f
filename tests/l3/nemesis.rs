//! Faults: the named scenarios one after another, or a seeded random
//! sequence for a while. Each ends healed; then the run converges, the
//! deliveries settle, and the checker judges the whole history.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustix::process::Signal;

use crate::cluster::{DEAD_AFTER, HYSTERESIS, INTERVAL_SECS, World};
use crate::history::{self, Event};

/// One fault, healed by the time it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the master, restarted after 0–3 × dead_after.
    KillMaster,
    /// SIGSTOP of the master past dead_after, then SIGCONT.
    StopMaster,
    /// The master with a minority (2/1 of 3, 3/2 of 5 with it on the 2).
    PartitionMasterMinority,
    /// One node cannot dial another's peer port (the other way works).
    DialCut,
    /// A node's link down and up, five times.
    FlapLink,
    /// Two nodes killed at once and restarted.
    RestartTwo,
    /// Every node killed at once and restarted.
    RestartAll,
    /// Each node in turn stopped cleanly and started again.
    RollingRestart,
    /// The webhook receiver answers 503 for a while.
    SinkOutage,
    /// A target goes down, or comes back, and stays so for a while.
    FlipTarget,
    /// A node's wall clock steps (even nodes), or its wall and monotonic
    /// clocks jump forward together (odd nodes), libfaketime.
    ClockJump,
    /// A node's disk fills up (ENOSPC), then is freed.
    DiskFull,
    /// A node's fsync and fdatasync fail with EIO for a while (libfiu).
    FsyncError,
    /// The master's disk stops answering (fsfreeze), then thaws.
    DiskStall,
    /// A node restarted with one of the store's crash points set: it
    /// aborts at that step of its next write, and is started again.
    CrashPoint,
    /// A node stopped, one of its files damaged, started again: a torn log
    /// tail, a left temp file and a `version: 0` restore it must start on;
    /// on a cut cluster.yaml or an unknown field in it, it must run on its
    /// own copy and say so; a zeroed state.yaml it must refuse, naming the
    /// file, until the file is restored.
    CorruptFile,
}

const ALL: [Fault; 16] = [
    Fault::KillMaster,
    Fault::StopMaster,
    Fault::PartitionMasterMinority,
    Fault::DialCut,
    Fault::FlapLink,
    Fault::RestartTwo,
    Fault::RestartAll,
    Fault::RollingRestart,
    Fault::SinkOutage,
    Fault::FlipTarget,
    Fault::ClockJump,
    Fault::DiskFull,
    Fault::FsyncError,
    Fault::DiskStall,
    Fault::CrashPoint,
    Fault::CorruptFile,
];

impl Fault {
    /// Whether it may leave the cluster without a master or a majority for
    /// a while (the checker does not time verdicts across those).
    fn disrupts(self) -> bool {
        !matches!(self, Fault::SinkOutage | Fault::FlipTarget)
    }
}

/// The timing the checker holds a run to.
pub fn bounds() -> history::Bounds {
    history::Bounds {
        verdict: Duration::from_secs(INTERVAL_SECS) * HYSTERESIS + DEAD_AFTER,
        // The poller sees every node every ~0.3 s; a probe round starts up
        // to one interval after a change.
        slack: Duration::from_secs(INTERVAL_SECS) + Duration::from_millis(500),
        recovery: DEAD_AFTER * 4,
        lease: DEAD_AFTER * 2,
    }
}

/// Injects `fault`; `pick` chooses its variant (the crash point, the damage
/// to a file) where the scenarios go through each, or the seed does.
fn inject(world: &mut World, fault: Fault, pick: Option<usize>, rng: &mut rand::rngs::StdRng) {
    world.supervise();
    world.history.record(Event::Begin { what: format!("{fault:?}"), disrupts: fault.disrupts() });
    act(world, fault, pick, rng);
    world.supervise();
    world.history.record(Event::End);
}

/// How many variants `fault` has (the scenarios run each).
fn variants(fault: Fault) -> usize {
    match fault {
        Fault::CrashPoint => qu_store::CRASH_POINTS.len(),
        Fault::CorruptFile => DAMAGES,
        _ => 1,
    }
}

fn act(world: &mut World, fault: Fault, pick: Option<usize>, rng: &mut rand::rngs::StdRng) {
    let n = world.nodes.len();
    let master = world.master().unwrap_or(0);
    match fault {
        Fault::KillMaster => {
            world.kill(master);
            std::thread::sleep(DEAD_AFTER * rng.random_range(0..=3));
            world.restart(master);
        }
        Fault::StopMaster => {
            world.signal(master, Signal::STOP, "SIGSTOP");
            std::thread::sleep(DEAD_AFTER * 3);
            world.signal(master, Signal::CONT, "SIGCONT");
        }
        Fault::PartitionMasterMinority => {
            let mut side = vec![master];
            while side.len() < (n - 1) / 2 {
                let other = rng.random_range(0..n);
                if !side.contains(&other) {
                    side.push(other);
                }
            }
            world.hub.partition(&side, n);
            world.history.record(Event::Fault(format!("partition {side:?} from the rest")));
            world.history.record(Event::Isolated { nodes: side.clone(), on: true });
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
            world.hub.heal();
            world.history.record(Event::Isolated { nodes: side, on: false });
            world.history.record(Event::Fault("heal".into()));
        }
        Fault::DialCut => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            world.hub.cut_dial(a, b, world.ports[b]);
            world.history.record(Event::Fault(format!("n{a} cannot dial n{b}")));
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
            world.hub.heal();
            world.history.record(Event::Fault("heal".into()));
        }
        Fault::FlapLink => {
            let i = rng.random_range(0..n);
            world.history.record(Event::Fault(format!("flap n{i}'s link")));
            for _ in 0..5 {
                world.hub.link(i, false);
                std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
                world.hub.link(i, true);
                std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
            }
        }
        Fault::RestartTwo => {
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            world.kill(a);
            world.kill(b);
            // With three nodes the one left has no majority.
            let left: Vec<usize> = (0..n).filter(|i| *i != a && *i != b).collect();
            let cut_off = left.len() * 2 <= n;
            if cut_off {
                world.history.record(Event::Isolated { nodes: left.clone(), on: true });
            }
            std::thread::sleep(DEAD_AFTER);
            world.restart(a);
            world.restart(b);
            if cut_off {
                world.history.record(Event::Isolated { nodes: left, on: false });
            }
        }
        Fault::RestartAll => {
            for i in 0..n {
                world.kill(i);
            }
            std::thread::sleep(DEAD_AFTER);
            for i in 0..n {
                world.restart(i);
            }
        }
        Fault::RollingRestart => {
            for i in 0..n {
                world.signal(i, Signal::TERM, "SIGTERM");
                let _ = world.nodes[i].wait_exit(Duration::from_secs(20));
                world.restart(i);
                let _ = world.converged(Duration::from_secs(20));
            }
        }
        Fault::SinkOutage => {
            world.receiver.up.store(false, std::sync::atomic::Ordering::SeqCst);
            world.history.record(Event::Fault("sink down".into()));
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..6_000)));
            world.receiver.up.store(true, std::sync::atomic::Ordering::SeqCst);
            world.history.record(Event::Fault("sink up".into()));
        }
        Fault::FlipTarget => {
            // After the last fault has settled, so the verdict is timed.
            std::thread::sleep(bounds().recovery + Duration::from_millis(500));
            let t = rng.random_range(0..world.targets.len());
            let up = rng.random_bool(0.5);
            world.targets[t].set(up, &world.history);
            // Long enough for the verdict to be committed (and timed).
            std::thread::sleep(bounds().verdict + bounds().slack + Duration::from_millis(500));
        }
        Fault::ClockJump => {
            let i = rng.random_range(0..n);
            let clock = &mut world.clocks[i];
            let what = if clock.monotonic {
                let step = rng.random_range(2..=8);
                clock.set(clock.offset + step);
                format!("n{i}'s wall and monotonic clocks jump {step}s forward (to {:+}s)", clock.offset)
            } else {
                let to = [-3_600, 3_600, -90, 0][rng.random_range(0..4)];
                clock.set(to);
                format!("n{i}'s wall clock steps to {to:+}s")
            };
            world.history.record(Event::Fault(what));
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..4_000)));
        }
        Fault::DiskFull => {
            let i = rng.random_range(0..n);
            world.disks[i].fill();
            world.history.record(Event::Fault(format!("n{i}'s disk full")));
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
            world.disks[i].unfill();
            world.history.record(Event::Fault(format!("n{i}'s disk freed")));
            world.settle(i, "No space left on device");
        }
        Fault::FsyncError => {
            let i = rng.random_range(0..n);
            let on = world.fsync_errors(i, true);
            world.history.record(Event::Fault(format!("n{i}'s fsync fails with EIO")));
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..4_000)));
            if on.is_ok() && world.nodes[i].is_alive() {
                let _ = world.fsync_errors(i, false);
            }
            world.history.record(Event::Fault(format!("n{i}'s fsync works again")));
            if !world.settle(i, "Input/output error")
                && let Err(e) = on
            {
                world.history.record(Event::Violation(format!("could not make n{i}'s fsync fail: {e}")));
            }
        }
        Fault::DiskStall => {
            world.disks[master].freeze();
            world.history.record(Event::Fault(format!("n{master}'s disk frozen")));
            std::thread::sleep(Duration::from_millis(rng.random_range(1_000..4_000)));
            world.disks[master].thaw();
            world.history.record(Event::Fault(format!("n{master}'s disk thawed")));
        }
        Fault::CrashPoint => {
            let i = rng.random_range(0..n);
            let point =
                qu_store::CRASH_POINTS[pick.unwrap_or_else(|| rng.random_range(0..qu_store::CRASH_POINTS.len()))];
            world.kill(i);
            world.restart_with(i, &[("FAILPOINTS", &format!("{point}=return"))]);
            world.history.record(Event::Fault(format!("n{i} runs with crash point {point}")));
            // Commits come every second (the workload): the point is reached.
            let deadline = Instant::now() + Duration::from_secs(20);
            while world.nodes[i].is_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // `settle` waits for a dying process to be reaped.
            if !world.settle(i, &format!("crash point {point}")) {
                // Not reached (a point on a rare path): a plain restart.
                world.history.record(Event::Fault(format!("crash point {point} not reached in 20s")));
                world.kill(i);
                world.restart(i);
            }
        }
        Fault::CorruptFile => {
            let i = rng.random_range(0..n);
            corrupt(world, i, pick.unwrap_or_else(|| rng.random_range(0..DAMAGES)));
        }
    }
}

/// The kinds of damage [`corrupt`] does.
const DAMAGES: usize = 6;
/// What [`corrupt`] expects of a node whose cluster.yaml does not parse:
/// it runs on its own last copy, and says so.
const ON_COPY: &str = "(runs on its copy)";

/// Stops node `i`, damages one of its files, and starts it: it must start
/// on damage a crash can leave; run on its own copy, saying so, when
/// cluster.yaml does not parse (a hand edit's typo); and refuse, naming
/// the file, a damaged state.yaml (guessing could vote twice), which is
/// then restored from the copy taken before (the operator's backup).
fn corrupt(world: &mut World, i: usize, damage: usize) {
    world.kill(i);
    let dir = world.nodes[i].dir.clone();
    let cluster = dir.join("cluster.yaml");
    let state = dir.join("state.yaml");
    let log = dir.join("store").join("log");
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    // (what, the file, its backup, the refusal's text or None to start)
    let (what, path, backup, refusal): (&str, std::path::PathBuf, Vec<u8>, Option<&str>) = match damage {
        0 => {
            let backup = read(&log);
            let mut torn = backup.clone();
            torn.extend_from_slice(b"3f2a9c {\"partial\": ");
            std::fs::write(&log, torn).unwrap();
            ("a torn record at the end of store/log", log, backup, None)
        }
        1 => {
            let temp = dir.join(".cluster.yaml.tmp-999999-0");
            std::fs::write(&temp, b"version: 4\nchecks: [").unwrap();
            ("a temp file left by an interrupted write", temp, Vec::new(), None)
        }
        2 => {
            let backup = read(&cluster);
            let text = String::from_utf8_lossy(&backup).to_string();
            std::fs::write(&cluster, qu_tests::set_version(&text, 0)).unwrap();
            world.history.record(Event::Reset { node: i });
            ("cluster.yaml restored with version: 0", cluster, backup, None)
        }
        3 => {
            let backup = read(&cluster);
            // Cut inside a line, so what is left never reads as a shorter file.
            let mut at = backup.len() / 2;
            while at > 1 && (backup[at - 1] == b'\n' || backup[at] == b'\n') {
                at -= 1;
            }
            std::fs::write(&cluster, &backup[..at]).unwrap();
            ("cluster.yaml cut in the middle of a line", cluster, backup, Some(ON_COPY))
        }
        4 => {
            let backup = read(&cluster);
            let mut edited = backup.clone();
            edited.extend_from_slice(b"colour: blue\n");
            std::fs::write(&cluster, edited).unwrap();
            ("an unknown field in cluster.yaml", cluster, backup, Some(ON_COPY))
        }
        _ => {
            let backup = read(&state);
            std::fs::write(&state, vec![0u8; backup.len().max(16)]).unwrap();
            ("state.yaml zeroed", state, backup, Some("state.yaml"))
        }
    };
    world.history.record(Event::Fault(format!("n{i}: {what}")));
    if refusal == Some(ON_COPY) {
        // It runs on its own copy and says why; the file stays until a
        // newer version sets it aside (the workload commits every second).
        world.restart(i);
        if !world.nodes[i].log_text().contains("cluster.yaml does not parse or validate") {
            world.history.record(Event::Violation(format!("n{i} started on {what} without saying so")));
        }
        return;
    }
    let Some(refusal) = refusal else {
        world.restart(i);
        if path.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp-")) && path.exists() {
            world.history.record(Event::Violation(format!("n{i} started but left {}", path.display())));
        }
        return;
    };
    world.nodes[i].spawn_serve();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = world.nodes[i].exited() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let last = world.log_tail(i, 1);
    match status {
        Some(status) if !status.success() && last.starts_with("error: ") && last.contains(refusal) => {
            world.history.record(Event::Fault(format!("n{i} refused to start: {last}")));
        }
        Some(status) => world.history.record(Event::Violation(format!(
            "n{i} with {what} exited ({status}) without an `error:` line naming `{refusal}`: {last}"
        ))),
        None => {
            world.history.record(Event::Violation(format!("n{i} started on {what}")));
            world.kill(i);
        }
    }
    std::fs::write(&path, backup).unwrap();
    world.history.record(Event::Fault(format!("n{i}'s file restored from its backup")));
    world.restart(i);
}

/// The named scenarios, each once, on `n` nodes; then the checker.
pub fn scenarios(n: usize) -> Result<String, String> {
    let mut world = World::start(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    for fault in ALL {
        for pick in 0..variants(fault) {
            // An incident under each fault: a target down before, back after.
            world.targets[0].set(false, &world.history);
            inject(&mut world, fault, Some(pick), &mut rng);
            world.targets[0].set(true, &world.history);
            if let Err(e) = world.converged(Duration::from_secs(30)) {
                return Err(report(&world, "scenarios", None, &[format!("after {fault:?} ({pick}): {e}")]));
            }
        }
    }
    finish(world, "scenarios", None, started)
}

/// Random faults from `seed` for `length`, on `n` nodes; then the checker.
pub fn random(n: usize, length: Duration, seed: u64) -> Result<String, String> {
    let mut world = World::start(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    while started.elapsed() < length {
        let fault = ALL[rng.random_range(0..ALL.len())];
        inject(&mut world, fault, None, &mut rng);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2_000)));
    }
    finish(world, "nemesis", Some(seed), started)
}

/// Heals everything, waits for convergence and for the deliveries to
/// settle, and runs the checker.
fn finish(mut world: World, scenario: &str, seed: Option<u64>, started: Instant) -> Result<String, String> {
    world.hub.heal();
    world.receiver.up.store(true, std::sync::atomic::Ordering::SeqCst);
    world.supervise();
    for i in 0..world.nodes.len() {
        if !world.nodes[i].is_alive() {
            world.restart(i);
        }
    }
    if let Err(e) = world.converged(Duration::from_secs(30)) {
        return Err(report(&world, scenario, seed, &[format!("after the faults stopped: {e}")]));
    }
    world.quiesce();
    // Deliveries settle: no pending record left on the converged cluster.
    let deadline = Instant::now() + Duration::from_secs(90);
    let copies = loop {
        world.nodes[0].wait_files_written();
        let copies: Vec<_> = world.nodes.iter().map(|n| n.copy()).collect();
        let pending = copies[0].deliveries.values().any(|d| d.status == qu_core::config::DeliveryStatus::Pending);
        let same = copies.iter().all(|c| c.version == copies[0].version);
        if (!pending && same) || Instant::now() > deadline {
            break copies;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    match history::check(&world.history, &copies, &world.receiver.requests(), bounds()) {
        Ok(figures) => {
            if std::env::var_os("QU_L3_TIMELINE").is_some() {
                eprint!("timeline:\n{}", world.history.timeline());
            }
            Ok(format!("{scenario} on {} nodes, {:.0}s: {figures}", world.nodes.len(), started.elapsed().as_secs_f64()))
        }
        Err(violations) => Err(report(&world, scenario, seed, &violations)),
    }
}

/// What a failure prints: the seed, the scenario, the violations, the
/// timeline, and where every node's directory and log were kept.
fn report(world: &World, scenario: &str, seed: Option<u64>, violations: &[String]) -> String {
    world.keep();
    let kept = world.root.clone();
    format!(
        "FAILED: {scenario}{} on {} nodes\n{}\ntimeline:\n{}nodes' directories and logs: {}",
        seed.map(|s| format!(" (seed {s})")).unwrap_or_default(),
        world.nodes.len(),
        violations.iter().map(|v| format!("  violation: {v}")).collect::<Vec<_>>().join("\n"),
        world.history.timeline(),
        kept.display()
    )
}
