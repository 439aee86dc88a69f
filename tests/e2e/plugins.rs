//! Plugins on a 3-node cluster: `qu plugin add` on a follower replicates
//! the component to every node, a check through it gets verdicts, a
//! tampered copy is refused and fetched again, and removal is refused
//! while the plugin is in use. Real components built from plugins/.

use std::path::PathBuf;
use std::time::Duration;

use qu_tests::{Cluster, eventually};

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(qu_plugin::ARTIFACTS).join(format!("{name}.wasm"))
}

fn plugin_status(cluster: &Cluster, node: usize, name: &str) -> Option<serde_json::Value> {
    let out = cluster.nodes[node].qu(&["plugin", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    list.as_array()?.iter().find(|p| p["name"] == name).cloned()
}

fn wait_ready(cluster: &Cluster, nodes: &[usize], name: &str, sha256: &str) {
    for node in nodes {
        eventually(Duration::from_secs(30), &format!("plugin {name} ready on node {node}"), || {
            plugin_status(cluster, *node, name).filter(|p| p["status"] == "ready" && p["sha256"] == sha256)
        });
        let blob = cluster.nodes[*node].file(&format!("plugins/{sha256}.wasm"));
        let bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
        assert_eq!(qu_plugin::sha256_hex(&bytes), sha256, "node {node} holds the verified bytes");
    }
}

#[test]
fn a_plugin_added_on_a_follower_reaches_every_node_and_runs_checks() {
    let mut cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    let follower = (0..3).find(|i| *i != master).unwrap();
    let bytes = std::fs::read(artifact("echo")).unwrap();
    let sha256 = qu_plugin::sha256_hex(&bytes);

    // Junk is refused before anything is committed.
    let junk = cluster.root().join("junk.wasm");
    std::fs::write(&junk, b"not a component").unwrap();
    let version = cluster.nodes[follower].status_json()["config_version"].clone();
    let refused = cluster.nodes[follower].qu_err(&["plugin", "add", "junk", junk.to_str().unwrap()]);
    assert!(refused.contains("not a WebAssembly component"), "{refused}");
    assert_eq!(cluster.nodes[follower].status_json()["config_version"], version, "nothing committed");

    let added = cluster.nodes[follower].qu_ok(&["plugin", "add", "echo", artifact("echo").to_str().unwrap()]);
    assert!(added.starts_with("plugin echo added; config version"), "{added}");
    wait_ready(&cluster, &[0, 1, 2], "echo", &sha256);

    cluster.nodes[master].qu_ok(&[
        "check",
        "add",
        "echo",
        "hello",
        "greetings",
        "--set",
        "message=hi there",
        "--interval",
        "1s",
        "--timeout",
        "500ms",
    ]);
    for node in 0..3 {
        cluster.nodes[node].wait_status("the plugin check is up", |s| {
            s["checks"]
                .as_array()
                .is_some_and(|c| c.len() == 1 && c[0]["state"] == "up" && c[0]["detail"] == "hi there")
        });
    }
    let check = cluster.nodes[follower].status_json()["checks"][0].clone();
    assert_eq!(
        (check["ok"].as_u64(), check["total"].as_u64(), check["type"].as_str()),
        (Some(3), Some(3), Some("echo"))
    );

    // The plugin's own validation refuses bad settings at add time.
    let refused = cluster.nodes[follower].qu_err(&["check", "add", "echo", "bad", "x", "--set", "colour=blue"]);
    assert!(refused.contains("unknown setting `colour`"), "{refused}");

    // In use: removal is refused and names the user.
    let refused = cluster.nodes[follower].qu_err(&["plugin", "remove", "echo"]);
    assert!(refused.contains("still used by check hello"), "{refused}");

    // A node whose copy was tampered with refuses it and fetches it again.
    let victim = (0..3).find(|i| *i != master && *i != follower).unwrap();
    cluster.nodes[victim].kill();
    let blob = cluster.nodes[victim].file(&format!("plugins/{sha256}.wasm"));
    let mut tampered = std::fs::read(&blob).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    std::fs::write(&blob, &tampered).unwrap();
    cluster.nodes[victim].serve();
    wait_ready(&cluster, &[victim], "echo", &sha256);
    let log = cluster.nodes[victim].log_text();
    assert!(log.contains("does not match its sha256"), "the tampering is logged:\n{log}");

    // Unused again: removal goes through everywhere.
    cluster.nodes[follower].qu_ok(&["check", "remove", "hello"]);
    cluster.nodes[follower].qu_ok(&["plugin", "remove", "echo"]);
    for node in 0..3 {
        eventually(Duration::from_secs(10), "the plugin is gone", || {
            plugin_status(&cluster, node, "echo").is_none().then_some(())
        });
    }
    let builtins = plugin_status(&cluster, follower, "dns").unwrap();
    assert_eq!((builtins["kind"].as_str(), builtins["built_in"].as_bool()), (Some("check"), Some(true)));
}

/// Adds the hostile plugin and one check per misdeed (`spinner`, `panicker`,
/// `hog`) plus a well-behaved `fine`, each with `extra` settings.
fn hostile_checks(cluster: &Cluster, via: usize, extra: &[&str]) {
    cluster.nodes[via].qu_ok(&["plugin", "add", "hostile", artifact("hostile").to_str().unwrap()]);
    let sha256 = qu_plugin::sha256_hex(&std::fs::read(artifact("hostile")).unwrap());
    wait_ready(cluster, &[0, 1, 2], "hostile", &sha256);
    for (name, misdeed, interval, timeout) in [
        ("spinner", "spin", "2s", "1s"),
        ("panicker", "panic", "2s", "1s"),
        ("hog", "alloc", "2s", "1s"),
        ("fine", "ok", "1s", "500ms"),
    ] {
        let mut args = vec!["check", "add", "hostile", name, misdeed, "--interval", interval, "--timeout", timeout];
        args.extend_from_slice(extra);
        cluster.nodes[via].qu_ok(&args);
    }
}

/// The checks of `qu status --json` by name, once all four have a committed
/// verdict or a settled `unknown` that `settled` accepts.
fn hostile_status(node: &qu_tests::Node, settled: impl Fn(&str, &serde_json::Value) -> bool) -> serde_json::Value {
    node.wait_status("every hostile check settled", |s| {
        let Some(checks) = s["checks"].as_array() else { return false };
        let names: std::collections::BTreeSet<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
        names == ["fine", "hog", "panicker", "spinner"].into_iter().collect()
            && checks.iter().all(|c| settled(c["name"].as_str().unwrap(), c))
    })
}

fn by_name<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()
}

/// Each daemon still runs and answers on its socket.
fn all_alive(cluster: &Cluster) {
    for node in &cluster.nodes {
        assert!(node.is_alive(), "{} exited:\n{}", node.name, node.log_text());
        assert!(node.try_status().is_some(), "{} does not answer", node.name);
    }
}

#[test]
fn a_plugin_that_misbehaves_everywhere_is_no_vote_and_harms_nothing() {
    let cluster = Cluster::new(3, "2m");
    let master = cluster.wait_converged();
    hostile_checks(&cluster, master, &[]);
    let status = hostile_status(&cluster.nodes[master], |name, c| match name {
        "fine" => c["state"] == "up",
        // A spinning plugin hits the check's timeout: a failed probe, DOWN.
        "spinner" => c["state"] == "down",
        _ => c["detail"].as_str().is_some_and(|d| !d.is_empty()),
    });
    let fine = by_name(&status, "fine");
    assert_eq!((fine["ok"].as_u64(), fine["total"].as_u64()), (Some(3), Some(3)), "{fine}");
    let spinner = by_name(&status, "spinner");
    assert!(spinner["detail"].as_str().unwrap().starts_with("timeout after 1s"), "{spinner}");
    assert_eq!((spinner["ok"].as_u64(), spinner["total"].as_u64()), (Some(0), Some(3)), "{spinner}");
    // A crash or a memory blow-up is the plugin's fault: no vote, no verdict.
    for (name, why) in [("panicker", "crashed: it panicked"), ("hog", "exceeded its memory limit")] {
        let check = by_name(&status, name);
        assert_eq!(check["state"], "unknown", "{check}");
        assert!(check["detail"].as_str().unwrap().contains(why), "{check}");
        assert_eq!(check["total"].as_u64(), Some(0), "no node voted: {check}");
    }
    all_alive(&cluster);
}

/// The node cut off from an address misbehaves; the two that reach it
/// answer: their votes decide, the bad node's crash is no vote, and its
/// timeout is one DOWN vote among UP ones.
#[test]
fn a_plugin_that_misbehaves_on_one_node_is_outvoted_and_harms_nothing() {
    assert!(rustix::process::geteuid().is_root(), "this test creates a network namespace (CI runs as root)");
    let netns = qu_tests::Netns::create();
    let cluster = Cluster::with_last_in(&netns, 3);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reachable = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let setting = format!("unless_reachable={reachable}");
    hostile_checks(&cluster, 0, &["--set", &setting]);
    for node in &cluster.nodes {
        let status = hostile_status(node, |name, c| match name {
            "fine" | "spinner" => c["state"] == "up" && c["total"] == 3,
            _ => c["state"] == "up" && c["total"] == 2,
        });
        // `ok` is no misdeed: all three answer it.
        assert_eq!(by_name(&status, "fine")["ok"].as_u64(), Some(3), "{}: {status}", node.name);
        for name in ["spinner", "panicker", "hog"] {
            let check = by_name(&status, name);
            assert_eq!(check["ok"].as_u64(), Some(2), "{}: {check}", node.name);
        }
    }
    all_alive(&cluster);
}

/// A check plugin that makes 1,000 denied HTTP requests per call, and
/// returns a 1 MiB message and 500,000 metrics from another: the daemon
/// logs at most 5 denials and one summary line per call, and what it shows
/// and commits of the results is cut to its budget.
#[test]
fn a_flooding_plugin_is_cut_to_its_budget_in_the_daemon() {
    let cluster = Cluster::new(1, "2m");
    let node = &cluster.nodes[0];
    node.qu_ok(&["plugin", "add", "hostile", artifact("hostile").to_str().unwrap()]);
    let sha256 = qu_plugin::sha256_hex(&std::fs::read(artifact("hostile")).unwrap());
    wait_ready(&cluster, &[0], "hostile", &sha256);
    node.qu_ok(&["check", "add", "hostile", "denier", "deny:1000", "--interval", "3s", "--timeout", "2s"]);
    node.qu_ok(&["check", "add", "hostile", "flooder", "flood:500000", "--interval", "3s", "--timeout", "2s"]);
    let summary = "more than 5 denied HTTP requests in one call; not logging the rest";
    eventually(Duration::from_secs(60), "two calls of the denier", || {
        (node.log_text().matches(summary).count() >= 2).then_some(())
    });
    let log = node.log_text();
    let (calls, denials) = (log.matches(summary).count(), log.matches("plugin: denied HTTP request to").count());
    assert!(denials <= 5 * (calls + 1), "{denials} denials logged over {calls} calls");
    let status = node.wait_status("the flooder has a verdict", |s| {
        s["checks"].as_array().unwrap().iter().any(|c| c["name"] == "flooder" && c["state"] == "up")
    });
    let flooder = status["checks"].as_array().unwrap().iter().find(|c| c["name"] == "flooder").unwrap().clone();
    assert!(flooder.to_string().len() < 4_096, "the check's view is bounded: {} bytes", flooder.to_string().len());
    node.wait_files_written();
    let copy = std::fs::metadata(node.copy_path()).unwrap().len();
    assert!(copy < 64 * 1024, "the committed state is bounded: {copy} bytes");
}
