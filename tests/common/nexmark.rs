//! The Nexmark SQL of `sql/nexmark/`, shared by `tests/nexmark.rs` and `benches/nexmark.rs`:
//! the stream definitions and the query files.

use std::path::{Path, PathBuf};

/// One query file: the view it creates, the statement, and the SELECT the view maintains.
pub struct Query {
    pub name: String,
    pub create: String,
    pub select: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/nexmark")
}

/// `sql/nexmark/q*.sql`, in order.
pub fn queries() -> Vec<Query> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("sql/nexmark")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('q') && n.ends_with(".sql"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("query file");
            let create = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .trim_end_matches(';')
                .to_string();
            let name = create
                .split_whitespace()
                .nth(3)
                .expect("CREATE MATERIALIZED VIEW name")
                .to_string();
            let select = create
                .split_once(" AS\n")
                .expect("CREATE MATERIALIZED VIEW name AS\\nSELECT ...")
                .1
                .to_string();
            Query {
                name,
                create,
                select,
            }
        })
        .collect()
}

/// `sql/nexmark/streams.sql` generating `events` events; with `rate`, paced in real time at
/// that many events per second starting now, otherwise as fast as possible from its fixed
/// start time.
pub fn streams_sql(events: u64, rate: Option<u64>) -> String {
    let text = std::fs::read_to_string(dir().join("streams.sql"))
        .expect("sql/nexmark/streams.sql")
        .replace("events = 1000000", &format!("events = {events}"));
    match rate {
        None => text,
        Some(rate) => {
            let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.3f+00");
            text.replace("paced = false", &format!("rate = {rate}"))
                .replace("2026-01-01 00:00:00+00", &now.to_string())
        }
    }
}
