//! Materialized views over the wire.
//!
//! - The correctness oracle: generated bids (out of order within the watermark bound) and a
//!   users table that changes (updates, deletes, re-inserts) are loaded at several batch sizes
//!   while views are maintained; every view must end equal to its own query run as a batch over
//!   the stored history (`EXCEPT ALL` both ways is empty). Every view snapshots and restores
//!   its operator state after each batch, so this also proves the checkpoint snapshots exact.
//! - State stays bounded: windowed and interval-join views over a long stream stop growing,
//!   while a view that must remember every key grows (so the measure itself works).
//! - SUBSCRIBE through cursors (snapshot, changes, resume with `AS OF`), through psql as typed
//!   and `COPY (SUBSCRIBE ...) TO STDOUT`, stopped by Ctrl-C.
//! - Views survive a restart: they are rebuilt from the stored history.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::TestServer;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
}

const SCHEMA: &str = "
CREATE STREAM bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, ts TIMESTAMPTZ,
  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
CREATE TABLE users (id BIGINT PRIMARY KEY, country TEXT);";

/// Views under test: (name, query, emit on window close, filter applied to both sides).
const VIEWS: &[(&str, &str, bool, &str)] = &[
    (
        "tumble_final",
        "SELECT window_start, window_end, channel, count(*) AS n, sum(price) AS total, max(price) AS top \
         FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, channel",
        true,
        "window_start < TIMESTAMPTZ '2026-01-02 00:00:00+00'",
    ),
    (
        "tumble_updates",
        "SELECT window_start, channel, count(*) AS n, min(price) AS low \
         FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) GROUP BY window_start, channel",
        false,
        "",
    ),
    (
        "hop_busy",
        "SELECT auction, window_start, count(*) AS n FROM HOP(bids, ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) \
         GROUP BY auction, window_start HAVING count(*) > 1",
        false,
        "",
    ),
    (
        "session_final",
        "SELECT bidder, window_start, window_end, count(*) AS n FROM SESSION(bids, ts, INTERVAL '2' SECOND, bidder) \
         GROUP BY bidder, window_start, window_end",
        true,
        "bidder >= 0",
    ),
    (
        "by_country",
        "SELECT u.country, count(*) AS n, sum(b.price) AS total, min(b.price) AS low \
         FROM bids b JOIN users u ON b.bidder = u.id GROUP BY u.country",
        false,
        "",
    ),
    (
        "user_activity",
        "SELECT u.id, u.country, count(b.auction) AS n FROM users u LEFT JOIN bids b ON b.bidder = u.id \
         GROUP BY u.id, u.country",
        false,
        "",
    ),
    (
        "countries",
        "SELECT count(DISTINCT country) AS n, string_agg(country, ',' ORDER BY country, id) AS names FROM users",
        false,
        "",
    ),
    (
        "top_two",
        "SELECT auction, price, bidder FROM (SELECT auction, price, bidder, \
         ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, bidder) AS rn FROM bids) WHERE rn <= 2",
        false,
        "",
    ),
    (
        "close_pairs",
        "SELECT a.auction, b.auction AS other FROM bids a JOIN bids b ON a.bidder = b.bidder \
         AND a.auction < b.auction AND a.ts BETWEEN b.ts - INTERVAL '3' SECOND AND b.ts + INTERVAL '3' SECOND",
        false,
        "",
    ),
    (
        "channel_stats",
        "SELECT channel, round(avg(price), 6) AS mean, round(stddev(price), 6) AS sd, bool_or(price > 90) AS big, \
         count(DISTINCT bidder) AS bidders FROM bids WHERE auction % 3 <> 1 GROUP BY channel",
        false,
        "",
    ),
    (
        "pairs",
        "SELECT DISTINCT channel, bidder FROM bids UNION ALL SELECT country, id FROM users",
        false,
        "",
    ),
    (
        "bidding_users",
        "SELECT id, country FROM users u WHERE EXISTS (SELECT 1 FROM bids b WHERE b.bidder = u.id AND b.price > 7 * u.id)",
        false,
        "",
    ),
    (
        "idle_users",
        "SELECT id, country FROM users u WHERE NOT EXISTS (SELECT 1 FROM bids b WHERE b.bidder = u.id AND b.channel = 'web' AND b.price > 90)",
        false,
        "",
    ),
    (
        "bidder_steps",
        "SELECT bidder, ts, price, ROW_NUMBER() OVER (PARTITION BY bidder ORDER BY ts, auction, price) AS n, \
         LAG(price, 1, 0) OVER (PARTITION BY bidder ORDER BY ts, auction, price) AS prev FROM bids",
        false,
        "bidder >= 0",
    ),
    (
        "channel_next",
        "SELECT channel, ts, auction, LEAD(price, 2) OVER (PARTITION BY channel ORDER BY ts, auction, bidder, price) AS later, \
         LAG(auction) OVER (PARTITION BY channel ORDER BY ts, auction, bidder, price) AS before FROM bids",
        false,
        "channel <> 'end'",
    ),
    (
        "channel_next_final",
        "SELECT channel, ts, auction, LEAD(price, 2) OVER (PARTITION BY channel ORDER BY ts, auction, bidder, price) AS later FROM bids",
        true,
        "ts < TIMESTAMPTZ '2026-01-01 00:00:30+00'",
    ),
    (
        "known_bids",
        "SELECT auction, bidder, price FROM bids WHERE bidder IN (SELECT id FROM users WHERE country <> 'de')",
        false,
        "",
    ),
];

async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows in the view and not in the batch query, plus the other way round.
async fn differences(
    client: &tokio_postgres::Client,
    name: &str,
    query: &str,
    filter: &str,
) -> i64 {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    let sql = format!(
        "SELECT count(*) FROM ((SELECT * FROM {name}{filter} EXCEPT ALL SELECT * FROM ({query}) q{filter}) \
         UNION ALL (SELECT * FROM ({query}) q{filter} EXCEPT ALL SELECT * FROM {name}{filter})) d"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get(0)
}

/// Load the scenario with `batch` rows per INSERT and check every view against the oracle.
async fn oracle_run(batch: usize, seed: u64) {
    // Every view snapshots its operator state after each input batch and continues from the
    // restored snapshot: a snapshot that loses anything makes a view differ from its query.
    let server = TestServer::start_with(|c| c.streaming.verify_snapshots = true);
    let client = server.connect().await;
    exec(&client, SCHEMA).await;
    // Some history before the views exist (backfill), the rest while they run.
    let mut random = Random(seed);
    let countries = ["de", "fr", "us", "it"];
    for id in 0..12 {
        exec(
            &client,
            &format!("INSERT INTO users VALUES ({id}, '{}')", countries[id % 4]),
        )
        .await;
    }
    let events = 420;
    let base = 1_767_225_600i64; // 2026-01-01 00:00:00 UTC
    let mut rows = Vec::new();
    for i in 0..events {
        // Event time advances 100 ms per event, out of order by up to 4 s (the bound is 5 s).
        let millis = i * 100 - random.below(4000);
        let ts = format!(
            "to_timestamp({}.{:03})",
            base + millis.div_euclid(1000),
            millis.rem_euclid(1000)
        );
        rows.push(format!(
            "({}, {}, {}, '{}', {ts})",
            random.below(15),
            random.below(14),
            random.below(100),
            ["web", "app", "api"][random.below(3) as usize],
        ));
    }
    let (before, after) = rows.split_at(events as usize / 3);
    let insert = |chunk: &[String]| format!("INSERT INTO bids VALUES {}", chunk.join(", "));
    for chunk in before.chunks(batch) {
        exec(&client, &insert(chunk)).await;
    }
    for (name, query, final_only, _) in VIEWS {
        let emit = if *final_only {
            " EMIT ON WINDOW CLOSE"
        } else {
            ""
        };
        exec(
            &client,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}{emit}"),
        )
        .await;
    }
    for (n, chunk) in after.chunks(batch).enumerate() {
        exec(&client, &insert(chunk)).await;
        // The table changes under the running views.
        if n % 5 == 0 {
            let id = random.below(14);
            let change = match random.below(3) {
                0 => format!(
                    "UPDATE users SET country = '{}' WHERE id = {id}",
                    countries[random.below(4) as usize]
                ),
                1 => format!("DELETE FROM users WHERE id = {id}"),
                _ => format!(
                    "INSERT INTO users VALUES ({id}, '{}') ON CONFLICT (id) DO UPDATE SET country = excluded.country",
                    countries[random.below(4) as usize]
                ),
            };
            exec(&client, &change).await;
        }
    }
    // A last event a day later moves the watermark past every real window and session.
    exec(
        &client,
        &format!(
            "INSERT INTO bids VALUES (-1, -1, 0, 'end', to_timestamp({}))",
            base + 86_400
        ),
    )
    .await;
    for (name, query, _, filter) in VIEWS {
        let mut remaining = -1;
        for _ in 0..150 {
            remaining = differences(&client, name, query, filter).await;
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if remaining != 0 {
            let filter = if filter.is_empty() {
                String::new()
            } else {
                format!(" WHERE {filter}")
            };
            let show = |sql: String| {
                let client = &client;
                async move {
                    client
                        .simple_query(&sql)
                        .await
                        .map(|m| {
                            m.iter()
                                .filter_map(|m| match m {
                                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                                        (0..r.len())
                                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                                            .collect::<Vec<_>>()
                                            .join(" | "),
                                    ),
                                    _ => None,
                                })
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                }
            };
            let only_view = show(format!(
                "SELECT * FROM {name}{filter} EXCEPT ALL SELECT * FROM ({query}) q{filter} LIMIT 10"
            ))
            .await;
            let only_batch = show(format!(
                "SELECT * FROM ({query}) q{filter} EXCEPT ALL SELECT * FROM {name}{filter} LIMIT 10"
            ))
            .await;
            panic!(
                "view {name} differs from its batch query in {remaining} rows (batch size {batch})\n\
                 only in the view: {only_view:#?}\nonly in the batch: {only_batch:#?}"
            );
        }
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .await
            .expect("count")
            .get(0);
        assert!(
            rows > 0,
            "view {name} is empty: the comparison proves nothing"
        );
    }
    let late: i64 = client
        .query_one(
            "SELECT sum(late_rows)::BIGINT FROM eddy_catalog.materialized_views",
            &[],
        )
        .await
        .expect("late rows")
        .get(0);
    assert_eq!(late, 0, "no event was behind the watermark");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_their_batch_queries_at_several_batch_sizes() {
    for (batch, seed) in [(1, 7), (13, 11), (140, 3)] {
        oracle_run(batch, seed).await;
    }
}

/// `state_bytes` of a view from `eddy_catalog.materialized_views`.
async fn state_bytes(client: &tokio_postgres::Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT state_bytes::BIGINT FROM eddy_catalog.materialized_views WHERE name = $1",
            &[&name],
        )
        .await
        .expect("state")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_state_stops_growing() {
    let server = TestServer::start();
    let client = server.connect().await;
    exec(&client, SCHEMA).await;
    exec(
        &client,
        "CREATE MATERIALIZED VIEW per_window AS SELECT window_start, window_end, auction, count(*) AS n \
         FROM TUMBLE(bids, ts, INTERVAL '2' SECOND) GROUP BY window_start, window_end, auction EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW hop_counts AS SELECT window_start, bidder, sum(price) AS total \
         FROM HOP(bids, ts, INTERVAL '1' SECOND, INTERVAL '4' SECOND) GROUP BY window_start, bidder;
         CREATE MATERIALIZED VIEW near AS SELECT a.auction, b.auction AS other FROM bids a JOIN bids b \
         ON a.bidder = b.bidder AND a.ts BETWEEN b.ts - INTERVAL '1' SECOND AND b.ts + INTERVAL '1' SECOND;
         CREATE MATERIALIZED VIEW every_auction AS SELECT auction, count(*) AS n FROM bids GROUP BY auction;",
    )
    .await;
    let bounded = ["per_window", "hop_counts", "near"];
    let mut samples: Vec<Vec<i64>> = vec![Vec::new(); 4];
    let base = 1_767_225_600i64;
    for round in 0..30i64 {
        let rows: Vec<String> = (0..200i64)
            .map(|i| {
                let n = round * 200 + i;
                // Ten events per second of event time; auctions never repeat.
                format!(
                    "({n}, {}, {}, 'web', to_timestamp({}.{:03}))",
                    n % 20,
                    n % 97,
                    base + n / 10,
                    (n % 10) * 100
                )
            })
            .collect();
        exec(
            &client,
            &format!("INSERT INTO bids VALUES {}", rows.join(", ")),
        )
        .await;
        // Let the views catch up with this round before measuring.
        for _ in 0..100 {
            let n: i64 = client
                .query_one("SELECT count(*) FROM every_auction", &[])
                .await
                .expect("count")
                .get(0);
            if n == (round + 1) * 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, name) in bounded.iter().chain(["every_auction"].iter()).enumerate() {
            samples[i].push(state_bytes(&client, name).await);
        }
    }
    for (i, name) in bounded.iter().enumerate() {
        let early = samples[i][5..10].iter().copied().max().unwrap_or(0);
        let late = samples[i][25..].iter().copied().max().unwrap_or(0);
        assert!(early > 0, "{name} holds state while windows are open");
        assert!(
            late <= early * 3 / 2,
            "{name} state keeps growing: {:?}",
            samples[i]
        );
    }
    let growing = &samples[3];
    assert!(
        growing[29] > growing[5] * 4,
        "a view keyed by ever-new auctions grows, or the measure is wrong: {growing:?}"
    );
}

/// Rows of a FETCH as (op, the view's columns as text).
async fn fetch(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Vec<(i64, String, Vec<Option<String>>)> {
    let mut out = Vec::new();
    for message in client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let time: i64 = row.get(0).and_then(|t| t.parse().ok()).expect("timestamp");
            let op = row.get(1).expect("op").to_string();
            let values = (2..row.len())
                .map(|i| row.get(i).map(str::to_string))
                .collect();
            out.push((time, op, values));
        }
    }
    out
}

fn ops(rows: &[(i64, String, Vec<Option<String>>)]) -> Vec<String> {
    let mut ops: Vec<String> = rows
        .iter()
        .map(|(_, op, values)| {
            let values: Vec<&str> = values
                .iter()
                .map(|v| v.as_deref().unwrap_or("NULL"))
                .collect();
            format!("{op} {}", values.join(" "))
        })
        .collect();
    ops.sort();
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_through_cursors_and_resume() {
    let server = TestServer::start();
    let client = server.connect().await;
    exec(&client, SCHEMA).await;
    exec(
        &client,
        "INSERT INTO bids VALUES (1, 1, 10, 'web', '2026-01-01 00:00:01+00'), (2, 1, 5, 'app', '2026-01-01 00:00:02+00');
         CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS n FROM bids GROUP BY channel;",
    )
    .await;
    exec(&client, "DECLARE c CURSOR FOR SUBSCRIBE TO per_channel").await;
    let snapshot = fetch(&client, "FETCH ALL c WITH (timeout = '2s')").await;
    assert_eq!(ops(&snapshot), vec!["insert app 1", "insert web 1"]);
    exec(
        &client,
        "INSERT INTO bids VALUES (3, 2, 7, 'web', '2026-01-01 00:00:03+00')",
    )
    .await;
    let changes = fetch(&client, "FETCH 10 c WITH (timeout = '10s')").await;
    assert_eq!(ops(&changes), vec!["delete web 1", "insert web 2"]);
    let seen = changes.iter().map(|(t, _, _)| *t).max().expect("a change");
    assert!(seen >= snapshot[0].0, "timestamps do not go back");
    // Nothing more: a FETCH with a timeout returns no rows.
    assert!(
        fetch(&client, "FETCH 10 c WITH (timeout = '200ms')")
            .await
            .is_empty()
    );
    exec(&client, "CLOSE c").await;
    // Changes while the client is away are delivered on resume, none twice.
    exec(
        &client,
        "INSERT INTO bids VALUES (4, 2, 1, 'api', '2026-01-01 00:00:04+00')",
    )
    .await;
    exec(
        &client,
        &format!("DECLARE d CURSOR FOR SUBSCRIBE per_channel AS OF {seen} WITH (SNAPSHOT = false)"),
    )
    .await;
    let resumed = fetch(&client, "FETCH ALL d WITH (timeout = '2s')").await;
    assert_eq!(ops(&resumed), vec!["insert api 1"]);
    // A query can be subscribed to directly, and PROGRESS reports time passing.
    exec(
        &client,
        "DECLARE q CURSOR FOR SUBSCRIBE (SELECT bidder, sum(price) AS total FROM bids GROUP BY bidder) WITH (PROGRESS)",
    )
    .await;
    let rows = fetch(&client, "FETCH ALL q WITH (timeout = '3s')").await;
    assert!(ops(&rows).contains(&"insert 1 15".to_string()), "{rows:?}");
    assert!(ops(&rows).contains(&"insert 2 8".to_string()), "{rows:?}");
    let progress = fetch(&client, "FETCH 1 q WITH (timeout = '3s')").await;
    assert_eq!(progress.first().map(|r| r.1.as_str()), Some("progress"));
    // Errors are clear.
    let e = client
        .simple_query("FETCH 1 nope")
        .await
        .expect_err("unknown cursor");
    assert_eq!(e.code().map(|c| c.code()), Some("34000"));
    let e = client
        .simple_query("SUBSCRIBE per_channel WITH (SNAPSHOT = maybe)")
        .await
        .expect_err("bad option");
    assert_eq!(e.code().map(|c| c.code()), Some("22023"));
    let e = client
        .simple_query("SUBSCRIBE nothing_here")
        .await
        .expect_err("unknown view");
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"));
}

#[test]
fn subscribe_streams_into_psql_until_cancelled() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = TestServer::start();
    runtime.block_on(async {
        let client = server.connect().await;
        exec(&client, SCHEMA).await;
        exec(
            &client,
            "INSERT INTO bids VALUES (1, 1, 10, 'web', '2026-01-01 00:00:01+00');
             CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS n FROM bids GROUP BY channel;",
        )
        .await;
    });
    for (round, statement) in [
        "SUBSCRIBE TO per_channel",
        "COPY (SUBSCRIBE per_channel) TO STDOUT",
    ]
    .into_iter()
    .enumerate()
    {
        // Each round adds one web bid: the count starts at round + 1.
        let before = round + 1;
        // psql writes COPY data through stdio, which is line-buffered on a terminal (as typed)
        // but block-buffered into a pipe: stdbuf gives the pipe the terminal's behaviour.
        let mut psql = std::process::Command::new("stdbuf")
            .args(["-oL", "psql", &server.url(), "-X", "-c", statement])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql is installed (.ci/run installs it)");
        let mut lines = BufReader::new(psql.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("a line").expect("text");
        assert!(
            first.ends_with(&format!("\tinsert\tweb\t{before}")),
            "{first}"
        );
        runtime.block_on(async {
            let client = server.connect().await;
            exec(
                &client,
                "INSERT INTO bids VALUES (2, 1, 3, 'web', '2026-01-01 00:00:02+00')",
            )
            .await;
        });
        let mut next: Vec<String> = (0..2)
            .map(|_| lines.next().expect("a line").expect("text"))
            .collect();
        next.sort();
        assert!(
            next[0].ends_with(&format!("\tdelete\tweb\t{before}")),
            "{next:?}"
        );
        assert!(
            next[1].ends_with(&format!("\tinsert\tweb\t{}", before + 1)),
            "{next:?}"
        );
        // Ctrl-C: psql sends a cancel request; the server ends the COPY with 57014.
        let pid = psql.id().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        let output = psql.wait_with_output().expect("psql exits");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("canceling statement due to user request"),
            "{stderr}"
        );
    }
}

#[test]
fn views_are_rebuilt_after_a_restart() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_path_buf();
    let start = || {
        let path = path.clone();
        TestServer::start_with(move |config| config.data_dir = path)
    };
    let query = "SELECT window_start, channel, count(*) AS n FROM TUMBLE(bids, ts, INTERVAL '1' MINUTE) \
                 GROUP BY window_start, channel ORDER BY 1, 2";
    let before: Vec<(String, String, i64)> = {
        let server = start();
        runtime.block_on(async {
            let client = server.connect().await;
            exec(&client, SCHEMA).await;
            exec(
                &client,
                &format!(
                    "INSERT INTO bids VALUES (1, 1, 10, 'web', '2026-01-01 00:00:01+00'), (2, 2, 5, 'app', '2026-01-01 00:01:02+00'), (3, 2, 5, 'app', '2026-01-01 00:03:00+00');
                     CREATE MATERIALIZED VIEW w AS {query} EMIT ON WINDOW CLOSE"
                ),
            )
            .await;
            client
                .query("SELECT window_start::TEXT, channel, n FROM w ORDER BY 1, 2", &[])
                .await
                .expect("select")
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        })
    };
    assert_eq!(before.len(), 2, "{before:?}");
    let server = start();
    runtime.block_on(async {
        let client = server.connect().await;
        let mut after = Vec::new();
        for _ in 0..100 {
            after = client
                .query(
                    "SELECT window_start::TEXT, channel, n FROM w ORDER BY 1, 2",
                    &[],
                )
                .await
                .expect("select")
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<Vec<(String, String, i64)>>();
            if after == before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(after, before);
        // And it goes on with new rows.
        exec(
            &client,
            "INSERT INTO bids VALUES (4, 1, 1, 'web', '2026-01-01 00:05:00+00')",
        )
        .await;
        let mut rows = 0;
        for _ in 0..100 {
            rows = client
                .query_one("SELECT count(*) FROM w", &[])
                .await
                .expect("count")
                .get::<_, i64>(0);
            if rows == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(rows, 3);
    });
}
