//! `SUBSCRIBE`: a view's changes as rows, for as long as the client reads.
//!
//! Each output row is `(eddy_timestamp, eddy_op, <view columns>)`: the logical time of the
//! change (milliseconds), `insert` or `delete`, and the row. With `SNAPSHOT = true` (the default)
//! the view's rows come first as inserts at the time they were read; with `PROGRESS` a row with
//! `eddy_op = 'progress'` and NULL columns says that every change up to its timestamp has been
//! sent, when nothing else happens for a second. A client that reconnects with
//! `AS OF <timestamp it saw last> WITH (SNAPSHOT = false)` continues without gaps or duplicates
//! as long as the view still retains the changes since then.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::ChangeBatch;
use super::view::{View, ViewEvent};
use crate::error::{Error, Result};

/// How often a subscription with PROGRESS reports progress while nothing changes.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// `WITH (...)` and `AS OF` of a SUBSCRIBE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscribeOptions {
    pub snapshot: bool,
    pub progress: bool,
    pub as_of: Option<i64>,
}

impl SubscribeOptions {
    pub fn parse(options: &[(String, String)], as_of: Option<i64>) -> Result<SubscribeOptions> {
        let mut parsed = SubscribeOptions {
            snapshot: true,
            progress: false,
            as_of,
        };
        for (name, value) in options {
            let flag = || match value.to_ascii_lowercase().as_str() {
                "" | "true" | "on" | "1" => Ok(true),
                "false" | "off" | "0" => Ok(false),
                other => Err(Error::InvalidValue(format!(
                    "option \"{name}\" takes true or false, not \"{other}\""
                ))),
            };
            match name.as_str() {
                "snapshot" => parsed.snapshot = flag()?,
                "progress" => parsed.progress = flag()?,
                other => {
                    return Err(Error::InvalidValue(format!(
                        "unknown SUBSCRIBE option \"{other}\" (known: SNAPSHOT, PROGRESS)"
                    )));
                }
            }
        }
        if parsed.as_of.is_some() && parsed.snapshot {
            return Err(Error::InvalidValue(
                "AS OF resumes after a timestamp: use it WITH (SNAPSHOT = false)".to_string(),
            ));
        }
        Ok(parsed)
    }
}

/// An open subscription.
#[derive(Debug)]
pub struct Subscription {
    view: Arc<View>,
    /// A view made for `SUBSCRIBE (query)`, stopped when the subscription ends.
    owned: bool,
    events: tokio::sync::mpsc::UnboundedReceiver<ViewEvent>,
    pending: VecDeque<RecordBatch>,
    schema: SchemaRef,
    progress: bool,
    /// Time of the last change or progress row sent.
    last_time: i64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.owned {
            self.view.stop();
        }
    }
}

impl Subscription {
    /// Subscribe to `view`; `owned` views are stopped when the subscription is dropped.
    pub fn open(view: Arc<View>, owned: bool, options: &SubscribeOptions) -> Result<Subscription> {
        let mut fields = vec![
            Field::new("eddy_timestamp", DataType::Int64, false),
            Field::new("eddy_op", DataType::Utf8, false),
        ];
        for field in view.schema.fields() {
            fields.push(field.as_ref().clone().with_nullable(true));
        }
        let schema = Arc::new(Schema::new(fields));
        let reader = view.read(options.as_of)?;
        let mut subscription = Subscription {
            view,
            owned,
            events: reader.events,
            pending: VecDeque::new(),
            schema,
            progress: options.progress,
            last_time: options.as_of.unwrap_or(reader.time),
        };
        if options.snapshot && reader.rows.num_rows() > 0 {
            let rows = ChangeBatch::inserts(reader.rows);
            subscription.push(reader.time, &rows)?;
        }
        for (time, batch) in reader.replay {
            subscription.push(time, &batch)?;
        }
        Ok(subscription)
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn push(&mut self, time: i64, batch: &ChangeBatch) -> Result<()> {
        let n = batch.num_rows();
        let ops: Vec<&str> = (0..n)
            .map(|i| {
                if batch.is_delete(i) {
                    "delete"
                } else {
                    "insert"
                }
            })
            .collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![time; n])),
            Arc::new(StringArray::from(ops)),
        ];
        columns.extend(batch.rows.columns().iter().cloned());
        self.pending
            .push_back(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
        self.last_time = self.last_time.max(time);
        Ok(())
    }

    fn progress_row(&self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![self.last_time])),
            Arc::new(StringArray::from(vec!["progress"])),
        ];
        for field in self.schema.fields().iter().skip(2) {
            columns.push(datafusion::arrow::array::new_null_array(
                field.data_type(),
                1,
            ));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// The next rows: what is pending, else wait for changes. With `wait` None, wait until
    /// there are some (or a progress row is due); with a duration, return an empty batch when
    /// it passes. None when the view is gone.
    pub async fn next(&mut self, wait: Option<Duration>) -> Result<Option<RecordBatch>> {
        if let Some(rows) = self.pending.pop_front() {
            return Ok(Some(rows));
        }
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let tick = if self.progress {
                Some(PROGRESS_INTERVAL)
            } else {
                None
            };
            let limit = match (tick, deadline) {
                (Some(t), Some(d)) => Some((tokio::time::Instant::now() + t).min(d)),
                (Some(t), None) => Some(tokio::time::Instant::now() + t),
                (None, Some(d)) => Some(d),
                (None, None) => None,
            };
            let event = match limit {
                Some(at) => match tokio::time::timeout_at(at, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        // The view's time is read first: every change up to it was sent
                        // before, so one still queued is delivered ahead of the progress row.
                        let now = self.view.time();
                        if let Ok(ViewEvent::Changes { time, batch }) = self.events.try_recv() {
                            self.push(time, &batch)?;
                            if let Some(rows) = self.pending.pop_front() {
                                return Ok(Some(rows));
                            }
                        }
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            if self.progress {
                                self.last_time = self.last_time.max(now);
                                return Ok(Some(self.progress_row()?));
                            }
                            return Ok(Some(RecordBatch::new_empty(Arc::clone(&self.schema))));
                        }
                        self.last_time = self.last_time.max(now);
                        return Ok(Some(self.progress_row()?));
                    }
                },
                None => self.events.recv().await,
            };
            match event {
                Some(ViewEvent::Changes { time, batch }) => {
                    self.push(time, &batch)?;
                    if let Some(rows) = self.pending.pop_front() {
                        return Ok(Some(rows));
                    }
                }
                None => {
                    if let super::view::Status::Failed(e) = self.view.status() {
                        return Err(Error::Internal(format!(
                            "materialized view \"{}\" failed: {e}",
                            self.view.def.name
                        )));
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Up to `count` rows, waiting as [`Subscription::next`] does for the first ones and taking
    /// whatever else is ready without waiting.
    pub async fn fetch(
        &mut self,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut taken = 0;
        let first = self.next(wait).await?;
        let mut next = first;
        while let Some(rows) = next {
            let room = count - taken;
            if rows.num_rows() > room {
                out.push(rows.slice(0, room));
                self.pending
                    .push_front(rows.slice(room, rows.num_rows() - room));
                break;
            }
            taken += rows.num_rows();
            out.push(rows);
            if taken >= count {
                break;
            }
            // Anything else already there, without waiting.
            next = match self.pending.pop_front() {
                Some(rows) => Some(rows),
                None => match self.events.try_recv() {
                    Ok(ViewEvent::Changes { time, batch }) => {
                        self.push(time, &batch)?;
                        self.pending.pop_front()
                    }
                    Err(_) => None,
                },
            };
        }
        Ok(out)
    }
}
