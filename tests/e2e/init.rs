//! `qu init`: files, modes, secrets, refusals.

use qu_core::config::{ClusterConfig, NodeConfig};
use qu_tests::{Node, Tmpfs, mode};

#[test]
fn init_writes_identity_and_a_one_member_cluster_with_private_modes() {
    let node = Node::new("alpha");
    let out = node.init(9901, &[]);
    let node_yaml = NodeConfig::parse(&std::fs::read_to_string(node.file("node.yaml")).unwrap()).unwrap();
    assert_eq!(node_yaml.advertise, "127.0.0.1:9901");
    assert_eq!(node_yaml.port, 9901, "port defaults to the advertised port");
    assert_eq!(node_yaml.bind.to_string(), "127.0.0.1");
    assert_eq!(node_yaml.cluster_secret.len(), 64, "a 256-bit secret as hex");
    assert!(out.contains(&node_yaml.cluster_secret), "the generated secret is printed once:\n{out}");
    assert!(out.contains("--secret"), "with a sentence on how to use it:\n{out}");

    let cluster = ClusterConfig::parse(&std::fs::read_to_string(node.file("cluster.yaml")).unwrap()).unwrap();
    assert_eq!(cluster.version, 1);
    assert_eq!(cluster.peers.len(), 1);
    let me = &cluster.peers[0];
    assert_eq!(me.node_id, node_yaml.node_id);
    assert_eq!(me.advertise, "127.0.0.1:9901");
    let cert = std::fs::read_to_string(node.file("keys/cert.pem")).unwrap();
    assert_eq!(me.cert_pem, cert);
    assert_eq!(qu_transport::identity::fingerprint_of_cert_pem(&cert).unwrap(), me.fingerprint);
    assert_eq!(qu_transport::identity::common_name_of_cert_pem(&cert).unwrap(), node_yaml.node_id.to_string());
    assert!(out.contains(me.fingerprint.as_str()));
    assert!(cluster.checks.is_empty() && cluster.alerts.is_empty() && cluster.plugins.is_empty());

    assert_eq!(mode(&node.dir), 0o700);
    assert_eq!(mode(&node.file("keys")), 0o700);
    assert_eq!(mode(&node.file("store")), 0o700);
    assert_eq!(mode(&node.file("node.yaml")), 0o600);
    assert_eq!(mode(&node.file("cluster.yaml")), 0o600);
    assert_eq!(mode(&node.file("keys/private.pem")), 0o600);
}

#[test]
fn a_given_secret_is_stored_and_not_printed() {
    let node = Node::new("beta");
    let secret = "correct-horse-battery-staple";
    let out = node.init(9902, &["--secret", secret, "--port", "19902"]);
    assert!(!out.contains(secret), "a secret the operator typed is not echoed:\n{out}");
    let node_yaml = NodeConfig::parse(&std::fs::read_to_string(node.file("node.yaml")).unwrap()).unwrap();
    assert_eq!(node_yaml.cluster_secret, secret);
    assert_eq!(node_yaml.port, 19902, "--port wins over the advertised port");
}

#[test]
fn json_output_carries_the_identity() {
    let node = Node::new("gamma");
    let out = node.init(9903, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(json["node_id"].as_str().unwrap().len() == 36);
    assert!(json["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(json["cluster_secret"].as_str().unwrap().len(), 64);
}

#[test]
fn environment_supplies_flags() {
    let mut node = Node::new("env");
    node.env("QUPTIME_ADVERTISE", "127.0.0.1:9911").env("QUPTIME_CLUSTER_SECRET", "from-the-environment-1");
    node.qu_ok(&["init"]);
    let node_yaml = NodeConfig::parse(&std::fs::read_to_string(node.file("node.yaml")).unwrap()).unwrap();
    assert_eq!(node_yaml.advertise, "127.0.0.1:9911");
    assert_eq!(node_yaml.cluster_secret, "from-the-environment-1");
}

#[test]
fn a_second_init_is_refused_and_changes_nothing() {
    let node = Node::new("twice");
    node.init(9904, &[]);
    let before: Vec<_> = ["node.yaml", "cluster.yaml", "keys/private.pem", "keys/cert.pem"]
        .iter()
        .map(|f| std::fs::read(node.file(f)).unwrap())
        .collect();
    let err = node.qu_err(&["init", "--advertise", "127.0.0.1:9905"]);
    assert!(err.contains("already exists") && err.contains("never overwrites"), "{err}");
    let after: Vec<_> = ["node.yaml", "cluster.yaml", "keys/private.pem", "keys/cert.pem"]
        .iter()
        .map(|f| std::fs::read(node.file(f)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn leftover_keys_without_node_yaml_are_not_overwritten() {
    let node = Node::new("leftover");
    node.init(9906, &[]);
    std::fs::remove_file(node.file("node.yaml")).unwrap();
    let key = std::fs::read(node.file("keys/private.pem")).unwrap();
    let err = node.qu_err(&["init", "--advertise", "127.0.0.1:9906"]);
    assert!(err.contains("private.pem exists but node.yaml does not"), "{err}");
    assert_eq!(std::fs::read(node.file("keys/private.pem")).unwrap(), key);
}

#[test]
fn bad_flags_get_clear_errors_and_write_nothing() {
    let node = Node::new("bad");
    for (args, needle) in [
        (vec!["init", "--advertise", "nohost"], "expected HOST:PORT"),
        (vec!["init", "--advertise", "a:0"], "port 0"),
        (vec!["init", "--advertise", "a:1", "--secret", "short"], "too short"),
    ] {
        let err = node.qu_err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!node.file("node.yaml").exists());
    }
    let out = node.qu(&["init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"), "clap names the missing flag");
}

#[test]
fn a_full_disk_fails_init_cleanly_and_a_retry_after_freeing_space_works() {
    assert!(rustix::process::geteuid().is_root(), "this test mounts a tmpfs and needs root (CI runs as root)");
    let root = tempfile::tempdir().unwrap();
    // Room for two or three 4 KiB blocks: init needs four files.
    let disk = Tmpfs::mount(&root.path().join("disk"), "12k");
    let node = Node::in_dir(&disk.0, "full");
    let err = node.qu_err(&["init", "--advertise", "127.0.0.1:9907"]);
    assert!(err.contains("No space left on device"), "{err}");
    for file in ["node.yaml", "cluster.yaml", "keys/private.pem", "keys/cert.pem"] {
        assert!(!node.file(file).exists(), "{file} left behind by a failed init");
    }
    let mut leftovers: Vec<_> = std::fs::read_dir(&node.dir).unwrap().flatten().map(|e| e.file_name()).collect();
    leftovers.sort();
    assert_eq!(leftovers, ["keys", "store"], "only the empty keys/ and store/ directories remain");
    disk.resize("1m");
    node.init(9907, &[]);
    assert!(node.file("node.yaml").exists());
}

#[test]
fn a_weak_custom_secret_is_warned_about_and_a_strong_one_is_not() {
    let weak = Node::new("weak");
    let out = weak.qu(&["init", "--advertise", "127.0.0.1:9904", "--secret", "s3cret-s3cret-s3cret"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: the cluster secret has at most about 121 bits of entropy"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    let strong = Node::new("strong");
    let secret = "0123456789abcdef".repeat(4);
    let out = strong.qu(&["init", "--advertise", "127.0.0.1:9905", "--secret", &secret]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "a 256-bit secret is not weak");
}
