//! The Kafka wire protocol pieces the sinks' producer and the sources' consumer share: one
//! connection per broker sending one request at a time (size-prefixed frames, correlation ids
//! checked), encoders and bounds-checked decoders for Kafka's big-endian and varint fields,
//! error codes with their names and how to treat them, and Metadata (v1) for a topic's
//! partition leaders.
//!
//! ```text
//!  Encoder ─► Connection::request(api, version, body) ─► response body ─► Decoder
//! ```
//!
//! Every read of a response checks the length first, so a short or malformed answer from a
//! broker is an error, never a panic.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connection included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest response accepted (a broker's answer to these requests is small).
const MAX_RESPONSE: usize = 64 << 20;

pub(crate) const API_PRODUCE: i16 = 0;
pub(crate) const API_FETCH: i16 = 1;
pub(crate) const API_LIST_OFFSETS: i16 = 2;
pub(crate) const API_METADATA: i16 = 3;
pub(crate) const API_FIND_COORDINATOR: i16 = 10;
pub(crate) const API_API_VERSIONS: i16 = 18;
pub(crate) const API_INIT_PRODUCER_ID: i16 = 22;
pub(crate) const API_ADD_PARTITIONS_TO_TXN: i16 = 24;
pub(crate) const API_END_TXN: i16 = 26;

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
    pub(crate) fn io(message: String) -> KafkaError {
        KafkaError {
            code: None,
            message,
        }
    }

    pub(crate) fn broker(code: i16, what: &str) -> KafkaError {
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

pub(crate) type KafkaResult<T> = std::result::Result<T, KafkaError>;

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
pub(crate) struct Backoff {
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
    pub(crate) fn retries(&self, code: i16) -> bool {
        retry_later(code) && self.pause < Duration::from_secs(20)
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause *= 2;
    }
}

/// A request body or a response being encoded (big-endian, Kafka's non-flexible encoding).
#[derive(Default)]
pub(crate) struct Encoder(pub(crate) Vec<u8>);

impl Encoder {
    pub(crate) fn i8(&mut self, v: i8) -> &mut Self {
        self.0.push(v as u8);
        self
    }
    pub(crate) fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn string(&mut self, s: &str) -> &mut Self {
        self.i16(s.len() as i16);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub(crate) fn nullable_string(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.string(s),
            None => self.i16(-1),
        }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.i32(b.len() as i32);
        self.0.extend_from_slice(b);
        self
    }
    /// A zig-zag varint (record fields).
    pub(crate) fn varint(&mut self, v: i64) -> &mut Self {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.0.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.0.push(z as u8);
        self
    }
    /// An unsigned varint (flexible versions' lengths).
    pub(crate) fn uvarint(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    pub(crate) fn compact_nullable_string(&mut self, s: Option<&str>) -> &mut Self {
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
    pub(crate) fn varbytes(&mut self, b: Option<&[u8]>) -> &mut Self {
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
pub(crate) struct Decoder<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) what: &'static str,
}

impl<'a> Decoder<'a> {
    pub(crate) fn take(&mut self, n: usize) -> KafkaResult<&'a [u8]> {
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
    pub(crate) fn i16(&mut self) -> KafkaResult<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }
    pub(crate) fn i32(&mut self) -> KafkaResult<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    pub(crate) fn i64(&mut self) -> KafkaResult<i64> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    pub(crate) fn bool(&mut self) -> KafkaResult<bool> {
        Ok(self.take(1)?[0] != 0)
    }
    pub(crate) fn nullable_string(&mut self) -> KafkaResult<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(
            String::from_utf8_lossy(self.take(len as usize)?).into_owned(),
        ))
    }
    pub(crate) fn string(&mut self) -> KafkaResult<String> {
        Ok(self.nullable_string()?.unwrap_or_default())
    }
    pub(crate) fn uvarint(&mut self) -> KafkaResult<u64> {
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
    pub(crate) fn skip_tagged_fields(&mut self) -> KafkaResult<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size)?;
        }
        Ok(())
    }
    pub(crate) fn i8(&mut self) -> KafkaResult<i8> {
        Ok(self.take(1)?[0] as i8)
    }
    /// A zig-zag varint (record fields).
    pub(crate) fn varint(&mut self) -> KafkaResult<i64> {
        let z = self.uvarint()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }
    /// Bytes with a zig-zag varint length; a negative length is null.
    pub(crate) fn varbytes(&mut self) -> KafkaResult<Option<&'a [u8]>> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.malformed("length"))?;
        self.take(len).map(Some)
    }
    /// Bytes with an int32 length; a negative length is null.
    pub(crate) fn nullable_bytes(&mut self) -> KafkaResult<Option<&'a [u8]>> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }
    pub(crate) fn malformed(&self, what: &str) -> KafkaError {
        KafkaError::io(format!("malformed {what} in a {} response", self.what))
    }
    /// An array's length (a null array is empty).
    pub(crate) fn len(&mut self) -> KafkaResult<usize> {
        Ok(self.i32()?.max(0) as usize)
    }
}

/// One connection to one broker.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    pub(crate) async fn open(address: &str) -> KafkaResult<Connection> {
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
    pub(crate) async fn request(
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

/// Ask `broker` for the partitions of `topic`: the connection (kept for later requests) and
/// each partition's leader, `host:port`, in partition order.
pub(crate) async fn metadata(broker: &str, topic: &str) -> KafkaResult<(Connection, Vec<String>)> {
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

/// A topic's partition leaders, and a connection per broker opened when first needed; a
/// connection whose request failed is dropped, so the next request reconnects.
#[derive(Debug)]
pub(crate) struct TopicBrokers {
    pub(crate) topic: String,
    /// Each partition's leader, `host:port`.
    leaders: Vec<String>,
    connections: HashMap<String, Connection>,
}

impl TopicBrokers {
    /// Connect to `brokers` (tried in turn) and learn the partitions of `topic`.
    pub(crate) async fn connect(brokers: &[String], topic: &str) -> KafkaResult<TopicBrokers> {
        let mut last = KafkaError::io("no brokers given".to_string());
        for broker in brokers {
            match metadata(broker, topic).await {
                Ok((connection, leaders)) => {
                    let mut connections = HashMap::new();
                    connections.insert(broker.clone(), connection);
                    return Ok(TopicBrokers {
                        topic: topic.to_string(),
                        leaders,
                        connections,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The topic's partitions, numbered 0 to `partitions() - 1`.
    pub(crate) fn partitions(&self) -> usize {
        self.leaders.len()
    }

    /// The leader of `partition`, `host:port`.
    pub(crate) fn leader(&self, partition: i32) -> KafkaResult<String> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.leaders.get(p))
            .cloned()
            .ok_or_else(|| KafkaError::io(format!("topic has no partition {partition}")))
    }

    /// A broker to ask cluster-wide questions: one already connected, else a leader.
    pub(crate) fn any(&self) -> KafkaResult<String> {
        self.connections
            .keys()
            .next()
            .or_else(|| self.leaders.first())
            .cloned()
            .ok_or_else(|| KafkaError::io("no broker connection".to_string()))
    }

    /// One request to the broker at `address` (see [`Connection::request`]).
    pub(crate) async fn request(
        &mut self,
        address: &str,
        api_key: i16,
        version: i16,
        flexible: bool,
        body: &[u8],
    ) -> KafkaResult<Vec<u8>> {
        if !self.connections.contains_key(address) {
            let connection = Connection::open(address).await?;
            self.connections.insert(address.to_string(), connection);
        }
        let connection = self
            .connections
            .get_mut(address)
            .ok_or_else(|| KafkaError::io(format!("no connection to {address}")))?;
        let result = connection.request(api_key, version, flexible, body).await;
        if result.is_err() {
            self.connections.remove(address);
        }
        result
    }
}
