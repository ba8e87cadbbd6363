//! The server: listeners, connection tasks and orderly shutdown.
//!
//! [`run`] is the one entry point, used by `main` and by the tests alike: it binds the
//! PostgreSQL and HTTP listeners, logs one line when ready, serves each connection on its own
//! task through pgwire with the handlers of [`handler`] and [`auth`], and on shutdown stops
//! accepting, lets running connections finish for a grace period, then returns.

pub mod auth;
pub mod demo;
pub mod encode;
pub mod handler;
pub mod http;
pub mod metrics;
pub mod session;
pub mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ConnectionManager, PgWireServerHandlers};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::planner::Engine;
use crate::storage::Storage;

/// How long running connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything pgwire needs to serve one connection.
#[derive(Debug)]
struct Handlers {
    query: Arc<handler::QueryHandler>,
    startup: Arc<auth::Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::clone(&self.query)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.query)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.startup)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        Arc::clone(&self.query)
    }
}

/// Addresses the server actually listens on (useful when the config asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub pg: SocketAddr,
    pub http: SocketAddr,
}

/// A started server: its addresses, and the task that runs until shutdown.
#[derive(Debug)]
pub struct Running {
    pub addrs: BoundAddrs,
    pub task: tokio::task::JoinHandle<Result<()>>,
}

/// Bind the listeners and start serving; returns once both are listening.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running> {
    // The data directory is claimed at start so a bad path fails now, not at the first write,
    // and locked so two servers never write the same files.
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Config(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let data_dir_lock = lock_data_dir(&config.data_dir)?;
    let storage = Storage::open(
        &config.data_dir,
        config.object_store.as_deref(),
        config.storage.clone(),
    )
    .await?;
    let engine = Engine::new(Arc::clone(&storage), config.streaming.clone())?;
    engine.start_stored_views().await;
    engine.start_model_tasks();
    engine.catalog().start_sources();
    engine.start_stored_sinks().await;
    let tls = auth::tls_acceptor(&config.tls)?;
    let connections = Arc::new(ConnectionManager::new());
    let startup = auth::Startup::new(
        &config.auth,
        Arc::clone(&connections),
        tls.as_ref().map(|(_, pem)| pem.as_slice()),
    )?;
    let handlers = Arc::new(Handlers {
        query: Arc::new(handler::QueryHandler::new(Arc::clone(&engine))),
        startup: Arc::new(startup),
        cancel: Arc::new(DefaultCancelHandler::new(connections)),
    });
    let tls_acceptor = tls.map(|(acceptor, _)| acceptor);

    let pg_listener = TcpListener::bind(config.listen_addr()?).await?;
    let http_listener = TcpListener::bind(config.http_listen_addr()?).await?;
    let addrs = BoundAddrs {
        pg: pg_listener.local_addr()?,
        http: http_listener.local_addr()?,
    };
    tracing::info!(
        pg = %addrs.pg,
        http = %addrs.http,
        tls = tls_acceptor.is_some(),
        data_dir = %config.data_dir.display(),
        "EddyDB {} ready to accept connections",
        env!("CARGO_PKG_VERSION")
    );
    if config.demo {
        demo::spawn(Arc::clone(&engine), addrs.pg);
    }

    let task = tokio::spawn(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let _data_dir_lock = data_dir_lock;
        storage.spawn_maintenance(stop_rx.clone());
        let http = tokio::spawn(http::serve(
            http_listener,
            Arc::clone(&engine),
            stop_rx.clone(),
        ));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = pg_listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let _ = socket.set_nodelay(true);
                        let handlers = Arc::clone(&handlers);
                        let tls = tls_acceptor.clone();
                        let activity = Arc::clone(engine.catalog().activity());
                        activity.connections.fetch_add(1, Ordering::Relaxed);
                        activity.connections_total.fetch_add(1, Ordering::Relaxed);
                        connections.spawn(async move {
                            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            activity.connections.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        tracing::info!(
            open = connections.len(),
            "shutting down: no new connections"
        );
        let _ = stop_tx.send(true);
        drop(pg_listener);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!(open = connections.len(), "closing connections still open");
            connections.shutdown().await;
        }
        let _ = http.await;
        tracing::info!("EddyDB stopped");
        Ok(())
    });
    Ok(Running { addrs, task })
}

/// Hold an exclusive lock on `data_dir/LOCK` for as long as the returned file lives.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Config(format!(
            "data directory {} is in use by another EddyDB server",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Config(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Run until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let running = start(config, shutdown).await?;
    running
        .task
        .await
        .map_err(|e| crate::Error::Internal(format!("server task failed: {e}")))?
}

/// Run until SIGINT or SIGTERM.
pub async fn run_until_signal(config: Config) -> Result<()> {
    run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
