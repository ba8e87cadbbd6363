//! A Kafka consumer for the sources that reads only committed data, speaking the protocol
//! itself (on [`super::kafka_protocol`]): ListOffsets (v1) for where a partition starts and
//! ends, and Fetch (v4, `read_committed`) returning whole record batches (format v2, any of
//! Kafka's four compression codecs) with their producer and transaction flags.
//!
//! ```text
//!  Fetch ─► record batches ─► CommittedReader ─► records of committed transactions and of
//!                                   │             non-transactional producers, in order
//!                                   └─ holds batches of transactions not yet ended
//! ```
//!
//! Why not a client library: rskafka, the maintained pure-Rust client, drops what a
//! read-committed consumer needs (the batches' producer ids and transaction markers), so the
//! records of aborted transactions would reach the stream. [`CommittedReader`] decides each
//! transactional batch by the marker its producer writes when the transaction ends (commit or
//! abort), and hands on records only up to the first batch still undecided: the client-side
//! counterpart of a broker's last stable offset, which not every Kafka-compatible broker
//! keeps. Everything before [`CommittedReader::resume_at`] is then delivered or dropped for
//! good, so a source that stores that offset with its rows resumes exactly there.

use std::collections::{HashMap, VecDeque};
use std::io::Read;

use super::kafka_protocol::{
    API_FETCH, API_LIST_OFFSETS, Decoder, Encoder, KafkaError, KafkaResult, TopicBrokers,
};

/// ListOffsets' special timestamps.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

/// OFFSET_OUT_OF_RANGE: the partition no longer (or does not yet) hold the offset asked for.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;

/// A decompressed batch may not grow past this (a corrupt or hostile batch is an error, not
/// an allocation of any size).
const MAX_DECOMPRESSED: u64 = 256 << 20;

/// One record of a fetched batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub offset: i64,
    /// Milliseconds since the epoch (the producer's or the broker's, per the topic).
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// One record batch as the broker stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub producer_id: i64,
    pub transactional: bool,
    /// A control batch: what it marks. None for data.
    pub control: Option<Marker>,
    pub records: Vec<Record>,
    /// The records were not kept (read while too much was held back): the batch must be read
    /// again before they can be delivered.
    pub stripped: bool,
}

/// What a control batch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// The producer's open transaction committed.
    Commit,
    /// The producer's open transaction aborted.
    Abort,
    /// Another kind of control record (none decides a transaction).
    Other,
}

impl Batch {
    /// About what the batch's records take in memory.
    fn bytes(&self) -> usize {
        self.records
            .iter()
            .map(|r| 32 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// What one fetch of a partition returned.
#[derive(Debug)]
pub struct Fetched {
    pub batches: Vec<Batch>,
    pub high_watermark: i64,
    /// The broker's last stable offset (read_committed fetches return nothing at or after
    /// it); -1 when the broker does not say.
    pub last_stable_offset: i64,
    /// A batch that could not be read (corrupt, an old message format, an unknown codec),
    /// after the `batches` before it: the partition cannot go on past it.
    pub unreadable: Option<KafkaError>,
}

/// A consumer of one topic, with a connection per partition leader.
#[derive(Debug)]
pub struct Consumer {
    brokers: TopicBrokers,
}

impl Consumer {
    /// Connect to `brokers` (tried in turn) and learn the partitions of `topic`.
    pub async fn connect(brokers: &[String], topic: &str) -> KafkaResult<Consumer> {
        Ok(Consumer {
            brokers: TopicBrokers::connect(brokers, topic).await?,
        })
    }

    /// The topic's partitions, numbered 0 to `partitions() - 1`.
    pub fn partitions(&self) -> usize {
        self.brokers.partitions()
    }

    /// A request to the leader of `partition`.
    async fn request(
        &mut self,
        partition: i32,
        api_key: i16,
        version: i16,
        body: &[u8],
    ) -> KafkaResult<Vec<u8>> {
        let leader = self.brokers.leader(partition)?;
        self.brokers
            .request(&leader, api_key, version, false, body)
            .await
    }

    /// The offset of `partition` at `at`: [`EARLIEST`], [`LATEST`], or the first record at or
    /// after a time (milliseconds); -1 when no record is that late.
    pub async fn list_offset(&mut self, partition: i32, at: i64) -> KafkaResult<i64> {
        let mut body = Encoder::default();
        body.i32(-1) // replica id: a consumer
            .i32(1)
            .string(&self.brokers.topic)
            .i32(1)
            .i32(partition)
            .i64(at);
        let response = self
            .request(partition, API_LIST_OFFSETS, 1, &body.0)
            .await?;
        let mut d = Decoder {
            data: &response,
            what: "ListOffsets",
        };
        for _ in 0..d.len()? {
            let _topic = d.string()?;
            for _ in 0..d.len()? {
                let index = d.i32()?;
                let error = d.i16()?;
                let _timestamp = d.i64()?;
                let offset = d.i64()?;
                if index != partition {
                    continue;
                }
                if error != 0 {
                    return Err(KafkaError::broker(
                        error,
                        &format!("listing offsets of partition {partition}"),
                    ));
                }
                return Ok(offset);
            }
        }
        Err(KafkaError::io(format!(
            "the broker listed no offset for partition {partition}"
        )))
    }

    /// Committed record batches of `partition` from `offset` on (whole batches: the first may
    /// start before `offset`), up to about `max_bytes`, waiting up to `max_wait_ms` for data.
    pub async fn fetch(
        &mut self,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> KafkaResult<Fetched> {
        let mut body = Encoder::default();
        body.i32(-1) // replica id: a consumer
            .i32(max_wait_ms)
            .i32(1) // min bytes
            .i32(max_bytes)
            .i8(1) // isolation level: read_committed
            .i32(1)
            .string(&self.brokers.topic)
            .i32(1)
            .i32(partition)
            .i64(offset)
            .i32(max_bytes);
        let response = self.request(partition, API_FETCH, 4, &body.0).await?;
        let mut d = Decoder {
            data: &response,
            what: "fetch",
        };
        let _throttle = d.i32()?;
        for _ in 0..d.len()? {
            let _topic = d.string()?;
            for _ in 0..d.len()? {
                let index = d.i32()?;
                let error = d.i16()?;
                let high_watermark = d.i64()?;
                let last_stable_offset = d.i64()?;
                // Aborted transactions: decided from the markers instead (CommittedReader).
                for _ in 0..d.len()? {
                    d.i64()?;
                    d.i64()?;
                }
                let records = d.nullable_bytes()?;
                if index != partition {
                    continue;
                }
                if error != 0 {
                    return Err(KafkaError::broker(
                        error,
                        &format!("fetching partition {partition} from offset {offset}"),
                    ));
                }
                let (batches, unreadable) = decode_batches(records.unwrap_or_default());
                return Ok(Fetched {
                    batches,
                    high_watermark,
                    last_stable_offset,
                    unreadable,
                });
            }
        }
        Err(KafkaError::io(format!(
            "the broker's fetch response has no partition {partition}"
        )))
    }
}

/// The complete record batches in `data` (a fetch may end with part of one, which is left
/// for the next fetch), and the error of the first batch that cannot be read, if any (the
/// batches returned are those before it).
pub fn decode_batches(data: &[u8]) -> (Vec<Batch>, Option<KafkaError>) {
    let mut batches = Vec::new();
    let mut rest = data;
    while rest.len() >= 12 {
        let base_offset = i64::from_be_bytes(rest[..8].try_into().unwrap_or([0; 8]));
        let length = i32::from_be_bytes(rest[8..12].try_into().unwrap_or([0; 4]));
        let Ok(length) = usize::try_from(length) else {
            let error = KafkaError::io(format!(
                "record batch at offset {base_offset} has length {length}"
            ));
            return (batches, Some(error));
        };
        if rest.len() < 12 + length {
            break;
        }
        match decode_batch(base_offset, &rest[12..12 + length]) {
            Ok(batch) => batches.push(batch),
            Err(e) => return (batches, Some(e)),
        }
        rest = &rest[12 + length..];
    }
    (batches, None)
}

/// One batch: `body` is what follows the batch length.
fn decode_batch(base_offset: i64, body: &[u8]) -> KafkaResult<Batch> {
    let mut d = Decoder {
        data: body,
        what: "fetch",
    };
    let _leader_epoch = d.i32()?;
    let magic = d.i8()?;
    if magic != 2 {
        return Err(KafkaError::io(format!(
            "record batch at offset {base_offset} is in message format v{magic} (Kafka before \
             0.11); only v2 is read"
        )));
    }
    let crc = d.i32()? as u32;
    if crc32c::crc32c(d.data) != crc {
        return Err(KafkaError::io(format!(
            "record batch at offset {base_offset} fails its CRC (corrupt)"
        )));
    }
    let attributes = d.i16()?;
    let last_offset_delta = d.i32()?;
    let base_timestamp = d.i64()?;
    let max_timestamp = d.i64()?;
    let producer_id = d.i64()?;
    let _producer_epoch = d.i16()?;
    let _base_sequence = d.i32()?;
    let count = d.len()?;
    let transactional = attributes & (1 << 4) != 0;
    let is_control = attributes & (1 << 5) != 0;
    // LogAppendTime: the broker's time, kept once as the batch's max timestamp, is every
    // record's timestamp.
    let log_append_time = attributes & (1 << 3) != 0;
    let last_offset = base_offset
        .checked_add(i64::from(last_offset_delta))
        .filter(|last| *last >= base_offset && *last < i64::MAX)
        .ok_or_else(|| {
            KafkaError::io(format!(
                "record batch at offset {base_offset} has last offset delta {last_offset_delta}"
            ))
        })?;
    let decompressed;
    let mut r = Decoder {
        data: match attributes & 0x7 {
            0 => d.data,
            codec => {
                decompressed = decompress(codec, d.data).map_err(|e| {
                    KafkaError::io(format!("record batch at offset {base_offset}: {e}"))
                })?;
                &decompressed
            }
        },
        what: "fetch",
    };
    let mut records = Vec::with_capacity(count.min(1 << 16));
    let mut marker = Marker::Other;
    for _ in 0..count {
        let length = r.varint()?;
        let length = usize::try_from(length).map_err(|_| r.malformed("record length"))?;
        let mut f = Decoder {
            data: r.take(length)?,
            what: "fetch",
        };
        let _attributes = f.i8()?;
        let timestamp_delta = f.varint()?;
        let offset_delta = f.varint()?;
        let key = f.varbytes()?;
        let value = f.varbytes()?;
        if is_control {
            // The key: version (int16), type (int16: 0 abort, 1 commit).
            marker = match key.and_then(|k| k.get(2..4)) {
                Some([0, 0]) => Marker::Abort,
                Some([0, 1]) => Marker::Commit,
                _ => Marker::Other,
            };
            continue;
        }
        let offset = base_offset.saturating_add(offset_delta);
        if !(base_offset..=last_offset).contains(&offset) {
            return Err(KafkaError::io(format!(
                "record batch at offset {base_offset} holds a record at offset {offset}, outside \
                 the batch"
            )));
        }
        records.push(Record {
            offset,
            timestamp_ms: if log_append_time {
                max_timestamp
            } else {
                base_timestamp.saturating_add(timestamp_delta)
            },
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
        });
        // Headers are not read (INCLUDE takes key, partition, offset and timestamp).
    }
    Ok(Batch {
        base_offset,
        last_offset,
        producer_id,
        transactional,
        control: is_control.then_some(marker),
        records,
        stripped: false,
    })
}

/// The records section of a batch compressed with `codec` (1 gzip, 2 snappy, 3 lz4, 4 zstd).
fn decompress(codec: i16, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = |reader: &mut dyn Read, out: &mut Vec<u8>| {
        reader
            .take(MAX_DECOMPRESSED + 1)
            .read_to_end(out)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                if n as u64 > MAX_DECOMPRESSED {
                    Err(format!(
                        "decompresses to more than {} MiB",
                        MAX_DECOMPRESSED >> 20
                    ))
                } else {
                    Ok(())
                }
            })
    };
    match codec {
        1 => read(&mut flate2::read::MultiGzDecoder::new(data), &mut out)?,
        2 => out = unsnappy(data)?,
        3 => read(&mut lz4_flex::frame::FrameDecoder::new(data), &mut out)?,
        4 => read(
            &mut zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?,
            &mut out,
        )?,
        other => return Err(format!("unknown compression codec {other}")),
    }
    Ok(out)
}

/// Snappy as Kafka producers write it: raw, or in the xerial framing the Java client uses
/// (a 16-byte header, then blocks each prefixed with its length).
fn unsnappy(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let mut decoder = snap::raw::Decoder::new();
    // The length a block claims is checked before anything is allocated for it.
    let mut block = |block: &[u8], so_far: usize| {
        let claimed = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
        if (so_far + claimed) as u64 > MAX_DECOMPRESSED {
            return Err(format!(
                "decompresses to more than {} MiB",
                MAX_DECOMPRESSED >> 20
            ));
        }
        decoder.decompress_vec(block).map_err(|e| e.to_string())
    };
    if !data.starts_with(XERIAL) {
        return block(data, 0);
    }
    let mut out = Vec::new();
    let mut rest = data.get(16..).unwrap_or_default();
    while !rest.is_empty() {
        let Some((size, tail)) = rest.split_first_chunk::<4>() else {
            return Err("truncated xerial snappy block".into());
        };
        let size = u32::from_be_bytes(*size) as usize;
        let data = tail.get(..size).ok_or("truncated xerial snappy block")?;
        let decompressed = block(data, out.len())?;
        out.extend(decompressed);
        rest = &tail[size..];
    }
    Ok(out)
}

/// Read-committed reading, decided on the client from transaction markers: batches go in in
/// log order; out come the records of non-transactional batches and of committed
/// transactions, never an aborted transaction's, and nothing past the first transactional
/// batch whose transaction has not ended yet (its marker not read yet).
///
/// What is held back is bounded: past `limit` bytes, later batches are kept without their
/// records (their producer, offsets and markers still decide earlier batches), and once the
/// reader reaches the first such batch it asks to read the log again from there.
#[derive(Debug)]
pub struct CommittedReader {
    held: VecDeque<Batch>,
    held_bytes: usize,
    limit: usize,
    /// Batches are being kept without their records (the limit was reached).
    stripping: bool,
    /// Where reading resumes: every batch before it is delivered or dropped.
    resume_at: Option<i64>,
}

/// What [`CommittedReader::take_decided`] hands out.
#[derive(Debug, Default)]
pub struct Decided {
    /// Records now decided to be delivered, in offset order.
    pub records: Vec<Record>,
    /// Read the log again from this offset: the batches from here on were kept without their
    /// records, and the reader has let go of them.
    pub reread_from: Option<i64>,
}

impl CommittedReader {
    /// A reader that holds back at most about `limit` bytes of records.
    pub fn new(limit: usize) -> CommittedReader {
        CommittedReader {
            held: VecDeque::new(),
            held_bytes: 0,
            limit,
            stripping: false,
            resume_at: None,
        }
    }

    /// Add fetched batches (in log order, after those added before).
    pub fn push(&mut self, batches: Vec<Batch>) {
        for mut batch in batches {
            let bytes = batch.bytes();
            if self.stripping || self.held_bytes + bytes > self.limit && !self.held.is_empty() {
                self.stripping = true;
                batch.records = Vec::new();
                batch.stripped = true;
            } else {
                self.held_bytes += bytes;
            }
            self.held.push_back(batch);
        }
    }

    /// The records decided so far, removed from what is held.
    pub fn take_decided(&mut self) -> Decided {
        // Each held transactional batch's fate: the first marker of its producer after it.
        let mut marker_after: HashMap<i64, bool> = HashMap::new();
        let mut fate = vec![None; self.held.len()];
        for (i, batch) in self.held.iter().enumerate().rev() {
            match batch.control {
                Some(Marker::Commit) => {
                    marker_after.insert(batch.producer_id, true);
                }
                Some(Marker::Abort) => {
                    marker_after.insert(batch.producer_id, false);
                }
                Some(Marker::Other) => {}
                None if batch.transactional => {
                    fate[i] = marker_after.get(&batch.producer_id).copied();
                }
                None => fate[i] = Some(true),
            }
        }
        let mut decided = Decided::default();
        for fate in fate {
            let Some(front) = self.held.front() else {
                break;
            };
            let deliver = match (front.control, fate) {
                (Some(_), _) => false,
                (None, Some(commit)) => commit,
                (None, None) => break,
            };
            if deliver && front.stripped {
                // Its records were not kept: read them again, and what follows.
                decided.reread_from = Some(front.base_offset);
                self.held.clear();
                self.held_bytes = 0;
                self.stripping = false;
                break;
            }
            let Some(batch) = self.held.pop_front() else {
                break;
            };
            self.resume_at = Some(batch.last_offset + 1);
            self.held_bytes = self.held_bytes.saturating_sub(batch.bytes());
            if deliver {
                decided.records.extend(batch.records);
            }
        }
        if self.held.iter().all(|b| !b.stripped) {
            self.stripping = false;
        }
        decided
    }

    /// The offset after the last batch delivered or dropped (None: none yet).
    pub fn resume_at(&self) -> Option<i64> {
        self.resume_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::kafka_producer::record_batch;

    fn message(v: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (Some(b"k".to_vec()), Some(v.as_bytes().to_vec()))
    }

    /// A batch as the broker stores it: the producer's encoding with its base offset set.
    fn stored(base: i64, batch: Vec<u8>) -> Vec<u8> {
        let mut batch = batch;
        batch[..8].copy_from_slice(&base.to_be_bytes());
        batch
    }

    /// A transaction marker batch of `producer` at `offset`.
    fn marker(offset: i64, producer: i64, commit: bool) -> Vec<u8> {
        let mut record = Encoder::default();
        let key = [0, 0, 0, u8::from(commit)];
        let value = [0, 0, 0, 0, 0, 0];
        record
            .i8(0)
            .varint(0)
            .varint(0)
            .varbytes(Some(&key))
            .varbytes(Some(&value))
            .varint(0);
        let mut records = Encoder::default();
        records.varint(record.0.len() as i64);
        records.0.extend_from_slice(&record.0);
        let mut body = Encoder::default();
        body.i16((1 << 4) | (1 << 5))
            .i32(0)
            .i64(0)
            .i64(0)
            .i64(producer)
            .i16(0)
            .i32(-1)
            .i32(1);
        body.0.extend_from_slice(&records.0);
        let mut batch = Encoder::default();
        batch
            .i64(offset)
            .i32((4 + 1 + 4 + body.0.len()) as i32)
            .i32(-1)
            .i8(2)
            .i32(crc32c::crc32c(&body.0) as i32);
        batch.0.extend_from_slice(&body.0);
        batch.0
    }

    fn log(parts: &[Vec<u8>]) -> Vec<Batch> {
        let (batches, error) = decode_batches(&parts.concat());
        assert!(error.is_none(), "{error:?}");
        batches
    }

    fn values(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    #[test]
    fn batches_decode_with_offsets_keys_and_transaction_flags() {
        let plain = stored(10, record_batch(&[message("a"), message("b")], None, false));
        let txn = stored(12, record_batch(&[message("c")], Some((7, 0, 0)), true));
        let batches = log(&[plain, txn, marker(13, 7, true)]);
        assert_eq!(batches.len(), 3);
        assert_eq!((batches[0].base_offset, batches[0].last_offset), (10, 11));
        assert_eq!(batches[0].records[1].offset, 11);
        assert_eq!(batches[0].records[1].key.as_deref(), Some(&b"k"[..]));
        assert!(!batches[0].transactional && batches[1].transactional);
        assert_eq!(batches[1].producer_id, 7);
        assert_eq!(batches[2].control, Some(Marker::Commit));
        assert!(batches[2].records.is_empty());
    }

    #[test]
    fn a_partial_last_batch_waits_and_a_corrupt_one_is_an_error() {
        let whole = stored(0, record_batch(&[message("a")], None, false));
        let mut data = whole.clone();
        data.extend_from_slice(&whole[..whole.len() - 3]);
        assert_eq!(log(&[data]).len(), 1);
        let mut corrupt = whole.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        // The good batch before a corrupt one still comes out, with the error.
        let (good, error) = decode_batches(&[whole.clone(), corrupt].concat());
        assert_eq!(good.len(), 1);
        assert!(error.is_some_and(|e| e.message.contains("CRC")));
        // A negative length and an old message format are errors, not panics.
        let mut negative = whole.clone();
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_batches(&negative).1.is_some());
        let mut old = whole;
        old[16] = 1;
        assert!(
            decode_batches(&old)
                .1
                .is_some_and(|e| e.message.contains("format v1"))
        );
    }

    #[test]
    fn compressed_batches_decode() {
        use std::io::Write;
        // The records section of a one-record batch, compressed with each codec (snappy both
        // raw and in the Java client's xerial framing).
        let plain = stored(5, record_batch(&[message("zipped")], None, false));
        let records = &plain[61..];
        let snappy = snap::raw::Encoder::new()
            .compress_vec(records)
            .expect("snappy");
        let mut xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        xerial.extend_from_slice(&(snappy.len() as u32).to_be_bytes());
        xerial.extend_from_slice(&snappy);
        for (codec, compressed) in [
            (1i16, {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                gz.write_all(records).expect("gzip");
                gz.finish().expect("gzip")
            }),
            (2, snappy.clone()),
            (2, xerial),
            (3, {
                let mut lz4 = lz4_flex::frame::FrameEncoder::new(Vec::new());
                lz4.write_all(records).expect("lz4");
                lz4.finish().expect("lz4")
            }),
            (4, zstd::encode_all(records, 0).expect("zstd")),
        ] {
            let mut body = plain[21..61].to_vec();
            body[..2].copy_from_slice(&codec.to_be_bytes());
            body.extend_from_slice(&compressed);
            let mut batch = Encoder::default();
            batch
                .i64(5)
                .i32((4 + 1 + 4 + body.len()) as i32)
                .i32(-1)
                .i8(2)
                .i32(crc32c::crc32c(&body) as i32);
            batch.0.extend_from_slice(&body);
            let decoded = log(&[batch.0]);
            assert_eq!(values(&decoded[0].records), ["zipped"], "codec {codec}");
        }
    }

    #[test]
    fn only_committed_records_pass_and_nothing_past_an_open_transaction() {
        let plain = |at: i64, v: &str| stored(at, record_batch(&[message(v)], None, false));
        let txn = |at: i64, producer: i64, v: &str| {
            stored(
                at,
                record_batch(&[message(v)], Some((producer, 0, 0)), true),
            )
        };
        let mut reader = CommittedReader::new(1 << 20);
        // 0 p1; 1 A a1; 2 B b1; 3 p2; 4 A commits; 5 p3; B still open.
        reader.push(log(&[
            plain(0, "p1"),
            txn(1, 1, "a1"),
            txn(2, 2, "b1"),
            plain(3, "p2"),
            marker(4, 1, true),
            plain(5, "p3"),
        ]));
        assert_eq!(values(&reader.take_decided().records), ["p1", "a1"]);
        assert_eq!(reader.resume_at(), Some(2));
        // B aborts: its record is dropped, the rest flows, and reading resumes after it all.
        reader.push(log(&[marker(6, 2, false), txn(7, 1, "a2")]));
        assert_eq!(values(&reader.take_decided().records), ["p2", "p3"]);
        assert_eq!(reader.resume_at(), Some(7));
        reader.push(log(&[marker(8, 1, false)]));
        assert!(reader.take_decided().records.is_empty());
        assert_eq!(reader.resume_at(), Some(9));
    }

    #[test]
    fn log_append_time_gives_every_record_the_brokers_time() {
        let mut batch = stored(0, record_batch(&[message("a"), message("b")], None, false));
        // Attributes bit 3, then the max timestamp (at 35) set by the broker; CRC again.
        batch[22] |= 1 << 3;
        batch[35..43].copy_from_slice(&1_234_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let batches = log(&[batch]);
        assert!(
            batches[0]
                .records
                .iter()
                .all(|r| r.timestamp_ms == 1_234_000)
        );
    }

    #[test]
    fn past_its_limit_the_reader_keeps_headers_and_asks_to_read_again() {
        let plain = |at: i64, v: &str| stored(at, record_batch(&[message(v)], None, false));
        let txn = |at: i64, v: &str| stored(at, record_batch(&[message(v)], Some((1, 0, 0)), true));
        // Room for about one record: the open transaction's batch is held whole, the later
        // ones without their records.
        let mut reader = CommittedReader::new(40);
        reader.push(log(&[txn(0, "a1"), plain(1, "p1"), plain(2, "p2")]));
        let decided = reader.take_decided();
        assert!(decided.records.is_empty() && decided.reread_from.is_none());
        // The marker arrives (kept as a header too): a1 is delivered, then p1's records
        // are missing, so reading starts again at 1.
        reader.push(log(&[marker(3, 1, true)]));
        let decided = reader.take_decided();
        assert_eq!(values(&decided.records), ["a1"]);
        assert_eq!(decided.reread_from, Some(1));
        assert_eq!(reader.resume_at(), Some(1));
        reader.push(log(&[plain(1, "p1"), plain(2, "p2"), marker(3, 1, true)]));
        let decided = reader.take_decided();
        assert_eq!(values(&decided.records), ["p1"]);
        assert_eq!(decided.reread_from, Some(2));
        reader.push(log(&[plain(2, "p2"), marker(3, 1, true)]));
        let decided = reader.take_decided();
        assert_eq!(values(&decided.records), ["p2"]);
        assert_eq!(reader.resume_at(), Some(4));
    }
}
