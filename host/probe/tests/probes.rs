//! Probes against real servers the tests start on loopback: HTTP (status
//! classes, body match, redirects, timeouts), HTTPS with a test CA, TCP
//! (open, refused, timeout) and ICMP to 127.0.0.1 and ::1.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use qu_core::config::NativeSpec;
use qu_core::monitor::Outcome;
use qu_probe::{ProbeResult, Probes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(2);

/// A small HTTP/1.1 server: `/status/N`, `/body`, `/redirect`, `/loop`, `/hang`.
async fn http_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, extra, body) = match path.as_str() {
                        p if p.starts_with("/status/") => {
                            (p[8..].parse().unwrap_or(500), String::new(), "x".to_string())
                        }
                        "/body" => (200, String::new(), format!("{}all systems nominal", "padding ".repeat(1000))),
                        "/redirect" => (302, "Location: /status/200\r\n".to_string(), String::new()),
                        "/loop" => (302, "Location: /loop\r\n".to_string(), String::new()),
                        "/to-metadata" => {
                            (302, "Location: http://169.254.169.254/latest/meta-data/\r\n".to_string(), String::new())
                        }
                        "/to-unspecified" => (302, "Location: http://0.0.0.0:9/\r\n".to_string(), String::new()),
                        "/to-loopback-v6" => (302, "Location: http://[::1]:9/\r\n".to_string(), String::new()),
                        "/ua" => {
                            (if head.contains("user-agent: qu/") { 200 } else { 400 }, String::new(), String::new())
                        }
                        "/hang" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        _ => (404, String::new(), String::new()),
                    };
                    let response =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{body}", body.len());
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn http(url: &str, settings: &[(&str, &str)]) -> NativeSpec {
    let settings: BTreeMap<String, String> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    NativeSpec::parse("http", url, &settings).unwrap().unwrap()
}

async fn probe(probes: &Probes, spec: &NativeSpec) -> ProbeResult {
    probes.run("check", spec, T).await
}

#[tokio::test]
async fn http_status_classes_body_match_and_redirects() {
    let addr = http_server().await;
    let probes = Probes::new();
    // (path, settings, expected outcome, expected detail)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Outcome, &'a str);
    let cases: &[Case] = &[
        ("/status/200", &[], Outcome::Up, "status 200"),
        ("/status/204", &[("expect", "2xx")], Outcome::Up, "status 204"),
        ("/status/503", &[], Outcome::Down, "status 503 (expected 2xx)"),
        ("/status/301", &[("expect", "200-299,301"), ("max_redirects", "0")], Outcome::Up, "status 301"),
        ("/status/404", &[("expect", "200")], Outcome::Down, "status 404 (expected 200)"),
        ("/body", &[("body_match", "nominal")], Outcome::Up, "status 200, body matches"),
        ("/body", &[("body_match", "on fire")], Outcome::Down, "status 200, body lacks \"on fire\""),
        ("/redirect", &[], Outcome::Up, "status 200"),
        ("/redirect", &[("max_redirects", "0")], Outcome::Down, "status 302 (expected 2xx)"),
        ("/loop", &[("max_redirects", "3")], Outcome::Down, "too many redirects"),
        // Redirects never reach what the target is not (loopback here).
        (
            "/to-metadata",
            &[],
            Outcome::Down,
            "redirect to 169.254.169.254 refused: a link-local address, and the check's target is not one",
        ),
        ("/to-unspecified", &[], Outcome::Down, "redirect to 0.0.0.0 refused: an unspecified address"),
        ("/ua", &[("method", "HEAD")], Outcome::Up, "status 200"),
    ];
    for (path, settings, outcome, detail) in cases {
        let result = probe(&probes, &http(&format!("http://{addr}{path}"), settings)).await;
        assert_eq!((result.outcome, result.detail.as_str()), (*outcome, *detail), "{path} {settings:?}");
    }
    // The target is loopback, so a redirect to another loopback address is
    // followed (and here finds nothing listening).
    let result = probe(&probes, &http(&format!("http://{addr}/to-loopback-v6"), &[])).await;
    assert_eq!(result.outcome, Outcome::Down);
    assert!(result.detail.starts_with("connect"), "followed: {}", result.detail);
}

#[tokio::test]
async fn http_timeouts_and_refusals_are_details_not_errors() {
    let addr = http_server().await;
    let probes = Probes::new();
    let started = std::time::Instant::now();
    let result = probes.run("hang", &http(&format!("http://{addr}/hang"), &[]), Duration::from_millis(300)).await;
    assert_eq!((result.outcome, result.detail.as_str()), (Outcome::Down, "timeout after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let result = probe(&probes, &http(&format!("http://{closed}/"), &[])).await;
    assert_eq!((result.outcome, result.detail.as_str()), (Outcome::Down, "connect refused"));
}

#[tokio::test]
async fn connections_are_reused_between_probes_of_a_check() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    // A body too large to arrive with the headers: the probe
                    // must read it for the connection to be reused.
                    let body = vec![b'x'; 256 * 1024];
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                }
            });
        }
    });
    let probes = Probes::new();
    let spec = http(&format!("http://{addr}/"), &[]);
    for _ in 0..5 {
        assert_eq!(probe(&probes, &spec).await.outcome, Outcome::Up);
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for five probes");
}

/// An HTTPS server whose certificate is signed by a test CA.
async fn https_server() -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let _ = ca;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    format!("https://localhost:{port}/")
}

#[tokio::test]
async fn https_checks_verify_certificates_unless_insecure() {
    let url = https_server().await;
    let probes = Probes::new();
    let result = probe(&probes, &http(&url, &[])).await;
    assert_eq!(result.outcome, Outcome::Down, "{result:?}");
    assert!(result.detail.starts_with("TLS:") || result.detail.contains("certificate"), "{}", result.detail);
    let result = probes.run("insecure", &http(&url, &[("insecure", "true")]), T).await;
    assert_eq!((result.outcome, result.detail.as_str()), (Outcome::Up, "status 200"));
}

#[tokio::test]
async fn tcp_open_refused_and_timeout() {
    let probes = Probes::new();
    let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = NativeSpec::parse("tcp", &open.local_addr().unwrap().to_string(), &BTreeMap::new()).unwrap().unwrap();
    assert_eq!(probe(&probes, &spec).await.detail, "connected");
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let spec = NativeSpec::parse("tcp", &closed.to_string(), &BTreeMap::new()).unwrap().unwrap();
    let result = probe(&probes, &spec).await;
    assert_eq!((result.outcome, result.detail.as_str()), (Outcome::Down, "connect refused"));
    // A listener whose accept queue is full drops new SYNs: the connect hangs.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let full = socket.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(full)).await
        {
            held.push(stream);
        }
    }
    let spec = NativeSpec::parse("tcp", &full.to_string(), &BTreeMap::new()).unwrap().unwrap();
    let result = probes.run("full", &spec, Duration::from_millis(300)).await;
    assert_eq!((result.outcome, result.detail.as_str()), (Outcome::Down, "timeout after 300ms"));
}

#[tokio::test]
async fn icmp_to_loopback_v4_and_v6() {
    let probes = Probes::new();
    for host in ["127.0.0.1", "::1", "localhost"] {
        let spec = NativeSpec::parse("icmp", host, &BTreeMap::new()).unwrap().unwrap();
        let result = probe(&probes, &spec).await;
        assert_eq!(result.outcome, Outcome::Up, "{host}: {result:?}");
        assert!(result.detail.starts_with("reply in"), "{host}: {}", result.detail);
    }
}
