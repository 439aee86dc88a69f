//! An append-only log of records, each on one line with its checksum:
//! `<sha-256 of the record, hex> <record>\n`. A record is one line of text
//! (JSON, which escapes newlines).
//!
//! Appends are fsynced before `append` returns. Reading stops at the first
//! line that is incomplete or fails its checksum — what a crash in the
//! middle of an append leaves — and `open` cuts the file there, so the next
//! append follows the last good record. `clear` empties the log (once what
//! it held is in a checkpoint written elsewhere).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{SECRET_FILE_MODE, StoreError};

/// An open log.
#[derive(Debug)]
pub struct AppendLog {
    path: PathBuf,
    file: File,
    records: usize,
}

/// What `open` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// The good records, oldest first.
    pub records: Vec<String>,
    /// Bytes cut from the end: an incomplete or corrupt tail.
    pub cut_bytes: u64,
}

impl AppendLog {
    /// Opens (or creates, 0600) the log at `path` and reads its records.
    pub fn open(path: &Path) -> Result<(Self, Opened), StoreError> {
        let io = |e| StoreError::io(path, e);
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).mode(SECRET_FILE_MODE).open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, good) = parse(&bytes);
        let cut_bytes = bytes.len() as u64 - good;
        if cut_bytes > 0 {
            file.set_len(good).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // The log may be new: make its name durable too.
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))?;
        }
        let count = records.len();
        Ok((Self { path: path.to_path_buf(), file, records: count }, Opened { records, cut_bytes }))
    }

    /// Appends one record (a single line of text) and fsyncs it.
    pub fn append(&mut self, record: &str) -> Result<(), StoreError> {
        assert!(!record.contains('\n'), "a log record is one line");
        let line = format!("{} {record}\n", hex(&qu_core::consensus::digest(record)));
        let io = |e| StoreError::io(&self.path, e);
        crash_point!("log::torn", {
            let _ = self.file.write_all(&line.as_bytes()[..line.len() / 2]);
            let _ = self.file.sync_data();
        });
        self.file.write_all(line.as_bytes()).map_err(io)?;
        crash_point!("log::before_sync");
        self.file.sync_data().map_err(io)?;
        crash_point!("log::after_append");
        self.records += 1;
        Ok(())
    }

    /// Empties the log, durably.
    pub fn clear(&mut self) -> Result<(), StoreError> {
        if self.records == 0 {
            return Ok(());
        }
        let io = |e| StoreError::io(&self.path, e);
        crash_point!("log::before_clear");
        self.file.set_len(0).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.records = 0;
        Ok(())
    }

    /// Records appended since the log was last empty.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// The good records of the log at `path` (none if there is no log),
/// without changing it.
pub fn read_log(path: &Path) -> Result<Opened, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::default()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let (records, good) = parse(&bytes);
    Ok(Opened { records, cut_bytes: bytes.len() as u64 - good })
}

/// The good records of `bytes` and how many bytes they take.
fn parse(bytes: &[u8]) -> (Vec<String>, u64) {
    let mut records = Vec::new();
    let mut good = 0;
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..end];
        let Some(record) = checked(line) else { break };
        records.push(record);
        good += end as u64 + 1;
        rest = &rest[end + 1..];
    }
    (records, good)
}

fn checked(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let (sum, record) = line.split_once(' ')?;
    (sum == hex(&qu_core::consensus::digest(record))).then(|| record.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, opened) = AppendLog::open(&path).unwrap();
        assert_eq!(opened, Opened::default());
        log.append("{\"a\":1}").unwrap();
        log.append("second").unwrap();
        drop(log);
        let (log, opened) = AppendLog::open(&path).unwrap();
        assert_eq!(opened.records, vec!["{\"a\":1}".to_string(), "second".to_string()]);
        assert_eq!((opened.cut_bytes, log.len()), (0, 2));
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_the_next_append_follows_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = AppendLog::open(&path).unwrap();
        log.append("one").unwrap();
        log.append("two").unwrap();
        drop(log);
        let good = std::fs::read(&path).unwrap();
        let first_line = good.iter().position(|b| *b == b'\n').unwrap() + 1;
        // A record cut short by a crash: a good line without its end.
        let torn = &good[..first_line - 2];
        for tail in [&b"abc"[..], b"0000 three\n", b"\n", torn] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(tail);
            std::fs::write(&path, &bytes).unwrap();
            let (mut log, opened) = AppendLog::open(&path).unwrap();
            assert_eq!(opened.records, vec!["one".to_string(), "two".to_string()], "tail {tail:?}");
            assert_eq!(opened.cut_bytes, tail.len() as u64);
            log.append("three").unwrap();
            drop(log);
            let (_, opened) = AppendLog::open(&path).unwrap();
            assert_eq!(opened.records.last().map(String::as_str), Some("three"));
            std::fs::write(&path, &good).unwrap();
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = AppendLog::open(&path).unwrap();
        for record in ["one", "two", "three"] {
            log.append(record).unwrap();
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap().replace(" two", " tw0");
        std::fs::write(&path, text).unwrap();
        let (_, opened) = AppendLog::open(&path).unwrap();
        assert_eq!(opened.records, vec!["one".to_string()]);
    }

    #[test]
    fn clear_empties_it_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = AppendLog::open(&path).unwrap();
        log.append("one").unwrap();
        log.clear().unwrap();
        assert!(log.is_empty());
        log.append("two").unwrap();
        drop(log);
        let (_, opened) = AppendLog::open(&path).unwrap();
        assert_eq!(opened.records, vec!["two".to_string()]);
    }
}
