//! The write-ahead log of one stream or table: what makes an acknowledged write survive `kill -9`
//! and power loss.
//!
//! A log is a directory of segment files named by the sequence number of their first record
//! (`00000000000000000042.seg`). A record is one frame:
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE][seq: u64 LE][kind: u8][payload: len - 9 bytes]
//! ```
//!
//! where the CRC covers everything after itself. Writers append under a short lock that also
//! assigns the sequence number, so the order of records is the order callers observe (they apply
//! the record to memory inside that lock, see [`Log::append`]). Durability is a second step,
//! [`Log::sync_to`]: the first writer to need a sync becomes the leader and fsyncs once for every
//! record written so far, while the others wait for it; many small writers share one fsync
//! (group commit). Under [`SyncPolicy::None`] writes are acknowledged once they are in the OS page
//! cache: they survive a killed process but not a power loss.
//!
//! Recovery ([`Log::open`]) reads every segment in order and stops at the first frame that is
//! short, fails its checksum, or breaks the sequence: that is a torn write from the crash. The
//! segment is truncated there and any later segment removed, so the log is again a clean prefix
//! of what was written, which includes everything that was acknowledged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fsync before acknowledging (group commit shares one fsync among concurrent writers).
    Fsync,
    /// Acknowledge once written to the OS: survives a killed server, not a power loss.
    None,
}

/// One record read back from the log.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub kind: u8,
    pub payload: Bytes,
}

/// Bytes before the payload: len, crc, seq, kind.
const HEADER: usize = 4 + 4 + 8 + 1;
/// A frame larger than this is corruption, not data (one statement's rows are far smaller).
const MAX_FRAME: usize = 1 << 31;

/// A segmented, checksummed, group-committed log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    policy: SyncPolicy,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// The highest sequence number known durable.
    durable: watch::Sender<u64>,
    /// Held by the one writer running an fsync; the others queue behind it.
    sync_turn: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    segment_len: u64,
    /// First sequence number of each segment, the active (last) one included.
    segments: BTreeMap<u64, PathBuf>,
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Set when a write or fsync failed: the log refuses writes from then on, as PostgreSQL
    /// does, because what is on disk is no longer known.
    failed: Option<String>,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn io_error(context: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{context} {}: {e}", path.display()))
}

/// fsync a directory so a file created or removed in it stays so.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("could not sync directory", dir, e))
}

impl Log {
    /// Open (or create) the log in `dir`, returning it and every intact record, oldest first.
    /// `floor` is the lowest sequence number the next record may have (one past what is already
    /// stored elsewhere), so numbers never repeat even if the log lost its tail.
    pub fn open(
        dir: &Path,
        policy: SyncPolicy,
        segment_bytes: u64,
        floor: u64,
    ) -> Result<(Log, Vec<Record>)> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("could not create", dir, e))?;
        let mut segments = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| io_error("could not list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("could not list", dir, e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.insert(first, entry.path());
        }
        let mut records = Vec::new();
        let mut next_seq = segments.keys().next().copied().unwrap_or(1);
        let mut kept: BTreeMap<u64, PathBuf> = BTreeMap::new();
        let mut torn = false;
        for (first, path) in segments {
            if torn {
                tracing::warn!(segment = %path.display(), "removing log segment after a torn write");
                std::fs::remove_file(&path).map_err(|e| io_error("could not remove", &path, e))?;
                continue;
            }
            if first != next_seq {
                // A gap: the segment does not continue the log, nor does anything after it.
                tracing::error!(segment = %path.display(), expected = next_seq, "log segment out of sequence");
                torn = true;
                std::fs::remove_file(&path).map_err(|e| io_error("could not remove", &path, e))?;
                continue;
            }
            let (intact_len, file_len) = read_segment(&path, &mut next_seq, &mut records)?;
            if intact_len < file_len {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = intact_len,
                    dropped_bytes = file_len - intact_len,
                    "dropping the torn tail of the log"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_error("could not open", &path, e))?;
                file.set_len(intact_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error("could not truncate", &path, e))?;
                torn = true;
            }
            kept.insert(first, path);
        }
        let mut segments = kept;
        if floor > next_seq {
            // Everything before `floor` is stored elsewhere (Parquet) and the log lost its end
            // (a power loss under `sync = "none"`, a removed directory): start again at the
            // floor so sequence numbers never repeat, and drop segments that held only old
            // records.
            tracing::warn!(dir = %dir.display(), log_end = next_seq, floor, "log ends before the flushed boundary; restarting it there");
            for path in segments.values() {
                std::fs::remove_file(path).map_err(|e| io_error("could not remove", path, e))?;
            }
            segments.clear();
            records.clear();
            next_seq = floor;
        }
        // Appending continues in the last segment (possibly empty, after a crash right after a
        // roll), or in a new one named by the next sequence number.
        let active_path = match segments.last_key_value() {
            Some((_, path)) => path.clone(),
            None => {
                let path = segment_path(dir, next_seq);
                segments.insert(next_seq, path.clone());
                path
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(|e| io_error("could not open", &active_path, e))?;
        let segment_len = file
            .metadata()
            .map_err(|e| io_error("could not stat", &active_path, e))?
            .len();
        sync_dir(dir)?;
        let durable = next_seq - 1;
        let log = Log {
            dir: dir.to_path_buf(),
            policy,
            segment_bytes,
            inner: Mutex::new(Inner {
                file,
                segment_len,
                segments,
                next_seq,
                failed: None,
            }),
            durable: watch::Sender::new(durable),
            sync_turn: tokio::sync::Mutex::new(()),
        };
        Ok((log, records))
    }

    /// Append one record. `apply` runs with the record's sequence number while the log is
    /// locked, so changes it makes to memory happen in log order. The record is written but not
    /// yet durable: call [`Log::sync_to`] before acknowledging it.
    pub fn append<T>(&self, kind: u8, payload: &[u8], apply: impl FnOnce(u64) -> T) -> Result<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(failed) = &inner.failed {
            return Err(Error::Storage(format!(
                "the log refuses writes after an earlier failure: {failed}"
            )));
        }
        if inner.segment_len >= self.segment_bytes
            && let Err(e) = self.roll(&mut inner)
        {
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        let seq = inner.next_seq;
        let frame = encode_frame(seq, kind, payload)?;
        if let Err(e) = inner.file.write_all(&frame) {
            // A partial frame may be on disk; nothing more can be appended safely.
            inner.failed = Some(e.to_string());
            return Err(io_error("could not write to the log in", &self.dir, e));
        }
        inner.segment_len += frame.len() as u64;
        inner.next_seq += 1;
        if self.policy == SyncPolicy::None {
            self.mark_durable(seq);
        }
        Ok(apply(seq))
    }

    /// Return once every record up to `seq` is durable under the log's policy.
    pub async fn sync_to(&self, seq: u64) -> Result<()> {
        loop {
            if *self.durable.borrow() >= seq {
                return Ok(());
            }
            let _turn = self.sync_turn.lock().await;
            if *self.durable.borrow() >= seq {
                return Ok(()); // the previous leader's fsync covered this record
            }
            let upto = self.fsync().await?;
            self.mark_durable(upto);
        }
    }

    /// Raise the durable sequence number (never lower it: syncs may finish out of order).
    fn mark_durable(&self, upto: u64) {
        self.durable.send_if_modified(|d| {
            let raised = upto > *d;
            *d = (*d).max(upto);
            raised
        });
    }

    /// fsync everything written so far, whatever the policy: before records are released
    /// because something else (a snapshot, a Parquet file) now holds them.
    pub async fn force_sync(&self) -> Result<()> {
        let upto = self.fsync().await?;
        self.mark_durable(upto);
        Ok(())
    }

    /// fsync the active segment; returns the last sequence number it covers. A failure marks
    /// the log failed: after a failed fsync the kernel may have dropped the dirty pages, and a
    /// later fsync could report success for data that is gone.
    async fn fsync(&self) -> Result<u64> {
        let (file, upto) = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(failed) = &inner.failed {
                return Err(Error::Storage(format!("the log failed earlier: {failed}")));
            }
            let file = inner
                .file
                .try_clone()
                .map_err(|e| io_error("could not sync the log in", &self.dir, e))?;
            (file, inner.next_seq - 1)
        };
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| Error::Internal(format!("fsync task failed: {e}")))?;
        if let Err(e) = synced {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.failed = Some(format!("fsync failed: {e}"));
            return Err(io_error("could not fsync the log in", &self.dir, e));
        }
        Ok(upto)
    }

    /// The sequence number of the last record written (durable or not).
    pub fn written_seq(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq
            - 1
    }

    /// The highest sequence number that is durable (readers show nothing beyond it).
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Start a new segment, syncing the current one first so no sync is ever owed to a file the
    /// log no longer writes.
    fn roll(&self, inner: &mut Inner) -> Result<()> {
        inner
            .file
            .sync_data()
            .map_err(|e| io_error("could not fsync the log in", &self.dir, e))?;
        let path = segment_path(&self.dir, inner.next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("could not create", &path, e))?;
        sync_dir(&self.dir)?;
        inner.file = file;
        inner.segment_len = 0;
        inner.segments.insert(inner.next_seq, path);
        Ok(())
    }

    /// Delete the segments whose records all have sequence numbers up to `seq`: their contents
    /// live elsewhere now (Parquet files, a table snapshot). The active segment is rolled first
    /// when it is entirely covered, so it can go too.
    pub fn release_upto(&self, seq: u64) -> Result<usize> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.next_seq - 1 <= seq
            && inner.segment_len > 0
            && let Err(e) = self.roll(&mut inner)
        {
            inner.failed = Some(e.to_string());
            return Err(e);
        }
        let firsts: Vec<u64> = inner.segments.keys().copied().collect();
        let mut removed = 0;
        for pair in firsts.windows(2) {
            let (first, next_first) = (pair[0], pair[1]);
            if next_first - 1 <= seq
                && let Some(path) = inner.segments.remove(&first)
            {
                std::fs::remove_file(&path).map_err(|e| io_error("could not remove", &path, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The lowest sequence number the log still holds a record for (or would write next).
    pub fn first_seq(&self) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(inner.next_seq)
    }

    /// The records with sequence numbers in `(after, upto]`, read back from the segments.
    pub fn read_range(&self, after: u64, upto: u64) -> Result<Vec<Record>> {
        let segments: Vec<(u64, PathBuf)> = {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner
                .segments
                .iter()
                .map(|(first, path)| (*first, path.clone()))
                .collect()
        };
        let mut records = Vec::new();
        for (i, (first, path)) in segments.iter().enumerate() {
            let last = segments.get(i + 1).map_or(u64::MAX, |(next, _)| next - 1);
            if last <= after || *first > upto {
                continue;
            }
            let mut next_seq = *first;
            let mut found = Vec::new();
            read_segment(path, &mut next_seq, &mut found)?;
            records.extend(found.into_iter().filter(|r| r.seq > after && r.seq <= upto));
        }
        Ok(records)
    }

    /// Remove the whole log (the stream or table was dropped).
    pub fn destroy(&self) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.failed = Some("the relation was dropped".to_string());
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("could not remove", &self.dir, e)),
        }
    }
}

fn encode_frame(seq: u64, kind: u8, payload: &[u8]) -> Result<Vec<u8>> {
    let len = payload.len() + 9;
    if len >= MAX_FRAME {
        return Err(Error::ProgramLimitExceeded(format!(
            "one write of {} bytes exceeds the log's limit of {MAX_FRAME} bytes; split it",
            payload.len()
        )));
    }
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// Read the intact frames of one segment into `records`; returns (intact length, file length).
fn read_segment(path: &Path, next_seq: &mut u64, records: &mut Vec<Record>) -> Result<(u64, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error("could not read", path, e))?;
    let bytes = Bytes::from(bytes);
    let mut offset = 0usize;
    while bytes.len() - offset >= HEADER {
        let word = |at: usize| -> [u8; 4] {
            let mut w = [0; 4];
            w.copy_from_slice(&bytes[at..at + 4]);
            w
        };
        let len = u32::from_le_bytes(word(offset)) as usize;
        let crc = u32::from_le_bytes(word(offset + 4));
        let body_start = offset + 8;
        if !(9..MAX_FRAME).contains(&len) || bytes.len() - body_start < len {
            break;
        }
        let body = &bytes[body_start..body_start + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let mut seq_bytes = [0; 8];
        seq_bytes.copy_from_slice(&body[..8]);
        let seq = u64::from_le_bytes(seq_bytes);
        if seq != *next_seq {
            break;
        }
        records.push(Record {
            seq,
            kind: body[8],
            payload: bytes.slice(body_start + 9..body_start + len),
        });
        *next_seq += 1;
        offset = body_start + len;
    }
    Ok((offset as u64, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn torn_tail_is_dropped_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, records) = Log::open(dir.path(), SyncPolicy::Fsync, 1 << 20, 0).unwrap();
            assert!(records.is_empty());
            for i in 0..3u8 {
                let seq = log.append(1, &[i; 10], |seq| seq).unwrap();
                log.sync_to(seq).await.unwrap();
            }
        }
        // A torn write: half a frame at the end.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode_frame(4, 1, &[9; 100]).unwrap()[..50])
            .unwrap();
        drop(f);
        let (log, records) = Log::open(dir.path(), SyncPolicy::Fsync, 1 << 20, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(&records[2].payload[..], &[2; 10]);
        let seq = log.append(1, b"next", |seq| seq).unwrap();
        assert_eq!(seq, 4);
        log.sync_to(seq).await.unwrap();
        drop(log);
        let (_, records) = Log::open(dir.path(), SyncPolicy::Fsync, 1 << 20, 0).unwrap();
        assert_eq!(records.len(), 4);
    }

    #[tokio::test]
    async fn corrupted_frame_ends_the_log_and_later_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), SyncPolicy::None, 64, 0).unwrap();
            for i in 0..6u8 {
                log.append(1, &[i; 40], |_| ()).unwrap();
            }
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments >= 3, "small segments roll: {segments}");
        // Flip a payload byte of the second record (the first segment holds records 1 and 2).
        let seg = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        let second = HEADER + 40;
        bytes[second + HEADER + 3] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (_, records) = Log::open(dir.path(), SyncPolicy::None, 64, 0).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
    }

    #[tokio::test]
    async fn sequence_numbers_never_go_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), SyncPolicy::None, 1 << 20, 0).unwrap();
            for i in 0..3u8 {
                log.append(1, &[i], |_| ()).unwrap();
            }
        }
        // Records up to 10 live elsewhere; the log only reached 3 (its tail was lost).
        let (log, records) = Log::open(dir.path(), SyncPolicy::None, 1 << 20, 11).unwrap();
        assert!(records.is_empty(), "old records are dropped: {records:?}");
        assert_eq!(log.append(1, b"x", |seq| seq).unwrap(), 11);
        drop(log);
        let (_, records) = Log::open(dir.path(), SyncPolicy::None, 1 << 20, 11).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [11]);
    }

    #[tokio::test]
    async fn released_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), SyncPolicy::None, 64, 0).unwrap();
        for i in 0..6u8 {
            log.append(1, &[i; 40], |_| ()).unwrap();
        }
        log.release_upto(4).unwrap();
        drop(log);
        let (_, records) = Log::open(dir.path(), SyncPolicy::None, 64, 0).unwrap();
        assert!(records.iter().all(|r| r.seq > 4));
        assert_eq!(records.last().map(|r| r.seq), Some(6));
    }
}
