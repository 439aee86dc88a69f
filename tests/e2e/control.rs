//! The control socket: modes, stale sockets, other uids.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use qu_tests::{Node, free_port, mode, qu_bin};

#[test]
fn socket_is_0600_in_a_0700_directory() {
    let mut node = Node::new("modes");
    node.init(free_port(), &[]);
    node.serve();
    assert_eq!(mode(&node.socket), 0o600);
    assert_eq!(mode(node.socket.parent().unwrap()), 0o700);
    assert!(node.terminate().success());
}

#[test]
fn a_stale_socket_of_ours_is_replaced_and_a_live_one_is_refused() {
    let mut node = Node::new("stale");
    node.init(free_port(), &[]);
    std::fs::create_dir_all(node.socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on: what a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&node.socket).unwrap());
    assert!(node.socket.exists());
    node.serve();
    assert!(node.log_text().contains("replaced a stale control socket"), "{}", node.log_text());

    // A second daemon on the same socket (another data dir) must not steal it.
    let mut second = Node::new("second");
    second.init(free_port(), &[]);
    second.socket = node.socket.clone();
    let log = second.refused_start();
    assert!(log.contains("already serving"), "{log}");
    node.qu_ok(&["status"]);
    assert!(node.terminate().success());
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let mut node = Node::new("notsocket");
    node.init(free_port(), &[]);
    std::fs::create_dir_all(node.socket.parent().unwrap()).unwrap();
    std::fs::write(&node.socket, "precious").unwrap();
    let log = node.refused_start();
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read_to_string(&node.socket).unwrap(), "precious");
}

/// Runs `qu status` as uid/gid 65534 with this node's socket.
fn status_as_nobody(bin: &Path, node: &Node) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin)
        .arg("status")
        .env_clear()
        .env("QUPTIME_SOCKET", &node.socket)
        .env("QUPTIME_DIR", "/nonexistent")
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn requests_from_another_uid_are_refused_even_through_loose_modes() {
    assert!(rustix::process::geteuid().is_root(), "this test switches to uid 65534 and needs root (CI runs as root)");
    let mut node = Node::new("uids");
    node.init(free_port(), &[]);
    node.serve();

    // The binary must sit where uid 65534 can run it.
    let shelf = tempfile::Builder::new().prefix("qu-bin-").tempdir().unwrap();
    std::fs::set_permissions(shelf.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = shelf.path().join("qu");
    std::fs::copy(qu_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    // With the modes qu sets, the socket cannot even be reached.
    let out = status_as_nobody(&bin, &node);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no qu daemon answers") && err.contains("ermission denied"), "{err}");

    // An operator loosens every mode by mistake: the uid check still refuses.
    let mut dir = node.socket.parent().unwrap().to_path_buf();
    loop {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if dir.file_name().unwrap().to_string_lossy().starts_with("qu-e2e-") {
            break;
        }
        dir = dir.parent().unwrap().to_path_buf();
    }
    std::fs::set_permissions(&node.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as_nobody(&bin, &node);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    assert!(node.log_text().contains("refused a control request from another user"));

    // Root is still answered.
    node.qu_ok(&["status"]);
    assert!(node.terminate().success());
}
