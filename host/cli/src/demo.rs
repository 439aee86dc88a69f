//! `qu demo`: a local cluster on loopback in a temporary directory, started
//! as real `qu serve` processes, with its status printed as it runs.

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
    /// Seconds between status prints.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Keep the demo directory (node files and logs) after stopping.
    #[arg(long)]
    keep: bool,
}

struct DemoNode {
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
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
    println!("qu demo: starting a local node on loopback in {}", root.display());
    let node = start_node(root, "node1")?;
    wait_until_answering(&node)?;
    println!("node is up; its status follows (Ctrl-C stops the demo)\n");
    let started = Instant::now();
    loop {
        print_status(&node)?;
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

fn start_node(root: &Path, name: &str) -> anyhow::Result<DemoNode> {
    let dir = root.join(name);
    let socket = dir.join("quptime.sock");
    let port = free_port()?;
    init(
        &DataDir::new(&dir),
        InitOptions {
            advertise: format!("127.0.0.1:{port}"),
            bind: Some("127.0.0.1".parse()?),
            port: Some(port),
            secret: None,
        },
    )?;
    let log = fs::File::create(dir.join("qu.log"))?;
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("QUPTIME_DIR", &dir)
        .env("QUPTIME_SOCKET", &socket)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start qu serve")?;
    Ok(DemoNode { dir, socket, child })
}

fn wait_until_answering(node: &DemoNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ControlResponse::Status(_)) = crate::call(&node.socket, ControlRequest::Status) {
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
    match crate::call(&node.socket, ControlRequest::Status)? {
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
