//! An operator's hands on a running cluster, each reproduced from a report
//! of it going wrong: stale write-backs, versions bumped by hand, edits
//! made while the daemon was stopped, version-0 restores, and changes whose
//! outcome is unknown.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use qu_tests::{Cluster, FreezableDisk, Node, alerting_cluster, eventually, set_version};

fn version_of(node: &Node) -> u64 {
    node.status_json()["config_version"].as_u64().unwrap()
}

fn version_in(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("version:")).unwrap().trim().parse().unwrap()
}

fn set_aside(dir: &Path) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cluster.yaml.unreplicated-"))
        .map(|e| (e.file_name().to_string_lossy().to_string(), std::fs::read_to_string(e.path()).unwrap()))
        .collect();
    found.sort();
    found
}

fn check_names(node: &Node) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap();
    let mut names: Vec<String> =
        list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

fn followers(cluster: &Cluster, master: usize) -> Vec<usize> {
    (0..cluster.nodes.len()).filter(|i| *i != master).collect()
}

/// `sudoedit` saves the copy it took when the file was opened. Meanwhile a
/// check was added and another went DOWN (and paged). The write-back is
/// based on an older version: it is set aside, and nothing is rolled back
/// — no check deleted, no DOWN reverted, no second page.
#[test]
fn a_stale_write_back_is_set_aside_and_rolls_back_no_check_and_no_state() {
    let (cluster, receiver, target) = alerting_cluster();
    let master = cluster.wait_converged();
    let follower = followers(&cluster, master)[0];
    cluster.nodes[follower].wait_files_written();
    let path = cluster.nodes[follower].file("cluster.yaml");
    let opened = std::fs::read_to_string(&path).unwrap();
    let target_addr = target.url.trim_start_matches("http://").trim_end_matches("/health").to_string();
    cluster.nodes[master].qu_ok(&["check", "add", "tcp", "later", &target_addr]);
    target.up.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN page", || (receiver.count("DOWN").0 >= 1).then_some(()));
    for node in &cluster.nodes {
        node.wait_status("web is down everywhere", |s| {
            s["checks"].as_array().unwrap().iter().any(|c| c["name"] == "web" && c["state"] == "down")
        });
    }
    let current = version_of(&cluster.nodes[follower]);
    assert!(version_in(&opened) < current);

    let saved = opened.replace("hysteresis: 2", "hysteresis: 7");
    std::fs::write(&path, &saved).unwrap();
    let aside = eventually(Duration::from_secs(15), "the stale edit is set aside", || {
        set_aside(&cluster.nodes[follower].dir).into_iter().next()
    });
    assert_eq!(aside.0, format!("cluster.yaml.unreplicated-{}", version_in(&opened)));
    assert_eq!(aside.1, saved, "saved verbatim");
    let log = cluster.nodes[follower].log_text();
    assert!(log.contains("manual-edit: cluster.yaml was saved on version"), "{log}");
    eventually(Duration::from_secs(10), "cluster.yaml holds the cluster's copy again", || {
        (std::fs::read_to_string(&path).unwrap() != saved).then_some(())
    });

    std::thread::sleep(Duration::from_secs(5));
    for node in &cluster.nodes {
        assert_eq!(check_names(node), ["later", "web"], "{}: a check was rolled back", node.name);
        assert_eq!(node.setting("hysteresis"), "2", "{}", node.name);
        let status = node.status_json();
        let web = status["checks"].as_array().unwrap().iter().find(|c| c["name"] == "web").unwrap().clone();
        assert_eq!(web["state"], "down", "{}: the committed DOWN was rolled back", node.name);
    }
    assert_eq!(receiver.count("DOWN").0, 1, "one page for one incident: {:?}", receiver.requests());
}

/// Runtime state lives apart from cluster.yaml: an outage commits its DOWN
/// (in the daemons' own store) without rewriting any node's cluster.yaml,
/// so an edit opened before the outage and saved after it is based on the
/// file as it still is, and applies; the committed DOWN and its page stay.
#[test]
fn an_outage_leaves_cluster_yaml_alone_and_an_edit_opened_before_it_applies_after_it() {
    use std::os::unix::fs::MetadataExt;
    let (cluster, receiver, target) = alerting_cluster();
    let master = cluster.wait_converged();
    let follower = followers(&cluster, master)[0];
    let stamp = |node: &Node| {
        let path = node.file("cluster.yaml");
        let meta = std::fs::metadata(&path).unwrap();
        (std::fs::read_to_string(&path).unwrap(), meta.ino(), meta.mtime(), meta.mtime_nsec())
    };
    cluster.nodes.iter().for_each(|n| n.wait_files_written());
    let before: Vec<_> = cluster.nodes.iter().map(stamp).collect();
    let opened = before[follower].0.clone();
    let web = cluster.nodes[master].copy().check("web").unwrap().id.clone();

    target.up.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN page", || (receiver.count("DOWN").0 >= 1).then_some(()));
    let mut down = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        node.wait_status("web is down everywhere", |s| {
            s["checks"].as_array().unwrap().iter().any(|c| c["name"] == "web" && c["state"] == "down")
        });
        node.wait_files_written();
        assert_eq!(stamp(node), before[i], "{}: the outage rewrote cluster.yaml", node.name);
        let copy = node.copy();
        assert_eq!(copy.states[&web].state.to_string(), "down", "{}: the store holds the DOWN", node.name);
        assert!(copy.version > version_in(&before[i].0), "{}: runtime state committed", node.name);
        down.push(copy.states[&web].transition.clone());
    }
    assert!(down.windows(2).all(|w| w[0] == w[1]), "one transition: {down:?}");

    let path = cluster.nodes[follower].file("cluster.yaml");
    std::fs::write(&path, opened.replace("hysteresis: 2", "hysteresis: 7")).unwrap();
    for node in &cluster.nodes {
        eventually(Duration::from_secs(15), "the edit applies everywhere", || {
            (node.setting("hysteresis") == "7").then_some(())
        });
    }
    assert!(set_aside(&cluster.nodes[follower].dir).is_empty(), "the edit was fresh, yet set aside");
    std::thread::sleep(Duration::from_secs(3));
    for node in &cluster.nodes {
        node.wait_files_written();
        let copy = node.copy();
        assert_eq!(copy.states[&web].state.to_string(), "down", "{}: the edit rolled the DOWN back", node.name);
        assert_eq!(copy.states[&web].transition, down[0], "{}: a new transition", node.name);
        assert!(std::fs::read_to_string(node.file("cluster.yaml")).unwrap().contains("hysteresis: 7"));
    }
    assert_eq!(receiver.count("DOWN").0, 1, "one page for one incident: {:?}", receiver.requests());
}

/// A stopped follower's `version:` is raised by 50 and a setting changed.
/// It is an edit proposal, not the truth: the other follower does not take
/// it, a change the master acknowledges afterwards survives the master's
/// `kill -9`, and the edit itself goes through the master.
#[test]
fn a_version_bumped_on_a_stopped_follower_is_a_proposal_and_no_acknowledged_change_is_lost() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    let [edited, other] = followers(&cluster, master)[..] else { unreachable!() };
    assert!(cluster.nodes[edited].terminate().success());
    let path = cluster.nodes[edited].file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let before = version_in(&text);
    let bumped = set_version(&text, before + 50).replace("announce_first_up: true", "announce_first_up: false");
    assert_ne!(bumped, set_version(&text, before + 50), "the setting is in the file");
    std::fs::write(&path, bumped).unwrap();
    cluster.nodes[edited].serve();
    eventually(Duration::from_secs(15), "the edit goes through the master", || {
        (cluster.nodes[master].setting("announce_first_up") == "false").then_some(())
    });
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "hysteresis", "5"]);
    let acknowledged = version_of(&cluster.nodes[master]);
    assert!(acknowledged < before + 50, "the bumped version became the cluster's: {acknowledged}");
    cluster.nodes[master].kill();
    let next = cluster.wait_master(&[edited, other]);
    for i in [edited, other] {
        eventually(Duration::from_secs(15), "the acknowledged change everywhere", || {
            (cluster.nodes[i].setting("hysteresis") == "5").then_some(())
        });
        assert_eq!(cluster.nodes[i].setting("announce_first_up"), "false");
        assert!(version_of(&cluster.nodes[i]) < before + 50);
    }
    cluster.nodes[next].qu_ok(&["cluster", "settings", "set", "hysteresis", "6"]);
}

/// An edit made while the daemon was stopped is noticed at start: proposed
/// when it was made on the version the node holds, set aside (with a log
/// line) when the cluster moved on meanwhile — never silently overwritten.
#[test]
fn an_edit_made_while_the_daemon_was_stopped_is_proposed_or_set_aside() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    let follower = followers(&cluster, master)[0];
    let path = cluster.nodes[follower].file("cluster.yaml");

    assert!(cluster.nodes[follower].terminate().success());
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("hysteresis: 2", "hysteresis: 6")).unwrap();
    cluster.nodes[follower].serve();
    for node in &cluster.nodes {
        eventually(Duration::from_secs(15), "the edit replicates", || {
            (node.setting("hysteresis") == "6").then_some(())
        });
    }
    assert!(
        cluster.nodes[follower]
            .log_text()
            .contains("manual-edit: cluster.yaml was edited while the daemon was stopped")
    );

    assert!(cluster.nodes[follower].terminate().success());
    let text = std::fs::read_to_string(&path).unwrap();
    let edit = text.replace("hysteresis: 6", "hysteresis: 8");
    std::fs::write(&path, &edit).unwrap();
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "announce_first_up", "false"]);
    cluster.nodes[follower].serve();
    let aside = eventually(Duration::from_secs(15), "the overtaken edit is set aside", || {
        set_aside(&cluster.nodes[follower].dir).into_iter().next()
    });
    assert_eq!(aside.0, format!("cluster.yaml.unreplicated-{}", version_in(&text)));
    assert_eq!(aside.1, edit);
    cluster.wait_converged();
    for node in &cluster.nodes {
        assert_eq!(node.setting("hysteresis"), "6", "{}", node.name);
        assert_eq!(node.setting("announce_first_up"), "false", "{}", node.name);
    }
    cluster.assert_identical_configs(&[0, 1, 2]);
}

/// C stops; a change commits on A and B; B is restored from a backup with
/// `version: 0`; A stops; B and C start. B must not vote C in — C's copy
/// lacks the acknowledged change — until A (or a master) is back.
#[test]
fn a_node_restored_with_version_zero_votes_for_nobody_until_it_has_caught_up() {
    let mut cluster = Cluster::new(3, "2m");
    let a = cluster.wait_converged();
    let [b, c] = followers(&cluster, a)[..] else { unreachable!() };
    let backup = std::fs::read_to_string(cluster.nodes[b].file("cluster.yaml")).unwrap();
    assert!(cluster.nodes[c].terminate().success());
    cluster.nodes[a].qu_ok(&["cluster", "settings", "set", "hysteresis", "5"]);
    cluster.nodes[b].wait_status("B holds the change", |s| s["config_version"].as_u64() > Some(version_in(&backup)));
    assert!(cluster.nodes[b].terminate().success());
    std::fs::write(cluster.nodes[b].file("cluster.yaml"), set_version(&backup, 0)).unwrap();
    assert!(cluster.nodes[a].terminate().success());
    cluster.nodes[b].serve();
    cluster.nodes[c].serve();
    std::thread::sleep(Duration::from_secs(5));
    for i in [b, c] {
        let status = cluster.nodes[i].status_json();
        assert!(status["master"].is_null(), "n{i}: a master was elected without the acknowledged change: {status}");
    }
    cluster.nodes[a].serve();
    cluster.wait_converged();
    for node in &cluster.nodes {
        eventually(Duration::from_secs(15), "the acknowledged change everywhere", || {
            (node.setting("hysteresis") == "5").then_some(())
        });
    }
    cluster.assert_identical_configs(&[0, 1, 2]);
}

/// A follower whose disk is full takes a change, forwards it to the master,
/// and stops when it cannot persist the commit, before it answers: the CLI
/// cannot know the outcome and must exit 3, and the change is applied by
/// the others. (Found by the fault suite: the CLI said `error: ... closed
/// the connection without answering` and exited 1, a definite refusal, for
/// a change the cluster had committed.)
#[test]
fn a_node_that_stops_before_answering_a_change_leaves_its_outcome_unknown() {
    let mut disks = Vec::new();
    let mut cluster = Cluster::prepared(3, "200ms", "1s", "2m", |node| disks.push(FreezableDisk::under(node)));
    let disks = disks;
    let master = cluster.wait_converged();
    let follower = followers(&cluster, master)[0];
    disks[follower].fill();
    let out = cluster.nodes[follower].qu(&["check", "add", "tcp", "after-full", "127.0.0.1:9", "--interval", "60s"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    disks[follower].unfill();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    // Either the node dies before it answers (the CLI says so), or, as it
    // stops, it closes its link to the master and answers for the change it
    // forwarded: unknown both ways, never a refusal.
    let lost = stderr.contains("without answering") && stderr.contains("outcome is unknown");
    let forwarded = stderr.starts_with("error: propose to master: outcome unknown: ");
    assert!(lost || forwarded, "{stderr}");
    let stopped = cluster.nodes[follower].wait_exit(Duration::from_secs(20));
    assert!(!stopped.success(), "the follower stopped on its full disk");
    assert!(cluster.nodes[follower].log_text().contains("No space left on device"));
    eventually(Duration::from_secs(15), "the change applied on the master", || {
        let list = cluster.nodes[master].qu_ok(&["check", "list"]);
        list.contains("after-full").then_some(())
    });
}

/// Both followers' disks freeze, so a change reaches them but cannot be
/// acknowledged: the CLI says the outcome is unknown and exits 3 — and
/// rightly, since it applies once the disks thaw. A change refused while no
/// majority is up exits 1 and never applies.
#[test]
fn a_change_with_an_unknown_outcome_exits_3_and_a_definite_refusal_never_applies() {
    let mut disks = Vec::new();
    let mut cluster = Cluster::prepared(3, "200ms", "1s", "2m", |node| disks.push(FreezableDisk::under(node)));
    let disks = disks;
    let master = cluster.wait_converged();
    let others = followers(&cluster, master);
    for i in &others {
        disks[*i].freeze();
    }
    let out = cluster.nodes[master].qu(&["cluster", "settings", "set", "hysteresis", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.starts_with("error: outcome unknown: ") && stderr.contains("may still apply"), "{stderr}");
    for i in &others {
        disks[*i].thaw();
    }
    for node in &cluster.nodes {
        eventually(Duration::from_secs(20), "the unknown change applied", || {
            (node.setting("hysteresis") == "4").then_some(())
        });
    }
    cluster.wait_converged();

    for i in &others {
        assert!(cluster.nodes[*i].terminate().success());
    }
    cluster.nodes[master].wait_status("quorum is lost", |s| s["quorum"] == false);
    let out = cluster.nodes[master].qu(&["cluster", "settings", "set", "hysteresis", "9"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("outcome unknown"), "{stderr}");
    for i in &others {
        cluster.nodes[*i].serve();
    }
    cluster.wait_converged();
    std::thread::sleep(Duration::from_secs(2));
    for node in &cluster.nodes {
        assert_eq!(node.setting("hysteresis"), "4", "{}: a refused change applied", node.name);
    }
}

/// The master raises `dead_after` from 1 s to 10 s and, at that moment, its
/// packets to the followers start being dropped: it applies the raise, the
/// followers never see it. Its lease must end when the followers' promise
/// (1 s) does — not 10 s later — so once they elect a master of their own,
/// the old one never again claims to be master.
#[test]
fn raising_dead_after_on_a_master_cut_off_never_gives_two_masters_at_once() {
    let mut ips = (2..).map(|n| format!("127.0.0.{n}"));
    let cluster = Cluster::prepared(3, "200ms", "1s", "2m", |node| node.ip = ips.next().unwrap());
    let master = cluster.wait_converged();
    let rest = followers(&cluster, master);
    let others: Vec<&str> = rest.iter().map(|i| cluster.nodes[*i].ip.as_str()).collect();
    let old_id = cluster.nodes[master].node_id();
    let _cut = qu_tests::Firewall::drop_from_to(&cluster.nodes[master].ip, &others);
    let change = {
        let mut command = cluster.nodes[master].command();
        command.args(["cluster", "settings", "set", "dead_after", "10s"]);
        std::thread::spawn(move || command.output().unwrap())
    };
    let started = std::time::Instant::now();
    let mut new_master_seen: Option<Duration> = None;
    let mut claims_after: Vec<Duration> = Vec::new();
    while started.elapsed() < Duration::from_secs(12) {
        for i in &rest {
            if let Some(status) = cluster.nodes[*i].try_status()
                && let Some(m) = status["master"].as_str()
                && m != old_id
                && new_master_seen.is_none()
            {
                new_master_seen = Some(started.elapsed());
            }
        }
        let status = cluster.nodes[master].status_json();
        let at = started.elapsed();
        if status["master"].as_str() == Some(old_id.as_str())
            && new_master_seen.is_some_and(|seen| at > seen + Duration::from_millis(100))
        {
            claims_after.push(at);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = new_master_seen.expect("the followers elected a master");
    assert!(
        claims_after.is_empty(),
        "the old master still claimed the role at {claims_after:?}, after a new one at {seen:?}"
    );
    let out = change.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A follower is restored with `version: 0` from a backup taken before an
/// incident was announced (the backup says the check is up, with no
/// delivery). It takes the master's copy — the committed DOWN and its
/// delivered record — before it could act, so nothing is paged again, even
/// when it becomes master.
#[test]
fn a_version_zero_restore_after_an_announced_incident_pages_nothing_again() {
    let (mut cluster, receiver, target) = alerting_cluster();
    let master = cluster.wait_converged();
    let restored = followers(&cluster, master)[0];
    let backup = std::fs::read_to_string(cluster.nodes[restored].file("cluster.yaml")).unwrap();
    assert!(!backup.contains("state: down"));
    target.up.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN page", || (receiver.count("DOWN").0 >= 1).then_some(()));
    eventually(Duration::from_secs(30), "its delivery committed on the follower", || {
        let text = std::fs::read_to_string(cluster.nodes[restored].copy_path()).ok()?;
        (text.contains("state: down") && text.contains("status: delivered")).then_some(())
    });
    assert!(cluster.nodes[restored].terminate().success());
    std::fs::write(cluster.nodes[restored].file("cluster.yaml"), set_version(&backup, 0)).unwrap();
    cluster.nodes[restored].serve();
    let live = version_of(&cluster.nodes[master]);
    // As the guide says: wait until it has caught up (before that it votes
    // for no one, and losing the master would leave no majority).
    cluster.nodes[restored].wait_status("the restored node takes the live copy and catches up", |s| {
        s["config_version"].as_u64() >= Some(live) && s["restoring"] == false
    });
    // Make it the master: the others go, it and one more remain.
    let other = followers(&cluster, master).into_iter().find(|i| *i != restored).unwrap();
    cluster.nodes[master].kill();
    let next = cluster.wait_master(&[restored, other]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        receiver.count("DOWN").0,
        1,
        "paged again after the restore (master now n{next}): {:?}",
        receiver.requests()
    );
    cluster.nodes[restored].wait_files_written();
    let text = std::fs::read_to_string(cluster.nodes[restored].copy_path()).unwrap();
    assert!(text.contains("state: down"), "the restored node holds the committed DOWN");
}
