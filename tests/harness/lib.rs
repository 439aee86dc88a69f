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

/// The built `qu` binary: `$QU_BIN`, or `target/<profile>/qu` next to this
/// test executable (the README's test command builds it first).
pub fn qu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("QU_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-HASH -> target/<profile>/qu
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let qu = profile_dir.join("qu");
    assert!(qu.exists(), "{} not found: build it first with `cargo build -p qu-cli` (or set QU_BIN)", qu.display());
    qu
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a
/// machine where tests are the only ones picking ports at random).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
            _root: None,
        }
    }

    /// Sets an environment variable for every later command of this node.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.extra_env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(qu_bin());
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("QUPTIME_DIR", &self.dir)
            .env("QUPTIME_SOCKET", &self.socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        command
    }

    /// Runs `qu ARGS` to completion.
    pub fn qu(&self, args: &[&str]) -> Output {
        let output = self.command().args(args).output().expect("run qu");
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
        assert!(stderr.starts_with("error: "), "errors start with `error: `: {stderr}");
        stderr
    }

    /// `qu init --advertise 127.0.0.1:PORT --bind 127.0.0.1` plus `extra`.
    pub fn init(&self, port: u16, extra: &[&str]) -> String {
        let advertise = format!("127.0.0.1:{port}");
        let mut args = vec!["init", "--advertise", &advertise, "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        self.qu_ok(&args)
    }

    /// Starts `qu serve` in the background, logging to `self.log`.
    pub fn spawn_serve(&mut self) {
        assert!(self.child.is_none(), "{} is already serving", self.name);
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = self.command().arg("serve").stdout(Stdio::null()).stderr(log).spawn().expect("spawn qu serve");
        self.child = Some(child);
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

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.qu_ok(&["status", "--json"])).unwrap()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
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
