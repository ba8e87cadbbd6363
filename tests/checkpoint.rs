//! Checkpoints and recovery of materialized views, with the real binary and SIGKILL.
//!
//! A kill loop: writers insert events while views of every stateful kind run (aggregates with
//! and without retractable accumulators, a window closed on the watermark, hopping windows,
//! top-N, LAG, an interval join) and checkpoint every 200 ms; the server is SIGKILLed at a
//! random moment, restarted, and so on (`EDDY_CHECKPOINT_KILLS`, 20 by default). Kills land
//! during inserts, snapshots, checkpoint writes and flushes to Parquet (rows move there within
//! a second, so restores replay records from the log that are already flushed). After each
//! restart the views resume from
//! their newest checkpoint (counted: most restarts must use one), and at the end every view
//! must equal its own query run as a batch over the stored events, the same result a run
//! without crashes gives. Then the newest checkpoint of a view is corrupted: the server says
//! so in its log, uses the one before, and the view is still exact.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::process::EddyProcess;
use common::scalar;

const SCHEMA: &str = "
CREATE STREAM ev (k BIGINT, v BIGINT, ts TIMESTAMPTZ, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);";

/// (view, query, filter applied to both sides: the rows a view can hold by now);
/// `closed_windows` is created with EMIT ON WINDOW CLOSE.
const VIEWS: &[(&str, &str, &str)] = &[
    (
        "per_key",
        "SELECT k, count(*) AS n, sum(v) AS total, min(v) AS low, max(v) AS high, \
         count(DISTINCT v % 10) AS digits FROM ev GROUP BY k",
        "",
    ),
    (
        "closed_windows",
        "SELECT window_start, k, count(*) AS n, sum(v) AS total \
         FROM TUMBLE(ev, ts, INTERVAL '2' SECOND) GROUP BY window_start, k",
        "window_start + INTERVAL '2' SECOND <= (SELECT max(ts) FROM ev) - INTERVAL '1' SECOND",
    ),
    (
        "hops",
        "SELECT window_start, count(*) AS n, max(v) AS top \
         FROM HOP(ev, ts, INTERVAL '1' SECOND, INTERVAL '3' SECOND) GROUP BY window_start",
        "",
    ),
    (
        "top_two",
        "SELECT k, v, ts FROM (SELECT k, v, ts, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC, ts) AS rn \
         FROM ev) WHERE rn <= 2",
        "",
    ),
    (
        "steps",
        "SELECT k, ts, v - LAG(v, 1, 0) OVER (PARTITION BY k ORDER BY ts) AS step FROM ev",
        "ts < (SELECT max(ts) FROM ev) - INTERVAL '1' SECOND",
    ),
    (
        "close_pairs",
        "SELECT a.k, a.v, b.v AS w FROM ev a JOIN ev b ON a.k = b.k \
         AND a.ts BETWEEN b.ts - INTERVAL '300' MILLISECOND AND b.ts AND a.v < b.v",
        "",
    ),
];

/// Event `i`: keys and values spread, 10 ms apart in event time.
fn event(i: i64) -> String {
    let base = 1_767_225_600_000i64; // 2026-01-01 00:00:00 UTC, in ms
    let ms = base + i * 10;
    format!(
        "({}, {}, to_timestamp({}.{:03}))",
        i % 7,
        (i * 37) % 1000,
        ms / 1000,
        ms % 1000
    )
}

/// Wait until every view has caught up with the stored history.
async fn wait_running(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = scalar(
            client,
            "SELECT count(*) FROM eddy_catalog.materialized_views WHERE status <> 'running'",
        )
        .await;
        if waiting == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "views did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every view equals its batch query (retrying while the view catches up).
async fn check_views(client: &tokio_postgres::Client, when: &str) {
    for (name, query, filter) in VIEWS {
        let filter = if filter.is_empty() {
            String::new()
        } else {
            format!(" WHERE {filter}")
        };
        let total = scalar(client, &format!("SELECT count(*) FROM ({query}) q{filter}")).await;
        assert!(
            total > 0,
            "{name}: the batch query has no rows; the check would prove nothing"
        );
        let diff = format!(
            "SELECT count(*) FROM ((SELECT * FROM {name}{filter} EXCEPT ALL SELECT * FROM ({query}) q{filter}) \
             UNION ALL (SELECT * FROM ({query}) q{filter} EXCEPT ALL SELECT * FROM {name}{filter})) d"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let differing = scalar(client, &diff).await;
            if differing == 0 {
                break;
            }
            if Instant::now() > deadline {
                let only_view = client
                    .simple_query(&format!(
                        "SELECT * FROM {name}{filter} EXCEPT ALL SELECT * FROM ({query}) q{filter}"
                    ))
                    .await
                    .expect("difference");
                let only_batch = client
                    .simple_query(&format!(
                        "SELECT * FROM ({query}) q{filter} EXCEPT ALL SELECT * FROM {name}{filter}"
                    ))
                    .await
                    .expect("difference");
                let show = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
                    messages
                        .into_iter()
                        .filter_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                                (0..r.len())
                                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            ),
                            _ => None,
                        })
                        .collect()
                };
                panic!(
                    "{name} ({when}): {differing} rows differ from the batch query ({total} rows); \
                     only in the view: {:?}; only in the batch: {:?}",
                    show(only_view),
                    show(only_batch)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn start(data_dir: &Path) -> EddyProcess {
    EddyProcess::start(
        data_dir,
        &[
            ("EDDY_STREAMING__CHECKPOINT_INTERVAL_MS", "200"),
            // Rows move to Parquet within a second: restores replay the log past the flush.
            ("EDDY_STORAGE__FLUSH_AGE_MS", "500"),
            ("EDDY_STORAGE__MAINTENANCE_INTERVAL_MS", "100"),
        ],
    )
}

/// The newest `.state` file of a view's checkpoints.
fn newest_state(data_dir: &Path, view_id: i64) -> Option<std::path::PathBuf> {
    let dir = data_dir.join(format!("cold/checkpoints/views/{view_id}"));
    let mut states: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "state"))
        .filter(|p| p.with_extension("done").exists())
        .collect();
    states.sort();
    states.pop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_recover_exactly_from_checkpoints_across_sigkills() {
    let kills: usize = std::env::var("EDDY_CHECKPOINT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let data_dir = tempfile::tempdir().expect("data dir");
    // The next event number, and how many events were acknowledged.
    let next = Arc::new(AtomicI64::new(0));
    let acked = Arc::new(AtomicI64::new(0));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut restored_rounds = 0;
    for round in 0..=kills {
        let process = start(data_dir.path());
        let client = process.connect().await;
        if round == 0 {
            client.batch_execute(SCHEMA).await.expect("schema");
            for (name, query, _) in VIEWS {
                client
                    .batch_execute(&format!(
                        "CREATE MATERIALIZED VIEW {name} AS {query}{}",
                        if *name == "closed_windows" {
                            " EMIT ON WINDOW CLOSE"
                        } else {
                            ""
                        }
                    ))
                    .await
                    .expect(name);
            }
        }
        wait_running(&client).await;
        if round > 0 {
            let restored = scalar(
                &client,
                "SELECT count(*) FROM eddy_catalog.materialized_views WHERE restored_from IS NOT NULL",
            )
            .await;
            if restored == VIEWS.len() as i64 {
                restored_rounds += 1;
            }
        }
        // The whole stored history is there: every acknowledged event, each once.
        let stored = scalar(&client, "SELECT count(*) FROM ev").await;
        let distinct = scalar(&client, "SELECT count(DISTINCT ts) FROM ev").await;
        assert!(
            stored >= acked.load(Ordering::SeqCst),
            "round {round}: {stored} events stored, {} acknowledged",
            acked.load(Ordering::SeqCst)
        );
        assert_eq!(stored, distinct, "round {round}: an event was stored twice");
        // Writers insert 20-event batches until the kill.
        let writer = {
            let client = process.connect().await;
            let next = Arc::clone(&next);
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    let from = next.load(Ordering::SeqCst);
                    let values: Vec<String> = (from..from + 20).map(event).collect();
                    let sql = format!("INSERT INTO ev VALUES {}", values.join(", "));
                    if client.batch_execute(&sql).await.is_err() {
                        return;
                    }
                    next.store(from + 20, Ordering::SeqCst);
                    acked.fetch_add(20, Ordering::SeqCst);
                    // A steady load, not a flood: the check at the end runs in a debug build.
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        };
        if round == kills {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            writer.abort();
            let _ = writer.await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300 + random(1200))).await;
        process.kill();
        let _ = writer.await;
        // A batch cut off by the kill may or may not be stored: start after it either way.
        next.fetch_add(20, Ordering::SeqCst);
        println!(
            "round {round}: killed; {} events acknowledged",
            acked.load(Ordering::SeqCst)
        );
    }
    println!("{restored_rounds} of {kills} restarts resumed every view from a checkpoint");
    assert!(
        restored_rounds * 4 >= kills * 3,
        "only {restored_rounds} of {kills} restarts resumed every view from a checkpoint"
    );
    let process = start(data_dir.path());
    let client = process.connect().await;
    wait_running(&client).await;
    check_views(&client, "after the kill loop").await;

    // A damaged newest checkpoint: detected, logged, the one before it used.
    drop(client);
    process.kill();
    // The first view created (per_key) has the lowest id.
    let per_key = std::fs::read_dir(data_dir.path().join("cold/checkpoints/views"))
        .expect("checkpoints")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .min()
        .expect("a view with checkpoints");
    let newest = newest_state(data_dir.path(), per_key).expect("a checkpoint");
    let mut bytes = std::fs::read(&newest).expect("read checkpoint");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).expect("corrupt checkpoint");
    let process = start(data_dir.path());
    let client = process.connect().await;
    wait_running(&client).await;
    let logged = process.logged("checkpoint unusable");
    assert!(
        !logged.is_empty(),
        "the corrupt checkpoint {} was not reported",
        newest.display()
    );
    check_views(&client, "after a corrupt checkpoint").await;
}
