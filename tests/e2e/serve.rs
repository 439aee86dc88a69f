//! `qu serve` and `qu status`: startup, refusals, signals, restarts.

use std::time::Duration;

use qu_tests::{Node, free_port};

fn text_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{status}"))
}

#[test]
fn a_single_node_serves_a_correct_status_and_stops_cleanly_on_sigterm() {
    let mut node = Node::new("solo");
    let port = free_port();
    node.init(port, &[]);
    node.serve();

    // A new master commits a fresh version in its term: 1 becomes 2.
    node.wait_status("the fresh commit", |s| s["config_version"] == 2);
    let text = node.qu_ok(&["status"]);
    let json = node.status_json();
    let id = json["node_id"].as_str().unwrap().to_string();
    // Header lines, in the order CLI.md fixes.
    let keys: Vec<&str> = text.lines().take(5).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(keys, ["node", "term", "master", "quorum", "config"]);
    assert_eq!(text_field(&text, "node"), id);
    assert_eq!(text_field(&text, "term"), "1");
    assert_eq!(text_field(&text, "master"), id, "a sole member is its own master");
    assert_eq!(text_field(&text, "quorum"), "true (need 1)");
    assert_eq!(text_field(&text, "config ver"), "2");
    let peers_at = text.lines().position(|l| l == "PEERS").expect("PEERS table");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[peers_at + 1].split_whitespace().collect::<Vec<_>>(),
        ["NODE_ID", "ADVERTISE", "LIVE", "LAST_SEEN"]
    );
    let row: Vec<&str> = lines[peers_at + 2].split_whitespace().collect();
    assert_eq!(row, ["*", id.as_str(), &format!("127.0.0.1:{port}"), "true", "-"]);
    assert_eq!(lines[peers_at + 3], "(* = this node)");
    let checks_at = text.lines().position(|l| l == "CHECKS").expect("CHECKS table");
    assert_eq!(
        lines[checks_at + 1].split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "TYPE", "STATE", "OK/TOTAL", "ALERTS", "DETAIL"]
    );

    assert_eq!(json["term"], 1);
    assert_eq!(json["master"], id.as_str());
    assert_eq!(json["quorum"], true);
    assert_eq!(json["quorum_size"], 1);
    assert_eq!(json["config_version"], 2);
    assert_eq!(json["peers"][0]["node_id"], id.as_str());
    assert_eq!(json["peers"][0]["advertise"], format!("127.0.0.1:{port}").as_str());
    assert_eq!(json["peers"][0]["live"], true);
    assert!(json["peers"][0]["last_seen"].is_null());
    assert_eq!(json["checks"], serde_json::json!([]));

    // The peer port is really listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("peer listener is up");

    let status = node.terminate();
    assert!(status.success(), "SIGTERM is a clean stop (exit 0), got {status}");
    assert!(!node.socket.exists(), "the control socket is removed on exit");
    let log = node.log_text();
    assert!(log.contains("SIGTERM received") && log.contains("stopped"), "{log}");

    let err = node.qu_err(&["status"]);
    assert!(err.contains("no qu daemon answers") && err.contains("qu serve"), "{err}");
}

#[test]
fn sigint_also_stops_cleanly_and_each_start_is_a_new_term() {
    let mut node = Node::new("terms");
    node.init(free_port(), &[]);
    node.serve();
    assert_eq!(node.status_json()["term"], 1);
    node.signal(rustix::process::Signal::INT);
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    node.serve();
    assert_eq!(node.status_json()["term"], 2, "the term and vote are persisted and grow");
    assert!(node.terminate().success());
}

#[test]
fn serve_refuses_without_node_yaml() {
    let mut node = Node::new("empty");
    node.spawn_serve();
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let log = node.log_text();
    assert!(log.contains("error: ") && log.contains("run qu init first"), "{log}");
}

#[test]
fn serve_refuses_a_cluster_yaml_with_unknown_fields_naming_field_and_file() {
    let mut node = Node::new("downgrade");
    node.init(free_port(), &[]);
    let path = node.file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("settings:\n", "settings:\n  from_the_future: 3\n")).unwrap();
    let log = node.refused_start();
    let error_line = log.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{log}"));
    assert!(error_line.contains("cluster.yaml") && error_line.contains("unknown field `from_the_future`"), "{log}");
}

#[test]
fn serve_reports_every_problem_of_a_bad_cluster_yaml_on_one_line() {
    let mut node = Node::new("invalid");
    node.init(free_port(), &[]);
    let path = node.file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("dead_after: 4s", "dead_after: 1s").replace("hysteresis: 2", "hysteresis: 0");
    std::fs::write(&path, text).unwrap();
    let log = node.refused_start();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one line: {log}");
    assert!(errors[0].contains("settings.dead_after") && errors[0].contains("settings.hysteresis"), "{log}");
}

#[test]
fn serve_refuses_invalid_yaml_and_mismatched_keys() {
    let mut node = Node::new("garbage");
    node.init(free_port(), &[]);
    std::fs::write(node.file("cluster.yaml"), "version: [1\n").unwrap();
    let log = node.refused_start();
    assert!(log.contains("error: cluster.yaml"), "{log}");

    let other = Node::new("other");
    other.init(free_port(), &[]);
    std::fs::copy(other.file("cluster.yaml"), node.file("cluster.yaml")).unwrap();
    std::fs::copy(other.file("keys/private.pem"), node.file("keys/private.pem")).unwrap();
    let log = node.refused_start();
    assert!(log.contains("does not belong to the certificate"), "{log}");
}

/// A node that has run has its own copy of what it last persisted: a hand
/// edit that leaves cluster.yaml unreadable (a typo) no longer keeps it
/// down at the next start. It runs on its copy and says so, leaves the
/// file as it is, and sets it aside when a newer version is written, as
/// it does with a bad edit while running. (On a first start there is no
/// copy, and the tests above show the refusal.)
#[test]
fn a_typo_in_cluster_yaml_made_while_stopped_keeps_the_node_serving_its_last_good_config() {
    let mut node = Node::new("typo");
    node.init(free_port(), &[]);
    node.serve();
    node.qu_ok(&["check", "add", "tcp", "db", "127.0.0.1:9", "--interval", "60s"]);
    assert!(node.terminate().success());
    let path = node.file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replace("checks:\n", "checks:\n  - nmae: typo\n");
    assert_ne!(broken, text, "the edit went in");
    std::fs::write(&path, &broken).unwrap();

    node.serve();
    let log = node.log_text();
    assert!(log.contains("cluster.yaml does not parse or validate") && log.contains("last persisted copy"), "{log}");
    let checks = node.qu_ok(&["check", "list"]);
    assert!(checks.contains("db"), "the last good config is served: {checks}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken, "the file is left as the operator left it");

    // A newer version sets the edit aside and writes the file again.
    node.qu_ok(&["check", "add", "tcp", "cache", "127.0.0.1:10", "--interval", "60s"]);
    let set_aside: Vec<_> = std::fs::read_dir(node.dir.clone())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("cluster.yaml.unreplicated-"))
        .collect();
    assert_eq!(set_aside.len(), 1, "the unreadable edit is kept beside the file");
    assert_eq!(std::fs::read_to_string(set_aside[0].path()).unwrap(), broken);
    let now = std::fs::read_to_string(&path).unwrap();
    let parsed = qu_core::config::ClusterConfig::parse(&now).expect("cluster.yaml parses again");
    assert!(parsed.checks.iter().any(|c| c.name == "cache") && parsed.checks.iter().any(|c| c.name == "db"));
}

/// A cluster.yaml cut short inside a line (an interrupted copy, a full
/// disk) can still parse — as a config without everything after the cut
/// (found by the fault suite, seed 1143289454474873784: the rest was taken
/// as a hand edit removing checks and alerts). A file that does not end
/// with a newline is never taken, at start or while running: the node
/// serves its last good config and says why, and `qu config validate`
/// says so first.
#[test]
fn a_cluster_yaml_cut_short_is_never_taken_as_an_edit_even_when_what_is_left_parses() {
    let mut node = Node::new("cut");
    node.init(free_port(), &[]);
    node.serve();
    for name in ["db", "cache", "queue"] {
        node.qu_ok(&["check", "add", "tcp", name, "127.0.0.1:9", "--interval", "60s"]);
    }
    node.qu_ok(&["alert", "add", "webhook", "hook", "--url", "http://127.0.0.1:9/hook"]);
    node.wait_files_written();
    let path = node.file("cluster.yaml");
    let whole = std::fs::read_to_string(&path).unwrap();
    // Inside the second check's name: what is left is valid YAML with one
    // check and no alerts.
    let at = whole.find("name: cache").unwrap() + "name: ca".len();
    let cut = &whole[..at];
    assert!(serde_yaml::from_str::<serde_yaml::Value>(cut).is_ok(), "the cut still parses as YAML");
    let check = |node: &Node, what: &str| {
        let list = node.qu_ok(&["check", "list"]);
        assert!(["db", "cache", "queue"].iter().all(|c| list.contains(c)), "{what}: every check is kept:\n{list}");
        assert!(node.qu_ok(&["alert", "list"]).contains("hook"), "{what}: the alert is kept");
    };

    // While running: logged, ignored, nothing proposed.
    std::fs::write(&path, cut).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    check(&node, "while running");
    let log = node.log_text();
    assert!(log.contains("cut short"), "{log}");
    let out = node.qu(&["config", "validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "validate refuses it");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut short"), "{}", String::from_utf8_lossy(&out.stdout));

    // At start: runs on its copy and says so.
    assert!(node.terminate().success());
    std::fs::write(&path, cut).unwrap();
    node.serve();
    let log = node.log_text();
    assert!(log.contains("last persisted copy") && log.contains("cut short"), "{log}");
    check(&node, "after a restart");
    assert!(!log.contains("proposing it"), "never proposed as an edit: {log}");
}

/// Under systemd, stderr is the journal, which stamps every line: the
/// daemon then leaves its own timestamp out (each line once, not twice).
/// Elsewhere (a terminal, a file) lines keep theirs.
#[test]
fn log_lines_carry_no_second_timestamp_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let mut node = Node::new("journal");
    node.init(free_port(), &[]);
    std::fs::write(&node.log, "").unwrap();
    let meta = std::fs::metadata(&node.log).unwrap();
    node.env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    node.serve();
    assert!(node.terminate().success());
    let log = node.log_text();
    let started = log.lines().find(|l| l.contains("qu daemon starting")).unwrap_or_else(|| panic!("{log}"));
    assert!(started.trim_start().starts_with("INFO"), "no timestamp of its own: {started}");

    // Another file than the one JOURNAL_STREAM names: timestamps stay.
    let mut plain = Node::new("plain");
    plain.init(free_port(), &[]);
    plain.env("JOURNAL_STREAM", "1:1");
    plain.serve();
    assert!(plain.terminate().success());
    let log = plain.log_text();
    let started = log.lines().find(|l| l.contains("qu daemon starting")).unwrap_or_else(|| panic!("{log}"));
    assert!(started.starts_with("20"), "a timestamp first: {started}");

    // QUPTIME_LOG_FORMAT=json: every line one JSON object.
    let mut json = Node::new("json");
    json.init(free_port(), &[]);
    json.env("QUPTIME_LOG_FORMAT", "json");
    json.serve();
    assert!(json.terminate().success());
    let log = json.log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let started = lines.iter().find(|l| l["fields"]["message"] == "qu daemon starting").expect("the start line");
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].as_str().is_some_and(|t| t.starts_with("20")), "{started}");
}

/// `qu config validate` finds, offline, what start would: every problem of
/// cluster.yaml and node.yaml, one per line, exit 1; exit 0 when valid.
#[test]
fn config_validate_lists_every_problem_offline_and_exits_by_them() {
    let node = Node::new("validate");
    node.init(free_port(), &[]);
    let out = node.qu_ok(&["config", "validate"]);
    assert!(
        out.lines().any(|l| l.ends_with("cluster.yaml: valid (version 1, 1 peers, 0 checks, 0 alerts, 0 plugins)")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains("node.yaml: valid (node ")), "{out}");

    let path = node.file("cluster.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replace("dead_after: 4s", "dead_after: 1s").replace("hysteresis: 2", "hysteresis: 0");
    let copy = node.dir.parent().unwrap().join("edited-cluster.yaml");
    std::fs::write(&copy, &broken).unwrap();
    let out = node.qu(&["config", "validate", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout.lines().collect();
    assert_eq!(problems.len(), 2, "one problem a line: {stdout}");
    assert!(problems[0].contains("settings.dead_after") && problems[1].contains("settings.hysteresis"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim_end().ends_with("error: 2 problem(s) in 1 file(s); nothing was changed"), "{stderr}");

    let out = node.qu(&["config", "validate", copy.to_str().unwrap(), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["files"][0]["problems"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "validate changes nothing");
}

#[test]
fn serve_refuses_a_port_in_use() {
    let mut node = Node::new("busy");
    let port = free_port();
    node.init(port, &[]);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let log = node.refused_start();
    assert!(log.contains("error: ") && log.contains("already in use"), "{log}");
}

#[test]
fn serve_refuses_a_corrupt_state_file() {
    let mut node = Node::new("state");
    node.init(free_port(), &[]);
    std::fs::write(node.file("state.yaml"), "term: banana\n").unwrap();
    let log = node.refused_start();
    assert!(log.contains("state.yaml") && log.contains("term and vote"), "{log}");
}

#[test]
fn environment_overrides_node_yaml_when_serving() {
    let mut node = Node::new("envserve");
    node.init(free_port(), &[]);
    let port = free_port();
    node.env("QUPTIME_BIND_PORT", &port.to_string()).env("QUPTIME_ADVERTISE", &format!("127.0.0.1:{port}"));
    node.serve();
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening on the port from the environment");
    assert!(node.log_text().contains(&format!("advertise=127.0.0.1:{port}")));
    assert!(node.terminate().success());

    node.env("QUPTIME_BIND_PORT", "not-a-port");
    let log = node.refused_start();
    assert!(log.contains("QUPTIME_BIND_PORT"), "{log}");
}

#[test]
fn temp_files_left_by_a_crash_are_cleaned_at_start() {
    let mut node = Node::new("crashed");
    node.init(free_port(), &[]);
    std::fs::write(node.file(".cluster.yaml.tmp-999-0"), "half a file").unwrap();
    node.serve();
    assert!(!node.file(".cluster.yaml.tmp-999-0").exists());
    assert!(node.terminate().success());
}

/// `cluster.yaml` holds the alerts' credentials: a copy saved wider (an
/// editor's umask, a `cp` without `-a`) is made 0600 again, at start and
/// while the daemon runs, and the log says so.
#[test]
fn a_cluster_yaml_left_readable_by_others_is_made_private_again() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut node = Node::new("loose");
    node.init(qu_tests::free_port(), &[]);
    let path = node.file("cluster.yaml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.serve();
    assert_eq!(mode(&path), 0o600, "tightened at start");
    assert!(node.log_text().contains("was readable by others (mode 644); made it 0600"), "{}", node.log_text());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    qu_tests::eventually(std::time::Duration::from_secs(10), "tightened while running", || {
        (mode(&path) == 0o600).then_some(())
    });
    assert!(node.log_text().contains("(mode 664); made it 0600"));
}

/// The daemon raises its soft limit on open files to the hard one at start:
/// probes and plugin calls open sockets, and the daemon must keep
/// descriptors of its own to persist, accept and probe.
#[test]
fn the_daemon_raises_its_open_file_limit_to_the_hard_one() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum.expect("a hard limit");
    assert!(hard > 512, "the machine's hard limit is {hard}");
    // This test process (and so the daemon it starts) with a low soft limit.
    setrlimit(Resource::Nofile, Rlimit { current: Some(512), maximum: Some(hard) }).unwrap();
    let mut node = Node::new("fds");
    node.init(free_port(), &[]);
    node.serve();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid().unwrap())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers, [hard, hard], "{line}");
    assert!(node.log_text().contains(&format!("open files: soft limit raised from 512 to {hard}")));
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): `READY=1` only once the
/// node answers, `STATUS=` with its role and term, `WATCHDOG=1` from the
/// event loop at half the interval (and none while the process is
/// stopped), `STOPPING=1` on SIGTERM. The socket is the test's own, as
/// systemd's would be.
#[test]
fn under_systemd_it_says_ready_pings_the_watchdog_and_reports_role_and_term() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let read = |within: Duration| -> Vec<String> {
        let until = std::time::Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < until {
            if let Ok(n) = socket.recv(&mut buf) {
                got.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
            }
        }
        got
    };
    let mut node = Node::new("notified");
    node.init(free_port(), &[]);
    // systemd names the service's pid in WATCHDOG_PID: a shell that
    // execs the daemon knows it.
    node.wrapper = ["sh", "-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"].map(String::from).to_vec();
    node.spawn_serve_with(&[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")]);
    node.wrapper.clear();
    let mut seen = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l| l == "READY=1") && std::time::Instant::now() < until {
        seen.extend(read(Duration::from_millis(100)));
    }
    assert!(seen.iter().any(|l| l == "READY=1"), "no READY=1: {seen:?}");
    let status = node.qu(&["status", "--json"]);
    assert!(status.status.success(), "READY=1 before the control socket answered");
    seen.extend(read(Duration::from_secs(3)));
    let pings = seen.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!((3..=12).contains(&pings), "WATCHDOG=1 about twice a second: {pings} in 3 s: {seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("STATUS=master, term ") && l.contains("config version")),
        "the role and term in STATUS=: {seen:?}"
    );
    node.signal(rustix::process::Signal::STOP);
    read(Duration::from_millis(300));
    let stopped = read(Duration::from_secs(2));
    node.signal(rustix::process::Signal::CONT);
    assert!(!stopped.iter().any(|l| l == "WATCHDOG=1"), "a stopped loop pings nothing: {stopped:?}");
    assert!(read(Duration::from_secs(2)).iter().any(|l| l == "WATCHDOG=1"), "pings again once it runs");
    node.terminate();
    assert!(read(Duration::from_millis(500)).iter().any(|l| l == "STOPPING=1"), "STOPPING=1 on SIGTERM");
}
