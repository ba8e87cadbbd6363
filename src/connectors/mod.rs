//! Connectors: sources that feed a stream from outside the SQL session.
//!
//! A stream created `WITH (connector = '...', ...)` is fed by one source task, started when the
//! stream is created and again at every server start, stopped when the stream is dropped. A
//! source appends through [`StreamStore::append`] like any writer (durable, atomic records); user
//! writes (INSERT, COPY, HTTP) into such a stream are refused, so the stream's log is the
//! source's own record of how far it got and a restart resumes there.
//!
//! Connectors today: [`nexmark`] (the built-in Nexmark event generator), [`datagen`] (random
//! rows for the stream's own columns) and [`kafka`] (a topic's partitions, exactly once, bad
//! records to [`dead_letters`]). `eddy_catalog.sources` shows every source's state, position,
//! lag and error, `eddy_catalog.source_partitions` each Kafka partition's offsets and lag, and
//! `eddy_catalog.dead_letters` the records that could not be decoded.

pub mod avro;
pub mod datagen;
pub mod dead_letters;
pub mod kafka;
pub mod kafka_consumer;
pub mod kafka_producer;
pub mod kafka_protocol;
pub mod nexmark;
pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};
use crate::storage::{IngestPath, StreamStore};

/// The option naming a stream's connector.
pub const CONNECTOR: &str = "connector";

/// Connector names and the options each accepts besides `connector`.
/// An option ending in `.*` stands for every option with that prefix.
const CONNECTORS: &[(&str, &[&str])] = &[
    ("nexmark", nexmark::OPTIONS),
    ("datagen", datagen::OPTIONS),
    ("kafka", kafka::OPTIONS),
];

/// Whether option `name` is one of `options` (entries ending in `.*` match a prefix).
pub fn option_listed(options: &[&str], name: &str) -> bool {
    options.iter().any(|option| match option.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix) && name.len() > prefix.len(),
        None => *option == name,
    })
}

/// The options a stream with connector `name` accepts besides `connector`.
pub fn connector_options(name: &str) -> Result<&'static [&'static str]> {
    CONNECTORS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, options)| *options)
        .ok_or_else(|| {
            Error::InvalidValue(format!(
                "unknown connector \"{name}\" (known: {})",
                CONNECTORS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Whether `name` is `connector` or an option of some connector (fixed at creation).
pub fn is_connector_option(name: &str) -> bool {
    name == CONNECTOR
        || CONNECTORS
            .iter()
            .any(|(_, options)| option_listed(options, name))
}

/// Check a new stream's connector options and fill in the defaults that must stay fixed for
/// the stream's life (the Nexmark start time). Returns the columns the connector produces, as
/// SQL, when the connector defines them.
pub fn prepare(options: &mut BTreeMap<String, String>) -> Result<Option<&'static str>> {
    let Some(connector) = options.get(CONNECTOR).map(|c| c.to_ascii_lowercase()) else {
        return Ok(None);
    };
    options.insert(CONNECTOR.to_string(), connector.clone());
    // Misspelled options are reported as such before the connector reads the others.
    crate::storage::check_stream_option_names(options)?;
    if connector == "nexmark" || connector == "datagen" {
        options.entry("start_time".to_string()).or_insert_with(|| {
            chrono::Utc::now()
                .format("%Y-%m-%d %H:%M:%S%.3f+00")
                .to_string()
        });
    }
    if connector == "nexmark" {
        let source = nexmark::NexmarkSource::from_options(options)?;
        return Ok(Some(nexmark::NexmarkSource::columns_sql(source.event_type)));
    }
    Ok(None)
}

/// Check a new stream's connector options against its columns (once the columns are known).
pub fn check(options: &BTreeMap<String, String>, schema: &SchemaRef) -> Result<()> {
    match options.get(CONNECTOR).map(String::as_str) {
        Some("datagen") => {
            datagen::DatagenSource::new(options, schema)?;
        }
        Some("kafka") => {
            kafka::KafkaSource::new(options, schema)?;
        }
        _ => {}
    }
    Ok(())
}

/// Where a source is.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceState {
    Running,
    /// A bounded source wrote everything it had.
    Finished,
    Failed(String),
}

/// One running source, as `eddy_catalog.sources` shows it.
#[derive(Debug)]
pub struct SourceStatus {
    /// `schema.name` of the stream it feeds.
    pub stream: String,
    pub connector: String,
    /// Connector-defined position: for Nexmark, events of all types generated so far.
    position: AtomicU64,
    /// Rows this source has appended to the stream in all (across restarts).
    rows: AtomicU64,
    state: Mutex<SourceState>,
    /// Why a running source is not making progress (brokers unreachable, topic missing).
    note: Mutex<Option<String>>,
    /// Records it could not decode (Kafka).
    dead_letters: Mutex<Option<Arc<dead_letters::DeadLetterLog>>>,
    /// Per Kafka partition: the next offset and the high watermark.
    partitions: Mutex<BTreeMap<i32, PartitionProgress>>,
}

/// Where a source is in one partition of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub next_offset: i64,
    pub high_watermark: i64,
}

impl SourceStatus {
    fn set_note(&self, note: Option<String>) {
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    /// Rows appended to the stream by this source (across restarts).
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn note(&self) -> Option<String> {
        self.note.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_dead_letters(&self, log: Arc<dead_letters::DeadLetterLog>) {
        *self.dead_letters.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
    }

    pub fn dead_letters(&self) -> Option<Arc<dead_letters::DeadLetterLog>> {
        self.dead_letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_partition(&self, partition: i32, next_offset: i64, high_watermark: i64) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                partition,
                PartitionProgress {
                    next_offset,
                    high_watermark,
                },
            );
    }

    pub fn partitions(&self) -> BTreeMap<i32, PartitionProgress> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records behind the inputs' ends, over all partitions (Kafka).
    pub fn lag(&self) -> Option<u64> {
        let partitions = self.partitions();
        (!partitions.is_empty()).then(|| partitions.values().map(kafka::lag).sum())
    }

    pub fn state(&self) -> SourceState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, state: SourceState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// A source's status and the task that runs it.
/// Running connector tasks by id (a source by its stream's id, a sink by its own), each with
/// the status it reports: what [`Sources`] and [`sink::Sinks`] share.
#[derive(Debug)]
pub struct Tasks<S> {
    running: Mutex<HashMap<u64, Running<S>>>,
}

/// A task's status and its handle.
type Running<S> = (Arc<S>, tokio::task::JoinHandle<()>);

impl<S> Default for Tasks<S> {
    fn default() -> Self {
        Tasks {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<S> Tasks<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running<S>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start task `id` with what `start` returns, unless `replace` is false and one runs; a
    /// task it replaces is aborted.
    pub fn start(&self, id: u64, replace: bool, start: impl FnOnce() -> Running<S>) {
        let mut running = self.lock();
        if !replace && running.contains_key(&id) {
            return;
        }
        if let Some((_, old)) = running.insert(id, start()) {
            old.abort();
        }
    }

    /// Stop task `id` (if any) and wait until it has stopped.
    pub async fn stop(&self, id: u64) {
        let running = self.lock().remove(&id);
        if let Some((_, task)) = running {
            task.abort();
            let _ = task.await;
        }
    }

    /// Every task's status, in no particular order.
    pub fn statuses(&self) -> Vec<Arc<S>> {
        self.lock().values().map(|(s, _)| Arc::clone(s)).collect()
    }
}

/// The pause between attempts to reach a broker again: 200 ms, doubling up to 10 s, and back
/// to 200 ms after a success.
pub(crate) struct RetryPause(Duration);

impl RetryPause {
    const FIRST: Duration = Duration::from_millis(200);
    const LONGEST: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> RetryPause {
        RetryPause(Self::FIRST)
    }

    /// Sleep for the current pause, and make the next one longer.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::LONGEST);
    }

    pub(crate) fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// `run`, with a panic turned into an error: a bug in a connector fails its task, not the
/// server.
pub(crate) async fn unwind_safe(
    run: impl std::future::Future<Output = Result<()>>,
    what: &str,
) -> Result<()> {
    futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run))
        .await
        .unwrap_or_else(|_| Err(Error::Internal(format!("the {what} panicked"))))
}

/// Every running source by stream id.
#[derive(Debug, Default)]
pub struct Sources {
    tasks: Tasks<SourceStatus>,
}

impl Sources {
    /// Start the source of `stream`, if it has a connector.
    pub fn start(&self, stream: Arc<StreamStore>) {
        let def = stream.def();
        let Some(connector) = def.options.get(CONNECTOR).cloned() else {
            return;
        };
        self.tasks.start(def.id, false, || {
            let status = Arc::new(SourceStatus {
                stream: format!("{}.{}", def.schema_name, def.name),
                connector: connector.clone(),
                position: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                state: Mutex::new(SourceState::Running),
                note: Mutex::new(None),
                dead_letters: Mutex::new(None),
                partitions: Mutex::new(BTreeMap::new()),
            });
            let task = {
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    let run = async {
                        match connector.as_str() {
                            "nexmark" => run_nexmark(&stream, &status).await,
                            "datagen" => run_datagen(&stream, &status).await,
                            "kafka" => {
                                let stored = stream.stats();
                                let rows = stored.hot_rows
                                    + stored.cold_files.iter().map(|f| f.rows).sum::<u64>();
                                status.rows.store(rows, Ordering::Relaxed);
                                kafka::run(&stream, &status).await
                            }
                            other => Err(Error::InvalidValue(format!(
                                "unknown connector \"{other}\""
                            ))),
                        }
                    };
                    match unwind_safe(run, "source").await {
                        Ok(()) => status.set_state(SourceState::Finished),
                        Err(e) => {
                            tracing::error!(stream = %status.stream, error = %e, "source failed");
                            status.set_state(SourceState::Failed(e.to_string()));
                        }
                    }
                })
            };
            (status, task)
        });
    }

    /// Stop the source of stream `id` (if any) and wait until it no longer writes.
    pub async fn stop(&self, id: u64) {
        self.tasks.stop(id).await;
    }

    /// All sources, by stream name.
    pub fn all(&self) -> Vec<Arc<SourceStatus>> {
        let mut all = self.tasks.statuses();
        all.sort_by(|a, b| a.stream.cmp(&b.stream));
        all
    }

    /// Schema of `eddy_catalog.sources`.
    pub fn system_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("connector", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("position", DataType::UInt64, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("error", DataType::Utf8, true),
            Field::new("lag", DataType::UInt64, true),
            Field::new("dead_letters", DataType::UInt64, true),
        ]))
    }

    /// Schema of `eddy_catalog.source_partitions`.
    pub fn partitions_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("next_offset", DataType::Int64, false),
            Field::new("high_watermark", DataType::Int64, false),
            Field::new("lag", DataType::UInt64, false),
        ]))
    }

    /// Contents of `eddy_catalog.source_partitions`.
    pub fn partitions_batch(&self) -> Result<RecordBatch> {
        let mut sources = Vec::new();
        let mut partitions = Vec::new();
        let mut next = Vec::new();
        let mut high = Vec::new();
        let mut lag = Vec::new();
        for status in self.all() {
            for (partition, progress) in status.partitions() {
                sources.push(status.stream.clone());
                partitions.push(partition);
                next.push(progress.next_offset);
                high.push(progress.high_watermark);
                lag.push(kafka::lag(&progress));
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sources)),
            Arc::new(datafusion::arrow::array::Int32Array::from(partitions)),
            Arc::new(datafusion::arrow::array::Int64Array::from(next)),
            Arc::new(datafusion::arrow::array::Int64Array::from(high)),
            Arc::new(UInt64Array::from(lag)),
        ];
        Ok(RecordBatch::try_new(Self::partitions_schema(), columns)?)
    }

    /// Schema of `eddy_catalog.dead_letters`.
    pub fn dead_letters_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("key", DataType::Binary, true),
            Field::new("payload", DataType::Binary, true),
            Field::new("error", DataType::Utf8, false),
            Field::new(
                "received_at",
                DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Microsecond,
                    Some("+00:00".into()),
                ),
                false,
            ),
        ]))
    }

    /// Contents of `eddy_catalog.dead_letters`: every source's, oldest first.
    pub fn dead_letters_batch(&self) -> Result<RecordBatch> {
        let mut sources = Vec::new();
        let mut letters = Vec::new();
        for status in self.all() {
            if let Some(log) = status.dead_letters() {
                for letter in log.read()? {
                    sources.push(status.stream.clone());
                    letters.push(letter);
                }
            }
        }
        let bytes = |text: &Option<String>| text.as_deref().and_then(dead_letters::unhex);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(sources)),
            Arc::new(datafusion::arrow::array::Int32Array::from_iter_values(
                letters.iter().map(|l| l.partition),
            )),
            Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                letters.iter().map(|l| l.offset),
            )),
            Arc::new(datafusion::arrow::array::BinaryArray::from_iter(
                letters.iter().map(|l| bytes(&l.key)),
            )),
            Arc::new(datafusion::arrow::array::BinaryArray::from_iter(
                letters.iter().map(|l| bytes(&l.payload)),
            )),
            Arc::new(StringArray::from_iter_values(
                letters.iter().map(|l| l.error.as_str()),
            )),
            Arc::new(
                datafusion::arrow::array::TimestampMicrosecondArray::from_iter_values(
                    letters.iter().map(|l| l.received_at),
                )
                .with_timezone("+00:00"),
            ),
        ];
        Ok(RecordBatch::try_new(Self::dead_letters_schema(), columns)?)
    }

    /// Contents of `eddy_catalog.sources`.
    pub fn system_batch(&self) -> Result<RecordBatch> {
        let all = self.all();
        let states: Vec<SourceState> = all.iter().map(|s| s.state()).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|s| s.stream.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|s| s.connector.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(states.iter().map(
                |s| match s {
                    SourceState::Running => "running",
                    SourceState::Finished => "finished",
                    SourceState::Failed(_) => "failed",
                },
            ))),
            Arc::new(UInt64Array::from_iter_values(
                all.iter().map(|s| s.position.load(Ordering::Relaxed)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                all.iter().map(|s| s.rows.load(Ordering::Relaxed)),
            )),
            Arc::new(StringArray::from_iter(states.iter().zip(&all).map(
                |(s, status)| match s {
                    SourceState::Failed(e) => Some(e.clone()),
                    _ => status.note(),
                },
            ))),
            Arc::new(UInt64Array::from_iter(all.iter().map(|s| s.lag()))),
            Arc::new(UInt64Array::from_iter(
                all.iter().map(|s| s.dead_letters().map(|l| l.count())),
            )),
        ];
        Ok(RecordBatch::try_new(Self::system_schema(), columns)?)
    }
}

/// Generate Nexmark events into `stream` from where its log says the generator got to.
async fn run_nexmark(stream: &StreamStore, status: &SourceStatus) -> Result<()> {
    let source = nexmark::NexmarkSource::from_options(&stream.def().options)?;
    let schema = stream.schema();
    // One record per chunk, and only this source writes the stream: the records appended so
    // far are the chunks done.
    let mut chunk = stream.appended_records();
    let report = |chunk: u64| {
        let position = source.position(chunk);
        status.position.store(position, Ordering::Relaxed);
        status
            .rows
            .store(source.rows_within(position), Ordering::Relaxed);
    };
    report(chunk);
    loop {
        if source.chunks().is_some_and(|total| chunk >= total) {
            return Ok(());
        }
        tokio::time::sleep(source.delay_before(chunk)).await;
        let batch = source.chunk(chunk, &schema)?;
        stream.append(IngestPath::Source, vec![batch]).await?;
        chunk += 1;
        report(chunk);
    }
}

/// Generate random rows into `stream` from where its log says the generator got to.
async fn run_datagen(stream: &StreamStore, status: &SourceStatus) -> Result<()> {
    let source = datagen::DatagenSource::new(&stream.def().options, &stream.schema())?;
    // One record per chunk, and only this source writes the stream.
    let mut chunk = stream.appended_records();
    let report = |chunk: u64| {
        let rows = source.rows_within(chunk);
        status.position.store(rows, Ordering::Relaxed);
        status.rows.store(rows, Ordering::Relaxed);
    };
    report(chunk);
    loop {
        if source.chunks().is_some_and(|total| chunk >= total) {
            return Ok(());
        }
        tokio::time::sleep(source.delay_before(chunk)).await;
        let batch = source.chunk(chunk)?;
        stream.append(IngestPath::Source, vec![batch]).await?;
        chunk += 1;
        report(chunk);
    }
}
