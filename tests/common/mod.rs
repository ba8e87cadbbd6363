//! A real EddyDB server for tests: started in-process on ephemeral loopback ports with its own
//! data directory, stopped (gracefully) when dropped. Tests talk to it over TCP exactly as
//! clients do. Set `TEST_LOG=debug` to see the server's logs.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod http;
pub mod kafka;
pub mod nexmark;
pub mod process;

use eddydb::config::Config;

/// A running server.
pub struct TestServer {
    pub pg: SocketAddr,
    pub http: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _data_dir: tempfile::TempDir,
}

static LOG: Once = Once::new();

impl TestServer {
    /// Start with the default configuration (trust on loopback).
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Start after `adjust` edits the configuration.
    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        LOG.call_once(|| {
            if let Ok(level) = std::env::var("TEST_LOG") {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(level)
                    .with_test_writer()
                    .try_init();
            }
        });
        let data_dir = tempfile::tempdir().expect("temp data dir");
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.path().to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let shutdown = async move {
                    let _ = shutdown_rx.await;
                };
                match eddydb::server::start(config, shutdown).await {
                    Ok(running) => {
                        addr_tx.send(Ok(running.addrs)).expect("report addresses");
                        let _ = running.task.await;
                    }
                    Err(e) => addr_tx.send(Err(e.to_string())).expect("report error"),
                }
            });
        });
        let addrs = addr_rx
            .recv()
            .expect("server thread")
            .expect("server starts");
        TestServer {
            pg: addrs.pg,
            http: addrs.http,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _data_dir: data_dir,
        }
    }

    /// A libpq-style connection string for user `eddy`.
    pub fn conn_str(&self) -> String {
        format!(
            "host={} port={} user=eddy dbname=eddy",
            self.pg.ip(),
            self.pg.port()
        )
    }

    /// A postgres:// URL for user `eddy`.
    pub fn url(&self) -> String {
        format!("postgres://eddy@{}:{}/eddy", self.pg.ip(), self.pg.port())
    }

    /// Connect with tokio-postgres; the connection task runs on the caller's runtime.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.conn_str(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The single value of a one-row, one-column BIGINT query.
pub async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Wait until `sql` counts `expected` (panics after a minute).
pub async fn wait_for(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = scalar(client, sql).await;
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {got}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every connector source has written all it will (panics if one failed).
pub async fn wait_sources_finished(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let unfinished = scalar(
            client,
            "SELECT count(*) FROM eddy_catalog.sources WHERE status <> 'finished'",
        )
        .await;
        let failed = client
            .query(
                "SELECT source, error FROM eddy_catalog.sources WHERE status = 'failed'",
                &[],
            )
            .await
            .expect("sources");
        assert!(
            failed.is_empty(),
            "a source failed: {:?}",
            failed[0].get::<_, Option<String>>(1)
        );
        if unfinished == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the generator did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
