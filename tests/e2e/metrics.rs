//! `/metrics` (node.yaml `http_listen`) on 3 real nodes: every family the
//! operations guide documents is there, `promtool check metrics` accepts a
//! live node's text, and a real Prometheus server started here scrapes
//! every node and sees what `qu status` says.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use qu_tests::{Cluster, eventually, free_port};

/// `GET path` from `addr`: (status line, headers and body as text).
fn get(addr: &str, path: &str, accept: &str) -> (String, String) {
    try_get(addr, path, accept).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn try_get(addr: &str, path: &str, accept: &str) -> std::io::Result<(String, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.to_string(), body.to_string()))
}

fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/setup installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A real Prometheus scraping `targets` every second; stopped on drop.
struct Prometheus {
    child: std::process::Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let list = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: quptime\n    static_configs:\n      - targets: [{list}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package)");
        Prometheus { child, api: listen, _dir: dir }
    }

    /// The values of an instant query, by the `instance` label.
    fn query(&self, query: &str) -> Option<Vec<(String, f64)>> {
        let encoded: String = query
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (head, body) = try_get(&self.api, &format!("/api/v1/query?query={encoded}"), "application/json").ok()?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        Some(
            result
                .iter()
                .map(|r| {
                    let instance = r["metric"]["instance"].as_str().unwrap_or("").to_string();
                    (instance, r["value"][1].as_str().unwrap_or("nan").parse().unwrap_or(f64::NAN))
                })
                .collect(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_node_serves_metrics_that_promtool_accepts_and_prometheus_scrapes() {
    let mut cluster = Cluster::new(3, "2m");
    let target = qu_tests::http_target();
    let receiver = qu_tests::Receiver::start();
    let master = cluster.wait_converged();
    cluster.nodes[master].qu_ok(&["alert", "add", "webhook", "hook", "--url", &receiver.url, "--default"]);
    cluster.nodes[master].qu_ok(&["check", "add", "http", "web", &target.url, "--interval", "1s"]);
    eventually(Duration::from_secs(20), "the first UP", || (receiver.count("UP").0 >= 1).then_some(()));
    // A rolling restart turns the listener on everywhere.
    let mut listens = Vec::new();
    for i in 0..3 {
        cluster.nodes[i].terminate();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut yaml = std::fs::read_to_string(cluster.nodes[i].file("node.yaml")).unwrap();
        yaml.push_str(&format!("http_listen: {listen}\n"));
        std::fs::write(cluster.nodes[i].file("node.yaml"), yaml).unwrap();
        cluster.nodes[i].serve();
        assert!(cluster.nodes[i].log_text().contains(&format!("http://{listen}/metrics")), "the start line names it");
        listens.push(listen);
        cluster.wait_converged();
    }
    let master = cluster.wait_converged();
    // A flap, so the master has a transition, a delivery and a commit to count.
    target.up.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(Duration::from_secs(30), "the DOWN", || (receiver.count("DOWN").0 >= 1).then_some(()));

    for (i, listen) in listens.iter().enumerate() {
        let (head, body) = get(listen, "/metrics", "*/*");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        let (ok, said) = promtool(&body);
        assert!(ok, "promtool check metrics refused node {i}'s text: {said}\n{body}");
        for family in [
            "qu_build_info{version=",
            "qu_role{role=\"master\"}",
            "qu_term ",
            "qu_quorum 1",
            "qu_config_version ",
            "qu_peers 3",
            "qu_peers_live 3",
            "qu_check_state{check=\"web\"",
            "qu_probe_up{check=\"web\"",
            "qu_probe_duration_seconds_bucket{",
            "qu_probes_total{check=\"web\"",
            "qu_probe_errors_total{check=\"web\"",
            "qu_deliveries{status=\"delivered\"}",
            "qu_plugin_memory_budget_bytes ",
        ] {
            assert!(body.contains(family), "node {i} lacks {family}:\n{body}");
        }
        assert!(body.contains("qu_check_state{check=\"web\",id=") && body.contains("state=\"down\"} 1"), "{body}");
        if i == master {
            for family in [
                "qu_role{role=\"master\"} 1",
                "qu_transitions_total ",
                "qu_delivery_attempts_total{status=\"delivered\"}",
                "qu_commit_duration_seconds_count ",
                "qu_plugin_calls_total{plugin=\"webhook\",kind=\"sink\"}",
            ] {
                assert!(body.contains(family), "the master lacks {family}:\n{body}");
            }
        } else {
            assert!(body.contains("qu_role{role=\"follower\"} 1"), "{body}");
        }
        let (head, om) = get(listen, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(om.trim_end().ends_with("# EOF"), "OpenMetrics when asked for");
        let (head, _) = get(listen, "/elsewhere", "*/*");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }

    let prometheus = Prometheus::start(&listens);
    eventually(Duration::from_secs(60), "Prometheus scraped every node", || {
        let up = prometheus.query("up")?;
        (up.len() == 3 && up.iter().all(|(_, v)| *v == 1.0)).then_some(())
    });
    eventually(Duration::from_secs(30), "Prometheus sees the check DOWN on every node", || {
        let down = prometheus.query("qu_check_state{check=\"web\",state=\"down\"}")?;
        (down.len() == 3 && down.iter().all(|(_, v)| *v == 1.0)).then_some(())
    });
    let masters = prometheus.query("qu_role{role=\"master\"} == 1").unwrap();
    assert_eq!(masters.len(), 1, "one master: {masters:?}");
    assert_eq!(masters[0].0, listens[master]);
    eventually(Duration::from_secs(30), "a rate of probes on every node (counters ingested as counters)", || {
        let rate = prometheus.query("rate(qu_probes_total[30s]) > 0")?;
        (rate.len() == 3).then_some(())
    });
}

#[test]
fn a_taken_http_listen_address_is_refused_at_start_with_the_key_to_fix() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let mut node = qu_tests::Node::new("metrics-taken");
    node.init(free_port(), &[]);
    let mut yaml = std::fs::read_to_string(node.file("node.yaml")).unwrap();
    yaml.push_str(&format!("http_listen: {taken}\n"));
    std::fs::write(node.file("node.yaml"), yaml).unwrap();
    let log = node.refused_start();
    assert!(log.contains(&format!("http_listen {taken} is already in use")), "{log}");
    let out = node.qu(&["config", "validate", node.file("node.yaml").to_str().unwrap()]);
    assert!(out.status.success(), "a valid node.yaml: {}", String::from_utf8_lossy(&out.stderr));
}
