//! Test harness for end-to-end tests: real `qu` processes in temporary
//! directories on loopback ports.
//!
//! A failing test prints the command lines it ran and every node's log (from
//! `Drop` while panicking), so a red CI run can be diagnosed without a rerun.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `qu` binary of this checkout, freshly built: the first call runs
/// `cargo build -p qu-cli --bin qu` for the profile and target directory
/// this test executable was built with (a no-op when nothing changed) and
/// takes the path cargo reports. Nothing inherited from the environment
/// can point the suite at another binary, and a stale one is rebuilt.
pub fn qu_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_qu).clone()
}

static QU_FEATURES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Builds `qu` with these cargo features (`qu-cli/failpoints` for the
/// fault suite); call before the first [`qu_bin`].
pub fn qu_features(features: &str) {
    assert!(QU_FEATURES.set(features.to_string()).is_ok(), "qu_features is set once, before qu_bin");
}

fn build_qu() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // A test runs as <target>/<profile>/deps/e2e-HASH, a bench binary as
    // <target>/<profile>/qu-bench.
    let mut profile_dir = exe.parent().expect("executable directory");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("profile directory");
    }
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name").to_string();
    let target_dir = profile_dir.parent().expect("target directory");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // Run from `cargo run` or `cargo test`, this process carries the outer
    // package's CARGO_* variables; build scripts that watch them (ring's)
    // would rerun and rebuild half the tree. Drop those; keep the user's
    // own cargo settings (CARGO_HOME, CARGO_BUILD_*, CARGO_PROFILE_*, ...).
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let per_package = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR"
            );
        if per_package {
            command.env_remove(key);
        }
    }
    command
        .args(["build", "-p", "qu-cli", "--bin", "qu", "--message-format=json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(features) = QU_FEATURES.get() {
        command.args(["--features", features]);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command.output().expect("run cargo to build qu");
    assert!(output.status.success(), "building qu failed (cargo build -p qu-cli --bin qu, profile {profile})");
    let found = String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        let is_qu = json["reason"] == "compiler-artifact"
            && json["target"]["name"] == "qu"
            && json["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
        is_qu.then(|| json["executable"].as_str().map(PathBuf::from)).flatten()
    });
    let bin = found.expect("cargo reported no `qu` executable");
    assert!(bin.is_file(), "{} is not a file", bin.display());
    bin
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops echoing every `qu` command and its output (tests keep the echo:
/// it is what a failing test shows; benchmarks turn it off).
pub fn quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A free TCP port on 127.0.0.1 for a daemon to listen on (bound and
/// released), below the kernel's ephemeral range: a daemon that a test
/// stops and starts again must find its port free, and a port from the
/// ephemeral range may meanwhile be taken as the source port of any
/// outgoing connection on the machine (the other nodes dial all the time).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if low < FLOOR + 1_000 {
        // No room below the ephemeral range: take the kernel's pick.
        return TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    }
    let span = u64::from(low - FLOOR);
    loop {
        // A random start per call (the hasher's keys are random per process).
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let port = FLOOR + (hasher.finish() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `condition` every 20 ms until it holds or `within` passes.
pub fn eventually<T>(within: Duration, what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node's directory, socket, and (while serving) daemon process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
    /// Variables for `qu serve` alone, set past the wrapper (`env K=V qu
    /// serve`): preload libraries that the wrapper and the CLI must not
    /// load.
    serve_env: Vec<(String, String)>,
    /// A command to run `qu` under, e.g. `ip netns exec NAME`.
    pub wrapper: Vec<String>,
    /// The loopback address it binds and advertises (`127.0.0.1` unless a
    /// test gives each node its own, to cut one off with a [`Firewall`]).
    pub ip: String,
    _root: Option<tempfile::TempDir>,
}

impl Node {
    /// A node in its own new temporary directory.
    pub fn new(name: &str) -> Self {
        let root = tempfile::Builder::new().prefix("qu-e2e-").tempdir().unwrap();
        let mut node = Self::in_dir(root.path(), name);
        node._root = Some(root);
        node
    }

    /// A node under `parent/name` (several nodes sharing one temp dir).
    pub fn in_dir(parent: &Path, name: &str) -> Self {
        let base = parent.join(name);
        fs::create_dir_all(&base).unwrap();
        Self {
            name: name.to_string(),
            dir: base.join("data"),
            socket: base.join("run").join("quptime.sock"),
            log: base.join("qu.log"),
            child: None,
            extra_env: Vec::new(),
            serve_env: Vec::new(),
            wrapper: Vec::new(),
            ip: "127.0.0.1".into(),
            _root: None,
        }
    }

    /// Sets an environment variable for every later command of this node.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.extra_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets an environment variable for `qu serve` alone (past the wrapper).
    pub fn serve_env(&mut self, key: &str, value: &str) -> &mut Self {
        self.serve_env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self) -> Command {
        self.command_with(&[])
    }

    /// [`Node::command`], with `env` set for the `qu` process alone (past
    /// the wrapper).
    fn command_with(&self, env: &[(String, String)]) -> Command {
        let mut program: Vec<std::ffi::OsString> = self.wrapper.iter().map(Into::into).collect();
        if !env.is_empty() {
            program.push("env".into());
            program.extend(env.iter().map(|(k, v)| format!("{k}={v}").into()));
        }
        program.push(qu_bin().into());
        let mut command = Command::new(&program[0]);
        command.args(&program[1..]);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("QUPTIME_DIR", &self.dir)
            .env("QUPTIME_SOCKET", &self.socket)
            .env("RUST_LOG", std::env::var("QU_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        command
    }

    /// Runs `qu ARGS` to completion.
    pub fn qu(&self, args: &[&str]) -> Output {
        let output = self.command().args(args).output().expect("run qu");
        if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            return output;
        }
        eprintln!(
            "[{}] $ qu {} -> {}\n{}{}",
            self.name,
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Runs `qu ARGS`, asserting success; returns stdout.
    pub fn qu_ok(&self, args: &[&str]) -> String {
        let output = self.qu(args);
        assert!(output.status.success(), "qu {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `qu ARGS`, asserting failure; returns stderr.
    pub fn qu_err(&self, args: &[&str]) -> String {
        let output = self.qu(args);
        assert!(!output.status.success(), "qu {} unexpectedly succeeded", args.join(" "));
        let stderr = String::from_utf8(output.stderr).unwrap();
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "errors end on one line starting with `error: `: {stderr}");
        stderr
    }

    /// `qu init --advertise IP:PORT --bind IP` plus `extra` (IP is
    /// `self.ip`, 127.0.0.1 by default).
    pub fn init(&self, port: u16, extra: &[&str]) -> String {
        let advertise = format!("{}:{port}", self.ip);
        let mut args = vec!["init", "--advertise", &advertise, "--bind", &self.ip];
        args.extend_from_slice(extra);
        self.qu_ok(&args)
    }

    /// Starts `qu serve` in the background, logging to `self.log`.
    pub fn spawn_serve(&mut self) {
        self.spawn_serve_with(&[]);
    }

    /// [`Node::spawn_serve`] with `env` added for this start alone.
    pub fn spawn_serve_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} is already serving", self.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut all = self.serve_env.clone();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let child =
            self.command_with(&all).arg("serve").stdout(Stdio::null()).stderr(log).spawn().expect("spawn qu serve");
        self.child = Some(child);
    }

    /// The exit status of a `qu serve` that ended on its own (reaped: the
    /// node can then be started again), or `None` while it runs or when
    /// none was started.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Starts `qu serve` and waits until `qu status` answers.
    pub fn serve(&mut self) {
        self.spawn_serve();
        self.wait_answering();
    }

    pub fn wait_answering(&mut self) {
        let socket = self.socket.clone();
        eventually(Duration::from_secs(20), &format!("{} answers on its socket", self.name), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("{} exited with {status} before answering; log:\n{}", self.name, self.log_text());
            }
            let output = self.command().args(["status", "--json"]).output().unwrap();
            (output.status.success() && socket.exists()).then_some(())
        });
    }

    /// Waits for `qu serve` to exit on its own (e.g. a startup refusal).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not serving");
        let status = eventually(within, "qu serve exits", || child.try_wait().unwrap());
        self.child = None;
        status
    }

    /// Starts `qu serve`, expects it to refuse (exit non-zero) and returns
    /// its log, whose last `error: ` line says why.
    pub fn refused_start(&mut self) -> String {
        self.spawn_serve();
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "{} started although it should have refused", self.name);
        self.log_text()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("not serving");
        rustix::process::kill_process(rustix::process::Pid::from_child(child), signal).unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.wait_exit(Duration::from_secs(20))
    }

    /// Polls `qu status --json` until `condition` holds on it (20 s at most).
    pub fn wait_status(&self, what: &str, condition: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        eventually(Duration::from_secs(20), &format!("{}: {what}", self.name), || {
            let output = self.command().args(["status", "--json"]).output().unwrap();
            let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            condition(&json).then_some(json)
        })
    }

    /// Waits until the daemon has written every change it persisted to its
    /// files (its log holds none: `replication.log_entries` is 0), so
    /// cluster.yaml is what the node holds.
    pub fn wait_files_written(&self) {
        self.wait_status("cluster.yaml holds every persisted change", |s| s["replication"]["log_entries"] == 0);
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.qu_ok(&["status", "--json"])).unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The daemon's own copy of the whole content, runtime state (check
    /// states, delivery records) included, which cluster.yaml does not hold.
    pub fn copy_path(&self) -> PathBuf {
        self.dir.join("store").join("cluster.yaml")
    }

    /// The daemon's copy as last written (see [`Node::wait_files_written`]).
    pub fn copy(&self) -> qu_core::config::ClusterConfig {
        let text = fs::read_to_string(self.copy_path()).unwrap();
        serde_yaml::from_str(&text).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- log of {} ({}) -----\n{}", self.name, self.log.display(), self.log_text());
        }
    }
}

/// File permission bits.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Timers the cluster tests run with (set through `qu cluster settings`).
pub const HEARTBEAT_MS: u64 = 100;
pub const DEAD_AFTER_MS: u64 = 500;

/// A cluster of real `qu serve` processes on loopback, formed the way an
/// operator does it: `qu init` (secret), `qu serve`, `qu node add`.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub secret: String,
    root: tempfile::TempDir,
}

impl Cluster {
    /// `size` nodes with shortened timers and the given master cooldown.
    pub fn new(size: usize, master_cooldown: &str) -> Self {
        Self::with_timers(size, &format!("{HEARTBEAT_MS}ms"), &format!("{DEAD_AFTER_MS}ms"), master_cooldown)
    }

    /// `size` nodes with the given timers (durations as `qu cluster settings set` takes them).
    pub fn with_timers(size: usize, heartbeat: &str, dead_after: &str, master_cooldown: &str) -> Self {
        Self::prepared(size, heartbeat, dead_after, master_cooldown, |_| {})
    }

    /// Like [`Cluster::with_timers`], with `prepare` run on each of the
    /// first `size` nodes before it is initialised (to give it a disk or an
    /// environment of its own).
    pub fn prepared(
        size: usize,
        heartbeat: &str,
        dead_after: &str,
        master_cooldown: &str,
        mut prepare: impl FnMut(&mut Node),
    ) -> Self {
        let root = tempfile::Builder::new().prefix("qu-e2e-").tempdir().unwrap();
        let mut first = Node::in_dir(root.path(), "n0");
        prepare(&mut first);
        let out = first.init(free_port(), &["--json"]);
        let secret =
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["cluster_secret"].as_str().unwrap().to_string();
        first.serve();
        // Order matters: dead_after (4s by default) must stay >= 3 x heartbeat.
        first.qu_ok(&["cluster", "settings", "set", "heartbeat", heartbeat]);
        first.qu_ok(&["cluster", "settings", "set", "dead_after", dead_after]);
        first.qu_ok(&["cluster", "settings", "set", "master_cooldown", master_cooldown]);
        let mut cluster = Self { nodes: vec![first], secret, root };
        for _ in 1..size {
            cluster.add_prepared_node(&mut prepare);
        }
        cluster.wait_converged();
        cluster
    }

    /// `size` nodes with short timers whose last one runs inside `netns`.
    /// The others advertise the namespace's host-side address, so every
    /// node reaches every other one, but the last one's 127.0.0.1 is its
    /// own: a target on this loopback is out of its reach.
    pub fn with_last_in(netns: &Netns, size: usize) -> Self {
        let root = tempfile::Builder::new().prefix("qu-e2e-").tempdir().unwrap();
        let mut nodes: Vec<Node> = (0..size).map(|i| Node::in_dir(root.path(), &format!("n{i}"))).collect();
        let advertise = |i: usize| {
            let ip = if i + 1 == size { &netns.ns_ip } else { &netns.host_ip };
            format!("{ip}:{}", free_port())
        };
        let out = nodes[0].qu_ok(&["init", "--advertise", &advertise(0), "--json"]);
        let secret =
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["cluster_secret"].as_str().unwrap().to_string();
        for (i, node) in nodes.iter_mut().enumerate().skip(1) {
            node.qu_ok(&["init", "--advertise", &advertise(i), "--secret", &secret]);
        }
        nodes[size - 1].wrapper = netns.wrapper();
        for node in &mut nodes {
            node.serve();
        }
        nodes[0].qu_ok(&["cluster", "settings", "set", "heartbeat", &format!("{HEARTBEAT_MS}ms")]);
        nodes[0].qu_ok(&["cluster", "settings", "set", "dead_after", &format!("{DEAD_AFTER_MS}ms")]);
        nodes[0].qu_ok(&["cluster", "settings", "set", "master_cooldown", "2m"]);
        for i in 1..size {
            let addr = nodes[i].advertise();
            nodes[0].qu_ok(&["node", "add", &addr, "--yes"]);
        }
        let cluster = Self { nodes, secret, root };
        cluster.wait_converged();
        cluster
    }

    /// Initialises, starts and adds one more node (through node 0's CLI, or
    /// the first running node's).
    pub fn add_node(&mut self) -> usize {
        self.add_prepared_node(&mut |_| {})
    }

    fn add_prepared_node(&mut self, prepare: &mut dyn FnMut(&mut Node)) -> usize {
        let index = self.nodes.len();
        let mut node = Node::in_dir(self.root.path(), &format!("n{index}"));
        prepare(&mut node);
        node.init(free_port(), &["--secret", &self.secret]);
        node.serve();
        let addr = node.advertise();
        self.nodes.push(node);
        let inviter = self.running().into_iter().find(|i| *i != index).expect("a running member");
        self.nodes[inviter].qu_ok(&["node", "add", &addr, "--yes"]);
        index
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Indices of nodes with a running daemon.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_serving()).collect()
    }

    /// Waits until every running node reports quorum, the same master, the
    /// same config version, and every member live; returns the master's index.
    pub fn wait_converged(&self) -> usize {
        let running = self.running();
        eventually(Duration::from_secs(30), "the cluster converges", || {
            let statuses: Vec<serde_json::Value> =
                running.iter().map(|i| self.nodes[*i].try_status()).collect::<Option<_>>()?;
            let first = &statuses[0];
            let agreed = statuses.iter().all(|s| {
                s["quorum"] == true
                    && s["master"] == first["master"]
                    && !s["master"].is_null()
                    && s["config_version"] == first["config_version"]
                    && s["peers"].as_array().is_some_and(|p| p.iter().all(|p| p["live"] == true))
            });
            agreed.then(|| self.index_of(first["master"].as_str().unwrap()))
        })
    }

    /// Waits until the nodes in `among` agree on a master with quorum, and
    /// that master is one of them; returns its index.
    pub fn wait_master(&self, among: &[usize]) -> usize {
        eventually(Duration::from_secs(30), "a master among the given nodes", || {
            let masters: Vec<String> = among
                .iter()
                .map(|i| self.nodes[*i].try_status())
                .collect::<Option<Vec<_>>>()?
                .iter()
                .map(|s| (s["quorum"] == true).then(|| s["master"].as_str().map(String::from)).flatten())
                .collect::<Option<Vec<_>>>()?;
            let index = self.index_of(&masters[0]);
            (masters.iter().all(|m| *m == masters[0]) && among.contains(&index)).then_some(index)
        })
    }

    pub fn index_of(&self, node_id: &str) -> usize {
        self.nodes.iter().position(|n| n.node_id() == node_id).unwrap_or_else(|| panic!("no node {node_id}"))
    }

    /// The bytes of every listed node's cluster.yaml are the same (within
    /// a few seconds: a daemon writes its files a moment after a change,
    /// which is durable in its log at once).
    pub fn assert_identical_configs(&self, nodes: &[usize]) {
        let texts = || -> Vec<String> {
            nodes.iter().map(|i| fs::read_to_string(self.nodes[*i].file("cluster.yaml")).unwrap()).collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = texts();
        while seen.iter().any(|t| *t != seen[0]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            seen = texts();
        }
        for (i, text) in nodes.iter().zip(&seen) {
            assert_eq!(*text, seen[0], "cluster.yaml of n{i} differs from n{}", nodes[0]);
        }
    }
}

impl Node {
    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Started by this harness and not stopped or killed by it since
    /// (whether the process still runs is [`Node::is_alive`]).
    pub fn is_serving(&self) -> bool {
        self.child.is_some()
    }

    /// The daemon process exists and has not exited: it is neither gone
    /// nor a zombie waiting to be reaped (a crash leaves one behind).
    pub fn is_alive(&self) -> bool {
        let Some(child) = &self.child else { return false };
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", child.id())) else { return false };
        // `pid (comm) STATE ...`: comm may hold spaces and parentheses.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    }

    /// `qu status --json`, or `None` if the daemon does not answer.
    pub fn try_status(&self) -> Option<serde_json::Value> {
        let output = self.command().args(["status", "--json"]).output().ok()?;
        output.status.success().then(|| serde_json::from_slice(&output.stdout).ok()).flatten()
    }

    pub fn node_id(&self) -> String {
        let text = fs::read_to_string(self.file("node.yaml")).unwrap();
        let line = text.lines().find(|l| l.starts_with("node_id:")).unwrap();
        line.trim_start_matches("node_id:").trim().to_string()
    }

    pub fn advertise(&self) -> String {
        let text = fs::read_to_string(self.file("node.yaml")).unwrap();
        let line = text.lines().find(|l| l.starts_with("advertise:")).unwrap();
        line.trim_start_matches("advertise:").trim().to_string()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Current value of a `qu cluster settings` key on this node.
    pub fn setting(&self, key: &str) -> String {
        let json: serde_json::Value = serde_json::from_str(&self.qu_ok(&["cluster", "settings", "--json"])).unwrap();
        match &json[key] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// Drops the `peers:` entry of `node_id` from a cluster.yaml text, as an
/// operator's editor would (the rest of the text is kept line for line).
pub fn remove_peer(yaml: &str, node_id: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line.starts_with("- node_id: ") {
            skipping = line.ends_with(node_id);
        } else if !line.starts_with(' ') {
            skipping = false;
        }
        if !skipping {
            out.push(line);
        }
    }
    out.join("\n") + "\n"
}

/// Replaces the top-level `version:` line, like `sed -i 's/^version:.*/version: N/'`.
pub fn set_version(yaml: &str, version: u64) -> String {
    let lines: Vec<String> = yaml
        .lines()
        .map(|l| if l.starts_with("version:") { format!("version: {version}") } else { l.to_string() })
        .collect();
    lines.join("\n") + "\n"
}

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount a tmpfs at {} (the test needs root)", at.display());
        Self(at.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// An HTTP target on loopback that answers 200 while `up`, 503 otherwise
/// (keep-alive, one thread per connection).
pub struct HttpTarget {
    pub url: String,
    pub up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub fn http_target() -> HttpTarget {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = up.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let status = if flag.load(Ordering::SeqCst) { "200 OK" } else { "503 Unavailable" };
                            let response = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                            if stream.write_all(response.as_bytes()).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    HttpTarget { url, up }
}

/// One request a [`Receiver`] got, and how it was answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub verb: String,
    pub check: String,
    pub test: bool,
    pub json: serde_json::Value,
    /// The status it was answered with; `None` while it is held open, `Some(0)`
    /// when the sender hung up before an answer.
    pub status: Option<u16>,
    /// When it arrived.
    pub at: Instant,
    /// The address it came from (which node sent it, on a fault-suite
    /// network where each node has its own).
    pub from: Option<std::net::IpAddr>,
}

impl Received {
    /// Answered with a 2xx status: the sender was told it was delivered.
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A webhook receiver on loopback that records every POST (the webhook
/// sink's JSON) with the answer it got: 204 while `up`, 503 otherwise (a
/// sink that is down). While `hold` is set, a request is kept open without
/// an answer until `hold` is cleared or the sender hangs up.
pub struct Receiver {
    pub url: String,
    pub up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A receiver on `ip` (the bridge address of a fault-suite network).
    pub fn start_on(ip: &str) -> Self {
        use std::io::{BufRead, BufReader, Read};
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = TcpListener::bind(format!("{ip}:0")).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let hold = Arc::new(AtomicBool::new(false));
        let got: Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let (flag, held, log) = (up.clone(), hold.clone(), got.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (flag, held, log) = (flag.clone(), held.clone(), log.clone());
                std::thread::spawn(move || {
                    let from = stream.peer_addr().ok().map(|a| a.ip());
                    let mut writer = stream.try_clone().unwrap();
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
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let index = {
                            let mut log = log.lock().unwrap();
                            log.push(Received {
                                key: json["idempotency_key"].as_str().unwrap_or("").to_string(),
                                verb: json["transition"]["verb"].as_str().unwrap_or("").to_string(),
                                check: json["check"]["name"].as_str().unwrap_or("").to_string(),
                                test: json["test"].as_bool().unwrap_or(false),
                                json,
                                status: None,
                                at: Instant::now(),
                                from,
                            });
                            log.len() - 1
                        };
                        let answered = answer(&mut writer, &flag, &held);
                        log.lock().unwrap()[index].status = Some(answered);
                        if answered == 0 {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url, up, hold, got }
    }

    /// Real (non-test) alerts with `verb` that were accepted (2xx):
    /// (distinct keys, raw count).
    pub fn count(&self, verb: &str) -> (usize, usize) {
        let got = self.got.lock().unwrap();
        let raw: Vec<&Received> = got.iter().filter(|r| !r.test && r.verb == verb && r.accepted()).collect();
        let distinct: std::collections::BTreeSet<&str> = raw.iter().map(|r| r.key.as_str()).collect();
        (distinct.len(), raw.len())
    }

    /// Every real (non-test) request, whatever it was answered, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| !r.test).cloned().collect()
    }

    /// Real requests that arrived after `since`, whatever they were answered.
    pub fn requests_since(&self, since: Instant) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.at >= since).collect()
    }
}

/// Answers one request as the flags say: holds it while `hold` is set
/// (returning 0 if the sender hangs up meanwhile), then 204 or 503.
fn answer(
    writer: &mut std::net::TcpStream,
    up: &std::sync::atomic::AtomicBool,
    hold: &std::sync::atomic::AtomicBool,
) -> u16 {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if hold.load(Ordering::SeqCst) {
        writer.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut probe = [0u8; 1];
        while hold.load(Ordering::SeqCst) {
            match writer.peek(&mut probe) {
                Ok(0) => return 0,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return 0,
            }
        }
        writer.set_read_timeout(None).unwrap();
    }
    let (code, status) =
        if up.load(Ordering::SeqCst) { (204, "204 No Content") } else { (503, "503 Service Unavailable") };
    match writer.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()) {
        Ok(()) => code,
        Err(_) => 0,
    }
}

/// A 3-node cluster with a default webhook alert `hook` to a [`Receiver`]
/// and an HTTP check `web` (1 s interval) on an [`HttpTarget`], both added
/// through a follower; returns once the check's first UP alert arrived.
pub fn alerting_cluster() -> (Cluster, Receiver, HttpTarget) {
    alerting(Cluster::new(3, "2m"))
}

/// [`alerting_cluster`] on a cluster of 3 built by the caller.
pub fn alerting(cluster: Cluster) -> (Cluster, Receiver, HttpTarget) {
    let master = cluster.wait_converged();
    let follower = (0..3).find(|i| *i != master).unwrap();
    let receiver = Receiver::start();
    let target = http_target();
    cluster.nodes[follower].qu_ok(&["alert", "add", "webhook", "hook", "--url", &receiver.url, "--default"]);
    cluster.nodes[follower].qu_ok(&[
        "check",
        "add",
        "http",
        "web",
        &target.url,
        "--interval",
        "1s",
        "--timeout",
        "500ms",
    ]);
    eventually(Duration::from_secs(20), "the first UP alert", || (receiver.count("UP").0 >= 1).then_some(()));
    (cluster, receiver, target)
}

/// One copy of the content that a [`ConfigWatch`] saw on a node.
#[derive(Debug, Clone)]
pub struct SeenConfig {
    pub node: usize,
    pub config: qu_core::config::ClusterConfig,
}

/// Reads every watched node's copy every 10 ms in the background
/// and keeps each distinct copy it sees, so a test can assert on the
/// states a cluster went through (transitions committed, versions
/// written) instead of on log lines. Stops when dropped.
pub struct ConfigWatch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<SeenConfig>>>,
    /// Passes over every file completed so far.
    passes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConfigWatch {
    /// Watches the daemon's copy (`store/cluster.yaml`, which holds the
    /// runtime state too) of every node of `cluster` (by index).
    pub fn start(cluster: &Cluster) -> Self {
        Self::paths(cluster.nodes.iter().map(|n| n.copy_path()).collect())
    }

    pub fn paths(paths: Vec<PathBuf>) -> Self {
        use std::sync::atomic::Ordering;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<SeenConfig>>> = Default::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let passes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, done, passed) = (seen.clone(), stop.clone(), passes.clone());
        let thread = std::thread::spawn(move || {
            let mut last: Vec<String> = vec![String::new(); paths.len()];
            while !done.load(Ordering::SeqCst) {
                for (node, path) in paths.iter().enumerate() {
                    let Ok(text) = fs::read_to_string(path) else { continue };
                    if text == last[node] {
                        continue;
                    }
                    // A hand edit in progress or a file being replaced: skip it.
                    let Ok(config) = serde_yaml::from_str::<qu_core::config::ClusterConfig>(&text) else { continue };
                    last[node] = text;
                    log.lock().unwrap().push(SeenConfig { node, config });
                }
                passed.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { seen, passes, stop, thread: Some(thread) }
    }

    /// Waits until every running node of `cluster` has written what it
    /// holds to its files (a daemon writes them a moment after a change),
    /// and the watch has read every file since: what it has seen then
    /// includes what the nodes hold now.
    pub fn catch_up(&self, cluster: &Cluster) {
        for i in cluster.running() {
            cluster.nodes[i].wait_files_written();
        }
        let from = self.passes.load(std::sync::atomic::Ordering::SeqCst);
        eventually(Duration::from_secs(5), "the watch reads every file again", || {
            (self.passes.load(std::sync::atomic::Ordering::SeqCst) >= from + 2).then_some(())
        });
    }

    /// Every distinct copy seen so far, in the order seen.
    pub fn seen(&self) -> Vec<SeenConfig> {
        self.seen.lock().unwrap().clone()
    }

    /// The distinct committed transitions of check `name` into `to`
    /// (`up`, `down`) that any node held, by transition id.
    pub fn transitions(&self, name: &str, to: &str) -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        for seen in self.seen.lock().unwrap().iter() {
            let Some(check) = seen.config.checks.iter().find(|c| c.name == name) else { continue };
            if let Some(status) = seen.config.states.get(&check.id)
                && status.state.to_string() == to
            {
                found.insert(status.transition.clone());
            }
        }
        found
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A network namespace with a veth link to this one (a /30 in
/// 10.231.ID.0), removed when dropped. Inside it, 127.0.0.1 is the
/// namespace's own loopback: what listens on this one is out of reach.
pub struct Netns {
    pub name: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Netns {
    pub fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("iproute2");
            (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
        };
        // Tests run in parallel processes: take the first free id.
        let start = std::process::id() * 7 + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for offset in 0..250 {
            let id = (start + offset) % 250 + 1;
            let name = format!("qu-test-{id}");
            if !ip(&["netns", "add", &name]).0 {
                continue;
            }
            let netns = Self { name: name.clone(), host_ip: format!("10.231.{id}.1"), ns_ip: format!("10.231.{id}.2") };
            let (host_if, ns_if) = (format!("qh{id}"), format!("qn{id}"));
            let must = |args: &[&str]| {
                let (ok, err) = ip(args);
                assert!(ok, "ip {args:?}: {err}");
            };
            must(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
            must(&["link", "set", &ns_if, "netns", &name]);
            must(&["addr", "add", &format!("{}/30", netns.host_ip), "dev", &host_if]);
            must(&["link", "set", &host_if, "up"]);
            must(&["-n", &name, "addr", "add", &format!("{}/30", netns.ns_ip), "dev", &ns_if]);
            must(&["-n", &name, "link", "set", &ns_if, "up"]);
            must(&["-n", &name, "link", "set", "lo", "up"]);
            return netns;
        }
        panic!("no free network namespace id (ip netns add qu-test-N failed for every N; is this root?)");
    }

    /// The wrapper that runs a command inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", self.name.as_str()].map(String::from).to_vec()
    }

    /// The `/etc/hosts` that commands run through [`Netns::wrapper`] see
    /// (`ip netns exec` mounts `/etc/netns/NAME/hosts` over it).
    pub fn hosts(&self, text: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hosts"), text).unwrap();
    }

    /// Runs `f` on a thread that lives inside the namespace: the sockets it
    /// opens are the namespace's (a server on its loopback, say).
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let namespace = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&namespace),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the test namespace");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// One node's wall clock, steppable while it runs: the node's processes
/// run under libfaketime (`LD_PRELOAD`), reading their offset from a file
/// on every call; monotonic clocks are left alone, as a real clock step
/// leaves them.
pub struct WallClock {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where Debian's libfaketime puts its multi-threaded library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl WallClock {
    /// Puts `node` (every later command of it) on a steppable clock, at +0.
    pub fn for_node(node: &mut Node) -> Self {
        assert!(
            Path::new(LIBFAKETIME).is_file(),
            "{LIBFAKETIME} is missing (apt-get install libfaketime; .ci/setup does)"
        );
        let dir = tempfile::Builder::new().prefix("qu-clock-").tempdir().unwrap();
        let file = dir.path().join("offset");
        fs::write(&file, "+0\n").unwrap();
        node.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", file.to_str().unwrap())
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        Self { file, _dir: dir }
    }

    /// Steps the wall clock to `offset` from real time (`+2h`, `-30m`, `+0`).
    pub fn set(&self, offset: &str) {
        fs::write(&self.file, format!("{offset}\n")).unwrap();
    }
}

/// A node's data directory on an ext4 image of its own that a test can
/// freeze (`fsfreeze`): every write and fsync there blocks until thawed,
/// as on a disk that stopped answering. Thawed and unmounted when dropped.
pub struct FreezableDisk {
    mount: PathBuf,
    frozen: std::cell::Cell<bool>,
    _image: tempfile::TempDir,
}

impl FreezableDisk {
    /// Mounts a fresh 64 MiB ext4 at `node`'s data directory (before `init`).
    pub fn under(node: &Node) -> Self {
        let image_dir = tempfile::Builder::new().prefix("qu-disk-").tempdir().unwrap();
        let image = image_dir.path().join("disk.img");
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
            assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        run("mkfs.ext4", &["-q".as_ref(), image.as_os_str()]);
        fs::create_dir_all(&node.dir).unwrap();
        run("mount", &["-o".as_ref(), "loop".as_ref(), image.as_os_str(), node.dir.as_os_str()]);
        let _ = fs::remove_dir(node.dir.join("lost+found"));
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&node.dir, fs::Permissions::from_mode(0o700)).unwrap();
        }
        Self { mount: node.dir.clone(), frozen: std::cell::Cell::new(false), _image: image_dir }
    }

    pub fn freeze(&self) {
        let ok = Command::new("fsfreeze").arg("-f").arg(&self.mount).status().unwrap().success();
        assert!(ok, "fsfreeze -f {}", self.mount.display());
        self.frozen.set(true);
    }

    /// Fills the disk: a filler file takes every free block, so the
    /// next write that needs one fails with ENOSPC.
    pub fn fill(&self) {
        use std::io::Write;
        let mut filler = fs::File::create(self.filler()).unwrap();
        let block = vec![0u8; 1 << 16];
        let mut size = block.len();
        while size > 0 {
            match filler.write(&block[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => size /= 2,
            }
        }
        let _ = filler.sync_all();
    }

    /// Frees what [`FreezableDisk::fill`] took.
    pub fn unfill(&self) {
        let _ = fs::remove_file(self.filler());
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Copies the disk's files to `to` (what a failed run keeps, before
    /// the disk is unmounted).
    pub fn copy_to(&self, to: &Path) {
        let _ = Command::new("cp").arg("-a").arg(&self.mount).arg(to).status();
    }

    pub fn thaw(&self) {
        if self.frozen.replace(false) {
            let ok = Command::new("fsfreeze").arg("-u").arg(&self.mount).status().unwrap().success();
            assert!(ok, "fsfreeze -u {}", self.mount.display());
        }
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // A process blocked on a frozen disk cannot even be killed: thaw first.
        if self.frozen.get() {
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).status();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// A firewall rule for one test (nftables): new TCP connections to a port
/// are dropped (their SYNs), established ones and everything else pass.
/// Stateless on purpose: conntrack would take the first packet it sees of
/// an existing connection for a new one. Removed when dropped.
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// Drops new connections to `port` on every address of this host.
    pub fn drop_new_connections_to(port: u16) -> Self {
        Self::install(&format!("p{port}"), &format!("tcp dport {port} tcp flags & (syn | ack) == syn drop"))
    }

    /// Drops every packet from `from` to any of `to` (loopback addresses of
    /// nodes with a [`Node::ip`] of their own): a one-way cut.
    pub fn drop_from_to(from: &str, to: &[&str]) -> Self {
        let name = from.replace('.', "_");
        Self::install(&name, &format!("ip saddr {from} ip daddr {{ {} }} drop", to.join(", ")))
    }

    fn install(name: &str, rule: &str) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test changes the firewall and needs root (CI runs as root)"
        );
        let table = format!("qu_e2e_{}_{name}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft (apt-get install nftables)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {rules}");
        Self { table }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

/// One request a [`StandIn`] got.
#[derive(Debug, Clone)]
pub struct StandInRequest {
    pub method: String,
    /// The path and query, as sent.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
    /// What it was answered.
    pub status: u16,
}

impl StandInRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// An answer of a [`StandIn`]: status, headers, body.
pub type StandInAnswer = (u16, Vec<(String, String)>, String);

/// A local stand-in for a third-party HTTP service (a sink's API) on
/// loopback: records every request and answers what `answer` says, given
/// the request and the requests before it — so a test makes it behave like
/// the service (its success body, its 429 with its retry hint, its error
/// bodies, its deduplication).
pub struct StandIn {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<StandInRequest>>>,
}

impl StandIn {
    pub fn start(answer: impl Fn(&StandInRequest, &[StandInRequest]) -> StandInAnswer + Send + Sync + 'static) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got: std::sync::Arc<std::sync::Mutex<Vec<StandInRequest>>> = Default::default();
        let (log, answer) = (got.clone(), std::sync::Arc::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, answer) = (log.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut headers = Vec::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            headers.push((k.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let length = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0usize);
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut request = StandInRequest {
                        method,
                        path,
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        at: Instant::now(),
                        status: 0,
                    };
                    let (status, extra, text) = {
                        let before = log.lock().unwrap();
                        answer(&request, &before)
                    };
                    request.status = status;
                    log.lock().unwrap().push(request);
                    let mut head = format!(
                        "HTTP/1.1 {status} Stand-in\r\ncontent-length: {}\r\nconnection: close\r\n",
                        text.len()
                    );
                    for (k, v) in extra {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = writer.write_all(head.as_bytes());
                    let _ = writer.write_all(text.as_bytes());
                });
            }
        });
        StandIn { url, got }
    }

    pub fn requests(&self) -> Vec<StandInRequest> {
        self.got.lock().unwrap().clone()
    }
}
