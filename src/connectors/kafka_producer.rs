//! A Kafka producer that speaks the wire protocol itself, for the sinks: plain produce
//! (at-least-once) and transactions (exactly-once).
//!
//! No maintained pure-Rust client has a transactional producer, so the sinks encode the few
//! requests they need here (on [`super::kafka_protocol`]): Metadata (v1) for the partitions' leaders, Produce (v3)
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

pub use super::kafka_protocol::KafkaError;
use super::kafka_protocol::{
    API_ADD_PARTITIONS_TO_TXN, API_API_VERSIONS, API_END_TXN, API_FIND_COORDINATOR,
    API_INIT_PRODUCER_ID, API_PRODUCE, Backoff, Decoder, Encoder, KafkaResult, TopicBrokers,
};

/// Messages: key and value, each absent or bytes (no value: a tombstone).
pub type Message = (Option<Vec<u8>>, Option<Vec<u8>>);

/// How long the broker may take to replicate a produce: less than [`REQUEST_TIMEOUT`], so its
/// answer comes before the client gives up.
const BROKER_TIMEOUT: Duration = Duration::from_secs(25);

/// A record batch is cut before it grows past this many bytes (brokers refuse batches over
/// `message.max.bytes`, 1 MiB by default).
const MAX_BATCH_BYTES: usize = 900 << 10;

/// One record batch (format v2) holding `messages`, numbered from `base_sequence`.
pub(crate) fn record_batch(
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

/// A producer for one topic; transactional when given a transactional id.
#[derive(Debug)]
pub struct Producer {
    brokers: TopicBrokers,
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
        Ok(Producer {
            brokers: TopicBrokers::connect(brokers, topic).await?,
            transaction: None,
        })
    }

    pub fn partitions(&self) -> usize {
        self.brokers.partitions()
    }

    /// A request to `address`; InitProducerId is the one flexible version sent here.
    async fn request(
        &mut self,
        address: &str,
        api_key: i16,
        version: i16,
        body: &[u8],
    ) -> KafkaResult<Vec<u8>> {
        let flexible = api_key == API_INIT_PRODUCER_ID;
        self.brokers
            .request(address, api_key, version, flexible, body)
            .await
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
        let any = self.brokers.any()?;
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
        let index = i32::try_from(partition)
            .map_err(|_| KafkaError::io(format!("topic has no partition {partition}")))?;
        let leader = self.brokers.leader(index)?;
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
                .string(&self.brokers.topic)
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
                            &format!(
                                "producing to partition {index} of \"{}\"",
                                self.brokers.topic
                            ),
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
            .string(&self.brokers.topic)
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
