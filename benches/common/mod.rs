//! What every benchmark needs: an EddyDB server started in the bench's own process on free
//! ports (so the numbers are the server's, with no process boundary but the wire), a client,
//! and the median of repeated runs.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

/// A running in-process server: its addresses, its stop signal, and its task.
pub struct Server {
    pub addrs: eddydb::server::BoundAddrs,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<eddydb::error::Result<()>>,
}

impl Server {
    /// Start a server on `data_dir` with the default configuration as `adjust` changes it
    /// (logging at warn).
    pub fn start(
        data_dir: &Path,
        runtime: &tokio::runtime::Runtime,
        adjust: impl FnOnce(&mut eddydb::config::Config),
    ) -> Server {
        let mut config = eddydb::config::Config {
            listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            data_dir: data_dir.to_path_buf(),
            log_level: "warn".into(),
            ..Default::default()
        };
        adjust(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = runtime
            .block_on(eddydb::server::start(config, async move {
                let _ = stopped.await;
            }))
            .expect("eddydb starts");
        Server {
            addrs: running.addrs,
            stop,
            task: running.task,
        }
    }

    /// A libpq connection string for the server.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=eddy dbname=eddy",
            self.addrs.pg.port()
        )
    }

    /// Stop the server and wait until it has stopped.
    pub fn stop(self, runtime: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        let _ = runtime.block_on(self.task);
    }
}

/// A client on `conn`, its connection driven in the background.
pub async fn connect(conn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The single BIGINT a query returns.
pub async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Wait until every connector source has written all it will.
pub async fn wait_sources_finished(client: &tokio_postgres::Client) {
    loop {
        let left = scalar_i64(
            client,
            "SELECT count(*) FROM eddy_catalog.sources WHERE status <> 'finished'",
        )
        .await;
        if left == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
