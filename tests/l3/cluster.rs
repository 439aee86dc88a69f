//! The processes and the world around them: nodes in their namespaces,
//! flippable targets, the receiver, the workload and the status poller,
//! each recording into the shared [`History`].

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qu_tests::{FreezableDisk, LIBFAKETIME, Node, Receiver};

use crate::history::{Event, History, OpResult};
use crate::net::Hub;

pub const HEARTBEAT: &str = "200ms";
pub const DEAD_AFTER: Duration = Duration::from_millis(1_000);
pub const INTERVAL: &str = "1s";
pub const INTERVAL_SECS: u64 = 1;
/// The cluster's `hysteresis` (its default): rounds a verdict must hold.
pub const HYSTERESIS: u32 = 2;

/// libfiu's preload libraries: fsync errors switched on and off in a
/// running node (`fiu-ctrl`).
const FIU_RUN: &str = "/usr/lib/fiu/fiu_run_preload.so";
const FIU_POSIX: &str = "/usr/lib/fiu/fiu_posix_preload.so";

/// A node's clocks, steppable while it runs: libfaketime reads the offset
/// from `file` on every call. Even nodes have their wall clock stepped
/// alone (monotonic untouched, as an NTP step leaves it); odd nodes have
/// both moved forward together (a VM paused and resumed).
pub struct Clock {
    file: std::path::PathBuf,
    pub monotonic: bool,
    pub offset: i64,
}

impl Clock {
    pub fn set(&mut self, offset: i64) {
        self.offset = offset;
        std::fs::write(&self.file, format!("{offset:+}\n")).unwrap();
    }
}

pub struct World {
    pub hub: Hub,
    pub nodes: Vec<Node>,
    pub ports: Vec<u16>,
    pub targets: Vec<Target>,
    pub steady: Target,
    pub receiver: Receiver,
    pub history: Arc<History>,
    /// Each node's data directory is a disk of its own (ext4 on a loop
    /// device), to fill up or freeze.
    pub disks: Vec<FreezableDisk>,
    pub clocks: Vec<Clock>,
    fiu: std::path::PathBuf,
    pub stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Every node's directory and log; removed after a run that passed,
    /// kept after one that failed ([`World::keep`]).
    pub root: std::path::PathBuf,
    keep: std::cell::Cell<bool>,
}

/// A TCP target on the hub: listening while up, refusing while down.
pub struct Target {
    pub name: String,
    pub addr: String,
    listener: Arc<Mutex<Option<TcpListener>>>,
}

impl Target {
    fn start(ip: &str, name: &str) -> Self {
        let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let listener = Arc::new(Mutex::new(Some(listener)));
        let held = listener.clone();
        std::thread::spawn(move || {
            loop {
                if let Some(l) = held.lock().unwrap().as_ref() {
                    while l.accept().is_ok() {}
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self { name: name.to_string(), addr, listener }
    }

    pub fn set(&self, up: bool, history: &History) {
        let mut listener = self.listener.lock().unwrap();
        if up && listener.is_none() {
            let l = TcpListener::bind(&self.addr).unwrap();
            l.set_nonblocking(true).unwrap();
            *listener = Some(l);
        } else if !up {
            *listener = None;
        }
        history.record(Event::Target { name: self.name.clone(), up });
    }
}

impl World {
    /// `n` nodes in their namespaces, formed into one cluster, two flip
    /// targets and a steady one checked by every node, a default webhook
    /// alert, and the poller and the workload running.
    pub fn start(n: usize) -> Self {
        let hub = Hub::create(n);
        let root = tempfile::Builder::new().prefix("qu-l3-").tempdir().unwrap().keep();
        let history = Arc::new(History::new());
        preflight();
        let mut nodes: Vec<Node> = (0..n).map(|i| Node::in_dir(&root, &format!("n{i}"))).collect();
        let ports: Vec<u16> = (0..n).map(|i| 9_000 + i as u16).collect();
        let fiu = root.join("fiu");
        std::fs::create_dir_all(&fiu).unwrap();
        let mut clocks = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.wrapper = hub.wrapper(i);
            node.ip = hub.node_ip(i);
            let mut clock = Clock { file: root.join(format!("clock-n{i}")), monotonic: i % 2 == 1, offset: 0 };
            clock.set(0);
            node.serve_env("LD_PRELOAD", &format!("{FIU_RUN} {FIU_POSIX} {LIBFAKETIME}"))
                .serve_env("FIU_CTRL_FIFO", fiu.join(format!("n{i}")).to_str().unwrap())
                .serve_env("FIU_ENABLE", "")
                .serve_env("FAKETIME_TIMESTAMP_FILE", clock.file.to_str().unwrap())
                .serve_env("FAKETIME_NO_CACHE", "1");
            if !clock.monotonic {
                node.serve_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            clocks.push(clock);
        }
        let disks: Vec<FreezableDisk> = nodes.iter().map(FreezableDisk::under).collect();
        let out = nodes[0].init(ports[0], &["--json"]);
        let secret =
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["cluster_secret"].as_str().unwrap().to_string();
        for i in 1..n {
            nodes[i].init(ports[i], &["--secret", &secret]);
        }
        for node in &mut nodes {
            node.serve();
        }
        let first = &nodes[0];
        setup(first, &["cluster", "settings", "set", "heartbeat", HEARTBEAT]);
        setup(first, &["cluster", "settings", "set", "dead_after", &format!("{}ms", DEAD_AFTER.as_millis())]);
        setup(first, &["cluster", "settings", "set", "master_cooldown", "0s"]);
        for i in 1..n {
            let addr = nodes[i].advertise();
            setup(&nodes[0], &["node", "add", &addr, "--yes"]);
        }
        let receiver = Receiver::start_on(&hub.hub_ip());
        setup(&nodes[0], &["alert", "add", "webhook", "hook", "--set", &format!("url={}", receiver.url), "--default"]);
        let targets: Vec<Target> = (0..2).map(|i| Target::start(&hub.hub_ip(), &format!("flip{i}"))).collect();
        let steady = Target::start(&hub.hub_ip(), "steady");
        for target in &targets {
            setup(&nodes[0], &["check", "add", "tcp", &target.name, &target.addr, "--interval", INTERVAL]);
        }
        let mut world = Self {
            hub,
            nodes,
            ports,
            targets,
            steady,
            receiver,
            history,
            disks,
            clocks,
            fiu,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            root,
            keep: std::cell::Cell::new(false),
        };
        for i in 0..n {
            world.history.record(Event::Node { node: i, ip: world.nodes[i].ip.parse().unwrap() });
        }
        world.converged(Duration::from_secs(30)).expect("the cluster forms");
        world.spawn_poller();
        world.spawn_workload();
        world
    }

    fn spawn_poller(&mut self) {
        let commands: Vec<(usize, Node)> = self.nodes.iter().enumerate().map(|(i, n)| (i, shadow(n))).collect();
        let (history, stop) = (self.history.clone(), self.stop.clone());
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, node) in &commands {
                    if let Some(status) = status(node, Duration::from_secs(2)) {
                        let me = status["node_id"].as_str().unwrap_or("").to_string();
                        let master = status["master"].as_str().map(str::to_string);
                        history.record(Event::Status {
                            node: *i,
                            term: status["term"].as_u64().unwrap_or(0),
                            is_master: master.as_deref() == Some(me.as_str()),
                            version: status["config_version"].as_u64().unwrap_or(0),
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }

    fn spawn_workload(&mut self) {
        let commands: Vec<Node> = self.nodes.iter().map(shadow).collect();
        let (history, stop) = (self.history.clone(), self.stop.clone());
        let steady = self.steady.addr.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let node = (seq as usize * 7 + seq as usize / 3) % commands.len();
                let name = format!("wl-{seq}");
                let invoked = Instant::now();
                let args = ["check", "add", "tcp", name.as_str(), steady.as_str(), "--interval", "60s"];
                let (result, version) = match run_bounded(&commands[node], &args, Duration::from_secs(15)) {
                    // "added check NAME (ID); config version N"
                    Some((0, out)) => {
                        let version = out.trim().rsplit_once("config version ").and_then(|(_, v)| v.parse().ok());
                        (OpResult::Ok, version)
                    }
                    Some((3, _)) | None => (OpResult::Unknown, None),
                    Some(_) => (OpResult::Definite, None),
                };
                history.record(Event::Op { name, node, invoked, completed: Instant::now(), result, version });
                std::thread::sleep(Duration::from_millis(1_000));
            }
        }));
    }

    /// Whether every node runs, answers and agrees on the master, the term
    /// and the version, within `within`.
    pub fn converged(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            // `qu status` lists every check: with thousands of them on a
            // loaded machine it takes seconds.
            let views: Vec<Option<serde_json::Value>> =
                self.nodes.iter().map(|n| status(n, Duration::from_secs(10))).collect();
            let key = |v: &serde_json::Value| (v["master"].clone(), v["term"].clone(), v["config_version"].clone());
            if views.iter().all(Option::is_some) {
                let keys: Vec<_> = views.iter().flatten().map(key).collect();
                if keys[0].0.is_string() && keys.iter().all(|k| *k == keys[0]) {
                    return Ok(());
                }
                last = format!("{keys:?}");
            } else {
                let silent: Vec<String> =
                    views.iter().enumerate().filter(|(_, v)| v.is_none()).map(|(i, _)| format!("n{i}")).collect();
                last = format!("{} did not answer `qu status` within 10 s", silent.join(", "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("no convergence within {within:?}: {last}"))
    }

    /// The node the others follow now, if they agree.
    pub fn master(&self) -> Option<usize> {
        for node in &self.nodes {
            if let Some(status) = status(node, Duration::from_secs(2))
                && let Some(master) = status["master"].as_str()
            {
                return self.nodes.iter().position(|n| n.node_id() == master);
            }
        }
        None
    }

    pub fn kill(&mut self, i: usize) {
        self.supervise();
        // Also reaps a process that is dying already.
        self.nodes[i].kill();
        self.history.record(Event::Fault(format!("kill -9 n{i}")));
    }

    pub fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// Restarts node `i` (if it is not running) with `env` for this start.
    pub fn restart_with(&mut self, i: usize, env: &[(&str, &str)]) {
        if self.nodes[i].exited().is_some() || !self.nodes[i].is_serving() {
            self.nodes[i].spawn_serve_with(env);
            if env.is_empty() {
                self.nodes[i].wait_answering();
            }
        }
        self.history.record(Event::Fault(format!("restart n{i}")));
    }

    /// A node that stopped by itself outside a fault that may stop it (a
    /// full disk, an fsync error, a crash point) is a violation: it is
    /// recorded with the last lines of its log, and started again, as
    /// systemd would.
    pub fn supervise(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(status) = self.stopped(i) {
                let tail = self.log_tail(i, 5);
                self.history
                    .record(Event::Violation(format!("n{i} stopped by itself ({status}); its log ends:\n{tail}")));
                self.restart(i);
            }
        }
    }

    /// After a fault that may stop node `i` for `reason` (a text its log
    /// then holds): if it stopped, its log must say why, and it is started
    /// again (what `Restart=on-failure` does). Whether it stopped.
    pub fn settle(&mut self, i: usize, reason: &str) -> bool {
        let Some(status) = self.stopped(i) else { return false };
        let tail = self.log_tail(i, 5);
        if tail.contains(reason) {
            self.history.record(Event::Fault(format!("n{i} stopped ({status}): {reason}")));
        } else {
            self.history.record(Event::Violation(format!(
                "n{i} stopped ({status}) without saying `{reason}`; its log ends:\n{tail}"
            )));
        }
        self.restart(i);
        true
    }

    /// The exit status of node `i` if it has stopped by itself (reaped).
    /// A process whose threads are still dying shows as dead in /proc
    /// before it can be reaped: that is waited for.
    pub fn stopped(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if !self.nodes[i].is_serving() {
                return None; // stopped by the harness, or never started
            }
            if let Some(status) = self.nodes[i].exited() {
                return Some(status);
            }
            if self.nodes[i].is_alive() || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = self.nodes[i].log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Switches fsync and fdatasync failing with EIO on or off in node
    /// `i`'s running daemon (libfiu, through its control FIFO).
    pub fn fsync_errors(&self, i: usize, on: bool) -> Result<(), String> {
        let pid = self.nodes[i].pid().ok_or("not running")?;
        let mut command = std::process::Command::new("fiu-ctrl");
        command.arg("-f").arg(self.fiu.join(format!("n{i}")));
        for name in ["posix/io/sync/fsync", "posix/io/sync/fdatasync"] {
            let action = if on { format!("enable name={name},failinfo=5") } else { format!("disable name={name}") };
            command.arg("-c").arg(action);
        }
        let out = command.arg(pid.to_string()).output().map_err(|e| format!("fiu-ctrl: {e}"))?;
        let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !said.contains("Error") { Ok(()) } else { Err(said.trim().to_string()) }
    }

    pub fn signal(&self, i: usize, signal: rustix::process::Signal, what: &str) {
        if self.nodes[i].is_alive() {
            self.nodes[i].signal(signal);
        }
        self.history.record(Event::Fault(format!("{what} n{i}")));
    }

    /// Keeps every node's directory and log after the run.
    pub fn keep(&self) {
        self.keep.set(true);
    }

    /// Stops the workload and the poller.
    pub fn quiesce(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Runs a setup command, retrying for up to 30 s while it is refused with
/// a hint to retry (a hand-over to the preferred master may be under way
/// as the cluster forms); any other failure, or an unknown outcome (exit
/// 3), ends the run.
fn setup(node: &Node, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node.qu(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return;
        }
        let transient = out.status.code() != Some(3) && stderr.contains("retry");
        assert!(transient && Instant::now() < deadline, "setup: qu {} failed: {stderr}", args.join(" "));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A second handle on a node's directory and socket, for the threads (it
/// never starts or stops the daemon).
fn shadow(node: &Node) -> Node {
    let mut copy = Node::in_dir(node.dir.parent().unwrap().parent().unwrap(), &node.name);
    copy.wrapper = node.wrapper.clone();
    copy.ip = node.ip.clone();
    copy
}

/// `qu status --json`, or nothing within `within`.
pub fn status(node: &Node, within: Duration) -> Option<serde_json::Value> {
    match run_bounded(node, &["status", "--json"], within)? {
        (0, out) => serde_json::from_str(&out).ok(),
        _ => None,
    }
}

/// Runs `qu ARGS`; its exit code and what it printed, or nothing if it
/// did not end in `within`.
fn run_bounded(node: &Node, args: &[&str], within: Duration) -> Option<(i32, String)> {
    let (code, out, err) = bounded(node.command().args(args), within)?;
    if code != 0 && std::env::var_os("QU_L3_VERBOSE").is_some() {
        eprintln!("qu {}: exit {code}: {}", args.join(" "), err.trim());
    }
    Some((code, out))
}

/// Runs `command`: its exit code, stdout and stderr, or nothing if it did
/// not end in `within` (it is killed). Both pipes are read while it runs:
/// one that fills up (64 KiB: a status of a few hundred checks) would
/// otherwise block the command forever.
fn bounded(command: &mut std::process::Command, within: Duration) -> Option<(i32, String, String)> {
    use std::process::Stdio;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    Some((status?.code().unwrap_or(-1), out, err))
}

/// What a run needs besides root: the tools, and a `qu` built with crash
/// points. Each missing one is named with what installs it.
fn preflight() {
    for (path, what) in [
        (FIU_RUN, "apt-get install fiu-utils (.ci/setup does)"),
        (FIU_POSIX, "apt-get install fiu-utils (.ci/setup does)"),
        (LIBFAKETIME, "apt-get install libfaketime (.ci/setup does)"),
    ] {
        assert!(std::path::Path::new(path).is_file(), "{path} is missing: {what}");
    }
    for tool in ["fiu-ctrl", "nft", "mkfs.ext4", "fsfreeze"] {
        let found = std::process::Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output();
        assert!(found.is_ok_and(|o| o.status.success()), "{tool} is missing (.ci/setup installs it)");
    }
    let out = std::process::Command::new(qu_tests::qu_bin()).args(["version", "--json"]).output().unwrap();
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        version["crash_points"] == serde_json::Value::Bool(true),
        "{} has no crash points: build it with `cargo build --release -p qu-cli -p qu-tests --bin qu --bin qu-l3 --features qu-cli/failpoints` (.ci/test does)",
        qu_tests::qu_bin().display()
    );
}

impl Drop for World {
    fn drop(&mut self) {
        self.quiesce();
        for node in &mut self.nodes {
            node.kill();
        }
        for disk in &self.disks {
            disk.thaw();
        }
        if self.keep.get() {
            // The disks are unmounted when dropped: their files are kept
            // beside the logs.
            for (i, disk) in self.disks.iter().enumerate() {
                disk.copy_to(&self.root.join(format!("n{i}")).join("data-kept"));
            }
        }
        self.disks.clear();
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_with_more_output_than_a_pipe_holds_still_ends() {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "head -c 300000 /dev/zero | tr '\\0' x; echo done >&2"]);
        let (code, out, err) = bounded(&mut command, Duration::from_secs(20)).expect("it ends");
        assert_eq!((code, out.len(), err.trim()), (0, 300_000, "done"));
        let mut slow = std::process::Command::new("sleep");
        slow.arg("30");
        assert!(bounded(&mut slow, Duration::from_millis(200)).is_none(), "cut at its deadline");
    }
}
