//! Nexmark over the wire: the built-in generator feeds `person`, `auction` and `bid`
//! (`sql/nexmark/streams.sql`), the queries q0-q8 in `sql/nexmark/` run as materialized views,
//! and every view must end equal to its own query run as a batch over the stored events
//! (`EXCEPT ALL` both ways is empty).
//!
//! The server process is SIGKILLed while the generator is still writing and the views are
//! running: after the restart the generator resumes where its log ends (every person and
//! auction id exactly once, the event counts exact), and the views, rebuilt from the stored
//! history, still equal the oracle.

mod common;

use std::time::{Duration, Instant};

use common::nexmark::{Query, queries, streams_sql};
use common::process::EddyProcess;
use common::{scalar, wait_sources_finished};

/// Events of all types per stream definition (debug builds generate a few thousand per second).
const EVENTS: u64 = 60_000;

/// Events per second of event time, released in real time: the generator takes
/// `EVENTS / RATE` seconds, long enough to crash it midway.
const RATE: u64 = 4_000;

/// Every view equals its batch query (retrying while the view catches up).
async fn check_views(client: &tokio_postgres::Client, queries: &[Query]) {
    for Query { name, select, .. } in queries {
        let total = scalar(client, &format!("SELECT count(*) FROM ({select}) q")).await;
        assert!(
            total > 0,
            "{name}: the batch query returns no rows; the test would prove nothing"
        );
        let diff = format!(
            "SELECT count(*) FROM ((SELECT * FROM {name} EXCEPT ALL ({select})) \
             UNION ALL (({select}) EXCEPT ALL SELECT * FROM {name})) d"
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let differing = scalar(client, &diff).await;
            if differing == 0 {
                println!("{name}: {total} rows, equal to the batch query");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {differing} rows differ from the batch query ({total} rows)"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_equal_the_batch_oracle_across_a_crash() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let queries = queries();
    let names: Vec<&str> = queries.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "nexmark_q0",
            "nexmark_q1",
            "nexmark_q2",
            "nexmark_q3",
            "nexmark_q4",
            "nexmark_q5",
            "nexmark_q7",
            "nexmark_q8"
        ]
    );
    {
        let process = EddyProcess::start(data_dir.path(), &[]);
        let client = process.connect().await;
        client
            .batch_execute(&streams_sql(EVENTS, Some(RATE)))
            .await
            .expect("streams");
        // The views start while the generator writes: part backfill, part live.
        for query in &queries {
            client
                .batch_execute(&query.create)
                .await
                .expect(&query.create);
        }
        // Crash once every generator is a quarter of the way through.
        let deadline = Instant::now() + Duration::from_secs(120);
        let position = loop {
            let position = scalar(
                &client,
                "SELECT min(position)::BIGINT FROM eddy_catalog.sources",
            )
            .await;
            if position as u64 >= EVENTS / 4 || Instant::now() > deadline {
                break position;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            position as u64 >= EVENTS / 4 && (position as u64) < EVENTS,
            "the generator is at {position} of {EVENTS} events at the crash; the test needs it midway"
        );
        process.kill();
    }
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    wait_sources_finished(&client).await;
    // Exactly the generated events, each once.
    let expected = [
        ("person", EVENTS / 50),
        ("auction", EVENTS / 50 * 3),
        ("bid", EVENTS / 50 * 46),
    ];
    for (stream, rows) in expected {
        assert_eq!(
            scalar(&client, &format!("SELECT count(*) FROM {stream}")).await,
            rows as i64,
            "{stream} rows after the crash"
        );
        assert_eq!(
            scalar(
                &client,
                &format!(
                    "SELECT rows::BIGINT FROM eddy_catalog.sources WHERE source = 'public.{stream}'"
                )
            )
            .await,
            rows as i64
        );
    }
    for stream in ["person", "auction"] {
        assert_eq!(
            scalar(&client, &format!("SELECT count(DISTINCT id) FROM {stream}")).await,
            scalar(&client, &format!("SELECT count(*) FROM {stream}")).await,
            "{stream} ids are unique"
        );
    }
    // The generator's streams take no other writes.
    let refused = client
        .batch_execute("INSERT INTO bid (auction) VALUES (1)")
        .await
        .expect_err("insert into a generated stream");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );
    check_views(&client, &queries).await;
}
