"""An independent Kafka client for the tests (kafka-python, not the server's rskafka).

  kafka_client.py BROKER create TOPIC PARTITIONS
  kafka_client.py BROKER delete TOPIC
  kafka_client.py BROKER produce TOPIC        < JSON lines {"partition": p, "key": k|null, "value": v|null}
  kafka_client.py BROKER consume TOPIC IDLE_MS > JSON lines {"partition", "offset", "key", "value"}
  kafka_client.py BROKER consume_committed TOPIC IDLE_MS > the same, committed records only
  kafka_client.py BROKER transact TOPIC < one command per line, each answered "ok" on
      stdout once done: "plain VALUE" (a non-transactional producer), "begin", "send VALUE"
      (sent and flushed inside the open transaction), "commit", "abort"
  kafka_client.py BROKER produce_avro TOPIC SCHEMA FRAMING < JSON lines {"partition": p,
      "record": {...}} (encoded by fastavro with SCHEMA, a JSON text) or {"partition": p,
      "raw_hex": "..."} (sent as is); FRAMING is a schema id (Confluent's wire format: byte 0,
      the id as 4 bytes big-endian, the body) or "none" (the bare body)

Keys and values are text (UTF-8); `consume` reads every partition from the start until no
record has come for IDLE_MS. `consume_committed` reads as an `isolation_level =
read_committed` consumer does, deciding itself which transactions committed from the
transaction markers in the log (a broker's fetch response may list the aborted transactions,
which kafka-python relies on, but not every Kafka-compatible broker fills that list): records
of a transaction that was aborted, or that is still open, are left out.
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import Fetcher

# Every record batch the consumer read: (partition, base offset) -> what it is.
BATCHES = {}


class BatchSpy:
    """Stands in for a fetch response's records, noting each batch the consumer unpacks."""

    def __init__(self, partition, records):
        self.partition, self.records = partition, records

    def next_batch(self, *args, **kwargs):
        batch = self.records.next_batch(*args, **kwargs)
        if batch is not None and batch.magic == 2:
            # The CRC is checked here, before the batch is read below (the consumer's own
            # check must come before any reading, so it is off for this consumer).
            if not batch.validate_crc():
                raise RuntimeError("record batch at offset %d fails its CRC" % batch.base_offset)
            info = {"last": batch.last_offset, "producer": batch.producer_id,
                    "transactional": batch.is_transactional, "control": batch.is_control_batch}
            if batch.is_control_batch:
                # A control record's key: version (int16), type (int16: 0 abort, 1 commit).
                info["commit"] = any(r.key[2:4] == b"\x00\x01" for r in batch)
            BATCHES[(self.partition, batch.base_offset)] = info
        return batch

    def __getattr__(self, name):
        return getattr(self.records, name)


def spy_on_batches():
    unpack = Fetcher.PartitionRecords._unpack_records

    def spying(self, tp, records, *args):
        return unpack(self, tp, BatchSpy(tp.partition, records), *args)

    Fetcher.PartitionRecords._unpack_records = spying


def committed_offsets():
    """(partition, offset) of every record whose transaction committed, or that had none."""
    visible, open_txns = set(), {}
    for (partition, base), b in sorted(BATCHES.items()):
        offsets = [(partition, o) for o in range(base, b["last"] + 1)]
        if b["control"]:
            records = open_txns.pop((partition, b["producer"]), [])
            if b["commit"]:
                visible.update(records)
        elif b["transactional"]:
            open_txns.setdefault((partition, b["producer"]), []).extend(offsets)
        else:
            visible.update(offsets)
    return visible


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def main():
    broker, command, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "create":
        admin = KafkaAdminClient(bootstrap_servers=broker)
        admin.create_topics([NewTopic(topic, int(sys.argv[4]), 1)])
        admin.close()
    elif command == "delete":
        admin = KafkaAdminClient(bootstrap_servers=broker)
        admin.delete_topics([topic])
        admin.close()
    elif command == "produce":
        producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
        for line in sys.stdin:
            if not line.strip():
                continue
            m = json.loads(line)
            key = None if m.get("key") is None else m["key"].encode()
            value = None if m.get("value") is None else m["value"].encode()
            producer.send(topic, key=key, value=value, partition=m.get("partition"))
        producer.flush()
        producer.close()
    elif command == "transact":
        plain = KafkaProducer(bootstrap_servers=broker)
        txn = KafkaProducer(bootstrap_servers=broker, transactional_id="test-" + topic)
        txn.init_transactions()
        for line in sys.stdin:
            verb, _, value = line.strip().partition(" ")
            if verb == "plain":
                plain.send(topic, value=value.encode(), partition=0)
                plain.flush()
            elif verb == "begin":
                txn.begin_transaction()
            elif verb == "send":
                txn.send(topic, value=value.encode(), partition=0)
                txn.flush()
            elif verb == "commit":
                txn.commit_transaction()
            elif verb == "abort":
                txn.abort_transaction()
            else:
                sys.exit("unknown transact command " + line)
            print("ok", flush=True)
        plain.close()
        txn.close()
    elif command == "produce_avro":
        import io
        import fastavro
        schema = fastavro.parse_schema(json.loads(sys.argv[4]))
        framing = sys.argv[5]
        producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5)
        for line in sys.stdin:
            if not line.strip():
                continue
            m = json.loads(line)
            if "raw_hex" in m:
                value = bytes.fromhex(m["raw_hex"])
            else:
                body = io.BytesIO()
                fastavro.schemaless_writer(body, schema, m["record"])
                value = body.getvalue()
                if framing != "none":
                    value = b"\x00" + int(framing).to_bytes(4, "big") + value
            producer.send(topic, value=value, partition=m.get("partition"))
        producer.flush()
        producer.close()
    elif command in ("consume", "consume_committed"):
        committed = command == "consume_committed"
        if committed:
            spy_on_batches()
        consumer = KafkaConsumer(
            bootstrap_servers=broker,
            enable_auto_commit=False,
            consumer_timeout_ms=int(sys.argv[4]),
            check_crcs=not committed,
        )
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        messages = [m for m in consumer]
        consumer.close()
        visible = committed_offsets() if committed else None
        for m in messages:
            if visible is None or (m.partition, m.offset) in visible:
                print(json.dumps({"partition": m.partition, "offset": m.offset,
                                  "key": text(m.key), "value": text(m.value)}))
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
