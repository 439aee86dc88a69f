//! Alert delivery under faults, on 3 real nodes through the real webhook
//! sink: nothing is sent for a transition before a majority committed it,
//! pages keep transition order through a sink outage, a wall-clock step on
//! the master neither loses nor repeats a page. (What the dispatcher
//! decides is tested on tables and under the simulator; these show the
//! daemon executes it.)

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qu_core::alerting::TransitionOrder;
use qu_tests::{Cluster, FreezableDisk, Receiver, WallClock, eventually};

fn state_everywhere(cluster: &Cluster, want: &str) {
    for node in &cluster.nodes {
        node.wait_status(&format!("the check is {want}"), |s| {
            s["checks"].as_array().is_some_and(|c| c.len() == 1 && c[0]["state"] == want)
        });
    }
}

fn first_alert(cluster: &Cluster) -> serde_json::Value {
    let master = cluster.wait_master(&cluster.running());
    let alerts: serde_json::Value =
        serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
    alerts[0].clone()
}

fn wait_all_delivered(cluster: &Cluster) {
    eventually(Duration::from_secs(60), "every delivery committed delivered", || {
        let alert = first_alert(cluster);
        (alert["pending"] == 0 && alert["last"]["status"] == "delivered").then_some(())
    });
}

fn wait_accepted(receiver: &Receiver, verb: &str, want: usize, within: Duration) {
    eventually(within, &format!("{want} {verb} accepted"), || (receiver.count(verb).0 >= want).then_some(()));
}

/// Both followers' disks freeze, so they take the transition's proposal
/// but cannot persist or acknowledge it: the master holds a transition it
/// applied but no majority committed, for several ticks of a valid lease.
/// Nothing may be sent then. Once the disks thaw, one page.
#[test]
fn a_transition_is_not_announced_before_a_majority_committed_it() {
    assert!(rustix::process::geteuid().is_root(), "this test mounts and freezes file systems (CI runs as root)");
    let mut disks = Vec::new();
    // A 2 s lease at 200 ms heartbeats: about ten ticks with the lease
    // after the followers stop answering.
    let cluster = Cluster::prepared(3, "200ms", "2s", "2m", |node| disks.push(FreezableDisk::under(node)));
    let disks = disks; // dropped (thawed) before the cluster's nodes are killed
    let (cluster, receiver, target) = qu_tests::alerting(cluster);
    state_everywhere(&cluster, "up");
    let master = cluster.wait_converged();
    let followers: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    for i in &followers {
        disks[*i].freeze();
    }
    target.up.store(false, Ordering::SeqCst);
    // The master decides DOWN from the followers' reports, applies it and
    // proposes it; the followers block on writing it.
    eventually(Duration::from_secs(20), "the master applied the DOWN", || {
        let text = std::fs::read_to_string(cluster.nodes[master].copy_path()).ok()?;
        text.contains("state: down").then_some(())
    });
    let applied = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let early: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == "DOWN").collect();
    assert!(early.is_empty(), "sent before a majority committed it: {early:?}");
    for i in &followers {
        disks[*i].thaw();
    }
    wait_accepted(&receiver, "DOWN", 1, Duration::from_secs(30));
    wait_all_delivered(&cluster);
    assert_eq!(receiver.count("DOWN"), (1, 1), "exactly one page once the quorum is back");
    let first = receiver.requests().into_iter().find(|r| r.verb == "DOWN").unwrap();
    assert!(first.at > applied + Duration::from_secs(4), "only after the thaw");
}

/// The sink refuses while the check flaps DOWN, UP, DOWN, UP: once it is
/// back, the four pages arrive in transition order, once each, and the last
/// one a person sees says RECOVERED.
#[test]
fn pages_of_a_flapping_check_arrive_in_transition_order_after_a_sink_outage() {
    let (cluster, receiver, target) = qu_tests::alerting_cluster();
    state_everywhere(&cluster, "up");
    receiver.up.store(false, Ordering::SeqCst);
    for (up, state) in [(false, "down"), (true, "up"), (false, "down"), (true, "up")] {
        target.up.store(up, Ordering::SeqCst);
        state_everywhere(&cluster, state);
    }
    receiver.up.store(true, Ordering::SeqCst);
    wait_accepted(&receiver, "RECOVERED", 2, Duration::from_secs(90));
    wait_all_delivered(&cluster);
    let accepted: Vec<_> = receiver.requests().into_iter().filter(|r| r.accepted() && r.verb != "UP").collect();
    let verbs: Vec<&str> = accepted.iter().map(|r| r.verb.as_str()).collect();
    assert_eq!(verbs, ["DOWN", "RECOVERED", "DOWN", "RECOVERED"], "{accepted:?}");
    let orders: Vec<TransitionOrder> =
        accepted.iter().map(|r| TransitionOrder::of(r.json["transition"]["id"].as_str().unwrap())).collect();
    assert!(orders.windows(2).all(|w| w[0] < w[1]), "in transition order: {accepted:?}");
    // While the sink refused, no later page was tried before an earlier one
    // was through: every refused attempt is for the first record.
    let refused: Vec<_> = receiver.requests().into_iter().filter(|r| r.status == Some(503)).collect();
    assert!(refused.iter().all(|r| r.key == accepted[0].key), "only the oldest page was retried: {refused:?}");
}

/// The master's wall clock jumps two hours ahead while its DOWN is pending
/// (the sink refusing): the delivery deadline (1 h) runs on the master's
/// monotonic clock, so the page is neither failed nor repeated.
#[test]
fn a_wall_clock_step_on_the_master_neither_fails_nor_repeats_a_pending_page() {
    let mut clocks = Vec::new();
    let cluster = Cluster::prepared(3, "100ms", "500ms", "2m", |node| clocks.push(WallClock::for_node(node)));
    let (cluster, receiver, target) = qu_tests::alerting(cluster);
    state_everywhere(&cluster, "up");
    let master = cluster.wait_converged();
    receiver.up.store(false, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(20), "a refused DOWN", || {
        receiver.requests().iter().any(|r| r.verb == "DOWN" && r.status == Some(503)).then_some(())
    });
    clocks[master].set("+2h");
    // A few retries under the stepped clock.
    eventually(Duration::from_secs(30), "two more refused attempts", || {
        (receiver.requests().iter().filter(|r| r.verb == "DOWN").count() >= 3).then_some(())
    });
    assert_eq!(cluster.wait_master(&[0, 1, 2]), master, "the step did not move the role");
    receiver.up.store(true, Ordering::SeqCst);
    wait_accepted(&receiver, "DOWN", 1, Duration::from_secs(60));
    wait_all_delivered(&cluster);
    assert_eq!(receiver.count("DOWN"), (1, 1), "delivered once");
    let alert = first_alert(&cluster);
    assert_eq!(alert["last"]["status"], "delivered", "{alert}");
}

/// The sink accepts, then the master's only other live member freezes for
/// under a second: "delivered" cannot commit and the master's lease runs
/// out. When the member wakes, whichever of the two wins the election
/// holds the master's proposal of "delivered" (the member reads it from
/// its socket on waking; if it had not, its older config could not win a
/// vote and the master would win with its memory of the send): no second
/// request either way.
#[test]
fn a_master_that_loses_its_lease_briefly_after_a_send_does_not_send_again() {
    use rustix::process::Signal;
    let (mut cluster, receiver, target) = qu_tests::alerting_cluster();
    state_everywhere(&cluster, "up");
    let master = cluster.wait_converged();
    let followers: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    let (member, gone) = (followers[0], followers[1]);
    cluster.nodes[gone].kill();
    assert_eq!(cluster.wait_master(&[master, member]), master);
    receiver.hold.store(true, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    let open = eventually(Duration::from_secs(20), "the DOWN held open", || {
        receiver.requests().into_iter().find(|r| r.verb == "DOWN" && r.status.is_none())
    });
    let term = cluster.nodes[master].status_json()["term"].as_u64().unwrap();
    cluster.nodes[member].signal(Signal::STOP);
    let stopped = Instant::now();
    receiver.hold.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(5), "the sink accepted", || {
        receiver.requests().iter().any(|r| r.key == open.key && r.accepted()).then_some(())
    });
    cluster.nodes[master].wait_status("the master lost its lease", |s| s["quorum"] == false);
    assert!(stopped.elapsed() < Duration::from_millis(900), "the lease ran out late: {:?}", stopped.elapsed());
    std::thread::sleep(Duration::from_millis(900).saturating_sub(stopped.elapsed()));
    cluster.nodes[member].signal(Signal::CONT);
    let winner = cluster.wait_master(&[master, member]);
    eprintln!("after the lease loss: {} is master", if winner == master { "the same node" } else { "the member" });
    let now = cluster.nodes[winner].status_json()["term"].as_u64().unwrap();
    assert!(now > term, "through an election (term {term} -> {now}): the lease was really lost");
    wait_all_delivered(&cluster);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.count("DOWN"), (1, 1), "the send was remembered, not repeated");
    assert_eq!(receiver.requests().iter().filter(|r| r.verb == "DOWN").count(), 1, "no attempt at all");
}

/// Five nodes under kill -9 of the master, SIGSTOP, wall-clock steps and a
/// sink outage while the check flaps, for 40 s. Once the faults stop: one
/// accepted page per committed transition record (the final config's
/// deliveries), nothing for a transition the cluster does not hold, in
/// transition order, and raw duplicates (same key) only as many as there
/// were crashes and freezes. `QU_FAULT_SEED=N` replays a schedule.
#[test]
fn five_nodes_under_faults_page_once_per_committed_transition_in_order() {
    use rand::{Rng, SeedableRng};
    use rustix::process::Signal;
    let seed = std::env::var("QU_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    eprintln!("fault schedule seed {seed} (replay: QU_FAULT_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut clocks = Vec::new();
    let cluster = Cluster::prepared(5, "100ms", "500ms", "2m", |node| clocks.push(WallClock::for_node(node)));
    let (mut cluster, receiver, target) = qu_tests::alerting(cluster);
    state_everywhere(&cluster, "up");

    // Down nodes (killed or stopped) and when they come back.
    let mut down: Vec<(usize, Instant, bool)> = Vec::new();
    let (mut interruptions, mut sink_back, mut next_flip) = (0usize, None::<Instant>, Instant::now());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        let now = Instant::now();
        for (node, until, killed) in down.clone() {
            if now >= until {
                if killed {
                    cluster.nodes[node].spawn_serve();
                } else {
                    cluster.nodes[node].signal(Signal::CONT);
                }
                down.retain(|(n, _, _)| *n != node);
            }
        }
        if sink_back.is_some_and(|at| now >= at) {
            receiver.up.store(true, Ordering::SeqCst);
            sink_back = None;
        }
        if now >= next_flip {
            target.up.store(!target.up.load(Ordering::SeqCst), Ordering::SeqCst);
            next_flip = now + Duration::from_millis(rng.random_range(2_500..5_000));
        }
        let up: Vec<usize> = (0..5).filter(|i| !down.iter().any(|(n, _, _)| n == i)).collect();
        match rng.random_range(0..4) {
            // The master (as the up nodes see it), killed.
            0 if down.len() < 2 => {
                let master = up.iter().find_map(|i| {
                    let s = cluster.nodes[*i].try_status()?;
                    (s["master"] == s["node_id"]).then_some(*i)
                });
                if let Some(master) = master {
                    eprintln!("fault: kill -9 n{master}");
                    cluster.nodes[master].kill();
                    down.push((master, now + Duration::from_millis(rng.random_range(1_000..4_000)), true));
                    interruptions += 1;
                }
            }
            1 if down.len() < 2 => {
                let node = up[rng.random_range(0..up.len())];
                eprintln!("fault: SIGSTOP n{node}");
                cluster.nodes[node].signal(Signal::STOP);
                down.push((node, now + Duration::from_millis(rng.random_range(300..3_000)), false));
                interruptions += 1;
            }
            2 => {
                let node = rng.random_range(0..5);
                let step = ["+30", "+900", "+2h", "-5m", "+0"][rng.random_range(0..5)];
                eprintln!("fault: n{node} wall clock {step}");
                clocks[node].set(step);
            }
            _ if sink_back.is_none() => {
                eprintln!("fault: the sink answers 503");
                receiver.up.store(false, Ordering::SeqCst);
                sink_back = Some(now + Duration::from_millis(rng.random_range(1_000..6_000)));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2_000)));
    }
    // Faults stop: everyone back, clocks true, the sink up, the target up.
    for (node, _, killed) in down.drain(..) {
        if killed {
            cluster.nodes[node].spawn_serve();
        } else {
            cluster.nodes[node].signal(Signal::CONT);
        }
    }
    for clock in &clocks {
        clock.set("+0");
    }
    receiver.up.store(true, Ordering::SeqCst);
    target.up.store(true, Ordering::SeqCst);
    for node in &mut cluster.nodes {
        node.wait_answering();
    }
    cluster.wait_converged();
    state_everywhere(&cluster, "up");
    wait_all_delivered(&cluster);

    let master = cluster.wait_converged();
    cluster.nodes[master].wait_files_written();
    let config = cluster.nodes[master].copy();
    let committed: std::collections::BTreeSet<String> = config.deliveries.keys().cloned().collect();
    let statuses: Vec<_> = config.deliveries.values().map(|d| d.status).collect();
    assert!(
        statuses.iter().all(|s| *s == qu_core::config::DeliveryStatus::Delivered),
        "every committed record delivered: {:?}",
        config.deliveries
    );
    let accepted: Vec<qu_tests::Received> = receiver.requests().into_iter().filter(|r| r.accepted()).collect();
    let mut first_seen: Vec<String> = Vec::new();
    for r in &accepted {
        if !first_seen.contains(&r.key) {
            first_seen.push(r.key.clone());
        }
    }
    let distinct: std::collections::BTreeSet<String> = first_seen.iter().cloned().collect();
    assert_eq!(distinct, committed, "one page per committed transition, none for an uncommitted one");
    let orders: Vec<TransitionOrder> =
        first_seen.iter().map(|k| TransitionOrder::of(k.split_once('/').unwrap().0)).collect();
    assert!(orders.windows(2).all(|w| w[0] < w[1]), "pages in transition order: {first_seen:?}");
    let duplicates = accepted.len() - distinct.len();
    eprintln!("{} transitions paged, {duplicates} raw duplicates, {interruptions} kills and freezes", distinct.len());
    assert!(duplicates <= interruptions, "{duplicates} duplicates for {interruptions} kills and freezes");
}
