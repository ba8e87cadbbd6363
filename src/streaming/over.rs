//! OVER windows in event-time order: `ROW_NUMBER()`, `LAG(x [, n [, default]])` and
//! `LEAD(x [, n [, default]])` `OVER (PARTITION BY ... ORDER BY event_time, ...)`.
//!
//! A row's place in its partition is only known once no earlier row can still arrive, that is
//! once the watermark has passed its event time (rows behind the watermark are left out of the
//! view by its sources). So rows wait in `pending` by event time; each watermark advance
//! releases the rows before it, sorted by the full ORDER BY, and each partition numbers them
//! and takes LAG values from the rows it released before.
//!
//! LEAD looks ahead: a released row first carries the default (no following row yet), and is
//! retracted and emitted again when the n-th following row of its partition is released,
//! which is what the query over the stored history says at every moment. Under
//! `EMIT ON WINDOW CLOSE` a row is emitted once, when all its LEAD values are known.
//!
//! State: the pending rows (bounded by the watermark's delay) and, per partition, the last
//! `max(lag, lead offset)` released rows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_expr::PhysicalExpr;

use super::operators::{
    cast_columns, key_rows, keys_converter, micros, rows_batch, rows_converter,
};
use super::state::{StateReader, StateWriter};
use super::{ChangeBatch, Operator};
use crate::error::{Error, Result};

/// One window function of the OVER clause.
#[derive(Debug)]
pub enum OverFunction {
    RowNumber,
    /// The argument `offset` rows back (`LAG`).
    Lag {
        arg: Arc<dyn PhysicalExpr>,
        offset: usize,
        default: ScalarValue,
    },
    /// The argument `offset` rows ahead (`LEAD`).
    Lead {
        arg: Arc<dyn PhysicalExpr>,
        offset: usize,
        default: ScalarValue,
    },
}

impl OverFunction {
    fn lag(&self) -> usize {
        match self {
            OverFunction::Lag { offset, .. } => *offset,
            _ => 0,
        }
    }

    fn lead(&self) -> usize {
        match self {
            OverFunction::Lead { offset, .. } => *offset,
            _ => 0,
        }
    }
}

/// A released row kept for the LAG and LEAD of the rows around it.
#[derive(Debug)]
struct Released {
    row: OwnedRow,
    /// Argument value per function (NULL for ROW_NUMBER).
    args: Vec<ScalarValue>,
    /// The row's current window values.
    values: Vec<ScalarValue>,
    /// Following rows released after it.
    following: usize,
    /// Whether `values` has been emitted.
    emitted: bool,
}

#[derive(Debug, Default)]
struct Partition {
    count: u64,
    tail: VecDeque<Released>,
}

#[derive(Debug)]
pub struct OverWindow {
    partition: Vec<Arc<dyn PhysicalExpr>>,
    key_converter: RowConverter,
    /// ORDER BY expressions; the first is the event time.
    order: Vec<Arc<dyn PhysicalExpr>>,
    order_converter: RowConverter,
    functions: Vec<OverFunction>,
    rows: RowConverter,
    input_schema: SchemaRef,
    schema: SchemaRef,
    /// Input rows not yet released, by event time (µs).
    pending: BTreeMap<i64, Vec<OwnedRow>>,
    pending_bytes: usize,
    partitions: HashMap<OwnedRow, Partition>,
    /// Rows kept per partition.
    keep: usize,
    /// Largest LEAD offset: a row is final once this many rows follow it.
    lead: usize,
    emit_on_close: bool,
    tail_bytes: usize,
    /// The watermark up to which rows have been released; later rows before it have no place
    /// (sources leave such rows out, but a join above them can produce one late).
    released_upto: i64,
}

impl OverWindow {
    pub fn new(
        partition: Vec<Arc<dyn PhysicalExpr>>,
        order: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
        functions: Vec<OverFunction>,
        input_schema: SchemaRef,
        schema: SchemaRef,
    ) -> Result<OverWindow> {
        let key_converter = keys_converter(&partition, &input_schema)?;
        let order_fields = order
            .iter()
            .map(|(e, options)| {
                Ok(SortField::new_with_options(
                    e.data_type(&input_schema)?,
                    *options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = rows_converter(&input_schema)?;
        // Defaults take the argument's type, so each function's values have one type.
        let functions = functions
            .into_iter()
            .map(|f| {
                Ok(match f {
                    OverFunction::Lag {
                        arg,
                        offset,
                        default,
                    } => OverFunction::Lag {
                        default: default.cast_to(&arg.data_type(&input_schema)?)?,
                        arg,
                        offset,
                    },
                    OverFunction::Lead {
                        arg,
                        offset,
                        default,
                    } => OverFunction::Lead {
                        default: default.cast_to(&arg.data_type(&input_schema)?)?,
                        arg,
                        offset,
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lag = functions.iter().map(OverFunction::lag).max().unwrap_or(0);
        let lead = functions.iter().map(OverFunction::lead).max().unwrap_or(0);
        Ok(OverWindow {
            partition,
            key_converter,
            order: order.into_iter().map(|(e, _)| e).collect(),
            order_converter: RowConverter::new(order_fields)?,
            functions,
            rows,
            input_schema,
            schema,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            partitions: HashMap::new(),
            keep: lag.max(lead),
            lead,
            emit_on_close: false,
            tail_bytes: 0,
            released_upto: i64::MIN,
        })
    }

    /// Whether emitted rows can be revised (a LEAD without EMIT ON WINDOW CLOSE).
    pub fn retracts(&self) -> bool {
        self.lead > 0 && !self.emit_on_close
    }

    /// Emit each row once, final (its LEAD values known).
    pub fn emit_on_close(&mut self) {
        self.emit_on_close = true;
    }

    /// Output rows: the input row's columns then its window values.
    fn output(&self, rows: &[(&OwnedRow, &[ScalarValue])]) -> Result<RecordBatch> {
        let mut columns = self
            .rows
            .convert_rows(rows.iter().map(|(row, _)| row.row()))?;
        for f in 0..self.functions.len() {
            let field = self.schema.field(self.input_schema.fields().len() + f);
            let values = rows.iter().map(|(_, values)| {
                values[f]
                    .cast_to(field.data_type())
                    .unwrap_or_else(|_| values[f].clone())
            });
            let column: ArrayRef = if rows.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(column);
        }
        rows_batch(&self.schema, cast_columns(columns, &self.schema)?)
    }

    /// Number and emit the released rows (already in ORDER BY order).
    fn release(&mut self, rows: Vec<OwnedRow>) -> Result<Vec<ChangeBatch>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let columns = self.rows.convert_rows(rows.iter().map(|r| r.row()))?;
        let batch = rows_batch(&self.input_schema, columns)?;
        let n = batch.num_rows();
        let key_columns = self
            .partition
            .iter()
            .map(|e| Ok(e.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = key_rows(&self.key_converter, &key_columns, n)?;
        let arg_columns = self
            .functions
            .iter()
            .map(|f| match f {
                OverFunction::RowNumber => Ok(None),
                OverFunction::Lag { arg, .. } | OverFunction::Lead { arg, .. } => {
                    Ok(Some(arg.evaluate(&batch)?.into_array(n)?))
                }
            })
            .collect::<Result<Vec<Option<ArrayRef>>>>()?;
        // (row, values, retract) in emission order.
        let mut changes: Vec<(OwnedRow, Vec<ScalarValue>, bool)> = Vec::new();
        for (i, (row, key)) in rows.into_iter().zip(keys).enumerate() {
            let args = arg_columns
                .iter()
                .map(|c| match c {
                    Some(c) => ScalarValue::try_from_array(c, i),
                    None => Ok(ScalarValue::Null),
                })
                .collect::<datafusion::common::Result<Vec<_>>>()?;
            let partition = self.partitions.entry(key).or_default();
            partition.count += 1;
            let values: Vec<ScalarValue> = self
                .functions
                .iter()
                .enumerate()
                .map(|(f, function)| match function {
                    OverFunction::RowNumber => ScalarValue::UInt64(Some(partition.count)),
                    OverFunction::Lag {
                        offset, default, ..
                    } => match *offset {
                        0 => args[f].clone(),
                        k if k <= partition.tail.len() => {
                            partition.tail[partition.tail.len() - k].args[f].clone()
                        }
                        _ => default.clone(),
                    },
                    OverFunction::Lead {
                        offset, default, ..
                    } => match *offset {
                        0 => args[f].clone(),
                        _ => default.clone(),
                    },
                })
                .collect();
            // Earlier rows whose LEAD reaches this one.
            for (distance, earlier) in partition.tail.iter_mut().rev().take(self.lead).enumerate() {
                let distance = distance + 1;
                earlier.following += 1;
                let mut old = None;
                for (f, function) in self.functions.iter().enumerate() {
                    if let OverFunction::Lead { offset, .. } = function
                        && *offset == distance
                    {
                        old.get_or_insert_with(|| earlier.values.clone());
                        earlier.values[f] = args[f].clone();
                    }
                }
                if let (true, Some(old)) = (earlier.emitted, old) {
                    changes.push((earlier.row.clone(), old, true));
                    changes.push((earlier.row.clone(), earlier.values.clone(), false));
                } else if !earlier.emitted && earlier.following >= self.lead {
                    earlier.emitted = true;
                    changes.push((earlier.row.clone(), earlier.values.clone(), false));
                }
            }
            let emitted = !self.emit_on_close || self.lead == 0;
            if emitted {
                changes.push((row.clone(), values.clone(), false));
            }
            if self.keep > 0 {
                self.tail_bytes += row.as_ref().len();
                partition.tail.push_back(Released {
                    row,
                    args,
                    values,
                    following: 0,
                    emitted,
                });
                while partition.tail.len() > self.keep {
                    if let Some(old) = partition.tail.pop_front() {
                        self.tail_bytes -= old.row.as_ref().len();
                    }
                }
            }
        }
        let flags: Vec<bool> = changes.iter().map(|(_, _, retract)| *retract).collect();
        let rows: Vec<(&OwnedRow, &[ScalarValue])> = changes
            .iter()
            .map(|(row, values, _)| (row, values.as_slice()))
            .collect();
        Ok(vec![ChangeBatch::from_flags(self.output(&rows)?, flags)])
    }
}

impl Operator for OverWindow {
    fn describe(&self) -> String {
        let functions: Vec<String> = self
            .functions
            .iter()
            .map(|f| match f {
                OverFunction::RowNumber => "row_number()".to_string(),
                OverFunction::Lag { arg, offset, .. } => format!("lag({arg}, {offset})"),
                OverFunction::Lead { arg, offset, .. } => format!("lead({arg}, {offset})"),
            })
            .collect();
        format!(
            "OverWindow: {} partition=[{}] order=[{}]{}",
            functions.join(", "),
            self.partition
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.order
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if self.emit_on_close {
                " emit_on_close"
            } else {
                ""
            }
        )
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if (0..batch.num_rows()).any(|i| batch.is_delete(i)) {
            return Err(Error::Internal(
                "an OVER window received a retraction from an append-only input".to_string(),
            ));
        }
        let n = batch.num_rows();
        let times = micros(&self.order[0].evaluate(&batch.rows)?.into_array(n)?)?;
        let rows = self.rows.convert_columns(batch.rows.columns())?;
        for i in 0..n {
            // Rows without event time, or behind what was released, have no place in
            // event-time order.
            if times.is_valid(i) && times.value(i) >= self.released_upto {
                let row = rows.row(i).owned();
                self.pending_bytes += row.as_ref().len();
                self.pending.entry(times.value(i)).or_default().push(row);
            }
        }
        Ok(Vec::new())
    }

    fn on_watermark(&mut self, _inputs: &[Option<i64>], combined: i64) -> Result<Vec<ChangeBatch>> {
        self.released_upto = self.released_upto.max(combined);
        let mut released = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= combined {
                break;
            }
            released.extend(entry.remove());
        }
        if released.is_empty() {
            return Ok(Vec::new());
        }
        self.pending_bytes -= released.iter().map(|r| r.as_ref().len()).sum::<usize>();
        // Sort by the full ORDER BY (rows arrive by event time, ties in arrival order).
        let columns = self.rows.convert_rows(released.iter().map(|r| r.row()))?;
        let batch = rows_batch(&self.input_schema, columns)?;
        let n = batch.num_rows();
        let order_columns = self
            .order
            .iter()
            .map(|e| Ok(e.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let order_rows = self.order_converter.convert_columns(&order_columns)?;
        let mut positions: Vec<usize> = (0..n).collect();
        positions.sort_by(|a, b| order_rows.row(*a).cmp(&order_rows.row(*b)));
        let mut slots: Vec<Option<OwnedRow>> = released.into_iter().map(Some).collect();
        let sorted = positions
            .into_iter()
            .filter_map(|i| slots[i].take())
            .collect();
        self.release(sorted)
    }

    fn state_bytes(&self) -> usize {
        self.pending_bytes + self.tail_bytes
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("over_window");
        w.i64(self.released_upto);
        w.u64(self.pending.len() as u64);
        for (time, rows) in &self.pending {
            w.i64(*time);
            w.u64(rows.len() as u64);
            for row in rows {
                w.row(row);
            }
        }
        // Window values and arguments of the kept rows go into one Arrow batch, in order.
        let functions = self.functions.len();
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::new(); 2 * functions];
        w.u64(self.partitions.len() as u64);
        for (key, partition) in &self.partitions {
            w.row(key);
            w.u64(partition.count);
            w.u64(partition.tail.len() as u64);
            for kept in &partition.tail {
                w.row(&kept.row);
                w.u64(kept.following as u64);
                w.bool(kept.emitted);
                for f in 0..functions {
                    columns[f].push(kept.args[f].clone());
                    columns[functions + f].push(kept.values[f].clone());
                }
            }
        }
        let kept = columns.first().map_or(0, Vec::len);
        w.bool(kept > 0);
        if kept > 0 {
            let arrays = columns
                .into_iter()
                .map(|values| Ok(ScalarValue::iter_to_array(values)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let fields: Vec<_> = arrays
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    datafusion::arrow::datatypes::Field::new(
                        format!("c{i}"),
                        a.data_type().clone(),
                        true,
                    )
                })
                .collect();
            let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
            let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
            w.batches(&schema, &[batch])?;
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "over_window")?;
        self.released_upto = r.i64()?;
        self.pending.clear();
        self.pending_bytes = 0;
        for _ in 0..r.usize()? {
            let time = r.i64()?;
            let mut rows = Vec::new();
            for _ in 0..r.usize()? {
                let row = r.row(&self.rows)?;
                self.pending_bytes += row.as_ref().len();
                rows.push(row);
            }
            self.pending.insert(time, rows);
        }
        // Rows first, their values from the batch after them.
        let mut kept_by_partition = Vec::new();
        for _ in 0..r.usize()? {
            let key = r.key(&self.key_converter, self.partition.is_empty())?;
            let count = r.u64()?;
            let mut kept = Vec::new();
            for _ in 0..r.usize()? {
                let row = r.row(&self.rows)?;
                let following = r.usize()?;
                let emitted = r.bool()?;
                kept.push((row, following, emitted));
            }
            kept_by_partition.push((key, count, kept));
        }
        let values = if r.bool()? {
            r.batches()?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Storage("OVER window state without values".to_string()))?
        } else {
            RecordBatch::new_empty(Arc::new(datafusion::arrow::datatypes::Schema::empty()))
        };
        let functions = self.functions.len();
        let scalar = |column: usize, at: usize| -> Result<ScalarValue> {
            let array = values
                .columns()
                .get(column)
                .ok_or_else(|| Error::Storage("OVER window state is short".to_string()))?;
            Ok(ScalarValue::try_from_array(array, at)?)
        };
        self.partitions.clear();
        self.tail_bytes = 0;
        let mut at = 0;
        for (key, count, kept) in kept_by_partition {
            let mut tail = VecDeque::new();
            for (row, following, emitted) in kept {
                let args = (0..functions)
                    .map(|f| scalar(f, at))
                    .collect::<Result<Vec<_>>>()?;
                let values = (0..functions)
                    .map(|f| scalar(functions + f, at))
                    .collect::<Result<Vec<_>>>()?;
                at += 1;
                self.tail_bytes += row.as_ref().len();
                tail.push_back(Released {
                    row,
                    args,
                    values,
                    following,
                    emitted,
                });
            }
            self.partitions.insert(key, Partition { count, tail });
        }
        r.finish()
    }
}
