//! Faults: the named scenarios one after another, or a seeded random
//! sequence for a while. Each ends healed; then the run converges, the
//! deliveries settle, and the checker judges the whole history.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustix::process::Signal;

use crate::cluster::{DEAD_AFTER, World};
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
    /// A target goes down, or comes back.
    FlipTarget,
}

const ALL: [Fault; 10] = [
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
];

fn inject(world: &mut World, fault: Fault, rng: &mut rand::rngs::StdRng) {
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
            std::thread::sleep(Duration::from_millis(rng.random_range(2_000..5_000)));
            world.hub.heal();
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
            std::thread::sleep(DEAD_AFTER);
            world.restart(a);
            world.restart(b);
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
            let t = rng.random_range(0..world.targets.len());
            let up = rng.random_bool(0.5);
            world.targets[t].set(up, &world.history);
        }
    }
}

/// The named scenarios, each once, on `n` nodes; then the checker.
pub fn scenarios(n: usize) -> Result<String, String> {
    let mut world = World::start(n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let started = Instant::now();
    for fault in ALL {
        // An incident under each fault: a target down before, back after.
        world.targets[0].set(false, &world.history);
        inject(&mut world, fault, &mut rng);
        world.targets[0].set(true, &world.history);
        if let Err(e) = world.converged(Duration::from_secs(30)) {
            return Err(report(&world, "scenarios", None, &[format!("after {fault:?}: {e}")]));
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
        inject(&mut world, fault, &mut rng);
        std::thread::sleep(Duration::from_millis(rng.random_range(500..2_000)));
    }
    finish(world, "nemesis", Some(seed), started)
}

/// Heals everything, waits for convergence and for the deliveries to
/// settle, and runs the checker.
fn finish(mut world: World, scenario: &str, seed: Option<u64>, started: Instant) -> Result<String, String> {
    world.hub.heal();
    world.receiver.up.store(true, std::sync::atomic::Ordering::SeqCst);
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
    match history::check(&world.history, &copies, &world.receiver.requests()) {
        Ok(figures) => {
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
