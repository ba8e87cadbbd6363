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

use common::process::EddyProcess;

/// Events of all types per stream definition (debug builds generate a few thousand per second).
const EVENTS: u64 = 60_000;

/// The repository's `sql/nexmark` directory.
fn nexmark_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/nexmark")
}

/// Events per second of event time, released in real time: the generator takes
/// `EVENTS / RATE` seconds, long enough to crash it midway.
const RATE: u64 = 4_000;

/// The stream definitions with this test's event count, paced in real time from now.
fn streams_sql() -> String {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.3f+00");
    std::fs::read_to_string(nexmark_dir().join("streams.sql"))
        .expect("sql/nexmark/streams.sql")
        .replace("events = 1000000", &format!("events = {EVENTS}"))
        .replace("paced = false", &format!("rate = {RATE}"))
        .replace("2026-01-01 00:00:00+00", &now.to_string())
}

/// (view name, CREATE statement, the SELECT it maintains) for every query file.
fn queries() -> Vec<(String, String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(nexmark_dir())
        .expect("sql/nexmark")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('q') && n.ends_with(".sql"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("query file");
            let create: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            let create = create.trim().trim_end_matches(';').to_string();
            let name = create
                .split_whitespace()
                .nth(3)
                .expect("CREATE MATERIALIZED VIEW name")
                .to_string();
            let select = create
                .split_once(" AS\n")
                .expect("CREATE MATERIALIZED VIEW name AS\\nSELECT ...")
                .1
                .to_string();
            (name, create, select)
        })
        .collect()
}

async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Wait until every source has generated all its events.
async fn wait_generated(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let unfinished = scalar(
            client,
            "SELECT count(*) FROM eddy_catalog.sources WHERE status <> 'finished'",
        )
        .await;
        let failed = client
            .query(
                "SELECT source, error FROM eddy_catalog.sources WHERE status = 'failed'",
                &[],
            )
            .await
            .expect("sources");
        assert!(
            failed.is_empty(),
            "a source failed: {:?}",
            failed[0].get::<_, Option<String>>(1)
        );
        if unfinished == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the generator did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every view equals its batch query (retrying while the view catches up).
async fn check_views(client: &tokio_postgres::Client, queries: &[(String, String, String)]) {
    for (name, _, select) in queries {
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
    let names: Vec<&str> = queries.iter().map(|(n, _, _)| n.as_str()).collect();
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
        client.batch_execute(&streams_sql()).await.expect("streams");
        // The views start while the generator writes: part backfill, part live.
        for (_, create, _) in &queries {
            client.batch_execute(create).await.expect(create);
        }
        let position = scalar(
            &client,
            "SELECT min(position)::BIGINT FROM eddy_catalog.sources",
        )
        .await;
        assert!(
            (position as u64) < EVENTS,
            "the generator finished before the crash ({position} events); the test needs it midway"
        );
        process.kill();
    }
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    wait_generated(&client).await;
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
