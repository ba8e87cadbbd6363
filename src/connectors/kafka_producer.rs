//! A Kafka producer that speaks the wire protocol itself, for the sinks: plain produce
//! (at-least-once) and transactions (exactly-once).
//!
//! rskafka, which the sources read with, has no transactional producer, so the sinks encode
//! the few requests they need here: Metadata (v1) for the partitions' leaders, Produce (v3)
//! with record batches (format v2, CRC-32C), and for transactions FindCoordinator (v1),
//! InitProducerId (v3, the first version that names the epoch it bumps; Kafka 2.5 and later),
//! AddPartitionsToTxn (v1) and EndTxn (v1). InitProducerId v3 is a flexible version (compact
//! strings, tagged fields); the others are not.
//!
//! ```text
//!  connect: Metadata ─► leaders ──(transactional)──► FindCoordinator ─► InitProducerId
//!  a transaction: [AddPartitionsToTxn on a partition's first send] Produce ... ─► EndTxn
//! ```
//!
//! A transactional producer numbers each partition's batches (base sequence) from 0 in every
//! producer epoch; InitProducerId bumps the epoch, which aborts whatever transaction the id
//! left open (a crashed run's) and fences any older producer with the same id. A failure
//! inside a transaction is not retried piecemeal: the caller aborts (or re-initializes) and
//! sends the whole transaction again, which read-committed consumers never see twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Messages: key and value, each absent or bytes (no value: a tombstone).
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the broker may take to replicate a produce: less than [`REQUEST_TIMEOUT`], so its
/// answer comes before the client gives up.
const BROKER_TIMEOUT: Duration = Duration::from_secs(25);

/// The largest response accepted (a broker's answer to these requests is small).
const MAX_RESPONSE: usize = 64 << 20;

/// A record batch is cut before it grows past this many bytes (brokers refuse batches over
/// `message.max.bytes`, 1 MiB by default).
const MAX_BATCH_BYTES: usize = 900 << 10;

const API_PRODUCE: i16 = 0;
const API_METADATA: i16 = 3;
const API_FIND_COORDINATOR: i16 = 10;
const API_API_VERSIONS: i16 = 18;
const API_INIT_PRODUCER_ID: i16 = 22;
const API_ADD_PARTITIONS_TO_TXN: i16 = 24;
const API_END_TXN: i16 = 26;

/// A failed request: the broker's error code if it sent one, and what happened.
#[derive(Debug, Clone)]
pub struct KafkaError {
    pub code: Option<i16>,
    pub message: String,
}

impl std::fmt::Display for KafkaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl KafkaError {
    fn io(message: String) -> KafkaError {
        KafkaError {
            code: None,
            message,
        }
    }

    fn broker(code: i16, what: &str) -> KafkaError {
        KafkaError {
            code: Some(code),
            message: format!("{what}: {} (Kafka error {code})", error_name(code)),
        }
    }

    /// Another producer took over the transactional id: retrying cannot help. (An epoch the
    /// coordinator bumped itself, aborting a transaction that outlived its timeout, answers
    /// INVALID_PRODUCER_EPOCH: a new session with a new epoch goes on.)
    pub fn is_fenced(&self) -> bool {
        // PRODUCER_FENCED
        matches!(self.code, Some(90))
    }

    /// The broker says the transaction can no longer commit: it was aborted (timed out, or
    /// a newer epoch took over) or is in no state to commit.
    pub fn transaction_gone(&self) -> bool {
        // INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE, PRODUCER_FENCED
        matches!(self.code, Some(47 | 48 | 90))
    }

    /// Worth trying again: no answer, or the broker is busy, moving or electing a leader.
    pub fn is_retriable(&self) -> bool {
        self.code
            .is_none_or(|code| retry_later(code) || matches!(code, 5 | 6 | 19 | 20))
    }

    /// The broker refuses for good: authorization, an invalid configuration or request.
    pub fn is_permanent(&self) -> bool {
        // CORRUPT_MESSAGE, MESSAGE_TOO_LARGE, INVALID_TOPIC_EXCEPTION, RECORD_LIST_TOO_LARGE,
        // TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED, INVALID_RECORD,
        // TRANSACTIONAL_ID_AUTHORIZATION_FAILED, UNSUPPORTED_VERSION,
        // INVALID_TRANSACTION_TIMEOUT, UNSUPPORTED_FOR_MESSAGE_FORMAT
        self.is_fenced()
            || matches!(
                self.code,
                Some(2 | 10 | 17 | 18 | 29 | 31 | 35 | 43 | 50 | 53 | 87)
            )
    }
}

type KafkaResult<T> = std::result::Result<T, KafkaError>;

/// The names of the error codes these requests meet.
fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        10 => "MESSAGE_TOO_LARGE",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        18 => "RECORD_LIST_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        35 => "UNSUPPORTED_VERSION",
        43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        46 => "DUPLICATE_SEQUENCE_NUMBER",
        47 => "INVALID_PRODUCER_EPOCH",
        48 => "INVALID_TXN_STATE",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        50 => "INVALID_TRANSACTION_TIMEOUT",
        51 => "CONCURRENT_TRANSACTIONS",
        53 => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        59 => "UNKNOWN_PRODUCER_ID",
        87 => "INVALID_RECORD",
        90 => "PRODUCER_FENCED",
        _ => "error",
    }
}

/// Errors worth the same request again after a pause: the coordinator is moving or busy.
fn retry_later(code: i16) -> bool {
    matches!(code, 7 | 14 | 15 | 16 | 51)
}

/// Pauses between repeats of a coordinator request: 20 ms doubling, for about 20 s in all.
struct Backoff {
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            pause: Duration::from_millis(20),
        }
    }
}

impl Backoff {
    /// Whether an answer of `code` is worth repeating the request for, and time is left.
    fn retries(&self, code: i16) -> bool {
        retry_later(code) && self.pause < Duration::from_secs(20)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause *= 2;
    }
}

/// A request body or a response being encoded (big-endian, Kafka's non-flexible encoding).
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn i8(&mut self, v: i8) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.i16(s.len() as i16);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None => self.i16(-1),
        }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.i32(b.len() as i32);
        self.0.extend_from_slice(b);
        self
    }
    /// A zig-zag varint (record fields).
    fn varint(&mut self, v: i64) -> &mut Self {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
        self
    }
    /// An unsigned varint (flexible versions' lengths).
    fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn compact_nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => {
                self.uvarint(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
            None => {
                self.uvarint(0);
            }
        }
        self
    }
    fn varbytes(&mut self, b: Option<&[u8]>) -> &mut Self {
        match b {
            Some(b) => {
                self.varint(b.len() as i64);
                self.0.extend_from_slice(b);
            }
            None => {
                self.varint(-1);
            }
        }
        self
    }
}

/// A response being read; every read checks the length, so a short answer is an error.
struct Decoder<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> KafkaResult<&'a [u8]> {
        if self.data.len() < n {
            return Err(KafkaError::io(format!(
                "truncated {} response from the broker",
                self.what
            )));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn i16(&mut self) -> KafkaResult<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }
    fn i32(&mut self) -> KafkaResult<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn i64(&mut self) -> KafkaResult<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn bool(&mut self) -> KafkaResult<bool> {
        Ok(self.take(1)?[0] != 0)
    }
    fn nullable_string(&mut self) -> KafkaResult<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.take(len as usize)?).into_owned(),
        ))
    }
    fn string(&mut self) -> KafkaResult<String> {
        Ok(self.nullable_string()?.unwrap_or_default())
    }
    fn uvarint(&mut self) -> KafkaResult<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(KafkaError::io(format!(
            "malformed varint in a {} response",
            self.what
        )))
    }
    /// Tagged fields (flexible versions), which these requests do not use: skipped.
    fn skip_tagged_fields(&mut self) -> KafkaResult<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
    /// An array's length (a null array is empty).
    fn len(&mut self) -> KafkaResult<usize> {
        Ok(self.i32()?.max(0) as usize)
    }
}

/// One record batch (format v2) holding `messages`, numbered from `base_sequence`.
fn record_batch(
    messages: &[Message],
    producer: Option<(i64, i16, i32)>,
    transactional: bool,
) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut records = Encoder::default();
    for (i, (key, value)) in messages.iter().enumerate() {
        let mut record = Encoder::default();
        record
            .i8(0) // attributes
            .varint(0) // timestamp delta
            .varint(i as i64) // offset delta
            .varbytes(key.as_deref())
            .varbytes(value.as_deref())
            .varint(0); // headers
        records.varint(record.0.len() as i64);
        records.0.extend_from_slice(&record.0);
    }
    let (producer_id, epoch, sequence) = producer.unwrap_or((-1, -1, -1));
    // Everything the CRC covers: attributes to the end.
    let mut body = Encoder::default();
    body.i16(if transactional { 1 << 4 } else { 0 })
        .i32(messages.len() as i32 - 1) // last offset delta
        .i64(now) // base timestamp
        .i64(now) // max timestamp
        .i64(producer_id)
        .i16(epoch)
        .i32(sequence)
        .i32(messages.len() as i32);
    body.0.extend_from_slice(&records.0);
    let crc = crc32c::crc32c(&body.0);
    let mut batch = Encoder::default();
    batch
        .i64(0) // base offset, assigned by the broker
        .i32((4 + 1 + 4 + body.0.len()) as i32) // batch length: after this field
        .i32(-1) // partition leader epoch
        .i8(2) // magic
        .i32(crc as i32);
    batch.0.extend_from_slice(&body.0);
    batch.0
}

/// The transaction requests (at the versions this producer sends) that an ApiVersions v0
/// response does not list, named like "EndTxn v1"; empty when the broker serves them all.
fn missing_transaction_requests(response: &[u8]) -> KafkaResult<Vec<String>> {
    let mut d = Decoder {
        data: response,
        what: "ApiVersions",
    };
    let error = d.i16()?;
    if error != 0 {
        return Err(KafkaError::broker(
            error,
            "asking the broker for its API versions",
        ));
    }
    let mut served = HashMap::new();
    for _ in 0..d.len()? {
        let key = d.i16()?;
        let min = d.i16()?;
        let max = d.i16()?;
        served.insert(key, (min, max));
    }
    let needed = [
        (API_FIND_COORDINATOR, 1, "FindCoordinator"),
        (API_INIT_PRODUCER_ID, 3, "InitProducerId"),
        (API_ADD_PARTITIONS_TO_TXN, 1, "AddPartitionsToTxn"),
        (API_END_TXN, 1, "EndTxn"),
    ];
    Ok(needed
        .iter()
        .filter(|(key, version, _)| {
            !served
                .get(key)
                .is_some_and(|(min, max)| min <= version && version <= max)
        })
        .map(|(_, version, name)| format!("{name} v{version}"))
        .collect())
}

/// `messages` cut into runs that each fit one record batch.
pub fn batches(messages: &[Message]) -> Vec<&[Message]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in messages.iter().enumerate() {
        let size = 24 + key.as_ref().map_or(0, Vec::len) + value.as_ref().map_or(0, Vec::len);
        if i > start && bytes + size > MAX_BATCH_BYTES {
            out.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

/// One connection to one broker.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    async fn open(address: &str) -> KafkaResult<Connection> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| KafkaError::io(format!("connecting to {address} timed out")))?
            .map_err(|e| KafkaError::io(format!("cannot reach broker {address}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            correlation: 0,
        })
    }

    /// Send one request and return the response body (after the correlation id). A
    /// flexible version's request header ends with (empty) tagged fields, and so does the
    /// response header, which the body returned starts with.
    async fn request(
        &mut self,
        api_key: i16,
        version: i16,
        flexible: bool,
        body: &[u8],
    ) -> KafkaResult<Vec<u8>> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let mut frame = Encoder::default();
        frame.i32(0).i16(api_key).i16(version).i32(correlation);
        frame.nullable_string(Some("eddydb"));
        if flexible {
            frame.uvarint(0);
        }
        frame.0.extend_from_slice(body);
        let size = (frame.0.len() - 4) as i32;
        frame.0[..4].copy_from_slice(&size.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&frame.0).await?;
            let size = self.stream.read_i32().await?;
            if size < 4 || size as usize > MAX_RESPONSE {
                return Err(std::io::Error::other(format!(
                    "the broker answered with a frame of {size} bytes"
                )));
            }
            let mut response = vec![0; size as usize];
            self.stream.read_exact(&mut response).await?;
            Ok(response)
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| KafkaError::io("the broker did not answer in time".to_string()))?
            .map_err(|e| KafkaError::io(format!("broker connection: {e}")))?;
        let answered = i32::from_be_bytes(response[..4].try_into().unwrap_or([0; 4]));
        if answered != correlation {
            return Err(KafkaError::io(format!(
                "the broker answered request {answered}, expected {correlation}"
            )));
        }
        Ok(response[4..].to_vec())
    }
}

/// A producer for one topic; transactional when given a transactional id.
#[derive(Debug)]
pub struct Producer {
    topic: String,
    /// Each partition's leader, `host:port`.
    leaders: Vec<String>,
    connections: HashMap<String, Connection>,
    transaction: Option<Transaction>,
}

/// A transactional producer's identity and the current transaction's state.
#[derive(Debug)]
struct Transaction {
    id: String,
    coordinator: String,
    producer_id: i64,
    epoch: i16,
    /// Each partition's next base sequence in this epoch.
    sequences: HashMap<i32, i32>,
    /// Partitions added to the open transaction.
    added: HashSet<i32>,
}

/// A transaction's producer id and epoch: what a restart needs to finish its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionHandle {
    pub producer_id: i64,
    pub epoch: i16,
}

impl Producer {
    /// Connect to `brokers` (tried in turn) and learn the partitions of `topic`.
    pub async fn connect(brokers: &[String], topic: &str) -> KafkaResult<Producer> {
        let mut last = KafkaError::io("no brokers given".to_string());
        for broker in brokers {
            match Self::metadata(broker, topic).await {
                Ok((connection, leaders)) => {
                    let mut connections = HashMap::new();
                    connections.insert(broker.clone(), connection);
                    return Ok(Producer {
                        topic: topic.to_string(),
                        leaders,
                        connections,
                        transaction: None,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn metadata(broker: &str, topic: &str) -> KafkaResult<(Connection, Vec<String>)> {
        let mut connection = Connection::open(broker).await?;
        let mut body = Encoder::default();
        body.i32(1).string(topic);
        let response = connection.request(API_METADATA, 1, false, &body.0).await?;
        let mut d = Decoder {
            data: &response,
            what: "metadata",
        };
        let mut hosts = HashMap::new();
        for _ in 0..d.len()? {
            let node = d.i32()?;
            let host = d.string()?;
            let port = d.i32()?;
            let _rack = d.nullable_string()?;
            hosts.insert(node, format!("{host}:{port}"));
        }
        let _controller = d.i32()?;
        for _ in 0..d.len()? {
            let error = d.i16()?;
            let name = d.string()?;
            let _internal = d.bool()?;
            let mut leaders = Vec::new();
            for _ in 0..d.len()? {
                let partition_error = d.i16()?;
                let index = d.i32()?;
                let leader = d.i32()?;
                for _ in 0..d.len()? {
                    d.i32()?;
                }
                for _ in 0..d.len()? {
                    d.i32()?;
                }
                if partition_error != 0 && partition_error != 9 {
                    // 9: REPLICA_NOT_AVAILABLE, harmless for a producer.
                    return Err(KafkaError::broker(
                        partition_error,
                        &format!("partition {index} of topic \"{topic}\""),
                    ));
                }
                let host = hosts.get(&leader).cloned().ok_or_else(|| {
                    KafkaError::io(format!(
                        "partition {index} of topic \"{topic}\" has no leader"
                    ))
                })?;
                leaders.push((index, host));
            }
            if name != topic {
                continue;
            }
            if error == 3 {
                return Err(KafkaError::io(format!(
                    "topic \"{topic}\" does not exist (yet)"
                )));
            }
            if error != 0 {
                return Err(KafkaError::broker(error, &format!("topic \"{topic}\"")));
            }
            leaders.sort();
            if leaders.is_empty() || leaders.iter().enumerate().any(|(i, (p, _))| *p != i as i32) {
                return Err(KafkaError::io(format!(
                    "topic \"{topic}\" has no partitions (or a gap in their numbers)"
                )));
            }
            return Ok((connection, leaders.into_iter().map(|(_, h)| h).collect()));
        }
        Err(KafkaError::io(format!(
            "topic \"{topic}\" does not exist (yet)"
        )))
    }

    pub fn partitions(&self) -> usize {
        self.leaders.len()
    }

    async fn connection(&mut self, address: &str) -> KafkaResult<&mut Connection> {
        if !self.connections.contains_key(address) {
            let connection = Connection::open(address).await?;
            self.connections.insert(address.to_string(), connection);
        }
        self.connections
            .get_mut(address)
            .ok_or_else(|| KafkaError::io(format!("no connection to {address}")))
    }

    /// A request to `address`; a connection that failed is dropped, so the next one reconnects.
    async fn request(
        &mut self,
        address: &str,
        api_key: i16,
        version: i16,
        body: &[u8],
    ) -> KafkaResult<Vec<u8>> {
        let flexible = api_key == API_INIT_PRODUCER_ID;
        let result = self
            .connection(address)
            .await?
            .request(api_key, version, flexible, body)
            .await;
        if result.is_err() {
            self.connections.remove(address);
        }
        result
    }

    /// Whether the broker at `address` serves the transaction requests at the versions used
    /// here, from its ApiVersions answer; an error names what it lacks.
    async fn check_transactions(&mut self, address: &str) -> KafkaResult<()> {
        let response = self.request(address, API_API_VERSIONS, 0, &[]).await?;
        let missing = missing_transaction_requests(&response)?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(KafkaError {
            // UNSUPPORTED_VERSION: permanent.
            code: Some(35),
            message: format!(
                "the broker at {address} does not support Kafka transactions (it does not serve \
                 {}); use delivery = 'at_least_once' with this broker",
                missing.join(", ")
            ),
        })
    }

    /// Become transactional with `id`: find its coordinator and take the next epoch, which
    /// aborts a transaction the id left open and fences older producers. A broker that does
    /// not serve the transaction requests is refused with an error saying so.
    pub async fn init_transactions(&mut self, id: &str, timeout: Duration) -> KafkaResult<()> {
        let coordinator = self.coordinator(id).await?;
        self.check_transactions(&coordinator).await?;
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let mut body = Encoder::default();
        body.compact_nullable_string(Some(id))
            .i32(timeout_ms)
            .i64(-1) // no current producer id and epoch: the broker knows the id's
            .i16(-1)
            .uvarint(0);
        let mut backoff = Backoff::default();
        let (producer_id, epoch) = loop {
            let response = self
                .request(&coordinator, API_INIT_PRODUCER_ID, 3, &body.0)
                .await?;
            let mut d = Decoder {
                data: &response,
                what: "InitProducerId",
            };
            d.skip_tagged_fields()?;
            let _throttle = d.i32()?;
            let error = d.i16()?;
            let producer_id = d.i64()?;
            let epoch = d.i16()?;
            match error {
                0 => break (producer_id, epoch),
                // The previous epoch's transaction is still being aborted.
                code if backoff.retries(code) => backoff.wait().await,
                code => {
                    return Err(KafkaError::broker(
                        code,
                        &format!("initializing transactional id \"{id}\""),
                    ));
                }
            }
        };
        self.transaction = Some(Transaction {
            id: id.to_string(),
            coordinator,
            producer_id,
            epoch,
            sequences: HashMap::new(),
            added: HashSet::new(),
        });
        Ok(())
    }

    /// The broker that coordinates transactional id `id`.
    async fn coordinator(&mut self, id: &str) -> KafkaResult<String> {
        let any = self
            .connections
            .keys()
            .next()
            .cloned()
            .or_else(|| self.leaders.first().cloned())
            .ok_or_else(|| KafkaError::io("no broker connection".to_string()))?;
        let mut body = Encoder::default();
        body.string(id).i8(1); // key type 1: a transaction
        let mut backoff = Backoff::default();
        loop {
            let response = self.request(&any, API_FIND_COORDINATOR, 1, &body.0).await?;
            let mut d = Decoder {
                data: &response,
                what: "FindCoordinator",
            };
            let _throttle = d.i32()?;
            let error = d.i16()?;
            let _message = d.nullable_string()?;
            let _node = d.i32()?;
            let host = d.string()?;
            let port = d.i32()?;
            match error {
                0 => return Ok(format!("{host}:{port}")),
                code if backoff.retries(code) => backoff.wait().await,
                code => {
                    return Err(KafkaError::broker(
                        code,
                        &format!("finding the coordinator of \"{id}\""),
                    ));
                }
            }
        }
    }

    /// The open transaction's producer id and epoch (None: not transactional).
    pub fn handle(&self) -> Option<TransactionHandle> {
        self.transaction.as_ref().map(|t| TransactionHandle {
            producer_id: t.producer_id,
            epoch: t.epoch,
        })
    }

    /// Send `messages` to `partition` and wait for the leader's acknowledgement (acks = all).
    /// Inside a transaction, the partition joins it first.
    pub async fn send(&mut self, partition: usize, messages: &[Message]) -> KafkaResult<()> {
        let leader = self
            .leaders
            .get(partition)
            .cloned()
            .ok_or_else(|| KafkaError::io(format!("topic has no partition {partition}")))?;
        let index = partition as i32;
        self.add_partition(index).await?;
        for chunk in batches(messages) {
            let (transactional_id, producer) = match &self.transaction {
                Some(t) => (
                    Some(t.id.clone()),
                    Some((
                        t.producer_id,
                        t.epoch,
                        t.sequences.get(&index).copied().unwrap_or(0),
                    )),
                ),
                None => (None, None),
            };
            let batch = record_batch(chunk, producer, transactional_id.is_some());
            let mut body = Encoder::default();
            body.nullable_string(transactional_id.as_deref())
                .i16(-1) // acks: all in-sync replicas
                .i32(BROKER_TIMEOUT.as_millis() as i32)
                .i32(1)
                .string(&self.topic)
                .i32(1)
                .i32(index)
                .bytes(&batch);
            let response = self.request(&leader, API_PRODUCE, 3, &body.0).await?;
            let mut d = Decoder {
                data: &response,
                what: "produce",
            };
            for _ in 0..d.len()? {
                let _topic = d.string()?;
                for _ in 0..d.len()? {
                    let _index = d.i32()?;
                    let error = d.i16()?;
                    let _offset = d.i64()?;
                    let _append_time = d.i64()?;
                    // DUPLICATE_SEQUENCE_NUMBER: the broker has these already.
                    if error != 0 && error != 46 {
                        return Err(KafkaError::broker(
                            error,
                            &format!("producing to partition {index} of \"{}\"", self.topic),
                        ));
                    }
                }
            }
            if let Some(t) = &mut self.transaction {
                let sequence = t.sequences.entry(index).or_insert(0);
                // Sequences wrap to 0 after i32::MAX, as Kafka's producers do.
                *sequence = ((i64::from(*sequence) + chunk.len() as i64)
                    % (i64::from(i32::MAX) + 1)) as i32;
            }
        }
        Ok(())
    }

    async fn add_partition(&mut self, index: i32) -> KafkaResult<()> {
        let Some(t) = &self.transaction else {
            return Ok(());
        };
        if t.added.contains(&index) {
            return Ok(());
        }
        let coordinator = t.coordinator.clone();
        let mut body = Encoder::default();
        body.string(&t.id)
            .i64(t.producer_id)
            .i16(t.epoch)
            .i32(1)
            .string(&self.topic)
            .i32(1)
            .i32(index);
        let mut backoff = Backoff::default();
        loop {
            let response = self
                .request(&coordinator, API_ADD_PARTITIONS_TO_TXN, 1, &body.0)
                .await?;
            let mut d = Decoder {
                data: &response,
                what: "AddPartitionsToTxn",
            };
            let _throttle = d.i32()?;
            let mut error = 0;
            for _ in 0..d.len()? {
                let _topic = d.string()?;
                for _ in 0..d.len()? {
                    let _index = d.i32()?;
                    let code = d.i16()?;
                    if code != 0 {
                        error = code;
                    }
                }
            }
            match error {
                0 => break,
                // The previous transaction is still completing.
                code if backoff.retries(code) => backoff.wait().await,
                code => {
                    return Err(KafkaError::broker(
                        code,
                        &format!("adding partition {index} to the transaction"),
                    ));
                }
            }
        }
        if let Some(t) = &mut self.transaction {
            t.added.insert(index);
        }
        Ok(())
    }

    /// Commit (or abort) the open transaction; a producer that sent nothing has none.
    pub async fn end_transaction(&mut self, commit: bool) -> KafkaResult<()> {
        let Some(t) = &self.transaction else {
            return Ok(());
        };
        if t.added.is_empty() {
            return Ok(());
        }
        let (coordinator, id, handle) = (
            t.coordinator.clone(),
            t.id.clone(),
            TransactionHandle {
                producer_id: t.producer_id,
                epoch: t.epoch,
            },
        );
        self.end(&coordinator, &id, handle, commit).await?;
        if let Some(t) = &mut self.transaction {
            t.added.clear();
        }
        Ok(())
    }

    /// Finish a transaction a previous run prepared (all its messages acknowledged) but may
    /// not have committed: commit it under its own producer id and epoch. Call before
    /// [`Producer::init_transactions`], which would abort it. Committing a transaction that is
    /// already committed succeeds; one the broker aborted (it outlived its timeout, or a newer
    /// epoch took over) fails with the broker's error.
    pub async fn commit_prepared(
        &mut self,
        id: &str,
        handle: TransactionHandle,
    ) -> KafkaResult<()> {
        let coordinator = self.coordinator(id).await?;
        self.check_transactions(&coordinator).await?;
        self.end(&coordinator, id, handle, true).await
    }

    async fn end(
        &mut self,
        coordinator: &str,
        id: &str,
        handle: TransactionHandle,
        commit: bool,
    ) -> KafkaResult<()> {
        let mut body = Encoder::default();
        body.string(id)
            .i64(handle.producer_id)
            .i16(handle.epoch)
            .i8(i8::from(commit));
        let mut backoff = Backoff::default();
        loop {
            let response = self.request(coordinator, API_END_TXN, 1, &body.0).await?;
            let mut d = Decoder {
                data: &response,
                what: "EndTxn",
            };
            let _throttle = d.i32()?;
            match d.i16()? {
                0 => return Ok(()),
                code if backoff.retries(code) => backoff.wait().await,
                code => {
                    return Err(KafkaError::broker(
                        code,
                        &format!(
                            "{} the transaction of \"{id}\"",
                            if commit { "committing" } else { "aborting" }
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zigzag_encoded() {
        let mut e = Encoder::default();
        e.varint(0).varint(-1).varint(1).varint(300).varint(-300);
        assert_eq!(e.0, vec![0x00, 0x01, 0x02, 0xd8, 0x04, 0xd7, 0x04]);
    }

    #[test]
    fn a_record_batch_has_the_v2_layout_and_a_crc32c_over_its_body() {
        let messages: Vec<Message> =
            vec![(Some(b"k".to_vec()), Some(b"v1".to_vec())), (None, None)];
        let batch = record_batch(&messages, Some((7, 2, 10)), true);
        let length = i32::from_be_bytes(batch[8..12].try_into().unwrap()) as usize;
        assert_eq!(length, batch.len() - 12);
        assert_eq!(batch[16], 2, "magic");
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&batch[21..]));
        let attributes = i16::from_be_bytes(batch[21..23].try_into().unwrap());
        assert_eq!(attributes, 1 << 4, "transactional, uncompressed");
        assert_eq!(i32::from_be_bytes(batch[23..27].try_into().unwrap()), 1);
        assert_eq!(i64::from_be_bytes(batch[43..51].try_into().unwrap()), 7);
        assert_eq!(i16::from_be_bytes(batch[51..53].try_into().unwrap()), 2);
        assert_eq!(i32::from_be_bytes(batch[53..57].try_into().unwrap()), 10);
        assert_eq!(i32::from_be_bytes(batch[57..61].try_into().unwrap()), 2);
        // First record: length 9, attributes, deltas, key "k", value "v1", no headers.
        assert_eq!(
            &batch[61..71],
            &[18, 0, 0, 0, 2, b'k', 4, b'v', b'1', 0][..]
        );
        // Second record: null key and value are length -1.
        assert_eq!(&batch[71..], &[12, 0, 0, 2, 1, 1, 0][..]);
    }

    #[test]
    fn batches_stay_under_the_message_size_limit() {
        let big = vec![0u8; 300 << 10];
        let messages: Vec<Message> = (0..5).map(|_| (None, Some(big.clone()))).collect();
        let runs = batches(&messages);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        let one: Vec<Message> = vec![(None, Some(vec![0u8; 2 << 20]))];
        assert_eq!(
            batches(&one).len(),
            1,
            "an oversized message still goes alone"
        );
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn a_short_response_is_an_error_not_a_panic() {
        let mut d = Decoder {
            data: &[0, 1],
            what: "test",
        };
        assert_eq!(d.i16().unwrap(), 1);
        assert!(d.i32().is_err());
        assert!(d.nullable_string().is_err());
    }

    /// A broker is refused for exactly-once delivery by what its ApiVersions answer lacks.
    #[test]
    fn a_broker_without_end_txn_is_named_as_lacking_it() {
        let response = |apis: &[(i16, i16, i16)]| {
            let mut e = Encoder::default();
            e.i16(0).i32(apis.len() as i32);
            for (key, min, max) in apis {
                e.i16(*key).i16(*min).i16(*max);
            }
            e.0
        };
        let all = [
            (API_FIND_COORDINATOR, 0, 4),
            (API_INIT_PRODUCER_ID, 0, 5),
            (API_ADD_PARTITIONS_TO_TXN, 0, 4),
            (API_END_TXN, 0, 4),
        ];
        assert!(
            missing_transaction_requests(&response(&all))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            missing_transaction_requests(&response(&all[..3])).unwrap(),
            vec!["EndTxn v1"]
        );
        // Served, but not at the version sent here.
        let old = [all[0], (API_INIT_PRODUCER_ID, 0, 2), all[2], all[3]];
        assert_eq!(
            missing_transaction_requests(&response(&old)).unwrap(),
            vec!["InitProducerId v3"]
        );
        assert!(missing_transaction_requests(&response(&all)[..7]).is_err());
        assert!(missing_transaction_requests(&[0, 35, 0, 0, 0, 0]).is_err());
    }
}
