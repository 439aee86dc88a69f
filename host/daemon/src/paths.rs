//! Where a node's files and control socket live (`QUPTIME_DIR`,
//! `QUPTIME_SOCKET`, and the defaults for root and for other users).

use std::path::PathBuf;

use qu_store::DataDir;

const SYSTEM_DIR: &str = "/etc/quptime";
const SYSTEM_RUN_DIR: &str = "/run/quptime";

fn owned_by_me(dir: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw())
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
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Self::resolve(var, rustix::process::geteuid().is_root(), owned_by_me)
    }

    /// The rule behind [`Paths::from_env`], with its inputs passed in.
    fn resolve(
        var: impl Fn(&str) -> Option<PathBuf>,
        root: bool,
        owned_by_me: impl Fn(&str) -> bool,
    ) -> Result<Self, String> {
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
            None if root || owned_by_me(SYSTEM_RUN_DIR) => PathBuf::from(SYSTEM_RUN_DIR).join("quptime.sock"),
            None => match var("XDG_RUNTIME_DIR") {
                Some(runtime) => runtime.join("quptime").join("quptime.sock"),
                None => data.join("quptime.sock"),
            },
        };
        Ok(Self { data: DataDir::new(data), socket })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::Paths;

    fn resolve(env: &[(&str, &str)], root: bool, owned: &[&str]) -> (String, String) {
        let env: HashMap<String, PathBuf> = env.iter().map(|(k, v)| (k.to_string(), PathBuf::from(v))).collect();
        let paths = Paths::resolve(|k| env.get(k).cloned(), root, |d| owned.contains(&d)).unwrap();
        (paths.data.root().display().to_string(), paths.socket.display().to_string())
    }

    #[test]
    fn explicit_variables_win() {
        let env = [("QUPTIME_DIR", "/d"), ("QUPTIME_SOCKET", "/s.sock")];
        assert_eq!(resolve(&env, true, &[]), ("/d".into(), "/s.sock".into()));
    }

    #[test]
    fn root_and_the_service_user_get_system_paths() {
        let system = ("/etc/quptime".to_string(), "/run/quptime/quptime.sock".to_string());
        assert_eq!(resolve(&[("HOME", "/root")], true, &[]), system);
        let service = resolve(&[("HOME", "/var/lib/quptime")], false, &["/etc/quptime", "/run/quptime"]);
        assert_eq!(service, system);
    }

    #[test]
    fn other_users_get_xdg_paths() {
        let env = [("HOME", "/home/ann"), ("XDG_RUNTIME_DIR", "/run/user/1000")];
        assert_eq!(
            resolve(&env, false, &[]),
            ("/home/ann/.config/quptime".into(), "/run/user/1000/quptime/quptime.sock".into())
        );
        let env = [("XDG_CONFIG_HOME", "/cfg"), ("HOME", "/home/ann")];
        assert_eq!(resolve(&env, false, &[]), ("/cfg/quptime".into(), "/cfg/quptime/quptime.sock".into()));
        let none: [(&str, &str); 0] = [];
        assert!(
            Paths::resolve(|k| none.iter().find(|(n, _)| *n == k).map(|(_, v)| PathBuf::from(v)), false, |_| false)
                .is_err()
        );
    }
}
