//! Crash tests: the real `eddydb` binary is killed with SIGKILL while writers insert, COPY,
//! post over HTTP and upsert; after every restart each acknowledged row must be there exactly
//! once with its content intact, nothing unacknowledged may appear twice, and the server must
//! take writes again. Flushing to Parquet and compaction run continuously (small thresholds),
//! so crashes also land in the middle of them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::EddyProcess;
use futures::SinkExt;

/// What the writers know: rows acknowledged, and rows sent whose answer never came.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<(i64, i64)>,
    in_doubt: BTreeSet<(i64, i64)>,
    /// Table key -> (acknowledged value, values in doubt).
    table: BTreeMap<i64, (Option<i64>, BTreeSet<i64>)>,
}

const SCHEMA: &str = "
CREATE STREAM IF NOT EXISTS events (writer BIGINT, seq BIGINT, payload TEXT, ts TIMESTAMPTZ,
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND);
CREATE TABLE IF NOT EXISTS kv (k BIGINT PRIMARY KEY, v BIGINT);";

fn payload(writer: i64, seq: i64) -> String {
    format!("p-{writer}-{seq}-{}", "x".repeat((seq % 17) as usize))
}

/// INSERT one or several rows per statement.
async fn insert_writer(process: &EddyProcess, writer: i64, start: i64, ledger: Arc<Mutex<Ledger>>) {
    let Ok(client) = process.try_connect().await else {
        return;
    };
    let mut seq = start;
    loop {
        let rows = 1 + (seq % 3);
        let keys: Vec<(i64, i64)> = (seq..seq + rows).map(|s| (writer, s)).collect();
        let values: Vec<String> = keys
            .iter()
            .map(|(w, s)| format!("({w}, {s}, '{}', now())", payload(*w, *s)))
            .collect();
        ledger.lock().unwrap().in_doubt.extend(keys.iter().copied());
        let result = client
            .batch_execute(&format!("INSERT INTO events VALUES {}", values.join(", ")))
            .await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(()) => {
                for key in &keys {
                    ledger.in_doubt.remove(key);
                    ledger.acked.insert(*key);
                }
            }
            Err(e) if e.as_db_error().is_some() => panic!("insert refused: {e}"),
            Err(_) => return, // the server is gone; the rows stay in doubt
        }
        seq += rows;
    }
}

/// COPY batches of rows in CSV through the extended protocol (tokio-postgres' copy_in).
async fn copy_writer(process: &EddyProcess, writer: i64, start: i64, ledger: Arc<Mutex<Ledger>>) {
    let Ok(client) = process.try_connect().await else {
        return;
    };
    let mut seq = start;
    loop {
        let keys: Vec<(i64, i64)> = (seq..seq + 50).map(|s| (writer, s)).collect();
        let mut data = String::new();
        for (w, s) in &keys {
            data.push_str(&format!(
                "{w},{s},{},2026-01-01 00:00:00+00\n",
                payload(*w, *s)
            ));
        }
        ledger.lock().unwrap().in_doubt.extend(keys.iter().copied());
        let result = async {
            let sink = client
                .copy_in("COPY events FROM STDIN WITH (FORMAT csv)")
                .await?;
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(data)).await?;
            sink.finish().await
        }
        .await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(n) => {
                assert_eq!(n, 50);
                for key in &keys {
                    ledger.in_doubt.remove(key);
                    ledger.acked.insert(*key);
                }
            }
            Err(e) if e.as_db_error().is_some() => panic!("COPY refused: {e}"),
            Err(_) => return,
        }
        seq += 50;
    }
}

/// POST JSON lines to the HTTP endpoint.
async fn http_writer(process: &EddyProcess, writer: i64, start: i64, ledger: Arc<Mutex<Ledger>>) {
    let mut seq = start;
    loop {
        let keys: Vec<(i64, i64)> = (seq..seq + 20).map(|s| (writer, s)).collect();
        let body: String = keys
            .iter()
            .map(|(w, s)| {
                format!(
                    "{{\"writer\": {w}, \"seq\": {s}, \"payload\": \"{}\", \"ts\": \"2026-01-01T00:00:00Z\"}}\n",
                    payload(*w, *s)
                )
            })
            .collect();
        ledger.lock().unwrap().in_doubt.extend(keys.iter().copied());
        let result = common::http::post(
            process.http,
            "/v1/streams/events",
            "application/x-ndjson",
            body.as_bytes(),
        )
        .await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok((200, _)) => {
                for key in &keys {
                    ledger.in_doubt.remove(key);
                    ledger.acked.insert(*key);
                }
            }
            Ok((status, body)) => panic!("HTTP ingest refused: {status} {body}"),
            Err(_) => return,
        }
        seq += 20;
    }
}

/// Upsert a rotating set of keys with increasing values.
async fn upsert_writer(process: &EddyProcess, start: i64, ledger: Arc<Mutex<Ledger>>) {
    let Ok(client) = process.try_connect().await else {
        return;
    };
    let mut value = start;
    loop {
        let key = value % 10;
        ledger
            .lock()
            .unwrap()
            .table
            .entry(key)
            .or_default()
            .1
            .insert(value);
        let result = client
            .execute(
                "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                &[&key, &value],
            )
            .await;
        let mut ledger = ledger.lock().unwrap();
        match result {
            Ok(_) => {
                let entry = ledger.table.entry(key).or_default();
                entry.0 = Some(value);
                entry.1.clear();
            }
            Err(e) if e.as_db_error().is_some() => panic!("upsert refused: {e}"),
            Err(_) => return,
        }
        value += 1;
    }
}

/// Check what the restarted server holds against the ledger, then settle the rows in doubt
/// (present or not, they are now known).
async fn verify(process: &EddyProcess, ledger: &Mutex<Ledger>) {
    let client = process.connect().await;
    let rows = client
        .query("SELECT writer, seq, payload FROM events", &[])
        .await
        .expect("read events");
    let mut stored = BTreeSet::new();
    for row in &rows {
        let key: (i64, i64) = (row.get(0), row.get(1));
        let text: String = row.get(2);
        assert_eq!(text, payload(key.0, key.1), "row {key:?} content");
        assert!(stored.insert(key), "row {key:?} stored twice");
    }
    let kv: BTreeMap<i64, i64> = client
        .query("SELECT k, v FROM kv", &[])
        .await
        .expect("read kv")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut ledger = ledger.lock().unwrap();
    let missing: Vec<_> = ledger.acked.difference(&stored).take(5).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    let unknown: Vec<_> = stored
        .iter()
        .filter(|k| !ledger.acked.contains(k) && !ledger.in_doubt.contains(k))
        .take(5)
        .collect();
    assert!(unknown.is_empty(), "rows never written: {unknown:?}");
    let doubtful = std::mem::take(&mut ledger.in_doubt);
    ledger.acked.extend(doubtful.intersection(&stored).copied());

    for (key, (acked, doubt)) in ledger.table.iter_mut() {
        let value = kv.get(key).copied();
        let allowed = value == *acked || value.is_some_and(|v| doubt.contains(&v));
        assert!(
            allowed,
            "key {key}: stored {value:?}, acknowledged {acked:?}, in doubt {doubt:?}"
        );
        *acked = value;
        doubt.clear();
    }
    // Every value acknowledged for a key is at most the newest, never an older one.
    println!(
        "verified {} rows ({} acknowledged), {} keys",
        stored.len(),
        ledger.acked.len(),
        kv.len()
    );
}

#[test]
fn acknowledged_rows_survive_sigkill() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let kills = std::env::var("EDDY_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(5u32);
    runtime.block_on(async {
        for round in 0..kills {
            let process = Arc::new(EddyProcess::start(
                data_dir.path(),
                &[
                    ("EDDY_STORAGE__FLUSH_AGE_MS", "150"),
                    ("EDDY_STORAGE__MAINTENANCE_INTERVAL_MS", "50"),
                    ("EDDY_STORAGE__COMPACT_MIN_FILES", "3"),
                    ("EDDY_STORAGE__SEGMENT_BYTES", "65536"),
                ],
            ));
            if round > 0 {
                verify(&process, &ledger).await;
            }
            process.connect().await.batch_execute(SCHEMA).await.unwrap();
            let base = i64::from(round) * 1_000_000;
            let mut writers = tokio::task::JoinSet::new();
            for (i, kind) in ["insert", "insert", "copy", "http", "upsert"]
                .iter()
                .enumerate()
            {
                let (p, l) = (Arc::clone(&process), Arc::clone(&ledger));
                let writer = i as i64;
                let start = base;
                match *kind {
                    "insert" => {
                        writers.spawn(async move { insert_writer(&p, writer, start, l).await })
                    }
                    "copy" => writers.spawn(async move { copy_writer(&p, writer, start, l).await }),
                    "http" => writers.spawn(async move { http_writer(&p, writer, start, l).await }),
                    _ => writers.spawn(async move { upsert_writer(&p, start, l).await }),
                };
            }
            // Vary the moment of the kill.
            tokio::time::sleep(Duration::from_millis(700 + 300 * u64::from(round % 4))).await;
            process.kill();
            while let Some(result) = writers.join_next().await {
                result.expect("writer task");
            }
            let acked = ledger.lock().unwrap().acked.len();
            println!("round {round}: killed with {acked} rows acknowledged so far");
            assert!(acked > 0, "writers made progress before the kill");
        }
        // A last restart: everything checks, and the server takes writes again.
        let process = EddyProcess::start(data_dir.path(), &[]);
        verify(&process, &ledger).await;
        let client = process.connect().await;
        let streams = client.simple_query("SHOW STREAMS").await.unwrap();
        let cold_rows: u64 = streams
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    r.get("cold_rows").map(|v| v.parse().unwrap())
                }
                _ => None,
            })
            .expect("the stream is listed");
        assert!(
            cold_rows > 0,
            "the crashes happened while data was being tiered to Parquet"
        );
        client
            .batch_execute("INSERT INTO events VALUES (99, 1, 'after', now())")
            .await
            .expect("writes after recovery");
        let n: i64 = client
            .query_one("SELECT count(*) FROM events WHERE writer = 99", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    });
}

/// The datagen source resumes after a SIGKILL where its log ends: the stream holds exactly the
/// rows an uninterrupted run of the same options generates, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagen_resumes_after_sigkill_without_gaps_or_duplicates() {
    const ROWS: i64 = 30_000;
    // Paced from now at 10000 rows/s: three seconds of generating, killed after the first.
    let start = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.3f+00")
        .to_string();
    let options = |name: &str, paced: bool| {
        format!(
            "CREATE STREAM {name} (id BIGINT, ts TIMESTAMPTZ, amount DOUBLE PRECISION, kind VARCHAR, big BOOLEAN)
             WITH (connector = 'datagen', rows = {ROWS}, rows_per_second = 10000, paced = {paced},
                   seed = 3, start_time = '{start}',
                   fields.id.kind = 'sequence', fields.amount.kind = 'normal',
                   fields.amount.mean = 100, fields.amount.stddev = 30,
                   fields.kind.values = 'a,b,c', fields.big.expression = 'amount > 130')"
        )
    };
    let data_dir = tempfile::tempdir().unwrap();
    {
        let process = EddyProcess::start(data_dir.path(), &[]);
        let client = process.connect().await;
        client
            .batch_execute(&options("live", true))
            .await
            .expect("create");
        let started = std::time::Instant::now();
        loop {
            let rows = common::scalar(&client, "SELECT count(*) FROM live").await;
            if rows >= ROWS / 5 || started.elapsed() > Duration::from_secs(60) {
                assert!(
                    rows < ROWS,
                    "the source finished before the kill ({rows} rows)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        process.kill();
    }
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client
        .batch_execute(&options("reference", false))
        .await
        .expect("create");
    common::wait_sources_finished(&client).await;
    let count = |sql: &'static str| common::scalar(&client, sql);
    assert_eq!(count("SELECT count(*) FROM live").await, ROWS);
    assert_eq!(count("SELECT count(DISTINCT id) FROM live").await, ROWS);
    assert_eq!(
        count(
            "SELECT count(*) FROM ((SELECT * FROM live EXCEPT ALL SELECT * FROM reference)
             UNION ALL (SELECT * FROM reference EXCEPT ALL SELECT * FROM live)) d"
        )
        .await,
        0,
        "the resumed stream differs from an uninterrupted run"
    );
}
