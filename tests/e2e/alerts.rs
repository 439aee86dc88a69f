//! Alerts on a 3-node cluster, delivered through the real webhook sink to
//! a receiver the test runs: exactly one DOWN and one RECOVERED per
//! incident through master failovers, late but once when the sink was
//! down, nothing without a quorum; `qu alert test` and `qu check test`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qu_tests::{Cluster, Receiver, eventually, http_target};
use rustix::process::Signal;

fn state_everywhere(cluster: &Cluster, nodes: &[usize], want: &str) {
    for i in nodes {
        cluster.nodes[*i].wait_status(&format!("the check is {want}"), |s| {
            s["checks"].as_array().is_some_and(|c| c.len() == 1 && c[0]["state"] == want)
        });
    }
}

fn wait_count(receiver: &Receiver, verb: &str, want: usize, within: Duration) {
    eventually(within, &format!("{want} {verb} alert(s) received"), || (receiver.count(verb).0 >= want).then_some(()));
}

/// Waits until the receiver holds a refused (503) or open request for `verb`.
fn wait_request(receiver: &Receiver, verb: &str, open: bool) -> qu_tests::Received {
    let what = if open { "held open" } else { "refused" };
    eventually(Duration::from_secs(20), &format!("a {verb} request {what}"), || {
        receiver
            .requests()
            .into_iter()
            .find(|r| r.verb == verb && if open { r.status.is_none() } else { r.status == Some(503) })
    })
}

/// The target fails with the receiver holding requests: the DOWN, open.
fn down_held_open(receiver: &Receiver, target: &qu_tests::HttpTarget) -> qu_tests::Received {
    receiver.hold.store(true, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    wait_request(receiver, "DOWN", true)
}

/// The first alert's bookkeeping as the master's `qu alert list --json` shows it.
fn first_alert(cluster: &Cluster) -> serde_json::Value {
    let master = cluster.wait_master(&cluster.running());
    let alerts: serde_json::Value =
        serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
    alerts[0].clone()
}

/// Waits until no delivery is pending and the last one is `status`.
fn wait_finished(cluster: &Cluster, status: &str) -> serde_json::Value {
    eventually(Duration::from_secs(30), &format!("the delivery is committed {status}"), || {
        let alert = first_alert(cluster);
        (alert["pending"] == 0 && alert["last"]["status"] == status).then_some(alert)
    })
}

/// A cluster with a default webhook alert and one HTTP check, up on every node.
fn watched() -> (Cluster, Receiver, qu_tests::HttpTarget) {
    let (cluster, receiver, target) = qu_tests::alerting_cluster();
    state_everywhere(&cluster, &[0, 1, 2], "up");
    (cluster, receiver, target)
}

#[test]
fn one_down_and_one_recovered_per_incident_through_failovers() {
    let (mut cluster, receiver, target) = watched();

    // The outage, and the master killed in the middle of it.
    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(15));
    let first = cluster.wait_converged();
    cluster.nodes[first].kill();
    let rest = cluster.running();
    cluster.wait_master(&rest);
    std::thread::sleep(Duration::from_secs(4));
    cluster.nodes[first].serve();
    cluster.wait_converged();

    // Recovery, and the master killed just after it is committed.
    target.up.store(true, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "up");
    let second = cluster.wait_converged();
    cluster.nodes[second].kill();
    let rest = cluster.running();
    cluster.wait_master(&rest);
    wait_count(&receiver, "RECOVERED", 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));

    for verb in ["UP", "DOWN", "RECOVERED"] {
        let (distinct, raw) = receiver.count(verb);
        assert_eq!(distinct, 1, "exactly one {verb} incident announced");
        assert_eq!(raw, 1, "and delivered once ({verb})");
    }
    let got = receiver.got.lock().unwrap().clone();
    let down = got.iter().find(|r| r.verb == "DOWN").unwrap();
    assert_eq!(down.check, "web");
    assert_eq!(down.json["counts"]["total"], 3, "{}", down.json);
    let master = cluster.wait_master(&rest);
    let alerts: serde_json::Value =
        serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).unwrap();
    // The idempotency key is `<transition>/<alert id>`.
    let (transition, alert_id) = down.key.split_once('/').unwrap();
    assert_eq!(alert_id, alerts[0]["id"].as_str().unwrap());
    assert_eq!(down.json["transition"]["id"], transition);
    assert_eq!(alerts[0]["pending"], 0, "{alerts}");
    assert_eq!(alerts[0]["last"]["status"], "delivered", "{alerts}");
}

#[test]
fn a_sink_that_was_down_gets_the_alert_once_when_it_is_back() {
    let (cluster, receiver, target) = watched();
    receiver.up.store(false, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    // Refused, and retried: still pending.
    let refused = wait_request(&receiver, "DOWN", false);
    eventually(Duration::from_secs(20), "a second attempt", || {
        (receiver.requests().iter().filter(|r| r.key == refused.key).count() >= 2).then_some(())
    });
    assert_eq!(first_alert(&cluster)["pending"], 1);
    receiver.up.store(true, Ordering::SeqCst);
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(40));
    let alert = wait_finished(&cluster, "delivered");
    assert_eq!(alert["last"]["verb"], "DOWN", "{alert}");
    assert_eq!(receiver.count("DOWN"), (1, 1), "delivered once after the sink came back");
    // Every attempt carried the same key, and none came after the accepted one.
    let requests = receiver.requests();
    assert!(requests.iter().filter(|r| r.verb == "DOWN").all(|r| r.key == refused.key), "{requests:?}");
    let last = requests.iter().rfind(|r| r.verb == "DOWN").unwrap();
    assert!(last.accepted(), "the accepted attempt is the last one: {requests:?}");
}

#[test]
fn nothing_is_sent_without_a_quorum() {
    let (mut cluster, receiver, target) = watched();
    let master = cluster.wait_converged();
    let others: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    for i in &others {
        cluster.nodes[*i].kill();
    }
    target.up.store(false, Ordering::SeqCst);
    // Four times hysteresis x interval: a verdict would have been reached.
    std::thread::sleep(Duration::from_secs(8));
    let sent: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == "DOWN").collect();
    assert!(sent.is_empty(), "no quorum: no verdict, no alert: {sent:?}");
    // With the quorum back, the outage is committed and announced once.
    for i in &others {
        cluster.nodes[*i].serve();
    }
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    wait_finished(&cluster, "delivered");
    assert_eq!(receiver.count("DOWN"), (1, 1));
}

#[test]
fn alert_test_and_check_test_go_through_the_real_sink_without_changing_state() {
    let (cluster, receiver, _target) = watched();
    let node = &cluster.nodes[1];
    let out = node.qu_ok(&["alert", "test", "hook"]);
    assert!(out.starts_with("hook: delivered"), "{out}");
    let out = node.qu_ok(&["check", "test", "web", "--state", "recovered"]);
    assert!(out.starts_with("hook: delivered"), "{out}");
    let tests: Vec<qu_tests::Received> = receiver.got.lock().unwrap().iter().filter(|r| r.test).cloned().collect();
    assert_eq!(tests.len(), 2, "{tests:?}");
    assert!(tests[0].json["subject"].as_str().unwrap().starts_with("[TEST]"), "{}", tests[0].json);
    assert_eq!((tests[1].verb.as_str(), tests[1].check.as_str()), ("RECOVERED", "web"));
    // Real state is untouched and nothing real was announced.
    state_everywhere(&cluster, &[0, 1, 2], "up");
    assert_eq!(receiver.count("RECOVERED"), (0, 0));
    // The status lists the check's alerts as data, the default ones apart;
    // the text marks a default alert with `*`.
    let status = node.status_json();
    assert_eq!(status["checks"][0]["alerts"], serde_json::json!(["hook"]), "{status}");
    assert_eq!(status["checks"][0]["default_alerts"], serde_json::json!(["hook"]), "{status}");
    assert!(node.qu_ok(&["status"]).contains("hook*"));

    // A sink that fails says so, verbatim, and the command fails.
    receiver.up.store(false, Ordering::SeqCst);
    let err = node.qu(&["alert", "test", "hook"]);
    assert!(!err.status.success());
    let text = String::from_utf8_lossy(&err.stdout);
    assert!(text.contains("hook: FAILED: plugin webhook: status 503"), "{text}");

    // Bad input is refused before anything is committed.
    let refused = node.qu_err(&["alert", "add", "webhook", "bad", "--url", "ftp://x"]);
    assert!(refused.contains("expected an http:// or https:// URL"), "{refused}");
    let refused = node.qu_err(&["alert", "add", "webhook", "tpl", "--url", &receiver.url, "--subject", "{{ verbb }}"]);
    assert!(refused.contains("subject template"), "{refused}");
    let refused = node.qu_err(&["alert", "add", "pager", "p"]);
    assert!(refused.contains("unknown sink `pager`"), "{refused}");
    // Secrets never printed.
    node.qu_ok(&["alert", "add", "webhook", "signed", "--url", &receiver.url, "--signing-secret", "hunter2"]);
    let list = node.qu_ok(&["alert", "list", "--json"]);
    assert!(!list.contains("hunter2") && list.contains("********"), "{list}");
    // A URL whose path carries a token (Slack, Teams, Discord) is a secret too.
    let token_url = "https://hooks.slack.com/services/T0/B0/s3cr3t-token";
    node.qu_ok(&["alert", "add", "webhook", "slack", "--url", token_url]);
    for args in [&["alert", "list", "--json"][..], &["alert", "list"][..]] {
        let list = node.qu_ok(args);
        assert!(!list.contains("s3cr3t-token"), "{args:?}: {list}");
    }
    let json: serde_json::Value = serde_json::from_str(&node.qu_ok(&["alert", "list", "--json"])).unwrap();
    let slack = json.as_array().unwrap().iter().find(|a| a["name"] == "slack").unwrap().clone();
    assert_eq!(slack["config"]["url"], "https://hooks.slack.com/********", "{slack}");
}

/// `qu alert test` and `qu check test` through the Discord and email sinks:
/// a stand-in that answers like Discord's webhook API, and aiosmtpd.
#[test]
fn alert_test_through_discord_and_email() {
    use std::io::{BufRead, BufReader, Read, Write};
    let cluster = Cluster::new(1, "2m");
    let node = &cluster.nodes[0];

    // Discord: JSON `content`, 204 on success.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let discord = format!("http://{}/api/webhooks/1/token", listener.local_addr().unwrap());
    let contents: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = contents.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push(json["content"].as_str().unwrap_or("").to_string());
            writer.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
        }
    });
    // Refused as it is: not https, not a Discord host.
    let refused = node.qu_err(&["alert", "add", "discord", "chat", "--webhook", &discord]);
    assert!(refused.contains("Discord webhooks are https") && !refused.contains("/token"), "{refused}");
    // A stand-in for Discord is a relay.
    node.qu_ok(&["alert", "add", "discord", "chat", "--webhook", &discord, "--set", "relay=true"]);
    let out = node.qu_ok(&["alert", "test", "chat"]);
    assert!(out.starts_with("chat: delivered"), "{out}");
    assert!(
        contents.lock().unwrap()[0].starts_with("**[TEST] DOWN: qu-alert-test**"),
        "{:?}",
        contents.lock().unwrap()
    );
    let list = node.qu_ok(&["alert", "list", "--json"]);
    assert!(!list.contains("/api/webhooks/1/token"), "the webhook URL (a secret) is masked: {list}");

    // Email: aiosmtpd on loopback, plain SMTP to localhost.
    let dir = tempfile::tempdir().unwrap();
    let port = qu_tests::free_port();
    let script = r#"
import os, sys
from aiosmtpd.controller import Controller
class Save:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(sys.argv[1]))
        open(os.path.join(sys.argv[1], "%d.eml" % n), "wb").write(envelope.original_content)
        return "250 OK"
c = Controller(Save(), hostname="127.0.0.1", port=int(sys.argv[2]))
c.start()
print("READY", flush=True)
sys.stdin.read()
"#;
    let mut smtp = std::process::Command::new("python3")
        .args(["-c", script, dir.path().to_str().unwrap(), &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd (.ci/setup installs it)");
    let mut ready = String::new();
    BufReader::new(smtp.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "READY");
    let port_text = port.to_string();
    node.qu_ok(&[
        "alert",
        "add",
        "email",
        "mail",
        "--host",
        "localhost",
        "--port",
        &port_text,
        "--tls",
        "none",
        "--from",
        "qu@example.com",
        "--to",
        "oncall@example.com",
    ]);
    let target = http_target();
    node.qu_ok(&["check", "add", "http", "web", &target.url, "--alerts", "mail,chat"]);
    let out = node.qu_ok(&["check", "test", "web", "--state", "down"]);
    assert!(out.contains("chat: delivered") && out.contains("mail: delivered"), "{out}");
    let message = std::fs::read_to_string(dir.path().join("0.eml")).unwrap();
    assert!(message.contains("Subject: [TEST] DOWN: web"), "{message}");
    assert!(message.contains("To: oncall@example.com"), "{message}");
    drop(smtp.stdin.take());
    let _ = smtp.wait();
}

/// A master that loses its lease stops sending at once: with both
/// followers frozen, its pending delivery is not attempted again, not even
/// refused (the receiver records every request); with the quorum back,
/// it is delivered once.
#[test]
fn a_master_without_its_lease_sends_nothing() {
    let (cluster, receiver, target) = watched();
    let master = cluster.wait_converged();
    let followers: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    receiver.up.store(false, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    let first = wait_request(&receiver, "DOWN", false);
    for i in &followers {
        cluster.nodes[*i].signal(Signal::STOP);
    }
    // dead_after (500 ms) passes: the lease is gone, and with it the sends.
    let lease_gone = Instant::now() + Duration::from_secs(2);
    std::thread::sleep(Duration::from_secs(3));
    receiver.up.store(true, Ordering::SeqCst);
    // Without the fence, the retries 2, 3 and 4 (about 2, 6 and 14 s after
    // the first refusal) would land in this window.
    std::thread::sleep(Duration::from_secs(20));
    let late = receiver.requests_since(lease_gone);
    assert!(late.is_empty(), "sent without a lease: {late:?}");
    for i in &followers {
        cluster.nodes[*i].signal(Signal::CONT);
    }
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    wait_finished(&cluster, "delivered");
    assert_eq!(receiver.count("DOWN"), (1, 1), "delivered once the quorum is back");
    assert!(receiver.requests().iter().filter(|r| r.verb == "DOWN").all(|r| r.key == first.key));
}

/// The master is killed while its DOWN request is open at the sink: the
/// new master sends it again, and the receiver answers exactly one.
#[test]
fn a_master_killed_during_a_send_leaves_one_delivery_to_its_successor() {
    let (mut cluster, receiver, target) = watched();
    let open = down_held_open(&receiver, &target);
    let master = cluster.wait_master(&[0, 1, 2]);
    cluster.nodes[master].kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "the killed master's request is dropped", || {
        receiver.requests().iter().any(|r| r.key == open.key && r.status == Some(0)).then_some(())
    });
    receiver.hold.store(false, Ordering::SeqCst);
    let rest = cluster.running();
    cluster.wait_master(&rest);
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    wait_finished(&cluster, "delivered");
    let after: Vec<_> = receiver.requests_since(killed).into_iter().filter(|r| r.verb == "DOWN").collect();
    assert_eq!(after.len(), 1, "exactly one request after the failover: {after:?}");
    assert!(after[0].accepted() && after[0].key == open.key, "{after:?}");
    assert_eq!(receiver.count("DOWN"), (1, 1));
}

/// The sink accepts, but the master is killed before "delivered" can
/// commit: both followers are frozen from before the answer (so the
/// master's proposal of "delivered" sits unread in their sockets) and are
/// killed with it, the documented crash case. The followers come back,
/// one of them is master, never learned of the send, and sends again:
/// exactly one raw duplicate, with the same idempotency key.
#[test]
fn a_master_killed_between_the_send_and_its_commit_duplicates_once_with_the_same_key() {
    let (mut cluster, receiver, target) = watched();
    let open = down_held_open(&receiver, &target);
    let master = cluster.wait_master(&[0, 1, 2]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != master).collect();
    for i in &followers {
        cluster.nodes[*i].signal(Signal::STOP);
    }
    receiver.hold.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(10), "the sink accepted the send", || {
        receiver.requests().iter().any(|r| r.key == open.key && r.accepted()).then_some(())
    });
    cluster.nodes[master].kill();
    for i in &followers {
        cluster.nodes[*i].kill();
    }
    for i in &followers {
        cluster.nodes[*i].serve();
    }
    cluster.wait_master(&followers);
    wait_count(&receiver, "DOWN", 1, Duration::from_secs(30));
    wait_finished(&cluster, "delivered");
    assert_eq!(receiver.count("DOWN"), (1, 2), "one incident, one raw duplicate after the crash");
    let requests: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == "DOWN").collect();
    assert!(requests.iter().all(|r| r.key == open.key && r.accepted()), "{requests:?}");
}

/// A sink that stays down past `delivery_deadline`: the delivery is marked
/// failed, logged loudly, and not sent when the sink returns.
#[test]
fn a_delivery_past_its_deadline_is_marked_failed_and_not_sent_late() {
    let (cluster, receiver, target) = watched();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "delivery_deadline", "1m"]);
    receiver.up.store(false, Ordering::SeqCst);
    target.up.store(false, Ordering::SeqCst);
    state_everywhere(&cluster, &[0, 1, 2], "down");
    let failed = |cluster: &Cluster| -> Option<serde_json::Value> {
        let master = cluster.wait_converged();
        let alerts: serde_json::Value =
            serde_json::from_str(&cluster.nodes[master].qu_ok(&["alert", "list", "--json"])).ok()?;
        (alerts[0]["last"]["status"] == "failed").then(|| alerts[0].clone())
    };
    let alert = eventually(Duration::from_secs(100), "the delivery is marked failed", || failed(&cluster));
    assert_eq!(alert["pending"], 0, "{alert}");
    assert_eq!(alert["last"]["verb"], "DOWN", "{alert}");
    assert!(alert["last"]["error"].as_str().unwrap().contains("status 503"), "{alert}");
    let failed_at = Instant::now();
    let logged = cluster.nodes.iter().any(|n| n.log_text().contains("FAILED: not delivered within 1m"));
    assert!(logged, "the failure is logged at ERROR");
    // Had the record still been retried, the next attempt would come one
    // backoff (at most +20 % jitter) after the last one: wait past that,
    // the sink still refusing (and recording), then with the sink back.
    let attempts: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == "DOWN").collect();
    let last = attempts.last().expect("attempts were made").at;
    let next_retry = last + qu_core::alerting::backoff(attempts.len() as u32, 1.0) + Duration::from_secs(2);
    std::thread::sleep(next_retry.saturating_duration_since(Instant::now()));
    receiver.up.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    let late = receiver.requests_since(failed_at);
    assert!(late.is_empty(), "a failed delivery is not sent late: {late:?}");
    assert_eq!(receiver.count("DOWN"), (0, 0));
}

/// Twenty checks on one target go down together, and their transitions
/// commit together: at an interval of 7,919 ms the master's verdict rounds
/// of all of them fall on one phase (`Verdicts::sync` spreads first rounds
/// by `index × 7,919 mod interval`), so they reach hysteresis in the same
/// tick. Each check is paged once, with a key of its own — checks committed
/// together must not share a delivery record.
#[test]
fn checks_that_go_down_together_are_each_paged_once() {
    let (cluster, receiver, target) = watched();
    let master = cluster.wait_converged();
    for i in 0..20 {
        let name = format!("web{i}");
        cluster.nodes[master].qu_ok(&[
            "check",
            "add",
            "http",
            &name,
            &target.url,
            "--interval",
            "7919ms",
            "--timeout",
            "500ms",
        ]);
    }
    eventually(Duration::from_secs(90), "every check up", || (receiver.count("UP").0 >= 21).then_some(()));
    target.up.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(90), "21 DOWN pages", || (receiver.count("DOWN").0 >= 21).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    let downs: Vec<_> = receiver.requests().into_iter().filter(|r| r.verb == "DOWN" && r.accepted()).collect();
    let checks: std::collections::BTreeSet<&str> = downs.iter().map(|r| r.check.as_str()).collect();
    let keys: std::collections::BTreeSet<&str> = downs.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(checks.len(), 21, "a page per check: {checks:?}");
    assert_eq!(keys.len(), 21, "a key per page: {keys:?}");
    assert_eq!(downs.len(), 21, "once each: {downs:?}");
}
