//! Sinks: a materialized view's changes, or a stream's new rows, written to a Kafka topic.
//!
//! ```text
//!  CREATE SINK s FROM v WITH (connector = 'kafka', brokers = ..., topic = ..., [key = 'a, b'])
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
//! Delivery is at least once. A view's sink sends the view's rows again after every start
//! (with `key`, a consumer or a compacted topic ends with the same state); a stream's sink
//! keeps the stream position it has sent up to in `sinks/<id>.position`, written after the
//! broker acknowledged the messages, and resumes after it. Exactly-once delivery with Kafka
//! transactions is not available: the client library, rskafka, has no transactional
//! producer.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use super::SourceState;
use crate::error::{Error, Result};
use crate::storage::StreamStore;
use crate::streaming::ChangeBatch;
use crate::streaming::view::{View, ViewEvent};

/// Options of a sink.
pub const OPTIONS: &[&str] = &["connector", "brokers", "topic", "format", "key"];

/// A message: its key and its value (None: a tombstone).
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Messages per produce request, at most.
const PRODUCE_MESSAGES: usize = 5_000;

use crate::parser::last_option as option;

/// A Kafka sink's settings, checked against the rows it sends.
#[derive(Debug, Clone)]
pub struct KafkaSink {
    pub brokers: Vec<String>,
    pub topic: String,
    schema: SchemaRef,
    /// Key columns; empty: messages carry an `op` field instead.
    key: Vec<usize>,
}

impl KafkaSink {
    pub fn new(options: &[(String, String)], schema: &SchemaRef) -> Result<KafkaSink> {
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
        Ok(KafkaSink {
            brokers,
            topic,
            schema: SchemaRef::clone(schema),
            key,
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

type RunningSink = (Arc<SinkStatus>, tokio::task::JoinHandle<()>);

/// Every running sink by id.
#[derive(Debug, Default)]
pub struct Sinks {
    running: Mutex<HashMap<u64, RunningSink>>,
}

impl Sinks {
    /// Start sink `id` (`schema.name`) of `input` with `sink`'s settings; a stream's sink keeps
    /// its position at `position`.
    pub fn start(
        &self,
        id: u64,
        name: String,
        from: String,
        sink: KafkaSink,
        input: SinkInput,
        position: PathBuf,
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
        if let SinkInput::Stream(stream) = &input {
            let after = std::fs::read_to_string(&position)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .unwrap_or_else(|| stream.appended_records());
            stream.hold_log_after((id, 0), after);
        }
        let task = {
            let status = Arc::clone(&status);
            tokio::spawn(async move {
                let run = run(id, &sink, input, &status, position);
                let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run))
                    .await
                    .unwrap_or_else(|_| Err(Error::Internal("the sink panicked".to_string())));
                if let Err(e) = result {
                    tracing::error!(sink = %status.name, error = %e, "sink failed");
                    status.set_state(SourceState::Failed(e.to_string()));
                }
            })
        };
        if let Some((_, old)) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (status, task))
        {
            old.abort();
        }
    }

    /// Stop sink `id` and wait until it no longer writes.
    pub async fn stop(&self, id: u64) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some((_, task)) = running {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn all(&self) -> Vec<Arc<SinkStatus>> {
        let mut all: Vec<Arc<SinkStatus>> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(s, _)| Arc::clone(s))
            .collect();
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

/// The topic's partitions, connected, retrying until the brokers answer and the topic exists.
async fn partitions(sink: &KafkaSink, status: &SinkStatus) -> Vec<PartitionClient> {
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = async {
            let client: Client = ClientBuilder::new(sink.brokers.clone())
                .client_id("eddydb")
                .build()
                .await
                .map_err(|e| format!("cannot reach brokers {}: {e}", sink.brokers.join(",")))?;
            let topics = client.list_topics().await.map_err(|e| e.to_string())?;
            let topic = topics
                .into_iter()
                .find(|t| t.name == sink.topic)
                .ok_or_else(|| format!("topic \"{}\" does not exist (yet)", sink.topic))?;
            let mut clients = Vec::new();
            for partition in topic.partitions {
                clients.push(
                    client
                        .partition_client(
                            sink.topic.clone(),
                            partition,
                            UnknownTopicHandling::Retry,
                        )
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok::<_, String>(clients)
        };
        match attempt.await {
            Ok(clients) if !clients.is_empty() => {
                status.set_note(None);
                return clients;
            }
            Ok(_) => status.set_note(Some(format!("topic \"{}\" has no partitions", sink.topic))),
            Err(note) => {
                tracing::warn!(sink = %status.name, error = %note, "kafka sink retrying");
                status.set_note(Some(note));
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// FNV-1a: a stable hash of a message key, for its partition.
fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Produce `messages`, retrying until the broker acknowledges them all.
async fn produce(clients: &[PartitionClient], messages: Vec<Message>, status: &SinkStatus) {
    let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); clients.len()];
    for (key, value) in messages {
        // Changes without a key stay in order only within one partition.
        let partition = match &key {
            Some(key) => (key_hash(key) % clients.len() as u64) as usize,
            None => 0,
        };
        by_partition[partition].push(Record {
            key,
            value,
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        });
    }
    for (client, records) in clients.iter().zip(by_partition) {
        for chunk in records.chunks(PRODUCE_MESSAGES) {
            let mut wait = Duration::from_millis(100);
            loop {
                match client
                    .produce(chunk.to_vec(), Compression::NoCompression)
                    .await
                {
                    Ok(_) => {
                        status.set_note(None);
                        status
                            .messages
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        let note = format!("produce to partition {}: {e}", client.partition());
                        tracing::warn!(sink = %status.name, error = %note, "kafka sink retrying");
                        status.set_note(Some(note));
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    }
}

async fn run(
    id: u64,
    sink: &KafkaSink,
    input: SinkInput,
    status: &SinkStatus,
    position: PathBuf,
) -> Result<()> {
    let clients = partitions(sink, status).await;
    match input {
        SinkInput::View(view) => {
            let reader = view.read(None)?;
            let mut events = reader.events;
            produce(
                &clients,
                sink.messages(&ChangeBatch::inserts(reader.rows))?,
                status,
            )
            .await;
            while let Some(ViewEvent::Changes { batch, .. }) = events.recv().await {
                produce(&clients, sink.messages(&batch)?, status).await;
            }
            Err(Error::Internal(format!(
                "materialized view \"{}\" stopped",
                view.def.name
            )))
        }
        SinkInput::Stream(stream) => {
            // Rows appended after the sink started, resumed after the last acknowledged ones.
            let stored = std::fs::read_to_string(&position)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            let after = match stored {
                Some(seq) => seq,
                None => {
                    let now = stream.appended_records();
                    crate::storage::cold::write_atomically(&position, now.to_string().as_bytes())?;
                    now
                }
            };
            let mut subscription = stream.subscribe();
            if after < subscription.flushed_seq && !stream.log_has_after(after) {
                return Err(Error::Storage(format!(
                    "stream \"{}\" no longer holds the rows after the sink's position {after}",
                    stream.def().name
                )));
            }
            let mut records = if after < subscription.flushed_seq {
                stream.records_between(after, subscription.flushed_seq)?
            } else {
                Vec::new()
            };
            records.extend(
                std::mem::take(&mut subscription.hot)
                    .into_iter()
                    .filter(|(seq, _)| *seq > after),
            );
            let mut sent = after;
            let schema = stream.schema();
            for (seq, batches) in records {
                stream.wait_durable(seq).await?;
                sent =
                    send_record(sink, &clients, status, &schema, seq, batches, &position).await?;
                stream.hold_log_after((id, 0), sent);
            }
            while let Some((seq, batches, _)) = subscription.live.recv().await {
                if seq <= sent {
                    continue;
                }
                stream.wait_durable(seq).await?;
                sent =
                    send_record(sink, &clients, status, &schema, seq, batches, &position).await?;
                stream.hold_log_after((id, 0), sent);
            }
            Err(Error::Internal(format!(
                "stream \"{}\" was dropped",
                stream.def().name
            )))
        }
    }
}

/// Send one stream record's rows and record that they were acknowledged.
#[allow(clippy::too_many_arguments)]
async fn send_record(
    sink: &KafkaSink,
    clients: &[PartitionClient],
    status: &SinkStatus,
    schema: &SchemaRef,
    seq: u64,
    batches: Vec<RecordBatch>,
    position: &std::path::Path,
) -> Result<u64> {
    let mut messages = Vec::new();
    for batch in batches {
        let batch = RecordBatch::try_new(SchemaRef::clone(schema), batch.columns().to_vec())?;
        messages.extend(sink.messages(&ChangeBatch::inserts(batch))?);
    }
    produce(clients, messages, status).await;
    crate::storage::cold::write_atomically(position, seq.to_string().as_bytes())?;
    Ok(seq)
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
        let sink = KafkaSink::new(&options(&base), &schema()).expect("sink");
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
        let sink = KafkaSink::new(&keyed, &schema()).expect("keyed");
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
                &options(&[("connector", "kafka"), ("topic", "t")]),
                &schema()
            )
            .is_err()
        );
        assert!(KafkaSink::new(&options(&[("connector", "s3")]), &schema()).is_err());
        let mut bad_key = options(&base);
        bad_key.push(("key".into(), "nope".into()));
        assert!(KafkaSink::new(&bad_key, &schema()).is_err());
    }
}
