//! Transport tests over real TCP on loopback with real TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qu_core::{Fingerprint, NodeId};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::generate;
use crate::tls::provider;
use crate::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Req {
    Join,
    Echo(String),
    Sleep(u64),
}

struct TestProto;

impl Protocol for TestProto {
    type Request = Req;
    type Response = String;
    type Notice = String;
    fn open_to_untrusted(request: &Req) -> bool {
        matches!(request, Req::Join)
    }
}

#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<(Option<NodeId>, String)>>,
    notices: Mutex<Vec<(Option<NodeId>, String)>>,
}

impl Handler<TestProto> for Recorder {
    async fn on_request(&self, from: Caller, request: Req) -> String {
        self.requests.lock().unwrap().push((from.node_id, format!("{request:?}")));
        match request {
            Req::Join => format!("welcome {}", from.fingerprint),
            Req::Echo(text) => text,
            Req::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept".into()
            }
        }
    }
    async fn on_notice(&self, from: Caller, notice: String) {
        self.notices.lock().unwrap().push((from.node_id, notice));
    }
}

struct Node {
    id: NodeId,
    generated: GeneratedIdentity,
    identity: TlsIdentity,
}

fn node() -> Node {
    let id = NodeId::from_uuid(uuid::Uuid::new_v4()).unwrap();
    let generated = generate(&id).unwrap();
    let identity = TlsIdentity::from_pem(&generated.cert_pem, &generated.key_pem).unwrap();
    Node { id, generated, identity }
}

/// `a` dials a server that is not a qu endpoint (`config`, presenting `b`'s
/// certificate one way or another) pinned to `b`'s key: the error it gets.
async fn dial_foreign_server(a: &Node, b: &Node, config: rustls::ServerConfig) -> TransportError {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = TlsAcceptor::from(Arc::new(config)).accept(tcp).await;
    });
    endpoint(a, &[a, b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap_err()
}

fn endpoint(me: &Node, trusted: &[&Node]) -> Arc<Endpoint<TestProto>> {
    let trust = TrustStore::new(trusted.iter().map(|n| (n.identity.fingerprint.clone(), n.id)));
    Arc::new(Endpoint::new(me.identity.clone(), trust).unwrap())
}

/// Serves `endpoint` on a fresh loopback port; returns the address and a
/// channel of accept outcomes (Ok = handshake done).
async fn serve(
    endpoint: Arc<Endpoint<TestProto>>,
    handler: Arc<Recorder>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Result<Connection<TestProto>, TransportError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (endpoint, handler, tx) = (endpoint.clone(), handler.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(endpoint.accept(tcp, handler).await);
            });
        }
    });
    (addr, rx)
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn pinned_members_talk_both_ways_and_identity_comes_from_tls() {
    let (a, b) = (node(), node());
    let server_handler = Arc::new(Recorder::default());
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), server_handler.clone()).await;
    let client_handler = Arc::new(Recorder::default());
    let conn = endpoint(&a, &[&a, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), client_handler.clone())
        .await
        .unwrap();
    assert_eq!(conn.peer_member(), Some(b.id));
    assert_eq!(conn.request(Req::Echo("hi".into()), T).await.unwrap(), "hi");
    conn.notify("note".into(), T).await.unwrap();
    let server_side = accepted.recv().await.unwrap().unwrap();
    assert_eq!(server_side.peer_member(), Some(a.id));
    assert_eq!(server_side.exporter(), conn.exporter(), "both ends derive the same exporter");
    // The server can call back over the same connection.
    assert_eq!(server_side.request(Req::Echo("back".into()), T).await.unwrap(), "back");
    assert_eq!(client_handler.requests.lock().unwrap()[0].0, Some(b.id));
    // Requests and notices are attributed to the TLS identity.
    eventually(|| server_handler.notices.lock().unwrap().len() == 1).await;
    assert_eq!(server_handler.requests.lock().unwrap()[0].0, Some(a.id));
    assert_eq!(server_handler.notices.lock().unwrap()[0], (Some(a.id), "note".to_string()));
}

#[tokio::test]
async fn dialling_an_unpinned_server_fails_the_handshake() {
    let (a, b, stranger) = (node(), node(), node());
    let (addr, _accepted) = serve(endpoint(&stranger, &[&stranger]), Arc::new(Recorder::default())).await;
    let err = endpoint(&a, &[&a, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap_err();
    assert!(matches!(&err, TransportError::Handshake { reason, .. } if reason.contains("not the pinned")), "{err}");
}

#[tokio::test]
async fn an_untrusted_client_reaches_only_the_join_handshake() {
    let (b, stranger) = (node(), node());
    let handler = Arc::new(Recorder::default());
    let (addr, _accepted) = serve(endpoint(&b, &[&b]), handler.clone()).await;
    let conn = endpoint(&stranger, &[&stranger])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let err = conn.request(Req::Echo("let me in".into()), T).await.unwrap_err();
    match &err {
        TransportError::Refused(reason) => {
            assert!(reason.contains("not a member"), "{reason}");
            assert!(reason.contains(stranger.identity.fingerprint.as_str()), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    conn.notify("ignored".into(), T).await.unwrap();
    let welcome = conn.request(Req::Join, T).await.unwrap();
    assert_eq!(welcome, format!("welcome {}", stranger.identity.fingerprint));
    let requests = handler.requests.lock().unwrap().clone();
    assert_eq!(requests, vec![(None, "Join".to_string())], "only the join reached the handler");
    assert!(handler.notices.lock().unwrap().is_empty(), "notices from strangers are dropped");
}

/// Before a peer is trusted it may send small frames only (the join
/// handshake): a long echo from a stranger closes its connection, the same
/// from a member is answered.
#[tokio::test]
async fn a_strangers_frames_are_capped_before_anything_is_allocated() {
    let (b, member, stranger) = (node(), node(), node());
    let (addr, _accepted) = serve(endpoint(&b, &[&b, &member]), Arc::new(Recorder::default())).await;
    let long = "x".repeat(qu_core::limits::UNTRUSTED_FRAME_BYTES_MAX + 1);
    let trusted = endpoint(&member, &[&member, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    assert_eq!(trusted.request(Req::Echo(long.clone()), T).await.unwrap(), long, "a member sends long frames");
    let conn = endpoint(&stranger, &[&stranger])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let err = conn.request(Req::Echo(long), T).await.unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    tokio::time::timeout(T, conn.closed()).await.expect("the stranger's connection is closed");
}

#[tokio::test]
async fn discovery_dial_reports_the_servers_key() {
    let (a, b) = (node(), node());
    let (addr, _accepted) = serve(endpoint(&b, &[&b]), Arc::new(Recorder::default())).await;
    let conn = endpoint(&a, &[&a]).connect(&addr, Expect::AnyKey, Arc::new(Recorder::default())).await.unwrap();
    assert_eq!(conn.peer_fingerprint(), &b.identity.fingerprint);
    assert_eq!(conn.peer_member(), None);
}

#[tokio::test]
async fn revoking_trust_takes_effect_on_the_next_message() {
    let (a, b) = (node(), node());
    let server = endpoint(&b, &[&a, &b]);
    let (addr, _accepted) = serve(server.clone(), Arc::new(Recorder::default())).await;
    let conn = endpoint(&a, &[&a, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    assert_eq!(conn.request(Req::Echo("1".into()), T).await.unwrap(), "1");
    server.trust().replace([(b.identity.fingerprint.clone(), b.id)]);
    assert!(matches!(conn.request(Req::Echo("2".into()), T).await, Err(TransportError::Refused(_))));
}

#[derive(Debug)]
struct FixedServerKey(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedServerKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct FixedClientKey(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// `victim`'s public certificate paired with `attacker`'s private key.
fn forged_key(victim: &Node, attacker: &Node) -> Arc<CertifiedKey> {
    let cert = CertificateDer::from(victim.identity.cert.to_vec());
    let key = provider().key_provider.load_private_key(attacker.identity.key.clone_key()).unwrap();
    Arc::new(CertifiedKey::new(vec![cert], key))
}

#[tokio::test]
async fn a_server_replaying_a_pinned_cert_without_its_key_is_refused() {
    let (a, b, attacker) = (node(), node(), node());
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedServerKey(forged_key(&b, &attacker))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    let err = dial_foreign_server(&a, &b, config).await;
    // The certificate is the pinned one; only the signature check can refuse it.
    assert!(matches!(&err, TransportError::Handshake { reason, .. } if !reason.contains("pinned")), "{err}");
}

#[tokio::test]
async fn a_client_replaying_a_members_cert_without_its_key_is_refused() {
    let (a, b, attacker) = (node(), node(), node());
    let handler = Arc::new(Recorder::default());
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), handler.clone()).await;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(Arc::new(FixedClientKey(forged_key(&a, &attacker))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("quptime").unwrap();
    // TLS 1.3 clients finish first; the server's verdict is what counts.
    if let Ok(mut stream) = TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        let _ = stream.write_all(b"\0\0\0\x01x").await;
    }
    let outcome = accepted.recv().await.unwrap();
    assert!(matches!(outcome, Err(TransportError::Handshake { .. })), "{outcome:?}");
    assert!(handler.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn tls12_is_refused_in_both_directions() {
    let (a, b) = (node(), node());
    // A TLS 1.2-only client against a qu endpoint.
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), Arc::new(Recorder::default())).await;
    let cert = CertificateDer::from(a.identity.cert.to_vec());
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_auth_cert(vec![cert.clone()], a.identity.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let client = TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("quptime").unwrap(), tcp).await;
    assert!(client.is_err(), "a TLS 1.2 client completed a handshake");
    assert!(accepted.recv().await.unwrap().is_err());

    // A qu endpoint dialling a TLS 1.2-only server.
    let server_cert = CertificateDer::from(b.identity.cert.to_vec());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert], b.identity.key.clone_key())
        .unwrap();
    let err = dial_foreign_server(&a, &b, config).await;
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn slow_answers_time_out_and_the_connection_stays_usable() {
    let (a, b) = (node(), node());
    let (addr, _accepted) = serve(endpoint(&b, &[&a, &b]), Arc::new(Recorder::default())).await;
    let conn = endpoint(&a, &[&a, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let err = conn.request(Req::Sleep(2_000), Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    assert!(err.to_string().contains("100ms"), "{err}");
    assert_eq!(conn.request(Req::Echo("still here".into()), T).await.unwrap(), "still here");
    // Many requests in flight at once are answered to the right callers.
    let answers = futures_join((0..40).map(|i| {
        let conn = conn.clone();
        async move { conn.request(Req::Echo(i.to_string()), T).await.unwrap() }
    }))
    .await;
    assert_eq!(answers, (0..40).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_oversize_length_prefix_closes_the_connection() {
    let (a, b) = (node(), node());
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), Arc::new(Recorder::default())).await;
    let client = endpoint(&a, &[&a, &b]);
    let config = crate::tls::client_config(&a.identity, Some(b.identity.fingerprint.clone())).unwrap();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut tls = TlsConnector::from(config).connect(ServerName::try_from("quptime").unwrap(), tcp).await.unwrap();
    let server_side = accepted.recv().await.unwrap().unwrap();
    tls.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::timeout(T, server_side.closed()).await.expect("server closed the connection");
    drop(client);
}

#[tokio::test]
async fn a_closed_connection_fails_pending_and_new_requests() {
    let (a, b) = (node(), node());
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), Arc::new(Recorder::default())).await;
    let conn = endpoint(&a, &[&a, &b])
        .connect(&addr, Expect::Pinned(b.identity.fingerprint.clone()), Arc::new(Recorder::default()))
        .await
        .unwrap();
    let server_side = accepted.recv().await.unwrap().unwrap();
    let pending = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(Req::Sleep(3_000), T).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    server_side.close();
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    assert!(matches!(conn.request(Req::Echo("x".into()), T).await, Err(TransportError::Closed)));
}

#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

async fn futures_join<F: std::future::Future<Output = String> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<String> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn eventually(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {T:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn fingerprints_in_tests_are_real() {
    let n = node();
    assert_eq!(n.generated.fingerprint, n.identity.fingerprint);
    let _: &Fingerprint = &n.identity.fingerprint;
}

/// A node of the previous minor version (ALPN `qu/1`) meets this one: the
/// handshake fails on both sides with an error that names the cause.
#[tokio::test]
async fn a_peer_speaking_another_protocol_version_is_refused_by_name() {
    let (a, b) = (node(), node());
    // This node as a server; the old node dials it.
    let (addr, mut accepted) = serve(endpoint(&b, &[&a, &b]), Arc::new(Recorder::default())).await;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_client_cert_resolver(Arc::new(FixedClientKey(forged_key(&a, &a))));
    config.alpn_protocols = vec![b"qu/1".to_vec()];
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("quptime").unwrap();
    let _ = TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
    let outcome = accepted.recv().await.unwrap();
    assert!(matches!(outcome, Err(TransportError::Version { .. })), "{outcome:?}");
    let message = outcome.unwrap_err().to_string();
    assert!(message.contains("another version") && message.contains("qu/2"), "{message}");

    // The old node as a server; this node dials it.
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedServerKey(forged_key(&b, &b))));
    config.alpn_protocols = vec![b"qu/1".to_vec()];
    let err = dial_foreign_server(&a, &b, config).await;
    assert!(matches!(err, TransportError::Version { .. }), "{err}");
}
