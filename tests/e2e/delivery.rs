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
        let text = std::fs::read_to_string(cluster.nodes[master].file("cluster.yaml")).ok()?;
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
