//! `qu demo`: a 3-node cluster on loopback in a temporary directory, formed
//! the way an operator forms one (`qu init` with the secret, `qu serve`,
//! `qu node add`), started as real `qu serve` processes; it then kills the
//! master to show a failover and prints the status as it runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use qu_daemon::control::{ControlRequest, ControlResponse};
use qu_daemon::init::{InitOptions, init};
use qu_store::DataDir;

#[derive(Args)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 30s, 5m) instead of running until Ctrl-C.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Time between status prints.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Keep the demo directory (node files and logs) after stopping.
    #[arg(long)]
    keep: bool,
}

struct DemoNode {
    dir: PathBuf,
    socket: PathBuf,
    advertise: String,
    child: Option<Child>,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        if let Ok(None) = child.try_wait() {
            let pid = rustix::process::Pid::from_child(child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("qu-demo-{}", std::process::id()));
    fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let outcome = run_in(&root, &args);
    if args.keep || outcome.is_err() {
        eprintln!("demo files and logs kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(&root);
    }
    outcome
}

fn run_in(root: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    let interrupted = install_interrupt_flag()?;
    println!("qu demo: a 3-node cluster on loopback, in {}\n", root.display());
    let (first, secret) = init_node(root, "node1", None)?;
    let mut nodes = vec![first];
    nodes[0].spawn()?;
    wait_until_answering(&nodes[0])?;
    println!("$ qu cluster settings set heartbeat 250ms    # quicker timers for the demo");
    println!("$ qu cluster settings set dead_after 1s");
    println!("$ qu cluster settings set master_cooldown 5s");
    for (key, value) in [("heartbeat", "250ms"), ("dead_after", "1s"), ("master_cooldown", "5s")] {
        expect_committed(call(&nodes[0], ControlRequest::SettingsSet { key: key.into(), value: value.into() })?)?;
    }
    for name in ["node2", "node3"] {
        let (mut node, _) = init_node(root, name, Some(secret.clone()))?;
        node.spawn()?;
        wait_until_answering(&node)?;
        let addr = node.advertise.clone();
        let fingerprint = match call(&nodes[0], ControlRequest::NodeProbe { addr: addr.clone() })? {
            ControlResponse::Probe { fingerprint, .. } => fingerprint,
            ControlResponse::Error { message } => bail!(message),
            other => return Err(crate::unexpected(other)),
        };
        let add = ControlRequest::NodeAdd { addr: addr.clone(), fingerprint };
        let (_, version) = expect_committed(call(&nodes[0], add)?)?;
        println!("$ qu node add {addr} --yes\nadded {name}; config version {version}");
        nodes.push(node);
    }
    // The lowest node id is the preferred master: once it has been live for
    // master_cooldown the role moves there; let that settle first.
    let master = wait_for_preferred_master(&nodes)?;
    println!("\nthe cluster is formed; node{} (the lowest node id) is master\n", master + 1);

    let targets = Targets::start()?;
    println!(
        "sample targets on loopback: {} stays up; {} flaps every {}s\n",
        targets.stable, targets.flappy, FLAP_SECS
    );
    let receiver = receive_alerts()?;
    let alert = qu_core::config::Alert {
        id: String::new(),
        name: "demo-hook".into(),
        kind: "webhook".into(),
        config: [("url".to_string(), receiver.clone())].into_iter().collect(),
        default: true,
        disabled: false,
        subject_template: None,
        body_template: None,
        // The demo's receiver hears of the cluster too (a node stopped for
        // a minute is announced).
        cluster_events: true,
        repeat: None,
    };
    expect_committed(call(&nodes[master], ControlRequest::AlertAdd { alert: Box::new(alert) })?)?;
    println!("$ qu alert add webhook demo-hook --url {receiver} --default");
    println!("(a webhook receiver on loopback prints every alert it gets, marked >>>)\n");
    let checks = [
        vec!["web", "http", targets.stable.as_str()],
        vec!["flappy", "http", targets.flappy.as_str()],
        vec!["port", "tcp", targets.stable_addr.as_str()],
        vec!["loopback", "icmp", "127.0.0.1"],
    ];
    for check in &checks {
        let (name, kind, target) = (check[0], check[1], check[2]);
        let spec = qu_core::config::Check {
            rounds_down: None,
            rounds_up: None,
            id: String::new(),
            name: name.into(),
            kind: kind.into(),
            target: target.into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            settings: Default::default(),
            alert_ids: vec![],
            suppress_alert_ids: vec![],
            disabled: false,
        };
        expect_committed(call(&nodes[master], ControlRequest::CheckAdd { check: Box::new(spec) })?)?;
        println!("$ qu check add {kind} {name} {target} --interval 2s --timeout 1s");
    }
    println!("\nwaiting for the first verdicts (hysteresis: 2 rounds of 2s)...\n");
    std::thread::sleep(Duration::from_secs(6));
    print_status(&nodes[master])?;

    println!("$ kill -9 node{}    # the master dies", master + 1);
    if let Some(child) = nodes[master].child.as_mut() {
        child.kill().context("kill the master")?;
        child.wait()?;
    }
    let killed = Instant::now();
    let next = wait_for_master(&nodes, Some(master))?;
    println!("node{} took over after {} ms (dead_after is 1s)\n", next + 1, killed.elapsed().as_millis());
    print_status(&nodes[next])?;
    println!(
        "$ qu serve    # node{} comes back; the lowest live node id holds the role once live for master_cooldown (5s)\n",
        master + 1
    );
    nodes[master].spawn()?;
    wait_until_answering(&nodes[master])?;

    println!("status every {} (Ctrl-C stops the demo)\n", humantime::format_duration(args.every));
    let started = Instant::now();
    loop {
        let shown = wait_for_master(&nodes, None).unwrap_or(0);
        print_status(&nodes[shown])?;
        let next = Instant::now() + args.every;
        while Instant::now() < next {
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                println!("stopping");
                return Ok(());
            }
            if args.duration.is_some_and(|d| started.elapsed() >= d) {
                println!("demo finished after {}", humantime::format_duration(args.duration.unwrap_or_default()));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn call(node: &DemoNode, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    crate::call(&node.socket, request)
}

fn expect_committed(answer: ControlResponse) -> anyhow::Result<(u64, u64)> {
    match answer {
        ControlResponse::Committed { term, version, .. } => Ok((term, version)),
        ControlResponse::Error { message } => bail!(message),
        other => Err(crate::unexpected(other)),
    }
}

/// Waits until a running node other than `not` reports itself master with
/// quorum; returns its index.
fn wait_for_master(nodes: &[DemoNode], not: Option<usize>) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, node) in nodes.iter().enumerate() {
            if Some(i) == not {
                continue;
            }
            if let Ok(ControlResponse::Status(view)) = call(node, ControlRequest::Status)
                && view.quorum
                && view.master == Some(view.node_id)
            {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("no master within 30s; see the logs in the demo directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_preferred_master(nodes: &[DemoNode]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let master = wait_for_master(nodes, None)?;
        if let ControlResponse::Status(view) = call(&nodes[master], ControlRequest::Status)?
            && view.peers.iter().map(|p| p.node_id).min() == Some(view.node_id)
        {
            return Ok(master);
        }
        if Instant::now() > deadline {
            return Ok(master);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Initialises a node in `root/name` on a free loopback port; returns it and
/// the cluster secret (generated for the first node).
fn init_node(root: &Path, name: &str, secret: Option<String>) -> anyhow::Result<(DemoNode, String)> {
    let dir = root.join(name);
    let socket = dir.join("quptime.sock");
    let port = free_port()?;
    let advertise = format!("127.0.0.1:{port}");
    let options = InitOptions {
        advertise: advertise.clone(),
        bind: Some("127.0.0.1".parse()?),
        port: Some(port),
        secret: secret.clone(),
    };
    let report = init(&DataDir::new(&dir), options)?;
    let secret = report.generated_secret.or(secret).unwrap_or_default();
    Ok((DemoNode { dir, socket, advertise, child: None }, secret))
}

impl DemoNode {
    /// Starts `qu serve` for this node, logging to `qu.log` in its directory.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("qu.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .env("QUPTIME_DIR", &self.dir)
            .env("QUPTIME_SOCKET", &self.socket)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start qu serve")?;
        self.child = Some(child);
        Ok(())
    }
}

fn wait_until_answering(node: &DemoNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ControlResponse::Status(_)) = call(node, ControlRequest::Status) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = fs::read_to_string(node.dir.join("qu.log")).unwrap_or_default();
            bail!("the demo node did not start within 20s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_status(node: &DemoNode) -> anyhow::Result<()> {
    match call(node, ControlRequest::Status)? {
        ControlResponse::Status(view) => {
            println!("$ qu status");
            print!("{}", crate::render::status_text(&view));
            println!();
            Ok(())
        }
        ControlResponse::Error { message } => bail!(message),
        other => Err(crate::unexpected(other)),
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A flag set by SIGINT/SIGTERM, so the demo can stop its nodes cleanly.
fn install_interrupt_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            set.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    });
    Ok(flag)
}

/// A webhook receiver on loopback that prints each alert it gets.
fn receive_alerts() -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/alerts", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let Ok(mut writer) = stream.try_clone() else { return };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length.min(1 << 20)];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    println!(
                        ">>> alert received: {}  ({}; key {})",
                        json["subject"].as_str().unwrap_or("?"),
                        json["detail"].as_str().unwrap_or(""),
                        json["idempotency_key"].as_str().unwrap_or("?")
                    );
                    if writer.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

/// Seconds the flapping target stays in each state.
const FLAP_SECS: u64 = 15;

/// Local HTTP targets for the demo's sample checks.
struct Targets {
    stable: String,
    stable_addr: String,
    flappy: String,
}

impl Targets {
    fn start() -> anyhow::Result<Self> {
        let stable = std::net::TcpListener::bind("127.0.0.1:0")?;
        let flappy = std::net::TcpListener::bind("127.0.0.1:0")?;
        let stable_addr = stable.local_addr()?.to_string();
        let flappy_addr = flappy.local_addr()?.to_string();
        let started = Instant::now();
        serve_http(stable, move || true);
        serve_http(flappy, move || (started.elapsed().as_secs() / FLAP_SECS).is_multiple_of(2));
        Ok(Self { stable: format!("http://{stable_addr}/"), stable_addr, flappy: format!("http://{flappy_addr}/") })
    }
}

/// A minimal HTTP/1.1 responder: 200 while `healthy()`, 503 otherwise.
fn serve_http(listener: std::net::TcpListener, healthy: impl Fn() -> bool + Send + Sync + Copy + 'static) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let status = if healthy() { "200 OK" } else { "503 Service Unavailable" };
                    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\n\r\nqu\n");
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}
