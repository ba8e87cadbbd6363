//! Grafana's PostgreSQL data source, replayed: the exact SQL it sends (from
//! `../shared/conformance/postgres-clients.md`), over the protocol it uses, asserting the rows and
//! the column types Grafana keys on (it reads the RowDescription type OIDs: timestamptz/timestamp
//! for time columns, numerics as values, text as the metric).
//!
//! Panel and metadata queries go through the simple protocol (pgx `Exec`); the backend schema
//! API uses the extended protocol with `$1`/`$2` text parameters (pgx `Query`). Column types are
//! read from a Describe of the same SQL, which answers with the same RowDescription.

mod common;

use common::TestServer;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn setup(server: &TestServer) -> Client {
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE games (id BIGINT NOT NULL, name VARCHAR(40), ts TIMESTAMPTZ, \
               score DOUBLE PRECISION, player TEXT, day DATE);
             INSERT INTO games VALUES
               (1, 'alpha', '2018-04-12T18:00:30Z', 1.5, 'ana', '2018-04-12'),
               (2, 'beta',  '2018-04-12T18:01:10Z', 2.5, 'bob', '2018-04-12'),
               (3, 'gamma', '2018-04-12T18:04:59.123456789Z', 4.0, 'ana', '2018-04-12'),
               (4, 'delta', '2018-04-12T19:00:00Z', 8.0, 'bob', '2018-04-13');",
        )
        .await
        .expect("setup");
    client
}

/// Rows of a simple query as text, NULL as "NULL".
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Column names and types as a Describe reports them.
async fn described(client: &Client, sql: &str) -> Vec<(String, Type)> {
    let statement = client
        .prepare(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    statement
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect()
}

/// name, data_type, udt_name, numeric_precision, numeric_scale
type ColumnInfo = (String, String, String, Option<i32>, Option<i32>);

fn strings(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_and_test() {
    let server = TestServer::start();
    let client = server.connect().await;
    // pgx's ping, lib/pq's ping, and a SQLCommenter-tagged query
    for ping in ["-- ping", ";"] {
        let messages = client.simple_query(ping).await.expect(ping);
        assert!(
            messages
                .iter()
                .all(|m| !matches!(m, SimpleQueryMessage::Row(_))),
            "{ping}"
        );
    }
    let rows = simple_rows(
        &client,
        "SELECT 1 AS value\n/*application='grafana',source='bi',route='test',feature='repro'*/;",
    )
    .await;
    assert_eq!(rows, strings(&[&["1"]]));

    let probe = "SELECT current_setting('server_version_num')::int/100 as version";
    assert_eq!(simple_rows(&client, probe).await, strings(&[&["1600"]]));
    let (name, ty) = &described(&client, probe).await[0];
    assert_eq!(name, "version");
    assert!(matches!(*ty, Type::INT4 | Type::INT8), "{ty}");
    // No TimescaleDB: the extension probe answers with no rows.
    let rows = simple_rows(
        &client,
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .await;
    assert!(rows.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_schema_browser() {
    let server = TestServer::start();
    let client = setup(&server).await;
    // Tables with no schema chosen: unqualified when their schema is on the search_path.
    let listing = "SELECT
    CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS \"table\"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN 
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN 0 ELSE 1 END, 1";
    // EddyDB's system tables (view health) are offered too, schema-qualified.
    assert_eq!(
        simple_rows(&client, listing).await,
        strings(&[
            &["games"],
            &["eddy_catalog.dead_letters"],
            &["eddy_catalog.drift_events"],
            &["eddy_catalog.late_rows"],
            &["eddy_catalog.materialized_views"],
            &["eddy_catalog.model_monitors"],
            &["eddy_catalog.model_versions"],
            &["eddy_catalog.models"],
            &["eddy_catalog.sessions"],
            &["eddy_catalog.sinks"],
            &["eddy_catalog.source_partitions"],
            &["eddy_catalog.sources"],
            &["eddy_catalog.storage_files"],
            &["eddy_catalog.streams"],
            &["eddy_catalog.tables"]
        ])
    );
    assert_eq!(
        described(&client, listing).await,
        vec![("table".to_string(), Type::TEXT)]
    );
    let tables = "SELECT quote_ident(table_name) AS \"table\"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1";
    assert_eq!(simple_rows(&client, tables).await, strings(&[&["games"]]));

    let schemas = "SELECT schema_name AS \"name\"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name";
    assert_eq!(
        simple_rows(&client, schemas).await,
        strings(&[&["eddy_catalog"], &["public"]])
    );

    let columns = "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('public.games'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('public.games'))[1]
          AND quote_ident(table_name) = (parse_ident('public.games'))[2]
        ELSE quote_ident(table_name) = 'public.games'
      END";
    assert_eq!(
        simple_rows(&client, columns).await,
        strings(&[
            &["id", "bigint"],
            &["name", "character varying"],
            &["ts", "timestamp with time zone"],
            &["score", "double precision"],
            &["player", "text"],
            &["day", "date"],
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_schema_api_with_parameters() {
    let server = TestServer::start();
    let client = setup(&server).await;
    let schemas = client
        .query(
            "SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name",
            &[],
        )
        .await
        .expect("schemas");
    let names: Vec<String> = schemas.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["eddy_catalog", "public"]);

    let tables = client
        .query(
            "SELECT table_name FROM information_schema.tables
		 WHERE table_schema = $1 AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name",
            &[&"public"],
        )
        .await
        .expect("tables");
    let names: Vec<String> = tables.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["games"]);

    let columns = client
        .query(
            "SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = $1 AND table_name = $2
		 ORDER BY ordinal_position",
            &[&"public", &"games"],
        )
        .await
        .expect("columns");
    let got: Vec<ColumnInfo> = columns
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let want = [
        ("id", "bigint", "int8", Some(64), Some(0)),
        ("name", "character varying", "varchar", None, None),
        ("ts", "timestamp with time zone", "timestamptz", None, None),
        ("score", "double precision", "float8", Some(53), None),
        ("player", "text", "text", None, None),
        ("day", "date", "date", None, None),
    ];
    let want: Vec<ColumnInfo> = want
        .iter()
        .map(|(a, b, c, d, e)| (a.to_string(), b.to_string(), c.to_string(), *d, *e))
        .collect();
    assert_eq!(got, want);

    // the distinct-value probe per column
    let rows = simple_rows(
        &client,
        "SELECT 'player' AS col_name, \"player\"::text AS val FROM (SELECT DISTINCT \"player\" \
         FROM \"public\".\"games\" WHERE \"player\" IS NOT NULL ORDER BY \"player\" LIMIT 100) sub_0 \
         UNION ALL SELECT 'score' AS col_name, \"score\"::text AS val FROM (SELECT DISTINCT \"score\" \
         FROM \"public\".\"games\" WHERE \"score\" IS NOT NULL ORDER BY \"score\" LIMIT 100) sub_1",
    )
    .await;
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.contains(&vec!["player".to_string(), "ana".to_string()]));
    assert!(rows.contains(&vec!["score".to_string(), "2.5".to_string()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn macro_expanded_panel_queries() {
    let server = TestServer::start();
    let client = setup(&server).await;

    // $__timeGroupAlias(ts,'1m'), $__timeFilter(ts) with 9 fractional digits, metric column
    let grouped = "SELECT
  floor(extract(epoch from ts)/60)*60 AS \"time\",
  sum(score) AS score,
  player AS metric
FROM games
WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00.000000000Z'
GROUP BY 1, 3
ORDER BY 1";
    assert_eq!(
        simple_rows(&client, grouped).await,
        strings(&[
            &["1523556000", "1.5", "ana"],
            &["1523556060", "2.5", "bob"],
            &["1523556240", "4", "ana"],
        ])
    );
    let types: Vec<Type> = described(&client, grouped)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert!(
        matches!(types[0], Type::FLOAT8 | Type::NUMERIC | Type::INT8),
        "time is numeric epoch seconds: {:?}",
        types[0]
    );
    assert_eq!(types[1], Type::FLOAT8);
    assert_eq!(types[2], Type::TEXT);

    // $__time(ts) and $__timeFilter(ts): a native time column
    let raw = "SELECT ts AS \"time\", score FROM games \
               WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:01:00.999999999Z' ORDER BY 1";
    assert_eq!(
        simple_rows(&client, raw).await,
        strings(&[&["2018-04-12 18:00:30+00", "1.5"]])
    );
    assert_eq!(
        described(&client, raw).await,
        vec![
            ("time".to_string(), Type::TIMESTAMPTZ),
            ("score".to_string(), Type::FLOAT8)
        ]
    );

    // TimescaleDB mode: $__timeGroup(ts,'1m') => time_bucket('60.000s', ts)
    let bucketed = "SELECT time_bucket('60.000s',ts) AS \"time\", count(*) AS n FROM games \
                    WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z' \
                    GROUP BY 1 ORDER BY 1";
    assert_eq!(
        simple_rows(&client, bucketed).await,
        strings(&[
            &["2018-04-12 18:00:00+00", "1"],
            &["2018-04-12 18:01:00+00", "1"],
            &["2018-04-12 18:04:00+00", "1"],
        ])
    );
    assert_eq!(described(&client, bucketed).await[0].1, Type::TIMESTAMPTZ);

    // $__timeEpoch(ts), $__unixEpochFilter on an epoch expression, a date time column
    let epoch = "SELECT extract(epoch from ts) as \"time\", score FROM games \
                 WHERE extract(epoch from ts) >= 1523556000 AND extract(epoch from ts) <= 1523556300 \
                 ORDER BY 1";
    assert_eq!(simple_rows(&client, epoch).await.len(), 3);
    let days = "SELECT day AS \"time\", sum(score) AS total FROM games GROUP BY 1 ORDER BY 1";
    assert_eq!(
        simple_rows(&client, days).await,
        strings(&[&["2018-04-12", "8"], &["2018-04-13", "8"]])
    );
    assert_eq!(described(&client, days).await[0].1, Type::DATE);

    // $__timeFrom() / $__timeTo() are untyped literals compared with a timestamptz column
    let from_to = "SELECT count(*) FROM games WHERE ts >= '2018-04-12T18:00:00Z' AND ts < '2018-04-12T18:05:00Z'";
    assert_eq!(simple_rows(&client, from_to).await, strings(&[&["3"]]));
}

/// The time range a dashboard query is expanded with: the last hour and the next.
fn dashboard_range() -> (String, String) {
    let now = chrono::Utc::now();
    let format = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    (
        format(now - chrono::Duration::hours(1)),
        format(now + chrono::Duration::hours(1)),
    )
}

/// A Grafana interval (`'10s'`, `'1m'`, `'20ms'`) in seconds, as `macros.go` prints it.
fn interval_seconds(interval: &str) -> String {
    let interval = interval.trim().trim_matches('\'');
    let (number, unit) = interval.split_at(
        interval
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(interval.len()),
    );
    let number: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("interval {interval}"));
    let seconds = number
        * match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => panic!("interval unit {other}"),
        };
    format!("{seconds}")
}

/// Grafana's macro expansion (`macros.go` of its PostgreSQL data source, as
/// `../shared/conformance/postgres-clients.md` gives it) for the range `from`..`to`. A macro
/// this does not know fails the test, so a dashboard cannot use one the test skips.
fn expand_macros(sql: &str, from: &str, to: &str) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let name_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let open = &after[name_len..];
        assert!(
            open.starts_with('('),
            "macro $__{name} without arguments in {sql}"
        );
        let mut depth = 0;
        let close = open
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("unclosed macro in {sql}"));
        let args: Vec<&str> = open[1..close].split(',').map(str::trim).collect();
        let expanded = match name {
            "time" => format!("{} AS \"time\"", args[0]),
            "timeEpoch" => format!("extract(epoch from {}) as \"time\"", args[0]),
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "timeFrom" => format!("'{from}'"),
            "timeTo" => format!("'{to}'"),
            "timeGroup" | "timeGroupAlias" => {
                let n = interval_seconds(args[1]);
                let group = format!("floor(extract(epoch from {})/{n})*{n}", args[0]);
                if name == "timeGroupAlias" {
                    format!("{group} AS \"time\"")
                } else {
                    group
                }
            }
            other => panic!("the test does not expand $__{other}: add it as macros.go does"),
        };
        out.push_str(&expanded);
        rest = &open[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every (dashboard title, panel title, format, SQL or PromQL) of the shipped dashboards; the
/// bool says whether it is SQL for the EddyDB data source (else PromQL for Prometheus).
fn dashboard_queries() -> Vec<(String, String, String, String, bool)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/grafana/dashboards");
    let mut queries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("docker/grafana/dashboards")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let title = dashboard["title"].as_str().unwrap_or_default().to_string();
        let mut panels: Vec<serde_json::Value> =
            dashboard["panels"].as_array().cloned().unwrap_or_default();
        while let Some(panel) = panels.pop() {
            panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                let source = target["datasource"]["uid"]
                    .as_str()
                    .or(panel["datasource"]["uid"].as_str())
                    .unwrap_or_default()
                    .to_string();
                let (query, sql) = match (target["rawSql"].as_str(), target["expr"].as_str()) {
                    (Some(sql), _) => (sql.to_string(), true),
                    (None, Some(expr)) => (expr.to_string(), false),
                    _ => continue,
                };
                assert_eq!(
                    source,
                    if sql { "eddydb" } else { "prometheus" },
                    "{title}: {}",
                    panel["title"]
                );
                queries.push((
                    title.clone(),
                    panel["title"].as_str().unwrap_or_default().to_string(),
                    target["format"]
                        .as_str()
                        .unwrap_or("time_series")
                        .to_string(),
                    query,
                    sql,
                ));
            }
        }
    }
    queries
}

/// The demo (`--demo`) and the dashboards shipped in `docker/grafana`: every SQL query of
/// every panel, with Grafana's macros expanded, runs against a server running the demo and
/// returns rows of the types Grafana needs (a `time` column of a time type or epoch number,
/// numeric values, at most a text `metric`); every PromQL expression is valid (`promtool check
/// rules`) and names only metric families `/metrics` serves. A restart with `--demo` keeps
/// what exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_feeds_every_shipped_dashboard_query() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = common::process::EddyProcess::start_with_args(data_dir.path(), &["--demo"], &[]);
    let client = process.connect().await;
    let queries = dashboard_queries();
    let sql: Vec<_> = queries.iter().filter(|q| q.4).collect();
    assert!(sql.len() >= 8, "{} SQL panels", sql.len());
    let (from, to) = dashboard_range();
    // Closed minutes come within about a minute of the start; until then some panels are empty.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    for (dashboard, panel, format, query, _) in &sql {
        let expanded = expand_macros(query, &from, &to);
        loop {
            let rows = simple_rows(&client, &expanded).await;
            if !rows.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{dashboard} / {panel}: no rows from\n{expanded}"
            );
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        let columns = described(&client, &expanded).await;
        let numeric = |t: &Type| {
            [
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::FLOAT4,
                Type::FLOAT8,
                Type::NUMERIC,
            ]
            .contains(t)
        };
        if format == "time_series" {
            let time = columns
                .iter()
                .find(|(name, _)| name == "time")
                .unwrap_or_else(|| panic!("{panel}: a time series needs a \"time\" column"));
            assert!(
                [Type::TIMESTAMPTZ, Type::TIMESTAMP, Type::DATE].contains(&time.1)
                    || numeric(&time.1),
                "{panel}: time column of type {}",
                time.1
            );
            for (name, t) in columns.iter().filter(|(name, _)| name != "time") {
                assert!(
                    numeric(t) || (name == "metric" && *t == Type::TEXT),
                    "{panel}: column {name} of type {t} is neither a value nor the metric"
                );
            }
        }
    }

    // PromQL: valid, and naming only families the server serves.
    let metrics = common::http::metrics(process.http).await;
    let families: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, (_, panel, _, expr, _)) in queries.iter().filter(|q| !q.4).enumerate() {
        // Grafana's global variables, as it substitutes them before asking Prometheus.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("$__range", "1h");
        assert!(
            !expr.contains('$'),
            "{panel}: a variable the test does not substitute: {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("quoted")
        ));
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("eddy_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|f| families.contains(f))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "{panel}: {name} is not served by /metrics"
            );
            rest = &rest[at + name.len()..];
        }
    }
    let file = data_dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).expect("rules file");
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (apt-get install prometheus; .ci/run does)");
    assert!(
        checked.status.success(),
        "promtool rejects a dashboard expression: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A restart with --demo leaves the demo as it is.
    let views = common::scalar(
        &client,
        "SELECT count(*) FROM eddy_catalog.materialized_views",
    )
    .await;
    process.kill();
    let process = common::process::EddyProcess::start_with_args(data_dir.path(), &["--demo"], &[]);
    let client = process.connect().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.materialized_views"
        )
        .await,
        views
    );
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM category").await,
        5
    );
    assert!(
        process.logged("demo").is_empty(),
        "{:?}",
        process.logged("demo")
    );
}
