//! Upgrading from qu 0.1: this binary's first start on a data directory the
//! first edition wrote (`tests/fixtures/datadir-0.1`, made by
//! `tests/fixtures/make-datadir-0.1.sh` with the 0.1 binary).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use qu_core::config::{ClusterConfig, DeliveryStatus};
use qu_tests::{Node, Receiver, eventually, free_port};

const DELIVERED_URL: &str = "http://127.0.0.1:39101/hook";
const WAITING_URL: &str = "http://127.0.0.1:39102/hook";

fn copy_fixture(to: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-0.1");
    std::fs::create_dir_all(to.join("keys")).unwrap();
    for name in ["node.yaml", "cluster.yaml", "state.yaml", "keys/private.pem", "keys/cert.pem"] {
        std::fs::copy(fixture.join(name), to.join(name)).unwrap();
        std::fs::set_permissions(to.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for dir in [to.to_path_buf(), to.join("keys")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// The fixture holds a check committed DOWN, one of its alerts delivered
/// and one pending. After the upgrade: the old files are kept, the checks,
/// alerts and states carry over, the pending alert is sent once (with its
/// old idempotency key), the delivered one is not sent again, and nothing
/// is detected or paged anew.
#[test]
fn a_data_directory_of_0_1_is_migrated_in_place_and_nothing_is_paged_again() {
    let root = tempfile::Builder::new().prefix("qu-e2e-").tempdir().unwrap();
    let mut node = Node::in_dir(root.path(), "upgraded");
    copy_fixture(&node.dir);
    let (delivered, waiting) = (Receiver::start(), Receiver::start());
    let path = node.file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(DELIVERED_URL) && text.contains(WAITING_URL), "the fixture's alerts");
    // The operator's part of the move to this machine: the alerts' receivers.
    let text = text.replace(DELIVERED_URL, &delivered.url).replace(WAITING_URL, &waiting.url);
    std::fs::write(&path, &text).unwrap();
    let before = ClusterConfig::parse(&text).unwrap();
    let gone = before.checks.iter().find(|c| c.name == "gone").expect("the fixture's check").id.clone();
    let state = before.states[&gone].clone();
    assert_eq!(state.state.to_string(), "down");
    let pending: Vec<_> =
        before.deliveries.iter().filter(|(_, d)| d.status == DeliveryStatus::Pending).map(|(k, _)| k.clone()).collect();
    assert_eq!(pending.len(), 1, "the fixture has one pending delivery: {:?}", before.deliveries);
    assert!(before.deliveries.values().any(|d| d.status == DeliveryStatus::Delivered));
    let old_state = std::fs::read_to_string(node.file("state.yaml")).unwrap();
    let port = free_port();
    node.env("QUPTIME_BIND_PORT", &port.to_string()).env("QUPTIME_ADVERTISE", &format!("127.0.0.1:{port}"));

    node.serve();
    let log = node.log_text();
    assert!(log.contains("upgrade: a data directory from qu 0.1"), "{log}");
    assert_eq!(std::fs::read_to_string(node.file("store/from-0.1/cluster.yaml")).unwrap(), text, "kept as it was");
    assert_eq!(std::fs::read_to_string(node.file("store/from-0.1/state.yaml")).unwrap(), old_state);
    assert!(node.qu_ok(&["version"]).contains("0.2."));

    let sent = eventually(Duration::from_secs(30), "the pending alert is sent", || {
        let got: Vec<_> = waiting.requests().into_iter().filter(|r| r.verb == "DOWN").collect();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(sent[0].key, pending[0], "with the idempotency key it had");
    eventually(Duration::from_secs(30), "its delivery is committed", || {
        let now = ClusterConfig::parse(&std::fs::read_to_string(node.copy_path()).ok()?).ok()?;
        (now.deliveries[&pending[0]].status == DeliveryStatus::Delivered).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(waiting.requests().len(), 1, "sent once: {:?}", waiting.requests());
    assert!(delivered.requests().is_empty(), "a delivered alert was sent again: {:?}", delivered.requests());
    node.wait_files_written();
    let after = node.copy();
    assert_eq!(after.checks, before.checks);
    assert_eq!(after.alerts, before.alerts);
    assert_eq!(after.states[&gone].transition, state.transition, "no new transition");
    assert_eq!(after.states[&gone].state, state.state);
    assert!(after.version > before.version, "the node committed in its new term");
    // The runtime state moved to the daemon's store: cluster.yaml keeps
    // what operators own, at the version it last changed.
    let file = ClusterConfig::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(file.states.is_empty() && file.deliveries.is_empty(), "runtime state left in cluster.yaml");
    assert!(file.same_content(&after));
    assert_eq!(file.version, after.content_stamp().version);
    assert!(file.version < after.version, "the sends' results changed runtime state only");
    // A restart is an ordinary one: no second copy, nothing lost.
    assert!(node.terminate().success());
    node.serve();
    let log = node.log_text();
    assert_eq!(log.matches("upgrade: a data directory from qu 0.1").count(), 1, "copied once: {log}");
    let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "gone");
}
