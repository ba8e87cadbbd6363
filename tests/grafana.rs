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
            &["eddy_catalog.sinks"],
            &["eddy_catalog.source_partitions"],
            &["eddy_catalog.sources"]
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
