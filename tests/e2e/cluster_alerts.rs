//! Alerts about the cluster itself, on 3 real nodes through the real
//! webhook sink: a node without quorum pages by itself, once, and once
//! more when quorum is back (a restart in between changes neither); a
//! member dead is announced once by the master and again on its return;
//! the dead man's switch is called while the master may act and stops
//! when it may not. (What is decided is tested on tables in
//! `qu_core::alerting::cluster`; these show the daemon executes it.)

use std::time::{Duration, Instant};

use qu_tests::{Cluster, Receiver, eventually};

/// A cluster with an alert that hears only of cluster events (no checks).
fn watched_cluster() -> (Cluster, Receiver, usize) {
    let cluster = Cluster::new(3, "2m");
    let receiver = Receiver::start();
    let master = cluster.wait_converged();
    let out =
        cluster.nodes[master].qu_ok(&["alert", "add", "webhook", "ops", "--url", &receiver.url, "--cluster-events"]);
    assert!(out.contains("alert ops added"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
    assert_eq!(list[0]["cluster_events"], true, "{list}");
    (cluster, receiver, master)
}

fn wait_count(receiver: &Receiver, verb: &str, want: usize, within: Duration) {
    eventually(within, &format!("{want} {verb} accepted"), || (receiver.count(verb).0 >= want).then_some(()));
}

fn only(receiver: &Receiver, verb: &str) -> qu_tests::Received {
    let all: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == verb && r.accepted()).collect();
    assert_eq!(all.len(), 1, "exactly one {verb}: {all:#?}");
    all.into_iter().next().unwrap()
}

#[test]
fn a_node_without_quorum_pages_by_itself_once_and_once_more_when_quorum_is_back() {
    let (mut cluster, receiver, master) = watched_cluster();
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "no_quorum_after", "3s"]);
    cluster.wait_converged();
    let lone = (master + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != lone).collect();
    for i in &others {
        cluster.nodes[*i].terminate();
    }
    let lost = Instant::now();
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    let down = only(&receiver, "DOWN");
    assert!(down.at >= lost + Duration::from_secs(3), "not before no_quorum_after");
    let (id, advertise) = (cluster.nodes[lone].node_id(), cluster.nodes[lone].advertise());
    assert_eq!(down.json["check"]["type"], "qu-cluster", "{}", down.json);
    assert_eq!(down.json["check"]["name"], format!("quorum at node {advertise}"), "it names itself");
    assert!(down.key.starts_with(&format!("quorum.{id}.")), "{}", down.key);
    let detail = down.json["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("1 of 3 members reachable, 2 needed"), "{detail}");
    assert_eq!(down.json["master"], id, "sent by the node itself");

    // Restarted in the middle of the incident: its books keep it from
    // paging again.
    cluster.nodes[lone].terminate();
    cluster.nodes[lone].serve();
    assert!(cluster.nodes[lone].log_text().contains("resuming an incident without quorum"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(receiver.count("DOWN"), (1, 1), "one page per incident, across a restart");

    for i in &others {
        cluster.nodes[*i].serve();
    }
    wait_count(&receiver, "RECOVERED", 1, Duration::from_secs(30));
    cluster.wait_converged();
    std::thread::sleep(Duration::from_secs(2));
    let back = only(&receiver, "RECOVERED");
    assert_eq!(back.key, down.key.replace(".lost/", ".back/"), "the same incident");
    assert_eq!(receiver.count("DOWN"), (1, 1), "the nodes that came back did not page");
}

#[test]
fn a_dead_member_is_announced_once_by_the_master_and_again_when_it_is_back() {
    let (mut cluster, receiver, master) = watched_cluster();
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "member_dead_after", "3s"]);
    cluster.wait_converged();
    let victim = (master + 1) % 3;
    let (id, advertise) = (cluster.nodes[victim].node_id(), cluster.nodes[victim].advertise());
    cluster.nodes[victim].terminate();
    let stopped = Instant::now();
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    let down = only(&receiver, "DOWN");
    assert!(down.at >= stopped + Duration::from_secs(3), "not before member_dead_after");
    assert_eq!(down.json["check"]["type"], "qu-cluster", "{}", down.json);
    assert_eq!(down.json["check"]["id"], format!("node:{id}"));
    assert_eq!(down.json["check"]["name"], format!("node {advertise}"));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(receiver.count("DOWN"), (1, 1), "announced once");
    assert!(receiver.requests().iter().all(|r| !r.key.starts_with("quorum.")), "the two kept quorum");

    cluster.nodes[victim].serve();
    wait_count(&receiver, "RECOVERED", 1, Duration::from_secs(30));
    cluster.wait_converged();
    std::thread::sleep(Duration::from_secs(2));
    let back = only(&receiver, "RECOVERED");
    assert_eq!(back.json["check"]["id"], format!("node:{id}"));
    let master = cluster.wait_master(&cluster.running());
    eventually(Duration::from_secs(20), "both announcements committed delivered", || {
        let list: serde_json::Value =
            serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
        (list[0]["pending"] == 0 && list[0]["last"]["status"] == "delivered").then_some(())
    });
}

#[test]
fn the_dead_mans_switch_is_called_while_the_master_may_act_and_stops_when_it_may_not() {
    let mut cluster = Cluster::new(3, "2m");
    let pings = Receiver::start();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "deadman_interval", "1s"]);
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "deadman_url", &pings.url]);
    let shown = cluster.nodes[master].qu_ok(&["cluster", "settings"]);
    assert!(!shown.contains("/hook"), "the URL's path may hold a token and is masked:\n{shown}");
    let count = || pings.got.lock().unwrap().len();
    eventually(Duration::from_secs(15), "the first call", || (count() >= 1).then_some(()));
    let start = count();
    std::thread::sleep(Duration::from_secs(5));
    let in_five = count() - start;
    assert!((3..=7).contains(&in_five), "one call a second, not one a tick: {in_five} in 5 s");

    for i in (0..3).filter(|i| *i != master) {
        cluster.nodes[i].terminate();
    }
    // The lease (dead_after 500 ms) runs out; give a call in flight time.
    std::thread::sleep(Duration::from_secs(2));
    let after_loss = count();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(), after_loss, "no master may act: the outside service must notice");
}
