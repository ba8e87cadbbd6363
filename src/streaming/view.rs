//! A materialized view's result: the rows it holds now, the recent history of its changes, and
//! the readers of both.
//!
//! The dataflow's root changes are applied here once per source batch, under one lock, with a
//! logical time (milliseconds, strictly increasing per view). A `SELECT` reads the rows as of
//! the last applied batch (a consistent snapshot); `SUBSCRIBE` takes the rows and a change
//! receiver under the same lock, so it sees each change exactly once after its snapshot, and a
//! reader that reconnects with `AS OF t` gets the retained changes after `t` again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::ChangeBatch;
use super::operators::{LateRows, RowBag};
use crate::error::{Error, Result};
use crate::storage::ViewDef;

/// Changes kept for readers that resume (`SUBSCRIBE ... AS OF t`), in rows.
const HISTORY_ROWS: usize = 100_000;

/// What a view can hand its changes to instead of keeping its rows (an online model's learner,
/// [`crate::ml::online`]); its state is part of the view's checkpoints.
pub trait ChangeSink: Send + std::fmt::Debug {
    fn apply(&mut self, changes: &ChangeBatch) -> Result<()>;
    fn snapshot(&self) -> Result<Vec<u8>>;
    fn restore(&mut self, state: &[u8]) -> Result<()>;
}

/// Where a view is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Reading the stored history of its inputs.
    Backfilling,
    /// Up to date with its inputs, following live changes.
    Running,
    /// Stopped by an error; the rows are as of just before it.
    Failed(String),
}

/// What a view's reader receives.
#[derive(Debug, Clone)]
pub enum ViewEvent {
    /// Changes applied at `time`.
    Changes { time: i64, batch: ChangeBatch },
}

#[derive(Debug)]
struct Inner {
    rows: RowBag,
    /// `rows` as one batch, until the next change.
    cached: Option<RecordBatch>,
    time: i64,
    history: VecDeque<(i64, ChangeBatch)>,
    history_rows: usize,
    /// The time before which changes are no longer retained.
    history_from: i64,
    readers: Vec<UnboundedSender<ViewEvent>>,
    watermark: Option<i64>,
    state_bytes: usize,
    backfill_rows: u64,
    backfill_total: u64,
    input_rows: u64,
    /// Event-to-view latency of the latest live batches, in microseconds, oldest first.
    latencies: VecDeque<u64>,
    checkpoint: CheckpointStats,
    /// Where the changes go instead of `rows`, if anywhere.
    sink: Option<Box<dyn ChangeSink>>,
}

/// A view's checkpoints, as `eddy_catalog.materialized_views` shows them.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    /// Epoch (milliseconds since the epoch) of the newest complete checkpoint.
    pub last: Option<i64>,
    pub bytes: u64,
    /// Snapshot and write time of the newest checkpoint.
    pub duration_ms: f64,
    /// The checkpoint the view was restored from at start, and how long that took.
    pub restored_from: Option<i64>,
    pub recovery_ms: Option<f64>,
}

/// Live batches whose latency is kept for the percentiles.
const LATENCY_SAMPLES: usize = 10_000;

/// What `eddy_catalog.materialized_views` shows of a view's progress.
#[derive(Debug, Clone, Default)]
pub struct ViewStats {
    pub rows: u64,
    pub watermark: Option<i64>,
    pub state_bytes: usize,
    pub backfill_rows: u64,
    pub backfill_total: u64,
    /// Input rows (changes) processed since the view started.
    pub input_rows: u64,
    /// Event-to-view latency percentiles (50th, 99th) over the latest live batches, in
    /// milliseconds: from a stream append starting to the view holding its effect.
    pub latency_ms: Option<(f64, f64)>,
    pub checkpoint: CheckpointStats,
}

/// Send the changes applied at `time` to every reader still listening.
fn publish(inner: &mut Inner, time: i64, batch: &ChangeBatch) {
    inner.readers.retain(|r| {
        r.send(ViewEvent::Changes {
            time,
            batch: batch.clone(),
        })
        .is_ok()
    });
}

/// One materialized view, shared by its runtime task, the catalog and readers.
#[derive(Debug)]
pub struct View {
    pub def: ViewDef,
    pub schema: SchemaRef,
    pub late: Arc<LateRows>,
    /// The streaming plan, for EXPLAIN.
    pub plan: Vec<String>,
    inner: Mutex<Inner>,
    /// Dropping the view stops its task.
    stop: tokio::sync::watch::Sender<bool>,
    /// Where the view is in its life; CREATE and SUBSCRIBE wait on it.
    status: tokio::sync::watch::Sender<Status>,
    /// True once the rows are restored from a checkpoint or known to be rebuilt: views that
    /// read this one wait for it before comparing their own checkpoint with its rows.
    resumed: tokio::sync::watch::Sender<bool>,
    /// Whether the view's task takes checkpoints (stored views, when checkpoints are on).
    checkpointing: std::sync::atomic::AtomicBool,
    /// `CHECKPOINT` statements waiting for this view's next checkpoint.
    checkpoint_waiters: Mutex<Vec<CheckpointWaiter>>,
    checkpoint_wanted: tokio::sync::Notify,
}

/// Told when the checkpoint it asked for is complete, or why it failed.
pub type CheckpointWaiter = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;

/// A consistent read of a view with a receiver for what follows.
#[derive(Debug)]
pub struct ViewReader {
    pub rows: RecordBatch,
    pub time: i64,
    /// Changes after `time` that were retained, when resuming.
    pub replay: Vec<(i64, ChangeBatch)>,
    pub events: UnboundedReceiver<ViewEvent>,
}

impl View {
    pub fn new(
        def: ViewDef,
        schema: SchemaRef,
        plan: Vec<String>,
        late: Arc<LateRows>,
    ) -> Result<Arc<View>> {
        let now = Utc::now().timestamp_millis();
        Ok(Arc::new(View {
            def,
            late,
            plan,
            inner: Mutex::new(Inner {
                rows: RowBag::new(Arc::clone(&schema))?,
                cached: None,
                time: now,
                history: VecDeque::new(),
                history_rows: 0,
                history_from: now,
                readers: Vec::new(),
                watermark: None,
                state_bytes: 0,
                backfill_rows: 0,
                backfill_total: 0,
                input_rows: 0,
                latencies: VecDeque::new(),
                checkpoint: CheckpointStats::default(),
                sink: None,
            }),
            schema,
            stop: tokio::sync::watch::channel(false).0,
            status: tokio::sync::watch::channel(Status::Backfilling).0,
            resumed: tokio::sync::watch::channel(false).0,
            checkpointing: std::sync::atomic::AtomicBool::new(false),
            checkpoint_waiters: Mutex::new(Vec::new()),
            checkpoint_wanted: tokio::sync::Notify::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply the root's changes from one source batch.
    pub fn apply(
        &self,
        changes: Vec<ChangeBatch>,
        watermark: Option<i64>,
        state_bytes: usize,
    ) -> Result<()> {
        let mut inner = self.lock();
        inner.watermark = watermark;
        inner.state_bytes = state_bytes;
        let changes: Vec<ChangeBatch> = changes.into_iter().filter(|c| c.num_rows() > 0).collect();
        if changes.is_empty() {
            return Ok(());
        }
        // The dataflow names columns as DataFusion does; the view as PostgreSQL would.
        let changes = changes
            .into_iter()
            .map(|c| {
                let rows = RecordBatch::try_new_with_options(
                    Arc::clone(&self.schema),
                    c.rows.columns().to_vec(),
                    &datafusion::arrow::array::RecordBatchOptions::new()
                        .with_row_count(Some(c.num_rows())),
                )?;
                Ok(c.with_rows(rows))
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = ChangeBatch::concat(&self.schema, &changes)?;
        if let Some(sink) = inner.sink.as_mut() {
            sink.apply(&batch)?;
            inner.time = (inner.time + 1).max(Utc::now().timestamp_millis());
            return Ok(());
        }
        inner.rows.apply(&batch)?;
        inner.cached = None;
        let time = (inner.time + 1).max(Utc::now().timestamp_millis());
        inner.time = time;
        inner.history_rows += batch.num_rows();
        inner.history.push_back((time, batch.clone()));
        while inner.history_rows > HISTORY_ROWS && inner.history.len() > 1 {
            if let Some((t, old)) = inner.history.pop_front() {
                inner.history_rows -= old.num_rows();
                inner.history_from = t;
            }
        }
        publish(&mut inner, time, &batch);
        Ok(())
    }

    /// The rows now, as one batch.
    pub fn rows(&self) -> Result<RecordBatch> {
        let mut inner = self.lock();
        self.rows_locked(&mut inner)
    }

    fn rows_locked(&self, inner: &mut Inner) -> Result<RecordBatch> {
        if let Status::Failed(e) = &*self.status.borrow() {
            return Err(Error::Internal(format!(
                "materialized view \"{}\" failed and is no longer maintained: {e}",
                self.def.name
            )));
        }
        if let Some(rows) = &inner.cached {
            return Ok(rows.clone());
        }
        let rows = inner.rows.contents()?;
        inner.cached = Some(rows.clone());
        Ok(rows)
    }

    /// The rows now and every change after, read under one lock so no change falls between;
    /// with `after`, the retained changes since that time as well.
    pub fn read(&self, after: Option<i64>) -> Result<ViewReader> {
        let mut inner = self.lock();
        let rows = self.rows_locked(&mut inner)?;
        let replay = match after {
            None => Vec::new(),
            Some(t) if t >= inner.history_from => inner
                .history
                .iter()
                .filter(|(time, _)| *time > t)
                .cloned()
                .collect(),
            Some(t) => {
                return Err(Error::InvalidValue(format!(
                    "AS OF {t} is before the oldest change \"{}\" still retains ({})",
                    self.def.name, inner.history_from
                )));
            }
        };
        let (sender, events) = unbounded_channel();
        inner.readers.push(sender);
        Ok(ViewReader {
            rows,
            time: inner.time,
            replay,
            events,
        })
    }

    pub fn time(&self) -> i64 {
        self.lock().time
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn set_status(&self, status: Status) {
        let mut inner = self.lock();
        if let Status::Failed(e) = &status {
            tracing::error!(view = %self.def.name, error = %e, "materialized view failed");
            // Readers learn it when their channel closes.
            inner.readers.clear();
        }
        self.status.send_replace(status);
    }

    /// Wait until the backfill is over; returns the status then (running or failed).
    pub async fn backfilled(&self) -> Status {
        let mut status = self.status.subscribe();
        match status.wait_for(|s| *s != Status::Backfilling).await {
            Ok(s) => s.clone(),
            // The sender lives as long as the view.
            Err(_) => self.status(),
        }
    }

    pub fn add_backfill(&self, rows: u64, total: u64) {
        let mut inner = self.lock();
        inner.backfill_rows += rows;
        inner.backfill_total += total;
    }

    /// A checkpoint was written.
    pub fn set_checkpointed(&self, epoch: i64, bytes: u64, took: std::time::Duration) {
        let mut inner = self.lock();
        inner.checkpoint.last = Some(epoch);
        inner.checkpoint.bytes = bytes;
        inner.checkpoint.duration_ms = took.as_secs_f64() * 1000.0;
    }

    /// The view was restored from checkpoint `epoch`.
    pub fn set_restored(&self, epoch: i64, bytes: u64, took: std::time::Duration) {
        let mut inner = self.lock();
        inner.checkpoint.restored_from = Some(epoch);
        inner.checkpoint.last = Some(epoch);
        inner.checkpoint.bytes = bytes;
        inner.checkpoint.recovery_ms = Some(took.as_secs_f64() * 1000.0);
    }

    /// Send the changes to `sink` from now on instead of keeping them as rows.
    pub fn set_sink(&self, sink: Box<dyn ChangeSink>) {
        self.lock().sink = Some(sink);
    }

    /// The view's rows (or its sink's state), logical time and watermark, for a checkpoint.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let inner = self.lock();
        let mut w = super::state::StateWriter::new("view");
        w.i64(inner.time);
        w.opt_i64(inner.watermark);
        inner.rows.snapshot(&mut w);
        if let Some(sink) = &inner.sink {
            w.bytes(&sink.snapshot()?);
        }
        Ok(w.finish())
    }

    /// Load a [`View::snapshot`]; logical time never goes back. Readers already attached get
    /// the difference as one change.
    pub fn restore(&self, state: &[u8]) -> Result<()> {
        let mut inner = self.lock();
        let before = if inner.readers.is_empty() {
            None
        } else {
            Some(inner.rows.contents()?)
        };
        let mut r = super::state::StateReader::new(state, "view")?;
        let time = r.i64()?;
        inner.watermark = r.opt_i64()?;
        inner.rows.restore(&mut r)?;
        if let Some(sink) = inner.sink.as_mut() {
            sink.restore(r.bytes()?)?;
        }
        r.finish()?;
        inner.cached = None;
        inner.time = inner.time.max(time) + 1;
        inner.history.clear();
        inner.history_rows = 0;
        inner.history_from = inner.time;
        if let Some(before) = before {
            let batch = ChangeBatch::difference(&before, &inner.rows.contents()?)?;
            let time = inner.time;
            publish(&mut inner, time, &batch);
        }
        Ok(())
    }

    /// The rows are restored or being rebuilt; see [`View::resumed`].
    pub fn set_resumed(&self) {
        self.resumed.send_replace(true);
    }

    /// Wait until the view has restored its rows or started rebuilding them.
    pub async fn resumed(&self) {
        let mut resumed = self.resumed.subscribe();
        let _ = resumed.wait_for(|r| *r).await;
    }

    /// Mark whether the view's task takes checkpoints; when it stops doing so (the view was
    /// dropped or failed), callers still waiting are let go: there is nothing to checkpoint.
    pub fn set_checkpointing(&self, on: bool) {
        self.checkpointing
            .store(on, std::sync::atomic::Ordering::SeqCst);
        if !on {
            drop(self.take_checkpoint_waiters());
        }
    }

    /// Ask for a checkpoint now (`CHECKPOINT`); None when the view takes none. The receiver
    /// hears once a checkpoint covering every change applied so far is complete.
    pub fn request_checkpoint(
        &self,
    ) -> Option<tokio::sync::oneshot::Receiver<std::result::Result<(), String>>> {
        if !self.checkpointing.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.checkpoint_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        self.checkpoint_wanted.notify_one();
        // The task may have stopped meanwhile; then no one else would answer.
        if !self.checkpointing.load(std::sync::atomic::Ordering::SeqCst) {
            self.set_checkpointing(false);
        }
        Some(receiver)
    }

    /// Resolves when a checkpoint is asked for.
    pub async fn checkpoint_wanted(&self) {
        self.checkpoint_wanted.notified().await;
    }

    pub fn take_checkpoint_waiters(&self) -> Vec<CheckpointWaiter> {
        std::mem::take(
            &mut *self
                .checkpoint_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Record that `rows` input rows were processed; `arrived` is when a live stream append
    /// that carried them began.
    pub fn processed(&self, rows: u64, arrived: Option<std::time::Instant>) {
        let mut inner = self.lock();
        inner.input_rows += rows;
        if let Some(arrived) = arrived {
            if inner.latencies.len() == LATENCY_SAMPLES {
                inner.latencies.pop_front();
            }
            inner
                .latencies
                .push_back(arrived.elapsed().as_micros() as u64);
        }
    }

    pub fn stats(&self) -> ViewStats {
        let inner = self.lock();
        let latency_ms = (!inner.latencies.is_empty()).then(|| {
            let mut sorted: Vec<u64> = inner.latencies.iter().copied().collect();
            sorted.sort_unstable();
            let at = |q: f64| {
                let index = ((sorted.len() - 1) as f64 * q).round() as usize;
                sorted[index] as f64 / 1000.0
            };
            (at(0.5), at(0.99))
        });
        ViewStats {
            rows: inner.rows.len() as u64,
            watermark: inner.watermark,
            state_bytes: inner.state_bytes,
            backfill_rows: inner.backfill_rows,
            backfill_total: inner.backfill_total,
            input_rows: inner.input_rows,
            latency_ms,
            checkpoint: inner.checkpoint.clone(),
        }
    }

    /// Stop the view's task (DROP).
    /// Stop the view's task and feeders; kept even when none of them listens yet.
    pub fn stop(&self) {
        self.stop.send_replace(true);
        self.lock().readers.clear();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the view is stopped (at once if it already is).
    pub async fn stopping(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

/// The view as a table for ad-hoc queries.
#[derive(Debug)]
pub struct ViewTable {
    pub view: Arc<View>,
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.view.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let rows = self.view.rows()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![rows]],
            Arc::clone(&self.view.schema),
            projection.cloned(),
        )?)
    }
}
