//! Checks on a 3-node cluster: an HTTP target the test switches off and on,
//! verdicts seen the same on every node, and check state that survives the
//! master's death (no re-announced outage, one recovery).

use std::sync::atomic::Ordering;
use std::time::Duration;

use qu_tests::{Cluster, ConfigWatch, HttpTarget as Target, Netns, http_target as target};

fn state_everywhere(cluster: &Cluster, nodes: &[usize], want: &str) {
    for i in nodes {
        cluster.nodes[*i].wait_status(&format!("the check is {want}"), |s| {
            s["checks"].as_array().is_some_and(|c| c.len() == 1 && c[0]["state"] == want)
        });
    }
}

/// Adds the check through a follower, so the change is forwarded.
fn add_check(cluster: &Cluster, url: &str) {
    let master = cluster.wait_converged();
    let follower = (0..3).find(|i| *i != master).unwrap();
    cluster.nodes[follower].qu_ok(&["check", "add", "http", "web", url, "--interval", "1s", "--timeout", "500ms"]);
}

#[test]
fn an_http_target_going_down_and_up_is_seen_by_every_node() {
    let cluster = Cluster::new(3, "2m");
    let watch = ConfigWatch::start(&cluster);
    let target = target();
    add_check(&cluster, &target.url);
    state_everywhere(&cluster, &[0, 1, 2], "up");
    let status = cluster.nodes[1].status_json();
    let check = &status["checks"][0];
    assert_eq!((check["ok"].as_u64(), check["total"].as_u64()), (Some(3), Some(3)), "{check}");
    assert_eq!(check["detail"], "status 200");
    assert!(status["probes"]["run"].as_u64().unwrap() > 0, "this node's probes are counted: {}", status["probes"]);

    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    let check = cluster.nodes[2].status_json()["checks"][0].clone();
    assert_eq!(check["detail"], "status 503 (expected 2xx)");
    target.up.store(true, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "up");
    cluster.wait_converged();
    watch.catch_up(&cluster);
    assert_eq!(watch.transitions("web", "down").len(), 1, "exactly one DOWN committed: {:?}", watch.seen().len());
    assert_eq!(watch.transitions("web", "up").len(), 2, "unknown -> up, then the recovery");
    let list: serde_json::Value = serde_json::from_str(&cluster.nodes[2].qu_ok(&["check", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "web");
    cluster.assert_identical_configs(&[0, 1, 2]);
}

/// A 3-node cluster whose one check went up, then down (target failing).
/// The watch sees every node's cluster.yaml from before the check was added.
fn outage() -> (Cluster, Target, ConfigWatch) {
    let cluster = Cluster::new(3, "2m");
    let watch = ConfigWatch::start(&cluster);
    let target = target();
    add_check(&cluster, &target.url);
    state_everywhere(&cluster, &[0, 1, 2], "up");
    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    qu_tests::eventually(Duration::from_secs(5), "the watch sees the DOWN", || {
        (watch.transitions("web", "down").len() == 1).then_some(())
    });
    (cluster, target, watch)
}

#[test]
fn an_outage_survives_the_masters_death_without_a_new_transition() {
    let (mut cluster, _target, watch) = outage();
    let master = cluster.wait_converged();
    watch.catch_up(&cluster);
    let transition_before = std::fs::read_to_string(cluster.nodes[master].copy_path()).unwrap();
    cluster.nodes[master].kill();
    let rest: Vec<usize> = cluster.running();
    let new_master = cluster.wait_master(&rest);
    // Several rounds pass on the new master: the outage is not re-announced.
    std::thread::sleep(Duration::from_secs(4));
    state_everywhere(&cluster, &rest, "down");
    watch.catch_up(&cluster);
    assert_eq!(watch.transitions("web", "down").len(), 1, "the outage was committed once");
    assert_eq!(watch.transitions("web", "up").len(), 1, "and nothing else since the first UP");
    let transition_of = |yaml: &str| {
        let config: qu_core::config::ClusterConfig = serde_yaml::from_str(yaml).unwrap();
        config.states.values().next().map(|s| s.transition.clone())
    };
    let after = std::fs::read_to_string(cluster.nodes[new_master].copy_path()).unwrap();
    assert_eq!(transition_of(&after), transition_of(&transition_before));
}

#[test]
fn a_recovery_during_a_failover_is_committed_exactly_once() {
    let (mut cluster, target, watch) = outage();
    let master = cluster.wait_converged();
    cluster.nodes[master].kill();
    target.up.store(true, Ordering::SeqCst);
    let rest = cluster.running();
    cluster.wait_master(&rest);
    state_everywhere(&cluster, &rest, "up");
    // A few more rounds (hysteresis 2 at a 1 s interval): nothing is committed twice.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(watch.transitions("web", "down").len(), 1);
    assert_eq!(watch.transitions("web", "up").len(), 2, "unknown -> up and exactly one recovery");
}

#[test]
fn check_commands_validate_input_and_change_only_what_they_name() {
    let cluster = Cluster::new(1, "2m");
    let node = &cluster.nodes[0];
    let version = || node.status_json()["config_version"].as_u64().unwrap();
    let added = node.qu_ok(&[
        "check",
        "add",
        "http",
        "web",
        "http://127.0.0.1:9/",
        "--expect",
        "200-299,301",
        "--interval",
        "5s",
        "--json",
    ]);
    // Every change answers in JSON with its config version and the new id.
    let added: serde_json::Value = serde_json::from_str(&added).unwrap();
    assert_eq!(added["config_version"].as_u64(), Some(version()), "{added}");
    assert!(added["term"].as_u64().is_some() && added["id"].as_str().is_some_and(|id| id.starts_with('c')), "{added}");
    let before = version();
    for (args, needle) in [
        (vec!["check", "add", "http", "web", "http://127.0.0.1:9/"], "already exists"),
        (vec!["check", "add", "http", "bad", "not a url"], "is not a URL"),
        (vec!["check", "add", "tcp", "db", "127.0.0.1:99999"], "not a port number"),
        (vec!["check", "add", "http", "fast", "http://x/", "--interval", "500ms"], "shorter than 1s"),
        (
            vec!["check", "add", "http", "slow", "http://x/", "--interval", "5s", "--timeout", "5s"],
            "shorter than the interval",
        ),
        (vec!["check", "add", "http", "odd", "http://x/", "--expect", "600"], "expect `600`"),
        (vec!["check", "add", "smtp-banner", "mail", "example.com"], "unknown check type `smtp-banner`"),
        (vec!["check", "add", "dns", "lookup", "example.com", "--set", "record=SRV"], "`SRV` is not one of"),
        (
            vec!["check", "add", "http", "paged", "http://x/", "--alerts", "pager"],
            "no alert has the name or id `pager`",
        ),
        (vec!["check", "edit", "nope", "--interval", "9s"], "no check has the name or id `nope`"),
        (
            vec!["check", "add", "http", "head", "http://x/", "--method", "HEAD", "--body-match", "ok"],
            "a HEAD response has no body",
        ),
        (vec!["check", "edit", "web"], "nothing to change"),
        (vec!["check", "edit", "web", "--interval", "5s"], "nothing to change"),
    ] {
        let err = node.qu_err(&args);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert_eq!(version(), before, "refused changes commit nothing");

    node.qu_ok(&["check", "edit", "web", "--timeout", "2s", "--body-match", "ok"]);
    let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap();
    let web = &list[0];
    assert_eq!(web["interval"], "5s", "untouched");
    assert_eq!(web["timeout"], "2s");
    // Durations come in seconds too, for programs.
    assert_eq!((web["interval_secs"].as_f64(), web["timeout_secs"].as_f64()), (Some(5.0), Some(2.0)), "{web}");
    let settings: serde_json::Value = serde_json::from_str(&node.qu_ok(&["cluster", "settings", "--json"])).unwrap();
    let heartbeat = humantime::parse_duration(settings["heartbeat"].as_str().unwrap()).unwrap();
    assert_eq!(settings["heartbeat_secs"].as_f64(), Some(heartbeat.as_secs_f64()), "{settings}");
    assert!(settings["delivery_deadline_secs"].as_f64().is_some_and(|s| s >= 60.0), "{settings}");
    assert_eq!(web["settings"]["expect"], "200-299,301", "untouched");
    assert_eq!(web["settings"]["body_match"], "ok");
    // An alert list is set, and cleared with an empty one.
    let pager = node.qu_ok(&["alert", "add", "webhook", "pager", "--url", "http://127.0.0.1:9/hook"]);
    assert!(pager.starts_with("alert pager added (a") && pager.contains("); config version "), "{pager}");
    node.qu_ok(&["check", "edit", "web", "--alerts", "pager", "--suppress", "pager"]);
    let listed = || -> serde_json::Value { serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap() };
    assert_eq!(listed()[0]["alerts"], serde_json::json!(["pager"]), "{}", listed());
    node.qu_ok(&["check", "edit", "web", "--alerts", "", "--suppress", ""]);
    assert_eq!(listed()[0]["alerts"], serde_json::json!([]));
    assert_eq!(listed()[0]["suppressed"], serde_json::json!([]));
    let disabled: serde_json::Value =
        serde_json::from_str(&node.qu_ok(&["check", "disable", "web", "--json"])).unwrap();
    assert_eq!(disabled["config_version"].as_u64(), Some(version()), "{disabled}");
    assert!(disabled.get("id").is_none(), "nothing was created: {disabled}");
    let status = node.status_json();
    assert_eq!(status["checks"][0]["disabled"], true);
    assert_eq!(status["checks"][0]["detail"], "disabled");
    node.qu_ok(&["check", "enable", "web"]);
    let id = web["id"].as_str().unwrap().to_string();
    node.qu_ok(&["check", "remove", &id]);
    assert_eq!(node.status_json()["checks"], serde_json::json!([]));
}

/// Restores `net.ipv4.ping_group_range` when dropped.
struct PingGroupRange(String);

impl PingGroupRange {
    const PATH: &'static str = "/proc/sys/net/ipv4/ping_group_range";

    fn set(value: &str) -> Self {
        let before = std::fs::read_to_string(Self::PATH).unwrap();
        std::fs::write(Self::PATH, value).unwrap();
        Self(before)
    }
}

impl Drop for PingGroupRange {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

#[test]
fn icmp_works_unprivileged_through_datagram_sockets_and_says_why_when_it_cannot() {
    use std::os::unix::fs::PermissionsExt;
    assert!(
        rustix::process::geteuid().is_root(),
        "this test switches to uid 65534 and sets a sysctl (CI runs as root)"
    );
    let shelf = tempfile::Builder::new().prefix("qu-bin-").tempdir().unwrap();
    std::fs::set_permissions(shelf.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = shelf.path().join("qu");
    std::fs::copy(qu_tests::qu_bin(), &bin).unwrap();
    let run_as_nobody = |host: &str| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["check", "run", "icmp", host])
            .env_clear()
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    {
        let _closed = PingGroupRange::set("1 0");
        let (ok, out) = run_as_nobody("127.0.0.1");
        assert!(!ok);
        assert!(out.starts_with("unavailable") && out.contains("net.ipv4.ping_group_range"), "{out}");
    }
    let _open = PingGroupRange::set("0 2147483647");
    for host in ["127.0.0.1", "::1"] {
        let (ok, out) = run_as_nobody(host);
        assert!(ok && out.starts_with("up") && out.contains("reply in"), "{host}: {out}");
    }
}

#[test]
fn one_node_that_cannot_reach_the_target_does_not_make_it_down() {
    assert!(rustix::process::geteuid().is_root(), "this test creates a network namespace (CI runs as root)");
    let netns = Netns::create();
    // n0 and n1 live here; n2 lives in the namespace, where 127.0.0.1 is its
    // own loopback: the target (on this namespace's 127.0.0.1) is out of its reach.
    let cluster = Cluster::with_last_in(&netns, 3);
    let nodes = &cluster.nodes;
    let watch = ConfigWatch::start(&cluster);
    let target = target();
    nodes[0].qu_ok(&["check", "add", "http", "web", &target.url, "--interval", "1s", "--timeout", "500ms"]);
    for node in nodes {
        node.wait_status("two of three see the target", |s| {
            s["checks"][0]["state"] == "up" && s["checks"][0]["ok"] == 2 && s["checks"][0]["total"] == 3
        });
    }
    // Rounds pass with n2 failing: no DOWN.
    std::thread::sleep(Duration::from_secs(4));
    for node in nodes {
        let check = node.status_json()["checks"][0].clone();
        assert_eq!(check["state"], "up", "{}: {check}", node.name);
    }
    watch.catch_up(&cluster);
    assert!(watch.transitions("web", "down").is_empty(), "a DOWN was committed");
    // When the target really fails, the majority agrees: DOWN.
    target.up.store(false, Ordering::SeqCst);
    for node in nodes {
        node.wait_status("the check is down", |s| s["checks"][0]["state"] == "down");
    }
}

#[test]
fn a_node_without_a_master_shows_committed_states_marked_stale() {
    let mut cluster = Cluster::new(3, "2m");
    let target = target();
    add_check(&cluster, &target.url);
    state_everywhere(&cluster, &[0, 1, 2], "up");
    let master = cluster.wait_converged();
    let others: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    for i in &others {
        assert!(cluster.nodes[*i].terminate().success());
    }
    let status = cluster.nodes[master].wait_status("no master", |s| s["master"].is_null());
    let check = &status["checks"][0];
    assert_eq!(check["state"], "up", "the committed state is still shown");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("(stale: the master's view could not be fetched)"), "{detail}");
    drop(target);
}

/// What `--help` offers is what the command takes: `qu check run` has no
/// schedule or alerts, `edit` names no defaults it would not apply, and
/// `qu cluster settings set` names every key.
#[test]
fn help_offers_only_what_each_command_takes() {
    let node = qu_tests::Node::new("help");
    let help = |args: &[&str]| node.qu_ok(args);
    let run = help(&["check", "run", "--help"]);
    for flag in ["--interval", "--alerts", "--suppress"] {
        assert!(!run.contains(flag), "`qu check run` ignores {flag} and must not offer it:\n{run}");
    }
    assert!(run.contains("--timeout") && run.contains("--expect"), "{run}");
    let edit = help(&["check", "edit", "--help"]);
    assert!(!edit.contains("[default:"), "edit changes only what it is given:\n{edit}");
    let set = help(&["cluster", "settings", "set", "--help"]);
    for key in qu_core::config::SETTING_KEYS {
        assert!(set.contains(key), "`{key}` missing from:\n{set}");
    }
    // Completions and man pages come from the same definitions.
    for shell in ["bash", "zsh", "fish"] {
        let script = node.qu_ok(&["completions", shell]);
        assert!(script.contains("completions") && script.contains("validate"), "{shell}: every command is in it");
    }
    let bash = node.qu_ok(&["completions", "bash"]);
    let checked = std::process::Command::new("bash").args(["-n", "-c", &bash]).status().expect("bash");
    assert!(checked.success(), "the bash completion script parses");
    let man = tempfile::tempdir().unwrap();
    node.qu_ok(&["man", man.path().to_str().unwrap()]);
    let page = std::fs::read_to_string(man.path().join("qu-check-add.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH qu-check-add 1"),
        "a man page: {}",
        &page[..80.min(page.len())]
    );
    assert!(page.contains("interval"), "{page}");
    assert!(man.path().join("qu.1").is_file() && man.path().join("qu-config-validate.1").is_file());
    // `qu check run --json`: the probe's outcome as data, exit 1 when not up.
    let out = node.qu(&["check", "run", "tcp", "127.0.0.1:9", "--timeout", "2s", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["outcome"], "down", "{run}");
    assert!(run["latency_ms"].is_u64() && run["detail"].is_string(), "{run}");
    // A usage error exits 2, as docs/operations.md's exit codes say.
    for args in [&["check", "add"][..], &["check", "run", "http", "http://x/", "--interval", "5s"], &["no-such"]] {
        assert_eq!(node.qu(args).status.code(), Some(2), "qu {args:?}");
    }
}

/// Per-check hysteresis on 3 nodes: on the same target, a check that must
/// see 6 rounds goes DOWN well after one that needs 1, and with
/// `--rounds-up 1` comes back after one round; the others keep the
/// cluster's `hysteresis`.
#[test]
fn a_checks_own_rounds_override_the_clusters_hysteresis() {
    let cluster = qu_tests::Cluster::new(3, "2m");
    let target = qu_tests::http_target();
    let master = cluster.wait_converged();
    let node = &cluster.nodes[master];
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec!["check", "add", "http", name, &target.url, "--interval", "1s", "--timeout", "500ms"];
        args.extend_from_slice(extra);
        node.qu_ok(&args);
    };
    add("fast", &["--rounds-down", "1"]);
    add("slow", &["--rounds-down", "6", "--rounds-up", "1"]);
    add("plain", &[]);
    let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap();
    let rounds = |name: &str| {
        let c = list.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        (c["rounds_down"].as_u64().unwrap(), c["rounds_up"].as_u64().unwrap())
    };
    assert_eq!((rounds("fast"), rounds("slow"), rounds("plain")), ((1, 2), (6, 1), (2, 2)));
    let state = |name: &str| -> String {
        let status = node.status_json();
        status["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    qu_tests::eventually(Duration::from_secs(20), "all up", || {
        ["fast", "slow", "plain"].iter().all(|c| state(c) == "up").then_some(())
    });
    target.up.store(false, Ordering::SeqCst);
    qu_tests::eventually(Duration::from_secs(20), "fast and plain down", || {
        (state("fast") == "down" && state("plain") == "down").then_some(())
    });
    assert_eq!(state("slow"), "up", "six rounds have not passed yet");
    qu_tests::eventually(Duration::from_secs(30), "slow down", || (state("slow") == "down").then_some(()));
    target.up.store(true, Ordering::SeqCst);
    qu_tests::eventually(Duration::from_secs(20), "slow back up", || (state("slow") == "up").then_some(()));
    node.qu_ok(&["check", "edit", "slow", "--rounds-down", "0"]);
    let list: serde_json::Value = serde_json::from_str(&node.qu_ok(&["check", "list", "--json"])).unwrap();
    let slow = list.as_array().unwrap().iter().find(|c| c["name"] == "slow").unwrap().clone();
    assert_eq!(slow["rounds_down"], 2, "0 goes back to the cluster's hysteresis");
    let refused = node.qu_err(&["check", "edit", "slow", "--rounds-down", "101"]);
    assert!(refused.contains("rounds_down: 101 is outside 1..=100"), "{refused}");
}
