//! Session windows over a stream: per partition, rows whose event times are closer than the gap
//! form one session `[first, last + gap)`. A row can merge sessions, so a session's rows are
//! only known once no future row can join it: when the watermark reaches its end. Rows are
//! held until then and emitted once with `window_start` and `window_end` (the same rows the
//! batch form of `SESSION(...)` gives for that session).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};

use super::operators::rows_batch;
use super::state::{StateReader, StateWriter};
use super::{ChangeBatch, Operator};
use crate::error::{Error, Result};

#[derive(Debug)]
struct Session {
    first: i64,
    last: i64,
    rows: Vec<OwnedRow>,
}

#[derive(Debug)]
pub struct SessionWindow {
    time: usize,
    gap: i64,
    partition: Vec<usize>,
    keys: RowConverter,
    rows: RowConverter,
    schema: SchemaRef,
    /// Open sessions per partition (times in nanoseconds), ordered by start.
    open: HashMap<OwnedRow, Vec<Session>>,
    bytes: usize,
}

impl SessionWindow {
    /// `gap` in microseconds.
    pub fn new(
        time: usize,
        gap: i64,
        partition: Vec<usize>,
        input: SchemaRef,
        schema: SchemaRef,
    ) -> Result<SessionWindow> {
        let keys = partition
            .iter()
            .map(|i| SortField::new(input.field(*i).data_type().clone()))
            .collect();
        Ok(SessionWindow {
            time,
            gap: gap.saturating_mul(1000),
            partition,
            keys: RowConverter::new(keys)?,
            rows: super::operators::rows_converter(&input)?,
            schema,
            open: HashMap::new(),
            bytes: 0,
        })
    }

    fn emit(&self, closed: Vec<Session>) -> Result<ChangeBatch> {
        let mut all = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for session in &closed {
            for row in &session.rows {
                all.push(row.row());
                starts.push(session.first);
                ends.push(session.last.saturating_add(self.gap));
            }
        }
        let mut columns = self.rows.convert_rows(all)?;
        let time_type = self.schema.field(columns.len()).data_type().clone();
        for values in [starts, ends] {
            let array: ArrayRef = Arc::new(TimestampNanosecondArray::from(values));
            let array = cast(&array, &time_type)?;
            columns.push(array);
        }
        Ok(ChangeBatch::inserts(rows_batch(&self.schema, columns)?))
    }
}

impl Operator for SessionWindow {
    fn describe(&self) -> String {
        format!("SessionWindow: gap={}us", self.gap / 1000)
    }

    fn process(&mut self, _input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if batch.has_deletes() {
            return Err(Error::Unsupported(
                "retractions into a session window".to_string(),
            ));
        }
        let rows: &RecordBatch = &batch.rows;
        // Nanoseconds, so window bounds are exactly what the batch form computes.
        let times = cast(
            rows.column(self.time),
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
        )?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let key_columns: Vec<ArrayRef> = self
            .partition
            .iter()
            .map(|i| Arc::clone(rows.column(*i)))
            .collect();
        let keys = if key_columns.is_empty() {
            None
        } else {
            Some(self.keys.convert_columns(&key_columns)?)
        };
        let converted = self.rows.convert_columns(rows.columns())?;
        for i in 0..rows.num_rows() {
            // The batch form leaves rows without a time out of every session.
            if !times.is_valid(i) {
                continue;
            }
            let t = times.value(i);
            let key = match &keys {
                Some(k) => k.row(i).owned(),
                None => super::operators::constant_key(),
            };
            let row = converted.row(i).owned();
            self.bytes += row.as_ref().len();
            let sessions = self.open.entry(key).or_default();
            // Sessions this row touches: t within gap of [first, last].
            let touching: Vec<usize> = sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    t < s.last.saturating_add(self.gap) && t.saturating_add(self.gap) > s.first
                })
                .map(|(i, _)| i)
                .collect();
            let mut merged = Session {
                first: t,
                last: t,
                rows: vec![row],
            };
            for index in touching.into_iter().rev() {
                let s = sessions.remove(index);
                merged.first = merged.first.min(s.first);
                merged.last = merged.last.max(s.last);
                merged.rows.extend(s.rows);
            }
            let at = sessions.partition_point(|s| s.first < merged.first);
            sessions.insert(at, merged);
        }
        Ok(Vec::new())
    }

    fn on_watermark(&mut self, _inputs: &[Option<i64>], combined: i64) -> Result<Vec<ChangeBatch>> {
        let mut closed = Vec::new();
        for sessions in self.open.values_mut() {
            let (done, open): (Vec<Session>, Vec<Session>) = sessions
                .drain(..)
                .partition(|s| s.last.saturating_add(self.gap) <= combined.saturating_mul(1000));
            *sessions = open;
            closed.extend(done);
        }
        self.open.retain(|_, s| !s.is_empty());
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        self.bytes -= closed
            .iter()
            .flat_map(|s| &s.rows)
            .map(|r| r.as_ref().len())
            .sum::<usize>();
        Ok(vec![self.emit(closed)?])
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("session_window");
        w.u64(self.open.len() as u64);
        for (key, sessions) in &self.open {
            w.row(key);
            w.u64(sessions.len() as u64);
            for session in sessions {
                w.i64(session.first);
                w.i64(session.last);
                w.u64(session.rows.len() as u64);
                for row in &session.rows {
                    w.row(row);
                }
            }
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "session_window")?;
        self.open.clear();
        self.bytes = 0;
        for _ in 0..r.usize()? {
            let key = r.key(&self.keys, self.partition.is_empty())?;
            let mut sessions = Vec::new();
            for _ in 0..r.usize()? {
                let first = r.i64()?;
                let last = r.i64()?;
                let mut rows = Vec::new();
                for _ in 0..r.usize()? {
                    let row = r.row(&self.rows)?;
                    self.bytes += row.as_ref().len();
                    rows.push(row);
                }
                sessions.push(Session { first, last, rows });
            }
            self.open.insert(key, sessions);
        }
        r.finish()
    }
}
