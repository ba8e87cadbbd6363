//! The Kafka source: every partition of a topic into a stream, exactly once.
//!
//! ```text
//!  partition 0 ──fetcher──┐
//!  partition 1 ──fetcher──┼─► writer: decode (JSON, CSV or Avro; metadata into INCLUDE columns)
//!  partition n ──fetcher──┘      │ undecodable records ─► dead letters (fsynced first)
//!                                ▼
//!              stream.append_at(rows, "partition:next offset,...")  one atomic log record
//! ```
//!
//! The offsets to read next are stored with the rows they produced, in the same durable log
//! record ([`StreamStore::append_at`]), so after a crash the source resumes exactly where the
//! stored rows end: nothing is read twice into the stream or skipped. Views then take the
//! stream exactly once through their checkpoints, so a topic reaches every view exactly once.
//! The first start fixes the starting offsets (`start = 'earliest' | 'latest' | timestamp`) in
//! the log before anything is read, so a crash right after it does not move them.
//!
//! Fetching goes through [`super::kafka_consumer`], which reads committed data only: records of
//! transactions their producer aborted never reach the stream, and records behind a
//! transaction still open wait for it to end (the position stored is where the undecided part
//! begins, so a restart reads it again). A broker that answers a fetch from inside a record
//! batch with nothing (as some do) is read from earlier offsets, keeping only what comes at or
//! after the wanted one. Lag is the partition's high watermark (from every fetch)
//! minus the next offset; `eddy_catalog.source_partitions` and `/metrics` show it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use tokio::sync::mpsc;

use super::avro::AvroValues;
use super::dead_letters::{DeadLetter, DeadLetterLog, hex};
use super::kafka_consumer::{
    Batch, CommittedReader, Consumer, EARLIEST, OFFSET_OUT_OF_RANGE, Record,
};
use super::{PartitionProgress, RetryPause, SourceStatus};
use crate::error::{Error, Result};
use crate::ingest::decode::RowDecoder;
use crate::ingest::{CopyFormat, CopyKind};
use crate::storage::StreamStore;

/// Options of `connector = 'kafka'`.
pub const OPTIONS: &[&str] = &[
    "brokers",
    "topic",
    "format",
    "avro.schema",
    "avro.framing",
    "avro.schema_id",
    "start",
    "include.key",
    "include.partition",
    "include.offset",
    "include.timestamp",
];

/// What each fetch asks for at most, per partition.
const FETCH_BYTES: i32 = 4 << 20;
/// How long a fetch waits at the end of a partition for new records.
const FETCH_WAIT_MS: i32 = 250;
/// Rows the writer gathers from the fetchers into one append, at most.
const APPEND_ROWS: usize = 50_000;

/// How message values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per message; keys name columns, other keys are ignored.
    Json,
    /// One CSV record per message, the stream's columns (other than INCLUDE ones) in order.
    Csv,
    /// One Avro record per message, with the schema in `avro.schema` (see [`AvroValues`]).
    Avro,
}

/// Where a partition is first read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// The first record at or after this time (milliseconds since the epoch).
    At(i64),
}

/// A Kafka source's settings, checked against the stream's columns.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: Vec<String>,
    pub topic: String,
    pub format: Format,
    pub start: Start,
    schema: SchemaRef,
    /// Columns filled from the message's metadata.
    key_column: Option<usize>,
    partition_column: Option<usize>,
    offset_column: Option<usize>,
    timestamp_column: Option<usize>,
    /// The other columns, which the value fills.
    payload_columns: Vec<String>,
    /// How Avro values decode (format 'avro' only).
    avro: Option<AvroValues>,
}

fn bad(name: &str, value: &str, want: &str) -> Error {
    Error::InvalidValue(format!(
        "invalid value for stream option \"{name}\": \"{value}\" ({want})"
    ))
}

/// A time as `start` takes it: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]+00`.
fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .or_else(|_| chrono::DateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()
        .map(|t| t.timestamp_millis())
}

impl KafkaSource {
    pub fn new(options: &BTreeMap<String, String>, schema: &SchemaRef) -> Result<KafkaSource> {
        let required = |name: &str, example: &str| {
            options
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    Error::InvalidValue(format!(
                        "connector 'kafka' needs option \"{name}\" (e.g. {name} = '{example}')"
                    ))
                })
        };
        let brokers: Vec<String> = required("brokers", "127.0.0.1:9092")?
            .split(',')
            .map(|b| b.trim().to_string())
            .filter(|b| !b.is_empty())
            .collect();
        let topic = required("topic", "payments")?;
        let format = match options.get("format").map(|f| f.trim().to_ascii_lowercase()) {
            None => Format::Json,
            Some(f) if f == "json" => Format::Json,
            Some(f) if f == "csv" => Format::Csv,
            Some(f) if f == "avro" => Format::Avro,
            Some(other) => return Err(bad("format", &other, "json, csv or avro")),
        };
        let start = match options.get("start").map(|s| s.trim().to_string()) {
            None => Start::Earliest,
            Some(s) if s.eq_ignore_ascii_case("earliest") => Start::Earliest,
            Some(s) if s.eq_ignore_ascii_case("latest") => Start::Latest,
            Some(s) => Start::At(parse_time(&s).ok_or_else(|| {
                bad(
                    "start",
                    &s,
                    "earliest, latest or a time such as '2026-01-01 00:00:00+00'",
                )
            })?),
        };
        let mut included = Vec::new();
        let mut column = |what: &str, check: fn(&DataType) -> bool, want: &str| {
            let Some(name) = options.get(&format!("include.{what}")) else {
                return Ok(None);
            };
            // As the parser passes it: lower-cased unless it was quoted.
            let name = name.trim().to_string();
            let index = schema.index_of(&name).map_err(|_| Error::NotFound {
                kind: "column",
                name: format!("{name}\" (INCLUDE {what}) of the stream"),
            })?;
            let data_type = schema.field(index).data_type();
            if !check(data_type) {
                return Err(Error::DatatypeMismatch(format!(
                    "INCLUDE {what} AS {name}: the column must be {want}, not {data_type}"
                )));
            }
            included.push(index);
            Ok(Some(index))
        };
        let key_column = column(
            "key",
            |t| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
            "text",
        )?;
        let partition_column = column("partition", DataType::is_integer, "an integer")?;
        let offset_column = column("offset", |t| *t == DataType::Int64, "bigint")?;
        let timestamp_column = column(
            "timestamp",
            |t| matches!(t, DataType::Timestamp(..)),
            "a timestamp",
        )?;
        let payload_columns: Vec<String> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| !included.contains(i))
            .map(|(_, f)| f.name().clone())
            .collect();
        let avro = match format {
            Format::Avro => Some(AvroValues::new(options, schema, &payload_columns)?),
            _ => {
                if let Some(option) = options.keys().find(|k| k.starts_with("avro.")) {
                    return Err(Error::InvalidValue(format!(
                        "stream option \"{option}\" needs format = 'avro'"
                    )));
                }
                None
            }
        };
        Ok(KafkaSource {
            brokers,
            topic,
            format,
            start,
            schema: SchemaRef::clone(schema),
            key_column,
            partition_column,
            offset_column,
            timestamp_column,
            payload_columns,
            avro,
        })
    }

    /// Decode message values, all or nothing, into batches of the stream's columns (INCLUDE
    /// columns still to fill); `name` names them in errors.
    fn decode_values(&self, name: String, values: &[&[u8]]) -> Result<Vec<RecordBatch>> {
        let (format, columns): (CopyFormat, &[String]) = match self.format {
            Format::Json => (CopyFormat::new(CopyKind::JsonLines), &[]),
            Format::Csv => (CopyFormat::new(CopyKind::Csv), &self.payload_columns),
            Format::Avro => {
                let avro = self.avro.as_ref().ok_or_else(|| {
                    Error::Internal("a Kafka source with format 'avro' has no schema".into())
                })?;
                // A dead letter names its partition and offset; the error says what is wrong.
                return avro.decode(values).map(|batch| vec![batch]);
            }
        };
        let mut decoder = RowDecoder::new(name, SchemaRef::clone(&self.schema), columns, format)?;
        if self.format == Format::Json {
            decoder = decoder.ignoring_unknown_keys();
        }
        // One message, one line. Line breaks in a JSON document are whitespace (inside
        // strings they would be invalid anyway).
        let mut input = Vec::new();
        for value in values {
            match self.format {
                Format::Json => input.extend(value.iter().map(|b| match b {
                    b'\n' | b'\r' => b' ',
                    b => *b,
                })),
                _ => input.extend_from_slice(value),
            }
            input.push(b'\n');
        }
        decoder.push(&input)?;
        decoder.finish()
    }

    /// Decode `records` of `partition`: the rows (with the metadata columns filled) of those
    /// that decode, and a dead letter for each that does not.
    pub fn decode(
        &self,
        partition: i32,
        records: &[Record],
    ) -> Result<(Option<RecordBatch>, Vec<DeadLetter>)> {
        let now = chrono::Utc::now().timestamp_micros();
        let letter = |record: &Record, error: String| DeadLetter {
            partition,
            offset: record.offset,
            key: record.key.as_deref().map(hex),
            payload: record.value.as_deref().map(hex),
            error,
            received_at: now,
        };
        let mut letters = Vec::new();
        let mut valued: Vec<&Record> = Vec::with_capacity(records.len());
        for record in records {
            match &record.value {
                Some(value) if !value.is_empty() => valued.push(record),
                _ => letters.push(letter(
                    record,
                    "the message has no value (a tombstone or an empty message)".into(),
                )),
            }
        }
        // All at once; if anything fails, one by one to find the bad ones.
        let values: Vec<&[u8]> = valued
            .iter()
            .map(|r| r.value.as_deref().unwrap_or_default())
            .collect();
        let whole = self
            .decode_values(
                format!("kafka topic \"{}\" partition {partition}", self.topic),
                &values,
            )
            .ok()
            .filter(|batches| {
                batches.iter().map(RecordBatch::num_rows).sum::<usize>() == valued.len()
            });
        let (batches, kept) = match whole {
            Some(batches) => (batches, valued),
            None => {
                let mut batches = Vec::new();
                let mut kept = Vec::new();
                for (record, value) in valued.into_iter().zip(&values) {
                    let decoded = self.decode_values(
                        format!(
                            "kafka topic \"{}\" partition {partition} offset {}",
                            self.topic, record.offset
                        ),
                        &[*value],
                    );
                    match decoded {
                        Ok(rows) if rows.iter().map(RecordBatch::num_rows).sum::<usize>() == 1 => {
                            batches.extend(rows);
                            kept.push(record);
                        }
                        Ok(_) => letters.push(letter(record, "the message holds no row".into())),
                        Err(e) => letters.push(letter(record, e.to_string())),
                    }
                }
                (batches, kept)
            }
        };
        if kept.is_empty() {
            return Ok((None, letters));
        }
        let rows = concat_batches(&self.schema, &batches)?;
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        let mut fill = |index: Option<usize>, values: ArrayRef| -> Result<()> {
            if let Some(index) = index {
                columns[index] = cast(&values, self.schema.field(index).data_type())?;
            }
            Ok(())
        };
        fill(
            self.key_column,
            Arc::new(StringArray::from_iter(kept.iter().map(|r| {
                r.key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
            }))),
        )?;
        fill(
            self.partition_column,
            Arc::new(Int32Array::from(vec![partition; kept.len()])),
        )?;
        fill(
            self.offset_column,
            Arc::new(Int64Array::from_iter_values(kept.iter().map(|r| r.offset))),
        )?;
        fill(
            self.timestamp_column,
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    kept.iter().map(|r| r.timestamp_ms.saturating_mul(1000)),
                )
                .with_timezone("+00:00"),
            ),
        )?;
        Ok((
            Some(RecordBatch::try_new(
                SchemaRef::clone(&self.schema),
                columns,
            )?),
            letters,
        ))
    }
}

/// Next offset per partition, as stored with the stream's records: `0:15,1:20`.
pub fn encode_position(next: &BTreeMap<i32, i64>) -> String {
    next.iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_position(text: &str) -> Result<BTreeMap<i32, i64>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| Error::Storage(format!("unreadable Kafka position \"{text}\"")))?;
            Ok((
                p.parse()
                    .map_err(|_| Error::Storage(format!("unreadable Kafka position \"{text}\"")))?,
                o.parse()
                    .map_err(|_| Error::Storage(format!("unreadable Kafka position \"{text}\"")))?,
            ))
        })
        .collect()
}

fn kafka_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("kafka: {what}: {e}"))
}

/// Connect and learn the topic's partitions, retrying until the brokers answer and the topic
/// exists (the task is stopped with its stream).
async fn connect(source: &KafkaSource, status: &SourceStatus) -> Consumer {
    let mut pause = RetryPause::new();
    loop {
        match Consumer::connect(&source.brokers, &source.topic).await {
            Ok(consumer) => {
                status.set_note(None);
                return consumer;
            }
            Err(e) => {
                let note = format!("brokers {}: {e}", source.brokers.join(","));
                tracing::warn!(stream = %status.stream, error = %note, "kafka source retrying");
                status.set_note(Some(note));
                pause.wait().await;
            }
        }
    }
}

/// Why a fetch failed: the partition no longer holds the stream's position (the source
/// cannot go on without skipping or repeating records); the partition ends before it, which is
/// lost only if it lasts ([`BEHIND_GRACE`]: a new leader's high watermark can lag for a
/// moment); or anything worth retrying.
enum FetchFailure {
    PositionLost(Error),
    Behind(Error),
    Transient(Error),
    /// The broker holds a batch here that cannot be read (corrupt, an old message format, an
    /// unknown codec): the partition cannot go on past it.
    Unreadable(Error),
}

/// How long a partition may end before the stream's position before the position is lost.
const BEHIND_GRACE: Duration = Duration::from_secs(10);

/// Records held back behind open transactions, at most, per partition; past it only batch
/// headers are kept and the records are read again once decided ([`CommittedReader`]).
const MAX_HELD_BYTES: usize = 64 << 20;

impl From<Error> for FetchFailure {
    fn from(e: Error) -> FetchFailure {
        FetchFailure::Transient(e)
    }
}

/// Record batches reaching past `from` (records before it removed) and the partition's high
/// watermark. A broker that returns nothing for an offset inside a record batch is asked
/// again from earlier offsets (batch starts), keeping only what comes at or after `from`;
/// nothing at all at the broker's last stable offset is just nothing to read yet.
async fn fetch_from(
    consumer: &mut Consumer,
    partition: i32,
    from: i64,
    floor: &mut i64,
) -> std::result::Result<(Vec<Batch>, i64), FetchFailure> {
    let mut at = from;
    let mut step = 1;
    // Once the search has read from the floor and come back with nothing at or after `from`,
    // there is nothing to read yet.
    let mut reached_floor = false;
    loop {
        reached_floor |= at <= *floor;
        let fetched = match consumer
            .fetch(partition, at, FETCH_BYTES, FETCH_WAIT_MS)
            .await
        {
            Ok(fetched) => fetched,
            Err(e) if e.code == Some(OFFSET_OUT_OF_RANGE) => {
                let earliest = consumer
                    .list_offset(partition, EARLIEST)
                    .await
                    .map_err(|e| kafka_error("earliest offset", e))?;
                if earliest > from {
                    return Err(FetchFailure::PositionLost(Error::Storage(format!(
                        "kafka: partition {partition} no longer holds offset {from} (retention \
                         removed it; the earliest is {earliest})"
                    ))));
                }
                *floor = earliest;
                if at == earliest {
                    return Ok((Vec::new(), from));
                }
                at = earliest.max((from - step).max(0));
                step *= 2;
                continue;
            }
            Err(e) => return Err(kafka_error("fetch", e).into()),
        };
        let high = fetched.high_watermark;
        let stable = fetched.last_stable_offset;
        if high < from {
            return Err(FetchFailure::Behind(Error::Storage(format!(
                "kafka: partition {partition} ends at offset {high}, before the stream's position \
                 {from} (the topic was deleted and created again, or truncated); the stream keeps \
                 its rows and reads no more from this topic: recreate the stream to read it anew"
            ))));
        }
        let last_fetched = fetched.batches.last().map(|b| b.last_offset);
        let kept: Vec<Batch> = fetched
            .batches
            .into_iter()
            .filter(|b| b.last_offset >= from)
            .map(|mut b| {
                b.records.retain(|r| r.offset >= from);
                b
            })
            .collect();
        if let Some(e) = fetched.unreadable.filter(|_| kept.is_empty()) {
            return Err(FetchFailure::Unreadable(Error::Storage(format!(
                "kafka: partition {partition}: {e}; the stream keeps its rows and reads no more \
                 from this topic"
            ))));
        }
        if !kept.is_empty() || high == from || (0..=from).contains(&stable) {
            return Ok((kept, high));
        }
        if let Some(last) = last_fetched {
            // Only earlier batches came back: continue after them (a batch start).
            at = last + 1;
            if at >= from && reached_floor {
                return Ok((Vec::new(), high));
            }
            continue;
        }
        if at <= *floor {
            return Ok((Vec::new(), high));
        }
        at = (from - step).max(*floor);
        step *= 2;
    }
}

/// The offset a partition is first read from.
async fn start_offset(consumer: &mut Consumer, partition: i32, start: Start) -> Result<i64> {
    let at = match start {
        Start::Earliest => EARLIEST,
        Start::Latest => return end_offset(consumer, partition).await,
        Start::At(millis) => millis,
    };
    let offset = consumer
        .list_offset(partition, at)
        .await
        .map_err(|e| kafka_error("start offset", e))?;
    // -1: no record at or after that time yet; start at the end.
    if offset < 0 {
        end_offset(consumer, partition).await
    } else {
        Ok(offset)
    }
}

/// The end of a partition: the high watermark a fetch reports (some brokers answer the Latest
/// offset request with a batch's base offset).
async fn end_offset(consumer: &mut Consumer, partition: i32) -> Result<i64> {
    let earliest = consumer
        .list_offset(partition, EARLIEST)
        .await
        .map_err(|e| kafka_error("earliest offset", e))?;
    let fetched = consumer
        .fetch(partition, earliest, 1024, 0)
        .await
        .map_err(|e| kafka_error("fetch", e))?;
    // A read-committed reader starts at the last stable offset where the broker keeps one, so
    // a transaction open across the end is read whole once it commits.
    Ok(if fetched.last_stable_offset >= 0 {
        fetched.last_stable_offset.min(fetched.high_watermark)
    } else {
        fetched.high_watermark
    })
}

/// How often a running source asks for the topic's partitions, to read ones added to it.
const PARTITION_DISCOVERY: Duration = Duration::from_secs(10);

/// Place the partitions below `count` that `next` lacks at their first offset per `start`;
/// the ones placed, in order. Partitions placed before an error stay placed.
async fn place_new_partitions(
    consumer: &mut Consumer,
    count: i32,
    start: Start,
    next: &mut BTreeMap<i32, i64>,
) -> Result<Vec<i32>> {
    let mut added = Vec::new();
    for partition in 0..count {
        if next.contains_key(&partition) {
            continue;
        }
        let offset = start_offset(consumer, partition, start).await?;
        next.insert(partition, offset);
        added.push(partition);
    }
    Ok(added)
}

/// What a fetcher hands the writer: the partition's newly decided records, where it resumes
/// after them (past dropped aborted records and markers too), and its high watermark.
struct Fetched {
    partition: i32,
    records: Vec<Record>,
    next: i64,
    high: i64,
}

/// Read `partition` from `next` on, forever, retrying after errors: committed records only,
/// in order (see [`CommittedReader`]).
async fn fetch_partition(
    source: Arc<KafkaSource>,
    partition: i32,
    mut next: i64,
    out: mpsc::Sender<Result<Fetched>>,
) {
    let mut pause = RetryPause::new();
    let mut floor = 0;
    let mut reader = CommittedReader::new(MAX_HELD_BYTES);
    // Where the next fetch starts: after what the reader holds back.
    let mut fetch_at = next;
    loop {
        let mut consumer = match Consumer::connect(&source.brokers, &source.topic).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(topic = %source.topic, partition, error = %e, "kafka partition unavailable; retrying");
                pause.wait().await;
                continue;
            }
        };
        let mut behind_since: Option<std::time::Instant> = None;
        loop {
            match fetch_from(&mut consumer, partition, fetch_at, &mut floor).await {
                Err(FetchFailure::Behind(e)) => {
                    let since = *behind_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= BEHIND_GRACE {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok((batches, high)) => {
                    behind_since = None;
                    pause.reset();
                    let fetched_any = !batches.is_empty();
                    if let Some(last) = batches.last() {
                        fetch_at = fetch_at.max(last.last_offset + 1);
                    }
                    reader.push(batches);
                    let decided = reader.take_decided();
                    if let Some(offset) = decided.reread_from {
                        fetch_at = offset;
                    }
                    let records = decided.records;
                    next = next.max(reader.resume_at().unwrap_or(next));
                    // Nothing readable although the partition goes on (an open transaction
                    // behind the broker's last stable offset): ask again in a while.
                    if !fetched_any && high > fetch_at {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let fetched = Fetched {
                        partition,
                        records,
                        next,
                        high,
                    };
                    if out.send(Ok(fetched)).await.is_err() {
                        return;
                    }
                }
                Err(FetchFailure::PositionLost(e) | FetchFailure::Unreadable(e)) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
                Err(FetchFailure::Transient(e)) => {
                    tracing::warn!(topic = %source.topic, partition, error = %e, "kafka fetch failed; retrying");
                    pause.wait().await;
                    break;
                }
            }
        }
    }
}

/// Read the topic into `stream` from where its log says the source got to.
pub async fn run(stream: &StreamStore, status: &SourceStatus) -> Result<()> {
    let source = Arc::new(KafkaSource::new(&stream.def().options, &stream.schema())?);
    let letters = Arc::new(DeadLetterLog::open(
        &stream.dir().join("dead_letters.jsonl"),
    )?);
    status.set_dead_letters(Arc::clone(&letters));
    let mut consumer = connect(&source, status).await;
    let stored = stream.source_position();
    // A stream's first start reads the topic from `start`; a partition that appears later
    // (added to the topic while the stream read it, or while the server was down) is read from
    // its beginning, since everything in it came after the stream started.
    let later = Start::Earliest;
    let first = if stored.is_none() {
        source.start
    } else {
        later
    };
    let mut next = match stored {
        Some(text) => decode_position(&text)?,
        None => BTreeMap::new(),
    };
    let mut partitions = consumer.partitions() as i32;
    // Where each new partition starts is stored before anything is read, so a crash now does
    // not move it. Retried like the connection: the broker may be briefly unavailable.
    let mut pause = RetryPause::new();
    let added = loop {
        match place_new_partitions(&mut consumer, partitions, first, &mut next).await {
            Ok(added) => break added,
            Err(e) => {
                tracing::warn!(stream = %status.stream, error = %e, "kafka start offsets; retrying");
                status.set_note(Some(e.to_string()));
                pause.wait().await;
                consumer = connect(&source, status).await;
                partitions = consumer.partitions() as i32;
            }
        }
    };
    status.set_note(None);
    if !added.is_empty() {
        stream.append_at(Vec::new(), encode_position(&next)).await?;
    }
    drop(consumer);
    let (sender, mut fetched) = mpsc::channel::<Result<Fetched>>(16 + 2 * partitions as usize);
    let mut fetchers = tokio::task::JoinSet::new();
    let mut spawn = |partition: i32, from: i64| {
        status.set_partition(partition, from, from);
        fetchers.spawn(fetch_partition(
            Arc::clone(&source),
            partition,
            from,
            sender.clone(),
        ));
    };
    for partition in 0..partitions {
        spawn(partition, next.get(&partition).copied().unwrap_or(0));
    }
    let mut discovery = tokio::time::interval_at(
        tokio::time::Instant::now() + PARTITION_DISCOVERY,
        PARTITION_DISCOVERY,
    );
    discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            got = fetched.recv() => got.ok_or_else(|| {
                Error::Internal("the Kafka fetchers stopped".into())
            })?,
            _ = discovery.tick() => {
                // Partitions added to the topic: placed (and stored) first, then read. A
                // broker that does not answer now is asked again at the next tick, for all of
                // them (a partly placed set is not kept).
                let discovered = async {
                    let mut consumer = Consumer::connect(&source.brokers, &source.topic)
                        .await
                        .map_err(|e| kafka_error("partitions", e))?;
                    let count = consumer.partitions() as i32;
                    let mut placed = next.clone();
                    let added = place_new_partitions(&mut consumer, count, later, &mut placed)
                        .await?;
                    Ok::<_, Error>((placed, added))
                };
                match discovered.await {
                    Ok((placed, added)) if !added.is_empty() => {
                        next = placed;
                        stream.append_at(Vec::new(), encode_position(&next)).await?;
                        tracing::info!(stream = %status.stream, ?added, "kafka partitions added to the topic");
                        for partition in added {
                            spawn(partition, next.get(&partition).copied().unwrap_or(0));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(stream = %status.stream, error = %e, "kafka partition discovery");
                    }
                }
                continue;
            }
        };
        // Gather what else has arrived into one append.
        let mut batch = vec![first?];
        let mut rows: usize = batch[0].records.len();
        while rows < APPEND_ROWS {
            match fetched.try_recv() {
                Ok(more) => {
                    let more = more?;
                    rows += more.records.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        let mut decoded = Vec::new();
        let mut dead = Vec::new();
        for part in &batch {
            next.insert(part.partition, part.next);
            if part.records.is_empty() {
                continue;
            }
            let (rows, letters) = source.decode(part.partition, &part.records)?;
            decoded.extend(rows);
            dead.extend(letters);
        }
        if !dead.is_empty() {
            let letters = Arc::clone(&letters);
            tokio::task::spawn_blocking(move || letters.append(&dead))
                .await
                .map_err(|e| Error::Internal(format!("dead letters: {e}")))??;
        }
        let consumed = batch.iter().any(|part| !part.records.is_empty());
        if consumed {
            let appended = stream.append_at(decoded, encode_position(&next)).await?;
            status.rows.fetch_add(appended, Ordering::Relaxed);
        }
        for part in &batch {
            let at = next.get(&part.partition).copied().unwrap_or(0);
            status.set_partition(part.partition, at, part.high.max(at));
        }
        status.position.store(
            next.values().map(|o| (*o).max(0) as u64).sum(),
            Ordering::Relaxed,
        );
    }
}

/// The progress of one partition, for the system tables.
pub fn lag(progress: &PartitionProgress) -> u64 {
    (progress.high_watermark - progress.next_offset).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("k", DataType::Utf8, true),
            Field::new("off", DataType::Int64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]))
    }

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn record(offset: i64, value: &str) -> Record {
        Record {
            offset,
            timestamp_ms: 1_700_000_000_000,
            key: Some(b"card-1".to_vec()),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn options_are_checked() {
        let s = schema();
        assert!(KafkaSource::new(&options(&[("topic", "t")]), &s).is_err());
        assert!(KafkaSource::new(&options(&[("brokers", "b:1")]), &s).is_err());
        let base = [("brokers", "b:1"), ("topic", "t")];
        assert!(KafkaSource::new(&options(&base), &s).is_ok());
        let with = |extra: (&str, &str)| {
            let mut o = options(&base);
            o.insert(extra.0.into(), extra.1.into());
            KafkaSource::new(&o, &s)
        };
        assert!(with(("format", "avro")).is_err());
        assert!(with(("start", "yesterday")).is_err());
        assert_eq!(
            with(("start", "2026-01-01 00:00:00+00"))
                .map(|k| k.start)
                .ok(),
            Some(Start::At(1_767_225_600_000))
        );
        assert!(with(("include.key", "nope")).is_err());
        assert!(with(("include.offset", "amount")).is_err());
    }

    #[test]
    fn good_records_become_rows_and_bad_ones_dead_letters() {
        let mut o = options(&[
            ("brokers", "b:1"),
            ("topic", "t"),
            ("include.key", "k"),
            ("include.offset", "off"),
            ("include.timestamp", "ts"),
        ]);
        let source = KafkaSource::new(&o, &schema()).expect("source");
        let records = [
            record(7, "{\"id\": 1, \"amount\": 2.5, \"extra\": true}"),
            record(8, "{\"id\": \"x\"}"),
            record(9, "{\n \"id\": 3\n}"),
            record(10, "not json"),
        ];
        let (rows, letters) = source.decode(2, &records).expect("decode");
        let rows = rows.expect("rows");
        assert_eq!(rows.num_rows(), 2);
        let offsets: Vec<i64> = letters.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, [8, 10]);
        assert!(
            letters
                .iter()
                .all(|l| l.partition == 2 && !l.error.is_empty())
        );
        assert_eq!(
            letters[1].payload.as_deref(),
            Some(hex(b"not json").as_str())
        );
        let off = rows
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("off");
        assert_eq!(off.values().to_vec(), [7, 9]);
        // CSV: the columns other than INCLUDE ones, in order.
        o.insert("format".into(), "csv".into());
        let source = KafkaSource::new(&o, &schema()).expect("csv");
        let (rows, letters) = source
            .decode(0, &[record(0, "1,2.5"), record(1, "1")])
            .expect("decode");
        assert_eq!(rows.map(|r| r.num_rows()), Some(1));
        assert_eq!(letters.len(), 1);
    }

    #[test]
    fn positions_round_trip() {
        let next: BTreeMap<i32, i64> = [(0, 15), (3, 0)].into_iter().collect();
        assert_eq!(encode_position(&next), "0:15,3:0");
        assert_eq!(decode_position("0:15,3:0").expect("decode"), next);
        assert!(decode_position("0=15").is_err());
    }
}
