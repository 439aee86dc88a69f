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
    let summary = "1000 denied connections in one call; the first 5 are logged";
    eventually(Duration::from_secs(60), "two calls of the denier", || {
        (node.log_text().matches(summary).count() >= 2).then_some(())
    });
    let log = node.log_text();
    let (calls, denials) =
        (log.matches(summary).count(), log.matches("plugin: HTTP request: denied by allow-list").count());
    assert!(denials >= 5 && denials <= 5 * (calls + 1), "{denials} denials logged over {calls} calls");
    let status = node.wait_status("the flooder has a verdict", |s| {
        s["checks"].as_array().unwrap().iter().any(|c| c["name"] == "flooder" && c["state"] == "up")
    });
    let flooder = status["checks"].as_array().unwrap().iter().find(|c| c["name"] == "flooder").unwrap().clone();
    assert!(flooder.to_string().len() < 4_096, "the check's view is bounded: {} bytes", flooder.to_string().len());
    node.wait_files_written();
    let copy = std::fs::metadata(node.copy_path()).unwrap().len();
    assert!(copy < 64 * 1024, "the committed state is bounded: {copy} bytes");
}

/// A name that resolves to loopback or to the metadata address (through
/// `/etc/hosts` in a network namespace) is refused on the HTTP path and the
/// tls-inspect path, whether the allow list or a declared setting names it,
/// and the refusal says what to allow. Only an exact `HOST:PORT` entry, or
/// `localhost`, reaches it.
#[test]
fn a_name_resolving_to_loopback_or_metadata_is_refused_unless_allowed_exactly() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    assert!(rustix::process::geteuid().is_root(), "this test creates a network namespace (CI runs as root)");
    let netns = qu_tests::Netns::create();
    netns.hosts("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 evil.test\n169.254.169.254 meta.test\n");
    let hits = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = hits.clone();
    netns.spawn_inside(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        for mut stream in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut node = qu_tests::Node::new("sandboxed");
    node.wrapper = netns.wrapper();
    let hostile = artifact("hostile");
    let hostile = hostile.to_str().unwrap();
    let run = |plugin: &str, args: &[&str]| {
        let out = node.qu(&[&["plugin", "run", plugin], args].concat());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let evil = format!("http:http://evil.test:{port}/");
    let allow_loopback = format!("--allow-host evil.test:{port}");

    for args in [
        vec!["--target", evil.as_str(), "--allow-host", "evil.test"],
        vec!["--target", evil.as_str(), "--set", &format!("url=http://evil.test:{port}/")],
    ] {
        let (ok, stdout, stderr) = run(hostile, &args);
        assert!(!ok && stdout.contains("denied by allow-list"), "{args:?}: {stdout}");
        assert!(stderr.contains("`evil.test` resolves to 127.0.0.1, a loopback address"), "{args:?}: {stderr}");
        assert!(stderr.contains(&allow_loopback), "the denial says how to allow it: {stderr}");
    }
    let (ok, stdout, stderr) =
        run(hostile, &["--target", "http:http://meta.test/latest/", "--allow-host", "meta.test"]);
    assert!(!ok && stdout.contains("denied by allow-list"), "{stdout}");
    assert!(stderr.contains("`meta.test` resolves to 169.254.169.254, a cloud metadata address"), "{stderr}");
    let (ok, stdout, _) = run("tls", &["--target", &format!("evil.test:{port}")]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("denied: `evil.test` resolves to 127.0.0.1, a loopback address"), "{stdout}");
    assert!(stdout.contains(&allow_loopback), "{stdout}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the server on the namespace's loopback");

    let (ok, stdout, _) = run(hostile, &["--target", evil.as_str(), "--allow-host", &format!("evil.test:{port}")]);
    assert!(ok && stdout.contains("status 200"), "an exact allow-list entry reaches it: {stdout}");
    let local = format!("http://localhost:{port}/");
    let (ok, stdout, _) = run(hostile, &["--target", &format!("http:{local}"), "--set", &format!("url={local}")]);
    assert!(ok && stdout.contains("status 200"), "localhost names loopback: {stdout}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// The peak resident memory of a process so far (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Every node of a 3-node cluster under an open-file limit of 1,024 runs
/// check plugins that open sockets until refused: each call gets at most
/// 64, all of them together at most the node's budget, and every node keeps
/// serving, persisting (a change made meanwhile is committed everywhere)
/// and probing (a native check stays UP with every node's vote).
#[test]
fn plugins_that_open_sockets_until_refused_leave_every_node_serving() {
    let limit = |node: &mut qu_tests::Node| node.wrapper = ["prlimit", "--nofile=1024:1024"].map(String::from).to_vec();
    let heartbeat = format!("{}ms", qu_tests::HEARTBEAT_MS);
    let dead_after = format!("{}ms", qu_tests::DEAD_AFTER_MS);
    let cluster = Cluster::prepared(3, &heartbeat, &dead_after, "2m", limit);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let node = &cluster.nodes[0];
    node.qu_ok(&["plugin", "add", "hostile", artifact("hostile").to_str().unwrap()]);
    let sha256 = qu_plugin::sha256_hex(&std::fs::read(artifact("hostile")).unwrap());
    wait_ready(&cluster, &[0, 1, 2], "hostile", &sha256);
    node.qu_ok(&["check", "add", "tcp", "native", &format!("127.0.0.1:{port}"), "--interval", "1s"]);
    for i in 0..8 {
        node.qu_ok(&[
            "check",
            "add",
            "hostile",
            &format!("opener{i}"),
            "sockets",
            "--interval",
            "2s",
            "--timeout",
            "1500ms",
        ]);
    }
    for node in &cluster.nodes {
        eventually(Duration::from_secs(60), &format!("{}: a socket refused beyond a call's 64", node.name), || {
            node.log_text().contains("socket: refused a socket beyond the 64 one call may open").then_some(())
        });
    }
    // While they keep at it: a change is persisted and committed everywhere.
    node.qu_ok(&["check", "add", "tcp", "added-meanwhile", &format!("127.0.0.1:{port}"), "--interval", "1s"]);
    for n in &cluster.nodes {
        let status = n.wait_status("the native checks UP with 3 votes, the openers failing", |s| {
            let checks = s["checks"].as_array().unwrap();
            let native = ["native", "added-meanwhile"]
                .iter()
                .all(|name| checks.iter().any(|c| c["name"] == *name && c["state"] == "up" && c["ok"] == 3));
            let openers = checks.iter().filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("opener")));
            native && openers.clone().count() == 8 && openers.clone().all(|c| c["state"] == "down")
        });
        for opener in
            status["checks"].as_array().unwrap().iter().filter(|c| c["name"].as_str().unwrap().starts_with("opener"))
        {
            let detail = opener["detail"].as_str().unwrap_or("");
            let opened: usize = detail
                .strip_prefix("opened ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: {opener}", n.name));
            assert!(opened <= qu_plugin::SOCKETS_PER_CALL_MAX as usize, "{}: {detail}", n.name);
        }
        let log = n.log_text();
        assert!(!log.contains("stopping"), "{} stopped:\n{log}", n.name);
        assert!(!log.contains("Too many open files"), "{} ran out of descriptors:\n{log}", n.name);
    }
    all_alive(&cluster);
}

/// 64 checks of a plugin that fills its 256 MiB, on one node: the daemon's
/// resident memory stays within the node's plugin budget (512 MiB) over
/// what it needs itself, the calls that find no room are no vote, and the
/// node answers throughout.
#[test]
fn sixty_four_calls_filling_their_memory_keep_the_node_within_its_budget() {
    let cluster = Cluster::new(1, "2m");
    let node = &cluster.nodes[0];
    let pid = node.pid().unwrap();
    node.qu_ok(&["plugin", "add", "hostile", artifact("hostile").to_str().unwrap(), "--memory-mib", "256"]);
    let sha256 = qu_plugin::sha256_hex(&std::fs::read(artifact("hostile")).unwrap());
    wait_ready(&cluster, &[0], "hostile", &sha256);
    let before = peak_rss_mib(pid);
    for i in 0..64 {
        node.qu_ok(&["check", "add", "hostile", &format!("filler{i}"), "fill", "--interval", "10s", "--timeout", "8s"]);
    }
    let ran = |c: &serde_json::Value| c["detail"].as_str().is_some_and(|d| d.contains("memory"));
    node.wait_status("every filler ran", |s| {
        let checks = s["checks"].as_array().unwrap();
        checks.len() == 64 && checks.iter().all(ran)
    });
    std::thread::sleep(Duration::from_secs(6));
    let status = node.status_json();
    // A call that finds no room is no vote; none succeeds (the ones that
    // fill up hit their own cap, which is no vote either).
    assert!(status["checks"].as_array().unwrap().iter().all(|c| c["state"] != "up"), "{status}");
    let details: Vec<&str> = status["checks"].as_array().unwrap().iter().filter_map(|c| c["detail"].as_str()).collect();
    assert!(
        details.iter().all(|d| d.contains("memory limit of 256 MiB") || d.contains("plugin memory budget (512 MiB")),
        "{details:?}"
    );
    let peak = peak_rss_mib(pid);
    assert!(peak <= before + 512 + 128, "the daemon's peak RSS went from {before} to {peak} MiB");
    assert!(node.try_status().is_some(), "the node answers");
    assert!(node.is_alive());
    eprintln!("peak RSS {before} MiB before, {peak} MiB with 64 fillers");
}

/// `qu plugin run` of a call that returns 500,000 metrics and a 1 MiB
/// message, and of one that makes denied requests until its deadline: what
/// it prints is cut to the same budget as in the daemon.
#[test]
fn qu_plugin_run_cuts_a_flood_to_its_budget() {
    let node = qu_tests::Node::new("author");
    let hostile = artifact("hostile");
    let hostile = hostile.to_str().unwrap();
    let out = node.qu(&["plugin", "run", hostile, "--target", "flood:500000", "--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["metrics"].as_array().unwrap().len(), qu_plugin::METRICS_MAX);
    assert_eq!(doc["detail"].as_str().unwrap().chars().count(), qu_plugin::MESSAGE_CHARS_MAX + 1);
    assert!(out.stdout.len() < 16 * 1024, "{} bytes", out.stdout.len());

    let out = node.qu(&["plugin", "run", hostile, "--target", "deny:1000000", "--timeout", "10s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.contains("HTTP request: denied by allow-list")).count(), 5, "{stderr}");
    let summary = lines.iter().find(|l| l.contains("denied connections in one call")).expect("one summary line");
    let denied: u64 = summary.split("plugin: ").nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap();
    assert!(denied >= 1_000, "many more than the 5 logged: {summary}");
    assert!(lines.len() <= 6, "{} lines for {denied} denied requests:\n{stderr}", lines.len());
    eprintln!("{denied} denied requests in 10 s: {} lines on stderr", lines.len());
}
