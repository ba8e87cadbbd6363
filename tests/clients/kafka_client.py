"""An independent Kafka client for the tests (kafka-python, not the server's rskafka).

  kafka_client.py BROKER create TOPIC PARTITIONS
  kafka_client.py BROKER produce TOPIC        < JSON lines {"partition": p, "key": k|null, "value": v|null}
  kafka_client.py BROKER consume TOPIC IDLE_MS > JSON lines {"partition", "offset", "key", "value"}

Keys and values are text (UTF-8); `consume` reads every partition from the start until no
record has come for IDLE_MS.
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def main():
    broker, command, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "create":
        admin = KafkaAdminClient(bootstrap_servers=broker)
        admin.create_topics([NewTopic(topic, int(sys.argv[4]), 1)])
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
    elif command == "consume":
        consumer = KafkaConsumer(
            bootstrap_servers=broker,
            enable_auto_commit=False,
            consumer_timeout_ms=int(sys.argv[4]),
        )
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        for m in consumer:
            print(json.dumps({"partition": m.partition, "offset": m.offset,
                              "key": text(m.key), "value": text(m.value)}))
        consumer.close()
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
