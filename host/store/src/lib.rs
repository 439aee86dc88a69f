//! Durable storage: the data directory's layout, atomic fsynced writes, and
//! permissions.
//!
//! The node's own state files (node.yaml, cluster.yaml, state.yaml, keys)
//! are written only through this crate; plugin blobs and compiled
//! artifacts are written and removed by qu-plugin and the daemon's plugin
//! registry (docs/ARCHITECTURE.md lists them). Invariants:
//! - a file is replaced by writing a temp file beside it, fsyncing it,
//!   renaming it over the old one and fsyncing the directory, so a crash
//!   leaves either the old or the new content, never a mix;
//! - secrets (`node.yaml`, `keys/private.pem`, `cluster.yaml`) are created
//!   0600 and the data directory 0700, whatever the umask;
//! - temp files left by a crash are ignored by readers and removed at start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A crash point (see [`CRASH_POINTS`]): with the `failpoints` feature,
/// the process aborts here when `FAILPOINTS` sets it to `return` (after
/// `$then`, if given); without it, nothing.
#[cfg(feature = "failpoints")]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| $crate::crash($name))
    };
    ($name:literal, $then:block) => {
        fail::fail_point!($name, |_| {
            $then;
            $crate::crash($name)
        })
    };
}
#[cfg(not(feature = "failpoints"))]
macro_rules! crash_point {
    ($($any:tt)*) => {};
}

mod log;
pub use log::{AppendLog, Opened, read_log};

/// Mode of files holding secrets or replicated state.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of public files (the certificate).
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of the data directory and its subdirectories.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

const TEMP_MARKER: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not found")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl StoreError {
    /// Whether the process (EMFILE) or the system (ENFILE) ran out of file
    /// descriptors: a passing shortage, worth waiting out.
    pub fn out_of_descriptors(&self) -> bool {
        matches!(self, Self::Io { source, .. } if matches!(source.raw_os_error(), Some(23 | 24)))
    }

    fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { path: path.to_path_buf() }
        } else {
            StoreError::Io { path: path.to_path_buf(), source }
        }
    }

    /// Whether the disk said it is full (ENOSPC) or over quota.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. }
            if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || source.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error()))
    }
}

/// The data directory (`$QUPTIME_DIR`) and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn node_yaml(&self) -> PathBuf {
        self.root.join("node.yaml")
    }
    pub fn cluster_yaml(&self) -> PathBuf {
        self.root.join("cluster.yaml")
    }
    /// Persisted consensus state (term and vote).
    pub fn state_yaml(&self) -> PathBuf {
        self.root.join("state.yaml")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn private_key(&self) -> PathBuf {
        self.keys_dir().join("private.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.keys_dir().join("cert.pem")
    }
    /// What only the daemon writes: operators never edit it.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    /// The daemon's own copy of the cluster.yaml it last persisted: what a
    /// hand edit of cluster.yaml is compared with, and where the term of
    /// the config it holds is recorded (the file's `term:` is never
    /// trusted).
    pub fn last_cluster_yaml(&self) -> PathBuf {
        self.store_dir().join("cluster.yaml")
    }
    /// The changes persisted since `store/cluster.yaml` was last written
    /// (an [`AppendLog`] of log entries), replayed over it at start.
    pub fn log(&self) -> PathBuf {
        self.store_dir().join("log")
    }
    /// Plugin components, content-addressed: `plugins/<sha256>.wasm`.
    pub fn plugins_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }
    pub fn plugin_blob(&self, sha256: &str) -> PathBuf {
        self.plugins_dir().join(format!("{sha256}.wasm"))
    }
    /// Compiled plugins of this node (never replicated; safe to delete).
    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("plugins")
    }

    /// Creates the directory, `keys/` and `store/` with mode 0700
    /// (tightening existing ones), so nothing inside is ever exposed by a
    /// loose umask.
    pub fn create(&self) -> Result<(), StoreError> {
        create_private_dir(&self.root)?;
        create_private_dir(&self.keys_dir())?;
        create_private_dir(&self.store_dir())
    }

    /// Where the first start of 0.2 keeps the files of a data directory
    /// written by 0.1 (which had no `store/`), as they were.
    pub fn upgrade_copy_dir(&self) -> PathBuf {
        self.store_dir().join("from-0.1")
    }

    /// Removes temp files a crash left behind in the directory and `keys/`.
    pub fn remove_stale_temps(&self) -> Result<usize, StoreError> {
        Ok(remove_stale_temps(&self.root)?
            + remove_stale_temps(&self.keys_dir())?
            + remove_stale_temps(&self.store_dir())?)
    }
}

/// Creates `dir` (and parents) and sets it to 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(|e| StoreError::io(dir, e))
}

/// Reads a whole text file.
pub fn read_text(path: &Path) -> Result<String, StoreError> {
    fs::read_to_string(path).map_err(|e| StoreError::io(path, e))
}

/// Permission bits of a file.
pub fn mode_of(path: &Path) -> Result<u32, StoreError> {
    Ok(fs::metadata(path).map_err(|e| StoreError::io(path, e))?.permissions().mode() & 0o7777)
}

/// Takes group and other permissions off `path` (a file holding secrets
/// that an editor or a copy left wider): its mode becomes 0600. Returns the
/// mode it had, if it was wider.
pub fn tighten(path: &Path) -> Result<Option<u32>, StoreError> {
    let mode = mode_of(path)?;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(SECRET_FILE_MODE)).map_err(|e| StoreError::io(path, e))?;
    Ok(Some(mode))
}

/// Replaces `path` with `bytes` atomically and durably, with exactly `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| StoreError::io(path, io::Error::other("no file name")))?;
    let temp = dir.join(format!(
        ".{}{TEMP_MARKER}{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let started = std::time::Instant::now();
    let mut wait = DESCRIPTORS_RETRY_FIRST;
    loop {
        let result = write_then_rename(&temp, path, dir, bytes, mode);
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        match result {
            Err(error) if error.out_of_descriptors() && started.elapsed() < DESCRIPTORS_RETRY_FOR => {
                if wait == DESCRIPTORS_RETRY_FIRST {
                    tracing::warn!(
                        "{}: out of open files ({error}); retrying for up to {}s (something holds too many)",
                        path.display(),
                        DESCRIPTORS_RETRY_FOR.as_secs()
                    );
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(std::time::Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

/// How long a write that found no free file descriptor is retried: the
/// descriptors are held by something else (plugin calls end within their
/// deadlines), so waiting frees them, and stopping a node for it would not.
pub const DESCRIPTORS_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);
const DESCRIPTORS_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(10);

fn write_then_rename(temp: &Path, path: &Path, dir: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(temp).map_err(|e| StoreError::io(temp, e))?;
    crash_point!("store::after_create");
    // The umask may have dropped bits from `mode`; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(|e| StoreError::io(temp, e))?;
    file.write_all(bytes).map_err(|e| StoreError::io(temp, e))?;
    crash_point!("store::after_write");
    file.sync_all().map_err(|e| StoreError::io(temp, e))?;
    drop(file);
    crash_point!("store::before_rename");
    fs::rename(temp, path).map_err(|e| StoreError::io(path, e))?;
    crash_point!("store::after_rename");
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

/// The crash points of the store's writes, each a step of a write:
/// `store::after_create` (an empty temp file), `store::after_write` (the
/// temp written, not synced), `store::before_rename` (synced, not in
/// place), `store::after_rename` (in place, its directory not synced),
/// `log::torn` (half of a record appended), `log::before_sync` (a record
/// appended, not synced), `log::after_append` (synced, not yet
/// acknowledged), `log::before_clear`. Built only with the `failpoints`
/// feature (the fault suite's build); without it they are nothing.
pub const CRASH_POINTS: [&str; 8] = [
    "store::after_create",
    "store::after_write",
    "store::before_rename",
    "store::after_rename",
    "log::torn",
    "log::before_sync",
    "log::after_append",
    "log::before_clear",
];

/// Sets the crash points named in `FAILPOINTS` (`NAME=return;...`): at a
/// point set so, the process aborts, as a crash at that step would stop
/// it (the page cache survives, as it does a kill). A no-op without the
/// `failpoints` feature.
pub fn crash_points_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Whether this build has the crash points (`qu --version` says so).
pub const HAS_CRASH_POINTS: bool = cfg!(feature = "failpoints");

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn crash(point: &str) -> ! {
    eprintln!("crash point {point}: aborting");
    std::process::abort()
}

/// Writes a new file, refusing to replace an existing one (`qu init`).
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    if path.exists() {
        return Err(StoreError::io(path, io::Error::from(io::ErrorKind::AlreadyExists)));
    }
    write_atomic(path, bytes, mode)
}

fn remove_stale_temps(dir: &Path) -> Result<usize, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARKER) {
            fs::remove_file(entry.path()).map_err(|e| StoreError::io(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that finds every file descriptor taken waits for one to be
    /// given back instead of failing. In a child process of its own, whose
    /// open-file limit it lowers and then uses up.
    #[test]
    fn a_write_without_free_descriptors_waits_for_one() {
        const CHILD: &str = "QU_STORE_DESCRIPTORS_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "tests::a_write_without_free_descriptors_waits_for_one", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("child: written after"), "{text}");
            return;
        }
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.yaml");
        let limit = getrlimit(Resource::Nofile);
        setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: limit.maximum }).unwrap();
        let mut held = Vec::new();
        while let Ok(file) = File::open("/dev/null") {
            held.push(file);
        }
        assert!(File::open("/dev/null").is_err(), "every descriptor is taken");
        let started = std::time::Instant::now();
        let freeing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        write_atomic(&path, b"kept", SECRET_FILE_MODE).unwrap();
        let waited = started.elapsed();
        freeing.join().unwrap();
        assert_eq!(read_text(&path).unwrap(), "kept");
        assert!(waited >= std::time::Duration::from_millis(250), "it waited for the descriptors: {waited:?}");
        println!("child: written after {waited:?}");
    }

    #[test]
    fn atomic_write_replaces_content_with_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        write_atomic(&path, b"one", SECRET_FILE_MODE).unwrap();
        write_atomic(&path, b"two", SECRET_FILE_MODE).unwrap();
        assert_eq!(read_text(&path).unwrap(), "two");
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        write_atomic(&path, b"three", PUBLIC_FILE_MODE).unwrap();
        assert_eq!(mode_of(&path).unwrap(), 0o644);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
    }

    #[test]
    fn write_new_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        write_new(&path, b"a", SECRET_FILE_MODE).unwrap();
        assert!(write_new(&path, b"b", SECRET_FILE_MODE).is_err());
        assert_eq!(read_text(&path).unwrap(), "a");
    }

    #[test]
    fn data_dir_is_private_and_stale_temps_are_cleaned() {
        let parent = tempfile::tempdir().unwrap();
        let data = DataDir::new(parent.path().join("qu"));
        data.create().unwrap();
        assert_eq!(mode_of(data.root()).unwrap(), 0o700);
        assert_eq!(mode_of(&data.keys_dir()).unwrap(), 0o700);
        fs::write(data.root().join(".cluster.yaml.tmp-1-0"), "partial").unwrap();
        fs::write(data.keys_dir().join(".private.pem.tmp-1-0"), "partial").unwrap();
        fs::write(data.root().join("keep.txt"), "x").unwrap();
        assert_eq!(data.remove_stale_temps().unwrap(), 2);
        assert!(data.root().join("keep.txt").exists());
    }

    #[test]
    fn missing_files_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_text(&dir.path().join("nope")), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_atomic(&dir.path().join("gone/cluster.yaml"), b"x", SECRET_FILE_MODE).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }
}
