//! `qu serve`: load, bind, run until SIGTERM or SIGINT.

use std::net::SocketAddr;

use qu_core::config::NodeOverrides;
use tokio::net::TcpListener;

use crate::{Listeners, LoadedNode, Paths, control};

/// Reads `QUPTIME_ADVERTISE`, `QUPTIME_BIND_ADDR`, `QUPTIME_BIND_PORT` and
/// `QUPTIME_CLUSTER_SECRET` (env > file > default).
pub fn overrides_from_env() -> NodeOverrides {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    NodeOverrides {
        advertise: var("QUPTIME_ADVERTISE"),
        bind: var("QUPTIME_BIND_ADDR"),
        port: var("QUPTIME_BIND_PORT"),
        cluster_secret: var("QUPTIME_CLUSTER_SECRET"),
    }
}

/// Runs the daemon in the foreground. Every startup failure is one line
/// naming the file or resource and what to do.
pub async fn serve(paths: &Paths) -> Result<(), String> {
    raise_open_file_limit();
    let loaded = LoadedNode::load(&paths.data, &overrides_from_env()).map_err(|e| e.to_string())?;
    let addr = SocketAddr::new(loaded.node.bind, loaded.node.port);
    let peer = TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "peer port {addr} is already in use (another qu daemon or program?); stop it or change `port` in node.yaml"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("cannot bind {addr}: no such local address; fix `bind` in node.yaml")
        }
        _ => format!("bind peer listener {addr}: {e}"),
    })?;
    let http = match loaded.node.http_listen {
        Some(listen) => Some(TcpListener::bind(listen).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!(
                    "http_listen {listen} is already in use; stop what holds it or change `http_listen` in node.yaml"
                )
            }
            std::io::ErrorKind::AddrNotAvailable => {
                format!("cannot bind http_listen {listen}: no such local address; fix `http_listen` in node.yaml")
            }
            _ => format!("bind http_listen {listen}: {e}"),
        })?),
        None => None,
    };
    let control = control::bind(&paths.socket)?;
    tracing::info!(
        node = %loaded.node_id(),
        listen = %addr,
        advertise = %loaded.node.advertise,
        socket = %paths.socket.display(),
        http = %loaded.node.http_listen.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics")),
        fingerprint = %loaded.fingerprint(),
        version = crate::VERSION,
        "qu daemon starting"
    );
    let listeners = Listeners { peer, control, control_path: Some(paths.socket.clone()), http };
    crate::run(loaded, listeners, shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard one: probes and plugin
/// calls open sockets, and the daemon must keep descriptors of its own to
/// persist, accept and probe (a soft limit of 1,024 is a distribution's
/// default, not a choice).
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else { return };
    if soft >= hard {
        return;
    }
    let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = soft, to = hard, "open files: soft limit raised from {soft} to {hard}"),
        Err(error) => {
            tracing::warn!(%error, "open files: cannot raise the soft limit ({soft}) to the hard one ({hard})")
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
