//! Checkpoints and recovery of materialized views, with the real binary and SIGKILL.
//!
//! A kill loop: writers insert events and change a table while views of every stateful kind
//! run (aggregates with and without retractable accumulators, a window closed on the watermark,
//! hopping windows, top-N, LAG, an interval join, a join with the table, a view over a view)
//! and checkpoint every 200 ms; the server is SIGKILLed at a random moment, restarted, and so
//! on (`EDDY_CHECKPOINT_KILLS`, 20 by default). Kills land during inserts, table changes,
//! snapshots, checkpoint writes, flushes to Parquet and compactions (rows move there within a
//! second and small files are merged as soon as there are two, so restores replay records
//! from the log that are already flushed), and once during the backfill of a view created
//! mid-loop. After each restart the views resume from their newest checkpoint (counted: most
//! restarts must use one), and at the end every view must equal its own query run as a batch
//! over the stored events and table, the same result a run without crashes gives. Then the
//! newest checkpoint of a view is corrupted: the server says so in its log, uses the one
//! before, and the view is still exact.
//!
//! `CHECKPOINT` is tested on its own: it checkpoints every view at once, and a server killed
//! after further events and table changes resumes each view from exactly that checkpoint.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::process::EddyProcess;
use common::scalar;

const SCHEMA: &str = "
CREATE STREAM ev (k BIGINT, v BIGINT, ts TIMESTAMPTZ, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE TABLE dim (k BIGINT PRIMARY KEY, label TEXT, weight BIGINT);
INSERT INTO dim VALUES (0, 'a', 1), (1, 'b', 2), (2, 'a', 3), (3, 'c', 1), (4, 'b', 5), (5, 'a', 2), (6, 'c', 4);";

/// The view created in the middle of the kill loop, and killed during its backfill.
const CREATED_MID_LOOP: &str = "late_view";

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
    (
        "by_label",
        "SELECT d.label, count(*) AS n, sum(e.v * d.weight) AS score \
         FROM ev e JOIN dim d ON e.k = d.k GROUP BY d.label",
        "",
    ),
    (
        "key_summary",
        "SELECT count(*) AS keys, sum(n) AS events, max(high) AS top FROM per_key",
        "",
    ),
    (
        CREATED_MID_LOOP,
        "SELECT k % 3 AS g, count(*) AS n, sum(v) AS total FROM ev GROUP BY k % 3",
        "",
    ),
];

type ViewCase = (&'static str, &'static str, &'static str);

async fn create_view(client: &tokio_postgres::Client, (name, query, _): &ViewCase) {
    let emit = if *name == "closed_windows" {
        " EMIT ON WINDOW CLOSE"
    } else {
        ""
    };
    client
        .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}{emit}"))
        .await
        .expect(name);
}

/// The table change a writer makes after its `n`th batch: mostly upserts, sometimes a delete.
fn table_change(n: i64) -> String {
    let k = (n * 3) % 7;
    if n % 5 == 0 {
        format!("DELETE FROM dim WHERE k = {k}")
    } else {
        format!(
            "INSERT INTO dim VALUES ({k}, '{}', {}) ON CONFLICT (k) DO UPDATE \
             SET label = excluded.label, weight = excluded.weight",
            ["a", "b", "c", "d"][(n % 4) as usize],
            n % 9
        )
    }
}

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

async fn view_exists(client: &tokio_postgres::Client, name: &str) -> bool {
    let sql = format!("SELECT count(*) FROM eddy_catalog.materialized_views WHERE name = '{name}'");
    scalar(client, &sql).await == 1
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
async fn check_views(client: &tokio_postgres::Client, views: &[ViewCase], when: &str) {
    for (name, query, filter) in views {
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
            // Rows move to Parquet within a second: restores replay the log past the flush;
            // files are compacted as soon as there are two, so kills land in compactions too.
            ("EDDY_STORAGE__FLUSH_AGE_MS", "500"),
            ("EDDY_STORAGE__MAINTENANCE_INTERVAL_MS", "100"),
            ("EDDY_STORAGE__COMPACT_MIN_FILES", "2"),
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
            for view in VIEWS.iter().filter(|v| v.0 != CREATED_MID_LOOP) {
                create_view(&client, view).await;
            }
        }
        let mid_loop_view = VIEWS.iter().find(|v| v.0 == CREATED_MID_LOOP);
        let mid_loop_view = mid_loop_view.expect("the mid-loop view");
        let mid_loop_view_exists = view_exists(&client, CREATED_MID_LOOP).await;
        if round > kills / 2 && !mid_loop_view_exists {
            // The kill came before the CREATE was stored: it never happened; do it again.
            create_view(&client, mid_loop_view).await;
        }
        wait_running(&client).await;
        if round > 0 {
            let rebuilt = scalar(
                &client,
                "SELECT count(*) FROM eddy_catalog.materialized_views WHERE restored_from IS NULL",
            )
            .await;
            if rebuilt == 0 {
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
                    if (from / 20) % 4 == 0
                        && client
                            .batch_execute(&table_change(from / 80))
                            .await
                            .is_err()
                    {
                        return;
                    }
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
        if round == kills / 2 && !mid_loop_view_exists {
            // A view over everything stored so far, killed during its backfill.
            let client = process.connect().await;
            let creating = tokio::spawn(async move {
                let (name, query, _) = mid_loop_view;
                let _ = client
                    .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
                    .await;
            });
            tokio::time::sleep(Duration::from_millis(random(150))).await;
            process.kill();
            let _ = creating.await;
        } else {
            tokio::time::sleep(Duration::from_millis(300 + random(1200))).await;
            process.kill();
        }
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
    if !view_exists(&client, CREATED_MID_LOOP).await {
        let view = VIEWS.iter().find(|v| v.0 == CREATED_MID_LOOP);
        create_view(&client, view.expect("the mid-loop view")).await;
    }
    wait_running(&client).await;
    check_views(&client, VIEWS, "after the kill loop").await;

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
    check_views(&client, VIEWS, "after a corrupt checkpoint").await;
}

/// The views a `CHECKPOINT` test runs: one per kind of input (a stream, a stream joined with
/// a table, another view).
fn checkpoint_statement_views() -> Vec<ViewCase> {
    VIEWS
        .iter()
        .filter(|v| ["per_key", "by_label", "key_summary"].contains(&v.0))
        .copied()
        .collect()
}

/// Each view's newest checkpoint (or the one it was restored from), as text.
async fn checkpoints_of(client: &tokio_postgres::Client, column: &str) -> Vec<(String, String)> {
    client
        .query(
            &format!(
                "SELECT name, {column}::text FROM eddy_catalog.materialized_views ORDER BY name"
            ),
            &[],
        )
        .await
        .expect("checkpoints")
        .iter()
        .map(|r| {
            let at: Option<String> = r.get(1);
            (r.get(0), at.unwrap_or_else(|| "none".to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_statement_checkpoints_every_view_and_restarts_resume_from_it() {
    let data_dir = tempfile::tempdir().expect("data dir");
    // No checkpoint is taken unless asked for.
    let start = || {
        EddyProcess::start(
            data_dir.path(),
            &[("EDDY_STREAMING__CHECKPOINT_INTERVAL_MS", "3600000")],
        )
    };
    let views = checkpoint_statement_views();
    let process = start();
    let client = process.connect().await;
    client.batch_execute(SCHEMA).await.expect("schema");
    for view in &views {
        create_view(&client, view).await;
    }
    let insert = |range: std::ops::Range<i64>| {
        let values: Vec<String> = range.map(event).collect();
        format!("INSERT INTO ev VALUES {}", values.join(", "))
    };
    client.batch_execute(&insert(0..400)).await.expect("insert");
    check_views(&client, &views, "before CHECKPOINT").await;
    assert!(
        checkpoints_of(&client, "last_checkpoint")
            .await
            .iter()
            .all(|(_, at)| at == "none"),
        "a checkpoint was taken before CHECKPOINT"
    );
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("CHECKPOINT");
    let taken = checkpoints_of(&client, "last_checkpoint").await;
    assert_eq!(taken.len(), views.len());
    assert!(
        taken.iter().all(|(_, at)| at != "none"),
        "CHECKPOINT returned before every view had one: {taken:?}"
    );
    // Prometheus sees the same checkpoints.
    let metrics = common::http::metrics(process.http).await;
    for (name, _, _) in &views {
        let labels = format!("{{view=\"public.{name}\"}}");
        let bytes = common::http::sample(&metrics, &format!("eddy_view_checkpoint_bytes{labels}"));
        assert!(bytes.is_some_and(|b| b > 0.0), "{name}: {metrics}");
        let age = common::http::sample(
            &metrics,
            &format!("eddy_view_checkpoint_age_seconds{labels}"),
        );
        assert!(
            age.is_some_and(|a| (0.0..60.0).contains(&a)),
            "{name}: {metrics}"
        );
    }
    // After the checkpoint: more events, a changed and a deleted table row.
    client
        .batch_execute(&insert(400..700))
        .await
        .expect("insert");
    client
        .batch_execute(
            "UPDATE dim SET weight = weight + 10 WHERE k = 2; DELETE FROM dim WHERE k = 3; \
             INSERT INTO dim VALUES (3, 'd', 7) ON CONFLICT (k) DO NOTHING; DELETE FROM dim WHERE k = 5",
        )
        .await
        .expect("table changes");
    check_views(&client, &views, "after the checkpoint").await;
    process.kill();

    let process = start();
    let client = process.connect().await;
    wait_running(&client).await;
    assert_eq!(
        checkpoints_of(&client, "restored_from").await,
        taken,
        "every view resumes from the checkpoint CHECKPOINT took"
    );
    let metrics = common::http::metrics(process.http).await;
    for (name, _, _) in &views {
        let labels = format!("{{view=\"public.{name}\"}}");
        let recovery =
            common::http::sample(&metrics, &format!("eddy_view_recovery_seconds{labels}"));
        assert!(recovery.is_some_and(|r| r >= 0.0), "{name}: {metrics}");
        // The restored checkpoint is the view's newest, with its size.
        let bytes = common::http::sample(&metrics, &format!("eddy_view_checkpoint_bytes{labels}"));
        assert!(bytes.is_some_and(|b| b > 0.0), "{name}: {metrics}");
    }
    check_views(&client, &views, "after the restart").await;
    process.kill();

    // With checkpoints off, CHECKPOINT says so.
    let process = EddyProcess::start(
        data_dir.path(),
        &[("EDDY_STREAMING__CHECKPOINT_INTERVAL_MS", "0")],
    );
    let client = process.connect().await;
    let error = client
        .batch_execute("CHECKPOINT")
        .await
        .expect_err("CHECKPOINT with checkpoints off");
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
        "{error:?}"
    );
}
