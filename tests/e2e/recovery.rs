//! The seed's recovery procedures, each end to end on real processes, done
//! the way `docs/operations.md` tells an operator to do them.

use std::time::Duration;

use qu_tests::{Cluster, Node, eventually, remove_peer, set_version};

fn version_of(node: &Node) -> u64 {
    node.status_json()["config_version"].as_u64().unwrap()
}

fn set(node: &Node, value: u32) {
    node.qu_ok(&["cluster", "settings", "set", "hysteresis", &value.to_string()]);
}

/// Retries a change until a master takes it (a restart may be electing).
fn set_eventually(node: &Node, value: u32) {
    eventually(Duration::from_secs(20), "a change is accepted", || {
        node.qu(&["cluster", "settings", "set", "hysteresis", &value.to_string()]).status.success().then_some(())
    });
}

#[test]
fn one_node_restored_from_a_backup_with_version_zero_takes_the_live_copy() {
    let mut cluster = Cluster::new(3, "2m");
    let backup = std::fs::read_to_string(cluster.nodes[2].file("cluster.yaml")).unwrap();
    let master = cluster.wait_converged();
    set(&cluster.nodes[master], 3);
    set(&cluster.nodes[master], 4);
    let target = if master == 2 { 1 } else { 2 };
    assert!(cluster.nodes[target].terminate().success());
    std::fs::write(cluster.nodes[target].file("cluster.yaml"), set_version(&backup, 0)).unwrap();
    cluster.nodes[target].serve();
    let live = version_of(&cluster.nodes[master]);
    cluster.nodes[target].wait_status("the restored node pulls the live version", |s| s["config_version"] == live);
    cluster.wait_converged();
    cluster.assert_identical_configs(&[0, 1, 2]);
    assert_eq!(cluster.nodes[target].setting("hysteresis"), "4");
}

#[test]
fn the_whole_cluster_restored_from_the_highest_version_backup_elects_and_continues() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    set(&cluster.nodes[master], 5);
    cluster.wait_converged();
    cluster.nodes.iter().for_each(|n| n.wait_files_written());
    let backups: Vec<String> =
        (0..3).map(|i| std::fs::read_to_string(cluster.nodes[i].file("cluster.yaml")).unwrap()).collect();
    let highest = backups.iter().max_by_key(|b| set_version_key(b)).unwrap().clone();
    // Every node is lost; each host is rebuilt from its own node.yaml and
    // keys/ backup, and the highest-version cluster.yaml goes on all of them.
    for i in 0..3 {
        cluster.nodes[i].kill();
        std::fs::remove_file(cluster.nodes[i].file("state.yaml")).unwrap();
        std::fs::remove_dir_all(cluster.nodes[i].file("store")).unwrap();
        std::fs::write(cluster.nodes[i].file("cluster.yaml"), &highest).unwrap();
    }
    for i in 0..3 {
        cluster.nodes[i].spawn_serve();
    }
    for i in 0..3 {
        cluster.nodes[i].wait_answering();
    }
    let master = cluster.wait_converged();
    assert_eq!(cluster.nodes[master].setting("hysteresis"), "5");
    set(&cluster.nodes[master], 6);
    cluster.wait_converged();
    cluster.assert_identical_configs(&[0, 1, 2]);
}

/// The whole-cluster restore with the daemons' store backed up too
/// (docs/operations.md): the runtime state comes back with it, so an
/// incident announced before the loss is not announced again.
#[test]
fn the_whole_cluster_restored_with_its_store_pages_no_announced_incident_again() {
    let (mut cluster, receiver, target) = qu_tests::alerting_cluster();
    target.up.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN page", || (receiver.count("DOWN").0 >= 1).then_some(()));
    eventually(Duration::from_secs(30), "its delivery is committed everywhere", || {
        cluster
            .nodes
            .iter()
            .all(|n| {
                n.wait_files_written();
                n.copy().deliveries.values().all(|d| d.status == qu_core::config::DeliveryStatus::Delivered)
            })
            .then_some(())
    });
    // The nightly backup of each host: cluster.yaml and store/.
    let backups: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| {
            (std::fs::read_to_string(n.file("cluster.yaml")).unwrap(), std::fs::read_to_string(n.copy_path()).unwrap())
        })
        .collect();
    let web = cluster.nodes[0].copy().check("web").unwrap().id.clone();
    let announced = cluster.nodes[0].copy().states[&web].transition.clone();
    // Pick the backup whose store is at the highest version; it goes on
    // every rebuilt host.
    let highest = backups.iter().max_by_key(|(_, copy)| set_version_key(copy)).unwrap().clone();
    for node in &mut cluster.nodes {
        node.kill();
        std::fs::remove_file(node.file("state.yaml")).unwrap();
        std::fs::remove_dir_all(node.file("store")).unwrap();
        std::fs::write(node.file("cluster.yaml"), &highest.0).unwrap();
        std::fs::create_dir_all(node.file("store")).unwrap();
        std::fs::write(node.copy_path(), &highest.1).unwrap();
    }
    for node in &mut cluster.nodes {
        node.spawn_serve();
    }
    for node in &mut cluster.nodes {
        node.wait_answering();
    }
    cluster.wait_converged();
    // Several rounds with the target still down: the incident stands, as
    // committed before the loss.
    std::thread::sleep(Duration::from_secs(5));
    for node in &cluster.nodes {
        node.wait_files_written();
        let state = node.copy().states[&web].clone();
        assert_eq!((state.state.to_string(), &state.transition), ("down".to_string(), &announced), "{}", node.name);
    }
    assert_eq!(receiver.count("DOWN"), (1, 1), "announced again: {:?}", receiver.requests());
    target.up.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(30), "one RECOVERED", || (receiver.count("RECOVERED").0 == 1).then_some(()));
}

fn set_version_key(yaml: &str) -> u64 {
    yaml.lines().find_map(|l| l.strip_prefix("version:")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_survivor_shrinks_the_cluster_after_losing_the_majority_for_good() {
    let mut cluster = Cluster::new(3, "2m");
    cluster.wait_converged();
    let (dead_a, dead_b) = (cluster.nodes[1].node_id(), cluster.nodes[2].node_id());
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let err = eventually(Duration::from_secs(10), "changes stop without a majority", || {
        let out = cluster.nodes[0].qu(&["cluster", "settings", "set", "hysteresis", "3"]);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).to_string())
    });
    assert!(err.contains("no quorum"), "{err}");
    // The operator: stop, delete the dead peers, bump the version, start.
    assert!(cluster.nodes[0].terminate().success());
    let path = cluster.nodes[0].file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let version = set_version_key(&text);
    let shrunk = set_version(&remove_peer(&remove_peer(&text, &dead_a), &dead_b), version + 10);
    std::fs::write(&path, shrunk).unwrap();
    cluster.nodes[0].serve();
    let status =
        cluster.nodes[0].wait_status("the survivor leads alone", |s| s["quorum"] == true && !s["master"].is_null());
    assert_eq!(status["quorum_size"], 1);
    set(&cluster.nodes[0], 3);
    assert!(version_of(&cluster.nodes[0]) > version + 10);
}

#[test]
fn a_dead_node_is_replaced_by_remove_init_with_the_secret_and_add() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    let dead = if master == 2 { 1 } else { 2 };
    let dead_id = cluster.nodes[dead].node_id();
    cluster.nodes[dead].kill();
    cluster.nodes[master].qu_ok(&["node", "remove", &dead_id]);
    let replacement = cluster.add_node();
    let master = cluster.wait_converged();
    let status = cluster.nodes[master].status_json();
    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    assert!(peers.iter().all(|p| p["node_id"] != dead_id.as_str()));
    assert!(peers.iter().any(|p| p["node_id"] == cluster.nodes[replacement].node_id().as_str()));
    let live: Vec<usize> = cluster.running();
    cluster.assert_identical_configs(&live);
}

#[test]
fn a_node_offline_for_long_catches_up() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    let away = if master == 2 { 1 } else { 2 };
    assert!(cluster.nodes[away].terminate().success());
    for value in 3..=7 {
        set(&cluster.nodes[master], value);
    }
    let live = version_of(&cluster.nodes[master]);
    cluster.nodes[away].serve();
    cluster.nodes[away].wait_status("the returning node catches up", |s| s["config_version"] == live);
    assert_eq!(cluster.nodes[away].setting("hysteresis"), "7");
    cluster.assert_identical_configs(&[0, 1, 2]);
}

#[test]
fn a_rolling_restart_of_every_node_loses_no_change() {
    let mut cluster = Cluster::new(3, "2m");
    cluster.wait_converged();
    for (i, value) in [(0usize, 3u32), (1, 4), (2, 5)] {
        assert!(cluster.nodes[i].terminate().success());
        let other = (i + 1) % 3;
        set_eventually(&cluster.nodes[other], value);
        cluster.nodes[i].serve();
        cluster.wait_converged();
        for node in &cluster.nodes {
            assert_eq!(node.setting("hysteresis"), value.to_string(), "{} after restarting n{i}", node.name);
        }
    }
    cluster.assert_identical_configs(&[0, 1, 2]);
}

#[test]
fn a_full_disk_stops_the_node_without_losing_committed_state() {
    assert!(rustix::process::geteuid().is_root(), "this test mounts a tmpfs and needs root (CI runs as root)");
    let root = tempfile::tempdir().unwrap();
    let disk = qu_tests::Tmpfs::mount(&root.path().join("disk"), "1m");
    let mut node = Node::in_dir(&disk.0, "full");
    node.init(qu_tests::free_port(), &[]);
    node.serve();
    set(&node, 3);
    node.wait_files_written();
    let before = std::fs::read_to_string(node.file("cluster.yaml")).unwrap();
    // Fill the disk, then ask for a change the node cannot persist.
    let filler = disk.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1024"])
        .arg(format!("of={}", filler.display()))
        .output();
    let out = node.qu(&["cluster", "settings", "set", "hysteresis", "4"]);
    assert!(!out.status.success(), "a change that cannot be persisted is not acknowledged");
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = node.log_text();
    assert!(log.contains("stopping: cannot persist state") && log.contains("No space left on device"), "{log}");
    assert_eq!(
        std::fs::read_to_string(node.file("cluster.yaml")).unwrap(),
        before,
        "the last committed file is intact"
    );
    std::fs::remove_file(&filler).unwrap();
    node.serve();
    assert_eq!(node.setting("hysteresis"), "3");
    set(&node, 4);
}

/// Every node is killed (`kill -9`) in the middle of a stream of changes.
/// A daemon persists each change in `store/log` at once and writes its
/// files only once changes pause (or half a second after the first), so at
/// the kill the files lack the last changes; every change acknowledged
/// before the kill is there after the restart, because each node replays
/// its log over its copy. Repeated until a node did replay (on a loaded
/// machine the stream can pause long enough for the files to be written),
/// with no acknowledged change lost in any round.
#[test]
fn acknowledged_changes_survive_kill_9_of_every_node_before_their_files_are_written() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut cluster = Cluster::new(3, "2m");
    let replays =
        |cluster: &Cluster| cluster.nodes.iter().map(|n| n.log_text().matches("log: replayed").count()).sum::<usize>();
    for round in 0..6 {
        let before = replays(&cluster);
        let master = cluster.wait_converged();
        let (dir, socket) = (cluster.nodes[master].dir.clone(), cluster.nodes[master].socket.clone());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // Several clients at once, so the master always has a change queued.
        let streams: Vec<_> = (0..4)
            .map(|stream| {
                let (dir, socket, stop) = (dir.clone(), socket.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut acked: Vec<(u64, u32)> = Vec::new();
                    for value in (2..=9).cycle().skip(stream) {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let out = std::process::Command::new(qu_tests::qu_bin())
                            .env("QUPTIME_DIR", &dir)
                            .env("QUPTIME_SOCKET", &socket)
                            .args(["cluster", "settings", "set", "hysteresis", &value.to_string()])
                            .output()
                            .unwrap();
                        let text = String::from_utf8_lossy(&out.stdout).to_string();
                        let version =
                            out.status.success().then(|| text.rsplit("config version ").next()?.trim().parse().ok());
                        if let Some(Some(version)) = version {
                            acked.push((version, value));
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        for node in &mut cluster.nodes {
            node.kill();
        }
        stop.store(true, Ordering::SeqCst);
        let acked: Vec<(u64, u32)> = streams.into_iter().flat_map(|s| s.join().unwrap()).collect();
        let (last, value) = *acked.iter().max().expect("changes were acknowledged before the kill");
        for node in &mut cluster.nodes {
            node.spawn_serve();
        }
        for node in &mut cluster.nodes {
            node.wait_answering();
        }
        let master = cluster.wait_converged();
        let version = version_of(&cluster.nodes[master]);
        assert!(
            version >= last,
            "round {round}: version {last} (hysteresis {value}) was acknowledged; the cluster restarted on {version}"
        );
        if version == last {
            assert_eq!(cluster.nodes[master].setting("hysteresis"), value.to_string(), "round {round}");
        }
        if replays(&cluster) > before {
            let master = cluster.wait_converged();
            set(&cluster.nodes[master], 2);
            cluster.wait_converged();
            cluster.assert_identical_configs(&[0, 1, 2]);
            return;
        }
    }
    panic!("in 6 rounds no node replayed its log: every kill came after the files were written");
}
