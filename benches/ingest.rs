//! Ingest and hot+cold query benchmark.
//!
//! ```text
//! cargo bench --bench ingest            # EDDY_BENCH_ROWS=200000 by default per run
//! ```
//!
//! Prints, for INSERT (1000-row statements), COPY (CSV through pgwire) and HTTP (CSV bodies)
//! with 1, 4 and 16 concurrent writers: rows/s, MB/s (of CSV text) and the ratio to
//! PostgreSQL's COPY of the same CSV into a table with the same writers, run in the same
//! process on this machine (a throwaway cluster started with the local `initdb`/`pg_ctl`;
//! skipped with a note if PostgreSQL is not installed). Both servers acknowledge after fsync.
//!
//! Then a time-range aggregate over a stream whose rows are mostly in Parquet (cold) with some
//! still in memory (hot), next to DataFusion reading the same Parquet files directly.

#[path = "../tests/common/http.rs"]
#[allow(dead_code, unreachable_pub)]
mod http;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::SinkExt;

mod common;

use common::{Server, connect, median};

const WRITERS: [usize; 3] = [1, 4, 16];
const CHUNK_ROWS: usize = 10_000;
const INSERT_ROWS: usize = 1_000;

fn rows_per_run() -> usize {
    std::env::var("EDDY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// CSV rows `start..start+n`, timestamps spread over one day from `day_start` (epoch seconds).
fn csv_rows(start: usize, n: usize, day_start: i64) -> String {
    let mut out = String::with_capacity(n * 64);
    for i in start..start + n {
        let ts = chrono::DateTime::from_timestamp(day_start + (i as i64 % 86_400), 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S+00");
        out.push_str(&format!(
            "{},{},{:.2},{},{ts}\n",
            i % 10_000,
            i % 997,
            (i % 5000) as f64 / 7.0,
            ["web", "app", "api", "partner"][i % 4]
        ));
    }
    out
}

fn values_rows(start: usize, n: usize, day_start: i64) -> String {
    csv_rows(start, n, day_start)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            format!("({},{},{},'{}','{}')", f[0], f[1], f[2], f[3], f[4])
        })
        .collect::<Vec<_>>()
        .join(",")
}

const DDL_COLUMNS: &str =
    "auction BIGINT, bidder BIGINT, price DOUBLE PRECISION, channel TEXT, ts TIMESTAMPTZ";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path_ {
    Insert,
    Copy,
    Http,
}

/// Run `total` rows through `path` with `writers` concurrent writers; returns (seconds, bytes).
async fn run_ingest(
    path: Path_,
    conn: &str,
    http: Option<std::net::SocketAddr>,
    table: &str,
    writers: usize,
    total: usize,
    day_start: i64,
) -> (f64, usize) {
    let per_writer = total / writers;
    let chunk = if path == Path_::Insert {
        INSERT_ROWS
    } else {
        CHUNK_ROWS
    };
    // Prepare payloads first so only ingest is timed.
    let mut payloads: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for w in 0..writers {
        let mut mine = Vec::new();
        let mut at = w * per_writer;
        while at < (w + 1) * per_writer {
            let n = chunk.min((w + 1) * per_writer - at);
            bytes += csv_rows(at, n, day_start).len();
            mine.push(match path {
                Path_::Insert => format!(
                    "INSERT INTO {table} VALUES {}",
                    values_rows(at, n, day_start)
                ),
                _ => csv_rows(at, n, day_start),
            });
            at += n;
        }
        payloads.push(mine);
    }
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(connect(conn).await);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, mine) in clients.into_iter().zip(payloads) {
        let table = table.to_string();
        tasks.spawn(async move {
            for payload in mine {
                match path {
                    Path_::Insert => client.batch_execute(&payload).await.expect("insert"),
                    Path_::Copy => {
                        let sink = client
                            .copy_in(&format!("COPY {table} FROM STDIN WITH (FORMAT csv)"))
                            .await
                            .expect("copy");
                        futures::pin_mut!(sink);
                        sink.send(bytes::Bytes::from(payload))
                            .await
                            .expect("copy data");
                        sink.finish().await.expect("copy done");
                    }
                    Path_::Http => {
                        let (status, body) = http::post(
                            http.expect("http address"),
                            &format!("/v1/streams/{table}"),
                            "text/csv",
                            payload.as_bytes(),
                        )
                        .await
                        .expect("post");
                        assert_eq!(status, 200, "{body}");
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer");
    }
    (started.elapsed().as_secs_f64(), bytes)
}

/// A throwaway PostgreSQL cluster (as the `postgres` user when run as root).
struct Postgres {
    dir: PathBuf,
    port: u16,
    as_user: Option<&'static str>,
}

impl Postgres {
    fn start() -> Result<Postgres, String> {
        let which = |bin: &str| -> Option<String> {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let initdb = which("initdb").ok_or("initdb not found")?;
        let pg_ctl = which("pg_ctl").ok_or("pg_ctl not found")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let as_user = root.then_some("postgres");
        let dir = std::env::temp_dir().join(format!("eddy-bench-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if let Some(user) = as_user {
            Command::new("chown")
                .args([user, &dir.display().to_string()])
                .status()
                .map_err(|e| e.to_string())?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let run = |args: Vec<String>| -> Result<(), String> {
            let mut cmd = match as_user {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--"]).args(&args);
                    c
                }
                None => {
                    let mut c = Command::new(&args[0]);
                    c.args(&args[1..]);
                    c
                }
            };
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        };
        let data = dir.join("data").display().to_string();
        run(vec![
            initdb,
            "-D".into(),
            data.clone(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
        ])?;
        run(vec![
            pg_ctl,
            "-D".into(),
            data,
            "-o".into(),
            format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=64"),
            "-w".into(),
            "-l".into(),
            dir.join("log").display().to_string(),
            "start".into(),
        ])?;
        Ok(Postgres { dir, port, as_user })
    }

    fn conn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "pg_ctl"]);
                c
            }
            None => Command::new("pg_ctl"),
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    let total = rows_per_run();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data_dir.path(), &runtime, |config| {
        config.storage.flush_age_ms = 2_000;
    });
    let addrs = server.addrs;
    let eddy_conn = server.conn_str();
    let day_start = chrono::Utc::now().timestamp() / 86_400 * 86_400 - 86_400;
    let postgres = Postgres::start();
    if let Err(e) = &postgres {
        println!("PostgreSQL reference skipped: {e}");
    }

    println!(
        "ingest: {total} rows per run, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:>7} {:>12} {:>8} {:>18}",
        "path", "writers", "rows/s", "MB/s", "vs PostgreSQL COPY"
    );
    runtime.block_on(async {
        let eddy = connect(&eddy_conn).await;
        let pg = match &postgres {
            Ok(pg) => Some(connect(&pg.conn()).await),
            Err(_) => None,
        };
        let mut run_id = 0;
        for writers in WRITERS {
            let reference = match (&postgres, &pg) {
                (Ok(p), Some(client)) => {
                    run_id += 1;
                    let table = format!("pg_bids_{run_id}");
                    client.batch_execute(&format!("CREATE TABLE {table} ({DDL_COLUMNS})")).await.expect("pg table");
                    let (secs, bytes) = run_ingest(Path_::Copy, &p.conn(), None, &table, writers, total, day_start).await;
                    let rate = total as f64 / secs;
                    println!("{:<8} {:>7} {:>12.0} {:>8.1} {:>18}", "pg COPY", writers, rate, bytes as f64 / secs / 1e6, "1.00");
                    Some(rate)
                }
                _ => None,
            };
            for path in [Path_::Insert, Path_::Copy, Path_::Http] {
                run_id += 1;
                let table = format!("bids_{run_id}");
                eddy.batch_execute(&format!(
                    "CREATE STREAM {table} ({DDL_COLUMNS}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)"
                ))
                .await
                .expect("stream");
                let (secs, bytes) = run_ingest(path, &eddy_conn, Some(addrs.http), &table, writers, total, day_start).await;
                let rate = total as f64 / secs;
                let ratio = reference.map_or("-".to_string(), |r| format!("{:.2}", rate / r));
                let name = format!("{path:?}").to_lowercase();
                println!("{:<8} {:>7} {:>12.0} {:>8.1} {:>18}", name, writers, rate, bytes as f64 / secs / 1e6, ratio);
                let count: i64 = eddy.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0);
                assert_eq!(count as usize, total / writers * writers, "every row stored");
                eddy.batch_execute(&format!("DROP STREAM {table}")).await.expect("drop");
            }
        }

        // Query: most rows cold (Parquet), the newest still hot.
        let table = "bids_query";
        eddy.batch_execute(&format!(
            "CREATE STREAM {table} ({DDL_COLUMNS}, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)"
        ))
        .await
        .expect("stream");
        let cold_rows = total * 5;
        run_ingest(Path_::Copy, &eddy_conn, None, table, 4, cold_rows, day_start).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let hot: i64 = eddy
                .simple_query("SHOW STREAMS")
                .await
                .expect("show")
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) if r.get("name") == Some(table) => {
                        r.get("hot_rows").and_then(|v| v.parse().ok())
                    }
                    _ => None,
                })
                .unwrap_or(0);
            if hot == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        run_ingest(Path_::Copy, &eddy_conn, None, table, 1, total / 10, day_start + 3600).await;
        let from = chrono::DateTime::from_timestamp(day_start + 6 * 3600, 0).unwrap_or_default().format("%Y-%m-%d %H:%M:%S+00");
        let to = chrono::DateTime::from_timestamp(day_start + 12 * 3600, 0).unwrap_or_default().format("%Y-%m-%d %H:%M:%S+00");
        let query = format!(
            "SELECT channel, count(*), avg(price) FROM {table} WHERE ts >= '{from}' AND ts < '{to}' GROUP BY channel ORDER BY channel"
        );
        let mut eddy_times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            eddy.simple_query(&query).await.expect("query");
            eddy_times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // DataFusion over the same Parquet files, read directly.
        let ctx = datafusion::prelude::SessionContext::new();
        let cold_dir = data_dir.path().join("cold/relations");
        // The query stream was created last: the highest relation id.
        let stream_dir = std::fs::read_dir(&cold_dir)
            .expect("cold files")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|id| (id, e.path())))
            .max()
            .map(|(_, path)| path)
            .expect("the query stream's files");
        ctx.register_parquet(table, stream_dir.display().to_string(), datafusion::prelude::ParquetReadOptions::default())
            .await
            .expect("register parquet");
        let df_query = query.clone();
        let mut df_times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            ctx.sql(&df_query).await.expect("plan").collect().await.expect("run");
            df_times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (e, d) = (median(eddy_times), median(df_times));
        println!(
            "time-range aggregate over {} cold + {} hot rows: EddyDB {e:.1} ms (over pgwire), DataFusion on the Parquet files {d:.1} ms, ratio {:.2}",
            cold_rows,
            total / 10,
            e / d
        );
    });
    server.stop(&runtime);
    drop(postgres);
}
