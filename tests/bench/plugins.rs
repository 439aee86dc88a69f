//! Plugin numbers: compile vs cache hit, a no-IO call, an HTTP probe
//! through a plugin against the native probe on the same target, the idle
//! RSS of a node with the built-ins loaded, and the binary's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qu_plugin::{Limits, Runtime};

use crate::report::{Goal, Quantity, Report};
use crate::{ms, percentile, rss_kib};

fn artifact(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(qu_plugin::ARTIFACTS).join(format!("{name}.wasm"))).expect("built plugin")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 0.5)
}

/// An HTTP/1.1 keep-alive server answering `{"status":"ok"}`.
fn json_target() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let body = r#"{"status":"ok"}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

pub async fn plugins(report: &mut Report) {
    println!("plugins");
    let dns: Arc<[u8]> = Arc::from(artifact("dns"));

    // Compiling (fresh cache each time) against loading from the cache.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
        let started = Instant::now();
        runtime.load(None, dns.clone(), Vec::new(), Limits::default()).await.unwrap();
        cold.push(started.elapsed());
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    runtime.load(None, dns.clone(), Vec::new(), Limits::default()).await.unwrap();
    let mut warm = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        runtime.load(None, dns.clone(), Vec::new(), Limits::default()).await.unwrap();
        warm.push(started.elapsed());
    }
    report.info(
        &format!("plugins: load dns ({} KiB)", dns.len() / 1024),
        format!(
            "compile {} (median of 5), from the cache {} (median of 20; both include the info call)",
            ms(median(cold)),
            ms(median(warm))
        ),
    );

    // A call with no IO: fresh store + instance + call, every time.
    let echo = runtime.load(None, Arc::from(artifact("echo")), Vec::new(), Limits::default()).await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        runtime.check(&echo, &[], "x", Duration::from_secs(1)).await.unwrap();
        calls.push(started.elapsed());
    }
    calls.sort();
    report.info("plugins: no-IO check call, p99 (2,000 calls)", ms(percentile(&calls, 0.99)));
    report.check(
        "plugins: no-IO check call, p50 (2,000 calls)",
        Quantity::duration(percentile(&calls, 0.5)),
        Goal::AtMost(Quantity::millis(0.1)),
    );

    // The same HTTP target through the native probe and through a plugin.
    let url = json_target();
    let probes = qu_probe::Probes::new();
    let spec = qu_core::config::NativeSpec::parse("http", &url, &Default::default()).unwrap().unwrap();
    let mut native = Vec::new();
    for _ in 0..1_000 {
        let started = Instant::now();
        let result = probes.run("bench", &spec, Duration::from_secs(2)).await;
        assert_eq!(result.outcome, qu_core::monitor::Outcome::Up);
        native.push(started.elapsed());
    }
    let json = runtime.load(None, Arc::from(artifact("http_json")), Vec::new(), Limits::default()).await.unwrap();
    let settings = vec![("field".to_string(), "status".to_string()), ("expect".to_string(), "ok".to_string())];
    let mut plugin = Vec::new();
    for _ in 0..1_000 {
        let started = Instant::now();
        let found = runtime.check(&json, &settings, &url, Duration::from_secs(2)).await.unwrap();
        assert_eq!(found.status, qu_plugin::Status::Up, "{}", found.message);
        plugin.push(started.elapsed());
    }
    let (native, plugin) = (median(native), median(plugin));
    report.info(
        "plugins: HTTP probe, same loopback target (medians of 1,000)",
        format!("native {} vs plugin {}", ms(native), ms(plugin)),
    );
    // Signed: on a noisy machine the plugin's median can come out below the
    // native one, and is shown as it is.
    let overhead_ms = (plugin.as_secs_f64() - native.as_secs_f64()) * 1000.0;
    report.check(
        "plugins: HTTP probe overhead, plugin over native",
        Quantity::millis(overhead_ms),
        Goal::AtMost(Quantity::millis(0.3)),
    );

    // Idle RSS of a node with the built-ins loaded: first start (compiles
    // them) and a restart (loads them from the cache).
    let mut node = qu_tests::Node::new("rss");
    node.init(qu_tests::free_port(), &[]);
    for (label, settle) in [("first start (compiling the built-ins)", 6), ("restart (built-ins from the cache)", 6)] {
        node.serve();
        std::thread::sleep(Duration::from_secs(settle));
        let pid = node.pid().expect("serving");
        // VmRSS is in KiB; the goal is in MB (10^6 bytes).
        let rss = rss_kib(pid).map(|kib| Quantity::megabytes(kib as f64 * 1024.0 / 1e6));
        report.check(&format!("plugins: idle node RSS, {label}"), rss, Goal::AtMost(Quantity::megabytes(40.0)));
        node.terminate();
    }
    let bin = qu_tests::qu_bin();
    match std::fs::metadata(&bin) {
        Ok(meta) => report.info(
            "plugins: qu binary",
            format!("{:.1} MiB ({})", meta.len() as f64 / (1024.0 * 1024.0), bin.display()),
        ),
        Err(error) => report.error("plugins: qu binary", format!("{}: {error}", bin.display())),
    }
    println!();
}
