//! Running views: one task per view drives its [`Dataflow`]; one feeder task per source reads
//! the source's stored history (the backfill) and then its live changes into the view's channel.
//! The view's task also takes the checkpoints ([`super::checkpoint`]), on an interval and on
//! `CHECKPOINT`, and at start restores the newest one: streams then resume after their
//! recorded positions, and each table or view input sends the difference between its rows and
//! the rows the checkpoint had applied (a view waits for the views it reads to restore first).
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

use super::checkpoint::{Checkpoints, Parts};
use super::operators::RowBag;
use super::state::{StateReader, StateWriter};
use crate::storage::table::TableStore;

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

/// Start maintaining `view` with `dataflow` over `feeds`: from its newest usable checkpoint
/// when `options` name a checkpoint store, otherwise (or when none is usable) from the stored
/// history of its inputs.
pub fn spawn(view: Arc<View>, dataflow: Dataflow, feeds: Vec<Feed>, options: RunOptions) {
    if options.checkpoints.is_some() {
        // Until the view has read its checkpoint, its streams keep their whole log: a flush at
        // start must not release records the checkpoint's positions still need.
        for (index, feed) in feeds.iter().enumerate() {
            if let Feed::Stream(stream) = feed {
                stream.hold_log_after((view.def.id, index), 0);
            }
        }
        // A CHECKPOINT meanwhile waits for the restore and is then served.
        view.set_checkpointing(true);
    }
    tokio::spawn(start(view, dataflow, feeds, options));
}

/// Where a restored view continues.
struct Resumed {
    /// Per input, the last stream record the checkpoint covers (None for tables and views).
    positions: Vec<Option<u64>>,
    /// Per table or view input, the rows the checkpoint had applied from it.
    mirrors: Vec<Option<RowBag>>,
}

async fn start(view: Arc<View>, mut dataflow: Dataflow, feeds: Vec<Feed>, options: RunOptions) {
    // Views read from settle their own rows first (restored, or rebuilding from nothing), so
    // the difference this view's checkpoint is compared against is theirs to give.
    for feed in &feeds {
        if let Feed::View(upstream) = feed {
            tokio::select! {
                _ = upstream.resumed() => {}
                _ = view.stopping() => {}
            }
        }
    }
    if view.is_stopped() {
        view.set_checkpointing(false);
        release_log_holds(&view, &feeds);
        view.set_resumed();
        return;
    }
    // Subscribe first: what each subscription holds is what the checkpoint is checked against.
    let subscriptions: Vec<Option<Subscription>> = feeds
        .iter()
        .map(|f| match f {
            Feed::Stream(stream) => Some(stream.subscribe()),
            _ => None,
        })
        .collect();
    let resumed = match &options.checkpoints {
        Some((checkpoints, _)) => {
            restore(&view, &mut dataflow, &feeds, &subscriptions, checkpoints).await
        }
        None => Ok(None),
    };
    let resumed = match resumed {
        Ok(Some(resumed)) => Some(resumed),
        Ok(None) => {
            release_log_holds(&view, &feeds);
            None
        }
        Err(e) => {
            release_log_holds(&view, &feeds);
            view.set_checkpointing(false);
            view.set_status(Status::Failed(e));
            view.set_resumed();
            return;
        }
    };
    view.set_resumed();
    if view.is_stopped() {
        view.set_checkpointing(false);
        release_log_holds(&view, &feeds);
        return;
    }
    let restored = resumed.is_some();
    let (positions, mirrors) = match resumed {
        Some(Resumed { positions, mirrors }) => (positions, mirrors),
        None => {
            let mirrors = feeds
                .iter()
                .map(|feed| match options.checkpoints {
                    Some(_) => new_mirror(feed),
                    None => Ok(None),
                })
                .collect::<Result<Vec<_>>>();
            match mirrors {
                Ok(mirrors) => (vec![None; feeds.len()], mirrors),
                Err(e) => {
                    view.set_checkpointing(false);
                    view.set_status(Status::Failed(e.to_string()));
                    return;
                }
            }
        }
    };
    let (sender, receiver) = unbounded_channel::<(usize, FeedMessage)>();
    // Tables and views deliver their rows into the channel now, before any stream feeder
    // starts: joins and windows see the dimension rows before the events that need them.
    for (index, feed) in feeds.iter().enumerate() {
        let applied = match mirrors.get(index) {
            Some(Some(mirror)) if restored => match mirror.contents() {
                Ok(rows) => Some(rows),
                Err(e) => {
                    view.set_checkpointing(false);
                    release_log_holds(&view, &feeds);
                    view.set_status(Status::Failed(e.to_string()));
                    return;
                }
            },
            _ => None,
        };
        match feed {
            Feed::Stream(_) => {}
            Feed::Table(table) => feed_table(index, table, applied, sender.clone(), &view),
            Feed::View(upstream) => feed_view(index, upstream, applied, sender.clone(), &view),
        }
    }
    for (index, (feed, subscription)) in feeds.iter().zip(subscriptions).enumerate() {
        if let (Feed::Stream(stream), Some(subscription)) = (feed, subscription) {
            let from = positions.get(index).copied().flatten();
            let stream = Arc::clone(stream);
            spawn_stream_feeder(index, stream, subscription, from, sender.clone(), &view);
        }
    }
    drop(sender);
    let checkpointing = options
        .checkpoints
        .clone()
        .map(|(store, every)| Checkpointing {
            store,
            every,
            streams: feeds
                .iter()
                .map(|f| match f {
                    Feed::Stream(stream) => Some(Arc::clone(stream)),
                    _ => None,
                })
                .collect(),
            mirrors,
        });
    view.set_checkpointing(checkpointing.is_some());
    drive(
        Arc::clone(&view),
        dataflow,
        receiver,
        feeds.len(),
        restored,
        options,
        checkpointing,
    )
    .await;
    view.set_checkpointing(false);
    release_log_holds(&view, &feeds);
}

fn release_log_holds(view: &View, feeds: &[Feed]) {
    for feed in feeds {
        if let Feed::Stream(stream) = feed {
            stream.release_log_holds(view.def.id);
        }
    }
}

/// Load the newest usable checkpoint into `dataflow` and `view`. None: there is none, or the
/// streams no longer hold every record after it; the view is then rebuilt from history.
async fn restore(
    view: &View,
    dataflow: &mut Dataflow,
    feeds: &[Feed],
    subscriptions: &[Option<Subscription>],
    checkpoints: &Checkpoints,
) -> std::result::Result<Option<Resumed>, String> {
    let started = Instant::now();
    let loaded = match checkpoints.load(view.def.id).await {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::error!(view = %view.def.name, error = %e, "checkpoints unreadable; rebuilding from history");
            return Ok(None);
        }
    };
    // Every record after each stream position must still be in the stream's hot tier or log.
    let usable = loaded.positions.len() == feeds.len()
        && feeds.iter().zip(subscriptions).zip(&loaded.positions).all(
            |((feed, subscription), p)| match (feed, subscription) {
                (Feed::Stream(stream), Some(sub)) => {
                    *p >= sub.flushed_seq || stream.log_has_after(*p)
                }
                _ => true,
            },
        );
    if !usable {
        tracing::info!(view = %view.def.name, epoch = loaded.epoch, "checkpoint older than the streams' hot tier; rebuilding from history");
        return Ok(None);
    }
    let applied = restore_mirrors(&loaded.parts.inputs, feeds).and_then(|mirrors| {
        dataflow.restore(&loaded.parts.dataflow)?;
        view.restore(&loaded.parts.view)?;
        Ok(mirrors)
    });
    let mirrors = match applied {
        Ok(mirrors) => mirrors,
        Err(e) => {
            // Some operators may hold restored state now: rebuilding needs a fresh plan.
            let _ = checkpoints.delete(view.def.id).await;
            return Err(format!(
                "checkpoint {} could not be restored ({e}); it was deleted, and the view is \
                 rebuilt from history at the next start",
                loaded.epoch
            ));
        }
    };
    for (index, (feed, position)) in feeds.iter().zip(&loaded.positions).enumerate() {
        if let Feed::Stream(stream) = feed {
            stream.hold_log_after((view.def.id, index), *position);
        }
    }
    view.set_restored(loaded.epoch as i64, loaded.bytes, started.elapsed());
    tracing::info!(view = %view.def.name, epoch = loaded.epoch, ms = started.elapsed().as_millis() as u64, "view restored from checkpoint");
    Ok(Some(Resumed {
        positions: feeds
            .iter()
            .zip(&loaded.positions)
            .map(|(feed, p)| matches!(feed, Feed::Stream(_)).then_some(*p))
            .collect(),
        mirrors,
    }))
}

/// What a checkpoint keeps of a table or view input: the rows applied from it, so that a
/// restore sends only the difference between them and the input's contents then.
fn new_mirror(feed: &Feed) -> Result<Option<RowBag>> {
    match feed {
        Feed::Stream(_) => Ok(None),
        Feed::Table(table) => RowBag::new(table.schema()).map(Some),
        Feed::View(upstream) => RowBag::new(Arc::clone(&upstream.schema)).map(Some),
    }
}

fn snapshot_mirrors(mirrors: &[Option<RowBag>]) -> Vec<u8> {
    let mut w = StateWriter::new("inputs");
    w.u64(mirrors.len() as u64);
    for mirror in mirrors {
        w.bool(mirror.is_some());
        if let Some(mirror) = mirror {
            mirror.snapshot(&mut w);
        }
    }
    w.finish()
}

fn restore_mirrors(state: &[u8], feeds: &[Feed]) -> Result<Vec<Option<RowBag>>> {
    let mismatch = || Error::Internal("the checkpoint's inputs are not the view's".into());
    let mut r = StateReader::new(state, "inputs")?;
    if r.usize()? != feeds.len() {
        return Err(mismatch());
    }
    let mut mirrors = Vec::with_capacity(feeds.len());
    for feed in feeds {
        let mut mirror = new_mirror(feed)?;
        match (&mut mirror, r.bool()?) {
            (Some(mirror), true) => mirror.restore(&mut r)?,
            (None, false) => {}
            _ => return Err(mismatch()),
        }
        mirrors.push(mirror);
    }
    r.finish()?;
    Ok(mirrors)
}

/// Send a table's rows, or with `applied` (restored from a checkpoint) their difference to
/// it, then each committed change.
fn feed_table(
    index: usize,
    table: &TableStore,
    applied: Option<RecordBatch>,
    sender: Sender,
    view: &View,
) {
    let applied = std::sync::Mutex::new(applied);
    let changes = sender.clone();
    let rows = table.subscribe(Box::new(move |change| {
        let applied = applied.lock().unwrap_or_else(|e| e.into_inner()).take();
        let change = match applied {
            // The first call carries the contents.
            Some(applied) => match ChangeBatch::difference(&applied, &change.rows) {
                Ok(change) => change,
                Err(e) => {
                    let _ = changes.send((index, FeedMessage::Failed(e.to_string())));
                    return false;
                }
            },
            None => change,
        };
        changes
            .send((index, FeedMessage::Batch(change, None)))
            .is_ok()
    }));
    view.add_backfill(rows as u64, rows as u64);
    let _ = sender.send((index, FeedMessage::CaughtUp));
}

/// Send a view's rows, or with `applied` their difference to it, then each change it makes.
fn feed_view(
    index: usize,
    upstream: &Arc<View>,
    applied: Option<RecordBatch>,
    sender: Sender,
    view: &Arc<View>,
) {
    let reader = match upstream.read(None) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
            return;
        }
    };
    let rows = reader.rows.num_rows() as u64;
    view.add_backfill(rows, rows);
    let first = match applied {
        Some(applied) => ChangeBatch::difference(&applied, &reader.rows),
        None => Ok(ChangeBatch::inserts(reader.rows)),
    };
    match first {
        Ok(first) => {
            let _ = sender.send((index, FeedMessage::Batch(first, None)));
        }
        Err(e) => {
            let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
            return;
        }
    }
    let _ = sender.send((index, FeedMessage::CaughtUp));
    let mut events = reader.events;
    let view = Arc::clone(view);
    let upstream = Arc::clone(upstream);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = view.stopping() => return,
                event = events.recv() => event,
            };
            let Some(ViewEvent::Changes { batch, .. }) = event else {
                let e = format!("materialized view \"{}\" stopped", upstream.def.name);
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

fn spawn_stream_feeder(
    index: usize,
    stream: Arc<StreamStore>,
    subscription: Subscription,
    from: Option<u64>,
    sender: Sender,
    view: &Arc<View>,
) {
    let view = Arc::clone(view);
    tokio::spawn(async move {
        let result = tokio::select! {
            _ = view.stopping() => Ok(()),
            result = run_stream(index, &stream, subscription, from, &sender, &view) => result,
        };
        if let Err(e) = result {
            let _ = sender.send((index, FeedMessage::Failed(e.to_string())));
        }
    });
}

/// A view task's checkpointing: where to, how often, and what each input needs kept.
struct Checkpointing {
    store: Checkpoints,
    every: Duration,
    /// Per input, its stream, whose log after the checkpoint's position is held.
    streams: Vec<Option<Arc<StreamStore>>>,
    /// Per table or view input, the rows applied from it ([`new_mirror`]).
    mirrors: Vec<Option<RowBag>>,
}

/// The view's task: apply each input batch through the dataflow, track the inputs' positions
/// and take checkpoints between batches, on the interval or when asked (`CHECKPOINT`).
async fn drive(
    view: Arc<View>,
    mut dataflow: Dataflow,
    mut receiver: UnboundedReceiver<(usize, FeedMessage)>,
    sources: usize,
    restored: bool,
    options: RunOptions,
    mut checkpointing: Option<Checkpointing>,
) {
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
    // Per input, the last stream record fully applied; tables and views need none.
    let mut positions: Vec<Option<u64>> = (0..sources)
        .map(|i| match &checkpointing {
            Some(c) if c.streams.get(i).is_some_and(Option::is_none) => Some(0),
            _ => None,
        })
        .collect();
    // Inputs in the middle of a record (batches applied, its position not yet): a checkpoint
    // then would hold rows its positions do not cover, and replay would apply them twice.
    let mut mid_record: Vec<bool> = vec![false; sources];
    let mut changed_since_checkpoint = false;
    // A checkpoint is due (interval, with changes) or asked for; taken once the view is quiet.
    let mut wanted = false;
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    let every = checkpointing
        .as_ref()
        .map_or(Duration::from_secs(3600), |c| c.every);
    // The first checkpoint is due one interval after the start, not at once.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    // Epochs only grow, also after a restore and a step back of the wall clock.
    let mut last_epoch = view.stats().checkpoint.last.unwrap_or(0).max(0) as u64;
    loop {
        let message = tokio::select! {
            _ = view.stopping() => return,
            _ = ticker.tick(), if checkpointing.is_some() => {
                wanted |= changed_since_checkpoint;
                None
            }
            _ = view.checkpoint_wanted(), if checkpointing.is_some() => {
                wanted = true;
                None
            }
            // A write in flight or a half-applied record delays a due checkpoint.
            _ = retry.tick(), if wanted => None,
            message = receiver.recv() => match message {
                Some(message) => Some(message),
                None => {
                    if !matches!(view.status(), Status::Failed(_)) && !view.is_stopped() {
                        view.set_status(Status::Failed("an input was dropped".to_string()));
                    }
                    return;
                }
            },
        };
        match message {
            None => {}
            Some((index, FeedMessage::Batch(batch, arrived))) => {
                let input_rows = batch.rows.num_rows() as u64;
                changed_since_checkpoint = true;
                if let Some(mid) = mid_record.get_mut(index) {
                    *mid = true;
                }
                // A bug in an operator fails this view, not the server.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(Some(mirror)) = checkpointing
                        .as_mut()
                        .and_then(|c| c.mirrors.get_mut(index))
                    {
                        mirror.apply(&batch)?;
                    }
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
                // Tables and views change one whole change per batch.
                if checkpointing
                    .as_ref()
                    .is_some_and(|c| c.streams.get(index).is_some_and(Option::is_none))
                    && let Some(mid) = mid_record.get_mut(index)
                {
                    *mid = false;
                }
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
        let ready = wanted
            && view.status() == Status::Running
            && positions.iter().all(Option::is_some)
            && !mid_record.iter().any(|m| *m)
            && writing.as_ref().is_none_or(|w| w.is_finished());
        if let (true, Some(checkpointing)) = (ready, &checkpointing) {
            wanted = false;
            changed_since_checkpoint = false;
            let epoch = (chrono::Utc::now().timestamp_millis().max(0) as u64).max(last_epoch + 1);
            last_epoch = epoch;
            let positions: Vec<u64> = positions.iter().flatten().copied().collect();
            writing = Some(checkpoint(
                &view,
                &mut dataflow,
                checkpointing,
                epoch,
                positions,
            ));
        }
    }
}

/// Snapshot the view now and write the checkpoint in the background; callers of `CHECKPOINT`
/// waiting now are answered when it is complete.
fn checkpoint(
    view: &Arc<View>,
    dataflow: &mut Dataflow,
    checkpointing: &Checkpointing,
    epoch: u64,
    positions: Vec<u64>,
) -> tokio::task::JoinHandle<()> {
    let started = Instant::now();
    let waiters = view.take_checkpoint_waiters();
    let parts = dataflow.snapshot().and_then(|state| {
        Ok(Parts {
            dataflow: state,
            view: view.snapshot()?,
            inputs: snapshot_mirrors(&checkpointing.mirrors),
        })
    });
    let store = checkpointing.store.clone();
    let streams = checkpointing.streams.clone();
    let view = Arc::clone(view);
    tokio::spawn(async move {
        let saved = match parts {
            Ok(parts) => {
                store
                    .save(view.def.id, epoch, positions.clone(), &parts)
                    .await
            }
            Err(e) => Err(e),
        };
        let answer = match saved {
            Ok(bytes) => {
                // The log after these positions is what a restart replays (a view dropped
                // meanwhile has released its holds for good).
                if !view.is_stopped() && !matches!(view.status(), Status::Failed(_)) {
                    for (index, (stream, position)) in streams.iter().zip(&positions).enumerate() {
                        if let Some(stream) = stream {
                            stream.hold_log_after((view.def.id, index), *position);
                        }
                    }
                }
                view.set_checkpointed(epoch as i64, bytes, started.elapsed());
                Ok(())
            }
            Err(e) => {
                tracing::error!(view = %view.def.name, error = %e, "checkpoint failed");
                Err(format!(
                    "checkpoint of materialized view \"{}\" failed: {e}",
                    view.def.name
                ))
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    })
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
