//! Kafka in and out against a real broker (tansu) and an independent client (kafka-python):
//! a topic read into a stream and its views exactly once while the server is killed with
//! SIGKILL mid-stream, undecodable records kept once as dead letters, and the consumer lag;
//! Avro values (fastavro); a transactional producer's topic read committed-only; sinks at
//! least once and exactly once (Kafka transactions) across SIGKILLs, read back independently.

mod common;

use std::time::Duration;

use common::kafka::Broker;
use common::process::EddyProcess;

const TOTAL_ROUNDS: i64 = 4;
const PER_ROUND: i64 = 1500;

fn payment(id: i64) -> (i32, Option<String>, Option<String>) {
    (
        (id % 3) as i32,
        Some(format!("card-{}", id % 13)),
        Some(format!(
            "{{\"id\": {id}, \"card\": {}, \"amount\": {}.25, \"note\": \"ignored\"}}",
            id % 13,
            id % 100
        )),
    )
}

/// Every message reaches the stream and its views exactly once although the server is killed
/// in the middle of reading each round; the bad records of each round are dead letters, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_reaches_views_exactly_once_across_kills() {
    let broker = Broker::start();
    broker.create_topic("payments", 3);
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut process = EddyProcess::start(data_dir.path(), &[]);
    process
        .connect()
        .await
        .batch_execute(&format!(
            "CREATE STREAM payments (id BIGINT, card BIGINT, amount DOUBLE PRECISION)
               INCLUDE partition AS part INCLUDE offset AS off INCLUDE key AS card_key
               WITH (connector = 'kafka', brokers = '{}', topic = 'payments');
             CREATE MATERIALIZED VIEW per_card AS
               SELECT card, count(*) AS n, sum(id) AS ids FROM payments GROUP BY card;
             CREATE MATERIALIZED VIEW totals AS
               SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS id_sum FROM payments;",
            broker.address
        ))
        .await
        .expect("stream and views");
    for round in 0..TOTAL_ROUNDS {
        let mut messages: Vec<(i32, Option<String>, Option<String>)> = (round * PER_ROUND
            ..(round + 1) * PER_ROUND)
            .map(payment)
            .collect();
        // Two records per round that cannot be rows: broken JSON, and a message without a value.
        messages.insert(100, (0, None, Some("{\"id\": oops".to_string())));
        messages.insert(700, (1, Some("card-x".to_string()), None));
        let producer = {
            let address = broker.address.clone();
            std::thread::spawn(move || {
                let broker = Broker::attach(&address);
                let borrowed: Vec<(i32, Option<&str>, Option<&str>)> = messages
                    .iter()
                    .map(|(p, k, v)| (*p, k.as_deref(), v.as_deref()))
                    .collect();
                broker.produce("payments", &borrowed);
            })
        };
        // Killed as soon as the round has begun to arrive, while it is produced and read.
        let client = process.connect().await;
        let seen = "SELECT count(*) FROM payments";
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut at_kill = common::scalar(&client, seen).await;
        while at_kill <= round * PER_ROUND {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            at_kill = common::scalar(&client, seen).await;
        }
        process.kill();
        eprintln!("round {round}: killed with {at_kill} rows stored");
        producer.join().expect("producer");
        process = EddyProcess::start(data_dir.path(), &[]);
    }
    let client = process.connect().await;
    let total = TOTAL_ROUNDS * PER_ROUND;
    common::wait_for(&client, "SELECT count(*) FROM payments", total).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(DISTINCT id) FROM payments").await,
        total,
        "a message was read twice"
    );
    common::wait_for(&client, "SELECT n FROM totals", total).await;
    assert_eq!(
        common::scalar(&client, "SELECT ids FROM totals").await,
        total
    );
    assert_eq!(
        common::scalar(&client, "SELECT id_sum FROM totals").await,
        total * (total - 1) / 2
    );
    common::wait_for(&client, "SELECT sum(n)::BIGINT FROM per_card", total).await;
    // The metadata columns: offsets are dense per partition, keys as produced.
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM payments WHERE card_key <> 'card-' || card"
        )
        .await,
        0
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT sum(max_off - min_off + 1 - n)::BIGINT FROM
               (SELECT part, min(off) AS min_off, max(off) AS max_off, count(*) AS n
                FROM payments GROUP BY part) per_partition"
        )
        .await,
        TOTAL_ROUNDS * 2,
        "the offsets not in the stream are exactly the bad records'"
    );
    // Each bad record once, with its bytes, error and position.
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.dead_letters WHERE source = 'public.payments'",
        TOTAL_ROUNDS * 2,
    )
    .await;
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.dead_letters
             WHERE payload = '\\x7b226964223a206f6f7073'::bytea AND error LIKE 'invalid JSON%'
               AND partition = 0"
        )
        .await,
        TOTAL_ROUNDS
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.dead_letters
             WHERE payload IS NULL AND error LIKE '%no value%' AND partition = 1"
        )
        .await,
        TOTAL_ROUNDS
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT dead_letters::BIGINT FROM eddy_catalog.sources WHERE source = 'public.payments'"
        )
        .await,
        TOTAL_ROUNDS * 2
    );
    // Caught up: no lag in any partition, in the system table and in /metrics (promtool).
    common::wait_for(
        &client,
        "SELECT coalesce(sum(lag), 0)::BIGINT + count(*) FROM eddy_catalog.source_partitions",
        3,
    )
    .await;
    let metrics = common::http::metrics(process.http).await;
    for partition in 0..3 {
        assert_eq!(
            common::http::sample(
                &metrics,
                &format!("eddy_source_lag{{source=\"public.payments\",partition=\"{partition}\"}}")
            ),
            Some(0.0),
            "{metrics}"
        );
    }
    assert_eq!(
        common::http::sample(
            &metrics,
            "eddy_source_dead_letters_total{source=\"public.payments\"}"
        ),
        Some((TOTAL_ROUNDS * 2) as f64)
    );
    assert_eq!(
        common::http::sample(
            &metrics,
            "eddy_source_rows_total{source=\"public.payments\"}"
        ),
        Some(total as f64)
    );
}

/// Rows of a consumed topic by their JSON value.
fn values(messages: &[serde_json::Value]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .map(|m| match m["value"].as_str() {
            Some(text) => serde_json::from_str(text).expect("JSON value"),
            None => serde_json::Value::Null,
        })
        .collect()
}

/// What an upsert topic says now: the newest value per key (by offset within a partition; a
/// key always goes to one partition), tombstones removing the key.
fn upserted(messages: &[serde_json::Value]) -> std::collections::BTreeMap<String, i64> {
    let mut sorted: Vec<&serde_json::Value> = messages.iter().collect();
    sorted.sort_by_key(|m| (m["partition"].as_i64(), m["offset"].as_i64()));
    let mut state = std::collections::BTreeMap::new();
    for m in sorted {
        let key = m["key"].as_str().expect("key").to_string();
        match m["value"].as_str() {
            Some(text) => {
                let row: serde_json::Value = serde_json::from_str(text).expect("row");
                state.insert(key, row["n"].as_i64().expect("n"));
            }
            None => {
                state.remove(&key);
            }
        }
    }
    state
}

/// The view's rows as card -> n.
async fn per_card(client: &tokio_postgres::Client) -> std::collections::BTreeMap<String, i64> {
    client
        .query("SELECT card, n FROM per_card", &[])
        .await
        .expect("per_card")
        .iter()
        .map(|r| (r.get::<_, i64>(0).to_string(), r.get::<_, i64>(1)))
        .collect()
}

/// Sinks, read back with the independent client: a view's changes as op messages and as
/// upserts with tombstones, and a stream's rows, which resume after a SIGKILL without
/// resending what the broker acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_write_views_and_streams_to_topics() {
    let broker = Broker::start();
    for topic in ["alerts", "changes", "raw"] {
        broker.create_topic(topic, 2);
    }
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    let address = &broker.address;
    client
        .batch_execute(&format!(
            "CREATE STREAM tx (card BIGINT, amount DOUBLE PRECISION);
             INSERT INTO tx VALUES (1, 10), (2, 20), (3, 30), (1, 11);
             CREATE MATERIALIZED VIEW per_card AS
               SELECT card, count(*) AS n FROM tx WHERE amount < 100 GROUP BY card;
             CREATE SINK alerts_out FROM per_card
               WITH (connector = 'kafka', brokers = '{address}', topic = 'alerts', key = 'card');
             CREATE SINK changes_out FROM per_card
               WITH (connector = 'kafka', brokers = '{address}', topic = 'changes', format = 'json');
             CREATE SINK raw_out FROM tx
               WITH (connector = 'kafka', brokers = '{address}', topic = 'raw');
             INSERT INTO tx VALUES (2, 21), (4, 40), (4, 400);
             INSERT INTO tx VALUES (5, 50);"
        ))
        .await
        .expect("sinks");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let expected = loop {
        let expected = per_card(&client).await;
        let upserts = upserted(&broker.consume("alerts", Duration::from_millis(1500)));
        if upserts == expected && expected.len() == 5 {
            break expected;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alerts topic {upserts:?}, view {expected:?}"
        );
    };
    // The op messages replayed give the same rows.
    let mut replayed: std::collections::BTreeMap<String, i64> = Default::default();
    for row in values(&broker.consume("changes", Duration::from_millis(1500))) {
        let card = row["card"].as_i64().expect("card").to_string();
        match row["op"].as_str() {
            Some("insert") => {
                replayed.insert(card, row["n"].as_i64().expect("n"));
            }
            Some("delete") => {
                replayed.remove(&card);
            }
            other => panic!("op {other:?} in {row}"),
        }
    }
    assert_eq!(replayed, expected);
    // The stream sink sends rows appended after it started: the last two inserts.
    let raw = values(&broker.consume("raw", Duration::from_millis(1500)));
    assert_eq!(raw.len(), 4, "{raw:?}");
    assert_eq!(
        common::scalar(
            &client,
            "SELECT sum(messages)::BIGINT FROM eddy_catalog.sinks WHERE sink = 'public.raw_out'"
        )
        .await,
        4
    );

    // Killed and restarted: the stream sink resumes after what was acknowledged.
    process.kill();
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute("INSERT INTO tx VALUES (6, 60), (1, 12)")
        .await
        .expect("insert");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let raw = values(&broker.consume("raw", Duration::from_millis(1500)));
        let expected = per_card(&client).await;
        let upserts = upserted(&broker.consume("alerts", Duration::from_millis(1500)));
        if raw.len() == 6 && upserts == expected && expected.get("6") == Some(&1) {
            let cards: Vec<i64> = raw
                .iter()
                .map(|r| r["card"].as_i64().unwrap_or(0))
                .collect();
            assert_eq!(cards.iter().filter(|c| **c == 6).count(), 1);
            break;
        }
        assert!(raw.len() <= 6, "the stream sink sent a row twice: {raw:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "raw {raw:?}; alerts {upserts:?}; view {expected:?}"
        );
    }
    // A view read by a sink is not dropped before it; DROP SINK stops it.
    let error = client
        .batch_execute("DROP MATERIALIZED VIEW per_card")
        .await
        .expect_err("view with a sink");
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("2BP01"));
    client
        .batch_execute("DROP SINK alerts_out, changes_out; DROP MATERIALIZED VIEW per_card")
        .await
        .expect("drop");
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM eddy_catalog.sinks").await,
        1
    );
    let error = client
        .batch_execute("DROP STREAM tx")
        .await
        .expect_err("stream with a sink");
    assert_eq!(error.as_db_error().map(|e| e.code().code()), Some("2BP01"));
}

/// A topic that holds fewer messages than the stream has read (deleted and created again, or
/// a rebuilt cluster, here an empty broker at the same address): the source fails and says so
/// instead of waiting forever with a lag of 0, and the stream keeps its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_fails_the_source_with_the_reason() {
    let mut broker = Broker::start();
    broker.create_topic("again", 1);
    let messages: Vec<(i32, Option<&str>, Option<&str>)> = ["{\"id\": 1}"; 5]
        .iter()
        .map(|v| (0, None, Some(*v)))
        .collect();
    broker.produce("again", &messages);
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute(&format!(
            "CREATE STREAM again (id BIGINT) WITH (connector = 'kafka', brokers = '{}', \
             topic = 'again')",
            broker.address
        ))
        .await
        .expect("stream");
    common::wait_for(&client, "SELECT count(*) FROM again", 5).await;
    // The server goes first, so that the broker's port has no connections left to linger
    // (tansu cannot listen again on a port with connections in TIME_WAIT).
    process.kill();
    broker.restart_empty();
    broker.create_topic("again", 1);
    broker.produce("again", &messages[..2]);
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.sources WHERE source = 'public.again' \
         AND status = 'failed'",
        1,
    )
    .await;
    let error: String = client
        .query_one(
            "SELECT error FROM eddy_catalog.sources WHERE source = 'public.again'",
            &[],
        )
        .await
        .expect("sources")
        .get(0);
    assert!(
        error.contains("ends at offset 2, before the stream's position 5"),
        "{error}"
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM again").await,
        5
    );
}

/// Avro values, written by an independent encoder (fastavro), in Confluent's wire format and
/// bare: the statement's schema decodes them into the stream's columns by field name (a
/// timestamp-micros field into TIMESTAMPTZ, a null union branch into NULL); a truncated
/// value, one without the wire format's magic byte and one written under another schema id
/// are dead letters saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_values_decode_with_the_statements_schema() {
    const SCHEMA: &str = r#"{"type": "record", "name": "payment", "fields": [
        {"name": "id", "type": "long"}, {"name": "card", "type": "int"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "note", "type": ["null", "string"], "default": null}]}"#;
    let broker = Broker::start();
    broker.create_topic("avro_framed", 1);
    broker.create_topic("avro_bare", 1);
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    let payment = |id: i64, note: Option<&str>| {
        serde_json::json!({"id": id, "card": id % 3, "amount": id as f64 * 1.5,
                           "ts": 1_767_225_600_000_000i64 + id * 1_000_000, "note": note})
    };
    broker.produce_avro(
        "avro_framed",
        SCHEMA,
        Some(7),
        &[
            payment(1, None),
            payment(2, Some("second")),
            serde_json::json!({"raw_hex": "000000000702"}),
            serde_json::json!({"raw_hex": "0102030405060708"}),
            payment(3, Some("third")),
            serde_json::json!({"raw_hex": "00000000090204"}),
        ],
    );
    broker.produce_avro(
        "avro_bare",
        SCHEMA,
        None,
        &[payment(10, None), payment(11, None)],
    );
    for (stream, topic, framing) in [
        ("framed", "avro_framed", "avro.schema_id = '7'"),
        ("bare", "avro_bare", "avro.framing = 'none'"),
    ] {
        client
            .batch_execute(&format!(
                "CREATE STREAM {stream} (id BIGINT, card BIGINT, amount DOUBLE PRECISION,
                                         ts TIMESTAMPTZ, note TEXT) INCLUDE offset AS off
                 WITH (connector = 'kafka', brokers = '{}', topic = '{topic}', format = 'avro',
                       avro.schema = '{SCHEMA}', {framing})",
                broker.address
            ))
            .await
            .expect("avro stream");
    }
    common::wait_for(&client, "SELECT count(*) FROM framed", 3).await;
    common::wait_for(&client, "SELECT count(*) FROM bare", 2).await;
    let rows: Vec<String> = client
        .query(
            "SELECT id, card, amount, extract(epoch FROM ts)::BIGINT = 1767225600 + id,
                    coalesce(note, '-'), off
             FROM framed ORDER BY id",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            let (id, card, amount, ts_ok, note, off): (i64, i64, f64, bool, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            format!("{id} {card} {amount} {ts_ok} {note} {off}")
        })
        .collect();
    assert_eq!(
        rows,
        [
            "1 1 1.5 true - 0",
            "2 2 3 true second 1",
            "3 0 4.5 true third 4"
        ]
    );
    assert_eq!(
        common::scalar(&client, "SELECT sum(id) FROM bare WHERE note IS NULL").await,
        21
    );
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.dead_letters WHERE source = 'public.framed'",
        3,
    )
    .await;
    let letters: Vec<(i64, String)> = client
        .query(
            "SELECT \"offset\", error FROM eddy_catalog.dead_letters
             WHERE source = 'public.framed' ORDER BY 1",
            &[],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        (2, "not a value of avro.schema"),
        (3, "not in Confluent's Avro wire format"),
        (5, "written with schema id 9; this stream reads schema id 7"),
    ];
    assert_eq!(letters.len(), expected.len(), "{letters:?}");
    for ((offset, error), (want_offset, want)) in letters.iter().zip(expected) {
        assert_eq!(*offset, want_offset, "{letters:?}");
        assert!(error.contains(want), "offset {offset}: {error}");
    }
    // A field that cannot fill its column is refused when the stream is created.
    let error = client
        .batch_execute(&format!(
            "CREATE STREAM wrong (id BOOLEAN) WITH (connector = 'kafka', brokers = '{}',
               topic = 'avro_bare', format = 'avro',
               avro.schema = '{{\"type\": \"record\", \"name\": \"r\", \"fields\": [
                 {{\"name\": \"id\", \"type\": {{\"type\": \"array\", \"items\": \"long\"}}}}]}}')",
            broker.address
        ))
        .await
        .expect_err("array into boolean");
    let db = error.as_db_error().expect("database error");
    assert_eq!(db.code().code(), "42804", "{}", db.message());
    assert!(
        db.message().contains("cannot fill column"),
        "{}",
        db.message()
    );
}

/// A topic that a transactional producer writes: the stream takes committed transactions and
/// plain records, never an aborted transaction's records, and nothing that comes after a
/// transaction still open until it ends (as a read-committed consumer), also across a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_reads_only_committed_transactions() {
    let broker = Broker::start();
    broker.create_topic("txn_in", 1);
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute(&format!(
            "CREATE STREAM txn_in (id BIGINT) INCLUDE offset AS off
             WITH (connector = 'kafka', brokers = '{}', topic = 'txn_in')",
            broker.address
        ))
        .await
        .expect("stream");
    let mut producer = broker.transactor("txn_in");
    for command in [
        "plain {\"id\": 1}",
        "begin",
        "send {\"id\": 2}",
        "plain {\"id\": 3}",
    ] {
        producer.run(command);
    }
    common::wait_for(&client, "SELECT count(*) FROM txn_in", 1).await;
    // Record 3 comes after the open transaction: it waits with it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        common::scalar(&client, "SELECT max(id) FROM txn_in").await,
        1
    );
    // Killed while the transaction is open: the restart reads the held part again.
    process.kill();
    process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.source_partitions",
        1,
    )
    .await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM txn_in").await,
        1
    );
    producer.run("commit");
    common::wait_for(&client, "SELECT count(*) FROM txn_in", 3).await;
    for command in ["begin", "send {\"id\": 4}", "abort", "plain {\"id\": 5}"] {
        producer.run(command);
    }
    common::wait_for(&client, "SELECT count(*) FROM txn_in WHERE id = 5", 1).await;
    // Killed and restarted: nothing read twice, the aborted record still left out.
    process.kill();
    process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    producer.run("plain {\"id\": 6}");
    common::wait_for(&client, "SELECT count(*) FROM txn_in WHERE id = 6", 1).await;
    let rows: Vec<(i64, i64)> = client
        .query("SELECT id, off FROM txn_in ORDER BY off", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3, 5, 6], "{rows:?}");
    assert_eq!(
        common::scalar(
            &client,
            "SELECT dead_letters::BIGINT FROM eddy_catalog.sources WHERE source = 'public.txn_in'"
        )
        .await,
        0
    );
}

/// Partitions that appear while a stream reads its topic (here the topic is deleted and made
/// again with three partitions instead of one) are found within the discovery interval and
/// read from their beginning; after a SIGKILL all three go on without reading anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_are_read() {
    let broker = Broker::start();
    broker.create_topic("grow", 1);
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute(&format!(
            "CREATE STREAM grow (id BIGINT) INCLUDE partition AS part
             WITH (connector = 'kafka', brokers = '{}', topic = 'grow', start = 'latest')",
            broker.address
        ))
        .await
        .expect("stream");
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.source_partitions",
        1,
    )
    .await;
    broker.delete_topic("grow");
    broker.create_topic("grow", 3);
    let message = |id: i64| ((id % 3) as i32, None, Some(format!("{{\"id\": {id}}}")));
    let first: Vec<(i32, Option<String>, Option<String>)> = (1..=6).map(message).collect();
    let refs: Vec<(i32, Option<&str>, Option<&str>)> = first
        .iter()
        .map(|(p, k, v)| (*p, k.as_deref(), v.as_deref()))
        .collect();
    broker.produce("grow", &refs);
    common::wait_for(&client, "SELECT count(*) FROM grow", 6).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(DISTINCT part) FROM grow").await,
        3
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.source_partitions"
        )
        .await,
        3
    );
    process.kill();
    process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    broker.produce(
        "grow",
        &[
            (2, None, Some("{\"id\": 7}")),
            (1, None, Some("{\"id\": 8}")),
        ],
    );
    common::wait_for(&client, "SELECT count(*) FROM grow", 8).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(DISTINCT id) FROM grow").await,
        8
    );
}

/// Sink options are checked at CREATE: a misspelt delivery guarantee or a transactional id
/// without exactly-once delivery is refused with 22023 and says what is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_delivery_options_are_checked_at_create() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute("CREATE STREAM tx (id BIGINT)")
        .await
        .expect("stream");
    for (options, expected) in [
        ("delivery = 'twice'", "at_least_once, exactly_once"),
        ("transactional_id = 'x'", "needs delivery = 'exactly_once'"),
    ] {
        let error = client
            .batch_execute(&format!(
                "CREATE SINK bad FROM tx WITH (connector = 'kafka', brokers = 'b:1', topic = 't', \
                 {options})"
            ))
            .await
            .expect_err(options);
        let db = error.as_db_error().expect("database error");
        assert_eq!(db.code().code(), "22023", "{options}");
        assert!(db.message().contains(expected), "{}", db.message());
    }
}

/// Exactly-once sinks: a stream's rows and a view's changes written in Kafka transactions
/// while the server is killed with SIGKILL under load. A read-committed consumer sees every
/// row once, and the view's change messages replay to its rows with no row ever inserted
/// twice (an at-least-once view sink would send its rows again after each restart). It runs
/// against the test broker (tansu with its transactions routed, see `.ci/install-tansu`), or
/// against another one, e.g. Apache Kafka, with `EDDY_TEST_KAFKA=host:port`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sinks_deliver_each_change_once_across_kills() {
    let broker = match std::env::var("EDDY_TEST_KAFKA") {
        Ok(address) => Broker::attach(&address),
        Err(_) => Broker::start(),
    };
    let address = broker.address.clone();
    let run = std::process::id();
    let (rows_topic, changes_topic) = (format!("eo_rows_{run}"), format!("eo_changes_{run}"));
    broker.create_topic(&rows_topic, 3);
    broker.create_topic(&changes_topic, 1);
    let data_dir = tempfile::tempdir().expect("data dir");
    let mut process = EddyProcess::start(data_dir.path(), &[]);
    process
        .connect()
        .await
        .batch_execute(&format!(
            "CREATE STREAM tx (id BIGINT, card BIGINT, amount BIGINT);
             CREATE MATERIALIZED VIEW per_card AS
               SELECT card, count(*) AS n, sum(amount) AS total FROM tx GROUP BY card;
             CREATE SINK rows_out FROM tx
               WITH (connector = 'kafka', brokers = '{address}', topic = '{rows_topic}',
                     key = 'id', delivery = 'exactly_once', transactional_id = 'eddydb-{run}-rows');
             CREATE SINK changes_out FROM per_card
               WITH (connector = 'kafka', brokers = '{address}', topic = '{changes_topic}',
                     delivery = 'exactly_once', transactional_id = 'eddydb-{run}-changes');"
        ))
        .await
        .expect("stream, view and sinks");
    let next_id = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    for (round, run_for) in [450u64, 900, 250, 650].into_iter().enumerate() {
        let client = process.connect().await;
        let inserter = {
            let next_id = std::sync::Arc::clone(&next_id);
            tokio::spawn(async move {
                loop {
                    let first = next_id.fetch_add(40, std::sync::atomic::Ordering::SeqCst);
                    let values: Vec<String> = (first..first + 40)
                        .map(|id| format!("({id}, {}, {})", id % 7, id % 10))
                        .collect();
                    let insert = format!("INSERT INTO tx VALUES {}", values.join(", "));
                    if client.batch_execute(&insert).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        process.kill();
        let _ = inserter.await;
        process = EddyProcess::start(data_dir.path(), &[]);
        eprintln!("round {round}: killed after {run_for} ms");
    }
    let client = process.connect().await;
    let stored: std::collections::BTreeSet<i64> = client
        .query("SELECT id FROM tx", &[])
        .await
        .expect("stream rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(stored.len() > 200, "the load wrote {} rows", stored.len());
    let view: std::collections::BTreeMap<String, String> = client
        .query("SELECT card, n, total FROM per_card", &[])
        .await
        .expect("view rows")
        .iter()
        .map(|r| {
            let (card, n, total): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
            (card.to_string(), format!("{n}/{total}"))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let rows = broker.consume_committed(&rows_topic, Duration::from_millis(1500));
        let mut ids = std::collections::BTreeSet::new();
        for row in values(&rows) {
            let id = row["id"].as_i64().expect("id");
            assert!(ids.insert(id), "row {id} was delivered twice");
        }
        // Replay the view's change messages; a row inserted twice is a duplicate delivery.
        let mut replayed: std::collections::BTreeMap<String, String> = Default::default();
        for row in values(&broker.consume_committed(&changes_topic, Duration::from_millis(1500))) {
            let card = row["card"].as_i64().expect("card").to_string();
            let state = format!("{}/{}", row["n"], row["total"]);
            match row["op"].as_str() {
                Some("insert") => {
                    let before = replayed.insert(card.clone(), state);
                    assert!(before.is_none(), "card {card} inserted twice: {row}");
                }
                Some("delete") => {
                    assert_eq!(replayed.remove(&card), Some(state), "delete of {row}");
                }
                other => panic!("op {other:?} in {row}"),
            }
        }
        if ids == stored && replayed == view {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topic has {} of {} rows; changes replay to {replayed:?}, view {view:?}",
            ids.len(),
            stored.len()
        );
    }
    // Read back by a Kafka source of this server: the aborted transactions the kills left in
    // the topic stay out, so the copy equals the stream.
    client
        .batch_execute(&format!(
            "CREATE STREAM echo (id BIGINT, card BIGINT, amount BIGINT)
             WITH (connector = 'kafka', brokers = '{address}', topic = '{rows_topic}')"
        ))
        .await
        .expect("echo stream");
    let stored_count = stored.len() as i64;
    common::wait_for(&client, "SELECT count(*) FROM echo", stored_count).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(DISTINCT id) FROM echo").await,
        stored_count
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM echo e JOIN tx t ON e.id = t.id
             WHERE e.card = t.card AND e.amount = t.amount"
        )
        .await,
        stored_count
    );
    let errors = client
        .query("SELECT sink, status, error FROM eddy_catalog.sinks", &[])
        .await
        .expect("sinks");
    for row in errors {
        let (sink, status, error): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (status.as_str(), error.as_deref()),
            ("running", None),
            "{sink}"
        );
    }
}
