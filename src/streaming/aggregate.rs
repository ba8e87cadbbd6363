//! GROUP BY maintained incrementally with DataFusion's own accumulators.
//!
//! Each group keeps one accumulator per aggregate. Added rows go to `update_batch`; retracted
//! rows go to `retract_batch` when every aggregate supports it (the sliding accumulators of
//! count, sum, avg, min, max, stddev, ...). When the input can retract and some aggregate cannot
//! (count(DISTINCT), approx_percentile_cont, string_agg, ...), each group also keeps its input
//! values as a multiset and a changed group is recomputed from them: exact, at the cost of
//! memory. After each batch the changed groups' rows are emitted as retraction of the old row
//! plus the new one.
//!
//! When a group key holds a window (`window_end`, or `window_start` of a known size), the group
//! is dropped once the watermark passes the window's end; with `emit_on_close` its row is only
//! emitted then, once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{SortColumn, filter, lexsort_to_indices, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::scalar::ScalarValue;

use super::operators::{WindowEnd, evaluate_mask, keys_converter};
use super::state::{StateReader, StateWriter};
use super::{ChangeBatch, Operator};
use crate::error::{Error, Result};

/// Aggregates whose sliding accumulator can retract any earlier value, not only the oldest:
/// DataFusion's sliding accumulators are made for window frames, and those of min, max and
/// first/last values assume values leave in the order they came.
const RETRACTABLE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "var_pop",
    "var_samp",
    "variance",
    "variance_pop",
    "variance_samp",
];

/// Aggregates besides [`RETRACTABLE`] whose accumulator's `state()` leaves it intact (read in
/// DataFusion 55's sources; median, percentile_cont, string_agg and distinct counts of strings
/// move their values out).
const STATE_KEEPING: &[&str] = &[
    "min",
    "max",
    "bool_and",
    "bool_or",
    "approx_percentile_cont",
];

fn state_survives_snapshot(spec: &AggregateSpec) -> bool {
    let name = spec.function.fun().name().to_ascii_lowercase();
    !spec.function.is_distinct()
        && (RETRACTABLE.contains(&name.as_str()) || STATE_KEEPING.contains(&name.as_str()))
}

fn retracts_in_any_order(spec: &AggregateSpec) -> bool {
    let name = spec.function.fun().name().to_ascii_lowercase();
    !spec.function.is_distinct() && RETRACTABLE.contains(&name.as_str())
}

/// One aggregate of the SELECT list.
#[derive(Debug)]
pub struct AggregateSpec {
    pub function: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

#[derive(Debug)]
struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Net input rows.
    rows: i64,
    /// Key values, for the output row.
    key: Vec<ScalarValue>,
    /// The row last emitted for this group.
    emitted: Option<Vec<ScalarValue>>,
    /// Input values (argument columns, then filter flags) with counts, when recomputing.
    inputs: Option<HashMap<OwnedRow, i64>>,
    /// Window end, for windowed groups.
    window_end: Option<i64>,
}

#[derive(Debug)]
pub struct Aggregate {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Vec<AggregateSpec>,
    schema: SchemaRef,
    keys: RowConverter,
    groups: HashMap<OwnedRow, Group>,
    /// Keep input values per group and recompute on retraction.
    recompute: bool,
    /// Converter for the argument columns (recompute mode).
    inputs: Option<RowConverter>,
    window: Option<WindowEnd>,
    emit_on_close: bool,
    /// Groups by window end, for closing.
    closing: BTreeMap<i64, Vec<OwnedRow>>,
    watermark: i64,
    /// The key of the single group of an aggregate without GROUP BY.
    global_key: OwnedRow,
    /// Bytes of all groups, kept up to date as groups change (read after every batch).
    bytes: usize,
}

impl Aggregate {
    /// `retracting`: whether the input can retract rows.
    pub fn new(
        group_exprs: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<AggregateSpec>,
        input_schema: &SchemaRef,
        schema: SchemaRef,
        retracting: bool,
        window: Option<WindowEnd>,
    ) -> Result<Aggregate> {
        let keys = keys_converter(&group_exprs, input_schema)?;
        let mut aggregate = Aggregate {
            group_exprs,
            aggregates,
            schema,
            keys,
            groups: HashMap::new(),
            recompute: false,
            inputs: None,
            window,
            emit_on_close: false,
            closing: BTreeMap::new(),
            watermark: i64::MIN,
            global_key: super::operators::constant_key(),
            bytes: 0,
        };
        // Aggregates with ORDER BY (string_agg(x, ',' ORDER BY y)) need their input in order,
        // which arrival order is not: their groups are recomputed from sorted input.
        let ordered = aggregate
            .aggregates
            .iter()
            .any(|a| !a.function.order_bys().is_empty());
        if retracting || ordered {
            let probe = aggregate.new_accumulators()?;
            let all_retract = aggregate.aggregates.iter().all(retracts_in_any_order)
                && probe.iter().all(|a| a.supports_retract_batch());
            if ordered || !all_retract {
                aggregate.recompute = true;
                let mut fields = Vec::new();
                for spec in &aggregate.aggregates {
                    for e in spec.function.expressions() {
                        fields.push(SortField::new(e.data_type(input_schema)?));
                    }
                    if spec.filter.is_some() {
                        fields.push(SortField::new(DataType::Boolean));
                    }
                    for order in spec.function.order_bys() {
                        fields.push(SortField::new(order.expr.data_type(input_schema)?));
                    }
                }
                aggregate.inputs = Some(RowConverter::new(fields)?);
            }
        }
        Ok(aggregate)
    }

    /// Emit each windowed group once, when its window closes.
    pub fn emit_on_close(&mut self) {
        self.emit_on_close = true;
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates
            .iter()
            .map(|spec| {
                if retracts_in_any_order(spec) {
                    let sliding = spec.function.create_sliding_accumulator()?;
                    if sliding.supports_retract_batch() {
                        return Ok(sliding);
                    }
                }
                Ok(spec.function.create_accumulator()?)
            })
            .collect()
    }

    /// ORDER BY columns of every aggregate (empty for most).
    fn order_columns(&self, rows: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        self.aggregates
            .iter()
            .map(|spec| {
                spec.function
                    .order_bys()
                    .iter()
                    .map(|o| Ok(o.expr.evaluate(rows)?.into_array(rows.num_rows())?))
                    .collect()
            })
            .collect()
    }

    /// Argument columns of every aggregate, with the FILTER applied as a mask per aggregate.
    fn arguments(&self, rows: &RecordBatch) -> Result<Vec<(Vec<ArrayRef>, Option<BooleanArray>)>> {
        self.aggregates
            .iter()
            .map(|spec| {
                let args = spec
                    .function
                    .expressions()
                    .iter()
                    .map(|e| Ok(e.evaluate(rows)?.into_array(rows.num_rows())?))
                    .collect::<Result<Vec<_>>>()?;
                let mask = match &spec.filter {
                    Some(f) => Some(evaluate_mask(f, rows)?),
                    None => None,
                };
                Ok((args, mask))
            })
            .collect()
    }

    fn output_row(&mut self, key: &OwnedRow) -> Result<Option<Vec<ScalarValue>>> {
        let Some(group) = self.groups.get_mut(key) else {
            return Ok(None);
        };
        let mut row = group.key.clone();
        for acc in &mut group.accumulators {
            row.push(acc.evaluate()?);
        }
        Ok(Some(row))
    }

    /// Rows as a change batch with the output schema.
    fn batch(&self, changes: Vec<(bool, Vec<ScalarValue>)>) -> Result<ChangeBatch> {
        let flags: Vec<bool> = changes.iter().map(|(d, _)| *d).collect();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            let values = changes.iter().map(|(_, row)| row[i].clone());
            let array = if changes.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(if array.data_type() == field.data_type() {
                array
            } else {
                datafusion::arrow::compute::cast(&array, field.data_type())?
            });
        }
        let rows = super::operators::rows_batch(&self.schema, columns)?;
        Ok(ChangeBatch::from_flags(rows, flags))
    }

    fn recompute_group(&mut self, key: &OwnedRow) -> Result<()> {
        let mut fresh = self.new_accumulators()?;
        let (Some(converter), Some(group)) = (&self.inputs, self.groups.get_mut(key)) else {
            return Ok(());
        };
        let Some(inputs) = &group.inputs else {
            return Ok(());
        };
        let rows = inputs
            .iter()
            .filter(|(_, c)| **c > 0)
            .flat_map(|(r, c)| std::iter::repeat_n(r.row(), *c as usize));
        let columns = converter.convert_rows(rows)?;
        let mut at = 0;
        for (spec, acc) in self.aggregates.iter().zip(&mut fresh) {
            let n = spec.function.expressions().len();
            let mut args: Vec<ArrayRef> = columns[at..at + n].to_vec();
            at += n;
            let mut mask = None;
            if spec.filter.is_some() {
                mask = Some(
                    columns[at]
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .ok_or_else(|| Error::Internal("filter flags".into()))?,
                );
                at += 1;
            }
            let orders = spec.function.order_bys();
            if !orders.is_empty() {
                let sort: Vec<SortColumn> = orders
                    .iter()
                    .zip(&columns[at..at + orders.len()])
                    .map(|(o, c)| SortColumn {
                        values: Arc::clone(c),
                        options: Some(o.options),
                    })
                    .collect();
                at += orders.len();
                let order = lexsort_to_indices(&sort, None)?;
                args = args
                    .iter()
                    .map(|a| Ok(take(a, &order, None)?))
                    .collect::<Result<Vec<_>>>()?;
                if let Some(m) = &mask {
                    mask = take(m, &order, None)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned();
                }
            }
            if let Some(mask) = &mask {
                args = args
                    .iter()
                    .map(|a| Ok(filter(a, mask)?))
                    .collect::<Result<Vec<_>>>()?;
            }
            if args.first().is_none_or(|a| !a.is_empty()) || args.is_empty() {
                acc.update_batch(&args)?;
            }
        }
        group.accumulators = fresh;
        Ok(())
    }
}

impl Operator for Aggregate {
    fn describe(&self) -> String {
        let keys: Vec<String> = self.group_exprs.iter().map(|e| e.to_string()).collect();
        let aggs: Vec<String> = self
            .aggregates
            .iter()
            .map(|a| a.function.name().to_string())
            .collect();
        let mut text = format!(
            "Aggregate: keys=[{}] aggregates=[{}]",
            keys.join(", "),
            aggs.join(", ")
        );
        if self.recompute {
            text.push_str(" recompute_on_retract");
        }
        if self.window.is_some() {
            text.push_str(" windowed");
        }
        if self.emit_on_close {
            text.push_str(" emit_on_close");
        }
        text
    }

    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        if !self.group_exprs.is_empty() {
            return Ok(Vec::new());
        }
        // Without GROUP BY there is exactly one row, even over no input.
        let key = self.global_key.clone();
        self.groups.insert(
            key.clone(),
            Group {
                accumulators: self.new_accumulators()?,
                rows: 0,
                key: Vec::new(),
                emitted: None,
                inputs: self.recompute.then(HashMap::new),
                window_end: None,
            },
        );
        let row = self.output_row(&key)?;
        if let Some(group) = self.groups.get_mut(&key) {
            group.emitted = row.clone();
            self.bytes += group_bytes(&key, group);
        }
        match row {
            Some(row) => Ok(vec![self.batch(vec![(false, row)])?]),
            None => Ok(Vec::new()),
        }
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let n = batch.num_rows();
        let key_columns = self
            .group_exprs
            .iter()
            .map(|e| Ok(e.evaluate(&batch.rows)?.into_array(n)?))
            .collect::<Result<Vec<_>>>()?;
        let keys = if key_columns.is_empty() {
            None
        } else {
            Some(self.keys.convert_columns(&key_columns)?)
        };
        let ends = match &self.window {
            Some(w) => {
                let fields: Vec<Field> = key_columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Field::new(format!("k{i}"), c.data_type().clone(), true))
                    .collect();
                let keys_batch = super::operators::rows_batch(
                    &Arc::new(Schema::new(fields)),
                    key_columns.clone(),
                )?;
                Some(w.ends(&keys_batch)?)
            }
            None => None,
        };
        // Rows per group, in first-seen order.
        let mut order: Vec<OwnedRow> = Vec::new();
        let mut members: HashMap<OwnedRow, (Vec<u32>, Vec<u32>)> = HashMap::new();
        let global = self.global_key.clone();
        for i in 0..n {
            let key = match &keys {
                Some(k) => k.row(i).owned(),
                None => global.clone(),
            };
            if let Some(ends) = &ends
                && let Some(end) = ends[i]
                && end <= self.watermark
            {
                // A window already closed (and freed): sources leave late rows out before
                // this, so only rows derived from a table change can land here.
                continue;
            }
            let entry = members.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                (Vec::new(), Vec::new())
            });
            if batch.is_delete(i) {
                entry.1.push(i as u32);
            } else {
                entry.0.push(i as u32);
            }
        }
        if order.is_empty() {
            return Ok(Vec::new());
        }
        let arguments = self.arguments(&batch.rows)?;
        let input_rows = match &self.inputs {
            Some(converter) => {
                let orders = self.order_columns(&batch.rows)?;
                let mut columns = Vec::new();
                for ((args, mask), order) in arguments.iter().zip(orders) {
                    columns.extend(args.iter().cloned());
                    if let Some(mask) = mask {
                        columns.push(Arc::new(mask.clone()) as ArrayRef);
                    }
                    columns.extend(order);
                }
                Some(converter.convert_columns(&columns)?)
            }
            None => None,
        };
        let mut changes: Vec<(bool, Vec<ScalarValue>)> = Vec::new();
        for key in &order {
            if let Some(group) = self.groups.get(key) {
                self.bytes = self.bytes.saturating_sub(group_bytes(key, group));
            }
        }
        for key in order.clone() {
            let Some((added, removed)) = members.remove(&key) else {
                continue;
            };
            if !self.groups.contains_key(&key) {
                let first = added.first().or(removed.first()).copied().unwrap_or(0) as usize;
                let key_values = key_columns
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, first))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let window_end = ends.as_ref().and_then(|e| e[first]);
                if let Some(end) = window_end {
                    self.closing.entry(end).or_default().push(key.clone());
                }
                let group = Group {
                    accumulators: self.new_accumulators()?,
                    rows: 0,
                    key: key_values,
                    emitted: None,
                    inputs: self.recompute.then(HashMap::new),
                    window_end,
                };
                self.groups.insert(key.clone(), group);
            }
            let group = self
                .groups
                .get_mut(&key)
                .ok_or_else(|| Error::Internal("group vanished".into()))?;
            group.rows += added.len() as i64 - removed.len() as i64;
            let mut recompute = false;
            if let (Some(inputs), Some(rows)) = (&mut group.inputs, &input_rows) {
                for (indices, delta) in [(&added, 1), (&removed, -1)] {
                    for i in indices {
                        let row = rows.row(*i as usize).owned();
                        let count = inputs.entry(row.clone()).or_insert(0);
                        *count += delta;
                        if *count == 0 {
                            inputs.remove(&row);
                        }
                    }
                }
                recompute = true;
            } else {
                for (indices, retract) in [(&added, false), (&removed, true)] {
                    if indices.is_empty() {
                        continue;
                    }
                    let take_indices = UInt32Array::from(indices.clone());
                    for ((args, mask), acc) in arguments.iter().zip(&mut group.accumulators) {
                        let mut values = args
                            .iter()
                            .map(|a| Ok(take(a, &take_indices, None)?))
                            .collect::<Result<Vec<_>>>()?;
                        if let Some(mask) = mask {
                            let mask = take(mask, &take_indices, None)?;
                            let mask = mask
                                .as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| Error::Internal("filter mask".into()))?;
                            values = values
                                .iter()
                                .map(|a| Ok(filter(a, &mask)?))
                                .collect::<Result<Vec<_>>>()?;
                        }
                        if retract {
                            acc.retract_batch(&values)?;
                        } else {
                            acc.update_batch(&values)?;
                        }
                    }
                }
            }
            let group_rows = group.rows;
            let emitted = group.emitted.clone();
            if recompute {
                self.recompute_group(&key)?;
            }
            let is_global = keys.is_none();
            if group_rows <= 0 && !is_global {
                if let Some(old) = emitted
                    && !self.emit_on_close
                {
                    changes.push((true, old));
                }
                if let Some(group) = self.groups.remove(&key)
                    && let Some(end) = group.window_end
                    && let Some(list) = self.closing.get_mut(&end)
                {
                    list.retain(|k| k != &key);
                }
                continue;
            }
            if self.emit_on_close {
                continue;
            }
            let row = self.output_row(&key)?;
            if row != emitted {
                if let Some(old) = emitted {
                    changes.push((true, old));
                }
                if let Some(new) = row.clone() {
                    changes.push((false, new));
                }
                if let Some(group) = self.groups.get_mut(&key) {
                    group.emitted = row;
                }
            }
        }
        for key in &order {
            if let Some(group) = self.groups.get(key) {
                self.bytes += group_bytes(key, group);
            }
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![self.batch(changes)?])
    }

    fn on_watermark(&mut self, _inputs: &[Option<i64>], combined: i64) -> Result<Vec<ChangeBatch>> {
        self.watermark = self.watermark.max(combined);
        let mut changes = Vec::new();
        while let Some(entry) = self.closing.first_entry() {
            if *entry.key() > self.watermark {
                break;
            }
            for key in entry.remove() {
                if let Some(group) = self.groups.get(&key) {
                    self.bytes = self.bytes.saturating_sub(group_bytes(&key, group));
                }
                if self.emit_on_close
                    && let Some(row) = self.output_row(&key)?
                {
                    changes.push((false, row));
                }
                self.groups.remove(&key);
            }
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![self.batch(changes)?])
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("aggregate");
        w.i64(self.watermark);
        let keys: Vec<OwnedRow> = self.groups.keys().cloned().collect();
        w.u64(keys.len() as u64);
        let fields: Vec<_> = self.schema.fields().iter().cloned().collect();
        let mut emitted: Vec<Vec<ScalarValue>> = vec![Vec::new(); fields.len()];
        // State columns per aggregate, as the accumulators give them (a sliding accumulator's
        // state is wider than the plain one's).
        let mut widths: Vec<usize> = Vec::new();
        let mut states: Vec<Vec<ScalarValue>> = Vec::new();
        for key in &keys {
            let group = self
                .groups
                .get_mut(key)
                .ok_or_else(|| Error::Internal("group vanished".into()))?;
            w.row(key);
            w.i64(group.rows);
            w.opt_i64(group.window_end);
            w.bool(group.emitted.is_some());
            for (c, field) in fields.iter().enumerate() {
                let value = match &group.emitted {
                    Some(values) => values[c].cast_to(field.data_type())?,
                    None => ScalarValue::try_from(field.data_type())?,
                };
                emitted[c].push(value);
            }
            w.bool(group.inputs.is_some());
            if let Some(inputs) = &group.inputs {
                w.u64(inputs.len() as u64);
                for (row, count) in inputs {
                    w.row(row);
                    w.i64(*count);
                }
            } else {
                let first = widths.is_empty();
                let mut column = 0;
                for acc in &mut group.accumulators {
                    let state = acc.state()?;
                    if first {
                        widths.push(state.len());
                    }
                    for value in state {
                        if first {
                            states.push(Vec::new());
                        }
                        states
                            .get_mut(column)
                            .ok_or_else(|| Error::Internal("accumulator state width".into()))?
                            .push(value);
                        column += 1;
                    }
                }
            }
        }
        w.u64(widths.len() as u64);
        for width in &widths {
            w.u64(*width as u64);
        }
        if !keys.is_empty() {
            for columns in [emitted, states] {
                if columns.is_empty() || columns[0].is_empty() {
                    w.bool(false);
                    continue;
                }
                w.bool(true);
                let arrays = columns
                    .into_iter()
                    .map(|values| Ok(ScalarValue::iter_to_array(values)?))
                    .collect::<Result<Vec<ArrayRef>>>()?;
                let schema = Arc::new(Schema::new(
                    arrays
                        .iter()
                        .enumerate()
                        .map(|(i, a)| Field::new(format!("c{i}"), a.data_type().clone(), true))
                        .collect::<Vec<_>>(),
                ));
                let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
                w.batches(&schema, &[batch])?;
            }
        }
        let bytes = w.finish();
        // Some accumulators give their state away; then continue from the snapshot itself.
        if !self.aggregates.iter().all(state_survives_snapshot) {
            self.restore(&bytes)?;
        }
        Ok(Some(bytes))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "aggregate")?;
        self.watermark = r.i64()?;
        let keyless = self.group_exprs.is_empty();
        let mut parsed = Vec::new();
        for _ in 0..r.usize()? {
            let key = r.key(&self.keys, keyless)?;
            let rows = r.i64()?;
            let window_end = r.opt_i64()?;
            let has_emitted = r.bool()?;
            let inputs = if r.bool()? {
                let converter = self
                    .inputs
                    .as_ref()
                    .ok_or_else(|| Error::Storage("aggregate state with inputs".into()))?;
                let mut inputs = HashMap::new();
                for _ in 0..r.usize()? {
                    let row = r.row(converter)?;
                    inputs.insert(row, r.i64()?);
                }
                Some(inputs)
            } else {
                None
            };
            parsed.push((key, rows, window_end, has_emitted, inputs));
        }
        let widths = (0..r.usize()?)
            .map(|_| r.usize())
            .collect::<Result<Vec<usize>>>()?;
        let mut batches = Vec::new();
        if !parsed.is_empty() {
            for _ in 0..2 {
                batches.push(if r.bool()? {
                    r.batches()?.into_iter().next()
                } else {
                    None
                });
            }
        }
        r.finish()?;
        let emitted = batches.first().cloned().flatten();
        let states = batches.get(1).cloned().flatten();
        let key_columns = if keyless || parsed.is_empty() {
            Vec::new()
        } else {
            self.keys.convert_rows(parsed.iter().map(|p| p.0.row()))?
        };
        self.groups.clear();
        self.closing.clear();
        self.bytes = 0;
        for (i, (key, rows, window_end, has_emitted, inputs)) in parsed.into_iter().enumerate() {
            let key_values = key_columns
                .iter()
                .map(|c| ScalarValue::try_from_array(c, i))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let emitted = match (&emitted, has_emitted) {
                (Some(batch), true) => Some(
                    batch
                        .columns()
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, i))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                ),
                _ => None,
            };
            let mut accumulators = self.new_accumulators()?;
            if let (Some(states), None) = (&states, &inputs) {
                let mut column = 0;
                for (width, acc) in widths.iter().zip(&mut accumulators) {
                    let width = *width;
                    let arrays: Vec<ArrayRef> = states
                        .columns()
                        .get(column..column + width)
                        .ok_or_else(|| Error::Storage("aggregate state is short".into()))?
                        .iter()
                        .map(|a| a.slice(i, 1))
                        .collect();
                    acc.merge_batch(&arrays)?;
                    column += width;
                }
            }
            if let Some(end) = window_end {
                self.closing.entry(end).or_default().push(key.clone());
            }
            let recompute = inputs.is_some();
            self.groups.insert(
                key.clone(),
                Group {
                    accumulators,
                    rows,
                    key: key_values,
                    emitted,
                    inputs,
                    window_end,
                },
            );
            if recompute {
                self.recompute_group(&key)?;
            }
            if let Some(group) = self.groups.get(&key) {
                self.bytes += group_bytes(&key, group);
            }
        }
        Ok(())
    }
}

/// Memory of one group: its key, accumulators and (when recomputing) stored inputs.
fn group_bytes(key: &OwnedRow, group: &Group) -> usize {
    key.as_ref().len()
        + group.accumulators.iter().map(|a| a.size()).sum::<usize>()
        + group
            .inputs
            .as_ref()
            .map_or(0, |i| i.keys().map(|r| r.as_ref().len() + 8).sum())
}
