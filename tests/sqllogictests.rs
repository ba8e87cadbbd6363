//! Runs every `sql/**/*.slt` file over the PostgreSQL wire protocol against a real EddyDB server.
//!
//! Each file gets a fresh server, so files are independent. Statements go through the simple
//! query protocol (text results, as psql and Grafana use) unless a file sets
//! `control protocol extended`... (not supported: use `tests/pg_clients.rs` for the extended
//! protocol). Errors render as `<SQLSTATE>: <message>`, so `statement error 42P01` and
//! `statement error relation "x" does not exist` both work.
//!
//! Files may run shell commands (`system ok`, with `control substitution on`) against the same
//! server: `$EDDY_PG_PORT` is its PostgreSQL port on 127.0.0.1 and `$EDDY_HTTP` its HTTP
//! address, so COPY goes through psql's `\copy` and HTTP ingest through curl, as users do.
//!
//! `cargo test --test sqllogictests -- <filter>` runs only files whose path contains the filter;
//! `-- --complete` rewrites the files with the actual results.

mod common;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::SimpleQueryMessage;

/// An error as the runner displays it.
#[derive(Debug)]
struct PgError(String);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => PgError(format!("{}: {}", db.code().code(), db.message())),
            None => PgError(e.to_string()),
        }
    }
}

struct Eddy {
    client: tokio_postgres::Client,
}

#[async_trait]
impl AsyncDB for Eddy {
    type Error = PgError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, PgError> {
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = None;
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(cols) => columns = Some(cols.len()),
                SimpleQueryMessage::Row(row) => {
                    columns.get_or_insert(row.len());
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        match columns {
            Some(n) => Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            }),
            None => Ok(DBOutput::StatementComplete(affected)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "eddydb"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.sort();
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
    });

    if files.is_empty() {
        // `cargo test <filter>` hands its filter to every test binary: matching no file is
        // fine then, but with no filter an empty sql/ means the suite went missing.
        println!(
            "sqllogictests: no .slt file under {} matches {filters:?}",
            root.display()
        );
        std::process::exit(if filters.is_empty() { 1 } else { 0 });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let server = common::TestServer::start();
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let result = runtime.block_on(async {
            let conn_str = server.conn_str();
            let mut runner = sqllogictest::Runner::new(move || {
                let conn_str = conn_str.clone();
                async move {
                    let (client, connection) =
                        tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Ok::<_, PgError>(Eddy { client })
                }
            });
            // For `system` commands (psql's \copy, curl) under `control substitution on`.
            runner.set_var("EDDY_PG_PORT".to_string(), server.pg.port().to_string());
            runner.set_var("EDDY_HTTP".to_string(), server.http.to_string());
            if complete {
                let col_sep = " ";
                runner
                    .update_test_file(
                        file,
                        col_sep,
                        sqllogictest::default_validator,
                        sqllogictest::default_normalizer,
                        sqllogictest::default_column_validator,
                    )
                    .await
                    .map_err(|e| e.to_string())
            } else {
                runner
                    .run_file_async(file)
                    .await
                    .map_err(|e| e.display(true).to_string())
            }
        });
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok   {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}\n{e}");
            }
        }
        drop(server);
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
