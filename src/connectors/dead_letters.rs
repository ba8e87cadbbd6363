//! Dead letters: input records a source could not decode, kept with their raw bytes, the error
//! and their position, so that a bad record neither stops the stream nor disappears.
//!
//! Each source keeps them in `dead_letters.jsonl` in its stream's directory (dropped with the
//! stream), one JSON object per line, appended and fsynced before the rows decoded from the
//! same input are appended to the stream. A crash between the two writes makes the source read
//! that input again after the restart; the letters already kept are recognised by their
//! position (the newest offset per partition, read back at open) and not kept twice. A line
//! torn by a crash is cut off at open. `eddy_catalog.dead_letters` shows every source's
//! letters.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// Hex of the raw key and value bytes.
    pub key: Option<String>,
    pub payload: Option<String>,
    pub error: String,
    /// When it was read, microseconds since the epoch.
    pub received_at: i64,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower-case or upper-case hex; None if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One source's dead letters on disk.
#[derive(Debug)]
pub struct DeadLetterLog {
    path: PathBuf,
    /// Serializes appends.
    file: Mutex<()>,
    count: AtomicU64,
    /// Per partition, the newest offset kept.
    newest: Mutex<BTreeMap<i32, i64>>,
}

impl DeadLetterLog {
    /// Open (or start) the letters at `path`, cutting off a line torn by a crash.
    pub fn open(path: &Path) -> Result<DeadLetterLog> {
        let log = DeadLetterLog {
            path: path.to_path_buf(),
            file: Mutex::new(()),
            count: AtomicU64::new(0),
            newest: Mutex::new(BTreeMap::new()),
        };
        let (letters, whole_bytes) = log.read_with_length()?;
        let length = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if whole_bytes < length {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
            file.set_len(whole_bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        }
        log.count.store(letters.len() as u64, Ordering::Relaxed);
        let mut newest = log.newest.lock().unwrap_or_else(|e| e.into_inner());
        for letter in &letters {
            let entry = newest.entry(letter.partition).or_insert(letter.offset);
            *entry = (*entry).max(letter.offset);
        }
        drop(newest);
        Ok(log)
    }

    /// Whether the letter at this position is kept already.
    pub fn has(&self, partition: i32, offset: i64) -> bool {
        self.newest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .is_some_and(|newest| offset <= *newest)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Keep `letters` durably (those not kept yet).
    pub fn append(&self, letters: &[DeadLetter]) -> Result<()> {
        let fresh: Vec<&DeadLetter> = letters
            .iter()
            .filter(|l| !self.has(l.partition, l.offset))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for letter in &fresh {
            serde_json::to_writer(&mut text, letter)
                .map_err(|e| Error::Internal(format!("dead letter encoding: {e}")))?;
            text.push(b'\n');
        }
        let _turn = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let fail = |e: std::io::Error| Error::Storage(format!("{}: {e}", self.path.display()));
        let created = !self.path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        file.write_all(&text).map_err(fail)?;
        file.sync_data().map_err(fail)?;
        // A new file's name is durable once its directory is synced.
        if created && let Some(dir) = self.path.parent() {
            crate::storage::log::sync_dir(dir)?;
        }
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        for letter in &fresh {
            let entry = newest.entry(letter.partition).or_insert(letter.offset);
            *entry = (*entry).max(letter.offset);
        }
        self.count.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Every letter kept, oldest first.
    pub fn read(&self) -> Result<Vec<DeadLetter>> {
        let _turn = self.file.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read_with_length()?.0)
    }

    /// The whole lines' letters and their length in bytes.
    fn read_with_length(&self) -> Result<(Vec<DeadLetter>, u64)> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(Error::Storage(format!("{}: {e}", self.path.display()))),
        };
        let mut reader = std::io::BufReader::new(file);
        let mut letters = Vec::new();
        let mut whole = 0u64;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::Storage(format!("{}: {e}", self.path.display())))?;
            if read == 0 || line.last() != Some(&b'\n') {
                break;
            }
            match serde_json::from_slice::<DeadLetter>(&line) {
                Ok(letter) => letters.push(letter),
                Err(_) => break,
            }
            whole += read as u64;
        }
        Ok((letters, whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64) -> DeadLetter {
        DeadLetter {
            partition,
            offset,
            key: None,
            payload: Some(hex(b"{bad")),
            error: "bad".into(),
            received_at: 0,
        }
    }

    #[test]
    fn letters_are_kept_once_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("dead_letters.jsonl");
        let log = DeadLetterLog::open(&path).expect("open");
        log.append(&[letter(0, 5), letter(1, 2)]).expect("append");
        log.append(&[letter(0, 5), letter(0, 6)]).expect("again");
        assert_eq!(log.count(), 3);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("file");
        file.write_all(b"{\"partition\":0,\"off").expect("torn");
        drop(file);
        let log = DeadLetterLog::open(&path).expect("reopen");
        assert_eq!(log.count(), 3);
        assert!(log.has(0, 6) && !log.has(0, 7) && log.has(1, 2));
        log.append(&[letter(0, 7)]).expect("after the cut");
        assert_eq!(log.read().expect("read").len(), 4);
        assert_eq!(unhex(&hex(b"\x00\xffa")), Some(b"\x00\xffa".to_vec()));
        assert_eq!(unhex("zz"), None);
    }
}
