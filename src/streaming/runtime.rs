//! Running views: one task per view drives its [`Dataflow`]; one feeder task per source reads
//! the source's stored history (the backfill) and then its live changes into the view's channel.
//!
//! A stream feeder reads the cold files hour by hour, each hour sorted by event time, then the
//! hot records in log order, then every append once it is durable. Rows are thereby seen in
//! event-time order as far as the storage allows, so a backfill closes windows as live data
//! would. Table and view feeders send the current contents, then each committed change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::{SortOptions, concat_batches, sort_to_indices, take_record_batch};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::plan::Feed;
use super::view::{Status, View, ViewEvent};
use super::{ChangeBatch, Dataflow};
use crate::error::{Error, Result};
use crate::storage::StreamStore;
use crate::storage::stream::Subscription;

use super::checkpoint::Checkpoints;

/// Rows per batch sent during a backfill.
const BACKFILL_CHUNK: usize = 8192;

enum FeedMessage {
    /// Changes, with when they were appended for live stream records.
    Batch(ChangeBatch, Option<Instant>),
    /// The source's stored history has been sent.
    CaughtUp,
    /// Everything of a stream up to this log record has been sent.
    Position(u64),
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

/// How a view runs besides its plan.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Snapshot and restore the dataflow after every batch (tests).
    pub verify_snapshots: bool,
    /// Where and how often to checkpoint; None: never.
    pub checkpoints: Option<(Checkpoints, Duration)>,
}

/// Start maintaining `view` with `dataflow` over `feeds`. A view that reads only streams is
/// checkpointed (when `options` say where) and, at start, resumed from its newest checkpoint.
pub fn spawn(view: Arc<View>, dataflow: Dataflow, feeds: Vec<Feed>, options: RunOptions) {
    let streams: Vec<Arc<StreamStore>> = feeds
        .iter()
        .filter_map(|f| match f {
            Feed::Stream(s) => Some(Arc::clone(s)),
            _ => None,
        })
        .collect();
    let checkpointed = !feeds.is_empty() && streams.len() == feeds.len();
    match options.checkpoints.clone() {
        Some((checkpoints, every)) if checkpointed => {
            tokio::spawn(async move {
                resume(view, dataflow, streams, checkpoints, every, options).await;
            });
        }
        _ => spawn_from_history(view, dataflow, feeds, options),
    }
}

/// Start a view of streams from its newest usable checkpoint, or from the stored history.
async fn resume(
    view: Arc<View>,
    mut dataflow: Dataflow,
    streams: Vec<Arc<StreamStore>>,
    checkpoints: Checkpoints,
    every: Duration,
    options: RunOptions,
) {
    // Subscribe first: what each subscription holds is what the checkpoint is checked against.
    let subscriptions: Vec<_> = streams.iter().map(|s| s.subscribe()).collect();
    let started = Instant::now();
    let loaded = match checkpoints.load(view.def.id).await {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!(view = %view.def.name, error = %e, "checkpoints unreadable; rebuilding from history");
            None
        }
    };
    let mut from: Vec<Option<u64>> = vec![None; streams.len()];
    let mut restored = false;
    if let Some(loaded) = loaded {
        // Every record after each position must still be in the stream's hot tier or log.
        let usable = loaded.positions.len() == subscriptions.len()
            && loaded
                .positions
                .iter()
                .zip(subscriptions.iter().zip(&streams))
                .all(|(p, (sub, stream))| *p >= sub.flushed_seq || stream.log_has_after(*p));
        if usable {
            let applied = dataflow
                .restore(&loaded.dataflow)
                .and_then(|()| view.restore(&loaded.view));
            if let Err(e) = applied {
                // Some operators may hold restored state now: rebuilding needs a fresh plan.
                let _ = checkpoints.delete(view.def.id).await;
                view.set_status(Status::Failed(format!(
                    "checkpoint {} could not be restored ({e}); it was deleted, and the view is \
                     rebuilt from history at the next start",
                    loaded.epoch
                )));
                return;
            }
            from = loaded.positions.iter().map(|p| Some(*p)).collect();
            for (index, (stream, position)) in streams.iter().zip(&loaded.positions).enumerate() {
                stream.hold_log_after((view.def.id, index), *position);
            }
            restored = true;
            view.set_restored(loaded.epoch as i64, started.elapsed());
            tracing::info!(view = %view.def.name, epoch = loaded.epoch, ms = started.elapsed().as_millis() as u64, "view restored from checkpoint");
        } else {
            tracing::info!(view = %view.def.name, epoch = loaded.epoch, "checkpoint older than the streams' hot tier; rebuilding from history");
        }
    }
    let (sender, receiver) = unbounded_channel::<(usize, FeedMessage)>();
    let sources = streams.len();
    for (index, ((stream, subscription), from)) in streams
        .iter()
        .cloned()
        .zip(subscriptions)
        .zip(from)
        .enumerate()
    {
        spawn_stream_feeder(index, stream, subscription, from, sender.clone(), &view);
    }
    drop(sender);
    let view_id = view.def.id;
    drive(
        view,
        dataflow,
        receiver,
        sources,
        restored,
        options,
        Some((checkpoints, every, streams.clone())),
    )
    .await;
    for stream in &streams {
        stream.release_log_holds(view_id);
    }
}

fn spawn_stream_feeder(
    index: usize,
    stream: Arc<StreamStore>,
    subscription: Subscription,
    from: Option<u64>,
    sender: Sender,
    view: &Arc<View>,
) {
    let view = Arc::clone(view);
    let mut stop = view.stopped();
    tokio::spawn(async move {
        let result = tokio::select! {
            _ = stop.changed() => Ok(()),
            result = run_stream(index, &stream, subscription, from, &sender, &view) => result,
        };
        if let Err(e) = result {
            let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
        }
    });
}

/// Start a view from its inputs' stored history (tables, views and streams).
fn spawn_from_history(view: Arc<View>, dataflow: Dataflow, feeds: Vec<Feed>, options: RunOptions) {
    let (sender, receiver) = unbounded_channel::<(usize, FeedMessage)>();
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
        let subscription = stream.subscribe();
        spawn_stream_feeder(index, stream, subscription, None, sender.clone(), &view);
    }
    drop(sender);
    tokio::spawn(drive(
        view, dataflow, receiver, sources, false, options, None,
    ));
}

/// The view's task: apply each input batch through the dataflow, track the inputs' positions
/// and take checkpoints between batches.
async fn drive(
    view: Arc<View>,
    mut dataflow: Dataflow,
    mut receiver: UnboundedReceiver<(usize, FeedMessage)>,
    sources: usize,
    restored: bool,
    options: RunOptions,
    checkpoints: Option<(Checkpoints, Duration, Vec<Arc<StreamStore>>)>,
) {
    let mut stop = view.stopped();
    if !restored {
        let started = dataflow
            .start()
            .and_then(|initial| view.apply(initial, dataflow.watermark(), dataflow.state_bytes()));
        if let Err(e) = started {
            view.set_status(Status::Failed(e.to_string()));
            return;
        }
    }
    let mut caught_up = 0;
    if sources == 0 {
        view.set_status(Status::Running);
    }
    let mut positions: Vec<Option<u64>> = vec![None; sources];
    // Inputs in the middle of a record (batches applied, its position not yet): a checkpoint
    // then would hold rows its positions do not cover, and replay would apply them twice.
    let mut mid_record: Vec<bool> = vec![false; sources];
    let mut changed_since_checkpoint = false;
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    let mut ticker = tokio::time::interval(
        checkpoints
            .as_ref()
            .map_or(Duration::from_secs(3600), |(_, every, _)| *every),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_epoch = 0u64;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return,
            _ = ticker.tick(), if checkpoints.is_some() => {
                let ready = changed_since_checkpoint
                    && view.status() == Status::Running
                    && positions.iter().all(Option::is_some)
                    && !mid_record.iter().any(|m| *m)
                    && writing.as_ref().is_none_or(|w| w.is_finished());
                if let (true, Some((store, _, streams))) = (ready, &checkpoints) {
                    let started = Instant::now();
                    match dataflow.snapshot() {
                        Ok(state) => {
                            let epoch = (chrono::Utc::now().timestamp_millis().max(0) as u64)
                                .max(last_epoch + 1);
                            last_epoch = epoch;
                            let store = store.clone();
                            let positions: Vec<u64> = positions.iter().flatten().copied().collect();
                            let view_state = view.snapshot();
                            let view = Arc::clone(&view);
                            let streams = streams.clone();
                            changed_since_checkpoint = false;
                            writing = Some(tokio::spawn(async move {
                                match store.save(view.def.id, epoch, positions.clone(), &state, &view_state).await {
                                    Ok(bytes) => {
                                        // The log after these positions is what a restart replays.
                                        for (index, (stream, position)) in streams.iter().zip(&positions).enumerate() {
                                            stream.hold_log_after((view.def.id, index), *position);
                                        }
                                        view.set_checkpointed(epoch as i64, bytes, started.elapsed());
                                    }
                                    Err(e) => tracing::error!(view = %view.def.name, error = %e, "checkpoint failed"),
                                }
                            }));
                        }
                        Err(e) => {
                            tracing::error!(view = %view.def.name, error = %e, "checkpoint snapshot failed");
                        }
                    }
                }
                continue;
            }
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
                changed_since_checkpoint = true;
                if let Some(mid) = mid_record.get_mut(index) {
                    *mid = true;
                }
                // A bug in an operator fails this view, not the server.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    dataflow.on_source(index, batch).and_then(|out| {
                        if options.verify_snapshots {
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
            Some((index, FeedMessage::Position(seq))) => {
                if let Some(position) = positions.get_mut(index) {
                    *position = Some(seq);
                }
                if let Some(mid) = mid_record.get_mut(index) {
                    *mid = false;
                }
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
    mut subscription: Subscription,
    from: Option<u64>,
    sender: &Sender,
    view: &View,
) -> Result<()> {
    // Resuming after `from`: the cold files and older hot records were applied before; the
    // records after `from` that are in Parquet by now come back from the log.
    let mut from_log = Vec::new();
    if let Some(from) = from {
        subscription.cold.clear();
        if from < subscription.flushed_seq {
            from_log = stream.records_between(from, subscription.flushed_seq)?;
        }
    }
    let from = from.unwrap_or(0);
    subscription.hot.retain(|(seq, _)| *seq > from);
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
    send(
        sender,
        index,
        FeedMessage::Position(subscription.flushed_seq.max(from)),
    )?;
    for (seq, batches) in from_log {
        for batch in batches {
            send_chunks(index, batch, sender, view)?;
        }
        send(sender, index, FeedMessage::Position(seq))?;
    }
    for (seq, batches) in std::mem::take(&mut subscription.hot) {
        stream.wait_durable(seq).await?;
        for batch in batches {
            send_chunks(index, batch, sender, view)?;
        }
        send(sender, index, FeedMessage::Position(seq))?;
    }
    send(sender, index, FeedMessage::CaughtUp)?;
    while let Some((seq, batches, arrived)) = subscription.live.recv().await {
        if seq <= from {
            continue;
        }
        stream.wait_durable(seq).await?;
        for batch in batches {
            send(
                sender,
                index,
                FeedMessage::Batch(ChangeBatch::inserts(batch), Some(arrived)),
            )?;
        }
        send(sender, index, FeedMessage::Position(seq))?;
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
