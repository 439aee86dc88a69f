//! The control socket: a Unix stream socket, mode 0600 in a 0700 directory,
//! carrying one JSON request line and one JSON response line per connection.
//! Requests from any uid other than the daemon's own (or root) are refused.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use qu_core::{Fingerprint, NodeId};

use qu_core::config::{Check, CheckChanges};

use crate::status::{CheckListItem, PeerView, SettingsView, StatusView};

/// Largest request or response line, in bytes.
pub const CONTROL_LINE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Bytes read from a refused client before answering it.
const REFUSED_DRAIN_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    NodeList,
    /// Dial a node and report its id and key, for the operator to confirm.
    NodeProbe {
        addr: String,
    },
    /// Run the secret handshake with the node at `addr` holding exactly
    /// `fingerprint`, then commit it as a peer.
    NodeAdd {
        addr: String,
        fingerprint: Fingerprint,
    },
    NodeRemove {
        node_id: NodeId,
    },
    Settings,
    SettingsSet {
        key: String,
        value: String,
    },
    CheckList,
    /// `qu check add`; the daemon assigns the id.
    CheckAdd {
        check: Box<Check>,
    },
    CheckEdit {
        check: String,
        changes: Box<CheckChanges>,
    },
    CheckRemove {
        check: String,
    },
    CheckSetDisabled {
        check: String,
        disabled: bool,
    },
    PluginList,
    /// `qu plugin add`: the daemon reads the component from `path` (the
    /// CLI runs as the same user on the same machine).
    PluginAdd {
        name: String,
        path: std::path::PathBuf,
        allow: Vec<String>,
        memory_mib: Option<u32>,
        timeout: Option<std::time::Duration>,
    },
    PluginRemove {
        name: String,
    },
    AlertList,
    /// `qu alert add`; the daemon assigns the id.
    AlertAdd {
        alert: Box<qu_core::config::Alert>,
    },
    AlertEdit {
        alert: String,
        changes: Box<qu_core::config::AlertChanges>,
    },
    /// `qu alert ack CHECK`: no more reminders for its current incident.
    AlertAck {
        check: String,
        reason: String,
    },
    AlertRemove {
        alert: String,
    },
    /// `qu alert test`: a synthetic, marked test event through the real
    /// sink, from this node, no quorum needed.
    AlertTest {
        alert: String,
    },
    /// `qu check test`: a synthetic transition of a real check through
    /// every effective alert; `state` is `down`, `up` or `recovered`.
    CheckTest {
        check: String,
        state: String,
    },
}

/// One alert as `qu alert list` shows it (secrets masked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertListItem {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub config: std::collections::BTreeMap<String, String>,
    pub default: bool,
    pub disabled: bool,
    pub subject_template: Option<String>,
    pub body_template: Option<String>,
    /// A destination for alerts about the cluster itself.
    #[serde(default)]
    pub cluster_events: bool,
    /// The reminder interval while a check stays DOWN, if any.
    #[serde(default)]
    pub repeat: Option<String>,
    #[serde(default)]
    pub repeat_secs: Option<f64>,
    /// Deliveries committed and not yet finished.
    pub pending: usize,
    /// The most recently finished delivery.
    pub last: Option<DeliveryView>,
}

// `repeat_secs` is whole milliseconds of a `Duration`, never NaN.
impl Eq for AlertListItem {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub key: String,
    pub check: String,
    pub verb: String,
    /// `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub error: String,
    pub finished: Option<String>,
}

/// How one test send went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    pub alert: String,
    pub ok: bool,
    /// The sink's error, verbatim, when not ok.
    pub error: String,
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    Status(StatusView),
    Nodes {
        peers: Vec<PeerView>,
    },
    Probe {
        node_id: NodeId,
        fingerprint: Fingerprint,
        advertise: String,
        version: String,
    },
    /// A change committed by a majority.
    Committed {
        term: u64,
        version: u64,
        node_id: Option<NodeId>,
        /// The id of the check or alert the change created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<String>,
    },
    Settings(SettingsView),
    Plugins {
        plugins: Vec<crate::plugins::PluginView>,
    },
    Checks {
        checks: Vec<CheckListItem>,
    },
    Alerts {
        alerts: Vec<AlertListItem>,
    },
    Tested {
        results: Vec<TestResult>,
    },
    Error {
        message: String,
    },
    /// A change whose outcome is unknown: it was sent to the other members
    /// and may still commit (the CLI exits with code 3).
    Unknown {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no qu daemon answers on {path} ({source}); start it with `qu serve` or `systemctl start quptime`")]
    Unreachable { path: String, source: io::Error },
    #[error("control socket {path}: {reason}")]
    Protocol { path: String, reason: String },
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The request was sent whole, and no answer came back: the daemon
    /// may have acted on it (it stopped, or the connection broke).
    #[error("control socket {path}: {reason}, after the request was sent")]
    Lost { path: String, reason: String },
}

/// Sends one request to the daemon at `path` and returns its answer.
pub async fn call(path: &Path, request: &ControlRequest, timeout: Duration) -> Result<ControlResponse, ControlError> {
    let label = path.display().to_string();
    let exchange = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Unreachable { path: label.clone(), source })?;
        let protocol = |reason: String| ControlError::Protocol { path: label.clone(), reason };
        let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(|e| protocol(e.to_string()))?;
        // From here on the daemon may have acted on the request: whatever
        // goes wrong leaves its outcome unknown.
        let lost = |reason: String| ControlError::Lost { path: label.clone(), reason };
        let mut reply = String::new();
        BufReader::new(stream)
            .take(CONTROL_LINE_BYTES_MAX)
            .read_line(&mut reply)
            .await
            .map_err(|e| lost(e.to_string()))?;
        if reply.is_empty() {
            return Err(lost("the daemon closed the connection without answering".into()));
        }
        serde_json::from_str(&reply).map_err(|e| lost(format!("unreadable answer: {e}")))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ControlError::Timeout(timeout))?
}

/// Binds the control socket: parent directory created 0700, a stale socket
/// of ours replaced, a live one or someone else's refused, and the socket
/// created 0600 (umask set for the bind, so it is never briefly wider).
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_parent(parent)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(format!("control socket {shown} exists and is not a socket; move it away"));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!("another qu daemon is already serving {shown}; stop it first"));
            }
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me {
                return Err(format!(
                    "stale control socket {shown} belongs to uid {}, not this daemon's uid {me}; remove it by hand",
                    meta.uid()
                ));
            }
            std::fs::remove_file(path).map_err(|e| format!("remove stale control socket {shown}: {e}"))?;
            tracing::info!(path = %shown, "replaced a stale control socket");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("control socket {shown}: {e}")),
    }
    let previous = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = listener.map_err(|e| format!("bind control socket {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod control socket {shown}: {e}"))?;
    Ok(listener)
}

/// Creates the socket's directory 0700. An existing directory of ours named
/// `quptime` (the default layout) is tightened to 0700; any other existing
/// directory is left as it is (it may be shared, like /tmp), and the
/// socket's own 0600 mode and the uid check protect it.
fn prepare_parent(parent: &Path) -> Result<(), String> {
    let shown = parent.display();
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {shown}: {e}"))?;
        return std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {shown}: {e}"));
    }
    let meta = std::fs::metadata(parent).map_err(|e| format!("{shown}: {e}"))?;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    if ours && parent.file_name().is_some_and(|n| n == "quptime") && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("chmod {shown}: {e}"))?;
    }
    Ok(())
}

/// Whether a client with `uid` may use the socket: the daemon's own uid, or
/// root (who could read the socket anyway).
pub fn uid_allowed(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Reads one request from an accepted stream, after the uid check.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Result<ControlRequest, ControlResponse> {
    let uid = stream
        .peer_cred()
        .map_err(|e| ControlResponse::Error { message: format!("cannot read peer credentials: {e}") })?
        .uid();
    if !uid_allowed(uid) {
        tracing::warn!(uid, "refused a control request from another user");
        // Read (and discard) a bounded request first: closing with unread
        // data would reset the connection before the client reads why.
        let mut discard = String::new();
        let mut limited = BufReader::new(&mut *stream).take(REFUSED_DRAIN_BYTES_MAX);
        let _ = tokio::time::timeout(Duration::from_secs(1), limited.read_line(&mut discard)).await;
        return Err(ControlResponse::Error {
            message: format!(
                "permission denied: uid {uid} may not control this daemon (run qu as uid {} or root)",
                rustix::process::geteuid().as_raw()
            ),
        });
    }
    let mut line = String::new();
    let mut reader = BufReader::new(&mut *stream).take(CONTROL_LINE_BYTES_MAX);
    reader.read_line(&mut line).await.map_err(|e| ControlResponse::Error { message: format!("read request: {e}") })?;
    serde_json::from_str(&line).map_err(|e| ControlResponse::Error {
        message: format!("unreadable request (is this qu the same version as the daemon?): {e}"),
    })
}

pub(crate) async fn write_response(stream: &mut UnixStream, response: &ControlResponse) {
    let mut line = serde_json::to_vec(response).expect("responses always serialise");
    line.push(b'\n');
    if let Err(error) = stream.write_all(&line).await {
        tracing::debug!(%error, "control client went away before the answer");
    }
}

/// Removes the socket file if it is still the one this daemon bound.
pub(crate) fn remove_socket(path: &PathBuf) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && meta.uid() == rustix::process::geteuid().as_raw()
    {
        let _ = std::fs::remove_file(path);
    }
}
