//! Running views: one task per view drives its [`Dataflow`]; one feeder task per source reads
//! the source's stored history (the backfill) and then its live changes into the view's channel.
//!
//! A stream feeder reads the cold files hour by hour, each hour sorted by event time, then the
//! hot records in log order, then every append once it is durable. Rows are thereby seen in
//! event-time order as far as the storage allows, so a backfill closes windows as live data
//! would. Table and view feeders send the current contents, then each committed change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{SortOptions, concat_batches, sort_to_indices, take_record_batch};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::plan::Feed;
use super::view::{Status, View, ViewEvent};
use super::{ChangeBatch, Dataflow};
use crate::error::{Error, Result};
use crate::storage::StreamStore;

/// Rows per batch sent during a backfill.
const BACKFILL_CHUNK: usize = 8192;

enum FeedMessage {
    /// Changes, with when they were appended for live stream records.
    Batch(ChangeBatch, Option<Instant>),
    /// The source's stored history has been sent.
    CaughtUp,
    Failed(String),
}

/// Every running view by `schema.name`.
#[derive(Debug, Default)]
pub struct Views {
    views: RwLock<HashMap<String, Arc<View>>>,
}

impl Views {
    pub fn insert(&self, view: Arc<View>) {
        let key = format!("{}.{}", view.def.schema_name, view.def.name);
        self.views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, view);
    }

    pub fn remove(&self, qualified: &str) -> Option<Arc<View>> {
        self.views
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(qualified)
    }

    pub fn get(&self, qualified: &str) -> Option<Arc<View>> {
        self.views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(qualified)
            .cloned()
    }

    /// All views, in creation order.
    pub fn all(&self) -> Vec<Arc<View>> {
        let mut all: Vec<Arc<View>> = self
            .views
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|v| v.def.id);
        all
    }
}

/// Start maintaining `view` with `dataflow` over `feeds`.
pub fn spawn(
    view: Arc<View>,
    mut dataflow: Dataflow,
    feeds: Vec<Feed>,
    config: &crate::config::StreamingConfig,
) {
    let verify_snapshots = config.verify_snapshots;
    let (sender, mut receiver) = unbounded_channel::<(usize, FeedMessage)>();
    let sources = feeds.len();
    // Tables and views deliver their current rows into the channel now, before any stream
    // feeder starts: joins and windows see the dimension rows before the events that need them.
    let mut streams = Vec::new();
    for (index, feed) in feeds.into_iter().enumerate() {
        match feed {
            Feed::Stream(stream) => streams.push((index, stream)),
            Feed::Table(table) => {
                let changes = sender.clone();
                let rows = table.subscribe(Box::new(move |change| {
                    changes
                        .send((index, FeedMessage::Batch(change, None)))
                        .is_ok()
                }));
                view.add_backfill(rows as u64, rows as u64);
                let _ = sender.send((index, FeedMessage::CaughtUp));
            }
            Feed::View(upstream) => {
                let sender = sender.clone();
                match upstream.read(None) {
                    Ok(reader) => {
                        let rows = reader.rows.num_rows() as u64;
                        view.add_backfill(rows, rows);
                        let _ = sender.send((
                            index,
                            FeedMessage::Batch(ChangeBatch::inserts(reader.rows), None),
                        ));
                        let _ = sender.send((index, FeedMessage::CaughtUp));
                        let mut events = reader.events;
                        let mut stop = view.stopped();
                        tokio::spawn(async move {
                            loop {
                                let event = tokio::select! {
                                    _ = stop.changed() => return,
                                    event = events.recv() => event,
                                };
                                let Some(ViewEvent::Changes { batch, .. }) = event else {
                                    let e = format!(
                                        "materialized view \"{}\" stopped",
                                        upstream.def.name
                                    );
                                    let _ = sender.send((index, FeedMessage::Failed(e)));
                                    return;
                                };
                                if sender
                                    .send((index, FeedMessage::Batch(batch, None)))
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        });
                    }
                    Err(e) => {
                        let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
                    }
                }
            }
        }
    }
    for (index, stream) in streams {
        let sender = sender.clone();
        let view = Arc::clone(&view);
        let mut stop = view.stopped();
        tokio::spawn(async move {
            let result = tokio::select! {
                _ = stop.changed() => Ok(()),
                result = run_stream(index, &stream, &sender, &view) => result,
            };
            if let Err(e) = result {
                let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
            }
        });
    }
    drop(sender);
    let mut stop = view.stopped();
    tokio::spawn(async move {
        let started = dataflow
            .start()
            .and_then(|initial| view.apply(initial, dataflow.watermark(), dataflow.state_bytes()));
        if let Err(e) = started {
            view.set_status(Status::Failed(e.to_string()));
            return;
        }
        let mut caught_up = 0;
        if sources == 0 {
            view.set_status(Status::Running);
        }
        loop {
            let message = tokio::select! {
                _ = stop.changed() => return,
                message = receiver.recv() => message,
            };
            match message {
                None => {
                    if !matches!(view.status(), Status::Failed(_)) && !*stop.borrow() {
                        view.set_status(Status::Failed("an input was dropped".to_string()));
                    }
                    return;
                }
                Some((index, FeedMessage::Batch(batch, arrived))) => {
                    let input_rows = batch.rows.num_rows() as u64;
                    // A bug in an operator fails this view, not the server.
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        dataflow.on_source(index, batch).and_then(|out| {
                            if verify_snapshots {
                                let state = dataflow.snapshot()?;
                                dataflow.restore(&state)?;
                            }
                            view.apply(out, dataflow.watermark(), dataflow.state_bytes())
                        })
                    }))
                    .unwrap_or_else(|_| Err(Error::Internal("an operator panicked".to_string())));
                    if let Err(e) = applied {
                        view.set_status(Status::Failed(e.to_string()));
                        return;
                    }
                    view.processed(input_rows, arrived);
                }
                Some((_, FeedMessage::CaughtUp)) => {
                    caught_up += 1;
                    if caught_up == sources {
                        view.set_status(Status::Running);
                    }
                }
                Some((_, FeedMessage::Failed(e))) => {
                    view.set_status(Status::Failed(e));
                    return;
                }
            }
        }
    });
}

type Sender = UnboundedSender<(usize, FeedMessage)>;

/// Send, or report that the view is gone (its task ended).
fn send(sender: &Sender, index: usize, message: FeedMessage) -> Result<()> {
    sender
        .send((index, message))
        .map_err(|_| Error::Internal("view stopped".into()))
}

async fn run_stream(
    index: usize,
    stream: &StreamStore,
    sender: &Sender,
    view: &View,
) -> Result<()> {
    let mut subscription = stream.subscribe();
    let cold_rows: u64 = subscription.cold.iter().map(|f| f.rows).sum();
    let hot_rows: u64 = subscription
        .hot
        .iter()
        .flat_map(|(_, b)| b)
        .map(|b| b.num_rows() as u64)
        .sum();
    view.add_backfill(0, cold_rows + hot_rows);
    let mut by_hour: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for file in std::mem::take(&mut subscription.cold) {
        by_hour.entry(file.hour).or_default().push(file);
    }
    let schema = stream.schema();
    for (_, files) in by_hour {
        let mut batches = Vec::new();
        for file in &files {
            batches.extend(stream.read_file(file).await?);
        }
        let rows = concat_batches(&schema, &batches)?;
        let rows = match stream.event_time() {
            Some(column) => {
                let order = sort_to_indices(
                    rows.column(column),
                    Some(SortOptions {
                        descending: false,
                        nulls_first: true,
                    }),
                    None,
                )?;
                take_record_batch(&rows, &order)?
            }
            None => rows,
        };
        send_chunks(index, rows, sender, view)?;
    }
    for (seq, batches) in std::mem::take(&mut subscription.hot) {
        stream.wait_durable(seq).await?;
        for batch in batches {
            send_chunks(index, batch, sender, view)?;
        }
    }
    send(sender, index, FeedMessage::CaughtUp)?;
    while let Some((seq, batches, arrived)) = subscription.live.recv().await {
        stream.wait_durable(seq).await?;
        for batch in batches {
            send(
                sender,
                index,
                FeedMessage::Batch(ChangeBatch::inserts(batch), Some(arrived)),
            )?;
        }
    }
    Err(Error::Internal(format!(
        "stream \"{}\" was dropped",
        stream.def().name
    )))
}

fn send_chunks(index: usize, rows: RecordBatch, sender: &Sender, view: &View) -> Result<()> {
    let total = rows.num_rows();
    let mut offset = 0;
    while offset < total {
        let len = BACKFILL_CHUNK.min(total - offset);
        let chunk = if offset == 0 && len == total {
            rows.clone()
        } else {
            let indices = UInt32Array::from_iter_values(offset as u32..(offset + len) as u32);
            take_record_batch(&rows, &indices)?
        };
        send(
            sender,
            index,
            FeedMessage::Batch(ChangeBatch::inserts(chunk), None),
        )?;
        view.add_backfill(len as u64, 0);
        offset += len;
    }
    Ok(())
}
