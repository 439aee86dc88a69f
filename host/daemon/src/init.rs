//! `qu init`: a new identity, `node.yaml`, and a one-member `cluster.yaml`.

use std::net::IpAddr;
use std::time::SystemTime;

use qu_core::config::{ClusterConfig, DEFAULT_BIND, HostPort, NodeConfig, Peer, Timestamp, secret_problem};
use qu_core::{Fingerprint, NodeId};
use qu_store::{DataDir, PUBLIC_FILE_MODE, SECRET_FILE_MODE, StoreError};
use rand::RngCore;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub advertise: String,
    pub bind: Option<IpAddr>,
    pub port: Option<u16>,
    /// The cluster secret; `None` generates one (first node).
    pub secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InitReport {
    pub node_id: NodeId,
    pub fingerprint: Fingerprint,
    pub advertise: String,
    pub bind: IpAddr,
    pub port: u16,
    /// Set when the secret was generated here; shown to the operator once.
    pub generated_secret: Option<String>,
    /// What the operator should know (a weak custom secret).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{path} already exists: this node is initialised (node id {node_id}); qu init never overwrites an identity. To start over, move {dir} away first"
    )]
    AlreadyInitialised { path: String, node_id: String, dir: String },
    #[error(
        "{path} exists but node.yaml does not: restore node.yaml from your backup, or remove the leftover files in {dir} to create a new identity"
    )]
    Leftovers { path: String, dir: String },
    #[error("generate identity: {0}")]
    Identity(#[from] qu_transport::IdentityError),
    #[error("write: {0}")]
    Store(#[from] StoreError),
}

/// Bytes of randomness in a generated cluster secret (shown as hex).
const SECRET_BYTES: usize = 32;

pub fn init(data: &DataDir, options: InitOptions) -> Result<InitReport, InitError> {
    let advertise: HostPort = options.advertise.parse().map_err(|e| InitError::Invalid(format!("--advertise {e}")))?;
    if let Some(secret) = &options.secret
        && let Some(problem) = secret_problem(secret)
    {
        return Err(InitError::Invalid(format!("--secret: {problem}")));
    }
    let mut warnings = Vec::new();
    if let Some(secret) = &options.secret
        && qu_core::config::secret_bits(secret) < qu_core::config::SECRET_BITS_MIN
    {
        warnings.push(format!(
            "the cluster secret has at most about {} bits of entropy (fewer than {}): whoever can reach a node \
             waiting to join can try guesses, one per handshake; for a new cluster let `qu init` generate one \
             (omit --secret) or use `openssl rand -hex 32`",
            qu_core::config::secret_bits(secret),
            qu_core::config::SECRET_BITS_MIN
        ));
    }
    refuse_existing(data)?;

    let node_id = NodeId::from_uuid(uuid::Uuid::new_v4()).expect("a v4 UUID is never nil");
    let (secret, generated_secret) = match options.secret {
        Some(secret) => (secret, None),
        None => {
            let secret = generate_secret();
            (secret.clone(), Some(secret))
        }
    };
    let node = NodeConfig {
        node_id,
        bind: options.bind.unwrap_or_else(|| DEFAULT_BIND.parse().expect("default bind parses")),
        port: options.port.unwrap_or(advertise.port),
        advertise: advertise.to_string(),
        cluster_secret: secret,
        http_listen: None,
    };
    let problems = node.validate();
    if !problems.is_empty() {
        return Err(InitError::Invalid(problems.join("; ")));
    }
    let identity = qu_transport::identity::generate(&node_id)?;
    let peer = Peer {
        node_id,
        advertise: node.advertise.clone(),
        fingerprint: identity.fingerprint.clone(),
        cert_pem: identity.cert_pem.clone(),
    };
    let cluster = ClusterConfig::bootstrap(peer, Timestamp::from_system_time(SystemTime::now()));

    // node.yaml goes last: its presence is what marks a finished init. If
    // any write fails (a full disk, say), the files written so far are
    // removed, so fixing the cause and running `qu init` again just works.
    data.create()?;
    let files = [
        (data.private_key(), identity.key_pem.into_bytes(), SECRET_FILE_MODE),
        (data.cert(), identity.cert_pem.into_bytes(), PUBLIC_FILE_MODE),
        (data.cluster_yaml(), cluster.to_yaml().into_bytes(), SECRET_FILE_MODE),
        (data.node_yaml(), node.to_yaml().into_bytes(), SECRET_FILE_MODE),
    ];
    for (done, (path, bytes, mode)) in files.iter().enumerate() {
        if let Err(error) = qu_store::write_new(path, bytes, *mode) {
            for (written, _, _) in &files[..done] {
                let _ = std::fs::remove_file(written);
            }
            return Err(error.into());
        }
    }

    Ok(InitReport {
        node_id,
        fingerprint: identity.fingerprint,
        advertise: node.advertise,
        bind: node.bind,
        port: node.port,
        generated_secret,
        warnings,
    })
}

fn refuse_existing(data: &DataDir) -> Result<(), InitError> {
    let dir = data.root().display().to_string();
    let node_yaml = data.node_yaml();
    if node_yaml.exists() {
        let node_id = qu_store::read_text(&node_yaml)
            .ok()
            .and_then(|text| NodeConfig::parse(&text).ok())
            .map(|node| node.node_id.to_string())
            .unwrap_or_else(|| "unreadable".into());
        return Err(InitError::AlreadyInitialised { path: node_yaml.display().to_string(), node_id, dir });
    }
    for leftover in [data.private_key(), data.cert(), data.cluster_yaml(), data.state_yaml(), data.last_cluster_yaml()]
    {
        if leftover.exists() {
            return Err(InitError::Leftovers { path: leftover.display().to_string(), dir });
        }
    }
    Ok(())
}

fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
