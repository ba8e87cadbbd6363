//! psql's meta-commands against a real server: each runs psql's own catalog queries
//! (pg_class, pg_attribute, pg_namespace, pg_database, pg_proc, ...) and must print what a
//! PostgreSQL user expects. Output is unaligned (`-A`, `|` between fields) so lines compare
//! exactly; psql must be installed (`.ci/run` installs postgresql-client).

mod common;

use common::TestServer;

/// Run psql with `commands` (one `-c` each); returns stdout, failing on any psql error.
fn psql(server: &TestServer, commands: &[&str]) -> String {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(server.conn_str())
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1"])
        .env("PGTZ", "UTC");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .expect("psql is needed (postgresql-client): run .ci/run");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "psql {commands:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn setup(server: &TestServer) {
    psql(
        server,
        &[
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, sensor VARCHAR(20), ts TIMESTAMPTZ, \
           value DOUBLE PRECISION, doc JSONB, tag UUID, tags TEXT[], amount NUMERIC(12,3))",
        ],
    );
}

#[test]
fn list_tables() {
    let server = TestServer::start();
    setup(&server);
    let out = psql(&server, &["\\dt"]);
    assert_eq!(
        out,
        "List of relations\nSchema|Name|Type|Owner\npublic|readings|table|postgres\n(1 row)\n"
    );
    let out = psql(&server, &["\\d"]);
    assert!(out.contains("public|readings|table|postgres\n"), "{out}");
}

#[test]
fn describe_table() {
    let server = TestServer::start();
    setup(&server);
    let out = psql(&server, &["\\d readings"]);
    assert_eq!(
        out,
        "Table \"public.readings\"\n\
         Column|Type|Collation|Nullable|Default\n\
         id|bigint||not null|\n\
         sensor|character varying|||\n\
         ts|timestamp with time zone|||\n\
         value|double precision|||\n\
         doc|jsonb|||\n\
         tag|uuid|||\n\
         tags|text[]|||\n\
         amount|numeric(12,3)|||\n"
    );
    let out = psql(&server, &["\\d+ readings"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("Table \"public.readings\""));
    assert_eq!(
        lines.next(),
        Some("Column|Type|Collation|Nullable|Default|Storage|Compression|Stats target|Description")
    );
    assert_eq!(lines.next(), Some("id|bigint||not null||plain|||"));
    assert_eq!(
        lines.next(),
        Some("sensor|character varying||||extended|||")
    );
}

#[test]
fn describe_missing_table_is_a_clear_message() {
    let server = TestServer::start();
    let out = std::process::Command::new("psql")
        .arg(server.conn_str())
        .args(["-X", "-A", "-c", "\\d nowhere"])
        .output()
        .expect("psql is needed (postgresql-client): run .ci/run");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Did not find any relation named \"nowhere\"."
    );
}

#[test]
fn databases_schemas_and_functions() {
    let server = TestServer::start();
    let out = psql(&server, &["\\l"]);
    assert!(
        out.starts_with("List of databases\nName|Owner|Encoding|"),
        "{out}"
    );
    assert!(out.contains("\neddy|postgres|UTF-8|"), "{out}");

    let out = psql(&server, &["\\dn"]);
    assert_eq!(
        out,
        "List of schemas\nName|Owner\neddy_catalog|postgres\npublic|postgres\n(2 rows)\n"
    );

    // No user-defined functions; built-ins are listed by name.
    let out = psql(&server, &["\\df"]);
    assert!(out.ends_with("(0 rows)\n"), "{out}");
    let out = psql(&server, &["\\df version"]);
    assert!(out.contains("\npg_catalog|version|"), "{out}");
}

#[test]
fn queries_and_errors_through_psql() {
    let server = TestServer::start();
    setup(&server);
    let out = psql(
        &server,
        &[
            "INSERT INTO readings (id, sensor, ts, value) VALUES (1, 'a', '2024-05-01 12:00:00+00', 21.5)",
            "SELECT id, sensor, ts, value FROM readings",
        ],
    );
    assert_eq!(
        out,
        "INSERT 0 1\nid|sensor|ts|value\n1|a|2024-05-01 12:00:00+00|21.5\n(1 row)\n"
    );
    // Result columns carry PostgreSQL's names, repeats included.
    let out = psql(
        &server,
        &[
            "SELECT 1, count(*), sum(value), '7'::int, now() IS NULL, now() IS NULL, \
           CASE WHEN true THEN 1 END, sensor FROM readings GROUP BY sensor",
        ],
    );
    assert_eq!(
        out,
        "?column?|count|sum|int4|?column?|?column?|case|sensor\n1|1|21.5|7|f|f|1|a\n(1 row)\n"
    );
    let out = std::process::Command::new("psql")
        .arg(server.conn_str())
        .args(["-X", "-A", "-c", "SELEC 1", "-c", "SELECT 2 AS two"])
        .output()
        .expect("psql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("ERROR:  syntax error"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n2\n(1 row)\n");
}
