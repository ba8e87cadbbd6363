//! Stateless operators (sources, filters, projections, unions) and the small stateful ones:
//! the window-close buffer behind `EMIT ON WINDOW CLOSE` and top-N per group.
//!
//! A source turns what a relation delivers into change batches for the view: it computes the
//! stream's watermark row by row in log order (the running maximum of the `WATERMARK FOR`
//! expression), leaves out rows behind it when the view needs event-time order (windows,
//! interval joins) and records them in the view's [`LateRows`], then applies the scan's
//! projection and pushed-down filters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::physical_expr::PhysicalExpr;

use super::state::{StateReader, StateWriter};
use super::{ChangeBatch, Operator};
use crate::error::{Error, Result};

/// Evaluate a boolean predicate; NULL counts as false, as in WHERE.
pub fn evaluate_mask(
    predicate: &Arc<dyn PhysicalExpr>,
    rows: &RecordBatch,
) -> Result<BooleanArray> {
    let value = predicate.evaluate(rows)?.into_array(rows.num_rows())?;
    let mask = value
        .as_boolean_opt()
        .ok_or_else(|| Error::Internal("predicate did not return booleans".into()))?;
    Ok(if mask.null_count() == 0 {
        mask.clone()
    } else {
        datafusion::arrow::compute::prep_null_mask_filter(mask)
    })
}

/// Evaluate expressions into the columns of a batch with `schema`.
pub fn evaluate_columns(
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
    rows: &RecordBatch,
) -> Result<RecordBatch> {
    let columns = exprs
        .iter()
        .zip(schema.fields())
        .map(|(e, field)| {
            let array = e.evaluate(rows)?.into_array(rows.num_rows())?;
            Ok(if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    let options =
        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// A column as microseconds since the epoch (timestamps of any unit; NULL stays NULL).
pub fn micros(array: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    let tz = match array.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        other => {
            return Err(Error::Internal(format!(
                "event time must be a timestamp, found {other}"
            )));
        }
    };
    Ok(
        cast(array, &DataType::Timestamp(TimeUnit::Microsecond, tz))?
            .as_primitive::<TimestampMicrosecondType>()
            .clone(),
    )
}

/// One row left out of a view because it arrived behind the watermark.
#[derive(Debug, Clone)]
pub struct LateRow {
    pub stream: String,
    pub event_time: i64,
    pub watermark: i64,
    pub arrived: i64,
    /// The row as text, `(v1, v2, ...)`.
    pub row: String,
}

/// Late rows of one view: all counted, the most recent kept for `eddy_catalog.late_rows`.
#[derive(Debug, Default)]
pub struct LateRows {
    inner: Mutex<LateRowsInner>,
}

#[derive(Debug, Default)]
struct LateRowsInner {
    count: u64,
    recent: VecDeque<LateRow>,
}

/// How many late rows per view stay queryable.
const LATE_ROWS_KEPT: usize = 10_000;

impl LateRows {
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    pub fn recent(&self) -> Vec<LateRow> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.recent.iter().cloned().collect()
    }

    fn record(&self, rows: Vec<LateRow>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.count += rows.len() as u64;
        for row in rows {
            if inner.recent.len() == LATE_ROWS_KEPT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(row);
        }
    }
}

/// Event time of a stream source: where the time is and how the watermark follows it.
#[derive(Debug)]
pub struct EventTime {
    /// Event-time column in the relation's full rows.
    pub column: usize,
    /// The `WATERMARK FOR` expression over full rows.
    pub watermark: Arc<dyn PhysicalExpr>,
    /// Leave out rows behind the watermark (the view orders by event time).
    pub drop_late: bool,
}

/// A leaf: full rows of a relation in, the scan's columns and rows out.
#[derive(Debug)]
pub struct Source {
    name: String,
    event_time: Option<EventTime>,
    projection: Option<Vec<usize>>,
    /// Filters the scan carried, over the projected columns.
    filters: Vec<Arc<dyn PhysicalExpr>>,
    watermark: Option<i64>,
    late: Arc<LateRows>,
}

impl Source {
    pub fn new(
        name: String,
        event_time: Option<EventTime>,
        projection: Option<Vec<usize>>,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        late: Arc<LateRows>,
    ) -> Source {
        Source {
            name,
            event_time,
            projection,
            filters,
            watermark: None,
            late,
        }
    }

    /// Advance the watermark row by row; returns the mask of rows to keep.
    fn track_time(&mut self, batch: &ChangeBatch) -> Result<Option<BooleanArray>> {
        let Some(event_time) = &self.event_time else {
            return Ok(None);
        };
        let rows = &batch.rows;
        let marks = event_time
            .watermark
            .evaluate(rows)?
            .into_array(rows.num_rows())?;
        let marks = micros(&marks)?;
        let times = micros(rows.column(event_time.column))?;
        let mut keep = Vec::with_capacity(rows.num_rows());
        let mut late = Vec::new();
        for i in 0..rows.num_rows() {
            let behind = match (self.watermark, times.is_valid(i)) {
                (Some(w), true) => times.value(i) < w,
                _ => false,
            };
            if behind && event_time.drop_late && !batch.is_delete(i) {
                keep.push(false);
                late.push(LateRow {
                    stream: self.name.clone(),
                    event_time: times.value(i),
                    watermark: self.watermark.unwrap_or(i64::MIN),
                    arrived: Utc::now().timestamp_micros(),
                    row: row_text(rows, i),
                });
                continue;
            }
            keep.push(true);
            if marks.is_valid(i) {
                let mark = marks.value(i);
                if self.watermark < Some(mark) {
                    self.watermark = Some(mark);
                }
            }
        }
        if late.is_empty() {
            return Ok(None);
        }
        self.late.record(late);
        Ok(Some(BooleanArray::from(keep)))
    }
}

/// A row as `(v1, v2, ...)` text.
pub fn row_text(rows: &RecordBatch, row: usize) -> String {
    let options = FormatOptions::default().with_null("NULL");
    let values: Vec<String> = rows
        .columns()
        .iter()
        .map(|c| {
            ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .unwrap_or_else(|_| "?".to_string())
        })
        .collect();
    format!("({})", values.join(", "))
}

impl Operator for Source {
    fn describe(&self) -> String {
        let mut text = format!("Source: {}", self.name);
        if let Some(t) = &self.event_time {
            text.push_str(&format!(
                " watermark={}{}",
                t.watermark,
                if t.drop_late { " drop_late" } else { "" }
            ));
        }
        text
    }

    fn process(&mut self, _input: usize, mut batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if let Some(keep) = self.track_time(&batch)? {
            batch = batch.filter(&keep)?;
        }
        // Filters are over the relation's full rows, so they run before the projection.
        for filter in &self.filters {
            let mask = evaluate_mask(filter, &batch.rows)?;
            batch = batch.filter(&mask)?;
        }
        if let Some(projection) = &self.projection {
            batch = batch.with_rows(batch.rows.project(projection)?);
        }
        Ok(vec![batch])
    }

    fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("source");
        w.opt_i64(self.watermark);
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "source")?;
        self.watermark = r.opt_i64()?;
        r.finish()
    }

    fn order_by_event_time(&mut self) {
        if let Some(t) = &mut self.event_time {
            t.drop_late = true;
        }
    }
}

/// WHERE / HAVING / join filters over one input.
#[derive(Debug)]
pub struct Filter {
    pub predicate: Arc<dyn PhysicalExpr>,
}

impl Operator for Filter {
    fn describe(&self) -> String {
        format!("Filter: {}", self.predicate)
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let mask = evaluate_mask(&self.predicate, &batch.rows)?;
        Ok(vec![batch.filter(&mask)?])
    }
}

/// Computed columns.
#[derive(Debug)]
pub struct Project {
    pub exprs: Vec<Arc<dyn PhysicalExpr>>,
    pub schema: SchemaRef,
}

impl Operator for Project {
    fn describe(&self) -> String {
        let exprs: Vec<String> = self.exprs.iter().map(|e| e.to_string()).collect();
        format!("Project: {}", exprs.join(", "))
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let rows = evaluate_columns(&self.exprs, &self.schema, &batch.rows)?;
        Ok(vec![batch.with_rows(rows)])
    }
}

/// UNION ALL: every input's changes, re-labelled with the output schema.
#[derive(Debug)]
pub struct Union {
    pub schema: SchemaRef,
}

impl Operator for Union {
    fn describe(&self) -> String {
        "Union".to_string()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let columns = batch
            .rows
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    Ok(cast(c, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(vec![batch.with_rows(rows)])
    }
}

/// HOP: each row once per window containing it, with `window_start` and `window_end` added.
/// One branch per overlapping window: (start, end) expressions over the input row.
#[derive(Debug)]
pub struct HopExpand {
    pub branches: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    /// The time column, to keep rows before their window's end.
    pub time: usize,
    pub schema: SchemaRef,
}

impl Operator for HopExpand {
    fn describe(&self) -> String {
        format!("HopExpand: {} windows per row", self.branches.len())
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let n = batch.num_rows();
        let times = micros(batch.rows.column(self.time))?;
        let mut out = Vec::with_capacity(self.branches.len());
        for (start, end) in &self.branches {
            let starts = start.evaluate(&batch.rows)?.into_array(n)?;
            let ends = end.evaluate(&batch.rows)?.into_array(n)?;
            let end_micros = micros(&ends)?;
            let keep = BooleanArray::from(
                (0..n)
                    .map(|i| {
                        times.is_valid(i)
                            && end_micros.is_valid(i)
                            && times.value(i) < end_micros.value(i)
                    })
                    .collect::<Vec<_>>(),
            );
            let mut columns = batch.rows.columns().to_vec();
            columns.push(starts);
            columns.push(ends);
            let rows = rows_batch(&self.schema, cast_columns(columns, &self.schema)?)?;
            out.push(batch.with_rows(rows).filter(&keep)?);
        }
        Ok(out)
    }
}

/// A multiset of rows with signed counts, for consolidating changes.
#[derive(Debug)]
pub struct RowBag {
    converter: RowConverter,
    schema: SchemaRef,
    counts: HashMap<OwnedRow, i64>,
    /// Rows held, counting repeats.
    total: i64,
    bytes: usize,
}

/// A converter for whole rows of `schema` (operators keep rows in the row format).
pub fn rows_converter(schema: &Schema) -> Result<RowConverter> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?)
}

/// A converter for the values of `exprs` over rows of `schema` (keys: GROUP BY, PARTITION
/// BY, join keys).
pub fn keys_converter(exprs: &[Arc<dyn PhysicalExpr>], schema: &Schema) -> Result<RowConverter> {
    let fields = exprs
        .iter()
        .map(|e| Ok(SortField::new(e.data_type(schema)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(RowConverter::new(fields)?)
}

impl RowBag {
    pub fn new(schema: SchemaRef) -> Result<RowBag> {
        Ok(RowBag {
            converter: rows_converter(&schema)?,
            schema,
            counts: HashMap::new(),
            total: 0,
            bytes: 0,
        })
    }

    /// Add the batch's rows (+1) and retractions (-1).
    pub fn apply(&mut self, batch: &ChangeBatch) -> Result<()> {
        let rows = self.converter.convert_columns(batch.rows.columns())?;
        for i in 0..rows.num_rows() {
            let delta = if batch.is_delete(i) { -1 } else { 1 };
            let row = rows.row(i).owned();
            let size = row.as_ref().len();
            let count = self.counts.entry(row).or_insert(0);
            if *count == 0 {
                self.bytes += size;
            }
            *count += delta;
            self.total += delta;
            if *count == 0 {
                self.bytes -= size;
                self.counts.remove(&rows.row(i).owned());
            }
        }
        Ok(())
    }

    /// Write the rows with their counts.
    pub fn snapshot(&self, w: &mut StateWriter) {
        w.u64(self.counts.len() as u64);
        for (row, count) in &self.counts {
            w.row(row);
            w.i64(*count);
        }
    }

    /// Replace the contents with what [`RowBag::snapshot`] wrote.
    pub fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.counts.clear();
        self.total = 0;
        self.bytes = 0;
        for _ in 0..r.usize()? {
            let row = r.row(&self.converter)?;
            let count = r.i64()?;
            self.total += count;
            self.bytes += row.as_ref().len();
            self.counts.insert(row, count);
        }
        Ok(())
    }

    /// Rows held, counting repeats.
    pub fn len(&self) -> usize {
        self.total.max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Rows with positive counts (repeated), as one batch.
    pub fn contents(&self) -> Result<RecordBatch> {
        let rows = self
            .counts
            .iter()
            .filter(|(_, c)| **c > 0)
            .flat_map(|(r, c)| std::iter::repeat_n(r.row(), *c as usize));
        let columns = self.converter.convert_rows(rows)?;
        rows_batch(&self.schema, columns)
    }

    /// The net change: rows with positive counts added, negative retracted; empties the bag.
    pub fn drain(&mut self) -> Result<ChangeBatch> {
        let mut flags = Vec::new();
        let mut rows = Vec::new();
        for (row, count) in &self.counts {
            for _ in 0..count.unsigned_abs() {
                flags.push(*count < 0);
                rows.push(row.row());
            }
        }
        let columns = self.converter.convert_rows(rows)?;
        let batch = ChangeBatch::from_flags(rows_batch(&self.schema, columns)?, flags);
        self.counts.clear();
        self.total = 0;
        self.bytes = 0;
        Ok(batch)
    }
}

/// A batch from columns, allowing zero columns.
pub fn rows_batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let rows = columns.first().map_or(0, |c| c.len());
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// Where a window's end is in a row: a column holding the end, or the start plus a size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowEnd {
    pub column: usize,
    /// Added to the column's value (0 for `window_end`, the size for `window_start`).
    pub offset: i64,
}

impl WindowEnd {
    /// Window ends of every row, in microseconds rounded up: a window is closed only once the
    /// watermark (microseconds) has reached its exact end.
    pub fn ends(&self, rows: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let column = rows.column(self.column);
        let tz = match column.data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            other => {
                return Err(Error::Internal(format!(
                    "a window bound must be a timestamp, found {other}"
                )));
            }
        };
        let nanos = cast(column, &DataType::Timestamp(TimeUnit::Nanosecond, tz))?;
        let nanos = nanos.as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
        Ok(nanos
            .iter()
            .map(|t| {
                t.map(|t| {
                    let micros = t.div_euclid(1000) + i64::from(t.rem_euclid(1000) != 0);
                    micros.saturating_add(self.offset)
                })
            })
            .collect())
    }
}

/// `EMIT ON WINDOW CLOSE` over anything: changes are held per window and released, net, once
/// the watermark passes the window's end.
#[derive(Debug)]
pub struct WindowClose {
    window: WindowEnd,
    schema: SchemaRef,
    pending: BTreeMap<i64, RowBag>,
    closed_upto: i64,
}

impl WindowClose {
    pub fn new(window: WindowEnd, schema: SchemaRef) -> WindowClose {
        WindowClose {
            window,
            schema,
            pending: BTreeMap::new(),
            closed_upto: i64::MIN,
        }
    }
}

impl Operator for WindowClose {
    fn describe(&self) -> String {
        "EmitOnWindowClose".to_string()
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let ends = self.window.ends(&batch.rows)?;
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, end) in ends.iter().enumerate() {
            // A row without a window, or of a window already emitted, cannot be released.
            if let Some(end) = end
                && *end > self.closed_upto
            {
                by_end.entry(*end).or_default().push(i as u32);
            }
        }
        for (end, indices) in by_end {
            let part = batch.take(&UInt32Array::from(indices))?;
            let bag = match self.pending.entry(end) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(RowBag::new(Arc::clone(&self.schema))?)
                }
            };
            bag.apply(&part)?;
        }
        Ok(Vec::new())
    }

    fn on_watermark(&mut self, _inputs: &[Option<i64>], combined: i64) -> Result<Vec<ChangeBatch>> {
        let mut released = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > combined {
                break;
            }
            let mut bag = entry.remove();
            released.push(bag.drain()?);
        }
        self.closed_upto = self.closed_upto.max(combined);
        Ok(released)
    }

    fn state_bytes(&self) -> usize {
        self.pending.values().map(RowBag::bytes).sum()
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("window_close");
        w.i64(self.closed_upto);
        w.u64(self.pending.len() as u64);
        for (end, bag) in &self.pending {
            w.i64(*end);
            bag.snapshot(&mut w);
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "window_close")?;
        self.closed_upto = r.i64()?;
        self.pending.clear();
        for _ in 0..r.usize()? {
            let end = r.i64()?;
            let mut bag = RowBag::new(Arc::clone(&self.schema))?;
            bag.restore(&mut r)?;
            self.pending.insert(end, bag);
        }
        r.finish()
    }
}

/// `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o) AS rn` kept for the first `limit` rows of each
/// partition (the view filters `rn <= N`): output rows are the input columns plus `rn`.
#[derive(Debug)]
pub struct TopN {
    partition: Vec<Arc<dyn PhysicalExpr>>,
    order: RowConverter,
    order_exprs: Vec<Arc<dyn PhysicalExpr>>,
    limit: usize,
    schema: SchemaRef,
    partition_converter: RowConverter,
    rows: RowConverter,
    /// Per partition: (order key, row) -> count. Only ranked rows are kept when the input
    /// never retracts; all rows otherwise.
    groups: HashMap<OwnedRow, BTreeMap<(OwnedRow, OwnedRow), i64>>,
    append_only: bool,
    bytes: usize,
}

impl TopN {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        partition: Vec<Arc<dyn PhysicalExpr>>,
        order_exprs: Vec<Arc<dyn PhysicalExpr>>,
        order_fields: Vec<SortField>,
        limit: usize,
        input_schema: SchemaRef,
        schema: SchemaRef,
        append_only: bool,
    ) -> Result<TopN> {
        let partition_converter = keys_converter(&partition, &input_schema)?;
        let rows = rows_converter(&input_schema)?;
        Ok(TopN {
            partition,
            order: RowConverter::new(order_fields)?,
            order_exprs,
            limit,
            partition_converter,
            rows,
            schema,
            groups: HashMap::new(),
            append_only,
            bytes: 0,
        })
    }

    /// The ranked rows of a partition: (row, rank) for the first `limit`.
    fn ranked(&self, group: &BTreeMap<(OwnedRow, OwnedRow), i64>) -> Vec<(OwnedRow, u64)> {
        let mut out = Vec::new();
        for ((_, row), count) in group {
            for _ in 0..*count {
                if out.len() == self.limit {
                    return out;
                }
                out.push((row.clone(), out.len() as u64 + 1));
            }
        }
        out
    }
}

impl Operator for TopN {
    fn describe(&self) -> String {
        format!("TopN: {} per partition", self.limit)
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let n = batch.num_rows();
        let evaluate = |exprs: &[Arc<dyn PhysicalExpr>]| -> Result<Vec<ArrayRef>> {
            exprs
                .iter()
                .map(|e| Ok(e.evaluate(&batch.rows)?.into_array(n)?))
                .collect()
        };
        let partitions = key_rows(&self.partition_converter, &evaluate(&self.partition)?, n)?;
        let orders = key_rows(&self.order, &evaluate(&self.order_exprs)?, n)?;
        let rows = self.rows.convert_columns(batch.rows.columns())?;
        let mut touched: HashMap<OwnedRow, Vec<(OwnedRow, u64)>> = HashMap::new();
        for i in 0..n {
            let partition = partitions[i].clone();
            if !touched.contains_key(&partition) {
                let before = self
                    .groups
                    .get(&partition)
                    .map(|g| self.ranked(g))
                    .unwrap_or_default();
                touched.insert(partition.clone(), before);
            }
            let group = self.groups.entry(partition.clone()).or_default();
            let key = (orders[i].clone(), rows.row(i).owned());
            let size = key.0.as_ref().len() + key.1.as_ref().len();
            let count = group.entry(key.clone()).or_insert(0);
            if *count == 0 {
                self.bytes += size;
            }
            *count += if batch.is_delete(i) { -1 } else { 1 };
            if *count <= 0 {
                group.remove(&key);
                self.bytes -= size;
            }
            if self.append_only && group.len() > self.limit {
                // Rows past the limit can never rank again when nothing is retracted.
                while group.len() > self.limit {
                    if let Some((k, _)) = group.pop_last() {
                        self.bytes -= k.0.as_ref().len() + k.1.as_ref().len();
                    }
                }
            }
        }
        let mut flags = Vec::new();
        let mut out_rows = Vec::new();
        let mut ranks = Vec::new();
        for (partition, before) in touched {
            let after = match self.groups.get(&partition) {
                Some(group) => self.ranked(group),
                None => Vec::new(),
            };
            if self.groups.get(&partition).is_some_and(BTreeMap::is_empty) {
                self.groups.remove(&partition);
            }
            for (row, rank) in &before {
                if !after.contains(&(row.clone(), *rank)) {
                    flags.push(true);
                    out_rows.push(row.clone());
                    ranks.push(*rank);
                }
            }
            for (row, rank) in &after {
                if !before.contains(&(row.clone(), *rank)) {
                    flags.push(false);
                    out_rows.push(row.clone());
                    ranks.push(*rank);
                }
            }
        }
        let mut columns = self.rows.convert_rows(out_rows.iter().map(|r| r.row()))?;
        columns.push(Arc::new(datafusion::arrow::array::UInt64Array::from(ranks)));
        let rows = rows_batch(&self.schema, cast_columns(columns, &self.schema)?)?;
        Ok(vec![ChangeBatch::from_flags(rows, flags)])
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("top_n");
        w.u64(self.groups.len() as u64);
        for (key, ranked) in &self.groups {
            w.row(key);
            w.u64(ranked.len() as u64);
            for ((order, row), count) in ranked {
                w.row(order);
                w.row(row);
                w.i64(*count);
            }
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "top_n")?;
        self.groups.clear();
        self.bytes = 0;
        for _ in 0..r.usize()? {
            let key = r.key(&self.partition_converter, self.partition.is_empty())?;
            let mut ranked = BTreeMap::new();
            for _ in 0..r.usize()? {
                let order = r.row(&self.order)?;
                let row = r.row(&self.rows)?;
                let count = r.i64()?;
                self.bytes += order.as_ref().len() + row.as_ref().len();
                ranked.insert((order, row), count);
            }
            self.groups.insert(key, ranked);
        }
        r.finish()
    }
}

/// Cast columns to a schema's types where they differ.
pub fn cast_columns(columns: Vec<ArrayRef>, schema: &SchemaRef) -> Result<Vec<ArrayRef>> {
    columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                Ok(cast(&c, f.data_type())?)
            }
        })
        .collect()
}

/// The key shared by every row when there are no key columns (no GROUP BY, PARTITION BY or join
/// keys): a row converter over zero columns would give no rows at all.
pub fn constant_key() -> OwnedRow {
    static KEY: std::sync::OnceLock<OwnedRow> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let converter = RowConverter::new(vec![SortField::new(DataType::Boolean)]);
        let array: ArrayRef = Arc::new(BooleanArray::from(vec![true]));
        match converter.and_then(|c| c.convert_columns(&[array])) {
            Ok(rows) => rows.row(0).owned(),
            Err(e) => unreachable!("one boolean always converts: {e}"),
        }
    })
    .clone()
}

/// One key per row: the converted key columns, or the constant key when there are none.
pub fn key_rows(
    converter: &RowConverter,
    columns: &[ArrayRef],
    rows: usize,
) -> Result<Vec<OwnedRow>> {
    if columns.is_empty() {
        return Ok(vec![constant_key(); rows]);
    }
    let converted = converter.convert_columns(columns)?;
    Ok((0..rows).map(|i| converted.row(i).owned()).collect())
}
