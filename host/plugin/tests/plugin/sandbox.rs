//! The sandbox against a hostile plugin (plugins/testing/hostile), real
//! components built from plugins/, real sockets on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qu_plugin::{CallError, Limits, Plugin, PluginError, Runtime, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn component(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(qu_plugin::ARTIFACTS).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn hostile(runtime: &Arc<Runtime>, allow: Vec<String>) -> Arc<Plugin> {
    runtime.load(Some("hostile"), Arc::from(component("hostile")), allow, Limits::default()).await.unwrap()
}

async fn run(runtime: &Runtime, plugin: &Plugin, target: &str) -> Result<qu_plugin::ProbeOutcome, CallError> {
    runtime.check(plugin, &[], target, Duration::from_secs(2)).await
}

fn permanent(result: Result<qu_plugin::ProbeOutcome, CallError>) -> String {
    match result {
        Err(CallError::Plugin { error: PluginError::Permanent(message), .. }) => message,
        other => panic!("expected the plugin's own permanent error, got {other:?}"),
    }
}

/// A loopback HTTP server answering every request with `response`;
/// counts the connections it accepted.
async fn http_server(response: String) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_is_stopped_at_its_deadline_and_others_keep_running() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = hostile(&runtime, Vec::new()).await;
    let spin = {
        let (runtime, plugin) = (runtime.clone(), plugin.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = runtime.check(&plugin, &[], "spin", Duration::from_millis(500)).await;
            (result, started.elapsed())
        })
    };
    // While it spins, a well-behaved call completes promptly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ok = run(&runtime, &plugin, "ok").await.unwrap();
    assert_eq!((ok.status, ok.message.as_str()), (Status::Up, "behaving"));
    let (result, took) = spin.await.unwrap();
    assert!(matches!(result, Err(CallError::Timeout { .. })), "{result:?}");
    assert_eq!(result.unwrap_err().to_string(), "plugin hostile timed out after 500ms");
    assert!(took < Duration::from_millis(1_500), "stopped near its deadline, took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_file_env_and_panic_each_fail_clearly() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = hostile(&runtime, Vec::new()).await;

    let alloc = run(&runtime, &plugin, "alloc").await.unwrap_err();
    assert_eq!(alloc.to_string(), "plugin hostile exceeded its memory limit of 64 MiB");

    let file = permanent(run(&runtime, &plugin, "read-file").await);
    assert!(file.starts_with("read /etc/passwd:"), "{file}");
    assert!(!file.contains("root:"), "no file content leaks: {file}");

    assert_eq!(permanent(run(&runtime, &plugin, "env").await), "no environment variables visible");

    let panic = run(&runtime, &plugin, "panic").await.unwrap_err();
    assert!(matches!(panic, CallError::Crashed { .. }), "{panic:?}");
    assert!(panic.to_string().starts_with("plugin hostile crashed: it panicked"), "{panic}");
    assert!(!panic.to_string().contains("backtrace"), "{panic}");

    // The same plugin still works afterwards: every call is a fresh instance.
    assert_eq!(run(&runtime, &plugin, "ok").await.unwrap().status, Status::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_only_to_allowed_destinations() {
    let runtime = Runtime::new(None).unwrap();
    let (port, accepted) =
        http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()).await;

    // Not allowed: neither a raw TCP connect nor an HTTP request gets out.
    let closed = hostile(&runtime, Vec::new()).await;
    let tcp = permanent(run(&runtime, &closed, &format!("connect:127.0.0.1:{port}")).await);
    assert!(tcp.starts_with(&format!("connect 127.0.0.1:{port}:")), "{tcp}");
    let http = permanent(run(&runtime, &closed, &format!("http:http://127.0.0.1:{port}/")).await);
    assert!(http.contains("denied by allow-list"), "{http}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the server");

    // Allowed by the plugin's allow list: both work.
    let open = hostile(&runtime, vec![format!("127.0.0.1:{port}")]).await;
    let tcp = run(&runtime, &open, &format!("connect:127.0.0.1:{port}")).await.unwrap();
    assert_eq!(tcp.message, format!("connected to 127.0.0.1:{port}"));
    let http = run(&runtime, &open, &format!("http:http://127.0.0.1:{port}/")).await.unwrap();
    assert_eq!(http.message, "status 200");
    // Another port on the same host stays closed.
    let other = permanent(run(&runtime, &open, &format!("http:http://127.0.0.1:{}/", port + 1)).await);
    assert!(other.contains("denied by allow-list"), "{other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_unlisted_host_is_denied() {
    let runtime = Runtime::new(None).unwrap();
    let (elsewhere, reached) = http_server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".into()).await;
    let (port, _) = http_server(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{elsewhere}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let plugin = hostile(&runtime, vec![format!("127.0.0.1:{port}")]).await;
    let denied = permanent(run(&runtime, &plugin, &format!("http:http://127.0.0.1:{port}/")).await);
    assert!(denied.contains("denied by allow-list"), "{denied}");
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect target was never contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_corrupt_files_are_refused_clearly() {
    let runtime = Runtime::new(None).unwrap();
    let load = |bytes: Vec<u8>| {
        let runtime = runtime.clone();
        async move { runtime.load(None, Arc::from(bytes), Vec::new(), Limits::default()).await.unwrap_err().to_string() }
    };
    assert!(load(b"#!/bin/sh\necho hi\n".to_vec()).await.contains("not a WebAssembly component"));
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    assert!(load(core_module).await.contains("build with `--target wasm32-wasip2`"));
    let mut truncated = component("echo");
    truncated.truncate(truncated.len() / 2);
    assert!(load(truncated).await.starts_with("not a valid component"));
    assert!(load(vec![0u8; qu_plugin::COMPONENT_BYTES_MAX + 1]).await.contains("more than the 10 MiB"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_by_hash() {
    use qu_plugin::CompileStats;
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let bytes: Arc<[u8]> = Arc::from(component("echo"));
    let first = runtime.load(None, bytes.clone(), Vec::new(), Limits::default()).await.unwrap();
    assert_eq!(runtime.compile_stats(), CompileStats { compiled: 1, from_cache: 0 }, "compiled once, cached");
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].to_string_lossy().starts_with(&first.sha256));
    let artifact = dir.path().join(&cached[0]);
    let written = std::fs::read(&artifact).unwrap();

    // A restarted node (a new runtime on the same directory) takes it from
    // the cache: no compile, the artifact untouched, and it runs.
    let restarted = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let hit = restarted.load(None, bytes.clone(), Vec::new(), Limits::default()).await.unwrap();
    assert_eq!(restarted.compile_stats(), CompileStats { compiled: 0, from_cache: 1 }, "a cache hit");
    assert_eq!(std::fs::read(&artifact).unwrap(), written, "the artifact was not rewritten");
    let answer = restarted.check(&hit, &[], "hello", Duration::from_secs(2)).await.unwrap();
    assert_eq!(answer.message, "hello");

    // A corrupt cache entry is recompiled, not trusted. (A new file: the
    // loaded artifact is mapped from the old one, and truncating a mapped
    // file in place would fault the process that maps it.)
    drop(hit);
    std::fs::remove_file(&artifact).unwrap();
    std::fs::write(&artifact, b"garbage").unwrap();
    let again = restarted.load(None, bytes, Vec::new(), Limits::default()).await.unwrap();
    assert_eq!(restarted.compile_stats(), CompileStats { compiled: 1, from_cache: 1 }, "recompiled");
    assert_eq!(again.info.name, "echo");
    assert_ne!(std::fs::read(&artifact).unwrap(), b"garbage", "the entry was replaced");
    let answer = restarted.check(&again, &[], "hello", Duration::from_secs(2)).await.unwrap();
    assert_eq!(answer.message, "hello");
}

/// What a plugin returns is bounded where the host takes it: a message of
/// 1 MiB and 500,000 metrics with long names come back as 1,024 characters
/// and 100 metrics of at most 100; an error text of 64 KiB as 1,024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_returns_is_cut_to_its_budget() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = hostile(&runtime, Vec::new()).await;
    let outcome = runtime.check(&plugin, &[], "flood:500000", Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome.metrics.len(), qu_plugin::METRICS_MAX);
    assert!(outcome.metrics.iter().all(|(name, _)| name.chars().count() <= qu_plugin::METRIC_NAME_CHARS_MAX + 1));
    assert_eq!(outcome.message.chars().count(), qu_plugin::MESSAGE_CHARS_MAX + 1, "cut, with `…`");
    assert!(outcome.message.ends_with('…'));
    let denied = permanent(runtime.check(&plugin, &[], "deny:200", Duration::from_secs(30)).await);
    assert!(denied.starts_with("200 requests denied; "), "{}", &denied[..40]);
    assert_eq!(denied.chars().count(), qu_plugin::MESSAGE_CHARS_MAX + 1);
}

fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn run_with(
    runtime: &Runtime,
    plugin: &Plugin,
    config: &[(&str, &str)],
    target: &str,
) -> Result<qu_plugin::ProbeOutcome, CallError> {
    runtime.check(plugin, &set(config), target, Duration::from_secs(2)).await
}

/// Settings open only what the plugin declares, and exactly that: an
/// address in an undeclared setting (`note`) opens nothing, on the socket
/// path or the HTTP one; a declared `HOST:PORT` (`endpoint`) or URL (`url`)
/// opens that one port and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_open_only_what_the_plugin_declares() {
    let runtime = Runtime::new(None).unwrap();
    let (port, accepted) =
        http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()).await;
    let plugin = hostile(&runtime, Vec::new()).await;
    let here = format!("127.0.0.1:{port}");
    let url = format!("http://{here}/");
    for note in ["127.0.0.1", here.as_str(), url.as_str()] {
        let tcp = permanent(run_with(&runtime, &plugin, &[("note", note)], &format!("connect:{here}")).await);
        assert!(tcp.contains("denied") || tcp.contains("ermission"), "note={note}: {tcp}");
        let http = permanent(run_with(&runtime, &plugin, &[("note", note)], &format!("http:{url}")).await);
        assert!(http.contains("denied by allow-list"), "note={note}: {http}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the server");

    let tcp = run_with(&runtime, &plugin, &[("endpoint", &here)], &format!("connect:{here}")).await.unwrap();
    assert_eq!(tcp.message, format!("connected to {here}"));
    let http = run_with(&runtime, &plugin, &[("url", &url)], &format!("http:{url}")).await.unwrap();
    assert_eq!(http.message, "status 200");
    let next = format!("127.0.0.1:{}", port + 1);
    let other = permanent(run_with(&runtime, &plugin, &[("endpoint", &here)], &format!("connect:{next}")).await);
    assert!(other.contains("denied") || other.contains("ermission"), "{other}");
    let other = permanent(run_with(&runtime, &plugin, &[("url", &url)], &format!("http:http://{next}/")).await);
    assert!(other.contains("denied by allow-list"), "{other}");
}

/// Loopback in its IPv6 forms, link-local and the metadata address are
/// refused unless named, on the socket path and the HTTP one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_addresses_are_refused_in_every_form() {
    let runtime = Runtime::new(None).unwrap();
    let (port, accepted) =
        http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()).await;
    // The plugin may reach 127.0.0.1 on another port only: nothing below is named.
    let plugin = hostile(&runtime, vec![format!("127.0.0.1:{}", port + 1)]).await;
    for target in [
        format!("connect:[::1]:{port}"),
        format!("connect:[::ffff:127.0.0.1]:{port}"),
        format!("connect:127.0.0.2:{port}"),
        "connect:169.254.169.254:80".to_string(),
        "connect:169.254.10.10:80".to_string(),
        "connect:[fe80::1]:80".to_string(),
        "connect:0.0.0.0:80".to_string(),
        format!("http:http://[::1]:{port}/"),
        format!("http:http://[::ffff:127.0.0.1]:{port}/"),
        format!("http:http://[::ffff:7f00:1]:{port}/"),
        "http:http://169.254.169.254/latest/meta-data/".to_string(),
        "http:http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        format!("http:http://0.0.0.0:{port}/"),
    ] {
        let denied = permanent(run(&runtime, &plugin, &target).await);
        // wasi:sockets itself refuses IPv4-mapped and unspecified addresses
        // (EINVAL) before the host's rules are asked; the HTTP path asks
        // the rules.
        let refused = denied.contains("denied") || denied.contains("ermission");
        let by_wasi = ["connect:[::ffff:", "connect:0.0.0.0:"].iter().any(|p| target.starts_with(p));
        let mapped = by_wasi && denied.contains("Invalid argument");
        assert!(refused || mapped, "{target}: {denied}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the server");
}

/// The node's own peer port: reached only through an exact allow-list
/// entry, even when the plugin may reach every other port of the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_peer_port_needs_an_exact_allow_list_entry() {
    let runtime = Runtime::new(None).unwrap();
    let (port, accepted) =
        http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()).await;
    runtime.set_peer_port(port);
    let any_port = hostile(&runtime, vec!["127.0.0.1".into()]).await;
    let tcp = permanent(run(&runtime, &any_port, &format!("connect:127.0.0.1:{port}")).await);
    assert!(tcp.contains("ermission") || tcp.contains("denied"), "{tcp}");
    let http = permanent(run(&runtime, &any_port, &format!("http:http://127.0.0.1:{port}/")).await);
    assert!(http.contains("denied by allow-list"), "{http}");
    let declared = permanent(
        run_with(
            &runtime,
            &any_port,
            &[("endpoint", &format!("127.0.0.1:{port}"))],
            &format!("connect:127.0.0.1:{port}"),
        )
        .await,
    );
    assert!(
        declared.contains("ermission") || declared.contains("denied"),
        "a declared setting is not enough: {declared}"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the peer port");

    let exact = hostile(&runtime, vec![format!("127.0.0.1:{port}")]).await;
    let http = run(&runtime, &exact, &format!("http:http://127.0.0.1:{port}/")).await.unwrap();
    assert_eq!(http.message, "status 200");
}

/// A call that opens sockets until refused gets 64 and a specific
/// refusal; they are all given back when the call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_opens_at_most_its_socket_budget() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = hostile(&runtime, Vec::new()).await;
    let (_, budget) = runtime.sockets_in_use();
    assert!(budget >= 64, "this test needs a node-wide budget of at least one call's: {budget}");
    let refused = permanent(runtime.check(&plugin, &[], "sockets", Duration::from_secs(10)).await);
    assert!(refused.starts_with(&format!("opened {} sockets, then: ", qu_plugin::SOCKETS_PER_CALL_MAX)), "{refused}");
    assert_eq!(runtime.sockets_in_use().0, 0, "every socket is given back with the call");
    // Two at once: each gets its own 64.
    let (a, b) = tokio::join!(
        runtime.check(&plugin, &[], "sockets", Duration::from_secs(10)),
        runtime.check(&plugin, &[], "sockets", Duration::from_secs(10))
    );
    for refused in [permanent(a), permanent(b)] {
        assert!(refused.starts_with("opened 64 sockets, then: "), "{refused}");
    }
}

/// tls-inspect's connections come out of the same budget: the 65th
/// handshake of a call is refused, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_made_connections_count_in_the_socket_budget() {
    let runtime = Runtime::new(None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let plugin = hostile(&runtime, vec![format!("127.0.0.1:{port}")]).await;
    let target = format!("inspect:100:127.0.0.1:{port}");
    let refused = permanent(runtime.check(&plugin, &[], &target, Duration::from_secs(60)).await);
    assert!(refused.starts_with("handshake 64: socket: refused a socket beyond the 64 one call may open"), "{refused}");
    assert_eq!(runtime.sockets_in_use().0, 0);
}

/// 64 concurrent calls of a plugin that allocates up to its 256 MiB cap,
/// 1 MiB at a time:
/// all together they never hold more than the node's budget (512 MiB), the
/// ones that find no room fail as `Busy` (a matter of this node: no vote),
/// the rest hit their own cap, and everything is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_stay_within_the_node_memory_budget() {
    let runtime = Runtime::new(None).unwrap();
    let limits = Limits { memory: qu_plugin::MEMORY_MAX, timeout: None };
    let plugin = runtime.load(Some("hostile"), Arc::from(component("hostile")), Vec::new(), limits).await.unwrap();
    assert_eq!(runtime.memory_in_use().1, qu_plugin::MEMORY_BUDGET_DEFAULT);
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampling = {
        let (runtime, peak) = (runtime.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(runtime.memory_in_use().0, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (runtime, plugin) = (runtime.clone(), plugin.clone());
            tokio::spawn(async move { runtime.check(&plugin, &[], "fill", Duration::from_secs(60)).await })
        })
        .collect();
    let (mut own_cap, mut busy) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Err(CallError::Memory { limit, .. }) => {
                assert_eq!(limit, qu_plugin::MEMORY_MAX);
                own_cap += 1;
            }
            Err(CallError::Busy { reason, .. }) => {
                assert!(reason.contains("plugin memory budget (512 MiB"), "{reason}");
                busy += 1;
            }
            other => panic!("expected a memory failure, got {other:?}"),
        }
    }
    sampling.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= qu_plugin::MEMORY_BUDGET_DEFAULT, "peak {} MiB", peak >> 20);
    assert!(busy > 0 && own_cap > 0, "{own_cap} hit their own cap, {busy} found no room");
    assert_eq!(runtime.memory_in_use().0, 0, "everything is given back");
    let fine = runtime.check(&plugin, &[], "ok", Duration::from_secs(5)).await.unwrap();
    assert_eq!(fine.message, "behaving");
}
