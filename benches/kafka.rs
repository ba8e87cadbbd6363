//! The Kafka source benchmark: a topic of JSON bids (Nexmark's shape) read by a plain consumer
//! (rskafka fetching every partition, no decoding), by EddyDB into a stream, and by EddyDB into
//! a stream with a Nexmark-style aggregation view over it, all in the same run against the
//! same real broker (tansu, in-memory storage, started here).
//!
//! ```text
//! cargo bench --bench kafka        # EDDY_KAFKA_ROWS=300000 messages by default
//! ```
//!
//! Prints events/s for each reader and its ratio to the plain consumer. The broker, the
//! consumer and the server share the machine's cores.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rskafka::client::ClientBuilder;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record;

#[path = "../tests/common/kafka.rs"]
#[allow(dead_code, unreachable_pub)]
mod broker;
mod common;

use common::{Server, connect, scalar_i64};

const PARTITIONS: i32 = 4;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Wait until `sql` returns at least `want`; returns the seconds since `started`.
async fn seconds_until(
    client: &tokio_postgres::Client,
    sql: &str,
    want: i64,
    started: Instant,
) -> f64 {
    loop {
        if scalar_i64(client, sql).await >= want {
            return started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let rows = env_number("EDDY_KAFKA_ROWS", 300_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let broker = broker::Broker::start();
    broker.create_topic("bids", PARTITIONS as u32);
    let address = broker.address.clone();
    let data_dir = tempfile::tempdir().expect("data dir");
    let server = Server::start(data_dir.path(), &runtime, |_| {});
    let conn = server.conn_str();
    runtime.block_on(async {
        let client = ClientBuilder::new(vec![address.clone()])
            .build()
            .await
            .expect("kafka client");
        // Produce: batches of 1,000 per partition, round-robin.
        let started = Instant::now();
        let mut partitions = Vec::new();
        for p in 0..PARTITIONS {
            partitions.push(
                client
                    .partition_client("bids", p, UnknownTopicHandling::Retry)
                    .await
                    .expect("partition"),
            );
        }
        let base = chrono::Utc::now();
        let mut id = 0u64;
        while id < rows {
            for partition in &partitions {
                let batch: Vec<Record> = (id..(id + 1000).min(rows))
                    .map(|i| Record {
                        key: None,
                        value: Some(
                            format!(
                                "{{\"auction\": {}, \"bidder\": {}, \"price\": {}, \"channel\": \"web\", \"date_time\": \"{}\"}}",
                                1000 + i % 997,
                                i % 10_007,
                                100 + i % 5000,
                                (base + chrono::Duration::milliseconds(i as i64)).to_rfc3339()
                            )
                            .into_bytes(),
                        ),
                        headers: BTreeMap::new(),
                        timestamp: base,
                    })
                    .collect();
                id += batch.len() as u64;
                if !batch.is_empty() {
                    partition
                        .produce(batch, Compression::NoCompression)
                        .await
                        .expect("produce");
                }
            }
        }
        println!(
            "produced {rows} messages into {PARTITIONS} partitions in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // The plain consumer: fetch every partition to its end.
        let started = Instant::now();
        let mut consumed = 0u64;
        for partition in &partitions {
            let mut offset = 0;
            loop {
                let (records, high) = partition
                    .fetch_records(offset, 1..4 << 20, 100)
                    .await
                    .expect("fetch");
                consumed += records.len() as u64;
                if let Some(last) = records.last() {
                    offset = last.offset + 1;
                }
                if offset >= high || records.is_empty() {
                    break;
                }
            }
        }
        let plain = started.elapsed().as_secs_f64();
        assert_eq!(consumed, rows, "the plain consumer read every message");

        let client = connect(&conn).await;
        let columns = "auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMPTZ";
        let with = format!("WITH (connector = 'kafka', brokers = '{address}', topic = 'bids')");

        let started = Instant::now();
        client
            .batch_execute(&format!("CREATE STREAM into_stream ({columns}) {with}"))
            .await
            .expect("stream");
        let stream = seconds_until(&client, "SELECT count(*) FROM into_stream", rows as i64, started).await;

        let started = Instant::now();
        client
            .batch_execute(&format!(
                "CREATE STREAM into_view ({columns}) {with};
                 CREATE MATERIALIZED VIEW per_auction AS
                   SELECT auction, count(*) AS bids, max(price) AS top FROM into_view GROUP BY auction"
            ))
            .await
            .expect("stream and view");
        let view = seconds_until(
            &client,
            "SELECT coalesce(sum(bids), 0)::BIGINT FROM per_auction",
            rows as i64,
            started,
        )
        .await;

        println!("{:<44} {:>12} {:>10} {:>8}", "reader", "events/s", "ms", "ratio");
        for (name, seconds) in [
            ("plain consumer (rskafka, fetch only)", plain),
            ("EddyDB: into a stream (durable)", stream),
            ("EddyDB: stream + per-auction view", view),
        ] {
            println!(
                "{name:<44} {:>12.0} {:>10.0} {:>8.2}",
                rows as f64 / seconds,
                seconds * 1000.0,
                plain / seconds
            );
        }
        drop(client);
    });
    server.stop(&runtime);
}
