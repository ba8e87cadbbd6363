//! A stream: append-only rows, durable in a [`Log`], recent ones in memory (the hot tier), older
//! ones in Parquet files on the cold tier, and one DataFusion table over both.
//!
//! Every append is one log record with a sequence number. Rows move through three places:
//!
//! ```text
//!   append ──► log record (fsync) ──► hot tier (memory) ──flush──► Parquet file ──► manifest
//!                 │                                                              │
//!                 └────────── segments released once manifest.flushed_seq covers them
//! ```
//!
//! The manifest's `flushed_seq` is the boundary: records at or below it are read from Parquet,
//! records above it from memory, so a scan ([`StreamStore::snapshot`], taken under one lock) sees
//! each row exactly once, and recovery replays only the log records above it. A scan shows a
//! record only once it is durable, so nothing a client has not been told is stored can be seen.
//!
//! Background maintenance ([`StreamStore::flush`], [`StreamStore::compact`],
//! [`StreamStore::expire`]) is driven by the storage task: flush when the hot tier is big or old,
//! merge small files of one partition into one, and drop whole files past the stream's retention.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::cold::{ColdFile, ColdStore, Manifest};
use super::log::{Log, Record};
use super::{HotMemory, IngestPath, InsertSink, RelationDef, StorageConfig, codec};
use crate::error::{Error, Result};

/// Log record kind: a batch of appended rows.
const KIND_ROWS: u8 = 1;
/// Log record kind: a batch of rows and the connector position they bring the stream to
/// (u32 length, the position text, then the rows), written as one record.
const KIND_POSITIONED_ROWS: u8 = 2;

/// A log record's rows and, for a positioned record, its position.
fn decode_record(kind: u8, payload: &[u8]) -> Result<(Vec<RecordBatch>, Option<String>)> {
    if kind != KIND_POSITIONED_ROWS {
        return Ok((codec::decode_batches(payload)?, None));
    }
    let bad = || Error::Storage("positioned stream record truncated".to_string());
    let (length, rest) = payload.split_first_chunk::<4>().ok_or_else(bad)?;
    let length = u32::from_le_bytes(*length) as usize;
    let position = rest.get(..length).ok_or_else(bad)?;
    let position = String::from_utf8(position.to_vec())
        .map_err(|_| Error::Storage("stream record position is not UTF-8".to_string()))?;
    Ok((codec::decode_batches(&rest[length..])?, Some(position)))
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// One durable append, in memory until flushed.
#[derive(Debug)]
struct HotRecord {
    seq: u64,
    batches: Vec<RecordBatch>,
    bytes: usize,
    arrived: Instant,
    /// The connector position this record brought the stream to, if it carried one.
    position: Option<String>,
}

#[derive(Debug, Default)]
struct StreamState {
    hot: VecDeque<HotRecord>,
    hot_bytes: usize,
    manifest: Manifest,
    /// Materialized views reading this stream: every appended record, in log order.
    subscribers: Vec<UnboundedSender<LiveRecord>>,
}

/// What a new reader of the stream starts from: every stored row, then the live appends.
#[derive(Debug)]
pub struct Subscription {
    /// Cold files, to read first.
    pub cold: Vec<ColdFile>,
    /// Hot records (sequence number, rows), in log order; wait until durable before use.
    pub hot: Vec<(u64, Vec<RecordBatch>)>,
    /// Records appended after the ones above.
    pub live: UnboundedReceiver<LiveRecord>,
    /// The cold files hold every record up to this one; `hot` starts after it.
    pub flushed_seq: u64,
}

/// A record appended while a subscription is open: sequence number, rows, and when the append
/// began (where event-to-view latency is measured from). Wait until durable before use.
pub type LiveRecord = (u64, Vec<RecordBatch>, Instant);

/// What a scan reads: durable hot rows and the cold files that may hold matching rows.
#[derive(Debug)]
pub struct Snapshot {
    pub hot: Vec<RecordBatch>,
    pub cold: Vec<ColdFile>,
    /// Cold files left out by the time predicate.
    pub pruned_files: usize,
}

/// Counters for `eddy_catalog.streams`.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub hot_rows: u64,
    pub hot_bytes: u64,
    pub cold_files: Vec<ColdFile>,
}

/// The storage of one stream.
#[derive(Debug)]
pub struct StreamStore {
    def: RwLock<RelationDef>,
    schema: SchemaRef,
    event_time: Option<usize>,
    log: Log,
    manifest_path: PathBuf,
    cold: Arc<ColdStore>,
    state: RwLock<StreamState>,
    /// One flush, compaction or expiry at a time.
    maintenance: tokio::sync::Mutex<()>,
    /// Hot-tier bytes across all streams, for the memory bound.
    memory: Arc<HotMemory>,
    /// Files unlisted by compaction, deleted once running scans are done with them.
    graveyard: std::sync::Mutex<Vec<(String, Instant)>>,
    /// Per (view, input): the log position its checkpoint replays from.
    log_holds: std::sync::Mutex<std::collections::HashMap<(u64, usize), u64>>,
    /// What reached the stream and what maintenance did, since the server started.
    pub counters: StreamCounters,
}

/// A stream's counters for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Per [`IngestPath`] (in [`IngestPath::ALL`] order): rows, log bytes and the time from
    /// the write to its durability.
    pub ingested: [IngestCounters; 4],
    /// Flushes of the hot tier to Parquet.
    pub flushes: AtomicU64,
    /// Compactions that merged Parquet files.
    pub compactions: AtomicU64,
}

#[derive(Debug, Default)]
pub struct IngestCounters {
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub latency: crate::telemetry::Histogram,
}

/// How long a file replaced by compaction stays readable for scans that listed it.
const GRAVE_DELAY: Duration = Duration::from_secs(30);

impl StreamStore {
    /// Open a stream's storage, replaying the log records not yet in Parquet into memory.
    pub fn open(
        def: RelationDef,
        dir: PathBuf,
        config: &StorageConfig,
        cold: Arc<ColdStore>,
        memory: Arc<HotMemory>,
    ) -> Result<StreamStore> {
        let schema = def.arrow_schema()?;
        let event_time = match &def.event_time {
            Some(column) => Some(schema.index_of(column)?),
            None => None,
        };
        let manifest_path = dir.join("manifest.json");
        let manifest = Manifest::load(&manifest_path)?;
        let (log, records) = Log::open(
            &dir.join("log"),
            config.sync,
            config.segment_bytes,
            manifest.flushed_seq + 1,
        )?;
        let mut state = StreamState {
            manifest,
            ..StreamState::default()
        };
        for Record { seq, payload, kind } in records {
            if seq <= state.manifest.flushed_seq {
                continue;
            }
            let (batches, position) = decode_record(kind, &payload)?;
            let bytes = batches_bytes(&batches);
            state.hot_bytes += bytes;
            state.hot.push_back(HotRecord {
                seq,
                batches,
                bytes,
                arrived: Instant::now(),
                position,
            });
        }
        memory.add(state.hot_bytes);
        Ok(StreamStore {
            def: RwLock::new(def),
            schema,
            event_time,
            log,
            manifest_path,
            cold,
            state: RwLock::new(state),
            maintenance: tokio::sync::Mutex::new(()),
            memory,
            graveyard: std::sync::Mutex::new(Vec::new()),
            log_holds: std::sync::Mutex::new(std::collections::HashMap::new()),
            counters: StreamCounters::default(),
        })
    }

    /// The stream's own directory (its log and manifest; connectors keep files here too).
    pub fn dir(&self) -> PathBuf {
        self.manifest_path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn def(&self) -> RelationDef {
        read(&self.def).clone()
    }

    /// Change options (ALTER STREAM ... SET); the caller persists the definition.
    pub fn set_def(&self, def: RelationDef) {
        *self.def.write().unwrap_or_else(|e| e.into_inner()) = def;
    }

    fn id(&self) -> u64 {
        read(&self.def).id
    }

    /// Where this stream's cold files live under the store root.
    fn cold_prefix(&self) -> String {
        format!("relations/{}", self.id())
    }

    /// Append rows atomically and durably; returns the number of rows.
    pub async fn append(&self, path: IngestPath, batches: Vec<RecordBatch>) -> Result<u64> {
        self.append_record(path, batches, None).await
    }

    /// Append rows and the connector position they bring the stream to, as one atomic,
    /// durable record (also with no rows, so a position past input that produced none is
    /// kept); [`StreamStore::source_position`] then returns it, also after a crash.
    pub async fn append_at(&self, batches: Vec<RecordBatch>, position: String) -> Result<u64> {
        self.append_record(IngestPath::Source, batches, Some(position))
            .await
    }

    /// The position of the newest durable positioned record (or, after a flush, the one the
    /// manifest kept): where the stream's connector resumes.
    pub fn source_position(&self) -> Option<String> {
        let durable = self.log.durable_seq();
        let state = read(&self.state);
        state
            .hot
            .iter()
            .rev()
            .filter(|r| r.seq <= durable)
            .find_map(|r| r.position.clone())
            .or_else(|| state.manifest.source_position.clone())
    }

    async fn append_record(
        &self,
        path: IngestPath,
        batches: Vec<RecordBatch>,
        position: Option<String>,
    ) -> Result<u64> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows == 0 && position.is_none() {
            return Ok(0);
        }
        let started = Instant::now();
        self.memory.wait_for_room().await;
        let (kind, payload) = match &position {
            None => (KIND_ROWS, codec::encode_batches(&self.schema, &batches)?),
            Some(position) => {
                let mut payload = (position.len() as u32).to_le_bytes().to_vec();
                payload.extend_from_slice(position.as_bytes());
                payload.extend_from_slice(&codec::encode_batches(&self.schema, &batches)?);
                (KIND_POSITIONED_ROWS, payload)
            }
        };
        let bytes = batches_bytes(&batches);
        let arrived = Instant::now();
        let seq = self.log.append(kind, &payload, |seq| {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.hot_bytes += bytes;
            state
                .subscribers
                .retain(|s| s.send((seq, batches.clone(), arrived)).is_ok());
            state.hot.push_back(HotRecord {
                seq,
                batches,
                bytes,
                arrived,
                position,
            });
            seq
        })?;
        self.memory.add(bytes);
        let logged = payload.len() as u64;
        self.log.sync_to(seq).await?;
        // A connector's position-only record (no rows) is not a write of rows.
        if rows > 0 {
            let counters = &self.counters.ingested[path as usize];
            counters.rows.fetch_add(rows as u64, Ordering::Relaxed);
            counters.bytes.fetch_add(logged, Ordering::Relaxed);
            counters.latency.observe(started.elapsed());
        }
        Ok(rows as u64)
    }

    /// The rows a scan reads, each exactly once: durable hot records above the manifest's
    /// boundary, and the listed files that may hold rows with event time in `bounds`.
    pub fn snapshot(&self, bounds: TimeBounds) -> Snapshot {
        let state = read(&self.state);
        let durable = self.log.durable_seq();
        let hot = state
            .hot
            .iter()
            .filter(|r| r.seq <= durable)
            .flat_map(|r| r.batches.iter().cloned())
            .collect();
        let (cold, pruned): (Vec<ColdFile>, Vec<ColdFile>) = state
            .manifest
            .files
            .iter()
            .cloned()
            .partition(|f| bounds.may_contain(f.min_time, f.max_time));
        Snapshot {
            hot,
            cold,
            pruned_files: pruned.len(),
        }
    }

    /// Start reading the whole stream: stored rows now, appends as they come.
    pub fn subscribe(&self) -> Subscription {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let (sender, live) = unbounded_channel();
        state.subscribers.push(sender);
        Subscription {
            cold: state.manifest.files.clone(),
            hot: state
                .hot
                .iter()
                .map(|r| (r.seq, r.batches.clone()))
                .collect(),
            live,
            flushed_seq: state.manifest.flushed_seq,
        }
    }

    /// Wait until record `seq` is durable (making it so if its writer went away).
    pub async fn wait_durable(&self, seq: u64) -> Result<()> {
        self.log.sync_to(seq).await
    }

    /// Read one cold file.
    pub async fn read_file(&self, file: &ColdFile) -> Result<Vec<RecordBatch>> {
        self.cold.read_parquet(&file.path).await
    }

    /// Keep the log records after `seq` for `holder` (a view's checkpointed position), so a
    /// restart can replay them even once they are in Parquet.
    pub fn hold_log_after(&self, holder: (u64, usize), seq: u64) {
        self.log_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(holder, seq);
    }

    /// Drop the holds of view `view_id`.
    pub fn release_log_holds(&self, view_id: u64) {
        self.log_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(view, _), _| *view != view_id);
    }

    /// Whether the log still has every record after `seq`.
    pub fn log_has_after(&self, seq: u64) -> bool {
        self.log.first_seq() <= seq.saturating_add(1)
    }

    /// The records in `(after, upto]` read back from the log, as appended.
    pub fn records_between(&self, after: u64, upto: u64) -> Result<Vec<(u64, Vec<RecordBatch>)>> {
        self.log
            .read_range(after, upto)?
            .into_iter()
            .filter(|r| r.kind == KIND_ROWS || r.kind == KIND_POSITIONED_ROWS)
            .map(|r| Ok((r.seq, decode_record(r.kind, &r.payload)?.0)))
            .collect()
    }

    /// Records appended durably in the stream's life: sequence numbers start at 1 and never
    /// skip or repeat (a record lost before it was durable was never acknowledged), so a
    /// connector writing one record per unit of its input knows from this where to resume.
    pub fn appended_records(&self) -> u64 {
        self.log.durable_seq()
    }

    /// The event-time column, if the stream has one.
    pub fn event_time(&self) -> Option<usize> {
        self.event_time
    }

    pub fn stats(&self) -> StreamStats {
        let state = read(&self.state);
        StreamStats {
            hot_rows: state
                .hot
                .iter()
                .flat_map(|r| &r.batches)
                .map(|b| b.num_rows() as u64)
                .sum(),
            hot_bytes: state.hot_bytes as u64,
            cold_files: state.manifest.files.clone(),
        }
    }

    /// Whether the hot tier should be flushed now.
    pub fn wants_flush(&self, config: &StorageConfig, over_budget: bool) -> bool {
        let state = read(&self.state);
        let Some(oldest) = state.hot.front() else {
            return false;
        };
        let flush_age = read(&self.def)
            .flush_age()
            .ok()
            .flatten()
            .unwrap_or_else(|| config.flush_age());
        over_budget
            || state.hot_bytes >= config.flush_bytes
            || oldest.arrived.elapsed() >= flush_age
    }

    pub fn hot_bytes(&self) -> usize {
        read(&self.state).hot_bytes
    }

    /// Write every durable hot record to Parquet, list the files in the manifest, drop the
    /// records from memory and release the log segments that held them.
    pub async fn flush(&self) -> Result<usize> {
        let _turn = self.maintenance.lock().await;
        // A write whose client went away between writing and syncing is made durable here, so
        // it is neither invisible nor stuck in memory.
        let written = self.log.written_seq();
        self.log.sync_to(written).await?;
        let (records, upto, position) = {
            let state = read(&self.state);
            let durable = self.log.durable_seq();
            let records: Vec<(u64, Vec<RecordBatch>)> = state
                .hot
                .iter()
                .filter(|r| r.seq <= durable)
                .map(|r| (r.seq, r.batches.clone()))
                .collect();
            let Some(upto) = records.last().map(|(seq, _)| *seq) else {
                return Ok(0);
            };
            let position = state
                .hot
                .iter()
                .rev()
                .filter(|r| r.seq <= upto)
                .find_map(|r| r.position.clone());
            (records, upto, position)
        };
        let now = Utc::now().timestamp_micros();
        let mut partitions: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
        for (_, batches) in &records {
            for batch in batches {
                for (hour, part) in self.split_by_hour(batch, now)? {
                    partitions.entry(hour).or_default().push(part);
                }
            }
        }
        let mut files = Vec::with_capacity(partitions.len());
        for (hour, batches) in partitions {
            let path = format!(
                "{}/{}/{upto:020}.parquet",
                self.cold_prefix(),
                partition_dir(hour)
            );
            files.push(self.write_file(path, hour, &batches, now).await?);
        }
        let flushed = files.len();
        self.cold.sync_written().await?;
        let mut manifest = read(&self.state).manifest.clone();
        manifest.files.extend(files);
        manifest.flushed_seq = upto;
        if position.is_some() {
            manifest.source_position = position;
        }
        manifest.store(&self.manifest_path)?;
        let freed = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.manifest = manifest;
            let before = state.hot_bytes;
            state.hot.retain(|r| r.seq > upto);
            state.hot_bytes = state.hot.iter().map(|r| r.bytes).sum();
            before - state.hot_bytes
        };
        self.memory.sub(freed);
        // Records a view's checkpoint still needs stay in the log.
        let hold = self
            .log_holds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .min()
            .copied()
            .unwrap_or(u64::MAX);
        self.log.release_upto(upto.min(hold))?;
        tracing::debug!(stream = %read(&self.def).name, files = flushed, upto, "flushed hot tier to Parquet");
        Ok(flushed)
    }

    /// Merge the small files of each partition into one when there are at least `min_files`.
    pub async fn compact(&self, min_files: usize, target_bytes: u64) -> Result<usize> {
        let _turn = self.maintenance.lock().await;
        let files = read(&self.state).manifest.files.clone();
        let mut by_hour: BTreeMap<i64, Vec<ColdFile>> = BTreeMap::new();
        for file in files.into_iter().filter(|f| f.bytes < target_bytes) {
            by_hour.entry(file.hour).or_default().push(file);
        }
        let mut compacted = 0;
        for (hour, group) in by_hour {
            if group.len() < min_files.max(2) {
                continue;
            }
            let mut batches = Vec::new();
            for file in &group {
                batches.extend(self.cold.read_parquet(&file.path).await?);
            }
            let now = Utc::now().timestamp_micros();
            let path = format!(
                "{}/{}/compacted-{now}.parquet",
                self.cold_prefix(),
                partition_dir(hour)
            );
            let merged = self.write_file(path, hour, &batches, now).await?;
            self.cold.sync_written().await?;
            let replaced: HashSet<&str> = group.iter().map(|f| f.path.as_str()).collect();
            let mut manifest = read(&self.state).manifest.clone();
            manifest
                .files
                .retain(|f| !replaced.contains(f.path.as_str()));
            manifest.files.push(merged);
            manifest.store(&self.manifest_path)?;
            self.state
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .manifest = manifest;
            let mut graveyard = self.graveyard.lock().unwrap_or_else(|e| e.into_inner());
            graveyard.extend(group.iter().map(|f| (f.path.clone(), Instant::now())));
            compacted += group.len();
        }
        Ok(compacted)
    }

    /// Drop the files whose newest row is older than the stream's retention.
    pub async fn expire(&self) -> Result<usize> {
        let Some(retention) = read(&self.def).retention()? else {
            return Ok(0);
        };
        let _turn = self.maintenance.lock().await;
        let Some(cutoff) = i64::try_from(retention.as_micros())
            .ok()
            .and_then(|r| Utc::now().timestamp_micros().checked_sub(r))
        else {
            return Ok(0); // a retention longer than time itself keeps everything
        };
        let mut manifest = read(&self.state).manifest.clone();
        let (expired, kept): (Vec<ColdFile>, Vec<ColdFile>) = manifest
            .files
            .into_iter()
            .partition(|f| f.max_time.unwrap_or(f.created_at) < cutoff);
        if expired.is_empty() {
            return Ok(0);
        }
        manifest.files = kept;
        manifest.store(&self.manifest_path)?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .manifest = manifest;
        // Scans that listed the files may still be reading them.
        let mut graveyard = self.graveyard.lock().unwrap_or_else(|e| e.into_inner());
        graveyard.extend(expired.iter().map(|f| (f.path.clone(), Instant::now())));
        Ok(expired.len())
    }

    /// Delete files replaced by compaction once no scan can still be reading them.
    pub async fn bury(&self) -> Result<()> {
        let due: Vec<String> = {
            let mut graveyard = self.graveyard.lock().unwrap_or_else(|e| e.into_inner());
            let (due, wait): (Vec<_>, Vec<_>) = graveyard
                .drain(..)
                .partition(|(_, at)| at.elapsed() >= GRAVE_DELAY);
            *graveyard = wait;
            due.into_iter().map(|(p, _)| p).collect()
        };
        self.cold.delete(&due).await
    }

    /// Delete cold files of this stream that the manifest does not list (left by a crash).
    pub async fn remove_unlisted_files(&self) -> Result<usize> {
        let keep: HashSet<String> = read(&self.state)
            .manifest
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        self.cold.remove_unlisted(&self.cold_prefix(), &keep).await
    }

    /// Remove everything: log, manifest, files (DROP STREAM, after the catalog forgot it).
    pub async fn destroy(&self, dir: &std::path::Path) -> Result<()> {
        // No flush or compaction may write files after the cleanup.
        let _turn = self.maintenance.lock().await;
        self.log.destroy()?;
        let freed = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let freed = state.hot_bytes;
            state.hot.clear();
            state.hot_bytes = 0;
            freed
        };
        self.memory.sub(freed);
        self.cold
            .remove_unlisted(&self.cold_prefix(), &HashSet::new())
            .await?;
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Storage(format!(
                "could not remove {}: {e}",
                dir.display()
            ))),
        }
    }

    async fn write_file(
        &self,
        path: String,
        hour: i64,
        batches: &[RecordBatch],
        now: i64,
    ) -> Result<ColdFile> {
        let bytes = self
            .cold
            .write_parquet(&path, &self.schema, batches)
            .await?;
        let (min_time, max_time) = self.time_range(batches)?;
        Ok(ColdFile {
            path,
            hour,
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            bytes,
            min_time,
            max_time,
            created_at: now,
        })
    }

    /// Event times of a batch in microseconds (None without an event-time column).
    fn event_micros(&self, batch: &RecordBatch) -> Result<Option<Vec<Option<i64>>>> {
        let Some(index) = self.event_time else {
            return Ok(None);
        };
        let column = batch.column(index);
        let tz = match column.data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, tz))?;
        let micros = micros.as_primitive::<TimestampMicrosecondType>();
        Ok(Some(micros.iter().collect()))
    }

    fn time_range(&self, batches: &[RecordBatch]) -> Result<(Option<i64>, Option<i64>)> {
        let mut range: (Option<i64>, Option<i64>) = (None, None);
        for batch in batches {
            if let Some(times) = self.event_micros(batch)? {
                for t in times.into_iter().flatten() {
                    range.0 = Some(range.0.map_or(t, |m| m.min(t)));
                    range.1 = Some(range.1.map_or(t, |m| m.max(t)));
                }
            }
        }
        Ok(range)
    }

    /// Split a batch by event-time hour; rows without event time go to the hour of `now`.
    fn split_by_hour(&self, batch: &RecordBatch, now: i64) -> Result<Vec<(i64, RecordBatch)>> {
        let now_hour = now.div_euclid(MICROS_PER_HOUR);
        let Some(times) = self.event_micros(batch)? else {
            return Ok(vec![(now_hour, batch.clone())]);
        };
        let mut rows: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, t) in times.iter().enumerate() {
            let hour = t.map_or(now_hour, |t| t.div_euclid(MICROS_PER_HOUR));
            rows.entry(hour).or_default().push(i as u32);
        }
        if rows.len() == 1 {
            let hour = rows.keys().next().copied().unwrap_or(now_hour);
            return Ok(vec![(hour, batch.clone())]);
        }
        rows.into_iter()
            .map(|(hour, indices)| {
                Ok((hour, take_record_batch(batch, &UInt32Array::from(indices))?))
            })
            .collect()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn batches_bytes(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::get_array_memory_size).sum()
}

/// `date=YYYY-MM-DD/hour=HH` for an hour since the epoch.
fn partition_dir(hour: i64) -> String {
    match DateTime::<Utc>::from_timestamp(hour * 3600, 0) {
        Some(t) => t.format("date=%Y-%m-%d/hour=%H").to_string(),
        None => format!("hour={hour}"),
    }
}

/// Inclusive event-time bounds (microseconds) a query's filters impose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeBounds {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
}

impl TimeBounds {
    /// The bounds implied by `filters` (ANDed) on `column`.
    pub fn from_filters(filters: &[Expr], column: &str) -> TimeBounds {
        let mut bounds = TimeBounds::default();
        for filter in filters {
            bounds.narrow(filter, column);
        }
        bounds
    }

    fn narrow(&mut self, expr: &Expr, column: &str) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.narrow(left, column);
                    self.narrow(right, column);
                    return;
                }
                let (op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (*op, v),
                    (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => match op.swap() {
                        Some(op) => (op, v),
                        None => return,
                    },
                    _ => return,
                };
                let Some(t) = scalar_micros(value) else {
                    return;
                };
                match op {
                    Operator::Gt | Operator::GtEq => self.raise_lower(t),
                    Operator::Lt | Operator::LtEq => self.lower_upper(t),
                    Operator::Eq => {
                        self.raise_lower(t);
                        self.lower_upper(t);
                    }
                    _ => {}
                }
            }
            Expr::Between(between) if !between.negated => {
                if let Expr::Column(c) = between.expr.as_ref()
                    && c.name == column
                {
                    if let Expr::Literal(v, _) = between.low.as_ref()
                        && let Some(t) = scalar_micros(v)
                    {
                        self.raise_lower(t);
                    }
                    if let Expr::Literal(v, _) = between.high.as_ref()
                        && let Some(t) = scalar_micros(v)
                    {
                        self.lower_upper(t);
                    }
                }
            }
            _ => {}
        }
    }

    fn raise_lower(&mut self, t: i64) {
        self.lower = Some(self.lower.map_or(t, |l| l.max(t)));
    }

    fn lower_upper(&mut self, t: i64) {
        self.upper = Some(self.upper.map_or(t, |u| u.min(t)));
    }

    /// Whether a file with these event-time extremes may hold a row within the bounds.
    pub fn may_contain(&self, min: Option<i64>, max: Option<i64>) -> bool {
        let (Some(min), Some(max)) = (min, max) else {
            return true;
        };
        self.lower.is_none_or(|l| max >= l) && self.upper.is_none_or(|u| min <= u)
    }
}

/// A timestamp literal in microseconds since the epoch (rounded outward is not needed: the
/// filter itself still runs on every row; this only decides which files to open).
fn scalar_micros(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1_000)),
        _ => None,
    }
}

/// The DataFusion table of a stream: hot rows from memory, cold rows from Parquet.
#[derive(Debug)]
pub struct StreamTable {
    store: Arc<StreamStore>,
}

impl StreamTable {
    pub fn new(store: Arc<StreamStore>) -> StreamTable {
        StreamTable { store }
    }

    pub fn store(&self) -> &Arc<StreamStore> {
        &self.store
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.store.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune files and row groups; DataFusion still applies them to every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = self.store.schema();
        let bounds = match self.store.event_time {
            Some(i) => TimeBounds::from_filters(filters, schema.field(i).name()),
            None => TimeBounds::default(),
        };
        let snapshot = self.store.snapshot(bounds);
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::with_capacity(2);
        let hot: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            &[snapshot.hot],
            Arc::clone(&schema),
            projection.cloned(),
        )?;
        inputs.push(hot);
        if !snapshot.cold.is_empty() {
            let mut source = ParquetSource::new(Arc::clone(&schema));
            if let Some(predicate) = conjunction(filters.iter().cloned()) {
                let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
                source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
            }
            let files: Vec<PartitionedFile> = snapshot
                .cold
                .iter()
                .map(|f| PartitionedFile::new(f.path.clone(), f.bytes))
                .collect();
            let groups = split_groups(files, state.config().target_partitions());
            let config = FileScanConfigBuilder::new(ColdStore::url(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(config));
        }
        UnionExec::try_new(inputs)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(Error::Unsupported(format!(
                "{insert_op} on stream \"{}\" (streams are append-only)",
                self.store.def().name
            ))
            .into());
        }
        let sink = InsertSink::new(super::Relation::Stream(Arc::clone(&self.store)));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(append_only(&self.store.def().name, "DELETE").into())
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(append_only(&self.store.def().name, "UPDATE").into())
    }

    async fn truncate(
        &self,
        _state: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(append_only(&self.store.def().name, "TRUNCATE").into())
    }
}

fn append_only(name: &str, verb: &str) -> Error {
    Error::Unsupported(format!(
        "{verb} on stream \"{name}\" (streams are append-only: keep changing rows in a table, \
         and let a retention remove old events)"
    ))
}

/// Spread files over at most `n` groups (scanned in parallel), keeping whole files.
fn split_groups(files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.max(1).min(files.len().max(1));
    let mut groups: Vec<Vec<PartitionedFile>> = (0..n).map(|_| Vec::new()).collect();
    for (i, file) in files.into_iter().enumerate() {
        groups[i % n].push(file);
    }
    groups.into_iter().map(FileGroup::new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn time_bounds_from_filters() {
        let ts = |v: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let filters = vec![
            col("ts").gt_eq(ts(100)).and(col("ts").lt(ts(200))),
            ts(150).lt(col("ts")),
        ];
        let bounds = TimeBounds::from_filters(&filters, "ts");
        assert_eq!(
            bounds,
            TimeBounds {
                lower: Some(150),
                upper: Some(200)
            }
        );
        assert!(bounds.may_contain(Some(190), Some(300)));
        assert!(!bounds.may_contain(Some(0), Some(149)));
        assert!(!bounds.may_contain(Some(201), Some(300)));
        assert!(bounds.may_contain(None, None));
        assert_eq!(
            TimeBounds::from_filters(&[col("x").gt(ts(1))], "ts"),
            TimeBounds::default()
        );
    }

    #[test]
    fn partition_directories_are_dates_and_hours() {
        assert_eq!(partition_dir(0), "date=1970-01-01/hour=00");
        assert_eq!(partition_dir(25), "date=1970-01-02/hour=01");
    }
}
