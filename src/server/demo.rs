//! `--demo`: the statements of `sql/demo/*.sql`, run by the server itself once it is ready.
//!
//! The files are compiled in, so the demo needs nothing but the binary. They run in order
//! through an ordinary [`Session`], as if a client had sent them: two Nexmark streams and a
//! category table, windowed views and a stream-table join, then a model and the views that
//! score with it. Before the model file the runner waits until the auction stream holds
//! [`TRAINING_ROWS`] rows to train on (about ten seconds on a fresh start). Every statement is
//! written to be run again (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`), so a restart with
//! `--demo` leaves what exists as it is. Progress reports become log lines; a statement that
//! fails stops the demo with an error in the log, and the server goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, Int64Array};

use super::session::Session;
use crate::error::{Error, Result};
use crate::planner::{Engine, Output, Progress};

/// The demo's files, in the order they run.
const FILES: &[(&str, &str)] = &[
    (
        "sql/demo/01_streams.sql",
        include_str!("../../sql/demo/01_streams.sql"),
    ),
    (
        "sql/demo/02_views.sql",
        include_str!("../../sql/demo/02_views.sql"),
    ),
    (
        "sql/demo/03_model.sql",
        include_str!("../../sql/demo/03_model.sql"),
    ),
];

/// Auctions to have before the model file trains on them.
const TRAINING_ROWS: i64 = 300;

/// How long to wait for them.
const TRAINING_WAIT: Duration = Duration::from_secs(120);

/// Run the demo's files in the background of a ready server.
pub fn spawn(engine: Arc<Engine>, pg: std::net::SocketAddr) {
    tokio::spawn(async move {
        match run(engine).await {
            Ok(()) => tracing::info!(
                "demo ready: psql -h {} -p {} eddy, then SELECT * FROM bids_per_minute",
                pg.ip(),
                pg.port()
            ),
            Err(e) => tracing::error!(error = %e, "the demo could not be set up"),
        }
    });
}

async fn run(engine: Arc<Engine>) -> Result<()> {
    let session = Session::new(engine, [("application_name", "eddydb --demo")]);
    let (sender, mut reports) = tokio::sync::mpsc::unbounded_channel();
    session.set_progress(Progress::to(sender));
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            tracing::info!(%report, "demo");
        }
    });
    for (path, sql) in FILES {
        if path.ends_with("03_model.sql") {
            wait_for_auctions(&session).await?;
        }
        tracing::info!(file = path, "demo: running");
        for statement in crate::parser::parse(sql)? {
            let executed = session
                .execute(&statement, &[], Vec::new())
                .await
                .map_err(|e| Error::Internal(format!("{path}: {e}")))?;
            for notice in executed.notices {
                tracing::info!(report = %notice, "demo");
            }
        }
    }
    Ok(())
}

/// Wait until the auction stream has rows enough to train on.
async fn wait_for_auctions(session: &Session) -> Result<()> {
    let count = crate::parser::parse("SELECT count(*) FROM auction")?;
    let deadline = Instant::now() + TRAINING_WAIT;
    loop {
        let mut rows = 0;
        for statement in &count {
            if let Output::Rows { batches, .. } =
                session.execute(statement, &[], Vec::new()).await?.output
            {
                rows = batches
                    .first()
                    .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().cloned())
                    .filter(|c| !c.is_empty())
                    .map_or(0, |c| c.value(0));
            }
        }
        if rows >= TRAINING_ROWS {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the auction stream has {rows} rows after {TRAINING_WAIT:?}, too few to train on"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
