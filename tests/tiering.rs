//! Tiering: rows written to a stream, flushed to Parquet, compacted, and the server restarted
//! give the same answers at every step; time predicates prune cold files; retention removes
//! exactly the expired partitions. Run once on the default local cold tier and once on a real
//! S3-compatible server (moto in server mode, which `.ci/run` installs from PyPI).
//!
//! Each step is driven by restarting the real binary with storage settings that make the
//! background task do that step (no flush, then flush, then compact), so what is tested is the
//! server's own maintenance, and every restart is a recovery.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::EddyProcess;
use tokio_postgres::SimpleQueryMessage;

/// Storage settings for one phase.
const NO_MAINTENANCE: &[(&str, &str)] = &[
    ("EDDY_STORAGE__FLUSH_AGE_MS", "3600000"),
    ("EDDY_STORAGE__COMPACT_MIN_FILES", "1000"),
];
const FLUSH_ONLY: &[(&str, &str)] = &[
    ("EDDY_STORAGE__FLUSH_AGE_MS", "0"),
    ("EDDY_STORAGE__MAINTENANCE_INTERVAL_MS", "50"),
    ("EDDY_STORAGE__COMPACT_MIN_FILES", "1000"),
];
const COMPACT: &[(&str, &str)] = &[
    ("EDDY_STORAGE__FLUSH_AGE_MS", "0"),
    ("EDDY_STORAGE__MAINTENANCE_INTERVAL_MS", "50"),
    ("EDDY_STORAGE__COMPACT_MIN_FILES", "2"),
];

/// The days the rows fall on, relative to today: three recent ones and one older than 30 days.
fn days() -> [String; 4] {
    let today = chrono::Utc::now().date_naive();
    [13, 12, 11, 83].map(|ago| {
        (today - chrono::Days::new(ago))
            .format("%Y-%m-%d")
            .to_string()
    })
}

/// The queries whose answers must not change as data moves between tiers.
fn queries() -> Vec<String> {
    let [first, ..] = days();
    vec![
        "SELECT count(*), sum(price), min(ts), max(ts), count(DISTINCT auction) FROM bids".into(),
        "SELECT channel, count(*), round(avg(price)::numeric, 6) FROM bids GROUP BY channel ORDER BY channel".into(),
        format!("SELECT count(*), sum(auction) FROM bids WHERE ts >= '{first} 00:00:00+00' AND ts < '{first} 06:00:00+00'"),
        "SELECT auction, price, channel, ts FROM bids WHERE auction % 997 = 0 ORDER BY auction".into(),
    ]
}

async fn rows(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn answers(process: &EddyProcess) -> Vec<Vec<Vec<String>>> {
    let client = process.connect().await;
    let mut all = Vec::new();
    for query in queries() {
        all.push(rows(&client, &query).await);
    }
    all
}

/// (hot rows, cold rows, cold files) from SHOW STREAMS.
async fn tiers(process: &EddyProcess) -> (u64, u64, u64) {
    let client = process.connect().await;
    let row = rows(&client, "SHOW STREAMS").await.remove(0);
    let n = |i: usize| row[i].parse::<u64>().unwrap();
    (n(4), n(5), n(6))
}

/// Wait until `done(tiers)` holds.
async fn wait_for(
    process: &EddyProcess,
    what: &str,
    done: impl Fn((u64, u64, u64)) -> bool,
) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = tiers(process).await;
        if done(t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 6 batches of rows over 4 days (3 of them recent, 1 older than 30 days), 24 hourly
/// partitions each.
fn batch_sql(batch: i64) -> String {
    let days = days();
    let mut values = Vec::new();
    for i in 0..500 {
        let auction = batch * 500 + i;
        let day = &days[(batch % 4) as usize]; // the fourth is expired under a 30-day retention
        values.push(format!(
            "({auction}, {}, '{}', TIMESTAMPTZ '{day} {:02}:{:02}:00+00')",
            (auction % 100) as f64 * 0.25,
            ["web", "app", "api"][(auction % 3) as usize],
            (auction / 7) % 24,
            auction % 60
        ));
    }
    format!("INSERT INTO bids VALUES {}", values.join(", "))
}

async fn scenario(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let with = |phase: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        env.iter().copied().chain(phase.iter().copied()).collect()
    };
    // 1. Everything hot.
    let process = EddyProcess::start_with_args(data_dir, args, &with(NO_MAINTENANCE));
    let client = process.connect().await;
    client
        .batch_execute(
            "CREATE STREAM bids (auction BIGINT, price DOUBLE PRECISION, channel TEXT, ts TIMESTAMPTZ,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)",
        )
        .await
        .unwrap();
    client.batch_execute(&batch_sql(0)).await.unwrap();
    let expected_first = answers(&process).await;
    drop(process);

    // 2. Flushed batch by batch: several small files per partition.
    let process = EddyProcess::start_with_args(data_dir, args, &with(FLUSH_ONLY));
    assert_eq!(
        answers(&process).await,
        expected_first,
        "after recovery of hot rows"
    );
    let client = process.connect().await;
    for batch in 1..6 {
        wait_for(&process, "flush", |(hot, _, _)| hot == 0).await;
        client.batch_execute(&batch_sql(batch)).await.unwrap();
    }
    let hot = answers(&process).await;
    let (_, cold_rows, files_flushed) = wait_for(&process, "flush", |(hot, _, _)| hot == 0).await;
    assert_eq!(cold_rows, 3000);
    assert_eq!(answers(&process).await, hot, "after flush to Parquet");
    assert_eq!(
        log_bytes(data_dir),
        0,
        "log segments are freed once their rows are in Parquet"
    );
    drop(process);

    // 3. After a restart, with compaction.
    let process = EddyProcess::start_with_args(data_dir, args, &with(COMPACT));
    // 24 hourly partitions on each of 4 days; two days got two batches each, hence two files
    // per partition until compaction merges them.
    assert_eq!(files_flushed, 4 * 24 + 2 * 24);
    let (_, _, files_compacted) =
        wait_for(&process, "compaction", |(_, _, files)| files == 4 * 24).await;
    assert_eq!(answers(&process).await, hot, "after compaction");
    let (_, cold_rows, _) = tiers(&process).await;
    assert_eq!(cold_rows, 3000);
    println!("{files_flushed} files flushed, {files_compacted} after compaction");

    // Time predicates prune files: a 6-hour range of one day reads only that day's files.
    let client = process.connect().await;
    let [first, rest @ ..] = days();
    let plan = rows(
        &client,
        &format!("EXPLAIN ANALYZE SELECT count(*) FROM bids WHERE ts >= '{first} 00:00:00+00' AND ts < '{first} 06:00:00+00'"),
    )
    .await;
    let plan: String = plan
        .iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains(&format!("date={first}")), "{plan}");
    for other in rest {
        assert!(
            !plan.contains(&format!("date={other}")),
            "{other} should be pruned:\n{plan}"
        );
    }
    assert!(plan.contains("pruning_predicate"), "{plan}");
    drop(process);

    // 4. Another restart: same answers.
    let process = EddyProcess::start_with_args(data_dir, args, &with(COMPACT));
    assert_eq!(answers(&process).await, hot, "after restart");

    // 5. Retention: exactly the partitions older than 30 days go.
    let client = process.connect().await;
    let expired = rows(
        &client,
        "SELECT count(*) FROM bids WHERE ts < now() - INTERVAL '30 days'",
    )
    .await;
    let kept = rows(
        &client,
        "SELECT count(*), sum(auction) FROM bids WHERE ts >= now() - INTERVAL '30 days'",
    )
    .await;
    assert_eq!(expired[0][0], "500", "the batch of 83 days ago");
    client
        .batch_execute("ALTER STREAM bids SET (retention = '30 days')")
        .await
        .unwrap();
    wait_for(&process, "retention", |(_, cold, _)| cold == 2500).await;
    assert_eq!(
        rows(&client, "SELECT count(*), sum(auction) FROM bids").await,
        kept
    );
    drop(process);
    let process = EddyProcess::start_with_args(data_dir, args, &with(NO_MAINTENANCE));
    let client = process.connect().await;
    assert_eq!(
        rows(&client, "SELECT count(*), sum(auction) FROM bids").await,
        kept,
        "after restart"
    );
}

/// Bytes in the write-ahead logs of all relations.
fn log_bytes(data_dir: &Path) -> u64 {
    let mut total = 0;
    for relation in std::fs::read_dir(data_dir.join("relations"))
        .unwrap()
        .flatten()
    {
        if let Ok(segments) = std::fs::read_dir(relation.path().join("log")) {
            total += segments
                .flatten()
                .filter_map(|s| s.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
    }
    total
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn tiering_on_the_local_cold_tier() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(scenario(dir.path(), &[], &[]));
    // The files are where the default says: under the data directory.
    let cold = dir.path().join("cold/relations");
    assert!(cold.is_dir(), "{} exists", cold.display());
}

#[test]
fn hot_tier_memory_is_bounded() {
    // No flush by age or size: only the memory bound can move rows to Parquet.
    let dir = tempfile::tempdir().unwrap();
    let process = EddyProcess::start(
        dir.path(),
        &[
            ("EDDY_STORAGE__FLUSH_AGE_MS", "3600000"),
            ("EDDY_STORAGE__HOT_MAX_BYTES", "100000"),
        ],
    );
    runtime().block_on(async {
        let client = process.connect().await;
        client
            .batch_execute("CREATE STREAM bids (auction BIGINT, price DOUBLE PRECISION, channel TEXT, ts TIMESTAMPTZ)")
            .await
            .unwrap();
        for batch in 0..12 {
            client.batch_execute(&batch_sql(batch)).await.unwrap();
        }
        let (hot, cold, _) = tiers(&process).await;
        assert_eq!(hot + cold, 6000);
        assert!(cold > 0, "the memory bound flushed rows to Parquet: hot {hot}, cold {cold}");
        let count = rows(&client, "SELECT count(*) FROM bids").await;
        assert_eq!(count[0][0], "6000");
    });
}

/// A moto S3 server on a free port, stopped when dropped.
struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is installed (pip install 'moto[server]'; .ci/run does this)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto(child, port)
}

#[test]
fn tiering_on_s3() {
    let moto = start_moto();
    let endpoint = format!("http://127.0.0.1:{}", moto.1);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        // Create the bucket (moto takes unsigned requests).
        let addr = format!("127.0.0.1:{}", moto.1).parse().unwrap();
        let (status, body) = common::http::put(addr, "/eddy-test").await.unwrap();
        assert!(status == 200, "create bucket: {status} {body}");
        let env = [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ];
        scenario(
            dir.path(),
            &["--object-store", "s3://eddy-test/tiering"],
            &env,
        )
        .await;
        // Nothing went to the local default.
        assert!(!dir.path().join("cold/relations").exists());
        // The files are in the bucket, under the prefix.
        let (status, listing) =
            common::http::get(addr, "/eddy-test?list-type=2&prefix=tiering/relations/")
                .await
                .unwrap();
        assert_eq!(status, 200);
        assert!(listing.contains(".parquet"), "{listing}");
    });
}
