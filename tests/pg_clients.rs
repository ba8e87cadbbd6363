//! tokio-postgres against a real server: the extended protocol (Parse/Describe/Bind/Execute,
//! binary results for every type, named statements, row-limited portals), SQLSTATEs, cancel,
//! statement_timeout, malformed protocol messages, authentication and TLS.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::TestServer;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_for_every_type() {
    let server = TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE TABLE every (b BOOLEAN, i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, \
             f8 DOUBLE PRECISION, n NUMERIC(12,3), t TEXT, v VARCHAR(10), by BYTEA, d DATE, \
             tm TIME, ts TIMESTAMP, tz TIMESTAMPTZ, j JSON, jb JSONB, u UUID);
             INSERT INTO every VALUES (true, 1, 2, 3, 1.5, 2.25, 12.345, 'text', 'var', '\\x00ff',
               '2024-01-31', '01:02:03.5', '2024-01-31 01:02:03.25', '2024-01-31 01:02:03+00',
               '{\"a\": 1}', '{\"b\": 2}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
             INSERT INTO every VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
        )
        .await
        .expect("setup");
    // query() = Parse + Describe + Bind with binary result formats + Execute.
    let rows = client
        .query("SELECT * FROM every ORDER BY i4 NULLS LAST", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 2);
    let types: Vec<Type> = rows[0]
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    assert_eq!(
        types,
        vec![
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::VARCHAR,
            Type::BYTEA,
            Type::DATE,
            Type::TIME,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::JSON,
            Type::JSONB,
            Type::UUID,
        ]
    );
    let r = &rows[0];
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, i16>(1), 1);
    assert_eq!(r.get::<_, i32>(2), 2);
    assert_eq!(r.get::<_, i64>(3), 3);
    assert_eq!(r.get::<_, f32>(4), 1.5);
    assert_eq!(r.get::<_, f64>(5), 2.25);
    assert_eq!(r.get::<_, String>(7), "text");
    assert_eq!(r.get::<_, String>(8), "var");
    assert_eq!(r.get::<_, Vec<u8>>(9), vec![0u8, 255]);
    assert_eq!(r.get::<_, chrono::NaiveDate>(10).to_string(), "2024-01-31");
    assert_eq!(
        r.get::<_, chrono::NaiveTime>(11).to_string(),
        "01:02:03.500"
    );
    assert_eq!(
        r.get::<_, chrono::NaiveDateTime>(12).to_string(),
        "2024-01-31 01:02:03.250"
    );
    assert_eq!(
        r.get::<_, chrono::DateTime<chrono::Utc>>(13).to_rfc3339(),
        "2024-01-31T01:02:03+00:00"
    );
    assert_eq!(
        r.get::<_, serde_json::Value>(14),
        serde_json::json!({"a": 1})
    );
    assert_eq!(
        r.get::<_, serde_json::Value>(15),
        serde_json::json!({"b": 2})
    );
    assert_eq!(
        r.get::<_, uuid::Uuid>(16).to_string(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    // numeric in binary (decoded here from the wire format) and through its text form
    assert_eq!(r.get::<_, BinaryNumeric>(6).0, "12.345");
    let n = client
        .query_one("SELECT n::text FROM every WHERE i4 = 2", &[])
        .await
        .expect("numeric text");
    assert_eq!(n.get::<_, String>(0), "12.345");
    let negative = client
        .query_one("SELECT CAST(-1234567.0089 AS NUMERIC(20, 4))", &[])
        .await
        .expect("negative numeric");
    assert_eq!(negative.get::<_, BinaryNumeric>(0).0, "-1234567.0089");
    // NULLs in every column
    for i in 0..17 {
        assert!(
            rows[1].get::<_, RawValue>(i).0.is_none(),
            "column {i} of the NULL row"
        );
    }
    assert_eq!(rows[1].get::<_, Option<i64>>(3), None);
    assert_eq!(rows[1].get::<_, Option<chrono::NaiveDate>>(10), None);
    // arrays and intervals
    let row = client
        .query_one(
            "SELECT make_array(1, 2, 3) AS a, make_array('x', NULL) AS s",
            &[],
        )
        .await
        .expect("arrays");
    assert_eq!(row.get::<_, Vec<i64>>(0), vec![1, 2, 3]);
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(1),
        vec![Some("x".to_string()), None]
    );
    let row = client
        .query_one("SELECT INTERVAL '1 day 2 hours'", &[])
        .await
        .expect("interval");
    assert_eq!(row.columns()[0].type_(), &Type::INTERVAL);
    let interval = row.get::<_, BinaryInterval>(0);
    assert_eq!(
        (interval.months, interval.days, interval.micros),
        (0, 1, 2 * 3600 * 1_000_000)
    );
    let row = client
        .query_one("SELECT INTERVAL '1 year 2 months 3 days 4.5 seconds'", &[])
        .await
        .expect("interval");
    let interval = row.get::<_, BinaryInterval>(0);
    assert_eq!(
        (interval.months, interval.days, interval.micros),
        (14, 3, 4_500_000)
    );
}

/// Any value's raw bytes; `None` for NULL.
struct RawValue(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// An `interval` as PostgreSQL sends it in binary: microseconds, days, months.
struct BinaryInterval {
    micros: i64,
    days: i32,
    months: i32,
}

impl<'a> tokio_postgres::types::FromSql<'a> for BinaryInterval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw: [u8; 16] = raw.try_into()?;
        Ok(BinaryInterval {
            micros: i64::from_be_bytes(raw[0..8].try_into()?),
            days: i32::from_be_bytes(raw[8..12].try_into()?),
            months: i32::from_be_bytes(raw[12..16].try_into()?),
        })
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

/// A `numeric` decoded from PostgreSQL's binary format (base-10000 digits, weight, sign,
/// display scale) into its text form.
struct BinaryNumeric(String);

impl<'a> tokio_postgres::types::FromSql<'a> for BinaryNumeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            Ok(i16::from_be_bytes(
                raw.get(i..i + 2).ok_or("short")?.try_into()?,
            ))
        };
        let (ndigits, weight, sign, dscale) = (word(0)?, word(2)?, word(4)?, word(6)?);
        let digits: Vec<i16> = (0..ndigits as usize)
            .map(|i| word(8 + 2 * i))
            .collect::<Result<_, _>>()?;
        let digit = |position: i32| -> i16 {
            usize::try_from(position)
                .ok()
                .and_then(|p| digits.get(p).copied())
                .unwrap_or(0)
        };
        let mut text = String::new();
        if sign == 0x4000 {
            text.push('-');
        }
        // integer part: digit groups 0..=weight
        if weight < 0 {
            text.push('0');
        } else {
            for g in 0..=i32::from(weight) {
                let d = digit(g);
                if g == 0 {
                    text.push_str(&d.to_string());
                } else {
                    text.push_str(&format!("{d:04}"));
                }
            }
        }
        if dscale > 0 {
            let mut fraction = String::new();
            let mut g = i32::from(weight) + 1;
            while fraction.len() < dscale as usize {
                fraction.push_str(&format!("{:04}", digit(g)));
                g += 1;
            }
            fraction.truncate(dscale as usize);
            text.push('.');
            text.push_str(&fraction);
        }
        Ok(BinaryNumeric(text))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_parameters() {
    let server = TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, born TIMESTAMPTZ)")
        .await
        .expect("create");
    // Parse with declared parameter types, reused many times (named statement).
    let insert = client
        .prepare_typed(
            "INSERT INTO users VALUES ($1, $2, $3, $4)",
            &[Type::INT8, Type::TEXT, Type::FLOAT8, Type::TIMESTAMPTZ],
        )
        .await
        .expect("prepare insert");
    assert!(insert.columns().is_empty(), "INSERT describes as NoData");
    let born: chrono::DateTime<chrono::Utc> = "2000-01-01T00:00:00Z".parse().expect("ts");
    for i in 0..5i64 {
        let n = client
            .execute(
                &insert,
                &[&i, &format!("user{i}"), &(i as f64 * 1.5), &born],
            )
            .await
            .expect("insert");
        assert_eq!(n, 1);
    }
    // Parse without parameter types: the server infers them from the query.
    let select = client
        .prepare("SELECT name, score FROM users WHERE id = $1")
        .await
        .expect("prepare");
    assert_eq!(select.params(), &[Type::INT8]);
    assert_eq!(select.columns().len(), 2);
    let row = client.query_one(&select, &[&3i64]).await.expect("select");
    assert_eq!(row.get::<_, String>(0), "user3");
    assert_eq!(row.get::<_, f64>(1), 4.5);
    let rows = client
        .query(
            "SELECT id FROM users WHERE name LIKE $1 AND born < $2 ORDER BY id",
            &[&"user%", &chrono::Utc::now()],
        )
        .await
        .expect("text + timestamptz params");
    assert_eq!(rows.len(), 5);
    // NULL parameters
    let row = client
        .query_one("SELECT $1::BIGINT IS NULL", &[&None::<i64>])
        .await
        .expect("null param");
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_with_row_limits() {
    let server = TestServer::start();
    let mut client = server.connect().await;
    client
        .batch_execute("CREATE TABLE nums AS SELECT * FROM generate_series(1, 10) AS t(n)")
        .await
        .expect("create");
    let tx = client.transaction().await.expect("begin");
    let stmt = tx
        .prepare("SELECT n FROM nums ORDER BY n")
        .await
        .expect("prepare");
    let portal = tx.bind(&stmt, &[]).await.expect("bind");
    // Execute with max_rows = 4 three times: 4 + 4 + 2 rows, PortalSuspended in between.
    let mut seen = Vec::new();
    for expected in [4, 4, 2] {
        let rows = tx.query_portal(&portal, 4).await.expect("fetch");
        assert_eq!(rows.len(), expected);
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(seen, (1..=10).collect::<Vec<i64>>());
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstate_and_the_session_goes_on() {
    let server = TestServer::start();
    let client = server.connect().await;
    let cases: &[(&str, SqlState)] = &[
        ("SELEC 1", SqlState::SYNTAX_ERROR),
        ("SELECT * FROM missing_table", SqlState::UNDEFINED_TABLE),
        (
            "SELECT missing_column FROM (SELECT 1 AS a) s",
            SqlState::UNDEFINED_COLUMN,
        ),
        ("SELECT missing_function(1)", SqlState::UNDEFINED_FUNCTION),
        ("SELECT 1/0", SqlState::DIVISION_BY_ZERO),
        ("SELECT 'x'::INT", SqlState::INVALID_TEXT_REPRESENTATION),
        ("SHOW no_such_parameter", SqlState::UNDEFINED_OBJECT),
    ];
    for (sql, state) in cases {
        // simple protocol
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(state), "{sql}: {err:?}");
        // extended protocol
        let err = client.query(*sql, &[]).await.expect_err(sql);
        assert_eq!(err.code(), Some(state), "{sql} (extended): {err:?}");
    }
    client
        .batch_execute("CREATE TABLE dup (id INT)")
        .await
        .expect("create");
    let err = client
        .batch_execute("CREATE TABLE dup (id INT)")
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Some(&SqlState::DUPLICATE_TABLE));
    // A bad parameter value is a data error, not a crash.
    let statement = client
        .prepare_typed("SELECT CAST($1 AS INT) + 1", &[Type::TEXT])
        .await
        .expect("prepare");
    let err = client
        .query(&statement, &[&"not a number"])
        .await
        .expect_err("text that is not an integer");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_TEXT_REPRESENTATION),
        "{err:?}"
    );
    // Multi-statement prepared statements are refused.
    let err = client
        .prepare("SELECT 1; SELECT 2")
        .await
        .expect_err("two statements");
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));
    let row = client
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("still alive");
    // More parameters than the protocol can count: an error, not an allocation.
    let err = client
        .prepare("SELECT $1000000000000::int")
        .await
        .expect_err("parameter out of range");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{err:?}"
    );
    // Selected literals have PostgreSQL's types.
    let literals = client
        .prepare("SELECT 1, 3000000000, 7.10, ARRAY[1, 2]")
        .await
        .expect("literals");
    let types: Vec<&Type> = literals.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        [&Type::INT4, &Type::INT8, &Type::NUMERIC, &Type::INT4_ARRAY]
    );
    // Arithmetic on literals is bigint in DataFusion (integer in PostgreSQL).
    assert_eq!(row.get::<_, i64>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_comment_only_queries() {
    let server = TestServer::start();
    let client = server.connect().await;
    for sql in ["", ";", "-- ping", "/* nothing */", " ; ; "] {
        let messages = client.simple_query(sql).await.expect(sql);
        assert!(
            messages
                .iter()
                .all(|m| !matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
            "{sql:?}"
        );
    }
    // Grafana's newest builds append SQLCommenter tags.
    let rows = client
        .simple_query("SELECT 1 AS value\n/*application='grafana',route='test'*/;")
        .await
        .expect("trailing comment");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    );
    let messages = client
        .simple_query("SET extra_float_digits = 3;SET application_name = 'PostgreSQL JDBC Driver'; SELECT 1; SELECT 2")
        .await
        .expect("multi-statement");
    let rows = messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(rows, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_and_cancel() {
    let server = TestServer::start();
    let client = server.connect().await;
    // Minutes of work in small batches: DataFusion yields between batches, so the statement
    // notices the timeout or the cancel within a batch.
    let heavy = "SELECT sum(value) FROM generate_series(1, 1000000000000)";
    client
        .batch_execute("SET statement_timeout = '300ms'")
        .await
        .expect("set");
    let started = std::time::Instant::now();
    let err = client.simple_query(heavy).await.expect_err("times out");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");

    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client.simple_query(heavy).await.expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    canceller.await.expect("join").expect("cancel request");
    let row = client
        .query_one("SELECT 1", &[])
        .await
        .expect("session goes on");
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// Write raw bytes to the server and read whatever it answers within a short time.
fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn startup_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for s in ["user", "eddy", "database", "eddy", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_do_not_hurt_other_sessions() {
    let server = TestServer::start();
    let client = server.connect().await;
    let addr = server.pg;
    // What the server does with each: answers with an ErrorResponse (and keeps the session),
    // closes the connection at once (frames it cannot decode; pgwire drops those sessions), or
    // waits for the rest of an incomplete message, as PostgreSQL does, until the client leaves.
    #[derive(Debug, PartialEq)]
    enum Expect {
        ErrorResponse,
        Closed,
        Waits,
    }
    let garbage: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "truncated startup message",
            vec![0, 0, 0, 40, 0, 3, 0],
            Expect::Waits,
        ),
        (
            "Query whose length runs past the data",
            [startup_message(), vec![b'Q', 0, 0, 1, 0, b'S', b'E']].concat(),
            Expect::Waits,
        ),
        (
            "absurd startup length",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            Expect::Closed,
        ),
        (
            "unknown message type",
            [startup_message(), vec![b'@', 0, 0, 0, 4]].concat(),
            Expect::Closed,
        ),
        (
            "negative length",
            [startup_message(), vec![b'Q', 0xff, 0xff, 0xff, 0xf0]].concat(),
            Expect::Closed,
        ),
        (
            "Bind for a statement that does not exist",
            [
                startup_message(),
                // portal "", statement "nostmt", no formats, no parameters, no result formats
                b"B\0\0\0\x12\0nostmt\0\0\0\0\0\0\0".to_vec(),
                b"S\0\0\0\x04".to_vec(),
            ]
            .concat(),
            Expect::ErrorResponse,
        ),
    ];
    for (case, bytes, expect) in garbage {
        let started = std::time::Instant::now();
        let answer = tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes))
            .await
            .expect("join");
        let messages = backend_messages(&answer);
        let errors = messages.iter().filter(|(kind, _)| *kind == b'E').count();
        match expect {
            Expect::ErrorResponse => assert_eq!(errors, 1, "{case}: {messages:?}"),
            Expect::Waits => {
                assert_eq!(errors, 0, "{case}: {messages:?}");
                // still connected when raw_exchange gives up after 3 s
                assert!(
                    started.elapsed() >= Duration::from_millis(2500),
                    "{case}: the server keeps the connection open for the rest of the message"
                );
            }
            Expect::Closed => {
                assert_eq!(errors, 0, "{case}: {messages:?}");
                // raw_exchange reads until the server closes or 3 s pass
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{case}: the connection is closed at once"
                );
            }
        }
    }
    // Other sessions, old and new, still work.
    assert_eq!(
        client
            .query_one("SELECT 7", &[])
            .await
            .expect("old")
            .get::<_, i32>(0),
        7
    );
    let fresh = server.connect().await;
    assert_eq!(
        fresh
            .query_one("SELECT 8", &[])
            .await
            .expect("new")
            .get::<_, i32>(0),
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_authentication() {
    let server = TestServer::start_with(|config| {
        config.auth.trust_loopback = false;
        config.auth.users = vec![eddydb::config::UserConfig {
            name: "ana".into(),
            password: "s3cret".into(),
        }];
    });
    let base = format!(
        "host={} port={} dbname=eddy",
        server.pg.ip(),
        server.pg.port()
    );
    let (client, conn) = tokio_postgres::connect(
        &format!("{base} user=ana password=s3cret"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("right password");
    tokio::spawn(conn);
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .expect("query")
            .get::<_, i32>(0),
        1
    );
    for bad in [
        "user=ana password=wrong",
        "user=bob password=s3cret",
        "user=ana",
    ] {
        let err = tokio_postgres::connect(&format!("{base} {bad}"), tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{bad} must be refused"));
        let code = err.code();
        assert!(
            code == Some(&SqlState::INVALID_PASSWORD)
                || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                // no password given: the client gives up when asked for one
                || (bad == "user=ana" && format!("{err:?}").contains("password missing")),
            "{bad}: {err:?}"
        );
        if bad == "user=ana password=wrong" {
            let message = err.as_db_error().map(|e| e.message().to_string());
            assert_eq!(
                message.as_deref(),
                Some("Password authentication failed for user \"ana\""),
                "{err:?}"
            );
        }
    }
}

#[test]
fn tls_with_psql_sslmode_require() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let server = TestServer::start_with(|config| {
        config.tls.cert = Some(cert.clone());
        config.tls.key = Some(key.clone());
    });
    let run = |sslmode: &str| {
        std::process::Command::new("psql")
            .arg(format!(
                "host={} port={} user=eddy dbname=eddy sslmode={sslmode}",
                server.pg.ip(),
                server.pg.port()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT 'tls ok'"])
            .output()
            .expect("psql is needed (postgresql-client)")
    };
    let out = run("require");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls ok");
    let out = run("disable");
    assert!(
        out.status.success(),
        "plain connections still work: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_health_and_ready() {
    let server = TestServer::start();
    for path in ["/health", "/ready"] {
        let mut stream = std::net::TcpStream::connect(server.http).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    }
}

/// Backend messages as (type, body) pairs, after the authentication exchange.
fn backend_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let kind = bytes[0];
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(body) = bytes.get(5..1 + len) else {
            break;
        };
        out.push((kind, body.to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

fn simple_query_message(sql: &str) -> Vec<u8> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_status_notices_and_parameter_status() {
    let server = TestServer::start();
    let addr = server.pg;
    let mut bytes = startup_message();
    for sql in [
        "SET application_name = 'dashboards'",
        "BEGIN",
        "SELECT 1/0",
        "SELECT 1",
        "ROLLBACK",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "COMMIT",
    ] {
        bytes.extend(simple_query_message(sql));
    }
    bytes.extend_from_slice(b"X\0\0\0\x04");
    let answer = tokio::task::spawn_blocking(move || raw_exchange(addr, &bytes))
        .await
        .expect("join");
    let messages = backend_messages(&answer);
    let statuses: Vec<u8> = messages
        .iter()
        .filter(|(kind, _)| *kind == b'Z')
        .map(|(_, body)| body[0])
        .collect();
    // startup, SET, BEGIN, failed SELECT, SELECT refused, ROLLBACK, BEGIN, COMMIT
    assert_eq!(statuses, b"IITEEITI", "{messages:?}");

    let reported = messages
        .iter()
        .any(|(kind, body)| *kind == b'S' && body == b"application_name\0dashboards\0");
    assert!(reported, "ParameterStatus after SET: {messages:?}");

    let errors: Vec<String> = messages
        .iter()
        .filter(|(kind, _)| *kind == b'E')
        .map(|(_, body)| String::from_utf8_lossy(body).to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("C22012"), "{}", errors[0]);
    assert!(errors[1].contains("C25P02"), "{}", errors[1]);

    let notices: Vec<String> = messages
        .iter()
        .filter(|(kind, _)| *kind == b'N')
        .map(|(_, body)| String::from_utf8_lossy(body).to_string())
        .collect();
    assert!(
        notices
            .iter()
            .any(|n| n.to_ascii_lowercase().contains("serializable")),
        "a NOTICE says SERIALIZABLE is not provided: {notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_through_the_extended_protocol() {
    let server = TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute("BEGIN; SAVEPOINT a")
        .await
        .expect("begin");
    // every statement below goes through Parse/Bind/Execute, as pgjdbc's autosave sends them
    let err = client.query("SELECT 1/0", &[]).await.expect_err("fails");
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .query("SELECT 1", &[])
        .await
        .expect_err("block failed");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client
        .execute("ROLLBACK TO SAVEPOINT a", &[])
        .await
        .expect("rollback to savepoint");
    let row = client
        .query_one("SELECT 2", &[])
        .await
        .expect("usable after ROLLBACK TO");
    assert_eq!(row.get::<_, i32>(0), 2);
    client.execute("COMMIT", &[]).await.expect("commit");
}
