//! Where a node's files and control socket live (`QUPTIME_DIR`,
//! `QUPTIME_SOCKET`, and the defaults for root and for other users).

use std::path::PathBuf;

use qu_store::DataDir;

const SYSTEM_DIR: &str = "/etc/quptime";
const SYSTEM_RUN_DIR: &str = "/run/quptime";

fn owned_by_me(dir: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data: DataDir,
    pub socket: PathBuf,
}

impl Paths {
    /// Resolves from the environment: `QUPTIME_DIR` and `QUPTIME_SOCKET`
    /// win; otherwise `/etc/quptime` and `/run/quptime/quptime.sock` as root,
    /// `$XDG_CONFIG_HOME/quptime` (or `~/.config/quptime`) and
    /// `$XDG_RUNTIME_DIR/quptime/quptime.sock` for other users — except the
    /// service user: a non-root user who owns `/etc/quptime` (or
    /// `/run/quptime`) gets those, so the seed's `sudo -u quptime qu status`
    /// finds the daemon systemd runs as that user.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = rustix::process::geteuid().is_root();
        let data = match var("QUPTIME_DIR") {
            Some(dir) => dir,
            None if root || owned_by_me(SYSTEM_DIR) => PathBuf::from(SYSTEM_DIR),
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
            None if root || owned_by_me(SYSTEM_RUN_DIR) => {
                PathBuf::from(SYSTEM_RUN_DIR).join("quptime.sock")
            }
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
