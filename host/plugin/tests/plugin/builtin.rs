//! The built-in check plugins against real servers on loopback: dnsmasq
//! for `dns`, TLS servers with certificates from a test CA for `tls`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qu_plugin::{CallError, Limits, Plugin, PluginError, Runtime, Status};
use tokio::net::TcpListener;

async fn built_in(runtime: &Arc<Runtime>, name: &str) -> Arc<Plugin> {
    let (_, bytes) = qu_plugin::BUILT_IN.iter().find(|(n, _)| *n == name).expect("built in");
    runtime.load(Some(name), Arc::from(*bytes), Vec::new(), Limits::default()).await.unwrap()
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// dnsmasq answering for `.test` from its command line only.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq() -> Dnsmasq {
    let port = free_udp_port();
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--user=root",
            &format!("--port={port}"),
            "--local=/test/",
            "--host-record=web.test,192.0.2.10",
            "--host-record=six.test,2001:db8::6",
            "--cname=alias.test,web.test",
            "--mx-host=mail.test,mx1.mail.test,10",
            "--txt-record=txt.test,v=spf1 -all",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (Debian package dnsmasq-base; .ci/setup installs it)");
    let server = Dnsmasq { child, port };
    // Wait until it answers.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let query =
        [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1];
    for _ in 0..50 {
        let _ = socket.send_to(&query, ("127.0.0.1", port));
        if socket.recv(&mut [0u8; 512]).is_ok() {
            return server;
        }
    }
    panic!("dnsmasq did not start on port {port}");
}

async fn dns(runtime: &Runtime, plugin: &Plugin, target: &str, pairs: &[(&str, &str)]) -> (Status, String) {
    match runtime.check(plugin, &settings(pairs), target, Duration::from_secs(5)).await {
        Ok(found) => (found.status, found.message),
        Err(error) => panic!("{target} {pairs:?}: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_of_every_type_through_a_real_resolver() {
    let server = dnsmasq();
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "dns").await;
    let resolver = format!("127.0.0.1:{}", server.port);
    let r = resolver.as_str();

    assert_eq!(dns(&runtime, &plugin, "web.test", &[("resolver", r)]).await, (Status::Up, "192.0.2.10".into()));
    assert_eq!(
        dns(&runtime, &plugin, "web.test", &[("resolver", r), ("expect", "192.0.2.10")]).await,
        (Status::Up, "192.0.2.10".into())
    );
    assert_eq!(
        dns(&runtime, &plugin, "web.test", &[("resolver", r), ("expect", "192.0.2.99")]).await,
        (Status::Down, "no answer contains `192.0.2.99`: 192.0.2.10".into())
    );
    assert_eq!(
        dns(&runtime, &plugin, "six.test", &[("resolver", r), ("record", "AAAA")]).await,
        (Status::Up, "2001:db8::6".into())
    );
    assert_eq!(
        dns(&runtime, &plugin, "alias.test", &[("resolver", r), ("record", "CNAME")]).await,
        (Status::Up, "web.test".into())
    );
    // A name with an A record is not a CNAME.
    let (status, message) = dns(&runtime, &plugin, "web.test", &[("resolver", r), ("record", "CNAME")]).await;
    assert_eq!(status, Status::Down, "{message}");
    assert!(message.starts_with("no CNAME record"), "{message}");
    assert_eq!(
        dns(&runtime, &plugin, "mail.test", &[("resolver", r), ("record", "MX")]).await,
        (Status::Up, "10 mx1.mail.test".into())
    );
    assert_eq!(
        dns(&runtime, &plugin, "txt.test", &[("resolver", r), ("record", "TXT"), ("expect", "spf1")]).await,
        (Status::Up, "v=spf1 -all".into())
    );
    assert_eq!(dns(&runtime, &plugin, "nothere.test", &[("resolver", r)]).await, (Status::Down, "NXDOMAIN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_settings_are_validated_and_a_silent_resolver_fails_the_probe() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "dns").await;
    let refuse = async |target: &str, pairs: &[(&str, &str)]| match runtime
        .validate_check(&plugin, &settings(pairs), target)
        .await
    {
        Err(CallError::Plugin { error: PluginError::Config(message), .. }) => message,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert!(refuse("a.test", &[("record", "SRV")]).await.contains("`SRV` is not one of"));
    assert!(refuse("a.test", &[("resolver", "not-an-ip")]).await.contains("setting `resolver`"));
    assert!(refuse("a..test", &[]).await.contains("not a valid DNS name"));
    assert!(refuse("a.test", &[("colour", "blue")]).await.contains("unknown setting `colour`"));
    runtime.validate_check(&plugin, &settings(&[("record", "mx")]), "a.test").await.unwrap();

    // Nothing listens there: the probe fails (a DOWN vote), it does not hang.
    let port = free_udp_port();
    let answer = runtime
        .check(
            &plugin,
            &settings(&[("resolver", &format!("127.0.0.1:{port}")), ("timeout", "300ms")]),
            "a.test",
            Duration::from_secs(3),
        )
        .await;
    match answer {
        Err(CallError::Plugin { error: PluginError::Transient { message, .. }, .. }) => {
            assert!(message.starts_with(&format!("no answer from 127.0.0.1:{port}")), "{message}")
        }
        other => panic!("expected a failed probe, got {other:?}"),
    }
}

/// The civil date `days` from today (UTC), as rcgen wants it.
fn date_in(days: i64) -> (i32, u8, u8) {
    let today = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 / 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = today + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// A TLS server on loopback presenting a certificate for `name`, signed by
/// a fresh test CA, valid until `days` from now. Returns its port and the
/// CA's PEM.
async fn tls_server(name: &str, valid_from_days: i64, days: i64) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let (y, m, d) = date_in(valid_from_days);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date_in(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key)).unwrap();
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
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (port, ca.pem())
}

async fn tls(runtime: &Runtime, plugin: &Plugin, port: u16, pairs: &[(&str, &str)]) -> (Status, String) {
    match runtime.check(plugin, &settings(pairs), &format!("127.0.0.1:{port}"), Duration::from_secs(5)).await {
        Ok(found) => (found.status, found.message),
        Err(error) => panic!("port {port} {pairs:?}: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expiry_warn_days_sni_and_chain() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "tls").await;
    let (soon, soon_ca) = tls_server("soon.test", -30, 7).await;
    let (later, later_ca) = tls_server("later.test", -30, 60).await;
    let (expired, _) = tls_server("old.test", -90, -3).await;

    // 7 days left: inside the default 14-day warning window.
    let (status, message) = tls(&runtime, &plugin, soon, &[("server_name", "soon.test")]).await;
    assert_eq!(status, Status::Degraded, "{message}");
    assert!(
        message.starts_with("certificate expires in 6 day(s)")
            || message.starts_with("certificate expires in 7 day(s)"),
        "{message}"
    );
    // A narrower window lets it pass.
    let (status, _) = tls(&runtime, &plugin, soon, &[("server_name", "soon.test"), ("warn_days", "3")]).await;
    assert_eq!(status, Status::Up);

    let (status, message) = tls(&runtime, &plugin, later, &[("server_name", "later.test")]).await;
    assert_eq!(status, Status::Up, "{message}");
    assert!(
        message.starts_with("certificate expires in 59 days") || message.starts_with("certificate expires in 60 days"),
        "{message}"
    );

    let (status, message) = tls(&runtime, &plugin, expired, &[("server_name", "old.test")]).await;
    assert_eq!(status, Status::Down);
    assert!(message.starts_with("certificate expired"), "{message}");

    // Chain validity, when asked for: trusted only with the test CA, and
    // only for the name the certificate carries.
    let (status, message) =
        tls(&runtime, &plugin, later, &[("server_name", "later.test"), ("verify_chain", "true")]).await;
    assert_eq!(status, Status::Down);
    assert!(message.starts_with("chain does not verify"), "{message}");
    let (status, message) = tls(
        &runtime,
        &plugin,
        later,
        &[("server_name", "later.test"), ("verify_chain", "true"), ("ca", later_ca.as_str())],
    )
    .await;
    assert_eq!(status, Status::Up, "{message}");
    let (status, _) = tls(
        &runtime,
        &plugin,
        later,
        &[("server_name", "other.test"), ("verify_chain", "true"), ("ca", later_ca.as_str())],
    )
    .await;
    assert_eq!(status, Status::Down, "wrong SNI name does not verify");
    let _ = soon_ca;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_closed_port_fails_the_probe() {
    let runtime = Runtime::new(None).unwrap();
    let plugin = built_in(&runtime, "tls").await;
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    match runtime.check(&plugin, &[], &format!("127.0.0.1:{port}"), Duration::from_secs(3)).await {
        Err(CallError::Plugin { error: PluginError::Transient { message, .. }, .. }) => {
            assert!(message.starts_with(&format!("connect 127.0.0.1:{port}")), "{message}")
        }
        other => panic!("expected a failed probe, got {other:?}"),
    }
}
