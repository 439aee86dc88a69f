//! The peer listener as a stranger sees it: TLS identity decides, and only
//! the join handshake is open to keys that are not members.

use std::sync::Arc;
use std::time::Duration;

use qu_core::config::{ClusterConfig, NodeConfig};
use qu_core::join::{JoinRole, JoinSession, confirmation, verify_confirmation};
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_core::{Fingerprint, NodeId};
use qu_daemon::pake::Pake;
use qu_tests::{Node, free_port};
use qu_transport::{Caller, Endpoint, Expect, Handler, Protocol, TlsIdentity, TransportError, TrustStore};

/// The peer protocol as a stranger speaks it: with no trust store of its
/// own, it takes every request (the impostor below serves them; a client
/// gets none).
struct Stranger;

impl Protocol for Stranger {
    type Request = PeerRequest;
    type Response = PeerResponse;
    type Notice = PeerNotice;
    fn open_to_untrusted(_: &PeerRequest) -> bool {
        true
    }
}

struct Deaf;

impl Handler<Stranger> for Deaf {
    async fn on_request(&self, _: Caller, _: PeerRequest) -> PeerResponse {
        PeerResponse::Refused { reason: "test client answers nothing".into() }
    }
    async fn on_notice(&self, _: Caller, _: PeerNotice) {}
}

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_reaches_only_the_join_handshake_and_needs_the_secret() {
    let mut node = Node::new("target");
    let port = free_port();
    node.init(port, &[]);
    node.serve();
    let node_yaml = NodeConfig::parse(&std::fs::read_to_string(node.file("node.yaml")).unwrap()).unwrap();
    let cluster = ClusterConfig::parse(&std::fs::read_to_string(node.file("cluster.yaml")).unwrap()).unwrap();
    let target_key = cluster.peers[0].fingerprint.clone();

    let stranger_id = NodeId::from_bytes(*b"stranger-node-id");
    let generated = qu_transport::identity::generate(&stranger_id).unwrap();
    let identity = TlsIdentity::from_pem(&generated.cert_pem, &generated.key_pem).unwrap();
    // The stranger's own one-member cluster, which it "invites" the node to.
    let stranger_cluster = ClusterConfig::bootstrap(
        qu_core::config::Peer {
            node_id: stranger_id,
            advertise: "127.0.0.1:1".into(),
            fingerprint: generated.fingerprint.clone(),
            cert_pem: generated.cert_pem.clone(),
        },
        qu_core::config::Timestamp::from_unix_millis(0),
    )
    .to_yaml();
    let hello = |confirm: [u8; 32]| PeerRequest::JoinHello {
        confirm: confirm.to_vec(),
        cluster_yaml: stranger_cluster.clone(),
    };
    let endpoint = Endpoint::<Stranger>::new(identity, TrustStore::default()).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let conn = endpoint.connect(&addr, Expect::Pinned(target_key.clone()), Arc::new(Deaf)).await.unwrap();

    // Everything but the handshake is refused, with the reason.
    match conn.request(PeerRequest::Ping, T).await {
        Err(TransportError::Refused(reason)) => {
            assert!(reason.contains("not a member"), "{reason}")
        }
        other => panic!("a stranger's ping must be refused, got {other:?}"),
    }
    // The handshake's first step names the node for the operator to confirm.
    match conn.request(PeerRequest::Identify, T).await.unwrap() {
        PeerResponse::Identity { node_id, advertise, .. } => {
            assert_eq!(node_id, node_yaml.node_id);
            assert_eq!(advertise, addr);
        }
        other => panic!("unexpected {other:?}"),
    }
    let session = JoinSession { exporter: conn.exporter(), inviter: endpoint.fingerprint(), joiner: &target_key };
    // Step 2 of the handshake with `secret`: the node's PAKE answer, the key
    // this side derives, and whether the node's confirmation verifies.
    let start = |secret: &str| {
        let (pake, message) = Pake::start(secret, &session);
        (pake, PeerRequest::JoinStart { pake: message })
    };
    let (pake, request) = start("not-the-cluster-secret");
    let (theirs, confirm) = match conn.request(request, T).await.unwrap() {
        PeerResponse::JoinStarted { pake, confirm } => (pake, confirm),
        other => panic!("unexpected {other:?}"),
    };
    let key = pake.finish(&theirs).unwrap();
    assert!(!verify_confirmation(&key, JoinRole::Joiner, &session, &confirm), "a wrong secret, a wrong key");
    // A wrong secret is refused clearly.
    match conn.request(hello(confirmation(&key, JoinRole::Inviter, &session)), T).await.unwrap() {
        PeerResponse::Refused { reason } => {
            assert!(reason.contains("cluster secret mismatch"), "{reason}")
        }
        other => panic!("a wrong secret must be refused, got {other:?}"),
    }
    // A confirmation with no handshake started on this connection, or one
    // made for another TLS session (a relay), is refused.
    let (pake, request) = start(&node_yaml.cluster_secret);
    let PeerResponse::JoinStarted { pake: theirs, confirm } = conn.request(request, T).await.unwrap() else {
        panic!("no PAKE answer")
    };
    let key = pake.finish(&theirs).unwrap();
    assert!(verify_confirmation(&key, JoinRole::Joiner, &session, &confirm), "the node proves the secret first");
    let relayed = JoinSession { exporter: &[0; 32], ..session.clone() };
    let relayed_confirm = confirmation(&key, JoinRole::Inviter, &relayed);
    assert!(matches!(conn.request(hello(relayed_confirm), T).await.unwrap(), PeerResponse::Refused { .. }));
    assert!(
        matches!(
            conn.request(hello(confirmation(&key, JoinRole::Inviter, &session)), T).await.unwrap(),
            PeerResponse::Refused { .. }
        ),
        "the session's key is used once"
    );
    // The right secret, start to end: the node's identity for the cluster.
    let (pake, request) = start(&node_yaml.cluster_secret);
    let PeerResponse::JoinStarted { pake: theirs, confirm } = conn.request(request, T).await.unwrap() else {
        panic!("no PAKE answer")
    };
    let key = pake.finish(&theirs).unwrap();
    assert!(verify_confirmation(&key, JoinRole::Joiner, &session, &confirm));
    match conn.request(hello(confirmation(&key, JoinRole::Inviter, &session)), T).await.unwrap() {
        PeerResponse::JoinHelloOk { node_id, cert_pem, .. } => {
            assert_eq!(node_id, node_yaml.node_id);
            assert_eq!(qu_transport::identity::fingerprint_of_cert_pem(&cert_pem).unwrap(), target_key);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(node.log_text().contains("join refused: wrong cluster secret"));

    // Dialling the node while pinning another key fails the handshake.
    let wrong_pin = ClusterConfig::parse(&std::fs::read_to_string(node.file("cluster.yaml")).unwrap()).unwrap();
    let mut other_key = wrong_pin.peers[0].fingerprint.to_string();
    other_key.replace_range(7..8, if &other_key[7..8] == "0" { "1" } else { "0" });
    let err = endpoint.connect(&addr, Expect::Pinned(other_key.parse().unwrap()), Arc::new(Deaf)).await.unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    node.qu_ok(&["status"]);
}

/// A stand-in at the invited address that speaks the join as far as it
/// can without the secret: it names itself, answers the PAKE with a message
/// made for a guess, and records every request it gets.
struct Recorder {
    node_id: NodeId,
    advertise: String,
    seen: std::sync::Mutex<Vec<PeerRequest>>,
}

impl Handler<Stranger> for Recorder {
    async fn on_request(&self, from: Caller, request: PeerRequest) -> PeerResponse {
        self.seen.lock().unwrap().push(request.clone());
        match request {
            PeerRequest::Identify => PeerResponse::Identity {
                node_id: self.node_id,
                advertise: self.advertise.clone(),
                version: qu_daemon::VERSION.into(),
            },
            PeerRequest::JoinStart { .. } => {
                let own = Fingerprint::from_sha256(&[0; 32]);
                let session = JoinSession { exporter: &from.exporter, inviter: &from.fingerprint, joiner: &own };
                let (_, pake) = Pake::start("a-guess-of-the-secret", &session);
                PeerResponse::JoinStarted { pake, confirm: vec![0; 32] }
            }
            _ => PeerResponse::Refused { reason: "impostor".into() },
        }
    }
    async fn on_notice(&self, _: Caller, _: PeerNotice) {}
}

/// `qu node add` reaches something that is not the node meant (a stale DNS
/// record, a typo, a reused address). It must learn nothing of the cluster's
/// `cluster.yaml`, and get nothing it could test secret guesses against
/// offline: the PAKE message alone, and no confirmation of any kind.
#[tokio::test(flavor = "multi_thread")]
async fn an_impostor_at_the_invited_address_learns_nothing_of_the_cluster_or_the_secret() {
    let cluster = tokio::task::spawn_blocking(|| {
        let cluster = qu_tests::Cluster::new(1, "2m");
        cluster.nodes[0].qu_ok(&[
            "alert",
            "add",
            "webhook",
            "hook",
            "--url",
            "https://hooks.example.com/services/T000/B000/this-token-is-secret",
        ]);
        cluster
    })
    .await
    .unwrap();
    let impostor_id = NodeId::from_bytes(*b"impostor-node-id");
    let generated = qu_transport::identity::generate(&impostor_id).unwrap();
    let identity = TlsIdentity::from_pem(&generated.cert_pem, &generated.key_pem).unwrap();
    let endpoint = Arc::new(Endpoint::<Stranger>::new(identity, TrustStore::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let recorder = Arc::new(Recorder { node_id: impostor_id, advertise: addr.clone(), seen: Default::default() });
    let (serving, handler) = (endpoint.clone(), recorder.clone());
    let server = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(connection) = serving.accept(tcp, handler.clone()).await {
                connections.push(connection);
            }
        }
    });

    let member = &cluster.nodes[0];
    let err = tokio::task::block_in_place(|| member.qu_err(&["node", "add", &addr, "--yes"]));
    assert!(err.contains("cluster secret mismatch") && err.contains("nothing about the cluster was sent"), "{err}");
    server.abort();

    let seen = recorder.seen.lock().unwrap().clone();
    tokio::task::block_in_place(|| member.wait_files_written());
    let cluster_yaml = std::fs::read_to_string(member.file("cluster.yaml")).unwrap();
    let transcript = format!("{seen:?}");
    for secret_part in ["this-token-is-secret", "BEGIN CERTIFICATE", "hooks.example.com"] {
        assert!(cluster_yaml.contains(secret_part), "the test's cluster.yaml holds {secret_part}");
        assert!(!transcript.contains(secret_part), "the impostor got {secret_part}: {transcript}");
    }
    // Identify, the PAKE message (a curve point, 33 bytes), and the notice
    // that the handshake failed: no confirmation, no HMAC of the secret.
    match seen.as_slice() {
        [PeerRequest::Identify, PeerRequest::JoinStart { pake }, PeerRequest::JoinFailed] => assert_eq!(pake.len(), 33),
        other => panic!("the impostor got more than the PAKE's first message: {other:?}"),
    }
    assert_eq!(member.status_json()["peers"].as_array().unwrap().len(), 1, "nothing committed");
}

/// A flood of 10,000 join attempts at the master of a 3-node cluster with
/// 100 ms heartbeats: they are refused cheaply (a budget per source
/// address), and the cluster goes on as if nothing happened — no election,
/// and the master's heartbeats keep reaching the followers well inside
/// `dead_after`.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_flood_leaves_the_cluster_serving_with_regular_heartbeats() {
    let cluster =
        tokio::task::spawn_blocking(|| qu_tests::Cluster::with_timers(3, "100ms", "500ms", "2m")).await.unwrap();
    let master = tokio::task::block_in_place(|| cluster.wait_converged());
    let follower = (0..3).find(|i| *i != master).unwrap();
    let term = |i: usize| cluster.nodes[i].status_json()["term"].as_u64().unwrap();
    let terms_before: Vec<u64> = tokio::task::block_in_place(|| (0..3).map(term).collect());
    let master_id = cluster.nodes[master].node_id();
    let text = std::fs::read_to_string(cluster.nodes[master].file("cluster.yaml")).unwrap();
    let config = ClusterConfig::parse(&text).unwrap();
    let key = config.peers.iter().find(|p| p.node_id.to_string() == master_id).unwrap().fingerprint.clone();
    let addr = cluster.nodes[master].advertise();

    const CONNECTIONS: usize = 8;
    const ATTEMPTS: usize = 10_000;
    let mut flooders = Vec::new();
    for _ in 0..CONNECTIONS {
        let (addr, key) = (addr.clone(), key.clone());
        flooders.push(tokio::spawn(async move {
            let stranger_id = NodeId::from_bytes(*b"flooding-node-id");
            let generated = qu_transport::identity::generate(&stranger_id).unwrap();
            let identity = TlsIdentity::from_pem(&generated.cert_pem, &generated.key_pem).unwrap();
            let endpoint = Endpoint::<Stranger>::new(identity, TrustStore::default()).unwrap();
            let conn = endpoint.connect(&addr, Expect::Pinned(key.clone()), Arc::new(Deaf)).await.unwrap();
            let session = JoinSession { exporter: conn.exporter(), inviter: endpoint.fingerprint(), joiner: &key };
            let (mut refused, mut started) = (0usize, 0usize);
            for _ in 0..ATTEMPTS / CONNECTIONS {
                let (_, pake) = Pake::start("guessing", &session);
                match conn.request(PeerRequest::JoinStart { pake }, T).await {
                    Ok(PeerResponse::JoinStarted { .. }) => started += 1,
                    Ok(PeerResponse::Refused { .. }) | Err(TransportError::Refused(_)) => refused += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (refused, started)
        }));
    }
    // Meanwhile: how long since the follower last heard the master, sampled.
    let mut worst = Duration::ZERO;
    let mut samples = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        let status = tokio::task::block_in_place(|| cluster.nodes[follower].status_json());
        let seen = status["peers"].as_array().unwrap().iter().find(|p| p["node_id"] == master_id).unwrap().clone();
        if let Some(at) = seen["last_seen"].as_str() {
            let at: qu_core::config::Timestamp = at.parse().unwrap();
            let age = std::time::SystemTime::now().duration_since(at.as_system_time()).unwrap_or_default();
            worst = worst.max(age);
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut refused, mut started) = (0, 0);
    for flooder in flooders {
        let (r, s) = flooder.await.unwrap();
        (refused, started) = (refused + r, started + s);
    }
    println!(
        "{ATTEMPTS} join attempts: {started} answered, {refused} refused; the follower heard the master at most {worst:?} ago ({samples} samples)"
    );
    assert!(started <= 16, "one source gets a small budget of handshakes: {started}");
    assert!(samples > 10, "the follower's status answered throughout the flood: {samples} samples");
    assert!(worst < Duration::from_millis(500), "the master went unheard for {worst:?} (dead_after 500ms)");
    let terms_after: Vec<u64> = tokio::task::block_in_place(|| (0..3).map(term).collect());
    assert_eq!(terms_after, terms_before, "an election happened during the flood");
    let log = cluster.nodes[master].log_text();
    let warnings = log.matches("too many join attempts").count();
    assert!(warnings <= 2, "warnings about the flood are rate-limited: {warnings}");
    tokio::task::block_in_place(|| cluster.nodes[master].qu_ok(&["cluster", "settings", "set", "hysteresis", "3"]));
}

/// Connections from keys that are not members are capped: past 8 open from
/// one source address (32 in all), a new one is closed at once (and said so
/// once), while members go on.
#[tokio::test(flavor = "multi_thread")]
async fn connections_from_strangers_are_capped() {
    let cluster = tokio::task::spawn_blocking(|| qu_tests::Cluster::new(1, "2m")).await.unwrap();
    let node = &cluster.nodes[0];
    let text = std::fs::read_to_string(node.file("cluster.yaml")).unwrap();
    let key = ClusterConfig::parse(&text).unwrap().peers[0].fingerprint.clone();
    let addr = node.advertise();
    let stranger_id = NodeId::from_bytes(*b"crowding-node-id");
    let generated = qu_transport::identity::generate(&stranger_id).unwrap();
    let identity = TlsIdentity::from_pem(&generated.cert_pem, &generated.key_pem).unwrap();
    let endpoint = Endpoint::<Stranger>::new(identity, TrustStore::default()).unwrap();
    let mut connections = Vec::new();
    for _ in 0..40 {
        let conn = endpoint.connect(&addr, Expect::Pinned(key.clone()), Arc::new(Deaf)).await.unwrap();
        // Each in turn, so the node counts them in order.
        let _ = conn.request(PeerRequest::Identify, T).await;
        connections.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = connections.iter().filter(|c| !c.is_closed()).count();
    assert_eq!(open, 8, "at most 8 strangers' connections from one address stay open");
    assert!(connections[..8].iter().all(|c| !c.is_closed()), "the first ones stay");
    let log = node.log_text();
    assert_eq!(log.matches("connections from keys that are not members are at their cap").count(), 1, "{log}");
    tokio::task::block_in_place(|| node.qu_ok(&["cluster", "settings", "set", "hysteresis", "3"]));
}
