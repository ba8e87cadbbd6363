//! Kafka in and out against a real broker (tansu) and an independent client (kafka-python):
//! a topic read into a stream and its views exactly once while the server is killed with
//! SIGKILL mid-stream, undecodable records kept once as dead letters, and the consumer lag.

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

async fn wait_for(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = common::scalar(client, sql).await;
        if got == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    wait_for(&client, "SELECT count(*) FROM payments", total).await;
    assert_eq!(
        common::scalar(&client, "SELECT count(DISTINCT id) FROM payments").await,
        total,
        "a message was read twice"
    );
    wait_for(&client, "SELECT n FROM totals", total).await;
    assert_eq!(
        common::scalar(&client, "SELECT ids FROM totals").await,
        total
    );
    assert_eq!(
        common::scalar(&client, "SELECT id_sum FROM totals").await,
        total * (total - 1) / 2
    );
    wait_for(&client, "SELECT sum(n)::BIGINT FROM per_card", total).await;
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
    wait_for(
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
    // Caught up: no lag in any partition.
    wait_for(
        &client,
        "SELECT coalesce(sum(lag), 0)::BIGINT + count(*) FROM eddy_catalog.source_partitions",
        3,
    )
    .await;
}
