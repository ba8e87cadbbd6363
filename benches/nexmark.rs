//! The Nexmark benchmark: the queries in `sql/nexmark/` as materialized views over the
//! built-in generator's streams (`sql/nexmark/streams.sql`).
//!
//! ```text
//! cargo bench --bench nexmark         # EDDY_NEXMARK_EVENTS=1000000 events by default
//! ```
//!
//! Prints, per query:
//! - throughput: the stored events are generated first, then `CREATE MATERIALIZED VIEW` runs
//!   the view over all of them (one view task, i.e. one core); events/s counts the events of
//!   the streams the query reads, each stream once;
//! - the same query as a DataFusion batch over the same stored events in the same server
//!   (`COPY (<query>) TO STDOUT` over pgwire: the whole result computed and delivered, as the
//!   view computes and stores it), its time and the ratio of the view's throughput to the
//!   batch's;
//! - event-to-view latency (p50, p99): all views run together while the generator releases
//!   events in real time at `EDDY_NEXMARK_RATE` events/s (default 10,000); latency is measured
//!   inside the server from the moment a stream append starts to the moment the view holds its
//!   effect (`eddy_catalog.materialized_views.latency_p50_ms / latency_p99_ms`);
//! - checkpoint overhead: q5 and q7 fed live (500,000 events,
//!   `EDDY_NEXMARK_CHECKPOINT_EVENTS`) without checkpoints, with one every second and with one
//!   every 5 s (the default), each `EDDY_NEXMARK_CHECKPOINT_ROUNDS` (3) times in rotating
//!   order; the medians and their ratios, the size and time of the last checkpoint, and recovery of that state: the
//!   server is stopped and started again on the same data; restore ms is loading the checkpoint
//!   into the view, running ms the time from start until the view runs again.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;

#[path = "../tests/common/nexmark.rs"]
#[allow(dead_code, unreachable_pub)]
mod nexmark_sql;

use nexmark_sql::{queries, streams_sql};

mod common;

use common::{Server, connect, median, scalar_i64, wait_sources_finished};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The streams a query reads (each counted once for events/s).
fn streams_read(select: &str) -> Vec<&'static str> {
    let lower = select.to_lowercase();
    ["person", "auction", "bid"]
        .into_iter()
        .filter(|s| {
            lower.contains(&format!("from {s}"))
                || lower.contains(&format!("join {s}"))
                || lower.contains(&format!("({s},"))
        })
        .collect()
}

fn start_eddy(
    data_dir: &Path,
    runtime: &tokio::runtime::Runtime,
    checkpoint_interval_ms: u64,
) -> Server {
    Server::start(data_dir, runtime, |config| {
        config.streaming.checkpoint_interval_ms = checkpoint_interval_ms;
    })
}

fn main() {
    let events = env_number("EDDY_NEXMARK_EVENTS", 1_000_000);
    let rate = env_number("EDDY_NEXMARK_RATE", 10_000);
    let live_seconds = env_number("EDDY_NEXMARK_LIVE_SECONDS", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data_dir = tempfile::tempdir().expect("tempdir");
    let server = start_eddy(data_dir.path(), &runtime, 0);
    let port = server.addrs.pg.port();
    let queries = queries();
    runtime.block_on(async {
        let client = connect(&format!("host=127.0.0.1 port={port} user=eddy dbname=eddy")).await;
        println!(
            "nexmark: {events} events, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let started = Instant::now();
        client
            .batch_execute(&streams_sql(events, None))
            .await
            .expect("streams");
        wait_sources_finished(&client).await;
        let generation = started.elapsed().as_secs_f64();
        println!(
            "generated and stored durably: {:.0} events/s ({generation:.2} s)",
            events as f64 / generation
        );
        let mut rows_of = std::collections::HashMap::new();
        for stream in ["person", "auction", "bid"] {
            rows_of.insert(
                stream,
                scalar_i64(&client, &format!("SELECT count(*) FROM {stream}")).await,
            );
        }
        println!(
            "{:<11} {:>12} {:>10} {:>10} {:>12} {:>8} {:>9} {:>9}",
            "query", "view ev/s", "view ms", "batch ms", "batch ev/s", "ratio", "p50 ms", "p99 ms"
        );
        let mut lines = Vec::new();
        for query in &queries {
            let (name, create, select) = (&query.name, &query.create, &query.select);
            let input: i64 = streams_read(select).iter().map(|s| rows_of[s]).sum();
            let started = Instant::now();
            client.batch_execute(create).await.expect(create);
            let view_secs = started.elapsed().as_secs_f64();
            client
                .batch_execute(&format!("DROP MATERIALIZED VIEW {name}"))
                .await
                .expect("drop");
            // Batch: best of three.
            let mut batch_secs = f64::MAX;
            for _ in 0..3 {
                let started = Instant::now();
                let copy = client
                    .copy_out(&format!("COPY ({select}) TO STDOUT"))
                    .await
                    .expect("COPY out");
                let mut copy = std::pin::pin!(copy);
                let mut bytes = 0;
                while let Some(chunk) = copy.next().await {
                    bytes += chunk.expect("COPY data").len();
                }
                assert!(bytes > 0, "{name}: the batch query returned nothing");
                batch_secs = batch_secs.min(started.elapsed().as_secs_f64());
            }
            let view_rate = input as f64 / view_secs;
            let batch_rate = input as f64 / batch_secs;
            lines.push((name.clone(), view_rate, view_secs, batch_secs, batch_rate));
        }
        // Latency: fresh paced streams, all views running while events arrive in real time.
        client
            .batch_execute("DROP STREAM person, auction, bid")
            .await
            .expect("drop streams");
        client
            .batch_execute(&streams_sql(rate * live_seconds, Some(rate)))
            .await
            .expect("live streams");
        for query in &queries {
            client
                .batch_execute(&query.create)
                .await
                .expect(&query.create);
        }
        wait_sources_finished(&client).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let latencies = client
            .query(
                "SELECT name, latency_p50_ms, latency_p99_ms FROM eddy_catalog.materialized_views",
                &[],
            )
            .await
            .expect("latencies");
        for (name, view_rate, view_secs, batch_secs, batch_rate) in lines {
            let latency = latencies
                .iter()
                .find(|r| r.get::<_, String>(0) == name)
                .map(|r| (r.get::<_, Option<f64>>(1), r.get::<_, Option<f64>>(2)));
            let (p50, p99) = latency.unwrap_or((None, None));
            println!(
                "{:<11} {:>12.0} {:>10.1} {:>10.1} {:>12.0} {:>8.2} {:>9} {:>9}",
                name,
                view_rate,
                view_secs * 1000.0,
                batch_secs * 1000.0,
                batch_rate,
                view_rate / batch_rate,
                p50.map_or("-".to_string(), |v| format!("{v:.1}")),
                p99.map_or("-".to_string(), |v| format!("{v:.1}")),
            );
        }
        println!(
            "ratio = view events/s / batch events/s; latency with all {} views running at {rate} events/s for {live_seconds} s",
            queries.len()
        );
    });
    server.stop(&runtime);
    checkpoint_overhead(&runtime, events);
}

/// Live throughput of q5 and q7 with checkpoints every second and without. The view is
/// created right after the streams, while the generator writes, so nearly every event reaches
/// it live (checkpoints are taken between live batches); its time runs from the streams'
/// creation to its last input row.
fn checkpoint_overhead(runtime: &tokio::runtime::Runtime, events: u64) {
    // Single live runs vary by 10-20% on this machine: each configuration runs several times,
    // in rotating order, and the medians are compared.
    let rounds = env_number("EDDY_NEXMARK_CHECKPOINT_ROUNDS", 3).max(1) as usize;
    let events = env_number("EDDY_NEXMARK_CHECKPOINT_EVENTS", events.min(500_000));
    println!("checkpoint overhead (live, {events} events, median of {rounds} runs each):");
    println!("(1 s: checkpoints every second; 5 s: every 5 s, the default)");
    println!(
        "{:<11} {:>10} {:>10} {:>8} {:>10} {:>8} {:>16} {:>14} {:>12} {:>12}",
        "query",
        "off ev/s",
        "1 s ev/s",
        "1 s/off",
        "5 s ev/s",
        "5 s/off",
        "checkpoint bytes",
        "checkpoint ms",
        "restore ms",
        "running ms"
    );
    let intervals = [0u64, 1000, 5000];
    for name in ["nexmark_q5", "nexmark_q7"] {
        let Some(query) = queries().into_iter().find(|q| q.name == name) else {
            continue;
        };
        let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); intervals.len()];
        let mut checkpoint = (0i64, 0.0);
        let mut recovery = (0.0, 0.0);
        for round in 0..rounds {
            for k in 0..intervals.len() {
                let which = (k + round) % intervals.len();
                let interval_ms = intervals[which];
                let data_dir = tempfile::tempdir().expect("tempdir");
                let server = start_eddy(data_dir.path(), runtime, interval_ms);
                let (rate, bytes, ms) =
                    runtime.block_on(live_run(server.addrs.pg.port(), &query, events));
                throughput[which].push(rate);
                server.stop(runtime);
                if interval_ms == 1000 && round == 0 {
                    checkpoint = (bytes, ms);
                    // Recovery of that state: restart on the same data and wait for the view.
                    let started = Instant::now();
                    let server = start_eddy(data_dir.path(), runtime, interval_ms);
                    let restore_ms = runtime.block_on(restored(server.addrs.pg.port(), name));
                    recovery = (restore_ms, started.elapsed().as_secs_f64() * 1000.0);
                    server.stop(runtime);
                }
            }
        }
        let [off, every_second, every_five] = [0, 1, 2].map(|i| median(throughput[i].clone()));
        println!(
            "{:<11} {:>10.0} {:>10.0} {:>8.2} {:>10.0} {:>8.2} {:>16} {:>14.1} {:>12.1} {:>12.1}",
            name,
            off,
            every_second,
            every_second / off,
            every_five,
            every_five / off,
            checkpoint.0,
            checkpoint.1,
            recovery.0,
            recovery.1
        );
    }
}

/// Wait until view `name` runs again after a restart; returns its restore time (ms).
async fn restored(port: u16, name: &str) -> f64 {
    let client = connect(&format!("host=127.0.0.1 port={port} user=eddy dbname=eddy")).await;
    let sql = format!(
        "SELECT recovery_ms FROM eddy_catalog.materialized_views \
         WHERE name = '{name}' AND status = 'running' AND restored_from IS NOT NULL"
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(row) = client.query_opt(&sql, &[]).await.expect("recovery") {
            let ms: Option<f64> = row.get(0);
            return ms.unwrap_or(0.0);
        }
        assert!(Instant::now() < deadline, "{name} was not restored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (events/s, last checkpoint bytes, last checkpoint ms) of one live run.
async fn live_run(port: u16, query: &nexmark_sql::Query, events: u64) -> (f64, i64, f64) {
    let client = connect(&format!("host=127.0.0.1 port={port} user=eddy dbname=eddy")).await;
    let started = Instant::now();
    client
        .batch_execute(&streams_sql(events, None))
        .await
        .expect("streams");
    client.batch_execute(&query.create).await.expect("view");
    let progress = format!(
        "SELECT input_rows::BIGINT, checkpoint_bytes::BIGINT, coalesce(checkpoint_ms, 0) \
         FROM eddy_catalog.materialized_views WHERE name = '{}'",
        query.name
    );
    let mut last = (0i64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = client.query_one(&progress, &[]).await.expect("progress");
        let rows: i64 = row.get(0);
        if rows != last.0 {
            last = (rows, Instant::now());
            continue;
        }
        let generating = scalar_i64(
            &client,
            "SELECT count(*) FROM eddy_catalog.sources WHERE status <> 'finished'",
        )
        .await;
        if generating == 0 && last.1.elapsed() > Duration::from_millis(1500) {
            // Events of the streams the query reads, as in the table above.
            let mut input = 0;
            for stream in streams_read(&query.select) {
                input += scalar_i64(&client, &format!("SELECT count(*) FROM {stream}")).await;
            }
            let seconds = (last.1 - started).as_secs_f64();
            return (input as f64 / seconds, row.get(1), row.get(2));
        }
    }
}
