//! A table: rows that change (insert, upsert on the primary key, update, delete), durable in a
//! [`Log`] and held in memory as one batch. Tables are the small, mutable side of a streaming
//! database (users, products, thresholds); streams hold the volume.
//!
//! Every statement is one log record describing its net change, applied to memory in log order
//! and acknowledged after the log is durable:
//!
//! * with a primary key: `CHANGE` = (keys removed, rows upserted by key);
//! * without one: `APPEND` (rows added) or `REPLACE` (the whole new contents, for UPDATE and
//!   DELETE, which have no key to name rows by).
//!
//! Recovery replays the records. When the log grows past twice the table's size a `REPLACE`
//! snapshot is written and the segments before it are released, so replay stays short.
//! A mutation computes its result from the current contents and the log record from the
//! difference while holding the table's write turn, so concurrent statements serialize.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;

use super::log::{Log, Record};
use super::{InsertSink, MutationSink, RelationDef, StorageConfig, codec};
use crate::error::{Error, Result};
use crate::streaming::ChangeBatch;

const KIND_APPEND: u8 = 1;
const KIND_CHANGE: u8 = 2;
const KIND_REPLACE: u8 = 3;

/// What an INSERT does with a row whose primary key is taken.
#[derive(Debug)]
pub enum OnConflict {
    /// Fail the statement (plain INSERT).
    Error,
    /// Skip the row (`ON CONFLICT DO NOTHING`).
    DoNothing,
    /// `ON CONFLICT DO UPDATE SET ... [WHERE ...]`: expressions over the existing row's columns
    /// followed by the proposed row's (`excluded.*`), evaluated on such a combined batch.
    DoUpdate {
        assignments: Vec<(usize, Arc<dyn PhysicalExpr>)>,
        selection: Option<Arc<dyn PhysicalExpr>>,
    },
}

/// The storage of one table.
#[derive(Debug)]
pub struct TableStore {
    def: RwLock<RelationDef>,
    schema: SchemaRef,
    /// Primary-key column indices; empty for a table without one.
    key: Vec<usize>,
    log: Log,
    contents: RwLock<RecordBatch>,
    /// Serializes mutations: each computes its change from the contents it read.
    write_turn: tokio::sync::Mutex<()>,
    /// Log bytes written since the last snapshot.
    logged_since_snapshot: AtomicU64,
    /// Materialized views reading this table: each committed change as rows removed and added,
    /// delivered while the commit holds the contents, so a view hears of it before any write
    /// that follows the commit.
    subscribers: Subscribers,
}

/// The views reading a table. A subscriber runs under the table's locks: it must not block or
/// touch the table (the views' runtime only queues the change).
#[derive(Default)]
struct Subscribers(std::sync::Mutex<Vec<TableSubscriber>>);

impl std::fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().map(|s| s.len()).unwrap_or(0);
        write!(f, "{count} subscribers")
    }
}

/// Receives a table's changes; returns false once it no longer wants them.
pub type TableSubscriber = Box<dyn Fn(ChangeBatch) -> bool + Send + Sync>;

/// Schema metadata key carrying a table change's commit time (microseconds since the epoch),
/// which temporal joins use as the time the new rows became valid.
pub const COMMITTED_AT: &str = "eddy.committed_at";

impl TableStore {
    /// Open a table's storage, replaying its log.
    pub fn open(def: RelationDef, dir: PathBuf, config: &StorageConfig) -> Result<TableStore> {
        let schema = def.arrow_schema()?;
        let key = def
            .primary_key
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (log, records) = Log::open(&dir.join("log"), config.sync, config.segment_bytes, 0)?;
        let mut contents = RecordBatch::new_empty(Arc::clone(&schema));
        let mut logged = 0u64;
        for Record { kind, payload, .. } in records {
            logged += payload.len() as u64;
            contents = replay(&schema, &key, contents, kind, &payload)?;
        }
        Ok(TableStore {
            def: RwLock::new(def),
            schema,
            key,
            log,
            contents: RwLock::new(contents),
            write_turn: tokio::sync::Mutex::new(()),
            logged_since_snapshot: AtomicU64::new(logged),
            subscribers: Subscribers::default(),
        })
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn def(&self) -> RelationDef {
        self.def.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn contents(&self) -> RecordBatch {
        self.contents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Insert rows; with a primary key, `conflict` decides what a taken key does. Returns the
    /// rows inserted or updated.
    pub async fn insert(&self, batches: Vec<RecordBatch>, conflict: OnConflict) -> Result<u64> {
        let proposed = concat_batches(&self.schema, &batches)?;
        if proposed.num_rows() == 0 {
            return Ok(0);
        }
        let _turn = self.write_turn.lock().await;
        if self.key.is_empty() {
            let rows = proposed.num_rows() as u64;
            let payload = codec::encode_batches(&self.schema, std::slice::from_ref(&proposed))?;
            self.commit(KIND_APPEND, payload, |contents| {
                concat_batches(&self.schema, [contents, &proposed])
            })
            .await?;
            return Ok(rows);
        }
        let current = self.contents();
        let keys = self.key_rows(&proposed)?;
        let existing = self.key_index(&current)?;
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        let mut fresh = Vec::new();
        let mut conflicting: Vec<(u32, u32)> = Vec::new(); // (proposed row, existing row)
        for (i, key) in keys.iter().enumerate() {
            if let Some(first) = seen.insert(key.as_slice(), i) {
                let _ = first;
                match conflict {
                    OnConflict::DoNothing => continue,
                    OnConflict::Error => return Err(self.duplicate_key(&proposed, i)),
                    OnConflict::DoUpdate { .. } => {
                        return Err(Error::CardinalityViolation(
                            "ON CONFLICT DO UPDATE command cannot affect row a second time"
                                .to_string(),
                        ));
                    }
                }
            }
            match existing.get(key.as_slice()) {
                None => fresh.push(i as u32),
                Some(&row) => match conflict {
                    OnConflict::Error => return Err(self.duplicate_key(&proposed, i)),
                    OnConflict::DoNothing => {}
                    OnConflict::DoUpdate { .. } => conflicting.push((i as u32, row as u32)),
                },
            }
        }
        let mut upserts = vec![take_record_batch(&proposed, &UInt32Array::from(fresh))?];
        let mut replaced: Option<RecordBatch> = None;
        if let OnConflict::DoUpdate {
            assignments,
            selection,
        } = &conflict
            && !conflicting.is_empty()
        {
            let old = take_record_batch(
                &current,
                &UInt32Array::from(conflicting.iter().map(|c| c.1).collect::<Vec<_>>()),
            )?;
            let excluded = take_record_batch(
                &proposed,
                &UInt32Array::from(conflicting.iter().map(|c| c.0).collect::<Vec<_>>()),
            )?;
            let combined = combined_batch(&old, &excluded)?;
            let mut updated = assign(&self.schema, &old, &combined, assignments)?;
            let mut old = old;
            if let Some(selection) = selection {
                let mask = evaluate_mask(selection, &combined)?;
                updated = filter_record_batch(&updated, &mask)?;
                old = filter_record_batch(&old, &mask)?;
            }
            upserts.push(updated);
            replaced = Some(old);
        }
        let upserted = concat_batches(&self.schema, &upserts)?;
        self.check_not_null_keys(&upserted)?;
        if let Some(old) = &replaced {
            // An update may change a key: the new keys must be unique among themselves and
            // against every row the statement does not replace.
            let gone: std::collections::HashSet<Vec<u8>> =
                self.key_rows(old)?.into_iter().collect();
            let mut seen = std::collections::HashSet::new();
            for (i, key) in self.key_rows(&upserted)?.iter().enumerate() {
                let taken = existing.contains_key(key.as_slice()) && !gone.contains(key);
                if taken || !seen.insert(key.clone()) {
                    return Err(self.duplicate_key(&upserted, i));
                }
            }
        }
        let rows = upserted.num_rows() as u64;
        if rows > 0 {
            self.commit_change(replaced, upserted).await?;
        }
        Ok(rows)
    }

    /// Delete the rows matching `predicate` (all rows when None); returns how many.
    pub async fn delete(&self, predicate: Option<Arc<dyn PhysicalExpr>>) -> Result<u64> {
        let _turn = self.write_turn.lock().await;
        let current = self.contents();
        let matched = matching(predicate.as_ref(), &current)?;
        let count = matched.true_count() as u64;
        if count == 0 {
            return Ok(0);
        }
        let keep = datafusion::arrow::compute::not(&matched)?;
        let remaining = filter_record_batch(&current, &keep)?;
        if self.key.is_empty() {
            self.replace_with(remaining).await?;
        } else {
            let deleted = filter_record_batch(&current, &matched)?;
            self.commit_change(Some(deleted), RecordBatch::new_empty(self.schema()))
                .await?;
        }
        Ok(count)
    }

    /// Update the rows matching `predicate`; returns how many.
    pub async fn update(
        &self,
        assignments: Vec<(usize, Arc<dyn PhysicalExpr>)>,
        predicate: Option<Arc<dyn PhysicalExpr>>,
    ) -> Result<u64> {
        let _turn = self.write_turn.lock().await;
        let current = self.contents();
        let matched = matching(predicate.as_ref(), &current)?;
        let count = matched.true_count() as u64;
        if count == 0 {
            return Ok(0);
        }
        let old = filter_record_batch(&current, &matched)?;
        let updated = assign(&self.schema, &old, &old, &assignments)?;
        let keep = datafusion::arrow::compute::not(&matched)?;
        let untouched = filter_record_batch(&current, &keep)?;
        if self.key.is_empty() {
            self.replace_with(concat_batches(&self.schema, [&untouched, &updated])?)
                .await?;
            return Ok(count);
        }
        self.check_not_null_keys(&updated)?;
        // Keys must stay unique among the updated rows and against the untouched ones.
        let untouched_keys = self.key_index(&untouched)?;
        let mut seen = std::collections::HashSet::new();
        for (i, key) in self.key_rows(&updated)?.iter().enumerate() {
            if untouched_keys.contains_key(key.as_slice()) || !seen.insert(key.clone()) {
                return Err(self.duplicate_key(&updated, i));
            }
        }
        self.commit_change(Some(old), updated).await?;
        Ok(count)
    }

    /// Log and apply a keyed change: remove the keys of `deleted`, upsert `upserted`.
    async fn commit_change(
        &self,
        deleted: Option<RecordBatch>,
        upserted: RecordBatch,
    ) -> Result<()> {
        let deleted_keys = match &deleted {
            Some(d) => d.project(&self.key)?,
            None => RecordBatch::new_empty(Arc::new(self.schema.project(&self.key)?)),
        };
        let keys_ipc =
            codec::encode_batches(&deleted_keys.schema(), std::slice::from_ref(&deleted_keys))?;
        let rows_ipc = codec::encode_batches(&self.schema, std::slice::from_ref(&upserted))?;
        let payload = codec::join_parts(&[&keys_ipc, &rows_ipc]);
        self.commit(KIND_CHANGE, payload, |contents| {
            apply_change(&self.schema, &self.key, contents, &deleted_keys, &upserted)
        })
        .await
    }

    async fn replace_with(&self, contents: RecordBatch) -> Result<()> {
        let payload = codec::encode_batches(&self.schema, std::slice::from_ref(&contents))?;
        self.commit(KIND_REPLACE, payload, |_| Ok(contents.clone()))
            .await
    }

    /// Write a record, apply it to memory in log order, wait until durable, and snapshot when
    /// the log has grown well past the table.
    async fn commit(
        &self,
        kind: u8,
        payload: Vec<u8>,
        apply: impl FnOnce(&RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError>,
    ) -> Result<()> {
        // Callers hold the write turn, so no other change can come between computing the new
        // contents and publishing them; readers see them only once they are durable.
        let next = apply(&self.contents())?;
        let seq = self.log.append(kind, &payload, |seq| seq)?;
        self.log.sync_to(seq).await?;
        let size = next.get_array_memory_size() as u64;
        {
            let mut contents = self.contents.write().unwrap_or_else(|e| e.into_inner());
            let mut subscribers = self.subscribers.0.lock().unwrap_or_else(|e| e.into_inner());
            if !subscribers.is_empty() {
                match row_changes(&contents, &next) {
                    Ok(change) => subscribers.retain(|s| s(change.clone())),
                    Err(e) => {
                        // The change is committed; views reading the table can no longer be
                        // kept exact, so they are told by losing their feed.
                        tracing::error!(table = %self.def().name, error = %e, "could not compute a table change for views");
                        subscribers.clear();
                    }
                }
            }
            *contents = next;
        }
        let logged = self
            .logged_since_snapshot
            .fetch_add(payload.len() as u64, Ordering::Relaxed)
            + payload.len() as u64;
        if logged > SNAPSHOT_MIN_LOG_BYTES.max(2 * size)
            && let Err(e) = self.snapshot().await
        {
            // The change itself is durable; the log is just longer than it needs to be.
            tracing::warn!(table = %self.def().name, error = %e, "table snapshot failed; will retry");
        }
        Ok(())
    }

    /// Write the whole contents as one record and release the log before it.
    async fn snapshot(&self) -> Result<()> {
        let contents = self.contents();
        let payload = codec::encode_batches(&self.schema, &[contents])?;
        let seq = self.log.append(KIND_REPLACE, &payload, |seq| seq)?;
        // Whatever the sync policy, the snapshot is on disk before what it replaces goes.
        self.log.force_sync().await?;
        self.log.release_upto(seq - 1)?;
        self.logged_since_snapshot
            .store(payload.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Start reading the table: `subscriber` gets the contents now (as added rows), then every
    /// committed change. Returns the number of rows in the contents.
    pub fn subscribe(&self, subscriber: TableSubscriber) -> usize {
        let contents = self.contents.read().unwrap_or_else(|e| e.into_inner());
        let rows = contents.num_rows();
        if subscriber(ChangeBatch::inserts(contents.clone())) {
            self.subscribers
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(subscriber);
        }
        rows
    }

    pub fn destroy(&self, dir: &std::path::Path) -> Result<()> {
        self.log.destroy()?;
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Storage(format!(
                "could not remove {}: {e}",
                dir.display()
            ))),
        }
    }

    fn key_rows(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        key_rows(&self.schema, &self.key, batch)
    }

    fn key_index(&self, batch: &RecordBatch) -> Result<HashMap<Vec<u8>, usize>> {
        Ok(self
            .key_rows(batch)?
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i))
            .collect())
    }

    fn check_not_null_keys(&self, batch: &RecordBatch) -> Result<()> {
        for &k in &self.key {
            if batch.column(k).null_count() > 0 {
                return Err(Error::NotNullViolation(format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    self.schema.field(k).name(),
                    self.def().name
                )));
            }
        }
        Ok(())
    }

    fn duplicate_key(&self, batch: &RecordBatch, row: usize) -> Error {
        let columns: Vec<&str> = self
            .key
            .iter()
            .map(|&k| self.schema.field(k).name().as_str())
            .collect();
        let values: Vec<String> = self
            .key
            .iter()
            .map(|&k| {
                datafusion::arrow::util::display::array_value_to_string(batch.column(k), row)
                    .unwrap_or_default()
            })
            .collect();
        let name = self.def().name;
        Error::UniqueViolation(format!(
            "duplicate key value violates unique constraint \"{name}_pkey\": Key ({})=({}) already exists",
            columns.join(", "),
            values.join(", ")
        ))
    }
}

/// Once the log holds this much since the last snapshot (and twice the table), snapshot.
const SNAPSHOT_MIN_LOG_BYTES: u64 = 4 << 20;

/// Row-format bytes of the key columns, comparable for equality.
fn key_rows(schema: &Schema, key: &[usize], batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let fields = key
        .iter()
        .map(|&k| SortField::new(schema.field(k).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let columns: Vec<ArrayRef> = key.iter().map(|&k| Arc::clone(batch.column(k))).collect();
    let rows = converter.convert_columns(&columns)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

/// Remove the rows whose key is in `deleted_keys` or `upserted`, then add `upserted`.
fn apply_change(
    schema: &SchemaRef,
    key: &[usize],
    contents: &RecordBatch,
    deleted_keys: &RecordBatch,
    upserted: &RecordBatch,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let to_arrow = |e: Error| datafusion::arrow::error::ArrowError::ComputeError(e.to_string());
    let key_positions: Vec<usize> = (0..key.len()).collect();
    let mut gone: std::collections::HashSet<Vec<u8>> =
        key_rows(&deleted_keys.schema(), &key_positions, deleted_keys)
            .map_err(to_arrow)?
            .into_iter()
            .collect();
    gone.extend(key_rows(schema, key, upserted).map_err(to_arrow)?);
    let keep: BooleanArray = key_rows(schema, key, contents)
        .map_err(to_arrow)?
        .iter()
        .map(|k| Some(!gone.contains(k)))
        .collect();
    let kept = filter_record_batch(contents, &keep)?;
    concat_batches(schema, [&kept, upserted])
}

/// Apply one log record during recovery.
fn replay(
    schema: &SchemaRef,
    key: &[usize],
    contents: RecordBatch,
    kind: u8,
    payload: &[u8],
) -> Result<RecordBatch> {
    let one = |bytes: &[u8]| -> Result<RecordBatch> {
        let batches = codec::decode_batches(bytes)?;
        match batches.first() {
            Some(first) => Ok(concat_batches(&first.schema(), &batches)?),
            None => Err(Error::Storage("empty table log record".to_string())),
        }
    };
    Ok(match kind {
        KIND_APPEND => concat_batches(schema, [&contents, &one(payload)?])?,
        KIND_REPLACE => one(payload)?,
        KIND_CHANGE => {
            let parts = codec::split_parts(payload)?;
            let [keys, rows] = parts.as_slice() else {
                return Err(Error::Storage("malformed table log record".to_string()));
            };
            apply_change(schema, key, &contents, &one(keys)?, &one(rows)?)?
        }
        other => {
            return Err(Error::Storage(format!(
                "unknown table log record kind {other}"
            )));
        }
    })
}

/// Columns of `left` followed by those of `right`, for expressions that see both (the existing
/// row and `excluded`).
fn combined_batch(left: &RecordBatch, right: &RecordBatch) -> Result<RecordBatch> {
    let mut fields: Vec<_> = left.schema().fields().iter().cloned().collect();
    fields.extend(right.schema().fields().iter().cloned());
    let mut columns: Vec<ArrayRef> = left.columns().to_vec();
    columns.extend(right.columns().iter().cloned());
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// `base` with the assigned columns replaced by their expressions evaluated on `input`.
fn assign(
    schema: &SchemaRef,
    base: &RecordBatch,
    input: &RecordBatch,
    assignments: &[(usize, Arc<dyn PhysicalExpr>)],
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    for (index, expr) in assignments {
        let value = expr.evaluate(input)?.into_array(input.num_rows())?;
        let target = schema.field(*index).data_type();
        columns[*index] = if value.data_type() == target {
            value
        } else {
            strict_cast(&value, target)?
        };
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The rows a DELETE or UPDATE touches: where the predicate holds, or all without one.
fn matching(
    predicate: Option<&Arc<dyn PhysicalExpr>>,
    batch: &RecordBatch,
) -> Result<BooleanArray> {
    match predicate {
        Some(p) => evaluate_mask(p, batch),
        None => Ok(BooleanArray::from(vec![true; batch.num_rows()])),
    }
}

/// Where a predicate is true (NULL counts as false, as in SQL).
fn evaluate_mask(predicate: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let value = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
    let Some(mask) = value.as_any().downcast_ref::<BooleanArray>() else {
        return Err(Error::InvalidValue(
            "argument of WHERE must be type boolean".to_string(),
        ));
    };
    Ok(mask.iter().map(|v| Some(v == Some(true))).collect())
}

/// The DataFusion table of a [`TableStore`].
#[derive(Debug)]
pub struct KeyedTable {
    store: Arc<TableStore>,
}

impl KeyedTable {
    pub fn new(store: Arc<TableStore>) -> KeyedTable {
        KeyedTable { store }
    }

    pub fn store(&self) -> &Arc<TableStore> {
        &self.store
    }

    fn physical(
        &self,
        state: &dyn Session,
        expr: Expr,
    ) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
        let df_schema = DFSchema::try_from(self.store.schema())?;
        state.create_physical_expr(expr, &df_schema)
    }

    fn predicate(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Option<Arc<dyn PhysicalExpr>>> {
        conjunction(filters)
            .map(|e| self.physical(state, e))
            .transpose()
    }
}

#[async_trait]
impl TableProvider for KeyedTable {
    fn schema(&self) -> SchemaRef {
        self.store.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let contents = self.store.contents();
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![contents]],
            self.store.schema(),
            projection.cloned(),
        )?)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(Error::Unsupported(format!("{insert_op}")).into());
        }
        let sink = InsertSink::new(super::Relation::Table(Arc::clone(&self.store)));
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let predicate = self.predicate(state, filters)?;
        let store = Arc::clone(&self.store);
        Ok(MutationSink::plan(move || {
            Box::pin(async move { store.delete(predicate).await })
        }))
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = self.store.schema();
        let mut physical = Vec::with_capacity(assignments.len());
        for (column, expr) in assignments {
            let index = schema.index_of(&column)?;
            if is_identity(&expr, &column) {
                continue;
            }
            physical.push((index, self.physical(state, expr)?));
        }
        let predicate = self.predicate(state, filters)?;
        let store = Arc::clone(&self.store);
        Ok(MutationSink::plan(move || {
            Box::pin(async move { store.update(physical, predicate).await })
        }))
    }

    async fn truncate(
        &self,
        _state: &dyn Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let store = Arc::clone(&self.store);
        Ok(MutationSink::plan(move || {
            Box::pin(async move { store.delete(None).await })
        }))
    }
}

/// Cast that fails on a value the target cannot hold (numeric overflow, out-of-range
/// integers) instead of turning it into NULL.
pub fn strict_cast(
    array: &ArrayRef,
    to: &datafusion::arrow::datatypes::DataType,
) -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    let options = datafusion::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    datafusion::arrow::compute::cast_with_options(array, to, &options)
}

/// `SET c = c`, which DataFusion adds for every column an UPDATE leaves alone.
fn is_identity(expr: &Expr, column: &str) -> bool {
    matches!(expr, Expr::Column(c) if c.name == column)
}

/// The rows of `batch` as a single batch of the table's schema, the columns cast where the
/// source produced a compatible but different type.
pub fn conform(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(RecordBatch::try_new(
            Arc::clone(schema),
            batch.columns().to_vec(),
        )?);
    }
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::Internal(format!(
            "insert of {} columns into a relation of {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                strict_cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The change from `before` to `after`, stamped with its commit time for temporal joins.
fn row_changes(before: &RecordBatch, after: &RecordBatch) -> Result<ChangeBatch> {
    let change = ChangeBatch::difference(before, after)?;
    let committed_at = chrono::Utc::now().timestamp_micros().to_string();
    let schema = Arc::new(
        before
            .schema()
            .as_ref()
            .clone()
            .with_metadata([(COMMITTED_AT.to_string(), committed_at)].into()),
    );
    let rows = change.rows.clone().with_schema(schema)?;
    Ok(change.with_rows(rows))
}
