//! The machine-learning benchmark: training time against row count, the cost of `PREDICT`
//! per row for each algorithm, and the throughput of a materialized view with and without
//! `PREDICT` over the same stored events.
//!
//! ```text
//! cargo bench --bench ml          # EDDY_ML_ROWS=200000 generated rows by default
//! ```
//!
//! The rows come from the datagen connector (four numeric features, a boolean label that
//! follows a rule over them, a numeric target), stored durably before anything is measured.
//! Prints:
//! - training: `CREATE MODEL` on the first 1,000, 10,000 and 100,000 rows (capped at the rows
//!   generated), per algorithm, in ms (the query, the fit and storing the version);
//! - scoring: per algorithm, `COPY (SELECT PREDICT(m, a, b, c, d) FROM points) TO STDOUT` over
//!   every row against the same query selecting an expression of the same output type over
//!   the same columns instead (scan, projection and delivery; best of three each): the
//!   difference per row in ns, and the server's own measure of the model call alone
//!   (`eddy_model_prediction_seconds_total` over `eddy_model_predictions_total` from
//!   `/metrics`), which includes encoding the features;
//! - views: `CREATE MATERIALIZED VIEW` over all stored rows (one view task, one core) without
//!   and with `PREDICT`, rows/s each and the ratio;
//! - online learning: `CREATE MODEL ... WITH (mode = 'online')` over all stored rows (its
//!   learning view reads them and the model learns each one), rows/s and the ratio to the
//!   view without `PREDICT`.

use std::time::Instant;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::{Server, connect, scalar_i64, wait_sources_finished};

const FEATURES: &str = "a, b, c, d";

/// (name, algorithm, target, options): the models trained and scored.
const MODELS: &[(&str, &str, Option<&str>, &str)] = &[
    ("linear", "linear_regression", Some("value"), ""),
    (
        "logistic",
        "logistic_regression",
        Some("label"),
        "standardize = true",
    ),
    ("tree", "decision_tree", Some("label"), "max_depth = 8"),
    ("bayes", "naive_bayes", Some("label"), ""),
    ("clusters", "kmeans", None, "k = 4"),
    ("ftrl", "ftrl", Some("label"), ""),
];

/// (name, algorithm, target, options): models that learn online over every stored row.
const ONLINE: &[(&str, &str, Option<&str>, &str)] = &[
    ("ftrl_online", "ftrl", Some("label"), ""),
    (
        "bayes_online",
        "naive_bayes",
        Some("label"),
        ", batch_size = 256",
    ),
    (
        "clusters_online",
        "kmeans",
        None,
        ", k = 4, batch_size = 1024",
    ),
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds to run `COPY (query) TO STDOUT` and read every byte, best of three.
async fn copy_seconds(client: &tokio_postgres::Client, query: &str) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let copy = client
            .copy_out(&format!("COPY ({query}) TO STDOUT"))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let mut copy = std::pin::pin!(copy);
        let mut bytes = 0;
        while let Some(chunk) = copy.next().await {
            bytes += chunk.expect("COPY data").len();
        }
        assert!(bytes > 0, "{query} returned nothing");
        best = best.min(started.elapsed().as_secs_f64());
    }
    best
}

/// `GET /metrics` from the server's HTTP listener.
async fn metrics(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to HTTP");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: eddy\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

/// The value of the sample `metric` (with its labels) in metrics text.
fn sample(text: &str, metric: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(metric)?.trim().parse().ok())
}

fn main() {
    let rows = env_number("EDDY_ML_ROWS", 200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let data_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(data_dir.path(), &runtime, |config| {
        config.streaming.checkpoint_interval_ms = 0;
    });
    let http = server.addrs.http;
    runtime.block_on(async {
        let client = connect(&server.conn_str()).await;
        println!(
            "ml: {rows} rows, {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        client
            .batch_execute(&format!(
                "CREATE STREAM points (id BIGINT, ts TIMESTAMPTZ, a DOUBLE PRECISION,
                                       b DOUBLE PRECISION, c DOUBLE PRECISION,
                                       d DOUBLE PRECISION, label BOOLEAN, value DOUBLE PRECISION)
                 WITH (connector = 'datagen', rows = {rows}, rows_per_second = 100000,
                       paced = false, start_time = '2026-01-01 00:00:00+00',
                       fields.id.kind = 'sequence',
                       fields.a.kind = 'normal', fields.b.kind = 'normal',
                       fields.c.min = -1, fields.c.max = 1, fields.d.min = 0, fields.d.max = 5,
                       fields.label.expression = 'a + 2 * b - c > 0.5',
                       fields.value.expression = '3 * a + b - 2 * d')"
            ))
            .await
            .expect("points");
        wait_sources_finished(&client).await;

        println!("training ms (CREATE MODEL on the first n rows):");
        let sizes: Vec<u64> = [1_000, 10_000, 100_000]
            .into_iter()
            .filter(|n| *n <= rows)
            .collect();
        print!("{:<20}", "algorithm");
        for n in &sizes {
            print!(" {:>12}", format!("{n} rows"));
        }
        println!();
        for (name, algorithm, target, options) in MODELS {
            print!("{algorithm:<20}");
            for n in &sizes {
                let predict = target.map_or(String::new(), |t| format!("PREDICT {t}"));
                let columns = target.map_or(FEATURES.to_string(), |t| format!("{FEATURES}, {t}"));
                let with = if options.is_empty() {
                    String::new()
                } else {
                    format!("WITH ({options})")
                };
                let started = Instant::now();
                client
                    .batch_execute(&format!(
                        "CREATE OR REPLACE MODEL {name} {predict} USING {algorithm} {with}
                         AS SELECT {columns} FROM points WHERE id <= {n}"
                    ))
                    .await
                    .unwrap_or_else(|e| panic!("{algorithm}: {e}"));
                print!(" {:>12.1}", started.elapsed().as_secs_f64() * 1000.0);
            }
            println!();
        }

        println!("scoring {rows} rows (COPY out, best of 3):");
        println!(
            "{:<20} {:>10} {:>14} {:>14} {:>16}",
            "algorithm", "query ms", "without ms", "ns/row added", "model ns/row"
        );
        for (name, algorithm, _, _) in MODELS {
            // The same scan and an output of the same type, without the model.
            let without = match *algorithm {
                "linear_regression" => "a + b + c + d",
                "kmeans" => "CAST(a + b + c + d AS BIGINT)",
                _ => "a + b + c + d > 0",
            };
            let base = copy_seconds(&client, &format!("SELECT {without} FROM points")).await;
            let seconds = copy_seconds(
                &client,
                &format!("SELECT PREDICT({name}, {FEATURES}) FROM points"),
            )
            .await;
            let text = metrics(http).await;
            // CREATE OR REPLACE made a new model each time: its one version is 1.
            let labels = format!("{{model=\"public.{name}\",version=\"1\"}}");
            let model_ns = match (
                sample(
                    &text,
                    &format!("eddy_model_prediction_seconds_total{labels}"),
                ),
                sample(&text, &format!("eddy_model_predictions_total{labels}")),
            ) {
                (Some(s), Some(n)) if n > 0.0 => format!("{:.0}", s / n * 1e9),
                _ => "-".to_string(),
            };
            println!(
                "{algorithm:<20} {:>10.0} {:>14.0} {:>14.0} {:>16}",
                seconds * 1000.0,
                base * 1000.0,
                (seconds - base) / rows as f64 * 1e9,
                model_ns
            );
        }

        println!("views over the {rows} stored rows (one view task):");
        let plain_started = Instant::now();
        client
            .batch_execute(&format!(
                "CREATE MATERIALIZED VIEW plain AS SELECT id, {FEATURES} FROM points"
            ))
            .await
            .expect("plain view");
        let plain = plain_started.elapsed().as_secs_f64();
        client
            .batch_execute("DROP MATERIALIZED VIEW plain")
            .await
            .expect("drop");
        println!(
            "{:<20} {:>12} {:>10} {:>8}",
            "view", "rows/s", "ms", "ratio"
        );
        println!(
            "{:<20} {:>12.0} {:>10.0} {:>8.2}",
            "without PREDICT",
            rows as f64 / plain,
            plain * 1000.0,
            1.0
        );
        for (name, _, _, _) in MODELS.iter().filter(|m| m.1 != "linear_regression") {
            let started = Instant::now();
            client
                .batch_execute(&format!(
                    "CREATE MATERIALIZED VIEW scored AS
                     SELECT id, {FEATURES}, PREDICT({name}, {FEATURES}) AS p FROM points"
                ))
                .await
                .expect("scored view");
            let seconds = started.elapsed().as_secs_f64();
            let scored = scalar_i64(&client, "SELECT count(p) FROM scored").await;
            assert_eq!(scored as u64, rows, "every row scored");
            client
                .batch_execute("DROP MATERIALIZED VIEW scored")
                .await
                .expect("drop");
            println!(
                "{:<20} {:>12.0} {:>10.0} {:>8.2}",
                format!("PREDICT({name})"),
                rows as f64 / seconds,
                seconds * 1000.0,
                plain / seconds
            );
        }
        for (name, algorithm, target, options) in ONLINE {
            let started = Instant::now();
            let columns = match target {
                Some(target) => format!("{FEATURES}, {target}"),
                None => FEATURES.to_string(),
            };
            let predict = target.map_or(String::new(), |t| format!("PREDICT {t}"));
            client
                .batch_execute(&format!(
                    "CREATE MODEL {name} {predict} USING {algorithm}
                     WITH (mode = 'online', snapshot_every = '1 hour'{options})
                     AS SELECT {columns} FROM points"
                ))
                .await
                .expect("online model");
            let seconds = started.elapsed().as_secs_f64();
            let learned = scalar_i64(
                &client,
                &format!(
                    "SELECT rows_learned::BIGINT FROM eddy_catalog.models WHERE name = '{name}'"
                ),
            )
            .await;
            println!(
                "{:<20} {:>12.0} {:>10.0} {:>8.2}",
                format!("online {algorithm}"),
                learned as f64 / seconds,
                seconds * 1000.0,
                plain / seconds
            );
        }
    });
    server.stop(&runtime);
}
