//! The peer listener as a stranger sees it: TLS identity decides, and only
//! the join handshake is open to keys that are not members.

use std::sync::Arc;
use std::time::Duration;

use qu_core::NodeId;
use qu_core::config::{ClusterConfig, NodeConfig};
use qu_core::join::{JoinRole, JoinSession, join_proof, verify_join_proof};
use qu_core::wire::{PeerNotice, PeerRequest, PeerResponse};
use qu_tests::{Node, free_port};
use qu_transport::{Caller, Endpoint, Expect, Handler, Protocol, TlsIdentity, TransportError, TrustStore};

struct Stranger;

impl Protocol for Stranger {
    type Request = PeerRequest;
    type Response = PeerResponse;
    type Notice = PeerNotice;
    fn open_to_untrusted(_: &PeerRequest) -> bool {
        false
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
    let hello =
        |proof: [u8; 32]| PeerRequest::JoinHello { proof: proof.to_vec(), cluster_yaml: stranger_cluster.clone() };
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
    // A wrong secret is refused clearly.
    let wrong = join_proof("not-the-cluster-secret", JoinRole::Inviter, &session);
    match conn.request(hello(wrong), T).await.unwrap() {
        PeerResponse::Refused { reason } => {
            assert!(reason.contains("cluster secret mismatch"), "{reason}")
        }
        other => panic!("a wrong secret must be refused, got {other:?}"),
    }
    // The right one is answered with the joiner's proof for this session.
    let right = join_proof(&node_yaml.cluster_secret, JoinRole::Inviter, &session);
    match conn.request(hello(right), T).await.unwrap() {
        PeerResponse::JoinHelloOk { proof, node_id, cert_pem, .. } => {
            assert!(verify_join_proof(&node_yaml.cluster_secret, JoinRole::Joiner, &session, &proof));
            assert_eq!(node_id, node_yaml.node_id);
            assert_eq!(qu_transport::identity::fingerprint_of_cert_pem(&cert_pem).unwrap(), target_key);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A proof made for another TLS session (a relay) does not verify.
    let relayed = JoinSession { exporter: &[0; 32], ..session.clone() };
    let relayed_proof = join_proof(&node_yaml.cluster_secret, JoinRole::Inviter, &relayed);
    assert!(matches!(conn.request(hello(relayed_proof), T).await.unwrap(), PeerResponse::Refused { .. }));
    assert!(node.log_text().contains("join refused: wrong cluster secret"));

    // Dialling the node while pinning another key fails the handshake.
    let wrong_pin = ClusterConfig::parse(&std::fs::read_to_string(node.file("cluster.yaml")).unwrap()).unwrap();
    let mut other_key = wrong_pin.peers[0].fingerprint.to_string();
    other_key.replace_range(7..8, if &other_key[7..8] == "0" { "1" } else { "0" });
    let err = endpoint.connect(&addr, Expect::Pinned(other_key.parse().unwrap()), Arc::new(Deaf)).await.unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    node.qu_ok(&["status"]);
}
