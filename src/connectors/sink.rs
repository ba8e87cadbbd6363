//! Sinks: a materialized view's changes, or a stream's new rows, written to a Kafka topic.
//!
//! ```text
//!  CREATE SINK s FROM v WITH (connector = 'kafka', brokers = ..., topic = ..., [key = 'a, b'],
//!                             [delivery = 'exactly_once'])
//!     view v: its rows now (as inserts), then every change ─┐
//!     stream: every row appended after the sink starts ──────┴─► JSON messages ─► produce
//! ```
//!
//! Without `key`, each message is the row as a JSON object with an `op` field, `insert` or
//! `delete` (an update is a delete and an insert). With `key`, messages are upserts: the key
//! is the key columns' text (one column) or a JSON object of them, the value the row as JSON,
//! and a deleted row's key gets a tombstone (a null value) unless the same change re-inserts
//! it. Keyed messages go to the partition a hash of the key picks (one key's messages stay in
//! order); messages without a key all go to partition 0, the only way their order (a delete
//! before the insert that replaces it) survives.
//!
//! Delivery is at least once by default. A stream's sink keeps the stream position it has
//! sent up to ([`SinkProgress`], `sinks/<id>.position`), written after the broker
//! acknowledged the messages, and resumes after it; a view's sink sends the view's rows again
//! whenever it (re)connects. With `delivery = 'exactly_once'` each message set is one Kafka
//! transaction ([`super::kafka_producer`]) and the progress commits with it, in two steps: the
//! progress is written to `<id>.pending` with the transaction's producer id and epoch once the
//! broker holds every message, then the transaction is committed, then the progress becomes
//! the committed one. A restart finds a pending file and commits that transaction (a commit
//! already done succeeds again) or, if the broker aborted it, sends its messages again; any
//! transaction left open is aborted by the new producer epoch. A view's exactly-once progress
//! is the rows the topic has committed, so after a restart it sends only the difference
//! between those and the view. Consumers reading with `isolation.level = read_committed` see
//! every change once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub use super::kafka_producer::Message;
use super::kafka_producer::{KafkaError, Producer, TransactionHandle};
use super::{RetryPause, SourceState};
use crate::error::{Error, Result};
use crate::storage::StreamStore;
use crate::streaming::ChangeBatch;
use crate::streaming::operators::RowBag;
use crate::streaming::state::{StateReader, StateWriter};
use crate::streaming::view::{View, ViewEvent};

/// Options of a sink.
pub const OPTIONS: &[&str] = &[
    "connector",
    "brokers",
    "topic",
    "format",
    "key",
    "delivery",
    "transactional_id",
];

/// Messages per transaction (or acknowledged set), at most.
const TRANSACTION_MESSAGES: usize = 50_000;

/// How long an exactly-once sink gathers changes before a transaction, so that a trickle of
/// changes does not cost a commit (and a progress write) each.
const TRANSACTION_INTERVAL: Duration = Duration::from_millis(100);

/// How long the broker keeps a transaction open before aborting it: after a crash, how long
/// read-committed consumers may wait behind it if the server does not come back.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The tag of a view sink's committed rows.
const SENT_ROWS: &str = "sink-rows";

/// How a sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    AtLeastOnce,
    /// In Kafka transactions under this transactional id.
    ExactlyOnce {
        transactional_id: String,
    },
}

use crate::parser::last_option as option;

/// A Kafka sink's settings, checked against the rows it sends.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    pub brokers: Vec<String>,
    pub topic: String,
    schema: SchemaRef,
    /// Key columns; empty: messages carry an `op` field instead.
    key: Vec<usize>,
    pub delivery: Delivery,
}

impl KafkaSink {
    /// The sink `name` (schema-qualified) with `options`, sending rows of `schema`.
    pub fn new(name: &str, options: &[(String, String)], schema: &SchemaRef) -> Result<KafkaSink> {
        for (name, _) in options {
            if !OPTIONS.contains(&name.as_str()) {
                return Err(Error::InvalidValue(format!(
                    "unrecognized sink option \"{name}\" (known: {})",
                    OPTIONS.join(", ")
                )));
            }
        }
        match option(options, "connector").map(|c| c.trim().to_ascii_lowercase()) {
            Some(c) if c == "kafka" => {}
            Some(other) => {
                return Err(Error::InvalidValue(format!(
                    "unknown sink connector \"{other}\" (known: kafka)"
                )));
            }
            None => {
                return Err(Error::InvalidValue(
                    "a sink needs connector = 'kafka'".to_string(),
                ));
            }
        }
        let required = |name: &str, example: &str| {
            option(options, name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::InvalidValue(format!(
                        "a kafka sink needs option \"{name}\" (e.g. {name} = '{example}')"
                    ))
                })
        };
        let brokers = required("brokers", "127.0.0.1:9092")?
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        let topic = required("topic", "alerts")?;
        if let Some(format) = option(options, "format")
            && !format.trim().eq_ignore_ascii_case("json")
        {
            return Err(Error::InvalidValue(format!(
                "invalid value for sink option \"format\": \"{format}\" (json)"
            )));
        }
        let key = match option(options, "key") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .map(|c| {
                    schema.index_of(&c).map_err(|_| Error::NotFound {
                        kind: "column",
                        name: format!("{c}\" (sink key) of the sink's relation"),
                    })
                })
                .collect::<Result<_>>()?,
        };
        if key.is_empty() && schema.index_of("op").is_ok() {
            return Err(Error::InvalidValue(
                "the relation has a column named \"op\", which the sink's messages use for the \
                 change kind: rename it, or name a key (key = '...') for upsert messages"
                    .to_string(),
            ));
        }
        let transactional_id = option(options, "transactional_id")
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty());
        let delivery = match option(options, "delivery")
            .map(|d| d.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("at_least_once") => {
                if transactional_id.is_some() {
                    return Err(Error::InvalidValue(
                        "sink option \"transactional_id\" needs delivery = 'exactly_once'"
                            .to_string(),
                    ));
                }
                Delivery::AtLeastOnce
            }
            Some("exactly_once") => Delivery::ExactlyOnce {
                transactional_id: transactional_id.unwrap_or_else(|| format!("eddydb-{name}")),
            },
            Some(other) => {
                return Err(Error::InvalidValue(format!(
                    "invalid value for sink option \"delivery\": \"{other}\" \
                     (at_least_once, exactly_once)"
                )));
            }
        };
        Ok(KafkaSink {
            brokers,
            topic,
            schema: SchemaRef::clone(schema),
            key,
            delivery,
        })
    }

    /// The rows of `batch` as JSON objects, one per row.
    fn json_rows(&self, rows: &RecordBatch) -> Result<Vec<String>> {
        let rows = RecordBatch::try_new(SchemaRef::clone(&self.schema), rows.columns().to_vec())?;
        let mut out = Vec::new();
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut out);
        writer.write(&rows)?;
        writer.finish()?;
        drop(writer);
        let text = String::from_utf8(out)
            .map_err(|e| Error::Internal(format!("sink JSON is not UTF-8: {e}")))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// The messages (key, value) for one change.
    pub fn messages(&self, change: &ChangeBatch) -> Result<Vec<Message>> {
        let rows = self.json_rows(&change.rows)?;
        if self.key.is_empty() {
            return Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, row)| {
                    let op = if change.is_delete(i) {
                        "delete"
                    } else {
                        "insert"
                    };
                    let body = row.strip_prefix('{').unwrap_or(&row);
                    let separator = if body.starts_with('}') { "" } else { "," };
                    (
                        None,
                        Some(format!("{{\"op\":\"{op}\"{separator}{body}").into_bytes()),
                    )
                })
                .collect());
        }
        let keys: Vec<String> = rows
            .iter()
            .map(|row| {
                let value: serde_json::Value = serde_json::from_str(row).unwrap_or_default();
                let names: Vec<&str> = self
                    .key
                    .iter()
                    .map(|i| self.schema.field(*i).name().as_str())
                    .collect();
                match names.as_slice() {
                    [one] => match &value[*one] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                    _ => serde_json::Value::Object(
                        names
                            .iter()
                            .map(|n| (n.to_string(), value[*n].clone()))
                            .collect(),
                    )
                    .to_string(),
                }
            })
            .collect();
        let reinserted: HashSet<&str> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| !change.is_delete(*i))
            .map(|(_, k)| k.as_str())
            .collect();
        Ok(rows
            .into_iter()
            .zip(&keys)
            .enumerate()
            .filter(|(i, (_, key))| !(change.is_delete(*i) && reinserted.contains(key.as_str())))
            .map(|(i, (row, key))| {
                let value = (!change.is_delete(i)).then(|| row.into_bytes());
                (Some(key.clone().into_bytes()), value)
            })
            .collect())
    }
}

/// What a sink reads.
#[derive(Debug, Clone)]
pub enum SinkInput {
    View(Arc<View>),
    Stream(Arc<StreamStore>),
}

/// One running sink, as `eddy_catalog.sinks` shows it.
#[derive(Debug)]
pub struct SinkStatus {
    pub name: String,
    pub from: String,
    pub topic: String,
    messages: AtomicU64,
    state: Mutex<SourceState>,
    note: Mutex<Option<String>>,
}

impl SinkStatus {
    fn set_state(&self, state: SourceState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Messages the broker acknowledged since the sink started.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn set_note(&self, note: Option<String>) {
        *self.note.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }
}

/// Every running sink by id.
#[derive(Debug, Default)]
pub struct Sinks {
    tasks: super::Tasks<SinkStatus>,
}

impl Sinks {
    /// Start sink `id` (`schema.name`) of `input` with `sink`'s settings. A stream's sink
    /// resumes after its committed position, or sends from `start` (the stream's length when
    /// the sink was created) if it has none.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        id: u64,
        name: String,
        from: String,
        sink: KafkaSink,
        input: SinkInput,
        progress: SinkProgress,
        start: Option<u64>,
    ) {
        let status = Arc::new(SinkStatus {
            name,
            from,
            topic: sink.topic.clone(),
            messages: AtomicU64::new(0),
            state: Mutex::new(SourceState::Running),
            note: Mutex::new(None),
        });
        // The stream keeps its log after the sink's position until the sink has sent it.
        let start = match &input {
            SinkInput::Stream(stream) => {
                let start = start.unwrap_or_else(|| stream.appended_records());
                stream.hold_log_after((id, 0), progress.position().unwrap_or(start));
                start
            }
            SinkInput::View(_) => 0,
        };
        let task = {
            let status = Arc::clone(&status);
            let task = SinkTask {
                id,
                sink,
                input,
                status: Arc::clone(&status),
                progress,
                start,
            };
            tokio::spawn(async move {
                if let Err(e) = super::unwind_safe(run(&task), "sink").await {
                    tracing::error!(sink = %status.name, error = %e, "sink failed");
                    status.set_state(SourceState::Failed(e.to_string()));
                }
            })
        };
        self.tasks.start(id, true, || (status, task));
    }

    /// Stop sink `id` and wait until it no longer writes.
    pub async fn stop(&self, id: u64) {
        self.tasks.stop(id).await;
    }

    /// All sinks, by name.
    pub fn all(&self) -> Vec<Arc<SinkStatus>> {
        let mut all = self.tasks.statuses();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn system_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("sink", DataType::Utf8, false),
            Field::new("from", DataType::Utf8, false),
            Field::new("connector", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("messages", DataType::UInt64, false),
            Field::new("error", DataType::Utf8, true),
        ]))
    }

    /// Contents of `eddy_catalog.sinks`.
    pub fn system_batch(&self) -> Result<RecordBatch> {
        let all = self.all();
        let states: Vec<SourceState> = all
            .iter()
            .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|s| s.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|s| s.from.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(all.iter().map(|_| "kafka"))),
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|s| s.topic.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(states.iter().map(
                |s| match s {
                    SourceState::Failed(_) => "failed",
                    _ => "running",
                },
            ))),
            Arc::new(UInt64Array::from_iter_values(
                all.iter().map(|s| s.messages.load(Ordering::Relaxed)),
            )),
            Arc::new(StringArray::from_iter(states.iter().zip(&all).map(
                |(state, status)| {
                    match state {
                        SourceState::Failed(e) => Some(e.clone()),
                        _ => status
                            .note
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone(),
                    }
                },
            ))),
        ];
        Ok(RecordBatch::try_new(Self::system_schema(), columns)?)
    }
}

/// A stream sink's durable record of what it has delivered: the committed position (or, for
/// an exactly-once view sink, the committed rows) in `<id>.position`, and while a transaction
/// commits, its producer id, epoch and the payload it will commit in `<id>.pending`.
#[derive(Debug, Clone)]
pub struct SinkProgress {
    committed: PathBuf,
    pending: PathBuf,
}

impl SinkProgress {
    pub fn new(committed: PathBuf) -> SinkProgress {
        let pending = committed.with_extension("pending");
        SinkProgress { committed, pending }
    }

    fn committed(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.committed).ok()
    }

    /// The committed stream position, if one was written.
    pub fn position(&self) -> Option<u64> {
        self.committed()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse().ok())
    }

    fn commit(&self, payload: &[u8]) -> Result<()> {
        crate::storage::cold::write_atomically(&self.committed, payload)?;
        self.discard_pending()
    }

    /// Record, before the commit request, what a transaction commits.
    fn prepare(&self, handle: TransactionHandle, payload: &[u8]) -> Result<()> {
        let mut bytes = format!("{} {}\n", handle.producer_id, handle.epoch).into_bytes();
        bytes.extend_from_slice(payload);
        crate::storage::cold::write_atomically(&self.pending, &bytes)
    }

    fn prepared(&self) -> Option<(TransactionHandle, Vec<u8>)> {
        let bytes = std::fs::read(&self.pending).ok()?;
        let newline = bytes.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&bytes[..newline]).ok()?;
        let (producer_id, epoch) = header.split_once(' ')?;
        let handle = TransactionHandle {
            producer_id: producer_id.parse().ok()?,
            epoch: epoch.parse().ok()?,
        };
        Some((handle, bytes[newline + 1..].to_vec()))
    }

    fn discard_pending(&self) -> Result<()> {
        match std::fs::remove_file(&self.pending) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Storage(format!(
                "could not remove {}: {e}",
                self.pending.display()
            ))),
        }
    }

    /// Both files, when the sink is dropped.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.committed);
        let _ = std::fs::remove_file(&self.pending);
    }
}

/// Why a sink session ended: the broker (retried unless permanent) or anything else (fatal).
enum Stop {
    Kafka(KafkaError),
    Fatal(Error),
}

impl From<KafkaError> for Stop {
    fn from(e: KafkaError) -> Stop {
        Stop::Kafka(e)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Fatal(e)
    }
}

/// What one running sink works with.
struct SinkTask {
    id: u64,
    sink: KafkaSink,
    input: SinkInput,
    status: Arc<SinkStatus>,
    progress: SinkProgress,
    /// A stream sink's start when it has no committed position yet.
    start: u64,
}

/// Run the sink until it fails for good: each session connects, finishes what a previous one
/// prepared, and delivers from the committed position; a broker error ends the session and a
/// new one starts after a pause (re-sending what was not committed).
async fn run(task: &SinkTask) -> Result<()> {
    let mut pause = RetryPause::new();
    loop {
        let started = std::time::Instant::now();
        match session(task).await {
            Stop::Fatal(e) => return Err(e),
            Stop::Kafka(e) if e.is_permanent() => {
                return Err(Error::InvalidValue(format!(
                    "kafka sink \"{}\": {e}",
                    task.status.name
                )));
            }
            Stop::Kafka(e) => {
                tracing::warn!(sink = %task.status.name, error = %e, "kafka sink retrying");
                task.status.set_note(Some(e.message));
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            pause.reset();
        }
        pause.wait().await;
    }
}

/// One connection's worth of delivery; returns why it stopped.
async fn session(task: &SinkTask) -> Stop {
    let mut producer = match Producer::connect(&task.sink.brokers, &task.sink.topic).await {
        Ok(producer) => producer,
        Err(e) => return e.into(),
    };
    if let Delivery::ExactlyOnce { transactional_id } = &task.sink.delivery
        && let Err(stop) = recover(task, &mut producer, transactional_id).await
    {
        return stop;
    }
    task.status.set_note(None);
    let stopped = match &task.input {
        SinkInput::View(view) => view_session(task, &mut producer, view).await,
        SinkInput::Stream(stream) => stream_session(task, &mut producer, stream).await,
    };
    match stopped {
        Ok(()) => Stop::Fatal(Error::Internal(format!(
            "\"{}\", which the sink reads, stopped",
            task.status.from
        ))),
        Err(stop) => stop,
    }
}

/// Finish the transaction a previous session prepared, then take a new producer epoch
/// (aborting any transaction left open and fencing older producers of the id).
async fn recover(
    task: &SinkTask,
    producer: &mut Producer,
    transactional_id: &str,
) -> std::result::Result<(), Stop> {
    if let Some((handle, payload)) = task.progress.prepared() {
        match producer.commit_prepared(transactional_id, handle).await {
            Ok(()) => task.progress.commit(&payload)?,
            // The broker says the transaction was aborted: its messages are invisible to
            // read-committed consumers and are sent again from the committed position. Any
            // other answer keeps the pending file: the commit may have happened.
            Err(e) if e.transaction_gone() => {
                tracing::info!(sink = %task.status.name, error = %e,
                    "prepared transaction was aborted by the broker; re-sending it");
                task.progress.discard_pending()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    producer
        .init_transactions(transactional_id, TRANSACTION_TIMEOUT)
        .await?;
    Ok(())
}

/// Send `messages` (each to the partition its key picks, without a key to partition 0, in
/// order) and record `progress` (if the sink keeps any) with them: in one transaction for
/// exactly-once delivery, or after the broker's acknowledgement for at-least-once.
async fn deliver(
    task: &SinkTask,
    producer: &mut Producer,
    messages: Vec<Message>,
    progress: Option<&[u8]>,
) -> std::result::Result<(), Stop> {
    let count = messages.len() as u64;
    let partitions = producer.partitions();
    let mut by_partition: Vec<Vec<Message>> = vec![Vec::new(); partitions];
    for message in messages {
        let partition = match &message.0 {
            Some(key) => (key_hash(key) % partitions as u64) as usize,
            None => 0,
        };
        by_partition[partition].push(message);
    }
    for (partition, messages) in by_partition.iter().enumerate() {
        if !messages.is_empty() {
            producer.send(partition, messages).await?;
        }
    }
    if let Some(handle) = producer.handle() {
        task.progress
            .prepare(handle, progress.unwrap_or_default())?;
        producer.end_transaction(true).await?;
    }
    if let Some(progress) = progress {
        task.progress.commit(progress)?;
    }
    task.status.messages.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

/// A view sink: the view's rows, then its changes. Exactly once, the first message set is the
/// difference between the rows the broker has committed and the view now.
async fn view_session(
    task: &SinkTask,
    producer: &mut Producer,
    view: &View,
) -> std::result::Result<(), Stop> {
    let reader = view.read(None)?;
    let mut events = reader.events;
    let exactly_once = matches!(task.sink.delivery, Delivery::ExactlyOnce { .. });
    let mut sent = RowBag::new(reader.rows.schema())?;
    let first = if exactly_once {
        if let Some(bytes) = task.progress.committed() {
            sent.restore(&mut StateReader::new(&bytes, SENT_ROWS)?)?;
        }
        ChangeBatch::difference(&sent.contents()?, &reader.rows)?
    } else {
        ChangeBatch::inserts(reader.rows)
    };
    let mut queue: std::collections::VecDeque<ChangeBatch> = pieces(first).into();
    loop {
        if queue.is_empty() {
            match events.recv().await {
                Some(ViewEvent::Changes { batch, .. }) => queue.extend(pieces(batch)),
                None => return Ok(()),
            }
            if exactly_once {
                tokio::time::sleep(TRANSACTION_INTERVAL).await;
            }
        }
        while let Ok(ViewEvent::Changes { batch, .. }) = events.try_recv() {
            queue.extend(pieces(batch));
        }
        // At most TRANSACTION_MESSAGES rows per transaction (pieces are no larger).
        let mut changes = Vec::new();
        let mut rows = 0;
        while let Some(next) = queue.front() {
            if !changes.is_empty() && rows + next.rows.num_rows() > TRANSACTION_MESSAGES {
                break;
            }
            rows += next.rows.num_rows();
            changes.extend(queue.pop_front());
        }
        let mut messages = Vec::new();
        for change in &changes {
            messages.extend(task.sink.messages(change)?);
            if exactly_once {
                sent.apply(change)?;
            }
        }
        if exactly_once {
            let mut w = StateWriter::new(SENT_ROWS);
            sent.snapshot(&mut w);
            deliver(task, producer, messages, Some(&w.finish())).await?;
        } else if !messages.is_empty() {
            deliver(task, producer, messages, None).await?;
        }
    }
}

/// `change` cut into pieces of at most [`TRANSACTION_MESSAGES`] rows, in order (none if empty).
fn pieces(change: ChangeBatch) -> Vec<ChangeBatch> {
    let total = change.rows.num_rows();
    if total <= TRANSACTION_MESSAGES {
        return if total == 0 { Vec::new() } else { vec![change] };
    }
    (0..total)
        .step_by(TRANSACTION_MESSAGES)
        .map(|offset| {
            let len = TRANSACTION_MESSAGES.min(total - offset);
            ChangeBatch {
                rows: change.rows.slice(offset, len),
                deletes: change.deletes.as_ref().map(|d| d.slice(offset, len)),
            }
        })
        .collect()
}

/// A stream sink: the rows appended after the committed position, in order.
async fn stream_session(
    task: &SinkTask,
    producer: &mut Producer,
    stream: &StreamStore,
) -> std::result::Result<(), Stop> {
    let after = task.progress.position().unwrap_or(task.start);
    let mut subscription = stream.subscribe();
    if after < subscription.flushed_seq && !stream.log_has_after(after) {
        return Err(Error::Storage(format!(
            "stream \"{}\" no longer holds the rows after the sink's position {after}",
            stream.def().name
        ))
        .into());
    }
    let mut ready: std::collections::VecDeque<(u64, Vec<RecordBatch>)> =
        if after < subscription.flushed_seq {
            stream
                .records_between(after, subscription.flushed_seq)?
                .into()
        } else {
            Default::default()
        };
    ready.extend(
        std::mem::take(&mut subscription.hot)
            .into_iter()
            .filter(|(seq, _)| *seq > after),
    );
    let exactly_once = matches!(task.sink.delivery, Delivery::ExactlyOnce { .. });
    let schema = stream.schema();
    let mut sent = after;
    loop {
        if ready.is_empty() {
            match subscription.live.recv().await {
                Some((seq, batches, _)) => ready.push_back((seq, batches)),
                None => return Ok(()),
            }
            if exactly_once {
                tokio::time::sleep(TRANSACTION_INTERVAL).await;
            }
        }
        while let Ok((seq, batches, _)) = subscription.live.try_recv() {
            ready.push_back((seq, batches));
        }
        let mut messages = Vec::new();
        let mut upto = sent;
        while messages.len() < TRANSACTION_MESSAGES
            && let Some((seq, batches)) = ready.pop_front()
        {
            if seq <= sent {
                continue;
            }
            stream.wait_durable(seq).await?;
            for batch in batches {
                let batch =
                    RecordBatch::try_new(SchemaRef::clone(&schema), batch.columns().to_vec())
                        .map_err(Error::from)?;
                messages.extend(task.sink.messages(&ChangeBatch::inserts(batch))?);
            }
            upto = seq;
        }
        if upto == sent {
            continue;
        }
        deliver(task, producer, messages, Some(upto.to_string().as_bytes())).await?;
        sent = upto;
        stream.hold_log_after((task.id, 0), sent);
    }
}

/// FNV-1a: a stable hash of a message key, for its partition.
fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("card", DataType::Int64, false),
            Field::new("alerts", DataType::Int64, true),
        ]))
    }

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn change(cards: &[i64], alerts: &[Option<i64>], deletes: &[bool]) -> ChangeBatch {
        let rows = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(cards.to_vec())),
                Arc::new(Int64Array::from(alerts.to_vec())),
            ],
        )
        .expect("rows");
        ChangeBatch::from_flags(rows, deletes.to_vec())
    }

    #[test]
    fn messages_carry_the_change_kind_or_upsert_by_key() {
        let base = [("connector", "kafka"), ("brokers", "b:1"), ("topic", "t")];
        let sink = KafkaSink::new("s", &options(&base), &schema()).expect("sink");
        let messages = sink
            .messages(&change(&[1, 2], &[Some(3), None], &[false, true]))
            .expect("messages");
        let values: Vec<String> = messages
            .iter()
            .map(|(_, v)| String::from_utf8(v.clone().unwrap_or_default()).unwrap_or_default())
            .collect();
        assert_eq!(
            values,
            [
                "{\"op\":\"insert\",\"card\":1,\"alerts\":3}",
                "{\"op\":\"delete\",\"card\":2,\"alerts\":null}"
            ]
        );
        let mut keyed = options(&base);
        keyed.push(("key".into(), "card".into()));
        let sink = KafkaSink::new("s", &keyed, &schema()).expect("keyed");
        // An update of card 1 (delete and insert) is one upsert; card 2 is deleted: a tombstone.
        let messages = sink
            .messages(&change(
                &[1, 1, 2],
                &[Some(3), Some(4), Some(1)],
                &[true, false, true],
            ))
            .expect("messages");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].0.as_deref(), Some(&b"1"[..]));
        assert_eq!(
            messages[0].1.as_deref(),
            Some(&b"{\"card\":1,\"alerts\":4}"[..])
        );
        assert_eq!(messages[1], (Some(b"2".to_vec()), None));
        assert!(
            KafkaSink::new(
                "s",
                &options(&[("connector", "kafka"), ("topic", "t")]),
                &schema()
            )
            .is_err()
        );
        assert!(KafkaSink::new("s", &options(&[("connector", "s3")]), &schema()).is_err());
        let mut bad_key = options(&base);
        bad_key.push(("key".into(), "nope".into()));
        assert!(KafkaSink::new("s", &bad_key, &schema()).is_err());
    }
}
