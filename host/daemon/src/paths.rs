//! Where a node's files and control socket live (`QUPTIME_DIR`,
//! `QUPTIME_SOCKET`, and the defaults for root and for other users).

use std::path::PathBuf;

use qu_store::DataDir;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data: DataDir,
    pub socket: PathBuf,
}

impl Paths {
    /// Resolves from the environment: `QUPTIME_DIR` and `QUPTIME_SOCKET`
    /// win; otherwise `/etc/quptime` and `/run/quptime/quptime.sock` as root,
    /// `$XDG_CONFIG_HOME/quptime` (or `~/.config/quptime`) and
    /// `$XDG_RUNTIME_DIR/quptime/quptime.sock` for other users.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = rustix::process::geteuid().is_root();
        let data = match var("QUPTIME_DIR") {
            Some(dir) => dir,
            None if root => PathBuf::from("/etc/quptime"),
            None => match (var("XDG_CONFIG_HOME"), var("HOME")) {
                (Some(config), _) => config.join("quptime"),
                (None, Some(home)) => home.join(".config").join("quptime"),
                (None, None) => {
                    return Err("cannot find a data directory: set QUPTIME_DIR (or HOME)".into());
                }
            },
        };
        let socket = match var("QUPTIME_SOCKET") {
            Some(socket) => socket,
            None if root => PathBuf::from("/run/quptime/quptime.sock"),
            None => match var("XDG_RUNTIME_DIR") {
                Some(runtime) => runtime.join("quptime").join("quptime.sock"),
                None => data.join("quptime.sock"),
            },
        };
        Ok(Self {
            data: DataDir::new(data),
            socket,
        })
    }
}
